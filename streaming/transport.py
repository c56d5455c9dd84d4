"""ZeroMQ transport for wire protocol v1: a publisher, a subscriber, and an in-memory fake.

``StreamPublisher`` owns a publishing socket (XPUB, which sends exactly like PUB but also
sees subscriptions, so a source can wait for its first subscriber) and the sequence
counter of its session: seq 0 is the first ``session_start``, and every message it sends
takes the next number. It re-sends ``session_start`` periodically for late joiners and
sends heartbeats when idle.

``StreamSubscriber`` owns a SUB socket. ``recv`` returns validated ``Envelope`` objects
only: malformed input is counted by reason and dropped, never raised. It counts lost
messages from seq gaps per session, notices a new session id (source restart) and keeps
the latest ``SessionInfo``.

Both accept either an address (they create and own the socket) or a socket-like object;
``InMemoryLink`` provides such objects for tests, with message dropping and injection, and
needs no zmq at all.

This module owns every ZeroMQ socket of the project: ``open_socket`` is the one place that
creates, configures (high-water marks, size limits, CURVE), binds or connects a socket and
applies the address policy (``is_loopback_address``, ``check_address``). zmq is imported
inside functions only; the module imports no pipeline stage.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from rt_decoder.errors import ConfigError, MessageTooLargeError, ProtocolError
from rt_decoder.messages import ActivityFrame, DecodedFrame, FluorescenceFrame, SessionInfo, Stamps
from streaming import protocol as P

#: Subscriber-side rejection reasons beyond the protocol's own ``P.REASONS``.
SUBSCRIBER_REASONS = ("nonfinite", "n_rois_mismatch")

DEFAULT_SNDHWM = 2_000  # messages; PUB drops (never blocks) beyond this per subscriber
DEFAULT_RCVHWM = 10_000  # messages; about 5.5 min of 30 Hz frame + stimulus messages
DEFAULT_LINGER_MS = 1_000  # on close: time given to queued messages (e.g. session_end)


class SocketLike(Protocol):
    """The part of a zmq socket the transport uses (``InMemoryLink`` implements it too)."""

    def send_multipart(self, msg_parts: Sequence[Any], flags: int = ..., copy: bool = ...) -> Any: ...

    def recv_multipart(self, flags: int = ..., copy: bool = ...) -> list[Any]: ...

    def poll(self, timeout: int | None = ..., flags: int = ...) -> int: ...

    def close(self, linger: int | None = ...) -> None: ...


# ---------------------------------------------------------------------------- addresses


_LOOPBACK_NAMES = frozenset({"localhost", "lo"})

#: ``zmq.POLLIN`` / ``zmq.NOBLOCK`` (stable values of the ZeroMQ API), so that code that only
#: polls and receives needs no zmq import (the in-memory fake works without zmq).
POLLIN = 1
NOBLOCK = 1


class WouldBlock(Exception):
    """Nothing to receive now (a non-blocking receive on the in-memory fake)."""


def is_loopback_address(address: str) -> bool:
    """True when ``address`` reaches nothing beyond this machine.

    ``ipc://`` and ``inproc://`` are local; ``tcp://`` is local when its host is a loopback
    IP (``127.0.0.0/8``, ``::1``, bracketed or not), ``localhost`` or the loopback interface
    ``lo``. ``*`` and ``0.0.0.0`` (every interface) and other hosts are not. In ZeroMQ's
    ``source;destination`` form the destination is judged.
    """
    if address.startswith(("ipc://", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    rest = address[len("tcp://"):]
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    host = host.split(";")[-1]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(address: str, *, allow_non_loopback: bool, what: str = "address") -> None:
    """The address policy: a ZeroMQ endpoint, and loopback unless ``allow_non_loopback``.

    Raises
    ------
    ConfigError
        Naming ``what`` and the address.
    """
    if not isinstance(address, str) or not address.startswith(("tcp://", "ipc://", "inproc://")):
        raise ConfigError(f"{what}: address {address!r} must start with tcp://, ipc:// or inproc://")
    if not allow_non_loopback and not is_loopback_address(address):
        raise ConfigError(
            f"{what}: address {address!r} is not loopback; it would be reachable from the network. "
            "Use 127.0.0.1, or ask for it explicitly (allow_non_loopback = true in the config section, "
            "--allow-non-loopback on the command line) and consider CURVE keys")


def check_bind_address(address: str, *, allow_remote: bool) -> None:
    """``check_address`` for an address to bind (kept for callers of the first release)."""
    check_address(address, allow_non_loopback=allow_remote, what="bind")


@dataclass(frozen=True)
class Curve:
    """CURVE security for one socket (key files in ``zmq.auth`` format).

    A server (``server=True``) needs its own ``secret_key_file`` and may restrict clients
    to the public keys in ``authorized_keys_dir``; a client needs its ``secret_key_file``
    and the server's ``server_public_key_file``.
    """

    secret_key_file: str
    server: bool = True
    authorized_keys_dir: str = ""
    server_public_key_file: str = ""


def _apply_curve(sock: Any, curve: Curve, context: Any, authenticator: Any = None) -> Any:
    """Configure CURVE on ``sock``; returns the authenticator serving it (started here unless
    ``authenticator`` is given), or None."""
    import zmq.auth

    public, secret = zmq.auth.load_certificate(curve.secret_key_file)
    if secret is None:
        raise ConfigError(f"CURVE key file {curve.secret_key_file!r} holds no secret key")
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    if not curve.server:
        server_public, _ = zmq.auth.load_certificate(curve.server_public_key_file)
        sock.curve_serverkey = server_public
        return None
    sock.curve_server = True
    if not curve.authorized_keys_dir:
        return None
    if authenticator is not None:
        return authenticator
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=curve.authorized_keys_dir)
    return auth


_KINDS = {"pub": "PUB", "xpub": "XPUB", "sub": "SUB", "push": "PUSH", "pull": "PULL"}


class ZmqSocket:
    """A ZeroMQ socket made by ``open_socket``: the socket (``.sock``), its bound or connected
    ``endpoint``, and what must stop with it (a CURVE authenticator). Forwards the calls the
    transport uses; ``close`` closes both."""

    def __init__(self, sock: Any, endpoint: str, authenticator: Any = None, *, monitor: bool = False) -> None:
        import zmq

        self.sock = sock
        self.endpoint = endpoint
        #: the CURVE authenticator serving this socket, stopped by ``close`` (None: none, or not ours)
        self.authenticator = authenticator
        self._again = zmq.Again
        self._monitor = sock.get_monitor_socket() if monitor else None

    def events(self) -> list[str]:
        """Connection events since the last call (``zmq.Event`` names such as ``CONNECTED``,
        ``DISCONNECTED``, ``CONNECT_RETRIED``, ``HANDSHAKE_FAILED_AUTH``); empty without a monitor."""
        if self._monitor is None:
            return []
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        out = []
        while self._monitor.poll(0):
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                out.append(zmq.Event(event["event"]).name or str(event["event"]))
            except ValueError:
                out.append(str(event["event"]))
        return out

    def send_multipart(self, parts: Sequence[Any], flags: int = 0, copy: bool = True) -> Any:
        try:
            return self.sock.send_multipart(parts, flags, copy=copy)
        except self._again:
            raise WouldBlock() from None

    def recv_multipart(self, flags: int = 0, copy: bool = True) -> list[Any]:
        try:
            return self.sock.recv_multipart(flags, copy=copy)
        except self._again:
            raise WouldBlock() from None

    def recv(self, flags: int = 0) -> Any:
        try:
            return self.sock.recv(flags)
        except self._again:
            raise WouldBlock() from None

    def poll(self, timeout: int | None = None, flags: int = POLLIN) -> int:
        return int(self.sock.poll(timeout, flags))

    def close(self, linger: int | None = None) -> None:
        if self._monitor is not None:
            try:
                self.sock.disable_monitor()
            except Exception:  # noqa: BLE001 -- closing anyway
                pass
            self._monitor.close(linger=0)
            self._monitor = None
        self.sock.close(linger=linger)
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None


def open_socket(kind: str, address: str, *, bind: bool, allow_non_loopback: bool = False,
                options: Mapping[str, Any] | None = None, curve: Curve | None = None, context: Any = None,
                what: str = "", monitor: bool = False, authenticator: Any = None) -> ZmqSocket:
    """Create, configure and bind or connect one ZeroMQ socket: the one place that does it.

    Parameters
    ----------
    kind : {"pub", "xpub", "sub", "push", "pull"}
    address : str
        ``tcp://host:port`` (``tcp://127.0.0.1:*`` binds a free port: read ``.endpoint``),
        ``ipc://path`` or ``inproc://name``.
    bind : bool
        Bind (the peer connects) or connect.
    allow_non_loopback : bool
        The address policy: refuse a non-loopback address unless this is true.
    options : mapping of zmq option name -> value, optional
        E.g. ``{"SNDHWM": 1000, "LINGER": 0, "SUBSCRIBE": b""}`` (names of ``zmq`` constants).
    curve : Curve, optional
    context : zmq.Context, optional
        Default: the process-wide ``zmq.Context.instance()``.
    what : str
        Named in errors (e.g. ``"[input]"``).
    monitor : bool
        Watch the socket's connection events (``ZmqSocket.events``).
    authenticator : zmq.auth.thread.ThreadAuthenticator, optional
        A running CURVE authenticator to reuse (a rebuilt socket keeps its predecessor's:
        only one can serve a context's ZAP endpoint).

    Raises
    ------
    ConfigError
        Bad or refused address, bad key file, or the bind/connect failed (port in use...).
    """
    import zmq

    check_address(address, allow_non_loopback=allow_non_loopback, what=what or kind)
    if kind not in _KINDS:
        raise ConfigError(f"unknown socket kind {kind!r}; known: {sorted(_KINDS)}")
    ctx = context or zmq.Context.instance()
    zs = ZmqSocket(ctx.socket(getattr(zmq, _KINDS[kind])), address, monitor=monitor)  # the monitor sees the bind too
    sock = zs.sock
    try:
        for name, value in (options or {}).items():
            sock.setsockopt(getattr(zmq, name), value)
        if curve is not None:
            zs.authenticator = _apply_curve(sock, curve, ctx, authenticator)
        if bind:
            sock.bind(address)
            zs.endpoint = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        else:
            sock.connect(address)
    except (zmq.ZMQError, OSError, ValueError) as exc:  # OSError/ValueError: an unreadable key file
        if zs.authenticator is authenticator:
            zs.authenticator = None  # the caller's: it keeps running
        zs.close(linger=0)
        why = (f"cannot {'bind' if bind else 'connect'} {address!r}: {exc}" if isinstance(exc, zmq.ZMQError)
               else f"CURVE key file: {exc}")
        raise ConfigError(f"{what + ': ' if what else ''}{why}") from None
    return zs


def set_realtime_priority(priority: int = 10) -> str | None:
    """Ask the OS to run the calling thread (and threads it creates later, e.g. a new
    ZeroMQ context's I/O thread) with real-time FIFO priority ``priority`` (1..99).

    Returns None on success, else why it was refused (unprivileged users, other OSes).
    A FIFO thread that spins can starve others: use it for threads that mostly sleep.
    """
    import os

    if not hasattr(os, "sched_setscheduler"):
        return "SCHED_FIFO is not available on this OS"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(priority)))
    except (PermissionError, OSError) as exc:
        return f"SCHED_FIFO refused: {exc}"
    return None


def _check_positive(name: str, value: float, hi: float = 3600.0) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= hi):
        raise ConfigError(f"{name} must be in (0, {hi}], got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------- publisher


class StreamPublisher:
    """Publishes sessions in wire protocol v1 and numbers their messages.

    Parameters
    ----------
    socket_or_address : str or SocketLike
        An address such as ``"tcp://127.0.0.1:5555"`` (``"tcp://127.0.0.1:*"`` picks a
        free port; see ``address``), or an existing socket, which the caller keeps owning.
    info : SessionInfo or None
        The session announced by ``start`` and re-sent every ``resend_info_every_s``.
        None: no session yet (``begin`` starts one); until then messages carry
        ``idle_session_id`` and no ``session_start`` is sent.
    bind : bool
        Bind (the usual case for a source) or connect.
    resend_info_every_s, heartbeat_every_s : float
        Period of the ``session_start`` re-send, and the idle time after which
        ``heartbeat_if_idle`` sends a heartbeat (seconds, on ``clock_ns``).
    allow_non_loopback : bool
        Allow a non-loopback address (``allow_remote`` is its old name).
    sndhwm, linger_ms : int
        ZeroMQ send high-water mark (messages) and linger on close (ms).
    nonblocking : bool
        Never wait on a slow subscriber: a message a subscriber's queue (``sndhwm``) cannot
        take is dropped and counted in ``dropped`` (its sequence number is used, so the
        subscriber sees the gap). Default False: a PUB socket drops silently instead.
    clock_ns : callable
        The source clock (ns) used for ``t_ns`` of non-frame messages and for the timers.
    info_ext : mapping, optional
        ``"x-"`` extension fields added to every ``session_start`` header.
    max_bytes : int
        Size limit per message; larger messages are refused before sending.
    idle_session_id : str
        The session id of messages sent while there is no session.
    curve : Curve, optional
        CURVE security (usually ``Curve(client_secret, server=False, server_public_key_file=...)``).
    context : zmq.Context, optional

    The publisher is thread-safe (one lock around numbering and sending).
    """

    def __init__(
        self,
        socket_or_address: str | SocketLike,
        info: SessionInfo | None,
        *,
        bind: bool = True,
        resend_info_every_s: float = 1.0,
        heartbeat_every_s: float = 1.0,
        allow_non_loopback: bool = False,
        allow_remote: bool | None = None,
        sndhwm: int = DEFAULT_SNDHWM,
        linger_ms: int = DEFAULT_LINGER_MS,
        nonblocking: bool = False,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        info_ext: Mapping[str, Any] | None = None,
        max_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES,
        idle_session_id: str = "rt-decoder",
        curve: Curve | None = None,
        context: Any = None,
        what: str = "",
    ) -> None:
        self.info = info
        self.idle_session_id = idle_session_id
        self.resend_info_every_ns = int(_check_positive("resend_info_every_s", resend_info_every_s) * 1e9)
        self.heartbeat_every_ns = int(_check_positive("heartbeat_every_s", heartbeat_every_s) * 1e9)
        self.max_bytes = int(max_bytes)
        self._clock = clock_ns
        self._info_ext = dict(info_ext or {})
        self._linger_ms = int(linger_ms)
        self._flags = NOBLOCK if nonblocking else 0
        self._lock = threading.RLock()
        if isinstance(socket_or_address, str):
            opts: dict[str, Any] = {"SNDHWM": int(sndhwm), "LINGER": int(linger_ms), "XPUB_VERBOSE": 1}
            if nonblocking:
                opts["XPUB_NODROP"] = 1  # a full subscriber queue makes a non-blocking send fail: counted
            sock = open_socket("xpub", socket_or_address, bind=bind, options=opts, context=context, curve=curve,
                               allow_non_loopback=allow_non_loopback or bool(allow_remote), what=what)
            self._socket: SocketLike = sock
            self.address = sock.endpoint
            self._owns_socket = True
        else:
            self._socket, self.address, self._owns_socket = socket_or_address, "", False
        self._seq = 0
        self._started = False
        self._ended = False
        self._closed = False
        self._last_send_ns = 0
        self._last_info_ns = 0
        self.messages_sent = 0
        self.bytes_sent = 0
        self.dropped = 0
        self.subscriptions_seen = 0

    # -- state
    @property
    def seq(self) -> int:
        """The sequence number the next message will carry."""
        return self._seq

    @property
    def session_id(self) -> str:
        return self.info.session_id if self.info is not None else self.idle_session_id

    # -- sending
    def _send(self, parts: list[Any]) -> int:
        """Send (caller holds the lock); returns the message's seq (also when dropped)."""
        if self._closed:
            raise ProtocolError("publisher is closed")
        nbytes = sum(memoryview(p).nbytes for p in parts)
        if nbytes > self.max_bytes:
            raise MessageTooLargeError(f"message of {nbytes} bytes exceeds the limit of {self.max_bytes}")
        seq = self._seq
        self._seq += 1
        self._last_send_ns = self._clock()
        try:
            self._socket.send_multipart(parts, self._flags, copy=True)
        except WouldBlock:
            self.dropped += 1
            return seq
        self.messages_sent += 1
        self.bytes_sent += nbytes
        return seq

    def _send_info(self) -> int:
        assert self.info is not None
        now = self._clock()
        seq = self._send(P.encode_session_start(self.info, seq=self._seq, t_ns=now, ext=self._info_ext))
        self._last_info_ns = now
        return seq

    def start(self) -> int:
        """Send the first ``session_start`` (seq 0). Returns its seq. Idempotent; nothing
        is sent without a session."""
        with self._lock:
            if not self._started and self.info is not None:
                self._started = True
                return self._send_info()
            return 0

    def begin(self, info: SessionInfo) -> int:
        """Start a new session ``info``: numbering restarts at 0 with its ``session_start``."""
        with self._lock:
            self.info = info
            self._seq = 0
            self._started = False
            self._ended = False
            return self.start()

    def _ensure_started(self) -> None:
        if not self._started:
            self.start()

    def resend_info_if_due(self) -> bool:
        """Re-send ``session_start`` if ``resend_info_every_s`` has passed since the last one."""
        with self._lock:
            self._ensure_started()
            if (self.info is not None and not self._ended
                    and self._clock() - self._last_info_ns >= self.resend_info_every_ns):
                self._send_info()
                return True
            return False

    def send_frame(self, values: np.ndarray, frame_index: int, acq_ns: int, behaviour: np.ndarray | None = None,
                   *, stamps: Stamps = (), ext: Mapping[str, Any] | None = None) -> int:
        """Send one fluorescence frame; returns its seq.

        Parameters
        ----------
        values : ndarray, shape (N,)
            One value per ROI in session order (sent as float32).
        frame_index : int
            Acquisition frame number (>= 0).
        acq_ns : int
            Acquisition time on the source clock (ns).
        behaviour : ndarray, shape (4,), optional
            In ``BEHAVIOUR_FIELDS`` order.
        ext : mapping, optional
            ``"x-"`` header extensions (e.g. ``{"x-trial": 3}``).

        The frame goes out first; a due ``session_start`` re-send follows it.
        """
        with self._lock:
            self._ensure_started()
            frame = FluorescenceFrame(self._seq, int(frame_index), int(acq_ns), stamps=stamps,
                                      values=np.asarray(values, dtype=np.float32), behaviour=behaviour)
            seq = self._send(P.encode_frame(frame, self.session_id, ext=ext))
            self.resend_info_if_due()
            return seq

    def send_activity(self, values: np.ndarray, frame_index: int, acq_ns: int,
                      behaviour: np.ndarray | None = None, *, stamps: Stamps = (),
                      ext: Mapping[str, Any] | None = None) -> int:
        """Send one activity (deconvolved) frame, like ``send_frame``; returns its seq."""
        with self._lock:
            self._ensure_started()
            frame = ActivityFrame(self._seq, int(frame_index), int(acq_ns), stamps=stamps,
                                  values=np.asarray(values, dtype=np.float32), behaviour=behaviour)
            seq = self._send(P.encode_activity(frame, self.session_id, ext=ext))
            self.resend_info_if_due()
            return seq

    def send_decoded(self, image: np.ndarray, frame_index: int, acq_ns: int, stamps: Stamps = (),
                     *, ext: Mapping[str, Any] | None = None) -> int:
        """Send one decoded image (H, W) float32 with its stage stamps; returns its seq."""
        with self._lock:
            self._ensure_started()
            frame = DecodedFrame(self._seq, int(frame_index), int(acq_ns), stamps=stamps,
                                 image=np.asarray(image, dtype=np.float32))
            return self._send(P.encode_decoded(frame, self.session_id, ext=ext))

    def send(self, frame: ActivityFrame | DecodedFrame) -> ActivityFrame | DecodedFrame:
        """Send an activity or decoded frame as it is, numbered by this stream and stamped
        ``tx`` just before sending; returns the frame as sent."""
        with self._lock:
            self._ensure_started()
            out = dataclasses.replace(frame, seq=self._seq, stamps=frame.stamps + (("tx", time.monotonic_ns()),))
            if isinstance(out, DecodedFrame):
                parts = P.encode_decoded(out, self.session_id)
            else:
                parts = P.encode_activity(out, self.session_id)
            self._send(parts)
            return out

    def skip(self, n: int = 1) -> None:
        """Use up ``n`` sequence numbers without sending (a simulated loss: subscribers see
        the gap as they would a lost message)."""
        with self._lock:
            self._ensure_started()
            self._seq += int(n)

    def send_stimulus(self, image: np.ndarray, frame_index: int, t_ns: int) -> int:
        """Send the ground-truth stimulus frame (H, W) shown at ``frame_index``; returns its seq."""
        with self._lock:
            self._ensure_started()
            return self._send(P.encode_stimulus(self.session_id, seq=self._seq, t_ns=int(t_ns),
                                                frame_index=int(frame_index), image=image))

    def send_status(self, state: str, metrics: Mapping[str, Any], *, session_id: str | None = None) -> int:
        """Send a status message (lifecycle state + metrics); returns its seq."""
        with self._lock:
            self._ensure_started()
            return self._send(P.encode_status(session_id or self.session_id, seq=self._seq, t_ns=self._clock(),
                                              state=state, metrics=metrics))

    def heartbeat_if_idle(self) -> bool:
        """Call often while idle: re-sends due session info, and sends a heartbeat when
        nothing was sent for ``heartbeat_every_s``. Returns whether anything was sent."""
        with self._lock:
            self._ensure_started()
            self.poll_subscriptions()
            sent = self.resend_info_if_due()
            if self._clock() - self._last_send_ns >= self.heartbeat_every_ns:
                self._send(P.encode_heartbeat(self.session_id, seq=self._seq, t_ns=self._clock()))
                sent = True
            return sent

    def end(self, n_frames: int) -> int:
        """Send ``session_end`` after ``n_frames`` frames; returns its seq. Once per session
        (a repeat, or a call without a session, sends nothing and returns -1)."""
        with self._lock:
            self._ensure_started()
            if self._ended or self.info is None:
                return -1
            self._ended = True
            return self._send(P.encode_session_end(self.session_id, seq=self._seq, t_ns=self._clock(),
                                                   n_frames=int(n_frames)))

    # -- subscribers (XPUB)
    def poll_subscriptions(self) -> int:
        """Read pending subscription notices (XPUB); returns the total seen so far."""
        if not self._owns_socket:
            return self.subscriptions_seen
        sock = self._socket
        assert isinstance(sock, ZmqSocket)  # a socket this publisher made (XPUB)
        with self._lock:
            while sock.poll(0, POLLIN):
                try:
                    msg = sock.recv(NOBLOCK)
                except WouldBlock:
                    break
                if msg[:1] == b"\x01":
                    self.subscriptions_seen += 1
            return self.subscriptions_seen

    def wait_for_subscribers(self, n: int = 1, timeout_s: float = 10.0) -> bool:
        """Block until ``n`` subscriptions were seen (ZeroMQ drops what a PUB sends before
        a subscriber's subscription arrives). Always true for a non-zmq socket."""
        if not self._owns_socket:
            return True
        deadline = time.monotonic() + timeout_s
        while self.poll_subscriptions() < n:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return False
            self._socket.poll(min(left_ms, 100), POLLIN)
        return True

    def close(self) -> None:
        """Close the socket if this publisher created it (queued messages get ``linger_ms``)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._owns_socket:
                    self._socket.close(linger=self._linger_ms)

    def __enter__(self) -> StreamPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- subscriber

_CONTROL_KINDS = frozenset({P.KIND_SESSION_START, P.KIND_SESSION_END})


def peer_of(part: Any) -> str:
    """Who sent a received ZeroMQ frame: ``"key:<z85>"`` (CURVE, accepted by the
    authenticator), ``"addr:<ip>"`` (TCP peer), or ``""`` (unknown)."""
    get = getattr(part, "get", None)
    if get is None:
        return ""
    for prop, tag in (("User-Id", "key"), ("Peer-Address", "addr")):
        try:
            value = get(prop)
        except Exception:  # noqa: BLE001 -- zmq raises EINVAL when the property is absent
            continue
        if value:
            return f"{tag}:{value}"
    return ""



@dataclass(frozen=True)
class GapEvent:
    """``n_missing`` messages of session ``session_id`` never arrived (seq jumped)."""

    session_id: str
    expected_seq: int
    got_seq: int
    n_missing: int


@dataclass(frozen=True)
class SessionChange:
    """Messages of a new session id arrived (first session, or the source restarted).

    ``previous_ended`` is True when the previous session sent ``session_end``.
    """

    previous_session_id: str | None
    session_id: str
    previous_ended: bool


StreamEvent = GapEvent | SessionChange


@dataclass
class SubscriberCounters:
    """Running totals of a ``StreamSubscriber`` (mutable; read ``as_dict()`` for a snapshot)."""

    received: int = 0  # valid messages returned by recv
    bytes_received: int = 0  # all messages, valid or not
    by_kind: dict[str, int] = field(default_factory=dict)
    malformed: int = 0
    malformed_by_reason: dict[str, int] = field(default_factory=dict)
    missing: int = 0  # messages lost, from seq gaps
    gap_events: int = 0
    out_of_order: int = 0  # seq not above the last one of its session (duplicates, reordering)
    sessions: int = 0  # distinct sessions seen
    session_changes: int = 0  # switches from one session id to another after the first
    frames_before_info: int = 0  # frames of a session whose session_start was not yet seen
    disconnects: int = 0  # connections that dropped (peer gone, or ZeroMQ cut an oversized message)
    handshake_failures: int = 0  # peers refused during the ZMTP/CURVE handshake (e.g. a wrong key)
    socket_rebuilds: int = 0  # times a connecting socket that would not reconnect was rebuilt

    def as_dict(self) -> dict[str, Any]:
        return {
            "disconnects": self.disconnects, "handshake_failures": self.handshake_failures,
            "socket_rebuilds": self.socket_rebuilds,
            "received": self.received, "bytes_received": self.bytes_received, "by_kind": dict(self.by_kind),
            "malformed": self.malformed, "malformed_by_reason": dict(self.malformed_by_reason),
            "missing": self.missing, "gap_events": self.gap_events, "out_of_order": self.out_of_order,
            "sessions": self.sessions, "session_changes": self.session_changes,
            "frames_before_info": self.frames_before_info,
        }


class StreamSubscriber:
    """Receives wire protocol v1 messages; validates, counts, and tracks sessions.

    Parameters
    ----------
    socket_or_address : str or SocketLike
        Address to connect (or bind), or an existing socket (the caller keeps owning it;
        it must already be subscribed).
    bind : bool
        Bind instead of connect.
    max_bytes : int
        Size limit per message; larger ones are counted as ``too_large``. ZeroMQ's own
        ``MAXMSGSIZE`` is set to 4x this (memory-bomb guard: such a peer is disconnected).
    reject_nonfinite : bool
        Count frames whose values contain NaN/Inf as malformed (``"nonfinite"``).
    check_n_rois : bool
        Count frames whose length differs from the session's ``n_rois`` as malformed.
    rcvhwm, linger_ms : int
        ZeroMQ receive high-water mark (messages) and linger (ms).
    zmq_max_bytes : int, optional
        ZeroMQ's ``MAXMSGSIZE`` (default 4 x ``max_bytes``).
    curve : Curve, optional
        CURVE security (the subscriber is usually the server).
    on_reject : callable(reason, message), optional
        Called for every rejected message (after counting it).
    supervise : bool
        Watch the connection (a socket it created): count disconnects and failed
        handshakes, and rebuild a connecting socket that ZeroMQ will not reconnect (after
        it cut an oversized message or a handshake failed, libzmq stops retrying).

    Attributes
    ----------
    counters : SubscriberCounters
    session_info : SessionInfo or None
        The latest ``session_start`` of the current session.
    last_missing : int
        Messages lost right before the last message ``recv`` returned (0 if none).
    last_new_session : bool
        True when the last returned message started a new session.
    last_recv_ns : int
        ``time.monotonic_ns()`` when the last returned message was taken off the socket.
    last_peer : str
        Who sent the last returned ``session_start`` or ``session_end``: ``"key:<z85>"``
        (the CURVE public key the authenticator accepted), else ``"addr:<ip>"`` (TCP),
        else ``""`` (unknown: ipc, in-memory).
    """

    def __init__(
        self,
        socket_or_address: str | SocketLike,
        *,
        bind: bool = False,
        max_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES,
        allow_non_loopback: bool = False,
        allow_remote: bool | None = None,
        reject_nonfinite: bool = True,
        check_n_rois: bool = True,
        rcvhwm: int = DEFAULT_RCVHWM,
        linger_ms: int = 0,
        max_events: int = 1_000,
        zmq_max_bytes: int | None = None,
        curve: Curve | None = None,
        on_reject: Callable[[str, str], None] | None = None,
        supervise: bool = True,
        context: Any = None,
        what: str = "",
    ) -> None:
        self.max_bytes = int(max_bytes)
        self.reject_nonfinite = reject_nonfinite
        self.check_n_rois = check_n_rois
        self.on_reject = on_reject
        self._open: Callable[..., ZmqSocket] | None = None
        self._bind = bind
        if isinstance(socket_or_address, str):
            limit = 4 * self.max_bytes if zmq_max_bytes is None else int(zmq_max_bytes)
            opts = {"RCVHWM": int(rcvhwm), "LINGER": int(linger_ms), "MAXMSGSIZE": limit, "SUBSCRIBE": b""}
            address = socket_or_address

            def _open(auth: Any = None) -> ZmqSocket:
                return open_socket("sub", address, bind=bind, options=opts, curve=curve, context=context,
                                   allow_non_loopback=allow_non_loopback or bool(allow_remote), what=what,
                                   monitor=supervise, authenticator=auth)

            self._open = _open
            sock = _open()
            self._socket: SocketLike = sock
            self.address = sock.endpoint
            self._owns_socket = True
        else:
            self._socket, self.address, self._owns_socket = socket_or_address, "", False
        self._supervised = supervise and self._open is not None
        self._next_check = 0.0
        self._dropped_at: float | None = None
        self._last_rebuild = 0.0
        self._pending: collections.deque[Any] = collections.deque()
        self.link_events: collections.deque[str] = collections.deque(maxlen=64)
        self.last_peer = ""
        self.counters = SubscriberCounters()
        self.session_info: SessionInfo | None = None
        self.session_id: str | None = None
        self.session_ended = False
        self._infos: collections.OrderedDict[str, SessionInfo] = collections.OrderedDict()
        self._last_seq: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._events: collections.deque[StreamEvent] = collections.deque(maxlen=max_events)
        self.last_missing = 0
        self.last_new_session = False
        self.last_recv_ns = 0
        self._closed = False

    # -- bookkeeping
    def _reject(self, reason: str, message: str = "") -> None:
        self.counters.malformed += 1
        self.counters.malformed_by_reason[reason] = self.counters.malformed_by_reason.get(reason, 0) + 1
        if self.on_reject is not None:
            self.on_reject(reason, message or reason)

    @staticmethod
    def _remember(d: collections.OrderedDict[str, Any], key: str, value: Any, keep: int = 16) -> None:
        d[key] = value
        d.move_to_end(key)
        while len(d) > keep:
            d.popitem(last=False)

    def _track(self, env: P.Envelope) -> None:
        """Sequence and session bookkeeping for one valid message."""
        sid, seq = env.session_id, env.seq
        self.last_missing = 0
        self.last_new_session = False
        restarted_same_id = (sid == self.session_id and env.kind == P.KIND_SESSION_START and seq == 0
                             and self._last_seq.get(sid, -1) >= 0)
        if sid != self.session_id or restarted_same_id:
            if sid not in self._last_seq or restarted_same_id:
                self.counters.sessions += 1
            if self.session_id is not None:
                self.counters.session_changes += 1
            self._events.append(SessionChange(self.session_id, sid, self.session_ended))
            self.session_id = sid
            self.session_ended = False
            self.session_info = None if restarted_same_id else self._infos.get(sid)
            self.last_new_session = True
            if restarted_same_id:
                self._last_seq.pop(sid, None)
                self._infos.pop(sid, None)
        last = self._last_seq.get(sid)
        if last is not None:
            if seq > last + 1:
                n = seq - last - 1
                self.counters.missing += n
                self.counters.gap_events += 1
                self.last_missing = n
                self._events.append(GapEvent(sid, last + 1, seq, n))
            elif seq <= last:
                self.counters.out_of_order += 1
        if last is None or seq > last:
            self._remember(self._last_seq, sid, seq)
        if env.kind == P.KIND_SESSION_START:
            assert isinstance(env.body, SessionInfo)
            self._remember(self._infos, sid, env.body)
            self.session_info = env.body
        elif env.kind == P.KIND_SESSION_END:
            self.session_ended = True

    def _check_values(self, env: P.Envelope) -> str | None:
        body = env.body
        if not isinstance(body, (FluorescenceFrame, ActivityFrame)):
            return None
        info = self._infos.get(env.session_id)
        if info is None:
            self.counters.frames_before_info += 1
        elif self.check_n_rois and body.values.shape[0] != info.n_rois:
            return "n_rois_mismatch"
        if self.reject_nonfinite and not np.isfinite(body.values).all():
            return "nonfinite"
        return None

    # -- receiving
    def recv(self, timeout_ms: int | None = None) -> P.Envelope | None:
        """Return the next valid message, or None when ``timeout_ms`` passes without one.

        ``timeout_ms=None`` waits forever; 0 only takes what is already queued. Malformed
        messages are counted (``counters.malformed_by_reason``) and skipped; never raises
        on bad input.
        """
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0
        while True:
            if self._supervised:
                self._supervise()
            if self._pending:
                parts = self._pending.popleft()
            else:
                if deadline is None:
                    wait: int | None = 200 if self._supervised else None
                else:
                    wait = max(0, int(math.ceil((deadline - time.monotonic()) * 1000)))
                    if self._supervised:
                        wait = min(wait, 200)
                if not self._socket.poll(wait, POLLIN):
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    continue
                try:
                    parts = self._socket.recv_multipart(NOBLOCK, copy=False)
                except WouldBlock:
                    continue
            recv_ns = time.monotonic_ns()
            try:
                self.counters.bytes_received += sum(memoryview(p).nbytes for p in parts)
            except TypeError:
                pass
            try:
                env = P.decode(parts, max_bytes=self.max_bytes)
            except ProtocolError as exc:
                self._reject(P.error_reason(exc), str(exc))
                continue
            self._track(env)
            bad = self._check_values(env)
            if bad is not None:
                self._reject(bad)
                continue
            self.counters.received += 1
            self.counters.by_kind[env.kind] = self.counters.by_kind.get(env.kind, 0) + 1
            self.last_recv_ns = recv_ns
            self.last_peer = peer_of(parts[0]) if env.kind in _CONTROL_KINDS else ""
            return env

    def _supervise(self) -> None:
        """Read the socket's connection events (at most every 50 ms); rebuild a connecting
        socket whose connection dropped without ZeroMQ scheduling a reconnect."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + 0.05
        sock = self._socket
        assert isinstance(sock, ZmqSocket)
        for name in sock.events():
            self.link_events.append(name)
            if name == "DISCONNECTED":
                self.counters.disconnects += 1
                self._dropped_at = now
            elif name.startswith("HANDSHAKE_FAILED"):
                self.counters.handshake_failures += 1
                self._dropped_at = now
            elif name in ("CONNECT_RETRIED", "CONNECTED", "HANDSHAKE_SUCCEEDED", "CONNECT_DELAYED"):
                self._dropped_at = None  # ZeroMQ is reconnecting by itself
        if (self._bind or self._dropped_at is None or now - self._dropped_at < 0.3
                or now - self._last_rebuild < 1.0):
            return
        # libzmq gave up on this connection (a protocol error: oversized message, failed
        # handshake): keep what is already queued, then replace the socket
        while True:
            try:
                self._pending.append(sock.recv_multipart(NOBLOCK, copy=False))
            except WouldBlock:
                break
        assert self._open is not None
        self._last_rebuild = now
        try:  # one authenticator per context's ZAP endpoint: the new socket takes the old one's
            new = self._open(sock.authenticator)
        except ConfigError as exc:  # e.g. the old endpoint not yet released: the next check retries
            self.link_events.append(f"REBUILD_FAILED: {exc}"[:200])
            return
        sock.authenticator = None
        sock.close(linger=0)
        self._socket = new
        self.counters.socket_rebuilds += 1
        self._dropped_at = None
        self.link_events.append("REBUILT")

    def drain_events(self) -> list[StreamEvent]:
        """Gap and session-change events since the last call (oldest first)."""
        out = list(self._events)
        self._events.clear()
        return out

    def close(self) -> None:
        """Close the socket if this subscriber created it."""
        if not self._closed:
            self._closed = True
            if self._owns_socket:
                self._socket.close()

    def __enter__(self) -> StreamSubscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- in-memory fake


class _FakeSocket:
    def __init__(self, link: InMemoryLink, role: str) -> None:
        self._link, self._role = link, role
        self.closed = False

    def send_multipart(self, msg_parts: Sequence[Any], flags: int = 0, copy: bool = True) -> None:
        if self._role != "pub":
            raise TypeError("send_multipart on the subscriber end of an InMemoryLink")
        self._link._put([bytes(memoryview(p)) for p in msg_parts])

    def recv_multipart(self, flags: int = 0, copy: bool = True) -> list[Any]:
        if self._role != "sub":
            raise TypeError("recv_multipart on the publisher end of an InMemoryLink")
        return self._link._get(block=not flags)

    def poll(self, timeout: int | None = None, flags: int = 1) -> int:
        if self._role != "sub":
            return 0
        return self._link._wait(timeout)

    def close(self, linger: int | None = None) -> None:
        self.closed = True


class InMemoryLink:
    """An in-process stand-in for a PUB->SUB connection, for tests.

    ``link.pub_socket`` and ``link.sub_socket`` plug into ``StreamPublisher`` and
    ``StreamSubscriber``. Every part is copied into ``bytes`` as a wire would. Like PUB,
    the link drops (and counts) messages beyond ``hwm`` queued ones.

    Parameters
    ----------
    hwm : int
        Maximum queued messages.
    drop : callable, optional
        ``drop(i, parts) -> bool`` for the i-th message sent (0-based): True loses it.
    """

    def __init__(self, *, hwm: int = 100_000, drop: Callable[[int, list[bytes]], bool] | None = None) -> None:
        self.hwm = int(hwm)
        self.drop = drop
        self.sent = 0
        self.dropped = 0
        self._queue: collections.deque[list[bytes]] = collections.deque()
        self._cond = threading.Condition()
        self.pub_socket = _FakeSocket(self, "pub")
        self.sub_socket = _FakeSocket(self, "sub")

    def _put(self, parts: list[bytes]) -> None:
        i = self.sent
        self.sent += 1
        if (self.drop is not None and self.drop(i, parts)) or len(self._queue) >= self.hwm:
            self.dropped += 1
            return
        with self._cond:
            self._queue.append(parts)
            self._cond.notify_all()

    def inject(self, parts: Sequence[Any]) -> None:
        """Queue raw parts as if a (possibly broken) peer had sent them."""
        with self._cond:
            self._queue.append([bytes(memoryview(p)) if not isinstance(p, bytes) else p for p in parts])
            self._cond.notify_all()

    def _wait(self, timeout_ms: int | None) -> int:
        with self._cond:
            if not self._queue and timeout_ms != 0:
                self._cond.wait(None if timeout_ms is None or timeout_ms < 0 else timeout_ms / 1000.0)
            return 1 if self._queue else 0

    def _get(self, block: bool) -> list[bytes]:
        with self._cond:
            if not self._queue:
                if not block:
                    raise WouldBlock()
                self._cond.wait_for(lambda: bool(self._queue))
            return self._queue.popleft()

    def __len__(self) -> int:
        return len(self._queue)


def fake_pair(info: SessionInfo, *, drop: Callable[[int, list[bytes]], bool] | None = None,
              publisher_kw: Mapping[str, Any] | None = None, subscriber_kw: Mapping[str, Any] | None = None,
              ) -> tuple[StreamPublisher, StreamSubscriber, InMemoryLink]:
    """A publisher and a subscriber joined by an ``InMemoryLink`` (returned third)."""
    link = InMemoryLink(drop=drop)
    pub = StreamPublisher(link.pub_socket, info, **dict(publisher_kw or {}))
    sub = StreamSubscriber(link.sub_socket, **dict(subscriber_kw or {}))
    return pub, sub, link
