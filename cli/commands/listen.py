"""``rt-decoder listen``: subscribe to a wire-protocol stream and report what arrives.

Prints the session info when it arrives (and when the session changes), gaps, and a
status line every second (frames, rate, malformed messages); at the end, one line of JSON
with the totals, the inter-arrival jitter and, for sources on this machine's monotonic
clock (``x-clock: "monotonic"``), the latency from acquisition to receipt.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from typing import Any

from cli.flags import deprecated_alias, group

HELP = "subscribe to a stream and print what arrives (session, frames, gaps, malformed) and its rate"

EPILOG = """examples:
  rt-decoder listen --connect tcp://127.0.0.1:5555 --frames 300
  rt-decoder listen --bind tcp://127.0.0.1:5555 --timeout-s 60 --summary-json listen.json --quiet
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    where = group(p, required=True)
    where.add_argument("--connect", metavar="ADDR", help="connect to a publisher (e.g. tcp://127.0.0.1:5555)")
    where.add_argument("--bind", metavar="ADDR", help="bind and let publishers connect")
    p.add_argument("--frames", type=int, default=0, help="stop after this many frames (default 0: no limit)")
    p.add_argument("--timeout-s", type=float, default=0.0,
                   help="stop after this many seconds in all (default 0: no limit)")
    p.add_argument("--follow", action="store_true", help="keep listening after session_end")
    p.add_argument("--max-bytes", type=int, default=16 * 1024 * 1024, help="message size limit")
    p.add_argument("--allow-non-loopback", action="store_true", help="allow binding a non-loopback address")
    deprecated_alias(p, "--allow-remote", "--allow-non-loopback", dest="allow_non_loopback", flag=True)
    p.add_argument("--realtime", action="store_true", help="receive with real-time (SCHED_FIFO) priority "
                   "when the OS allows it")
    p.add_argument("--report-every-s", type=float, default=1.0, help="status line period (0: none)")
    p.add_argument("--summary-json", metavar="FILE", help="write the JSON summary (incl. arrival times) here")
    deprecated_alias(p, "--json-out", "--summary-json", dest="summary_json", metavar="FILE")
    p.add_argument("--quiet", action="store_true", help="only the final JSON summary")


def _ms_stats(values_ns: Any) -> dict[str, float]:
    import numpy as np

    a = np.asarray(values_ns, dtype=np.float64) / 1e6
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "median_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max()), "min_ms": float(a.min())}


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from rt_decoder.messages import ActivityFrame, DecodedFrame, FluorescenceFrame, SessionInfo
    from streaming import protocol as P
    from streaming.transport import GapEvent, SessionChange, StreamSubscriber, set_realtime_priority

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, flush=True)

    stop = {"flag": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["flag"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if args.realtime:  # before the zmq context exists, so its I/O thread inherits it
        why = set_realtime_priority()
        say(f"listen: real-time priority {'on' if why is None else 'not available: ' + why}")
    import zmq

    ctx = zmq.Context()
    sub = StreamSubscriber(args.connect or args.bind, bind=bool(args.bind), max_bytes=args.max_bytes,
                           allow_non_loopback=args.allow_non_loopback, context=ctx)
    say(f"listen: {'bound' if args.bind else 'connected'} to {sub.address}")
    t_start = time.monotonic()
    arrivals: list[int] = []  # recv ns of frames
    frame_idx: list[int] = []
    acq_latency: list[int] = []
    monotonic_sources: set[str] = set()
    announced: set[str] = set()
    missing_frames = 0
    last_frame: int | None = None
    ended = False
    last_report, report_n = time.monotonic(), 0
    try:
        while not stop["flag"]:
            if args.frames and len(arrivals) >= args.frames:
                break
            if args.timeout_s and time.monotonic() - t_start >= args.timeout_s:
                break
            env = sub.recv(100)
            now = time.monotonic()
            if env is not None:
                for ev in sub.drain_events():
                    if isinstance(ev, GapEvent):
                        say(f"listen: gap in {ev.session_id}: {ev.n_missing} message(s) lost "
                            f"(seq {ev.expected_seq}..{ev.got_seq - 1})")
                    elif isinstance(ev, SessionChange) and ev.previous_session_id is not None:
                        say(f"listen: session changed {ev.previous_session_id} -> {ev.session_id}"
                            f"{'' if ev.previous_ended else ' (previous one never ended: source restarted?)'}")
                        last_frame = None
                body = env.body
                if env.kind == P.KIND_SESSION_START and isinstance(body, SessionInfo):
                    if env.ext.get("x-clock") == "monotonic":
                        monotonic_sources.add(env.session_id)
                    if env.session_id not in announced:
                        announced.add(env.session_id)
                        say(f"listen: session {body.session_id}: {body.n_rois} ROIs at {body.frame_rate_hz:g} Hz, "
                            f"plane {body.plane}, source {body.source!r}, stimulus {body.stimulus_shape}, "
                            f"activity={body.is_activity} (seq {env.seq})")
                elif isinstance(body, (FluorescenceFrame, ActivityFrame, DecodedFrame)):
                    arrivals.append(sub.last_recv_ns)
                    frame_idx.append(body.frame_index)
                    if last_frame is not None and body.frame_index > last_frame + 1:
                        missing_frames += body.frame_index - last_frame - 1
                    last_frame = body.frame_index
                    if env.session_id in monotonic_sources:
                        acq_latency.append(sub.last_recv_ns - body.acq_ns)
                elif env.kind == P.KIND_SESSION_END:
                    say(f"listen: session {env.session_id} ended after {getattr(body, 'n_frames', '?')} frames")
                    if not args.follow:
                        ended = True
                        break
            if args.report_every_s > 0 and now - last_report >= args.report_every_s:
                n = len(arrivals)
                c = sub.counters
                say(f"listen: {n} frames, {(n - report_n) / (now - last_report):.2f} frames/s, "
                    f"{c.missing} lost message(s), {c.malformed} malformed")
                last_report, report_n = now, n
    finally:
        sub.close()
        ctx.term()
        for s, h in old.items():
            signal.signal(s, h)
    arr = np.asarray(arrivals, dtype=np.int64)
    inter = np.diff(arr)
    rate = float((arr.size - 1) / ((arr[-1] - arr[0]) / 1e9)) if arr.size > 1 and arr[-1] > arr[0] else float("nan")
    info = sub.session_info
    summary: dict[str, Any] = {
        "frames": int(arr.size), "session_id": sub.session_id, "n_rois": None if info is None else info.n_rois,
        "ended": ended, "rate_hz": rate, "missing_frames": missing_frames,
        "first_frame": frame_idx[0] if frame_idx else None, "last_frame": frame_idx[-1] if frame_idx else None,
        "inter_arrival": _ms_stats(inter), "acq_to_recv": _ms_stats(acq_latency),
        "counters": sub.counters.as_dict(), "elapsed_s": time.monotonic() - t_start,
    }
    print(json.dumps(summary), flush=True)
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump({**summary, "arrival_ns": [int(v) for v in arr], "frame_index": frame_idx,
                       "acq_to_recv_ns": [int(v) for v in acq_latency]}, f)
    if args.frames:
        return 0 if arr.size >= args.frames else 1
    return 0 if arr.size > 0 else 1
