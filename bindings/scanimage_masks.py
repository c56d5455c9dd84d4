"""Export a Suite2p plane's ROI masks for the ScanImage frame hook (``rtd_si_frame_acquired``).

    python -m bindings.scanimage_masks SUITE2P_PLANE_DIR OUT.mat [--cells-only]

Writes a MATLAB v5 .mat file with

- ``masks``: sparse double N x (Ly*Lx), row i = Suite2p's cell weights of ROI i
  (``lam`` without overlapping pixels, normalised to sum 1), columns in MATLAB's
  column-major pixel order (``img(:)``: index = x * Ly + y);
- ``roi_ids`` (1 x N int64, indices into stat.npy), ``roi_centres_px`` (N x 2, y x),
  ``Ly``, ``Lx``.

Give the file as ``masks`` in the rig's JSON config; ``rtd_si_setup`` loads it. The ROI
means are then Suite2p's F (no registration, no neuropil) computed inside MATLAB.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def export_masks(plane_dir: str | Path, out: str | Path, *, cells_only: bool = False) -> int:
    """Write the .mat file; returns the number of ROIs written."""
    import scipy.io
    import scipy.sparse

    from bindings.suite2p_live.masks import cell_and_neuropil_masks
    from bindings.suite2p_live.plane import MaskParams, load_suite2p_plane
    from rt_decoder.errors import ConfigError

    plane = load_suite2p_plane(plane_dir)
    params = MaskParams(**{**plane.masks.__dict__, "neuropil_extract": False})
    masks = cell_and_neuropil_masks(plane.stats, plane.Ly, plane.Lx, params)
    ids = np.arange(plane.n_rois, dtype=np.int64)
    if cells_only:
        if plane.iscell is None:
            raise ConfigError(f"{plane.path}: --cells-only needs iscell.npy")
        ids = np.flatnonzero(plane.iscell).astype(np.int64)
    rows, cols, vals = [], [], []
    for row, i in enumerate(ids):
        flat, w = masks.cell_masks[i]
        y, x = np.divmod(flat, plane.Lx)
        rows.append(np.full(flat.size, row))
        cols.append(x * plane.Ly + y)  # column-major pixel index, as MATLAB's img(:)
        vals.append(w)
    mat = scipy.sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                  shape=(ids.size, plane.Ly * plane.Lx))
    centres = np.array([plane.stats[i].med for i in ids], dtype=np.float64).reshape(-1, 2)
    scipy.io.savemat(str(out), {"masks": mat, "roi_ids": ids.reshape(1, -1), "roi_centres_px": centres,
                                "Ly": float(plane.Ly), "Lx": float(plane.Lx)}, do_compression=True)
    return int(ids.size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export Suite2p ROI masks for the ScanImage frame hook.")
    parser.add_argument("plane_dir")
    parser.add_argument("out")
    parser.add_argument("--cells-only", action="store_true", help="only ROIs marked in iscell.npy")
    args = parser.parse_args(argv)
    n = export_masks(args.plane_dir, args.out, cells_only=args.cells_only)
    print(f"wrote {n} ROI masks to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
