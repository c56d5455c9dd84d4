"""Lossless recording of the live stream without ever stalling the decoding path.

:class:`SessionRecorder` owns one background writer thread and a bounded queue. The
pipeline calls ``start_session`` / ``submit_frame`` / ``submit_decoded`` /
``end_session``, which only ``put_nowait`` onto the queue: they never block and never
touch the disk. When the queue is full the frame is counted in ``recorder_dropped``
(the decoding goes on). The writer thread writes session files in the format of
``rt_decoder.io.session_file``, one file per session: ``<directory>/<session_id>.h5`` (a
numeric suffix if it exists). The file is open only while a block is written (at least
every ``flush_every_s``), so after a SIGKILL of the service plain ``h5py.File(path, "r")``
opens it (or, if the kill fell inside that write, ``rt-decoder recover FILE`` first).
What a SIGKILL loses is bounded: the frames received in the last ``flush_every_s``
(buffered in the writer), those still in this queue (normally none: the thread keeps up;
at most ``queue_frames``), and those not yet taken from the input socket.

Imports the standard library, numpy and rt_decoder only (no zmq).
"""

from __future__ import annotations

import queue
import re
import sys
import threading
from pathlib import Path
from typing import Any

from rt_decoder.messages import ActivityFrame, DecodedFrame, FluorescenceFrame, SessionInfo
from streaming.metrics import MetricsRecorder

_STOP = object()


def session_path(directory: Path, session_id: str) -> Path:
    """A new file path for ``session_id`` in ``directory`` (never overwrites)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", session_id)[:100] or "session"
    path = directory / f"{stem}.h5"
    k = 1
    while path.exists():
        path = directory / f"{stem}-{k}.h5"
        k += 1
    return path


class SessionRecorder:
    """Background, bounded, non-blocking session-file writer.

    Parameters
    ----------
    directory : str or Path
        Where session files go (created if missing).
    metrics : MetricsRecorder
        Receives ``recorded_frames`` / ``recorder_dropped`` counts.
    queue_frames : int
        Capacity of the queue to the writer thread (items).
    flush_every_s : float
        Passed to ``SessionWriter``: a SIGKILL loses the frames received in about this
        many seconds before it (plus what is queued).
    record_decoded : bool
        Whether ``submit_decoded`` records anything.
    """

    def __init__(self, directory: str | Path, metrics: MetricsRecorder, *, queue_frames: int = 8192,
                 flush_every_s: float = 0.5, record_decoded: bool = True) -> None:
        from rt_decoder.io.session_file import SessionWriter  # fail at setup, not in the thread

        self._writer_cls = SessionWriter
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.metrics = metrics
        self.flush_every_s = float(flush_every_s)
        self.record_decoded = bool(record_decoded)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_frames)
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self.paths: list[Path] = []
        self.error: str | None = None
        self._accepting = True

    def start(self) -> SessionRecorder:
        self._thread.start()
        return self

    # ---------------------------------------------------------------- producer side (never blocks)
    def _put(self, item: Any, *, control: bool = False) -> bool:
        if not self._accepting:
            return False
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            if control:
                # session boundaries must not be lost: wait briefly (only at session changes)
                try:
                    self._queue.put(item, timeout=1.0)
                    return True
                except queue.Full:
                    pass
            self.metrics.count("recorder_dropped")
            return False

    def start_session(self, info: SessionInfo) -> None:
        """Open a new file for ``info`` (closing the current one)."""
        self._put(("open", info), control=True)

    def submit_frame(self, frame: FluorescenceFrame | ActivityFrame, stimulus: Any = None) -> None:
        """Queue one received frame for writing (counted as dropped if the queue is full)."""
        self._put(("frame", frame, stimulus))

    def submit_decoded(self, frame: DecodedFrame) -> None:
        """Queue one decoded frame (if ``record_decoded``)."""
        if self.record_decoded:
            self._put(("decoded", frame))

    def end_session(self) -> None:
        """Close the current file (it stays readable)."""
        self._put(("close",), control=True)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, close the file and stop the thread."""
        if self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout_s)
            except queue.Full:
                pass
            self._thread.join(timeout=timeout_s)
        self._accepting = False

    # ---------------------------------------------------------------- writer thread
    def submit_stimulus(self, frame_index: int, image: Any) -> None:
        """Queue the true stimulus of an already submitted frame (a later ``stimulus`` message)."""
        self._put(("stimulus", int(frame_index), image))

    def _run(self) -> None:
        from rt_decoder.errors import StageError

        SessionWriter = self._writer_cls
        writer: Any = None
        while True:
            try:
                item = self._queue.get(timeout=self.flush_every_s)
            except queue.Empty:
                if writer is not None:  # idle: make what is buffered visible on disk
                    self._guard(writer.flush)
                continue
            if item is _STOP:
                break
            op = item[0]
            try:
                if op == "open":
                    if writer is not None:
                        writer.close()
                    info: SessionInfo = item[1]
                    path = session_path(self.directory, info.session_id)
                    writer = SessionWriter(path, info, stimulus_shape=info.stimulus_shape,
                                           flush_every_s=self.flush_every_s)
                    self.paths.append(path)
                elif op == "close":
                    if writer is not None:
                        writer.close()
                        writer = None
                elif writer is None:
                    if op == "frame":
                        self.metrics.count("recorder_dropped")
                elif op == "frame":
                    frame = item[1]
                    writer.append_frame(frame, item[2], recv_ns=frame.stamp("rx"))
                    self.metrics.count("recorded_frames")
                elif op == "decoded":
                    writer.append_decoded(item[1])
                elif op == "stimulus":
                    writer.set_stimulus(item[1], item[2])
            except StageError as exc:  # one frame the file cannot take (wrong shape): skip it
                self.metrics.count("recorder_dropped")
                self.metrics.notes["recorder_error"] = str(exc)[:200]
            except Exception as exc:  # noqa: BLE001 -- a disk/HDF5 failure must not kill decoding
                self.error = f"{type(exc).__name__}: {exc}"
                self.metrics.notes["recorder_error"] = self.error
                print(f"rt-decoder serve: recording error, recording stopped: {self.error}", file=sys.stderr)
                self.metrics.count("recorder_dropped")
                if writer is not None:
                    self._guard(writer.close)
                writer = None
        if writer is not None:
            writer.close()

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            self.metrics.notes["recorder_error"] = f"{type(exc).__name__}: {exc}"[:200]
