"""``rt-decoder suite2p-live``: register + extract raw frames with a Suite2p seeding run
and publish ROI frames (see ``bindings.suite2p_live``)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

HELP = "live Suite2p-style extraction: raw frames in, ROI fluorescence frames (wire protocol v1) out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite2p_dir", metavar="SUITE2P_DIR",
                        help="Suite2p plane folder of the seeding run (ops.npy or settings.npy, stat.npy, ...)")
    parser.add_argument("--frames", required=True, metavar="SOURCE",
                        help="raw frames: tcp://HOST:PORT (raw_frame stream), a .tif being written, "
                             "a .bin file, or 'replay' (the folder's data.bin)")
    parser.add_argument("--to", required=True, metavar="ADDR", help="where to publish ROI frames, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--connect", action="store_true", help="connect to ADDR instead of binding it")
    parser.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback address")
    parser.add_argument("--frames-bind", action="store_true", help="bind the raw-frame SUB socket instead of connecting")
    parser.add_argument("--session-id", default="", help="session id (default: suite2p-live-<time>)")
    parser.add_argument("--neuropil-coefficient", type=float, default=0.7, help="c in F - c*Fneu (default 0.7)")
    parser.add_argument("--cells-only", action="store_true", help="publish only ROIs marked in iscell.npy")
    parser.add_argument("--no-register", action="store_true", help="frames are already registered")
    parser.add_argument("--rate-hz", type=float, default=None,
                        help="pace a .bin replay at this rate (default: as fast as possible)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--idle-timeout-s", type=float, default=None,
                        help="stop when no frame arrived for this long (TIFF default 5 s; stream: forever)")
    parser.add_argument("--tiff-channels", type=int, default=1, help="interleaved channels in the TIFF")
    parser.add_argument("--tiff-channel", type=int, default=0, help="channel to use (0-based)")
    parser.add_argument("--wait-subscribers", type=int, default=0,
                        help="wait (up to 10 s) for this many subscribers before the first frame")
    parser.add_argument("--summary-json", metavar="FILE", help="write counters and timings here at exit")


def run(args: argparse.Namespace) -> int:
    from bindings.suite2p_live import LiveSettings, Suite2pLiveExtractor, load_suite2p_plane, open_source, run_live
    from rt_decoder.errors import ConfigError
    from streaming.transport import StreamPublisher

    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError(f"--max-frames must be >= 1, got {args.max_frames}")
    plane = load_suite2p_plane(args.suite2p_dir)
    settings = LiveSettings(neuropil_coefficient=args.neuropil_coefficient, register=not args.no_register,
                            cells_only=args.cells_only)
    extractor = Suite2pLiveExtractor(plane, settings)
    source = open_source(args.frames, Ly=plane.Ly, Lx=plane.Lx, default_bin=plane.file("data.bin"),
                         rate_hz=args.rate_hz, bind=args.frames_bind, idle_timeout_s=args.idle_timeout_s,
                         tiff_channels=args.tiff_channels, tiff_channel=args.tiff_channel)
    session_id = args.session_id or time.strftime("suite2p-live-%Y%m%dT%H%M%S")
    info = extractor.session_info(session_id)
    publisher = StreamPublisher(args.to, info, bind=not args.connect, allow_remote=args.allow_remote)

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _stop)
    print(f"suite2p-live: {plane.n_rois} ROIs ({info.n_rois} published), {plane.Ly}x{plane.Lx} px, "
          f"{plane.layout} layout, kernel={extractor.kernel}; publishing to {publisher.address or args.to}",
          file=sys.stderr, flush=True)
    try:
        if args.wait_subscribers > 0:
            publisher.wait_for_subscribers(args.wait_subscribers, timeout_s=10.0)
        stats = run_live(extractor, source, publisher, max_frames=args.max_frames)
    except KeyboardInterrupt:
        stats = None
    finally:
        signal.signal(signal.SIGTERM, old)
        publisher.close()
        close = getattr(source, "close", None)
        if close is not None:
            close()
    if stats is None:
        return 130
    summary = stats.summary()
    print(f"suite2p-live: {json.dumps(summary)}", file=sys.stderr)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0
