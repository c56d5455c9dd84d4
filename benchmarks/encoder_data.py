"""Held-out correlation of the encoder against the amount of training data (issue: quality).

    python -m benchmarks.encoder_data --data build/data300 --trials 24 60 120 \
        --epochs 8 --out bench-encoder-data.json

One member (seed 0) per point, trained on the first K "train"-tier trials of a simulated
dataset (`rt-decoder simulate`) for a fixed number of epochs (no early stopping: the best
epoch on the "oracle" validation trials is kept, as `rt-decoder train` does), scored on the
dataset's test tier ("final_test_main": never trained on, never used to choose anything),
Sensorium metric (per-neuron correlation over time, first 50 frames skipped). The rig's
ceiling (noiseless rates vs the same responses) is reported beside it. `--add-model DIR`
adds a point from a trained model directory (its member 0 and its training-set size), so
the full-data point can come from the shipped ensemble without training it twice.
Writes JSON: ``encoder_data_curve`` (entries ``train_trials``, ``heldout_corr``,
``fraction_of_ceiling``, ``seconds``), ``ceiling_corr`` and the configuration.
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from rt_decoder.encoder.config import ArchConfig, TrainConfig
    from rt_decoder.encoder.train import ceiling_corr, initial_positions, load_split, sensorium_corr, train_member

    torch.set_num_threads(args.threads)
    split = load_split(args.data)
    cfg = TrainConfig(epochs=args.epochs, patience_epochs=args.epochs, max_minutes=0.0)
    skip = cfg.skip_frames_eval
    ceiling = ceiling_corr(split.test, skip)
    curve = []
    for k in args.trials:
        if k > len(split.train):
            raise SystemExit(f"{args.data} has only {len(split.train)} train trials, asked for {k}")
        sub = replace(split, train=split.train[:k])
        t0 = time.perf_counter()
        net, info = train_member(sub, ArchConfig(), cfg, args.seed, positions=initial_positions(sub.train))
        c = sensorium_corr(net, split.test, skip)
        curve.append({"train_trials": k, "heldout_corr": c, "best_val_corr": info["best_val_corr"],
                      "fraction_of_ceiling": c / ceiling if ceiling else None, "epochs": args.epochs,
                      "seconds": time.perf_counter() - t0, "source": "trained here"})
        print(f"{k:4d} train trials: held-out corr {c:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    for d in args.add_model:
        from rt_decoder.encoder.manifest import load_model

        man = load_model(d).manifest
        tr = man.training
        c = float(tr["heldout_corr_members"][0])
        curve.append({"train_trials": int(tr["n_train_trials"]), "heldout_corr": c,
                      "best_val_corr": float(man.members[0].val_corr),
                      "fraction_of_ceiling": c / ceiling if ceiling else None,
                      "epochs": int(tr["train_config"]["epochs"]), "seconds": None, "source": f"{d} member 0"})
    curve.sort(key=lambda e: e["train_trials"])
    return {"encoder_data_curve": curve, "ceiling_corr": ceiling,
            "config": {"data": str(args.data), "seed": args.seed, "epochs": args.epochs, "threads": args.threads,
                       "test_trials": [t.trial_id for t in split.test], "val_trials": [t.trial_id for t in split.val],
                       "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="simulated dataset (rt-decoder simulate --responses deconv)")
    p.add_argument("--trials", type=int, nargs="*", default=[24, 60, 120], help="training-set sizes")
    p.add_argument("--epochs", type=int, default=8, help="fixed epochs per point")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--add-model", nargs="*", default=[], help="model directories to add as points")
    p.add_argument("--out", default="", help="JSON output file")
    args = p.parse_args(argv)
    res = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
