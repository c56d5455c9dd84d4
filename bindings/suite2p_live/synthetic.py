"""Small synthetic two-photon movies and Suite2p-layout folders (tests and benchmarks).

``render_movie`` draws Gaussian cells whose brightness follows given traces over a
smooth background, adds noise and rigid motion, and returns int16 frames.
``write_plane_folder`` writes a Suite2p plane folder in the classic (``ops.npy``) or split
(``settings.npy`` + ``reg_outputs.npy`` + ``detect_outputs.npy`` + ``db.npy``) layout,
with ``stat.npy`` as Suite2p writes it: those are pickled object arrays (``np.save`` of
dicts), which Suite2p's format demands; this module only writes them for tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter


def render_movie(traces: np.ndarray, centres_px: np.ndarray, shape: tuple[int, int], rng: np.random.Generator,
                 *, cell_sigma_px: float = 1.8, max_shift_px: int = 3, noise_sd: float = 15.0,
                 background: float = 400.0) -> tuple[np.ndarray, np.ndarray]:
    """Render a movie of cells.

    Parameters
    ----------
    traces : (T, N) float
        Brightness of each cell per frame (a.u., about 0..5000).
    centres_px : (N, 2) float
        Cell centres (y, x) in pixels of the output frame.
    shape : (Ly, Lx)
    rng : numpy Generator
    max_shift_px : int
        Rigid motion: each frame is offset by integers in [-max_shift_px, max_shift_px].

    Returns
    -------
    movie : (T, Ly, Lx) int16
    shifts : (T, 2) int64 (y, x) offsets applied
    """
    T, N = traces.shape
    Ly, Lx = shape
    pad = max_shift_px + 1
    H, W = Ly + 2 * pad, Lx + 2 * pad
    yy, xx = np.mgrid[0:H, 0:W]
    bg = background + 150.0 * gaussian_filter(rng.normal(size=(H, W)), 6) / 0.05
    bg = np.clip(bg, 50, None)
    # each cell as a sparse Gaussian footprint (peak 1) on the padded canvas
    r = int(np.ceil(3 * cell_sigma_px))
    foot = []
    for cy, cx in centres_px + pad:
        y0, y1 = int(max(0, np.floor(cy) - r)), int(min(H, np.floor(cy) + r + 2))
        x0, x1 = int(max(0, np.floor(cx) - r)), int(min(W, np.floor(cx) + r + 2))
        g = np.exp(-((yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2) / (2 * cell_sigma_px**2))
        foot.append((y0, y1, x0, x1, g))
    shifts = rng.integers(-max_shift_px, max_shift_px + 1, size=(T, 2))
    shifts[0] = 0
    movie = np.empty((T, Ly, Lx), np.int16)
    neuropil = gaussian_filter(rng.normal(size=(T, H, W)), (3, 8, 8))
    neuropil *= 80.0 / (neuropil.std() + 1e-9)
    for t in range(T):
        canvas = bg + neuropil[t]
        for i, (y0, y1, x0, x1, g) in enumerate(foot):
            canvas[y0:y1, x0:x1] += traces[t, i] * g
        canvas += rng.normal(0.0, noise_sd, size=canvas.shape)
        sy, sx = shifts[t]
        crop = canvas[pad + sy: pad + sy + Ly, pad + sx: pad + sx + Lx]
        movie[t] = np.clip(np.round(crop), -32768, 32767).astype(np.int16)
    return movie, shifts


def random_stats(n_rois: int, shape: tuple[int, int], rng: np.random.Generator, *, radius_px: float = 4.0
                 ) -> list[dict[str, Any]]:
    """ROI dicts as Suite2p's stat.npy holds them (ypix, xpix, lam, med, radius, overlap)."""
    Ly, Lx = shape
    stats: list[dict[str, Any]] = []
    occupancy = np.zeros(shape, np.int32)
    centres = np.column_stack([rng.uniform(radius_px, Ly - radius_px, n_rois),
                               rng.uniform(radius_px, Lx - radius_px, n_rois)])
    r = int(np.ceil(radius_px))
    pix = []
    for cy, cx in centres:
        ys, xs = np.mgrid[int(cy) - r: int(cy) + r + 1, int(cx) - r: int(cx) + r + 1]
        d2 = (ys - cy) ** 2 + (xs - cx) ** 2
        keep = (d2 <= radius_px**2) & (ys >= 0) & (ys < Ly) & (xs >= 0) & (xs < Lx)
        ypix, xpix = ys[keep].astype(np.int32), xs[keep].astype(np.int32)
        lam = (np.exp(-d2[keep] / (2 * (radius_px / 2) ** 2)) * rng.uniform(0.8, 1.2, keep.sum())).astype(np.float32)
        occupancy[ypix, xpix] += 1
        pix.append((ypix, xpix, lam, (cy, cx)))
    for ypix, xpix, lam, (cy, cx) in pix:
        stats.append({"ypix": ypix, "xpix": xpix, "lam": lam, "med": [int(round(cy)), int(round(cx))],
                      "npix": int(ypix.size), "radius": float(radius_px), "overlap": occupancy[ypix, xpix] > 1})
    return stats


def _save_pickled(path: Path, obj: Any) -> None:
    # Suite2p's own format: a dict / object array saved with pickling (tests only).
    np.save(path, obj, allow_pickle=True)


def write_plane_folder(folder: str | Path, *, ref_img: np.ndarray, stats: list[dict[str, Any]],
                       layout: str = "classic", rmin: float | None = None, rmax: float | None = None,
                       settings: dict[str, Any] | None = None, F: np.ndarray | None = None,
                       Fneu: np.ndarray | None = None, iscell: np.ndarray | None = None,
                       movie: np.ndarray | None = None, fs: float = 30.0) -> Path:
    """Write a Suite2p plane folder (``layout`` "classic" or "split") and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    Ly, Lx = ref_img.shape
    if rmin is None or rmax is None:
        rmin, rmax = float(np.int16(np.percentile(ref_img, 1))), float(np.int16(np.percentile(ref_img, 99)))
    reg = {"maxregshift": 0.1, "smooth_sigma": 1.15, "norm_frames": True, "1Preg": False, "nonrigid": False,
           "spatial_taper": 40.0, "smooth_sigma_time": 0, "bidi_corrected": False}
    ext = {"inner_neuropil_radius": 2, "min_neuropil_pixels": 350, "lam_percentile": 50.0, "allow_overlap": False,
           "circular_neuropil": False, "neuropil_extract": True}
    for k, v in (settings or {}).items():
        (reg if k in reg else ext)[k] = v
    n_frames = 0 if movie is None else int(movie.shape[0])
    outs = {"refImg": ref_img.astype(np.int16), "rmin": np.int16(rmin), "rmax": np.int16(rmax), "bidiphase": 0}
    if layout == "classic":
        _save_pickled(folder / "ops.npy", {**reg, **ext, **outs, "Ly": Ly, "Lx": Lx, "fs": fs, "neucoeff": 0.7,
                                           "nframes": n_frames})
    elif layout == "split":
        _save_pickled(folder / "settings.npy", {"fs": fs, "registration": reg, "extraction": ext,
                                                "dcnv_preprocess": {"neucoeff": 0.7}})
        _save_pickled(folder / "reg_outputs.npy", outs)
        _save_pickled(folder / "detect_outputs.npy", {"Vcorr": np.zeros((Ly, Lx), np.float32)})
        _save_pickled(folder / "db.npy", {"Ly": Ly, "Lx": Lx, "nframes": n_frames})
    else:
        raise ValueError(f"layout must be 'classic' or 'split', got {layout!r}")
    stat_arr = np.empty(len(stats), dtype=object)
    for i, s in enumerate(stats):
        stat_arr[i] = s
    _save_pickled(folder / "stat.npy", stat_arr)
    if iscell is not None:
        np.save(folder / "iscell.npy", iscell)
    if F is not None:
        np.save(folder / "F.npy", F)
    if Fneu is not None:
        np.save(folder / "Fneu.npy", Fneu)
    if movie is not None:
        np.ascontiguousarray(movie, dtype=np.int16).tofile(folder / "data.bin")
    return folder
