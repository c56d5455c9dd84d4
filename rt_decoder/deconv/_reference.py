"""Plain Python/numpy reference of the online deconvolution stage (slow; for tests only).

Written for clarity, independently of the numba kernels: one object per ROI, pools kept
in Python lists with no capacity limit, the raw samples kept so that every AR(2) pool fit
is recomputed from its data by explicit sums (the numba kernels update geometric sums in
O(1) instead). Same per-sample semantics as ``_kernels`` (see its docstring):

- prep: missing (NaN/Inf) stays missing; ``y = (x - F0) / max(F0, sigma_F)`` (dF/F) or
  ``x - F0``; the baseline tracker steps down by ``step (1 - q)`` below and up by
  ``step q`` at or above it; then the L1 shift is subtracted.
- AR(1): oasis-deconv ``oasisAR1``; AR(2): ``oasisAR2`` (no jitter), both with missing
  samples contributing length but no data.
- activity at frame u: 0 inside a pool, ``c_u - g1 c_{u-1} - g2 c_{u-2}`` at a pool start,
  0 for the first frame (AR(1)) or first two frames (AR(2)).

This module imports numpy and the standard library only.
"""

from __future__ import annotations

import math

import numpy as np


class ReferenceRoi:
    """One ROI's online OASIS, sample by sample, unbounded memory.

    Parameters
    ----------
    g1, g2 : float
        AR coefficients (``g2 = 0`` selects AR(1)).
    s_min : float
        Minimum spike size (dF/F units).
    shift : float
        L1 shift subtracted from every sample (``lam (1 - g1 - g2)``).
    baseline, step, q, zoff, sigma_f : float
        Baseline tracker start value, step, quantile, Gaussian offset, raw noise (F units).
    dff, track : bool
        Normalise to dF/F; track the baseline (else it stays at ``baseline``).
    """

    def __init__(self, g1: float, g2: float, s_min: float, shift: float, baseline: float, step: float,
                 q: float, zoff: float, sigma_f: float, dff: bool, track: bool, ar2: bool) -> None:
        self.g1, self.g2, self.s_min, self.shift = g1, g2, s_min, shift
        self.b, self.step, self.q, self.zoff, self.sigma_f = baseline, step, q, zoff, sigma_f
        self.dff, self.track, self.ar2 = dff, track, ar2
        if ar2:
            disc = math.sqrt(g1 * g1 + 4 * g2)
            self.d, self.r = (g1 + disc) / 2, (g1 - disc) / 2
        self.y: list[float] = []  # shifted samples, NaN = missing
        self.pools: list[list[float]] = []  # AR1: [start, len, v, w]; AR2: [start, len, first, last]

    # -------------------------------------------------------------- input
    def prep(self, x: float) -> float:
        if not math.isfinite(x):
            return math.nan
        f0 = self.b + self.zoff
        y = (x - f0) / max(f0, self.sigma_f) if self.dff else x - f0
        if self.track:
            if x < self.b:
                self.b -= self.step * (1 - self.q)
            else:
                self.b += self.step * self.q
        return y - self.shift

    def add(self, x: float) -> None:
        """Add one raw sample (NaN = missing)."""
        y = self.prep(float(x))
        self.y.append(y)
        if self.ar2:
            self._add2(y)
        else:
            self._add1(y)

    # -------------------------------------------------------------- AR(1)
    def _add1(self, y: float) -> None:
        t = len(self.y) - 1
        P = self.pools
        if math.isnan(y):
            if P:
                P[-1][1] += 1
                return
            P.append([t, 1, 0.0, 1.0])
        else:
            P.append([t, 1, y, 1.0])
        g, smin = self.g1, self.s_min
        while len(P) > 1 and P[-2][2] / P[-2][3] * g ** P[-2][1] + smin > P[-1][2] / P[-1][3]:
            last = P.pop()
            prev = P[-1]
            prev[2] += last[2] * g ** prev[1]
            prev[3] += last[3] * g ** (2 * prev[1])
            prev[1] += last[1]

    def _c1(self) -> np.ndarray:
        c = np.zeros(len(self.y))
        for j, (start, ln, v, w) in enumerate(self.pools):
            val = v / w
            if (j == 0 and val < 0) or (j > 0 and val < self.s_min):
                val = 0.0
            for k in range(int(ln)):
                c[int(start) + k] = val * self.g1 ** k
        return c

    # -------------------------------------------------------------- AR(2)
    def _h(self, k: int) -> float:
        return 0.0 if k < 0 else (self.d ** (k + 1) - self.r ** (k + 1)) / (self.d - self.r)

    def _fit2(self, j: int) -> None:
        """Least-squares first/last value of pool j from its raw samples."""
        P = self.pools
        start, ln = int(P[j][0]), int(P[j][1])
        ys = self.y[start:start + ln]
        if j == 0:
            num = sum(self.d ** k * yk for k, yk in enumerate(ys) if not math.isnan(yk))
            den = sum(self.d ** (2 * k) for k, yk in enumerate(ys) if not math.isnan(yk))
            v = max(0.0, num / den) if den > 0 else 0.0
            P[j][2], P[j][3] = v, v * self.d ** (ln - 1)
            return
        wp = P[j - 1][3]
        num = sum(self._h(k) * (yk - self.g2 * self._h(k - 1) * wp) for k, yk in enumerate(ys) if not math.isnan(yk))
        den = sum(self._h(k) ** 2 for k, yk in enumerate(ys) if not math.isnan(yk))
        v = num / den
        P[j][2], P[j][3] = v, self._h(ln - 1) * v + self.g2 * self._h(ln - 2) * wp

    def _add2(self, y: float) -> None:
        t = len(self.y) - 1
        P = self.pools
        if math.isnan(y):
            if P:
                P[-1][1] += 1
                self._fit2(len(P) - 1)
                return
            P.append([t, 1, 0.0, 0.0])
        else:
            v0 = max(0.0, y) if not P else y
            P.append([t, 1, v0, v0])
        while len(P) > 1:
            i = len(P) - 1
            a = P[i - 1]
            if i - 1 == 0:
                pred = a[3] * self.d
            else:
                la = int(a[1])
                pred = self._h(la) * a[2] + self.g2 * self._h(la - 1) * P[i - 2][3]
            if pred > P[i][2] - self.s_min:
                last = P.pop()
                P[-1][1] += last[1]
                self._fit2(len(P) - 1)
            else:
                break

    def _c2(self) -> np.ndarray:
        c = np.zeros(len(self.y))
        for j, (start, ln, v, w) in enumerate(self.pools):
            s, n = int(start), int(ln)
            if j == 0:
                for k in range(n):
                    c[s + k] = v * self.d ** k
            else:
                wp = self.pools[j - 1][3]
                for k in range(n):
                    c[s + k] = self._h(k) * v + self.g2 * self._h(k - 1) * wp
        return c

    # -------------------------------------------------------------- output
    def solution(self) -> np.ndarray:
        """Current activity estimate of every frame so far, shape (T,), float64."""
        T = len(self.y)
        s = np.zeros(T)
        if self.ar2:
            c = self._c2()
            for start, _ln, _v, _w in self.pools[1:]:
                u = int(start)
                if u >= 2:
                    s[u] = c[u] - self.g1 * c[u - 1] - self.g2 * c[u - 2]
        else:
            c = self._c1()
            for start, _ln, _v, _w in self.pools[1:]:
                u = int(start)
                s[u] = c[u] - self.g1 * c[u - 1]
        return s


def reference_run(X: np.ndarray, rois: list[ReferenceRoi], lag_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Feed frames (T, N) to the ROIs one by one.

    Returns
    -------
    lagged : ndarray, shape (T, N), float64
        Row k: estimate of frame ``k - lag_frames`` read right after frame k (0 before 0).
    final : ndarray, shape (T_total, N), float64
        Every frame's estimate after the last frame.
    """
    T, N = X.shape
    lagged = np.zeros((T, N))
    for k in range(T):
        for n, roi in enumerate(rois):
            roi.add(float(X[k, n]))
            u = len(roi.y) - 1 - lag_frames
            if u >= 0:
                lagged[k, n] = roi.solution()[u]
    final = np.stack([roi.solution() for roi in rois], axis=1)
    return lagged, final
