"""Live viewer benchmark: service send -> painted in a real (headless) Chromium, page frame
rate, and the viewer server's CPU cost.

Cases (``--case``):

* ``serve`` (default): the product as run by ``make demo``: ``rt-decoder rig`` (held-out
  trials, 8,000 ROIs by default, 30 Hz) -> ``rt-decoder serve`` (live reconstruction with
  the shipped demo model) -> ``rt-decoder view`` (subscribed to the output, status and the
  rig's stimulus) -> a headless Chromium showing the page;
* ``synthetic``: a publisher process sends decoded frames (36 x 64), stimulus frames and
  status messages at 30 Hz with a ``tx`` stamp taken just before each send: the viewer and
  the page alone, without the decoder's CPU load.

Latency: the page stamps each frame when it draws it inside ``requestAnimationFrame`` and
converts that stamp to the viewer host's monotonic clock with an offset estimated by
ping/pong over the WebSocket (the exchange with the smallest round trip; its round trip is
reported, the offset's error is at most half of it); the service's ``tx`` stamp is on the
same monotonic clock (same host). The page reports every latency back to the viewer
(``/stats.json``). CPU: the viewer process's user + system time from ``/proc/PID/stat``
over the measured interval, as % of one core.

    python -m benchmarks.viewer --out bench-viewer.json [--case serve|synthetic] [--seconds 60]

Needs Debian's ``chromium`` (``apt-get install chromium``) and ``playwright`` (dev extra).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def find_chromium() -> str | None:
    """The system Chromium's executable (Debian: /usr/bin/chromium), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def tcp() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# ---------------------------------------------------------------------------- synthetic source


def publish_synthetic(out_addr: str, status_addr: str, stim_addr: str, rate_hz: float, seconds: float,
                      seed: int = 0) -> None:
    """Decoded + stimulus + status streams at ``rate_hz`` (a stand-in for rig + serve)."""
    from rt_decoder.messages import SessionInfo, now_ns
    from streaming.transport import StreamPublisher

    rng = np.random.default_rng(seed)
    info = SessionInfo("synthetic", np.arange(10, dtype=np.int64), rate_hz, is_activity=True, source="benchmark")
    yy, xx = np.mgrid[0:36, 0:64].astype(np.float32)
    with StreamPublisher(out_addr, info) as out, StreamPublisher(status_addr, info) as status, \
            StreamPublisher(stim_addr, info) as stim:
        time.sleep(1.0)  # subscribers join
        t0 = time.monotonic()
        period = 1.0 / rate_hz
        n = int(seconds * rate_hz)
        counters = {"frames_received": 0, "frames_published": 0, "skipped_frames": 0, "frames_missing": 0,
                    "messages_lost": 0, "gap_events": 0, "intake_overflow": 0}
        last_status = 0.0
        for i in range(n):
            deadline = t0 + i * period
            while time.monotonic() < deadline:
                time.sleep(min(0.002, max(0.0, deadline - time.monotonic())))
            true = 127.5 + 100 * np.sin(0.3 * xx + 0.2 * yy - 0.15 * i).astype(np.float32)
            dec = (127.5 + 0.05 * (true - 127.5) + rng.normal(0, 1.0, true.shape)).astype(np.float32)
            acq = now_ns()
            stim.send_stimulus(true, i, acq)
            rx = now_ns()
            stamps = (("rx", rx), ("decode", rx + 20_000), ("deconv", rx + 300_000), ("recon", rx + 15_000_000))
            out.send_decoded(dec, i, acq, stamps + (("tx", now_ns()),))
            counters["frames_received"] += 1
            counters["frames_published"] += 1
            if time.monotonic() - last_status >= 0.5:
                last_status = time.monotonic()
                status.send_status("RUNNING", {"state": "RUNNING", "counters": counters, "malformed_total": 0,
                                               "latency_ms": {}, "notes": {}})
        out.end(n)


# ---------------------------------------------------------------------------- runs


def _start(argv: list[str], **kw: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO, env=env, text=True, **kw)


def _wait_line(proc: subprocess.Popen[str], needle: str, timeout_s: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        if needle in line:
            return line
    raise RuntimeError(f"no line with {needle!r} from {proc.args!r}")


def _get(url: str, method: str = "GET") -> dict[str, Any]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as resp:
        out: dict[str, Any] = json.loads(resp.read())
        return out


def run_case(case: str, seconds: float, warmup_s: float, neurons: int, rate_hz: float) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    exe = find_chromium()
    if exe is None:
        raise SystemExit("benchmarks.viewer: no chromium found (apt-get install chromium)")
    out_addr, status_addr, stim_addr = tcp(), tcp(), tcp()
    procs: list[subprocess.Popen[str]] = []
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-viewer-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if case == "synthetic":
            total = warmup_s + seconds + 30
            procs.append(_start(["benchmarks.viewer", "--publish", out_addr, status_addr, stim_addr,
                                 "--rate-hz", str(rate_hz), "--seconds", str(total)]))
        else:
            model = REPO / "rt_decoder" / "models" / "demo"
            cfg = tmp / "serve.toml"
            cfg.write_text(f'[input]\naddress = "{stim_addr}"\nbind = false\n[output]\naddress = "{out_addr}"\n'
                           f'[status]\naddress = "{status_addr}"\npublish_every_s = 0.5\nstatus_line_every_s = 0\n'
                           f'[deconv]\ninit_frames = 100\n[reconstruction]\nenabled = true\nmodel_dir = "{model}"\n')
            serve = _start(["cli", "serve", "--config", str(cfg)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
            procs.append(serve)
            _wait_line(serve, "READY", 300)
        view = _start(["cli", "view", "--decoded", out_addr, "--status", status_addr, "--stimulus",
                       stim_addr, "--bind", "127.0.0.1:0"]
                      + (["--eval-mask", str(REPO / "rt_decoder/models/demo/alpha.npz")] if case == "serve" else []),
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(view)
        url = _wait_line(view, "serving http", 60).split("serving ", 1)[1].split(" ", 1)[0]
        if case == "serve":
            frames = int((warmup_s + seconds + 10) * rate_hz) + 100 + 15
            procs.append(_start(["cli", "rig", "--bind", stim_addr, "--neurons", str(neurons),
                                 "--heldout", "--n-trials", "30", "--frames", str(frames), "--fs", str(rate_hz),
                                 "--wait-subscribers", "2", "--wait-timeout-s", "60", "--quiet"],
                                stdout=subprocess.DEVNULL))
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(url)
            page.wait_for_function("window.rtv && window.rtv.painted > 30", timeout=240_000)
            time.sleep(warmup_s)
            _get(url + "stats/reset", "POST")
            page.evaluate("window.rtv.paintLatencies = []")
            c0, t0 = cpu_seconds(view.pid), time.monotonic()
            painted0 = page.evaluate("window.rtv.painted")
            time.sleep(seconds)
            c1, t1 = cpu_seconds(view.pid), time.monotonic()
            stats = _get(url + "stats.json")
            page_lat = np.asarray(page.evaluate("window.rtv.paintLatencies"), np.float64)
            painted = page.evaluate("window.rtv.painted") - painted0
            browser.close()
        lat = stats["paint_latency_ms"]
        return {
            "case": case, "seconds": seconds, "rate_hz": rate_hz, "neurons": neurons if case == "serve" else None,
            "paint_latency_ms": lat,
            "paint_latency_ms_page_side": {"p50": float(np.median(page_lat)), "p99": float(np.percentile(page_lat, 99)),
                                           "count": int(page_lat.size)} if page_lat.size else None,
            "clock_sync_rtt_ms": stats["clock_sync_rtt_ms"],
            "breakdown_ms": {"service_send_to_viewer_receive": stats["hop_latency_ms"],
                             "service_send_to_page_arrival": stats["arrive_latency_ms"]},
            "page_fps": painted / (t1 - t0),
            "page_skipped_frames": stats["page_skipped_frames"], "viewer_frames_sent": stats["frames_sent"],
            "viewer_cpu_percent_one_core": 100.0 * (c1 - c0) / (t1 - t0),
            "decoded_fps_at_viewer": stats["decoded_fps"],
            "targets": {"paint_p99_ms": 50.0, "viewer_cpu_percent": 5.0},
            "meets_targets": bool(lat["p99"] is not None and lat["p99"] < 50.0 and 100.0 * (c1 - c0) / (t1 - t0) < 5.0),
        }
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench-viewer.json")
    ap.add_argument("--case", choices=("serve", "synthetic", "both"), default="both")
    ap.add_argument("--seconds", type=float, default=60.0, help="measured interval per case (default 60)")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--neurons", type=int, default=8000)
    ap.add_argument("--fs", type=float, default=30.0, help="frame rate (Hz)")
    ap.add_argument("--quick", action="store_true", help="15 s per case")
    ap.add_argument("--publish", nargs=3, metavar="ADDR", help=argparse.SUPPRESS)
    ap.add_argument("--rate-hz", type=float, default=30.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.publish:
        try:
            out_addr, status_addr, stim_addr = args.publish
            publish_synthetic(out_addr, status_addr, stim_addr, rate_hz=args.rate_hz, seconds=args.seconds)
        except KeyboardInterrupt:
            pass
        return 0
    seconds = 15.0 if args.quick else args.seconds
    cases = ["synthetic", "serve"] if args.case == "both" else [args.case]
    results = []
    for c in cases:
        load_before = os.getloadavg()
        r = run_case(c, seconds, args.warmup_s, args.neurons, args.fs)
        r["load_average_1min_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
        results.append(r)
    res = {"benchmark": "viewer", "results": results,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                       "chromium": subprocess.run([find_chromium() or "chromium", "--version"], capture_output=True,
                                                  text=True).stdout.strip()},
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.out).write_text(json.dumps(res, indent=1))
    for r in results:
        lat, b = r["paint_latency_ms"], r["breakdown_ms"]
        print(f"{r['case']}: send -> painted p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms ({lat['count']} frames); "
              f"page {r['page_fps']:.1f} frames/s; viewer CPU {r['viewer_cpu_percent_one_core']:.1f}% of one core; "
              f"send -> viewer p50/p99 {b['service_send_to_viewer_receive']['p50']:.1f}/"
              f"{b['service_send_to_viewer_receive']['p99']:.1f} ms, send -> in the page "
              f"{b['service_send_to_page_arrival']['p50']:.1f}/{b['service_send_to_page_arrival']['p99']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
