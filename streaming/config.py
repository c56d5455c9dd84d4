"""Typed, validated configuration of ``rt-decoder serve`` (one TOML file).

Every option lives in a frozen dataclass section whose fields carry their unit in the
name and, in ``field(metadata=...)``, a one-line meaning and bounds. ``load_config`` reads
TOML with :mod:`tomllib`, rejects unknown sections and keys (naming them), checks types
and bounds and raises :class:`rt_decoder.errors.ConfigError` naming the bad value.
``default_config_toml()`` renders every option with its meaning (``serve
--print-default-config``).

Security defaults: every address is loopback unless ``allow_non_loopback = true`` is set
explicitly in the section that owns the address.

Imports the standard library and rt_decoder.errors only (no zmq, no numpy).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rt_decoder.errors import ConfigError

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def _opt(default: Any, help: str, lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=default, metadata={"help": help, "min": lo, "max": hi})


def is_loopback_address(address: str) -> bool:
    """True for ``ipc://``/``inproc://`` and ``tcp://`` addresses on a loopback host.

    ``tcp://*:port`` and ``tcp://0.0.0.0:port`` listen on every interface: not loopback.
    """
    if address.startswith(("ipc://", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    rest = address[len("tcp://"):]
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    if ";" in host:  # zmq "source;destination" syntax: judge the destination
        host = host.split(";")[-1]
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_address(address: str, *, allow_non_loopback: bool, what: str) -> None:
    """Raise ``ConfigError`` unless ``address`` is a zmq endpoint allowed by the policy."""
    if not address.startswith(("tcp://", "ipc://", "inproc://")):
        raise ConfigError(f"{what}: address {address!r} must start with tcp://, ipc:// or inproc://")
    if not allow_non_loopback and not is_loopback_address(address):
        raise ConfigError(
            f"{what}: address {address!r} is not loopback; set allow_non_loopback = true in that "
            "section to expose the service on a network (and consider CURVE keys)")


@dataclass(frozen=True)
class InputSettings:
    """[input] -- the SUB socket the fluorescence stream arrives on."""

    address: str = _opt("tcp://127.0.0.1:5555", "ZeroMQ endpoint of the source stream")
    bind: bool = _opt(False, "true: bind the SUB socket (sources connect); false: connect to the source")
    allow_non_loopback: bool = _opt(False, "must be true to use an address that is not loopback")
    max_message_bytes: int = _opt(16 * 1024 * 1024, "messages larger than this are counted as malformed "
                                  "(parts above twice this make ZeroMQ drop the connection)", 1024, 1 << 30)
    receive_hwm_messages: int = _opt(100_000, "ZeroMQ receive high-water mark (messages)", 1, 10_000_000)
    curve_secret_key_file: str = _opt("", "CURVE: this service's secret key file (zmq.auth format); "
                                      "empty = no encryption/authentication")
    curve_authorized_keys_dir: str = _opt("", "CURVE: directory of client public keys allowed to connect; "
                                          "empty = any client that knows the server key")


@dataclass(frozen=True)
class OutputSettings:
    """[output] -- the PUB socket decoded (or activity) frames leave on."""

    address: str = _opt("tcp://127.0.0.1:5556", "ZeroMQ endpoint of the output stream")
    bind: bool = _opt(True, "true: bind the PUB socket (sinks connect); false: connect")
    allow_non_loopback: bool = _opt(False, "must be true to use an address that is not loopback")
    send_hwm_messages: int = _opt(10_000, "ZeroMQ send high-water mark (messages; PUB drops beyond it)",
                                  1, 10_000_000)
    heartbeat_every_s: float = _opt(1.0, "heartbeat on the output when no frame went out for this long",
                                    0.05, 3600.0)
    session_resend_every_s: float = _opt(1.0, "re-send session metadata on the output this often (late joiners)",
                                         0.05, 3600.0)


@dataclass(frozen=True)
class StatusSettings:
    """[status] -- lifecycle, metrics, status line, JSON summary, Prometheus endpoint."""

    address: str = _opt("tcp://127.0.0.1:5557", "ZeroMQ PUB endpoint for status messages; empty = off")
    allow_non_loopback: bool = _opt(False, "must be true to use an address that is not loopback")
    publish_every_s: float = _opt(1.0, "publish a status message (state + metrics) this often", 0.05, 3600.0)
    status_line_every_s: float = _opt(5.0, "print a one-line status to stderr this often; 0 = never",
                                      0.0, 3600.0)
    prometheus_port: int = _opt(0, "serve Prometheus text metrics on http://127.0.0.1:PORT/metrics; 0 = off",
                                0, 65535)
    summary_json: str = _opt("", "write the JSON metrics summary to this path at exit; empty = off")
    max_latency_samples: int = _opt(1_000_000, "latency samples kept for percentiles (ring buffer)",
                                    100, 100_000_000)


@dataclass(frozen=True)
class PipelineSettings:
    """[pipeline] -- queues, reconstruction window, warm-up, stopping."""

    intake_queue_frames: int = _opt(4096, "bounded queue receiver -> deconvolution (frames); "
                                    "overflow is counted and seen as a gap", 1, 10_000_000)
    recent_window_frames: int = _opt(32, "activity frames handed to the reconstruction stage", 1, 10_000)
    max_gap_frames: int = _opt(3000, "a frame-index jump larger than this restarts the deconvolution "
                               "(new initial batch) instead of being bridged as missing frames", 1, 10_000_000)
    warmup_rois: int = _opt(64, "ROIs of the dummy session run during warm-up", 1, 100_000)
    drain_timeout_s: float = _opt(5.0, "at SIGINT/SIGTERM: longest wait for queued frames to finish",
                                  0.0, 600.0)
    stop_after_s: float = _opt(0.0, "stop by itself after this long in RUNNING; 0 = run until signalled",
                               0.0, 1e7)
    stop_on_session_end: bool = _opt(False, "stop by itself (drain) after the source's session_end")


@dataclass(frozen=True)
class RecordingSettings:
    """[recording] -- lossless recording of the received stream (HDF5 session files)."""

    enabled: bool = _opt(False, "record every valid received frame to a session file")
    directory: str = _opt("recordings", "directory for <session_id>.h5 files (one per session)")
    record_decoded: bool = _opt(True, "also record decoded frames (when a reconstruction stage emits them)")
    queue_frames: int = _opt(8192, "bounded queue to the writer thread; overflow is counted, never blocks",
                             1, 10_000_000)
    flush_every_s: float = _opt(0.5, "flush the file this often (a SIGKILL loses at most this much + queue)",
                                0.01, 60.0)


@dataclass(frozen=True)
class ReconstructionSettings:
    """[reconstruction] -- the live sliding-window reconstruction through the encoder."""

    enabled: bool = _opt(True, "run live reconstruction (false: publish activity frames instead)")
    model_dir: str = _opt("", "encoder model directory (rt-decoder train); empty = the shipped demo model")
    backend: str = _opt("onnxruntime", "encoder backend: onnxruntime | torch | tensorrt")
    threads: int = _opt(2, "intra-op threads of the encoder backend", 1, 256)
    lag_frames: int = _opt(15, "decoding lag: frame t - lag_frames is emitted when frame t arrives", 0, 120)
    fixed_steps: int = _opt(0, "gradient steps per frame per member (reproducible runs); 0 = use budget_ms",
                            0, 10_000)
    budget_ms: float = _opt(20.0, "per-frame time budget for gradient steps (all members together)", 0.1, 10_000.0)
    max_members: int = _opt(0, "ensemble members to use at most; 0 = as many as the budget allows", 0, 64)
    steps_per_member: int = _opt(3, "gradient steps per frame per member (fewer if the budget runs out); "
                                 "the ensemble is sized so this many fit budget_ms", 1, 1000)
    cached_context: bool = _opt(True, "reuse the core features of frozen frames (exact for causal encoders)")
    learning_rate_px: float = _opt(300.0, "optimiser step size in pixel units per unit-norm gradient",
                                   1e-3, 1e6)
    momentum: float = _opt(0.9, "first-moment decay of the optimiser", 0.0, 0.999)
    warmup_iterations: int = _opt(10, "per-frame learning-rate warm-up (iterations)", 0, 10_000)
    warm_start: str = _opt("previous", "new frame starts from: previous (last solution) | grey")
    warm_start_decay: float = _opt(0.9, "with previous: start at grey + decay * (previous - grey), so errors "
                                   "cannot accumulate over a long session (1 = plain copy)", 0.0, 1.0)
    blur_sigma_px: float = _opt(1.0, "spatial Gaussian blur of each emitted frame (0 = off)", 0.0, 10.0)
    blur_sigma_frames: float = _opt(1.0, "temporal Gaussian blur of each emitted frame with its neighbours "
                                    "(0 = off)", 0.0, 10.0)
    target_ramp_frames: int = _opt(8, "the newest frames' responses weigh less in the loss, ramping to 1 over "
                                   "this many frames (the deconvolution still revises them); 0 = off", 0, 120)
    amortised_start: bool = _opt(True, "each frame restarts from the model's amortised decoder (a direct linear "
                                 "decoder of the responses) once its responses are in; gradient steps refine it "
                                 "(ignored for a model without one)")
    smooth_sigma_px: float = _opt(2.0, "gradient smoothing (preconditioner): Gaussian sigma in pixels applied to "
                                  "every step's gradient (0 = off)", 0.0, 16.0)
    smooth_sigma_frames: float = _opt(1.0, "gradient smoothing: Gaussian sigma in frames (0 = off)", 0.0, 16.0)
    decay_iterations: int = _opt(0, "step-size decay d / (d + t) over a frame's iterations t (0 = off)", 0, 1_000_000)

    def __post_init__(self) -> None:
        if self.backend not in ("onnxruntime", "torch", "tensorrt"):
            raise ConfigError(f"[reconstruction] backend must be onnxruntime, torch or tensorrt, got {self.backend!r}")
        if self.warm_start not in ("previous", "grey"):
            raise ConfigError(f"[reconstruction] warm_start must be previous or grey, got {self.warm_start!r}")


@dataclass(frozen=True)
class ServiceConfig:
    """The whole ``serve`` configuration. ``deconv`` is passed to ``DeconvSettings``."""

    input: InputSettings = field(default_factory=InputSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    status: StatusSettings = field(default_factory=StatusSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    recording: RecordingSettings = field(default_factory=RecordingSettings)
    reconstruction: ReconstructionSettings = field(default_factory=ReconstructionSettings)
    #: [deconv] table, as (key, value) pairs, validated by rt_decoder.deconv.DeconvSettings
    deconv: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        check_address(self.input.address, allow_non_loopback=self.input.allow_non_loopback, what="[input]")
        check_address(self.output.address, allow_non_loopback=self.output.allow_non_loopback, what="[output]")
        if self.status.address:
            check_address(self.status.address, allow_non_loopback=self.status.allow_non_loopback, what="[status]")
        if self.input.curve_authorized_keys_dir and not self.input.curve_secret_key_file:
            raise ConfigError("[input] curve_authorized_keys_dir needs curve_secret_key_file")
        for p, what in ((self.input.curve_secret_key_file, "curve_secret_key_file"),
                        (self.input.curve_authorized_keys_dir, "curve_authorized_keys_dir")):
            if p and not Path(p).exists():
                raise ConfigError(f"[input] {what} = {p!r} does not exist")

    @property
    def deconv_dict(self) -> dict[str, Any]:
        return dict(self.deconv)

    def replace(self, **sections: Any) -> ServiceConfig:
        """Copy with some sections replaced; ``section={"key": value}`` updates one field."""
        updates: dict[str, Any] = {}
        for name, value in sections.items():
            if isinstance(value, Mapping) and name != "deconv":
                updates[name] = _build(type(getattr(self, name)), {**_asdict(getattr(self, name)), **value}, name)
            elif name == "deconv" and isinstance(value, Mapping):
                updates[name] = tuple(sorted(value.items()))
            else:
                updates[name] = value
        return dataclasses.replace(self, **updates)


_SECTIONS: dict[str, type] = {
    "input": InputSettings,
    "output": OutputSettings,
    "status": StatusSettings,
    "pipeline": PipelineSettings,
    "recording": RecordingSettings,
    "reconstruction": ReconstructionSettings,
}


def _asdict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _check_value(section: str, f: dataclasses.Field, value: Any) -> Any:
    name = f"[{section}] {f.name}"
    kind = type(f.default)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if lo is not None and value < lo:
        raise ConfigError(f"{name} = {value!r} is below its minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name} = {value!r} is above its maximum {hi}")
    return value


def _build(cls: type, table: Mapping[str, Any], section: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{section}] must be a table, got {table!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(f"[{section}] has unknown key(s) {unknown}; known: {sorted(fields)}")
    return cls(**{k: _check_value(section, fields[k], v) for k, v in table.items()})


def config_from_dict(data: Mapping[str, Any]) -> ServiceConfig:
    """Build a validated ``ServiceConfig`` from a nested mapping (the parsed TOML)."""
    unknown = sorted(set(data) - set(_SECTIONS) - {"deconv"})
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown}; known: {sorted([*_SECTIONS, 'deconv'])}")
    kwargs: dict[str, Any] = {name: _build(cls, data.get(name, {}), name) for name, cls in _SECTIONS.items()}
    deconv = data.get("deconv", {})
    if not isinstance(deconv, Mapping):
        raise ConfigError(f"[deconv] must be a table, got {deconv!r}")
    kwargs["deconv"] = tuple(sorted(deconv.items()))
    _validate_deconv(dict(deconv))
    return ServiceConfig(**kwargs)


def _validate_deconv(table: dict[str, Any]) -> None:
    """Check [deconv] against ``DeconvSettings`` now (fail fast), when that package is present."""
    try:
        from rt_decoder.deconv import DeconvSettings
    except ImportError:  # checked again when the service starts
        return
    try:
        DeconvSettings.from_dict(table)
    except ConfigError as exc:
        raise ConfigError(f"[deconv] {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"[deconv] {exc}") from None


def load_config(path: str | Path) -> ServiceConfig:
    """Read and validate a TOML config file; errors name the file and the bad key."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def default_config_toml() -> str:
    """Every option with its default and meaning, as a valid TOML document."""
    lines = ["# rt-decoder serve configuration (all options, with their defaults).",
             "# Unknown sections or keys are an error. Units are in the names.", ""]
    for name, cls in _SECTIONS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        lines.append(f"# {doc}")
        lines.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            bounds = ""
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            if lo is not None or hi is not None:
                bounds = f" (range {lo}..{hi})"
            lines.append(f"# {f.metadata['help']}{bounds}")
            lines.append(f"{f.name} = {_toml_value(f.default)}")
        lines.append("")
    lines.append("# [deconv] -- settings of the online deconvolution stage, passed to")
    lines.append("# rt_decoder.deconv.DeconvSettings (its own names, units and bounds; unknown keys rejected).")
    lines.append("# Empty = that stage's defaults. Ignored for sessions that send activity (is_activity).")
    lines.append("[deconv]")
    try:
        from rt_decoder.deconv import DeconvSettings
    except ImportError:  # the deconvolution package may be absent in a partial checkout
        DeconvSettings = None  # type: ignore[assignment,misc]
    if DeconvSettings is not None and dataclasses.is_dataclass(DeconvSettings):
        d = DeconvSettings()
        for f in dataclasses.fields(d):
            v = getattr(d, f.name)
            if isinstance(v, (bool, int, float, str)):
                lines.append(f"# {f.name} = {_toml_value(v)}")
    lines.append("")
    return "\n".join(lines)
