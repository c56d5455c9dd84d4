"""Typed, validated configuration of ``rt-decoder serve`` (one TOML file).

``ServiceConfig`` is one tree of frozen dataclasses: the service's own sections ([input]
[output] [status] [pipeline] [recording], defined here) and the stages' own settings
classes, nested as they are: ``[deconv]`` is ``rt_decoder.deconv.DeconvSettings``,
``[reconstruction]`` is ``rt_decoder.recon.stage.ReconstructionSettings`` with
``[reconstruction.live]`` (``LiveSettings``) and ``[reconstruction.live.optim]``
(``OptimSettings``). Every field carries its unit in the name and, as
``rt_decoder.settings.option`` metadata, its meaning, bounds and choices; one set of
defaults and bounds, the classes'.

``load_config`` reads TOML with :mod:`tomllib` and builds the tree with the generic
builder ``rt_decoder.settings.build``: unknown sections and keys are refused naming them
and the dotted section, types, bounds and choices are checked, errors are
:class:`rt_decoder.errors.ConfigError`. ``default_config_toml()`` is generated from the
classes (``serve --print-default-config``) and loads back to the defaults.

Security defaults: every address is loopback unless ``allow_non_loopback = true`` is set
explicitly in the section that owns the address.

Imports the standard library, rt_decoder.errors/settings and the stages' settings classes
(no zmq).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rt_decoder.deconv.settings import DeconvSettings
from rt_decoder.errors import ConfigError
from rt_decoder.recon.stage import ReconstructionSettings
from rt_decoder.settings import INTERNAL, build, render_toml, section, to_dict
from rt_decoder.settings import option as _opt
from streaming.transport import check_address

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
    confirm_jump_frames: int = _opt(30, "a frame index further than this from the running numbering (ahead or "
                                    "back) is held until the next frame confirms it (a renumbering) or not (an "
                                    "outlier, dropped)", 1, 1_000_000)
    session_takeover_after_s: float = _opt(2.0, "a session_start of another session or publisher replaces the "
                                           "running session only after that one ended or was silent this long",
                                           0.0, 3600.0)
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
class ServiceConfig:
    """The whole ``serve`` configuration: one tree of the service's and the stages' settings.

    ``deconv_keys`` are the ``[deconv]`` keys the file (or ``replace``) set: they win over a
    model's recorded deconvolution settings (``deconv_for_model``); the rest of ``deconv``
    is defaults that the model's recorded values replace.
    """

    input: InputSettings = section(InputSettings)
    output: OutputSettings = section(OutputSettings)
    status: StatusSettings = section(StatusSettings)
    pipeline: PipelineSettings = section(PipelineSettings)
    recording: RecordingSettings = section(RecordingSettings)
    reconstruction: ReconstructionSettings = section(ReconstructionSettings)
    deconv: DeconvSettings = section(
        DeconvSettings, "settings of the online deconvolution stage (rt_decoder.deconv.DeconvSettings). Keys "
        "left out (commented) are the defaults, except that a model's recorded deconvolution settings replace "
        "them; the keys set here win. Ignored for sessions that send activity (is_activity).", commented=True)
    deconv_keys: frozenset[str] = field(default=frozenset(), metadata={INTERNAL: True})

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
        known = {f.name for f in dataclasses.fields(DeconvSettings)}
        if not set(self.deconv_keys) <= known:
            raise ConfigError(f"deconv_keys {sorted(set(self.deconv_keys) - known)} are not DeconvSettings fields")

    @property
    def deconv_dict(self) -> dict[str, Any]:
        """The ``[deconv]`` keys the configuration set, with their values."""
        return {k: getattr(self.deconv, k) for k in sorted(self.deconv_keys)}

    def deconv_for_model(self, model_deconv: Mapping[str, Any]) -> DeconvSettings:
        """The deconvolution to run with a model: its recorded settings under the keys set here.

        ``model_deconv``: the model's manifest ``training.deconv_settings`` (``LiveStage.model_deconv``;
        empty without a model). See ``DeconvSettings.with_model_defaults``.
        """
        return self.deconv.with_model_defaults(model_deconv, self.deconv_keys)

    def replace(self, **sections: Any) -> ServiceConfig:
        """Copy with some sections replaced; ``section={"key": value}`` updates those keys
        (nested tables for nested sections); a settings instance replaces the section."""
        updates: dict[str, Any] = {}
        keys = set(self.deconv_keys)
        for name, value in sections.items():
            if name not in _SECTIONS:
                raise ConfigError(f"unknown config section {name!r}; known: {sorted(_SECTIONS)}")
            if isinstance(value, Mapping):
                updates[name] = build(_SECTIONS[name], value, base=getattr(self, name), path=name)
                if name == "deconv":
                    keys |= set(value)
            else:
                updates[name] = value
                if name == "deconv":
                    keys = _non_default_keys(value)
        return dataclasses.replace(self, **updates, deconv_keys=frozenset(keys))


#: section name -> settings class
_SECTIONS: dict[str, type] = {f.name: type(getattr(ServiceConfig(), f.name))
                              for f in dataclasses.fields(ServiceConfig) if not f.metadata.get(INTERNAL)}


def _non_default_keys(settings: DeconvSettings) -> set[str]:
    default = DeconvSettings()
    return {f.name for f in dataclasses.fields(settings) if getattr(settings, f.name) != getattr(default, f.name)}


def config_from_dict(data: Mapping[str, Any]) -> ServiceConfig:
    """Build a validated ``ServiceConfig`` from a nested mapping (the parsed TOML).

    Old flat ``[reconstruction]`` keys load at their new place with a
    ``rt_decoder.settings.SettingsDeprecationWarning``.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a table of sections, got {data!r}")
    deconv = data.get("deconv", {})
    cfg = build(ServiceConfig, data)
    return dataclasses.replace(cfg, deconv_keys=frozenset(deconv) if isinstance(deconv, Mapping) else frozenset())


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


def config_to_dict(config: ServiceConfig) -> dict[str, Any]:
    """The configuration as nested plain dicts (``[deconv]``: only the keys it set)."""
    out = to_dict(config)
    out["deconv"] = config.deconv_dict
    return out


def default_config_toml() -> str:
    """Every option with its default, meaning and bounds, as a TOML document (generated from
    the settings classes; loads back to ``ServiceConfig()``)."""
    lines = ["# rt-decoder serve configuration (all options, with their defaults).",
             "# Unknown sections or keys are an error. Units are in the names.", ""]
    lines += render_toml(ServiceConfig())
    return "\n".join(lines)
