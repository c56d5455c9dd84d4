"""The Python API for notebooks and scripts: one call per task.

::

    import rt_decoder

    ds = rt_decoder.simulate("sim", neurons=8000, trials=[300], seed=0)   # a dataset on disk
    trial = ds.trial(300)
    rec = rt_decoder.reconstruct(trial.responses, trial.behaviour, truth=trial.video, iterations=50)
    rec.video, rec.metrics["video_corr"]
    activity = rt_decoder.deconvolve(fluorescence, fs=30.0)              # (T, N) -> (T, N)
    model = rt_decoder.load_model()                                      # the shipped demo ensemble

Arrays are time-major like everything in rt-decoder: responses and fluorescence (T, N),
behaviour (T, 4), movies (T, 36, 64) in pixel values 0..255. Inputs are checked
(``rt_decoder.io.inputs``): mistakes raise ``rt_decoder.errors`` exceptions naming the
problem; accepted inputs with a problem (ROIs that are NaN throughout, an array given
(N, T) that the model's neuron count lets us turn) give an ``InputWarning``.

``import rt_decoder`` stays cheap: this module is imported on first use of one of these
names, and each function imports what it needs (the runtime never imports torch).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from rt_decoder.errors import ConfigError, InputWarning, ModelError, ShapeMismatchError

__all__ = ["Reconstruction", "deconvolve", "demo_model_path", "load_model", "reconstruct", "simulate"]


def demo_model_path() -> Path:
    """The folder of the shipped demo ensemble (installed with the package).

    Returns
    -------
    pathlib.Path
        ``rt_decoder/models/demo`` inside the installed package, wherever it is.
    """
    path = Path(str(resources.files("rt_decoder") / "models" / "demo"))
    if not (path / "manifest.json").is_file():
        raise ModelError(f"{path}: the shipped demo model is missing from this installation")
    return path


def load_model(path: str | Path | None = None) -> Any:
    """Load and validate a model folder (``rt-decoder train`` output, or the shipped demo).

    Parameters
    ----------
    path : str or Path, optional
        The model folder; default: the shipped demo ensemble (:func:`demo_model_path`).

    Returns
    -------
    rt_decoder.encoder.EncoderModel
        ``neuron_ids`` (N,), ``n_members``, ``masks`` (``train_mask`` / ``eval_mask``
        (36, 64) bool), ``manifest`` (architecture, training record). Graphs are built in
        memory when the folder has none (no PyTorch needed).

    Raises
    ------
    rt_decoder.errors.ModelError
        Naming the file and field that is wrong (also for a folder whose writing was interrupted).
    """
    from rt_decoder.encoder.manifest import load_model as _load

    return _load(demo_model_path() if path is None else path)


def simulate(out: str | Path, *, neurons: int = 8000, trials: int | Sequence[int] = 20, seed: int = 0,
             frames: int = 300, indicator: str = "GCaMP6s", responses: str = "auto",
             tiers: Sequence[str] | None = None, overwrite: bool = False, progress: bool = False) -> Any:
    """Simulate the virtual rig and write a Sensorium-layout dataset (``rt-decoder simulate``).

    Parameters
    ----------
    out : str or Path
        Dataset folder to write (absent or empty unless ``overwrite``; written under a
        temporary name and renamed when complete).
    neurons : int
        Population size (1..100,000).
    trials : int or sequence of int
        How many trials (ids 0..trials-1), or which trial ids. A trial's content depends
        only on ``seed`` and its id: the shipped demo model was made from trials 0..299 of
        seed 0, 8,000 neurons (trained on 240 of them), so trials >= 300 are held out from it.
    seed : int
        Seed of the population and every trial.
    frames : int
        Frames per trial (30 Hz; 300 = 10 s).
    indicator : {"GCaMP6s", "GCaMP8m"}
    responses : {"auto", "deconv", "spikes"}
        What is written as responses: the online deconvolution of the fluorescence
        (``deconv``, the default when available) or the ground-truth spike counts.
    tiers : sequence of str, optional
        One tier per trial; default: 10% ``oracle``, 10% ``final_test_main``, the rest ``train``.
    overwrite : bool
        Replace an existing non-empty ``out``.
    progress : bool
        Show a progress bar.

    Returns
    -------
    rt_decoder.io.sensorium.SensoriumDataset
        The written dataset, opened (``trial(i)`` gives video (T, 36, 64), responses (T, N),
        behaviour (T, 4), fluorescence, spikes, rates).
    """
    from tqdm import tqdm

    from rt_decoder.io.safe import check_target
    from rt_decoder.io.sensorium import assign_tiers, load_dataset, write_dataset
    from rt_decoder.sim import RigConfig, VirtualRig
    from rt_decoder.sim.responses import responses_function

    check_target(out, overwrite=overwrite, flag="overwrite=True")
    ids = list(range(int(trials))) if isinstance(trials, (int, np.integer)) else [int(t) for t in trials]
    if not ids:
        raise ConfigError("simulate needs at least one trial")
    if responses not in ("auto", "deconv", "spikes"):
        raise ConfigError(f"responses must be 'auto', 'deconv' or 'spikes', got {responses!r}")
    config = RigConfig(n_neurons=neurons, seed=seed, indicator=indicator, trial_frames=frames,
                       n_trials=max(len(ids), 1))
    tier_list = list(tiers) if tiers is not None else assign_tiers(len(ids), seed=seed)
    rig = VirtualRig(config)
    gen = tqdm((rig.trial(i) for i in ids), total=len(ids), desc="simulate", unit="trial", disable=not progress)
    write_dataset(out, gen, roi_ids=rig.roi_ids, roi_centres_px=rig.roi_centres_px, tiers=tier_list,
                  responses_fn=responses_function(responses), frame_rate_hz=config.frame_rate_hz,
                  cell_motor_coordinates_um=rig.cell_motor_coordinates_um, neuron_params=rig.neuron_params,
                  extra_meta={"rig_config": config.to_dict(), "source": "virtual-rig", "trial_ids": ids},
                  overwrite=overwrite)
    return load_dataset(out)


def deconvolve(fluorescence: Any, fs: float, *, layout: str = "frames-by-rois", **settings: Any) -> np.ndarray:
    """Deconvolve fluorescence into activity with the online stage, run offline.

    Parameters
    ----------
    fluorescence : array_like, shape (T, N)
        Raw ROI fluorescence, frames x ROIs (``layout="rois-by-frames"`` for Suite2p's
        (N, T) ``F.npy``). NaN marks missing samples.
    fs : float
        Frame rate in Hz.
    layout : {"frames-by-rois", "rois-by-frames"}
        The layout of ``fluorescence``.
    **settings
        ``rt_decoder.deconv.DeconvSettings`` fields, e.g. ``model="ar2"``, ``lag_frames=2``.

    Returns
    -------
    ndarray, shape (T, N), float32
        Activity of each frame as the live stage reads it out ``lag_frames`` later.

    Warns
    -----
    InputWarning
        For ROIs that are NaN in every frame (their activity is zeros).
    """
    from rt_decoder.deconv import DeconvSettings, deconvolve_array
    from rt_decoder.io.inputs import check_2d_numeric, warn_nan_rois, warn_python

    if layout not in ("frames-by-rois", "rois-by-frames"):
        raise ConfigError(f"layout must be 'frames-by-rois' or 'rois-by-frames', got {layout!r}")
    if not (np.isfinite(fs) and 0 < fs <= 10_000):
        raise ConfigError(f"fs must be a frame rate in Hz in (0, 10000], got {fs!r}")
    what = "(frames, ROIs)" if layout == "frames-by-rois" else "(ROIs, frames)"
    arr = check_2d_numeric(np.asarray(fluorescence), "fluorescence", what)
    x = np.ascontiguousarray(arr if layout == "frames-by-rois" else arr.T, dtype=np.float32)
    warn_nan_rois(x, "fluorescence", warn_python)
    return deconvolve_array(x, float(fs), DeconvSettings.from_dict(settings))


@dataclass
class Reconstruction:
    """What :func:`reconstruct` returns.

    video : (T, 36, 64) float32, the ensemble mean, blurred, pixel values 0..255
    members : one (T, 36, 64) unblurred video per ensemble member used
    metrics : video correlation etc. against ``truth`` (empty when no truth was given)
    eval_mask : (36, 64) bool, the pixels scored (alpha >= 1)
    """

    video: np.ndarray
    members: list[np.ndarray]
    metrics: dict[str, Any] = field(default_factory=dict)
    eval_mask: np.ndarray | None = None


def _as_time_major(responses: Any, n_model: int, neuron_ids: Any) -> np.ndarray:
    from rt_decoder.io.inputs import check_2d_numeric

    r = check_2d_numeric(np.asarray(responses), "responses", "(frames, neurons)")
    n = n_model if neuron_ids is None else int(np.size(neuron_ids))
    if r.shape[1] == n:
        return np.asarray(r, np.float32)
    if r.shape[0] == n:
        warnings.warn(f"responses of shape {r.shape} read as (neurons, frames) (the model / neuron_ids say "
                      f"{n} neurons) and transposed to (frames, neurons)", InputWarning, stacklevel=3)
        return np.ascontiguousarray(r.T, np.float32)
    raise ShapeMismatchError(f"responses of shape {r.shape} have no axis of {n} neurons (the "
                             f"{'neuron_ids given' if neuron_ids is not None else 'model'}); expected (T, {n})")


def reconstruct(responses: Any, behaviour: Any = None, *, model: Any = None, truth: Any = None,
                neuron_ids: Any = None, iterations: int | None = None, members: int = 0, stride_frames: int = 8,
                amortised: bool = True, backend: str = "onnxruntime", threads: int = 2) -> Reconstruction:
    """Reconstruct the movie behind a trial of activity (the published offline protocol).

    Parameters
    ----------
    responses : array_like, shape (T, N)
        Activity (deconvolved, e.g. from :func:`deconvolve`), one column per model neuron
        in the model's order, or per ``neuron_ids`` entry.
    behaviour : array_like, shape (T, 4), optional
        Pupil dilation, running speed, pupil x, pupil y per frame; default: the model's
        training means, held constant.
    model : str, Path or EncoderModel, optional
        Model folder or a loaded model (:func:`load_model`); default: the shipped demo.
    truth : array_like, shape (T, 36, 64), optional
        The true movie: ``metrics`` then holds the video correlation inside the
        evaluation mask (first 30 frames excluded) and more.
    neuron_ids : array_like, shape (N,), optional
        Ids of the columns of ``responses``; they are matched to the model's neurons by
        id (model neurons not present get weight 0; columns the model lacks are ignored).
    iterations : int, optional
        Optimiser iterations (default: ``OfflineSettings``'s, as ``rt-decoder reconstruct``;
        about 0.1 s per iteration and member for a 10 s trial on two CPU cores).
    members : int
        Ensemble members to use (0 = all).
    stride_frames : int
        Stride between the 32-frame windows (published: 8).
    amortised : bool
        Start from the model's amortised decoder's estimate when it has one (else grey).
    backend : {"onnxruntime", "torch", "tensorrt"}
    threads : int
        Intra-op threads.

    Returns
    -------
    Reconstruction
    """
    from dataclasses import replace

    from rt_decoder.encoder.backends import BackendSettings, open_ensemble
    from rt_decoder.recon.metrics import quality_report
    from rt_decoder.recon.offline import OfflineSettings, blur_video, reconstruct_single
    from rt_decoder.recon.runner import load_amortised

    m = model if (model is not None and hasattr(model, "neuron_ids")) else load_model(model)
    model_ids = np.asarray(m.neuron_ids, np.int64)
    r = _as_time_major(responses, model_ids.size, neuron_ids)
    t = r.shape[0]
    weights = None
    if neuron_ids is not None:
        ids = np.asarray(neuron_ids, np.int64).reshape(-1)
        pos = {int(v): i for i, v in enumerate(ids)}
        index = np.array([pos.get(int(v), -1) for v in model_ids], np.int64)
        present = index >= 0
        if not present.any():
            raise ShapeMismatchError(f"none of the {ids.size} neuron_ids is a neuron of the model "
                                     f"({model_ids.size} neurons)")
        mapped = np.zeros((t, model_ids.size), np.float32)
        mapped[:, present] = r[:, index[present]]
        r, weights = mapped, present.astype(np.float32)
    if behaviour is None:
        mean = np.asarray(m.manifest.normalisation.get("behaviour_mean", [0.0] * 4), np.float32).reshape(-1)
        beh = np.broadcast_to(mean[:4], (t, 4)).astype(np.float32)
    else:
        beh = np.asarray(behaviour, np.float32)
        if beh.shape == (4, t) and t != 4:
            beh = np.ascontiguousarray(beh.T)
        if beh.shape != (t, 4):
            raise ShapeMismatchError(f"behaviour must have shape (T, 4) = ({t}, 4), got {beh.shape}")
    if not np.isfinite(r).all() or not np.isfinite(beh).all():
        raise ShapeMismatchError("responses and behaviour must be finite (no NaN / inf)")
    encoders = list(open_ensemble(m, BackendSettings(kind=backend, intra_op_threads=threads),
                                  max_members=members))
    window = encoders[0].window_frames
    base = OfflineSettings()
    settings = replace(base, window_frames=window, stride_frames=min(stride_frames, window),
                       iterations=base.iterations if iterations is None else int(iterations))
    train_mask = np.asarray(m.masks.train_mask, bool)
    eval_mask = np.asarray(m.masks.eval_mask, bool)
    decoder = load_amortised(m) if amortised else None
    init = None if decoder is None else decoder.decode(r, weights)
    videos = [reconstruct_single(enc, r, beh, train_mask, settings, neuron_weights=weights, init_video=init)
              for enc in encoders]
    mean_video = np.mean(np.stack(videos), axis=0)
    video = blur_video(mean_video, settings.blur_sigma_frames, settings.blur_sigma_px).astype(np.float32)
    metrics: dict[str, Any] = {}
    if truth is not None:
        true = np.asarray(truth, np.float32)
        if true.shape != video.shape:
            raise ShapeMismatchError(f"truth must have the movie's shape {video.shape}, got {true.shape}")
        metrics = dict(quality_report(true, video, eval_mask).as_dict())
        metrics["member_video_corr"] = [quality_report(true, v, eval_mask).video_corr for v in videos]
    return Reconstruction(video, [v.astype(np.float32) for v in videos], metrics, eval_mask)
