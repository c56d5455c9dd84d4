"""Run the reconstruction in its own process, so the frame path never waits for it.

``ReconstructionProcess`` is a ``rt_decoder.pipeline.Reconstructor`` that forwards every
call to a reconstructor built and run in a child process (``multiprocessing`` "spawn"),
started at a lower CPU priority (``nice``, and optionally ``SCHED_IDLE``) so that on a busy
machine the scheduler serves the service's frame path (intake, deconvolution, recording,
output) first and the
reconstruction takes what is left: it sheds load by fitting fewer gradient steps into its
budget and by skipping to the newest frame, both counted.

Transfer: the activity window (W x N float32) and the frame's values go through one
shared-memory block the parent writes and the child reads (the parent writes only while
the child waits for work); everything else is small msgpack messages over a pipe. Nothing
is ever unpickled from a message: only the child's start arguments travel with pickle,
from this process to its own child.

The child ignores SIGINT (the parent drains and stops it). If it dies, the next call
raises ``RuntimeError`` (the service goes FATAL, visibly).

Imports numpy, msgpack and the standard library; never zmq.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import msgpack
import numpy as np

from rt_decoder.errors import StageError
from rt_decoder.messages import ActivityFrame, DecodedFrame, SessionInfo

_START_TIMEOUT_S = 600.0  # building the model in the child (ONNX Runtime sessions)
_CALL_TIMEOUT_S = 600.0  # warm-up sizes the ensemble by timing steps


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def _frame_dict(f: DecodedFrame) -> dict[str, Any]:
    img = np.ascontiguousarray(f.image, np.float32)
    return {"seq": int(f.seq), "frame_index": int(f.frame_index), "acq_ns": int(f.acq_ns),
            "stamps": [[n, int(t)] for n, t in f.stamps], "image": img.tobytes(), "shape": list(img.shape)}


def _decoded(d: dict[str, Any]) -> DecodedFrame:
    image = np.frombuffer(d["image"], np.float32).reshape(d["shape"]).copy()
    return DecodedFrame(int(d["seq"]), int(d["frame_index"]), int(d["acq_ns"]),
                        stamps=tuple((str(n), int(t)) for n, t in d["stamps"]), image=image)


# ------------------------------------------------------------------------------ the child


def _child_main(conn: Any, factory: Callable[[], Any], nice: int,
                idle: bool = False) -> None:  # pragma: no cover -- in the child
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        try:
            os.nice(int(nice))
        except OSError:
            pass
    if idle and hasattr(os, "SCHED_IDLE"):
        try:  # runs only on CPU time nothing else wants; its threads (ONNX Runtime's) inherit it
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass
    try:
        rec = factory()
    except Exception as exc:  # noqa: BLE001 -- reported to the parent, which raises it
        conn.send_bytes(_pack({"error": "start", "type": type(exc).__name__, "message": str(exc)}))
        return
    model_deconv = getattr(rec, "model_deconv", None)
    conn.send_bytes(_pack({"ok": True, "model_deconv": model_deconv if isinstance(model_deconv, dict) else None,
                           "type": type(rec).__name__}))
    shm: shared_memory.SharedMemory | None = None
    while True:
        try:
            msg = _unpack(conn.recv_bytes())
        except (EOFError, OSError):
            break
        op = msg.get("op")
        try:
            if op == "stop":
                conn.send_bytes(_pack({"ok": True}))
                break
            if op == "shm":
                if shm is not None:
                    shm.close()
                shm = shared_memory.SharedMemory(name=msg["name"])
                reply: dict[str, Any] = {"ok": True}
            elif op == "reset":
                roi_ids = np.frombuffer(msg["roi_ids"], np.int64)
                rec.reset(SessionInfo(msg["session_id"], roi_ids, float(msg["rate_hz"]),
                                      is_activity=bool(msg["is_activity"]), source=msg.get("source", "")))
                reply = {"ok": True}
            elif op == "warmup":
                rec.warmup()
                reply = {"ok": True}
            elif op == "call":
                assert shm is not None
                n, w = int(msg["n"]), int(msg["w"])
                buf = np.ndarray((w * n + n,), np.float32, buffer=shm.buf)
                values = buf[w * n:].copy()
                recent = buf[:w * n].reshape(w, n).copy() if w else None
                beh = np.frombuffer(msg["behaviour"], np.float32).copy() if msg.get("behaviour") else None
                frame = ActivityFrame(int(msg["seq"]), int(msg["frame_index"]), int(msg["acq_ns"]),
                                      stamps=tuple((str(a), int(b)) for a, b in msg["stamps"]), values=values,
                                      behaviour=beh)
                del buf
                reply = {"frames": [_frame_dict(f) for f in rec(frame, recent)]}
            elif op == "flush":
                reply = {"frames": [_frame_dict(f) for f in rec.flush()]}
            else:
                reply = {"error": "fatal", "message": f"unknown operation {op!r}"}
            if op in ("call", "flush", "reset", "warmup"):
                reply["stats"] = rec.stats()
        except StageError as exc:
            reply = {"error": "stage", "message": str(exc), "stats": rec.stats()}
        except Exception as exc:  # noqa: BLE001 -- reported; the parent decides (fatal)
            reply = {"error": "fatal", "message": f"{type(exc).__name__}: {exc}"}
        conn.send_bytes(_pack(reply))
    if shm is not None:
        shm.close()


# ------------------------------------------------------------------------------ the parent's proxy


class ReconstructionProcess:
    """A reconstructor running in a child process (see the module docstring).

    Parameters
    ----------
    factory : callable returning a Reconstructor
        Called in the child (must be picklable: a class, or ``functools.partial`` of one
        with picklable settings), e.g. ``functools.partial(LiveStage, settings)``.
    nice : int
        Added to the child's CPU niceness (0 = same priority as the service).
    idle : bool
        Run the child under ``SCHED_IDLE`` (Linux): it gets only CPU time that no other
        process wants, so the service's frame path preempts it at once (it then also yields
        to other programs on the machine).
    name : str
        The child process's name.

    Attributes
    ----------
    model_deconv : dict
        The built reconstructor's ``model_deconv`` (the deconvolution its model's training
        responses came from), empty when it has none.
    pid : int
    """

    def __init__(self, factory: Callable[[], Any], *, nice: int = 10, idle: bool = False,
                 name: str = "rt-decoder-reconstruction") -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_child_main, args=(child, factory, int(nice), bool(idle)), name=name, daemon=True)
        self._proc.start()
        child.close()
        self.pid = int(self._proc.pid or 0)
        self._lock = threading.Lock()
        self._shm: shared_memory.SharedMemory | None = None
        self._stats: dict[str, Any] = {}
        self._closed = False
        first = self._wait(_START_TIMEOUT_S, "start")
        if first.get("error"):
            self.close()
            from rt_decoder import errors

            cls = getattr(errors, str(first.get("type")), None)
            if isinstance(cls, type) and issubclass(cls, errors.RtDecoderError):
                raise cls(str(first.get("message")))  # e.g. ConfigError: no model directory
            raise StageError(f"the reconstruction process could not start: {first.get('type')}: "
                             f"{first.get('message')}")
        self.model_deconv: dict[str, Any] = dict(first.get("model_deconv") or {})
        self.kind = str(first.get("type", ""))

    # -- plumbing
    def _wait(self, timeout_s: float, what: str) -> dict[str, Any]:
        if not self._conn.poll(timeout_s):
            raise RuntimeError(f"the reconstruction process did not answer {what} within {timeout_s:g} s")
        try:
            return dict(_unpack(self._conn.recv_bytes()))
        except (EOFError, OSError):
            raise RuntimeError(f"the reconstruction process (pid {self.pid}) died "
                               f"(exit code {self._proc.exitcode})") from None

    def _rpc(self, msg: dict[str, Any], timeout_s: float = _CALL_TIMEOUT_S) -> dict[str, Any]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the reconstruction process is closed")
            try:
                self._conn.send_bytes(_pack(msg))
            except (BrokenPipeError, OSError):
                raise RuntimeError(f"the reconstruction process (pid {self.pid}) died "
                                   f"(exit code {self._proc.exitcode})") from None
            reply = self._wait(timeout_s, str(msg.get("op")))
        if isinstance(reply.get("stats"), dict):
            self._stats = reply["stats"]
        if reply.get("error") == "stage":
            raise StageError(str(reply.get("message")))
        if reply.get("error"):
            raise RuntimeError(f"reconstruction process: {reply.get('message')}")
        return reply

    def _ensure_shm(self, nbytes: int) -> shared_memory.SharedMemory:
        if self._shm is None or self._shm.size < nbytes:
            if self._shm is not None:
                self._shm.close()
                self._shm.unlink()
            self._shm = shared_memory.SharedMemory(create=True, size=max(nbytes, 4096))
            self._rpc({"op": "shm", "name": self._shm.name})
        return self._shm

    # -- the Reconstructor methods
    def reset(self, info: SessionInfo) -> None:
        self._rpc({"op": "reset", "session_id": info.session_id,
                   "roi_ids": np.ascontiguousarray(info.roi_ids, np.int64).tobytes(),
                   "rate_hz": float(info.frame_rate_hz), "is_activity": bool(info.is_activity),
                   "source": info.source})

    def warmup(self) -> None:
        self._rpc({"op": "warmup"})

    def __call__(self, frame: ActivityFrame, recent_activity: np.ndarray | None) -> list[DecodedFrame]:
        values = np.asarray(frame.values, np.float32)
        n = int(values.shape[0])
        w = 0 if recent_activity is None or not recent_activity.size else int(recent_activity.shape[0])
        shm = self._ensure_shm(4 * (w * n + n))
        buf = np.ndarray((w * n + n,), np.float32, buffer=shm.buf)
        if w:
            buf[:w * n] = np.asarray(recent_activity, np.float32).reshape(-1)
        buf[w * n:] = values
        del buf
        beh = None if frame.behaviour is None else np.asarray(frame.behaviour, np.float32).tobytes()
        reply = self._rpc({"op": "call", "n": n, "w": w, "seq": int(frame.seq), "frame_index": int(frame.frame_index),
                           "acq_ns": int(frame.acq_ns), "stamps": [[a, int(b)] for a, b in frame.stamps],
                           "behaviour": beh})
        return [_decoded(d) for d in reply["frames"]]

    def flush(self) -> list[DecodedFrame]:
        return [_decoded(d) for d in self._rpc({"op": "flush"})["frames"]]

    def stats(self) -> dict[str, Any]:
        """The child's counters as of its last answer (never waits for it)."""
        return {**self._stats, "recon_process_pid": self.pid}

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the child (terminate it if it does not stop) and free the shared memory."""
        if self._closed:
            return
        try:
            if self._proc.is_alive():
                with self._lock:
                    self._conn.send_bytes(_pack({"op": "stop"}))
                    if self._conn.poll(timeout_s):
                        self._conn.recv_bytes()
        except (EOFError, OSError):
            pass
        self._closed = True
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout_s)
        self._conn.close()
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None


__all__ = ["ReconstructionProcess"]
