"""Reading and checking user inputs: .npy arrays, Suite2p folders, (T, N) vs (N, T) layouts.

The commands (``deconvolve``, ``replay``, ``train``, ``reconstruct``) and the Python API
read user files through these helpers, so that a user's mistake becomes one
``DataFormatError`` / ``ConfigError`` naming the file and what to do, never a traceback:
an empty ``.npy``, a text file renamed ``.npy``, a pickled object array, an array with no
ROIs or no frames, a (frames, ROIs) array given where (ROIs, frames) is expected, a
Suite2p folder without ``iscell.npy`` (said, not silent), ROIs that are NaN in every
frame (warned). Warnings go through a ``warn`` callable (the commands print them on
stderr; the Python API raises ``InputWarning``).

Imports numpy and the standard library only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rt_decoder.errors import ConfigError, DataFormatError, InputWarning

NPY_MAGIC = b"\x93NUMPY"
NEUROPIL_COEFF = 0.7

Warn = Callable[[str], None]


def warn_python(message: str) -> None:
    """The Python API's ``warn``: an :class:`~rt_decoder.errors.InputWarning`."""
    warnings.warn(message, InputWarning, stacklevel=3)


def load_npy(path: str | Path, what: str = "array") -> np.ndarray:
    """Read one ``.npy`` array without pickle; every failure is a ``DataFormatError``.

    Parameters
    ----------
    path : str or Path
    what : str
        What the file should hold, for the message ("fluorescence (ROIs, frames)").
    """
    p = Path(path)
    if not p.is_file():
        raise DataFormatError(f"{p}: no such file ({what})")
    try:
        with p.open("rb") as f:
            head = f.read(len(NPY_MAGIC))
    except OSError as exc:
        raise DataFormatError(f"{p}: cannot be read ({exc})") from None
    if not head:
        raise DataFormatError(f"{p}: the file is empty (0 bytes); expected a .npy array ({what})")
    if head != NPY_MAGIC:
        sample = head.decode("ascii", errors="replace")
        texty = all(c.isprintable() or c in "\t\r\n" for c in sample)
        hint = " (it looks like text: load it and save it with numpy.save)" if texty else ""
        raise DataFormatError(f"{p}: not a .npy file (it does not start with the .npy header){hint}; "
                              f"expected {what}")
    try:
        arr = np.load(p, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataFormatError(f"{p}: holds a pickled object array (Python objects), which rt-decoder never "
                                  f"unpickles; save a plain numeric or string array instead ({what})") from None
        raise DataFormatError(f"{p}: not a readable .npy array ({exc}); expected {what}") from None
    except (OSError, EOFError) as exc:
        raise DataFormatError(f"{p}: truncated or unreadable .npy file ({exc}); expected {what}") from None
    if not isinstance(arr, np.ndarray):
        raise DataFormatError(f"{p}: expected one array ({what}), got {type(arr).__name__}")
    return arr


def check_2d_numeric(arr: np.ndarray, name: str, layout: str = "(ROIs, frames)") -> np.ndarray:
    """A non-empty 2-D numeric array, or a ``DataFormatError`` naming ``name``."""
    a = np.asarray(arr)
    if a.dtype.kind not in "fiub":
        raise DataFormatError(f"{name}: expected numbers {layout}, got dtype {a.dtype}")
    if a.ndim != 2:
        raise DataFormatError(f"{name}: expected a 2-D array {layout}, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise DataFormatError(f"{name}: the array {a.shape} is empty (no ROIs or no frames); nothing to process")
    return a


def orient_rois_by_frames(arr: np.ndarray, name: str, *, n_rois: int | None = None,
                          layout: str = "auto") -> np.ndarray:
    """Return ``arr`` as (ROIs, frames), refusing an ambiguous (frames, ROIs) array.

    Parameters
    ----------
    arr : ndarray, 2-D
    name : str
        For messages (the file name).
    n_rois : int, optional
        The ROI count when something else says it (a session, a model, an ROI-id file): the
        axis of that length is taken as the ROI axis (a (frames, ROIs) array is transposed).
    layout : {"auto", "rois-by-frames", "frames-by-rois"}
        ``auto``: (ROIs, frames) as Suite2p writes it, but refused when it has fewer frames
        than ROIs and no ``n_rois`` decides (the usual sign of a transposed array).
    """
    a = check_2d_numeric(arr, name)
    if layout == "rois-by-frames":
        return a
    if layout == "frames-by-rois":
        return a.T
    if layout != "auto":
        raise ConfigError(f"layout must be auto, rois-by-frames or frames-by-rois, got {layout!r}")
    if n_rois is not None:
        if a.shape[0] == n_rois:
            return a
        if a.shape[1] == n_rois:
            return a.T
        raise DataFormatError(f"{name}: shape {a.shape} has no axis of {n_rois} ROIs (the ROI count given "
                              "by the ROI ids / session / model)")
    if a.shape[1] < a.shape[0]:
        raise DataFormatError(
            f"{name}: shape {a.shape} read as (ROIs, frames) has fewer frames ({a.shape[1]}) than ROIs "
            f"({a.shape[0]}): is it (frames, ROIs)? rt-decoder expects (ROIs, frames) like Suite2p's F.npy. "
            "Transpose it (numpy.save(path, F.T)), or say which it is with --input-layout "
            "frames-by-rois / rois-by-frames")
    return a


def nan_only_rois(values_tn: np.ndarray) -> np.ndarray:
    """Indices of the columns of a (T, N) array that are NaN in every frame."""
    v = np.asarray(values_tn)
    if v.dtype.kind != "f" or v.size == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.isnan(v).all(axis=0))


def warn_nan_rois(values_tn: np.ndarray, name: str, warn: Warn, roi_ids: np.ndarray | None = None,
                  consequence: str = "their activity comes out as zeros") -> np.ndarray:
    """Warn (through ``warn``) about ROIs that are NaN in every frame; return their indices."""
    bad = nan_only_rois(values_tn)
    if bad.size:
        ids = bad if roi_ids is None else np.asarray(roi_ids)[bad]
        shown = ", ".join(str(int(i)) for i in ids[:10]) + (", ..." if ids.size > 10 else "")
        warn(f"{name}: {bad.size} of {np.shape(values_tn)[1]} ROIs are NaN in every frame (ROI "
             f"{'ids' if roi_ids is not None else 'indices'} {shown}); {consequence}")
    return bad


def load_roi_ids(path: str | Path, n_rois: int | None = None) -> np.ndarray:
    """An ROI-id file (``.npy``, shape (N,), integers, unique), checked against ``n_rois``."""
    ids = load_npy(path, "ROI ids (N,) integers")
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
        raise DataFormatError(f"{path}: ROI ids must be a non-empty 1-D integer array, got {ids.dtype} {ids.shape}")
    if np.unique(ids).size != ids.size:
        raise DataFormatError(f"{path}: ROI ids must be unique")
    if n_rois is not None and ids.size != n_rois:
        raise DataFormatError(f"{path}: {ids.size} ROI ids for {n_rois} ROIs")
    return ids.astype(np.int64)


@dataclass(frozen=True)
class Suite2pPlane:
    """A Suite2p plane folder read for rt-decoder.

    values : (T, N) float32, ``F - 0.7 Fneu`` (or ``F`` when there is no ``Fneu.npy``)
    roi_index : (N,) int64, the kept rows of ``F.npy`` (cells, or all)
    roi_ids : (N,) int64, ids of the kept ROIs (``roi_index`` unless an ROI-id file says)
    folder : the plane folder
    notes : what was decided that the user should know (no iscell.npy, no Fneu.npy)
    """

    values: np.ndarray
    roi_index: np.ndarray
    roi_ids: np.ndarray
    folder: Path
    notes: tuple[str, ...]


def find_suite2p_plane(folder: str | Path) -> Path | None:
    """The plane folder holding ``F.npy`` (``folder``, ``folder/plane0`` or ``folder/suite2p/plane0``)."""
    root = Path(folder)
    for cand in (root, root / "plane0", root / "suite2p" / "plane0"):
        if (cand / "F.npy").is_file():
            return cand
    return None


def load_suite2p(folder: str | Path, *, only_cells: bool = True, roi_ids_file: str | Path | None = None,
                 neuropil_coeff: float = NEUROPIL_COEFF, warn: Warn | None = None) -> Suite2pPlane:
    """Read ``F.npy``, ``Fneu.npy`` and ``iscell.npy`` of a Suite2p plane folder.

    Parameters
    ----------
    folder : str or Path
        The plane folder (or a folder holding ``plane0`` or ``suite2p/plane0``).
    only_cells : bool
        Keep only ROIs that ``iscell.npy`` classifies as cells. Without ``iscell.npy``
        every ROI is kept and a note says so.
    roi_ids_file : path, optional
        ``.npy`` of ROI ids, one per row of ``F.npy`` (e.g. the ``unit_ids`` a model was
        trained with); default: the row numbers 0..N-1.
    warn : callable, optional
        Receives the notes and NaN-ROI warnings (default: nothing is said).
    """
    say = warn or (lambda _m: None)
    plane = find_suite2p_plane(folder)
    if plane is None:
        raise DataFormatError(f"{folder}: no F.npy here or in plane0/ or suite2p/plane0/ (a Suite2p plane folder "
                              "is expected)")
    F = check_2d_numeric(load_npy(plane / "F.npy", "fluorescence (ROIs, frames)"), str(plane / "F.npy"))
    notes: list[str] = []
    ic_path = plane / "iscell.npy"
    iscell = None
    if ic_path.exists():
        ic = load_npy(ic_path, "iscell (ROIs, 2)")
        iscell = (ic[:, 0] if ic.ndim == 2 else ic)
        if iscell.ndim != 1 or iscell.dtype.kind not in "fiub":
            raise DataFormatError(f"{ic_path}: expected a numeric (ROIs,) or (ROIs, 2) array, got {ic.dtype} "
                                  f"{ic.shape}")
        if iscell.shape[0] != F.shape[0]:
            hint = (" (F.npy looks transposed: Suite2p writes (ROIs, frames))"
                    if iscell.shape[0] == F.shape[1] else "")
            raise DataFormatError(f"{ic_path}: {iscell.shape[0]} entries for the {F.shape[0]} rows of F.npy{hint}")
    elif F.shape[1] < F.shape[0]:
        raise DataFormatError(f"{plane / 'F.npy'}: shape {F.shape} has fewer frames than ROIs: is it "
                              "transposed? Suite2p writes (ROIs, frames)")
    values = F.astype(np.float32)
    n_path = plane / "Fneu.npy"
    if n_path.exists():
        Fneu = load_npy(n_path, "neuropil (ROIs, frames)")
        if Fneu.shape != F.shape:
            raise DataFormatError(f"{n_path}: shape {Fneu.shape} differs from F.npy {F.shape}")
        values = (F - neuropil_coeff * Fneu).astype(np.float32)
    else:
        notes.append(f"{plane}: no Fneu.npy, so no neuropil subtraction (F is used as it is)")
    ids_all = (np.arange(F.shape[0], dtype=np.int64) if roi_ids_file is None
               else load_roi_ids(roi_ids_file, F.shape[0]))
    index = np.arange(F.shape[0], dtype=np.int64)
    if only_cells:
        if iscell is None:
            notes.append(f"{plane}: no iscell.npy, so all {F.shape[0]} ROIs are kept (no cell classification)")
        else:
            keep = iscell > 0.5
            if not keep.any():
                raise DataFormatError(f"{ic_path}: no ROI is classified as a cell")
            index = np.flatnonzero(keep).astype(np.int64)
    values_tn = np.ascontiguousarray(values[index].T)
    for n in notes:
        say(n)
    warn_nan_rois(values_tn, str(plane / "F.npy"), say, ids_all[index])
    return Suite2pPlane(values_tn, index, ids_all[index], plane, tuple(notes))


def dataset_folders_inside(folder: str | Path, limit: int = 50) -> list[str]:
    """Names of the sub-folders of ``folder`` that are Sensorium-layout datasets (``data/videos``)."""
    p = Path(folder)
    if not p.is_dir():
        return []
    try:
        subs = sorted(c.name for c in p.iterdir() if c.is_dir() and (c / "data" / "videos").is_dir())
    except OSError:
        return []
    return subs[:limit]


def read_complete_session(path: str | Path, allow_incomplete: bool = False):  # type: ignore[no-untyped-def]
    """``rt_decoder.io.session_file.read_session``, refusing a recording whose writer did not
    close it (killed, or still running) unless ``allow_incomplete`` or it was repaired by
    ``rt-decoder recover`` (``recover_session``)."""
    from rt_decoder.io.session_file import read_session

    rec = read_session(path)
    if not rec.complete and not rec.recovered and not allow_incomplete:
        raise DataFormatError(f"{path}: an incomplete recording (its writer did not close it: killed, or still "
                              f"running); it holds {rec.n_frames} frames flushed before that. Run "
                              f"`rt-decoder recover {path}` once its writer is gone, or pass --allow-incomplete "
                              "to use them")
    return rec
