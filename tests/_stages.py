"""A stand-in reconstructor for service and pipeline tests (no model, no sockets)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rt_decoder.messages import ActivityFrame, DecodedFrame, SessionInfo


class SlowStage:
    """A reconstructor that takes ``delay_s`` per frame and 'decodes' frame i as an image of i;
    it checks that the window it gets ends with the frame's own values."""

    model_deconv: dict[str, Any] = {}

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.seen: list[int] = []
        self.resets = 0

    def reset(self, info: SessionInfo) -> None:
        self.resets += 1

    def warmup(self) -> None:
        pass

    def flush(self) -> list[DecodedFrame]:
        return []

    def stats(self) -> dict[str, Any]:
        return {"calls": len(self.seen)}

    def __call__(self, frame: ActivityFrame, recent: np.ndarray | None) -> list[DecodedFrame]:
        time.sleep(self.delay_s)
        self.seen.append(frame.frame_index)
        assert recent is not None and recent.shape[1] == frame.values.shape[0]
        np.testing.assert_array_equal(recent[-1], frame.values)
        return [DecodedFrame(frame.seq, frame.frame_index, frame.acq_ns, stamps=frame.stamps,
                             image=np.full((36, 64), frame.frame_index, np.float32))]
