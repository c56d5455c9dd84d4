"""Settings of the virtual rig: one frozen, validated dataclass and the indicator presets.

``RigConfig`` holds every knob of the simulated mouse, its V1 population and the imaging;
bounds live in each field's metadata and are checked at construction; ``from_dict``
rejects unknown keys by name. Imports the standard library and rt_decoder.errors only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rt_decoder.errors import ConfigError


@dataclass(frozen=True)
class IndicatorPreset:
    """Kinetics, brightness and saturation of a genetically encoded calcium indicator.

    Parameters
    ----------
    name : str
        Preset name (``"GCaMP6s"``, ``"GCaMP8m"``, ...).
    tau_rise_s, tau_decay_s : float
        Time constants (s) of the double-exponential response to one spike
        ``exp(-t/tau_decay) - exp(-t/tau_rise)``; simulated as an AR(2) process per frame.
    dff_per_spike : float
        Median peak dF/F of a single spike (per-neuron values spread log-normally).
    saturation_spikes : float
        Saturation of the response, 0 = linear in the number of spikes. Otherwise, with
        ``x`` the linear response in units of one spike's peak, the dF/F is
        ``dff_per_spike * x (1 + 1/n) / (1 + x/n)``, ``n = saturation_spikes``: one spike
        still peaks at ``dff_per_spike``, ``n`` spikes at once give about half of the
        linear extrapolation's excess.
    """

    name: str
    tau_rise_s: float
    tau_decay_s: float
    dff_per_spike: float
    saturation_spikes: float = 0.0


#: Presets; per-neuron rise times spread by about 10 %, decay times by about 15 %.
#: Published single-spike kinetics in mouse cortex / cultured neurons (half-times converted
#: to the time constants of the double exponential; see docs/indicators.md for the sources):
#: GCaMP6s and GCaMP8m keep the numbers they were introduced with (the default rig's data
#: and the shipped model depend on them), the others were added with issue 14.
INDICATORS: dict[str, IndicatorPreset] = {
    "GCaMP6s": IndicatorPreset("GCaMP6s", tau_rise_s=0.065, tau_decay_s=1.25, dff_per_spike=0.20),
    "GCaMP6f": IndicatorPreset("GCaMP6f", tau_rise_s=0.045, tau_decay_s=0.40, dff_per_spike=0.12,
                               saturation_spikes=20.0),
    "GCaMP7f": IndicatorPreset("GCaMP7f", tau_rise_s=0.035, tau_decay_s=0.45, dff_per_spike=0.20,
                               saturation_spikes=15.0),
    "GCaMP8f": IndicatorPreset("GCaMP8f", tau_rise_s=0.007, tau_decay_s=0.12, dff_per_spike=0.25,
                               saturation_spikes=10.0),
    "GCaMP8m": IndicatorPreset("GCaMP8m", tau_rise_s=0.012, tau_decay_s=0.25, dff_per_spike=0.30),
    "GCaMP8s": IndicatorPreset("GCaMP8s", tau_rise_s=0.015, tau_decay_s=0.45, dff_per_spike=0.45,
                               saturation_spikes=10.0),
}


def _opt(default: Any, help: str, lo: float | None = None, hi: float | None = None) -> Any:
    return field(default=default, metadata={"help": help, "min": lo, "max": hi})


@dataclass(frozen=True)
class RigConfig:
    """Everything that defines a virtual session; the rig is a pure function of it.

    Rates are in spikes per frame unless a field name says otherwise; every random draw
    derives from ``seed`` (population) and ``(seed, trial index)`` (trials).
    """

    n_neurons: int = _opt(8000, "number of simulated neurons (ROIs)", 1, 100_000)
    seed: int = _opt(0, "master seed of the population and every trial", 0, 2**63 - 1)
    indicator: str = _opt("GCaMP6s", "calcium indicator preset: " + ", ".join(INDICATORS))
    frame_rate_hz: float = _opt(30.0, "imaging and stimulus frame rate (Hz)", 5.0, 240.0)
    trial_frames: int = _opt(300, "frames per trial (300 = 10 s at 30 Hz)", 8, 100_000)
    n_trials: int = _opt(20, "number of trials in a session / dataset", 1, 1_000_000)
    complex_fraction: float = _opt(0.4, "fraction of complex (energy-model) cells; the rest are simple", 0.0, 1.0)
    rf_field_fraction: float = _opt(0.5, "fraction of the screen covered by the ellipse of RF centres",
                                    0.05, 1.0)
    pink_noise_fraction: float = _opt(0.25, "probability that a movie clip is pink noise, not a photograph",
                                      0.0, 1.0)
    response_gain: float = _opt(1.0, "multiplies every neuron's stimulus-driven rate (calibration knob)",
                                0.0, 100.0)
    spike_dispersion: float = _opt(0.3, "gamma-Poisson over-dispersion d: var = rate + d*rate^2 "
                                   "(0 = Poisson)", 0.0, 10.0)
    snr_median: float = _opt(3.0, "median single-spike SNR: peak dF of one spike / noise std at baseline",
                             0.05, 1000.0)
    snr_log_sd: float = _opt(0.5, "spread of per-neuron SNR (sd of its natural log)", 0.0, 3.0)
    neuropil_coefficient: float = _opt(0.7, "weight of the neuropil signal added to each ROI", 0.0, 2.0)
    drift_fraction: float = _opt(0.03, "sd of the slow baseline drift, as a fraction of F0", 0.0, 1.0)
    drift_tau_s: float = _opt(60.0, "time constant of the slow baseline drift (s)", 1.0, 1.0e5)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"RigConfig.{f.name} must be an int, got {value!r}")
            elif f.type in ("float", float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"RigConfig.{f.name} must be a number, got {value!r}")
                value = float(value)
                if not math.isfinite(value):
                    raise ConfigError(f"RigConfig.{f.name} must be finite, got {value!r}")
                object.__setattr__(self, f.name, value)
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            if lo is not None and value < lo:
                raise ConfigError(f"RigConfig.{f.name} = {value!r} is below its minimum {lo}")
            if hi is not None and value > hi:
                raise ConfigError(f"RigConfig.{f.name} = {value!r} is above its maximum {hi}")
        if self.indicator not in INDICATORS:
            raise ConfigError(f"RigConfig.indicator = {self.indicator!r} is unknown; "
                              f"choose one of {sorted(INDICATORS)}")

    @property
    def indicator_preset(self) -> IndicatorPreset:
        return INDICATORS[self.indicator]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RigConfig:
        """Build from a mapping; unknown keys raise ``ConfigError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown RigConfig key(s): {', '.join(map(repr, unknown))}; "
                              f"known keys: {', '.join(sorted(known))}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RigConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)
