"""Raw frame sources for suite2p-live: each is an iterable of ``RawFrameItem``.

- ``BinaryReplaySource``: Suite2p's ``data.bin`` (int16, n_frames x Ly x Lx) replayed,
  as fast as possible or paced at a frame rate;
- ``TiffFollowSource``: a (ScanImage) TIFF that is still being written, read page by
  page as pages appear (tifffile); ends after ``idle_timeout_s`` without a new page;
- ``ZmqRawFrameSource``: a ZeroMQ stream of ``raw_frame`` messages (wire protocol v1),
  ending at ``session_end``; malformed messages are counted, never raised.

``open_source(spec, ...)`` picks one from a string (the CLI's ``--frames``). Frames are
(Ly, Lx) int16 / uint16 arrays; ``acq_ns`` is the source's time stamp (the replay and TIFF
sources use ``time.monotonic_ns()`` when the frame is read).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rt_decoder.errors import ConfigError, DataFormatError


@dataclass(frozen=True)
class RawFrameItem:
    """One raw frame: index, pixels (Ly, Lx) int16/uint16, acquisition stamp (ns)."""

    frame_index: int
    pixels: np.ndarray
    acq_ns: int


class BinaryReplaySource:
    """Replay Suite2p's ``data.bin`` (int16 frames, row-major) frame by frame.

    Parameters
    ----------
    path : Path
    Ly, Lx : int
        Frame size in pixels.
    rate_hz : float or None
        Pace frames at this rate; None replays as fast as the consumer takes them.
    start, stop : int
        Frame range to replay.
    clock_ns : callable
        Clock for ``acq_ns`` and pacing.
    """

    def __init__(self, path: str | Path, Ly: int, Lx: int, *, rate_hz: float | None = None, start: int = 0,
                 stop: int | None = None, clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"raw binary {str(self.path)!r} does not exist")
        size = self.path.stat().st_size
        frame_bytes = Ly * Lx * 2
        if size % frame_bytes:
            raise DataFormatError(f"{self.path}: {size} bytes is not a whole number of {Ly}x{Lx} int16 frames")
        self.n_frames = size // frame_bytes
        self.Ly, self.Lx = Ly, Lx
        if rate_hz is not None and not 0 < rate_hz <= 10_000:
            raise ConfigError(f"replay rate must be in (0, 10000] Hz, got {rate_hz}")
        self.rate_hz = rate_hz
        self.start = int(start)
        self.stop = self.n_frames if stop is None else min(int(stop), self.n_frames)
        self._clock = clock_ns

    def __iter__(self) -> Iterator[RawFrameItem]:
        mm = np.memmap(self.path, dtype="<i2", mode="r", shape=(self.n_frames, self.Ly, self.Lx))
        t0 = self._clock()
        for i in range(self.start, self.stop):
            if self.rate_hz is not None:
                due = t0 + int((i - self.start) * 1e9 / self.rate_hz)
                wait = due - self._clock()
                if wait > 0:
                    time.sleep(wait / 1e9)
            yield RawFrameItem(i, np.array(mm[i]), self._clock())
        del mm


class TiffFollowSource:
    """Follow a TIFF that is being written (ScanImage's acquisition file).

    Parameters
    ----------
    path : Path
    channels : int
        Interleaved channels per frame in the file (ScanImage saves channel pages in turn).
    channel : int
        Which of them to use (0-based).
    poll_s : float
        Time between looks for new pages.
    idle_timeout_s : float
        Stop after this long without a new page (the acquisition ended).
    settle_s : float
        The newest page is read only once the page count has not changed for this long
        (it may be half written); older pages are read as soon as a newer one exists.
    """

    def __init__(self, path: str | Path, *, channels: int = 1, channel: int = 0, poll_s: float = 0.02,
                 idle_timeout_s: float = 5.0, settle_s: float = 0.1,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        try:
            import tifffile  # noqa: F401
        except ImportError:
            raise ConfigError("reading TIFF frames needs tifffile: pip install 'rt-decoder[live]'") from None
        if not 0 <= channel < channels:
            raise ConfigError(f"channel {channel} is not in 0..{channels - 1}")
        self.path = Path(path)
        self.channels, self.channel = int(channels), int(channel)
        self.poll_s, self.idle_timeout_s, self.settle_s = float(poll_s), float(idle_timeout_s), float(settle_s)
        self._clock = clock_ns

    def _pages(self, first: int, *, include_last: bool) -> tuple[list[np.ndarray], int]:
        """Pages from ``first`` on, and the page count; the newest page only when
        ``include_last`` (it may still be being written)."""
        import tifffile

        out: list[np.ndarray] = []
        n = 0
        try:
            with tifffile.TiffFile(self.path) as tif:
                n = len(tif.pages)
                stop = n if include_last else n - 1
                for k in range(first, stop):
                    try:
                        out.append(tif.pages[k].asarray())  # type: ignore[union-attr]
                    except Exception:  # page still being written: take it next time
                        break
        except (FileNotFoundError, tifffile.TiffFileError, ValueError, OSError):
            pass  # file not there yet or its header/IFD not complete
        return out, n

    def __iter__(self) -> Iterator[RawFrameItem]:
        next_page = 0
        last_count = -1
        last_change = time.monotonic()
        while True:
            now = time.monotonic()
            settled = now - last_change >= self.settle_s
            pages, count = self._pages(next_page, include_last=settled)
            if count != last_count:
                last_count, last_change = count, now
            for arr in pages:
                page = next_page
                next_page += 1
                if page % self.channels == self.channel:
                    if arr.ndim != 2:
                        raise DataFormatError(f"{self.path}: page {page} has shape {arr.shape}; expected 2-D")
                    yield RawFrameItem(page // self.channels, arr, self._clock())
            if not pages:
                if now - last_change > self.idle_timeout_s and next_page >= last_count:
                    return
                time.sleep(self.poll_s)


class ZmqRawFrameSource:
    """Receive ``raw_frame`` messages from a ZeroMQ publisher until ``session_end``.

    Parameters
    ----------
    address : str
        Endpoint to connect (or bind) a SUB socket to.
    bind : bool
    idle_timeout_s : float or None
        Stop after this long without any message (None: wait forever).
    max_bytes : int
        Size limit per message.
    """

    def __init__(self, address: str, *, bind: bool = False, idle_timeout_s: float | None = None,
                 max_bytes: int = 64 * 1024 * 1024, context: Any = None) -> None:
        from streaming.transport import open_socket

        self.idle_timeout_s = idle_timeout_s
        self.max_bytes = int(max_bytes)
        self._sock = open_socket("sub", address, bind=bind, context=context, what="raw-frame source",
                                 options={"SUBSCRIBE": b"", "LINGER": 0, "RCVHWM": 1000,
                                          "MAXMSGSIZE": 4 * self.max_bytes})
        self.address = self._sock.endpoint
        self.n_malformed = 0
        self.n_missing = 0
        self.n_other = 0
        self._last_seq: dict[str, int] = {}

    def __iter__(self) -> Iterator[RawFrameItem]:
        from streaming.protocol import KIND_RAW_FRAME, KIND_SESSION_END, RawFrame, decode

        last = time.monotonic()
        while True:
            if not self._sock.poll(100):
                if self.idle_timeout_s is not None and time.monotonic() - last > self.idle_timeout_s:
                    return
                continue
            last = time.monotonic()
            parts = self._sock.recv_multipart(copy=False)
            try:
                env = decode([memoryview(p.buffer) for p in parts], max_bytes=self.max_bytes)
            except Exception:  # ProtocolError and anything else a hostile peer can cause
                self.n_malformed += 1
                continue
            prev = self._last_seq.get(env.session_id)
            if prev is not None and env.seq > prev + 1:
                self.n_missing += env.seq - prev - 1
            self._last_seq[env.session_id] = env.seq
            if env.kind == KIND_RAW_FRAME:
                body = env.body
                assert isinstance(body, RawFrame)
                yield RawFrameItem(body.frame_index, body.pixels, env.t_ns)
            elif env.kind == KIND_SESSION_END:
                return
            else:
                self.n_other += 1

    def close(self) -> None:
        self._sock.close(0)


def open_source(spec: str, *, Ly: int, Lx: int, default_bin: Path | None = None, rate_hz: float | None = None,
                bind: bool = False, idle_timeout_s: float | None = None, tiff_channels: int = 1,
                tiff_channel: int = 0) -> BinaryReplaySource | TiffFollowSource | ZmqRawFrameSource:
    """A frame source from a spec string.

    ``tcp://...``, ``ipc://...``, ``inproc://...``: a ZeroMQ raw-frame stream;
    ``*.tif`` / ``*.tiff``: a TIFF being written; ``*.bin``: a Suite2p binary;
    ``data.bin`` or ``replay``: the seeding run's own ``data.bin`` (``default_bin``).
    """
    if spec.startswith(("tcp://", "ipc://", "inproc://")):
        return ZmqRawFrameSource(spec, bind=bind, idle_timeout_s=idle_timeout_s)
    if spec.lower().endswith((".tif", ".tiff")):
        return TiffFollowSource(spec, channels=tiff_channels, channel=tiff_channel,
                                idle_timeout_s=5.0 if idle_timeout_s is None else idle_timeout_s)
    if spec == "replay" or spec == "data.bin":
        if default_bin is None or not default_bin.exists():
            raise ConfigError(f"--raw-frames {spec}: the Suite2p folder has no data.bin")
        return BinaryReplaySource(default_bin, Ly, Lx, rate_hz=rate_hz)
    if spec.endswith(".bin"):
        return BinaryReplaySource(spec, Ly, Lx, rate_hz=rate_hz)
    raise ConfigError(f"--raw-frames {spec!r}: expected tcp://..., ipc://..., a .tif/.tiff file, a .bin file or 'replay'")
