"""The live decoding service behind ``rt-decoder serve``: sockets and lifecycle around the chain.

The live path itself is ``rt_decoder.pipeline`` (a chain of stages and the ``Runner`` that
drives them, free of sockets). This module builds, from a ``ServiceConfig``:

* the source: a ``streaming.transport.StreamSubscriber`` on ``[input]`` (validation of the
  wire format, size limits, CURVE; malformed messages counted by reason),
* the stages: intake -> session and gap tracking -> recording (input) -> deconvolution ->
  [reconstruction, on its own thread behind a latest-frame handoff] -> output -> recording
  (decoded); without a reconstructor the output carries ACTIVITY frames,
* the output and status streams: ``StreamPublisher`` on ``[output]`` (non-blocking: what a
  slow subscriber cannot take is dropped and counted in ``output_dropped``) and ``[status]``,

and runs the lifecycle on the main thread: STARTING -> READY (after warm-up) -> RUNNING ->
DRAINING -> STOPPED on the status stream (FATAL instead of STOPPED, exit code 1, when a stage
raised something other than ``StageError``), heartbeats on the output when idle, the status
line, SIGINT/SIGTERM -> drain. Tests may pass their own source, output and status objects
(e.g. ends of ``streaming.transport.InMemoryLink``) instead of addresses.

Stage stamps (monotonic ns, ``rt_decoder.messages.now_ns``) carried by every output frame:
``rx`` (bytes received), ``decode`` (validated), ``deconv``, ``recon``, ``tx`` (just before
send). The output frame keeps the source's frame index and acquisition stamp; its ``seq``
is the output stream's own sequence number (so sinks detect output gaps).

Security: every address loopback unless configured otherwise (``streaming.transport``),
optional CURVE (the input socket is the CURVE server), per-message size limit, only
``streaming.protocol.decode`` touches wire bytes (msgpack + np.frombuffer; never pickle).
"""

from __future__ import annotations

import enum
import gc
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rt_decoder.deconv.settings import DeconvSettings
from rt_decoder.messages import SessionInfo
from rt_decoder.pipeline import (
    ActivityPassThrough,
    DeconvStage,
    IntakeStage,
    OutputStage,
    ReconstructionStage,
    Reconstructor,
    RecordTap,
    Runner,
    SessionStage,
    Source,
    Stage,
)
from streaming import protocol
from streaming.config import InputSettings, OutputSettings, ServiceConfig, StatusSettings
from streaming.metrics import LATENCY_COLUMNS, MetricsRecorder, PrometheusServer, write_summary
from streaming.recorder import SessionRecorder
from streaming.transport import Curve, StreamPublisher, StreamSubscriber


class State(str, enum.Enum):
    """Lifecycle states announced on the status channel."""

    STARTING = "STARTING"
    READY = "READY"
    RUNNING = "RUNNING"
    DRAINING = "DRAINING"
    STOPPED = "STOPPED"
    FATAL = "FATAL"


def open_input(settings: InputSettings, metrics: MetricsRecorder, *, context: Any = None) -> StreamSubscriber:
    """The service's source on ``[input]``: malformed messages are counted by reason in
    ``metrics`` (the last one's text kept in ``notes["last_malformed"]``)."""

    def on_reject(reason: str, message: str) -> None:
        metrics.count_malformed(reason)
        metrics.notes["last_malformed"] = message[:200]

    curve = None
    if settings.curve_secret_key_file:
        curve = Curve(settings.curve_secret_key_file, server=True,
                      authorized_keys_dir=settings.curve_authorized_keys_dir)
    return StreamSubscriber(
        settings.address, bind=settings.bind, allow_non_loopback=settings.allow_non_loopback,
        max_bytes=settings.max_message_bytes,
        zmq_max_bytes=2 * settings.max_message_bytes + protocol.MAX_HEADER_BYTES,
        rcvhwm=settings.receive_hwm_messages, reject_nonfinite=False, check_n_rois=False,
        curve=curve, on_reject=on_reject, context=context, what="[input]")


def open_output(settings: OutputSettings, *, context: Any = None) -> StreamPublisher:
    """The service's output stream on ``[output]`` (non-blocking; drops counted)."""
    return StreamPublisher(settings.address, None, bind=settings.bind,
                           allow_non_loopback=settings.allow_non_loopback, sndhwm=settings.send_hwm_messages,
                           heartbeat_every_s=settings.heartbeat_every_s,
                           resend_info_every_s=settings.session_resend_every_s, nonblocking=True,
                           linger_ms=200, context=context, what="[output]")


def open_status(settings: StatusSettings, *, context: Any = None) -> StreamPublisher | None:
    """The status stream on ``[status]`` (None when its address is empty)."""
    if not settings.address:
        return None
    return StreamPublisher(settings.address, None, bind=True, allow_non_loopback=settings.allow_non_loopback,
                           nonblocking=True, linger_ms=200, heartbeat_every_s=3600.0, context=context,
                           what="[status]")


# ------------------------------------------------------------------------------ the service


class DecoderService:
    """The live service: ``DecoderService(config, reconstructor)``, then ``run()`` (blocking).

    Parameters
    ----------
    config : ServiceConfig
    reconstructor : Reconstructor or None
        The reconstruction (``rt_decoder.recon.stage.LiveStage``, or any object with the
        ``rt_decoder.pipeline.Reconstructor`` methods); None publishes activity frames.
    source : Source, optional
        Instead of a subscriber on ``[input]`` (e.g. a ``StreamSubscriber`` on an
        ``InMemoryLink``).
    output, status : StreamPublisher, optional
        Instead of publishers on ``[output]`` / ``[status]``.
    context : zmq.Context, optional
        For the sockets the service opens (default: the process-wide one).
    log : callable(str) -> None
        Where the status line and lifecycle messages go (default: stderr).
    """

    def __init__(self, config: ServiceConfig, reconstructor: Reconstructor | None = None, *,
                 source: Source | None = None, output: StreamPublisher | None = None,
                 status: StreamPublisher | None = None, context: Any = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.reconstructor = reconstructor
        self.metrics = MetricsRecorder(config.status.max_latency_samples)
        from rt_decoder.recon.process import ReconstructionProcess

        if isinstance(reconstructor, ReconstructionProcess):
            note = f"{reconstructor.kind} in its own process (pid {reconstructor.pid})"
        elif reconstructor is not None:
            note = type(reconstructor).__name__
        else:
            note = "none: publishing ACTIVITY frames (the deconvolution output)"
        self.metrics.notes["reconstruction"] = note
        self.context = context
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.state = State.STARTING
        self._stop_requested = threading.Event()
        self._stop_reason = ""
        self.source: Source | None = source
        self.output: StreamPublisher | None = output
        self.status: StreamPublisher | None = status
        self._given = {"source": source is not None, "output": output is not None, "status": status is not None}
        self.prometheus: PrometheusServer | None = None
        self.recorder: SessionRecorder | None = None
        self.runner: Runner | None = None
        self.output_stage: OutputStage | None = None
        self.recon_stage: ReconstructionStage | None = None
        self.deconv_settings: DeconvSettings | None = None
        self._fatal: str | None = None
        self._synced: dict[str, int] = {}
        self._sync_lock = threading.Lock()
        self.real_time = True
        self.real_time_reason = ""
        self._rt_last = (0, 0)

    # ---------------------------------------------------------------- lifecycle
    @property
    def info(self) -> SessionInfo | None:
        """The current input session (None before the first)."""
        if self.runner is None:
            return None
        session = self.runner.frame_stages[1]
        assert isinstance(session, SessionStage)
        return session.info

    def _set_state(self, state: State) -> None:
        self.state = state
        self.metrics.state = state.value
        self.log(f"rt-decoder serve: {state.value}")
        self._publish_status()

    def _sync_counters(self) -> None:
        """Bring the transport's own counters into the metrics (as deltas, so they add up)."""
        totals: dict[str, int] = {}
        if self.output is not None:
            totals["output_dropped"] = self.output.dropped
        if isinstance(self.source, StreamSubscriber):
            c = self.source.counters
            totals.update(input_disconnects=c.disconnects, input_handshake_failures=c.handshake_failures,
                          input_socket_rebuilds=c.socket_rebuilds)
        with self._sync_lock:
            for name, total in totals.items():
                seen = self._synced.get(name, 0)
                if total > seen:
                    self.metrics.count(name, total - seen)
                    self._synced[name] = total

    def snapshot(self) -> dict[str, Any]:
        """The status message's metrics: counters, malformed reasons, latencies, notes, and the
        reconstruction's own counters under ``reconstruction``."""
        self._sync_counters()
        snap = self.metrics.snapshot()
        snap["real_time"] = self.real_time
        snap["real_time_reason"] = self.real_time_reason
        if self.recon_stage is not None:
            snap["reconstruction"] = self.recon_stage.stats()
        return snap

    def check_real_time(self) -> bool:
        """Judge the last seconds (called about once a second): the frame path must keep up
        (median receive -> activity within one frame period, no backlog before it), and the
        reconstruction must not skip more than a quarter of the frames or lag by more than two
        frame periods. Sets ``real_time``/``real_time_reason`` (status message, status line)."""
        info, runner = self.info, self.runner
        why: list[str] = []
        if info is not None and runner is not None and self.state == State.RUNNING:
            period_ms = 1000.0 / info.frame_rate_hz
            n = max(int(3 * info.frame_rate_hz), 10)
            fp = self.metrics.recent_frame_path_ms(n)
            fp = fp[np.isfinite(fp)]
            if fp.size >= 5 and float(np.median(fp)) > period_ms:
                why.append(f"frame path median {float(np.median(fp)):.0f} ms > one frame period ({period_ms:.0f} ms)")
            backlog = runner.intake.qsize()
            if backlog > info.frame_rate_hz:
                why.append(f"{backlog} messages queued before the frame path")
            submitted, skipped = runner.submitted, runner.skipped
            d_sub, d_skip = submitted - self._rt_last[0], skipped - self._rt_last[1]
            self._rt_last = (submitted, skipped)
            if d_sub >= 5 and d_skip > 0.25 * d_sub:
                why.append(f"the reconstruction skipped {d_skip} of {d_sub} frames in the last second")
            if self.recon_stage is not None:
                lat = self.metrics.recent_latencies(n)[:, LATENCY_COLUMNS.index("service")]
                lat = lat[np.isfinite(lat)]
                if lat.size >= 5 and float(np.median(lat)) > 2 * period_ms:
                    why.append(f"decoded frames leave {float(np.median(lat)):.0f} ms after their newest frame "
                               f"arrived (> two frame periods)")
        ok = not why
        if ok != self.real_time:
            self.log(f"rt-decoder serve: {'real time again' if ok else 'NOT REAL TIME: ' + '; '.join(why)}")
            if not ok:
                self.metrics.count("not_real_time_events")
        self.real_time, self.real_time_reason = ok, "; ".join(why)
        self.metrics.notes["real_time"] = "yes" if ok else "no"
        if why:
            self.metrics.notes["real_time_reason"] = self.real_time_reason
        return ok

    def _publish_status(self) -> None:
        if self.status is None:
            return
        info = self.info
        self.status.send_status(self.state.value, self.snapshot(),
                                session_id=info.session_id if info is not None else "rt-decoder")

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the run loop to drain and stop (thread- and signal-safe)."""
        if not self._stop_requested.is_set():
            self._stop_reason = reason
            self._stop_requested.set()

    def build_stages(self) -> tuple[list[Stage], list[Stage], list[Stage]]:
        """The chain: (frame-thread stages, reconstruction stages, output stages)."""
        cfg, m = self.config, self.metrics
        # a model records the deconvolution its training responses came from: that is the
        # base, the config's explicit [deconv] keys override it
        model_deconv = self.reconstructor.model_deconv if self.reconstructor is not None else {}
        self.deconv_settings = self.config.deconv_for_model(model_deconv)
        window = cfg.pipeline.recent_window_frames if self.reconstructor is not None else 0

        def on_session_end(session_id: str, n_frames: int) -> None:
            if cfg.pipeline.stop_on_session_end:
                self.request_stop("session_end")

        p = cfg.pipeline
        frame: list[Stage] = [IntakeStage(m), SessionStage(m, max_gap_frames=p.max_gap_frames,
                                                           confirm_jump_frames=p.confirm_jump_frames,
                                                           takeover_after_s=p.session_takeover_after_s,
                                                           on_session_end=on_session_end)]
        out: list[Stage] = []
        if self.recorder is not None:
            frame.append(RecordTap(self.recorder, "input"))
        frame.append(DeconvStage(self.deconv_settings, m, window_frames=window))
        recon: list[Stage] = []
        if self.reconstructor is not None:
            self.recon_stage = ReconstructionStage(self.reconstructor, m)
            recon.append(self.recon_stage)
        else:
            frame.append(ActivityPassThrough())
        assert self.output is not None
        self.output_stage = OutputStage(self.output, m)
        out.append(self.output_stage)
        if self.recorder is not None:
            out.append(RecordTap(self.recorder, "decoded"))
        return frame, recon, out

    def start(self) -> None:
        """Open the streams, warm up, start the threads; returns in READY. Errors here are fatal."""
        cfg = self.config
        if self.status is None:
            self.status = open_status(cfg.status, context=self.context)
        self._set_state(State.STARTING)
        if cfg.status.prometheus_port:
            self.prometheus = PrometheusServer(self.metrics, cfg.status.prometheus_port).start()
        if self.output is None:
            self.output = open_output(cfg.output, context=self.context)
        if cfg.recording.enabled:
            self.recorder = SessionRecorder(
                cfg.recording.directory, self.metrics, queue_frames=cfg.recording.queue_frames,
                flush_every_s=cfg.recording.flush_every_s, record_decoded=cfg.recording.record_decoded).start()
        frame, recon, out = self.build_stages()
        self._warmup(frame, recon)
        # everything allocated so far (modules, models, warm-up) lives as long as the service:
        # moved out of the garbage collector's reach, a full collection stays short instead of
        # walking it all and stalling the frame path for milliseconds
        gc.collect()
        gc.freeze()
        if self.source is None:
            self.source = open_input(cfg.input, self.metrics, context=self.context)
        self.runner = Runner(self.source, frame, recon, out, self.metrics,
                             intake_queue_frames=cfg.pipeline.intake_queue_frames, on_fatal=self._on_fatal)
        self.runner.start()
        self._set_state(State.READY)

    def _warmup(self, frame: list[Stage], recon: list[Stage]) -> None:
        """Compile and exercise the deconvolution, the codec and the reconstruction on a
        dummy session before READY (the output is not exercised: nothing is published)."""
        from rt_decoder.messages import ActivityFrame, now_ns

        n = self.config.pipeline.warmup_rois
        info = SessionInfo("warmup", np.arange(n), 30.0, is_activity=True)
        for stage in [*frame, *recon]:
            stage.warmup(info)
        probe = ActivityFrame(0, 0, now_ns(), values=np.zeros(n, np.float32), stamps=(("rx", 1),))
        protocol.decode(protocol.encode_activity(probe, "warmup"))

    def run(self) -> int:
        """Start, serve until stopped (signal, ``stop_after_s`` or session end), drain; exit code."""
        old_handlers = self._install_signals()
        try:
            return self._run()
        finally:
            self._restore_signals(old_handlers)

    def _run(self) -> int:
        try:
            self.start()
        except Exception:
            self.state = State.FATAL
            self.metrics.state = "FATAL"
            self._publish_status()
            if self.runner is not None:
                self.runner.drain(0.0)
            if self.recorder is not None:
                self.recorder.close()
            self._close_streams()
            raise
        cfg = self.config
        t_last_status = t_last_line = t_last_rt = time.monotonic()
        t_running: float | None = None
        while not self._stop_requested.is_set():
            self._stop_requested.wait(0.05)
            now = time.monotonic()
            if self.state == State.READY and self.info is not None:
                self._set_state(State.RUNNING)
                t_running = now
            assert self.output is not None
            self.output.heartbeat_if_idle()
            if now - t_last_rt >= 1.0:
                self.check_real_time()
                t_last_rt = now
            if now - t_last_status >= cfg.status.publish_every_s:
                self._publish_status()
                t_last_status = now
            if cfg.status.status_line_every_s and now - t_last_line >= cfg.status.status_line_every_s:
                self.log(self.metrics.status_line())
                t_last_line = now
            if cfg.pipeline.stop_after_s and t_running is not None and now - t_running >= cfg.pipeline.stop_after_s:
                self.request_stop("stop_after_s")
            if self._fatal is not None:
                break
        self.drain()
        return 1 if self._fatal else 0

    def _install_signals(self) -> dict[int, Any]:
        """SIGINT/SIGTERM -> drain (main thread only); returns the previous handlers."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        old: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, lambda signum, _frame: self.request_stop(signal.Signals(signum).name))
        return old

    @staticmethod
    def _restore_signals(old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    def drain(self) -> None:
        """DRAINING: stop input, finish queued frames, flush the recording, STOPPED."""
        self._set_state(State.DRAINING)
        timeout = self.config.pipeline.drain_timeout_s
        if self.runner is not None:
            self.runner.drain(timeout)
        if self.output_stage is not None:
            self.output_stage.end()
        if self.recorder is not None:
            self.recorder.close()
        self.metrics.notes["stop_reason"] = self._stop_reason or "fatal"
        final = State.FATAL if self._fatal else State.STOPPED
        self.state = final
        self.metrics.state = final.value
        if self.config.status.summary_json:
            self._sync_counters()
            summary = self.metrics.summary()
            summary["real_time"] = self.real_time and not self.metrics.counters["not_real_time_events"]
            summary["real_time_reason"] = self.real_time_reason or self.metrics.notes.get("real_time_reason", "")
            if self.recon_stage is not None:
                summary["reconstruction"] = self.recon_stage.stats()
            write_summary(self.config.status.summary_json, summary)
        self.log(self.metrics.status_line())
        self._set_state(final)
        self._close_streams()

    def _close_streams(self) -> None:
        if self.source is not None and not self._given["source"]:
            self.source.close()
        if self.output is not None and not self._given["output"]:
            self.output.close()
        if self.status is not None and not self._given["status"]:
            time.sleep(0.05)  # let the last status leave
            self.status.close()
        if self.prometheus is not None:
            self.prometheus.close()

    def _on_fatal(self, message: str) -> None:
        """A stage cannot continue: record it, go to DRAINING -> STOPPED with exit code 1."""
        self._fatal = message
        self.metrics.notes["fatal"] = message
        self.log(f"rt-decoder serve: FATAL: {message}")
        self.request_stop("fatal")


def serve(config: ServiceConfig, reconstructor: Reconstructor | None = None) -> int:
    """Run the service in this process until stopped; returns the exit code."""
    return DecoderService(config, reconstructor).run()


__all__ = ["DecoderService", "State", "open_input", "open_output", "open_status", "serve"]
