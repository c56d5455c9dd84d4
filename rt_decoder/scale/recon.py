"""Offline reconstruction on Ray: one task per (trial, ensemble member).

Each task runs ``rt_decoder.recon.runner.reconstruct_trial`` -- the function the local
``rt-decoder reconstruct`` runs -- with a one-member model, on the trial's arrays; the
driver averages the members' videos in member order, blurs and scores them with
``runner.score_members`` (the second half of ``reconstruct_trial``), so the videos and
metrics are the local run's, bit for bit, for the same ``--threads`` on the same type of
CPU (ONNX Runtime's reductions depend on the thread count and the instruction set, not on
the process).

What moves: the model folder once per job (the bytes of the files its manifest names,
about 1.5 MB for the shipped demo; written once per node into a folder named by their
sha256 and loaded with the usual manifest loader), per trial its responses (T, N),
behaviour (T, 4) and true video (T, 36, 64) as float32 buffers, and back per task one
member video (T, 36, 64) float32 plus a few numbers. Outputs are written by the driver
only, each file under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rt_decoder.scale._ray import (RaySettings, Reporter, TaskBar, materialise_model, model_files, ray_session,
                                   run_tasks, start_progress_sink)

#: per worker process: (model digest, member, backend, threads) -> OpenedModel with that one member
_OPENED: dict[tuple[str, int, str, int], Any] = {}


@dataclass
class TaskRecord:
    """What one finished task reported: where it ran and how long it took (seconds)."""

    task: str
    trial_id: int
    member: int
    worker: str
    open_s: float
    compute_s: float
    cpu_s: float = 0.0  # CPU time of the worker process during compute (all its threads)


@dataclass
class RayRun:
    """Results of :func:`reconstruct_on_ray`: one TrialResult per trial (input order) and task records."""

    results: list[Any]
    tasks: list[TaskRecord] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready description of the run (tasks and seconds per worker)."""
        workers: dict[str, dict[str, float]] = {}
        for t in self.tasks:
            w = workers.setdefault(t.worker, {"tasks": 0, "busy_s": 0.0})
            w["tasks"] += 1
            w["busy_s"] += t.open_s + t.compute_s
        return {"tasks": len(self.tasks), "wall_s": self.wall_s, "workers": workers}


def _open_member(files: dict[str, bytes], member: int, backend: str, threads: int) -> Any:
    """Worker side: the shipped model with one member's backend open (cached per process)."""
    from rt_decoder.encoder.backends import BackendSettings, open_backend
    from rt_decoder.encoder.manifest import load_model
    from rt_decoder.recon.runner import OpenedModel
    from rt_decoder.scale._ray import files_digest

    key = (files_digest(files), member, backend, threads)
    if key not in _OPENED:
        model = load_model(materialise_model(files))
        enc = open_backend(model, member, BackendSettings(kind=backend, intra_op_threads=threads))
        _OPENED[key] = OpenedModel(model, [enc], np.asarray(model.masks.train_mask, bool),
                                   np.asarray(model.masks.eval_mask, bool))
    return _OPENED[key]


def reconstruct_member_task(files: dict[str, bytes], member: int, backend: str, threads: int, settings: Any,
                            trial_id: int, tier: str, video: np.ndarray, responses: np.ndarray,
                            behaviour: np.ndarray, neuron_weights: np.ndarray | None, sink: Any,
                            task: str, init_video: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """One (trial, member): the member's video (T, 36, 64) float32, and the task's record."""
    from rt_decoder.io.sensorium import SensoriumTrial
    from rt_decoder.recon.runner import reconstruct_trial

    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    opened = _open_member(files, member, backend, threads)
    t1 = time.perf_counter()
    c1 = time.process_time()
    # writable copies of the object store's read-only buffers (same values, same dtypes)
    trial = SensoriumTrial(trial_id=trial_id, tier=tier, video=np.array(video), responses=np.array(responses),
                           behaviour=np.array(behaviour))
    report = Reporter(sink, task)
    result = reconstruct_trial(opened, trial, settings, neuron_weights=neuron_weights, progress=report,
                               init_video=None if init_video is None else np.array(init_video))
    report.flush()
    return result.members[0], {"worker": report.worker, "open_s": t1 - t0, "compute_s": time.perf_counter() - t1,
                               "cpu_s": time.process_time() - c1}


def reconstruct_on_ray(opened: Any, trials: Sequence[Any], settings: Any, ray_settings: RaySettings, *,
                       backend: str = "onnxruntime", neuron_weights: np.ndarray | None = None,
                       on_trial: Callable[[Any, Any], None] | None = None, amortised: Any = None) -> RayRun:
    """Reconstruct ``trials`` with every member of ``opened``, one Ray task per (trial, member).

    Parameters
    ----------
    opened : rt_decoder.recon.runner.OpenedModel
        The model as opened by the driver (its files are shipped; its eval mask scores).
    trials : sequence of SensoriumTrial
        Each with video (T, 36, 64), responses (T, N) and behaviour (T, 4).
    settings : rt_decoder.recon.offline.OfflineSettings
    ray_settings : RaySettings
        ``threads_per_task`` is also the ONNX Runtime / torch thread count of each task.
    neuron_weights : ndarray (N,) or None
    on_trial : callable(TrialResult, SensoriumTrial) or None
        Called on the driver as soon as all members of a trial are in (trials finish in
        any order), e.g. to write its outputs.

    Returns
    -------
    RayRun
        TrialResults in the order of ``trials`` (identical to ``reconstruct_trial``'s,
        except ``metrics["seconds"]``: here the sum of the member tasks' compute time).
    """
    from rt_decoder.recon.runner import score_members

    n_members = len(opened.encoders)
    threads = ray_settings.threads_per_task
    t_start = time.perf_counter()
    with ray_session(ray_settings) as ray:
        task_fn = ray.remote(reconstruct_member_task)
        files_ref = ray.put(model_files(opened.model))
        weights_ref = None if neuron_weights is None else ray.put(np.asarray(neuron_weights, np.float32))
        sink = start_progress_sink(ray) if ray_settings.progress else None
        refs: dict[str, Any] = {}
        where: dict[str, tuple[int, int]] = {}
        for i, tr in enumerate(trials):
            arrays = [ray.put(np.ascontiguousarray(a)) for a in (tr.video, tr.responses, tr.behaviour)]
            # the amortised start, once per trial on the driver (as the local run computes it)
            init_ref = None if amortised is None else ray.put(
                amortised.decode(np.asarray(tr.responses, np.float32), neuron_weights))
            for k in range(n_members):
                name = f"trial {tr.trial_id} member {k}"
                refs[name] = task_fn.options(num_cpus=threads, max_retries=ray_settings.max_retries,
                                             name=f"rt-decoder-recon-t{tr.trial_id}-m{k}").remote(
                    files_ref, k, backend, threads, settings, int(tr.trial_id), str(tr.tier), *arrays, weights_ref,
                    sink, name, init_ref)
                where[name] = (i, k)
        bar = TaskBar({name: settings.iterations for name in refs}, unit="it", desc="reconstruct (ray)",
                      enabled=ray_settings.progress)
        members: list[dict[int, np.ndarray]] = [{} for _ in trials]
        seconds = [0.0] * len(trials)
        results: list[Any] = [None] * len(trials)
        records: list[TaskRecord] = []

        def on_result(name: str, value: tuple[np.ndarray, dict[str, Any]]) -> None:
            video, meta = value
            i, k = where[name]
            members[i][k] = np.asarray(video, np.float32)
            seconds[i] += float(meta["compute_s"])
            records.append(TaskRecord(name, int(trials[i].trial_id), k, str(meta["worker"]), float(meta["open_s"]),
                                      float(meta["compute_s"]), float(meta["cpu_s"])))
            bar.task_finished(name, str(meta["worker"]), settings.iterations, float(meta["compute_s"]))
            if len(members[i]) == n_members:
                res = score_members(trials[i], [members[i][j] for j in range(n_members)], settings,
                                    opened.eval_mask, seconds[i])
                results[i] = res
                members[i] = {}
                if on_trial is not None:
                    on_trial(res, trials[i])

        try:
            run_tasks(ray, refs, on_result, bar, sink)
        finally:
            bar.close()
    return RayRun(results, records, time.perf_counter() - t_start)


# ----------------------------------------------------------------------------- outputs
def write_outputs_atomically(out_dir: Path, result: Any, truth: np.ndarray, *, figures: bool) -> None:
    """``runner.write_trial_outputs`` into a hidden staging folder, then each file renamed into ``out_dir``.

    A file in ``out_dir`` is therefore either absent or complete; the staging folder is
    removed even when interrupted.
    """
    from rt_decoder.recon.runner import write_trial_outputs

    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=out_dir))
    try:
        write_trial_outputs(stage, result, truth, figures=figures)
        for path in sorted(stage.iterdir()):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_json_atomically(path: Path, data: Any) -> None:
    """``json.dumps(data)`` to ``path`` through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data, indent=2))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_reconstruct(args: Any, ds: Any, ids: Sequence[int], opened: Any, settings: Any,
                    neuron_weights: np.ndarray | None, amortised: Any = None,
                    summary_fields: dict[str, Any] | None = None) -> int:
    """``rt-decoder reconstruct --ray``: the command's run after trial selection (see its module)."""
    from tqdm import tqdm

    from rt_decoder.recon.runner import summarise

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rs = RaySettings(address=args.ray, threads_per_task=args.threads, progress=not args.no_progress)
    trials = [ds.trial(t) for t in ids]

    def on_trial(res: Any, trial: Any) -> None:
        write_outputs_atomically(out, res, trial.video, figures=not args.no_figures)
        tqdm.write(f"trial {res.trial_id}: video_corr={res.metrics['video_corr']:.3f} "
                  f"(members {', '.join(f'{c:.3f}' for c in res.metrics['member_video_corr'])})")

    run = reconstruct_on_ray(opened, trials, settings, rs, backend=args.backend, neuron_weights=neuron_weights,
                             on_trial=on_trial, amortised=amortised)
    summary = summarise(run.results)
    summary.update(summary_fields or {})
    summary.update(ray={"address": args.ray, "threads_per_task": args.threads, **run.summary()})
    write_json_atomically(out / "metrics.json", {"summary": summary, "trials": [r.metrics for r in run.results]})
    print(json.dumps(summary, indent=2))
    return 0
