"""The live decoding service behind ``rt-decoder serve``.

Threads and bounded queues (no queue grows without limit)::

    SUB socket --[receiver thread: recv, stamp rx, validate, stamp decode]--> intake queue
      (never blocks: a full intake queue drops the frame, counted in intake_overflow, and the
       deconvolution later sees it as a missing frame)
    intake queue --[pipeline thread]--> session handling, seq/frame-index gap detection,
      recording (non-blocking), deconvolution (bypassed when SessionInfo.is_activity),
      reconstruction slot, PUB output (stamp tx)
    reconstruction slot: a pluggable ``ReconstructionStage`` run on its own thread on the
      newest activity frame; frames it cannot keep up with are skipped and counted
      (a single pending slot: bounded). Without a stage (until the reconstruction issue
      lands) the slot passes activity frames straight through and the service publishes
      ACTIVITY frames; the status channel says so (notes.reconstruction).
    main thread: lifecycle STARTING -> READY (after warm-up) -> RUNNING -> DRAINING ->
      STOPPED on the status PUB (FATAL instead of STOPPED, exit code 1, when a stage raised
      something other than StageError), heartbeats on the output when idle, status line,
      SIGINT/SIGTERM -> drain.

Stage stamps (monotonic ns, ``rt_decoder.messages.now_ns``) carried by every output frame:
``rx`` (bytes received), ``decode`` (validated), ``deconv``, ``recon``, ``tx`` (just before
send). The output frame keeps the source's frame index and acquisition stamp; its ``seq``
is the output stream's own sequence number (so sinks detect output gaps).

Security: every address loopback unless configured otherwise, optional CURVE (the SUB
socket is the CURVE server), per-message size limit, only ``streaming.protocol.decode``
touches wire bytes (msgpack + np.frombuffer; never pickle or eval).

This is the only module of the service that imports zmq (with ``streaming.replay``).
"""

from __future__ import annotations

import dataclasses
import enum
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import zmq

from rt_decoder.errors import ConfigError, ProtocolError, StageError
from rt_decoder.messages import ActivityFrame, DecodedFrame, FluorescenceFrame, SessionInfo, now_ns
from streaming import protocol
from streaming.config import InputSettings, ServiceConfig
from streaming.metrics import MetricsRecorder, PrometheusServer, write_summary

_DRAIN = object()


class State(str, enum.Enum):
    """Lifecycle states announced on the status channel."""

    STARTING = "STARTING"
    READY = "READY"
    RUNNING = "RUNNING"
    DRAINING = "DRAINING"
    STOPPED = "STOPPED"
    FATAL = "FATAL"


@runtime_checkable
class ReconstructionStage(Protocol):
    """A reconstruction stage for the slot: ``(ActivityFrame, recent_activity) -> [DecodedFrame]``.

    ``recent_activity`` is (W, N) float32, the freshest activity estimates of the last W
    frames (oldest first; the newest row belongs to ``frame``). The stage returns the
    frames it emits now (possibly none, e.g. while its lag fills up); each should keep the
    input frame's stamps (the slot adds ``recon``). Optional methods, called when present:
    ``reset()`` or ``reset(info: SessionInfo)`` at each session start, and ``warmup()`` or
    ``warmup(info)`` before READY (``rt_decoder.recon.LiveReconstructor`` fits as is).
    """

    def __call__(self, frame: ActivityFrame, recent_activity: np.ndarray) -> list[DecodedFrame]: ...


# ------------------------------------------------------------------------------ CURVE helpers


def apply_curve_server(sock: zmq.Socket, secret_key_file: str) -> None:
    """Make ``sock`` a CURVE server with the key pair in ``secret_key_file`` (zmq.auth format)."""
    import zmq.auth

    public, secret = zmq.auth.load_certificate(secret_key_file)
    if secret is None:
        raise ConfigError(f"CURVE key file {secret_key_file!r} holds no secret key")
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def apply_curve_client(sock: zmq.Socket, client_secret_key_file: str, server_public_key_file: str) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is in ``server_public_key_file``."""
    import zmq.auth

    public, secret = zmq.auth.load_certificate(client_secret_key_file)
    if secret is None:
        raise ConfigError(f"CURVE key file {client_secret_key_file!r} holds no secret key")
    server_public, _ = zmq.auth.load_certificate(server_public_key_file)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


def _bind_or_connect(sock: zmq.Socket, address: str, bind: bool) -> None:
    try:
        sock.bind(address) if bind else sock.connect(address)
    except zmq.ZMQError as exc:
        sock.close(linger=0)  # so that the context can terminate
        raise ConfigError(f"cannot {'bind' if bind else 'connect'} {address!r}: {exc}") from None


# ------------------------------------------------------------------------------ receiver


class Receiver:
    """SUB socket + thread: receive, stamp ``rx``, validate, stamp ``decode``, enqueue.

    Never blocks on the intake queue; malformed messages are counted by reason
    (``streaming.protocol.error_reason``) and the last error text is kept in the notes.
    """

    def __init__(self, ctx: zmq.Context, settings: InputSettings, intake: queue.Queue[Any],
                 metrics: MetricsRecorder) -> None:
        self.settings = settings
        self.intake = intake
        self.metrics = metrics
        self.sock = ctx.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.rcvhwm = settings.receive_hwm_messages
        self.sock.setsockopt(zmq.MAXMSGSIZE, 2 * settings.max_message_bytes + protocol.MAX_HEADER_BYTES)
        self._auth: Any = None
        if settings.curve_secret_key_file:
            apply_curve_server(self.sock, settings.curve_secret_key_file)
            if settings.curve_authorized_keys_dir:
                from zmq.auth.thread import ThreadAuthenticator

                self._auth = ThreadAuthenticator(ctx)
                self._auth.start()
                self._auth.configure_curve(domain="*", location=settings.curve_authorized_keys_dir)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        _bind_or_connect(self.sock, settings.address, settings.bind)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="receiver", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop receiving (the socket closes in the receiver thread)."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        if self._auth is not None:
            self._auth.stop()

    def _run(self) -> None:
        sock, max_bytes, m = self.sock, self.settings.max_message_bytes, self.metrics
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(50):
                    continue
                while True:
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    rx = now_ns()
                    try:
                        env = protocol.decode(parts, max_bytes=max_bytes)
                    except ProtocolError as exc:
                        m.count_malformed(protocol.error_reason(exc))
                        m.notes["last_malformed"] = str(exc)[:200]
                        continue
                    dec = now_ns()
                    try:
                        self.intake.put_nowait((env, rx, dec))
                    except queue.Full:
                        m.count("intake_overflow")
        finally:
            sock.close(linger=0)


# ------------------------------------------------------------------------------ output


class OutputPublisher:
    """The output PUB socket (thread-safe through a lock): frames, session info, heartbeats."""

    def __init__(self, ctx: zmq.Context, config: ServiceConfig, metrics: MetricsRecorder) -> None:
        s = config.output
        self.settings = s
        self.metrics = metrics
        self.sock = ctx.socket(zmq.PUB)
        self.sock.linger = 0
        self.sock.sndhwm = s.send_hwm_messages
        _bind_or_connect(self.sock, s.address, s.bind)
        self._lock = threading.Lock()
        self._seq = 0
        self.info: SessionInfo | None = None
        self._ended = False
        self._last_send = time.monotonic()
        self._last_info = 0.0

    def _send(self, parts: list[Any]) -> bool:
        # caller holds the lock
        try:
            self.sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            self.metrics.count("output_dropped")
            return False

    def _next_seq(self) -> int:
        s = self._seq
        self._seq += 1
        return s

    def set_session(self, info: SessionInfo | None) -> None:
        """Announce ``info`` (is_activity=True for the output) immediately and then periodically."""
        with self._lock:
            self.info = info
            self._last_info = 0.0
            self._ended = False
        self.tick()

    def send(self, frame: ActivityFrame | DecodedFrame) -> ActivityFrame | DecodedFrame:
        """Stamp ``tx``, encode and send; returns the frame as sent (with its tx stamp)."""
        with self._lock:
            sid = self.info.session_id if self.info is not None else "rt-decoder"
            out = dataclasses.replace(frame, seq=self._next_seq(), stamps=frame.stamps + (("tx", now_ns()),))
            if isinstance(out, DecodedFrame):
                parts = protocol.encode_decoded(out, sid)
            else:
                parts = protocol.encode_activity(out, sid)
            self._send(parts)
            self._last_send = time.monotonic()
        return out

    def tick(self) -> None:
        """Re-send session info when due; heartbeat when idle."""
        now = time.monotonic()
        with self._lock:
            sid = self.info.session_id if self.info is not None else "rt-decoder"
            if self.info is not None and now - self._last_info >= self.settings.session_resend_every_s:
                self._send(protocol.encode_session_start(self.info, seq=self._next_seq(), t_ns=now_ns()))
                self._last_info = now
            if now - self._last_send >= self.settings.heartbeat_every_s:
                self._send(protocol.encode_heartbeat(sid, seq=self._next_seq(), t_ns=now_ns()))
                self._last_send = now

    def end_session(self, n_frames: int) -> None:
        """Announce the end of the current output session (once; a new session re-arms it)."""
        with self._lock:
            if self.info is not None and not self._ended:
                self._send(protocol.encode_session_end(self.info.session_id, seq=self._next_seq(),
                                                       t_ns=now_ns(), n_frames=n_frames))
                self._ended = True

    def close(self) -> None:
        with self._lock:
            self.sock.close(linger=200)


# ------------------------------------------------------------------------------ reconstruction slot


def _call_with_optional_info(fn: Callable[..., Any], info: SessionInfo) -> Any:
    """Call a stage's ``reset``/``warmup`` with ``info`` when it has a required parameter, else bare."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return fn(info)
    required = [p for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return fn(info) if required else fn()


class ReconstructionSlot:
    """Runs a ``ReconstructionStage`` on the newest activity frame, skipping what it cannot do.

    ``submit`` never blocks: it replaces a frame still waiting (that frame is *skipped*
    and counted in ``skipped_frames``). A dedicated thread takes the pending frame, runs
    the stage, stamps ``recon`` on each output and hands it to ``emit``. With
    ``stage=None`` the slot is a pass-through: ``submit`` stamps ``recon`` and emits the
    activity frame itself, on the caller's thread.

    Parameters
    ----------
    stage : ReconstructionStage or None
    emit : callable(frame) -> None
        Called with every output frame (from the slot thread, or inline for pass-through).
    metrics : MetricsRecorder
    on_fatal : callable(str) -> None, optional
        Called (from the slot thread) when the stage raises anything but ``StageError``;
        the slot then stops taking frames.
    """

    def __init__(self, stage: ReconstructionStage | None, emit: Callable[[Any], None],
                 metrics: MetricsRecorder, on_fatal: Callable[[str], None] | None = None) -> None:
        self.stage = stage
        self.emit = emit
        self.on_fatal = on_fatal or (lambda msg: metrics.notes.__setitem__("fatal", msg))
        self.metrics = metrics
        self.skipped = 0
        self.processed = 0
        self._cond = threading.Condition()
        self._pending: tuple[ActivityFrame, np.ndarray] | None = None
        self._busy = False
        self._closed = False
        self._generation = 0
        self._thread: threading.Thread | None = None
        if stage is not None:
            self._thread = threading.Thread(target=self._run, name="reconstruction", daemon=True)
            self._thread.start()

    @property
    def passthrough(self) -> bool:
        return self.stage is None

    def submit(self, frame: ActivityFrame, recent: np.ndarray | None) -> None:
        """Hand over the newest activity frame (never blocks)."""
        if self.stage is None:
            self.processed += 1
            self.emit(frame.with_stamp("recon"))
            return
        with self._cond:
            if self._closed:
                return
            if self._pending is not None:
                self.skipped += 1
                self.metrics.count("skipped_frames")
            self._pending = (frame, recent if recent is not None else np.zeros((0, 0), np.float32))
            self._cond.notify()

    def reset(self, info: SessionInfo) -> None:
        """New session: drop the pending frame (not a skip), wait for a running call, reset the stage."""
        with self._cond:
            self._pending = None
            self._generation += 1
            while self._busy:
                self._cond.wait(0.05)
            if self.stage is not None and hasattr(self.stage, "reset"):
                _call_with_optional_info(self.stage.reset, info)

    def flush_session(self, timeout_s: float) -> int:
        """End of session: finish the pending frame, then emit what the stage still holds
        (``stage.flush()``, the frames inside its decoding lag). Returns frames emitted."""
        if self.stage is None or not hasattr(self.stage, "flush"):
            return 0
        self.drain(timeout_s)
        with self._cond:
            self._busy = True
        try:
            outputs = list(self.stage.flush())
        except StageError as exc:
            self.metrics.count("stage_errors")
            self.metrics.notes["last_stage_error"] = str(exc)[:200]
            outputs = []
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
        t = now_ns()
        for out in outputs:
            self.emit(out.with_stamp("recon", t))
        return len(outputs)

    def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is pending or running; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        assert self.stage is not None
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                frame, recent = self._pending
                self._pending = None
                self._busy = True
                generation = self._generation
            try:
                outputs = self.stage(frame, recent)
            except StageError as exc:
                self.metrics.count("stage_errors")
                self.metrics.notes["last_stage_error"] = str(exc)[:200]
                outputs = []
            except Exception as exc:  # noqa: BLE001 -- the stage cannot continue: report, stop the slot
                self.on_fatal(f"reconstruction stage: {type(exc).__name__}: {exc}")
                with self._cond:
                    self._busy = False
                    self._closed = True
                    self._pending = None
                    self._cond.notify_all()
                return
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
            if generation != self._generation:
                continue  # the session changed while the stage ran: drop stale outputs
            self.processed += 1
            t = now_ns()
            for out in outputs:
                if not out.stamps:
                    out = dataclasses.replace(out, stamps=frame.stamps)
                self.emit(out.with_stamp("recon", t))


# ------------------------------------------------------------------------------ the service


class DecoderService:
    """The live service: wire it with ``DecoderService(config)``, then ``run()`` (blocking).

    Parameters
    ----------
    config : ServiceConfig
    stage : ReconstructionStage or None
        The reconstruction stage for the slot; None publishes activity frames.
    ctx : zmq.Context or None
        Shared context (tests may pass one; default: a new one).
    log : callable(str) -> None
        Where the status line and lifecycle messages go (default: stderr).
    """

    def __init__(self, config: ServiceConfig, stage: ReconstructionStage | None = None, *,
                 ctx: zmq.Context | None = None, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.stage = stage
        self.metrics = MetricsRecorder(config.status.max_latency_samples)
        self.metrics.notes["reconstruction"] = (
            type(stage).__name__ if stage is not None
            else "none: publishing ACTIVITY frames (deconvolution output) until a stage is plugged in")
        self._own_ctx = ctx is None
        self.ctx = ctx if ctx is not None else zmq.Context()
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.state = State.STARTING
        self._stop_requested = threading.Event()
        self._stop_reason = ""
        self.intake: queue.Queue[Any] = queue.Queue(maxsize=config.pipeline.intake_queue_frames)
        self._status_sock: zmq.Socket | None = None
        self._status_seq = 0
        self.prometheus: PrometheusServer | None = None
        self.receiver: Receiver | None = None
        self.output: OutputPublisher | None = None
        self.recorder: Any = None
        self.slot: ReconstructionSlot | None = None
        self._pipeline_thread: threading.Thread | None = None
        self._fatal: str | None = None
        # session state, owned by the pipeline thread
        self.info: SessionInfo | None = None
        self.deconv: Any = None
        self._deconv_settings: Any = None
        self._last_seq: int | None = None
        self._last_frame_index: int | None = None
        self._frames_in_session = 0
        self._recent: np.ndarray | None = None

    # ---------------------------------------------------------------- lifecycle
    def _set_state(self, state: State) -> None:
        self.state = state
        self.metrics.state = state.value
        self.log(f"rt-decoder serve: {state.value}")
        self._publish_status()

    def _publish_status(self) -> None:
        if self._status_sock is None:
            return
        snap = self.metrics.snapshot()
        if self.stage is not None and hasattr(self.stage, "stats"):
            snap["reconstruction"] = self.stage.stats()
        sid = self.info.session_id if self.info is not None else "rt-decoder"
        try:
            self._status_sock.send_multipart(
                protocol.encode_status(sid, seq=self._status_seq, t_ns=now_ns(), state=self.state.value,
                                       metrics=snap), zmq.NOBLOCK)
        except zmq.Again:
            pass
        self._status_seq += 1

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the run loop to drain and stop (thread- and signal-safe)."""
        if not self._stop_requested.is_set():
            self._stop_reason = reason
            self._stop_requested.set()

    def start(self) -> None:
        """Open sockets, warm up, start threads; returns in READY. Errors here are fatal."""
        cfg = self.config
        if cfg.status.address:
            self._status_sock = self.ctx.socket(zmq.PUB)
            self._status_sock.linger = 200
            _bind_or_connect(self._status_sock, cfg.status.address, True)
        self._set_state(State.STARTING)
        if cfg.status.prometheus_port:
            self.prometheus = PrometheusServer(self.metrics, cfg.status.prometheus_port).start()
        self._deconv_settings = self._make_deconv_settings()
        history = int(getattr(self._deconv_settings, "history_frames", 10**9))
        if self.stage is not None and cfg.pipeline.recent_window_frames > history:
            raise ConfigError(f"[pipeline] recent_window_frames = {cfg.pipeline.recent_window_frames} exceeds "
                              f"[deconv] history_frames = {history}")
        self._warmup()
        self.output = OutputPublisher(self.ctx, cfg, self.metrics)
        if cfg.recording.enabled:
            from streaming.recorder import SessionRecorder

            self.recorder = SessionRecorder(
                cfg.recording.directory, self.metrics, queue_frames=cfg.recording.queue_frames,
                flush_every_s=cfg.recording.flush_every_s, record_decoded=cfg.recording.record_decoded).start()
        self.slot = ReconstructionSlot(self.stage, self._emit, self.metrics, on_fatal=self._on_fatal)
        self._pipeline_thread = threading.Thread(target=self._pipeline_loop, name="pipeline", daemon=True)
        self._pipeline_thread.start()
        self.receiver = Receiver(self.ctx, cfg.input, self.intake, self.metrics)
        self.receiver.start()
        self._set_state(State.READY)

    def _make_deconv_settings(self) -> Any:
        from rt_decoder.deconv import DeconvSettings

        # a model records the deconvolution its training responses came from: that is the
        # base, the config's explicit [deconv] keys override it
        table = {**dict(getattr(self.stage, "model_deconv", {}) or {}), **self.config.deconv_dict}
        try:
            if hasattr(DeconvSettings, "from_dict"):
                return DeconvSettings.from_dict(table)
            return DeconvSettings(**table)
        except TypeError as exc:
            raise ConfigError(f"[deconv]: {exc}") from None

    def _warmup(self) -> None:
        """Compile and exercise every stage on a dummy session before READY."""
        from rt_decoder.deconv import OnlineDeconvolver

        n = self.config.pipeline.warmup_rois
        rng = np.random.default_rng(0)
        dec = OnlineDeconvolver(self._deconv_settings, n, 30.0)
        # past the initial batch: compiles the kernels and runs the parameter estimation
        n_frames = int(getattr(self._deconv_settings, "init_frames", 300)) + 3
        for i in range(n_frames):
            values = (100.0 + 10.0 * rng.standard_normal(n)).astype(np.float32)
            dec(FluorescenceFrame(i, i, now_ns(), values=values))
            if i == n_frames - 2:
                dec.push_gap(1)
        dec.recent(min(self.config.pipeline.recent_window_frames, int(self._deconv_settings.history_frames)))
        frame = ActivityFrame(0, 0, now_ns(), values=np.zeros(n, np.float32), stamps=(("rx", 1),))
        protocol.decode(protocol.encode_activity(frame, "warmup"))
        if self.stage is not None:
            info = SessionInfo("warmup", np.arange(n), 30.0, is_activity=True)
            if hasattr(self.stage, "warmup"):
                _call_with_optional_info(self.stage.warmup, info)
        self.metrics.notes["warmup"] = f"deconvolution run on {n} dummy ROIs for {n_frames} frames"

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
            if self.receiver is not None:
                self.receiver.stop()
            if self.recorder is not None:
                self.recorder.close()
            if self.slot is not None:
                self.slot.close()
            self._close_sockets()
            raise
        cfg = self.config
        t_last_status = t_last_line = time.monotonic()
        t_running: float | None = None
        while not self._stop_requested.is_set():
            self._stop_requested.wait(0.05)
            now = time.monotonic()
            if self.state == State.READY and self.info is not None:
                self._set_state(State.RUNNING)
                t_running = now
            assert self.output is not None
            self.output.tick()
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
        if self.receiver is not None:
            self.receiver.stop()
        if self._pipeline_thread is not None:
            try:
                self.intake.put(_DRAIN, timeout=max(timeout, 0.1))
            except queue.Full:
                pass
            self._pipeline_thread.join(timeout=max(timeout, 0.1) + 1.0)
        if self.slot is not None:
            self.slot.drain(timeout)
            self.slot.close()
        if self.output is not None:
            self.output.end_session(self._frames_in_session)
        if self.recorder is not None:
            self.recorder.close()
        self.metrics.notes["stop_reason"] = self._stop_reason or "fatal"
        final = State.FATAL if self._fatal else State.STOPPED
        self.state = final
        self.metrics.state = final.value
        if self.config.status.summary_json:
            summary = self.metrics.summary()
            if self.stage is not None and hasattr(self.stage, "stats"):
                summary["reconstruction"] = self.stage.stats()
            write_summary(self.config.status.summary_json, summary)
        self.log(self.metrics.status_line())
        self._set_state(final)
        self._close_sockets()

    def _close_sockets(self) -> None:
        if self.output is not None:
            self.output.close()
        if self._status_sock is not None:
            time.sleep(0.05)  # let the STOPPED status leave
            self._status_sock.close(linger=200)
            self._status_sock = None
        if self.prometheus is not None:
            self.prometheus.close()
        if self._own_ctx:
            self.ctx.term()

    # ---------------------------------------------------------------- pipeline thread
    def _on_fatal(self, message: str) -> None:
        """A stage cannot continue: record it, go to DRAINING -> STOPPED with exit code 1."""
        self._fatal = message
        self.metrics.notes["fatal"] = message
        self.log(f"rt-decoder serve: FATAL: {message}")
        self.request_stop("fatal")

    def _pipeline_loop(self) -> None:
        while True:
            item = self.intake.get()
            if item is _DRAIN:
                return
            try:
                self._handle(*item)
            except Exception as exc:  # noqa: BLE001 -- the stage cannot continue: go FATAL, visibly
                self._on_fatal(f"pipeline: {type(exc).__name__}: {exc}")
                return

    def _track_seq(self, env: protocol.Envelope) -> None:
        if self._last_seq is not None:
            expected = self._last_seq + 1
            if env.seq > expected:
                self.metrics.count("messages_lost", env.seq - expected)
                self.metrics.count("gap_events")
            elif env.seq < expected:
                self.metrics.count_malformed("seq_regress")
        self._last_seq = max(env.seq, self._last_seq if self._last_seq is not None else -1)

    def _handle(self, env: protocol.Envelope, rx: int, dec: int) -> None:
        m = self.metrics
        m.count("messages_received")
        kind = env.kind
        if kind == protocol.KIND_SESSION_START:
            info = env.body
            assert isinstance(info, SessionInfo)
            restarted = (self.info is not None and info.session_id == self.info.session_id
                         and self._last_seq is not None and env.seq < self._last_seq)
            if (self.info is None or restarted or info.session_id != self.info.session_id
                    or info.n_rois != self.info.n_rois):
                # a new id, a new ROI count, or the same id with its sequence restarted
                self._start_session(info)
                self._last_seq = env.seq
            else:
                self._track_seq(env)
            return
        if self.info is None or env.session_id != self.info.session_id:
            if kind in (protocol.KIND_FRAME, protocol.KIND_ACTIVITY):
                m.count("frames_without_session")
            return
        self._track_seq(env)
        if kind == protocol.KIND_HEARTBEAT:
            m.count("heartbeats_received")
        elif kind == protocol.KIND_SESSION_END:
            if self.slot is not None:
                self.slot.flush_session(self.config.pipeline.drain_timeout_s)
            if self.recorder is not None:
                self.recorder.end_session()
            assert self.output is not None
            self.output.end_session(self._frames_in_session)
            m.notes["last_session_end"] = f"{env.session_id} after {self._frames_in_session} frames"
            if self.config.pipeline.stop_on_session_end:
                self.request_stop("session_end")
        elif kind == getattr(protocol, "KIND_STIMULUS", None):
            body: Any = env.body
            if self.recorder is not None:
                self.recorder.submit_stimulus(body.frame_index, body.image)
        elif kind in (protocol.KIND_FRAME, protocol.KIND_ACTIVITY):
            self._on_frame(env, rx, dec)

    def _start_session(self, info: SessionInfo) -> None:
        from rt_decoder.deconv import OnlineDeconvolver

        m = self.metrics
        if self.info is not None:
            m.count("session_restarts")
            if self.recorder is not None:
                self.recorder.end_session()
            self.log(f"rt-decoder serve: session restart {self.info.session_id} -> {info.session_id} "
                     f"({self.info.n_rois} -> {info.n_rois} ROIs)")
        m.count("sessions_started")
        m.session_id = info.session_id
        self.info = info
        self._last_frame_index = None
        self._frames_in_session = 0
        self.deconv = None if info.is_activity else OnlineDeconvolver(
            self._deconv_settings, info.n_rois, info.frame_rate_hz)
        w = self.config.pipeline.recent_window_frames
        self._recent = np.zeros((w, info.n_rois), np.float32) if (self.stage is not None and info.is_activity) else None
        assert self.slot is not None and self.output is not None
        self.slot.reset(info)
        self.output.set_session(dataclasses.replace(info, is_activity=True, source="rt-decoder serve"))
        if self.recorder is not None:
            self.recorder.start_session(info)
        m.notes["session"] = (f"{info.session_id}: {info.n_rois} ROIs at {info.frame_rate_hz:g} Hz, "
                              f"{'activity (deconvolution bypassed)' if info.is_activity else 'fluorescence'}")

    def _on_frame(self, env: protocol.Envelope, rx: int, dec: int) -> None:
        m = self.metrics
        info = self.info
        assert info is not None and self.slot is not None
        frame: Any = env.body
        if frame.values.shape[0] != info.n_rois:
            m.count_malformed("wrong_n_rois")
            m.notes["last_malformed"] = (f"frame {frame.frame_index} has {frame.values.shape[0]} values, "
                                         f"session {info.session_id} has {info.n_rois} ROIs")
            return
        fi = frame.frame_index
        if self._last_frame_index is not None:
            missing = fi - self._last_frame_index - 1
            if missing < 0:
                m.count_malformed("stale_frame_index")
                return
            if missing > 0:
                m.count("frames_missing", missing)
                if self.deconv is not None:
                    if missing > self.config.pipeline.max_gap_frames:
                        m.count("deconv_resets")
                        m.notes["last_deconv_reset"] = f"frame index jumped by {missing + 1} at frame {fi}"
                        self.deconv.reset()
                    else:
                        self.deconv.push_gap(int(missing))
                if self._recent is not None:
                    self._recent = np.roll(self._recent, -min(missing, len(self._recent)), axis=0)
                    self._recent[-min(missing, len(self._recent)):] = 0.0
        self._last_frame_index = fi
        self._frames_in_session += 1
        m.count("frames_received")
        frame = dataclasses.replace(frame, stamps=frame.stamps + (("rx", rx), ("decode", dec)))
        if self.recorder is not None:
            self.recorder.submit_frame(frame)
        if self.deconv is None or env.kind == protocol.KIND_ACTIVITY:
            act = ActivityFrame(frame.seq, fi, frame.acq_ns, stamps=frame.stamps, values=frame.values,
                                behaviour=frame.behaviour).with_stamp("deconv")
        else:
            if not frame.values.flags.writeable:
                # values are a zero-copy view of the ZeroMQ frame; the numba kernels want a
                # writable array (one memcpy of N float32)
                frame = dataclasses.replace(frame, values=frame.values.copy())
            try:
                out = self.deconv(frame)
            except StageError as exc:
                m.count("stage_errors")
                m.notes["last_stage_error"] = str(exc)[:200]
                return
            t = now_ns()
            if out is None:
                m.count("frames_no_output")
                return
            act = ActivityFrame(frame.seq, out.frame_index, frame.acq_ns, stamps=frame.stamps + (("deconv", t),),
                                values=out.values, behaviour=frame.behaviour)
        m.count("frames_processed")
        if self.stage is not None and self.deconv is not None and not getattr(self.deconv, "ready", True):
            # the deconvolution's initial batch: its output is all zeros, nothing to decode
            # (reconstructing from it would only drag the warm-started video off course)
            m.count("frames_before_deconv_ready")
            return
        recent = None
        if self.stage is not None:
            if self.deconv is not None and hasattr(self.deconv, "recent"):
                recent = np.asarray(self.deconv.recent(self.config.pipeline.recent_window_frames), np.float32)  # a fresh copy already
            elif self._recent is not None:
                self._recent = np.roll(self._recent, -1, axis=0)
                self._recent[-1] = act.values
                recent = self._recent.copy()
        self.slot.submit(act, recent)

    def _emit(self, frame: ActivityFrame | DecodedFrame) -> None:
        assert self.output is not None
        out = self.output.send(frame)
        self.metrics.record_frame(out.stamps, out.acq_ns)
        self.metrics.count("frames_published")
        if isinstance(out, DecodedFrame) and self.recorder is not None:
            self.recorder.submit_decoded(out)


def serve(config: ServiceConfig, stage: ReconstructionStage | None = None) -> int:
    """Run the service in this process until stopped; returns the exit code."""
    return DecoderService(config, stage).run()


__all__ = [
    "DecoderService",
    "OutputPublisher",
    "ReconstructionSlot",
    "ReconstructionStage",
    "Receiver",
    "State",
    "apply_curve_client",
    "apply_curve_server",
    "serve",
]
