"""Reconstruction quality on held-out virtual-rig trials (issue: decoding quality).

    python -m benchmarks.quality [--quick] [--model DIR] [--out FILE]
    python -m benchmarks.quality --sweep [--quick] --out bench-quality-sweep.json

Two disjoint sets of held-out rig trials, neither in the model's training data (trial
content depends only on the rig seed and the trial id; the model's manifest records the
ids it was trained on):

* **validation** trials (ids ``n + 500 ...``, n = the training dataset's trial count) choose
  every setting that is tuned: the offline iteration count here, and, with ``--sweep``,
  the step rule (learning rate, gradient smoothing) and the live settings whose defaults
  the library ships;
* **scored** trials (ids ``n ...``) are only scored, with the settings fixed beforehand.

Responses are deconvolved from the rig's fluorescence by the online deconvolution stage, as
the model was trained. Settings come from the library's own defaults (``OfflineSettings``; live: the service's
``[reconstruction]`` defaults, ``ReconstructionSettings().live``), so the figures are those
of the product as shipped.

Cases (JSON keys):

* ``iterations_curve``: offline protocol, scored trials, entries ``iterations``, ``single``
  (member 0, blurred), ``ensemble`` (members' videos averaged, blurred), up to
  ``--iterations`` (published: 1000); ``validation_curve`` the same on validation trials;
  ``offline_iterations`` the count chosen on validation (``selected_on``);
* ``offline_single``, ``offline_ensemble``, ``offline_ensemble_unblurred``,
  ``offline_member_unblurred`` (mean over members of each member's unblurred video),
  ``blur_gain`` (ensemble blurred - unblurred), ``curve_fall_after_best``;
* ``amortised``: ``offline_with`` / ``offline_without`` (from grey, its own iteration count
  chosen on validation, curve to ``--iterations-without``), ``live_with`` / ``live_without``
  (lag 10), ``direct`` (the amortised decoder alone, no gradient step);
* ``live``: the live stage at each lag in budget mode on a simulated 30 Hz clock (frames
  arrive every 33.3 ms, the stage takes the newest frame whenever it is free, as the
  service's slot does; frames it never took are counted as skipped), entries
  ``lag_frames``, ``video_corr``, ``ratio_to_offline_ensemble``, ``frame_ms_median``,
  ``frame_ms_p99``, ``skipped_frames``, ``warm_start``;
* ``spectrum``: share of spatial power above 0.25 cycles/px of the true video, of the input
  gradient at grey, and of member 0's reconstruction with and without the gradient smoothing;
* ``predicted_upper_bound`` (member 0 from its own predicted responses) and
  ``neurons_curve`` (member 0 keeping 100/50/25/12.5 % of neurons), on the first
  ``--curve-trials`` scored trials;
* ``encoder_data_curve`` and ``ceiling_corr``: read from ``--data-curve`` (the JSON of
  ``python -m benchmarks.encoder_data``), which says how it was made.

Writes JSON (and PNG/GIF figures next to it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rt_decoder.recon.live import LiveSettings
from rt_decoder.recon.stage import ReconstructionSettings

VALIDATION_OFFSET = 500
DEFAULT_DATA_CURVE = Path(__file__).resolve().parent / "results" / "encoder_data_curve.json"


def _rig_config(model: Any) -> Any:
    from rt_decoder.sim import RigConfig

    training = dict(model.manifest.training)
    cfg = training.get("rig_config")
    if isinstance(cfg, dict):
        return RigConfig.from_dict(cfg)
    # the training dataset's trials are 0 .. n-1 (train + validation + test tiers)
    n = sum(int(training.get(k, 0)) for k in ("n_train_trials", "n_val_trials", "n_test_trials")) or 20
    return RigConfig(n_neurons=model.n_neurons, seed=int(training.get("rig_seed", 0)), n_trials=n)


def heldout_trials(model: Any, n_trials: int, frames: int, offset: int = 0) -> list[dict[str, Any]]:
    """Held-out trials ``n + offset ...`` of the model's rig: video, behaviour, deconvolved responses."""
    from rt_decoder.deconv import deconvolve_array
    from rt_decoder.sim import VirtualRig

    cfg = _rig_config(model)
    ds = model_deconv_settings(model)
    rig = VirtualRig(cfg)
    if not np.array_equal(rig.roi_ids, model.neuron_ids):
        raise SystemExit("the model's neuron ids are not the rig's: pass the rig config the model was trained on")
    trained = set(int(i) for i in model.manifest.training.get("trial_ids", {}).get("all", []))
    out = []
    for k in range(n_trials):
        tid = cfg.n_trials + offset + k
        if tid in trained:
            raise SystemExit(f"trial {tid} is in the model's training data")
        tr = rig.trial(tid)
        resp = deconvolve_array(tr.fluorescence, cfg.frame_rate_hz, ds)
        out.append({"trial_id": tid, "video": tr.video[:frames], "behaviour": tr.behaviour[:frames],
                    "responses": np.maximum(resp[:frames], 0.0), "rates": tr.rates[:frames],
                    "fluorescence": tr.fluorescence[:frames], "init_fluorescence": tr.fluorescence,
                    "frame_rate_hz": cfg.frame_rate_hz, "deconv_settings": ds})
    return out


def model_deconv_settings(model: Any) -> Any:
    """The DeconvSettings the model's training responses were made with (as the service uses them)."""
    from rt_decoder.deconv import DeconvSettings

    recorded = model.manifest.training.get("deconv_settings")
    return DeconvSettings.from_dict(dict(recorded)) if isinstance(recorded, dict) else DeconvSettings()


def predicted_responses(encoder: Any, video: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
    """The encoder's own responses to the true video, each frame predicted with full context."""
    W = encoder.window_frames
    T = video.shape[0]
    out = np.zeros((T, encoder.n_neurons), np.float32)
    out[:W] = encoder.forward(video[:W], behaviour[:W])
    for t in range(W, T):
        out[t] = encoder.forward(video[t - W + 1:t + 1], behaviour[t - W + 1:t + 1])[-1]
    return out


def hf_fraction(video: np.ndarray, cut: float = 0.25) -> float:
    """Share of the spatial power (each frame's mean removed) above ``cut`` cycles per pixel."""
    v = np.asarray(video, np.float64)
    v = v - v.mean(axis=(1, 2), keepdims=True)
    p = np.abs(np.fft.fft2(v)) ** 2
    f = np.sqrt(np.fft.fftfreq(v.shape[1])[:, None] ** 2 + np.fft.fftfreq(v.shape[2])[None, :] ** 2)
    total = p.sum()
    return float(p[:, f > cut].sum() / total) if total > 0 else 0.0


def simulate_live(stage: Any, fluorescence: np.ndarray, behaviour: np.ndarray, frame_rate_hz: float,
                  init_fluorescence: np.ndarray, period_ms: float = 1000 / 30,
                  recent_frames: int = 32, deconv_settings: Any = None) -> tuple[np.ndarray, list[float], int]:
    """Drive a LiveReconstructor as the service does, on a simulated real-time clock.

    Every fluorescence frame goes through the online deconvolution stage (parameters
    estimated beforehand from the trial's first frames, as after a session's initial batch);
    the reconstruction gets the activity frame and ``recent`` (the deconvolution's current
    estimates of the last frames) whenever it is free: frames arrive every ``period_ms``, a
    frame that arrives while the stage is busy replaces the one waiting (skipped).
    Returns (decoded video, per-call stage time in ms, skipped frames).
    """
    from rt_decoder.deconv import DeconvSettings, OnlineDeconvolver, estimate_parameters
    from rt_decoder.messages import FluorescenceFrame

    T, N = fluorescence.shape
    ds = deconv_settings if deconv_settings is not None else DeconvSettings()
    dec = OnlineDeconvolver(ds, N, frame_rate_hz,
                            parameters=estimate_parameters(init_fluorescence[: ds.init_frames], frame_rate_hz, ds))
    H, W = stage.frame_shape
    video = np.full((T, H, W), 127.5, np.float32)
    times: list[float] = []
    free_at = 0.0
    pending: tuple[Any, np.ndarray] | None = None
    skipped = 0
    for t in range(T):
        act = dec(FluorescenceFrame(t, t, 0, values=np.ascontiguousarray(fluorescence[t], np.float32),
                                    behaviour=behaviour[t]))
        recent = dec.recent(min(recent_frames, ds.history_frames))
        if pending is not None:
            skipped += 1
        pending = (act, recent)
        arrival = t * period_ms
        if free_at <= arrival or t == T - 1:
            frame, rec = pending
            pending = None
            start = max(arrival, free_at)
            t0 = time.perf_counter()
            for d in stage(frame, rec):
                video[d.frame_index] = d.image
            dt = (time.perf_counter() - t0) * 1e3
            times.append(dt)
            free_at = start + dt
    for d in stage.flush():      # frames still inside the lag at the end: their current estimate
        video[d.frame_index] = d.image
    return video, times, skipped


class _Runner:
    """Shared state of one benchmark run: the model, its backends, the trials, the scorer."""

    def __init__(self, args: argparse.Namespace) -> None:
        from rt_decoder.recon.runner import load_amortised, open_model
        from rt_decoder.recon.stage import DEMO_MODEL_DIR

        self.args = args
        self.model_dir = Path(args.model) if args.model else DEMO_MODEL_DIR
        self.opened = open_model(self.model_dir, threads=args.threads)
        self.encs = self.opened.encoders
        self.amortised = load_amortised(self.opened.model)
        self.test = heldout_trials(self.opened.model, args.trials, args.frames)
        self.val = heldout_trials(self.opened.model, args.val_trials, args.frames, offset=VALIDATION_OFFSET)

    def corr(self, truth: np.ndarray, v: np.ndarray) -> float:
        from rt_decoder.recon.metrics import video_correlation

        return video_correlation(truth, v, self.opened.eval_mask, self.args.skip_frames)

    def init(self, tr: dict[str, Any], amortised: bool, weights: np.ndarray | None = None) -> np.ndarray | None:
        if not amortised or self.amortised is None:
            return None
        return self.amortised.decode(tr["responses"], weights)

    def offline_snapshots(self, trials: list[dict[str, Any]], settings: Any, checkpoints: list[int], *,
                          amortised: bool, members: int = 0) -> list[list[dict[int, np.ndarray]]]:
        """[trial][member][iterations] -> video, unblurred."""
        from rt_decoder.recon.offline import reconstruct_single

        out = []
        for tr in trials:
            per_member = []
            init = self.init(tr, amortised)
            for e in self.encs[: members or len(self.encs)]:
                got: dict[int, np.ndarray] = {}
                if 0 in checkpoints:
                    got[0] = (np.full_like(tr["video"], settings.optim.init_value_px) if init is None
                              else np.clip(init, 0, 255).astype(np.float32))
                cb = lambda it, loss, v, got=got: got.__setitem__(it + 1, v.copy()) if it + 1 in checkpoints else None  # noqa: E731
                reconstruct_single(e, tr["responses"], tr["behaviour"], self.opened.train_mask,
                                   replace(settings, iterations=max(checkpoints)), callback=cb, init_video=init)
                per_member.append(got)
            out.append(per_member)
        return out

    def curve(self, trials: list[dict[str, Any]], snaps: list[list[dict[int, np.ndarray]]], settings: Any,
              checkpoints: list[int]) -> list[dict[str, float]]:
        from rt_decoder.recon.offline import blur_video

        blur = lambda v: blur_video(v, settings.blur_sigma_frames, settings.blur_sigma_px)  # noqa: E731
        curve = []
        for c in checkpoints:
            ens = np.mean([self.corr(tr["video"], blur(np.mean([m[c] for m in pm], axis=0)))
                           for tr, pm in zip(trials, snaps)])
            single = np.mean([self.corr(tr["video"], blur(pm[0][c])) for tr, pm in zip(trials, snaps)])
            curve.append({"iterations": c, "single": float(single), "ensemble": float(ens)})
        return curve

    def live(self, trials: list[dict[str, Any]], settings: LiveSettings) -> tuple[float, list[float], int, int,
                                                                                   np.ndarray]:
        """The live stage as ``serve`` builds it (``ReconstructionSettings`` defaults) with ``settings``."""
        from rt_decoder.recon import LiveReconstructor
        from rt_decoder.recon.runner import open_model

        rs = replace(ReconstructionSettings(), threads=self.args.threads, live=settings)
        op = open_model(self.model_dir, threads=rs.threads, live_frames=rs.live_frames)
        cs, times, skipped, members = [], [], 0, 0
        v = np.zeros(0)
        for tr in trials:
            stage = LiveReconstructor(op.encoders, op.train_mask, rs.live, cached_context=rs.cached_context,
                                      amortised=self.amortised)
            stage.warmup(5)
            members = stage.n_members_active
            v, ts, sk = simulate_live(stage, tr["fluorescence"], tr["behaviour"], tr["frame_rate_hz"],
                                      tr["init_fluorescence"], deconv_settings=tr["deconv_settings"])
            cs.append(self.corr(tr["video"], v))
            times += ts
            skipped += sk
        return float(np.mean(cs)), times, skipped, members, v


def _best(curve: list[dict[str, float]]) -> int:
    """Iterations of the best ensemble score (a grey start scores NaN at 0: left out)."""
    ok = [e for e in curve if np.isfinite(e["ensemble"])]
    return int(max(ok, key=lambda e: e["ensemble"])["iterations"])


def _checkpoints(n: int) -> list[int]:
    return sorted({c for c in (0, 10, 20, 50, 100, 200, 500, 1000) if c < n} | {n})


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rt_decoder.recon import OfflineSettings
    from rt_decoder.recon.offline import blur_video, reconstruct_single
    from rt_decoder.recon.runner import neuron_subset_weights

    t_start = time.perf_counter()
    r = _Runner(args)
    encs, test, val = r.encs, r.test, r.val
    W = encs[0].window_frames
    settings = OfflineSettings(window_frames=W, stride_frames=min(8, W))
    blur = lambda v: blur_video(v, settings.blur_sigma_frames, settings.blur_sigma_px)  # noqa: E731
    have_amortised = r.amortised is not None
    res: dict[str, Any] = {"selected_on": "validation"}

    # ---- offline, the shipped method (amortised start when the model has one), curve on both sets
    cps = _checkpoints(args.iterations)
    val_snaps = r.offline_snapshots(val, settings, cps, amortised=True)
    res["validation_curve"] = r.curve(val, val_snaps, settings, cps)
    best = _best(res["validation_curve"])
    res["offline_iterations"] = best
    test_snaps = r.offline_snapshots(test, settings, cps, amortised=True)
    res["iterations_curve"] = r.curve(test, test_snaps, settings, cps)
    peak = max(res["iterations_curve"], key=lambda e: e["ensemble"])
    res["curve_fall_after_best"] = float(peak["ensemble"] - min(
        e["ensemble"] for e in res["iterations_curve"] if e["iterations"] >= peak["iterations"]))
    mv = [[pm[k][best] for k in range(len(encs))] for pm in test_snaps]
    res["offline_single"] = float(np.mean([r.corr(tr["video"], blur(m[0])) for tr, m in zip(test, mv)]))
    res["ensemble_curve"] = [
        {"members": k, "video_corr": float(np.mean([r.corr(tr["video"], blur(np.mean(m[:k], axis=0)))
                                                    for tr, m in zip(test, mv)]))}
        for k in range(1, len(encs) + 1)]
    res["offline_ensemble"] = res["ensemble_curve"][-1]["video_corr"]
    res["offline_ensemble_unblurred"] = float(np.mean([r.corr(tr["video"], np.mean(m, axis=0))
                                                       for tr, m in zip(test, mv)]))
    res["offline_member_unblurred"] = float(np.mean([[r.corr(tr["video"], x) for x in m] for tr, m in zip(test, mv)]))
    res["blur_gain"] = res["offline_ensemble"] - res["offline_ensemble_unblurred"]
    ens_videos = [blur(np.mean(m, axis=0)) for m in mv]

    # ---- the live stage with the shipped defaults at each lag
    defaults = ReconstructionSettings().live      # what `serve` runs by default
    live, live_videos = [], {}
    for lag in args.lags:
        st = replace(defaults, lag_frames=lag)
        c, times, skipped, members, v = r.live(test, st)
        live_videos[lag] = v
        live.append({"lag_frames": lag, "video_corr": c, "ratio_to_offline_ensemble": c / res["offline_ensemble"],
                     "frame_ms_median": float(np.median(times)), "frame_ms_p99": float(np.percentile(times, 99)),
                     "skipped_frames": int(skipped), "members_used": members, "budget_ms": st.budget_ms,
                     "warm_start": "amortised" if (have_amortised and st.amortised_start) else st.warm_start})
    res["live"] = live

    # ---- with and without the amortised start
    if have_amortised:
        cps_wo = _checkpoints(min(args.iterations, args.iterations_without))
        val_wo = r.offline_snapshots(val, settings, cps_wo, amortised=False)
        best_wo = _best(r.curve(val, val_wo, settings, cps_wo))
        test_wo = r.offline_snapshots(test, settings, [best_wo], amortised=False)
        off_wo = float(np.mean([r.corr(tr["video"], blur(np.mean([m[best_wo] for m in pm], axis=0)))
                                for tr, pm in zip(test, test_wo)]))
        lag = 10 if 10 in args.lags else args.lags[0]
        with_c = next(e["video_corr"] for e in live if e["lag_frames"] == lag)
        without_c = r.live(test, replace(defaults, lag_frames=lag, amortised_start=False))[0]
        assert r.amortised is not None
        direct = float(np.mean([r.corr(tr["video"], r.amortised.decode(tr["responses"])) for tr in test]))
        res["amortised"] = {"offline_with": res["offline_ensemble"], "offline_without": off_wo,
                            "offline_without_iterations": best_wo, "live_lag_frames": lag,
                            "live_with": with_c, "live_without": without_c, "direct": direct,
                            "decoder": r.amortised.info}
    else:
        res["amortised"] = None

    # ---- where the high spatial frequencies come from
    tr0 = test[0]
    e0 = encs[0]
    grey = np.full((W, *tr0["video"].shape[1:]), 127.5, np.float32)
    _, g = e0.loss_and_grad(grey, tr0["behaviour"][:W], tr0["responses"][:W], np.ones(e0.n_neurons, np.float32))
    n_sp = min(200, args.iterations)
    plain = reconstruct_single(e0, tr0["responses"], tr0["behaviour"], r.opened.train_mask,
                               replace(settings, iterations=n_sp,
                                       optim=replace(settings.optim, smooth_sigma_px=0.0, smooth_sigma_frames=0.0)))
    smooth = reconstruct_single(e0, tr0["responses"], tr0["behaviour"], r.opened.train_mask,
                                replace(settings, iterations=n_sp))
    res["spectrum"] = {"cut_cycles_per_px": 0.25, "iterations": n_sp, "true_video": hf_fraction(tr0["video"]),
                       "input_gradient_at_grey": hf_fraction(np.asarray(g)),
                       "recon_unsmoothed": hf_fraction(plain), "recon_smoothed": hf_fraction(smooth),
                       "corr_unsmoothed": r.corr(tr0["video"], plain), "corr_smoothed": r.corr(tr0["video"], smooth)}

    # ---- upper bound and neurons curve (member 0, first --curve-trials scored trials)
    ct = test[: args.curve_trials]
    s_best = replace(settings, iterations=min(best, args.curve_iterations))
    res["predicted_upper_bound"] = float(np.mean([
        r.corr(tr["video"], blur(reconstruct_single(
            e0, predicted_responses(e0, tr["video"], tr["behaviour"]), tr["behaviour"], r.opened.train_mask, s_best,
            init_video=None))) for tr in ct]))
    rng = np.random.default_rng(args.seed)
    curve = []
    for frac in (1.0, 0.5, 0.25, 0.125):
        w = neuron_subset_weights(e0.n_neurons, frac, rng) if frac < 1 else None
        c = float(np.mean([r.corr(tr["video"], blur(reconstruct_single(
            e0, tr["responses"], tr["behaviour"], r.opened.train_mask, s_best, neuron_weights=w,
            init_video=r.init(tr, True, w)))) for tr in ct]))
        curve.append({"fraction": frac, "video_corr": c})
    res["neurons_curve"] = curve

    # ---- the encoder's data curve (benchmarks.encoder_data)
    dc_path = Path(args.data_curve) if args.data_curve else None
    if dc_path is not None and dc_path.is_file():
        dc = json.loads(dc_path.read_text())
        res["encoder_data_curve"] = dc.get("encoder_data_curve", [])
        res["ceiling_corr"] = dc.get("ceiling_corr")
        res["encoder_data_curve_source"] = {"file": str(dc_path), **dc.get("config", {})}
    else:
        res["encoder_data_curve"], res["ceiling_corr"] = [], r.opened.model.manifest.training.get("ceiling_corr")
    res["config"] = {"model": str(r.model_dir), "scored_trials": [tr["trial_id"] for tr in test],
                     "validation_trials": [tr["trial_id"] for tr in val], "frames": args.frames,
                     "iterations": args.iterations, "skip_frames": args.skip_frames, "threads": args.threads,
                     "members": len(encs), "window_frames": W, "seed": args.seed,
                     "offline_settings": _plain(settings), "live_settings": _plain(defaults),
                     "curve_trials": [tr["trial_id"] for tr in ct],
                     "curve_iterations": min(best, args.curve_iterations),
                     "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                 "python": platform.python_version()},
                     "seconds": time.perf_counter() - t_start}
    if args.figures and args.out:
        from rt_decoder.recon.report import write_side_by_side, write_summary_figure

        base = Path(args.out).with_suffix("")
        tr = test[-1]
        write_summary_figure(f"{base}_offline.png", tr["video"], ens_videos[-1],
                             {"video_corr": r.corr(tr["video"], ens_videos[-1])}, title="offline ensemble")
        lag = min(live_videos, key=lambda k: abs(k - 10))
        write_side_by_side(f"{base}_live_lag{lag}.gif", tr["video"], live_videos[lag])
    return res


def _plain(obj: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    return asdict(obj) if is_dataclass(obj) and not isinstance(obj, type) else obj


#: Offline step rules the sweep compares on validation trials: (learning_rate_px,
#: smooth_sigma_px, smooth_sigma_frames, decay_iterations, decay_power, amortised start)
SWEEP_OFFLINE = [
    # measured first (2026-12-01, 2 validation trials of 150 frames, member 0, unblurred at
    # 10/20/50/100/200/500 iterations): the published rule 0.392/0.337/0.223/0.155/0.127/0.111;
    # + smoothing 2 px / 1 frame 0.452/0.490/0.486/0.413/0.363/0.321; + decay d=100, p=1
    # 0.451/0.489/0.496/0.423/0.366/0.320: a 1/t decay does not stop the fall
    (1000.0, 2.0, 1.0, 30, 2.0, True),
    (1000.0, 2.0, 1.0, 30, 2.0, False),
    (1000.0, 2.0, 1.0, 100, 2.0, True),
    (1000.0, 2.0, 1.0, 10, 2.0, True),
    (300.0, 2.0, 1.0, 100, 2.0, True),
    (1000.0, 2.0, 1.0, 5, 2.0, True),
    (1000.0, 3.0, 1.0, 5, 2.0, True),
]


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Validation trials only: the offline step rules of SWEEP_OFFLINE and a live grid."""
    from rt_decoder.recon import OfflineSettings, OptimSettings

    r = _Runner(args)
    val = r.val
    W = r.encs[0].window_frames
    out: dict[str, Any] = {"selected_on": "validation", "validation_trials": [tr["trial_id"] for tr in val],
                           "frames": args.frames, "member": 0}
    cps = _checkpoints(args.iterations)
    rows = []
    for lr, sp, st, decay, power, am in SWEEP_OFFLINE:
        if am and r.amortised is None:
            continue
        s = OfflineSettings(window_frames=W, stride_frames=min(8, W),
                            optim=OptimSettings(learning_rate_px=lr, smooth_sigma_px=sp, smooth_sigma_frames=st,
                                                decay_iterations=decay, decay_power=power))
        snaps = r.offline_snapshots(val, s, cps, amortised=am, members=1)
        curve = r.curve(val, snaps, s, cps)
        unbl = [float(np.mean([r.corr(tr["video"], pm[0][c]) for tr, pm in zip(val, snaps)])) for c in cps]
        rows.append({"learning_rate_px": lr, "smooth_sigma_px": sp, "smooth_sigma_frames": st,
                     "decay_iterations": decay, "decay_power": power, "amortised": am, "iterations": cps,
                     "single_blurred": [e["single"] for e in curve], "single_unblurred": unbl})
        print(f"lr {lr:6g} smooth {sp:g}/{st:g} decay {decay:4d}^{power:g} amortised {am!s:5}: " + "  ".join(
            f"{c}:{u:.3f}/{e['single']:.3f}" for c, u, e in zip(cps, unbl, curve)), flush=True)
    out["offline"] = rows
    live_rows = []
    base = ReconstructionSettings().live
    for lr in args.sweep_live_lr:
        for steps in args.sweep_live_steps:
            for am in ([True, False] if r.amortised is not None else [False]):
                lst = replace(base, lag_frames=10, steps_per_member=steps, amortised_start=am,
                              optim=replace(base.optim, learning_rate_px=lr))
                c, times, skipped, members, _ = r.live(val, lst)
                live_rows.append({"learning_rate_px": lr, "steps_per_member": steps, "amortised": am,
                                  "video_corr": c, "frame_ms_p99": float(np.percentile(times, 99)),
                                  "skipped": skipped, "members": members})
                print(f"live lr {lr:g} steps {steps} amortised {am}: {c:.3f} (p99 {np.percentile(times, 99):.1f} "
                      f"ms, skipped {skipped}, members {members})", flush=True)
    out["live"] = live_rows
    return out


def _table(res: dict[str, Any]) -> str:
    lines = ["offline iterations (scored): " + "  ".join(f"{e['iterations']}:{e['single']:.3f}/{e['ensemble']:.3f}"
                                                      for e in res["iterations_curve"]) + "  (single/ensemble)",
             f"offline single model      {res['offline_single']:.3f}   (at {res['offline_iterations']} iterations, "
             f"chosen on validation)",
             f"offline ensemble (K={len(res['ensemble_curve'])})    {res['offline_ensemble']:.3f}   "
             f"(unblurred {res['offline_ensemble_unblurred']:.3f}, members unblurred "
             f"{res['offline_member_unblurred']:.3f})",
             f"predicted upper bound     {res['predicted_upper_bound']:.3f}",
             "neurons kept:  " + "  ".join(f"{e['fraction']:g}:{e['video_corr']:.3f}" for e in res["neurons_curve"]),
             "live: lag  corr   ratio  frame_ms p50/p99   skipped  members  start"]
    for e in res["live"]:
        lines.append(f"      {e['lag_frames']:3d}  {e['video_corr']:.3f}  {e['ratio_to_offline_ensemble']:.2f}   "
                     f"{e['frame_ms_median']:6.1f}/{e['frame_ms_p99']:6.1f}     {e['skipped_frames']:5d}    "
                     f"{e['members_used']}  {e['warm_start']}")
    a = res.get("amortised")
    if a:
        lines.append(f"amortised start: offline {a['offline_with']:.3f} vs {a['offline_without']:.3f} without; "
                     f"live (lag {a['live_lag_frames']}) {a['live_with']:.3f} vs {a['live_without']:.3f}; "
                     f"decoder alone {a['direct']:.3f}")
    s = res["spectrum"]
    lines.append(f"power above 0.25 cyc/px: true {s['true_video']:.3f}, gradient {s['input_gradient_at_grey']:.3f}, "
                 f"recon unsmoothed {s['recon_unsmoothed']:.3f}, smoothed {s['recon_smoothed']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1 scored + 1 validation trial of 150 frames, 100 iterations, lags 5/10")
    p.add_argument("--model", default="", help="model directory (default: the shipped demo model)")
    p.add_argument("--out", default="", help="JSON output file")
    p.add_argument("--trials", type=int, default=3, help="scored held-out trials")
    p.add_argument("--val-trials", type=int, default=2, help="validation held-out trials")
    p.add_argument("--frames", type=int, default=300, help="frames per trial")
    p.add_argument("--iterations", type=int, default=1000, help="most offline iterations (published: 1000)")
    p.add_argument("--iterations-without", type=int, default=200,
                   help="most offline iterations of the comparison run without the amortised start")
    p.add_argument("--lags", type=int, nargs="+", default=[5, 10, 15])
    p.add_argument("--curve-trials", type=int, default=1,
                   help="scored trials used for the upper bound and the neurons curve")
    p.add_argument("--curve-iterations", type=int, default=200,
                   help="at most this many iterations for the upper bound and the neurons curve")
    p.add_argument("--data-curve", default=str(DEFAULT_DATA_CURVE),
                   help="JSON of python -m benchmarks.encoder_data (default: the committed result)")
    p.add_argument("--skip-frames", type=int, default=30, help="leading frames left out of the score")
    p.add_argument("--threads", type=int, default=ReconstructionSettings().threads,
                   help="encoder threads (default: the service's [reconstruction] threads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", dest="figures", action="store_false")
    p.add_argument("--sweep", action="store_true",
                   help="validation trials only: compare the step rules of SWEEP_OFFLINE and a live grid")
    p.add_argument("--sweep-live-lr", type=float, nargs="+", default=[100.0, 300.0])
    p.add_argument("--sweep-live-steps", type=int, nargs="+", default=[2, 3])
    args = p.parse_args(argv)
    if args.quick:
        args.trials, args.val_trials, args.frames, args.iterations, args.lags = 1, 1, 150, 100, [5, 10]
        args.iterations_without = min(args.iterations_without, 100)
    if args.sweep:
        res = sweep(args)
    else:
        res = run(args)
        print(_table(res))
        print(f"({res['config']['seconds']:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(_finite(res), indent=2, allow_nan=False))
    return 0


def _finite(obj: Any) -> Any:
    """NaN (the correlation of a constant video, e.g. a grey start) -> null, so the JSON is valid."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


if __name__ == "__main__":
    raise SystemExit(main())
