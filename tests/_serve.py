"""Test helpers: a real ``python -m cli serve`` process, a raw protocol publisher, and
subscribers on the service's output and status channels (loopback ZeroMQ).

Used by ``tests/test_reliability.py`` and ``tests/test_protocol_doc.py``. The publisher
writes wire messages itself (``streaming.protocol.encode_*`` or raw bytes) so that tests can
forge sequence numbers, frame indices, sessions and garbage.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from rt_decoder.messages import ActivityFrame, FluorescenceFrame, SessionInfo, now_ns
from streaming import protocol as P

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
#: the first start on a clean machine compiles the numba kernels (about a minute on 2 cores)
READY_TIMEOUT_S = 300.0
TIMEOUT_S = 60.0


def tcp() -> str:
    """A free loopback TCP address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def wait_until(cond: Callable[[], bool], timeout_s: float = TIMEOUT_S, what: str = "condition",
               every_s: float = 0.01) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


class Serve:
    """``python -m cli serve --config FILE`` with a config written from ``sections``.

    Input, output and status get free loopback addresses; the status publishes every 0.1 s;
    no reconstruction unless ``sections`` enables it. ``status`` and ``output`` subscribers
    connect before the process starts.

    Parameters
    ----------
    tmp_path : Path
    sections : mapping of section name -> mapping of key -> value
        Merged over the defaults (e.g. ``{"input": {"bind": True}}``).
    output_options : mapping of zmq option name -> value
        Options of this helper's output subscriber (e.g. a small ``RCVHWM``).
    """

    def __init__(self, tmp_path: Path, sections: dict[str, dict[str, Any]] | None = None, *,
                 output_options: dict[str, Any] | None = None, subscribe_output: bool = True) -> None:
        self.tmp_path = tmp_path
        self.summary_path = tmp_path / "summary.json"
        base: dict[str, dict[str, Any]] = {
            "input": {"address": tcp(), "bind": False},
            "output": {"address": tcp(), "heartbeat_every_s": 0.2, "session_resend_every_s": 0.5},
            "status": {"address": tcp(), "publish_every_s": 0.1, "status_line_every_s": 0.0,
                       "summary_json": str(self.summary_path)},
            "pipeline": {"warmup_rois": 8, "drain_timeout_s": 10.0},
            "reconstruction": {"enabled": False},
            "deconv": {"init_frames": 30},
        }
        for name, values in (sections or {}).items():
            base.setdefault(name, {}).update(values)
        self.sections = base
        self.config_path = tmp_path / "serve.toml"
        self.config_path.write_text(_toml(base))
        self.ctx = zmq.Context()
        self.status_sock = self.ctx.socket(zmq.SUB)
        self.status_sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.status_sock.setsockopt(zmq.LINGER, 0)
        self.status_sock.connect(base["status"]["address"])
        self.out: zmq.Socket | None = None
        if subscribe_output:
            self.out = self.ctx.socket(zmq.SUB)
            for name, value in {"SUBSCRIBE": b"", "LINGER": 0, "RCVHWM": 1_000_000, **(output_options or {})}.items():
                self.out.setsockopt(getattr(zmq, name), value)
            self.out.connect(base["output"]["address"])
        self.log_path = tmp_path / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_status: P.Envelope | None = None
        self.status_seen: list[P.Envelope] = []
        self.output_seen: list[P.Envelope] = []

    @property
    def input_address(self) -> str:
        return str(self.sections["input"]["address"])

    @property
    def status_address(self) -> str:
        return str(self.sections["status"]["address"])

    # -- process
    def start(self) -> Serve:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--config", str(self.config_path)],
                                     cwd=REPO, env=ENV, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        assert self.alive(), f"serve exited with {self.proc.returncode if self.proc else None}:\n{self.log()[-3000:]}"

    def stop(self, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        """SIGTERM (if still running), wait, return the JSON summary; asserts exit code 0."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=timeout_s)
        self.poll_output(0.3)
        assert self.proc.returncode == 0, f"serve exit code {self.proc.returncode}:\n{self.log()[-3000:]}"
        return self.summary()

    def summary(self) -> dict[str, Any]:
        return dict(json.loads(self.summary_path.read_text()))

    def wait_exit(self, timeout_s: float = TIMEOUT_S) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=TIMEOUT_S)

    def close(self) -> None:
        """Kill the process if it still runs, close the sockets (always call, e.g. in finally)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT_S)
        if getattr(self, "_log", None) is not None:
            self._log.close()
        self.status_sock.close(linger=0)
        if self.out is not None:
            self.out.close(linger=0)
        self.ctx.destroy(linger=0)  # also closes any publisher socket a failed test left open

    # -- status channel
    def poll_status(self, timeout_ms: int = 0) -> P.Envelope | None:
        """Read every status message queued (waiting up to ``timeout_ms`` for the first)."""
        while self.status_sock.poll(timeout_ms):
            timeout_ms = 0
            env = P.decode(self.status_sock.recv_multipart(), max_bytes=1 << 26)
            assert env.kind == P.KIND_STATUS
            self.status_seen.append(env)
            self.last_status = env
        return self.last_status

    def metrics(self) -> dict[str, Any]:
        env = self.poll_status()
        assert env is not None, "no status message yet"
        return dict(env.body.metrics)

    def wait_status(self, pred: Callable[[P.Envelope], bool], timeout_s: float = TIMEOUT_S,
                    what: str = "status") -> P.Envelope:
        """Wait for a status message satisfying ``pred`` (the process must stay up)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            n = len(self.status_seen)
            self.poll_status(100)
            for env in self.status_seen[n:]:
                if pred(env):
                    return env
            self.poll_output(0)
            if time.monotonic() > deadline:
                last = self.last_status.body.metrics if self.last_status is not None else None
                raise AssertionError(f"timed out waiting for {what}; last status {last}\n{self.log()[-2000:]}")

    def wait_ready(self) -> None:
        self.wait_status(lambda e: e.body.state in ("READY", "RUNNING"), READY_TIMEOUT_S, "READY")

    def wait_session(self, sid: str, timeout_s: float = TIMEOUT_S) -> None:
        self.wait_status(lambda e: e.session_id == sid and e.body.state == "RUNNING", timeout_s,
                         f"session {sid!r} running")

    def wait_counter(self, name: str, at_least: int, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        env = self.wait_status(lambda e: e.body.metrics["counters"][name] >= at_least, timeout_s,
                               f"counters[{name!r}] >= {at_least}")
        return dict(env.body.metrics)

    # -- output channel
    def poll_output(self, timeout_s: float = 0.0) -> list[P.Envelope]:
        """Read what the output sent so far (waiting up to ``timeout_s`` for more)."""
        if self.out is None:
            return self.output_seen
        deadline = time.monotonic() + timeout_s
        while True:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if not self.out.poll(left_ms):
                return self.output_seen
            while self.out.poll(0):
                self.output_seen.append(P.decode(self.out.recv_multipart(), max_bytes=1 << 28))

    def output_frames(self, sid: str) -> list[P.Envelope]:
        return [e for e in self.output_seen if e.session_id == sid and e.kind in (P.KIND_ACTIVITY, P.KIND_DECODED)]

    def wait_output_frames(self, sid: str, n: int, timeout_s: float = TIMEOUT_S) -> list[P.Envelope]:
        deadline = time.monotonic() + timeout_s
        while len(self.output_frames(sid)) < n:
            self.check_alive()
            self.poll_output(0.1)
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.output_frames(sid))} of {n} output frames of {sid!r}")
        return self.output_frames(sid)


class Publisher:
    """A source written by hand: an XPUB socket that numbers its messages like a rig.

    ``seq`` is the next sequence number; every ``send_*`` uses it and advances it unless the
    caller passes ``seq=`` explicitly (forged numbers do not disturb the numbering).
    """

    def __init__(self, ctx: zmq.Context, address: str, *, bind: bool, sid: str, n_rois: int,
                 activity: bool = True, rate_hz: float = 30.0, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.sock.setsockopt(zmq.SNDHWM, 1_000_000)
        self.sock.setsockopt(zmq.LINGER, 2_000)
        if curve is not None:  # (own public key, own secret key, the service's public key)
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = curve
        try:
            if bind:  # the address may still be held by a socket closed a moment ago
                deadline = time.monotonic() + 10.0
                while True:
                    try:
                        self.sock.bind(address)
                        break
                    except zmq.ZMQError as exc:
                        if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
            else:
                self.sock.connect(address)
        except BaseException:
            self.sock.close(linger=0)
            raise
        self.info = SessionInfo(sid, np.arange(n_rois), rate_hz, is_activity=activity, source="test")
        self.seq = 0
        self.subscriptions = 0

    def new_session(self, sid: str) -> None:
        """Switch this publisher to a new session id, numbered from 0 again."""
        self.info = SessionInfo(sid, self.info.roi_ids, self.info.frame_rate_hz, is_activity=self.info.is_activity,
                                source="test")
        self.seq = 0

    @property
    def sid(self) -> str:
        return self.info.session_id

    def _next(self, seq: int | None) -> int:
        if seq is not None:
            return seq
        s = self.seq
        self.seq += 1
        return s

    def send(self, parts: Sequence[Any]) -> None:
        self.sock.send_multipart(list(parts))

    def session_start(self, *, seq: int | None = None, info: SessionInfo | None = None) -> None:
        self.send(P.encode_session_start(info or self.info, seq=self._next(seq), t_ns=now_ns()))

    def frame(self, k: int, values: np.ndarray | None = None, *, seq: int | None = None) -> np.ndarray:
        """Send frame index ``k`` (values default: k + ROI index / 1000); returns the values."""
        if values is None:
            values = (k + np.arange(self.info.n_rois) / 1000.0).astype(np.float32)
        s = self._next(seq)
        if self.info.is_activity:
            self.send(P.encode_activity(ActivityFrame(s, k, now_ns(), values=values), self.sid))
        else:
            self.send(P.encode_frame(FluorescenceFrame(s, k, now_ns(), values=values), self.sid))
        return values

    def heartbeat(self, *, seq: int | None = None) -> None:
        self.send(P.encode_heartbeat(self.sid, seq=self._next(seq), t_ns=now_ns()))

    def session_end(self, n_frames: int, *, seq: int | None = None, sid: str | None = None) -> None:
        self.send(P.encode_session_end(sid or self.sid, seq=self._next(seq), t_ns=now_ns(), n_frames=n_frames))

    def poll_subscriptions(self) -> int:
        while self.sock.poll(0):
            if self.sock.recv()[:1] == b"\x01":
                self.subscriptions += 1
        return self.subscriptions

    def wait_subscribed(self, n: int = 1, timeout_s: float = TIMEOUT_S) -> None:
        wait_until(lambda: self.poll_subscriptions() >= n, timeout_s, f"{n} subscription(s) to {self.sid!r}")

    def close(self) -> None:
        self.sock.close(linger=2_000)


def join_session(serve: Serve, pub: Publisher, timeout_s: float = TIMEOUT_S) -> None:
    """The doc's rule (protocol.md 13.1): wait for the subscription, then announce the session
    until the status channel shows it running."""
    pub.wait_subscribed(1, timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        pub.session_start()
        try:
            serve.wait_session(pub.sid, 0.5)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def doc_example_sender() -> str:
    """The python sender example of docs/protocol.md section 13.1 (the only one there)."""
    import re

    doc = (REPO / "docs" / "protocol.md").read_text()
    start = doc.index("### 13.1 ")
    end = doc.index("\n### ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", doc[start:end], re.S)
    assert len(blocks) == 1, "docs/protocol.md section 13.1 must hold exactly one python example"
    return blocks[0]


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, bool):
                v = "true" if value else "false"
            elif isinstance(value, str):
                v = json.dumps(value)
            else:
                v = repr(value)
            lines.append(f"{key} = {v}")
        lines.append("")
    return "\n".join(lines)


def plain_open_error(path: Path) -> str | None:
    """None when plain ``h5py.File(path, "r")`` opens a session recording and reads its
    frames, else the error text."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            f["frames/values"][:1]
    except OSError as exc:
        return str(exc)
    return None
