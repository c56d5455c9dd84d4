"""``rt-decoder demo``: the whole product on this machine, rig -> serve -> sink.

Three processes on free loopback ports, each started as ``python -m cli ...``:

1. ``rt-decoder serve --config DIR/serve.toml`` (generated): deconvolution, plus live
   reconstruction with the shipped demo model (``rt_decoder/models/demo``, or ``--model``)
   when the service has a ``[reconstruction]`` section; otherwise it publishes activity
   frames, and the demo says so;
2. ``rt-decoder sink``: subscribes to the rig (true stimulus), the service's output and
   its status channel; writes ``side_by_side.gif``, ``latency_hist.png``, ``metrics.json``
   (and ``summary.png``) into ``--out``;
3. ``rt-decoder rig``: the virtual rig streaming held-out trials; started once the service
   announced READY on its status channel, it waits for its two subscribers (service and
   sink) before the first frame.

``serve --view`` also serves the live viewer page (``rt-decoder view``, subscribed to the
service's output and status and to the rig's stimulus); the demo prints its address.

When the rig has sent its frames and the sink has drained, the service gets SIGINT (it
drains and writes ``serve_summary.json``); the demo then prints the sink's summary table
and where the files are. Exit code 0 only when every process succeeded and frames came
out; Ctrl-C (or SIGTERM) stops every child cleanly (exit code 130).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import rt_decoder
from cli.flags import deprecated_alias

HELP = "run the whole product: virtual rig -> rt-decoder serve (live decoding) -> sink (video, latency, metrics)"

#: the shipped demo model, used when present
DEMO_MODEL = Path(rt_decoder.__file__).resolve().parent / "models" / "demo"

EPILOG = """examples:
  rt-decoder demo
  rt-decoder demo --frames 900 --out demo-out --no-view
  rt-decoder demo --neurons 1000 --no-reconstruction --fs 30
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--neurons", type=int, default=8000, help="simulated ROIs (default 8000)")
    p.add_argument("--frames", type=int, default=600, help="frames to stream (default 600 = 2 held-out trials, "
                   "20 s at 30 Hz)")
    p.add_argument("--fs", type=float, default=30.0, metavar="HZ", help="frame rate in Hz (default 30)")
    deprecated_alias(p, "--rate-hz", "--fs", dest="fs", type=float, metavar="HZ")
    p.add_argument("--seed", type=int, default=0, help="rig seed (default 0)")
    p.add_argument("--out", default="demo-out", help="output directory (default ./demo-out)")
    p.add_argument("--model", metavar="DIR", help=f"model directory for live reconstruction (default: {DEMO_MODEL} "
                   "when present)")
    p.add_argument("--no-reconstruction", action="store_true", help="run the service without reconstruction "
                   "(activity output)")
    p.add_argument("--n-trials", type=int, default=0, help="trials of the rig's dataset; held-out trials start "
                   "at this id (default 0: the model's training dataset, else the rig's default)")
    p.add_argument("--deconv-init-frames", type=int, default=0, help="the deconvolution's initial batch in frames "
                   "(default 0: the service's default)")
    p.add_argument("--setup-timeout-s", type=float, default=180.0, help="longest wait for the service to be READY "
                   "and the rig to start (default 180)")
    p.add_argument("--timeout-s", type=float, default=300.0, help="longest run after setup (default 300)")
    p.add_argument("--view", default="127.0.0.1:8050", metavar="HOST:PORT",
                   help="serve the live viewer page here while the demo runs (default 127.0.0.1:8050, or any free "
                   "port when that one is taken)")
    p.add_argument("--no-view", action="store_true", help="no live viewer")


# ---------------------------------------------------------------------------- child processes


class _Stage:
    """A child process whose output lines are forwarded with a prefix (and kept)."""

    def __init__(self, name: str, argv: Sequence[str], *, echo: bool = True) -> None:
        self.name = name
        self.argv = list(argv)
        self.lines: list[str] = []
        self.echo = echo
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", *argv], stdout=subprocess.PIPE,
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
            if self.echo:
                shown = line if line.startswith(f"{self.name}:") else f"{self.name}: {line}"
                print(shown, flush=True)
        with self._seen:
            self._seen.notify_all()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str] | None:
        """Wait for an output line matching ``pattern`` (None on timeout or exit)."""
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

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def finish(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s``; then SIGTERM, then SIGKILL. Returns the exit code."""
        try:
            rc = self.proc.wait(timeout=max(0.1, timeout_s))
        except subprocess.TimeoutExpired:
            print(f"demo: {self.name} did not stop within {timeout_s:.0f} s: terminating it", flush=True)
            self.proc.terminate()
            try:
                rc = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
        self._thread.join(timeout=5)
        return rc


def _view_bind(wanted: str) -> str:
    """``wanted`` when its port is free now (or 0), else the same host with port 0 (any free port)."""
    host, _, port = wanted.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return wanted
    with socket.socket() as s:
        try:
            s.bind((host.strip("[]"), int(port)))
        except OSError:
            return f"{host}:0"
    return wanted


def _free_tcp_addresses(n: int) -> list[str]:
    """``n`` distinct loopback TCP addresses whose ports were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [f"tcp://127.0.0.1:{s.getsockname()[1]}" for s in socks]
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------------------- configuration


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def _toml(tables: dict[str, dict[str, Any]]) -> str:
    lines = ["# generated by rt-decoder demo"]
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


def reconstruction_table(model_dir: Path | None, neurons: int, *,
                         wanted: bool = True) -> tuple[dict[str, Any], bool, str]:
    """The ``[reconstruction]`` table of the generated config (``ReconstructionSettings`` keys).

    Returns ``(table, active, why_not)``: the table switches reconstruction on with
    ``model_dir`` (``active`` True; everything else at the service's defaults), or off,
    explicitly, when it is not wanted, there is no model, or the model decodes another
    number of neurons than the rig streams (``why_not`` says which).
    """
    off: dict[str, Any] = {"enabled": False}
    if not wanted:
        return off, False, "--no-reconstruction"
    if model_dir is None:
        return off, False, f"no model: {DEMO_MODEL} is missing (make models, or pass --model)"
    manifest = model_dir / "manifest.json"
    try:
        n_model = int(json.loads(manifest.read_text())["n_neurons"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return off, False, f"cannot read the model's n_neurons from {manifest}: {exc}"
    if n_model != neurons:
        return off, False, f"the model {model_dir} decodes {n_model} neurons, the rig streams {neurons}"
    return {"enabled": True, "model_dir": str(model_dir)}, True, ""


def model_dataset_trials(model_dir: Path | None) -> int | None:
    """Trials of the simulated dataset the model was trained on (train + val + test), if recorded.

    The rig's held-out trials start at this id, so the demo never streams a trial the
    model was trained or validated on.
    """
    if model_dir is None:
        return None
    try:
        training = json.loads((model_dir / "manifest.json").read_text())["training"]
        n = sum(int(training[k]) for k in ("n_train_trials", "n_val_trials", "n_test_trials"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return n if n > 0 else None


def _deconv_init_frames(requested: int) -> int:
    from rt_decoder.deconv import DeconvSettings

    return requested or int(DeconvSettings().init_frames)


# ---------------------------------------------------------------------------- the run


class _Interrupted:
    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signum = signum


def _wait_ready(status_addr: str, serve: _Stage, timeout_s: float, interrupted: _Interrupted) -> str:
    """Wait for READY (or RUNNING) on the status channel; returns "" or why not."""
    from streaming.transport import StreamSubscriber

    deadline = time.monotonic() + timeout_s
    with StreamSubscriber(status_addr) as sub:
        while time.monotonic() < deadline:
            if interrupted.signum is not None:
                return "interrupted"
            if not serve.running:
                return f"the service exited with code {serve.proc.returncode} before READY"
            env = sub.recv(200)
            state = getattr(env.body, "state", None) if env is not None else None
            if state in ("READY", "RUNNING"):
                return ""
            if state == "FATAL":
                return "the service reported FATAL during start-up"
    return f"the service was not READY within {timeout_s:.0f} s"


def _stop_all(stages: Sequence[_Stage], sig: int) -> None:
    for st in stages:
        st.signal(sig)


def _pass_on_interrupt(stages: Sequence[_Stage], signum: int, grace_s: float = 3.0) -> None:
    """Make sure every child got the stop request exactly as a terminal would send it.

    The children share the demo's process group, so a terminal's Ctrl-C already reached
    each of them: SIGINT is not sent again (a second one could interrupt their clean exit).
    A child still running ``grace_s`` later never got it (``kill -INT`` of the demo
    alone): it gets SIGTERM, which every stage handles like SIGINT. A SIGTERM to the demo
    is passed on at once.
    """
    if signum != signal.SIGINT:
        _stop_all(stages, signal.SIGTERM)
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(st.running for st in stages):
        time.sleep(0.05)
    _stop_all([st for st in stages if st.running], signal.SIGTERM)


def run(args: argparse.Namespace) -> int:
    from rt_decoder.errors import ConfigError

    if args.frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {args.frames}")
    if not (1 <= args.neurons <= 100_000):
        raise ConfigError(f"--neurons must be in [1, 100000], got {args.neurons}")
    if args.n_trials < 0:
        raise ConfigError(f"--n-trials must be >= 0, got {args.n_trials}")
    if args.deconv_init_frames and not (30 <= args.deconv_init_frames <= 100_000):
        raise ConfigError(f"--deconv-init-frames must be in [30, 100000], got {args.deconv_init_frames}")
    t0 = time.monotonic()
    out = Path(args.out).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create --out {str(out)!r}: {exc}") from None
    for stale in ("metrics.json", "side_by_side.gif", "latency_hist.png", "summary.png", "serve_summary.json"):
        (out / stale).unlink(missing_ok=True)
    rig_addr, out_addr, status_addr = _free_tcp_addresses(3)
    model_dir = Path(args.model).resolve() if args.model else (DEMO_MODEL if DEMO_MODEL.is_dir() else None)
    if args.model and not model_dir.is_dir():  # type: ignore[union-attr]
        raise ConfigError(f"--model {args.model!r} is not a directory")
    recon, active, why_not = reconstruction_table(model_dir, args.neurons, wanted=not args.no_reconstruction)
    init_frames = _deconv_init_frames(args.deconv_init_frames)
    n_trials = args.n_trials or (model_dataset_trials(model_dir) if active else None)
    tables: dict[str, dict[str, Any]] = {
        "input": {"address": rig_addr, "bind": False},
        "output": {"address": out_addr},
        "status": {"address": status_addr, "publish_every_s": 0.5, "status_line_every_s": 5.0,
                   "summary_json": str(out / "serve_summary.json")},
    }
    if args.deconv_init_frames:
        tables["deconv"] = {"init_frames": args.deconv_init_frames}
    if recon is not None:
        tables["reconstruction"] = recon
    from streaming.config import config_from_dict

    config_from_dict(tables)  # fail fast, here, on anything the service would refuse
    config_path = out / "serve.toml"
    config_path.write_text(_toml(tables))
    mode = (f"live reconstruction with {model_dir}" if active
            else f"NO reconstruction ({why_not}): the service publishes activity frames")
    print(f"demo: virtual rig ({args.neurons} ROIs, held-out trials from id {n_trials or 'the rig default'}, "
          f"{args.frames} frames at {args.fs:g} Hz) "
          f"-> rt-decoder serve ({mode}) -> sink; outputs in {out}", flush=True)

    interrupted = _Interrupted()
    old = {s: signal.signal(s, interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    stages: list[_Stage] = []
    rcs: dict[str, int] = {}
    failure = ""
    t_stream = t_end = None
    try:
        view = [] if args.no_view else ["--view", _view_bind(args.view)]
        serve = _Stage("serve", ["serve", "--config", str(config_path), *view])
        stages.append(serve)
        sink_argv = ["sink", "--stimulus", rig_addr, "--decoded", out_addr, "--status", status_addr, "--out", str(out),
                     "--skip-frames", str(init_frames + 30), "--timeout-s", str(args.setup_timeout_s + args.timeout_s),
                     "--quiet"]
        if active and model_dir is not None and (model_dir / "alpha.npz").is_file():
            sink_argv += ["--eval-mask", str(model_dir / "alpha.npz")]
        sink = _Stage("sink", sink_argv)
        stages.append(sink)
        if view:
            seen = serve.wait_for(r"live viewer at (\S+)", args.setup_timeout_s)
            if seen is not None:
                print(f"demo: live viewer at {seen.group(1)} (open it in a browser; served while the demo runs)",
                      flush=True)
        failure = _wait_ready(status_addr, serve, args.setup_timeout_s, interrupted)
        if not failure and sink.wait_for(r"subscribed|error", args.setup_timeout_s) is None:
            failure = "the sink did not start"
        if not failure:
            print(f"demo: service READY after {time.monotonic() - t0:.1f} s; starting the rig", flush=True)
            rig = _Stage("rig", ["rig", "--bind", rig_addr, "--neurons", str(args.neurons), "--seed", str(args.seed),
                                 "--heldout", "--frames", str(args.frames), "--fs", str(args.fs),
                                 *(["--n-trials", str(n_trials)] if n_trials else []),
                                 "--wait-subscribers", "2", "--wait-timeout-s", str(args.setup_timeout_s),
                                 "--report-every-s", "5"])
            stages.append(rig)
            if rig.wait_for(r"publishing on", args.setup_timeout_s) is None:
                failure = "the rig did not start"
            else:
                t_stream = time.monotonic()
                deadline = t_stream + args.timeout_s
                while sink.running and interrupted.signum is None and time.monotonic() < deadline:
                    if not serve.running:
                        failure = f"the service exited early (code {serve.proc.returncode})"
                        break
                    if rig.proc.poll() not in (None, 0):
                        failure = f"the rig failed (code {rig.proc.returncode})"
                        break
                    time.sleep(0.1)
                else:
                    if sink.running and interrupted.signum is None:
                        failure = f"timed out after {args.timeout_s:.0f} s"
                    elif sink.proc.returncode not in (None, 0) and interrupted.signum is None:
                        failure = f"the sink failed (code {sink.proc.returncode})"
                t_end = time.monotonic()
        if interrupted.signum is not None:
            failure = failure or f"interrupted ({signal.Signals(interrupted.signum).name})"
            _pass_on_interrupt(stages, interrupted.signum)
        elif failure:
            _stop_all([st for st in stages if st.name != "serve"], signal.SIGINT)
        # shutdown order: the source, the sink (writes its files), then the service (drains)
        for st in [st for st in stages if st.name == "rig"]:
            rcs["rig"] = st.finish(15.0)
        rcs["sink"] = sink.finish(60.0)  # figures and the GIF take a few seconds
        if interrupted.signum is None:
            serve.signal(signal.SIGINT)
        rcs["serve"] = serve.finish(30.0)
    finally:
        for st in stages:
            if st.running:
                st.signal(signal.SIGTERM)
                st.finish(5.0)
        for s, h in old.items():
            signal.signal(s, h)
    return _report(out, args, rcs, failure, interrupted, t0, t_stream, t_end)


def _report(out: Path, args: argparse.Namespace, rcs: dict[str, int], failure: str, interrupted: _Interrupted,
            t0: float, t_stream: float | None, t_end: float | None) -> int:
    from streaming.sink import format_summary

    total = time.monotonic() - t0
    metrics_path = out / "metrics.json"
    metrics: dict[str, Any] = {}
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except ValueError:
            metrics = {}
    print("demo: ---------------------------------------------------------------- summary", flush=True)
    if metrics:
        print(format_summary(metrics), flush=True)
    serve_summary = out / "serve_summary.json"
    if serve_summary.is_file():
        try:
            ss = json.loads(serve_summary.read_text())
            c = ss.get("counters", {})
            print(f"service: received {c.get('frames_received')} frames, published {c.get('frames_published')}, "
                  f"skipped {c.get('skipped_frames')}, missing {c.get('frames_missing')}, "
                  f"malformed {ss.get('malformed_total')}; reconstruction: "
                  f"{ss.get('notes', {}).get('reconstruction')}", flush=True)
        except ValueError:
            pass
    files = [p.name for p in sorted(out.iterdir()) if p.is_file()] if out.is_dir() else []
    print(f"demo: files in {out}: {', '.join(files)}", flush=True)
    stream_s = f"{t_end - t_stream:.1f} s streaming + drain" if t_stream is not None and t_end is not None else ""
    print(f"demo: exit codes {rcs}; {total:.1f} s in all"
          + (f" ({t_stream - t0:.1f} s start-up, {stream_s})" if stream_s and t_stream is not None else ""),
          flush=True)
    if failure:
        print(f"demo: FAILED: {failure}", flush=True)
    if interrupted.signum is not None:
        return 130
    ok = (not failure and all(rc == 0 for rc in rcs.values()) and len(rcs) == 3
          and metrics.get("frames", {}).get("output", 0) > 0)
    return 0 if ok else 1

