"""Spikes, calcium and ROI fluorescence of the virtual rig (two-photon imaging model).

Per neuron n and frame t:

* spikes ``s ~ Poisson(rate * G)``, ``G ~ Gamma(1/d, d)`` (mean 1; ``d`` =
  ``spike_dispersion``; ``d = 0``: plain Poisson), so ``var(s) = rate + d * rate^2``;
* calcium ``c_t = (g_d + g_r) c_{t-1} - g_d g_r c_{t-2} + s_t`` (AR(2), the sampled
  double exponential ``exp(-t/tau_decay) - exp(-t/tau_rise)``, ``g = exp(-dt/tau)``);
  ``dff = dff_per_spike * c / peak`` so one spike peaks at ``dff_per_spike``; with an
  indicator that saturates (``IndicatorPreset.saturation_spikes`` n > 0) that becomes
  ``dff_per_spike * x (1 + 1/n) / (1 + x/n)`` with ``x = c / peak`` (linear presets skip
  this step, so their numbers are unchanged);
* neuropil ``Fneu = neuropil_f0 * (1 + W z_t + 0.3 * mean_n dff)``: ``z`` are six
  Ornstein-Uhlenbeck components (sd 0.08, tau 2 s), spatially smooth over the FOV (``W``);
* drift ``D = d_n(t) + d_shared(t)``: Ornstein-Uhlenbeck, sd ``drift_fraction`` (shared:
  half of it), tau ``drift_tau_s``;
* ``F = f0 (1 + D) (1 + dff) + neuropil_coefficient * Fneu + noise``, noise Gaussian
  with variance ``nu_n * F_clean`` (shot-noise-like), ``nu_n`` set from the neuron's SNR
  (``dff_per_spike * f0 / noise sd at baseline``).

``ImagingState`` carries calcium, drift and neuropil state across trials, so a stream of
trials is one continuous session. Imports numpy only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from rt_decoder.sim.config import RigConfig

_NEUROPIL_SD = 0.08
_NEUROPIL_TAU_S = 2.0
_NEUROPIL_POPULATION_WEIGHT = 0.3


def sample_spikes(rates: np.ndarray, dispersion: float, rng: np.random.Generator) -> np.ndarray:
    """Gamma-Poisson spike counts from expected counts ``rates`` (T, N); returns float32 (T, N)."""
    lam = np.asarray(rates, dtype=np.float32)
    if dispersion > 0.0:
        shape = 1.0 / dispersion
        lam = lam * rng.standard_gamma(shape, size=lam.shape, dtype=np.float32) * np.float32(dispersion)
    return rng.poisson(lam).astype(np.float32)


@dataclass
class ImagingState:
    """Mutable state of the imaging model between frames (all float64, per neuron (N,))."""

    calcium_1: np.ndarray  # c_{t-1}
    calcium_2: np.ndarray  # c_{t-2}
    drift: np.ndarray
    shared_drift: float
    neuropil: np.ndarray  # (N_NEUROPIL_COMPONENTS,)

    def copy(self) -> ImagingState:
        return dataclasses.replace(self, calcium_1=self.calcium_1.copy(), calcium_2=self.calcium_2.copy(),
                                   drift=self.drift.copy(), neuropil=self.neuropil.copy())


class Imaging:
    """The imaging model of one population (precomputed per-neuron constants)."""

    def __init__(self, params: np.ndarray, neuropil_weights: np.ndarray, config: RigConfig) -> None:
        self.config = config
        dt = 1.0 / config.frame_rate_hz
        g_d = np.exp(-dt / params["tau_decay_s"].astype(np.float64))
        g_r = np.exp(-dt / params["tau_rise_s"].astype(np.float64))
        self.phi1 = (g_d + g_r).astype(np.float32)
        self.phi2 = (-g_d * g_r).astype(np.float32)
        # peak of the impulse response h_t = (g_d^{t+1} - g_r^{t+1}) / (g_d - g_r)
        t = np.arange(0, int(np.ceil(5.0 * config.frame_rate_hz)) + 2)[:, None]
        denom = np.where(np.abs(g_d - g_r) < 1e-9, 1e-9, g_d - g_r)
        peak = ((g_d[None, :] ** (t + 1) - g_r[None, :] ** (t + 1)) / denom[None, :]).max(axis=0)
        self.peak = peak
        self.dff_scale = (params["dff_per_spike"] / peak).astype(np.float32)
        self.saturation_spikes = float(config.indicator_preset.saturation_spikes)
        self._inv_dff_per_spike = (1.0 / params["dff_per_spike"]).astype(np.float32)
        self.f0 = params["f0"].astype(np.float32)
        self.neuropil_f0 = params["neuropil_f0"].astype(np.float32)
        self.weights = neuropil_weights
        f_base = self.f0 + config.neuropil_coefficient * self.neuropil_f0
        noise_sd = params["dff_per_spike"] * params["f0"] / params["snr"]
        self.nu = (noise_sd.astype(np.float64) ** 2 / f_base).astype(np.float32)
        self.n = params.size

    def initial_state(self, mean_rates: np.ndarray, rng: np.random.Generator) -> ImagingState:
        """Stationary state: calcium at its mean under ``mean_rates`` (N,), drift/neuropil drawn."""
        c = mean_rates.astype(np.float64) / (1.0 - self.phi1.astype(np.float64) - self.phi2)
        sd = self.config.drift_fraction
        return ImagingState(
            calcium_1=c.copy(), calcium_2=c.copy(),
            drift=rng.normal(0.0, sd, self.n), shared_drift=float(rng.normal(0.0, sd / 2.0)),
            neuropil=np.asarray(rng.normal(0.0, _NEUROPIL_SD, self.weights.shape[1]), dtype=np.float64))

    def expected_dff(self, rates: np.ndarray, state: ImagingState) -> np.ndarray:
        """Calcium dF/F driven by expected counts instead of spikes (no noise), (T, N) float32."""
        return self._calcium(rates, state.copy())

    def _calcium(self, spikes: np.ndarray, state: ImagingState) -> np.ndarray:
        t_n = spikes.shape[0]
        out = np.empty((t_n, self.n), dtype=np.float32)
        c1 = state.calcium_1.astype(np.float32)
        c2 = state.calcium_2.astype(np.float32)
        for t in range(t_n):
            c = self.phi1 * c1 + self.phi2 * c2 + spikes[t]
            out[t] = c
            c2, c1 = c1, c
        state.calcium_1 = c1.astype(np.float64)
        state.calcium_2 = c2.astype(np.float64)
        out *= self.dff_scale[None, :]
        if self.saturation_spikes > 0.0:  # saturating indicator (linear presets never come here)
            n_sat = np.float32(self.saturation_spikes)
            x = out * self._inv_dff_per_spike[None, :]
            out *= (np.float32(1.0) + np.float32(1.0) / n_sat) / (np.float32(1.0) + x / n_sat)
        return out

    def run(self, spikes: np.ndarray, state: ImagingState, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
        """Image one block of frames, advancing ``state`` in place.

        Parameters
        ----------
        spikes : ndarray, shape (T, N)
            Spike counts per frame.
        state : ImagingState
            State at the frame before the block; updated to the block's last frame.
        rng : numpy.random.Generator
            Source of drift, neuropil and shot noise.

        Returns
        -------
        dff : ndarray of float32, shape (T, N)
            Calcium-driven dF/F.
        fluorescence : ndarray of float32, shape (T, N)
            Raw ROI fluorescence (a.u.) with F0, neuropil, drift and noise.
        """
        cfg = self.config
        t_n = spikes.shape[0]
        dff = self._calcium(spikes, state)
        # slow drift (per neuron + shared)
        a = float(np.exp(-1.0 / (cfg.drift_tau_s * cfg.frame_rate_hz)))
        sd = cfg.drift_fraction * np.sqrt(1.0 - a * a)
        eps = rng.standard_normal((t_n, self.n), dtype=np.float32)
        eps_shared = np.asarray(rng.standard_normal(t_n), dtype=np.float64)
        drift = np.empty((t_n, self.n), dtype=np.float32)
        d = state.drift.astype(np.float32)
        a32 = np.float32(a)
        sd32 = np.float32(sd)
        shared = state.shared_drift
        for t in range(t_n):
            d = a32 * d + sd32 * eps[t]
            shared = a * shared + 0.5 * sd * eps_shared[t]
            drift[t] = d + np.float32(shared)
        state.drift = d.astype(np.float64)
        state.shared_drift = float(shared)
        # neuropil components
        b = float(np.exp(-1.0 / (_NEUROPIL_TAU_S * cfg.frame_rate_hz)))
        eps_np = np.asarray(rng.standard_normal((t_n, self.weights.shape[1]))) * (_NEUROPIL_SD * np.sqrt(1.0 - b * b))
        z = np.empty((t_n, self.weights.shape[1]))
        zt = state.neuropil.copy()
        for t in range(t_n):
            zt = b * zt + eps_np[t]
            z[t] = zt
        state.neuropil = zt
        modulation = (z.astype(np.float32) @ self.weights.T
                      + np.float32(_NEUROPIL_POPULATION_WEIGHT) * dff.mean(axis=1, keepdims=True))
        clean = self.f0[None, :] * (1.0 + drift) * (1.0 + dff)
        clean += np.float32(cfg.neuropil_coefficient) * self.neuropil_f0[None, :] * (1.0 + modulation)
        noise = rng.standard_normal((t_n, self.n), dtype=np.float32)
        noise *= np.sqrt(self.nu[None, :] * np.maximum(clean, 0.0))
        clean += noise
        return dff, clean
