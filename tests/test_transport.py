"""Transport: publisher numbering, subscriber validation/gap/restart tracking, fake and real zmq."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rt_decoder.errors import ConfigError, MessageTooLargeError
from rt_decoder.messages import FluorescenceFrame, SessionInfo
from streaming import protocol as P
from streaming.transport import (
    GapEvent,
    InMemoryLink,
    SessionChange,
    StreamPublisher,
    StreamSubscriber,
    check_bind_address,
    fake_pair,
    is_loopback_address,
)

N = 6


class FakeClock:
    """Advances only when told: makes resend / heartbeat timing deterministic."""

    def __init__(self) -> None:
        self.t = 1_000_000_000

    def __call__(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += int(seconds * 1e9)


def _info(sid: str = "sess-A", n: int = N) -> SessionInfo:
    return SessionInfo(sid, np.arange(100, 100 + n), 30.0, roi_centres_px=np.ones((n, 2), np.float32),
                       source="test")


def _drain(sub: StreamSubscriber) -> list[P.Envelope]:
    out = []
    while (env := sub.recv(0)) is not None:
        out.append(env)
    return out


def _values(k: int, n: int = N) -> np.ndarray:
    return np.arange(n, dtype=np.float32) + 10 * k


def test_publisher_numbers_every_message_from_zero() -> None:
    clock = FakeClock()
    pub, sub, _ = fake_pair(_info(), publisher_kw={"clock_ns": clock, "resend_info_every_s": 1.0})
    for k in range(5):
        pub.send_frame(_values(k), k, acq_ns=clock(), behaviour=np.arange(4, dtype=np.float32))
        clock.advance(0.1)
    pub.send_stimulus(np.zeros((2, 3), np.float32), 4, clock())
    pub.end(5)
    envs = _drain(sub)
    assert [e.seq for e in envs] == list(range(8))
    assert [e.kind for e in envs] == ["session_start"] + ["frame"] * 5 + ["stimulus", "session_end"]
    assert isinstance(envs[0].body, SessionInfo) and envs[0].body.n_rois == N
    frames = [e.body for e in envs if isinstance(e.body, FluorescenceFrame)]
    assert [f.frame_index for f in frames] == list(range(5))
    np.testing.assert_array_equal(frames[3].values, _values(3))
    assert sub.counters.missing == 0 and sub.counters.malformed == 0 and sub.counters.received == 8
    assert sub.session_ended and sub.session_info is not None


def test_session_info_is_resent_and_heartbeats_only_when_idle() -> None:
    clock = FakeClock()
    pub, sub, _ = fake_pair(_info(), publisher_kw={"clock_ns": clock, "resend_info_every_s": 1.0,
                                                   "heartbeat_every_s": 0.5})
    pub.start()
    for k in range(100):  # 3.3 s of 30 Hz frames
        clock.advance(1 / 30)
        pub.send_frame(_values(k), k, clock())
        pub.heartbeat_if_idle()  # busy: never a heartbeat
    kinds = [e.kind for e in _drain(sub)]
    assert kinds.count("heartbeat") == 0
    starts = [i for i, k in enumerate(kinds) if k == "session_start"]
    assert len(starts) == 4 and starts[0] == 0  # t = 0 then every ~1 s (31 frames: 1 s + 1 frame)
    assert all(b - a == 32 for a, b in zip(starts, starts[1:]))  # 31 frames + the re-send itself
    clock.advance(0.4)
    assert not pub.heartbeat_if_idle()
    clock.advance(0.2)
    assert pub.heartbeat_if_idle()
    assert [e.kind for e in _drain(sub)] == ["heartbeat"]


def test_gaps_are_counted_per_session_from_seq() -> None:
    lost = {3, 4, 9}
    pub, sub, link = fake_pair(_info(), drop=lambda i, parts: i in lost)
    for k in range(12):
        pub.send_frame(_values(k), k, k)
    got = _drain(sub)
    assert link.dropped == 3
    assert sub.counters.missing == 3 and sub.counters.gap_events == 2
    events = [e for e in sub.drain_events() if isinstance(e, GapEvent)]
    assert events == [GapEvent("sess-A", 3, 5, 2), GapEvent("sess-A", 9, 10, 1)]
    assert [e.seq for e in got] == [s for s in range(13) if s not in lost]
    frame_idx = [e.body.frame_index for e in got if isinstance(e.body, FluorescenceFrame)]
    assert frame_idx == [k for k in range(12) if k + 1 not in lost]


def test_late_joiner_sees_no_gap_and_gets_info_from_the_resend() -> None:
    clock = FakeClock()
    link = InMemoryLink(drop=lambda i, parts: i < 20)  # the subscriber "joins" at message 20
    pub = StreamPublisher(link.pub_socket, _info(), clock_ns=clock, resend_info_every_s=1.0)
    sub = StreamSubscriber(link.sub_socket)
    for k in range(60):
        clock.advance(1 / 30)
        pub.send_frame(_values(k), k, clock())
    got = _drain(sub)
    assert sub.counters.missing == 0
    first_info = next(i for i, e in enumerate(got) if e.kind == "session_start")
    assert got[first_info].seq > 0  # a re-send, not the original
    assert sub.counters.frames_before_info == first_info <= 31  # within one resend period (1 s at 30 Hz)


def test_source_restart_with_a_new_session_id_is_reported() -> None:
    link = InMemoryLink()
    sub = StreamSubscriber(link.sub_socket)
    a = StreamPublisher(link.pub_socket, _info("A"))
    for k in range(3):
        a.send_frame(_values(k), k, k)
    b = StreamPublisher(link.pub_socket, _info("B", n=4))  # restarted source, new id, new ROI count
    for k in range(2):
        b.send_frame(_values(k, 4), k, k)
    envs = _drain(sub)
    assert len(envs) == 7
    assert sub.counters.sessions == 2 and sub.counters.session_changes == 1 and sub.counters.missing == 0
    changes = [e for e in sub.drain_events() if isinstance(e, SessionChange)]
    assert changes == [SessionChange(None, "A", False), SessionChange("A", "B", False)]
    assert sub.session_id == "B" and sub.session_info is not None and sub.session_info.n_rois == 4
    # a restart that keeps the id: a fresh session_start with seq 0
    c = StreamPublisher(link.pub_socket, _info("B", n=4))
    c.send_frame(_values(0, 4), 0, 0)
    _drain(sub)
    assert sub.counters.session_changes == 2 and sub.counters.out_of_order == 0 and sub.counters.missing == 0


def test_malformed_messages_are_counted_and_valid_ones_still_arrive() -> None:
    pub, sub, link = fake_pair(_info())
    pub.start()
    good = P.encode_frame(FluorescenceFrame(1, 0, 0, values=_values(0)), "sess-A")
    h = msgpack.unpackb(bytes(good[0]))
    link.inject([b"\x00garbage"])
    link.inject([msgpack.packb({**h, "v": 9}), bytes(good[1])])
    link.inject([bytes(good[0])])  # truncated multipart
    link.inject([bytes(good[0]), bytes(good[1])[:-4]])  # wrong buffer size
    link.inject(P.encode_frame(FluorescenceFrame(1, 0, 0, values=_values(0, N + 1)), "sess-A"))
    link.inject(P.encode_frame(FluorescenceFrame(1, 0, 0, values=np.full(N, np.nan, np.float32)), "sess-A"))
    pub.send_frame(_values(1), 1, 1)
    envs = _drain(sub)
    assert [e.kind for e in envs] == ["session_start", "frame"]
    assert sub.counters.malformed == 6
    assert sub.counters.malformed_by_reason == {"bad_header": 1, "bad_version": 1, "bad_buffers": 2,
                                                "n_rois_mismatch": 1, "nonfinite": 1}


def test_oversize_messages_are_counted_by_the_subscriber_and_refused_by_the_publisher() -> None:
    pub, sub, link = fake_pair(_info(), subscriber_kw={"max_bytes": 200})
    link.inject(P.encode_frame(FluorescenceFrame(1, 0, 0, values=np.zeros(100, np.float32)), "sess-A"))
    assert sub.recv(0) is None and sub.counters.malformed_by_reason == {"too_large": 1}
    small = StreamPublisher(InMemoryLink().pub_socket, _info(n=200), max_bytes=1000)
    with pytest.raises(MessageTooLargeError):
        small.start()


@settings(max_examples=50, deadline=None)
@given(garbage=st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=3), max_size=6))
def test_subscriber_never_raises_on_garbage(garbage: list[list[bytes]]) -> None:
    pub, sub, link = fake_pair(_info())
    for parts in garbage:
        link.inject(parts)
    pub.send_frame(_values(0), 0, 0)
    kinds = [e.kind for e in _drain(sub)]
    assert kinds[-2:] == ["session_start", "frame"]
    assert sub.counters.malformed + sub.counters.received == len(garbage) + 2


@pytest.mark.parametrize(("address", "local"), [
    ("tcp://127.0.0.1:5555", True), ("tcp://localhost:1", True), ("tcp://[::1]:5", True),
    ("tcp://127.3.4.5:*", True), ("ipc:///tmp/x", True), ("inproc://a", True), ("tcp://lo:5", True),
    ("tcp://*:5555", False), ("tcp://0.0.0.0:5555", False), ("tcp://10.0.0.2:5", False),
    ("tcp://eth0:5", False), ("udp://127.0.0.1:5", False),
])
def test_loopback_detection(address: str, local: bool) -> None:
    assert is_loopback_address(address) is local


def test_non_loopback_bind_is_refused_unless_asked_for() -> None:
    with pytest.raises(ConfigError, match="0.0.0.0"):
        StreamPublisher("tcp://0.0.0.0:*", _info())
    with pytest.raises(ConfigError, match=r"\*"):
        StreamSubscriber("tcp://*:*", bind=True)
    check_bind_address("tcp://0.0.0.0:5555", allow_remote=True)
    with pytest.raises(ConfigError, match="resend_info_every_s"):
        StreamPublisher(InMemoryLink().pub_socket, _info(), resend_info_every_s=0)


def test_real_zmq_round_trip_with_zero_copy_payloads() -> None:
    import zmq

    with StreamPublisher("tcp://127.0.0.1:*", _info(n=5000), bind=True) as pub:
        assert pub.address.startswith("tcp://127.0.0.1:") and not pub.address.endswith("*")
        with StreamSubscriber(pub.address) as sub:
            assert pub.wait_for_subscribers(1, timeout_s=10)
            pub.start()
            for k in range(20):
                pub.send_frame(_values(k, 5000), k, k, behaviour=np.ones(4, np.float32))
            pub.end(20)
            envs: list[P.Envelope] = []
            while len(envs) < 22:
                env = sub.recv(5000)
                assert env is not None
                envs.append(env)
            assert [e.seq for e in envs] == list(range(22))
            assert sub.counters.missing == 0 and sub.counters.malformed == 0
            frame = envs[5].body
            assert isinstance(frame, FluorescenceFrame)
            np.testing.assert_array_equal(frame.values, _values(4, 5000))
            assert not frame.values.flags.owndata and not frame.values.flags.writeable
            base: Any = frame.values
            while isinstance(base, np.ndarray) and base.base is not None:
                base = base.base
            assert isinstance(base, (zmq.Frame, memoryview))
            assert sub.last_recv_ns > 0


def test_real_zmq_late_joiner_gets_session_info_from_a_resend() -> None:
    clock = FakeClock()
    with StreamPublisher("tcp://127.0.0.1:*", _info(), clock_ns=clock, resend_info_every_s=1.0) as pub:
        pub.start()
        for k in range(10):  # nobody listening yet: these are lost
            clock.advance(1 / 30)
            pub.send_frame(_values(k), k, clock())
        with StreamSubscriber(pub.address) as sub:
            assert pub.wait_for_subscribers(1, timeout_s=10)
            got: list[P.Envelope] = []
            k = 10
            while sub.session_info is None and k < 200:
                clock.advance(1 / 30)
                pub.send_frame(_values(k), k, clock())
                k += 1
                env = sub.recv(1000)
                assert env is not None
                got.append(env)
            assert sub.session_info is not None and sub.session_info.n_rois == N
            assert sub.counters.frames_before_info <= 31  # within one 1 s resend period at 30 Hz
            assert sub.counters.missing == 0  # the first message seen starts the count


def test_a_connecting_subscriber_recovers_after_an_oversized_message() -> None:
    """libzmq cuts a connection carrying a message over MAXMSGSIZE and never reconnects it;
    the subscriber notices (no reconnect scheduled), rebuilds its socket and counts it."""
    from streaming.transport import StreamSubscriber, open_socket

    pub = open_socket("pub", "tcp://127.0.0.1:*", bind=True, options={"LINGER": 0})
    addr = pub.endpoint
    sub = StreamSubscriber(addr, max_bytes=2048, zmq_max_bytes=4096)
    info = SessionInfo("big", np.arange(4), 30.0)

    def send_until_received(p: Any, seq0: int) -> bool:
        for k in range(100):
            p.send_multipart(P.encode_session_start(info, seq=seq0 + k, t_ns=1))
            if sub.recv(50) is not None:
                return True
        return False

    try:
        assert send_until_received(pub, 0)
        pub.send_multipart([b"\x00" * 10_000])  # over ZeroMQ's limit: the connection is cut
        deadline = time.monotonic() + 5
        while sub.counters.disconnects == 0 and time.monotonic() < deadline:
            sub.recv(50)
        assert sub.counters.disconnects >= 1
        pub.close(linger=0)
        for _ in range(50):  # the publisher restarts (its port is released asynchronously)
            try:
                pub = open_socket("pub", addr, bind=True, options={"LINGER": 0})
                break
            except ConfigError:
                time.sleep(0.1)
        assert send_until_received(pub, 1000), list(sub.link_events)
        assert sub.counters.socket_rebuilds >= 1
    finally:
        pub.close(linger=0)
        sub.close()
