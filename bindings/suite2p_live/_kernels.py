"""Numba kernels of the live extractor (private: use ``Suite2pLiveExtractor``).

Explicit signatures, caller-owned buffers, compiled at import (cached on disk where
``rt_decoder._jit`` says; the first compilation on a machine prints a notice). Each
kernel has a plain numpy reference in ``reference.py`` that the tests compare it with.
"""

from __future__ import annotations

import numpy as np
from numba import types

from rt_decoder._jit import jit_cached


#: frame types accepted: int16 / uint16 / float32, C-contiguous, writeable or read-only
#: (frames decoded from the wire are read-only views of the message buffer)
_FRAMES = [types.Array(dt, 2, "C", readonly=ro) for dt in (types.int16, types.uint16, types.float32)
           for ro in (False, True)]
_I1 = types.Array(types.int64, 1, "C")
_F1 = types.Array(types.float64, 1, "C")
_F2 = types.Array(types.float64, 2, "C")
_S1 = types.Array(types.float32, 1, "C")

_SIG_EXTRACT = [types.void(fr, types.int64, types.int64, _I1, _I1, _I1, _F1, _I1, _I1, _I1, _I1, _F1, _F2, _S1, _S1)
                for fr in _FRAMES]


@jit_cached(_SIG_EXTRACT, nogil=True, boundscheck=False)
def extract(frame, dy, dx, cell_ptr, cell_y, cell_x, cell_w, run_ptr, run_y, run_x0, run_len,
            neu_npix, prefix, F, Fneu):  # pragma: no cover - compiled
    """F and Fneu of every ROI from the frame shifted by (dy, dx) (suite2p's np.roll(-dy, -dx)).

    The registered pixel (y, x) is ``frame[(y + dy) % Ly, (x + dx) % Lx]``; |dy| <= Ly and
    |dx| <= Lx. ``prefix`` (Ly, Lx + 1) float64 is scratch for the row-wise prefix sums
    used by the neuropil runs. A ROI with no neuropil pixel gets NaN (as suite2p's 0/0).
    """
    Ly, Lx = frame.shape
    for r in range(Ly):
        acc = 0.0
        prefix[r, 0] = 0.0
        for c in range(Lx):
            acc += frame[r, c]
            prefix[r, c + 1] = acc
    n_rois = F.shape[0]
    for n in range(n_rois):
        s = 0.0
        for k in range(cell_ptr[n], cell_ptr[n + 1]):
            yy = cell_y[k] + dy
            if yy >= Ly:
                yy -= Ly
            elif yy < 0:
                yy += Ly
            xx = cell_x[k] + dx
            if xx >= Lx:
                xx -= Lx
            elif xx < 0:
                xx += Lx
            s += cell_w[k] * frame[yy, xx]
        F[n] = s
        t = 0.0
        for k in range(run_ptr[n], run_ptr[n + 1]):
            r = run_y[k] + dy
            if r >= Ly:
                r -= Ly
            elif r < 0:
                r += Ly
            a = run_x0[k] + dx
            if a >= Lx:
                a -= Lx
            elif a < 0:
                a += Lx
            b = a + run_len[k]
            if b <= Lx:
                t += prefix[r, b] - prefix[r, a]
            else:
                t += (prefix[r, Lx] - prefix[r, a]) + prefix[r, b - Lx]
        if neu_npix[n] > 0:
            Fneu[n] = t / neu_npix[n]
        else:
            Fneu[n] = np.nan


@jit_cached(["void(complex64[:, ::1], complex64[:, ::1])"], nogil=True, boundscheck=False)
def whiten_multiply(X, cf):  # pragma: no cover - compiled
    """In place: X <- X / (1e-5 + |X|) * cf (suite2p's phase-correlation normalisation)."""
    eps = np.float32(1e-5)
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            x = X[i, j]
            re = x.real
            im = x.imag
            s = np.float32(1.0) / (eps + np.sqrt(re * re + im * im))
            c = cf[i, j]
            a = re * s
            b = im * s
            X[i, j] = complex(a * c.real - b * c.imag, a * c.imag + b * c.real)


_SIG_EXTRACT_BOX = [
    types.void(fr, types.int64, types.int64, _I1, _I1, _I1, _F1, types.Array(types.int64, 2, "C"),
               types.Array(types.uint8, 2, "C"), _I1, _I1, _I1, _F1, _F2, _F2, _F2, _S1, _S1)
    for fr in _FRAMES
]


@jit_cached(_SIG_EXTRACT_BOX, nogil=True, boundscheck=False)
def extract_box(frame, dy, dx, cell_ptr, cell_y, cell_x, cell_w, boxes, cell_pix, ring_ptr, ring_y, ring_x,
                neu_npix, reg, I_all, I_cell, F, Fneu):  # pragma: no cover - compiled
    """Like ``extract`` for square neuropil regions, with integral images.

    ``reg`` (Ly, Lx) float64 receives the registered frame; ``I_all`` and ``I_cell``
    (Ly + 1, Lx + 1) float64 its integral image and that of ``reg * cell_pix``.
    Neuropil sum of ROI n = box(I_all) - box(I_cell) - sum of its ring pixels.
    """
    Ly, Lx = frame.shape
    for c in range(Lx + 1):
        I_all[0, c] = 0.0
        I_cell[0, c] = 0.0
    for y in range(Ly):
        ys = y + dy
        if ys >= Ly:
            ys -= Ly
        elif ys < 0:
            ys += Ly
        acc_a = 0.0
        acc_c = 0.0
        I_all[y + 1, 0] = 0.0
        I_cell[y + 1, 0] = 0.0
        for x in range(Lx):
            xs = x + dx
            if xs >= Lx:
                xs -= Lx
            elif xs < 0:
                xs += Lx
            v = np.float64(frame[ys, xs])
            reg[y, x] = v
            acc_a += v
            if cell_pix[y, x]:
                acc_c += v
            I_all[y + 1, x + 1] = I_all[y, x + 1] + acc_a
            I_cell[y + 1, x + 1] = I_cell[y, x + 1] + acc_c
    n_rois = F.shape[0]
    for n in range(n_rois):
        s = 0.0
        for k in range(cell_ptr[n], cell_ptr[n + 1]):
            s += cell_w[k] * reg[cell_y[k], cell_x[k]]
        F[n] = s
        y0 = boxes[n, 0]
        y1 = boxes[n, 1]
        x0 = boxes[n, 2]
        x1 = boxes[n, 3]
        t = (I_all[y1, x1] - I_all[y0, x1] - I_all[y1, x0] + I_all[y0, x0]) - (
            I_cell[y1, x1] - I_cell[y0, x1] - I_cell[y1, x0] + I_cell[y0, x0])
        for k in range(ring_ptr[n], ring_ptr[n + 1]):
            t -= reg[ring_y[k], ring_x[k]]
        if neu_npix[n] > 0:
            Fneu[n] = t / neu_npix[n]
        else:
            Fneu[n] = np.nan


_S2 = types.Array(types.float32, 2, "C")


@jit_cached([types.void(fr, types.float32, types.float32, _S2, _S2, _S2) for fr in _FRAMES],
            nogil=True, boundscheck=False)
def taper(frame, lo, hi, mask_mul, mask_off, out):  # pragma: no cover - compiled
    """out = clip(frame, lo, hi) * mask_mul + mask_off, in float32 (registration input)."""
    for i in range(frame.shape[0]):
        for j in range(frame.shape[1]):
            v = np.float32(frame[i, j])
            if v < lo:
                v = lo
            elif v > hi:
                v = hi
            out[i, j] = v * mask_mul[i, j] + mask_off[i, j]
