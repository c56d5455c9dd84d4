"""Scaling of offline reconstruction on Ray: the same job at 1 and 2 workers.

    python -m benchmarks.scale --out bench-scale.json [--quick]

The job: ``--trials`` trials x ``--members`` ensemble members = one Ray task each, the
published offline protocol for ``--iterations`` iterations on ``--frames``-frame trials
with a random encoder of ``--neurons`` neurons (default architecture, window 16; timing
does not depend on the weights' values). Every task runs with 1 thread (ONNX Runtime
intra-op, OpenMP / BLAS / numba pinned through the environment). For each worker count a
fresh local Ray instance with that many CPUs is started, its workers at niceness 0 (Ray's
default is 15: on a shared machine they would yield to every other process, and to the
local reference run), and its workers are warmed up
(started, onnxruntime and rt-decoder imported: not timed), then the job runs
through ``rt_decoder.scale.recon.reconstruct_on_ray`` (timed: scheduling, shipping the
model and arrays, model loading on the workers, compute, scoring on the driver).
The same job also runs without Ray in this process (``local_wall_s``), and the videos of
every run are checked to be identical to it.

Overhead per task: at 1 worker the tasks run one after the other, so
``overhead_ms_per_task = (wall_s - sum of the tasks' compute seconds) / tasks`` (everything
that is not reconstruction: scheduling, transfers, model loading, scoring on the driver);
``null_task_ms`` is the round trip of an empty task on a warm worker (200 tasks).

``--repeats`` rounds (default 3) each run the local job and then every worker count, so a
change of the machine's load hits all cases; medians over the rounds are reported.

JSON fields: ``cases`` (entries ``workers``, ``tasks``, ``wall_s`` (median),
``wall_s_runs``, ``speedup`` (vs 1 worker), ``efficiency``, ``tasks_per_s``, ``compute_s``
(sum over tasks of their wall time), ``cpu_s`` (sum of their CPU time), ``cpu_share``
(``cpu_s / (wall_s x workers)``: the share of the reserved cores the workers actually got;
below 1 when other processes take the CPUs), ``load_average_before``), ``local_wall_s``,
``local_cpu_share``, ``overhead_ms_per_task``, ``null_task_ms``, ``job``, ``machine``. The load average is recorded before every run: on a shared machine
other processes take cores, and a speed-up can only be judged with it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rt_decoder.scale._ray import THREAD_ENV


def _job(root: Path, neurons: int, members: int, trials: int, frames: int) -> tuple[Any, list[Any]]:
    from rt_decoder.encoder.synthetic import write_random_model
    from rt_decoder.io.sensorium import SensoriumTrial
    from rt_decoder.recon.runner import open_model

    write_random_model(root / "model", n_neurons=neurons, n_members=members, seed=0, window_frames=16)
    opened = open_model(root / "model", threads=1)
    rng = np.random.default_rng(0)
    out = []
    for t in range(trials):
        beh = (rng.normal(size=(frames, 4)) * [4, 6, 2, 2] + [18, 5, 0, 0]).astype(np.float32)
        out.append(SensoriumTrial(trial_id=t, tier="final_test_main",
                                  video=rng.uniform(0, 255, (frames, 36, 64)).astype(np.float32),
                                  responses=rng.poisson(0.3, (frames, neurons)).astype(np.float32), behaviour=beh))
    return opened, out


def _null_task() -> int:
    return 0


def _warm_worker() -> int:
    """Start a worker and import what the tasks import (a long-lived cluster's workers are warm)."""
    import onnxruntime  # noqa: F401

    import rt_decoder.scale.recon  # noqa: F401

    time.sleep(1.0)  # hold the CPU so that each warm-up task lands on its own worker
    return os.getpid()


def _ray_case(workers: int, opened: Any, trials: list[Any], settings: Any, local: list[Any],
              null_tasks: bool) -> dict[str, Any]:
    """One timed run of the job on a fresh local Ray instance of ``workers`` CPUs."""
    import ray

    from rt_decoder.scale import RaySettings
    from rt_decoder.scale.recon import reconstruct_on_ray

    n_tasks = len(trials) * len(opened.encoders)
    load = list(os.getloadavg())
    ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {name: "1" for name in THREAD_ENV}},
             _system_config={"worker_niceness": 0})  # Ray's default 15 would yield to the local reference
    try:
        t1 = time.perf_counter()
        warm = ray.remote(num_cpus=1)(_warm_worker)
        n_warm = len(set(ray.get([warm.remote() for _ in range(workers)])))
        warm_s = time.perf_counter() - t1
        res = reconstruct_on_ray(opened, trials, settings, RaySettings(address="auto", threads_per_task=1,
                                                                       progress=False))
        null_ms = float("nan")
        if null_tasks:
            f = ray.remote(num_cpus=1)(_null_task)
            ray.get([f.remote() for _ in range(20)])  # warm
            t1 = time.perf_counter()
            ray.get([f.remote() for _ in range(200)])
            null_ms = (time.perf_counter() - t1) / 200 * 1e3
    finally:
        ray.shutdown()
    for a, b in zip(local, res.results):
        if not np.array_equal(a.video, b.video):
            raise SystemExit(f"trial {a.trial_id}: the Ray run's video differs from the local run's")
    compute = sum(t.compute_s for t in res.tasks)
    cpu = sum(t.cpu_s for t in res.tasks)
    opening = sum(t.open_s for t in res.tasks)
    print(f"{workers} worker(s): {n_tasks} tasks in {res.wall_s:.1f} s (load {load[0]:.1f})", flush=True)
    return {"wall_s": res.wall_s, "compute_s": compute, "cpu_s": cpu, "cpu_share": cpu / (res.wall_s * workers),
            "open_s": opening,
            "overhead_ms_per_task": (res.wall_s - compute) / n_tasks * 1e3 if workers == 1 else None,
            "workers_used": len({t.worker for t in res.tasks}), "warm_workers": n_warm, "warmup_s": warm_s,
            "null_task_ms": null_ms, "load_average_before": load}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from rt_decoder.recon.offline import OfflineSettings
    from rt_decoder.recon.runner import reconstruct_trial

    for name in THREAD_ENV:  # the local reference run: 1 thread, as each task
        os.environ.setdefault(name, "1")
    settings = OfflineSettings(window_frames=16, stride_frames=8, iterations=args.iterations)
    runs: dict[int, list[dict[str, Any]]] = {w: [] for w in args.workers}
    local_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        opened, trials = _job(Path(tmp), args.neurons, args.members, args.trials, args.frames)
        n_tasks = len(trials) * len(opened.encoders)
        for r in range(args.repeats):  # rounds alternate the cases, so a change of load hits all of them
            load = list(os.getloadavg())
            t0, c0 = time.perf_counter(), time.process_time()
            local = [reconstruct_trial(opened, tr, settings) for tr in trials]
            local_runs.append({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                               "load_average_before": load})
            print(f"local (no Ray): {n_tasks} tasks in {local_runs[-1]['wall_s']:.1f} s (load {load[0]:.1f})",
                  flush=True)
            for w in args.workers:
                runs[w].append(_ray_case(w, opened, trials, settings, local, null_tasks=(w == 1 and r == 0)))
    med = lambda xs: float(np.median(xs))  # noqa: E731
    cases = []
    for w in args.workers:
        rs = runs[w]
        cases.append({"workers": w, "tasks": n_tasks, "wall_s": med([x["wall_s"] for x in rs]),
                      "wall_s_runs": [x["wall_s"] for x in rs],
                      "tasks_per_s": n_tasks / med([x["wall_s"] for x in rs]),
                      "compute_s": med([x["compute_s"] for x in rs]), "cpu_s": med([x["cpu_s"] for x in rs]),
                      "cpu_share": med([x["cpu_share"] for x in rs]), "open_s": med([x["open_s"] for x in rs]),
                      "workers_used": min(x["workers_used"] for x in rs),
                      "load_average_before": [x["load_average_before"] for x in rs]})
    base = next((c["wall_s"] for c in cases if c["workers"] == 1), cases[0]["wall_s"] * cases[0]["workers"])
    for c in cases:
        c["speedup"] = base / c["wall_s"]
        c["efficiency"] = c["speedup"] / c["workers"]
    one = runs.get(1, [])
    return {
        "benchmark": "scale", "cases": cases, "repeats": args.repeats,
        "local_wall_s": med([x["wall_s"] for x in local_runs]), "local_runs": local_runs,
        "local_cpu_share": med([x["cpu_s"] / x["wall_s"] for x in local_runs]),
        "overhead_ms_per_task": med([x["overhead_ms_per_task"] for x in one]) if one else None,
        "null_task_ms": one[0]["null_task_ms"] if one else None,
        "job": {"trials": args.trials, "members": args.members, "tasks": n_tasks, "iterations": args.iterations,
                "frames": args.frames, "neurons": args.neurons, "window_frames": 16, "stride_frames": 8,
                "threads_per_task": 1, "backend": "onnxruntime", "worker_niceness": 0},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "ray": ray.__version__, "load_average_after": list(os.getloadavg())},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-scale.json", help="JSON output")
    p.add_argument("--quick", action="store_true", help="a small job (8 short tasks), for a smoke run")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--members", type=int, default=2)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--neurons", type=int, default=1000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3, help="rounds of (local, each worker count); medians reported")
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.frames, args.repeats = 4, 120, 1
    res = run(args)
    Path(args.out).write_text(json.dumps(res, indent=2))
    for c in res["cases"]:
        print(f"workers {c['workers']}: {c['tasks']} tasks, wall {c['wall_s']:.1f} s, speed-up {c['speedup']:.2f}, "
              f"efficiency {c['efficiency']:.2f}, {c['tasks_per_s']:.2f} tasks/s, CPU share {c['cpu_share']:.2f}")
    print(f"local (no Ray) {res['local_wall_s']:.1f} s; overhead {res['overhead_ms_per_task']:.0f} ms/task; "
          f"null task {res['null_task_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
