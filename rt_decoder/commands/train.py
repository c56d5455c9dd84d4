"""``rt-decoder train``: fit an encoder ensemble on a Sensorium-layout dataset."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "train the encoder ensemble on a Sensorium-layout dataset and write a model directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset folder (Sensorium 2023 layout)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--ensemble", type=int, default=1, help="members, seeds SEED..SEED+K-1 (default 1)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs per member (default 30)")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs (default 5)")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock cap per member (default none)")
    p.add_argument("--window", type=int, default=32, help="window of the exported graphs (default 32)")
    p.add_argument("--live-frames", type=int, default=0, help="also export live graphs of this many frames")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--no-export", action="store_true", help="do not write ONNX graphs")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="one Ray task per member, --threads threads each: no ADDRESS = a local Ray instance, "
                        "'auto' = the cluster of `ray start`, or HOST:PORT (needs rt-decoder[scale])")


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("rt_decoder.encoder.train")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return _train(args, out, logger)
    finally:
        logger.removeHandler(handler)
        handler.close()


def _train(args: argparse.Namespace, out: Path, logger: logging.Logger) -> int:
    from tqdm import tqdm

    from rt_decoder.encoder.config import TrainConfig
    from rt_decoder.encoder.export import export_model
    from rt_decoder.encoder.train import load_split, train_model

    overrides = {k: v for k, v in (("epochs", args.epochs), ("patience_epochs", args.patience),
                                   ("max_minutes", args.max_minutes)) if v is not None}
    cfg = TrainConfig(**overrides)
    split = load_split(args.data, cfg.val_fraction)
    trainer = None
    if args.ray is not None:  # the same per-member training, as Ray tasks with their own progress bar
        from rt_decoder.scale import RaySettings
        from rt_decoder.scale.train import RayMemberTrainer

        trainer = RayMemberTrainer(RaySettings(address=args.ray, threads_per_task=args.threads), logger)
    bar = tqdm(total=args.ensemble * cfg.epochs, desc="train", unit="epoch", disable=trainer is not None)

    def progress(msg: str) -> None:
        bar.update(1)
        bar.set_postfix_str(msg.split(": ", 1)[-1])

    man = train_model(split, out, cfg=cfg, ensemble=args.ensemble, seed=args.seed,
                      window_frames=args.window, progress=progress, train_members=trainer)
    bar.close()
    if not args.no_export:
        export_model(out, out, window_frames=args.window, live_frames=args.live_frames)
    t = man.training
    print(f"trained {args.ensemble} member(s) on {t['n_train_trials']} trials "
          f"({t['responses_source']}) in {t['train_seconds']:.0f} s")
    print(f"held-out correlation ({t['heldout_split']}): members {[round(c, 3) for c in t['heldout_corr_members']]}, "
          f"ensemble {t['heldout_corr_ensemble']:.3f}; ceiling {t['ceiling_corr']}")
    print(f"wrote {out}")
    return 0
