"""Wire protocol v1: round trip of every kind, malformed input, zero-copy payloads."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rt_decoder.errors import MessageTooLargeError, ProtocolError
from rt_decoder.messages import ActivityFrame, DecodedFrame, FluorescenceFrame, SessionInfo
from streaming import protocol as P

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sids = st.text(min_size=1, max_size=40)
seqs = st.integers(0, 2**64 - 1)
stamps_ns = st.integers(-(2**63), 2**63 - 1)
f32 = st.floats(width=32, allow_nan=False)
stamps = st.lists(st.tuples(st.text(max_size=12), st.integers(0, 2**63 - 1)), max_size=5).map(tuple)


def _parts_bytes(parts: list[Any]) -> list[bytes]:
    """What a receiver gets: each part as its own bytes object."""
    return [bytes(p) for p in parts]


def _values(draw: st.DrawFn, n: int) -> np.ndarray:
    return np.asarray(draw(st.lists(f32, min_size=n, max_size=n)), dtype=np.float32)


@st.composite
def session_infos(draw: st.DrawFn) -> SessionInfo:
    n = draw(st.integers(1, 50))
    ids = np.asarray(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)), np.int64)
    centres = None
    if draw(st.booleans()):
        centres = np.asarray(draw(st.lists(f32, min_size=2 * n, max_size=2 * n)), np.float32).reshape(n, 2)
    stim = draw(st.none() | st.tuples(st.integers(1, 4096), st.integers(1, 4096)))
    return SessionInfo(session_id=draw(sids), roi_ids=ids, frame_rate_hz=draw(st.floats(0.01, 10_000)),
                       plane=draw(st.integers(0, 1023)), roi_centres_px=centres, stimulus_shape=stim,
                       is_activity=draw(st.booleans()), source=draw(st.text(max_size=20)))


@st.composite
def value_frames(draw: st.DrawFn, cls: type) -> Any:
    n = draw(st.integers(1, 64))
    beh = None if draw(st.booleans()) else np.asarray(draw(st.lists(f32, min_size=4, max_size=4)), np.float32)
    return cls(draw(seqs), draw(st.integers(0, 2**63 - 1)), draw(stamps_ns), stamps=draw(stamps),
               values=_values(draw, n), behaviour=beh)


@st.composite
def images(draw: st.DrawFn) -> np.ndarray:
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    return _values(draw, h * w).reshape(h, w)


# ---------------------------------------------------------------------------- round trips


@FAST
@given(info=session_infos(), seq=seqs, t=stamps_ns)
def test_session_start_round_trip(info: SessionInfo, seq: int, t: int) -> None:
    env = P.decode(_parts_bytes(P.encode_session_start(info, seq=seq, t_ns=t)))
    assert (env.kind, env.session_id, env.seq, env.t_ns) == (P.KIND_SESSION_START, info.session_id, seq, t)
    got = env.body
    assert isinstance(got, SessionInfo)
    np.testing.assert_array_equal(got.roi_ids, info.roi_ids)
    assert got.roi_ids.dtype == np.int64
    if info.roi_centres_px is None:
        assert got.roi_centres_px is None
    else:
        np.testing.assert_array_equal(got.roi_centres_px, info.roi_centres_px)
    assert (got.frame_rate_hz, got.plane, got.stimulus_shape, got.is_activity, got.source) == (
        info.frame_rate_hz, info.plane, info.stimulus_shape, info.is_activity, info.source)


@FAST
@given(frame=st.one_of(value_frames(FluorescenceFrame), value_frames(ActivityFrame)), sid=sids)
def test_values_frame_round_trip(frame: FluorescenceFrame | ActivityFrame, sid: str) -> None:
    enc = P.encode_frame if isinstance(frame, FluorescenceFrame) else P.encode_activity
    env = P.decode(_parts_bytes(enc(frame, sid)))  # type: ignore[arg-type]
    assert env.kind == (P.KIND_FRAME if isinstance(frame, FluorescenceFrame) else P.KIND_ACTIVITY)
    got = env.body
    assert type(got) is type(frame)
    assert (env.seq, env.t_ns, env.session_id) == (frame.seq, frame.acq_ns, sid)
    assert (got.seq, got.frame_index, got.acq_ns, got.stamps) == (frame.seq, frame.frame_index, frame.acq_ns,
                                                                   frame.stamps)
    assert got.values.dtype == np.float32
    np.testing.assert_array_equal(got.values, frame.values)
    if frame.behaviour is None:
        assert got.behaviour is None
    else:
        np.testing.assert_array_equal(got.behaviour, frame.behaviour)


@FAST
@given(seq=seqs, t=stamps_ns, sid=sids, image=images(), fi=st.integers(0, 2**63 - 1), st_=stamps)
def test_decoded_and_stimulus_round_trip(seq: int, t: int, sid: str, image: np.ndarray, fi: int,
                                         st_: tuple[tuple[str, int], ...]) -> None:
    env = P.decode(_parts_bytes(P.encode_decoded(DecodedFrame(seq, fi, t, stamps=st_, image=image), sid)))
    assert isinstance(env.body, DecodedFrame)
    assert (env.body.frame_index, env.body.stamps, env.body.seq, env.body.acq_ns) == (fi, st_, seq, t)
    np.testing.assert_array_equal(env.body.image, image)
    env = P.decode(_parts_bytes(P.encode_stimulus(sid, seq=seq, t_ns=t, frame_index=fi, image=image)))
    assert isinstance(env.body, P.StimulusFrame) and env.body.frame_index == fi
    np.testing.assert_array_equal(env.body.image, image)


@FAST
@given(seq=seqs, t=stamps_ns, sid=sids, beh=st.lists(f32, min_size=4, max_size=4), n=st.integers(0, 2**63 - 1),
       metrics=st.dictionaries(st.text(max_size=8), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8)
                               | st.floats(allow_nan=False), max_size=5))
def test_small_kinds_round_trip(seq: int, t: int, sid: str, beh: list[float], n: int,
                                metrics: dict[str, Any]) -> None:
    env = P.decode(_parts_bytes(P.encode_behaviour(sid, seq=seq, t_ns=t, frame_index=n, values=beh)))
    assert isinstance(env.body, P.BehaviourSample) and env.body.frame_index == n
    np.testing.assert_array_equal(env.body.values, np.asarray(beh, np.float32))
    env = P.decode(_parts_bytes(P.encode_heartbeat(sid, seq=seq, t_ns=t)))
    assert isinstance(env.body, P.Heartbeat) and (env.seq, env.t_ns, env.session_id) == (seq, t, sid)
    env = P.decode(_parts_bytes(P.encode_session_end(sid, seq=seq, t_ns=t, n_frames=n)))
    assert env.body == P.SessionEnd(n)
    env = P.decode(_parts_bytes(P.encode_status(sid, seq=seq, t_ns=t, state="READY", metrics=metrics)))
    assert env.body == P.Status("READY", metrics)


def test_every_kind_is_covered_by_an_encoder() -> None:
    encoders = {n[len("encode_"):] for n in dir(P) if n.startswith("encode_")}
    assert set(P.KINDS) == {"session_start", "frame", "activity", "behaviour", "heartbeat", "session_end",
                            "decoded", "status", "stimulus", "raw_frame"}
    assert set(P.KINDS) <= encoders


@FAST
@given(seq=seqs, t=stamps_ns, sid=sids, fi=st.integers(0, 2**63 - 1), st_=stamps, signed=st.booleans(),
       shape=st.tuples(st.integers(1, 6), st.integers(1, 6)), seed=st.integers(0, 2**32 - 1))
def test_raw_frame_round_trip(seq: int, t: int, sid: str, fi: int, st_: tuple[tuple[str, int], ...], signed: bool,
                              shape: tuple[int, int], seed: int) -> None:
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    pixels = np.random.default_rng(seed).integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    env = P.decode(_parts_bytes(P.encode_raw_frame(sid, seq=seq, t_ns=t, frame_index=fi, pixels=pixels,
                                                   stamps=st_)))
    assert isinstance(env.body, P.RawFrame)
    assert (env.body.frame_index, env.body.stamps) == (fi, st_)
    assert env.body.pixels.dtype == dtype
    np.testing.assert_array_equal(env.body.pixels, pixels)


def test_extensions_round_trip_and_are_separate_from_the_body() -> None:
    frame = FluorescenceFrame(3, 7, 11, values=np.arange(5, dtype=np.float32))
    parts = P.encode_frame(frame, "s", ext={"x-trial": 4, "x-note": "hi"},
                           ext_bufs={"x-mask": np.array([1, 0, 1], np.uint8)})
    env = P.decode(_parts_bytes(parts))
    assert env.ext == {"x-trial": 4, "x-note": "hi"}
    np.testing.assert_array_equal(env.ext_bufs["x-mask"], [1, 0, 1])
    with pytest.raises(ProtocolError, match="x-"):
        P.encode_frame(frame, "s", ext={"trial": 4})


def test_payload_arrays_are_zero_copy_views() -> None:
    frame = FluorescenceFrame(0, 0, 0, values=np.arange(8, dtype=np.float32))
    parts = [bytearray(p) for p in P.encode_frame(frame, "s")]
    env = P.decode(parts)
    assert isinstance(env.body, FluorescenceFrame)
    values = env.body.values
    assert np.shares_memory(values, np.frombuffer(parts[1], np.uint8))
    parts[1][0:4] = np.float32(42.0).tobytes()  # change the received buffer: the view sees it
    assert values[0] == 42.0
    ro = P.decode(_parts_bytes(P.encode_frame(frame, "s"))).body
    assert isinstance(ro, FluorescenceFrame) and not ro.values.flags.writeable


def test_wire_layout_is_little_endian_and_header_is_plain_msgpack() -> None:
    frame = FluorescenceFrame(5, 9, 123, values=np.array([1.0, -2.0], np.float32),
                              behaviour=np.array([0.5, 1, 2, 3], np.float32))
    parts = _parts_bytes(P.encode_frame(frame, "abc"))
    assert parts[1] == bytes.fromhex("0000803f000000c0")
    h = msgpack.unpackb(parts[0])
    assert h == {"v": 1, "kind": "frame", "sid": "abc", "seq": 5, "t_ns": 123, "frame": 9,
                 "beh": [0.5, 1.0, 2.0, 3.0], "bufs": [["values", "<f4", [2]]]}


# ---------------------------------------------------------------------------- malformed input


def _frame_parts() -> list[bytes]:
    f = FluorescenceFrame(1, 2, 3, values=np.arange(4, dtype=np.float32), behaviour=np.zeros(4, np.float32))
    return _parts_bytes(P.encode_frame(f, "sid"))


def _with_header(parts: list[bytes], **changes: Any) -> list[bytes]:
    h = msgpack.unpackb(parts[0])
    for k, v in changes.items():
        if v is _DROP:
            h.pop(k, None)
        else:
            h[k] = v
    return [msgpack.packb(h)] + parts[1:]


_DROP = object()


def _reason(parts: Any, **kw: Any) -> str:
    with pytest.raises(ProtocolError) as exc:
        P.decode(parts, **kw)
    return P.error_reason(exc.value)


@pytest.mark.parametrize(("changes", "reason"), [
    ({"v": 2}, "bad_version"),
    ({"v": True}, "bad_version"),
    ({"v": 1.0}, "bad_version"),
    ({"v": "1"}, "bad_version"),
    ({"kind": "fram"}, "unknown_kind"),
    ({"kind": ["frame"]}, "unknown_kind"),
    ({"kind": 3}, "unknown_kind"),
    ({"v": _DROP}, "missing_field"),
    ({"seq": _DROP}, "missing_field"),
    ({"frame": _DROP}, "missing_field"),
    ({"seq": -1}, "bad_field"),
    ({"seq": 1.5}, "bad_field"),
    ({"seq": "1"}, "bad_field"),
    ({"t_ns": None}, "bad_field"),
    ({"sid": ""}, "bad_field"),
    ({"sid": 7}, "bad_field"),
    ({"frame": -3}, "bad_field"),
    ({"beh": [1, 2, 3]}, "bad_field"),
    ({"beh": [1, 2, 3, "a"]}, "bad_field"),
    ({"stamps": [["a", 1.5]]}, "bad_field"),
    ({"stamps": "x"}, "bad_field"),
    ({"colour": 1}, "unknown_field"),
    ({"bufs": _DROP}, "bad_buffers"),
    ({"bufs": "values"}, "bad_buffers"),
    ({"bufs": [["values", ">f4", [4]]]}, "bad_buffers"),
    ({"bufs": [["values", "<f8", [2]]]}, "bad_buffers"),
    ({"bufs": [["values", "<f4", [5]]]}, "bad_buffers"),
    ({"bufs": [["values", "<f4", [2, 2]]]}, "bad_buffers"),
    ({"bufs": [["values", "<f4", [-4]]]}, "bad_buffers"),
    ({"bufs": [["other", "<f4", [4]]]}, "bad_buffers"),
    ({"bufs": [["values", "<f4"]]}, "bad_buffers"),
])
def test_bad_header_fields_are_named(changes: dict[str, Any], reason: str) -> None:
    assert _reason(_with_header(_frame_parts(), **changes)) == reason


def test_structural_errors() -> None:
    parts = _frame_parts()
    assert _reason([]) == "not_bytes"
    assert _reason(b"abc") == "not_bytes"
    assert _reason([parts[0], 5]) == "not_bytes"
    assert _reason(parts[:1]) == "bad_buffers"  # truncated multipart
    assert _reason(parts + [b"\0" * 16]) == "bad_buffers"  # extra part
    assert _reason([parts[0], parts[1][:-1]]) == "bad_buffers"  # short buffer
    assert _reason([parts[0], parts[1] + b"\0"]) == "bad_buffers"
    assert _reason([b"\xc1"] + parts[1:]) == "bad_header"
    assert _reason([msgpack.packb([1, 2])] + parts[1:]) == "bad_header"
    assert _reason([msgpack.packb({1: 2})] + parts[1:]) == "bad_header"
    assert _reason([msgpack.packb(msgpack.ExtType(1, b"x"))]) == "bad_header"
    assert _reason([parts[0] + b"\x00"] + parts[1:]) == "bad_header"  # trailing bytes
    with pytest.raises(MessageTooLargeError):
        P.decode(parts, max_bytes=sum(map(len, parts)) - 1)
    assert _reason([b"\0" * (P.MAX_HEADER_BYTES + 1)]) == "too_large"
    info = SessionInfo("s", np.arange(3), 30.0)
    sparts = _parts_bytes(P.encode_session_start(info, seq=0, t_ns=0))
    assert _reason(_with_header(sparts, n_rois=4)) == "bad_buffers"
    assert _reason(_with_header(sparts, rate_hz=0.0)) == "bad_field"
    assert _reason(_with_header(sparts, rate_hz=float("nan"))) == "bad_field"
    assert _reason(_with_header(sparts, activity=1)) == "bad_field"
    assert _reason(_with_header(sparts, stim=[36])) == "bad_field"
    assert _reason(_with_header(sparts, plane=5000)) == "bad_field"


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.binary(max_size=64), max_size=4))
def test_random_bytes_only_ever_raise_protocol_error(parts: list[bytes]) -> None:
    try:
        P.decode(parts)
    except ProtocolError as exc:
        assert P.error_reason(exc) in P.REASONS


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=10,
)


def _encoded_examples() -> list[list[bytes]]:
    info = SessionInfo("s", np.arange(3), 30.0, roi_centres_px=np.zeros((3, 2), np.float32))
    return [
        _parts_bytes(P.encode_session_start(info, seq=0, t_ns=1)),
        _frame_parts(),
        _parts_bytes(P.encode_decoded(DecodedFrame(0, 1, 2, image=np.zeros((2, 3), np.float32)), "s")),
        _parts_bytes(P.encode_status("s", seq=0, t_ns=0, state="RUNNING", metrics={"a": 1})),
        _parts_bytes(P.encode_stimulus("s", seq=0, t_ns=0, frame_index=0, image=np.zeros((2, 2), np.float32))),
    ]


@settings(max_examples=400, deadline=None)
@given(which=st.integers(0, 4), key=st.sampled_from(["v", "kind", "sid", "seq", "t_ns", "bufs", "frame", "beh",
                                                      "stamps", "n_rois", "rate_hz", "plane", "activity",
                                                      "stim", "state", "metrics", "source", "zz"]),
       value=msgpack_values, cut=st.integers(0, 3), flip=st.integers(0, 10_000))
def test_mutated_messages_decode_or_raise_protocol_error(which: int, key: str, value: Any, cut: int,
                                                         flip: int) -> None:
    """Replace one header field by any msgpack value, drop parts, flip a byte: never another exception."""
    parts = _encoded_examples()[which]
    candidates = [_with_header(parts, **{key: value}), parts[: max(1, len(parts) - cut)]]
    flipped = [bytearray(p) for p in parts]
    i = flip % len(flipped)
    if flipped[i]:
        flipped[i][flip % len(flipped[i])] ^= 0xFF
    candidates.append([bytes(p) for p in flipped])
    for c in candidates:
        try:
            env = P.decode(c)
        except ProtocolError as exc:
            assert P.error_reason(exc) in P.REASONS
        else:
            assert env.kind in P.KINDS


def test_nan_values_pass_the_protocol_layer() -> None:
    """Non-finite values are well-formed on the wire; receivers decide (see docs/protocol.md)."""
    f = FluorescenceFrame(0, 0, 0, values=np.array([np.nan, 1.0], np.float32))
    env = P.decode(_parts_bytes(P.encode_frame(f, "s")))
    assert isinstance(env.body, FluorescenceFrame) and np.isnan(env.body.values[0])


def test_encoders_refuse_what_decoders_would_reject() -> None:
    with pytest.raises(ProtocolError, match="session id"):
        P.encode_heartbeat("", seq=0, t_ns=0)
    with pytest.raises(ProtocolError, match="seq"):
        P.encode_heartbeat("s", seq=-1, t_ns=0)
    with pytest.raises(MessageTooLargeError):
        P.encode_status("s", seq=0, t_ns=0, state="x", metrics={"big": "a" * P.MAX_HEADER_BYTES})


def test_the_hex_dump_in_docs_protocol_md_is_what_the_encoder_sends() -> None:
    """Keeps the worked example of docs/protocol.md honest."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    blocks = re.findall(r"Part (\d) \((\d+) bytes[^\n]*\n\n```\n(.*?)```", doc, flags=re.S)
    assert len(blocks) == 2
    dumped = []
    for _, size, block in blocks:
        data = bytearray()
        for line in block.splitlines():
            for tok in line.split():
                if not re.fullmatch(r"[0-9a-f]{2}", tok):
                    break
                data.append(int(tok, 16))
        assert len(data) == int(size)
        dumped.append(bytes(data))
    frame = FluorescenceFrame(7, 42, 1_000_000_000, values=np.array([1.0, -2.0, 0.5], np.float32),
                              behaviour=np.array([0.5, 1.25, 0, 0], np.float32))
    assert _parts_bytes(P.encode_frame(frame, "s1")) == dumped
