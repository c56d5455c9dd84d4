"""Reconstruction quality metrics, as in the published method (REFERENCE.md section 1).

All videos are time-major float arrays of shape (T, H, W) in pixel units. Masks are
boolean (H, W). Nothing here imports torch or zmq.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rt_decoder.errors import StageError

#: frames excluded at the start of every trial when scoring (published protocol)
DEFAULT_SKIP_FRAMES = 30


def _check_pair(true: np.ndarray, recon: np.ndarray) -> None:
    if true.shape != recon.shape or true.ndim != 3:
        raise StageError(f"videos must both be (T, H, W) with equal shapes, got {true.shape} and {recon.shape}")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def video_correlation(true: np.ndarray, recon: np.ndarray, mask: np.ndarray | None = None,
                      skip_frames: int = DEFAULT_SKIP_FRAMES) -> float:
    """Pearson correlation over all pixels x frames inside ``mask``, first ``skip_frames`` excluded.

    Parameters
    ----------
    true, recon : ndarray, shape (T, H, W)
    mask : ndarray of bool, shape (H, W), or None for the full screen
    skip_frames : int
        Leading frames left out of the score.
    """
    _check_pair(true, recon)
    if skip_frames >= true.shape[0]:
        raise StageError(f"skip_frames={skip_frames} leaves no frame of a {true.shape[0]}-frame video")
    t, r = true[skip_frames:], recon[skip_frames:]
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != true.shape[1:]:
            raise StageError(f"mask shape {m.shape} does not match frames {true.shape[1:]}")
        if not m.any():
            raise StageError("evaluation mask selects no pixel")
        t, r = t[:, m], r[:, m]
    return _pearson(t, r)


def per_frame_correlation(true: np.ndarray, recon: np.ndarray, mask: np.ndarray | None = None,
                          skip_frames: int = DEFAULT_SKIP_FRAMES) -> np.ndarray:
    """Spatial Pearson correlation of each frame (inside ``mask``); shape (T - skip_frames,)."""
    _check_pair(true, recon)
    m = np.ones(true.shape[1:], bool) if mask is None else np.asarray(mask, bool)
    return np.array([_pearson(true[i][m], recon[i][m]) for i in range(skip_frames, true.shape[0])])


def best_lag(true: np.ndarray, recon: np.ndarray, mask: np.ndarray | None = None, max_lag: int = 10,
             skip_frames: int = DEFAULT_SKIP_FRAMES) -> tuple[int, float]:
    """The shift ``k`` (frames; recon[t] compared with true[t - k]) maximising video correlation.

    Returns ``(lag_frames, correlation_at_that_lag)``; positive lag = reconstruction late.
    """
    _check_pair(true, recon)
    best = (0, -np.inf)
    T = true.shape[0]
    for k in range(-max_lag, max_lag + 1):
        if k >= 0:
            a, b = true[: T - k], recon[k:]
        else:
            a, b = true[-k:], recon[: T + k]
        if a.shape[0] <= skip_frames:
            continue
        c = video_correlation(a, b, mask, skip_frames)
        if c > best[1]:
            best = (k, c)
    return best[0], float(best[1])


@dataclass(frozen=True)
class QualityReport:
    """All the published figures for one reconstructed trial."""

    video_corr: float
    video_corr_full_screen: float
    mean_frame_corr: float
    best_lag_frames: int
    best_lag_corr: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def quality_report(true: np.ndarray, recon: np.ndarray, eval_mask: np.ndarray | None,
                   skip_frames: int = DEFAULT_SKIP_FRAMES) -> QualityReport:
    """Video correlation (mask and full screen), mean per-frame correlation, best lag."""
    lag, lag_c = best_lag(true, recon, eval_mask, skip_frames=skip_frames)
    return QualityReport(
        video_corr=video_correlation(true, recon, eval_mask, skip_frames),
        video_corr_full_screen=video_correlation(true, recon, None, skip_frames),
        mean_frame_corr=float(np.nanmean(per_frame_correlation(true, recon, eval_mask, skip_frames))),
        best_lag_frames=lag,
        best_lag_corr=lag_c,
    )
