"""Suite2p's cell and neuropil masks, rebuilt from ``stat.npy``, and their packed forms.

``cell_and_neuropil_masks`` follows ``suite2p.extraction.masks.create_masks`` (0.14 and
1.x): the cell mask of ROI i is its pixels without the overlapping ones (unless
``allow_overlap``) with weights ``lam / sum(lam)``; its neuropil mask is a box grown
around the ROI (after ``inner_neuropil_radius`` one-pixel dilations) until it holds more
than ``min_neuropil_pixels`` pixels that belong to no cell, those pixels with the ROI and
its dilation removed, each weighted 1 / count.

``PackedMasks`` turns them into flat arrays for the extraction kernel: cell masks as
CSR (row, column, weight) triplets, neuropil masks as horizontal runs (row, first
column, length), which a row-wise prefix sum of the frame turns into two look-ups each.
Imports numpy and scipy.ndimage only.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count

import numpy as np
from scipy.ndimage import percentile_filter

from bindings.suite2p_live.plane import MaskParams, RoiStat


def extend_roi(ypix: np.ndarray, xpix: np.ndarray, Ly: int, Lx: int, niter: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Dilate a pixel set by ``niter`` 4-neighbour steps (suite2p's ``extendROI``)."""
    for _ in range(niter):
        yx = np.array(((ypix, ypix, ypix, ypix - 1, ypix + 1), (xpix, xpix + 1, xpix - 1, xpix, xpix)))
        yx = yx.reshape((2, -1))
        yu = np.unique(yx, axis=1)
        ok = np.all((yu[0] >= 0, yu[0] < Ly, yu[1] >= 0, yu[1] < Lx), axis=0)
        ypix, xpix = yu[:, ok]
    return ypix, xpix


def cell_pixel_map(stats: tuple[RoiStat, ...], Ly: int, Lx: int, lam_percentile: float) -> np.ndarray:
    """(Ly, Lx) bool: pixels that count as "cell" and are excluded from neuropil."""
    lammap = np.zeros((Ly, Lx))
    radii = np.array([s.radius for s in stats], dtype=np.float64)
    for s in stats:
        lammap[s.ypix, s.xpix] = np.maximum(lammap[s.ypix, s.xpix], s.lam)
    if lam_percentile > 0.0:
        radius = np.median(radii)
        filt = percentile_filter(lammap, percentile=lam_percentile, size=int(radius * 5))
        return ~np.logical_or(lammap < filt, lammap == 0)
    return lammap > 0.0


@dataclass(frozen=True)
class MaskSet:
    """Suite2p's masks for N ROIs on a Ly x Lx frame.

    cell_masks : list of (flat pixel index int64, lam_normed float64)
    neuropil_masks : list of sorted flat indices int64, or None (neuropil_extract off)
    cell_pix : (Ly, Lx) bool -- pixels excluded from every neuropil mask
    boxes : (N, 4) int64 [y0, y1, x0, x1) of each square neuropil region, or None when the
        neuropil is circular (then only ``neuropil_masks`` describes it)
    dilated : list of (ypix, xpix) -- each ROI grown by inner_neuropil_radius (excluded)
    """

    cell_masks: list[tuple[np.ndarray, np.ndarray]]
    neuropil_masks: list[np.ndarray] | None
    cell_pix: np.ndarray
    boxes: np.ndarray | None
    dilated: list[tuple[np.ndarray, np.ndarray]]


def cell_and_neuropil_masks(stats: tuple[RoiStat, ...], Ly: int, Lx: int, params: MaskParams) -> MaskSet:
    """Suite2p's cell and neuropil masks (``suite2p.extraction.masks.create_masks``)."""
    cell_masks = []
    for s in stats:
        keep = np.ones(s.ypix.size, bool) if params.allow_overlap else ~s.overlap
        ipix = np.ravel_multi_index((s.ypix, s.xpix), (Ly, Lx))[keep]
        lam = s.lam[keep]
        cell_masks.append((ipix.astype(np.int64), lam / lam.sum() if lam.size > 0 else np.empty(0)))
    cell_pix = cell_pixel_map(stats, Ly, Lx, params.lam_percentile) if stats else np.zeros((Ly, Lx), bool)
    if not params.neuropil_extract:
        return MaskSet(cell_masks, None, cell_pix, None, [])
    extend_by = 5
    neuropil, boxes, dilated = [], [], []
    for s in stats:
        mask = np.zeros((Ly, Lx), bool)
        ypix, xpix = extend_roi(s.ypix, s.xpix, Ly, Lx, niter=params.inner_neuropil_radius)
        nring = np.sum(cell_pix[ypix, xpix] < 0.5)
        reps = count()
        y1, x1 = ypix.copy(), xpix.copy()
        box = None
        while next(reps) < 100 and np.sum(cell_pix[y1, x1] < 0.5) - nring <= params.min_neuropil_pixels:
            if params.circular_neuropil:
                y1, x1 = extend_roi(y1, x1, Ly, Lx, extend_by)
            else:
                box = (max(0, int(y1.min()) - extend_by), min(Ly, int(y1.max()) + extend_by + 1),
                       max(0, int(x1.min()) - extend_by), min(Lx, int(x1.max()) + extend_by + 1))
                y1, x1 = np.meshgrid(np.arange(box[0], box[1], dtype=np.int64),
                                     np.arange(box[2], box[3], dtype=np.int64), indexing="ij")
        ok = cell_pix[y1, x1] < 0.5
        mask[y1[ok], x1[ok]] = True
        mask[ypix, xpix] = False
        neuropil.append(np.ravel_multi_index(np.nonzero(mask), (Ly, Lx)).astype(np.int64))
        dilated.append((ypix.astype(np.int64), xpix.astype(np.int64)))
        boxes.append(box)
    box_arr = None
    if not params.circular_neuropil and all(b is not None for b in boxes):
        box_arr = np.array(boxes, dtype=np.int64).reshape(-1, 4)
    return MaskSet(cell_masks, neuropil, cell_pix, box_arr, dilated)


@dataclass(frozen=True)
class PackedMasks:
    """Masks as flat arrays for ``_kernels.extract`` (N ROIs, frame Ly x Lx).

    cell_ptr (N+1,) int64; cell_y, cell_x (nnz,) int64; cell_w (nnz,) float64;
    run_ptr (N+1,) int64; run_y, run_x0, run_len (n_runs,) int64;
    neu_npix (N,) float64 (number of neuropil pixels; 0 -> Fneu is NaN, as in suite2p).
    """

    Ly: int
    Lx: int
    cell_ptr: np.ndarray
    cell_y: np.ndarray
    cell_x: np.ndarray
    cell_w: np.ndarray
    run_ptr: np.ndarray
    run_y: np.ndarray
    run_x0: np.ndarray
    run_len: np.ndarray
    neu_npix: np.ndarray
    boxes: np.ndarray | None = None
    cell_pix: np.ndarray | None = None
    ring_ptr: np.ndarray | None = None
    ring_y: np.ndarray | None = None
    ring_x: np.ndarray | None = None

    @property
    def n_rois(self) -> int:
        return int(self.cell_ptr.size - 1)


def _runs(flat: np.ndarray, Lx: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs (row, first column, length) of sorted flat pixel indices."""
    if flat.size == 0:
        e = np.zeros(0, np.int64)
        return e, e, e
    flat = np.sort(flat)
    y, x = np.divmod(flat, Lx)
    brk = np.flatnonzero((np.diff(flat) != 1) | (np.diff(y) != 0)) + 1
    starts = np.concatenate(([0], brk))
    ends = np.concatenate((brk, [flat.size]))
    return y[starts], x[starts], ends - starts


def pack_masks(masks: MaskSet, Ly: int, Lx: int) -> PackedMasks:
    """Pack a ``MaskSet`` into flat arrays.

    Always packs neuropil masks as runs; with square neuropil regions (suite2p's default)
    it also packs the box form: neuropil sum = box sum of the frame - box sum of the
    frame on cell pixels - the dilated ROI pixels that are not cell pixels ("ring"),
    which two integral images turn into 8 look-ups plus the ring pixels.
    """
    cell_masks, neuropil_masks = masks.cell_masks, masks.neuropil_masks
    n = len(cell_masks)
    sizes = np.array([m[0].size for m in cell_masks], dtype=np.int64)
    cell_ptr = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    flat = np.concatenate([m[0] for m in cell_masks]) if n else np.zeros(0, np.int64)
    cell_w = np.concatenate([m[1] for m in cell_masks]).astype(np.float64) if n else np.zeros(0)
    cell_y, cell_x = np.divmod(flat.astype(np.int64), Lx)
    if neuropil_masks is None:
        neuropil_masks = [np.zeros(0, np.int64)] * n
    runs = [_runs(m, Lx) for m in neuropil_masks]
    run_ptr = np.concatenate(([0], np.cumsum([r[0].size for r in runs]))).astype(np.int64)
    cat = (lambda k: np.concatenate([r[k] for r in runs]).astype(np.int64)) if n else (lambda k: np.zeros(0, np.int64))
    neu_npix = np.array([m.size for m in neuropil_masks], dtype=np.float64)
    ring_ptr = ring_y = ring_x = None
    if masks.boxes is not None:
        rings = []
        for (yd, xd), (y0, y1, x0, x1) in zip(masks.dilated, masks.boxes):
            inside = (yd >= y0) & (yd < y1) & (xd >= x0) & (xd < x1) & ~masks.cell_pix[yd, xd]
            rings.append((yd[inside], xd[inside]))
        ring_ptr = np.concatenate(([0], np.cumsum([r[0].size for r in rings]))).astype(np.int64)
        ring_y = np.concatenate([r[0] for r in rings]).astype(np.int64) if n else np.zeros(0, np.int64)
        ring_x = np.concatenate([r[1] for r in rings]).astype(np.int64) if n else np.zeros(0, np.int64)
    return PackedMasks(Ly, Lx, cell_ptr, cell_y.astype(np.int64), cell_x.astype(np.int64), cell_w,
                       run_ptr, cat(0), cat(1), cat(2), neu_npix,
                       boxes=masks.boxes, cell_pix=np.ascontiguousarray(masks.cell_pix, dtype=np.uint8),
                       ring_ptr=ring_ptr, ring_y=ring_y, ring_x=ring_x)
