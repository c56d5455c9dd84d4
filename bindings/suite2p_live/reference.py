"""Plain numpy references of the live extractor's fast paths (for tests).

``register_reference`` follows suite2p's rigid registration literally (full complex
FFTs in float64); ``extract_reference`` applies ``np.roll`` and sums mask pixels.
"""

from __future__ import annotations

import numpy as np

from bindings.suite2p_live.registration import gaussian_fft, spatial_taper


def register_reference(frame: np.ndarray, ref_img: np.ndarray, *, maxregshift: float, smooth_sigma: float,
                       rmin: float = -np.inf, rmax: float = np.inf) -> tuple[int, int, float]:
    """(dy, dx, cmax) of one frame against ``ref_img`` (both (Ly, Lx)); ref already clipped."""
    Ly, Lx = ref_img.shape
    mask_mul = spatial_taper(3 * smooth_sigma, Ly, Lx)
    mask_off = ref_img.mean() * (1.0 - mask_mul)
    cf = np.conj(np.fft.fft2(ref_img.astype(np.float64)))
    cf /= 1e-5 + np.abs(cf)
    cf *= gaussian_fft(smooth_sigma, Ly, Lx)
    data = np.clip(frame.astype(np.float64), rmin, rmax) * mask_mul + mask_off
    X = np.fft.fft2(data)
    X /= 1e-5 + np.abs(X)
    cc_full = np.real(np.fft.ifft2(X * cf))
    lcorr = int(min(np.round(maxregshift * min(Ly, Lx)), min(Ly, Lx) // 2))
    cc = np.block([[cc_full[-lcorr:, -lcorr:], cc_full[-lcorr:, :lcorr + 1]],
                   [cc_full[:lcorr + 1, -lcorr:], cc_full[:lcorr + 1, :lcorr + 1]]])
    y, x = np.unravel_index(np.argmax(cc), cc.shape)
    return int(y) - lcorr, int(x) - lcorr, float(cc[y, x])


def extract_reference(frame: np.ndarray, dy: int, dx: int, cell_masks: list[tuple[np.ndarray, np.ndarray]],
                      neuropil_masks: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """F, Fneu (N,) float64 of ``np.roll(frame, (-dy, -dx))`` with suite2p-style masks."""
    reg = np.roll(frame, (-dy, -dx), axis=(0, 1)).astype(np.float64).reshape(-1)
    F = np.array([reg[ip] @ w for ip, w in cell_masks])
    if neuropil_masks is None:
        return F, np.full(F.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        Fneu = np.array([reg[ip].sum() / ip.size if ip.size else np.nan for ip in neuropil_masks])
    return F, Fneu
