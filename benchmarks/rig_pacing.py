"""Pacing benchmark of the virtual rig: 30 Hz, 8,000 ROIs, to a real subscriber process.

    python -m benchmarks.rig_pacing [--quick] [--seconds S] [--neurons N] --out FILE

Runs ``rt-decoder rig`` and ``rt-decoder listen`` as separate processes on loopback, once
at normal priority and once with ``--realtime`` (SCHED_FIFO, when the OS allows it), and
reports per case: the send lateness (send start minus the frame's absolute deadline), the
inter-arrival time at the subscriber and its deviation from the period, the latency from
the frame's deadline to its receipt, and the drift over the run; median / p99 / max in ms.
Target: send lateness p99 < 1 ms. JSON out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGET_P99_MS = 1.0


def _stats_ms(a_ns: np.ndarray) -> dict[str, float]:
    a = np.asarray(a_ns, dtype=np.float64) / 1e6
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "median": float(np.median(a)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max())}


def run_case(neurons: int, rate_hz: float, seconds: float, realtime: bool, tmp: Path) -> dict[str, Any]:
    frames = int(round(seconds * rate_hz))
    rig_json, sub_json = tmp / f"rig-{realtime}.json", tmp / f"sub-{realtime}.json"
    rt = ["--realtime"] if realtime else []
    cli = [sys.executable, "-m", "cli"]
    rig = subprocess.Popen(cli + ["rig", "--bind", "tcp://127.0.0.1:*", "--neurons", str(neurons), "--frames",
                                  str(frames), "--fs", str(rate_hz), "--wait-subscribers", "1",
                                  "--report-every-s", "0", "--summary-json", str(rig_json), *rt],
                           stdout=subprocess.PIPE, text=True)
    assert rig.stdout is not None
    address = None
    notes = []
    for line in rig.stdout:
        notes.append(line.strip())
        m = re.search(r"publishing on (\S+)", line)
        if m:
            address = m.group(1)
            break
    if address is None:
        rig.wait()
        raise SystemExit(f"rig did not start: {notes}")
    sub = subprocess.Popen(cli + ["listen", "--connect", address, "--frames", str(frames), "--timeout-s",
                                  str(seconds * 3 + 120), "--report-every-s", "0", "--quiet", "--summary-json",
                                  str(sub_json), *rt], stdout=subprocess.DEVNULL)
    rc_sub = sub.wait()
    rest = rig.stdout.read()
    rc_rig = rig.wait()
    notes += [ln for ln in rest.splitlines() if ln.startswith("rig:")]
    r = json.loads(rig_json.read_text())
    s = json.loads(sub_json.read_text())
    late = np.asarray(r["send_lateness_ns"], dtype=np.int64)
    arrival = np.asarray(s["arrival_ns"], dtype=np.int64)
    idx = np.asarray(s["frame_index"], dtype=np.int64)
    period_ns = 1e9 / rate_hz
    inter = np.diff(arrival)
    dev = np.abs(inter - period_ns)
    acq = np.asarray(s["acq_to_recv_ns"], dtype=np.int64)
    k = min(30, late.size // 4) or 1
    # arrival drift: slope of arrival time vs frame index, relative to the nominal period
    slope = float(np.polyfit(idx, arrival, 1)[0]) if idx.size > 2 else float("nan")
    return {
        "mode": "realtime" if realtime else "normal",
        "realtime_granted": any("real-time priority on" in n for n in notes) if realtime else False,
        "neurons": neurons, "rate_hz": rate_hz, "seconds": seconds,
        "frames_sent": r["frames_sent"], "frames_received": s["frames"],
        "missing_messages": s["counters"]["missing"], "malformed": s["counters"]["malformed"],
        "send_lateness_ms": _stats_ms(np.abs(late)),
        "send_call_ms": {k2: r["send_call"][k2 + "_ms"] for k2 in ("median", "p99", "max")},
        "inter_arrival_ms": _stats_ms(inter),
        "inter_arrival_deviation_ms": _stats_ms(dev),
        "deadline_to_recv_ms": _stats_ms(acq),
        "drift_ms": float((np.median(late[-k:]) - np.median(late[:k])) / 1e6) if late.size else float("nan"),
        "arrival_period_error_ppm": (slope - period_ns) / period_ns * 1e6 if slope == slope else float("nan"),
        "generator_underruns": r["generator_underruns"], "late_frames_over_half_period": r["late_frames_over_half_period"],
        "lead_frames": r.get("lead_frames"), "lead_wait_s": r.get("lead_wait_s"),
        "buffer_min_frames": r.get("buffer_min_frames"), "rig_real_time": r.get("real_time"),
        "rig_real_time_reason": r.get("real_time_reason"),
        "achieved_rate_hz": r["achieved_rate_hz"], "received_rate_hz": s["rate_hz"],
        "meets_target_p99_lt_1ms": bool(np.percentile(np.abs(late), 99) / 1e6 < TARGET_P99_MS) if late.size else False,
        "exit_codes": {"rig": rc_rig, "listen": rc_sub},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rig_pacing", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="10 s per case")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds per case (default 60)")
    p.add_argument("--neurons", type=int, default=8000)
    p.add_argument("--rate-hz", type=float, default=30.0)
    p.add_argument("--modes", default="normal,realtime", help="comma list of normal, realtime")
    p.add_argument("--out", required=True, help="JSON output file")
    a = p.parse_args(argv)
    seconds = 10.0 if a.quick else a.seconds
    load_before = os.getloadavg()
    cases = []
    with tempfile.TemporaryDirectory() as td:
        for mode in [m.strip() for m in a.modes.split(",") if m.strip()]:
            if mode not in ("normal", "realtime"):
                raise SystemExit(f"unknown mode {mode!r}")
            t0 = time.monotonic()
            case = run_case(a.neurons, a.rate_hz, seconds, mode == "realtime", Path(td))
            case["wall_s"] = time.monotonic() - t0
            cases.append(case)
            lat = case["send_lateness_ms"]
            ia = case["inter_arrival_deviation_ms"]
            print(f"{mode:8s} {a.neurons} ROIs {a.rate_hz:g} Hz {seconds:g} s: sent {case['frames_sent']} "
                  f"received {case['frames_received']} lost {case['missing_messages']}; send lateness median "
                  f"{lat['median']:.3f} p99 {lat['p99']:.3f} max {lat['max']:.3f} ms; inter-arrival deviation "
                  f"median {ia['median']:.3f} p99 {ia['p99']:.3f} max {ia['max']:.3f} ms; drift "
                  f"{case['drift_ms']:.3f} ms; generator underruns {case['generator_underruns']}", flush=True)
    out = {
        "benchmark": "rig_pacing", "target": "send lateness p99 < 1 ms at 30 Hz, 8000 ROIs",
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "load_avg_before": load_before, "load_avg_after": os.getloadavg()},
        "cases": cases,
    }
    Path(a.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
