"""Calibration figures of the virtual rig and the speed of ``rt-decoder simulate``.

Run::

    python -m benchmarks.calibration [--quick] --out FILE.json

Calibration (definitions in ``rt_decoder.sim.calibration``): per neuron, the Pearson
correlation over time (first 50 frames of each trial skipped, trials concatenated) between

- ``ceiling``: the noiseless expected activity (``rates``) and the sampled spike counts:
  the single-trial ceiling any encoder can reach (mouse V1: the best encoder scores 0.29);
- ``fluorescence``: the expected calcium dF/F and the raw ROI fluorescence;
- ``deconvolved``: ``rates`` and ``rt_decoder.deconv.deconvolve_array`` of the raw
  fluorescence (what the decoder is trained on), when that module is importable;

each averaged over neurons; for both indicator presets. Full: 1,000 neurons x 10 trials;
``--quick``: 300 x 4.

Speed: ``rt-decoder simulate --neurons 8000 --trials 20 --seed 0`` as a subprocess
(``--quick``: 4 trials), wall time; the rig's build time; the time to generate one
300-frame trial of 8,000 neurons (``VirtualRig.trial``, median of 3); and in
``VirtualRig.stream`` the longest wait for a frame (the frame that starts a trial, when
the whole trial is generated). Numbers are wall-clock on a shared machine: the load
average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                       "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")},
        "load_average": list(os.getloadavg()),
    }


def _deconvolver() -> tuple[Any, str]:
    try:
        from rt_decoder.deconv import deconvolve_array
    except ImportError as exc:
        return None, f"rt_decoder.deconv not importable: {exc}"
    return deconvolve_array, "rt_decoder.deconv.deconvolve_array"


def calibration(n_neurons: int, n_trials: int) -> list[dict[str, Any]]:
    from rt_decoder.errors import RtDecoderError
    from rt_decoder.sim import RigConfig, VirtualRig
    from rt_decoder.sim.calibration import measure_calibration

    deconvolve, source = _deconvolver()
    out = []
    for indicator in ("GCaMP6s", "GCaMP8m"):
        rig = VirtualRig(RigConfig(n_neurons=n_neurons, seed=0, indicator=indicator))
        t0 = time.perf_counter()
        note = source
        try:
            report = measure_calibration(rig, list(range(n_trials)), deconvolve=deconvolve)
        except RtDecoderError as exc:  # e.g. the deconvolver refuses these traces: report without it
            note = f"deconvolution failed: {exc}"
            report = measure_calibration(rig, list(range(n_trials)))
        row = {"indicator": indicator, **report.to_dict(), "deconvolution": note,
               "seconds": time.perf_counter() - t0}
        out.append(row)
        dec = "n/a" if report.deconvolved_mean is None else f"{report.deconvolved_mean:.3f}"
        print(f"calibration {indicator}: {n_neurons} neurons x {n_trials} trials: "
              f"ceiling corr(rates, spikes) mean {report.ceiling_mean:.3f} (median {report.ceiling_median:.3f}, "
              f"p10-p90 {report.ceiling_p10:.3f}-{report.ceiling_p90:.3f}); "
              f"corr(expected dF/F, raw F) {report.fluorescence_mean:.3f}; "
              f"corr(rates, deconvolved F) {dec}; mean rate {report.mean_rate_hz:.2f} Hz "
              f"(median neuron {report.median_neuron_rate_hz:.2f} Hz)", flush=True)
    return out


def rig_speed(n_neurons: int, repeats: int) -> dict[str, Any]:
    from rt_decoder.sim import RigConfig, VirtualRig

    t0 = time.perf_counter()
    rig = VirtualRig(RigConfig(n_neurons=n_neurons, seed=0))
    build_s = time.perf_counter() - t0
    rig.trial(100)  # warm caches (photographs)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        rig.trial(i)
        times.append(time.perf_counter() - t0)
    waits = []
    last = time.perf_counter()
    for _ in rig.stream(list(range(repeats))):
        now = time.perf_counter()
        waits.append(now - last)
        last = now
    waits_arr = np.array(waits)
    res = {
        "n_neurons": n_neurons,
        "build_s": build_s,
        "trial_s": times,
        "trial_median_s": statistics.median(times),
        "stream_longest_wait_s": float(waits_arr.max()),
        "stream_median_wait_ms": float(np.median(waits_arr) * 1e3),
    }
    print(f"rig {n_neurons} neurons: build {build_s:.2f} s; one 300-frame trial {res['trial_median_s']:.2f} s "
          f"(median of {repeats}); stream: longest wait for a frame {res['stream_longest_wait_s']:.2f} s, "
          f"median {res['stream_median_wait_ms']:.3f} ms", flush=True)
    return res


def simulate_speed(n_neurons: int, n_trials: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rtdec-sim-") as tmp:
        out = Path(tmp) / "ds"
        cmd = [sys.executable, "-m", "cli", "simulate", "--out", str(out), "--neurons", str(n_neurons),
               "--trials", str(n_trials), "--seed", "0", "--no-progress"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.exists() else 0
    res: dict[str, Any] = {"command": "rt-decoder " + " ".join(cmd[3:5] + cmd[6:]), "returncode": proc.returncode, "wall_s": wall,
           "n_neurons": n_neurons, "n_trials": n_trials, "bytes_written": size,
           "stdout": proc.stdout.strip()[-500:], "stderr": proc.stderr.strip()[-1000:]}
    status = "ok" if proc.returncode == 0 else f"FAILED rc={proc.returncode}: {res['stderr'][-300:]}"
    print(f"simulate {n_neurons} neurons x {n_trials} trials x 300 frames: {wall:.1f} s wall, "
          f"{size / 1e6:.0f} MB written ({status})\n  {res['stdout']}", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calibration", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller calibration, 4-trial simulate")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"benchmark": "calibration", "quick": args.quick, "machine": _machine(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    cal_n, cal_trials = (300, 4) if args.quick else (1000, 10)
    result["calibration"] = calibration(cal_n, cal_trials)
    result["rig_speed"] = rig_speed(8000, 2 if args.quick else 3)
    result["simulate"] = simulate_speed(8000, 4 if args.quick else 20)
    result["load_average_after"] = list(os.getloadavg())
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0 if result["simulate"]["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
