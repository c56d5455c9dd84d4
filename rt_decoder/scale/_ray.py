"""Ray plumbing shared by distributed reconstruction and training.

Owns: the Ray session (connect or start, thread pinning, shutdown), shipping a model
folder to workers as the bytes of the files its manifest names, the worker-side model
cache, the progress sink (a Ray actor) and the one progress bar over all tasks, and the
driver loop that waits for tasks, forwards failures as rt-decoder errors and cancels
everything on Ctrl-C.

``ray`` is imported inside functions only (:func:`require_ray`), so importing this module
never needs Ray. Nothing here unpickles data read from a file or a socket: models travel as
file bytes and are re-read on the worker by ``rt_decoder.encoder.manifest.load_model``;
arrays travel as numpy buffers in Ray's object store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

from rt_decoder.errors import BackendUnavailableError, ConfigError, ModelError, RtDecoderError

INSTALL_HINT = "pip install 'rt-decoder[scale]'"

#: environment variables that cap the thread pools of BLAS, OpenMP (ONNX Runtime, torch) and numba
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")

log = logging.getLogger("rt_decoder.scale")


def require_ray() -> ModuleType:
    """Import and return ``ray``; BackendUnavailableError naming the extra when it is missing."""
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError(f"--ray needs Ray, which is not installed here: {INSTALL_HINT}") from exc
    return ray


@dataclass(frozen=True)
class RaySettings:
    """Where and how tasks run.

    Parameters
    ----------
    address : "local" starts a new Ray instance on this machine (stopped at the end);
        "auto" joins the cluster this machine belongs to (``ray start``); "HOST:PORT" a
        cluster's GCS; "ray://HOST:10001" the Ray client server of a remote cluster.
    threads_per_task : CPUs each task reserves; ONNX Runtime / torch / BLAS / numba threads
        are pinned to this number inside the task.
    max_retries : times Ray re-runs a task whose worker process or node died.
    num_cpus : CPUs of a new local instance (address "local"; 0 = all cores).
    progress : show the progress bar.
    """

    address: str = "local"
    threads_per_task: int = 1
    max_retries: int = 3
    num_cpus: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not self.address.strip():
            raise ConfigError(f"Ray address must be 'local', 'auto', HOST:PORT or ray://HOST:PORT, got {self.address!r}")
        if not 1 <= self.threads_per_task <= 256:
            raise ConfigError(f"threads_per_task must be in [1, 256], got {self.threads_per_task}")
        if not 0 <= self.max_retries <= 100:
            raise ConfigError(f"max_retries must be in [0, 100], got {self.max_retries}")
        if not 0 <= self.num_cpus <= 4096:
            raise ConfigError(f"num_cpus must be in [0, 4096], got {self.num_cpus}")
        if self.num_cpus and self.address != "local":
            raise ConfigError("num_cpus applies to a new local instance only (address 'local')")


@contextmanager
def ray_session(settings: RaySettings) -> Iterator[ModuleType]:
    """Connect to (or start) Ray for the length of the block; disconnect afterwards.

    Workers of this job get the thread variables of :data:`THREAD_ENV` set to
    ``threads_per_task``. When Ray is already initialised in this process (a notebook, a
    test), that session is used as it is and left open.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    threads = str(settings.threads_per_task)
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": {name: threads for name in THREAD_ENV}},
                              "logging_level": logging.WARNING}
    if settings.address == "local":
        kwargs["include_dashboard"] = False
        if settings.num_cpus:
            kwargs["num_cpus"] = settings.num_cpus
    try:
        ray.init(address=settings.address, **kwargs)
    except ConnectionError as exc:
        hint = ("" if settings.address in ("local", "auto") else
                "; if the cluster uses token authentication, set RAY_AUTH_MODE=token and give this machine "
                "the head's token (~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise BackendUnavailableError(f"cannot reach a Ray cluster at {settings.address!r}: {exc}{hint}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------- the model
def model_files(model: Any) -> dict[str, bytes]:
    """The files of a loaded model folder that its manifest names, as bytes.

    Parameters
    ----------
    model : rt_decoder.encoder.manifest.EncoderModel

    Returns
    -------
    dict
        relative POSIX path -> file content: ``manifest.json``, ``neuron_ids.npy``, the
        masks file, every member's ``weights.npz`` and the exported graphs that exist.
    """
    man = model.manifest
    names = ["manifest.json", "neuron_ids.npy", str(man.masks["file"])]
    for m in man.members:
        names.append(f"{m.name}/weights.npz")
        names.extend(str(g) for g in m.graphs.values())
    out: dict[str, bytes] = {}
    for name in dict.fromkeys(names):
        path = Path(model.root) / name
        if path.is_file():
            out[_safe_relative(name)] = path.read_bytes()
        elif not name.endswith(".onnx"):  # graphs are rebuilt on load when absent
            raise ModelError(f"{path}: named by the manifest but missing")
    return out


def _safe_relative(name: str) -> str:
    p = PurePosixPath(name)
    if not name or p.is_absolute() or any(part in ("", "..") for part in p.parts) or "\\" in name:
        raise ModelError(f"model file name {name!r} is not a plain relative path inside the model folder")
    return str(p)


def files_digest(files: Mapping[str, bytes]) -> str:
    """sha256 over the sorted (name, content) pairs: the identity of a shipped model."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + len(files[name]).to_bytes(8, "little"))
        h.update(files[name])
    return h.hexdigest()


def materialise_model(files: Mapping[str, bytes], cache_dir: Path | None = None) -> Path:
    """Write shipped model files into a node-local folder named by their digest; return it.

    Written under a temporary name and renamed, so a concurrent worker on the same node
    either sees the whole folder or writes its own; an existing folder is reused.
    The caller loads it with ``load_model`` (which checks every weights hash).
    """
    digest = files_digest(files)
    base = cache_dir or Path(tempfile.gettempdir()) / f"rt-decoder-ray-models-{os.getuid()}"
    base.mkdir(parents=True, exist_ok=True)
    root = base / digest
    if (root / "manifest.json").is_file():
        if _holds(root, files):
            return root
        # changed on disk since it was written: use a private copy
        root = Path(tempfile.mkdtemp(prefix=f"{digest[:12]}-private-", dir=base))
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=base))
    try:
        for name, data in files.items():
            path = tmp / _safe_relative(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        try:
            os.replace(tmp, root)
        except OSError:  # another worker on this node finished first
            if not (root / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _holds(root: Path, files: Mapping[str, bytes]) -> bool:
    """Whether ``root`` holds exactly these bytes under these names."""
    try:
        return all((root / name).read_bytes() == data for name, data in files.items())
    except OSError:
        return False


# ----------------------------------------------------------------------------- progress
class ProgressSink:
    """A Ray actor (wrapped by :func:`start_progress_sink`) collecting progress reports.

    Every report is cumulative for one attempt of one task on one worker, so a task that
    Ray re-runs after its worker died counts from zero again without double counting.
    """

    def __init__(self) -> None:
        self._done: dict[tuple[str, str], tuple[int, float]] = {}
        self._messages: list[str] = []

    def report(self, task: str, worker: str, done: int, elapsed_s: float, messages: list[str]) -> None:
        """``done`` units in ``elapsed_s`` seconds so far, of ``task`` on ``worker``; new log lines."""
        self._done[(task, worker)] = (int(done), float(elapsed_s))
        self._messages.extend(str(m) for m in messages)

    def snapshot(self) -> tuple[dict[tuple[str, str], tuple[int, float]], list[str]]:
        """((units done, seconds) per (task, worker), messages since the last snapshot)."""
        msgs, self._messages = self._messages, []
        return dict(self._done), msgs


def start_progress_sink(ray: ModuleType) -> Any:
    """Start a :class:`ProgressSink` actor that reserves no CPU."""
    return ray.remote(num_cpus=0, max_restarts=0)(ProgressSink).remote()


def worker_label() -> str:
    """``<node ip>:<pid>`` of the calling worker process."""
    import ray

    return f"{ray.util.get_node_ip_address()}:{os.getpid()}"


class Reporter:
    """Worker side: counts units of work of one task and sends them to the sink.

    At most one report every ``interval_s`` (and one at :meth:`flush`); a sink that is
    gone is ignored (progress is best effort, results are not).
    """

    def __init__(self, sink: Any, task: str, interval_s: float = 0.5) -> None:
        self.sink = sink
        self.task = task
        self.worker = worker_label()
        self.interval_s = interval_s
        self.done = 0
        self._messages: list[str] = []
        self._start = time.monotonic()
        self._last = 0.0

    def __call__(self, n: int = 1, message: str | None = None) -> None:
        self.done += n
        if message is not None:
            self._messages.append(message)
        if time.monotonic() - self._last >= self.interval_s:
            self.flush()

    def message(self, text: str) -> None:
        """One unit done, with a log line (the ``progress`` callback of ``train_member``)."""
        self(1, text)

    def flush(self) -> None:
        if self.sink is None:
            return
        try:
            self.sink.report.remote(self.task, self.worker, self.done, time.monotonic() - self._start,
                                    self._messages)
        except Exception:  # noqa: BLE001 - progress is best effort; the task's result is what counts
            pass
        self._messages = []
        self._last = time.monotonic()


class TaskBar:
    """One tqdm bar over all tasks: units done (iterations, epochs), tasks done, per-worker throughput."""

    def __init__(self, task_units: Mapping[str, int], unit: str, desc: str, enabled: bool) -> None:
        from tqdm import tqdm

        self.task_units = dict(task_units)
        self.unit = unit
        self.bar = tqdm(total=sum(self.task_units.values()), desc=desc, unit=unit, disable=not enabled)
        self.finished: set[str] = set()
        self._done: dict[tuple[str, str], tuple[int, float]] = {}

    def update(self, done: Mapping[tuple[str, str], tuple[int, float]]) -> None:
        """Apply a sink snapshot: (units, seconds) per (task, worker)."""
        self._done.update(done)
        self._refresh()

    def task_finished(self, task: str, worker: str, units: int, seconds: float) -> None:
        """Mark ``task`` done by ``worker``, with the units it did and its compute seconds."""
        self.finished.add(task)
        self._done[(task, worker)] = (units, seconds)
        self._refresh()

    def per_worker(self) -> dict[str, float]:
        """Units per busy second of each worker (its tasks' own clocks)."""
        acc: dict[str, list[float]] = {}
        for (_, worker), (n, sec) in self._done.items():
            a = acc.setdefault(worker, [0.0, 0.0])
            a[0] += n
            a[1] += sec
        return {w: n / sec for w, (n, sec) in sorted(acc.items()) if sec >= 0.5}

    def _refresh(self) -> None:
        per_task: dict[str, int] = {}
        for (task, _), (n, _sec) in self._done.items():
            per_task[task] = min(max(per_task.get(task, 0), n), self.task_units.get(task, n))
        self.bar.n = sum(per_task.values())
        rates = ", ".join(f"{w} {r:.2f} {self.unit}/s" for w, r in self.per_worker().items())
        self.bar.set_postfix_str(f"tasks {len(self.finished)}/{len(self.task_units)}" + (f" | {rates}" if rates else ""),
                                 refresh=False)
        self.bar.refresh()

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------- the driver loop
def run_tasks(ray: ModuleType, refs: Mapping[str, Any], on_result: Callable[[str, Any], None], bar: TaskBar,
              sink: Any = None, on_messages: Callable[[list[str]], None] | None = None,
              poll_s: float = 0.5) -> None:
    """Wait for every task; hand each result to ``on_result(task, value)`` as it arrives.

    A task that raised an rt-decoder error re-raises that error here (Ray does not retry
    those); a task that still failed after its retries raises RtDecoderError naming it.
    On Ctrl-C (or any error) the remaining tasks are cancelled before the exception
    propagates.
    """
    pending = {ref: task for task, ref in refs.items()}

    def poll_progress() -> None:
        nonlocal sink
        if sink is None:
            return
        try:
            done, messages = ray.get(sink.snapshot.remote(), timeout=30)
        except ray.exceptions.RayError as exc:  # progress is best effort: carry on without it
            log.warning("progress reports lost: %s", exc)
            sink = None
            return
        bar.update(done)
        if messages and on_messages is not None:
            on_messages(messages)

    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll_s)
            poll_progress()
            for ref in ready:
                task = pending.pop(ref)
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, RtDecoderError):
                        raise cause from None
                    raise RtDecoderError(f"Ray task {task} failed: {cause!r}") from exc
                except ray.exceptions.RayError as exc:
                    raise RtDecoderError(f"Ray task {task} failed after its retries: {exc}") from exc
                on_result(task, value)
        poll_progress()
    except BaseException:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort while unwinding
                pass
        raise
