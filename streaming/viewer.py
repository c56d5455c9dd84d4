"""The live viewer behind ``rt-decoder view``: one page over HTTP + WebSocket.

It subscribes (ZeroMQ SUB, connect) to the service's output (``decoded`` frames), its
status channel and, when given, the source stream (``stimulus`` messages: the true frame
of each frame index), and serves one page (``streaming/viewer_static/``: HTML, CSS and
canvas code of our own; nothing is fetched from elsewhere) that shows, live: true |
decoded side by side, frame index and time, the per-frame and rolling video correlation,
per-stage latency, frame rate, skips, gaps, malformed counts, ROI coverage, the lifecycle
state and a "not real time" warning.

Pieces, all on one asyncio loop (one thread: no hand-over between threads per frame)::

    ZeroMQ SUB sockets (their FDs as loop readers) -> StreamSubscriber x 3 -> ViewerState
      (no sockets: numpy and the standard library) -> packed binary frame / JSON status
    aiohttp: GET / and /static/<asset>, GET /ws (WebSocket), GET /stats.json,
      POST /stats/reset; one sender task per page that always sends the newest frame only
      (a slow page skips frames, counted; nothing queues without bound)

Frame messages are binary (little-endian)::

    bytes 0..3    b"RTV1"
    bytes 4..7    uint32 n: length of the JSON header that follows
    n bytes       JSON header: frame, t_s, h, w, has_true, lo, hi (display range of the
                  decoded frame, pixel units), tx_ms (the service's send stamp, monotonic
                  clock, ms), corr, rolling_corr, lat (per-stage ms of this frame)
    h*w bytes     decoded frame, uint8, row-major, display-normalised
    h*w bytes     true frame, uint8 (only when has_true)

Display normalisation: ``rt_decoder.recon.report`` (``DisplayNormaliser``,
``stimulus_to_display``), the same function as ``summary.png`` and ``side_by_side.gif``;
the page states it. Send -> paint latency: the page estimates the offset between its clock
and the viewer's monotonic clock with ping/pong (NTP-style, the exchange with the smallest
round trip), stamps each frame when drawn in ``requestAnimationFrame`` and reports the
latencies back over the WebSocket (a batch every 250 ms); it is meaningful when the viewer runs on the service's
host (both use that host's monotonic clock). Addresses are loopback unless
``allow_non_loopback``. Imports zmq and aiohttp (never torch); the core never imports this.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rt_decoder.errors import ConfigError
from rt_decoder.messages import ActivityFrame, DecodedFrame, SessionInfo
from rt_decoder.recon.report import DisplayNormaliser, DisplaySettings, stimulus_to_display
from streaming import protocol as P
from streaming.metrics import LATENCY_COLUMNS, percentiles, stage_latencies_ms

STATIC_DIR = Path(__file__).resolve().parent / "viewer_static"
#: asset name -> content type; nothing else is served from disk
ASSETS: dict[str, str] = {"viewer.js": "text/javascript; charset=utf-8", "viewer.css": "text/css; charset=utf-8"}
FRAME_MAGIC = b"RTV1"
DEFAULT_BIND = "127.0.0.1:8050"
_MAX_PAGE_MESSAGE_BYTES = 4096


def parse_bind(bind: str, *, allow_non_loopback: bool) -> tuple[str, int]:
    """``HOST:PORT`` (``http://`` prefix allowed) -> (host, port); loopback unless allowed.

    Raises
    ------
    ConfigError
        Not HOST:PORT, a port outside 0..65535, or a non-loopback host without permission.
    """
    text = bind[len("http://"):] if bind.startswith("http://") else bind
    host, sep, port_s = text.rpartition(":")
    if not sep or not host or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ConfigError(f"--bind {bind!r} must be HOST:PORT (e.g. {DEFAULT_BIND}; port 0 = any free port)")
    host = host.strip("[]")
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback and not allow_non_loopback:
        raise ConfigError(f"--bind {bind!r}: {host} is not a loopback address; pass --allow-non-loopback to "
                          "serve the page on a network (anyone who can reach it sees the decoded video)")
    return host, int(port_s)


def stimulus_subscription() -> bytes:
    """ZeroMQ subscription prefix that selects ``stimulus`` messages of a source stream.

    A source (the virtual rig) also publishes every fluorescence frame (8,000 ROIs: 32 kB,
    30 times a second); the viewer needs only the true stimulus. A PUB socket filters by
    prefix on the sender's side, so the frames never reach the viewer. The prefix is the
    start of a stimulus header as ``streaming.protocol`` writes it (map size, "v": 1,
    "kind": "stimulus"), taken from an encoded sample, so it follows the encoder.
    """
    import msgpack

    header = bytes(P.encode_stimulus("s", seq=0, t_ns=0, frame_index=0, image=np.zeros((1, 1), np.float32))[0])
    kind = msgpack.packb(P.KIND_STIMULUS)
    end = header.find(kind)
    if end < 0:  # pragma: no cover - the encoder changed: take everything
        return b""
    return header[:end + len(kind)]


def connect_address(address: str) -> str:
    """The address to connect to for an endpoint a service binds (``*``/``0.0.0.0`` -> loopback)."""
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if address.startswith(wildcard):
            return "tcp://127.0.0.1:" + address[len(wildcard):]
    return address


@dataclass(frozen=True)
class ViewerSettings:
    """What ``rt-decoder view`` subscribes to and how it draws.

    decoded : the service's output address (``[output] address``); required
    status : the service's status address ("" = none)
    stimulus : the source stream with ``stimulus`` messages ("" = none)
    host, port : where the page is served (port 0 = any free port)
    allow_non_loopback : needed to serve or subscribe on a non-loopback address
    rolling_frames : frames in the rolling video correlation (matched frames)
    stimulus_keep_frames : true frames kept while waiting for their decoded frame
    max_pages : WebSocket clients served at once
    display : the shared display normalisation
    """

    decoded: str
    status: str = ""
    stimulus: str = ""
    host: str = "127.0.0.1"
    port: int = 8050
    allow_non_loopback: bool = False
    rolling_frames: int = 300
    stimulus_keep_frames: int = 900
    max_pages: int = 16
    display: DisplaySettings = field(default_factory=DisplaySettings)

    def __post_init__(self) -> None:
        from streaming.transport import check_address

        if not self.decoded:
            raise ConfigError("the viewer needs the service's output address (--decoded)")
        for what, addr in (("--decoded", self.decoded), ("--status", self.status), ("--stimulus", self.stimulus)):
            if addr:
                check_address(addr, allow_non_loopback=self.allow_non_loopback, what=what)
        parse_bind(f"{self.host}:{self.port}", allow_non_loopback=self.allow_non_loopback)
        for name, lo, hi in (("rolling_frames", 2, 100_000), ("stimulus_keep_frames", 1, 100_000),
                             ("max_pages", 1, 1000)):
            v = getattr(self, name)
            if not (isinstance(v, int) and lo <= v <= hi):
                raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")


# ---------------------------------------------------------------------------- state (no sockets)


class RollingCorrelation:
    """Pearson correlation over all pixels x the last ``window`` frames (running sums).

    ``add(true, decoded)`` takes the masked pixels of one frame pair (1-D float64) and
    returns that frame's own spatial correlation (NaN without contrast); ``value`` is the
    video correlation over the window (NaN when empty or without contrast).
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._rows: collections.deque[np.ndarray] = collections.deque()
        self._sum = np.zeros(6)  # n, sx, sy, sxx, syy, sxy

    def reset(self) -> None:
        self._rows.clear()
        self._sum[:] = 0.0

    @staticmethod
    def _corr(n: float, sx: float, sy: float, sxx: float, syy: float, sxy: float) -> float:
        vx, vy = n * sxx - sx * sx, n * syy - sy * sy
        if n < 2 or vx <= 1e-12 * max(1.0, n * sxx) or vy <= 1e-12 * max(1.0, n * syy):
            return float("nan")
        return float((n * sxy - sx * sy) / math.sqrt(vx * vy))

    def add(self, true: np.ndarray, decoded: np.ndarray) -> float:
        x, y = true.astype(np.float64), decoded.astype(np.float64)
        row = np.array([x.size, x.sum(), y.sum(), x @ x, y @ y, x @ y])
        self._rows.append(row)
        self._sum += row
        while len(self._rows) > self.window:
            self._sum -= self._rows.popleft()
        # a frame's own correlation, centred for accuracy
        xc, yc = x - x.mean(), y - y.mean()
        den = math.sqrt(float(xc @ xc) * float(yc @ yc))
        return float(xc @ yc / den) if den > 0 else float("nan")

    @property
    def frames(self) -> int:
        return len(self._rows)

    @property
    def value(self) -> float:
        if not self._rows:
            return float("nan")
        return self._corr(*(float(v) for v in self._sum))


def _finite_or_none(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


class ViewerState:
    """The viewer's bookkeeping, fed with validated envelopes; knows no sockets.

    Parameters
    ----------
    settings : ViewerSettings
    eval_mask : (H, W) bool or None
        Correlations are computed inside it (full frame when None).
    clock_s : injectable clock (seconds), default ``time.monotonic``
    """

    def __init__(self, settings: ViewerSettings, eval_mask: np.ndarray | None = None, *,
                 clock_s: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.eval_mask = None if eval_mask is None else np.asarray(eval_mask, bool)
        self._clock = clock_s
        self.normaliser = DisplayNormaliser(settings.display)
        self.rolling = RollingCorrelation(settings.rolling_frames)
        self.stimulus: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self.output_session: str | None = None
        self.rate_hz = 30.0
        self.frames_in = 0
        self.activity_frames = 0
        self.matched = 0
        self.rejected = 0
        self.last_frame: bytes | None = None
        self.last_status: dict[str, Any] | None = None
        self.last_status_at: float | None = None
        self.last_output_at: float | None = None
        self._recent_service_ms: collections.deque[tuple[float, float]] = collections.deque(maxlen=300)
        self._counter_history: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=64)
        self._frame_times: collections.deque[float] = collections.deque(maxlen=120)
        #: service send -> viewer receive (ms) of the newest frames (same host: one clock)
        self.hop_ms: collections.deque[float] = collections.deque(maxlen=100_000)

    # ------------------------------------------------------------------ feeding
    def new_output_session(self, info: SessionInfo | None, session_id: str) -> None:
        """The output's session changed (a new session, or the service restarted)."""
        self.output_session = session_id
        if info is not None:
            self.rate_hz = float(info.frame_rate_hz)
        self.normaliser.reset()
        self.rolling.reset()
        self._recent_service_ms.clear()

    def on_stimulus(self, env: P.Envelope) -> None:
        body = env.body
        if env.kind == P.KIND_SESSION_START and isinstance(body, SessionInfo):
            self.rate_hz = float(body.frame_rate_hz)
        if env.kind != P.KIND_STIMULUS or not isinstance(body, P.StimulusFrame):
            return
        image = np.asarray(body.image)
        if image.ndim != 2 or not np.isfinite(image).all():
            self.rejected += 1
            return
        self.stimulus[int(body.frame_index)] = image
        self.stimulus.move_to_end(int(body.frame_index))
        while len(self.stimulus) > self.settings.stimulus_keep_frames:
            self.stimulus.popitem(last=False)

    def on_output(self, env: P.Envelope, *, new_session: bool = False,
                  info: SessionInfo | None = None, recv_ns: int | None = None) -> bytes | None:
        """A validated output message; returns the binary frame message for the pages, or None.

        ``recv_ns``: when the viewer took it off the socket (monotonic ns), for the
        service send -> viewer receive hop (``hop_ms``).
        """
        if new_session or self.output_session is None:
            self.new_output_session(info, env.session_id)
        elif env.kind == P.KIND_SESSION_START and isinstance(env.body, SessionInfo):
            self.rate_hz = float(env.body.frame_rate_hz)
        body = env.body
        if isinstance(body, ActivityFrame):
            self.activity_frames += 1
            self.last_output_at = self._clock()
            return None
        if not isinstance(body, DecodedFrame):
            return None
        image = np.asarray(body.image)
        if image.ndim != 2 or image.size == 0 or not np.isfinite(image).all():
            self.rejected += 1
            return None
        now = self._clock()
        self.frames_in += 1
        self.last_output_at = now
        self._frame_times.append(now)
        fi = int(body.frame_index)
        lo, hi = self.normaliser.update(image)
        dec_u8 = np.ascontiguousarray(_to_u8(image, lo, hi))
        true = self.stimulus.get(fi)
        has_true = true is not None and true.shape == image.shape
        corr = float("nan")
        if has_true:
            assert true is not None
            m = self.eval_mask if self.eval_mask is not None and self.eval_mask.shape == image.shape else None
            a, b = (true[m], image[m]) if m is not None else (true.reshape(-1), image.reshape(-1))
            corr = self.rolling.add(a, b)
            self.matched += 1
        stamps = dict(body.stamps)
        lat = stage_latencies_ms(body.stamps, body.acq_ns)
        lat_d = {name: _finite_or_none(v) for name, v in zip(LATENCY_COLUMNS, lat.tolist())}
        if recv_ns is not None and "tx" in stamps and -1e12 < recv_ns - stamps["tx"] < 3.6e12:
            self.hop_ms.append((recv_ns - stamps["tx"]) / 1e6)
        if lat_d.get("service") is not None:
            self._recent_service_ms.append((now, float(lat_d["service"])))  # type: ignore[arg-type]
        header = {
            "frame": fi, "t_s": fi / self.rate_hz if self.rate_hz > 0 else 0.0, "h": int(image.shape[0]),
            "w": int(image.shape[1]), "has_true": bool(has_true), "lo": round(lo, 3), "hi": round(hi, 3),
            "tx_ms": stamps["tx"] / 1e6 if "tx" in stamps else None, "seq": int(env.seq),
            "viewer_rx_ms": recv_ns / 1e6 if recv_ns is not None else None,
            "corr": _finite_or_none(corr), "rolling_corr": _finite_or_none(self.rolling.value),
            "rolling_frames": self.rolling.frames, "lat": lat_d,
        }
        parts = [dec_u8.tobytes()]
        if has_true:
            assert true is not None
            parts.append(np.ascontiguousarray(stimulus_to_display(true)).tobytes())
        msg = pack_frame(header, b"".join(parts))
        self.last_frame = msg
        return msg

    def on_status(self, env: P.Envelope) -> dict[str, Any] | None:
        """A validated status message -> the JSON-able status message for the pages."""
        if env.kind != P.KIND_STATUS or not isinstance(env.body, P.Status):
            return None
        now = self._clock()
        metrics = dict(env.body.metrics) if isinstance(env.body.metrics, Mapping) else {}
        counters = metrics.get("counters") if isinstance(metrics.get("counters"), Mapping) else {}
        assert isinstance(counters, Mapping)
        self._counter_history.append((now, int(counters.get("skipped_frames", 0) or 0),
                                      int(counters.get("frames_received", 0) or 0)))
        self.last_status = {"type": "status", "seq": int(env.seq), "session_id": env.session_id,
                            "state": str(env.body.state), "metrics": _jsonable(metrics)}
        self.last_status_at = now
        return self.last_status

    # ------------------------------------------------------------------ derived
    def real_time(self) -> tuple[bool, str]:
        """(True, "") while the service keeps up; else (False, why).

        Not real time when, over the last 5 s, the reconstruction skipped more than 5% of
        the frames received, or the 90th percentile of the service's receive -> send time
        of the frames shown exceeded the frame period; or when the service's status says so.
        """
        now = self._clock()
        why = []
        st = self.last_status or {}
        met = st.get("metrics", {}) if isinstance(st.get("metrics"), dict) else {}
        if met.get("real_time") is False:
            why.append(str(met.get("real_time_reason") or "the service says it is not real time"))
        hist = [h for h in self._counter_history if now - h[0] <= 5.0]
        if len(hist) >= 2:
            skipped = hist[-1][1] - hist[0][1]
            received = hist[-1][2] - hist[0][2]
            if skipped > 0 and skipped > 0.05 * max(received, 1):
                why.append(f"{skipped} of {received} frames skipped in the last {hist[-1][0] - hist[0][0]:.0f} s")
        recent = [ms for t, ms in self._recent_service_ms if now - t <= 5.0]
        period_ms = 1000.0 / self.rate_hz if self.rate_hz > 0 else 33.3
        if len(recent) >= 10:
            p90 = float(np.percentile(recent, 90))
            if p90 > period_ms:
                why.append(f"service receive -> send p90 {p90:.0f} ms > frame period {period_ms:.1f} ms")
        return (not why, "; ".join(why))

    def decoded_fps(self) -> float:
        """Decoded frames per second over the last 2 s (0 when none)."""
        now = self._clock()
        ts = [t for t in self._frame_times if now - t <= 2.0]
        if len(ts) < 2:
            return 0.0
        return (len(ts) - 1) / max(ts[-1] - ts[0], 1e-6)


def _to_u8(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    from rt_decoder.recon.report import to_display

    return to_display(image, lo, hi)


def _jsonable(o: Any) -> Any:
    """Plain JSON values (NaN/Inf -> None; bytes dropped)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, Mapping):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (bytes, bytearray)):
        return None
    return o


def pack_frame(header: Mapping[str, Any], payload: bytes) -> bytes:
    """The binary frame message (see the module docstring)."""
    h = json.dumps(header, separators=(",", ":")).encode()
    return FRAME_MAGIC + struct.pack("<I", len(h)) + h + payload


def unpack_frame(msg: bytes) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """Inverse of :func:`pack_frame`: (header, decoded uint8 (h, w), true uint8 (h, w) or None)."""
    if msg[:4] != FRAME_MAGIC or len(msg) < 8:
        raise ValueError("not a viewer frame message")
    (n,) = struct.unpack("<I", msg[4:8])
    header = json.loads(msg[8:8 + n])
    h, w = int(header["h"]), int(header["w"])
    body = np.frombuffer(msg, np.uint8, offset=8 + n)
    dec = body[:h * w].reshape(h, w)
    true = body[h * w:2 * h * w].reshape(h, w) if header["has_true"] else None
    return header, dec, true


# ---------------------------------------------------------------------------- page statistics


class PaintStats:
    """Send -> paint latencies and frames painted, as the pages report them (bounded).

    Thread-safe (the server uses it from its event loop only; tests may not).
    """

    def __init__(self, keep: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._lat: collections.deque[float] = collections.deque(maxlen=keep)
        self._rtt: collections.deque[float] = collections.deque(maxlen=keep)
        self.painted = 0
        self.page_dropped = 0
        self.t0 = time.monotonic()
        self.rejected = 0
        self._arrivals: collections.deque[float] = collections.deque(maxlen=2000)
        self._arrive: collections.deque[float] = collections.deque(maxlen=keep)
        self._recent_lat: collections.deque[float] = collections.deque(maxlen=600)
        self._recent_rtt: collections.deque[float] = collections.deque(maxlen=600)

    def reset(self) -> None:
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        for d in (self._lat, self._rtt, self._recent_lat, self._recent_rtt, self._arrivals, self._arrive):
            d.clear()
        self.painted = 0
        self.page_dropped = 0
        self.t0 = time.monotonic()

    def add_batch(self, latencies_ms: list[float | None], rtt_ms: float | None, dropped: int,
                  arrive_ms: list[float | None] | None = None) -> None:
        """One report of the page: the latencies of the frames it painted since the last one
        (send -> painted) and, optionally, of their arrival in the page (send -> arrived)."""
        now = time.monotonic()
        with self._lock:
            self.page_dropped += max(0, dropped)
            for lat in latencies_ms:
                self._add(lat, rtt_ms, 0, now)
            for a in arrive_ms or []:
                if a is not None and -1000.0 < a < 3_600_000.0:
                    self._arrive.append(a)

    def add(self, latency_ms: float | None, rtt_ms: float | None, dropped: int, t: float | None = None) -> None:
        """One painted frame."""
        with self._lock:
            self._add(latency_ms, rtt_ms, dropped, t)

    def _add(self, latency_ms: float | None, rtt_ms: float | None, dropped: int, t: float | None = None) -> None:
        self.painted += 1
        self._arrivals.append(time.monotonic() if t is None else t)
        self.page_dropped += max(0, dropped)
        if latency_ms is not None and -1000.0 < latency_ms < 3_600_000.0:
            self._lat.append(latency_ms)
            self._recent_lat.append(latency_ms)
        if rtt_ms is not None:
            self._rtt.append(rtt_ms)
            self._recent_rtt.append(rtt_ms)

    def summary(self, recent: bool = False) -> dict[str, Any]:
        """Percentiles over every sample since the last reset, or (``recent``) the 600 newest."""
        with self._lock:
            return self._summary(recent)

    def _summary(self, recent: bool) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        lat_s, rtt_s = (self._recent_lat, self._recent_rtt) if recent else (self._lat, self._rtt)
        lat = percentiles(np.asarray(lat_s, np.float64))
        rtt = percentiles(np.asarray(rtt_s, np.float64))
        if recent:  # frames painted per second over the last 2 s (reports come every 250 ms)
            now = time.monotonic()
            fps = sum(1 for t in self._arrivals if now - t <= 2.0) / 2.0
        else:
            fps = self.painted / elapsed
        arrive = percentiles(np.asarray(self._arrive, np.float64)) if not recent else None
        return {"paint_latency_ms": _jsonable(lat), "clock_sync_rtt_ms": _jsonable(rtt),
                "arrive_latency_ms": _jsonable(arrive),
                "frames_painted": self.painted, "page_fps": fps,
                "page_skipped_frames": self.page_dropped, "elapsed_s": elapsed, "rejected_reports": self.rejected}


class CpuMeter:
    """This process's CPU time as % of one core over the interval since the last call."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), time.process_time())
        self.total_start = self._last
        self.value = 0.0

    def sample(self) -> float:
        now = (time.monotonic(), time.process_time())
        dt = now[0] - self._last[0]
        if dt > 0:
            self.value = 100.0 * (now[1] - self._last[1]) / dt
        self._last = now
        return self.value


# ---------------------------------------------------------------------------- the server


class _Page:
    """One WebSocket client: the newest frame waits in a single slot (older ones are skipped)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frame: bytes | None = None
        self.texts: collections.deque[str] = collections.deque(maxlen=64)
        self.event = asyncio.Event()
        self.skipped = 0

    def offer_frame(self, msg: bytes) -> None:
        if self.frame is not None:
            self.skipped += 1
        self.frame = msg
        self.event.set()

    def offer_text(self, text: str) -> None:
        self.texts.append(text)
        self.event.set()

    async def pump(self) -> None:
        while not self.ws.closed:
            await self.event.wait()
            self.event.clear()
            while self.texts and not self.ws.closed:
                await self.ws.send_str(self.texts.popleft())
            if self.frame is not None and not self.ws.closed:
                msg, self.frame = self.frame, None
                await self.ws.send_bytes(msg)


class ViewerServer:
    """The page server and its ZeroMQ subscribers, on one asyncio loop. ``run()`` blocks until stopped.

    Parameters
    ----------
    settings : ViewerSettings
    eval_mask : (H, W) bool or None
    log : where lifecycle lines go (default: stdout, flushed)
    exit_with_parent : stop when the parent process goes away (``serve --view``)
    """

    def __init__(self, settings: ViewerSettings, eval_mask: np.ndarray | None = None, *,
                 log: Callable[[str], None] | None = None, exit_with_parent: bool = False) -> None:
        self.settings = settings
        self.state = ViewerState(settings, eval_mask)
        self.paint = PaintStats()
        self.cpu = CpuMeter()
        self.log = log or (lambda s: print(s, flush=True))
        self.exit_with_parent = exit_with_parent
        self.pages: set[_Page] = set()
        self.url = ""
        self.frames_sent = 0
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subs: dict[str, Any] = {}
        self._socks: list[Any] = []
        self._ctx: Any = None
        self._lock = threading.Lock()
        self.eval_mask_note = "inside the evaluation mask" if eval_mask is not None else "full frame (no mask given)"

    # ------------------------------------------------------------------ zmq side
    def _open_subscribers(self) -> None:
        """SUB sockets (connect) and their StreamSubscribers; used from the event loop only."""
        import zmq

        from streaming.transport import StreamSubscriber, open_socket

        s = self.settings
        self._ctx = zmq.Context(io_threads=1)
        for name, addr in (("output", s.decoded), ("status", s.status), ("source", s.stimulus)):
            if not addr:
                continue
            # the source stream: stimulus messages only (filtered by the publisher)
            sock = open_socket("sub", addr, bind=False, allow_non_loopback=s.allow_non_loopback, context=self._ctx,
                               options={"LINGER": 0, "RCVHWM": 10_000, "MAXMSGSIZE": 4 * P.DEFAULT_MAX_MESSAGE_BYTES,
                                        "RECONNECT_IVL_MAX": 1000,
                                        "SUBSCRIBE": stimulus_subscription() if name == "source" else b""},
                               what=f"viewer {name}")
            self._socks.append(sock)
            self._subs[name] = StreamSubscriber(sock)

    def _close_subscribers(self) -> None:
        for sock in self._socks:
            sock.close(linger=0)
        self._socks.clear()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def _drain(self) -> None:
        """Take every queued message off the sockets (their FDs are edge-triggered: drain all)."""
        again = False
        for name, sub in self._subs.items():
            for _ in range(256):  # a bounded burst per socket, then the others get their turn
                env = sub.recv(0)
                if env is None:
                    break
                self._handle(name, sub, env)
            else:
                again = True
        if again and self._loop is not None:
            self._loop.call_soon(self._drain)

    def _handle(self, name: str, sub: Any, env: P.Envelope) -> None:
        st = self.state
        with self._lock:
            if name == "output":
                msg = st.on_output(env, new_session=bool(sub.last_new_session), info=sub.session_info,
                                   recv_ns=sub.last_recv_ns)
                if msg is not None:
                    self._broadcast_frame(msg)
            elif name == "status":
                status = st.on_status(env)
                if status is not None:
                    self._broadcast_text(json.dumps(status))
            else:
                st.on_stimulus(env)

    def _broadcast_frame(self, msg: bytes) -> None:
        self.frames_sent += 1
        for page in self.pages:
            page.offer_frame(msg)

    def _broadcast_text(self, text: str) -> None:
        for page in self.pages:
            page.offer_text(text)

    # ------------------------------------------------------------------ numbers
    def stats(self, recent: bool = False) -> dict[str, Any]:
        """The viewer's own figures (pushed to the pages every 0.5 s over the newest paint
        reports, ``recent``; GET /stats.json: all since the last reset)."""
        with self._lock:
            return self._stats(recent)

    def _stats(self, recent: bool) -> dict[str, Any]:
        st = self.state
        ok, why = st.real_time()
        now = time.monotonic()
        subs = {name: sub.counters.as_dict() for name, sub in list(self._subs.items())}
        if "source" in subs:
            subs["source"]["note"] = ("stimulus messages only (the subscription filters the rest): its seq gaps "
                                      "are the frames left out, not losses")
        silent = None
        last = max([t for t in (st.last_status_at, st.last_output_at) if t is not None], default=None)
        if last is not None:
            silent = now - last
        return _jsonable({
            "type": "viewer", "cpu_percent_one_core": self.cpu.sample(), "pages": len(self.pages),
            "frames_in": st.frames_in, "frames_sent": self.frames_sent, "activity_frames": st.activity_frames,
            "matched_frames": st.matched, "rejected": st.rejected, "rate_hz": st.rate_hz,
            "decoded_fps": st.decoded_fps(), "real_time": ok, "not_real_time_why": why,
            "service_silent_s": silent, "page_skipped_in_server": sum(p.skipped for p in self.pages),
            "subscribers": subs, "eval_mask": self.eval_mask_note, **self.paint.summary(recent),
            "hop_latency_ms": None if recent else percentiles(np.asarray(st.hop_ms, np.float64)),
        })

    def hello(self) -> dict[str, Any]:
        s = self.settings
        return {"type": "hello", "display": s.display.describe(), "rolling_frames": s.rolling_frames,
                "correlation_where": self.eval_mask_note, "decoded": s.decoded, "status": s.status,
                "stimulus": s.stimulus or None, "latency_columns": list(LATENCY_COLUMNS)}

    # ------------------------------------------------------------------ http side
    def _app(self) -> Any:
        from aiohttp import web

        async def index(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

        async def asset(request: web.Request) -> web.StreamResponse:
            name = request.match_info["name"]
            if name not in ASSETS:
                raise web.HTTPNotFound()
            return web.Response(body=(STATIC_DIR / name).read_bytes(), content_type=ASSETS[name].split(";")[0],
                                charset="utf-8", headers={"Cache-Control": "no-store"})

        async def stats(request: web.Request) -> web.StreamResponse:
            return web.json_response(self.stats())

        async def reset(request: web.Request) -> web.StreamResponse:
            self.paint.reset()
            self.state.hop_ms.clear()
            self.cpu.sample()
            return web.json_response({"reset": True})

        async def ws_handler(request: web.Request) -> web.StreamResponse:
            origin = request.headers.get("Origin")
            if origin is not None and origin.split("://", 1)[-1] != request.host:
                raise web.HTTPForbidden(text="cross-origin WebSocket refused")
            if len(self.pages) >= self.settings.max_pages:
                raise web.HTTPServiceUnavailable(text="too many pages open")
            # no per-message compression: frames are small and compressing them costs CPU
            ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=_MAX_PAGE_MESSAGE_BYTES, compress=False)
            await ws.prepare(request)
            page = _Page(ws)
            self.pages.add(page)
            page.offer_text(json.dumps(self.hello()))
            with self._lock:
                if self.state.last_status is not None:
                    page.offer_text(json.dumps(self.state.last_status))
                if self.state.last_frame is not None:
                    page.offer_frame(self.state.last_frame)
            sender = asyncio.ensure_future(page.pump())
            try:
                async for msg in ws:
                    if msg.type == web.WSMsgType.TEXT:
                        self._on_page_message(page, msg.data)
            finally:
                self.pages.discard(page)
                sender.cancel()
            return ws

        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/", index)
        app.router.add_get("/static/{name}", asset)
        app.router.add_get("/stats.json", stats)
        app.router.add_post("/stats/reset", reset)
        app.router.add_get("/ws", ws_handler)
        return app

    def _on_page_message(self, page: _Page, text: str) -> None:
        """``ping`` -> ``pong`` with the monotonic clock; ``paints`` -> latency samples. Anything else counted."""
        try:
            msg = json.loads(text)
            kind = msg["type"]
            if kind == "ping":
                t_page = float(msg["t_page"])
                if not math.isfinite(t_page):
                    raise ValueError("t_page")
                page.offer_text(json.dumps({"type": "pong", "t_page": t_page,
                                            "t_server_ms": time.monotonic_ns() / 1e6}))
            elif kind == "paints":
                lats = msg["latency_ms"]
                rtt = msg.get("rtt_ms")
                dropped = int(msg.get("dropped", 0))
                if not isinstance(lats, list) or not 1 <= len(lats) <= 1000:
                    raise ValueError("latency_ms must be a list of 1..1000 numbers or nulls")
                arr = msg.get("arrive_ms", [])
                if not isinstance(arr, list) or len(arr) > 1000:
                    raise ValueError("arrive_ms must be a list of at most 1000 numbers or nulls")
                lat_f = [None if v is None else float(v) for v in lats]
                arr_f = [None if v is None else float(v) for v in arr]
                rtt_f = float(rtt) if rtt is not None else None
                if any(v is not None and not math.isfinite(v) for v in [*lat_f, *arr_f, rtt_f]):
                    raise ValueError("non-finite")
                self.paint.add_batch(lat_f, rtt_f, dropped, arr_f)
            else:
                raise ValueError(f"unknown type {kind!r}")
        except (ValueError, KeyError, TypeError):
            self.paint.rejected += 1

    async def _main(self, sock: socket.socket) -> None:
        from aiohttp import web

        self._loop = asyncio.get_running_loop()
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.SockSite(runner, sock)
        await site.start()
        import zmq

        self._open_subscribers()
        for zsock in self._socks:
            self._loop.add_reader(zsock.sock.getsockopt(zmq.FD), self._drain)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        self.log(f"rt-decoder view: serving {self.url} (decoded {self.settings.decoded}"
                 + (f", status {self.settings.status}" if self.settings.status else "")
                 + (f", stimulus {self.settings.stimulus}" if self.settings.stimulus else "") + ")")
        parent = os.getppid()
        t_stats = time.monotonic()
        try:
            while not stop.is_set() and not self._stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=0.1)
                except asyncio.TimeoutError:
                    pass
                self._drain()  # a safety net under the edge-triggered readers
                if time.monotonic() - t_stats >= 0.5:
                    t_stats = time.monotonic()
                    self._broadcast_text(json.dumps(self.stats(recent=True)))
                if self.exit_with_parent and os.getppid() != parent:
                    self.log("rt-decoder view: the parent process is gone; stopping")
                    break
        finally:
            self._stop.set()
            for zsock in self._socks:
                self._loop.remove_reader(zsock.sock.getsockopt(zmq.FD))
            for page in list(self.pages):
                await page.ws.close()
            await runner.cleanup()
            self._close_subscribers()

    def bind(self) -> socket.socket:
        """Bind the page's TCP socket (port 0 = a free port); sets ``url``."""
        s = self.settings
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.host, s.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot serve the viewer on {s.host}:{s.port}: {exc}") from None
        sock.listen(64)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        host = f"[{s.host}]" if ":" in s.host else s.host
        self.url = f"http://{host}:{port}/"
        return sock

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM (or ``stop()``); returns 0."""
        sock = self.bind()
        asyncio.run(self._main(sock))
        self.log("rt-decoder view: stopped")
        return 0

    def stop(self) -> None:
        self._stop.set()


# ---------------------------------------------------------------------------- serve --view


def start_viewer_process(config: Any, bind: str, *, timeout_s: float = 30.0) -> tuple[subprocess.Popen[str], str]:
    """Start ``rt-decoder view`` for a service configuration; returns (process, page URL).

    Subscribes to the service's output and status addresses and, when the service connects
    to its source (``[input] bind = false``), to the source too (for the true stimulus);
    the model's ``alpha.npz`` gives the evaluation mask. The child stops with its parent.

    Raises
    ------
    ConfigError
        The viewer did not start (its message is included).
    """
    argv = [sys.executable, "-m", "cli", "view", "--decoded", connect_address(config.output.address),
            "--bind", bind, "--exit-with-parent"]
    if config.status.address:
        argv += ["--status", connect_address(config.status.address)]
    if not config.input.bind:
        argv += ["--stimulus", config.input.address]
    if config.output.allow_non_loopback or config.input.allow_non_loopback or config.status.allow_non_loopback:
        argv.append("--allow-non-loopback")
    rec = getattr(config, "reconstruction", None)
    if rec is not None and rec.enabled:
        default_model = Path(__file__).resolve().parents[1] / "rt_decoder" / "models" / "demo"
        model = Path(rec.model_dir) if rec.model_dir else default_model
        if (model / "alpha.npz").is_file():
            argv += ["--eval-mask", str(model / "alpha.npz")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    lines: list[str] = []
    found: list[str] = []
    done = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if not found:
                lines.append(line)
                if "serving http" in line:
                    found.append(line.split("serving ", 1)[1].split(" ", 1)[0])
                    done.set()
            else:
                print(line, file=sys.stderr, flush=True)
        done.set()

    threading.Thread(target=pump, name="viewer-output", daemon=True).start()
    done.wait(timeout_s)
    if not found:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(5)
        raise ConfigError("the viewer did not start: " + " | ".join(lines[-5:]))
    return proc, found[0]


__all__ = [
    "DEFAULT_BIND",
    "PaintStats",
    "RollingCorrelation",
    "ViewerServer",
    "ViewerSettings",
    "ViewerState",
    "connect_address",
    "pack_frame",
    "parse_bind",
    "start_viewer_process",
    "unpack_frame",
]
