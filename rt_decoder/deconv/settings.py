"""Settings of the online deconvolution stage (frozen, validated, unknown keys rejected).

Each field carries its meaning, bounds and choices (``rt_decoder.settings.option``), so the
service's ``[deconv]`` table is this class; ``__post_init__`` keeps its own checks
(including those between fields). This module imports the standard library,
``rt_decoder.errors`` and ``rt_decoder.settings`` only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rt_decoder.errors import ConfigError
from rt_decoder.settings import option

MODELS = ("auto", "ar1", "ar2")
PENALTIES = ("s_min", "l1")
KINETICS = ("estimate", "per_roi", "fixed")


@dataclass(frozen=True)
class IndicatorKinetics:
    """Published single-spike kinetics of a calcium indicator (prior of the estimation).

    ``tau_rise_s`` / ``tau_decay_s``: time constants (s) of the double exponential
    ``exp(-t/tau_decay) - exp(-t/tau_rise)`` (half-times of the papers converted; sources in
    docs/indicators.md). The virtual rig's presets (``rt_decoder.sim.INDICATORS``) use the
    same values.
    """

    tau_rise_s: float
    tau_decay_s: float


#: ``DeconvSettings.indicator`` presets (lower-case names); "auto" = no preset
INDICATOR_KINETICS: dict[str, IndicatorKinetics] = {
    "gcamp6s": IndicatorKinetics(tau_rise_s=0.065, tau_decay_s=1.25),
    "gcamp6f": IndicatorKinetics(tau_rise_s=0.045, tau_decay_s=0.40),
    "gcamp7f": IndicatorKinetics(tau_rise_s=0.035, tau_decay_s=0.45),
    "gcamp8f": IndicatorKinetics(tau_rise_s=0.007, tau_decay_s=0.12),
    "gcamp8m": IndicatorKinetics(tau_rise_s=0.012, tau_decay_s=0.25),
    "gcamp8s": IndicatorKinetics(tau_rise_s=0.015, tau_decay_s=0.45),
}
INDICATORS = ("auto", *INDICATOR_KINETICS)
NORMALISE = ("dff", "none")
BASELINE = ("tracked", "fixed")


@dataclass(frozen=True)
class DeconvSettings:
    """How fluorescence becomes activity, per ROI, frame by frame.

    Parameters
    ----------
    model : {"auto", "ar1", "ar2"}
        Calcium model: AR(1) (decay only), AR(2) (rise and decay), or ``"auto"``: chosen
        per ROI from the initial batch (AR(2) where its fit is better by BIC and the rise
        time is resolvable at the frame rate; see ``rt_decoder.deconv._estimate``).
    indicator : {"auto", "gcamp6s", "gcamp6f", "gcamp7f", "gcamp8f", "gcamp8m", "gcamp8s"}
        Calcium indicator: a preset gives the prior for the kinetics (published rise and
        decay times, ``INDICATOR_KINETICS``; it replaces ``tau_decay_s``/``tau_rise_s``),
        which dominates where the initial batch is short, noisy or holds few ROIs; ``"auto"``
        uses ``tau_decay_s``/``tau_rise_s`` as a weak prior.
    penalty : {"s_min", "l1"}
        Sparsity: a minimum spike size, or an L1 penalty (lambda), both given as
        ``penalty_sigmas`` times the ROI's noise level (dF/F units).
    penalty_sigmas : float
        Size of the sparsity term in noise standard deviations (0 = none), in [0, 20].
    lag_frames : int
        Readout lag: the activity frame emitted for input frame t estimates frame
        ``t - lag_frames`` (OASIS revises recent frames as data arrive), in [0, history_frames).
    revise_frames : int
        How long an estimate is revised: the estimate of frame u is final once it is read
        at frame ``u + revise_frames`` (``recent`` returns it from then on, and so does the
        lagged readout for ``lag_frames > revise_frames``), in [0, history_frames). Default 5:
        on the virtual rig's indicators the estimate at a lag of 5 frames was as good as or
        better than the fully revised one (much better with mis-estimated kinetics, see the
        README), so later revisions are not used.
    history_frames : int
        How many recent frames ``OnlineDeconvolver.recent`` can return, in [1, 4096].
    max_pools : int
        OASIS pools kept per ROI (memory = N x max_pools x 36 B for AR(1), 76 B for AR(2));
        when full the oldest pool is committed and can no longer be revised, in [4, 4096].
        Default 4: on simulated SNR 3.3 traces spike correlation at lags 5 and 30 was the
        same (to 0.001) for 4, 6, 8 and 64 pools, while at 100,000 ROIs the state then fits
        in this machine's 32 MB L3 (AR(2): 4.4 ms per frame with 4 pools, 14 ms with 8).
    init_frames : int
        Length of the initial batch from which per-ROI parameters are estimated, in
        [30, 100000]. Ignored when parameters are given to the stage.
    kinetics : {"estimate", "per_roi", "fixed"}
        ``"estimate"``: per-ROI decay (and rise) from the initial batch, shrunk towards the
        population's median and the indicator prior (empirical Bayes in log time constant);
        ``"per_roi"``: each ROI's own estimate only (clipped to the bounds below, falling back
        to the prior); ``"fixed"``: the prior's values for every ROI.
    tau_decay_s, tau_rise_s : float
        Indicator decay / rise time constants in seconds (fixed kinetics, and fallback).
    tau_decay_min_s, tau_decay_max_s : float
        Bounds for the estimated decay time constant, seconds.
    normalise : {"dff", "none"}
        Deconvolve dF/F = (F - F0) / max(F0, sigma_F), or F - F0.
    baseline : {"tracked", "fixed"}
        Track F0 online (a running low quantile, robust to activity, follows slow drift),
        or keep the initial-batch value.
    baseline_quantile : float
        Quantile the tracker follows, in [0.01, 0.5]; F0 = quantile + z * sigma_F with z
        the Gaussian offset of that quantile, so F0 is the noise-free baseline.
    baseline_rate_sigmas_per_s : float
        Tracker step: this many raw-noise standard deviations per second, in (0, 100].
    reestimate_every_s : float
        Slow re-estimation (0 = off), seconds of stream, in [0, 86400]: every so often the
        noise level, penalty and (with ``kinetics="estimate"``) kinetics are re-estimated
        from the last ``init_frames`` raw frames (kept in memory only when enabled:
        N x init_frames x 4 bytes). See ``OnlineDeconvolver.reestimate``.

    Notes
    -----
    Defaults were chosen by measurement on the simulated traces of ``benchmarks/deconv.py``
    (known kinetics, lag 5): any minimum spike size or L1 penalty lowered the spike
    correlation (s_min of 1 sigma: 0.852 vs 0.860 at SNR 3.3, 0.229 vs 0.313 at SNR 1; L1
    up to 10 sigma: 0.001-0.01 lower), so the default is no penalty; baseline quantile
    0.05 beat 0.1 and 0.2 (AR(2) data, SNR 3.3: 0.832 / 0.822 / 0.800).
    """

    model: str = option("auto", "calcium model: AR(1), AR(2), or auto (chosen per ROI from the initial batch)",
                        choices=MODELS)
    indicator: str = option("auto", "indicator preset giving the kinetics prior (replaces tau_decay_s/tau_rise_s); "
                            "auto = tau_decay_s/tau_rise_s as a weak prior", choices=INDICATORS)
    penalty: str = option("s_min", "sparsity: minimum spike size or L1 penalty", choices=PENALTIES)
    penalty_sigmas: float = option(0.0, "size of the sparsity term in noise standard deviations (0 = none)",
                                   0.0, 20.0)
    lag_frames: int = option(5, "readout lag: the activity frame emitted for input frame t estimates frame "
                             "t - lag_frames (< history_frames)", 0, 4095)
    revise_frames: int = option(5, "an estimate is final once read revise_frames after its frame "
                                "(< history_frames)", 0, 4095)
    history_frames: int = option(64, "recent frames the stage can return (the reconstruction's targets)", 1, 4096)
    max_pools: int = option(4, "OASIS pools kept per ROI; when full the oldest is committed", 4, 4096)
    init_frames: int = option(300, "initial batch from which per-ROI parameters are estimated", 30, 100_000)
    kinetics: str = option("estimate", "estimate (per ROI, shrunk to the population and prior) | per_roi "
                           "(own estimate only) | fixed (the prior for every ROI)", choices=KINETICS)
    tau_decay_s: float = option(1.0, "decay time constant, s (fixed kinetics, fallback; within "
                                "[tau_decay_min_s, tau_decay_max_s])", 1e-3, 60.0)
    tau_rise_s: float = option(0.08, "rise time constant, s (< tau_decay_s unless model = ar1)", 1e-4, 10.0)
    tau_decay_min_s: float = option(0.1, "lower bound of the estimated decay time constant, s", 1e-3, 60.0)
    tau_decay_max_s: float = option(5.0, "upper bound of the estimated decay time constant, s", 1e-3, 60.0)
    normalise: str = option("dff", "deconvolve dF/F = (F - F0) / max(F0, sigma_F), or F - F0", choices=NORMALISE)
    baseline: str = option("tracked", "F0 tracked online (running low quantile) or fixed at the initial batch",
                           choices=BASELINE)
    baseline_quantile: float = option(0.05, "quantile the baseline tracker follows", 0.01, 0.5)
    baseline_rate_sigmas_per_s: float = option(1.0, "baseline tracker step in raw-noise standard deviations per "
                                               "second (> 0)", 0.0, 100.0)
    reestimate_every_s: float = option(0.0, "re-estimate noise, penalty and kinetics this often, s of stream "
                                       "(0 = off)", 0.0, 86400.0)

    def __post_init__(self) -> None:
        for name, allowed in (("model", MODELS), ("indicator", INDICATORS), ("penalty", PENALTIES),
                              ("kinetics", KINETICS),
                              ("normalise", NORMALISE), ("baseline", BASELINE)):
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"DeconvSettings.{name} must be one of {allowed}, got {value!r}")
        ints = {"lag_frames": (0, 4095), "revise_frames": (0, 4095), "history_frames": (1, 4096),
                "max_pools": (4, 4096),
                "init_frames": (30, 100_000)}
        for name, (lo, hi) in ints.items():
            ivalue = getattr(self, name)
            if isinstance(ivalue, bool) or not isinstance(ivalue, int) or not lo <= ivalue <= hi:
                raise ConfigError(f"DeconvSettings.{name} must be an int in [{lo}, {hi}], got {ivalue!r}")
        for name in ("lag_frames", "revise_frames"):
            if getattr(self, name) >= self.history_frames:
                raise ConfigError(f"DeconvSettings.{name} ({getattr(self, name)}) must be < "
                                  f"history_frames ({self.history_frames})")
        floats = {"penalty_sigmas": (0.0, 20.0, True), "tau_decay_s": (1e-3, 60.0, True),
                  "tau_rise_s": (1e-4, 10.0, True), "tau_decay_min_s": (1e-3, 60.0, True),
                  "tau_decay_max_s": (1e-3, 60.0, True), "baseline_quantile": (0.01, 0.5, True),
                  "baseline_rate_sigmas_per_s": (0.0, 100.0, False), "reestimate_every_s": (0.0, 86400.0, True)}
        for name, (flo, fhi, lo_incl) in floats.items():
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (flo <= value if lo_incl else flo < value) and value <= fhi
            if not ok:
                raise ConfigError(f"DeconvSettings.{name} must be a number in "
                                  f"{'[' if lo_incl else '('}{flo}, {fhi}], got {value!r}")
        if not self.tau_decay_min_s <= self.tau_decay_s <= self.tau_decay_max_s:
            raise ConfigError(f"DeconvSettings.tau_decay_s ({self.tau_decay_s}) must lie in "
                              f"[tau_decay_min_s, tau_decay_max_s] = [{self.tau_decay_min_s}, {self.tau_decay_max_s}]")
        if self.model != "ar1" and self.tau_rise_s >= self.tau_decay_s:
            raise ConfigError(f"DeconvSettings.tau_rise_s ({self.tau_rise_s}) must be < tau_decay_s ({self.tau_decay_s})")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DeconvSettings":
        """Build from a mapping (e.g. a TOML table); unknown keys raise ConfigError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown DeconvSettings keys: {unknown} (known: {sorted(known)})")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_model_defaults(self, model_deconv: Mapping[str, Any], explicit_keys: Iterable[str]) -> DeconvSettings:
        """These settings over a model's recorded ones: the deconvolution a decoding service runs.

        A model records the deconvolution its training responses were made with (manifest
        ``training.deconv_settings``, ``LiveStage.model_deconv``); the service deconvolves the
        same way unless its configuration set a key explicitly.

        Parameters
        ----------
        model_deconv : mapping
            The model's recorded ``DeconvSettings`` keys (may be empty).
        explicit_keys : iterable of str
            Fields of ``self`` that the configuration set; they win over the model's.

        Raises
        ------
        ConfigError
            a recorded key unknown to this version, or a combination that does not validate.
        """
        explicit = set(explicit_keys)
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(model_deconv) - known)
        if unknown:
            raise ConfigError(f"the model's recorded deconvolution settings have unknown keys {unknown} "
                              f"(known: {sorted(known)})")
        table = {**dict(model_deconv), **{k: getattr(self, k) for k in explicit}}
        try:
            return dataclasses.replace(DeconvSettings(), **table)
        except ConfigError as exc:
            raise ConfigError(f"[deconv] over the model's recorded settings {dict(model_deconv)}: {exc}") from None

    @property
    def prior_kinetics(self) -> tuple[float, float]:
        """(tau_decay_s, tau_rise_s) of the prior: the indicator preset's, or the fields'."""
        k = INDICATOR_KINETICS.get(self.indicator)
        return (k.tau_decay_s, k.tau_rise_s) if k is not None else (self.tau_decay_s, self.tau_rise_s)


#: The deconvolution that makes an encoder's training responses (``rt-decoder simulate
#: --responses deconv``, recorded in the dataset's ``meta/rig.json`` and the model's manifest
#: as ``deconv_settings``): AR(1) with per-ROI kinetics and the fully revised readout. For
#: decoding it tracks the firing rate best (2026-12-01, default rig, GCaMP6s, held-out trial:
#: per-neuron corr with the true rate 0.329, against 0.314 for ``model = "auto"``, which
#: picks AR(2) and finds spikes better). A service that decodes with a model uses the model's
#: recorded settings unless its ``[deconv]`` table says otherwise, so the live responses are
#: the ones the model was trained on.
ENCODER_TRAINING_DECONV: dict[str, Any] = {"model": "ar1", "kinetics": "per_roi", "revise_frames": 63}
