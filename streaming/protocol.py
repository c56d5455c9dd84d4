"""Wire protocol v1: the one module that turns messages into bytes and back.

Every message is a ZeroMQ multipart message::

    part 0      msgpack map (the header), at most ``MAX_HEADER_BYTES``
    part 1..k   raw little-endian buffers, one per entry of header["bufs"]

See ``docs/protocol.md`` for the normative description (written for C and MATLAB
authors). This module owns the mapping between the header and the in-memory types of
``rt_decoder.messages``; it never builds a domain object from unvalidated wire data and
never unpickles anything. It imports numpy, msgpack and rt_decoder's plain modules only
(no zmq: transports live in ``streaming.transport``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import msgpack
import numpy as np

from rt_decoder.errors import MessageTooLargeError, ProtocolError
from rt_decoder.messages import (
    N_BEHAVIOUR,
    ActivityFrame,
    DecodedFrame,
    FluorescenceFrame,
    SessionInfo,
    Stamps,
)

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_ROIS = 1_000_000
MAX_STAMPS = 64
MAX_NAME_LEN = 256

KIND_SESSION_START = "session_start"
KIND_FRAME = "frame"
KIND_ACTIVITY = "activity"
KIND_BEHAVIOUR = "behaviour"
KIND_HEARTBEAT = "heartbeat"
KIND_SESSION_END = "session_end"
KIND_DECODED = "decoded"
KIND_STATUS = "status"
KINDS = (
    KIND_SESSION_START,
    KIND_FRAME,
    KIND_ACTIVITY,
    KIND_BEHAVIOUR,
    KIND_HEARTBEAT,
    KIND_SESSION_END,
    KIND_DECODED,
    KIND_STATUS,
)

#: dtype strings allowed on the wire (little-endian only) -> numpy dtype.
WIRE_DTYPES: dict[str, np.dtype] = {
    s: np.dtype(s) for s in ("<f4", "<f8", "<i8", "<i4", "<i2", "<u2", "<u1")
}

_COMMON_KEYS = frozenset({"v", "kind", "sid", "seq", "t_ns", "bufs"})
# kind -> (required extra keys, optional extra keys, required buffers, optional buffers)
_SCHEMA: dict[str, tuple[frozenset[str], frozenset[str], tuple[str, ...], tuple[str, ...]]] = {
    KIND_SESSION_START: (
        frozenset({"rate_hz", "plane", "n_rois", "activity"}),
        frozenset({"source", "stim"}),
        ("roi_ids",),
        ("roi_centres",),
    ),
    KIND_FRAME: (frozenset({"frame"}), frozenset({"beh", "stamps"}), ("values",), ()),
    KIND_ACTIVITY: (frozenset({"frame"}), frozenset({"beh", "stamps"}), ("values",), ()),
    KIND_BEHAVIOUR: (frozenset({"frame", "beh"}), frozenset(), (), ()),
    KIND_HEARTBEAT: (frozenset(), frozenset(), (), ()),
    KIND_SESSION_END: (frozenset({"n_frames"}), frozenset(), (), ()),
    KIND_DECODED: (frozenset({"frame"}), frozenset({"stamps"}), ("image",), ()),
    KIND_STATUS: (frozenset({"state"}), frozenset({"metrics"}), (), ()),
}
# buffer name -> (allowed dtypes, number of dimensions)
_BUF_RULES: dict[str, tuple[tuple[str, ...], int]] = {
    "values": (("<f4",), 1),
    "roi_ids": (("<i8",), 1),
    "roi_centres": (("<f4",), 2),
    "image": (("<f4",), 2),
}


# ---------------------------------------------------------------------------- bodies


@dataclass(frozen=True)
class BehaviourSample:
    """A behaviour sample sent on its own (4 floats in ``BEHAVIOUR_FIELDS`` order)."""

    frame_index: int
    values: np.ndarray


@dataclass(frozen=True)
class Heartbeat:
    """Sent by an idle publisher so subscribers know it is alive."""


@dataclass(frozen=True)
class SessionEnd:
    """The publisher ends the session after ``n_frames`` frames."""

    n_frames: int


@dataclass(frozen=True)
class Status:
    """Service lifecycle state and metrics (a msgpack-able map of plain values)."""

    state: str
    metrics: Mapping[str, Any]


Body = Union[
    SessionInfo,
    FluorescenceFrame,
    ActivityFrame,
    DecodedFrame,
    BehaviourSample,
    Heartbeat,
    SessionEnd,
    Status,
]


@dataclass(frozen=True)
class Envelope:
    """A decoded, validated message: its header fields plus a typed body."""

    kind: str
    session_id: str
    seq: int
    t_ns: int
    body: Body


# ---------------------------------------------------------------------------- encoding


def _pack(header: dict[str, Any]) -> bytes:
    out = msgpack.packb(header, use_bin_type=True)
    assert isinstance(out, bytes)
    if len(out) > MAX_HEADER_BYTES:
        raise MessageTooLargeError(f"header of {len(out)} bytes exceeds {MAX_HEADER_BYTES}")
    return out


def _le(array: np.ndarray, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.dtype(dtype))


def _header(kind: str, session_id: str, seq: int, t_ns: int) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "kind": kind, "sid": str(session_id), "seq": int(seq), "t_ns": int(t_ns)}


def _bufs(header: dict[str, Any], named: Sequence[tuple[str, np.ndarray]]) -> list[Any]:
    header["bufs"] = [[name, arr.dtype.str, list(arr.shape)] for name, arr in named]
    return [_pack(header)] + [memoryview(arr).cast("B") for _, arr in named]


def _stamps_list(stamps: Stamps) -> list[list[Any]]:
    return [[str(n), int(t)] for n, t in stamps]


def encode_session_start(info: SessionInfo, *, seq: int, t_ns: int) -> list[Any]:
    """Encode session metadata (sent first and re-sent periodically)."""
    h = _header(KIND_SESSION_START, info.session_id, seq, t_ns)
    h.update(rate_hz=float(info.frame_rate_hz), plane=int(info.plane), n_rois=info.n_rois,
             activity=bool(info.is_activity), source=str(info.source))
    if info.stimulus_shape is not None:
        h["stim"] = [int(v) for v in info.stimulus_shape]
    named = [("roi_ids", _le(info.roi_ids, "<i8"))]
    if info.roi_centres_px is not None:
        named.append(("roi_centres", _le(info.roi_centres_px, "<f4")))
    return _bufs(h, named)


def _encode_values_frame(kind: str, frame: FluorescenceFrame | ActivityFrame, session_id: str) -> list[Any]:
    h = _header(kind, session_id, frame.seq, frame.acq_ns)
    h["frame"] = int(frame.frame_index)
    if frame.behaviour is not None:
        h["beh"] = [float(v) for v in np.asarray(frame.behaviour, dtype=np.float64).reshape(-1)]
    if frame.stamps:
        h["stamps"] = _stamps_list(frame.stamps)
    return _bufs(h, [("values", _le(frame.values, "<f4"))])


def encode_frame(frame: FluorescenceFrame, session_id: str) -> list[Any]:
    """Encode one ROI fluorescence frame (``frame.seq`` and ``frame.acq_ns`` go in the header)."""
    return _encode_values_frame(KIND_FRAME, frame, session_id)


def encode_activity(frame: ActivityFrame, session_id: str) -> list[Any]:
    """Encode one activity (deconvolved) frame."""
    return _encode_values_frame(KIND_ACTIVITY, frame, session_id)


def encode_behaviour(session_id: str, *, seq: int, t_ns: int, frame_index: int, values: Sequence[float]) -> list[Any]:
    """Encode a stand-alone behaviour sample."""
    h = _header(KIND_BEHAVIOUR, session_id, seq, t_ns)
    h["frame"] = int(frame_index)
    h["beh"] = [float(v) for v in values]
    return _bufs(h, [])


def encode_heartbeat(session_id: str, *, seq: int, t_ns: int) -> list[Any]:
    """Encode a heartbeat."""
    return _bufs(_header(KIND_HEARTBEAT, session_id, seq, t_ns), [])


def encode_session_end(session_id: str, *, seq: int, t_ns: int, n_frames: int) -> list[Any]:
    """Encode the end of a session."""
    h = _header(KIND_SESSION_END, session_id, seq, t_ns)
    h["n_frames"] = int(n_frames)
    return _bufs(h, [])


def encode_decoded(frame: DecodedFrame, session_id: str) -> list[Any]:
    """Encode one decoded stimulus frame with all its stage stamps."""
    h = _header(KIND_DECODED, session_id, frame.seq, frame.acq_ns)
    h["frame"] = int(frame.frame_index)
    h["stamps"] = _stamps_list(frame.stamps)
    return _bufs(h, [("image", _le(frame.image, "<f4"))])


def encode_status(session_id: str, *, seq: int, t_ns: int, state: str, metrics: Mapping[str, Any]) -> list[Any]:
    """Encode a status message (lifecycle state + metrics map of plain values)."""
    h = _header(KIND_STATUS, session_id, seq, t_ns)
    h["state"] = str(state)
    h["metrics"] = dict(metrics)
    return _bufs(h, [])


# ---------------------------------------------------------------------------- decoding


def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} is not allowed in a header")


def _int(h: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    v = h[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"header field {key!r} must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ProtocolError(f"header field {key!r}={v} is outside [{lo}, {hi}]")
    return v


def _str(h: Mapping[str, Any], key: str) -> str:
    v = h[key]
    if not isinstance(v, str):
        raise ProtocolError(f"header field {key!r} must be a string, got {type(v).__name__}")
    if len(v) > MAX_NAME_LEN:
        raise ProtocolError(f"header field {key!r} is longer than {MAX_NAME_LEN} characters")
    return v


def _beh(h: Mapping[str, Any]) -> np.ndarray | None:
    if "beh" not in h:
        return None
    v = h["beh"]
    if not isinstance(v, list) or len(v) != N_BEHAVIOUR or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v
    ):
        raise ProtocolError(f"header field 'beh' must be a list of {N_BEHAVIOUR} numbers")
    return np.asarray(v, dtype=np.float32)


def _stamps(h: Mapping[str, Any]) -> Stamps:
    if "stamps" not in h:
        return ()
    v = h["stamps"]
    if not isinstance(v, list) or len(v) > MAX_STAMPS:
        raise ProtocolError(f"header field 'stamps' must be a list of at most {MAX_STAMPS} [name, ns] pairs")
    out = []
    for item in v:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or len(item[0]) > MAX_NAME_LEN or isinstance(item[1], bool) or not isinstance(item[1], int)):
            raise ProtocolError("each entry of 'stamps' must be [name: str, ns: int]")
        out.append((item[0], item[1]))
    return tuple(out)


def _nbytes(part: Any) -> int:
    return memoryview(part).nbytes


def _parse_header(raw: Any) -> dict[str, Any]:
    if _nbytes(raw) > MAX_HEADER_BYTES:
        raise MessageTooLargeError(f"header part of {_nbytes(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        h = msgpack.unpackb(memoryview(raw), raw=False, strict_map_key=True, ext_hook=_reject_ext)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"header is not valid msgpack: {exc}") from None
    if not isinstance(h, dict):
        raise ProtocolError(f"header must be a msgpack map, got {type(h).__name__}")
    for key in ("v", "kind", "sid", "seq", "t_ns"):
        if key not in h:
            raise ProtocolError(f"header lacks required field {key!r}")
    if h["v"] != PROTOCOL_VERSION or isinstance(h["v"], bool):
        raise ProtocolError(f"unsupported protocol version {h['v']!r} (this decoder speaks v{PROTOCOL_VERSION})")
    kind = h["kind"]
    if kind not in _SCHEMA:
        raise ProtocolError(f"unknown message kind {kind!r}; expected one of {', '.join(KINDS)}")
    required, optional, _, _ = _SCHEMA[kind]
    missing = sorted(required - h.keys())
    if missing:
        raise ProtocolError(f"{kind} header lacks required field(s) {missing}")
    unknown = sorted(k for k in h.keys() - _COMMON_KEYS - required - optional if not str(k).startswith("x-"))
    if unknown:
        raise ProtocolError(f"{kind} header has unknown field(s) {unknown} (extensions must start with 'x-')")
    return h


def _buffers(kind: str, h: Mapping[str, Any], parts: Sequence[Any]) -> dict[str, np.ndarray]:
    _, _, req, opt = _SCHEMA[kind]
    descr = h.get("bufs", [])
    if not isinstance(descr, list):
        raise ProtocolError("header field 'bufs' must be a list of [name, dtype, shape]")
    if len(descr) != len(parts):
        raise ProtocolError(f"{kind}: header describes {len(descr)} buffer(s) but the message has "
                            f"{len(parts)} payload part(s)")
    out: dict[str, np.ndarray] = {}
    for d, part in zip(descr, parts):
        if not (isinstance(d, list) and len(d) == 3 and isinstance(d[0], str) and isinstance(d[1], str)
                and isinstance(d[2], list)):
            raise ProtocolError("each entry of 'bufs' must be [name: str, dtype: str, shape: list]")
        name, dt, shape = d
        if name not in req and name not in opt:
            raise ProtocolError(f"{kind}: unexpected buffer {name!r}")
        if name in out:
            raise ProtocolError(f"{kind}: buffer {name!r} appears twice")
        allowed, ndim = _BUF_RULES[name]
        if dt not in allowed:
            raise ProtocolError(f"{kind}: buffer {name!r} has dtype {dt!r}; expected one of {list(allowed)}")
        if len(shape) != ndim or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_ROIS * 4
                                         for s in shape):
            raise ProtocolError(f"{kind}: buffer {name!r} has invalid shape {shape!r} (expected {ndim} dims)")
        dtype = WIRE_DTYPES[dt]
        expected = dtype.itemsize * math.prod(shape)
        got = _nbytes(part)
        if got != expected:
            raise ProtocolError(f"{kind}: buffer {name!r} has {got} bytes; dtype {dt} shape {shape} needs {expected}")
        out[name] = np.frombuffer(part, dtype=dtype).reshape(shape)
    missing = [n for n in req if n not in out]
    if missing:
        raise ProtocolError(f"{kind}: missing buffer(s) {missing}")
    return out


def decode(parts: Sequence[Any], *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Envelope:
    """Validate and decode one multipart message.

    Parameters
    ----------
    parts : sequence of bytes-like
        The multipart message (bytes, memoryview or ``zmq.Frame``: anything with the
        buffer protocol). Payload arrays are zero-copy, read-only views of these parts.
    max_bytes : int
        Total size limit of the message in bytes.

    Returns
    -------
    Envelope

    Raises
    ------
    ProtocolError
        Naming what is wrong; ``MessageTooLargeError`` for size violations.
    """
    if not parts:
        raise ProtocolError("empty multipart message")
    try:
        total = sum(_nbytes(p) for p in parts)
    except TypeError:
        raise ProtocolError("message parts must be bytes-like") from None
    if total > max_bytes:
        raise MessageTooLargeError(f"message of {total} bytes exceeds the limit of {max_bytes}")
    h = _parse_header(parts[0])
    kind = h["kind"]
    sid = _str(h, "sid")
    seq = _int(h, "seq", 0, 2**64 - 1)
    t_ns = _int(h, "t_ns", -(2**63), 2**63 - 1)
    bufs = _buffers(kind, h, parts[1:])
    body: Body
    if kind == KIND_SESSION_START:
        n = _int(h, "n_rois", 1, MAX_ROIS)
        rate = h["rate_hz"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (math.isfinite(rate) and 0 < rate <= 10_000):
            raise ProtocolError(f"session_start: rate_hz must be a finite number in (0, 10000], got {rate!r}")
        if not isinstance(h["activity"], bool):
            raise ProtocolError("session_start: 'activity' must be a boolean")
        ids = bufs["roi_ids"]
        if ids.shape[0] != n:
            raise ProtocolError(f"session_start: n_rois={n} but roi_ids has {ids.shape[0]} entries")
        centres = bufs.get("roi_centres")
        if centres is not None and centres.shape != (n, 2):
            raise ProtocolError(f"session_start: roi_centres must have shape ({n}, 2), got {list(centres.shape)}")
        stim = h.get("stim")
        if stim is not None and not (isinstance(stim, list) and len(stim) == 2 and all(
                isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 4096 for s in stim)):
            raise ProtocolError(f"session_start: 'stim' must be [height, width], got {stim!r}")
        source = _str(h, "source") if "source" in h else ""
        body = SessionInfo(session_id=sid, roi_ids=ids, frame_rate_hz=float(rate), plane=_int(h, "plane", 0, 1023),
                           roi_centres_px=centres, stimulus_shape=tuple(stim) if stim else None,
                           is_activity=h["activity"], source=source)
    elif kind in (KIND_FRAME, KIND_ACTIVITY):
        values = bufs["values"]
        if values.shape[0] < 1 or values.shape[0] > MAX_ROIS:
            raise ProtocolError(f"{kind}: values must have 1..{MAX_ROIS} entries, got {values.shape[0]}")
        cls = FluorescenceFrame if kind == KIND_FRAME else ActivityFrame
        body = cls(seq, _int(h, "frame", 0, 2**63 - 1), t_ns, stamps=_stamps(h), values=values, behaviour=_beh(h))
    elif kind == KIND_BEHAVIOUR:
        beh = _beh(h)
        assert beh is not None
        body = BehaviourSample(_int(h, "frame", 0, 2**63 - 1), beh)
    elif kind == KIND_HEARTBEAT:
        body = Heartbeat()
    elif kind == KIND_SESSION_END:
        body = SessionEnd(_int(h, "n_frames", 0, 2**63 - 1))
    elif kind == KIND_DECODED:
        image = bufs["image"]
        body = DecodedFrame(seq, _int(h, "frame", 0, 2**63 - 1), t_ns, stamps=_stamps(h), image=image)
    else:  # KIND_STATUS
        metrics = h.get("metrics", {})
        if not isinstance(metrics, dict):
            raise ProtocolError("status: 'metrics' must be a map")
        body = Status(_str(h, "state"), metrics)
    return Envelope(kind=kind, session_id=sid, seq=seq, t_ns=t_ns, body=body)
