"""``rt-decoder suite2p-live``: register + extract raw frames with a Suite2p seeding run
and publish ROI frames (see ``bindings.suite2p_live``)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence

from cli.flags import deprecated_alias, group, note_deprecated, rewrite_to_connect, warn_deprecated

HELP = "live Suite2p-style extraction: raw frames in, ROI fluorescence frames (wire protocol v1) out"

EPILOG = """examples:
  rt-decoder suite2p-live suite2p/plane0 --raw-frames tcp://127.0.0.1:5600 --bind tcp://127.0.0.1:5555
  rt-decoder suite2p-live suite2p/plane0 --raw-frames replay --fs 30 --frames 900 \\
      --connect tcp://127.0.0.1:5555 --summary-json s2p-live.json
"""

PROG = "rt-decoder suite2p-live"


def rewrite_argv(prog: str, argv: Sequence[str]) -> list[str]:
    """The old ``--to ADDR [--connect]`` spelling as ``--bind ADDR`` / ``--connect ADDR`` (with a warning)."""
    return rewrite_to_connect(prog, argv)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite2p_dir", metavar="SUITE2P_DIR",
                        help="Suite2p plane folder of the seeding run (ops.npy or settings.npy, stat.npy, ...)")
    parser.add_argument("--raw-frames", metavar="SOURCE",
                        help="raw frames (required): tcp://HOST:PORT (raw_frame stream), a .tif being written, "
                             "a .bin file, or 'replay' (the folder's data.bin)")
    where = group(parser, required=True)
    where.add_argument("--bind", metavar="ADDR", help="bind this address and publish ROI frames on it, "
                       "e.g. tcp://127.0.0.1:5555")
    where.add_argument("--connect", metavar="ADDR", help="connect to this address and publish ROI frames to it")
    note_deprecated(parser, "--to ADDR", "--bind ADDR")
    note_deprecated(parser, "--to ADDR --connect", "--connect ADDR")
    note_deprecated(parser, "--frames SOURCE", "--raw-frames SOURCE")
    parser.add_argument("--allow-non-loopback", action="store_true", help="allow binding a non-loopback address")
    deprecated_alias(parser, "--allow-remote", "--allow-non-loopback", dest="allow_non_loopback", flag=True)
    parser.add_argument("--raw-frames-bind", action="store_true",
                        help="bind the raw-frame SUB socket instead of connecting")
    deprecated_alias(parser, "--frames-bind", "--raw-frames-bind", dest="raw_frames_bind", flag=True)
    parser.add_argument("--session-id", default="", help="session id (default: suite2p-live-<time>)")
    parser.add_argument("--neuropil-coefficient", type=float, default=0.7, help="c in F - c*Fneu (default 0.7)")
    parser.add_argument("--cells-only", action="store_true", help="publish only ROIs marked in iscell.npy")
    parser.add_argument("--no-register", action="store_true", help="frames are already registered")
    parser.add_argument("--fs", type=float, default=None, metavar="HZ",
                        help="pace a .bin replay at this frame rate in Hz (default: as fast as possible)")
    deprecated_alias(parser, "--rate-hz", "--fs", dest="fs", type=float, metavar="HZ")
    parser.add_argument("--frames", default=None, metavar="N",
                        help="stop after this many frames (a SOURCE here is the deprecated spelling of "
                             "--raw-frames SOURCE)")
    deprecated_alias(parser, "--max-frames", "--frames", dest="frames", type=int, metavar="N")
    parser.add_argument("--idle-timeout-s", type=float, default=None,
                        help="stop when no frame arrived for this long (TIFF default 5 s; stream: forever)")
    parser.add_argument("--tiff-channels", type=int, default=1, help="interleaved channels in the TIFF")
    parser.add_argument("--tiff-channel", type=int, default=0, help="channel to use (0-based)")
    parser.add_argument("--wait-subscribers", type=int, default=0,
                        help="wait (up to 10 s) for this many subscribers before the first frame")
    parser.add_argument("--summary-json", metavar="FILE", help="write counters and timings here at exit")


def resolve_frames(raw_frames: str | None, frames: str | None) -> tuple[str, int | None]:
    """(raw-frame source, frame limit) from ``--raw-frames`` and ``--frames``.

    ``--frames`` is a count; a value that is not an integer is the old meaning of
    ``--frames`` (the raw-frame source, now ``--raw-frames``): accepted with a warning.
    """
    from rt_decoder.errors import ConfigError

    limit: int | None = None
    if frames is not None:
        try:
            limit = int(frames)
        except ValueError:
            if raw_frames is not None:
                raise ConfigError(f"--frames takes a number of frames, got {frames!r} (the raw-frame source "
                                  f"is --raw-frames, here {raw_frames!r})") from None
            warn_deprecated(PROG, "--frames SOURCE", "--raw-frames SOURCE (--frames N is now a number of frames)")
            raw_frames = frames
        else:
            if limit < 1:
                raise ConfigError(f"--frames must be >= 1, got {limit}")
    if raw_frames is None:
        raise ConfigError("--raw-frames SOURCE is required (tcp://HOST:PORT, a .tif, a .bin or 'replay')")
    return raw_frames, limit


def run(args: argparse.Namespace) -> int:
    from bindings.suite2p_live import LiveSettings, Suite2pLiveExtractor, load_suite2p_plane, open_source, run_live
    from streaming.transport import StreamPublisher

    raw_frames, max_frames = resolve_frames(args.raw_frames, args.frames)
    plane = load_suite2p_plane(args.suite2p_dir)
    settings = LiveSettings(neuropil_coefficient=args.neuropil_coefficient, register=not args.no_register,
                            cells_only=args.cells_only)
    extractor = Suite2pLiveExtractor(plane, settings)
    source = open_source(raw_frames, Ly=plane.Ly, Lx=plane.Lx, default_bin=plane.file("data.bin"),
                         rate_hz=args.fs, bind=args.raw_frames_bind, idle_timeout_s=args.idle_timeout_s,
                         tiff_channels=args.tiff_channels, tiff_channel=args.tiff_channel)
    session_id = args.session_id or time.strftime("suite2p-live-%Y%m%dT%H%M%S")
    info = extractor.session_info(session_id)
    address = args.connect or args.bind
    publisher = StreamPublisher(address, info, bind=not args.connect, allow_non_loopback=args.allow_non_loopback)

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _stop)
    print(f"suite2p-live: {plane.n_rois} ROIs ({info.n_rois} published), {plane.Ly}x{plane.Lx} px, "
          f"{plane.layout} layout, kernel={extractor.kernel}; publishing to {publisher.address or address}",
          file=sys.stderr, flush=True)
    try:
        if args.wait_subscribers > 0:
            publisher.wait_for_subscribers(args.wait_subscribers, timeout_s=10.0)
        stats = run_live(extractor, source, publisher, max_frames=max_frames)
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
