"""Ensemble training on Ray: one task per member.

:class:`RayMemberTrainer` is the ``train_members`` hook of
``rt_decoder.encoder.train.train_model``: each task calls ``train_member`` -- the function
the local ``rt-decoder train`` calls for each seed -- with the same split, architecture,
settings, seed and initial readout positions, with torch pinned to ``threads_per_task``
threads; the driver rebuilds each member's ``Encoder`` from the returned float32 weights
and ``train_model`` goes on as it does locally (alpha masks, held-out scores, manifest).
The members' weights are the local run's, bit for bit, for the same ``--threads`` on the
same type of CPU.

What moves: the training split once per job as float32 buffers (video, responses,
behaviour, rates of every train / validation / test trial) plus the neuron ids and
initial positions; back per member its weights (a few hundred kB) and its history, and
one line per epoch for the progress bar and ``train.log``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rt_decoder.scale._ray import RaySettings, Reporter, TaskBar, ray_session, run_tasks, start_progress_sink


def split_payload(split: Any) -> dict[str, Any]:
    """A DataSplit as plain numpy arrays and scalars (what goes into the object store)."""
    def part(trials: Sequence[Any]) -> list[dict[str, Any]]:
        return [{"trial_id": int(t.trial_id), "video": t.video, "responses": t.responses, "behaviour": t.behaviour,
                 "rates": t.rates} for t in trials]

    return {"train": part(split.train), "val": part(split.val), "test": part(split.test),
            "neuron_ids": np.asarray(split.neuron_ids), "frame_rate_hz": float(split.frame_rate_hz),
            "data_hash": str(split.data_hash), "responses_source": str(split.responses_source)}


def split_from_payload(payload: dict[str, Any]) -> Any:
    """Rebuild the DataSplit on the worker, with writable copies of the arrays."""
    from rt_decoder.encoder.train import DataSplit, TrialArrays

    def part(items: list[dict[str, Any]]) -> list[Any]:
        return [TrialArrays(int(d["trial_id"]), np.array(d["video"]), np.array(d["responses"]),
                            np.array(d["behaviour"]), None if d["rates"] is None else np.array(d["rates"]))
                for d in items]

    return DataSplit(part(payload["train"]), part(payload["val"]), part(payload["test"]),
                     np.array(payload["neuron_ids"]), float(payload["frame_rate_hz"]), str(payload["data_hash"]),
                     str(payload["responses_source"]))


def train_member_task(payload: dict[str, Any], arch: Any, cfg: Any, seed: int, positions: np.ndarray, threads: int,
                      sink: Any, task: str) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """One member: its weights (``Encoder.to_numpy``), its history, and the task's record."""
    import torch

    from rt_decoder.encoder.train import train_member

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    split = split_from_payload(payload)
    report = Reporter(sink, task)
    net, info = train_member(split, arch, cfg, seed, report.message, np.array(positions))
    report.flush()
    return net.to_numpy(), info, {"worker": report.worker, "seconds": time.perf_counter() - t0}


@dataclass
class RayMemberTrainer:
    """``train_members`` for ``train_model``: every member a Ray task (see the module docstring).

    Parameters
    ----------
    settings : RaySettings
    logger : receives each member's per-epoch lines, as the local run logs them
    """

    settings: RaySettings
    logger: logging.Logger | None = None
    records: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, split: Any, arch: Any, cfg: Any, seeds: Sequence[int],
                 positions: np.ndarray) -> list[tuple[Any, dict]]:
        import torch

        from rt_decoder.encoder.torch_model import Encoder

        # train_member switches this on in the process that trains; the driver then computes
        # the alpha masks and held-out scores, as the local run does after its members.
        torch.use_deterministic_algorithms(True)
        rs = self.settings
        n_neurons = int(split.train[0].responses.shape[1])
        with ray_session(rs) as ray:
            task_fn = ray.remote(train_member_task)
            data_ref = ray.put(split_payload(split))
            pos_ref = ray.put(np.asarray(positions, np.float32))
            sink = start_progress_sink(ray) if rs.progress else None
            names = [f"member seed {s}" for s in seeds]
            refs = {name: task_fn.options(num_cpus=rs.threads_per_task, max_retries=rs.max_retries,
                                          name=f"rt-decoder-train-seed{s}").remote(
                data_ref, arch, cfg, int(s), pos_ref, rs.threads_per_task, sink, name)
                for name, s in zip(names, seeds)}
            bar = TaskBar({name: cfg.epochs for name in names}, unit="epoch", desc="train (ray)", enabled=rs.progress)
            out: dict[str, tuple[Any, dict]] = {}

            def on_result(name: str, value: tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]) -> None:
                params, info, meta = value
                net = Encoder(arch, n_neurons)
                net.load_numpy({k: np.array(v) for k, v in params.items()})  # writable copies
                net.eval()
                out[name] = (net, info)
                self.records.append({"task": name, **meta})
                bar.task_finished(name, str(meta["worker"]), len(info["history"]), float(meta["seconds"]))

            def on_messages(messages: list[str]) -> None:
                if self.logger is not None:
                    for m in messages:
                        self.logger.info(m)

            try:
                run_tasks(ray, refs, on_result, bar, sink, on_messages)
            finally:
                bar.close()
        return [out[name] for name in names]
