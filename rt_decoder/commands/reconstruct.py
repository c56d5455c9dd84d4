"""``rt-decoder reconstruct``: the published offline protocol on dataset trials."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "Reconstruct dataset trials offline with the published protocol (ensemble, windows, blur)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (rt-decoder train / the shipped demo)")
    p.add_argument("--data", required=True, help="Sensorium-layout dataset folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--trials", default="", help="comma-separated trial ids (default: the --tier trials)")
    p.add_argument("--tier", default="final_test_main", help="tier to take trials from when --trials is empty")
    p.add_argument("--max-trials", type=int, default=0, help="at most this many trials (0 = all)")
    p.add_argument("--iterations", type=int, default=1000, help="optimiser iterations (published: 1000)")
    p.add_argument("--lr", type=float, default=1000.0, help="learning rate in pixel units (published: 1000)")
    p.add_argument("--warmup", type=int, default=10, help="warm-up iterations (published: 10)")
    p.add_argument("--stride", type=int, default=8, help="window stride in frames (published: 8)")
    p.add_argument("--members", type=int, default=0, help="ensemble members to use (0 = all)")
    p.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch", "tensorrt"))
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
    p.add_argument("--neuron-fraction", type=float, default=1.0, help="keep this share of neurons (random)")
    p.add_argument("--seed", type=int, default=0, help="seed for --neuron-fraction")
    p.add_argument("--no-figures", action="store_true", help="skip the GIF and PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="one Ray task per (trial, member), --threads threads each: no ADDRESS = a local Ray "
                        "instance, 'auto' = the cluster of `ray start`, or HOST:PORT (needs rt-decoder[scale])")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from rt_decoder.errors import ConfigError
    from rt_decoder.io.sensorium import load_dataset
    from rt_decoder.recon.offline import OfflineSettings
    from rt_decoder.recon.optim import OptimSettings
    from rt_decoder.recon.runner import (check_neurons, neuron_subset_weights, open_model, reconstruct_trial,
                                         summarise, write_trial_outputs)

    ds = load_dataset(args.data)
    ids = [int(t) for t in args.trials.split(",") if t.strip()] if args.trials else ds.trials(args.tier)
    if not ids:
        raise ConfigError(f"no trials selected (tier {args.tier!r} is empty in {args.data})")
    if args.max_trials > 0:
        ids = ids[: args.max_trials]
    opened = open_model(args.model, backend=args.backend, threads=args.threads, max_members=args.members)
    check_neurons(opened.model, ds.unit_ids)
    window = opened.encoders[0].window_frames
    settings = OfflineSettings(window_frames=window, stride_frames=min(args.stride, window), iterations=args.iterations,
                               optim=OptimSettings(learning_rate_px=args.lr, warmup_iterations=args.warmup))
    weights = None
    if args.neuron_fraction < 1.0:
        weights = neuron_subset_weights(ds.n_neurons, args.neuron_fraction, np.random.default_rng(args.seed))
    out = Path(args.out)
    if args.ray is not None:  # the same per-member reconstruction as below, as Ray tasks
        from rt_decoder.scale.recon import run_reconstruct

        return run_reconstruct(args, ds, ids, opened, settings, weights)
    results = []
    total = len(ids) * len(opened.encoders) * args.iterations
    with tqdm(total=total, desc="reconstruct", unit="it", disable=args.no_progress) as bar:
        for tid in ids:
            trial = ds.trial(tid)
            res = reconstruct_trial(opened, trial, settings, neuron_weights=weights, progress=bar.update)
            write_trial_outputs(out, res, trial.video, figures=not args.no_figures)
            results.append(res)
            bar.write(f"trial {tid}: video_corr={res.metrics['video_corr']:.3f} "
                      f"(members {', '.join(f'{c:.3f}' for c in res.metrics['member_video_corr'])})")
    summary = summarise(results)
    summary.update(model=str(args.model), data=str(args.data), members=len(opened.encoders),
                   iterations=args.iterations, neuron_fraction=args.neuron_fraction, backend=args.backend)
    (out / "metrics.json").write_text(json.dumps({"summary": summary, "trials": [r.metrics for r in results]},
                                                 indent=2))
    print(json.dumps(summary, indent=2))
    return 0
