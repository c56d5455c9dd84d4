"""Latency and loss metrics of the live service, computed from the frames' own stamps.

Every output frame carries ``(stage, monotonic_ns)`` stamps (``rx``, ``decode``,
``deconv``, ``recon``, ``tx``) and the source's acquisition stamp ``acq_ns``.
:class:`MetricsRecorder` turns them into per-stage latencies (ring buffers of the last
``max_samples`` frames), percentiles, histograms and counters, and renders them as a
status line, a JSON summary, a msgpack-able map for the status channel and Prometheus
text. :class:`PrometheusServer` serves that text on a loopback HTTP port from a thread.

Latency columns (milliseconds):

============  =====================================================================
transport     rx - acq_ns (source send -> received; needs the source on this host's
              monotonic clock, as the virtual rig and replay are)
decode        decode - rx (validation of the wire message)
deconv        deconv - decode (queueing + deconvolution)
recon         recon - deconv (reconstruction slot; ~0 while no stage is plugged)
publish       tx - recon (encode + send)
service       tx - rx (receive -> send: intake + deconvolution + publish)
e2e           tx - acq_ns (source stamp -> decoded frame sent)
============  =====================================================================

Imports numpy and the standard library only.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from rt_decoder.messages import Stamps

#: Latency columns, in order (see the module docstring).
LATENCY_COLUMNS: tuple[str, ...] = ("transport", "decode", "deconv", "recon", "publish", "service", "e2e")
#: (column, later stamp, earlier stamp); "acq" is the frame's acquisition stamp.
_SPANS: tuple[tuple[str, str, str], ...] = (
    ("transport", "rx", "acq"),
    ("decode", "decode", "rx"),
    ("deconv", "deconv", "decode"),
    ("recon", "recon", "deconv"),
    ("publish", "tx", "recon"),
    ("service", "tx", "rx"),
    ("e2e", "tx", "acq"),
)
#: Histogram bin edges in ms: log-spaced from 1 us to 10 s.
HISTOGRAM_EDGES_MS: np.ndarray = np.logspace(-3, 4, 71)

COUNTER_NAMES: tuple[str, ...] = (
    "messages_received",     # valid messages of any kind
    "frames_received",       # valid frame/activity messages
    "frames_processed",      # frames through deconvolution (or its bypass)
    "frames_published",      # frames sent on the output
    "frames_before_info",    # frames before any session_start of their session (late join)
    "messages_lost",         # sequence-number gaps (any message kind)
    "gap_events",            # number of separate sequence gaps
    "frames_missing",        # frame-index gaps handed to the deconvolution as missing samples
    "skipped_frames",        # frames the reconstruction slot skipped to stay current
    "intake_overflow",       # frames dropped because the intake queue was full (also a gap)
    "output_dropped",        # output messages ZeroMQ refused (high-water mark)
    "recorder_dropped",      # frames the recorder queue could not take
    "recorded_frames",       # frames written to the session file
    "sessions_started",
    "session_restarts",      # a new session id or ROI count replaced a running session
    "heartbeats_received",
    "stage_errors",          # frames a stage rejected (counted, service continues)
    "deconv_resets",         # frame-index jumps beyond max_gap_frames: deconvolution restarted
    "frames_before_deconv_ready",  # frames of the deconvolution's initial batch (not decoded)
    "nonfinite_values",      # NaN/Inf values in frames (missing samples of those ROIs; the frame goes on)
    "frame_index_epochs",    # confirmed renumberings of the frame index (deconvolution restarted)
    "session_takeover_refused",  # session_start of another session/publisher while one runs
    "session_control_refused",  # session_end not from the running session's publisher
    "not_real_time_events",  # times the service judged itself not real time (see notes.real_time_reason)
    "sessions_not_reconstructed",  # sessions the reconstruction refused (activity published instead)
    "seq_jumps",             # sequence numbers that jumped too far to be losses (a new numbering)
    "input_disconnects",     # input connections that dropped (peer gone, or an oversized message cut)
    "input_handshake_failures",  # input peers refused in the handshake (CURVE: wrong or no key)
    "input_errors",          # exceptions while receiving (counted; the receiver carries on)
    "input_socket_rebuilds",  # times the input socket was rebuilt because ZeroMQ would not reconnect
)

#: Counters saturate here instead of growing past what msgpack and JSON readers take.
COUNTER_MAX = 2**63 - 1


def percentiles(values: np.ndarray) -> dict[str, float]:
    """count, p50, p95, p99, max and mean of ``values`` (ms); NaN-free input expected."""
    if values.size == 0:
        return {"count": 0, "p50": float("nan"), "p95": float("nan"), "p99": float("nan"),
                "max": float("nan"), "mean": float("nan")}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"count": int(values.size), "p50": float(p50), "p95": float(p95), "p99": float(p99),
            "max": float(values.max()), "mean": float(values.mean())}


def stage_latencies_ms(stamps: Stamps, acq_ns: int) -> np.ndarray:
    """One row of ``LATENCY_COLUMNS`` (ms; NaN where a stamp is absent) from a frame's stamps."""
    t = dict(stamps)
    t["acq"] = acq_ns
    row = np.full(len(_SPANS), np.nan)
    for i, (_, late, early) in enumerate(_SPANS):
        if late in t and early in t:
            row[i] = (t[late] - t[early]) / 1e6
    return row


class MetricsRecorder:
    """Thread-safe counters and latency ring buffers.

    Parameters
    ----------
    max_samples : int
        Frames kept for percentiles and histograms (oldest overwritten).
    clock : callable returning float seconds
        Injectable clock for uptime and rates (default ``time.monotonic``).
    """

    def __init__(self, max_samples: int = 1_000_000, clock: Any = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._t0 = clock()
        self._lat = np.full((max_samples, len(_SPANS)), np.nan, dtype=np.float64)
        self._n = 0
        self._fp = np.full(max_samples, np.nan, dtype=np.float64)  # frame path (ms), every frame
        self._n_fp = 0
        self.counters: Counter[str] = Counter({name: 0 for name in COUNTER_NAMES})
        self.malformed: Counter[str] = Counter()
        self.state = "STARTING"
        self.session_id = ""
        self.notes: dict[str, str] = {}
        self._last_rate = (self._t0, 0)

    # ------------------------------------------------------------------ recording
    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name``."""
        with self._lock:
            self.counters[name] = min(self.counters[name] + int(n), COUNTER_MAX)

    def count_malformed(self, reason: str) -> None:
        """Count one malformed message under a short reason tag."""
        with self._lock:
            self.malformed[reason] += 1

    def record_frame(self, stamps: Stamps, acq_ns: int) -> None:
        """Record the stage latencies of one published frame."""
        row = stage_latencies_ms(stamps, acq_ns)
        with self._lock:
            self._lat[self._n % self._lat.shape[0]] = row
            self._n += 1

    def record_frame_path(self, ms: float) -> None:
        """Record one frame's frame-path latency: received -> activity ready (``deconv - rx``),
        for every frame, decoded or not."""
        with self._lock:
            self._fp[self._n_fp % self._fp.shape[0]] = ms
            self._n_fp += 1

    # ------------------------------------------------------------------ reading
    def recent_frame_path_ms(self, n: int) -> np.ndarray:
        """The last ``n`` frame-path latencies (ms), oldest first."""
        with self._lock:
            k = min(self._n_fp, self._fp.shape[0], n)
            idx = (self._n_fp - k + np.arange(k)) % self._fp.shape[0]
            return self._fp[idx].copy()

    def recent_latencies(self, n: int) -> np.ndarray:
        """The last ``n`` published frames' latency rows (ms), oldest first."""
        with self._lock:
            k = min(self._n, self._lat.shape[0], n)
            idx = (self._n - k + np.arange(k)) % self._lat.shape[0]
            return self._lat[idx].copy()

    def latencies(self) -> np.ndarray:
        """(K, len(LATENCY_COLUMNS)) float64 ms of the frames kept (oldest first not guaranteed)."""
        with self._lock:
            k = min(self._n, self._lat.shape[0])
            return self._lat[:k].copy()

    def latency_summary(self) -> dict[str, dict[str, float]]:
        """Per column: count, p50, p95, p99, max, mean (ms)."""
        lat = self.latencies()
        out = {}
        for i, name in enumerate(LATENCY_COLUMNS):
            col = lat[:, i]
            out[name] = percentiles(col[np.isfinite(col)])
        with self._lock:
            fp = self._fp[:min(self._n_fp, self._fp.shape[0])].copy()
        out["frame_path"] = percentiles(fp[np.isfinite(fp)])
        return out

    def histograms(self) -> dict[str, list[int]]:
        """Per column: counts in ``HISTOGRAM_EDGES_MS`` bins (values outside are clipped in)."""
        lat = self.latencies()
        out = {}
        for i, name in enumerate(LATENCY_COLUMNS):
            col = lat[:, i]
            col = np.clip(col[np.isfinite(col)], HISTOGRAM_EDGES_MS[0], HISTOGRAM_EDGES_MS[-1])
            out[name] = np.histogram(col, bins=HISTOGRAM_EDGES_MS)[0].astype(int).tolist()
        return out

    def snapshot(self) -> dict[str, Any]:
        """A msgpack/JSON-able map: state, uptime, counters, malformed reasons, latency summary."""
        with self._lock:
            counters = dict(self.counters)
            malformed = dict(self.malformed)
        return {
            "state": self.state,
            "session_id": self.session_id,
            "uptime_s": round(self._clock() - self._t0, 3),
            "counters": counters,
            "malformed": malformed,
            "malformed_total": int(sum(malformed.values())),
            "latency_ms": self.latency_summary(),
            "notes": dict(self.notes),
        }

    def summary(self) -> dict[str, Any]:
        """``snapshot()`` plus the histograms (the JSON summary written at exit)."""
        out = self.snapshot()
        out["histogram"] = {"edges_ms": HISTOGRAM_EDGES_MS.tolist(), **self.histograms()}
        out["columns"] = {name: f"{late} - {early}" for name, late, early in _SPANS}
        return out

    def status_line(self) -> str:
        """One human line: state, rate, counters and the key latencies."""
        now = self._clock()
        with self._lock:
            c = dict(self.counters)
            bad = sum(self.malformed.values())
        t_prev, n_prev = self._last_rate
        fps = (c["frames_published"] - n_prev) / max(now - t_prev, 1e-9)
        self._last_rate = (now, c["frames_published"])
        lat = self.latency_summary()
        extra = ""
        if "roi_coverage" in self.notes:
            extra += f" roi_coverage={self.notes['roi_coverage']}"
        if "reconstruction_refused" in self.notes:
            extra += " NOT RECONSTRUCTED"
        if self.notes.get("real_time") == "no":
            extra += " NOT REAL TIME"
        return (f"[{self.state}]{extra} sid={self.session_id or '-'} rx={c['frames_received']} "
                f"out={c['frames_published']} ({fps:.1f}/s) lost={c['messages_lost']} "
                f"missing={c['frames_missing']} skips={c['skipped_frames']} malformed={bad} "
                f"overflow={c['intake_overflow']} rec_drop={c['recorder_dropped']} | "
                f"service p50/p99 {lat['service']['p50']:.3f}/{lat['service']['p99']:.3f} ms, "
                f"e2e p99 {lat['e2e']['p99']:.3f} ms")

    def prometheus_text(self) -> str:
        """Prometheus text exposition format (version 0.0.4)."""
        snap = self.snapshot()
        lines = ["# HELP rt_decoder_up 1 while the service runs", "# TYPE rt_decoder_up gauge",
                 "rt_decoder_up 1"]
        lines += ["# HELP rt_decoder_state current lifecycle state", "# TYPE rt_decoder_state gauge"]
        for st in ("STARTING", "READY", "RUNNING", "DRAINING", "STOPPED", "FATAL"):
            lines.append(f'rt_decoder_state{{state="{st}"}} {1 if snap["state"] == st else 0}')
        for name, value in snap["counters"].items():
            lines += [f"# TYPE rt_decoder_{name}_total counter", f"rt_decoder_{name}_total {value}"]
        lines.append("# TYPE rt_decoder_malformed_total counter")
        for reason, value in sorted(snap["malformed"].items()):
            lines.append(f'rt_decoder_malformed_total{{reason="{_esc(reason)}"}} {value}')
        lines += ["# HELP rt_decoder_latency_ms per-stage latency over the kept frames",
                  "# TYPE rt_decoder_latency_ms summary"]
        for stage, s in snap["latency_ms"].items():
            for q in ("p50", "p95", "p99"):
                v = s[q]
                lines.append(f'rt_decoder_latency_ms{{stage="{stage}",quantile="0.{q[1:]}"}} '
                             f'{"NaN" if v != v else repr(v)}')
            lines.append(f'rt_decoder_latency_ms_count{{stage="{stage}"}} {s["count"]}')
        return "\n".join(lines) + "\n"


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class PrometheusServer:
    """Serve ``recorder.prometheus_text()`` at ``http://127.0.0.1:PORT/metrics`` from a thread.

    Binds to loopback only; ``port=0`` picks a free port (see ``.port``).
    """

    def __init__(self, recorder: MetricsRecorder, port: int, host: str = "127.0.0.1") -> None:
        rec = recorder

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = rec.prometheus_text().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # silence per-request logs
                return

        self._httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="prometheus", daemon=True)

    def start(self) -> PrometheusServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2.0)


def write_summary(path: str, summary: Mapping[str, Any]) -> None:
    """Write the JSON summary atomically (NaN written as null)."""
    import math
    import os

    def clean(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(clean(dict(summary)), fh, indent=1)
    os.replace(tmp, path)
