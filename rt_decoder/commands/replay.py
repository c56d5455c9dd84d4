"""``rt-decoder replay``: publish a recorded session as a live stream (see ``streaming.replay``)."""

from __future__ import annotations

import argparse

HELP = "replay a session file, Suite2p folder, Sensorium folder or NWB file as a live ZeroMQ stream"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="session .h5 file, Suite2p folder, Sensorium folder or .nwb file")
    parser.add_argument("--to", default="tcp://127.0.0.1:5555", metavar="ADDR",
                        help="ZeroMQ endpoint to publish on (default: %(default)s)")
    parser.add_argument("--connect", action="store_true", help="connect to ADDR instead of binding it")
    parser.add_argument("--allow-non-loopback", action="store_true",
                        help="allow an address that is not loopback")
    parser.add_argument("--format", default="auto", choices=("auto", "session", "suite2p", "sensorium", "nwb"))
    parser.add_argument("--fs", type=float, default=None, metavar="HZ", help="frame rate (needed for Suite2p)")
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    parser.add_argument("--loop", action="store_true", help="start again at the end")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="delay each send by uniform 0..J ms")
    parser.add_argument("--drop-rate", type=float, default=0.0, help="drop each frame with this probability")
    parser.add_argument("--seed", type=int, default=0, help="seed of jitter and drops")
    parser.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0 = all)")
    parser.add_argument("--session-id", default=None, help="session id to announce (default: from the source)")
    parser.add_argument("--wait-s", type=float, default=5.0,
                        help="wait up to this long for a first subscriber before the first frame")
    parser.add_argument("--curve-client-key", default="", metavar="FILE", help="CURVE: our secret key file")
    parser.add_argument("--curve-server-key", default="", metavar="FILE", help="CURVE: the service's public key file")


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import time

    from streaming.config import check_address
    from streaming.replay import ReplaySettings, Replayer, make_publisher, open_source, stats_json

    check_address(args.to, allow_non_loopback=args.allow_non_loopback, what="--to")
    settings = ReplaySettings(speed=args.speed, loop=args.loop, jitter_ms=args.jitter_ms, drop_rate=args.drop_rate,
                              seed=args.seed, max_frames=args.max_frames)
    source = open_source(args.source, fmt=args.format, fs=args.fs, session_id=args.session_id)
    pub = make_publisher(args.to, source.info, bind=not args.connect, curve_client_key_file=args.curve_client_key,
                         curve_server_key_file=args.curve_server_key)
    stop = {"flag": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"rt-decoder replay: {args.source} ({source.info.n_rois} ROIs, {source.n_frames} frames at "
          f"{source.info.frame_rate_hz:g} Hz{', activity' if source.info.is_activity else ''}) -> {args.to}",
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
