"""Glue for offline reconstruction of dataset trials: open a model, run, score, write files.

Used by ``rt-decoder reconstruct`` and ``benchmarks.quality``. Imports the encoder's
runtime side only (no torch unless the torch backend is chosen).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rt_decoder.errors import ConfigError, ModelError
from rt_decoder.recon.metrics import quality_report
from rt_decoder.recon.offline import OfflineSettings, blur_video, reconstruct_single

if TYPE_CHECKING:
    from rt_decoder.encoder.manifest import EncoderModel
    from rt_decoder.encoder_protocol import Encoder
    from rt_decoder.recon.amortised import AmortisedDecoder


@dataclass
class OpenedModel:
    """A loaded encoder model and one backend per ensemble member."""

    model: EncoderModel
    encoders: list[Encoder]     # one backend per member
    train_mask: np.ndarray      # (H, W) bool, alpha >= 0.5
    eval_mask: np.ndarray       # (H, W) bool, alpha >= 1


def open_model(model_dir: str | Path, *, backend: str = "onnxruntime", threads: int = 2,
               window_frames: int = 0, max_members: int = 0, live_frames: int = 0) -> OpenedModel:
    """Load ``model_dir`` and open ``max_members`` (0 = all) backends of kind ``backend``.

    ``live_frames`` > 0 also opens the live graph of that many frames (the cached-context
    path; ``ReconstructionSettings.live_frames`` / ``LiveSettings.live_frames``).
    """
    from rt_decoder.encoder.backends import BackendSettings, open_ensemble
    from rt_decoder.encoder.manifest import load_model

    model = load_model(model_dir)
    settings = BackendSettings(kind=backend, window_frames=window_frames, intra_op_threads=threads,
                               live_frames=live_frames)
    encoders = open_ensemble(model, settings, max_members=max_members)
    return OpenedModel(model, list(encoders), np.asarray(model.masks.train_mask, bool),
                       np.asarray(model.masks.eval_mask, bool))


def load_amortised(model: EncoderModel) -> AmortisedDecoder | None:
    """The model's amortised decoder (``rt_decoder.recon.amortised``), or None if it has none.

    Raises ModelError when the manifest names a file that is missing or does not match its hash.
    """
    from rt_decoder.encoder.manifest import sha256_file
    from rt_decoder.recon.amortised import AmortisedDecoder

    entry = dict(model.manifest.amortised)
    if not entry:
        return None
    path = Path(model.root) / entry["file"]
    if not path.is_file():
        raise ModelError(f"{path}: the manifest names an amortised decoder that is missing")
    if sha256_file(path) != entry["sha256"]:
        raise ModelError(f"{path}: sha256 does not match the manifest's")
    dec = AmortisedDecoder.load(path)
    if dec.n_neurons != model.n_neurons:
        raise ModelError(f"{path}: reads {dec.n_neurons} neurons, the model has {model.n_neurons}")
    return dec


def training_trials_among(model: EncoderModel, dataset_meta: Any, trial_ids: Sequence[int]) -> list[int]:
    """The ``trial_ids`` that were in the model's training or validation data.

    A model records the trial ids it was fitted and validated on (manifest
    ``training.trial_ids``). A dataset whose neurons are the model's holds those same trials
    unless it comes from a different simulated rig (another ``rig_config`` seed), since a
    trial's content is fixed by its animal (or rig seed) and id.
    """
    tr = dict(model.manifest.training)
    ids = tr.get("trial_ids") or {}
    used = set(int(i) for i in list(ids.get("train", [])) + list(ids.get("val", [])))
    if not used:
        return []
    meta = dataset_meta if isinstance(dataset_meta, dict) else {}
    rig = meta.get("rig_config") if isinstance(meta.get("rig_config"), dict) else None
    model_rig = tr.get("rig_config") if isinstance(tr.get("rig_config"), dict) else None
    if rig is not None and model_rig is not None and rig.get("seed") != model_rig.get("seed"):
        return []
    return sorted(int(i) for i in trial_ids if int(i) in used)


def check_neurons(model: EncoderModel, unit_ids: np.ndarray) -> None:
    """The dataset's neurons must be the model's, in the same order."""
    ids = np.asarray(unit_ids).astype(np.int64)
    if ids.shape != model.neuron_ids.shape or not np.array_equal(ids, model.neuron_ids):
        raise ModelError(f"the dataset has {ids.size} neurons whose ids do not match the model's "
                         f"{model.neuron_ids.size} (model trained on another animal or dataset?)")


def neuron_subset_weights(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Per-neuron weights keeping a random ``fraction`` of neurons (1) and ignoring the rest (0)."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"neuron fraction must be in (0, 1], got {fraction}")
    w = np.zeros(n, np.float32)
    w[rng.choice(n, size=max(1, int(round(fraction * n))), replace=False)] = 1.0
    return w


@dataclass
class TrialResult:
    trial_id: int
    video: np.ndarray           # (T, H, W) ensemble mean, blurred
    members: list[np.ndarray]   # per member, unblurred
    metrics: dict[str, Any]


def reconstruct_trial(opened: OpenedModel, trial: Any, settings: OfflineSettings, *,
                      neuron_weights: np.ndarray | None = None,
                      progress: Callable[[int], None] | None = None, amortised: AmortisedDecoder | None = None,
                      init_video: np.ndarray | None = None) -> TrialResult:
    """Reconstruct one SensoriumTrial with every opened member; score against its video.

    With ``amortised`` (an ``AmortisedDecoder``) every member starts from its estimate;
    ``init_video`` (T, H, W) gives that start directly (``rt_decoder.scale`` computes it once
    on the driver).
    """
    members = []
    t0 = time.perf_counter()
    init = init_video
    if init is None and amortised is not None:
        init = amortised.decode(np.asarray(trial.responses, np.float32), neuron_weights)
    for enc in opened.encoders:
        cb = None if progress is None else (lambda it, loss, v: progress(1))
        members.append(reconstruct_single(enc, trial.responses, trial.behaviour, opened.train_mask, settings,
                                          neuron_weights=neuron_weights, callback=cb, init_video=init))
    return score_members(trial, members, settings, opened.eval_mask, time.perf_counter() - t0)


def score_members(trial: Any, members: Sequence[np.ndarray], settings: OfflineSettings, eval_mask: np.ndarray,
                  seconds: float) -> TrialResult:
    """Average the members' videos (in member order), blur, and score against ``trial.video``.

    The second half of :func:`reconstruct_trial`; ``rt_decoder.scale`` calls it with the
    member videos that Ray workers reconstructed.
    """
    members = list(members)
    mean = np.mean(np.stack(members), axis=0)
    video = blur_video(mean, settings.blur_sigma_frames, settings.blur_sigma_px)
    truth = np.asarray(trial.video, np.float32)
    metrics: dict[str, Any] = {"trial_id": int(trial.trial_id), "members": len(members),
                               "iterations": settings.iterations, "seconds": seconds}
    metrics.update(quality_report(truth, video, eval_mask).as_dict())
    metrics["video_corr_unblurred"] = quality_report(truth, mean, eval_mask).video_corr
    metrics["member_video_corr"] = [quality_report(truth, m, eval_mask).video_corr for m in members]
    return TrialResult(int(trial.trial_id), video, members, metrics)


def write_trial_outputs(out_dir: Path, result: TrialResult, truth: np.ndarray, *, figures: bool = True) -> None:
    """``<id>_recon.npy``, ``<id>_metrics.json``, and (figures) a side-by-side GIF and a PNG."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tid = result.trial_id
    np.save(out_dir / f"{tid}_recon.npy", result.video.astype(np.float32))
    (out_dir / f"{tid}_metrics.json").write_text(json.dumps(result.metrics, indent=2))
    if figures:
        from rt_decoder.recon.report import write_side_by_side, write_summary_figure

        write_side_by_side(out_dir / f"{tid}_side_by_side.gif", truth, result.video)
        shown = {k: result.metrics[k] for k in ("video_corr", "mean_frame_corr", "video_corr_full_screen")}
        write_summary_figure(out_dir / f"{tid}_summary.png", truth, result.video, shown,
                             title=f"trial {tid}: true (top) vs reconstructed (bottom)")


def summarise(results: Sequence[TrialResult]) -> dict[str, Any]:
    """Mean of the per-trial figures."""
    keys = ("video_corr", "video_corr_unblurred", "video_corr_full_screen", "mean_frame_corr")
    out: dict[str, Any] = {k: float(np.mean([r.metrics[k] for r in results])) for k in keys}
    out["trials"] = [r.trial_id for r in results]
    return out
