"""``rt-decoder train``: fit an encoder ensemble on a Sensorium-layout dataset.

Needs PyTorch (``pip install 'rt-decoder[train]'``); without it the command says so. The
output folder is checked first (``--overwrite`` to replace a non-empty one), then the
dataset, and only then is anything written: the model (``train.log`` included) is
written under a temporary name beside ``--out`` and renamed when complete, so Ctrl-C
leaves an older model in ``--out`` as it was.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

HELP = "train the encoder ensemble on a Sensorium-layout dataset and write a model directory"

EPILOG = """examples:
  rt-decoder simulate --out data/sim --neurons 1000 --trials 40
  rt-decoder train --data data/sim --out models/sim --ensemble 3 --epochs 2 --no-progress
"""


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
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing non-empty --out folder (replaced as a whole when training is done)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="one Ray task per member, --threads threads each: no ADDRESS = a local Ray instance, "
                        "'auto' = the cluster of `ray start`, or HOST:PORT (needs rt-decoder[scale])")


def require_torch(what: str) -> None:
    """Raise ``BackendUnavailableError`` (a message, not a traceback) when PyTorch is missing."""
    from rt_decoder.errors import BackendUnavailableError

    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(
            f"{what} needs PyTorch, which is not installed here ({exc}); install the training extra: "
            "pip install 'rt-decoder[train]' (decoding, replay and the service do not need it)") from None


def check_training_data(data: str, val_fraction: float):  # type: ignore[no-untyped-def]
    """Open the dataset and check it has what training needs (train trials, validation)."""
    from rt_decoder.errors import DataFormatError
    from rt_decoder.io.sensorium import load_dataset

    ds = load_dataset(data)
    tiers = [ds.tiers[i] for i in ds.trial_ids]
    n_train = tiers.count("train")
    if n_train == 0:
        raise DataFormatError(f"{data}: no trials in tier 'train' (tiers found: {sorted(set(tiers))})")
    every = max(2, int(round(1.0 / val_fraction)))
    if "oracle" not in tiers and n_train < every:
        raise DataFormatError(f"{data}: no validation trials: training needs an 'oracle' tier or >= {every} "
                              f"'train' trials (every {every}th validates), and the dataset has {n_train} "
                              "train trials and no oracle tier")
    return ds


def run(args: argparse.Namespace) -> int:
    from rt_decoder.encoder.config import TrainConfig
    from rt_decoder.io.safe import atomic_dir, check_target

    require_torch("rt-decoder train")
    import torch

    final = check_target(args.out, overwrite=args.overwrite)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("patience_epochs", args.patience),
                                   ("max_minutes", args.max_minutes)) if v is not None}
    cfg = TrainConfig(**overrides)
    check_training_data(args.data, cfg.val_fraction)
    torch.set_num_threads(args.threads)
    with atomic_dir(final, overwrite=args.overwrite, what="model (rt-decoder train)") as out:
        rc = _logged(args, out, cfg)
    print(f"wrote {final}")
    return rc


def _logged(args: argparse.Namespace, out: Path, cfg: Any) -> int:
    handler = logging.FileHandler(out / "train.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("rt_decoder.encoder.train")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return _train(args, out, logger, cfg)
    finally:
        logger.removeHandler(handler)
        handler.close()


def _train(args: argparse.Namespace, out: Path, logger: logging.Logger, cfg: Any) -> int:
    from tqdm import tqdm

    from rt_decoder.encoder.export import export_model
    from rt_decoder.encoder.train import load_split, train_model

    split = load_split(args.data, cfg.val_fraction)
    trainer = None
    if args.ray is not None:  # the same per-member training, as Ray tasks with their own progress bar
        from rt_decoder.scale import RaySettings
        from rt_decoder.scale.train import RayMemberTrainer

        trainer = RayMemberTrainer(RaySettings(address=args.ray, threads_per_task=args.threads,
                                                 progress=not args.no_progress), logger)
    bar = tqdm(total=args.ensemble * cfg.epochs, desc="train", unit="epoch", disable=trainer is not None or args.no_progress)

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
    return 0
