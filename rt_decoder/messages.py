"""In-memory message types that travel between pipeline stages.

The stream is: ``SessionInfo`` once, then ``FluorescenceFrame`` -> (deconvolution) ->
``ActivityFrame`` -> (reconstruction) -> ``DecodedFrame``. Every frame carries its frame
index, the source's acquisition stamp and an ordered tuple of ``(stage, monotonic_ns)``
stamps, so latency is computed from the data afterwards (see ``with_stamp``).

These types know nothing about the wire: ``streaming.protocol`` converts them to and from
bytes. This module imports numpy and the standard library only.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

#: Behaviour channels, in this order, everywhere (wire, files, encoder inputs).
BEHAVIOUR_FIELDS: tuple[str, ...] = ("pupil_dilation", "running_speed", "pupil_x", "pupil_y")
N_BEHAVIOUR = len(BEHAVIOUR_FIELDS)

#: Stimulus geometry of the published method: (height, width) in pixels at 30 Hz.
STIMULUS_SHAPE: tuple[int, int] = (36, 64)
STIMULUS_RATE_HZ = 30.0

Stamps = tuple[tuple[str, int], ...]


def now_ns() -> int:
    """Monotonic clock in nanoseconds; the only clock used for stage stamps."""
    return time.monotonic_ns()


@dataclass(frozen=True)
class SessionInfo:
    """Metadata of one acquisition session, sent before the first frame and re-sent.

    Parameters
    ----------
    session_id : str
        Identifies the stream; a new id means the source restarted.
    roi_ids : ndarray of int64, shape (N,)
        Stable ROI identifiers, in the order of every frame's values.
    frame_rate_hz : float
        Acquisition rate of frames (volume rate for multi-plane).
    plane : int
        Imaging plane index (0 for single-plane).
    roi_centres_px : ndarray of float32, shape (N, 2) or None
        ROI centres (y, x) in field-of-view pixels, if known.
    stimulus_shape : tuple of int or None
        (height, width) of the visual stimulus in pixels, if a stimulus is shown.
    is_activity : bool
        True when values are already deconvolved activity (e.g. Sensorium responses):
        the service then bypasses its deconvolution stage.
    source : str
        Free text naming the publisher (``"virtual-rig"``, ``"scanimage"``, ...).
    """

    session_id: str
    roi_ids: np.ndarray
    frame_rate_hz: float
    plane: int = 0
    roi_centres_px: np.ndarray | None = None
    stimulus_shape: tuple[int, int] | None = STIMULUS_SHAPE
    is_activity: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        ids = np.asarray(self.roi_ids, dtype=np.int64).reshape(-1)
        object.__setattr__(self, "roi_ids", ids)
        if ids.size < 1:
            raise ValueError("SessionInfo needs at least one ROI")
        if not (np.isfinite(self.frame_rate_hz) and 0.0 < self.frame_rate_hz <= 10_000.0):
            raise ValueError(f"frame_rate_hz must be in (0, 10000], got {self.frame_rate_hz!r}")
        if self.roi_centres_px is not None:
            c = np.asarray(self.roi_centres_px, dtype=np.float32)
            if c.shape != (ids.size, 2):
                raise ValueError(f"roi_centres_px must have shape ({ids.size}, 2), got {c.shape}")
            object.__setattr__(self, "roi_centres_px", c)
        if self.stimulus_shape is not None:
            object.__setattr__(self, "stimulus_shape", tuple(int(v) for v in self.stimulus_shape))

    @property
    def n_rois(self) -> int:
        return int(self.roi_ids.size)


@dataclass(frozen=True)
class _Frame:
    seq: int
    frame_index: int
    acq_ns: int
    stamps: Stamps = field(default=(), kw_only=True)

    def with_stamp(self, stage: str, t_ns: int | None = None):  # type: ignore[no-untyped-def]
        """Return a copy with ``(stage, t_ns)`` appended to the stamps (default: now)."""
        return dataclasses.replace(self, stamps=self.stamps + ((stage, now_ns() if t_ns is None else int(t_ns)),))

    def stamp(self, stage: str) -> int | None:
        """The monotonic ns stamp of ``stage``, or None if the frame never passed it."""
        for name, t in self.stamps:
            if name == stage:
                return t
        return None


@dataclass(frozen=True)
class FluorescenceFrame(_Frame):
    """One imaging frame: a float32 value per ROI, plus an optional behaviour sample.

    ``values`` has shape (N,), float32, raw fluorescence (a.u.). ``behaviour`` has shape
    (4,), float32, in ``BEHAVIOUR_FIELDS`` order, or None when the source has none.
    ``seq`` is the source's sequence number (gaps = lost messages); ``frame_index`` is the
    acquisition frame number; ``acq_ns`` is the acquisition time on the source's clock.
    """

    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    behaviour: np.ndarray | None = None


@dataclass(frozen=True)
class ActivityFrame(_Frame):
    """Deconvolved activity for one frame: float32 (N,), same ROI order as the session."""

    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    behaviour: np.ndarray | None = None


@dataclass(frozen=True)
class DecodedFrame(_Frame):
    """One reconstructed stimulus frame: float32 image (H, W) in pixel units 0..255."""

    image: np.ndarray = field(default_factory=lambda: np.zeros(STIMULUS_SHAPE, np.float32))
