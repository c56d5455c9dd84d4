"""``rt-decoder sink``: receive decoded frames, compare them with the true stimulus, report.

Subscribes to the source stream (the virtual rig's ``stimulus`` messages: the true frame
of each frame index), to the service's output (``decoded`` frames with their stage
stamps, or ``activity`` frames when the service has no reconstruction stage) and,
optionally, to the service's status channel (skipped frames, lifecycle). It stops at the
source's ``session_end`` plus a drain (or after ``--frames`` output frames, or
``--timeout-s``, or Ctrl-C) and writes into ``--out``:

* ``side_by_side.gif``: true stimulus | live decoded, labelled with frame, time and the
  per-frame correlation (only when frames were decoded; the decoded video alone, marked
  "no stimulus", when no stimulus arrived); decoded frames drawn with the shared display
  normalisation of ``rt_decoder.recon.report``;
* ``summary.png``: example frames and the scores (only when frames were decoded);
* ``latency_hist.png``: per-stage and end-to-end latency histograms (log axes, a line at
  the frame period);
* ``metrics.json``: counts, gaps, skips, malformed messages, latency p50/p95/p99/max per
  stage and end to end, the live video correlation (evaluation mask and full screen) and
  the best lag (see ``streaming.sink``).

It prints a summary table at the end (``--quiet``: only where the files are).
The bookkeeping lives in ``streaming.sink``; this module wires the ZeroMQ sockets.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

HELP = "receive decoded frames, match them with the true stimulus, write video/latency/metrics"

EPILOG = """examples:
  rt-decoder sink --stimulus tcp://127.0.0.1:5555 --decoded tcp://127.0.0.1:5556 --status tcp://127.0.0.1:5557 \\
      --out sink-out --eval-mask rt_decoder/models/demo/alpha.npz
  rt-decoder sink --decoded tcp://127.0.0.1:5556 --out sink-out --frames 600 --no-figures
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stimulus", metavar="ADDR", help="the source stream with stimulus messages "
                   "(e.g. the rig's tcp://127.0.0.1:5555); without it no correlation is computed")
    p.add_argument("--decoded", metavar="ADDR", required=True, help="the service's output stream")
    p.add_argument("--status", metavar="ADDR", help="the service's status channel (skipped frames, state)")
    p.add_argument("--out", metavar="DIR", required=True, help="directory for the video, figures and metrics")
    p.add_argument("--frames", type=int, default=0, help="stop after this many output frames (default 0: at "
                   "the end of the session)")
    p.add_argument("--timeout-s", type=float, default=0.0, help="stop after this many seconds (default 0: none)")
    p.add_argument("--drain-s", type=float, default=5.0, help="after session_end: longest wait for the last "
                   "decoded frames (default 5)")
    p.add_argument("--eval-mask", metavar="FILE.npz", help="evaluation mask (a model's alpha.npz: eval_mask)")
    p.add_argument("--skip-frames", type=int, default=30, help="leading frames of the stream left out of the "
                   "correlation (default 30)")
    p.add_argument("--max-lag-frames", type=int, default=15, help="best-lag search range +- frames (default 15)")
    p.add_argument("--source-clock", choices=("auto", "monotonic", "unknown"), default="auto",
                   help="is the source's t_ns this machine's monotonic clock (default auto: as the source says)")
    p.add_argument("--gif-scale", type=int, default=4, help="pixel scale of the side-by-side GIF (default 4)")
    p.add_argument("--max-gif-frames", type=int, default=900, help="at most this many frames in the GIF "
                   "(the last ones; default 900)")
    p.add_argument("--no-figures", action="store_true", help="write metrics.json only")
    p.add_argument("--report-every-s", type=float, default=5.0, help="progress line period (0: none)")
    p.add_argument("--quiet", action="store_true", help="print only where the files are")
    p.add_argument("--allow-non-loopback", action="store_true", help="allow addresses that are not loopback "
                   "(another machine's service or rig)")


def _sub_socket(ctx: Any, address: str, max_bytes: int, *, allow_non_loopback: bool, what: str) -> Any:
    """A SUB socket subscribed to everything, connected to ``address`` (``streaming.transport.open_socket``)."""
    from streaming.transport import open_socket

    return open_socket("sub", address, bind=False, allow_non_loopback=allow_non_loopback, context=ctx, what=what,
                       options={"LINGER": 0, "RCVHWM": 100_000, "MAXMSGSIZE": 4 * max_bytes, "SUBSCRIBE": b""})


def write_latency_figure(path: Path, latencies_ms: dict[str, Any], totals: set[str] | frozenset[str] = frozenset(),
                         title: str = "", frame_period_ms: float | None = None) -> Path:
    """Two panels of log-binned latency histograms: per-stage spans, and the totals.

    Each panel's legend sits below its axes (it never hides data); a dashed vertical line
    marks the frame period when ``frame_period_ms`` is given.

    Parameters
    ----------
    latencies_ms : span name -> (n,) samples in ms
    totals : the names that go to the second ("end to end") panel
    frame_period_ms : the source's frame period (ms), optional
    """
    import numpy as np

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - dev extra present in tests
        from rt_decoder.errors import BackendUnavailableError

        raise BackendUnavailableError("figures need matplotlib (pip install 'rt-decoder[dev]')") from exc
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.0))
    all_v = np.concatenate([np.asarray(v, float) for v in latencies_ms.values()] or [np.zeros(0)])
    all_v = all_v[np.isfinite(all_v) & (all_v > 0)]
    lo = max(1e-3, float(all_v.min()) / 1.5) if all_v.size else 1e-3
    hi = max(lo * 10, float(all_v.max()) * 1.5) if all_v.size else 1e3
    if frame_period_ms:
        lo, hi = min(lo, frame_period_ms / 2), max(hi, frame_period_ms * 2)
    bins = np.logspace(np.log10(lo), np.log10(hi), 80)
    for ax, names, what in ((axes[0], [n for n in latencies_ms if n not in totals], "per stage"),
                            (axes[1], [n for n in latencies_ms if n in totals], "end to end")):
        for name in names:
            v = np.asarray(latencies_ms[name], float)
            v = v[np.isfinite(v)]
            if v.size:
                ax.hist(np.clip(v, lo, hi), bins=bins, histtype="step",
                        label=f"{name}: p50 {np.median(v):.3g}, p99 {np.percentile(v, 99):.3g} ms")
        if frame_period_ms:
            ax.axvline(frame_period_ms, color="k", ls="--", lw=1, label=f"frame period {frame_period_ms:.1f} ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("frames")
        ax.set_title(what, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _write_outputs(out: Path, result: Any, args: argparse.Namespace, say: Any, mask: Any = None) -> list[Path]:
    import numpy as np

    from rt_decoder.recon.report import has_frames, write_side_by_side, write_summary_figure
    from streaming.metrics import write_summary

    written: list[Path] = []
    write_summary(str(out / "metrics.json"), result.metrics)
    written.append(out / "metrics.json")
    if args.no_figures:
        return written
    try:
        title = (f"{result.metrics['output_kind']} frames: {result.metrics['frames']['output']}; "
                 f"source clock {result.metrics['source']['clock']}")
        totals = set(result.metrics["latency_ms"]["end_to_end"])
        rate = result.metrics["source"].get("rate_hz") or 30.0
        written.append(write_latency_figure(out / "latency_hist.png", result.latencies_ms, totals, title,
                                            frame_period_ms=1000.0 / float(rate)))
        if result.decoded is not None:
            # no stimulus (a replay without one): the decoded video alone, said so, never a blank half
            true = result.true if has_frames(result.true) else None
            dec, idx = result.decoded, result.frame_index
            if dec.shape[0] > args.max_gif_frames:
                dec, idx = dec[-args.max_gif_frames:], idx[-args.max_gif_frames:]
                true = true[-args.max_gif_frames:] if true is not None else None
            written.append(write_side_by_side(out / "side_by_side.gif", true, dec, fps=float(rate),
                                              scale=args.gif_scale, frame_index=idx, eval_mask=mask))
            corr = result.metrics["correlation"]
            shown = {k: corr[k] for k in ("video_corr", "video_corr_full_screen", "best_lag_frames")
                     if corr.get(k) is not None}
            ok = np.isfinite(result.decoded).all(axis=(1, 2))
            if true is not None:
                ok &= np.isfinite(result.true).all(axis=(1, 2))
            if ok.sum() >= 1:
                t_ok = result.true[ok] if true is not None else None
                what = "true (top) vs decoded (bottom)" if true is not None else "decoded (no stimulus)"
                written.append(write_summary_figure(out / "summary.png", t_ok, result.decoded[ok], shown,
                                                    title=f"live decoding: {what}"))
    except Exception as exc:  # noqa: BLE001 -- figures are extras: metrics.json is already written
        from rt_decoder.errors import BackendUnavailableError

        if not isinstance(exc, (BackendUnavailableError, ValueError, OSError)):
            raise
        say(f"sink: figures not written: {exc}")
    return written


def _receive_and_write(args: argparse.Namespace, settings: Any, mask: Any, out: Path, stop: threading.Event,
                       say: Any) -> tuple[Any, str, list[Path]]:
    import zmq

    from streaming.sink import SinkCollector, format_summary, run_sink
    from streaming.transport import StreamSubscriber

    ctx = zmq.Context()
    subs: dict[str, StreamSubscriber] = {}
    sockets = []
    max_bytes = 16 * 1024 * 1024
    try:
        for name, flag, address in (("output", "--decoded", args.decoded), ("source", "--stimulus", args.stimulus),
                                    ("status", "--status", args.status)):
            if address:
                sock = _sub_socket(ctx, address, max_bytes, allow_non_loopback=args.allow_non_loopback, what=flag)
                sockets.append(sock)
                subs[name] = StreamSubscriber(sock, max_bytes=max_bytes)
        poller = zmq.Poller()
        for sock in sockets:
            poller.register(sock.sock, zmq.POLLIN)
        collector = SinkCollector(settings)
        print(f"sink: subscribed to output {args.decoded}"  # also with --quiet: the demo waits for this line
              + (f", source {args.stimulus}" if args.stimulus else "")
              + (f", status {args.status}" if args.status else ""), flush=True)

        def tick(c: SinkCollector) -> None:
            say(f"sink: {c.output_frames} output frames ({dict(c.output_kinds)}), {c.stimulus_received} stimulus "
                f"frames, service state {c.service_states[-1] if c.service_states else '-'}")

        reason = run_sink(collector, subs, wait=lambda ms: poller.poll(ms), should_stop=stop.is_set,
                          on_tick=tick if args.report_every_s > 0 else None,
                          tick_every_s=args.report_every_s or 1.0)
    finally:
        for sock in sockets:
            sock.close(linger=0)
        ctx.term()
    t0 = time.monotonic()
    result = collector.finish(eval_mask=mask, stop_reason=reason,
                              subscriber_counters={k: v.counters.as_dict() for k, v in subs.items()})
    written = _write_outputs(out, result, args, say, mask)
    say(f"sink: stopped ({reason}); outputs written in {time.monotonic() - t0:.1f} s")
    say(format_summary(result.metrics))
    print(f"sink: wrote {', '.join(str(p) for p in written)}", flush=True)
    return result, reason, written


def run(args: argparse.Namespace) -> int:
    from rt_decoder.errors import ConfigError
    from streaming.sink import SinkSettings, load_eval_mask

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, flush=True)

    if args.gif_scale < 1 or args.max_gif_frames < 1:
        raise ConfigError(f"--gif-scale and --max-gif-frames must be >= 1, got {args.gif_scale}, "
                          f"{args.max_gif_frames}")
    settings = SinkSettings(max_frames=args.frames, timeout_s=args.timeout_s, drain_s=args.drain_s,
                            skip_frames=args.skip_frames, max_lag_frames=args.max_lag_frames,
                            source_clock=args.source_clock)
    mask = load_eval_mask(args.eval_mask) if args.eval_mask else None
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create --out {str(out)!r}: {exc}") from None

    stop = threading.Event()
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    try:  # the handlers stay until the files are written: a second Ctrl-C only asks again
        result, reason, _written = _receive_and_write(args, settings, mask, out, stop, say)
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
    if args.quiet:
        print(json.dumps({"metrics": str(out / "metrics.json"), "output_frames": result.metrics["frames"]["output"],
                          "stop_reason": reason}), flush=True)
    if result.metrics["frames"]["output"] == 0:
        return 1
    if args.frames and result.metrics["frames"]["output"] < args.frames:
        return 1
    return 0
