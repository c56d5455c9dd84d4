"""The pixel optimiser shared by the offline protocol and the live stage.

Published protocol (REFERENCE.md section 1): momentum on normalised gradients with
Adam-style step scaling using the first moment only, a linear learning-rate warm-up,
pixels clamped to [0, 255] after every step, gradients applied only inside the alpha
training mask. Each frame keeps its own iteration counter, so a frame that enters a live
window late gets the same warm-up and bias correction as one optimised offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from rt_decoder.errors import ConfigError
from rt_decoder.settings import option, validate


@dataclass(frozen=True)
class OptimSettings:
    """Step rule of the pixel optimiser.

    learning_rate_px : step size in pixel units per unit-norm gradient (published: 1000)
    momentum : first-moment decay beta1 (Adam-style, no second moment)
    warmup_iterations : linear learning-rate warm-up length, per frame (published: 10)
    init_value_px : initial pixel value (published: uniform grey 127.5)
    pixel_min_px, pixel_max_px : clamp range after every step
    smooth_sigma_px, smooth_sigma_frames : gradient preconditioner: every step's (masked)
        gradient is smoothed by a Gaussian of these sigmas in (y, x) and t, then rescaled to
        its former L2 norm, so the optimiser moves only along smooth directions (the
        encoder's input gradient carries aliasing energy from its space-to-depth layers that
        no stimulus has; see README "Reconstruction"). 0 = off (the published rule)
    decay_iterations, decay_power : step-size decay: the step of a frame's t-th iteration is
        multiplied by (d / (d + t)) ** p with d = decay_iterations, p = decay_power. With p = 2
        the whole path a pixel can travel is bounded (about lr x d unit steps), so long runs
        settle instead of wandering into the noise of single-trial responses (normalised
        steps never shrink on their own). d = 0: off (published)
    """

    learning_rate_px: float = option(1000.0, "optimiser step size in pixel units per unit-norm gradient",
                                     1e-9, 1e6)
    momentum: float = option(0.9, "first-moment decay of the optimiser", 0.0, 0.999)
    warmup_iterations: int = option(10, "per-frame learning-rate warm-up (iterations)", 0, 10_000)
    init_value_px: float = option(127.5, "initial pixel value (grey)", 0.0, 255.0)
    pixel_min_px: float = option(0.0, "pixels are clamped to at least this after every step", 0.0, 255.0)
    pixel_max_px: float = option(255.0, "pixels are clamped to at most this after every step", 0.0, 255.0)
    smooth_sigma_px: float = option(0.0, "gradient smoothing (preconditioner): Gaussian sigma in pixels applied "
                                    "to every step's gradient (0 = off)", 0.0, 16.0)
    smooth_sigma_frames: float = option(0.0, "gradient smoothing: Gaussian sigma in frames (0 = off)", 0.0, 16.0)
    decay_iterations: int = option(0, "step-size decay (d / (d + t)) ** decay_power over a frame's iterations t "
                                   "(0 = off)", 0, 1_000_000)
    decay_power: float = option(1.0, "power of the step-size decay", 0.5, 4.0)

    def __post_init__(self) -> None:
        validate(self)
        if not (self.pixel_min_px < self.pixel_max_px):
            raise ConfigError("pixel_min_px must be below pixel_max_px")
        if not (self.pixel_min_px <= self.init_value_px <= self.pixel_max_px):
            raise ConfigError(f"init_value_px {self.init_value_px} outside the clamp range")


def normalise(grad: np.ndarray) -> np.ndarray:
    """Divide ``grad`` by its L2 norm (left unchanged when the norm is zero)."""
    n = float(np.sqrt(np.sum(np.square(grad, dtype=np.float64))))
    return grad / np.float32(n) if n > 0 else grad


def precondition(grad: np.ndarray, maskf: np.ndarray, s: OptimSettings,
                 active: np.ndarray | None = None) -> np.ndarray:
    """Mask, smooth and rescale a gradient (T, H, W) as ``s`` says; returns a new array.

    The gradient is multiplied by ``maskf`` (H, W), smoothed with a Gaussian of
    ``smooth_sigma_frames`` in t and ``smooth_sigma_px`` in y, x (zero outside the frame and,
    in t, outside the ``active`` frames, which stay the only ones with a gradient), masked
    again and scaled back to the L2 norm it had before smoothing. Without smoothing it is the
    masked gradient.
    """
    g = np.asarray(grad, np.float32) * maskf
    st = s.smooth_sigma_frames if g.shape[0] > 1 else 0.0
    if s.smooth_sigma_px <= 0 and st <= 0:
        return g
    if active is not None:
        idx = np.flatnonzero(active)
        if idx.size == 0:
            return g
        sub = slice(int(idx[0]), int(idx[-1]) + 1)
    else:
        sub = slice(0, g.shape[0])
    before = float(np.sqrt(np.sum(np.square(g[sub], dtype=np.float64))))
    if before == 0.0:
        return g
    sm = gaussian_filter(g[sub], sigma=(st, s.smooth_sigma_px, s.smooth_sigma_px), mode="constant",
                         truncate=3.0) * maskf
    after = float(np.sqrt(np.sum(np.square(sm, dtype=np.float64))))
    out = np.zeros_like(g)
    if after > 0:
        out[sub] = sm * np.float32(before / after)
    return out


def apply_step(video: np.ndarray, moment: np.ndarray, iters: np.ndarray, grad: np.ndarray,
               active: np.ndarray, s: OptimSettings) -> None:
    """One in-place optimiser step on the frames selected by ``active``.

    Parameters
    ----------
    video, moment, grad : ndarray, shape (T, H, W), float32
        Pixels, first moments and the (normalised, masked) gradient.
    iters : ndarray of int64, shape (T,)
        Per-frame iteration counters, incremented for active frames.
    active : ndarray of bool, shape (T,)
        Frames that take this step.
    """
    idx = np.flatnonzero(active)
    if idx.size == 0:
        return
    b1 = s.momentum
    iters[idx] += 1
    t = iters[idx].astype(np.float64)
    moment[idx] = b1 * moment[idx] + (1.0 - b1) * grad[idx]
    warm = np.minimum(1.0, t / s.warmup_iterations) if s.warmup_iterations > 0 else np.ones_like(t)
    decay = (s.decay_iterations / (s.decay_iterations + t)) ** s.decay_power if s.decay_iterations > 0 else 1.0
    scale = (s.learning_rate_px * warm * decay / (1.0 - b1 ** t)).astype(np.float32)
    video[idx] -= scale[:, None, None] * moment[idx]
    video[idx] = np.clip(video[idx], s.pixel_min_px, s.pixel_max_px)
