"""Training of the encoder ensemble on a Sensorium-layout dataset (imports torch).

Driver: :func:`train_model` -> a model directory (``rt_decoder.encoder.manifest``).

* split by tier: "train" trials are fitted; "oracle" trials drive early stopping
  (validation correlation); test tiers ("final_test_main", "live_test_main", ... "test")
  are held out and only scored at the end. Without an "oracle" tier, ``val_fraction`` of
  the train trials (every k-th) validate.
* loss: Poisson NLL over random ``chunk_frames`` crops of train trials, frames after the
  first ``temporal_kernel - 1`` of each crop (steady state); AdamW; early stopping on the
  Sensorium metric (per-neuron Pearson correlation over time, first 50 frames of each
  trial skipped, mean over neurons) on whole validation trials.
* readout positions start at each neuron's best-correlated cell of a coarse (9x16)
  luminance / contrast-energy map of the video (lags 0-8 frames), then are learned.
* reproducible from the seed: member k uses seed + k for ``torch.manual_seed`` and a
  ``torch.Generator`` for crops; deterministic algorithms; the thread count is recorded.
* alpha mask: mean |d(population response)/d pixel| over training windows, of all members,
  smoothed (sigma 1 px); alpha = sensitivity / (0.5 x its 99th percentile), so the
  evaluation mask (alpha >= 1) holds the pixels with at least half the peak sensitivity and
  the training mask (alpha >= 0.5) those with at least a quarter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from rt_decoder.encoder.config import FEATURE_SHAPE, FRAME_SHAPE, ArchConfig, TrainConfig
from rt_decoder.encoder.manifest import Manifest, MemberInfo, save_masks, sha256_file, write_manifest
from rt_decoder.encoder.params import save_params
from rt_decoder.encoder.torch_model import Encoder, poisson_loss
from rt_decoder.errors import ConfigError, DataFormatError
from rt_decoder.recon.amortised import AmortisedSettings

log = logging.getLogger("rt_decoder.encoder.train")

TEST_TIERS = ("final_test_main", "final_test_bonus", "live_test_main", "live_test_bonus", "test")


@dataclass(frozen=True)
class TrialArrays:
    """One trial in memory, time-major float32: video (T,36,64) px, responses (T,N), behaviour (T,4)."""

    trial_id: int
    video: np.ndarray
    responses: np.ndarray
    behaviour: np.ndarray
    rates: np.ndarray | None = None


@dataclass(frozen=True)
class DataSplit:
    train: list[TrialArrays]
    val: list[TrialArrays]
    test: list[TrialArrays]
    neuron_ids: np.ndarray
    frame_rate_hz: float
    data_hash: str
    responses_source: str
    #: the virtual rig's configuration when the dataset was simulated (meta/rig.json), else None
    rig_config: dict[str, Any] | None = None
    #: the DeconvSettings keys that made the responses, when the dataset records them
    deconv_settings: dict[str, Any] | None = None

    def trial_ids(self) -> dict[str, list[int]]:
        """Trial ids of each part, as recorded in the model's manifest."""
        parts = {"train": [t.trial_id for t in self.train], "val": [t.trial_id for t in self.val],
                 "test": [t.trial_id for t in self.test]}
        return {**parts, "all": sorted(parts["train"] + parts["val"] + parts["test"])}


def load_split(data_dir: str | Path, val_fraction: float = 0.2) -> DataSplit:
    """Read a Sensorium-layout dataset and split it by tier (see module docstring)."""
    from rt_decoder.io.sensorium import load_dataset

    ds = load_dataset(data_dir)
    h = hashlib.sha256()
    trials: dict[str, list[TrialArrays]] = {"train": [], "val": [], "test": []}
    tiers = ds.tiers
    has_oracle = any(t == "oracle" for t in tiers.values())
    train_ids = [i for i in ds.trial_ids if tiers[i] == "train"]
    if not train_ids:
        raise DataFormatError(f"{data_dir}: no trials in tier 'train'")
    k = max(2, int(round(1.0 / val_fraction)))
    for i in ds.trial_ids:
        tier = tiers[i]
        if tier == "train":
            part = "val" if (not has_oracle and train_ids.index(i) % k == k - 1) else "train"
        elif tier == "oracle":
            part = "val"
        elif tier in TEST_TIERS:
            part = "test"
        else:
            continue
        tr = ds.trial(i)
        arr = TrialArrays(i, np.asarray(tr.video, np.float32), np.maximum(np.asarray(tr.responses, np.float32), 0),
                          np.asarray(tr.behaviour, np.float32),
                          None if tr.rates is None else np.asarray(tr.rates, np.float32))
        h.update(f"{i}:{tier}:{arr.video.shape}".encode())
        h.update(arr.responses.tobytes())
        h.update(arr.video.tobytes())
        trials[part].append(arr)
    if not trials["val"]:
        raise DataFormatError(f"{data_dir}: no validation trials (need an 'oracle' tier or >= {k} train trials)")
    meta = ds.meta if isinstance(ds.meta, dict) else {}
    fr = float(meta.get("frame_rate_hz", meta.get("config", {}).get("frame_rate_hz", 30.0))) if meta else 30.0
    source = str(meta.get("responses_source", "unknown (dataset responses)")) if meta else "dataset responses"
    rig = meta.get("rig_config") if meta else None
    dsets = meta.get("responses_deconv_settings") if meta else None
    return DataSplit(trials["train"], trials["val"], trials["test"], np.asarray(ds.unit_ids, np.int64), fr,
                     h.hexdigest(), source, dict(rig) if isinstance(rig, dict) else None,
                     dict(dsets) if isinstance(dsets, dict) else None)


# ------------------------------------------------------------------------------- metrics
def per_neuron_corr(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson correlation over time per neuron, (T, N) x (T, N) -> (N,); 0 where constant."""
    p = pred.astype(np.float64) - pred.mean(0)
    t = target.astype(np.float64) - target.mean(0)
    den = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    out = np.zeros(p.shape[1])
    ok = den > 0
    out[ok] = (p * t).sum(0)[ok] / den[ok]
    return out


def predict_trial(net: Encoder, video: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
    """Whole-trial prediction (T, N), causal context carried through the trial."""
    with torch.no_grad():
        return net(torch.from_numpy(video)[None], torch.from_numpy(behaviour)[None])[0].numpy()


def sensorium_corr(net: Encoder, trials: Sequence[TrialArrays], skip: int = 50,
                   against: str = "responses") -> float:
    """Single-trial correlation (Sensorium metric): frames of all trials concatenated, first ``skip`` of each left out."""
    preds, targs = [], []
    for tr in trials:
        p = predict_trial(net, tr.video, tr.behaviour)
        target = tr.responses if against == "responses" else tr.rates
        if target is None:
            continue
        preds.append(p[skip:])
        targs.append(target[skip:])
    if not preds:
        return float("nan")
    return float(per_neuron_corr(np.concatenate(preds), np.concatenate(targs)).mean())


def ceiling_corr(trials: Sequence[TrialArrays], skip: int = 50) -> float | None:
    """The rig's ceiling: correlation of the noiseless rates with the recorded responses."""
    if not trials or any(t.rates is None for t in trials):
        return None
    r = np.concatenate([t.rates[skip:] for t in trials])  # type: ignore[index]
    y = np.concatenate([t.responses[skip:] for t in trials])
    return float(per_neuron_corr(r, y).mean())


# ------------------------------------------------------------------------------- init
def _energy_features(video: np.ndarray) -> list[np.ndarray]:
    """Band-pass (difference-of-Gaussians) energy pooled on the 9x16 grid, two bands, (T, 144) each."""
    hf, wf = FEATURE_SHAPE
    v = (np.asarray(video, np.float32) - 127.5) / 127.5
    out = []
    for s1, s2 in ((1.0, 2.0), (2.0, 4.0)):
        d = ndimage.gaussian_filter(v, (0, s1, s1)) - ndimage.gaussian_filter(v, (0, s2, s2))
        e = (d * d).reshape(len(v), hf, 4, wf, 4).mean(axis=(2, 4)).reshape(len(v), -1)
        out.append((e - e.mean(0)) / (e.std(0) + 1e-6))
    return out


def initial_positions(trials: Sequence[TrialArrays], lags: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """Per-neuron start position (N, 2) (y, x) in feature cells.

    The cell (9x16 grid) whose band-pass contrast energy correlates best with the
    neuron's response at short lags (3x3-smoothed map), refined to the centroid of the
    positive map in the 3x3 neighbourhood. On the virtual rig about 40% of neurons start
    within 1.5 cells (6 px) of their true receptive field; training refines the rest.
    """
    hf, wf = FEATURE_SHAPE
    acc: np.ndarray | None = None
    for tr in trials:
        y = tr.responses - tr.responses.mean(0)
        y = y / (y.std(0) + 1e-6)
        for f in _energy_features(tr.video):
            for lag in lags:
                c = f[: len(f) - lag].T @ y[lag:] / len(f)
                acc = c if acc is None else acc + c
    assert acc is not None
    m = ndimage.uniform_filter(acc.reshape(hf, wf, -1), size=(3, 3, 1), mode="nearest")
    best = m.reshape(hf * wf, -1).argmax(0)
    by, bx = best // wf, best % wf
    pos = np.stack([by, bx], axis=1).astype(np.float64)
    mp = np.maximum(acc.reshape(hf, wf, -1), 0)
    num = np.zeros((len(best), 2))
    den = np.zeros(len(best))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            yy = np.clip(by + dy, 0, hf - 1)
            xx = np.clip(bx + dx, 0, wf - 1)
            w = mp[yy, xx, np.arange(len(best))]
            num += w[:, None] * np.stack([yy, xx], 1)
            den += w
    ok = den > 0
    pos[ok] = num[ok] / den[ok, None]
    return pos.astype(np.float32)


def _stats(trials: Sequence[TrialArrays]) -> dict[str, Any]:
    v = np.concatenate([t.video.reshape(-1) for t in trials])
    b = np.concatenate([t.behaviour for t in trials])
    return {"video_mean": float(v.mean()), "video_std": float(max(v.std(), 1e-3)),
            "behaviour_mean": b.mean(0).astype(np.float32), "behaviour_std": np.maximum(b.std(0), 1e-3).astype(np.float32)}


# ------------------------------------------------------------------------------- training
def train_member(split: DataSplit, arch: ArchConfig, cfg: TrainConfig, seed: int,
                 progress: Callable[[str], None] | None = None, positions: np.ndarray | None = None) -> tuple[Encoder, dict]:
    """Train one member; returns the best (by validation correlation) model and its history."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n = split.train[0].responses.shape[1]
    net = Encoder(arch, n)
    st = _stats(split.train)
    mean_resp = np.concatenate([t.responses for t in split.train]).mean(0)
    net.init_weights(gen, mean_response=mean_resp, positions=positions)
    with torch.no_grad():
        net.video_mean.fill_(st["video_mean"])
        net.video_std.fill_(st["video_std"])
        net.behaviour_mean.copy_(torch.from_numpy(st["behaviour_mean"]))
        net.behaviour_std.copy_(torch.from_numpy(st["behaviour_std"]))
    no_decay = {"readout_b", "conv1_b", "conv2_b", "temporal_b", "pointwise_b"}
    named = dict(net.named_parameters())
    groups = [{"params": [p for k, p in named.items() if k not in no_decay | {"readout_pos"}],
               "weight_decay": cfg.weight_decay},
              {"params": [named[k] for k in sorted(no_decay)], "weight_decay": 0.0},
              # positions are in feature cells: a larger step lets them travel a few cells
              {"params": [named["readout_pos"]], "weight_decay": 0.0, "lr": cfg.learning_rate * 3}]
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate)
    L = cfg.chunk_frames
    burn = min(arch.temporal_kernel - 1, L - 1)
    lengths = [len(t.video) for t in split.train]
    total = sum(max(1, lf - L + 1) for lf in lengths)
    steps_per_epoch = max(1, int(math.ceil(sum(lengths) / (L * cfg.batch_chunks))))
    best, best_state, bad, history = -np.inf, None, 0, []
    t0 = time.perf_counter()
    net.eval()
    initial_val = sensorium_corr(net, split.val, cfg.skip_frames_eval)
    for epoch in range(cfg.epochs):
        net.train()
        losses = []
        for _ in range(steps_per_epoch):
            vids, behs, ys = [], [], []
            for _ in range(cfg.batch_chunks):
                j = int(rng.integers(total))
                ti = 0
                while j >= max(1, lengths[ti] - L + 1):
                    j -= max(1, lengths[ti] - L + 1)
                    ti += 1
                tr = split.train[ti]
                s = slice(j, j + L)
                vids.append(tr.video[s]); behs.append(tr.behaviour[s]); ys.append(tr.responses[s])
            if any(len(v) != L for v in vids):
                m = min(len(v) for v in vids)
                vids, behs, ys = [v[:m] for v in vids], [b[:m] for b in behs], [y[:m] for y in ys]
            pred = net(torch.from_numpy(np.stack(vids)), torch.from_numpy(np.stack(behs)))
            loss = poisson_loss(pred[:, burn:], torch.from_numpy(np.stack(ys))[:, burn:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        net.eval()
        val = sensorium_corr(net, split.val, cfg.skip_frames_eval)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_corr": val,
                        "seconds": time.perf_counter() - t0})
        msg = f"seed {seed} epoch {epoch}: train loss {np.mean(losses):.5f}, val corr {val:.4f}"
        log.info(msg)
        if progress:
            progress(msg)
        if val > best + 1e-4:
            best, bad = val, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience_epochs:
                break
        if cfg.max_minutes and time.perf_counter() - t0 > cfg.max_minutes * 60:
            log.info("seed %d: stopping at the %.1f min cap", seed, cfg.max_minutes)
            break
    assert best_state is not None
    net.load_state_dict(best_state)
    net.eval()
    return net, {"history": history, "initial_val_corr": initial_val, "best_val_corr": float(best),
                 "seconds": time.perf_counter() - t0}


def sensitivity_map(nets: Sequence[Encoder], trials: Sequence[TrialArrays], n_windows: int = 8,
                    window: int = 16, seed: int = 0) -> np.ndarray:
    """Mean |d sum_n r_n(last frame) / d video| over windows and members, (36, 64)."""
    rng = np.random.default_rng(seed)
    acc = np.zeros(FRAME_SHAPE)
    for net in nets:
        for _ in range(n_windows):
            tr = trials[int(rng.integers(len(trials)))]
            s = int(rng.integers(max(1, len(tr.video) - window + 1)))
            v = torch.from_numpy(tr.video[s:s + window].copy())[None].requires_grad_(True)
            b = torch.from_numpy(tr.behaviour[s:s + window].copy())[None]
            r = net(v, b)
            (g,) = torch.autograd.grad(r[0, -1].sum(), v)
            acc += np.abs(g[0].numpy()).sum(0)
    return acc


def alpha_from_sensitivity(sens: np.ndarray) -> np.ndarray:
    """alpha = smoothed sensitivity / (0.5 x its 99th percentile) (see module docstring)."""
    s = ndimage.gaussian_filter(np.asarray(sens, np.float64), 1.0)
    ref = np.percentile(s, 99)
    return (s / (0.5 * ref) if ref > 0 else np.ones_like(s)).astype(np.float32)


#: Trains the members of seeds ``seeds`` from ``positions``; returns (model, history) per seed, in order.
MemberTrainer = Callable[[DataSplit, ArchConfig, TrainConfig, Sequence[int], np.ndarray], list[tuple[Encoder, dict]]]


def train_model(split: DataSplit, out_dir: str | Path, *, arch: ArchConfig | None = None,
                cfg: TrainConfig | None = None, ensemble: int = 1, seed: int = 0, window_frames: int = 32,
                progress: Callable[[str], None] | None = None,
                amortised: AmortisedSettings | None = AmortisedSettings(),
                train_members: MemberTrainer | None = None) -> Manifest:
    """Train ``ensemble`` members (seeds seed..seed+K-1), write the model directory, return its manifest.

    With ``amortised`` settings (the default) the amortised decoder
    (``rt_decoder.recon.amortised``) is fitted on the same training trials, its ridge
    chosen on the validation trials, and written beside the members. The manifest records
    the trial ids of every part and the rig configuration, when the data was simulated.
    ``train_members`` (default: :func:`train_member` for each seed, one after the other, here)
    lets ``rt_decoder.scale`` train the members elsewhere with the same function.
    """
    arch = arch or ArchConfig()
    cfg = cfg or TrainConfig()
    if ensemble < 1:
        raise ConfigError(f"ensemble must be >= 1, got {ensemble}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    positions = initial_positions(split.train)
    seeds = [seed + k for k in range(ensemble)]
    if train_members is None:
        trained = [train_member(split, arch, cfg, s, progress, positions) for s in seeds]
    else:
        trained = train_members(split, arch, cfg, seeds, positions)
    nets, members, histories = [], [], []
    for k, (net, info) in enumerate(trained):
        mdir = out / f"member_{k}"
        mdir.mkdir(exist_ok=True)
        save_params(mdir / "weights.npz", net.to_numpy())
        (mdir / "history.json").write_text(json.dumps(info, indent=1))
        members.append(MemberInfo(name=f"member_{k}", seed=seed + k, weights_sha256=sha256_file(mdir / "weights.npz"),
                                  val_corr=info["best_val_corr"]))
        nets.append(net)
        histories.append(info)
    alpha = alpha_from_sensitivity(sensitivity_map(nets, split.train, seed=seed))
    save_masks(out / "alpha.npz", alpha)
    amortised_entry: dict[str, Any] = {}
    if amortised is not None:
        from rt_decoder.recon.amortised import FILE_NAME, fit_amortised

        ids = split.trial_ids()
        dec = fit_amortised([(t.video, t.responses) for t in split.train], [(t.video, t.responses) for t in split.val],
                            amortised, eval_mask=alpha >= 1.0, seed=seed,
                            fitted_on={"train_trials": ids["train"], "val_trials": ids["val"],
                                       "data_hash": split.data_hash})
        dec.save(out / FILE_NAME)
        amortised_entry = {"file": FILE_NAME, "sha256": sha256_file(out / FILE_NAME),
                           "val_corr": dec.info["val_corr"], "ridge": dec.info["ridge"],
                           "settings": dec.info["settings"]}
        log.info("amortised decoder: validation corr %.3f (ridge %g)", dec.info["val_corr"], dec.info["ridge"])
    np.save(out / "neuron_ids.npy", split.neuron_ids.astype(np.int64), allow_pickle=False)
    test = split.test or split.val
    skip = cfg.skip_frames_eval
    heldout = [sensorium_corr(n, test, skip) for n in nets]
    ens_corr = _ensemble_corr(nets, test, skip)
    params0 = nets[0].to_numpy()
    n_params = int(sum(p.numel() for p in nets[0].parameters()))
    st = {k: (v.tolist() if isinstance(v, np.ndarray) else float(v)) for k, v in
          {"video_mean": params0["video_mean"], "video_std": params0["video_std"],
           "behaviour_mean": params0["behaviour_mean"], "behaviour_std": params0["behaviour_std"]}.items()}
    st["pixel_range"] = [0.0, 255.0]
    man = Manifest(
        arch=arch, n_neurons=int(split.neuron_ids.size), frame_rate_hz=split.frame_rate_hz,
        window_frames=window_frames, normalisation=st, members=tuple(members),
        training={"data_hash": split.data_hash, "seed": seed, "ensemble": ensemble,
                  "responses_source": split.responses_source, "train_config": cfg.to_dict(),
                  "n_train_trials": len(split.train), "n_val_trials": len(split.val),
                  "n_test_trials": len(split.test), "heldout_split": "test tiers" if split.test else "validation",
                  "heldout_corr_members": heldout, "heldout_corr_ensemble": ens_corr,
                  "ceiling_corr": ceiling_corr(test, skip), "n_parameters": n_params,
                  "torch_threads": torch.get_num_threads(), "train_seconds": time.perf_counter() - t0,
                  "trial_ids": split.trial_ids(), "rig_config": split.rig_config,
                  "deconv_settings": split.deconv_settings,
                  "rig_seed": None if split.rig_config is None else split.rig_config.get("seed")},
        masks={"file": "alpha.npz", "train_threshold": 0.5, "eval_threshold": 1.0,
               "method": "mean |input gradient| of the population response, sigma 1 px, / (0.5 x p99)"},
        amortised=amortised_entry,
    )
    write_manifest(out, man)
    return man


def _ensemble_corr(nets: Sequence[Encoder], trials: Sequence[TrialArrays], skip: int) -> float:
    preds, targs = [], []
    for tr in trials:
        preds.append(np.mean([predict_trial(n, tr.video, tr.behaviour) for n in nets], axis=0)[skip:])
        targs.append(tr.responses[skip:])
    return float(per_neuron_corr(np.concatenate(preds), np.concatenate(targs)).mean())
