"""Test and benchmark helpers for the bindings: a real ZeroMQ SUB that decodes with
``streaming.protocol`` and collects one session, and the apt installer hook.

Imports the transport and protocol modules only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streaming.protocol import Envelope, decode

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO_ROOT / "bindings" / "install_system_deps.sh"


class CollectingSubscriber:
    """A SUB socket bound to a free local TCP port that decodes every message it gets.

    Use as a context manager; ``address`` is what publishers connect to.
    """

    def __init__(self, *, rcvhwm: int = 100_000) -> None:
        from streaming.transport import open_socket

        self._sock = open_socket("sub", "tcp://127.0.0.1:*", bind=True, what="test subscriber",
                                 options={"RCVHWM": rcvhwm, "LINGER": 0, "SUBSCRIBE": b""})
        self.address = self._sock.endpoint
        self.envelopes: list[Envelope] = []
        self.n_malformed = 0
        self.errors: list[str] = []

    def collect(self, *, until_kind: str = "session_end", timeout_s: float = 20.0,
                idle_check: Callable[[], bool] | None = None) -> list[Envelope]:
        """Receive until a message of ``until_kind`` arrives or ``timeout_s`` passes.

        ``idle_check`` is polled between messages; returning True stops early (e.g. the
        publisher process died).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._sock.poll(100):
                parts = self._sock.recv_multipart(copy=True)
                try:
                    env = decode(parts)
                except Exception as exc:  # counted and kept for the test's message
                    self.n_malformed += 1
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                self.envelopes.append(env)
                if env.kind == until_kind:
                    break
            elif idle_check is not None and idle_check():
                break
        return self.envelopes

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> "CollectingSubscriber":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ensure_system_packages(*packages: str) -> str | None:
    """Install missing Debian packages with ``bindings/install_system_deps.sh``.

    Returns None when all are present afterwards, else the reason they are not (for a
    pytest skip message).
    """
    if shutil.which("dpkg-query") is None:
        return "not a Debian-like system (no dpkg-query)"
    missing = [p for p in packages
               if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                                 text=True).stdout.strip() != "install ok installed"]
    if not missing:
        return None
    if os.geteuid() != 0:
        return f"missing system packages {missing} and not running as root to apt-get install them"
    proc = subprocess.run(["bash", str(INSTALL_SCRIPT), *missing], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return f"apt-get install {missing} failed: {proc.stderr[-500:]}"
    return None
