"""The live path as a chain of stages (rt_decoder.pipeline), driven in-process over the
in-memory link: no sockets, no ports, and (checked in a subprocess) no zmq at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rt_decoder.messages import ActivityFrame, DecodedFrame, FluorescenceFrame, SessionInfo
from rt_decoder.pipeline import (
    ActivityPassThrough,
    ActivityWindow,
    DeconvStage,
    FrameGap,
    Inbound,
    IntakeStage,
    OutputStage,
    PassStage,
    ReconstructionStage,
    SessionEnded,
    SessionStage,
    SessionStarted,
    Stage,
    run_chain,
)
from streaming import protocol as P
from streaming.config import config_from_dict
from streaming.metrics import MetricsRecorder
from streaming.service import DecoderService, State
from streaming.transport import InMemoryLink, StreamPublisher, StreamSubscriber
from tests._stages import SlowStage

REPO = Path(__file__).resolve().parent.parent


class Log(PassStage):
    """Records what the runner did to it."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def reset(self, info: SessionInfo) -> None:
        self.calls.append(f"{self.name}.reset({info.session_id})")

    def flush(self) -> list[Any]:
        self.calls.append(f"{self.name}.flush")
        return [f"{self.name}-flushed"]  # type: ignore[list-item]

    def __call__(self, item: Any) -> list[Any]:
        self.calls.append(f"{self.name}({item})")
        return [item]


def test_run_chain_resets_on_session_start_and_flushes_before_session_end() -> None:
    calls: list[str] = []
    a, b = Log("a", calls), Log("b", calls)
    info = SessionInfo("s", np.arange(2), 30.0)
    out = run_chain([a, b], [SessionStarted(info), "x", SessionEnded("s", 1)])  # type: ignore[list-item]
    assert calls == ["a.reset(s)", "a(x)", "a.flush", "b.reset(s)", "b(x)", "b(a-flushed)", "b.flush"]
    assert out[0] == SessionStarted(info) and out[1:3] == ["x", "a-flushed"]
    assert out[3:] == ["b-flushed", SessionEnded("s", 1)]


def test_every_stage_has_the_required_methods() -> None:
    m = MetricsRecorder(10)
    from rt_decoder.deconv import DeconvSettings

    link = InMemoryLink()
    stages = [IntakeStage(m), SessionStage(m, max_gap_frames=10), DeconvStage(DeconvSettings(), m),
              ActivityPassThrough(), ReconstructionStage(SlowStage(0.0), m),
              OutputStage(StreamPublisher(link.pub_socket, None), m)]
    for stage in stages:
        assert isinstance(stage, Stage), type(stage).__name__


def test_session_stage_gaps_and_restarts() -> None:
    m = MetricsRecorder(10)
    t = [0.0]
    st = SessionStage(m, max_gap_frames=5, clock=lambda: t[0])
    info = SessionInfo("s", np.arange(3), 30.0)

    def msg(kind: str, seq: int, body: Any) -> Inbound:
        return Inbound(P.Envelope(kind, "s", seq, 0, body), 10, 11)

    def frame(seq: int, index: int) -> Inbound:
        return msg(P.KIND_FRAME, seq, FluorescenceFrame(seq, index, 0, values=np.zeros(3, np.float32)))

    assert st(msg(P.KIND_SESSION_START, 0, info)) == [SessionStarted(info)]
    out = st(frame(1, 0))
    assert [n for n, _ in out[0].stamps] == ["rx", "decode"]
    out = st(frame(2, 3))  # two frames never arrived
    assert out[0] == FrameGap(2, False, 3)
    assert st(frame(5, 20))[0] == FrameGap(16, True, 20)  # too many to bridge; seq jumped by 2
    assert st(frame(6, 19)) == []  # index went back
    assert m.counters["frames_missing"] == 18 and m.counters["messages_lost"] == 2
    assert m.malformed["stale_frame_index"] == 1
    assert st(msg(P.KIND_SESSION_START, 0, info)) == [SessionStarted(info)]  # seq restarted: a restart
    assert m.counters["session_restarts"] == 1
    other = SessionInfo("o", np.arange(3), 30.0)
    assert st(Inbound(P.Envelope(P.KIND_SESSION_START, "o", 0, 0, other), 1, 2)) == []  # another id: refused
    t[0] = 2.5  # ... until the running session was silent for takeover_after_s
    assert st(Inbound(P.Envelope(P.KIND_SESSION_START, "o", 0, 0, other), 1, 2)) == [SessionStarted(other)]


def in_memory_service(reconstructor: Any = None, **pipeline: Any) -> tuple[DecoderService, StreamPublisher,
                                                                            StreamSubscriber]:
    cfg = config_from_dict({"status": {"address": "", "status_line_every_s": 0.0},
                            "pipeline": {"warmup_rois": 8, **pipeline}, "deconv": {"init_frames": 30}})
    inp, out = InMemoryLink(), InMemoryLink()
    svc = DecoderService(cfg, reconstructor, source=StreamSubscriber(inp.sub_socket, reject_nonfinite=False,
                                                                      check_n_rois=False),
                         output=StreamPublisher(out.pub_socket, None), log=lambda s: None)
    return svc, StreamPublisher(inp.pub_socket, None), StreamSubscriber(out.sub_socket)


def _collect(sub: StreamSubscriber, kind: str, n: int, timeout_s: float = 30.0) -> list[P.Envelope]:
    got: list[P.Envelope] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        env = sub.recv(50)
        if env is not None and env.kind == kind:
            got.append(env)
    return got


def test_latest_handoff_skips_to_the_newest_frame_and_counts_skips() -> None:
    import threading

    stage = SlowStage(0.02)
    svc, pub, sink = in_memory_service(stage)
    t = threading.Thread(target=svc.run, daemon=True)
    t.start()
    while svc.state != State.READY:
        time.sleep(0.01)
    pub.begin(SessionInfo("h", np.arange(3), 30.0, is_activity=True))
    for i in range(40):
        pub.send_activity(np.full(3, i, np.float32), i, i)
        time.sleep(0.001)
    pub.end(40)
    deadline = time.monotonic() + 30
    while svc.metrics.counters["frames_processed"] < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert svc.runner is not None and svc.runner.handoff.wait_idle(10.0)
    svc.request_stop("test")
    t.join(30.0)
    decoded = _collect(sink, P.KIND_DECODED, len(stage.seen))
    assert stage.seen[-1] == 39 and stage.seen == sorted(stage.seen)  # the newest frame is always decoded
    assert svc.metrics.counters["skipped_frames"] == 40 - len(stage.seen) > 0
    assert [e.body.frame_index for e in decoded] == stage.seen
    assert [n for n, _ in decoded[0].body.stamps] == ["rx", "decode", "deconv", "recon", "tx"]


def test_service_runs_on_the_in_memory_link_without_zmq() -> None:
    """Fluorescence in, activity out, through the whole chain, in a process that never imports zmq."""
    script = textwrap.dedent("""
        import sys, threading, time
        import numpy as np
        from rt_decoder.messages import SessionInfo
        from streaming import protocol as P
        from streaming.config import config_from_dict
        from streaming.service import DecoderService, State
        from streaming.transport import InMemoryLink, StreamPublisher, StreamSubscriber

        cfg = config_from_dict({"status": {"address": "", "status_line_every_s": 0.0},
                                "pipeline": {"warmup_rois": 8, "stop_on_session_end": True},
                                "deconv": {"init_frames": 30}})
        inp, out = InMemoryLink(), InMemoryLink()
        svc = DecoderService(cfg, None, source=StreamSubscriber(inp.sub_socket),
                             output=StreamPublisher(out.pub_socket, None), log=lambda s: None)
        pub, sink = StreamPublisher(inp.pub_socket, None), StreamSubscriber(out.sub_socket)
        t = threading.Thread(target=svc.run)
        t.start()
        while svc.state != State.READY:
            time.sleep(0.01)
        rng = np.random.default_rng(0)
        pub.begin(SessionInfo("mem", np.arange(5), 30.0))
        for i in range(60):
            pub.send_frame(100 + rng.standard_normal(5).astype(np.float32), i, i)
        pub.end(60)
        t.join(60)
        kinds = []
        while (env := sink.recv(0)) is not None:
            kinds.append(env.kind)
        assert svc.state == State.STOPPED, svc.state
        assert kinds.count(P.KIND_ACTIVITY) == 60, kinds
        assert kinds[-1] == P.KIND_SESSION_END and kinds[0] == P.KIND_SESSION_START, kinds
        assert svc.metrics.counters["frames_published"] == 60
        assert "zmq" not in sys.modules, "zmq was imported"
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_reconstruction_stage_wraps_stage_errors_and_stamps_recon() -> None:
    from rt_decoder.errors import StageError

    class Failing(SlowStage):
        def __call__(self, frame: ActivityFrame, recent: np.ndarray | None) -> list[DecodedFrame]:
            raise StageError("no ROI matches")

    m = MetricsRecorder(10)
    frame = ActivityFrame(0, 0, 0, values=np.zeros(2, np.float32), stamps=(("deconv", 5),))
    window = ActivityWindow(frame, np.zeros((1, 2), np.float32))
    assert ReconstructionStage(Failing(0.0), m)(window) == []
    assert m.counters["stage_errors"] == 1 and "no ROI" in m.notes["last_stage_error"]
    out = ReconstructionStage(SlowStage(0.0), m)(window)
    assert [n for n, _ in out[0].stamps] == ["deconv", "recon"]  # type: ignore[union-attr]


def _session_stage(**kw: Any) -> tuple[SessionStage, MetricsRecorder, Any]:
    m = MetricsRecorder(10)
    st = SessionStage(m, max_gap_frames=kw.pop("max_gap_frames", 3000), **kw)
    info = SessionInfo("s", np.arange(3), 30.0)
    seq = iter(range(1, 10**6))

    def frame(index: int) -> list[Any]:
        s = next(seq)
        body = FluorescenceFrame(s, index, 0, values=np.zeros(3, np.float32))
        return st(Inbound(P.Envelope(P.KIND_FRAME, "s", s, 0, body), 1, 2))

    st(Inbound(P.Envelope(P.KIND_SESSION_START, "s", 0, 0, info), 1, 2))
    return st, m, frame


def _indices(items: list[Any]) -> list[int]:
    return [it.frame_index for it in items if isinstance(it, FluorescenceFrame)]


@pytest.mark.parametrize("bad", [210, 2**63 - 1, 0])
def test_one_far_off_frame_index_costs_only_itself(bad: int) -> None:
    """An index far ahead (or far back) is held; the next frame shows it was an outlier."""
    st, m, frame = _session_stage()
    got: list[Any] = []
    for i in range(100, 140):
        got += frame(i)
        if i == 110:
            got += frame(bad)
    assert _indices(got) == list(range(100, 140))  # every valid frame went on, in order
    assert not any(isinstance(g, FrameGap) for g in got)
    assert m.malformed["frame_index_outlier"] == 1 and m.counters["frames_missing"] == 0
    assert m.counters["frames_received"] == 40


def test_a_confirmed_renumbering_is_a_new_epoch() -> None:
    st, m, frame = _session_stage(max_gap_frames=100)
    got: list[Any] = []
    for i in [*range(0, 10), *range(5000, 5010), *range(3, 6)]:
        got += frame(i)
    assert _indices(got) == [*range(0, 10), *range(5000, 5010), *range(3, 6)]
    gaps = [g for g in got if isinstance(g, FrameGap)]
    assert [(g.restart, g.frame_index) for g in gaps] == [(True, 5000), (True, 3)]
    assert m.counters["frame_index_epochs"] == 2 and m.counters["frames_missing"] == 0


def test_a_frame_held_at_session_end_goes_on() -> None:
    st, m, frame = _session_stage()
    got = frame(0) + frame(1) + frame(500)
    assert _indices(got) == [0, 1]
    end = st(Inbound(P.Envelope(P.KIND_SESSION_END, "s", 4, 0, None), 1, 2))
    assert _indices(end) == [500] and isinstance(end[-1], SessionEnded)


def test_huge_sequence_numbers_do_not_overflow_the_counters() -> None:
    st, m, frame = _session_stage()
    body = FluorescenceFrame(0, 0, 0, values=np.zeros(3, np.float32))
    st(Inbound(P.Envelope(P.KIND_FRAME, "s", 2**64 - 1, 0, body), 1, 2))
    assert m.counters["seq_jumps"] == 1 and m.counters["messages_lost"] == 0
    # the next message continues the old numbering: the jump was one odd message, nothing else
    assert _indices(frame(1)) == [1]
    assert m.malformed["seq_regress"] == 0 and m.counters["messages_lost"] == 0
    import msgpack

    msgpack.packb(m.snapshot())  # the status message packs
    m.count("messages_lost", 2**64)
    assert m.counters["messages_lost"] == 2**63 - 1
    msgpack.packb(m.snapshot())


def test_session_control_belongs_to_the_sessions_publisher() -> None:
    m = MetricsRecorder(10)
    t = [0.0]
    st = SessionStage(m, max_gap_frames=100, clock=lambda: t[0])
    a, b = SessionInfo("a", np.arange(3), 30.0), SessionInfo("b", np.arange(3), 30.0)

    def send(kind: str, sid: str, seq: int, body: Any, peer: str = "") -> list[Any]:
        return st(Inbound(P.Envelope(kind, sid, seq, 0, body), 1, 2, peer))

    def frame(seq: int, i: int) -> list[Any]:
        return send(P.KIND_FRAME, "a", seq, FluorescenceFrame(seq, i, 0, values=np.zeros(3, np.float32)))

    assert send(P.KIND_SESSION_START, "a", 0, a, "addr:10.0.0.1") == [SessionStarted(a)]
    assert _indices(frame(1, 0)) == [0]
    assert send(P.KIND_SESSION_START, "b", 0, b, "addr:10.0.0.9") == []  # another publisher: refused
    assert send(P.KIND_SESSION_END, "a", 5000, None) == []  # not continuing a's numbering: refused
    assert send(P.KIND_SESSION_END, "a", 2, None, "addr:10.0.0.9") == []  # from another peer: refused
    assert m.counters["session_takeover_refused"] == 1 and m.counters["session_control_refused"] == 2
    assert _indices(frame(2, 1)) == [1]  # the session goes on
    t[0] = 1.5
    assert _indices(frame(3, 2)) == [2]
    t[0] = 3.0  # a was heard from 1.5 s ago: still running
    assert send(P.KIND_SESSION_START, "b", 0, b) == []
    t[0] = 3.6  # silent for 2.1 s: b may take over
    assert send(P.KIND_SESSION_START, "b", 0, b) == [SessionStarted(b)]
    out = send(P.KIND_SESSION_END, "b", 1, None)
    assert isinstance(out[-1], SessionEnded)
    assert send(P.KIND_SESSION_START, "a", 0, a) == [SessionStarted(a)]  # b ended: a new session at once


def test_the_initial_batch_runs_off_the_frame_path_with_the_same_results() -> None:
    """Background estimation + catch-up gives exactly the in-line deconvolution afterwards,
    gaps during the catch-up included; frames keep flowing meanwhile."""
    from rt_decoder.deconv import DeconvSettings

    settings = DeconvSettings.from_dict({"init_frames": 40})
    info = SessionInfo("d", np.arange(6), 30.0)
    rng = np.random.default_rng(3)
    F = (100 + 5 * rng.standard_normal((120, 6)) + 40 * (rng.random((120, 6)) < 0.05)).astype(np.float32)
    stages = {bg: DeconvStage(settings, MetricsRecorder(10), window_frames=8, background_init=bg)
              for bg in (True, False)}
    outs: dict[bool, dict[int, Any]] = {True: {}, False: {}}
    for bg, st in stages.items():
        st.reset(info)
        for t in range(120):
            if t == 45:
                st(FrameGap(2, False, 47))
                continue
            if t == 46:
                continue
            for item in st(FluorescenceFrame(t, t, 0, values=F[t], stamps=(("rx", 1),))):
                outs[bg][t] = item
            if bg and t == 60:
                deadline = time.monotonic() + 30
                while st.catching_up and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert not st.catching_up
    later = [t for t in outs[False] if t > 60]
    assert later and all(t in outs[True] for t in later)
    for t in later:
        a, b = outs[True][t], outs[False][t]
        np.testing.assert_array_equal(a.frame.values, b.frame.values)
        np.testing.assert_array_equal(a.recent, b.recent)
    assert stages[True].counters.counters["frames_processed"] == stages[False].counters.counters["frames_processed"]


class Refusing(SlowStage):
    """Refuses sessions whose ROI ids are not 0..N-1 (as LiveStage refuses a low ROI coverage)."""

    def reset(self, info: SessionInfo) -> None:
        if int(np.asarray(info.roi_ids)[0]) != 0:
            from rt_decoder.errors import StageError

            raise StageError(f"session {info.session_id!r}: its ROI ids cover 0% of the model's neurons")
        super().reset(info)

    def stats(self) -> dict[str, Any]:
        return {"recon_roi_coverage": 0.0}


def test_a_session_the_reconstruction_refuses_still_gets_its_activity_out() -> None:
    import threading

    svc, pub, sink = in_memory_service(Refusing(0.0))
    t = threading.Thread(target=svc.run, daemon=True)
    t.start()
    while svc.state != State.READY:
        time.sleep(0.01)
    pub.begin(SessionInfo("wrong-cells", np.arange(500, 503), 30.0, is_activity=True))
    for i in range(10):
        pub.send_activity(np.full(3, i, np.float32), i, i)
    deadline = time.monotonic() + 30
    while svc.metrics.counters["frames_published"] < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    svc.request_stop("test")
    t.join(30.0)
    act = _collect(sink, P.KIND_ACTIVITY, 10)
    assert [e.body.frame_index for e in act] == list(range(10))  # activity still flows, every frame
    assert svc.metrics.counters["skipped_frames"] == 0
    assert svc.metrics.counters["sessions_not_reconstructed"] == 1
    assert "cover 0%" in svc.metrics.notes["reconstruction_refused"]
    assert svc.metrics.notes["roi_coverage"] == "0%" and "NOT RECONSTRUCTED" in svc.metrics.status_line()
