"""``rt-decoder demo``: the main job on the embedded default, end to end on this machine.

For now (until the decoder lands in the demo): the virtual rig streams a held-out session
over ZeroMQ on a free loopback port to a subscriber in another process, which prints what
it receives and its rate. Each stage is a separate process started as
``python -m rt_decoder.cli <stage> ...``; ``_Stage`` and the pipeline list in ``run`` are
the place to add ``serve`` and a sink later (rig -> serve -> sink).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

HELP = "run the demo: the virtual rig streams a held-out session to a subscriber process (loopback)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--neurons", type=int, default=8000, help="simulated ROIs (default 8000)")
    p.add_argument("--frames", type=int, default=300, help="frames to stream (default 300 = 10 s)")
    p.add_argument("--rate-hz", type=float, default=30.0, help="frame rate (default 30)")
    p.add_argument("--seed", type=int, default=0, help="rig seed (default 0)")
    p.add_argument("--timeout-s", type=float, default=180.0, help="give up after this long (default 180)")


class _Stage:
    """A child process whose output lines are forwarded with a prefix (and kept)."""

    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "rt_decoder.cli", *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._seen = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            line = line.rstrip("\n")
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
            shown = line if line.startswith(f"{self.name}:") else f"{self.name}: {line}"
            print(shown, flush=True)
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str] | None:
        """Wait for an output line matching ``pattern``."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._seen:
            i = 0
            while True:
                for line in self.lines[i:]:
                    m = rx.search(line)
                    if m:
                        return m
                i = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._thread.is_alive()):
                    return None
                self._seen.wait(min(left, 0.5))

    def finish(self, timeout_s: float) -> int:
        try:
            rc = self.proc.wait(timeout=max(0.1, timeout_s))
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                rc = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        self._thread.join(timeout=5)
        return rc

    def last_json(self) -> dict[str, object] | None:
        for line in reversed(self.lines):
            if line.startswith("{"):
                try:
                    out = json.loads(line)
                except ValueError:
                    continue
                return out if isinstance(out, dict) else None
        return None


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    print(f"demo: virtual rig ({args.neurons} ROIs, held-out trials, {args.frames} frames at {args.rate_hz:g} Hz) "
          "-> ZeroMQ loopback -> subscriber process", flush=True)
    rig = _Stage("rig", ["rig", "--bind", "tcp://127.0.0.1:*", "--neurons", str(args.neurons), "--seed",
                         str(args.seed), "--heldout", "--frames", str(args.frames), "--rate-hz", str(args.rate_hz),
                         "--wait-subscribers", "1", "--wait-timeout-s", str(args.timeout_s)])
    stages = [rig]
    try:
        m = rig.wait_for(r"publishing on (\S+)", args.timeout_s)
        if m is None:
            print("demo: the rig did not start", flush=True)
            return 1
        listener = _Stage("listen", ["listen", "--connect", m.group(1), "--frames", str(args.frames),
                                     "--timeout-s", str(args.timeout_s)])
        stages.append(listener)
        while listener.proc.poll() is None and time.monotonic() - t0 < args.timeout_s:
            if rig.proc.poll() not in (None, 0):  # the source failed: nothing more will come
                break
            time.sleep(0.1)
        rc_listen = listener.finish(1.0 if rig.proc.poll() not in (None, 0) else 0.1)
        rc_rig = rig.finish(max(5.0, args.timeout_s - (time.monotonic() - t0)))
    finally:
        for st in stages:
            if st.proc.poll() is None:
                st.finish(0.1)
    got = listener.last_json() or {}
    sent = rig.last_json() or {}
    counters = got.get("counters", {})
    print(f"demo: subscriber received {got.get('frames')} of {sent.get('frames_sent')} frames at "
          f"{got.get('rate_hz', float('nan')):.2f} frames/s, lost messages "
          f"{counters.get('missing') if isinstance(counters, dict) else '?'}, "
          f"malformed {counters.get('malformed') if isinstance(counters, dict) else '?'}; "
          f"rig exit {rc_rig}, subscriber exit {rc_listen}; {time.monotonic() - t0:.1f} s in all", flush=True)
    return 0 if rc_rig == 0 and rc_listen == 0 and got.get("frames") == args.frames else 1
