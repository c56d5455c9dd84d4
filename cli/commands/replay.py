"""``rt-decoder replay``: publish a recorded session as a live stream (see ``streaming.replay``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cli.flags import deprecated_alias, group, note_deprecated, rewrite_to_connect

HELP = "replay a session file, Suite2p folder, Sensorium folder or NWB file as a live ZeroMQ stream"

EPILOG = """examples:
  rt-decoder replay session.h5 --bind tcp://127.0.0.1:5555
  rt-decoder replay suite2p/plane0 --fs 30 --connect tcp://127.0.0.1:5555 --speed 0 --frames 600
  rt-decoder replay data/sim --trials 30,31 --bind tcp://127.0.0.1:5555 --model rt_decoder/models/demo
"""

#: where replay publishes when neither --bind nor --connect is given (bound)
DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"


def rewrite_argv(prog: str, argv: Sequence[str]) -> list[str]:
    """The old ``--to ADDR [--connect]`` spelling as ``--bind ADDR`` / ``--connect ADDR`` (with a warning)."""
    return rewrite_to_connect(prog, argv, default_address=DEFAULT_ADDRESS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="session .h5 file, Suite2p folder, Sensorium folder or .nwb file")
    where = group(parser)
    where.add_argument("--bind", metavar="ADDR", help=f"bind this ZeroMQ address and publish on it (default: "
                       f"--bind {DEFAULT_ADDRESS})")
    where.add_argument("--connect", metavar="ADDR", help="connect to this address (a subscriber that binds)")
    note_deprecated(parser, "--to ADDR", "--bind ADDR")
    note_deprecated(parser, "--to ADDR --connect", "--connect ADDR")
    parser.add_argument("--allow-non-loopback", action="store_true",
                        help="allow an address that is not loopback")
    parser.add_argument("--format", default="auto", choices=("auto", "session", "suite2p", "sensorium", "nwb"))
    parser.add_argument("--fs", type=float, default=None, metavar="HZ", help="frame rate (needed for Suite2p)")
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    parser.add_argument("--loop", action="store_true", help="start again at the end")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="delay each send by uniform 0..J ms")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="drop each frame with this probability")
    parser.add_argument("--seed", type=int, default=0, help="seed of jitter and drops")
    parser.add_argument("--frames", type=int, default=0, help="stop after this many frames (0 = all)")
    deprecated_alias(parser, "--max-frames", "--frames", dest="frames", type=int, metavar="N")
    parser.add_argument("--session-id", default=None, help="session id to announce (default: from the source)")
    parser.add_argument("--wait-s", type=float, default=5.0,
                        help="wait up to this long for a first subscriber before the first frame")
    parser.add_argument("--curve-client-key", default="", metavar="FILE", help="CURVE: our secret key file")
    parser.add_argument("--curve-server-key", default="", metavar="FILE", help="CURVE: the service's public key file")
    parser.add_argument("--trials", default="", metavar="IDS",
                        help="Sensorium folder: replay these trial ids, in this order (e.g. 30,31)")
    parser.add_argument("--tier", default=None,
                        help="Sensorium folder: replay the trials of this tier (e.g. final_test_main)")
    parser.add_argument("--roi-ids", default=None, metavar="FILE.npy",
                        help="Suite2p folder: the ROI ids, one per row of F.npy (default 0..N-1)")
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="check that the source holds every neuron of this model (refuse otherwise)")
    parser.add_argument("--no-stimulus", action="store_true",
                        help="do not send the true stimulus frames (sent when the source has them)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="replay a session file whose writer was killed (the frames flushed before)")


def _trial_ids(text: str) -> list[int] | None:
    from rt_decoder.errors import ConfigError

    if not text.strip():
        return None
    out = []
    for part in text.split(","):
        if part.strip():
            try:
                out.append(int(part))
            except ValueError:
                raise ConfigError(f"--trials: {part.strip()!r} is not a trial id (e.g. --trials 30,31)") from None
    return out


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import time

    from streaming.transport import check_address
    from streaming.replay import (ReplaySettings, Replayer, check_model_coverage, make_publisher, open_source,
                                  stats_json)

    address = args.connect or args.bind or DEFAULT_ADDRESS
    check_address(address, allow_non_loopback=args.allow_non_loopback,
                  what="--connect" if args.connect else "--bind")
    settings = ReplaySettings(speed=args.speed, loop=args.loop, jitter_ms=args.jitter_ms, drop_rate=args.drop_rate,
                              seed=args.seed, max_frames=args.frames, send_stimulus=not args.no_stimulus)
    source = open_source(args.source, fmt=args.format, fs=args.fs, session_id=args.session_id,
                         trials=_trial_ids(args.trials), tier=args.tier, roi_ids_file=args.roi_ids,
                         allow_incomplete=args.allow_incomplete,
                         warn=lambda m: print(f"rt-decoder replay: warning: {m}", file=sys.stderr))
    if args.model:
        _, total = check_model_coverage(source.info, args.model)
        print(f"rt-decoder replay: the source holds all {total} neurons of the model in {args.model}", file=sys.stderr)
    pub = make_publisher(address, source.info, bind=not args.connect, curve_client_key_file=args.curve_client_key,
                         curve_server_key_file=args.curve_server_key, allow_non_loopback=args.allow_non_loopback)
    stop = {"flag": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    trials = getattr(source, "trial_ids", None)
    what = f"{len(trials)} trial(s), " if trials is not None else ""
    stim = ", with stimulus" if source.info.stimulus_shape and not args.no_stimulus else ""
    print(f"rt-decoder replay: {args.source} ({source.info.n_rois} ROIs, {what}{source.n_frames} frames at "
          f"{source.info.frame_rate_hz:g} Hz{', activity' if source.info.is_activity else ''}{stim}) -> {address}",
          file=sys.stderr)
    if not pub.wait_for_subscribers(1, timeout_s=max(args.wait_s, 0.0)):
        print("rt-decoder replay: no subscriber yet; replaying anyway", file=sys.stderr)
    time.sleep(0.05)
    try:
        stats = Replayer(source, pub, settings, stop=lambda: stop["flag"]).run()
    finally:
        pub.close()
    print(stats_json(stats))
    return 0
