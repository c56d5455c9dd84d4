"""Reconstruction quality on held-out virtual-rig trials (issue: reconstruction).

    python -m benchmarks.quality [--quick] [--model DIR] [--out FILE]

Cases (all on the same held-out trials, responses deconvolved from the rig's
fluorescence by the live deconvolution stage, as the model was trained):

* ``offline_single``      member 0, published protocol (windows, normalisation, blur)
* ``offline_ensemble``    all members reconstruct separately, videos averaged, blurred
* ``ensemble_curve``      video correlation vs ensemble size 1..K
* ``predicted_upper_bound`` member 0 reconstructing from its own predicted responses
* ``neurons_curve``       offline single model keeping 100 / 50 / 25 / 12.5 % of neurons
* ``live``                the live stage at lags 5 / 10 / 15 / 30 frames, in budget mode on
  a simulated 30 Hz clock: frames arrive every 33.3 ms, the stage takes the newest frame
  whenever it is free (as the service's slot does), frames it never took are skipped;
  per-frame processing time median / p99 measured.

Held-out trials are rig trials the model never saw: ids >= the training dataset's
n_trials (the rig's ``--heldout`` convention), from the rig configuration recorded with
the model (or the default virtual rig). Writes JSON (and PNG figures next to it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from rt_decoder.messages import ActivityFrame


def _rig_config(model: Any) -> Any:
    from rt_decoder.sim import RigConfig

    training = dict(model.manifest.training)
    cfg = training.get("rig_config")
    if isinstance(cfg, dict):
        return RigConfig.from_dict(cfg)
    # the training dataset's trials are 0 .. n-1 (train + validation + test tiers)
    n = sum(int(training.get(k, 0)) for k in ("n_train_trials", "n_val_trials", "n_test_trials")) or 20
    return RigConfig(n_neurons=model.n_neurons, seed=int(training.get("rig_seed", 0)), n_trials=n)


def heldout_trials(model: Any, n_trials: int, frames: int) -> list[dict[str, np.ndarray]]:
    """Held-out trials of the model's rig: true video, behaviour, deconvolved responses, rates."""
    from rt_decoder.deconv import deconvolve_array
    from rt_decoder.sim import VirtualRig

    cfg = _rig_config(model)
    rig = VirtualRig(cfg)
    if not np.array_equal(rig.roi_ids, model.neuron_ids):
        raise SystemExit("the model's neuron ids are not the rig's: pass the rig config the model was trained on")
    out = []
    for k in range(n_trials):
        tid = cfg.n_trials + k
        tr = rig.trial(tid)
        resp = deconvolve_array(tr.fluorescence, cfg.frame_rate_hz)
        out.append({"trial_id": tid, "video": tr.video[:frames], "behaviour": tr.behaviour[:frames],
                    "responses": np.maximum(resp[:frames], 0.0), "rates": tr.rates[:frames],
                    "fluorescence": tr.fluorescence[:frames], "init_fluorescence": tr.fluorescence,
                    "frame_rate_hz": cfg.frame_rate_hz})
    return out


def predicted_responses(encoder: Any, video: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
    """The encoder's own responses to the true video, each frame predicted with full context."""
    W = encoder.window_frames
    T = video.shape[0]
    out = np.zeros((T, encoder.n_neurons), np.float32)
    first = encoder.forward(video[:W], behaviour[:W])
    out[:W] = first
    for t in range(W, T):
        out[t] = encoder.forward(video[t - W + 1:t + 1], behaviour[t - W + 1:t + 1])[-1]
    return out


def simulate_live(stage: Any, fluorescence: np.ndarray, behaviour: np.ndarray, frame_rate_hz: float,
                  init_fluorescence: np.ndarray, period_ms: float = 1000 / 30,
                  recent_frames: int = 32) -> tuple[np.ndarray, list[float], int]:
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
    ds = DeconvSettings()
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rt_decoder.recon import LiveReconstructor, LiveSettings, OfflineSettings, OptimSettings
    from rt_decoder.recon.metrics import video_correlation
    from rt_decoder.recon.offline import blur_video, reconstruct_single
    from rt_decoder.recon.runner import neuron_subset_weights, open_model
    from rt_decoder.recon.stage import DEMO_MODEL_DIR

    model_dir = Path(args.model) if args.model else DEMO_MODEL_DIR
    t_start = time.perf_counter()
    opened = open_model(model_dir, threads=args.threads)
    encs, mask, emask = opened.encoders, opened.train_mask, opened.eval_mask
    trials = heldout_trials(opened.model, args.trials, args.frames)
    W = encs[0].window_frames
    settings = OfflineSettings(window_frames=W, stride_frames=min(8, W), iterations=args.iterations,
                               optim=OptimSettings(learning_rate_px=args.lr))
    skip = args.skip_frames

    def corr(truth: np.ndarray, v: np.ndarray) -> float:
        return video_correlation(truth, v, emask, skip)

    def offline(enc: Any, tr: dict[str, np.ndarray], resp: np.ndarray | None = None,
                weights: np.ndarray | None = None) -> np.ndarray:
        return reconstruct_single(enc, tr["responses"] if resp is None else resp, tr["behaviour"], mask, settings,
                                  neuron_weights=weights)

    blur = lambda v: blur_video(v, settings.blur_sigma_frames, settings.blur_sigma_px)  # noqa: E731
    res: dict[str, Any] = {}
    # every member on every trial, with snapshots along the iterations: the offline figures
    # are taken at the iteration count that scores best (an optimistic offline baseline, so
    # the live/offline ratio below is conservative)
    checkpoints = sorted({c for c in (10, 20, 40, 80, 160, 320, 640, 1000) if c < args.iterations} | {args.iterations})
    snaps: list[list[dict[int, np.ndarray]]] = []
    for tr in trials:
        per_member = []
        for e in encs:
            got: dict[int, np.ndarray] = {}
            cb = lambda it, loss, v, got=got: got.__setitem__(it + 1, v.copy()) if it + 1 in checkpoints else None  # noqa: E731
            reconstruct_single(e, tr["responses"], tr["behaviour"], mask, settings, callback=cb)
            per_member.append(got)
        snaps.append(per_member)
    curve_it = []
    for c in checkpoints:
        ens = np.mean([corr(tr["video"], blur(np.mean([m[c] for m in pm], axis=0))) for tr, pm in zip(trials, snaps)])
        single = np.mean([corr(tr["video"], blur(pm[0][c])) for tr, pm in zip(trials, snaps)])
        curve_it.append({"iterations": c, "single": float(single), "ensemble": float(ens)})
    res["iterations_curve"] = curve_it
    best = max(curve_it, key=lambda e: e["ensemble"])["iterations"]
    res["offline_iterations"] = best
    settings = OfflineSettings(window_frames=W, stride_frames=min(8, W), iterations=best,
                               optim=OptimSettings(learning_rate_px=args.lr))
    members_videos = [[pm[k][best] for k in range(len(encs))] for pm in snaps]
    res["offline_single"] = float(np.mean([corr(tr["video"], blur(mv[0])) for tr, mv in zip(trials, members_videos)]))
    res["ensemble_curve"] = [
        {"members": k, "video_corr": float(np.mean([corr(tr["video"], blur(np.mean(mv[:k], axis=0)))
                                                    for tr, mv in zip(trials, members_videos)]))}
        for k in range(1, len(encs) + 1)]
    res["offline_ensemble"] = res["ensemble_curve"][-1]["video_corr"]
    res["offline_ensemble_unblurred"] = float(np.mean([corr(tr["video"], np.mean(mv, axis=0))
                                                       for tr, mv in zip(trials, members_videos)]))
    ens_videos = [blur(np.mean(mv, axis=0)) for mv in members_videos]
    res["predicted_upper_bound"] = float(np.mean([
        corr(tr["video"], blur(offline(encs[0], tr, resp=predicted_responses(encs[0], tr["video"], tr["behaviour"]))))
        for tr in trials]))
    rng = np.random.default_rng(args.seed)
    curve = []
    for frac in (1.0, 0.5, 0.25, 0.125):
        if frac == 1.0:
            c = res["offline_single"]
        else:
            w = neuron_subset_weights(encs[0].n_neurons, frac, rng)
            c = float(np.mean([corr(tr["video"], blur(offline(encs[0], tr, weights=w))) for tr in trials]))
        curve.append({"fraction": frac, "video_corr": c})
    res["neurons_curve"] = curve
    live = []
    live_videos = {}
    for lag in args.lags:
        op = open_model(model_dir, threads=args.threads, live_frames=lag + 1)
        st = LiveSettings(lag_frames=lag, budget_ms=args.budget_ms, steps_per_member=args.live_steps,
                          blur_sigma_px=args.live_blur_px, blur_sigma_frames=args.live_blur_frames,
                          target_ramp_frames=args.target_ramp, warm_start_decay=args.warm_start_decay,
                          optim=OptimSettings(learning_rate_px=args.live_lr))
        cs, times, skipped, members = [], [], 0, 0
        for tr in trials:
            stage = LiveReconstructor(op.encoders, op.train_mask, st)
            stage.warmup(5)
            members = stage.n_members_active
            v, ts, sk = simulate_live(stage, tr["fluorescence"], tr["behaviour"], tr["frame_rate_hz"],
                                      tr["init_fluorescence"])
            cs.append(corr(tr["video"], v))
            times += ts
            skipped += sk
            live_videos[lag] = v
        live.append({"lag_frames": lag, "video_corr": float(np.mean(cs)),
                     "ratio_to_offline_ensemble": float(np.mean(cs) / res["offline_ensemble"]),
                     "frame_ms_median": float(np.median(times)), "frame_ms_p99": float(np.percentile(times, 99)),
                     "skipped_frames": int(skipped), "members_used": members, "budget_ms": args.budget_ms})
    res["live"] = live
    res["config"] = {"model": str(model_dir), "trials": [tr["trial_id"] for tr in trials], "frames": args.frames,
                     "iterations": args.iterations, "lr_px": args.lr, "skip_frames": skip, "threads": args.threads,
                     "members": len(encs), "window_frames": W, "seed": args.seed,
                     "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                 "python": platform.python_version()},
                     "seconds": time.perf_counter() - t_start}
    if args.figures and args.out:
        from rt_decoder.recon.report import write_side_by_side, write_summary_figure

        base = Path(args.out).with_suffix("")
        tr = trials[-1]
        write_summary_figure(f"{base}_offline.png", tr["video"], ens_videos[-1],
                             {"video_corr": corr(tr["video"], ens_videos[-1])}, title="offline ensemble")
        lag = min(live_videos, key=lambda k: abs(k - 10))
        write_side_by_side(f"{base}_live_lag{lag}.gif", tr["video"], live_videos[lag])
    return res


def _table(res: dict[str, Any]) -> str:
    lines = ["offline iterations: " + "  ".join(f"{e['iterations']}:{e['single']:.3f}/{e['ensemble']:.3f}"
                                             for e in res["iterations_curve"]) + "  (single/ensemble)",
             f"offline single model      {res['offline_single']:.3f}   (at {res['offline_iterations']} iterations)",
             f"offline ensemble (K={len(res['ensemble_curve'])})    {res['offline_ensemble']:.3f}",
             f"predicted upper bound     {res['predicted_upper_bound']:.3f}",
             "ensemble size: " + "  ".join(f"{e['members']}:{e['video_corr']:.3f}" for e in res["ensemble_curve"]),
             "neurons kept:  " + "  ".join(f"{e['fraction']:g}:{e['video_corr']:.3f}" for e in res["neurons_curve"]),
             "live: lag  corr   ratio  frame_ms p50/p99   skipped  members"]
    for e in res["live"]:
        lines.append(f"      {e['lag_frames']:3d}  {e['video_corr']:.3f}  {e['ratio_to_offline_ensemble']:.2f}   "
                     f"{e['frame_ms_median']:6.1f}/{e['frame_ms_p99']:6.1f}     {e['skipped_frames']:5d}    "
                     f"{e['members_used']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 trial of 150 frames, 40 iterations, lags 5/10/15")
    p.add_argument("--model", default="", help="model directory (default: the shipped demo model)")
    p.add_argument("--out", default="", help="JSON output file")
    p.add_argument("--trials", type=int, default=3, help="held-out trials")
    p.add_argument("--frames", type=int, default=300, help="frames per trial")
    p.add_argument("--iterations", type=int, default=320,
                   help="most offline iterations (published: 1000); the curve is scored along the way")
    p.add_argument("--lr", type=float, default=1000.0, help="learning rate, pixel units")
    p.add_argument("--lags", type=int, nargs="+", default=[5, 10, 15, 30])
    p.add_argument("--budget-ms", type=float, default=20.0, help="live per-frame step budget")
    p.add_argument("--live-steps", type=int, default=3, help="live steps per frame per member")
    p.add_argument("--live-lr", type=float, default=100.0, help="live learning rate, pixel units")
    p.add_argument("--live-blur-px", type=float, default=1.0, help="live spatial blur sigma")
    p.add_argument("--live-blur-frames", type=float, default=1.0, help="live temporal blur sigma")
    p.add_argument("--target-ramp", type=int, default=8, help="live target ramp frames")
    p.add_argument("--warm-start-decay", type=float, default=0.9, help="live warm start: grey + decay * (previous - grey)")
    p.add_argument("--skip-frames", type=int, default=30, help="leading frames left out of the score")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", dest="figures", action="store_false")
    args = p.parse_args(argv)
    if args.quick:
        args.trials, args.frames, args.iterations, args.lags = 1, 150, 80, [5, 10, 15]
    res = run(args)
    print(_table(res))
    print(f"({res['config']['seconds']:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
