"""numba kernels of the online deconvolution stage (private; use ``rt_decoder.deconv``).

One call processes a block of frames (T, N) for all N ROIs in one pass over the ROIs
(``prange`` when numba runs more than one thread). Everything the kernels touch is owned
by the caller (:class:`rt_decoder.deconv.stage.OnlineDeconvolver`) and allocated once.

State layout (N ROIs, K pools per ROI, H history frames)
--------------------------------------------------------
par  float64 (N, NPAR)    per-ROI parameters (columns ``P_*``)
st   float64 (N, NST)     per-ROI float state: baseline tracker, frozen boundary values
ist  int64   (N, NIST)    per-ROI int state: ring start, pool count, first retained frame,
                          "pools were dropped" flag
pf   float64 (N, K, NPF)  pool fields; AR(1): (value sum v, weight w, g^l, v / w);
                          AR(2): (first value v, last value w, A=sum d^k y, B=sum r^k y,
                          Sdd=sum d^2k, Sdr=sum (dr)^k, Srr=sum r^2k over observed samples,
                          d^(l-1), r^(l-1)); powers are kept per pool so that no frame
                          calls pow()
pl   int32   (N, K)       pool lengths in frames (observed + missing)
hist float32 (H, N)       committed activity of frames whose pools were dropped, by frame % H

The pools of one ROI are a ring of capacity K; when it is full the oldest pool is dropped
and its activity committed to ``hist`` (later merges cannot reach behind it: an
approximation that only matters when K pools span fewer frames than a merge would revise).

Semantics follow OASIS (Friedrich, Zhou and Paninski 2017) sample by sample:
AR(1) is oasis-deconv's ``oasisAR1`` pool merge; AR(2) is ``oasisAR2``'s pool merge with
the pool fits written as O(1) updates of the geometric sums above (the same least-squares
fits, exact in real arithmetic, and exact with missing samples). A missing sample (NaN/Inf
or a sequence gap) extends the newest pool without data, as ``oasisAR1`` does with NaN.

Flags live in one place (``_JIT``): no fastmath (bitwise agreement between runs and with
the reference's operation order matters more than a few ns), ``cache=True`` in the
directory chosen by ``rt_decoder._jit`` (``NUMBA_CACHE_DIR``, else
``~/.cache/rt-decoder/numba``: works when the package directory is read-only); each kernel
is compiled (or loaded) on first use only, and the first real compilation on a machine
announces itself on stderr (``rt_decoder._jit.COMPILE_NOTICE``).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

import numba as nb
import numpy as np

from rt_decoder import _jit

# --- column indices ------------------------------------------------------------------
P_G1, P_G2, P_D, P_R, P_SHIFT, P_SMIN, P_STEP, P_Q, P_ZOFF, P_SF, P_GINV = range(11)
NPAR = 11
S_BASE, S_FZ1, S_FZ2 = range(3)
NST = 3
I_RING, I_CNT, I_START, I_FROZEN = range(4)
NIST = 4
NPF_AR1 = 4
NPF_AR2 = 9
F_V, F_W, F_A, F_B, F_SDD, F_SDR, F_SRR, F_PD, F_PR = range(9)
F_GL = 2  # AR(1): g^l
F_C = 3  # AR(1): pool value v / w (kept so that a frame divides only on merges)

#: flags bits passed to the kernels
FLAG_DFF = 1
FLAG_TRACK = 2

_JIT: dict[str, Any] = {"nogil": True, "cache": True, "fastmath": False, "error_model": "numpy"}

inline = nb.njit(nogil=True, cache=True, fastmath=False, error_model="numpy", inline="always")



@inline
def prep(n, x, par, st, flags):  # type: ignore[no-untyped-def]
    # dF/F (or F - F0) of one sample, minus the L1 shift; NaN = missing sample
    xf = np.float64(x)
    if not np.isfinite(xf):
        return np.nan
    b = st[n, S_BASE]
    f0 = b + par[n, P_ZOFF]
    if flags & FLAG_DFF:
        den = f0 if f0 > par[n, P_SF] else par[n, P_SF]
        y = (xf - f0) / den
    else:
        y = xf - f0
    if flags & FLAG_TRACK:
        step = par[n, P_STEP]
        q = par[n, P_Q]
        if xf < b:
            b -= step * (1.0 - q)
        else:
            b += step * q
        st[n, S_BASE] = b
    return y - par[n, P_SHIFT]

@inline
def slot(ring, j, K):  # type: ignore[no-untyped-def]
    s = ring + j
    if s >= K:
        s -= K
    return s

# ---------------------------------------------------------------- AR(1)
@inline
def val1(n, j, ring, K, pf, ist, smin):  # type: ignore[no-untyped-def]
    # clamped pool value of pool j (oasisAR1's construct-c step)
    sl = slot(ring, j, K)
    v = pf[n, sl, F_C]
    if j == 0 and ist[n, I_FROZEN] == 0:
        if v < 0.0:
            v = 0.0
    elif v < smin:
        v = 0.0
    return v

@inline
def start_s1(n, j, start, ring, K, par, st, ist, pf, pl):  # type: ignore[no-untyped-def]
    # activity at the first frame of pool j
    if start == 0:
        return 0.0
    g = par[n, P_G1]
    smin = par[n, P_SMIN]
    c = val1(n, j, ring, K, pf, ist, smin)
    if j == 0:
        s = c - g * st[n, S_FZ1]
        return s if s > 0.0 else 0.0
    sp = slot(ring, j - 1, K)
    prev = val1(n, j - 1, ring, K, pf, ist, smin) * pf[n, sp, F_GL] * par[n, P_GINV]
    return c - g * prev

@inline
def drop1(n, t, ring, K, H, par, st, ist, pf, pl, hist):  # type: ignore[no-untyped-def]
    # commit the oldest pool to hist, freeze its last value, forget it
    start = ist[n, I_START]
    l0 = pl[n, ring]
    s0 = start_s1(n, 0, start, ring, K, par, st, ist, pf, pl)
    lo = t - H + 1
    for u in range(start, start + l0):
        if u >= lo:
            hist[u % H, n] = s0 if u == start else 0.0
    c0 = val1(n, 0, ring, K, pf, ist, par[n, P_SMIN])
    g = par[n, P_G1]
    cl = c0 * pf[n, ring, F_GL] / g
    st[n, S_FZ2] = cl / g if l0 >= 2 else st[n, S_FZ1]
    st[n, S_FZ1] = cl
    ist[n, I_FROZEN] = 1
    ist[n, I_START] = start + l0
    ring += 1
    if ring >= K:
        ring -= K
    ist[n, I_RING] = ring
    ist[n, I_CNT] -= 1

@inline
def push1(n, y, t, K, H, par, st, ist, pf, pl, hist):  # type: ignore[no-untyped-def]
    cnt = ist[n, I_CNT]
    if y != y:  # missing sample: extends the newest pool (oasisAR1's NaN rule)
        if cnt > 0:
            sl = slot(ist[n, I_RING], cnt - 1, K)
            pl[n, sl] += 1
            pf[n, sl, F_GL] *= par[n, P_G1]
            return
        y_v = 0.0  # oasisAR1 seeds a NaN first sample with value 0, weight 1
    else:
        y_v = y
    if cnt == K:
        drop1(n, t, ist[n, I_RING], K, H, par, st, ist, pf, pl, hist)
        cnt -= 1
    ring = ist[n, I_RING]
    sl = slot(ring, cnt, K)
    g = par[n, P_G1]
    pf[n, sl, F_V] = y_v
    pf[n, sl, F_W] = 1.0
    pf[n, sl, F_GL] = g
    pf[n, sl, F_C] = y_v
    pl[n, sl] = 1
    cnt += 1
    smin = par[n, P_SMIN]
    i = cnt - 1
    while i > 0:
        a = slot(ring, i - 1, K)
        b = slot(ring, i, K)
        gl = pf[n, a, F_GL]
        if pf[n, a, F_C] * gl + smin > pf[n, b, F_C]:
            pf[n, a, F_V] += pf[n, b, F_V] * gl
            pf[n, a, F_W] += pf[n, b, F_W] * gl * gl
            pf[n, a, F_C] = pf[n, a, F_V] / pf[n, a, F_W]
            pf[n, a, F_GL] = gl * pf[n, b, F_GL]
            pl[n, a] += pl[n, b]
            i -= 1
            cnt -= 1
        else:
            break
    ist[n, I_CNT] = cnt

@inline
def read1(n, u, t, K, H, par, st, ist, pf, pl, hist):  # type: ignore[no-untyped-def]
    # current estimate of the activity at frame u (0 <= u <= t)
    if u < 0:
        return 0.0
    if u < ist[n, I_START]:
        return np.float64(hist[u % H, n]) if u > t - H else 0.0
    ring = ist[n, I_RING]
    j = ist[n, I_CNT] - 1
    end = t
    while j >= 0:
        start = end - pl[n, slot(ring, j, K)] + 1
        if u >= start:
            if u == start:
                return start_s1(n, j, start, ring, K, par, st, ist, pf, pl)
            return 0.0
        end = start - 1
        j -= 1
    return 0.0

@inline
def recent1(n, t, W, K, H, par, st, ist, pf, pl, hist, out):  # type: ignore[no-untyped-def]
    # out[W-1-k, n] = estimate of frame t-k, k = 0..W-1 (one backward walk)
    ring = ist[n, I_RING]
    j = ist[n, I_CNT] - 1
    end = t
    lo = t - W + 1
    while j >= 0 and end >= lo:
        start = end - pl[n, slot(ring, j, K)] + 1
        for u in range(max(start + 1, lo), end + 1):
            out[u - lo, n] = 0.0
        if start >= lo:
            out[start - lo, n] = start_s1(n, j, start, ring, K, par, st, ist, pf, pl)
        end = start - 1
        j -= 1
    for u in range(lo, end + 1):
        if u < 0 or u <= t - H:
            out[u - lo, n] = 0.0
        else:
            out[u - lo, n] = hist[u % H, n]

# ---------------------------------------------------------------- AR(2)
# impulse response h(k) = (d^(k+1) - r^(k+1)) / (d - r), h(-1) = 0, evaluated at k = l-m of a
# pool of length l from its stored powers pd1 = d^(l-1), pr1 = r^(l-1)
@inline
def h_l(d, r, pd1, pr1):  # type: ignore[no-untyped-def]
    return (d * d * pd1 - r * r * pr1) / (d - r)


@inline
def h_lm1(d, r, pd1, pr1):  # type: ignore[no-untyped-def]
    return (d * pd1 - r * pr1) / (d - r)


@inline
def h_lm2(d, r, pd1, pr1):  # type: ignore[no-untyped-def]
    return (pd1 - pr1) / (d - r)


@inline
def h_lm3(d, r, pd1, pr1):  # type: ignore[no-untyped-def]
    # valid for l >= 2 (r > 0)
    return (pd1 / d - pr1 / r) / (d - r)

@inline
def wprev2(n, j, ring, K, st, pf):  # type: ignore[no-untyped-def]
    # last value of the pool before pool j (frozen value for j == 0)
    if j == 0:
        return st[n, S_FZ1]
    return pf[n, slot(ring, j - 1, K), F_W]

@inline
def refit2(n, j, ring, K, par, st, ist, pf, pl):  # type: ignore[no-untyped-def]
    # least-squares first value v and last value w of pool j from its sums
    sl = slot(ring, j, K)
    d = par[n, P_D]
    r = par[n, P_R]
    if j == 0 and ist[n, I_FROZEN] == 0:
        sdd = pf[n, sl, F_SDD]
        v = pf[n, sl, F_A] / sdd if sdd > 0.0 else 0.0
        if v < 0.0:
            v = 0.0
        pf[n, sl, F_V] = v
        pf[n, sl, F_W] = v * pf[n, sl, F_PD]
        return
    g2 = par[n, P_G2]
    wp = wprev2(n, j, ring, K, st, pf)
    dr = d - r
    dr2 = dr * dr
    sdd = pf[n, sl, F_SDD]
    sdr = pf[n, sl, F_SDR]
    srr = pf[n, sl, F_SRR]
    num = (d * pf[n, sl, F_A] - r * pf[n, sl, F_B]) / dr - g2 * wp * (d * sdd - (d + r) * sdr + r * srr) / dr2
    den = (d * d * sdd - 2.0 * d * r * sdr + r * r * srr) / dr2
    if den > 0.0:
        v = num / den
    else:  # no observed sample (after a flush): continue the frozen decay
        v = par[n, P_G1] * wp + g2 * st[n, S_FZ2]
    pf[n, sl, F_V] = v
    pd1 = pf[n, sl, F_PD]
    pr1 = pf[n, sl, F_PR]
    pf[n, sl, F_W] = h_lm1(d, r, pd1, pr1) * v + g2 * h_lm2(d, r, pd1, pr1) * wp

@inline
def second_last2(n, j, ring, K, par, st, ist, pf, pl):  # type: ignore[no-untyped-def]
    # value one frame before the end of pool j (needs length >= 2)
    sl = slot(ring, j, K)
    d = par[n, P_D]
    pd1 = pf[n, sl, F_PD]
    if j == 0 and ist[n, I_FROZEN] == 0:
        return pf[n, sl, F_V] * pd1 / d
    r = par[n, P_R]
    pr1 = pf[n, sl, F_PR]
    return (h_lm2(d, r, pd1, pr1) * pf[n, sl, F_V]
            + par[n, P_G2] * h_lm3(d, r, pd1, pr1) * wprev2(n, j, ring, K, st, pf))

@inline
def start_s2(n, j, start, ring, K, par, st, ist, pf, pl):  # type: ignore[no-untyped-def]
    if start < 2:
        return 0.0
    c0 = pf[n, slot(ring, j, K), F_V]
    if j == 0:
        c1 = st[n, S_FZ1]
        c2 = st[n, S_FZ2]
        s = c0 - par[n, P_G1] * c1 - par[n, P_G2] * c2
        return s if s > 0.0 else 0.0
    sp = slot(ring, j - 1, K)
    c1 = pf[n, sp, F_W]
    if pl[n, sp] >= 2:
        c2 = second_last2(n, j - 1, ring, K, par, st, ist, pf, pl)
    elif j - 1 == 0:
        c2 = st[n, S_FZ1]
    else:
        c2 = pf[n, slot(ring, j - 2, K), F_W]
    return c0 - par[n, P_G1] * c1 - par[n, P_G2] * c2

@inline
def drop2(n, t, ring, K, H, par, st, ist, pf, pl, hist):  # type: ignore[no-untyped-def]
    start = ist[n, I_START]
    l0 = pl[n, ring]
    s0 = start_s2(n, 0, start, ring, K, par, st, ist, pf, pl)
    lo = t - H + 1
    for u in range(start, start + l0):
        if u >= lo:
            hist[u % H, n] = s0 if u == start else 0.0
    if l0 >= 2:
        st[n, S_FZ2] = second_last2(n, 0, ring, K, par, st, ist, pf, pl)
    else:
        st[n, S_FZ2] = st[n, S_FZ1]
    st[n, S_FZ1] = pf[n, ring, F_W]
    ist[n, I_FROZEN] = 1
    ist[n, I_START] = start + l0
    ring += 1
    if ring >= K:
        ring -= K
    ist[n, I_RING] = ring
    ist[n, I_CNT] -= 1

@inline
def push2(n, y, t, K, H, par, st, ist, pf, pl, hist):  # type: ignore[no-untyped-def]
    cnt = ist[n, I_CNT]
    if y != y and cnt > 0:  # missing sample: extend the newest pool, refresh its end
        j = cnt - 1
        sl = slot(ist[n, I_RING], j, K)
        pl[n, sl] += 1
        pf[n, sl, F_PD] *= par[n, P_D]
        pf[n, sl, F_PR] *= par[n, P_R]
        refit2(n, j, ist[n, I_RING], K, par, st, ist, pf, pl)
        return
    if cnt == K:
        drop2(n, t, ist[n, I_RING], K, H, par, st, ist, pf, pl, hist)
        cnt -= 1
    ring = ist[n, I_RING]
    sl = slot(ring, cnt, K)
    if y != y:  # missing very first sample: an empty pool
        pf[n, sl, F_V] = 0.0
        pf[n, sl, F_W] = 0.0
        pf[n, sl, F_A] = 0.0
        pf[n, sl, F_B] = 0.0
        pf[n, sl, F_SDD] = 0.0
        pf[n, sl, F_SDR] = 0.0
        pf[n, sl, F_SRR] = 0.0
    else:
        v0 = y
        if cnt == 0 and ist[n, I_FROZEN] == 0 and v0 < 0.0:
            v0 = 0.0
        pf[n, sl, F_V] = v0
        pf[n, sl, F_W] = v0
        pf[n, sl, F_A] = y
        pf[n, sl, F_B] = y
        pf[n, sl, F_SDD] = 1.0
        pf[n, sl, F_SDR] = 1.0
        pf[n, sl, F_SRR] = 1.0
    pf[n, sl, F_PD] = 1.0
    pf[n, sl, F_PR] = 1.0
    pl[n, sl] = 1
    cnt += 1
    if y != y and ist[n, I_FROZEN] != 0:
        refit2(n, cnt - 1, ring, K, par, st, ist, pf, pl)
    d = par[n, P_D]
    r = par[n, P_R]
    g2 = par[n, P_G2]
    smin = par[n, P_SMIN]
    frozen = ist[n, I_FROZEN] != 0
    i = cnt - 1
    while i > 0:
        a = slot(ring, i - 1, K)
        b = slot(ring, i, K)
        pd1 = pf[n, a, F_PD]
        pr1 = pf[n, a, F_PR]
        if i - 1 == 0 and not frozen:
            pred = pf[n, a, F_W] * d
        else:
            wp = st[n, S_FZ1] if i - 1 == 0 else pf[n, slot(ring, i - 2, K), F_W]
            pred = h_l(d, r, pd1, pr1) * pf[n, a, F_V] + g2 * h_lm1(d, r, pd1, pr1) * wp
        if pred > pf[n, b, F_V] - smin:
            dl = d * pd1
            rl = r * pr1
            pf[n, a, F_A] += dl * pf[n, b, F_A]
            pf[n, a, F_B] += rl * pf[n, b, F_B]
            pf[n, a, F_SDD] += dl * dl * pf[n, b, F_SDD]
            pf[n, a, F_SDR] += dl * rl * pf[n, b, F_SDR]
            pf[n, a, F_SRR] += rl * rl * pf[n, b, F_SRR]
            pf[n, a, F_PD] = dl * pf[n, b, F_PD]
            pf[n, a, F_PR] = rl * pf[n, b, F_PR]
            pl[n, a] += pl[n, b]
            i -= 1
            cnt -= 1
            ist[n, I_CNT] = cnt
            refit2(n, i, ring, K, par, st, ist, pf, pl)
        else:
            break
    ist[n, I_CNT] = cnt

@inline
def read2(n, u, t, K, H, par, st, ist, pf, pl, hist):  # type: ignore[no-untyped-def]
    if u < 0:
        return 0.0
    if u < ist[n, I_START]:
        return np.float64(hist[u % H, n]) if u > t - H else 0.0
    ring = ist[n, I_RING]
    j = ist[n, I_CNT] - 1
    end = t
    while j >= 0:
        start = end - pl[n, slot(ring, j, K)] + 1
        if u >= start:
            if u == start:
                return start_s2(n, j, start, ring, K, par, st, ist, pf, pl)
            return 0.0
        end = start - 1
        j -= 1
    return 0.0

@inline
def recent2(n, t, W, K, H, par, st, ist, pf, pl, hist, out):  # type: ignore[no-untyped-def]
    ring = ist[n, I_RING]
    j = ist[n, I_CNT] - 1
    end = t
    lo = t - W + 1
    while j >= 0 and end >= lo:
        start = end - pl[n, slot(ring, j, K)] + 1
        for u in range(max(start + 1, lo), end + 1):
            out[u - lo, n] = 0.0
        if start >= lo:
            out[start - lo, n] = start_s2(n, j, start, ring, K, par, st, ist, pf, pl)
        end = start - 1
        j -= 1
    for u in range(lo, end + 1):
        if u < 0 or u <= t - H:
            out[u - lo, n] = 0.0
        else:
            out[u - lo, n] = hist[u % H, n]


# ---------------------------------------------------------------- drivers
# (one source function per kernel: numba's cache is keyed by function, so each is compiled
# exactly once, parallel=True; with numba.set_num_threads(1) prange runs on one thread)


def _block_ar1(X, t0, lag, rev, par, st, ist, pf, pl, hist, frz, flags, out):  # type: ignore[no-untyped-def]
    T = X.shape[0]
    K = pl.shape[1]
    H = hist.shape[0]
    for n in nb.prange(X.shape[1]):
        for k in range(T):
            t = t0 + k
            y = prep(n, X[k, n], par, st, flags)
            push1(n, y, t, K, H, par, st, ist, pf, pl, hist)
            v = read1(n, t - rev, t, K, H, par, st, ist, pf, pl, hist)
            if t >= rev:
                frz[(t - rev) % H, n] = v  # this frame's estimate is final from now on
            if lag == rev:
                out[k, n] = v
            elif lag < rev:
                out[k, n] = read1(n, t - lag, t, K, H, par, st, ist, pf, pl, hist)
            else:
                out[k, n] = frz[(t - lag) % H, n] if t >= lag else 0.0


def _block_ar2(X, t0, lag, rev, par, st, ist, pf, pl, hist, frz, flags, out):  # type: ignore[no-untyped-def]
    T = X.shape[0]
    K = pl.shape[1]
    H = hist.shape[0]
    for n in nb.prange(X.shape[1]):
        for k in range(T):
            t = t0 + k
            y = prep(n, X[k, n], par, st, flags)
            push2(n, y, t, K, H, par, st, ist, pf, pl, hist)
            v = read2(n, t - rev, t, K, H, par, st, ist, pf, pl, hist)
            if t >= rev:
                frz[(t - rev) % H, n] = v
            if lag == rev:
                out[k, n] = v
            elif lag < rev:
                out[k, n] = read2(n, t - lag, t, K, H, par, st, ist, pf, pl, hist)
            else:
                out[k, n] = frz[(t - lag) % H, n] if t >= lag else 0.0


def _gap_ar1(n_missing, t0, rev, par, st, ist, pf, pl, hist, frz):  # type: ignore[no-untyped-def]
    K = pl.shape[1]
    H = hist.shape[0]
    t1 = t0 + n_missing - 1
    for n in nb.prange(pl.shape[0]):
        rem = n_missing
        if ist[n, I_CNT] == 0:
            push1(n, np.nan, t0, K, H, par, st, ist, pf, pl, hist)
            rem -= 1
        if rem > 0:  # same as rem single missing samples: the newest pool grows
            sl = slot(ist[n, I_RING], ist[n, I_CNT] - 1, K)
            pl[n, sl] += rem
            pf[n, sl, F_GL] *= par[n, P_G1] ** rem
        # frames that reached the revision horizon during the gap (nothing merges in a gap,
        # so their estimates now are those they had then)
        for u in range(max(0, t0 - rev, t1 - H + 1), t1 - rev + 1):
            frz[u % H, n] = read1(n, u, t1, K, H, par, st, ist, pf, pl, hist)


def _gap_ar2(n_missing, t0, rev, par, st, ist, pf, pl, hist, frz):  # type: ignore[no-untyped-def]
    K = pl.shape[1]
    H = hist.shape[0]
    t1 = t0 + n_missing - 1
    for n in nb.prange(pl.shape[0]):
        rem = n_missing
        if ist[n, I_CNT] == 0:
            push2(n, np.nan, t0, K, H, par, st, ist, pf, pl, hist)
            rem -= 1
        if rem > 0:  # same as rem single missing samples: the newest pool grows, its end is refitted
            j = ist[n, I_CNT] - 1
            sl = slot(ist[n, I_RING], j, K)
            pl[n, sl] += rem
            pf[n, sl, F_PD] *= par[n, P_D] ** rem
            pf[n, sl, F_PR] *= par[n, P_R] ** rem
            refit2(n, j, ist[n, I_RING], K, par, st, ist, pf, pl)
        for u in range(max(0, t0 - rev, t1 - H + 1), t1 - rev + 1):
            frz[u % H, n] = read2(n, u, t1, K, H, par, st, ist, pf, pl, hist)


def _recent_ar1(t, rev, par, st, ist, pf, pl, hist, frz, out):  # type: ignore[no-untyped-def]
    K = pl.shape[1]
    H = hist.shape[0]
    W = out.shape[0]
    for n in nb.prange(pl.shape[0]):
        recent1(n, t, W, K, H, par, st, ist, pf, pl, hist, out)
        for u in range(max(0, t - W + 1), t - rev + 1):  # final (frozen) estimates
            out[u - t + W - 1, n] = frz[u % H, n]


def _recent_ar2(t, rev, par, st, ist, pf, pl, hist, frz, out):  # type: ignore[no-untyped-def]
    K = pl.shape[1]
    H = hist.shape[0]
    W = out.shape[0]
    for n in nb.prange(pl.shape[0]):
        recent2(n, t, W, K, H, par, st, ist, pf, pl, hist, out)
        for u in range(max(0, t - W + 1), t - rev + 1):
            out[u - t + W - 1, n] = frz[u % H, n]

def _flush_ar1(t, par, st, ist, pf, pl, hist):  # type: ignore[no-untyped-def]
    # commit every pool (before the parameters change); later frames start from frozen values
    K = pl.shape[1]
    H = hist.shape[0]
    for n in nb.prange(pl.shape[0]):
        while ist[n, I_CNT] > 0:
            drop1(n, t, ist[n, I_RING], K, H, par, st, ist, pf, pl, hist)


def _flush_ar2(t, par, st, ist, pf, pl, hist):  # type: ignore[no-untyped-def]
    K = pl.shape[1]
    H = hist.shape[0]
    for n in nb.prange(pl.shape[0]):
        while ist[n, I_CNT] > 0:
            drop2(n, t, ist[n, I_RING], K, H, par, st, ist, pf, pl, hist)


_SIG_BLOCK = (
    "void(float32[:, ::1], int64, int64, int64, float64[:, ::1], float64[:, ::1], int64[:, ::1], "
    "float64[:, :, ::1], int32[:, ::1], float32[:, ::1], float32[:, ::1], int64, float32[:, ::1])"
)
_SIG_GAP = (
    "void(int64, int64, int64, float64[:, ::1], float64[:, ::1], int64[:, ::1], "
    "float64[:, :, ::1], int32[:, ::1], float32[:, ::1], float32[:, ::1])"
)
_SIG_FLUSH = (
    "void(int64, float64[:, ::1], float64[:, ::1], int64[:, ::1], "
    "float64[:, :, ::1], int32[:, ::1], float32[:, ::1])"
)
_SIG_RECENT = (
    "void(int64, int64, float64[:, ::1], float64[:, ::1], int64[:, ::1], "
    "float64[:, :, ::1], int32[:, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1])"
)


_PY: dict[str, Callable[..., None]] = {
    "block_ar1": _block_ar1,
    "block_ar2": _block_ar2,
    "gap_ar1": _gap_ar1,
    "gap_ar2": _gap_ar2,
    "recent_ar1": _recent_ar1,
    "recent_ar2": _recent_ar2,
    "flush_ar1": _flush_ar1,
    "flush_ar2": _flush_ar2,
}


_SIGS = {"block": _SIG_BLOCK, "gap": _SIG_GAP, "recent": _SIG_RECENT, "flush": _SIG_FLUSH}
_compiled: dict[str, Callable[..., None]] = {}
_lock = threading.Lock()


def cache_dir() -> str:
    """Where the compiled kernels are cached (see ``rt_decoder._jit``)."""
    return _jit.cache_dir()


def get_kernel(name: str) -> Callable[..., None]:
    """One kernel (``block_ar1``, ``gap_ar2``, ...), compiled or loaded from the disk cache once
    per process (``rt_decoder._jit.compile_cached``: the first real compilation on a machine
    prints ``rt_decoder._jit.COMPILE_NOTICE`` on stderr).

    The number of threads is numba's (``numba.set_num_threads``); with one thread the
    ``prange`` loop runs serially.

    Signatures: ``block_ar1/2(X, t0, lag, rev, par, st, ist, pf, pl, hist, frz, flags, out)``,
    ``gap_ar1/2(n_missing, t0, rev, par, st, ist, pf, pl, hist, frz)``,
    ``recent_ar1/2(t, rev, par, st, ist, pf, pl, hist, frz, out)``,
    ``flush_ar1/2(t, par, st, ist, pf, pl, hist)``.
    """
    fn = _compiled.get(name)
    if fn is not None:
        return fn
    with _lock:
        fn = _compiled.get(name)
        if fn is None:
            opts = {k: v for k, v in _JIT.items() if k != "cache"}
            fn = _compiled[name] = _jit.compile_cached(_PY[name], [_SIGS[name.split("_")[0]]], parallel=True,
                                                       **opts)
        return fn


def get_kernels(names: Iterable[str] | None = None) -> dict[str, Callable[..., None]]:
    """The kernels ``names`` (default: all) as a dict name -> compiled function (see ``get_kernel``)."""
    return {name: get_kernel(name) for name in (_PY if names is None else names)}
