"""``rt-decoder view``: watch it decode, live, in a browser (see ``streaming.viewer``)."""

from __future__ import annotations

import argparse

HELP = "serve a live page: true | decoded frames, correlation, latency, skips and service state"

EPILOG = """examples:
  rt-decoder view --decoded tcp://127.0.0.1:5556 --status tcp://127.0.0.1:5557 --stimulus tcp://127.0.0.1:5555
  rt-decoder view --bind 127.0.0.1:0 --eval-mask rt_decoder/models/demo/alpha.npz
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoded", metavar="ADDR", default="tcp://127.0.0.1:5556",
                   help="the service's output address (default tcp://127.0.0.1:5556)")
    p.add_argument("--status", metavar="ADDR", default="tcp://127.0.0.1:5557",
                   help="the service's status address (default tcp://127.0.0.1:5557; '' = none)")
    p.add_argument("--stimulus", metavar="ADDR", default="",
                   help="the source stream carrying the true stimulus (e.g. the virtual rig's address)")
    p.add_argument("--bind", metavar="HOST:PORT", default="127.0.0.1:8050",
                   help="where the page is served (default 127.0.0.1:8050; port 0 = any free port)")
    p.add_argument("--allow-non-loopback", action="store_true",
                   help="allow a non-loopback --bind or subscription address")
    p.add_argument("--eval-mask", metavar="ALPHA.npz",
                   help="evaluation mask for the correlations (a model's alpha.npz); default: full frame")
    p.add_argument("--rolling-frames", type=int, default=300,
                   help="frames in the rolling video correlation (default 300 = 10 s at 30 Hz)")
    p.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from streaming.sink import load_eval_mask
    from streaming.viewer import ViewerServer, ViewerSettings, parse_bind

    host, port = parse_bind(args.bind, allow_non_loopback=args.allow_non_loopback)
    settings = ViewerSettings(decoded=args.decoded, status=args.status, stimulus=args.stimulus, host=host, port=port,
                              allow_non_loopback=args.allow_non_loopback, rolling_frames=args.rolling_frames)
    mask = load_eval_mask(args.eval_mask) if args.eval_mask else None
    return ViewerServer(settings, mask, exit_with_parent=args.exit_with_parent).run()
