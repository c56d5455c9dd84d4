"""Sensorium-2023-layout datasets: a writer (for the virtual rig) and a loader (ours and real ones).

Layout (one folder per animal; REFERENCE.md section 3; trial files named ``<i>.npy``)::

    data/videos/<i>.npy         float32 (36, 64, T) 0..255; NaN after the trial's end (real data)
    data/responses/<i>.npy      float32 (N, T) deconvolved activity (not standardised)
    data/behavior/<i>.npy       float32 (2, T) pupil dilation, running speed
    data/pupil_center/<i>.npy   float32 (2, T) pupil x, y
    meta/neurons/unit_ids.npy                (N,) int64
    meta/neurons/cell_motor_coordinates.npy  (N, 3) micrometres
    meta/statistics/<videos|responses|behavior|pupil_center>/all/<mean|std|min|max|median>.npy
    meta/trials/tiers.npy       fixed-width unicode, one entry per trial index

rt-decoder's extra files (optional for the loader; absent from real Sensorium folders)::

    data/fluorescence/<i>.npy   float32 (N, T) raw ROI fluorescence
    data/spikes/<i>.npy         float32 (N, T) ground-truth spike counts
    data/rates/<i>.npy          float32 (N, T) noiseless expected activity (spikes per frame)
    meta/neurons/rf_params.npy  (N,) structured array of per-neuron ground truth
    meta/neurons/roi_centres_px.npy  (N, 2) float32 ROI centres (y, x), FOV pixels
    meta/rig.json               rig configuration, responses source, units

Statistics are over all written trials: videos -> scalars, responses -> (N,), behavior
and pupil_center -> (2,). Medians are exact while a key's values fit in 5e7 numbers,
otherwise taken over evenly spaced frames of each trial. Every ``np.load`` uses
``allow_pickle=False`` (no pickle anywhere); loader errors are ``DataFormatError`` naming
the file and the problem. Imports numpy and the standard library only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rt_decoder.errors import ConfigError, DataFormatError, ShapeMismatchError
from rt_decoder.io.inputs import dataset_folders_inside, load_npy
from rt_decoder.io.safe import atomic_dir, check_complete
from rt_decoder.messages import N_BEHAVIOUR

TIER_NAMES: tuple[str, ...] = (
    "train", "oracle", "live_test_main", "live_test_bonus", "final_test_main", "final_test_bonus", "none",
)
STAT_NAMES: tuple[str, ...] = ("mean", "std", "min", "max", "median")
STAT_KEYS: tuple[str, ...] = ("videos", "responses", "behavior", "pupil_center")
EXTRA_KEYS: tuple[str, ...] = ("fluorescence", "spikes", "rates")
FORMAT_NAME = "rt-decoder sensorium-layout v1"
_MEDIAN_BUDGET = 50_000_000
_TRIAL_FILE = re.compile(r"^(\d+)\.npy$")

ResponsesFn = Callable[[np.ndarray, float], np.ndarray]


# ====================================================================== writer
class _Stats:
    """Running mean/std/min/max over trials, plus a bounded sample for the median.

    ``channels`` is the number of per-channel statistics (0 = one scalar over everything).
    """

    def __init__(self, channels: int, frames_per_trial: int) -> None:
        self.channels = channels
        shape = (channels,) if channels else ()
        self.n = 0
        self.s1 = np.zeros(shape)
        self.s2 = np.zeros(shape)
        self.lo = np.full(shape, np.inf)
        self.hi = np.full(shape, -np.inf)
        self.frames_per_trial = max(1, frames_per_trial)
        self.samples: list[np.ndarray] = []

    def add(self, x: np.ndarray) -> None:
        """x: (channels, T) or, for scalars, (..., T); NaNs ignored only as padding."""
        x64 = x.astype(np.float64, copy=False)
        axes: tuple[int, ...] | None = (1,) if self.channels else None
        self.n += x.shape[-1] if self.channels else x.size
        self.s1 += x64.sum(axis=axes)
        self.s2 += (x64 * x64).sum(axis=axes)
        self.lo = np.minimum(self.lo, x.min(axis=axes))
        self.hi = np.maximum(self.hi, x.max(axis=axes))
        t = x.shape[-1]
        k = min(t, self.frames_per_trial)
        idx = np.linspace(0, t - 1, k).round().astype(np.intp)
        self.samples.append(np.take(x, idx, axis=-1).reshape((self.channels, -1) if self.channels else -1))

    def result(self) -> dict[str, np.ndarray]:
        mean = self.s1 / max(self.n, 1)
        var = np.maximum(self.s2 / max(self.n, 1) - mean * mean, 0.0)
        if self.channels:
            median = np.median(np.concatenate(self.samples, axis=1), axis=1)
        else:
            median = np.median(np.concatenate(self.samples))
        return {name: np.asarray(v, dtype=np.float32) for name, v in
                (("mean", mean), ("std", np.sqrt(var)), ("min", self.lo), ("max", self.hi), ("median", median))}


def _frames_for_median(values_per_frame: int, n_trials: int) -> int:
    return max(1, _MEDIAN_BUDGET // max(1, values_per_frame * n_trials))


def _callable_name(fn: Callable[..., Any]) -> str:
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{mod}.{name}" if mod else name


def _tn_array(trial: Any, name: str, n: int, t: int, index: int) -> np.ndarray | None:
    value = getattr(trial, name, None)
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float32)
    if arr.shape != (t, n):
        raise ShapeMismatchError(f"trial #{index} (id {getattr(trial, 'trial_id', '?')}): {name} must have "
                                 f"shape (T, N) = ({t}, {n}), got {arr.shape}")
    return arr


def write_dataset(root: str | Path, trials: Iterable[Any], *, roi_ids: np.ndarray,
                  roi_centres_px: np.ndarray | None = None, tiers: Sequence[str],
                  responses_fn: ResponsesFn | None = None, extra_meta: Mapping[str, Any] | None = None,
                  frame_rate_hz: float = 30.0, cell_motor_coordinates_um: np.ndarray | None = None,
                  neuron_params: np.ndarray | None = None, overwrite: bool = False) -> Path:
    """Write trials as a Sensorium-layout dataset with rt-decoder's extra files.

    Parameters
    ----------
    root : path
        Output folder (the "animal" folder). Must be absent or empty unless ``overwrite``.
        Written under a temporary name beside it and renamed when complete
        (``rt_decoder.io.safe.atomic_dir``): an interrupted write leaves the old folder as
        it was (or, if the process is killed, a temporary folder marked incomplete).
    trials : iterable of Trial-like
        Objects with ``trial_id`` (int >= 0), ``video`` (T, H, W) 0..255, ``behaviour``
        (T, 4) in ``BEHAVIOUR_FIELDS`` order, and optionally ``fluorescence``, ``spikes``,
        ``rates`` (T, N). Consumed one at a time (a generator keeps memory flat).
    roi_ids : ndarray, shape (N,)
        Written as ``meta/neurons/unit_ids.npy`` (int64).
    roi_centres_px : ndarray, shape (N, 2), optional
        ROI centres (y, x) in FOV pixels, written as ``meta/neurons/roi_centres_px.npy``.
    tiers : sequence of str
        One tier per trial, in iteration order (``TIER_NAMES``).
    responses_fn : callable, optional
        ``responses_fn(fluorescence (T, N) float32, frame_rate_hz) -> (T, N)``; the written
        ``responses`` come from it. Default: the ground-truth ``spikes``.
    extra_meta : mapping, optional
        Merged into ``meta/rig.json`` (JSON-serialisable).
    frame_rate_hz : float
        Frame rate handed to ``responses_fn`` and recorded in ``meta/rig.json``.
    cell_motor_coordinates_um : ndarray, shape (N, 3), optional
        Written as ``meta/neurons/cell_motor_coordinates.npy``.
    neuron_params : ndarray, shape (N,), optional
        Structured or float array of per-neuron ground truth -> ``meta/neurons/rf_params.npy``.
    overwrite : bool
        Replace an existing non-empty ``root`` (as a whole: no stale files survive).

    Returns
    -------
    pathlib.Path
        ``root``.
    """
    with atomic_dir(root, overwrite=overwrite, what="dataset (write_dataset)") as tmp:
        _write_dataset_into(tmp, trials, roi_ids=roi_ids, roi_centres_px=roi_centres_px, tiers=tiers,
                            responses_fn=responses_fn, extra_meta=extra_meta, frame_rate_hz=frame_rate_hz,
                            cell_motor_coordinates_um=cell_motor_coordinates_um, neuron_params=neuron_params)
    return Path(root)


def _write_dataset_into(root: Path, trials: Iterable[Any], *, roi_ids: np.ndarray,
                        roi_centres_px: np.ndarray | None, tiers: Sequence[str],
                        responses_fn: ResponsesFn | None, extra_meta: Mapping[str, Any] | None,
                        frame_rate_hz: float, cell_motor_coordinates_um: np.ndarray | None,
                        neuron_params: np.ndarray | None) -> None:
    """The body of ``write_dataset``, into a folder that is known to be new and empty."""
    roi_ids = np.asarray(roi_ids, dtype=np.int64).reshape(-1)
    n = int(roi_ids.size)
    if n < 1:
        raise ConfigError("write_dataset needs at least one ROI id")
    tiers = [str(t) for t in tiers]
    bad = sorted({t for t in tiers if t not in TIER_NAMES})
    if bad:
        raise ConfigError(f"unknown tier name(s) {bad}; allowed: {list(TIER_NAMES)}")
    for arr, name, shape in ((roi_centres_px, "roi_centres_px", (n, 2)),
                             (cell_motor_coordinates_um, "cell_motor_coordinates_um", (n, 3))):
        if arr is not None and np.shape(arr) != shape:
            raise ShapeMismatchError(f"{name} must have shape {shape}, got {np.shape(arr)}")
    if neuron_params is not None and (np.ndim(neuron_params) < 1 or np.shape(neuron_params)[0] != n):
        raise ShapeMismatchError(f"neuron_params must have {n} rows, got shape {np.shape(neuron_params)}")
    if neuron_params is not None and np.asarray(neuron_params).dtype.hasobject:
        raise ConfigError("neuron_params must not hold Python objects (it is saved without pickle)")

    keys = ("videos", "responses", "behavior", "pupil_center", *EXTRA_KEYS)
    for key in keys:
        (root / "data" / key).mkdir(parents=True, exist_ok=True)
    responses_source = "ground_truth_spikes" if responses_fn is None else _callable_name(responses_fn)

    n_trials = len(tiers)
    stats: dict[str, _Stats] = {}
    tier_of: dict[int, str] = {}
    n_frames: list[int] = []
    index = -1
    for index, trial in enumerate(trials):
        if index >= n_trials:
            raise ConfigError(f"more trials than tiers: got a trial #{index} but only {n_trials} tiers")
        tid = getattr(trial, "trial_id", None)
        if isinstance(tid, bool) or not isinstance(tid, (int, np.integer)) or tid < 0:
            raise ConfigError(f"trial #{index}: trial_id must be a non-negative int, got {tid!r}")
        tid = int(tid)
        if tid in tier_of:
            raise ConfigError(f"trial #{index}: duplicate trial_id {tid}")
        video = np.asarray(trial.video, dtype=np.float32)
        if video.ndim != 3:
            raise ShapeMismatchError(f"trial {tid}: video must have shape (T, H, W), got {video.shape}")
        t = int(video.shape[0])
        behaviour = np.asarray(trial.behaviour, dtype=np.float32)
        if behaviour.shape != (t, N_BEHAVIOUR):
            raise ShapeMismatchError(f"trial {tid}: behaviour must have shape ({t}, {N_BEHAVIOUR}), "
                                     f"got {behaviour.shape}")
        extras = {name: _tn_array(trial, name, n, t, index) for name in EXTRA_KEYS}
        if responses_fn is None:
            if extras["spikes"] is None:
                raise ConfigError(f"trial {tid}: has no spikes, so responses need a responses_fn")
            responses = extras["spikes"]
        else:
            if extras["fluorescence"] is None:
                raise ConfigError(f"trial {tid}: responses_fn needs the trial's fluorescence, which is missing")
            responses = np.asarray(responses_fn(extras["fluorescence"], float(frame_rate_hz)), dtype=np.float32)
            if responses.shape != (t, n):
                raise ShapeMismatchError(f"trial {tid}: responses_fn returned shape {responses.shape}, "
                                         f"expected (T, N) = ({t}, {n})")
        per_key = {
            "videos": np.moveaxis(video, 0, -1),
            "responses": responses.T,
            "behavior": behaviour[:, :2].T,
            "pupil_center": behaviour[:, 2:].T,
            **{name: arr.T for name, arr in extras.items() if arr is not None},
        }
        if not stats:
            stats = {
                "videos": _Stats(0, _frames_for_median(video[0].size, n_trials)),
                "responses": _Stats(n, _frames_for_median(n, n_trials)),
                "behavior": _Stats(2, t),
                "pupil_center": _Stats(2, t),
            }
        for key, arr in per_key.items():
            np.save(root / "data" / key / f"{tid}.npy", np.ascontiguousarray(arr, dtype=np.float32),
                    allow_pickle=False)
            if key in stats:
                stats[key].add(arr)
        tier_of[tid] = tiers[index]
        n_frames.append(t)
    if index + 1 != n_trials:
        raise ConfigError(f"got {index + 1} trials but {n_trials} tiers")

    # meta: neurons, trials, statistics, rig.json
    neurons = root / "meta" / "neurons"
    neurons.mkdir(parents=True, exist_ok=True)
    np.save(neurons / "unit_ids.npy", roi_ids, allow_pickle=False)
    if cell_motor_coordinates_um is not None:
        np.save(neurons / "cell_motor_coordinates.npy", np.asarray(cell_motor_coordinates_um, np.float32),
                allow_pickle=False)
    if roi_centres_px is not None:
        np.save(neurons / "roi_centres_px.npy", np.asarray(roi_centres_px, np.float32), allow_pickle=False)
    if neuron_params is not None:
        np.save(neurons / "rf_params.npy", np.asarray(neuron_params), allow_pickle=False)
    (root / "meta" / "trials").mkdir(parents=True, exist_ok=True)
    tier_array = np.full(max(tier_of) + 1, "none", dtype=f"<U{max(len(s) for s in TIER_NAMES)}")
    for tid, tier in tier_of.items():
        tier_array[tid] = tier
    np.save(root / "meta" / "trials" / "tiers.npy", tier_array, allow_pickle=False)
    for key, acc in stats.items():
        folder = root / "meta" / "statistics" / key / "all"
        folder.mkdir(parents=True, exist_ok=True)
        for name, value in acc.result().items():
            np.save(folder / f"{name}.npy", value, allow_pickle=False)
    meta: dict[str, Any] = {
        "format": FORMAT_NAME,
        "frame_rate_hz": float(frame_rate_hz),
        "n_neurons": n,
        "n_trials": n_trials,
        "frames_per_trial": sorted(set(n_frames)),
        "responses_source": responses_source,
        "behaviour_units": {"pupil_dilation": "a.u.", "running_speed": "cm/s",
                            "pupil_x": "deg", "pupil_y": "deg"},
        "extra_files": [k for k in EXTRA_KEYS if any((root / "data" / k).iterdir())],
    }
    meta.update(dict(extra_meta or {}))
    (root / "meta" / "rig.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    for key in EXTRA_KEYS:  # do not leave empty optional folders behind
        folder = root / "data" / key
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()


def assign_tiers(n_trials: int, *, validation_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 0) -> list[str]:
    """Tiers for ``n_trials`` trials: ``train`` / ``oracle`` (validation) / ``final_test_main``.

    Counts are ``round(fraction * n_trials)`` for validation and test, the rest train (at
    least one); which trials get which tier is a seeded random permutation.
    """
    for name, f in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not (0.0 <= f < 1.0):
            raise ConfigError(f"{name} must be in [0, 1), got {f!r}")
    n_test = int(round(test_fraction * n_trials))
    n_val = int(round(validation_fraction * n_trials))
    if n_trials - n_test - n_val < 1:
        raise ConfigError(f"{n_trials} trials leave no training trial with validation_fraction="
                          f"{validation_fraction} and test_fraction={test_fraction}")
    tiers = np.array(["train"] * n_trials, dtype="<U16")
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x7135])).permutation(n_trials)
    tiers[order[:n_test]] = "final_test_main"
    tiers[order[n_test:n_test + n_val]] = "oracle"
    return tiers.tolist()


# ====================================================================== loader
def _load(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DataFormatError(f"{path}: missing file ({what})")
    return load_npy(path, what)


def _check_numeric(arr: np.ndarray, path: Path, what: str) -> None:
    if arr.dtype.kind not in "fiub":
        raise DataFormatError(f"{path}: {what} must be numeric, got dtype {arr.dtype}")


@dataclass(frozen=True)
class SensoriumTrial:
    """One trial, time-major, float32, cut at the first NaN frame of the video.

    video (T, H, W) 0..255; responses (T, N); behaviour (T, 4) in ``BEHAVIOUR_FIELDS``
    order; fluorescence / spikes / rates (T, N) when the dataset has them, else None.
    """

    trial_id: int
    tier: str
    video: np.ndarray
    responses: np.ndarray
    behaviour: np.ndarray
    fluorescence: np.ndarray | None = None
    spikes: np.ndarray | None = None
    rates: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        return int(self.video.shape[0])


class SensoriumDataset:
    """A Sensorium-layout folder opened for reading (trials are loaded on demand).

    Attributes
    ----------
    root : Path
    n_neurons : int
    trial_ids : list of int, sorted
    tiers : dict int -> str
    unit_ids : ndarray, shape (N,)
    cell_motor_coordinates : ndarray (N, 3) float32 or None
    roi_centres_px : ndarray (N, 2) float32 or None (rt-decoder datasets only)
    neuron_params : ndarray (N,) or None (rt-decoder datasets only)
    statistics : dict key -> dict stat -> ndarray
    meta : dict (contents of meta/rig.json, or {})
    frame_rate_hz : float (from meta, else 30.0)
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataFormatError(f"{self.root}: not a directory (expected a Sensorium-layout dataset)")
        check_complete(self.root, "dataset")
        videos = self.root / "data" / "videos"
        if not videos.is_dir():
            inside = dataset_folders_inside(self.root)
            if inside:
                raise DataFormatError(
                    f"{self.root} is not one dataset but holds {len(inside)} animal folder(s): "
                    f"{', '.join(inside)}; pass one of them, e.g. {self.root / inside[0]}")
            raise DataFormatError(f"{videos}: missing folder (no trial videos; is {self.root} a Sensorium-layout "
                                  "dataset folder, with data/ and meta/?)")
        if not (self.root / "meta").is_dir():
            raise DataFormatError(f"{self.root / 'meta'}: missing folder (the dataset is incomplete: "
                                  "its writer was stopped before the end?)")
        ids = []
        for p in videos.iterdir():
            m = _TRIAL_FILE.match(p.name)
            if m:
                ids.append(int(m.group(1)))
        if not ids:
            raise DataFormatError(f"{videos}: no trial files named <i>.npy")
        self.trial_ids: list[int] = sorted(ids)

        unit_path = self.root / "meta" / "neurons" / "unit_ids.npy"
        unit_ids = _load(unit_path, "unit ids")
        if unit_ids.ndim != 1 or unit_ids.size < 1:
            raise DataFormatError(f"{unit_path}: expected shape (N,), got {unit_ids.shape}")
        self.unit_ids = unit_ids
        self.n_neurons = int(unit_ids.size)

        self.cell_motor_coordinates = self._optional_neuron_array("cell_motor_coordinates.npy", (self.n_neurons, 3))
        self.roi_centres_px = self._optional_neuron_array("roi_centres_px.npy", (self.n_neurons, 2))
        params_path = self.root / "meta" / "neurons" / "rf_params.npy"
        self.neuron_params = _load(params_path, "neuron parameters") if params_path.exists() else None
        if self.neuron_params is not None and (self.neuron_params.ndim < 1
                                               or self.neuron_params.shape[0] != self.n_neurons):
            raise DataFormatError(f"{params_path}: has {self.neuron_params.shape} rows, but unit_ids.npy "
                                  f"lists {self.n_neurons} neurons")

        tiers_path = self.root / "meta" / "trials" / "tiers.npy"
        tiers = _load(tiers_path, "trial tiers")
        if tiers.dtype.kind == "S":
            tiers = tiers.astype(str)
        if tiers.dtype.kind != "U" or tiers.ndim != 1:
            raise DataFormatError(f"{tiers_path}: expected a 1-D string array, got dtype {tiers.dtype} "
                                  f"shape {tiers.shape}")
        if tiers.size <= self.trial_ids[-1]:
            raise DataFormatError(f"{tiers_path}: has {tiers.size} entries but trial {self.trial_ids[-1]} exists")
        self.tiers: dict[int, str] = {i: str(tiers[i]) for i in self.trial_ids}

        self.statistics: dict[str, dict[str, np.ndarray]] = {}
        stats_root = self.root / "meta" / "statistics"
        if stats_root.is_dir():
            for key_dir in sorted(p for p in stats_root.iterdir() if p.is_dir()):
                folder = key_dir / "all"
                if folder.is_dir():
                    self.statistics[key_dir.name] = {
                        p.stem: _load(p, f"{key_dir.name} statistic") for p in sorted(folder.glob("*.npy"))}

        self.meta: dict[str, Any] = {}
        meta_path = self.root / "meta" / "rig.json"
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError) as exc:
                raise DataFormatError(f"{meta_path}: not valid JSON: {exc}") from exc
            if not isinstance(meta, dict):
                raise DataFormatError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
            self.meta = meta
        rate = self.meta.get("frame_rate_hz", 30.0)
        self.frame_rate_hz = float(rate) if isinstance(rate, (int, float)) and rate > 0 else 30.0

    def _optional_neuron_array(self, name: str, shape: tuple[int, int]) -> np.ndarray | None:
        path = self.root / "meta" / "neurons" / name
        if not path.exists():
            return None
        arr = _load(path, name[:-4].replace("_", " "))
        _check_numeric(arr, path, "values")
        if arr.shape != shape:
            what = "N mismatch with unit_ids.npy" if arr.ndim == 2 and arr.shape[1] == shape[1] else "wrong shape"
            raise DataFormatError(f"{path}: expected shape {shape}, got {arr.shape} ({what})")
        return arr.astype(np.float32, copy=False)

    def __len__(self) -> int:
        return len(self.trial_ids)

    def trials(self, tier: str | None = None) -> list[int]:
        """Sorted trial ids, all or those of one tier."""
        if tier is None:
            return list(self.trial_ids)
        return [i for i in self.trial_ids if self.tiers[i] == tier]

    def _neuron_time(self, key: str, tid: int, t: int, required: bool) -> np.ndarray | None:
        path = self.root / "data" / key / f"{tid}.npy"
        if not required and not path.exists():
            return None
        arr = _load(path, key)
        _check_numeric(arr, path, key)
        if arr.ndim != 2:
            raise DataFormatError(f"{path}: expected shape (N, T), got {arr.shape} (wrong shape)")
        if arr.shape[0] != self.n_neurons:
            hint = (" (it looks transposed: (T, N) given, Sensorium stores (N, T))"
                    if arr.shape[1] == self.n_neurons else "")
            raise DataFormatError(f"{path}: has {arr.shape[0]} neurons but unit_ids.npy lists "
                                  f"{self.n_neurons} (N mismatch){hint}")
        if arr.shape[1] < t:
            raise DataFormatError(f"{path}: has {arr.shape[1]} frames but the video has {t} (too short)")
        out = np.ascontiguousarray(arr[:, :t].T, dtype=np.float32)
        if not np.isfinite(out).all():
            raise DataFormatError(f"{path}: non-finite values inside the trial's {t} frames")
        return out

    def _channels(self, key: str, tid: int, t: int) -> np.ndarray:
        path = self.root / "data" / key / f"{tid}.npy"
        arr = _load(path, key)
        _check_numeric(arr, path, key)
        if arr.ndim != 2 or arr.shape[0] != 2:
            raise DataFormatError(f"{path}: expected shape (2, T), got {arr.shape} (wrong shape)")
        if arr.shape[1] < t:
            raise DataFormatError(f"{path}: has {arr.shape[1]} frames but the video has {t} (too short)")
        out = np.asarray(arr[:, :t], dtype=np.float32)
        if not np.isfinite(out).all():
            raise DataFormatError(f"{path}: non-finite values inside the trial's {t} frames")
        return out

    def trial(self, trial_id: int) -> SensoriumTrial:
        """Load one trial (cut at the video's first NaN frame)."""
        tid = int(trial_id)
        if tid not in self.tiers:
            raise DataFormatError(f"{self.root / 'data' / 'videos'}: no trial {tid} "
                                  f"(trials {self.trial_ids[0]}..{self.trial_ids[-1]})")
        vpath = self.root / "data" / "videos" / f"{tid}.npy"
        video = _load(vpath, "video")
        _check_numeric(video, vpath, "video")
        if video.ndim != 3:
            raise DataFormatError(f"{vpath}: expected shape (H, W, T), got {video.shape} (wrong shape)")
        nan_frames = np.isnan(video).any(axis=(0, 1)) if video.dtype.kind == "f" else np.zeros(video.shape[2], bool)
        t = int(np.argmax(nan_frames)) if nan_frames.any() else int(video.shape[2])
        if t == 0:
            raise DataFormatError(f"{vpath}: the first frame is already NaN (empty trial)")
        behavior = self._channels("behavior", tid, t)
        pupil = self._channels("pupil_center", tid, t)
        return SensoriumTrial(
            trial_id=tid, tier=self.tiers[tid],
            video=np.ascontiguousarray(np.moveaxis(video[:, :, :t], -1, 0), dtype=np.float32),
            responses=self._neuron_time("responses", tid, t, required=True),  # type: ignore[arg-type]
            behaviour=np.ascontiguousarray(np.concatenate([behavior, pupil], axis=0).T),
            fluorescence=self._neuron_time("fluorescence", tid, t, required=False),
            spikes=self._neuron_time("spikes", tid, t, required=False),
            rates=self._neuron_time("rates", tid, t, required=False),
        )


def load_dataset(root: str | Path) -> SensoriumDataset:
    """Open a Sensorium-layout dataset (ours or a real Sensorium 2023 animal folder)."""
    return SensoriumDataset(root)
