"""The published offline reconstruction protocol (REFERENCE.md section 1).

Whole trial; windows of ``window_frames`` at ``stride_frames``; each window's input
gradient divided by its L2 norm; a frame's gradient is the mean over the windows that
cover it; gradient applied only inside the alpha training mask; momentum with Adam-style
first-moment scaling and warm-up; clamp to [0, 255]; each ensemble member reconstructs
separately, the videos are averaged, then blurred with a Gaussian (sigma 0.5 in t, y, x).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from rt_decoder.errors import ConfigError, StageError
from rt_decoder.encoder_protocol import Encoder
from rt_decoder.recon.optim import OptimSettings, apply_step, normalise, precondition
from rt_decoder.settings import build


@dataclass(frozen=True)
class OfflineSettings:
    """Settings of the offline protocol (defaults as published).

    window_frames : frames per encoder window (must equal the encoder's window)
    stride_frames : stride between window starts
    iterations : optimiser iterations over the whole trial (published: 1000; the default
        step rule's curve plateaus by about 100 on validation trials, so 200 is the default)
    blur_sigma_frames, blur_sigma_px : Gaussian blur of the ensemble average (0 = off)
    optim : the step rule; default: the published rule plus gradient smoothing (3 px,
        1 frame) and step decay (d = 5, power 2), chosen on validation trials
        (``python -m benchmarks.quality --sweep``); ``published_optim()`` is the rule as published
    """

    window_frames: int = 32
    stride_frames: int = 8
    iterations: int = 200
    blur_sigma_frames: float = 0.5
    blur_sigma_px: float = 0.5
    optim: OptimSettings = field(default_factory=lambda: OptimSettings(**OFFLINE_OPTIM_DEFAULTS))

    def __post_init__(self) -> None:
        if not (1 <= self.window_frames <= 1024):
            raise ConfigError(f"window_frames must be in [1, 1024], got {self.window_frames}")
        if not (1 <= self.stride_frames <= self.window_frames):
            raise ConfigError(f"stride_frames must be in [1, window_frames], got {self.stride_frames}")
        if not (0 <= self.iterations <= 1_000_000):
            raise ConfigError(f"iterations must be in [0, 1e6], got {self.iterations}")
        if self.blur_sigma_frames < 0 or self.blur_sigma_px < 0:
            raise ConfigError("blur sigmas must be >= 0")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OfflineSettings:
        """Build from a mapping (an "optim" table holds ``OptimSettings`` keys); unknown keys
        raise ConfigError naming them."""
        return build(cls, data, path=cls.__name__)


#: The offline step rule's defaults beyond the published ones (chosen on validation trials).
OFFLINE_OPTIM_DEFAULTS: dict[str, Any] = {"smooth_sigma_px": 3.0, "smooth_sigma_frames": 1.0,
                                          "decay_iterations": 5, "decay_power": 2.0}


def published_settings(window_frames: int = 32) -> OfflineSettings:
    """The protocol exactly as published: 1000 iterations, plain step rule, grey start."""
    return OfflineSettings(window_frames=window_frames, iterations=1000, optim=OptimSettings())


def window_starts(n_frames: int, window: int, stride: int) -> np.ndarray:
    """Start frames of the windows covering ``n_frames``: 0, stride, ...; the last ends at n_frames.

    Every frame is covered at least once. Raises StageError if the trial is shorter than
    one window.
    """
    if n_frames < window:
        raise StageError(f"a trial of {n_frames} frames is shorter than the {window}-frame window")
    starts = list(range(0, n_frames - window + 1, stride))
    if starts[-1] != n_frames - window:
        starts.append(n_frames - window)
    return np.asarray(starts, dtype=np.int64)


def coverage(n_frames: int, window: int, stride: int) -> np.ndarray:
    """Number of windows covering each frame, shape (n_frames,)."""
    c = np.zeros(n_frames, dtype=np.int64)
    for s in window_starts(n_frames, window, stride):
        c[s:s + window] += 1
    return c


def trial_gradient(encoder: Encoder, video: np.ndarray, behaviour: np.ndarray, responses: np.ndarray,
                   neuron_weights: np.ndarray, window: int, stride: int) -> tuple[float, np.ndarray]:
    """Mean over covering windows of each window's L2-normalised gradient; also the summed loss."""
    T = video.shape[0]
    grad = np.zeros_like(video)
    loss = 0.0
    for s in window_starts(T, window, stride):
        sl = slice(int(s), int(s) + window)
        value, g = encoder.loss_and_grad(video[sl], behaviour[sl], responses[sl], neuron_weights)
        loss += float(value)
        grad[sl] += normalise(np.asarray(g, dtype=np.float32))
    grad /= coverage(T, window, stride).astype(np.float32)[:, None, None]
    return loss, grad


def _validate_inputs(encoder: Encoder, responses: np.ndarray, behaviour: np.ndarray,
                     grad_mask: np.ndarray, neuron_weights: np.ndarray | None,
                     frame_shape: tuple[int, int]) -> np.ndarray:
    T, N = responses.shape
    if N != encoder.n_neurons:
        raise StageError(f"responses have {N} neurons but the encoder predicts {encoder.n_neurons}")
    if behaviour.shape != (T, 4):
        raise StageError(f"behaviour must have shape ({T}, 4), got {behaviour.shape}")
    if grad_mask.shape != frame_shape:
        raise StageError(f"grad_mask must have shape {frame_shape}, got {grad_mask.shape}")
    w = np.ones(N, np.float32) if neuron_weights is None else np.asarray(neuron_weights, np.float32)
    if w.shape != (N,):
        raise StageError(f"neuron_weights must have shape ({N},), got {w.shape}")
    return w


def reconstruct_single(encoder: Encoder, responses: np.ndarray, behaviour: np.ndarray,
                       grad_mask: np.ndarray, settings: OfflineSettings = OfflineSettings(), *,
                       neuron_weights: np.ndarray | None = None, frame_shape: tuple[int, int] = (36, 64),
                       callback: Callable[[int, float, np.ndarray], None] | None = None,
                       init_video: np.ndarray | None = None) -> np.ndarray:
    """Reconstruct one trial with one encoder.

    Parameters
    ----------
    encoder : Encoder
    responses : ndarray, shape (T, N)
        Recorded single-trial activity (deconvolved, non-negative).
    behaviour : ndarray, shape (T, 4)
        Held at the recorded values.
    grad_mask : ndarray of bool, shape (H, W)
        Pixels that receive gradient (alpha >= 0.5).
    callback : callable(iteration, loss, video) or None
        Called after every iteration (progress bars, convergence curves).
    init_video : ndarray, shape (T, H, W), or None
        Starting point (e.g. the amortised decoder's estimate, ``rt_decoder.recon.amortised``);
        None = uniform ``optim.init_value_px`` (published). Clipped to the pixel range.

    Returns
    -------
    ndarray, shape (T, H, W), float32, pixels in [0, 255].
    """
    responses = np.asarray(responses, np.float32)
    behaviour = np.asarray(behaviour, np.float32)
    mask = np.asarray(grad_mask, bool)
    w = _validate_inputs(encoder, responses, behaviour, mask, neuron_weights, frame_shape)
    if settings.window_frames != encoder.window_frames:
        raise ConfigError(f"window_frames={settings.window_frames} but the encoder's window is "
                          f"{encoder.window_frames}")
    T = responses.shape[0]
    o = settings.optim
    if init_video is None:
        video = np.full((T, *frame_shape), o.init_value_px, np.float32)
    else:
        video = np.asarray(init_video, np.float32)
        if video.shape != (T, *frame_shape):
            raise StageError(f"init_video must have shape {(T, *frame_shape)}, got {video.shape}")
        video = np.clip(video, o.pixel_min_px, o.pixel_max_px).astype(np.float32)
    moment = np.zeros_like(video)
    iters = np.zeros(T, np.int64)
    active = np.ones(T, bool)
    maskf = mask.astype(np.float32)
    for it in range(settings.iterations):
        loss, grad = trial_gradient(encoder, video, behaviour, responses, w,
                                    settings.window_frames, settings.stride_frames)
        grad = precondition(grad, maskf, o)
        apply_step(video, moment, iters, grad, active, o)
        if callback is not None:
            callback(it, loss, video)
    return video


def blur_video(video: np.ndarray, sigma_frames: float, sigma_px: float) -> np.ndarray:
    """Gaussian blur in (t, y, x); sigma 0 leaves that axis alone."""
    if sigma_frames == 0 and sigma_px == 0:
        return video.astype(np.float32, copy=True)
    return gaussian_filter(video.astype(np.float32), sigma=(sigma_frames, sigma_px, sigma_px),
                           mode="nearest").astype(np.float32)


def reconstruct_ensemble(encoders: Sequence[Encoder], responses: np.ndarray, behaviour: np.ndarray,
                         grad_mask: np.ndarray, settings: OfflineSettings = OfflineSettings(), *,
                         neuron_weights: np.ndarray | None = None, frame_shape: tuple[int, int] = (36, 64),
                         callback: Callable[[int, int, float, np.ndarray], None] | None = None,
                         ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each member reconstructs separately; returns (blurred mean video, member videos)."""
    if not encoders:
        raise ConfigError("an ensemble needs at least one encoder")
    members = []
    for k, enc in enumerate(encoders):
        cb = None if callback is None else (lambda it, loss, v, k=k: callback(k, it, loss, v))
        members.append(reconstruct_single(enc, responses, behaviour, grad_mask, settings,
                                          neuron_weights=neuron_weights, frame_shape=frame_shape, callback=cb))
    mean = np.mean(np.stack(members), axis=0)
    return blur_video(mean, settings.blur_sigma_frames, settings.blur_sigma_px), members
