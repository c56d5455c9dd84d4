"""The reconstruction in its own process (rt_decoder.recon.process): same answers as in-process,
errors carried back, a dead child reported."""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np
import pytest

from rt_decoder.errors import StageError
from rt_decoder.messages import ActivityFrame, DecodedFrame, SessionInfo
from rt_decoder.recon.process import ReconstructionProcess


class EchoReconstructor:
    """Decodes frame i as an image holding sum(window) and the frame's values' mean; refuses
    sessions named "refuse"."""

    model_deconv = {"model": "ar1"}

    def __init__(self) -> None:
        self.calls = 0
        self.session = ""
        self.pending: list[DecodedFrame] = []

    def reset(self, info: SessionInfo) -> None:
        if info.session_id == "refuse":
            raise StageError("too few of the model's neurons among the ROIs")
        self.session = info.session_id
        self.calls = 0

    def warmup(self) -> None:
        pass

    def __call__(self, frame: ActivityFrame, recent: np.ndarray | None) -> list[DecodedFrame]:
        if frame.frame_index < 0:
            raise StageError("negative frame")
        if frame.frame_index == 999:
            raise ValueError("boom")
        self.calls += 1
        total = float(recent.sum()) if recent is not None else -1.0
        image = np.full((4, 5), total, np.float32)
        image[0, 0] = float(np.mean(frame.values))
        out = DecodedFrame(frame.seq, frame.frame_index, frame.acq_ns, stamps=frame.stamps, image=image)
        self.pending.append(out)
        return [out]

    def flush(self) -> list[DecodedFrame]:
        out, self.pending = self.pending[-1:], []
        return out

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, "session": self.session}


def test_the_child_answers_like_the_reconstructor_in_process() -> None:
    proc = ReconstructionProcess(EchoReconstructor, nice=5, idle=True)
    ref = EchoReconstructor()
    try:
        assert proc.model_deconv == {"model": "ar1"} and proc.kind == "EchoReconstructor"
        # the child runs at a lower CPU priority than this process
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(os.getpriority(os.PRIO_PROCESS, 0) + 5, 19)
        assert os.sched_getscheduler(proc.pid) == os.SCHED_IDLE  # only CPU time nothing else wants
        info = SessionInfo("s", np.arange(7), 30.0)
        proc.reset(info)
        ref.reset(info)
        proc.warmup()
        rng = np.random.default_rng(0)
        for i in range(20):
            w = 1 + i % 4  # windows of changing length, and one without
            recent = rng.standard_normal((w, 7)).astype(np.float32) if i != 5 else None
            frame = ActivityFrame(i, i, 1000 + i, stamps=(("rx", 1), ("deconv", 2)),
                                  values=rng.standard_normal(7).astype(np.float32),
                                  behaviour=np.arange(4, dtype=np.float32))
            got, want = proc(frame, recent), ref(frame, recent)
            assert len(got) == len(want) == 1
            assert (got[0].seq, got[0].frame_index, got[0].acq_ns, got[0].stamps) == \
                (want[0].seq, want[0].frame_index, want[0].acq_ns, want[0].stamps)
            np.testing.assert_array_equal(got[0].image, want[0].image)  # bit-identical through shared memory
        assert proc.stats()["calls"] == 20 and proc.stats()["session"] == "s"
        assert [f.frame_index for f in proc.flush()] == [19]
        with pytest.raises(StageError, match="too few"):
            proc.reset(SessionInfo("refuse", np.arange(7), 30.0))
        with pytest.raises(StageError, match="negative"):
            proc(ActivityFrame(0, -1, 0, values=np.zeros(7, np.float32)), None)
        with pytest.raises(RuntimeError, match="boom"):
            proc(ActivityFrame(0, 999, 0, values=np.zeros(7, np.float32)), None)
        # a StageError or a failing call leaves the child serving
        assert proc(ActivityFrame(0, 3, 0, values=np.ones(7, np.float32)), None)[0].image[0, 0] == 1.0
    finally:
        proc.close()
    assert not proc._proc.is_alive()


def test_a_dead_child_is_reported_not_waited_for() -> None:
    proc = ReconstructionProcess(EchoReconstructor, nice=0)
    try:
        proc.reset(SessionInfo("s", np.arange(3), 30.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc._proc.join(10)
        with pytest.raises(RuntimeError, match="died"):
            proc(ActivityFrame(0, 0, 0, values=np.zeros(3, np.float32)), None)
    finally:
        proc.close()


class _FailingFactory:
    def __call__(self) -> Any:
        raise FileNotFoundError("no model here")


def test_a_child_that_cannot_build_its_reconstructor_fails_at_start() -> None:
    with pytest.raises(StageError, match="no model here"):
        ReconstructionProcess(_FailingFactory())


class _ConfigFailingFactory:
    def __call__(self) -> Any:
        from rt_decoder.errors import ConfigError

        raise ConfigError("[reconstruction] model_dir 'x' is not a model directory")


def test_a_configuration_error_in_the_child_keeps_its_type() -> None:
    from rt_decoder.errors import ConfigError

    with pytest.raises(ConfigError, match="not a model directory"):
        ReconstructionProcess(_ConfigFailingFactory())
