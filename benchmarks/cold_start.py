"""Benchmark of start-up: first and second start of ``rt-decoder deconvolve``, ``serve``, ``simulate``.

Run::

    python -m benchmarks.cold_start --out bench-cold-start.json [--repeats 3]

"First start" = an empty kernel cache (a fresh ``NUMBA_CACHE_DIR``: what a new machine or
a fresh install sees; the numba kernels compile and the commands say so on stderr);
"second start" = the same command again with that cache filled. Each command runs as its
own process, as a user runs it, and the wall time is measured from just before the
process is started:

- ``deconvolve``: ``rt-decoder deconvolve F.npy --fs 30 --out act.npy`` on 191 ROIs x
  5,180 frames (simulated AR(2) traces, SNR 3), until the process exits;
- ``serve``: ``rt-decoder serve --config serve.toml`` (defaults: live reconstruction with
  the shipped demo model; free loopback ports) until it prints ``READY`` on stderr; then
  SIGINT, and it must exit with 0;
- ``simulate``: ``rt-decoder simulate --neurons 1000 --trials 2 --no-progress`` (responses
  from the online deconvolution), until the process exits.

Second starts are repeated ``--repeats`` times (median and max reported). The JSON holds
every time, the CPU time (user + system) of each process (for ``serve``: to its exit
after SIGINT), whether the compile notice was printed, and the machine's load at start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NOTICE = "compiling kernels, once per machine"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli() -> list[str]:
    return [sys.executable, "-m", "cli"]


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(ru.ru_utime + ru.ru_stime)


def _run_to_exit(cmd: list[str], env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    c0 = _children_cpu_s()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} exited with {p.returncode}: {p.stderr[-2000:]}")
    return {"wall_s": wall, "cpu_s": _children_cpu_s() - c0, "compile_notice": NOTICE in p.stderr}


def _serve_to_ready(config: Path, env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    c0 = _children_cpu_s()
    t0 = time.perf_counter()
    p = subprocess.Popen([*_cli(), "serve", "--config", str(config)], env=env, stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    ready_s = None
    try:
        assert p.stderr is not None
        deadline = t0 + timeout_s
        while time.perf_counter() < deadline:
            line = p.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "READY" in line:
                ready_s = time.perf_counter() - t0
                break
        if ready_s is None:
            raise RuntimeError(f"serve did not become READY in {timeout_s} s: {''.join(lines)[-2000:]}")
        p.send_signal(signal.SIGINT)
        _, rest = p.communicate(timeout=60)
        lines.append(rest)
        if p.returncode != 0:
            raise RuntimeError(f"serve exited with {p.returncode} after SIGINT: {''.join(lines)[-2000:]}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # CPU time of the whole process, READY and the SIGINT drain included
    return {"wall_s": ready_s, "cpu_s": _children_cpu_s() - c0, "compile_notice": NOTICE in "".join(lines)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cold_start", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON output file")
    ap.add_argument("--repeats", type=int, default=3, help="second starts per command (default 3)")
    ap.add_argument("--timeout-s", type=float, default=600.0, help="limit per process (default 600)")
    args = ap.parse_args(argv)
    from benchmarks.deconv import simulate

    results: dict[str, Any] = {}
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="rtd-cold-") as tmp:
        work = Path(tmp)
        F, _ = simulate(191, 5180, "ar2", 3.0, np.random.default_rng(0))
        np.save(work / "F.npy", np.ascontiguousarray(F.T), allow_pickle=False)
        cfg = work / "serve.toml"
        cfg.write_text(
            f'[input]\naddress = "tcp://127.0.0.1:{_free_port()}"\n'
            f'[output]\naddress = "tcp://127.0.0.1:{_free_port()}"\n'
            f'[status]\naddress = "tcp://127.0.0.1:{_free_port()}"\nstatus_line_every_s = 0.0\n')
        env: dict[str, str] = {}
        commands = {
            "deconvolve": lambda i: _run_to_exit([*_cli(), "deconvolve", str(work / "F.npy"), "--fs", "30", "--out",
                                                  str(work / f"act{i}.npy")], env, args.timeout_s),
            "serve": lambda i: _serve_to_ready(cfg, env, args.timeout_s),
            "simulate": lambda i: _run_to_exit([*_cli(), "simulate", "--out", str(work / f"sim{i}"), "--neurons",
                                                "1000", "--trials", "2", "--no-progress"], env, args.timeout_s),
        }
        for name, fn in commands.items():
            env = dict(os.environ, NUMBA_CACHE_DIR=str(work / f"numba-cache-{name}"))
            first = fn(0)
            seconds = [fn(i + 1) for i in range(args.repeats)]
            walls = [s["wall_s"] for s in seconds]
            cpus = [s["cpu_s"] for s in seconds]
            results[name] = {"first_start_s": first["wall_s"], "first_cpu_s": first["cpu_s"],
                             "first_compile_notice": first["compile_notice"],
                             "second_start_s": walls, "second_start_median_s": float(np.median(walls)),
                             "second_start_max_s": float(np.max(walls)), "second_cpu_s": cpus,
                             "second_cpu_median_s": float(np.median(cpus)),
                             "second_compile_notice": any(s["compile_notice"] for s in seconds)}
            print(f"{name:<11} first {first['wall_s']:7.2f} s (cpu {first['cpu_s']:.2f} s, notice "
                  f"{first['compile_notice']})   second median {np.median(walls):6.2f} s (cpu {np.median(cpus):.2f} s), "
                  f"max {np.max(walls):6.2f} s", file=sys.stderr)
    out = {"benchmark": "cold_start",
           "command": f"python -m benchmarks.cold_start --out {args.out} --repeats {args.repeats}",
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                       "loadavg_at_start": load},
           "results": results}
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
