"""Recorded-session files: HDF5, appendable frame by frame, readable while written and after a crash.

Layout (format ``rt-decoder-session``, version 1)::

    /                       attrs: format, format_version, session_id, frame_rate_hz, plane,
                                   is_activity, source, n_rois, stimulus_shape ([H, W] or []),
                                   created_unix_s; recovered_unix_s once repaired by recover_session
    /roi_ids                (N,) int64
    /roi_centres_px         (N, 2) float32          (only when the session has centres)
    /closed                 () uint8                1 once the writer closed cleanly
    /frames/seq             (T,) uint64             wire sequence number
    /frames/frame_index     (T,) int64
    /frames/acq_ns          (T,) int64              acquisition time, source clock
    /frames/recv_ns         (T,) int64              receive stamp (monotonic ns), -1 if unknown
    /frames/is_activity     (T,) uint8              1 for activity frames, 0 for fluorescence
    /frames/values          (T, N) float32
    /frames/behaviour       (T, 4) float32          BEHAVIOUR_FIELDS order, NaN if absent
    /frames/stimulus        (T, H, W) float32       (only when created with stimulus_shape), NaN if absent
    /decoded/seq            (K,) uint64
    /decoded/frame_index    (K,) int64
    /decoded/acq_ns         (K,) int64
    /decoded/images         (K, H, W) float32
    /decoded/stamp_names    (16,) bytes             stage names of the stamp columns ("" unused)
    /decoded/stamps_ns      (K, 16) int64           -1 where a frame lacks that stage

Every dataset is chunked and resizable along its first axis. Frames are buffered in memory
and written in blocks by ``flush`` (at least every ``flush_every_s``, or every
``max_buffered_frames`` frames, and at ``close``). **The file is open only inside a flush**:
``flush`` opens it, switches to HDF5 SWMR write mode, appends the block, closes it (about
1 ms). So:

- a reader may follow the file while it is written (``SessionReader`` opens it SWMR-read;
  ``refresh`` picks up later blocks), and plain ``h5py.File(path, "r")`` opens it between
  flushes;
- a writer killed outright (SIGKILL, a crash of its process) between flushes leaves a
  closed, consistent file that plain ``h5py.File(path, "r")`` opens; it lacks only the
  frames still buffered: at most ``flush_every_s`` of frames (plus, in the service, those
  still in the recorder's queue);
- a writer killed inside a flush (about 1 ms in every ``flush_every_s``) leaves the HDF5
  "file is open for write" flags set: ``read_session`` (SWMR read) still reads every
  earlier block, and ``recover_session`` / ``rt-decoder recover FILE`` clears the flags
  and drops the half-written block, after which plain h5py opens it.

``/closed`` is 1 only when the writer closed the session; ``recover_session`` marks a
repaired file with the attribute ``recovered_unix_s``. The writer holds a shared
``flock`` on the file while it lives (a killed writer's lock goes with its process), so
``recover`` refuses a file that is still being written.

Imports numpy, h5py and rt_decoder's plain modules only (no zmq).
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from rt_decoder.errors import ConfigError, DataFormatError, ShapeMismatchError
from rt_decoder.messages import (
    N_BEHAVIOUR,
    STIMULUS_SHAPE,
    ActivityFrame,
    DecodedFrame,
    FluorescenceFrame,
    SessionInfo,
)

FORMAT_NAME = "rt-decoder-session"
FORMAT_VERSION = 1
MAX_STAMP_COLUMNS = 16
STAMP_NAME_BYTES = 64
_ROW_DATASETS = ("seq", "frame_index", "acq_ns", "recv_ns", "is_activity", "values", "behaviour")


def _hold_writer_lock(path: Path) -> int | None:
    """Open ``path`` and hold a shared advisory lock on it (None where flock is unavailable).

    HDF5's own read-only opens take shared locks too, so readers are not disturbed;
    ``recover`` asks for an exclusive lock and is refused while a writer lives."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover -- not POSIX
        return None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _release_writer_lock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases its flock


def writer_is_alive(path: str | Path) -> bool:
    """True when a live process holds ``path`` open: its writer (see ``_hold_writer_lock``)
    or an HDF5 reader (HDF5 locks files it opens, unless told not to)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return False
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the lock if we got it
    return False


def _chunk_rows(row_bytes: int, target_bytes: int = 1 << 20) -> int:
    return int(max(1, min(1024, target_bytes // max(1, row_bytes))))


class _Column:
    """An in-memory block of rows waiting to be appended to one dataset."""

    def __init__(self, row_shape: tuple[int, ...], dtype: Any, capacity: int, fill: Any) -> None:
        self.buf = np.full((capacity,) + row_shape, fill, dtype=dtype)
        self.fill = fill


class SessionWriter:
    """Append frames of one session to an HDF5 file, SWMR, crash-tolerant.

    Parameters
    ----------
    path : str or Path
        File to create (an existing file is replaced).
    info : SessionInfo
        Session metadata, stored as attributes and datasets.
    stimulus_shape : (H, W), optional
        Create ``/frames/stimulus`` for ground-truth stimulus frames of this shape.
    decoded_shape : (H, W), optional
        Shape of decoded images; default ``info.stimulus_shape`` or (36, 64).
    flush_every_s : float
        Buffered frames are written and flushed at least this often (seconds), checked at
        each append; a crash loses at most this much.
    max_buffered_frames : int
        Also flush when this many frames are buffered.

    Notes
    -----
    Not thread-safe: use it from one thread (the service's recorder thread). The
    stimulus of a frame can come with the frame or later through ``set_stimulus``.
    """

    def __init__(
        self,
        path: str | Path,
        info: SessionInfo,
        *,
        stimulus_shape: tuple[int, int] | None = None,
        decoded_shape: tuple[int, int] | None = None,
        flush_every_s: float = 0.5,
        max_buffered_frames: int = 256,
    ) -> None:
        import h5py

        if not (0 < flush_every_s <= 3600):
            raise ConfigError(f"flush_every_s must be in (0, 3600], got {flush_every_s!r}")
        if not (1 <= max_buffered_frames <= 100_000):
            raise ConfigError(f"max_buffered_frames must be in [1, 100000], got {max_buffered_frames!r}")
        self.path = Path(path)
        self.info = info
        self.n_rois = info.n_rois
        self.stimulus_shape = None if stimulus_shape is None else (int(stimulus_shape[0]), int(stimulus_shape[1]))
        dshape = decoded_shape or info.stimulus_shape or STIMULUS_SHAPE
        self.decoded_shape = (int(dshape[0]), int(dshape[1]))
        self.flush_every_s = float(flush_every_s)
        self._cap = int(max_buffered_frames)
        self._closed = False

        with h5py.File(self.path, "w", libver="latest") as f:
            self._create_layout(f, info)
        # between flushes the file is closed (nothing of it in the library's hands): a kill
        # then leaves it consistent and openable by plain h5py. This lock (shared, released
        # by the kernel when the process dies) tells `recover` that a writer still lives.
        self._lock_fd = _hold_writer_lock(self.path)
        n = self.n_rois
        self._rows: dict[str, _Column] = {
            "seq": _Column((), np.uint64, self._cap, 0),
            "frame_index": _Column((), np.int64, self._cap, 0),
            "acq_ns": _Column((), np.int64, self._cap, 0),
            "recv_ns": _Column((), np.int64, self._cap, -1),
            "is_activity": _Column((), np.uint8, self._cap, 0),
            "values": _Column((n,), np.float32, self._cap, np.nan),
            "behaviour": _Column((N_BEHAVIOUR,), np.float32, self._cap, np.nan),
        }
        if self.stimulus_shape is not None:
            self._rows["stimulus"] = _Column(self.stimulus_shape, np.float32, self._cap, np.nan)
        self._n_buffered = 0
        self._n_written = 0
        self._dec: list[tuple[int, int, int, np.ndarray, tuple[tuple[str, int], ...]]] = []
        self._n_dec_written = 0
        self._stamp_names: list[str] = []
        self.dropped_stamps = 0
        self._row_of_frame: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._late_stimulus: dict[int, np.ndarray] = {}  # written row -> stimulus that came later
        self._last_flush = time.monotonic()
        self.flushes = 0  # flushes that wrote something (each one open -> write -> close)

    # -- layout
    def _create_layout(self, f: Any, info: SessionInfo) -> None:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["session_id"] = info.session_id
        f.attrs["frame_rate_hz"] = float(info.frame_rate_hz)
        f.attrs["plane"] = int(info.plane)
        f.attrs["is_activity"] = bool(info.is_activity)
        f.attrs["source"] = info.source
        f.attrs["n_rois"] = info.n_rois
        f.attrs["stimulus_shape"] = np.asarray(info.stimulus_shape or (), dtype=np.int64)
        f.attrs["created_unix_s"] = time.time()
        f.create_dataset("roi_ids", data=info.roi_ids.astype(np.int64))
        if info.roi_centres_px is not None:
            f.create_dataset("roi_centres_px", data=np.asarray(info.roi_centres_px, np.float32))
        f.create_dataset("closed", data=np.uint8(0))
        n = info.n_rois
        fr = f.create_group("frames")

        def ext(group: Any, name: str, row: tuple[int, ...], dtype: Any, fill: Any = None) -> None:
            row_bytes = int(np.prod(row, dtype=np.int64)) * np.dtype(dtype).itemsize
            group.create_dataset(name, shape=(0,) + row, maxshape=(None,) + row, dtype=dtype,
                                 chunks=(_chunk_rows(row_bytes),) + row, fillvalue=fill)

        ext(fr, "seq", (), np.uint64)
        ext(fr, "frame_index", (), np.int64)
        ext(fr, "acq_ns", (), np.int64)
        ext(fr, "recv_ns", (), np.int64, -1)
        ext(fr, "is_activity", (), np.uint8)
        ext(fr, "values", (n,), np.float32, np.nan)
        ext(fr, "behaviour", (N_BEHAVIOUR,), np.float32, np.nan)
        if self.stimulus_shape is not None:
            ext(fr, "stimulus", self.stimulus_shape, np.float32, np.nan)
        dec = f.create_group("decoded")
        ext(dec, "seq", (), np.uint64)
        ext(dec, "frame_index", (), np.int64)
        ext(dec, "acq_ns", (), np.int64)
        ext(dec, "images", self.decoded_shape, np.float32, np.nan)
        ext(dec, "stamps_ns", (MAX_STAMP_COLUMNS,), np.int64, -1)
        dec.create_dataset("stamp_names", data=np.zeros(MAX_STAMP_COLUMNS, dtype=f"S{STAMP_NAME_BYTES}"))

    # -- appending
    @property
    def n_frames(self) -> int:
        """Frames appended so far (written or buffered)."""
        return self._n_written + self._n_buffered

    def append_frame(self, frame: FluorescenceFrame | ActivityFrame, stimulus: np.ndarray | None = None, *,
                     recv_ns: int | None = None) -> None:
        """Append one frame (and optionally its true stimulus image).

        Parameters
        ----------
        frame : FluorescenceFrame or ActivityFrame
            ``values`` (N,) must match the session's ROI count.
        stimulus : ndarray (H, W), optional
            Needs a file created with ``stimulus_shape``.
        recv_ns : int, optional
            Receive stamp (monotonic ns); default: the frame's ``"recv"`` stamp, else -1.

        Raises
        ------
        ShapeMismatchError
            Naming the wrong shape; the file is left unchanged.
        """
        self._check_open()
        values = np.asarray(frame.values)
        if values.shape != (self.n_rois,):
            raise ShapeMismatchError(f"{self.path}: frame {frame.frame_index} has values of shape {values.shape}, "
                                     f"the session has {self.n_rois} ROIs")
        if stimulus is not None:
            self._check_stimulus(stimulus, frame.frame_index)
        beh = None
        if frame.behaviour is not None:
            beh = np.asarray(frame.behaviour, np.float32).reshape(-1)
            if beh.shape != (N_BEHAVIOUR,):
                raise ShapeMismatchError(f"{self.path}: behaviour of frame {frame.frame_index} has shape "
                                         f"{beh.shape}, expected ({N_BEHAVIOUR},)")
        if recv_ns is None:
            stamp = frame.stamp("recv")
            recv_ns = -1 if stamp is None else stamp
        i = self._n_buffered
        r = self._rows
        r["seq"].buf[i] = frame.seq
        r["frame_index"].buf[i] = frame.frame_index
        r["acq_ns"].buf[i] = frame.acq_ns
        r["recv_ns"].buf[i] = recv_ns
        r["is_activity"].buf[i] = isinstance(frame, ActivityFrame)
        r["values"].buf[i] = values
        r["behaviour"].buf[i] = np.nan if beh is None else beh
        if "stimulus" in r:
            r["stimulus"].buf[i] = np.nan if stimulus is None else stimulus
        self._n_buffered += 1
        self._remember_row(frame.frame_index, self._n_written + i)
        self._maybe_flush()

    def _check_stimulus(self, stimulus: np.ndarray, frame_index: int) -> None:
        if self.stimulus_shape is None:
            raise ShapeMismatchError(f"{self.path}: a stimulus was given for frame {frame_index} but the file was "
                                     "created without stimulus_shape")
        if np.shape(stimulus) != self.stimulus_shape:
            raise ShapeMismatchError(f"{self.path}: stimulus of frame {frame_index} has shape {np.shape(stimulus)}, "
                                     f"expected {self.stimulus_shape}")

    def _remember_row(self, frame_index: int, row: int) -> None:
        self._row_of_frame[int(frame_index)] = row
        while len(self._row_of_frame) > 4096:
            self._row_of_frame.popitem(last=False)

    def set_stimulus(self, frame_index: int, stimulus: np.ndarray) -> bool:
        """Store the stimulus of an already appended, recent frame (e.g. from a later
        ``stimulus`` message). Returns False when that frame is not among the last 4096."""
        self._check_open()
        self._check_stimulus(stimulus, frame_index)
        row = self._row_of_frame.get(int(frame_index))
        if row is None:
            return False
        if row >= self._n_written:
            self._rows["stimulus"].buf[row - self._n_written] = stimulus
        else:  # already on disk: written at the next flush
            self._late_stimulus[row] = np.asarray(stimulus, np.float32).copy()
            self._maybe_flush()
        return True

    def append_decoded(self, frame: DecodedFrame) -> None:
        """Append one decoded image with its frame index and stage stamps."""
        self._check_open()
        image = np.asarray(frame.image, np.float32)
        if image.shape != self.decoded_shape:
            raise ShapeMismatchError(f"{self.path}: decoded frame {frame.frame_index} has shape {image.shape}, "
                                     f"expected {self.decoded_shape}")
        self._dec.append((frame.seq, frame.frame_index, frame.acq_ns, image.copy(), tuple(frame.stamps)))
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if (self._n_buffered >= self._cap or len(self._dec) >= self._cap
                or time.monotonic() - self._last_flush >= self.flush_every_s):
            self.flush()

    @property
    def pending(self) -> bool:
        """Whether anything appended is not on disk yet."""
        return bool(self._n_buffered or self._dec or self._late_stimulus)

    def flush(self, *, mark_closed: bool = False) -> None:
        """Write what is buffered: open the file, append, close it (visible to readers).

        The file is open only inside this call (SWMR write mode, so a reader following the
        file and a kill during the call both see the blocks written before it intact); a
        kill at any other moment leaves a closed, consistent file. Nothing buffered: no I/O.
        """
        self._check_open()
        if not (self.pending or mark_closed):
            self._last_flush = time.monotonic()
            return
        import h5py

        f = h5py.File(self.path, "a", libver="latest", locking=False)
        try:
            f.swmr_mode = True
            self._write_blocks(f)
            if mark_closed:
                f["closed"][()] = np.uint8(1)
        finally:
            f.close()
        self.flushes += 1
        self._last_flush = time.monotonic()

    def _write_blocks(self, f: Any) -> None:
        k = self._n_buffered
        if k:
            start = self._n_written
            for name, col in self._rows.items():
                ds = f[f"frames/{name}"]
                ds.resize(start + k, axis=0)
                ds[start:start + k] = col.buf[:k]
            for col in self._rows.values():
                col.buf[:k] = col.fill
            self._n_written += k
            self._n_buffered = 0
        if self._late_stimulus:
            ds = f["frames/stimulus"]
            for row in sorted(self._late_stimulus):
                ds[row] = self._late_stimulus[row]
            self._late_stimulus = {}
        if self._dec:
            self._flush_decoded(f)

    def _flush_decoded(self, f: Any) -> None:
        rows = self._dec
        k, start = len(rows), self._n_dec_written
        stamps = np.full((k, MAX_STAMP_COLUMNS), -1, np.int64)
        names_before = len(self._stamp_names)
        for i, (_, _, _, _, st) in enumerate(rows):
            for name, t in st:
                if name not in self._stamp_names:
                    if len(self._stamp_names) >= MAX_STAMP_COLUMNS or len(name.encode()) > STAMP_NAME_BYTES:
                        self.dropped_stamps += 1
                        continue
                    self._stamp_names.append(name)
                stamps[i, self._stamp_names.index(name)] = t
        g = f["decoded"]
        if len(self._stamp_names) != names_before:
            names = np.zeros(MAX_STAMP_COLUMNS, dtype=f"S{STAMP_NAME_BYTES}")
            names[: len(self._stamp_names)] = [n.encode() for n in self._stamp_names]
            g["stamp_names"][...] = names
        for name, data in (("seq", np.array([r[0] for r in rows], np.uint64)),
                           ("frame_index", np.array([r[1] for r in rows], np.int64)),
                           ("acq_ns", np.array([r[2] for r in rows], np.int64)),
                           ("images", np.stack([r[3] for r in rows])),
                           ("stamps_ns", stamps)):
            ds = g[name]
            ds.resize(start + k, axis=0)
            ds[start:start + k] = data
        self._n_dec_written += k
        self._dec = []

    def _check_open(self) -> None:
        if self._closed:
            raise DataFormatError(f"{self.path}: session writer is closed")

    def close(self) -> None:
        """Flush everything, mark the file closed cleanly, close it."""
        if self._closed:
            return
        try:
            self.flush(mark_closed=True)
        finally:
            self._closed = True
            _release_writer_lock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class RecordedSession:
    """A recorded session in memory (see the module docstring for the meaning of fields).

    Frame arrays share their first axis T (frames); decoded arrays share K.
    ``complete`` is False when the writer did not close the file (crash, or still running).
    """

    path: Path
    info: SessionInfo
    seq: np.ndarray  # (T,) uint64
    frame_index: np.ndarray  # (T,) int64
    acq_ns: np.ndarray  # (T,) int64
    recv_ns: np.ndarray  # (T,) int64, -1 unknown
    is_activity: np.ndarray  # (T,) bool
    values: np.ndarray  # (T, N) float32
    behaviour: np.ndarray  # (T, 4) float32, NaN if absent
    stimulus: np.ndarray | None  # (T, H, W) float32, NaN where absent
    decoded_seq: np.ndarray  # (K,) uint64
    decoded_frame_index: np.ndarray  # (K,) int64
    decoded_acq_ns: np.ndarray  # (K,) int64
    decoded: np.ndarray | None  # (K, H, W) float32, None when K == 0
    decoded_stamp_names: tuple[str, ...]
    decoded_stamps_ns: np.ndarray  # (K, len(decoded_stamp_names)) int64, -1 absent
    complete: bool
    recovered: bool = False  # ``recover_session`` repaired it after its writer was killed

    @property
    def n_frames(self) -> int:
        return int(self.frame_index.shape[0])

    def decoded_stamps(self) -> dict[str, np.ndarray]:
        """Stage name -> (K,) int64 monotonic ns (-1 where a frame lacks the stage)."""
        return {n: self.decoded_stamps_ns[:, i] for i, n in enumerate(self.decoded_stamp_names)}


class SessionReader:
    """Open a session file for reading (also while it is being written: SWMR).

    ``refresh()`` picks up frames flushed since; ``n_frames`` counts the frames whose
    every per-frame dataset was written; ``read_frames(start, stop)`` reads a slice.
    """

    def __init__(self, path: str | Path) -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise DataFormatError(f"{self.path}: no such session file")
        try:
            self._f = h5py.File(self.path, "r", libver="latest", swmr=True)
        except OSError as exc:
            raise DataFormatError(f"{self.path}: not a readable HDF5 session file ({exc})") from None
        try:
            self.info = self._read_info()
            self._check_layout()
        except DataFormatError:
            self._f.close()
            raise
        except (KeyError, TypeError, ValueError) as exc:
            self._f.close()
            raise DataFormatError(f"{self.path}: malformed session file: {exc}") from None

    def _fail(self, what: str) -> DataFormatError:
        return DataFormatError(f"{self.path}: {what}")

    def _read_info(self) -> SessionInfo:
        a = self._f.attrs
        fmt = a.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != FORMAT_NAME:
            raise self._fail(f"attribute 'format' is {fmt!r}, expected {FORMAT_NAME!r}")
        if int(a.get("format_version", -1)) != FORMAT_VERSION:
            raise self._fail(f"format_version {a.get('format_version')!r} is not supported "
                             f"(this reader reads {FORMAT_VERSION})")
        for key in ("session_id", "frame_rate_hz", "plane", "is_activity", "source", "stimulus_shape"):
            if key not in a:
                raise self._fail(f"lacks attribute {key!r}")
        if "roi_ids" not in self._f:
            raise self._fail("lacks dataset 'roi_ids'")
        ids = np.asarray(self._f["roi_ids"][()])
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise self._fail(f"'roi_ids' must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        centres = np.asarray(self._f["roi_centres_px"][()]) if "roi_centres_px" in self._f else None
        stim = tuple(int(v) for v in np.asarray(a["stimulus_shape"]).reshape(-1))
        try:
            return SessionInfo(session_id=str(a["session_id"]), roi_ids=ids, frame_rate_hz=float(a["frame_rate_hz"]),
                               plane=int(a["plane"]), roi_centres_px=centres,
                               stimulus_shape=(stim[0], stim[1]) if len(stim) == 2 else None,
                               is_activity=bool(a["is_activity"]), source=str(a["source"]))
        except ValueError as exc:
            raise self._fail(f"invalid session metadata: {exc}") from None

    def _check_layout(self) -> None:
        n = self.info.n_rois
        for name in _ROW_DATASETS:
            if f"frames/{name}" not in self._f:
                raise self._fail(f"lacks dataset 'frames/{name}'")
        shapes = {"values": (n,), "behaviour": (N_BEHAVIOUR,)}
        for name, row in shapes.items():
            got = self._f[f"frames/{name}"].shape[1:]
            if got != row:
                raise self._fail(f"'frames/{name}' has rows of shape {got}, expected {row} (n_rois={n})")
        for name in ("seq", "frame_index", "acq_ns", "images", "stamps_ns", "stamp_names"):
            if f"decoded/{name}" not in self._f:
                raise self._fail(f"lacks dataset 'decoded/{name}'")

    def refresh(self) -> None:
        """See frames flushed by the writer since opening (SWMR)."""
        for g in ("frames", "decoded"):
            for ds in self._f[g].values():
                ds.refresh()
        self._f["closed"].refresh()

    @property
    def n_frames(self) -> int:
        names = list(_ROW_DATASETS) + (["stimulus"] if "frames/stimulus" in self._f else [])
        return int(min(self._f[f"frames/{n}"].shape[0] for n in names))

    @property
    def n_decoded(self) -> int:
        g = self._f["decoded"]
        return int(min(g[n].shape[0] for n in ("seq", "frame_index", "acq_ns", "images", "stamps_ns")))

    @property
    def complete(self) -> bool:
        return bool(self._f["closed"][()])

    @property
    def recovered(self) -> bool:
        """Whether ``recover_session`` repaired the file (its writer was killed)."""
        return "recovered_unix_s" in self._f.attrs

    def read_frames(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Per-frame arrays for frames [start, stop) (clipped to ``n_frames``)."""
        t = self.n_frames
        stop = t if stop is None else min(int(stop), t)
        start = max(0, min(int(start), stop))
        out = {n: np.asarray(self._f[f"frames/{n}"][start:stop]) for n in _ROW_DATASETS}
        if "frames/stimulus" in self._f:
            out["stimulus"] = np.asarray(self._f["frames/stimulus"][start:stop])
        return out

    def read(self) -> RecordedSession:
        """Everything, as a ``RecordedSession``."""
        try:
            fr = self.read_frames()
            g = self._f["decoded"]
            k = self.n_decoded
            names_raw = [bytes(b).rstrip(b"\0").decode() for b in np.asarray(g["stamp_names"][()])]
            names = tuple(n for n in names_raw if n)
            stamps = np.asarray(g["stamps_ns"][:k])[:, : len(names)]
            images = np.asarray(g["images"][:k]) if k else None
            return RecordedSession(
                path=self.path, info=self.info, seq=fr["seq"].astype(np.uint64),
                frame_index=fr["frame_index"].astype(np.int64), acq_ns=fr["acq_ns"].astype(np.int64),
                recv_ns=fr["recv_ns"].astype(np.int64), is_activity=fr["is_activity"].astype(bool),
                values=fr["values"].astype(np.float32, copy=False),
                behaviour=fr["behaviour"].astype(np.float32, copy=False), stimulus=fr.get("stimulus"),
                decoded_seq=np.asarray(g["seq"][:k], np.uint64),
                decoded_frame_index=np.asarray(g["frame_index"][:k], np.int64),
                decoded_acq_ns=np.asarray(g["acq_ns"][:k], np.int64), decoded=images,
                decoded_stamp_names=names, decoded_stamps_ns=stamps, complete=self.complete,
                recovered=self.recovered,
            )
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise self._fail(f"cannot read session data: {exc}") from None

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> SessionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_session(path: str | Path) -> RecordedSession:
    """Read a whole recorded-session file (works while it is written and after a crash).

    Raises
    ------
    DataFormatError
        Naming the file and what is wrong with it.
    """
    with SessionReader(path) as reader:
        return reader.read()


# ---------------------------------------------------------------------------- recovery


@dataclass(frozen=True)
class RecoveryReport:
    """What :func:`recover_session` found and changed.

    ``flags_cleared`` is True when the writer died while it held the file open (inside a
    flush); ``frames_trimmed`` / ``decoded_trimmed`` count rows of a block that flush had
    only partly written (the datasets of one block are extended one after another).
    """

    path: Path
    was_complete: bool
    flags_cleared: bool
    padded_bytes: int
    frames: int
    frames_trimmed: int
    decoded: int
    decoded_trimmed: int

    @property
    def changed(self) -> bool:
        return self.flags_cleared or bool(self.padded_bytes or self.frames_trimmed or self.decoded_trimmed)


def _readable_rows(ds: Any, n: int) -> int:
    """How many leading rows of ``ds`` (at most ``n``) read without an HDF5 error."""
    step = int(ds.chunks[0]) if ds.chunks else 1024
    start = 0
    while start < n:
        stop = min(n, start + step)
        try:
            ds[start:stop]
        except (OSError, ValueError, KeyError):
            return start
        start = stop
    return n


def recover_session(path: str | Path) -> RecoveryReport:
    """Make a recording whose writer was killed openable by any HDF5 reader, in place.

    Steps: refuse while a writer still holds the file; clear the superblock's "open for
    write" flags left by a writer killed inside a flush (``h5clear -s``); cut every
    per-frame dataset to the rows all of them hold and that read back without error (a
    block half-written by that flush is dropped whole, and likewise for decoded frames);
    mark the file ``recovered_unix_s`` (readers then accept it as the session's record,
    see ``rt_decoder.io.inputs.read_complete_session``). Idempotent; a file closed cleanly
    by its writer is left as it is.

    Returns
    -------
    RecoveryReport

    Raises
    ------
    DataFormatError
        The file is missing, still being written, not a session file, or damaged beyond
        what this repairs (the message says which).
    """
    import h5py

    from rt_decoder.io._hdf5_superblock import clear_status_flags

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: no such session file")
    if writer_is_alive(path):
        raise DataFormatError(f"{path}: another process has the file open (a writer still recording, or a reader): "
                              "stop it first")
    repair = clear_status_flags(path)
    try:
        f = h5py.File(path, "r+")
    except OSError as exc:
        raise DataFormatError(f"{path}: HDF5 cannot open it even after clearing its consistency flags ({exc})") from None
    try:
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != FORMAT_NAME:
            raise DataFormatError(f"{path}: attribute 'format' is {fmt!r}, expected {FORMAT_NAME!r}")
        if "frames" not in f or "decoded" not in f or "closed" not in f:
            raise DataFormatError(f"{path}: lacks the groups of a session file ('frames', 'decoded', 'closed')")
        was_complete = bool(f["closed"][()])
        trimmed = []
        for group, names in (("frames", [n for n in f["frames"]]),
                             ("decoded", ["seq", "frame_index", "acq_ns", "images", "stamps_ns"])):
            dss = [f[f"{group}/{n}"] for n in names if n in f[group]]
            before = max((d.shape[0] for d in dss), default=0)
            n = min((d.shape[0] for d in dss), default=0)
            for d in dss:
                n = _readable_rows(d, n)
            for d in dss:
                if d.shape[0] != n:
                    d.resize(n, axis=0)
            trimmed.append((n, before - n))
        (frames, frames_trimmed), (decoded, decoded_trimmed) = trimmed
        if not was_complete and "recovered_unix_s" not in f.attrs:
            f.attrs["recovered_unix_s"] = time.time()
    except (KeyError, TypeError) as exc:
        raise DataFormatError(f"{path}: malformed session file: {exc}") from None
    finally:
        f.close()
    read_session(path)  # what every reader does: must now succeed
    return RecoveryReport(path=path, was_complete=was_complete, flags_cleared=repair.flags_before != 0,
                          padded_bytes=repair.padded_bytes, frames=frames, frames_trimmed=frames_trimmed,
                          decoded=decoded, decoded_trimmed=decoded_trimmed)
