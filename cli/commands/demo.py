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
drains and writes ``serve_summary.json``); the demo then prints the sink's summary table,
the source's timing apart from the service's (the rig's ``rig_summary.json``: send
lateness p50/p99, generator underruns; the service's latency and its real-time judgement:
``real_time``, ``real_time_reason``, ``counters.not_real_time_events``), a clear warning when
the run was not real time (the service judged itself not real time at any point, or the
rig was late), and where the files are; it writes all of this to ``demo_summary.json``
(or ``--summary-json``). Exit code 0 only when every process succeeded and frames came
out (a run that was not real time still exits 0: it is warned about, not failed); Ctrl-C
(or SIGTERM) stops every child cleanly (exit code 130).
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
    p.add_argument("--summary-json", metavar="PATH", help="write the demo's summary (exit codes, source timing, "
                   "service latency, real-time verdict and warnings) here (default: OUT/demo_summary.json)")


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
    for stale in ("metrics.json", "side_by_side.gif", "latency_hist.png", "summary.png", "serve_summary.json",
                  "rig_summary.json", "demo_summary.json"):
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
                                 "--report-every-s", "5", "--summary-json", str(out / "rig_summary.json")])
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


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} when it is missing or unreadable (a child that failed)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def source_timing(rig: dict[str, Any]) -> dict[str, Any]:
    """The source's (virtual rig's) timing from its summary JSON: frames sent, send lateness
    (send start minus the frame's deadline) p50/p99/max in ms, generator underruns (frames not
    generated by their deadline), late frames, the lead, and its own real-time verdict."""
    if not rig:
        return {"available": False}
    lateness = rig.get("send_lateness") or {}
    return {
        "available": True, "frames_sent": rig.get("frames_sent"), "rate_hz": rig.get("rate_hz"),
        "send_lateness_ms_p50": rig.get("send_lateness_ms_p50", lateness.get("median_ms")),
        "send_lateness_ms_p99": rig.get("send_lateness_ms_p99", lateness.get("p99_ms")),
        "send_lateness_ms_max": lateness.get("max_ms"),
        "generator_underruns": rig.get("generator_underruns"),
        "late_frames_over_half_period": rig.get("late_frames_over_half_period"),
        "lead_frames": rig.get("lead_frames"), "lead_wait_s": rig.get("lead_wait_s"),
        "buffer_min_frames": rig.get("buffer_min_frames"),
        "real_time": rig.get("real_time"), "real_time_reason": rig.get("real_time_reason", ""),
    }


def service_timing(serve: dict[str, Any]) -> dict[str, Any]:
    """The service's latency and real-time judgement from its JSON summary: receive ->
    published (``service``) and receive -> activity ready (``frame_path``) p50/p99 in ms, frames
    received/published/skipped, ``real_time`` (at the end), ``real_time_reason`` and
    ``not_real_time_events`` (times it judged itself not real time during the run)."""
    if not serve:
        return {"available": False}
    counters = serve.get("counters") or {}
    notes = serve.get("notes") or {}
    lat = serve.get("latency_ms") or {}
    real_time = serve.get("real_time")
    if real_time is None and "real_time" in notes:
        real_time = notes["real_time"] == "yes"
    return {
        "available": True, "frames_received": counters.get("frames_received"),
        "frames_published": counters.get("frames_published"), "skipped_frames": counters.get("skipped_frames"),
        "frames_missing": counters.get("frames_missing"), "malformed_total": serve.get("malformed_total"),
        "service_ms_p50": (lat.get("service") or {}).get("p50"), "service_ms_p99": (lat.get("service") or {}).get("p99"),
        "frame_path_ms_p50": (lat.get("frame_path") or {}).get("p50"),
        "frame_path_ms_p99": (lat.get("frame_path") or {}).get("p99"),
        "real_time": real_time, "real_time_reason": serve.get("real_time_reason") or notes.get("real_time_reason", ""),
        "not_real_time_events": counters.get("not_real_time_events"),
        "reconstruction": notes.get("reconstruction"),
    }


def real_time_verdict(source: dict[str, Any], service: dict[str, Any]) -> tuple[bool | None, list[str]]:
    """Was the run real time? Not when the service judged itself not real time at any point
    (``not_real_time_events`` > 0, or not real time at the end) or the rig was late
    (generator underruns, or its own verdict). Returns ``(verdict, warnings)``; the verdict is
    None when neither side reported (a failed run)."""
    warnings: list[str] = []
    known = False
    if service.get("available"):
        events = service.get("not_real_time_events")
        if events is not None or service.get("real_time") is not None:
            known = True
        if (events or 0) > 0 or service.get("real_time") is False:
            why = service.get("real_time_reason") or "no reason given"
            warnings.append(f"the service was NOT REAL TIME ({events or 0} time(s) during the run; last reason: "
                            f"{why})")
    if source.get("available"):
        known = True
        underruns = source.get("generator_underruns") or 0
        if underruns > 0 or source.get("real_time") is False:
            why = source.get("real_time_reason") or f"{underruns} generator underrun(s)"
            warnings.append(f"the source (virtual rig) was LATE: {why}; send lateness p50 "
                            f"{_ms(source.get('send_lateness_ms_p50'))}, p99 {_ms(source.get('send_lateness_ms_p99'))}")
    if not known:
        return None, warnings
    return not warnings, warnings


def _ms(v: Any) -> str:
    return f"{float(v):.3f} ms" if isinstance(v, (int, float)) else "-"


def format_timing(source: dict[str, Any], service: dict[str, Any]) -> list[str]:
    """The demo's two timing lines: the source apart from the service."""
    lines = []
    if source.get("available"):
        lines.append(f"source (virtual rig): sent {source.get('frames_sent')} frames; send lateness (send - deadline) "
                     f"p50 {_ms(source.get('send_lateness_ms_p50'))}, p99 {_ms(source.get('send_lateness_ms_p99'))}, "
                     f"max {_ms(source.get('send_lateness_ms_max'))}; generator underruns "
                     f"{source.get('generator_underruns')}; {source.get('lead_frames')} frames generated ahead "
                     f"before the first")
    else:
        lines.append("source (virtual rig): no summary (rig_summary.json missing)")
    if service.get("available"):
        flag = service.get("real_time")
        rt = "yes" if flag is True else "NO" if flag is False else "not reported"
        lines.append(f"service: received {service.get('frames_received')} frames, published "
                     f"{service.get('frames_published')}, skipped {service.get('skipped_frames')}, missing "
                     f"{service.get('frames_missing')}, malformed {service.get('malformed_total')}; receive -> "
                     f"published p50 {_ms(service.get('service_ms_p50'))}, p99 {_ms(service.get('service_ms_p99'))}; "
                     f"frame path (receive -> activity) p50 {_ms(service.get('frame_path_ms_p50'))}, p99 "
                     f"{_ms(service.get('frame_path_ms_p99'))}; real time at the end: {rt}, not-real-time events "
                     f"{service.get('not_real_time_events')}; reconstruction: {service.get('reconstruction')}")
    return lines


def _report(out: Path, args: argparse.Namespace, rcs: dict[str, int], failure: str, interrupted: _Interrupted,
            t0: float, t_stream: float | None, t_end: float | None) -> int:
    from streaming.metrics import write_summary
    from streaming.sink import format_summary

    total = time.monotonic() - t0
    metrics = _read_json(out / "metrics.json")
    source = source_timing(_read_json(out / "rig_summary.json"))
    service = service_timing(_read_json(out / "serve_summary.json"))
    real_time, warnings = real_time_verdict(source, service)
    print("demo: ---------------------------------------------------------------- summary", flush=True)
    if metrics:
        print(format_summary(metrics), flush=True)
    for line in format_timing(source, service):
        print(line, flush=True)
    for w in warnings:
        print(f"demo: WARNING: {w}", flush=True)
    if warnings:
        print("demo: WARNING: this run was NOT REAL TIME: its latencies and skips do not show what the product does "
              "on a machine that keeps up (see the README, 'The demo')", flush=True)
    stream_s = f"{t_end - t_stream:.1f} s streaming + drain" if t_stream is not None and t_end is not None else ""
    print(f"demo: exit codes {rcs}; {total:.1f} s in all"
          + (f" ({t_stream - t0:.1f} s start-up, {stream_s})" if stream_s and t_stream is not None else ""),
          flush=True)
    if failure:
        print(f"demo: FAILED: {failure}", flush=True)
    ok = (not failure and all(rc == 0 for rc in rcs.values()) and len(rcs) == 3
          and metrics.get("frames", {}).get("output", 0) > 0)
    summary_path = Path(args.summary_json) if args.summary_json else out / "demo_summary.json"
    summary = {
        "ok": ok, "failure": failure, "interrupted": interrupted.signum is not None, "exit_codes": rcs,
        "real_time": real_time, "warnings": warnings, "source": source, "service": service,
        "sink": {"output_frames": metrics.get("frames", {}).get("output"),
                 "video_corr": (metrics.get("correlation") or {}).get("video_corr"),
                 "metrics_json": str(out / "metrics.json")},
        "seconds": {"total": total, "start_up": (t_stream - t0) if t_stream is not None else None,
                    "streaming_and_drain": (t_end - t_stream) if t_stream is not None and t_end is not None else None},
    }
    try:
        write_summary(str(summary_path), summary)
    except OSError as exc:
        print(f"demo: cannot write {summary_path}: {exc}", flush=True)
    files = [p.name for p in sorted(out.iterdir()) if p.is_file()] if out.is_dir() else []
    print(f"demo: files in {out}: {', '.join(files)}", flush=True)
    if interrupted.signum is not None:
        return 130
    return 0 if ok else 1
