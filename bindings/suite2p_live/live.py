"""The suite2p-live loop: frames from a source -> extractor -> publisher.

Transport is the caller's: ``run_live`` takes any object with ``start``,
``send_frame(values, frame_index, acq_ns, stamps=...)``, ``heartbeat_if_idle`` and
``end(n_frames)`` (``streaming.transport.StreamPublisher``). Per-frame errors (a frame
of the wrong shape) are counted and the loop goes on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bindings.suite2p_live.extractor import Suite2pLiveExtractor
from bindings.suite2p_live.sources import RawFrameItem
from rt_decoder.errors import StageError


class FramePublisher(Protocol):
    def start(self) -> int: ...

    def send_frame(self, values: np.ndarray, frame_index: int, acq_ns: int, behaviour: np.ndarray | None = None,
                   *, stamps: Any = ...) -> int: ...

    def heartbeat_if_idle(self) -> bool: ...

    def end(self, n_frames: int) -> int: ...


@dataclass
class LiveStats:
    """Counters and per-frame timings of one run (extraction time in ns per frame)."""

    n_frames: int = 0
    n_errors: int = 0
    errors: list[str] = field(default_factory=list)
    extract_ns: list[int] = field(default_factory=list)
    shifts: list[tuple[int, int]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ns = np.asarray(self.extract_ns, dtype=np.float64)
        return {"n_frames": self.n_frames, "n_errors": self.n_errors,
                "extract_ms_p50": float(np.median(ns) / 1e6) if ns.size else None,
                "extract_ms_p99": float(np.percentile(ns, 99) / 1e6) if ns.size else None,
                "extract_ms_max": float(ns.max() / 1e6) if ns.size else None}


def run_live(extractor: Suite2pLiveExtractor, frames: Iterable[RawFrameItem], publisher: FramePublisher, *,
             max_frames: int | None = None, keep_errors: int = 20) -> LiveStats:
    """Extract and publish every frame of ``frames``; send ``session_end`` at the end."""
    stats = LiveStats()
    publisher.start()
    try:
        for item in frames:
            t_in = time.monotonic_ns()
            try:
                out = extractor(item.pixels, item.frame_index, item.acq_ns)
            except StageError as exc:
                stats.n_errors += 1
                if len(stats.errors) < keep_errors:
                    stats.errors.append(str(exc))
                continue
            publisher.send_frame(out.values, out.frame_index, out.acq_ns,
                                 stamps=(("s2p_in", t_in), ("s2p_extracted", out.t_extract_ns)))
            stats.n_frames += 1
            stats.extract_ns.append(out.t_extract_ns - t_in)
            stats.shifts.append((out.dy, out.dx))
            if max_frames is not None and stats.n_frames >= max_frames:
                break
    finally:
        publisher.end(stats.n_frames)
    return stats
