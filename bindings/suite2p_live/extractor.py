"""The live extraction stage: raw frame -> registered F, Fneu and F - c * Fneu.

``Suite2pLiveExtractor(plane, settings)`` is a plain stage called as
``out = stage(pixels, frame_index, acq_ns)``; it knows no sockets. Masks, FFT plans and
buffers are built (and the kernels warmed up) in the constructor; the per-frame path
allocates only its small outputs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bindings.suite2p_live import _kernels
from bindings.suite2p_live.masks import PackedMasks, cell_and_neuropil_masks, pack_masks
from bindings.suite2p_live.plane import Suite2pPlane
from bindings.suite2p_live.registration import RigidRegistration
from rt_decoder.errors import ConfigError, ShapeMismatchError
from rt_decoder.messages import SessionInfo


@dataclass(frozen=True)
class LiveSettings:
    """Settings of the live extractor.

    neuropil_coefficient : float
        c in the published F - c * Fneu, in [0, 2] (Suite2p's default 0.7).
    register : bool
        Register frames to the reference (false: frames are already registered).
    cells_only : bool
        Publish only ROIs that ``iscell.npy`` marks as cells (all ROIs are extracted).
    fft_workers : int
        Threads for the registration FFTs, 1..64.
    """

    neuropil_coefficient: float = 0.7
    register: bool = True
    cells_only: bool = False
    fft_workers: int = 1

    def __post_init__(self) -> None:
        if not (np.isfinite(self.neuropil_coefficient) and 0.0 <= self.neuropil_coefficient <= 2.0):
            raise ConfigError(f"neuropil_coefficient must be in [0, 2], got {self.neuropil_coefficient!r}")
        if not 1 <= int(self.fft_workers) <= 64:
            raise ConfigError(f"fft_workers must be in 1..64, got {self.fft_workers!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LiveSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown suite2p-live setting(s) {unknown}; known: {sorted(names)}")
        return cls(**d)


@dataclass(frozen=True)
class LiveFrame:
    """One extracted frame.

    F, Fneu : (N_all,) float32 -- every ROI of stat.npy, in stat order.
    values : (N_pub,) float32 -- F - c * Fneu of the published ROIs (session order).
    dy, dx : int -- rigid shift applied (px); corr : float -- peak phase correlation.
    t_extract_ns : int -- monotonic ns when extraction finished.
    """

    frame_index: int
    acq_ns: int
    F: np.ndarray
    Fneu: np.ndarray
    values: np.ndarray
    dy: int
    dx: int
    corr: float
    t_extract_ns: int


class Suite2pLiveExtractor:
    """Register and extract each raw frame with a Suite2p seeding run's reference and masks.

    Parameters
    ----------
    plane : Suite2pPlane
        From ``load_suite2p_plane``.
    settings : LiveSettings

    Raises
    ------
    ConfigError
        The seeding run used settings live registration cannot follow (1P registration,
        temporal smoothing), or ``cells_only`` without ``iscell.npy``.
    """

    def __init__(self, plane: Suite2pPlane, settings: LiveSettings = LiveSettings(), *,
                 kernel: str | None = None) -> None:
        reg = plane.registration
        if settings.register and reg.one_p_reg:
            raise ConfigError(f"{plane.path}: the seeding run used 1P registration (1Preg), "
                              "which suite2p-live does not reproduce")
        if settings.register and reg.smooth_sigma_time > 0:
            raise ConfigError(f"{plane.path}: smooth_sigma_time={reg.smooth_sigma_time} needs future frames; "
                              "live registration supports 0 only")
        self.plane = plane
        self.settings = settings
        self.Ly, self.Lx = plane.Ly, plane.Lx
        self.bidiphase = 0 if reg.bidi_corrected else int(reg.bidiphase)
        mask_set = cell_and_neuropil_masks(plane.stats, self.Ly, self.Lx, plane.masks)
        self.cell_masks, self.neuropil_masks = mask_set.cell_masks, mask_set.neuropil_masks
        self.packed: PackedMasks = pack_masks(mask_set, self.Ly, self.Lx)
        #: "box" (integral images; suite2p's square neuropil) or "runs" (circular neuropil)
        self.kernel = "box" if self.packed.boxes is not None else "runs"
        if kernel is not None:
            if kernel not in ("box", "runs") or (kernel == "box" and self.packed.boxes is None):
                raise ConfigError(f"kernel must be 'runs' or (square neuropil only) 'box', got {kernel!r}")
            self.kernel = kernel
        if settings.cells_only:
            if plane.iscell is None:
                raise ConfigError(f"{plane.path}: cells_only needs iscell.npy")
            self.published = np.flatnonzero(plane.iscell).astype(np.int64)
            if self.published.size == 0:
                raise ConfigError(f"{plane.path}: iscell.npy marks no ROI as a cell")
        else:
            self.published = np.arange(plane.n_rois, dtype=np.int64)
        self.registration: RigidRegistration | None = None
        if settings.register:
            norm = reg.norm_frames
            self.registration = RigidRegistration(
                plane.ref_img, maxregshift=reg.maxregshift, smooth_sigma=reg.smooth_sigma,
                rmin=plane.rmin if norm else -np.inf, rmax=plane.rmax if norm else np.inf,
                workers=settings.fft_workers)
        self._no_neuropil = self.packed.neu_npix == 0  # suite2p gives NaN there; published as F alone
        self._prefix = np.empty((self.Ly, self.Lx + 1), np.float64)
        self._reg = np.empty((self.Ly, self.Lx), np.float64)
        self._I_all = np.empty((self.Ly + 1, self.Lx + 1), np.float64)
        self._I_cell = np.empty((self.Ly + 1, self.Lx + 1), np.float64)
        self._bidi = np.empty((self.Ly, self.Lx), np.int16)
        self.frames_done = 0
        self(plane.ref_img, 0, 0)  # warm-up: compile/caches before the first real frame
        self.frames_done = 0

    def session_info(self, session_id: str, *, frame_rate_hz: float | None = None) -> SessionInfo:
        """The ``SessionInfo`` of the published stream (ROI ids = indices into stat.npy)."""
        med = np.array([self.plane.stats[i].med for i in self.published], dtype=np.float32).reshape(-1, 2)
        return SessionInfo(session_id=session_id, roi_ids=self.published, roi_centres_px=med,
                           frame_rate_hz=float(frame_rate_hz or self.plane.frame_rate_hz),
                           source="suite2p-live")

    def _apply_bidiphase(self, frame: np.ndarray) -> np.ndarray:
        b = self.bidiphase
        out = self._bidi if frame.dtype == np.int16 else np.empty_like(frame)
        np.copyto(out, frame)
        if b > 0:
            out[1::2, b:] = frame[1::2, :-b]
        else:
            out[1::2, :b] = frame[1::2, -b:]
        return out

    def __call__(self, pixels: np.ndarray, frame_index: int, acq_ns: int) -> LiveFrame:
        """Register and extract one raw frame.

        Parameters
        ----------
        pixels : ndarray (Ly, Lx), int16, uint16 or float32
            The raw frame as the rig produced it.
        frame_index : int
            Acquisition frame number.
        acq_ns : int
            Acquisition time on the source clock (ns).
        """
        frame = np.asarray(pixels)
        if frame.shape != (self.Ly, self.Lx):
            raise ShapeMismatchError(f"frame {frame_index} has shape {frame.shape}; the Suite2p plane is "
                                     f"{(self.Ly, self.Lx)}")
        if frame.dtype not in (np.int16, np.uint16, np.float32):
            frame = frame.astype(np.float32)
        if not frame.flags.c_contiguous:
            frame = np.ascontiguousarray(frame)
        if self.bidiphase:
            frame = self._apply_bidiphase(frame)
        dy = dx = 0
        corr = float("nan")
        if self.registration is not None:
            dy, dx, corr = self.registration(frame)
        n = self.plane.n_rois
        F = np.empty(n, np.float32)
        Fneu = np.empty(n, np.float32)
        p = self.packed
        if self.kernel == "box":
            assert p.boxes is not None and p.cell_pix is not None and p.ring_ptr is not None
            assert p.ring_y is not None and p.ring_x is not None
            _kernels.extract_box(frame, dy, dx, p.cell_ptr, p.cell_y, p.cell_x, p.cell_w, p.boxes, p.cell_pix,
                                 p.ring_ptr, p.ring_y, p.ring_x, p.neu_npix, self._reg, self._I_all, self._I_cell,
                                 F, Fneu)
        else:
            _kernels.extract(frame, dy, dx, p.cell_ptr, p.cell_y, p.cell_x, p.cell_w, p.run_ptr, p.run_y,
                             p.run_x0, p.run_len, p.neu_npix, self._prefix, F, Fneu)
        c = np.float32(self.settings.neuropil_coefficient)
        if self._no_neuropil.any():
            Fneu_used = Fneu.copy()
            Fneu_used[self._no_neuropil] = 0.0
        else:
            Fneu_used = Fneu
        if self.published.size == n:
            values = F - c * Fneu_used
        else:
            values = F[self.published] - c * Fneu_used[self.published]
        self.frames_done += 1
        return LiveFrame(int(frame_index), int(acq_ns), F, Fneu, values, int(dy), int(dx), corr, time.monotonic_ns())
