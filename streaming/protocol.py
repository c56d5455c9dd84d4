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
from dataclasses import dataclass, field
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
KIND_STIMULUS = "stimulus"
KIND_RAW_FRAME = "raw_frame"
KINDS = (
    KIND_SESSION_START,
    KIND_FRAME,
    KIND_ACTIVITY,
    KIND_BEHAVIOUR,
    KIND_HEARTBEAT,
    KIND_SESSION_END,
    KIND_DECODED,
    KIND_STATUS,
    KIND_STIMULUS,
    KIND_RAW_FRAME,
)

#: Reasons a message is rejected (``error_reason(exc)``), for per-reason counters.
REASONS = (
    "too_large",      # the message or its header exceeds a size limit
    "not_bytes",      # a part is not bytes-like, or the message has no parts
    "bad_header",     # part 0 is not a msgpack map (or uses msgpack extension types)
    "bad_version",    # "v" is not the integer 1
    "unknown_kind",   # "kind" is not one of KINDS
    "missing_field",  # a required header field is absent
    "unknown_field",  # a header field that is neither defined nor "x-"-prefixed
    "bad_field",      # a header field has the wrong type or is out of range
    "bad_buffers",    # "bufs" descriptor invalid, or parts do not match it
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
    KIND_STIMULUS: (frozenset({"frame"}), frozenset(), ("image",), ()),
    KIND_RAW_FRAME: (frozenset({"frame"}), frozenset({"stamps"}), ("pixels",), ()),
}
# buffer name -> (allowed dtypes, number of dimensions)
_BUF_RULES: dict[str, tuple[tuple[str, ...], int]] = {
    "values": (("<f4",), 1),
    "roi_ids": (("<i8",), 1),
    "roi_centres": (("<f4",), 2),
    "image": (("<f4",), 2),
    "pixels": (("<i2", "<u2"), 2),
}
MAX_EXT_DIMS = 4
MAX_DIM = 4 * MAX_ROIS
MAX_INT64 = 2**63 - 1
MIN_INT64 = -(2**63)


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


@dataclass(frozen=True)
class StimulusFrame:
    """Ground-truth stimulus frame shown at ``frame_index`` (optional; for sinks and recording).

    ``image`` has shape (H, W), float32, pixel units 0..255. Decoders ignore it.
    """

    frame_index: int
    image: np.ndarray


@dataclass(frozen=True)
class RawFrame:
    """One raw imaging frame (int16 or uint16 pixels, shape (Ly, Lx)) for live extraction."""

    frame_index: int
    pixels: np.ndarray
    stamps: Stamps = ()


Body = Union[
    SessionInfo,
    FluorescenceFrame,
    ActivityFrame,
    DecodedFrame,
    BehaviourSample,
    Heartbeat,
    SessionEnd,
    Status,
    StimulusFrame,
    RawFrame,
]


@dataclass(frozen=True)
class Envelope:
    """A decoded, validated message: its header fields plus a typed body.

    ``ext`` holds the header's ``"x-"``-prefixed extension fields (plain msgpack values)
    and ``ext_bufs`` its ``"x-"``-prefixed extension buffers (read-only arrays); both are
    empty unless the sender added extensions. Decoders that do not know an extension
    ignore it.
    """

    kind: str
    session_id: str
    seq: int
    t_ns: int
    body: Body
    ext: Mapping[str, Any] = field(default_factory=dict)
    ext_bufs: Mapping[str, np.ndarray] = field(default_factory=dict)


def _fail(reason: str, message: str) -> ProtocolError:
    """A ProtocolError tagged with one of ``REASONS`` (read back with ``error_reason``)."""
    exc = MessageTooLargeError(message) if reason == "too_large" else ProtocolError(message)
    exc.reason = reason  # type: ignore[attr-defined]
    return exc


def error_reason(exc: ProtocolError) -> str:
    """The counter key of a decode error: one of ``REASONS`` (``"too_large"`` for any
    ``MessageTooLargeError``, ``"other"`` for a ProtocolError raised elsewhere)."""
    if isinstance(exc, MessageTooLargeError):
        return "too_large"
    reason = getattr(exc, "reason", "other")
    return reason if isinstance(reason, str) else "other"


# ---------------------------------------------------------------------------- encoding

Ext = Mapping[str, Any]


def _pack(header: dict[str, Any]) -> bytes:
    out = msgpack.packb(header, use_bin_type=True)
    assert isinstance(out, bytes)
    if len(out) > MAX_HEADER_BYTES:
        raise _fail("too_large", f"header of {len(out)} bytes exceeds {MAX_HEADER_BYTES}")
    return out


def _le(array: np.ndarray, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.dtype(dtype))


def _header(kind: str, session_id: str, seq: int, t_ns: int, ext: Ext | None = None) -> dict[str, Any]:
    sid = str(session_id)
    if not 1 <= len(sid) <= MAX_NAME_LEN:
        raise _fail("bad_field", f"session id must have 1..{MAX_NAME_LEN} characters, got {len(sid)}")
    if not 0 <= int(seq) < 2**64:
        raise _fail("bad_field", f"seq={seq} is outside [0, 2**64)")
    if not MIN_INT64 <= int(t_ns) <= MAX_INT64:
        raise _fail("bad_field", f"t_ns={t_ns} does not fit in int64")
    h: dict[str, Any] = {"v": PROTOCOL_VERSION, "kind": kind, "sid": sid, "seq": int(seq), "t_ns": int(t_ns)}
    for key, value in (ext or {}).items():
        if not (isinstance(key, str) and key.startswith("x-")):
            raise _fail("unknown_field", f"extension header field {key!r} must be a string starting with 'x-'")
        h[key] = value
    return h


def _wire_str(dtype: np.dtype) -> str:
    """The wire name of a dtype: always with '<' ("<u1", not numpy's "|u1")."""
    return f"<{dtype.kind}{dtype.itemsize}"


def _bufs(header: dict[str, Any], named: Sequence[tuple[str, np.ndarray]],
          ext_bufs: Mapping[str, np.ndarray] | None = None) -> list[Any]:
    named = list(named)
    for name, arr in (ext_bufs or {}).items():
        if not name.startswith("x-"):
            raise _fail("bad_buffers", f"extension buffer {name!r} must start with 'x-'")
        a = np.asarray(arr)
        if _wire_str(a.dtype) not in WIRE_DTYPES or a.ndim > MAX_EXT_DIMS:
            raise _fail("bad_buffers", f"extension buffer {name!r}: dtype {a.dtype} / {a.ndim} dims not allowed")
        named.append((name, _le(a, _wire_str(a.dtype))))
    header["bufs"] = [[name, _wire_str(arr.dtype), list(arr.shape)] for name, arr in named]
    payload: list[Any] = [memoryview(arr).cast("B") if arr.nbytes else b"" for _, arr in named]  # type: ignore[arg-type]
    return [_pack(header)] + payload


def _stamps_list(stamps: Stamps) -> list[list[Any]]:
    return [[str(n), int(t)] for n, t in stamps]


def encode_session_start(info: SessionInfo, *, seq: int, t_ns: int, ext: Ext | None = None) -> list[Any]:
    """Encode session metadata (sent first and re-sent periodically)."""
    h = _header(KIND_SESSION_START, info.session_id, seq, t_ns, ext)
    h.update(rate_hz=float(info.frame_rate_hz), plane=int(info.plane), n_rois=info.n_rois,
             activity=bool(info.is_activity), source=str(info.source))
    if info.stimulus_shape is not None:
        h["stim"] = [int(v) for v in info.stimulus_shape]
    named = [("roi_ids", _le(info.roi_ids, "<i8"))]
    if info.roi_centres_px is not None:
        named.append(("roi_centres", _le(info.roi_centres_px, "<f4")))
    return _bufs(h, named)


def _encode_values_frame(kind: str, frame: FluorescenceFrame | ActivityFrame, session_id: str,
                         ext: Ext | None, ext_bufs: Mapping[str, np.ndarray] | None) -> list[Any]:
    h = _header(kind, session_id, frame.seq, frame.acq_ns, ext)
    h["frame"] = int(frame.frame_index)
    if frame.behaviour is not None:
        h["beh"] = [float(v) for v in np.asarray(frame.behaviour, dtype=np.float64).reshape(-1)]
    if frame.stamps:
        h["stamps"] = _stamps_list(frame.stamps)
    return _bufs(h, [("values", _le(frame.values, "<f4"))], ext_bufs)


def encode_frame(frame: FluorescenceFrame, session_id: str, *, ext: Ext | None = None,
                 ext_bufs: Mapping[str, np.ndarray] | None = None) -> list[Any]:
    """Encode one ROI fluorescence frame (``frame.seq`` and ``frame.acq_ns`` go in the header)."""
    return _encode_values_frame(KIND_FRAME, frame, session_id, ext, ext_bufs)


def encode_activity(frame: ActivityFrame, session_id: str, *, ext: Ext | None = None,
                    ext_bufs: Mapping[str, np.ndarray] | None = None) -> list[Any]:
    """Encode one activity (deconvolved) frame."""
    return _encode_values_frame(KIND_ACTIVITY, frame, session_id, ext, ext_bufs)


def encode_behaviour(session_id: str, *, seq: int, t_ns: int, frame_index: int, values: Sequence[float],
                     ext: Ext | None = None) -> list[Any]:
    """Encode a stand-alone behaviour sample."""
    h = _header(KIND_BEHAVIOUR, session_id, seq, t_ns, ext)
    h["frame"] = int(frame_index)
    h["beh"] = [float(v) for v in values]
    return _bufs(h, [])


def encode_heartbeat(session_id: str, *, seq: int, t_ns: int, ext: Ext | None = None) -> list[Any]:
    """Encode a heartbeat."""
    return _bufs(_header(KIND_HEARTBEAT, session_id, seq, t_ns, ext), [])


def encode_session_end(session_id: str, *, seq: int, t_ns: int, n_frames: int, ext: Ext | None = None) -> list[Any]:
    """Encode the end of a session."""
    h = _header(KIND_SESSION_END, session_id, seq, t_ns, ext)
    h["n_frames"] = int(n_frames)
    return _bufs(h, [])


def encode_decoded(frame: DecodedFrame, session_id: str, *, ext: Ext | None = None,
                   ext_bufs: Mapping[str, np.ndarray] | None = None) -> list[Any]:
    """Encode one decoded stimulus frame with all its stage stamps."""
    h = _header(KIND_DECODED, session_id, frame.seq, frame.acq_ns, ext)
    h["frame"] = int(frame.frame_index)
    h["stamps"] = _stamps_list(frame.stamps)
    return _bufs(h, [("image", _le(frame.image, "<f4"))], ext_bufs)


def encode_status(session_id: str, *, seq: int, t_ns: int, state: str, metrics: Mapping[str, Any],
                  ext: Ext | None = None) -> list[Any]:
    """Encode a status message (lifecycle state + metrics map of plain values)."""
    h = _header(KIND_STATUS, session_id, seq, t_ns, ext)
    h["state"] = str(state)
    h["metrics"] = dict(metrics)
    return _bufs(h, [])


def encode_stimulus(session_id: str, *, seq: int, t_ns: int, frame_index: int, image: np.ndarray,
                    ext: Ext | None = None) -> list[Any]:
    """Encode the ground-truth stimulus frame ``image`` (H, W) shown at ``frame_index``.

    An optional message kind for sinks that show true vs decoded and for recording;
    decoders ignore it. ``t_ns`` is the time the frame was shown, on the source clock.
    """
    h = _header(KIND_STIMULUS, session_id, seq, t_ns, ext)
    h["frame"] = int(frame_index)
    return _bufs(h, [("image", _le(image, "<f4"))])


def encode_raw_frame(session_id: str, *, seq: int, t_ns: int, frame_index: int, pixels: np.ndarray,
                     stamps: Stamps = (), ext: Ext | None = None) -> list[Any]:
    """Encode one raw imaging frame for live extraction (``bindings.suite2p_live``).

    ``pixels`` is (Ly, Lx) int16 or uint16 (sent as "<i2" / "<u2", row-major);
    ``t_ns`` is the acquisition time on the source clock.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.dtype.kind not in "iu" or arr.dtype.itemsize != 2:
        raise _fail("bad_buffers", f"raw_frame pixels must be a 2-D int16/uint16 array, got {arr.dtype} {arr.shape}")
    h = _header(KIND_RAW_FRAME, session_id, seq, t_ns, ext)
    h["frame"] = int(frame_index)
    if stamps:
        h["stamps"] = _stamps_list(stamps)
    return _bufs(h, [("pixels", _le(arr, "<i2" if arr.dtype.kind == "i" else "<u2"))])


# ---------------------------------------------------------------------------- decoding


def _reject_ext(code: int, data: bytes) -> Any:
    raise _fail("bad_header", f"msgpack extension type {code} is not allowed in a header")


def _int(h: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    v = h[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise _fail("bad_field", f"header field {key!r} must be an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise _fail("bad_field", f"header field {key!r}={v} is outside [{lo}, {hi}]")
    return v


def _str(h: Mapping[str, Any], key: str, min_len: int = 0) -> str:
    v = h[key]
    if not isinstance(v, str):
        raise _fail("bad_field", f"header field {key!r} must be a string, got {type(v).__name__}")
    if not min_len <= len(v) <= MAX_NAME_LEN:
        raise _fail("bad_field", f"header field {key!r} must have {min_len}..{MAX_NAME_LEN} characters")
    return v


_F32_MAX = float(np.finfo(np.float32).max)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _beh(h: Mapping[str, Any]) -> np.ndarray | None:
    if "beh" not in h:
        return None
    v = h["beh"]
    if not isinstance(v, list) or len(v) != N_BEHAVIOUR or not all(_is_number(x) for x in v):
        raise _fail("bad_field", f"header field 'beh' must be a list of {N_BEHAVIOUR} numbers")
    out = [float(x) for x in v]
    if any(math.isfinite(x) and abs(x) > _F32_MAX for x in out):
        raise _fail("bad_field", "header field 'beh' has a value outside the float32 range")
    return np.asarray(out, dtype=np.float32)


def _stamps(h: Mapping[str, Any]) -> Stamps:
    if "stamps" not in h:
        return ()
    v = h["stamps"]
    if not isinstance(v, list) or len(v) > MAX_STAMPS:
        raise _fail("bad_field", f"header field 'stamps' must be a list of at most {MAX_STAMPS} [name, ns] pairs")
    out = []
    for item in v:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or len(item[0]) > MAX_NAME_LEN or isinstance(item[1], bool) or not isinstance(item[1], int)
                or not MIN_INT64 <= item[1] <= MAX_INT64):
            raise _fail("bad_field", "each entry of 'stamps' must be [name: str, ns: int64]")
        out.append((item[0], item[1]))
    return tuple(out)


def _nbytes(part: Any) -> int:
    return memoryview(part).nbytes


def _parse_header(raw: Any) -> dict[str, Any]:
    if _nbytes(raw) > MAX_HEADER_BYTES:
        raise _fail("too_large", f"header part of {_nbytes(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        h = msgpack.unpackb(memoryview(raw), raw=False, strict_map_key=True, ext_hook=_reject_ext)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise _fail("bad_header", f"header is not valid msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(h, dict):
        raise _fail("bad_header", f"header must be a msgpack map, got {type(h).__name__}")
    if any(not isinstance(k, str) for k in h):
        raise _fail("bad_header", "header map keys must all be strings")
    for key in ("v", "kind", "sid", "seq", "t_ns"):
        if key not in h:
            raise _fail("missing_field", f"header lacks required field {key!r}")
    v = h["v"]
    if isinstance(v, bool) or not isinstance(v, int) or v != PROTOCOL_VERSION:
        raise _fail("bad_version", f"unsupported protocol version {v!r} (this decoder speaks v{PROTOCOL_VERSION})")
    kind = h["kind"]
    if not isinstance(kind, str) or kind not in _SCHEMA:
        raise _fail("unknown_kind", f"unknown message kind {kind!r}; expected one of {', '.join(KINDS)}")
    required, optional, _, _ = _SCHEMA[kind]
    missing = sorted(required - h.keys())
    if missing:
        raise _fail("missing_field", f"{kind} header lacks required field(s) {missing}")
    unknown = sorted(k for k in h.keys() - _COMMON_KEYS - required - optional if not k.startswith("x-"))
    if unknown:
        raise _fail("unknown_field", f"{kind} header has unknown field(s) {unknown} (extensions must start with 'x-')")
    return h


def _buffers(kind: str, h: Mapping[str, Any], parts: Sequence[Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    _, _, req, opt = _SCHEMA[kind]
    descr = h.get("bufs", [])
    if not isinstance(descr, list):
        raise _fail("bad_buffers", "header field 'bufs' must be a list of [name, dtype, shape]")
    if len(descr) != len(parts):
        raise _fail("bad_buffers", f"{kind}: header describes {len(descr)} buffer(s) but the message has "
                                   f"{len(parts)} payload part(s)")
    out: dict[str, np.ndarray] = {}
    ext: dict[str, np.ndarray] = {}
    for d, part in zip(descr, parts):
        if not (isinstance(d, list) and len(d) == 3 and isinstance(d[0], str) and isinstance(d[1], str)
                and isinstance(d[2], list)):
            raise _fail("bad_buffers", "each entry of 'bufs' must be [name: str, dtype: str, shape: list]")
        name, dt, shape = d
        is_ext = name.startswith("x-") and len(name) <= MAX_NAME_LEN
        if not is_ext and name not in req and name not in opt:
            raise _fail("bad_buffers", f"{kind}: unexpected buffer {name!r}")
        if name in out or name in ext:
            raise _fail("bad_buffers", f"{kind}: buffer {name!r} appears twice")
        allowed, ndim = (tuple(WIRE_DTYPES), -1) if is_ext else _BUF_RULES[name]
        if dt not in allowed:
            raise _fail("bad_buffers", f"{kind}: buffer {name!r} has dtype {dt!r}; expected one of {list(allowed)}")
        ndim_ok = len(shape) <= MAX_EXT_DIMS if ndim < 0 else len(shape) == ndim
        if not ndim_ok or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_DIM
                                  for s in shape):
            raise _fail("bad_buffers", f"{kind}: buffer {name!r} has invalid shape {shape!r}"
                                       + ("" if ndim < 0 else f" (expected {ndim} dims)"))
        dtype = WIRE_DTYPES[dt]
        expected = dtype.itemsize * math.prod(shape)
        got = _nbytes(part)
        if got != expected:
            raise _fail("bad_buffers", f"{kind}: buffer {name!r} has {got} bytes; dtype {dt} shape {shape} "
                                       f"needs {expected}")
        arr = np.frombuffer(part, dtype=dtype).reshape(shape)
        arr.flags.writeable = False  # a view of received memory: stages must not write into it
        (ext if is_ext else out)[name] = arr
    missing = [n for n in req if n not in out]
    if missing:
        raise _fail("bad_buffers", f"{kind}: missing buffer(s) {missing}")
    return out, ext


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
        Naming what is wrong, tagged with one of ``REASONS`` (see ``error_reason``);
        ``MessageTooLargeError`` for size violations. Nothing else, whatever the input.
    """
    if isinstance(parts, (bytes, bytearray, memoryview, str)) or not isinstance(parts, Sequence) or not parts:
        raise _fail("not_bytes", "a message must be a non-empty sequence of bytes-like parts")
    try:
        total = sum(_nbytes(p) for p in parts)
    except TypeError:
        raise _fail("not_bytes", "message parts must be bytes-like") from None
    if total > max_bytes:
        raise _fail("too_large", f"message of {total} bytes exceeds the limit of {max_bytes}")
    h = _parse_header(parts[0])
    kind = h["kind"]
    sid = _str(h, "sid", min_len=1)
    seq = _int(h, "seq", 0, 2**64 - 1)
    t_ns = _int(h, "t_ns", MIN_INT64, MAX_INT64)
    bufs, ext_bufs = _buffers(kind, h, parts[1:])
    ext = {k: v for k, v in h.items() if k.startswith("x-")}
    body: Body
    if kind == KIND_SESSION_START:
        n = _int(h, "n_rois", 1, MAX_ROIS)
        rate = h["rate_hz"]
        if not _is_number(rate) or not (math.isfinite(rate) and 0 < rate <= 10_000):
            raise _fail("bad_field", f"session_start: rate_hz must be a finite number in (0, 10000], got {rate!r}")
        if not isinstance(h["activity"], bool):
            raise _fail("bad_field", "session_start: 'activity' must be a boolean")
        ids = bufs["roi_ids"]
        if ids.shape[0] != n:
            raise _fail("bad_buffers", f"session_start: n_rois={n} but roi_ids has {ids.shape[0]} entries")
        centres = bufs.get("roi_centres")
        if centres is not None and centres.shape != (n, 2):
            raise _fail("bad_buffers", f"session_start: roi_centres must have shape ({n}, 2), "
                                       f"got {list(centres.shape)}")
        stim = h.get("stim")
        if stim is not None and not (isinstance(stim, list) and len(stim) == 2 and all(
                isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 4096 for s in stim)):
            raise _fail("bad_field", f"session_start: 'stim' must be [height, width], got {stim!r}")
        source = _str(h, "source") if "source" in h else ""
        plane = _int(h, "plane", 0, 1023)
        try:
            body = SessionInfo(session_id=sid, roi_ids=ids, frame_rate_hz=float(rate), plane=plane,
                               roi_centres_px=centres, stimulus_shape=(stim[0], stim[1]) if stim else None,
                               is_activity=h["activity"], source=source)
        except ValueError as exc:  # SessionInfo's own validation
            raise _fail("bad_field", f"session_start: {exc}") from None
    elif kind in (KIND_FRAME, KIND_ACTIVITY):
        values = bufs["values"]
        if values.shape[0] < 1 or values.shape[0] > MAX_ROIS:
            raise _fail("bad_buffers", f"{kind}: values must have 1..{MAX_ROIS} entries, got {values.shape[0]}")
        cls = FluorescenceFrame if kind == KIND_FRAME else ActivityFrame
        body = cls(seq, _int(h, "frame", 0, MAX_INT64), t_ns, stamps=_stamps(h), values=values, behaviour=_beh(h))
    elif kind == KIND_BEHAVIOUR:
        beh = _beh(h)
        assert beh is not None
        body = BehaviourSample(_int(h, "frame", 0, MAX_INT64), beh)
    elif kind == KIND_HEARTBEAT:
        body = Heartbeat()
    elif kind == KIND_SESSION_END:
        body = SessionEnd(_int(h, "n_frames", 0, MAX_INT64))
    elif kind == KIND_DECODED:
        body = DecodedFrame(seq, _int(h, "frame", 0, MAX_INT64), t_ns, stamps=_stamps(h), image=bufs["image"])
    elif kind == KIND_STIMULUS:
        body = StimulusFrame(_int(h, "frame", 0, MAX_INT64), bufs["image"])
    elif kind == KIND_RAW_FRAME:
        body = RawFrame(_int(h, "frame", 0, MAX_INT64), bufs["pixels"], _stamps(h))
    else:  # KIND_STATUS
        metrics = h.get("metrics", {})
        if not isinstance(metrics, dict):
            raise _fail("bad_field", "status: 'metrics' must be a map")
        body = Status(_str(h, "state"), metrics)
    return Envelope(kind=kind, session_id=sid, seq=seq, t_ns=t_ns, body=body, ext=ext, ext_bufs=ext_bufs)
