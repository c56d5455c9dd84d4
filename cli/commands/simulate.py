"""``rt-decoder simulate``: write a virtual-rig session as a Sensorium-layout dataset.

The dataset is written under a temporary name beside ``--out`` and renamed when complete
(``rt_decoder.io.safe``): Ctrl-C leaves an older dataset in ``--out`` as it was.

Responses (``data/responses``): with ``--responses auto`` (default) the online
deconvolution stage (``rt_decoder.deconv.deconvolve_array``) is applied to each trial's raw
fluorescence when that module can be imported, else the ground-truth spike counts are
written; ``meta/rig.json`` records which (``responses_source``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "simulate a virtual-rig session and write it as a Sensorium-layout dataset"

EPILOG = """examples:
  rt-decoder simulate --out data/sim --neurons 1000 --trials 20
  rt-decoder simulate --out data/heldout --trials 2 --first-trial 300 --no-progress --overwrite
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (the dataset's animal folder)")
    parser.add_argument("--neurons", type=int, default=8000, help="number of neurons, 1..100000 (default 8000)")
    parser.add_argument("--trials", type=int, default=20, help="number of 10 s trials (default 20)")
    parser.add_argument("--first-trial", type=int, default=0,
                        help="id of the first trial (default 0): trials FIRST .. FIRST+TRIALS-1. A trial's content "
                             "depends only on --seed and its id, so e.g. --first-trial 300 gives trials the shipped "
                             "demo model (trained on ids 0..299 of seed 0) never saw; they all go to tier "
                             "final_test_main")
    parser.add_argument("--seed", type=int, default=0, help="seed of the population and all trials (default 0)")
    parser.add_argument("--indicator", default="GCaMP6s", choices=("GCaMP6s", "GCaMP8m"),
                        help="calcium indicator preset (default GCaMP6s)")
    parser.add_argument("--frames", type=int, default=300, help="frames per trial (default 300 = 10 s at 30 Hz)")
    parser.add_argument("--test-fraction", type=float, default=0.1,
                        help="fraction of trials in tier final_test_main (default 0.1)")
    parser.add_argument("--validation-fraction", type=float, default=0.1,
                        help="fraction of trials in tier oracle, used for validation (default 0.1)")
    parser.add_argument("--responses", choices=("auto", "deconv", "spikes"), default="auto",
                        help="what to write as responses: deconvolved fluorescence (rt_decoder.deconv), "
                             "ground-truth spikes, or auto = deconv if available else spikes (default auto)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing non-empty --out folder (as a whole, once the new one is complete)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rt_decoder.io.safe import check_target
    from rt_decoder.io.sensorium import assign_tiers, write_dataset
    from rt_decoder.sim import RigConfig, VirtualRig
    from rt_decoder.sim.responses import responses_function, training_deconv_settings

    check_target(args.out, overwrite=args.overwrite)  # before any work; written atomically below
    config = RigConfig(n_neurons=args.neurons, seed=args.seed, indicator=args.indicator,
                       trial_frames=args.frames, n_trials=args.trials)
    if args.first_trial < 0:
        from rt_decoder.errors import ConfigError

        raise ConfigError(f"--first-trial must be >= 0, got {args.first_trial}")
    tiers = (assign_tiers(args.trials, validation_fraction=args.validation_fraction,
                          test_fraction=args.test_fraction, seed=args.seed)
             if args.first_trial == 0 else ["final_test_main"] * args.trials)
    responses_fn = responses_function(args.responses)
    t0 = time.perf_counter()
    rig = VirtualRig(config)
    trials = (rig.trial(i) for i in range(args.first_trial, args.first_trial + args.trials))
    progress = tqdm(trials, total=args.trials, desc="simulate", unit="trial", disable=args.no_progress,
                    file=sys.stderr)
    write_dataset(args.out, progress, roi_ids=rig.roi_ids, roi_centres_px=rig.roi_centres_px, tiers=tiers,
                  responses_fn=responses_fn, frame_rate_hz=config.frame_rate_hz,
                  cell_motor_coordinates_um=rig.cell_motor_coordinates_um, neuron_params=rig.neuron_params,
                  extra_meta={"rig_config": config.to_dict(), "source": "virtual-rig",
                              **({} if responses_fn is None else {"responses_deconv_settings": training_deconv_settings()})},
                  overwrite=args.overwrite)
    elapsed = time.perf_counter() - t0
    counts = {t: tiers.count(t) for t in sorted(set(tiers))}
    source = "ground_truth_spikes" if responses_fn is None else "rt_decoder.deconv.deconvolve_array"
    print(f"wrote {args.trials} trials x {config.trial_frames} frames x {config.n_neurons} neurons to "
          f"{args.out} in {elapsed:.1f} s; tiers {counts}; responses = {source}")
    return 0
