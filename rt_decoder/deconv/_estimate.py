"""Per-ROI parameter estimation from an initial batch (vectorised numpy; private).

Noise: OASIS's ``GetSn`` (Welch power spectral density averaged over 0.25-0.5 of the
Nyquist frequency, ``sqrt(mean(Pxx / 2))``). Kinetics: OASIS's autocovariance (Yule-Walker)
estimate with the noise variance removed from lag 0, solved per ROI in closed form,
roots clipped to the configured time-constant bounds. Baseline: the configured low
quantile plus its Gaussian offset. Missing samples are replaced by the ROI's median for
estimation only.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from rt_decoder.deconv.settings import DeconvSettings


@dataclass(frozen=True)
class RoiParameters:
    """Per-ROI parameters of the online stage; every field is float64 (N,).

    Attributes
    ----------
    g1, g2 : AR coefficients (g2 = 0 for AR(1)).
    baseline_f : noise-free baseline F0 in raw fluorescence units.
    sigma_f : noise standard deviation, raw fluorescence units.
    sigma_y : noise standard deviation of the deconvolved signal (dF/F units if normalised).
    """

    g1: np.ndarray
    g2: np.ndarray
    baseline_f: np.ndarray
    sigma_f: np.ndarray
    sigma_y: np.ndarray

    def __post_init__(self) -> None:
        n = np.asarray(self.g1).shape
        for name in ("g1", "g2", "baseline_f", "sigma_f", "sigma_y"):
            arr = np.ascontiguousarray(np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
            if arr.shape != (int(np.prod(n)),):
                raise ValueError(f"RoiParameters.{name} has shape {arr.shape}, expected {n}")
            object.__setattr__(self, name, arr)

    @property
    def n_rois(self) -> int:
        return int(self.g1.size)


def gaussian_quantile_offset(q: float) -> float:
    """z >= 0 such that the q-quantile of N(mu, s) is mu - z s."""
    return -NormalDist().inv_cdf(q)


def noise_psd(y: np.ndarray) -> np.ndarray:
    """Noise standard deviation per column of y (T, N) from the high-frequency PSD."""
    from scipy.signal import welch

    _, pxx = welch(y, axis=0, nperseg=min(256, y.shape[0]))
    ff = np.linspace(0.0, 0.5, pxx.shape[0])
    band = (ff > 0.25) & (ff < 0.5)
    return np.sqrt(np.mean(pxx[band] / 2.0, axis=0))


def ar_coefficients(y: np.ndarray, sn: np.ndarray, p: int, lags: int = 5) -> np.ndarray:
    """AR(p) coefficients per column of y (T, N) by noise-corrected Yule-Walker, shape (p, N)."""
    T, _ = y.shape
    yc = y - y.mean(axis=0)
    L = lags + p
    xc = np.stack([np.einsum("tn,tn->n", yc[k:], yc[:T - k]) / T for k in range(L + 1)])  # (L+1, N)
    # rows k = 0..L-1: sum_j A[k, j] g_j = xc[k+1], A[k, j] = xc[|k-j|] - sn^2 [k == j]
    A = np.stack([np.stack([xc[abs(k - j)] - (sn ** 2 if k == j else 0.0) for j in range(p)]) for k in range(L)])
    b = xc[1:L + 1]  # (L, N)
    AtA = np.einsum("kin,kjn->ijn", A, A)
    Atb = np.einsum("kin,kn->in", A, b)
    if p == 1:
        return (Atb[0] / np.where(AtA[0, 0] != 0, AtA[0, 0], np.nan))[None]
    det = AtA[0, 0] * AtA[1, 1] - AtA[0, 1] * AtA[1, 0]
    det = np.where(det != 0, det, np.nan)
    g1 = (AtA[1, 1] * Atb[0] - AtA[0, 1] * Atb[1]) / det
    g2 = (AtA[0, 0] * Atb[1] - AtA[1, 0] * Atb[0]) / det
    return np.stack([g1, g2])


def kinetics_to_ar(tau_decay_s: np.ndarray | float, tau_rise_s: np.ndarray | float, fs: float,
                   model: str) -> tuple[np.ndarray, np.ndarray]:
    """(g1, g2) from time constants: roots d = exp(-1/(tau_d fs)), r = exp(-1/(tau_r fs))."""
    d = np.exp(-1.0 / (np.asarray(tau_decay_s, dtype=np.float64) * fs))
    if model == "ar1":
        return d, np.zeros_like(d)
    r = np.exp(-1.0 / (np.asarray(tau_rise_s, dtype=np.float64) * fs))
    return d + r, -d * r


def estimate_parameters(F: np.ndarray, fs: float, settings: DeconvSettings) -> RoiParameters:
    """Estimate per-ROI parameters from an initial batch of raw fluorescence.

    Parameters
    ----------
    F : ndarray, shape (T, N)
        Raw fluorescence (a.u.), NaN/Inf = missing.
    fs : float
        Frame rate, Hz.
    settings : DeconvSettings

    Returns
    -------
    RoiParameters
    """
    F = np.asarray(F, dtype=np.float64)
    T, N = F.shape
    good = np.isfinite(F)
    Fi = F
    bad_cols = np.flatnonzero(~good.all(axis=0))
    if bad_cols.size:  # missing samples: the ROI's median, for estimation only (0 if all missing)
        Fi = F.copy()
        sub = np.where(good[:, bad_cols], F[:, bad_cols], np.nan)
        with np.errstate(all="ignore"):
            cnt = good[:, bad_cols].sum(axis=0)
            med = np.array([np.median(sub[good[:, c], i]) if cnt[i] else 0.0 for i, c in enumerate(bad_cols)])
        Fi[:, bad_cols] = np.where(good[:, bad_cols], F[:, bad_cols], med)
    sigma_f = noise_psd(Fi)
    q_base = np.quantile(Fi, settings.baseline_quantile, axis=0)
    flat = ~(sigma_f > 0) | ~np.isfinite(sigma_f)
    sigma_f = np.where(flat, np.maximum(np.abs(q_base) * 1e-3, 1e-6), sigma_f)
    z = gaussian_quantile_offset(settings.baseline_quantile)
    baseline = q_base + z * sigma_f
    den = np.maximum(baseline, sigma_f) if settings.normalise == "dff" else np.ones(N)
    sigma_y = sigma_f / den

    g1f, g2f = kinetics_to_ar(settings.tau_decay_s, settings.tau_rise_s, fs, settings.model)
    g1 = np.full(N, float(g1f))
    g2 = np.full(N, float(g2f))
    if settings.kinetics == "estimate":
        d_lo = np.exp(-1.0 / (settings.tau_decay_min_s * fs))
        d_hi = np.exp(-1.0 / (settings.tau_decay_max_s * fs))
        y = (Fi - baseline) / den
        p = 1 if settings.model == "ar1" else 2
        with np.errstate(invalid="ignore", divide="ignore"):
            g = ar_coefficients(y, sigma_y, p)
            if p == 1:
                d = g[0]
                ok = np.isfinite(d) & (d >= d_lo) & (d <= d_hi)
                g1 = np.where(ok, d, g1)
            else:
                disc = g[0] ** 2 + 4 * g[1]
                sq = np.sqrt(np.where(disc >= 0, disc, np.nan))
                d = (g[0] + sq) / 2
                r = (g[0] - sq) / 2
                r_hi = np.exp(-1.0 / (0.5 * settings.tau_decay_min_s * fs))
                ok = np.isfinite(d) & (d >= d_lo) & (d <= d_hi) & (r > 0) & (r <= np.minimum(r_hi, d - 0.05))
                g1 = np.where(ok, d + r, g1)
                g2 = np.where(ok, -d * r, g2)
    return RoiParameters(g1=g1, g2=g2, baseline_f=baseline, sigma_f=sigma_f, sigma_y=sigma_y)
