"""The simulated mouse V1 population: receptive fields, response model, imaging parameters.

Response model of neuron n at frame t (all float32, vectorised over neurons):

1. the frame ``s = (video - 127.5) / 127.5`` is shifted by the pupil position
   (``pupil_x, pupil_y`` degrees / ``DEG_PER_PX``, bilinear, edges clamped): receptive
   fields move with the eye;
2. a linear spatial stage: zero-mean Gabor filters (a dense (36*64, N + N_complex) filter
   bank, one matrix product per trial), normalised so that a matched full-contrast grating
   gives 1; complex cells also have the quadrature (odd) filter;
3. a biphasic temporal filter per neuron (difference of two gamma-shaped lobes, ~0.5 s
   long, causal; the screen is grey before a trial) applied to each linear response;
4. simple cells keep the signed linear response, complex cells take the energy
   ``sqrt(even^2 + odd^2)`` (phase invariant);
5. divisive contrast normalisation by ``c50 + C``, with C the local RMS contrast
   (Gaussian pool, sigma 4 px, low-passed 0.1 s) at the RF centre;
6. a static nonlinearity ``amplitude * (softplus(4 (4 x - threshold)) / 4) ** exponent``;
7. ``rate = behaviour_gain * (baseline + response_gain * drive)`` with
   ``behaviour_gain = clip(1 + running_gain * tanh(speed / 10 cm/s) + pupil_gain * z(pupil),
   0.2, 3)``; rates are in spikes per frame.

Geometry: 2.2 degrees of visual angle per screen pixel; RF centres fill an ellipse covering
``rf_field_fraction`` of the 36 x 64 screen (scatter 2 px around a linear retinotopic map);
cortical positions (micrometres) follow the same map over a 614 x 614 um field of view
(512 x 512 FOV pixels of 1.2 um) on four planes 200-350 um deep.

Imports numpy and scipy.ndimage only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from rt_decoder.errors import ShapeMismatchError
from rt_decoder.messages import N_BEHAVIOUR, STIMULUS_SHAPE
from rt_decoder.sim.behaviour import PUPIL_MEAN, PUPIL_SD, RUNNING_SCALE_CM_S
from rt_decoder.sim.config import RigConfig

DEG_PER_PX = 2.2
FOV_SIZE_PX = 512
UM_PER_FOV_PX = 1.2
N_NEUROPIL_COMPONENTS = 6

_SOFTPLUS_SHARPNESS = 4.0
_DRIVE_SCALE = 4.0
_CONTRAST_POOL_SIGMA_PX = 4.0
_CONTRAST_POOL_TAU_S = 0.1
_TEMPORAL_KERNEL_S = 0.5
_CHUNK = 2048

#: Per-neuron ground truth, saved as meta/neurons/rf_params.npy (a structured array).
NEURON_DTYPE = np.dtype([
    ("y_px", "<f4"), ("x_px", "<f4"),                      # RF centre on the screen
    ("sigma_px", "<f4"), ("aspect", "<f4"),                # Gabor envelope sd, minor/major ratio
    ("orientation_rad", "<f4"), ("sf_cyc_per_px", "<f4"), ("phase_rad", "<f4"),
    ("is_complex", "u1"),
    ("tau_fast_s", "<f4"), ("tau_slow_s", "<f4"), ("biphasic_ratio", "<f4"),
    ("c50", "<f4"), ("threshold", "<f4"), ("exponent", "<f4"),
    ("amplitude_hz", "<f4"), ("baseline_hz", "<f4"),
    ("running_gain", "<f4"), ("pupil_gain", "<f4"),
    ("cortex_x_um", "<f4"), ("cortex_y_um", "<f4"), ("cortex_z_um", "<f4"),
    ("f0", "<f4"), ("neuropil_f0", "<f4"), ("dff_per_spike", "<f4"),
    ("tau_rise_s", "<f4"), ("tau_decay_s", "<f4"), ("snr", "<f4"),
])

#: Median stimulus-driven amplitude (Hz) before ``response_gain``; set by calibration.
AMPLITUDE_MEDIAN_HZ = 50.0
BASELINE_MEDIAN_HZ = 1.0


def shift_frames(frames: np.ndarray, dy_px: np.ndarray, dx_px: np.ndarray) -> np.ndarray:
    """Shift each frame by a sub-pixel offset: ``out[t, y, x] = frames[t, y + dy[t], x + dx[t]]``.

    Bilinear interpolation, edges clamped. frames (T, H, W) float32; dy, dx (T,) pixels.
    """
    t_n, h, w = frames.shape
    ys = np.clip(np.arange(h)[None, :] + dy_px[:, None], 0.0, h - 1.0)
    xs = np.clip(np.arange(w)[None, :] + dx_px[:, None], 0.0, w - 1.0)
    y0 = np.minimum(np.floor(ys).astype(np.intp), h - 2)
    x0 = np.minimum(np.floor(xs).astype(np.intp), w - 2)
    fy = (ys - y0).astype(np.float32)[:, :, None]
    fx = (xs - x0).astype(np.float32)[:, None, :]
    ti = np.arange(t_n)[:, None, None]
    r0 = y0[:, :, None]
    c0 = x0[:, None, :]
    top = frames[ti, r0, c0] * (1.0 - fx) + frames[ti, r0, c0 + 1] * fx
    bottom = frames[ti, r0 + 1, c0] * (1.0 - fx) + frames[ti, r0 + 1, c0 + 1] * fx
    return (top * (1.0 - fy) + bottom * fy).astype(np.float32, copy=False)


def gabor_bank(params: np.ndarray, shape: tuple[int, int] = STIMULUS_SHAPE,
               quadrature: bool = False) -> np.ndarray:
    """Zero-mean Gabor filters of ``params`` (NEURON_DTYPE), (H*W, n) float32.

    Each filter is normalised so a full-contrast grating matched in orientation, spatial
    frequency and phase gives a response of about 1. ``quadrature`` gives the odd (sine)
    partner instead of the even (cosine) filter.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    yy = yy.reshape(-1, 1).astype(np.float32)
    xx = xx.reshape(-1, 1).astype(np.float32)
    out = np.empty((h * w, params.size), dtype=np.float32)
    for a in range(0, params.size, _CHUNK):
        p = params[a:a + _CHUNK]
        dy = yy - p["y_px"][None, :]
        dx = xx - p["x_px"][None, :]
        cos_o = np.cos(p["orientation_rad"])[None, :]
        sin_o = np.sin(p["orientation_rad"])[None, :]
        xr = dx * cos_o + dy * sin_o
        yr = -dx * sin_o + dy * cos_o
        env = np.exp(-(xr * xr + (p["aspect"][None, :] * yr) ** 2) / (2.0 * p["sigma_px"][None, :] ** 2))
        arg = (2.0 * np.pi) * p["sf_cyc_per_px"][None, :] * xr + p["phase_rad"][None, :]
        carrier = np.sin(arg) if quadrature else np.cos(arg)
        g = env * carrier
        env_sum = env.sum(axis=0, keepdims=True)
        g -= env * (g.sum(axis=0, keepdims=True) / env_sum)  # remove the DC component
        g /= 0.5 * env_sum
        out[:, a:a + _CHUNK] = g
    return out


def temporal_kernels(params: np.ndarray, frame_rate_hz: float) -> np.ndarray:
    """Biphasic causal temporal kernels, (K, n) float32, K = ceil(0.5 s * frame rate).

    ``h(t) = g(t; tau_fast) / sum - biphasic_ratio * g(t; tau_slow) / sum`` with
    ``g(t; tau) = (t / tau)^3 exp(-t / tau)`` sampled at mid-frame times; the positive lobe
    sums to 1, so the kernel sums to ``1 - biphasic_ratio`` (transient cells).
    """
    k = max(2, int(np.ceil(_TEMPORAL_KERNEL_S * frame_rate_hz)))
    t = ((np.arange(k) + 0.5) / frame_rate_hz)[:, None]
    g1 = (t / params["tau_fast_s"][None, :]) ** 3 * np.exp(-t / params["tau_fast_s"][None, :])
    g2 = (t / params["tau_slow_s"][None, :]) ** 3 * np.exp(-t / params["tau_slow_s"][None, :])
    h = g1 / g1.sum(axis=0) - params["biphasic_ratio"][None, :] * g2 / g2.sum(axis=0)
    return h.astype(np.float32)


def causal_filter(x: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Per-column causal FIR filter: ``y[t, n] = sum_k kernels[k, n] * x[t - k, n]`` (x = 0 before t=0)."""
    y = x * kernels[0][None, :]
    tmp = np.empty_like(x)
    for k in range(1, min(kernels.shape[0], x.shape[0])):
        np.multiply(x[:-k], kernels[k][None, :], out=tmp[:-k])
        y[k:] += tmp[:-k]
    return y


def _sample_ellipse(n: int, rng: np.random.Generator) -> np.ndarray:
    """n points uniform in the unit disc, (n, 2)."""
    r = np.sqrt(rng.random(n))
    a = rng.uniform(0.0, 2.0 * np.pi, n)
    return np.stack([r * np.sin(a), r * np.cos(a)], axis=1)


class Population:
    """Parameters and response model of the simulated neurons (built from ``config.seed``).

    Attributes
    ----------
    params : ndarray, shape (N,), dtype NEURON_DTYPE
        Per-neuron ground truth (RF, temporal, nonlinearity, gains, imaging).
    cell_motor_coordinates_um : ndarray of float32, shape (N, 3)
        Cortical (x, y, z) positions in micrometres.
    roi_centres_px : ndarray of float32, shape (N, 2)
        ROI centres (y, x) in field-of-view pixels.
    neuropil_weights : ndarray of float32, shape (N, N_NEUROPIL_COMPONENTS)
        Loading of each ROI on the shared, spatially smooth neuropil components.
    """

    def __init__(self, config: RigConfig) -> None:
        self.config = config
        n = config.n_neurons
        h, w = STIMULUS_SHAPE
        ss = np.random.SeedSequence([config.seed, 0x5157, 0])
        rng_geo, rng_rf, rng_dyn, rng_img = (np.random.default_rng(s) for s in ss.spawn(4))
        p = np.zeros(n, dtype=NEURON_DTYPE)

        # --- geometry: ellipse of RF centres, linear retinotopic map to cortex
        area = config.rf_field_fraction * h * w
        aspect_screen = h / w  # semi-axis ratio y/x, as the screen's
        semi_x = min(np.sqrt(area / (np.pi * aspect_screen)), w / 2.0)
        semi_y = min(area / (np.pi * semi_x), h / 2.0)
        centre_y = h / 2.0 - 0.5 + rng_geo.uniform(-1.0, 1.0) * max(0.0, h / 2.0 - semi_y)
        centre_x = w / 2.0 - 0.5 + rng_geo.uniform(-1.0, 1.0) * max(0.0, w / 2.0 - semi_x)
        u = _sample_ellipse(n, rng_geo)  # (n, 2) in the unit disc, (y, x)
        p["y_px"] = np.clip(centre_y + semi_y * u[:, 0] + rng_geo.normal(0.0, 2.0, n), 0.0, h - 1.0)
        p["x_px"] = np.clip(centre_x + semi_x * u[:, 1] + rng_geo.normal(0.0, 2.0, n), 0.0, w - 1.0)
        fov_um = FOV_SIZE_PX * UM_PER_FOV_PX
        rot = rng_geo.uniform(-0.3, 0.3)
        cx = 0.45 * (u[:, 1] * np.cos(rot) - u[:, 0] * np.sin(rot))
        cy = 0.45 * (u[:, 1] * np.sin(rot) + u[:, 0] * np.cos(rot))
        p["cortex_x_um"] = np.clip(fov_um * (0.5 + cx) + rng_geo.normal(0.0, 15.0, n), 2.0, fov_um - 2.0)
        p["cortex_y_um"] = np.clip(fov_um * (0.5 - cy) + rng_geo.normal(0.0, 15.0, n), 2.0, fov_um - 2.0)
        p["cortex_z_um"] = 200.0 + 50.0 * rng_geo.integers(0, 4, n)
        self.ellipse = (float(centre_y), float(centre_x), float(semi_y), float(semi_x))

        # --- receptive fields (mouse V1 at 2.2 deg/px: sigma 2-5 px, 0.05-0.12 cyc/px)
        p["sigma_px"] = np.clip(rng_rf.lognormal(np.log(3.2), 0.25, n), 2.0, 5.0)
        p["aspect"] = rng_rf.uniform(0.5, 1.0, n)
        p["orientation_rad"] = rng_rf.uniform(0.0, np.pi, n)
        p["sf_cyc_per_px"] = rng_rf.uniform(0.05, 0.12, n)
        p["phase_rad"] = rng_rf.uniform(0.0, 2.0 * np.pi, n)
        p["is_complex"] = rng_rf.random(n) < config.complex_fraction

        # --- dynamics, nonlinearity, gains
        p["tau_fast_s"] = rng_dyn.uniform(0.012, 0.025, n)
        p["tau_slow_s"] = p["tau_fast_s"] * rng_dyn.uniform(1.6, 2.2, n)
        p["biphasic_ratio"] = rng_dyn.uniform(0.5, 0.85, n)
        p["c50"] = rng_dyn.uniform(0.05, 0.2, n)
        p["threshold"] = rng_dyn.uniform(0.0, 1.0, n)
        p["exponent"] = rng_dyn.uniform(1.2, 2.0, n)
        p["amplitude_hz"] = rng_dyn.lognormal(np.log(AMPLITUDE_MEDIAN_HZ), 0.5, n)
        p["baseline_hz"] = rng_dyn.lognormal(np.log(BASELINE_MEDIAN_HZ), 0.6, n)
        p["running_gain"] = np.clip(rng_dyn.normal(0.35, 0.3, n), -0.5, 1.5)
        p["pupil_gain"] = np.clip(rng_dyn.normal(0.1, 0.1, n), -0.3, 0.5)

        # --- imaging
        ind = config.indicator_preset
        p["f0"] = rng_img.lognormal(np.log(400.0), 0.4, n)
        p["neuropil_f0"] = p["f0"] * rng_img.uniform(0.4, 0.8, n)
        p["dff_per_spike"] = rng_img.lognormal(np.log(ind.dff_per_spike), 0.35, n)
        p["tau_rise_s"] = ind.tau_rise_s * rng_img.lognormal(0.0, 0.1, n)
        p["tau_decay_s"] = ind.tau_decay_s * rng_img.lognormal(0.0, 0.15, n)
        p["snr"] = config.snr_median * rng_img.lognormal(0.0, 1.0, n) ** config.snr_log_sd
        centres = rng_img.uniform(0.0, fov_um, size=(N_NEUROPIL_COMPONENTS, 2))
        d2 = ((p["cortex_x_um"][:, None] - centres[None, :, 0]) ** 2
              + (p["cortex_y_um"][:, None] - centres[None, :, 1]) ** 2)
        wts = np.exp(-d2 / (2.0 * 200.0 ** 2))
        self.neuropil_weights = (wts / wts.sum(axis=1, keepdims=True)).astype(np.float32)

        p.setflags(write=False)
        self.params = p
        self.cell_motor_coordinates_um = np.stack(
            [p["cortex_x_um"], p["cortex_y_um"], p["cortex_z_um"]], axis=1).astype(np.float32)
        self.roi_centres_px = (np.stack([p["cortex_y_um"], p["cortex_x_um"]], axis=1)
                               / UM_PER_FOV_PX).astype(np.float32)

        # --- derived, precomputed once
        self.complex_index = np.flatnonzero(p["is_complex"]).astype(np.intp)
        self.bank = np.concatenate(
            [gabor_bank(p), gabor_bank(p[self.complex_index], quadrature=True)], axis=1)
        kernels = temporal_kernels(p, config.frame_rate_hz)
        self.kernels = np.ascontiguousarray(np.concatenate([kernels, kernels[:, self.complex_index]], axis=1))
        iy = np.clip(np.rint(p["y_px"]).astype(np.intp), 0, h - 1)
        ix = np.clip(np.rint(p["x_px"]).astype(np.intp), 0, w - 1)
        self.rf_pixel = iy * w + ix
        fr = config.frame_rate_hz
        self._amp = (p["amplitude_hz"] * config.response_gain / fr).astype(np.float32)
        self._base = (p["baseline_hz"] / fr).astype(np.float32)

    @property
    def n_neurons(self) -> int:
        return int(self.params.size)

    def linear_drive(self, video: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
        """Contrast-normalised drive x (before the output nonlinearity), (T, N) float32."""
        t_n = video.shape[0]
        n = self.n_neurons
        s = (np.asarray(video, dtype=np.float32) - np.float32(127.5)) * np.float32(1.0 / 127.5)
        dy = behaviour[:, 3].astype(np.float64) / DEG_PER_PX
        dx = behaviour[:, 2].astype(np.float64) / DEG_PER_PX
        s = shift_frames(s, dy, dx)
        lin = s.reshape(t_n, -1) @ self.bank                      # (T, N + Nc)
        lin = causal_filter(lin, self.kernels)
        drive = lin[:, :n]
        if self.complex_index.size:
            odd = lin[:, n:]
            even = drive[:, self.complex_index]
            drive[:, self.complex_index] = np.sqrt(even * even + odd * odd)
        # local RMS contrast at each RF centre, low-passed in time (grey screen before t=0)
        sig = (0.0, _CONTRAST_POOL_SIGMA_PX, _CONTRAST_POOL_SIGMA_PX)
        mean = ndimage.gaussian_filter(s, sig, mode="nearest")
        var = ndimage.gaussian_filter(s * s, sig, mode="nearest") - mean * mean
        contrast = np.sqrt(np.maximum(var, 0.0)).reshape(t_n, -1)[:, self.rf_pixel]
        a = np.float32(np.exp(-1.0 / (_CONTRAST_POOL_TAU_S * self.config.frame_rate_hz)))
        pooled = np.empty_like(contrast)
        state = np.zeros(n, dtype=np.float32)
        for t in range(t_n):
            state = a * state + (1 - a) * contrast[t]
            pooled[t] = state
        drive /= self.params["c50"][None, :] + pooled
        return drive

    def expected_rates(self, video: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
        """Noiseless expected activity for a stimulus and behaviour.

        Parameters
        ----------
        video : ndarray, shape (T, 36, 64), values 0..255
            Stimulus frames (the screen is taken as grey, 127.5, before frame 0).
        behaviour : ndarray, shape (T, 4)
            ``BEHAVIOUR_FIELDS`` per frame (pupil dilation a.u., running cm/s, pupil x/y deg).

        Returns
        -------
        ndarray of float32, shape (T, N)
            Expected spike count per frame of every neuron.
        """
        video = np.asarray(video)
        behaviour = np.asarray(behaviour)
        if video.ndim != 3 or video.shape[1:] != STIMULUS_SHAPE:
            raise ShapeMismatchError(f"video must have shape (T, {STIMULUS_SHAPE[0]}, {STIMULUS_SHAPE[1]}), "
                                     f"got {video.shape}")
        if behaviour.shape != (video.shape[0], N_BEHAVIOUR):
            raise ShapeMismatchError(f"behaviour must have shape ({video.shape[0]}, {N_BEHAVIOUR}), "
                                     f"got {behaviour.shape}")
        x = self.linear_drive(video, behaviour)
        p = self.params
        k = np.float32(_SOFTPLUS_SHARPNESS)
        z = np.logaddexp(np.float32(0.0), k * (np.float32(_DRIVE_SCALE) * x - p["threshold"][None, :])) / k
        drive = self._amp[None, :] * z ** p["exponent"][None, :]
        running = np.tanh(behaviour[:, 1:2].astype(np.float32) / np.float32(RUNNING_SCALE_CM_S))
        pupil_z = (behaviour[:, 0:1].astype(np.float32) - np.float32(PUPIL_MEAN)) / np.float32(PUPIL_SD)
        gain = np.clip(1.0 + p["running_gain"][None, :] * running + p["pupil_gain"][None, :] * pupil_z,
                       0.2, 3.0)
        rates = gain * (self._base[None, :] + drive)
        return rates.astype(np.float32, copy=False)
