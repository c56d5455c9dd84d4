"""``rt-decoder deconvolve``: run the online deconvolution stage over a recorded file.

INPUT may be
- our recorded-session HDF5 file (``.h5``/``.hdf5``, ``rt_decoder.io.session_file``): its
  fluorescence values (T, N); frames missing from its ``frame_index`` sequence are treated
  as missing samples; the frame rate comes from the file unless ``--fs`` is given;
- a Suite2p plane folder: ``F.npy`` and ``Fneu.npy`` (N, T), deconvolved as
  ``F - 0.7 Fneu``; with ``iscell.npy`` only ROIs classified as cells are kept (unless
  ``--all-rois``); their indices are written beside the output (``OUT.rois.npy``);
- a plain ``.npy`` array (N, T) of fluorescence (ROIs x frames, Suite2p's layout); one with
  fewer frames than ROIs is refused as probably transposed unless ``--input-layout`` says
  which it is.

Inputs are checked (``rt_decoder.io.inputs``) before anything is written: empty or non-.npy
files, empty arrays, a Suite2p folder without ``iscell.npy`` (said: every ROI is kept), ROIs
that are NaN in every frame (warned: written as zeros), an incomplete session file
(refused unless ``--allow-incomplete``). ``--out`` is refused if it exists (unless
``--overwrite``) and written under a temporary name, renamed when complete.

OUT.npy is float32, time-major (T, N) like everything in rt-decoder (``--roi-major`` writes
(N, T)): row t is the activity of frame t as the live stage reads it out ``--lag-frames``
later (see ``rt_decoder.deconv.deconvolve_array``). Arrays are read with
``allow_pickle=False`` (Suite2p's ``stat.npy``/``ops.npy`` are not read).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.flags import deprecated_alias

HELP = "deconvolve a recorded file (session .h5, Suite2p folder, (N, T) .npy) with the online stage"

EPILOG = """examples:
  rt-decoder deconvolve session.h5 --out activity.npy
  rt-decoder deconvolve suite2p/plane0 --fs 30 --out spks_online.npy --calcium-model ar1 --lag-frames 2
"""

NEUROPIL_COEFF = 0.7  # as rt_decoder.io.inputs.NEUROPIL_COEFF
CALCIUM_MODELS = ("auto", "ar1", "ar2")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="session .h5 file, Suite2p plane folder, or (N, T) .npy")
    parser.add_argument("--fs", type=float, default=None,
                        help="frame rate in Hz (required unless INPUT is a session file)")
    parser.add_argument("--out", required=True, type=Path, help="output .npy (float32, (T, N))")
    parser.add_argument("--calcium-model", choices=CALCIUM_MODELS, default=None,
                        help="calcium model: auto (per ROI, the default), ar1 or ar2")
    deprecated_alias(parser, "--model", "--calcium-model", dest="calcium_model", choices=CALCIUM_MODELS,
                     metavar="{auto,ar1,ar2}")
    parser.add_argument("--indicator", choices=("auto", "gcamp6s", "gcamp6f", "gcamp7f", "gcamp8f", "gcamp8m",
                                                "gcamp8s"), default=None,
                        help="calcium indicator: prior for the kinetics (default auto: from the data)")
    parser.add_argument("--lag-frames", type=int, default=None, help="readout lag in frames (default 5)")
    parser.add_argument("--init-frames", type=int, default=None, help="initial estimation batch (default 300)")
    parser.add_argument("--kinetics", choices=("estimate", "fixed"), default=None)
    parser.add_argument("--tau-decay-s", type=float, default=None)
    parser.add_argument("--tau-rise-s", type=float, default=None)
    parser.add_argument("--penalty", choices=("s_min", "l1"), default=None)
    parser.add_argument("--penalty-sigmas", type=float, default=None)
    parser.add_argument("--all-rois", action="store_true", help="Suite2p: keep ROIs that iscell.npy rejects")
    parser.add_argument("--roi-major", action="store_true", help="write (N, T) instead of (T, N)")
    parser.add_argument("--threads", type=int, default=None, help="numba threads (default: numba's)")
    parser.add_argument("--input-layout", choices=("auto", "rois-by-frames", "frames-by-rois"), default="auto",
                        help="layout of a .npy INPUT (default auto: (ROIs, frames), refused when it has fewer "
                             "frames than ROIs)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="accept a session file whose writer was killed (frames flushed before are used)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def _say(msg: str) -> None:
    print(f"rt-decoder deconvolve: warning: {msg}", file=sys.stderr)


def _load(path: Path, fs: float | None, all_rois: bool, layout: str = "auto",
          allow_incomplete: bool = False):  # type: ignore[no-untyped-def]
    """Return (F (T, N) float32 with NaN rows for missing frames, rows to keep (T_out,),
    frame rate, ROI indices or None)."""
    import numpy as np

    from rt_decoder.errors import ConfigError, DataFormatError
    from rt_decoder.io.inputs import find_suite2p_plane, load_npy, load_suite2p, orient_rois_by_frames

    rois = None
    if path.is_dir():
        folder = find_suite2p_plane(path)
        if folder is None or not (folder / "Fneu.npy").exists():
            raise DataFormatError(f"{folder or path}: a Suite2p folder needs F.npy and Fneu.npy")
        plane = load_suite2p(path, only_cells=not all_rois, warn=_say)
        X = plane.values
        rois = plane.roi_index if (plane.folder / "iscell.npy").exists() and not all_rois else None
        keep = np.arange(X.shape[0])
    elif path.suffix in (".h5", ".hdf5"):
        from rt_decoder.io.inputs import read_complete_session

        rec = read_complete_session(path, allow_incomplete)
        if rec.info.is_activity:
            raise DataFormatError(f"{path}: the session already holds deconvolved activity (is_activity)")
        fs = rec.info.frame_rate_hz if fs is None else fs
        fi = np.asarray(rec.frame_index, dtype=np.int64)
        if rec.n_frames == 0:
            raise DataFormatError(f"{path}: no frames")
        if np.any(np.diff(fi) <= 0):
            raise DataFormatError(f"{path}: frame_index is not strictly increasing")
        keep = fi - fi[0]
        X = np.full((int(keep[-1]) + 1, rec.values.shape[1]), np.nan, np.float32)
        X[keep] = rec.values
    elif path.suffix == ".npy":
        A = orient_rois_by_frames(load_npy(path, "fluorescence (ROIs, frames)"), str(path), layout=layout)
        X = np.ascontiguousarray(A.T, dtype=np.float32)
        keep = np.arange(X.shape[0])
    elif not path.exists():
        raise DataFormatError(f"{path}: no such file or folder")
    else:
        raise DataFormatError(f"{path}: not a session .h5, a Suite2p folder or a .npy file")
    if fs is None:
        raise ConfigError("--fs HZ is required for this input (only session files carry their frame rate)")
    return X, keep, float(fs), rois


def run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from rt_decoder.deconv import DeconvSettings, deconvolve_array
    from rt_decoder.errors import ConfigError
    from rt_decoder.io.inputs import warn_nan_rois
    from rt_decoder.io.safe import atomic_files, check_target

    if args.threads is not None:
        import numba

        max_threads = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
        if not 1 <= args.threads <= max_threads:
            raise ConfigError(f"--threads must be in [1, {max_threads}], got {args.threads}")
        numba.set_num_threads(args.threads)
    overrides = {k: getattr(args, k) for k in ("indicator", "lag_frames", "init_frames", "kinetics", "tau_decay_s",
                                               "tau_rise_s", "penalty", "penalty_sigmas")
                 if getattr(args, k) is not None}
    if args.calcium_model is not None:
        overrides["model"] = args.calcium_model
    settings = DeconvSettings.from_dict(overrides)
    if args.out.suffix != ".npy":
        raise ConfigError(f"--out must name a .npy file, got {args.out}")
    rois_path = args.out.with_suffix(".rois.npy")
    check_target(args.out, overwrite=args.overwrite, kind="file")
    check_target(rois_path, overwrite=args.overwrite, kind="file")
    X, keep, fs, rois = _load(args.input, args.fs, args.all_rois, args.input_layout, args.allow_incomplete)
    warn_nan_rois(X, str(args.input), _say, consequence="their activity is written as zeros")
    t0 = time.perf_counter()
    act = deconvolve_array(X, fs, settings)[keep]
    dt = time.perf_counter() - t0
    out = act.T.copy() if args.roi_major else act
    with atomic_files([args.out, rois_path], overwrite=args.overwrite, stale=[rois_path]) as (tmp_out, tmp_rois):
        np.save(tmp_out, out, allow_pickle=False)
        if rois is not None:
            np.save(tmp_rois, rois.astype(np.int64), allow_pickle=False)
    print(f"deconvolved {act.shape[1]} ROIs x {act.shape[0]} frames at {fs:g} Hz "
          f"({settings.model}, lag {settings.lag_frames} frames) in {dt:.2f} s -> {args.out} {out.shape}",
          file=sys.stderr)
    return 0
