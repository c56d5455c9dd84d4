"""Per-ROI parameter estimation from an initial batch (vectorised numpy; private).

Noise: OASIS's ``GetSn`` (Welch power spectral density averaged over 0.25-0.5 of the
Nyquist frequency, ``sqrt(mean(Pxx / 2))``; Welch in numpy, checked against scipy.signal in
the tests). Kinetics: OASIS's autocovariance (Yule-Walker) estimate with the noise variance
removed from lag 0, solved per ROI in closed form, then pooled across ROIs with the
indicator prior and the model chosen per ROI (see ``estimate_parameters``). Baseline: the configured low
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


def welch_psd(y: np.ndarray, nperseg: int) -> np.ndarray:
    """Welch power spectral density per column of y (T, N), as ``scipy.signal.welch(y, axis=0,
    nperseg=nperseg)`` (Hann window, half overlap, constant detrend, one-sided density, fs = 1,
    mean over segments); shape (nperseg // 2 + 1, N). Plain numpy: importing scipy.signal
    costs about a second of start-up."""
    T = y.shape[0]
    nperseg = min(nperseg, T)
    step = nperseg - nperseg // 2
    win = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(nperseg) / nperseg)  # periodic Hann (scipy's default)
    scale = 1.0 / (win * win).sum()
    starts = range(0, T - nperseg + 1, step)
    acc = np.zeros((nperseg // 2 + 1, y.shape[1]))
    for s0 in starts:
        seg = y[s0:s0 + nperseg]
        seg = (seg - seg.mean(axis=0)) * win[:, None]
        acc += np.abs(np.fft.rfft(seg, axis=0)) ** 2
    pxx = acc * (scale / len(starts))
    if nperseg % 2:
        pxx[1:] *= 2.0
    else:
        pxx[1:-1] *= 2.0
    return pxx


def noise_psd(y: np.ndarray) -> np.ndarray:
    """Noise standard deviation per column of y (T, N) from the high-frequency PSD."""
    pxx = welch_psd(y, min(256, y.shape[0]))
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


#: cell-to-cell spread of an indicator's time constants (sd of log tau); the virtual rig
#: draws 10-15 %, measured spreads in cortex are of that order
CELL_LOG_SD = 0.15
#: how far a preparation's kinetics may lie from the published preset (sd of log tau)
PRESET_LOG_SD = 0.25
#: the same for ``indicator="auto"``, whose prior is the generic ``tau_decay_s``/``tau_rise_s``
GENERIC_LOG_SD = 1.0
#: assumed sd of one ROI's log tau estimate when too few ROIs give a usable spread
DEFAULT_EST_LOG_SD = 0.5
#: AR(2) only where the rise time constant spans at least this many frame intervals
RISE_MIN_FRAMES = 1.0
#: the same for an estimated (pooled) rise: the noise-corrected estimate finds a rise of
#: 0.8-1.05 frames in data without a resolvable one (virtual rig, GCaMP8f/m/s, true 0.2-0.45)
RISE_MIN_FRAMES_ESTIMATED = 1.25
def _shrink(x: np.ndarray, valid: np.ndarray, prior: float, prior_sd: float) -> np.ndarray:
    """Empirical-Bayes shrinkage of per-ROI log time constants ``x`` (N,).

    The population centre is the median of the valid estimates, weighted against the prior
    by precision (its standard error ~ 1.25 s / sqrt(n), s the robust spread); each ROI
    keeps the fraction ``CELL_LOG_SD^2 / s^2`` of its deviation from the median (its own
    estimate's reliability); invalid ROIs get the centre.
    """
    n = int(valid.sum())
    if n == 0:
        return np.full(x.shape, prior)
    xv = x[valid]
    m = float(np.median(xv))
    spread = 1.4826 * float(np.median(np.abs(xv - m))) if n >= 5 else DEFAULT_EST_LOG_SD
    spread = max(spread, CELL_LOG_SD)
    se = 1.2533 * spread / np.sqrt(n)
    w_pop = (1.0 / se ** 2) / (1.0 / se ** 2 + 1.0 / prior_sd ** 2)
    centre = w_pop * m + (1.0 - w_pop) * prior
    w_roi = (CELL_LOG_SD / spread) ** 2
    return np.where(valid, centre + w_roi * (np.where(valid, x, m) - m), centre)


def _log_tau(g: np.ndarray, fs: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.log(-1.0 / (fs * np.log(g)))


def estimate_parameters(F: np.ndarray, fs: float, settings: DeconvSettings, *,
                        ar2_rois: np.ndarray | None = None) -> RoiParameters:
    """Estimate per-ROI parameters (and, with ``model="auto"``, the model) from an initial batch.

    Parameters
    ----------
    F : ndarray, shape (T, N)
        Raw fluorescence (a.u.), NaN/Inf = missing.
    fs : float
        Frame rate, Hz.
    settings : DeconvSettings
    ar2_rois : ndarray of bool, shape (N,), optional, keyword-only
        With ``model="auto"``: keep this choice of model per ROI instead of choosing
        (re-estimation keeps the models chosen at start).

    Returns
    -------
    RoiParameters
        AR(1) ROIs have ``g2 == 0``, AR(2) ROIs ``g2 < 0``.

    Notes
    -----
    Kinetics (``kinetics="estimate"``): each ROI's AR(1) decay and AR(2) decay/rise roots by
    noise-corrected Yule-Walker; in log time constant, shrunk towards the population median
    (itself weighed against the indicator prior by its standard error) keeping
    ``CELL_LOG_SD^2 / spread^2`` of each ROI's deviation. On the virtual rig's indicators a
    single ROI's 300-frame estimate scatters by a factor of about 2 (log sd 0.5-0.75) and is
    biased towards slow decays (stimulus-locked rate fluctuations, neuropil and drift add
    slow autocovariance), which made the fully revised solution worse than the lag-5 one;
    the pooled estimate recovers nearly all of the accuracy of the true kinetics.

    Model (``model="auto"``), in two steps. (1) Can a rise be resolved at this frame rate?
    With an indicator preset: when its published rise time constant spans at least
    ``RISE_MIN_FRAMES`` (one) frame intervals (a faster rise is complete within the first
    frame, where AR(1) describes the sampled kernel as well and the second root only adds
    estimation noise and cost); without one: when the ROI's pooled rise time constant spans
    ``RISE_MIN_FRAMES_ESTIMATED`` (1.25) frames (the estimate is biased up by up to about a
    frame where there is no resolvable rise).
    (2) Where it can, per ROI: the BIC of the two deconvolutions of its batch
    (``fit_evidence_ar2``: OASIS AR(1) and AR(2) with the pooled kinetics,
    ``T log(RSS / T) + k log T``, k the spikes found plus the AR order), read as a log Bayes
    factor ``dBIC / 2`` on top of the population's prior log-odds (the fraction of those ROIs
    preferring AR(2), clipped to [0.05, 0.95]); AR(2) where the sum is positive, else AR(1).
    Step (1) alone cannot decide: the noise-corrected AR(2) fits find a rise of about one
    frame in pure AR(1) data too (measurement noise, and the spikes' own power in the PSD
    noise estimate); step (2) then rejects it. The BIC of the plain AR fits (latent
    innovation variances from the noise-corrected autocovariances) is not used as evidence
    for that reason; it only sets the prior where step (2) does not run (fixed kinetics).
    Cost of step (2): two extra passes of the kernels over the batch, about 40-60 ms per
    1,000 ROIs, once.
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

    model = settings.model
    tau_d0, tau_r0 = settings.prior_kinetics
    lo_s, hi_s = settings.tau_decay_min_s, settings.tau_decay_max_s
    tau_d0 = float(np.clip(tau_d0, lo_s, hi_s))
    prior_sd = GENERIC_LOG_SD if settings.indicator == "auto" else PRESET_LOG_SD
    need1 = model in ("ar1", "auto")
    need2 = model in ("ar2", "auto")
    td1 = np.full(N, np.log(tau_d0))
    td2 = np.full(N, np.log(tau_d0))
    tr2 = np.full(N, np.log(tau_r0))
    valid2 = np.ones(N, bool)
    gain = np.full(N, np.inf)
    if settings.kinetics != "fixed":
        y = (Fi - baseline) / den
        d_lo = np.exp(-1.0 / (lo_s * fs))
        d_hi = np.exp(-1.0 / (hi_s * fs))
        with np.errstate(invalid="ignore", divide="ignore"):
            yc = y - y.mean(axis=0)
            xc = [np.einsum("tn,tn->n", yc[k:], yc[:T - k]) / T for k in range(3)]
            var_c = xc[0] - sigma_y ** 2  # latent calcium variance (noise removed)
            if need1:
                g = ar_coefficients(y, sigma_y, 1)[0]
                valid1 = np.isfinite(g) & (g >= d_lo) & (g <= d_hi)
                s1 = var_c - g * xc[1]
                td1 = _pool(_log_tau(g, fs), valid1, np.log(tau_d0), prior_sd, settings.kinetics)
            if need2:
                g12 = ar_coefficients(y, sigma_y, 2)
                disc = g12[0] ** 2 + 4 * g12[1]
                sq = np.sqrt(np.where(disc >= 0, disc, np.nan))
                d = (g12[0] + sq) / 2
                r = (g12[0] - sq) / 2
                valid2 = np.isfinite(d) & (d >= d_lo) & (d <= d_hi) & (r > 0) & (r <= d - 0.05)
                s2 = var_c - g12[0] * xc[1] - g12[1] * xc[2]
                td2 = _pool(_log_tau(d, fs), valid2, np.log(tau_d0), prior_sd, settings.kinetics)
                tr2 = _pool(_log_tau(r, fs), valid2, np.log(tau_r0), prior_sd, settings.kinetics)
                if need1:
                    ok = (s1 > 0) & (s2 > 0)
                    gain = np.where(ok, T * np.log(np.where(ok, s1 / np.where(ok, s2, 1.0), 1.0)) - np.log(T), -np.inf)
    if model == "ar1":
        use2 = np.zeros(N, bool)
    elif model == "ar2":
        use2 = np.ones(N, bool)
    elif ar2_rois is not None:
        use2 = np.array(ar2_rois, bool).reshape(N)  # a copy: refined below
    else:
        # log Bayes factor AR(2) : AR(1) per ROI ~ BIC difference / 2 (0 where the ROI's own AR(2)
        # fit has no rise root in range: no evidence), on top of the population's prior log-odds
        evidence = np.where(valid2 & np.isfinite(gain), gain / 2.0, 0.0)
        frac = float(np.clip(np.mean(valid2 & (gain > 0)), 0.05, 0.95))
        prior_logodds = np.log(frac / (1.0 - frac))
        if settings.indicator != "auto" or settings.kinetics == "fixed":
            rise_ok = np.full(N, tau_r0 * fs >= RISE_MIN_FRAMES)  # the preset's published rise decides
        else:
            rise_ok = np.exp(tr2) * fs >= RISE_MIN_FRAMES_ESTIMATED
        use2 = (prior_logodds + evidence > 0) & rise_ok
        if settings.kinetics != "fixed" and rise_ok.any():
            # the decisive per-ROI evidence: BIC of the two deconvolutions' fits of the batch
            cand = np.flatnonzero(rise_ok)
            d1 = np.exp(-1.0 / (np.clip(np.exp(td1[cand]), lo_s, hi_s) * fs))
            d2 = np.exp(-1.0 / (np.clip(np.exp(td2[cand]), lo_s, hi_s) * fs))
            r2 = np.clip(np.exp(-1.0 / (np.exp(tr2[cand]) * fs)), 1e-6, np.maximum(d2 - 0.05, 1e-6))
            ev = fit_evidence_ar2(y[:, cand], fs, settings, d1, d2, r2, sigma_y[cand])
            frac = float(np.clip(np.mean(ev > 0), 0.05, 0.95))
            use2[cand] = np.log(frac / (1.0 - frac)) + ev > 0
    tau_d = np.clip(np.exp(np.where(use2, td2, td1)), lo_s, hi_s)
    dd = np.exp(-1.0 / (tau_d * fs))
    rr = np.exp(-1.0 / (np.exp(tr2) * fs))
    if model != "ar2":  # a decay too fast for two separated roots (very low frame rates): AR(1)
        use2 &= dd - 0.05 > 1e-6
    rr = np.clip(rr, 1e-6, np.maximum(dd - 0.05, 1e-6))  # keep the two roots apart (and the rise positive)
    g1 = np.where(use2, dd + rr, dd)
    g2 = np.where(use2, -dd * rr, 0.0)
    return RoiParameters(g1=g1, g2=g2, baseline_f=baseline, sigma_f=sigma_f, sigma_y=sigma_y)


#: the fit comparison uses at most this many frames of the batch, this many ROIs at a time
FIT_MAX_FRAMES = 1000
FIT_CHUNK_ROIS = 4096


def fit_evidence_ar2(y: np.ndarray, fs: float, settings: DeconvSettings, d1: np.ndarray, d2: np.ndarray,
                     r2: np.ndarray, sigma_y: np.ndarray) -> np.ndarray:
    """Per-ROI log Bayes factor AR(2) : AR(1) from the OASIS fits of a batch (BIC / 2).

    Parameters
    ----------
    y : ndarray, shape (T, N)
        The batch, baseline removed (dF/F or F - F0, as the stage deconvolves it).
    fs : float
        Frame rate, Hz.
    settings : DeconvSettings
        Penalty settings (the rest is replaced: fixed baseline, full revision, 64 pools).
    d1 : (N,) AR(1) root; d2, r2 : (N,) AR(2) decay and rise roots.
    sigma_y : (N,) noise of y (scales the penalty).

    Returns
    -------
    ndarray, shape (N,)
        ``(BIC_1 - BIC_2) / 2`` with ``BIC = T log(RSS / T) + k log T``: RSS of y against the
        model's calcium (the deconvolved spikes filtered through the AR model plus the first
        pool's free decay ``a d^t``, fitted), k = spikes found + AR order.
    """
    import dataclasses

    from rt_decoder.deconv.stage import OnlineDeconvolver

    T = min(y.shape[0], FIT_MAX_FRAMES, 4096)
    N = y.shape[1]
    out = np.zeros(N)
    t = np.arange(T)
    for lo in range(0, N, FIT_CHUNK_ROIS):
        sl = slice(lo, min(N, lo + FIT_CHUNK_ROIS))
        yb = np.ascontiguousarray(y[:T, sl], dtype=np.float32)
        n = yb.shape[1]
        bic = []
        for model, g1, g2, d in (("ar1", d1[sl], np.zeros(n), d1[sl]),
                                 ("ar2", d2[sl] + r2[sl], -d2[sl] * r2[sl], d2[sl])):
            s = dataclasses.replace(settings, model=model, normalise="none", baseline="fixed", lag_frames=0,
                                    revise_frames=T - 1, history_frames=T, max_pools=64, reestimate_every_s=0.0)
            params = RoiParameters(g1=g1, g2=g2, baseline_f=np.zeros(n), sigma_f=np.ones(n), sigma_y=sigma_y[sl])
            stage = OnlineDeconvolver(s, n, fs, parameters=params, warmup=False)
            stage.process(yb)
            spikes = stage.recent(T).astype(np.float64)
            c = np.zeros((T, n))
            for k in range(T):
                c[k] = spikes[k] + (g1 * c[k - 1] if k else 0.0) + (g2 * c[k - 2] if k > 1 else 0.0)
            resid = yb - c
            dk = d[None, :] ** t[:, None]
            a = np.maximum((resid * dk).sum(axis=0) / (dk * dk).sum(axis=0), 0.0)
            rss = np.maximum(((resid - a * dk) ** 2).sum(axis=0), 1e-300)
            k_par = (spikes > 1e-12).sum(axis=0) + (1 if model == "ar1" else 2)
            bic.append(T * np.log(rss / T) + k_par * np.log(T))
        out[sl] = (bic[0] - bic[1]) / 2.0
    return out


def _pool(x: np.ndarray, valid: np.ndarray, prior: float, prior_sd: float, kinetics: str) -> np.ndarray:
    if kinetics == "per_roi":
        return np.where(valid, x, prior)
    return _shrink(x, valid, prior, prior_sd)
