"""``rt-decoder rig``: stream a live virtual two-photon session in wire protocol v1.

Argument parsing only; the publisher (deadline pacing, the trial-generating worker
process, the streaming loop) is ``bindings.virtual_rig``.
"""

from __future__ import annotations

import argparse
import json

from cli.flags import deprecated_alias, group

HELP = "stream a live virtual session (the virtual rig) in the wire protocol at 30 Hz"

EPILOG = """examples:
  rt-decoder rig --bind tcp://127.0.0.1:5555 --heldout --fs 30
  rt-decoder rig --bind 'tcp://127.0.0.1:*' --neurons 1000 --frames 1800 --summary-json rig.json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = group(p, required=True)
    where.add_argument("--bind", metavar="ADDR", help="bind this address (e.g. tcp://127.0.0.1:5555; "
                       "port * picks a free one, printed at start)")
    where.add_argument("--connect", metavar="ADDR", help="connect to this address (a subscriber that binds)")
    p.add_argument("--neurons", type=int, default=8000, help="number of simulated ROIs (default 8000)")
    p.add_argument("--seed", type=int, default=0, help="rig seed: population and trials (default 0)")
    p.add_argument("--indicator", default="GCaMP6s", help="calcium indicator preset (default GCaMP6s)")
    trials = p.add_mutually_exclusive_group()
    trials.add_argument("--trials", metavar="LIST", help="comma-separated trial ids, streamed in order and "
                        "repeated (default: 0..n_trials-1)")
    trials.add_argument("--heldout", action="store_true", help="stream held-out trials: ids n_trials, "
                        "n_trials+1, ... (never part of a simulated dataset of n_trials trials)")
    p.add_argument("--n-trials", type=int, default=20, help="trials in the rig's dataset (default 20)")
    p.add_argument("--frames", type=int, default=0, help="stop after this many frames (default 0: until Ctrl-C)")
    p.add_argument("--fs", type=float, default=30.0, metavar="HZ", help="frame rate in Hz (default 30)")
    deprecated_alias(p, "--rate-hz", "--fs", dest="fs", type=float, metavar="HZ")
    p.add_argument("--record", metavar="FILE", help="also record what is sent to this session file (HDF5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --record file")
    p.add_argument("--session-id", default="", help="session id (default: rig-<random>)")
    p.add_argument("--no-stimulus", action="store_true", help="do not send the true stimulus frames")
    p.add_argument("--wait-subscribers", type=int, default=0, metavar="K",
                   help="wait until K subscribers subscribed before the first frame (default 0)")
    p.add_argument("--wait-timeout-s", type=float, default=30.0, help="give up waiting after this (default 30)")
    p.add_argument("--resend-info-every-s", type=float, default=1.0, help="session_start re-send period")
    p.add_argument("--spin-ms", type=float, default=2.0, help="busy-wait this long before each deadline")
    p.add_argument("--lead-trials", type=int, default=2, metavar="K", help="whole trials generated before the "
                   "first frame is sent (default 2; fewer when --frames asks for fewer)")
    p.add_argument("--buffer-trials", type=int, default=4, metavar="K", help="the most trials generated ahead "
                   "while streaming (default 4; memory about K x 300 x (neurons + 2308) x 4 bytes)")
    p.add_argument("--allow-non-loopback", action="store_true", help="allow binding a non-loopback address")
    deprecated_alias(p, "--allow-remote", "--allow-non-loopback", dest="allow_non_loopback", flag=True)
    p.add_argument("--realtime", action="store_true", help="pace with real-time (SCHED_FIFO) priority when the "
                   "OS allows it (root or CAP_SYS_NICE); the generator process stays at normal priority")
    p.add_argument("--report-every-s", type=float, default=5.0, help="status line period (0: none)")
    p.add_argument("--summary-json", metavar="FILE", help="write the JSON summary (incl. jitter samples) here")
    deprecated_alias(p, "--json-out", "--summary-json", dest="summary_json", metavar="FILE")
    p.add_argument("--quiet", action="store_true", help="only the final JSON summary")


def run(args: argparse.Namespace) -> int:
    from bindings.virtual_rig import RigStreamSettings, run_rig_stream

    settings = RigStreamSettings(
        neurons=args.neurons, seed=args.seed, indicator=args.indicator, trials=args.trials or "",
        heldout=args.heldout, n_trials=args.n_trials, frames=args.frames, frame_rate_hz=args.fs,
        session_id=args.session_id, send_stimulus=not args.no_stimulus, wait_subscribers=args.wait_subscribers,
        wait_timeout_s=args.wait_timeout_s, resend_info_every_s=args.resend_info_every_s, spin_ms=args.spin_ms,
        allow_non_loopback=args.allow_non_loopback, realtime=args.realtime, report_every_s=args.report_every_s,
        quiet=args.quiet, record=args.record, overwrite=args.overwrite, lead_trials=args.lead_trials,
        buffer_trials=args.buffer_trials)
    summary = run_rig_stream(settings, bind=args.bind, connect=args.connect)
    print(json.dumps({k: v for k, v in summary.items() if not k.startswith("_")}), flush=True)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump({k.lstrip("_"): v for k, v in summary.items()}, f)
    return 0 if not args.frames or summary["frames_sent"] == args.frames else 1
