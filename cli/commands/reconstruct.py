"""``rt-decoder reconstruct``: the published offline protocol on dataset trials.

Output safety (``rt_decoder.io.safe``): ``--out`` (and ``--nwb``) are checked before any
work (``--overwrite`` to replace them); the folder is written under a temporary name and
renamed when every trial is done. On Ctrl-C the previous ``--out`` is left as it was and
the trials finished so far are kept in ``<out>.incomplete/`` (marked incomplete).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from typing import Any

HELP = "Reconstruct dataset trials offline with the published protocol (ensemble, windows, blur)."

EPILOG = """examples:
  rt-decoder reconstruct --model rt_decoder/models/demo --data data/heldout --out recon --max-trials 2
  rt-decoder reconstruct --model models/sim --data data/sim --tier final_test_main --out recon --published
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (rt-decoder train / the shipped demo)")
    p.add_argument("--data", required=True, help="Sensorium-layout dataset folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--trials", default="", help="comma-separated trial ids (default: the --tier trials)")
    p.add_argument("--tier", default="final_test_main", help="tier to take trials from when --trials is empty")
    p.add_argument("--max-trials", type=int, default=0, help="at most this many trials (0 = all)")
    p.add_argument("--iterations", type=int, default=None,
                   help="optimiser iterations (default: OfflineSettings, chosen on validation trials)")
    p.add_argument("--lr", type=float, default=None, help="learning rate in pixel units (default: OptimSettings)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default: OptimSettings)")
    p.add_argument("--published", action="store_true",
                   help="the published step rule exactly: start from grey, no gradient smoothing, no step decay")
    p.add_argument("--no-amortised", action="store_true",
                   help="start from grey even when the model has an amortised decoder")
    p.add_argument("--allow-training-trials", action="store_true",
                   help="score trials the model was trained or validated on (the figures are then optimistic)")
    p.add_argument("--stride", type=int, default=8, help="window stride in frames (published: 8)")
    p.add_argument("--members", type=int, default=0, help="ensemble members to use (0 = all)")
    p.add_argument("--backend", default="onnxruntime", choices=("onnxruntime", "torch", "tensorrt"))
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
    p.add_argument("--neuron-fraction", type=float, default=1.0, help="keep this share of neurons (random)")
    p.add_argument("--seed", type=int, default=0, help="seed for --neuron-fraction")
    p.add_argument("--no-figures", action="store_true", help="skip the GIF and PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--nwb", default=None, metavar="OUT.nwb",
                   help="also write the reconstructions as an NWB file (ImageSeries per trial; needs pynwb)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out (and --nwb file)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="one Ray task per (trial, member), --threads threads each: no ADDRESS = a local Ray "
                        "instance, 'auto' = the cluster of `ray start`, or HOST:PORT (needs rt-decoder[scale])")


def parse_trial_ids(text: str, ds: Any) -> list[int]:
    """``"3,4,7"`` -> [3, 4, 7], each a trial of ``ds`` (``ConfigError`` naming a bad one)."""
    from rt_decoder.errors import ConfigError

    ids = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            ids.append(int(part))
        except ValueError:
            raise ConfigError(f"--trials: {part.strip()!r} is not a trial id (expected e.g. --trials 3,4,7)") from None
    missing = [t for t in ids if t not in ds.tiers]
    if missing:
        raise ConfigError(f"--trials: no trial(s) {missing} in {ds.root} (it has trials {ds.trial_ids[0]}.."
                          f"{ds.trial_ids[-1]})")
    return ids


def _summary_fields(args: argparse.Namespace, opened: Any, settings: Any, amortised: Any,
                    seen: list[int]) -> dict[str, Any]:
    """What ``metrics.json``'s summary says about the run (the same with and without --ray)."""
    return dict(model=str(args.model), data=str(args.data), members=len(opened.encoders),
                iterations=settings.iterations, neuron_fraction=args.neuron_fraction, backend=args.backend,
                amortised_start=amortised is not None, training_trials_scored=seen, settings=asdict(settings))


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from rt_decoder.errors import ConfigError
    from rt_decoder.io.safe import check_target
    from rt_decoder.io.sensorium import load_dataset
    from rt_decoder.recon.offline import OfflineSettings, published_settings
    from rt_decoder.recon.runner import (check_neurons, load_amortised, neuron_subset_weights, open_model,
                                         training_trials_among)

    check_target(args.out, overwrite=args.overwrite)
    if not args.no_figures:  # fail before an hour of work, not after it
        import importlib.util

        from rt_decoder.errors import BackendUnavailableError

        missing = [m for m in ("matplotlib", "imageio") if importlib.util.find_spec(m) is None]
        if missing:
            raise BackendUnavailableError(f"the figures need {' and '.join(missing)} (runtime dependencies of "
                                          "rt-decoder: reinstall it), or pass --no-figures")
    if args.nwb:
        from rt_decoder.io.nwb import require_pynwb

        check_target(args.nwb, overwrite=args.overwrite, kind="file")
        require_pynwb()
    if args.backend == "torch":
        from cli.commands.train import require_torch

        require_torch("--backend torch")
    ds = load_dataset(args.data)
    ids = parse_trial_ids(args.trials, ds) if args.trials else ds.trials(args.tier)
    if not ids:
        raise ConfigError(f"no trials selected (tier {args.tier!r} is empty in {args.data})")
    if args.max_trials > 0:
        ids = ids[: args.max_trials]
    opened = open_model(args.model, backend=args.backend, threads=args.threads, max_members=args.members)
    check_neurons(opened.model, ds.unit_ids)
    seen = training_trials_among(opened.model, ds.meta, ids)
    if seen and not args.allow_training_trials:
        raise ConfigError(f"trial(s) {seen} were in the training data of the model in {args.model} (its train or "
                          "validation trials, recorded in its manifest): their scores would be optimistic. Pick "
                          "held-out trials (e.g. --tier final_test_main), or pass --allow-training-trials")
    window = opened.encoders[0].window_frames
    base = published_settings() if args.published else OfflineSettings()
    optim = base.optim
    optim = replace(optim, **{k: v for k, v in (("learning_rate_px", args.lr), ("warmup_iterations", args.warmup))
                              if v is not None})
    iterations = args.iterations if args.iterations is not None else base.iterations
    settings = replace(base, window_frames=window, stride_frames=min(args.stride, window), iterations=iterations,
                       optim=optim)
    amortised = None if (args.no_amortised or args.published) else load_amortised(opened.model)
    weights = None
    if args.neuron_fraction < 1.0:
        weights = neuron_subset_weights(ds.n_neurons, args.neuron_fraction, np.random.default_rng(args.seed))
    try:
        return _run(args, ds, ids, opened, settings, weights, amortised, seen)
    except KeyboardInterrupt:
        print(f"rt-decoder reconstruct: interrupted; {args.out} is as it was, the trials finished so far are in "
              f"{str(args.out).rstrip('/')}.incomplete (marked incomplete)", file=sys.stderr)
        raise


def _run(args: argparse.Namespace, ds: Any, ids: list[int], opened: Any, settings: Any, weights: Any,
         amortised: Any, seen: list[int]) -> int:
    from tqdm import tqdm

    from rt_decoder.io.safe import atomic_dir
    from rt_decoder.recon.runner import reconstruct_trial, summarise, write_trial_outputs

    if args.ray is not None:  # the same per-member reconstruction as below, as Ray tasks
        from rt_decoder.scale.recon import run_reconstruct

        return run_reconstruct(args, ds, ids, opened, settings, weights, amortised=amortised,
                               summary_fields=_summary_fields(args, opened, settings, amortised, seen))
    results = []
    truths = []
    total = len(ids) * len(opened.encoders) * settings.iterations
    with atomic_dir(args.out, overwrite=args.overwrite, what="reconstruction (rt-decoder reconstruct)",
                    keep_partial=True) as out, \
            tqdm(total=total, desc="reconstruct", unit="it", disable=args.no_progress) as bar:
        for tid in ids:
            trial = ds.trial(tid)
            res = reconstruct_trial(opened, trial, settings, neuron_weights=weights, progress=bar.update,
                                    amortised=amortised)
            write_trial_outputs(out, res, trial.video, figures=not args.no_figures)
            results.append(res)
            truths.append(trial.video)
            bar.write(f"trial {tid}: video_corr={res.metrics['video_corr']:.3f} "
                      f"(members {', '.join(f'{c:.3f}' for c in res.metrics['member_video_corr'])})")
        summary = summarise(results)
        summary.update(_summary_fields(args, opened, settings, amortised, seen))
        (out / "metrics.json").write_text(json.dumps({"summary": summary, "trials": [r.metrics for r in results]},
                                                     indent=2))
        if args.nwb:
            from rt_decoder.io.nwb import write_reconstructions_nwb

            write_reconstructions_nwb(args.nwb, results, truths, frame_rate_hz=ds.frame_rate_hz,
                                      model_dir=str(args.model), settings=summary, source=str(args.data),
                                      overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0
