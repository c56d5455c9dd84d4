"""Load one plane of a Suite2p output folder: reference image, settings, ROI stats.

Two layouts are read:

- classic (suite2p <= 0.14): ``ops.npy`` (one dict with settings and registration
  outputs), ``stat.npy``, optional ``iscell.npy``, ``F.npy``, ``Fneu.npy``, ``data.bin``;
- split (suite2p >= 1.0): ``settings.npy`` (nested: ``registration``, ``extraction``,
  ...), ``reg_outputs.npy`` (``refImg``, ``rmin``, ``rmax``, ``bidiphase``),
  ``detect_outputs.npy``, ``db.npy`` (``Ly``, ``Lx``, ``nframes``), plus the same
  ``stat.npy`` and traces.

Suite2p stores these dicts and ``stat.npy`` as pickled numpy object arrays, so loading
them needs ``allow_pickle=True``: ``_load_pickled_npy`` is the one place this package
does that, and only for local files the user points at (never for network input).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rt_decoder.errors import ConfigError, DataFormatError


@dataclass(frozen=True)
class RegistrationParams:
    """Suite2p's rigid-registration settings that the live registration reproduces."""

    maxregshift: float = 0.1          # max shift as a fraction of min(Ly, Lx)
    smooth_sigma: float = 1.15        # px, Gaussian smoothing of the phase correlation
    norm_frames: bool = True          # clip frames to [rmin, rmax] for the shift estimate
    one_p_reg: bool = False           # suite2p's 1Preg (high-pass filtering); not supported live
    spatial_taper: float = 40.0       # px, taper width (1P only; 2P uses 3 * smooth_sigma)
    nonrigid: bool = False            # the seeding run's choice (live registration is rigid)
    bidiphase: int = 0                # bidirectional phase offset (px) found by the seeding run
    bidi_corrected: bool = False      # the raw frames already had the offset corrected
    smooth_sigma_time: float = 0.0    # temporal smoothing of the shift estimate (needs future frames)


@dataclass(frozen=True)
class MaskParams:
    """Suite2p's extraction settings used to build cell and neuropil masks."""

    inner_neuropil_radius: int = 2
    min_neuropil_pixels: int = 350
    lam_percentile: float = 50.0
    allow_overlap: bool = False
    circular_neuropil: bool = False
    neuropil_extract: bool = True


@dataclass(frozen=True)
class RoiStat:
    """One ROI of ``stat.npy``: pixel coordinates, weights, overlap flags, radius (px)."""

    ypix: np.ndarray
    xpix: np.ndarray
    lam: np.ndarray
    overlap: np.ndarray
    radius: float
    med: tuple[float, float]


@dataclass(frozen=True)
class Suite2pPlane:
    """What the live extractor needs from one Suite2p plane folder.

    Attributes
    ----------
    path : Path
    layout : str
        ``"classic"`` or ``"split"``.
    Ly, Lx : int
        Frame size in pixels.
    ref_img : ndarray (Ly, Lx) int16
        Suite2p's reference image (``refImg``), before its [rmin, rmax] clipping.
    rmin, rmax : float
        Clip range of the shift estimate (``-inf``, ``inf`` if not normalised).
    registration, masks : RegistrationParams, MaskParams
    stats : tuple of RoiStat
    iscell : ndarray (N,) bool or None
    frame_rate_hz : float
    neucoeff : float
        Suite2p's neuropil coefficient from the settings (0.7 by default).
    n_frames : int
        Frames in the seeding run (0 if unknown).
    """

    path: Path
    layout: str
    Ly: int
    Lx: int
    ref_img: np.ndarray
    rmin: float
    rmax: float
    registration: RegistrationParams
    masks: MaskParams
    stats: tuple[RoiStat, ...]
    iscell: np.ndarray | None
    frame_rate_hz: float
    neucoeff: float
    n_frames: int

    @property
    def n_rois(self) -> int:
        return len(self.stats)

    def file(self, name: str) -> Path:
        return self.path / name


def _load_pickled_npy(path: Path) -> Any:
    """Load a Suite2p ``.npy`` dict / object array (pickled by Suite2p's format).

    ``allow_pickle=True`` is required by that format; this is the only place it is
    used, and only on a local file the user named.
    """
    try:
        arr = np.load(path, allow_pickle=True)  # Suite2p's format demands it (local file only)
    except Exception as exc:
        raise DataFormatError(f"{path}: cannot be read as a Suite2p .npy file: {exc}") from None
    return arr


def _load_dict(path: Path) -> dict[str, Any]:
    arr = _load_pickled_npy(path)
    if not (isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == ()):
        raise DataFormatError(f"{path}: expected a pickled dict (0-d object array), got {type(arr).__name__} "
                              f"{getattr(arr, 'shape', '')}")
    d = arr.item()
    if not isinstance(d, dict):
        raise DataFormatError(f"{path}: expected a dict, got {type(d).__name__}")
    return d


def _get(d: dict[str, Any], key: str, default: Any, path: Path) -> Any:
    v = d.get(key, default)
    if v is None:
        raise DataFormatError(f"{path}: required key {key!r} is missing")
    return v


def _plane_dir(path: Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"Suite2p folder {str(path)!r} does not exist or is not a directory")
    for cand in (path, path / "plane0", path / "suite2p" / "plane0"):
        if (cand / "stat.npy").exists() and ((cand / "ops.npy").exists() or (cand / "settings.npy").exists()):
            return cand
    raise DataFormatError(f"{path}: no Suite2p plane found (need stat.npy with ops.npy or settings.npy, "
                          "here or in plane0/)")


def _load_stats(path: Path) -> tuple[RoiStat, ...]:
    arr = _load_pickled_npy(path)
    if not isinstance(arr, np.ndarray) or arr.dtype != object or arr.ndim != 1:
        raise DataFormatError(f"{path}: expected a 1-D object array of ROI dicts")
    out = []
    for i, s in enumerate(arr):
        if not isinstance(s, dict):
            raise DataFormatError(f"{path}: ROI {i} is a {type(s).__name__}, not a dict")
        for key in ("ypix", "xpix", "lam"):
            if key not in s:
                raise DataFormatError(f"{path}: ROI {i} lacks {key!r}")
        ypix = np.asarray(s["ypix"], dtype=np.int64)
        xpix = np.asarray(s["xpix"], dtype=np.int64)
        lam = np.asarray(s["lam"], dtype=np.float64)
        if not (ypix.shape == xpix.shape == lam.shape and ypix.ndim == 1):
            raise DataFormatError(f"{path}: ROI {i}: ypix, xpix and lam must be 1-D of one length")
        overlap = np.asarray(s.get("overlap", np.zeros(ypix.size, bool)), dtype=bool)
        if overlap.shape != ypix.shape:
            raise DataFormatError(f"{path}: ROI {i}: overlap has {overlap.size} entries, ypix {ypix.size}")
        med = s.get("med", (float(np.median(ypix)) if ypix.size else 0.0, float(np.median(xpix)) if xpix.size else 0.0))
        radius = float(s["radius"]) if "radius" in s else float(np.sqrt(max(ypix.size, 1) / np.pi))
        out.append(RoiStat(ypix, xpix, lam, overlap, radius, (float(med[0]), float(med[1]))))
    return tuple(out)


def load_suite2p_plane(path: str | Path) -> Suite2pPlane:
    """Load a Suite2p plane folder (classic ``ops.npy`` or split settings layout).

    Parameters
    ----------
    path : str or Path
        The plane folder (``.../suite2p/plane0``), or a folder holding ``plane0/``.

    Raises
    ------
    ConfigError
        The folder does not exist.
    DataFormatError
        A file is missing or malformed (the message names it).
    """
    plane = _plane_dir(Path(path))
    if (plane / "ops.npy").exists():
        layout = "classic"
        ops = _load_dict(plane / "ops.npy")
        reg, ext, outs, db = ops, ops, ops, ops
        src = plane / "ops.npy"
    else:
        layout = "split"
        settings = _load_dict(plane / "settings.npy")
        reg = dict(settings.get("registration", {}))
        ext = dict(settings.get("extraction", {}))
        outs_path = plane / "reg_outputs.npy"
        if not outs_path.exists():
            raise DataFormatError(f"{outs_path}: missing (the split layout keeps refImg there)")
        outs = _load_dict(outs_path)
        db = _load_dict(plane / "db.npy") if (plane / "db.npy").exists() else {}
        detect = _load_dict(plane / "detect_outputs.npy") if (plane / "detect_outputs.npy").exists() else {}
        db = {**settings, **detect, **db}
        ext = {**ext, "neucoeff": settings.get("dcnv_preprocess", {}).get("neucoeff",
                                                                      settings.get("neucoeff", 0.7))}
        src = plane / "settings.npy"
    ref = np.asarray(_get(outs, "refImg", None, src))
    if ref.ndim != 2:
        raise DataFormatError(f"{src}: refImg must be 2-D, got shape {ref.shape}")
    Ly = int(db["Ly"]) if "Ly" in db else int(ref.shape[0])
    Lx = int(db["Lx"]) if "Lx" in db else int(ref.shape[1])
    if ref.shape != (Ly, Lx):
        raise DataFormatError(f"{src}: refImg has shape {ref.shape} but Ly, Lx = {Ly}, {Lx}")
    rmin = float(outs.get("rmin", -np.inf))
    rmax = float(outs.get("rmax", np.inf))
    regp = RegistrationParams(
        maxregshift=float(reg.get("maxregshift", 0.1)),
        smooth_sigma=float(reg.get("smooth_sigma", 1.15)),
        norm_frames=bool(reg.get("norm_frames", True)),
        one_p_reg=bool(reg.get("1Preg", reg.get("do_1Preg", False))),
        spatial_taper=float(reg.get("spatial_taper", 40.0)),
        nonrigid=bool(reg.get("nonrigid", False)),
        bidiphase=int(outs.get("bidiphase", reg.get("bidiphase", 0)) or 0),
        bidi_corrected=bool(reg.get("bidi_corrected", False)),
        smooth_sigma_time=float(reg.get("smooth_sigma_time", 0.0)),
    )
    maskp = MaskParams(
        inner_neuropil_radius=int(ext.get("inner_neuropil_radius", 2)),
        min_neuropil_pixels=int(ext.get("min_neuropil_pixels", 350)),
        lam_percentile=float(ext.get("lam_percentile", 50.0)),
        allow_overlap=bool(ext.get("allow_overlap", False)),
        circular_neuropil=bool(ext.get("circular_neuropil", False)),
        neuropil_extract=bool(ext.get("neuropil_extract", True)),
    )
    stats = _load_stats(plane / "stat.npy")
    for i, s in enumerate(stats):
        if s.ypix.size and (s.ypix.min() < 0 or s.ypix.max() >= Ly or s.xpix.min() < 0 or s.xpix.max() >= Lx):
            raise DataFormatError(f"{plane / 'stat.npy'}: ROI {i} has pixels outside the {Ly}x{Lx} frame")
    iscell = None
    if (plane / "iscell.npy").exists():
        ic = np.load(plane / "iscell.npy", allow_pickle=False)
        iscell = np.asarray(ic[:, 0] if ic.ndim == 2 else ic) > 0.5
        if iscell.shape != (len(stats),):
            raise DataFormatError(f"{plane / 'iscell.npy'}: {iscell.size} entries for {len(stats)} ROIs")
    return Suite2pPlane(
        path=plane, layout=layout, Ly=Ly, Lx=Lx, ref_img=ref.astype(np.int16), rmin=rmin, rmax=rmax,
        registration=regp, masks=maskp, stats=stats, iscell=iscell,
        frame_rate_hz=float(db.get("fs", 30.0)), neucoeff=float(ext.get("neucoeff", 0.7)),
        n_frames=int(db.get("nframes", 0)),
    )
