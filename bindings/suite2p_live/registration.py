"""Rigid registration of live frames to a Suite2p reference image (phase correlation).

Reproduces suite2p's rigid step (``registration.rigid``): frames (optionally clipped to
[rmin, rmax]) are tapered at the edges, Fourier transformed, whitened
(X / (1e-5 + |X|)), multiplied by the conjugate whitened reference spectrum smoothed by a
Gaussian of ``smooth_sigma`` px, and transformed back; the integer shift is the argmax
of that cross-correlation within +-lcorr = round(maxregshift * min(Ly, Lx)) px.
Because the frame is real and both filters are Hermitian, real FFTs (``scipy.fft``,
float32) give the same correlation at half the cost. No temporal smoothing (it would
need future frames) and no non-rigid step. Imports numpy, scipy and the kernels.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from bindings.suite2p_live import _kernels
from rt_decoder.errors import ConfigError, ShapeMismatchError


def _mean_centered_grid(Lx: int, Ly: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.abs(np.arange(Lx) - (Lx - 1) / 2.0)
    y = np.abs(np.arange(Ly) - (Ly - 1) / 2.0)
    return np.meshgrid(x, y)


def gaussian_fft(sigma_px: float, Ly: int, Lx: int) -> np.ndarray:
    """Real (Ly, Lx) Fourier-domain Gaussian smoothing filter (suite2p's ``gaussian_fft``)."""
    xx, yy = _mean_centered_grid(Lx, Ly)
    g = np.exp(-np.square(yy / sigma_px) / 2) * np.exp(-np.square(xx / sigma_px) / 2)
    g /= g.sum()
    return np.real(np.fft.fft2(np.fft.ifftshift(g)))


def spatial_taper(sigma_px: float, Ly: int, Lx: int) -> np.ndarray:
    """(Ly, Lx) edge taper in [0, 1] (suite2p's ``spatial_taper``)."""
    xx, yy = _mean_centered_grid(Lx, Ly)
    my = ((Ly - 1) / 2) - 2 * sigma_px
    mx = ((Lx - 1) / 2) - 2 * sigma_px
    return (1.0 / (1.0 + np.exp((yy - my) / sigma_px))) * (1.0 / (1.0 + np.exp((xx - mx) / sigma_px)))


class RigidRegistration:
    """Estimates the rigid shift of each frame against a fixed reference.

    Parameters
    ----------
    ref_img : ndarray (Ly, Lx)
        Suite2p's ``refImg`` (unclipped).
    maxregshift : float
        Largest shift as a fraction of min(Ly, Lx), in (0, 0.5].
    smooth_sigma : float
        Gaussian smoothing of the correlation, px (> 0).
    rmin, rmax : float
        Clip range applied to reference and frames for the estimate (``-inf``, ``inf``
        to disable; suite2p's ``norm_frames``).
    workers : int
        Threads for scipy.fft.

    Calling it with a (Ly, Lx) frame returns ``(dy, dx, cmax)``: the frame is aligned by
    ``np.roll(frame, (-dy, -dx), axis=(0, 1))``, as in suite2p.
    """

    def __init__(self, ref_img: np.ndarray, *, maxregshift: float, smooth_sigma: float,
                 rmin: float = -np.inf, rmax: float = np.inf, workers: int = 1) -> None:
        ref = np.asarray(ref_img)
        if ref.ndim != 2 or min(ref.shape) < 8:
            raise ConfigError(f"reference image must be 2-D and at least 8x8, got shape {ref.shape}")
        if not 0.0 < maxregshift <= 0.5:
            raise ConfigError(f"maxregshift must be in (0, 0.5], got {maxregshift}")
        if not smooth_sigma > 0:
            raise ConfigError(f"smooth_sigma must be > 0 px, got {smooth_sigma}")
        self.Ly, self.Lx = ref.shape
        self.rmin, self.rmax = float(rmin), float(rmax)
        self.workers = int(workers)
        ref = np.clip(ref, rmin, rmax) if np.isfinite(rmin) or np.isfinite(rmax) else ref
        mask_mul = spatial_taper(3 * smooth_sigma, self.Ly, self.Lx)
        self._mask_mul = mask_mul.astype(np.float32)
        self._mask_off = (ref.mean() * (1.0 - mask_mul)).astype(np.float32)
        cf = np.conj(np.fft.fft2(ref.astype(np.float64)))
        cf /= 1e-5 + np.abs(cf)
        cf *= gaussian_fft(smooth_sigma, self.Ly, self.Lx)
        self._cf_half = np.ascontiguousarray(cf[:, : self.Lx // 2 + 1]).astype(np.complex64)
        min_dim = min(self.Ly, self.Lx)
        self.lcorr = int(min(np.round(maxregshift * min_dim), min_dim // 2))
        if self.lcorr < 1:
            raise ConfigError(f"maxregshift={maxregshift} allows no shift on a {self.Ly}x{self.Lx} frame")
        lc = self.lcorr
        self._rows = np.r_[self.Ly - lc: self.Ly, 0: lc + 1]
        self._cols = np.r_[self.Lx - lc: self.Lx, 0: lc + 1]
        self._data = np.empty((self.Ly, self.Lx), np.float32)
        # clip range as float32 bounds (+-inf when suite2p's norm_frames is off)
        self._lo = np.float32(self.rmin) if np.isfinite(self.rmin) else np.float32(-np.inf)
        self._hi = np.float32(self.rmax) if np.isfinite(self.rmax) else np.float32(np.inf)
        self(np.asarray(ref_img))  # warm up (FFT plans, kernels)

    def __call__(self, frame: np.ndarray) -> tuple[int, int, float]:
        if frame.shape != (self.Ly, self.Lx):
            raise ShapeMismatchError(f"frame has shape {frame.shape}; the reference is {(self.Ly, self.Lx)}")
        d = self._data
        if frame.dtype in (np.int16, np.uint16, np.float32) and frame.flags.c_contiguous:
            _kernels.taper(frame, self._lo, self._hi, self._mask_mul, self._mask_off, d)
        else:
            np.copyto(d, frame, casting="unsafe")
            np.clip(d, self._lo, self._hi, out=d)
            d *= self._mask_mul
            d += self._mask_off
        X = scipy.fft.rfft2(d, workers=self.workers)
        if X.dtype != np.complex64 or not X.flags.c_contiguous:
            X = np.ascontiguousarray(X, dtype=np.complex64)
        _kernels.whiten_multiply(X, self._cf_half)
        # inverse transform of the +-lcorr window only: all columns along y, then the
        # 2*lcorr+1 rows needed along x (the same numbers as irfft2, at about half the cost)
        rows = scipy.fft.ifft(X, axis=0, workers=self.workers)[self._rows]
        win = scipy.fft.irfft(rows, n=self.Lx, axis=1, workers=self.workers)[:, self._cols]
        k = int(np.argmax(win))
        y, x = divmod(k, win.shape[1])
        return y - self.lcorr, x - self.lcorr, float(win[y, x])
