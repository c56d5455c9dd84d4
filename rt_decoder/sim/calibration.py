"""How noisy is the virtual rig? The single-trial ceiling any encoder can reach.

Definition (``ceiling``): for each neuron, the Pearson correlation over time between its
noiseless expected activity (``Trial.rates``) and its sampled single-trial spike counts
(``Trial.spikes``), frames of all trials concatenated, the first ``skip_frames`` (50, as
in the Sensorium 2023 metric) of each trial left out; then the mean over neurons
(neurons with zero variance in either signal are left out and counted).

Also reported, same definition with other single-trial signals:

* ``fluorescence``: expected calcium dF/F (calcium model driven by ``rates``, no noise)
  against the raw ROI fluorescence (neuropil, drift and shot noise included);
* ``deconvolved``: ``rates`` against the output of a deconvolution function applied to the
  raw fluorescence (when one is passed; e.g. ``rt_decoder.deconv.deconvolve_array``).

Measured with the defaults (``python -m benchmarks.calibration``; 1,000 neurons x 10
trials, seed 0): ceiling 0.393 (median 0.408, p10-p90 0.12-0.64; mouse V1 encoders reach
0.29 on real data); fluorescence 0.75 (GCaMP6s) / 0.62 (GCaMP8m); deconvolved 0.31 /
0.36; mean expected rate 5.8 Hz (median neuron 3.3 Hz). The main knobs are
``RigConfig.response_gain`` (stimulus-driven rate) and ``spike_dispersion``.

Imports numpy and rt_decoder.sim only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from rt_decoder.sim.rig import VirtualRig


def per_neuron_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation over axis 0 of two (T, N) arrays; NaN where either is constant."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    num = (a * b).sum(axis=0)
    den = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    out = np.full(a.shape[1], np.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


@dataclass(frozen=True)
class CalibrationReport:
    """Calibration figures of one rig configuration (correlations are means over neurons)."""

    n_neurons: int
    n_trials: int
    skip_frames: int
    ceiling_mean: float              # corr(rates, spikes), mean over neurons
    ceiling_median: float
    ceiling_p10: float
    ceiling_p90: float
    n_constant_neurons: int          # left out (zero variance)
    fluorescence_mean: float         # corr(expected dF/F, raw fluorescence)
    deconvolved_mean: float | None   # corr(rates, deconvolved fluorescence), if measured
    mean_rate_hz: float              # mean expected rate over neurons and frames
    median_neuron_rate_hz: float
    rates_cv_median: float           # median over neurons of std/mean of rates over time
    mean_spikes_per_frame: float

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def measure_calibration(rig: VirtualRig, trial_ids: Sequence[int], *, skip_frames: int = 50,
                        deconvolve: Callable[[np.ndarray, float], np.ndarray] | None = None
                        ) -> CalibrationReport:
    """Simulate ``trial_ids`` and compute the calibration figures (see the module docstring)."""
    rates, spikes, exp_f, fluo, deconv = [], [], [], [], []
    fr = rig.config.frame_rate_hz
    for tid in trial_ids:
        tr = rig.trial(tid)
        sl = slice(min(skip_frames, tr.n_frames - 2), None)
        state = rig.initial_imaging_state(tr.rates, tid)
        rates.append(tr.rates[sl])
        spikes.append(tr.spikes[sl])
        exp_f.append(rig.imaging.expected_dff(tr.rates, state)[sl])
        fluo.append(tr.fluorescence[sl])
        if deconvolve is not None:
            deconv.append(np.asarray(deconvolve(tr.fluorescence, fr))[sl])
    r = np.concatenate(rates)
    s = np.concatenate(spikes)
    c = per_neuron_correlation(r, s)
    ok = np.isfinite(c)
    cf = per_neuron_correlation(np.concatenate(exp_f), np.concatenate(fluo))
    cd = None
    if deconvolve is not None:
        cdv = per_neuron_correlation(r, np.concatenate(deconv))
        cd = float(np.nanmean(cdv))
    neuron_mean = r.mean(axis=0)
    cv = r.std(axis=0) / np.maximum(neuron_mean, 1e-12)
    return CalibrationReport(
        n_neurons=rig.n_neurons, n_trials=len(trial_ids), skip_frames=skip_frames,
        ceiling_mean=float(np.mean(c[ok])) if ok.any() else float("nan"),
        ceiling_median=float(np.median(c[ok])) if ok.any() else float("nan"),
        ceiling_p10=float(np.percentile(c[ok], 10)) if ok.any() else float("nan"),
        ceiling_p90=float(np.percentile(c[ok], 90)) if ok.any() else float("nan"),
        n_constant_neurons=int((~ok).sum()),
        fluorescence_mean=float(np.nanmean(cf)),
        deconvolved_mean=cd,
        mean_rate_hz=float(r.mean() * fr),
        median_neuron_rate_hz=float(np.median(neuron_mean) * fr),
        rates_cv_median=float(np.median(cv)),
        mean_spikes_per_frame=float(s.mean()),
    )
