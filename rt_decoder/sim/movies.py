"""Natural-like stimulus movies for the virtual rig: 36 x 64 px greyscale, values 0..255.

A trial's movie is a few clips cut back to back. A clip is either

* a natural photograph shipped inside scikit-image's wheel (``skimage.data``; no download)
  seen through simulated eye/camera movements: fixations with sub-pixel drift, saccades
  (jumps of a few screen pixels), occasional slow pans, a slowly varying zoom; sampled
  with bilinear interpolation from an anti-aliased (Gaussian-blurred) copy; or
* spatio-temporal pink noise (amplitude spectrum ~ 1/f in space and in time).

Each clip gets its own mean luminance and RMS contrast, then is clipped to [0, 255].
Everything is a pure function of the ``numpy.random.Generator`` passed in.
Imports numpy, scipy.ndimage and (lazily, once) skimage.data.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from rt_decoder.messages import STIMULUS_SHAPE

#: Photographs used (all shipped in the scikit-image wheel; loaded without any download).
PHOTO_NAMES: tuple[str, ...] = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "grass", "gravel", "brick", "moon",
    "coins", "motorcycle",
)

_MIN_CLIP_FRAMES = 45


@functools.cache
def photographs() -> tuple[np.ndarray, ...]:
    """The greyscale photographs, float32 in 0..255, each (H_i, W_i) with H_i, W_i >= 300."""
    from skimage import color, data

    out = []
    for name in PHOTO_NAMES:
        img = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        img = np.asarray(img)
        if img.ndim == 3:
            grey = color.rgb2gray(img[..., :3]) * 255.0
        else:
            grey = img.astype(np.float64) if img.dtype == np.uint8 else img * 255.0
        grey_f32 = np.ascontiguousarray(grey, dtype=np.float32)
        grey_f32.setflags(write=False)
        out.append(grey_f32)
    return tuple(out)


def _set_luminance_contrast(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rescale a clip to a random mean luminance and RMS contrast, clip to [0, 255]."""
    mean_lum = rng.uniform(70.0, 185.0)
    rms = rng.uniform(18.0, 55.0)
    std = float(clip.std())
    scaled = (clip - float(clip.mean())) * np.float32(rms / max(std, 1e-6)) + np.float32(mean_lum)
    return np.clip(scaled, 0.0, 255.0).astype(np.float32, copy=False)


def pink_noise_clip(n_frames: int, rng: np.random.Generator,
                    shape: tuple[int, int] = STIMULUS_SHAPE) -> np.ndarray:
    """Spatio-temporal pink noise, zero mean and unit variance.

    Returns
    -------
    ndarray of float32, shape (n_frames, H, W)
        Amplitude spectrum ``1/max(f_s, 1/W)^a_s * 1/max(f_t, 1/60 frames)^a_t`` with
        exponents ``a_s`` in [1.1, 1.6] and ``a_t`` in [1.0, 1.5] (f_s in cycles/px, f_t in
        cycles/frame; exponent 1 is pink, natural scenes lie around 1-1.4).
    """
    h, w = shape
    white = rng.standard_normal((n_frames, h, w), dtype=np.float32)
    spec = np.fft.rfftn(white)
    ft = np.abs(np.fft.fftfreq(n_frames))[:, None, None]
    fy = np.fft.fftfreq(h)[None, :, None]
    fx = np.fft.rfftfreq(w)[None, None, :]
    fs = np.sqrt(fy**2 + fx**2)
    a_s = rng.uniform(1.1, 1.6)
    a_t = rng.uniform(1.0, 1.5)
    amp = 1.0 / np.maximum(fs, 1.0 / w) ** a_s / np.maximum(ft, 1.0 / 60.0) ** a_t
    clip = np.fft.irfftn(spec * amp, s=(n_frames, h, w), axes=(0, 1, 2)).astype(np.float32)
    clip -= clip.mean()
    clip /= max(float(clip.std()), 1e-6)
    return clip


def _gaze_path(n_frames: int, frame_rate_hz: float, rng: np.random.Generator) -> np.ndarray:
    """Image motion in screen pixels, (n_frames, 2) as (y, x): fixations, drift, saccades, pans."""
    path = np.empty((n_frames, 2), dtype=np.float64)
    pos = np.zeros(2)
    t = 0
    while t < n_frames:
        n_fix = max(2, int(rng.gamma(2.0, 0.25) * frame_rate_hz))  # fixation ~0.5 s on average
        n_fix = min(n_fix, n_frames - t)
        if rng.random() < 0.25:  # slow pan (smooth pursuit / camera pan), 0.3-1.5 px/frame
            angle = rng.uniform(0.0, 2.0 * np.pi)
            velocity = rng.uniform(0.3, 1.5) * np.array([np.sin(angle), np.cos(angle)])
        else:
            velocity = np.zeros(2)
        drift = np.cumsum(rng.normal(0.0, 0.12, size=(n_fix, 2)), axis=0)  # sub-pixel drift
        steps = np.arange(1, n_fix + 1)[:, None] * velocity[None, :]
        path[t:t + n_fix] = pos + drift + steps
        pos = path[t + n_fix - 1].copy()
        t += n_fix
        # saccade: a jump of 2-12 screen px in a random direction
        amp = rng.uniform(2.0, 12.0)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        pos = pos + amp * np.array([np.sin(angle), np.cos(angle)])
    return path


def photo_clip(n_frames: int, frame_rate_hz: float, rng: np.random.Generator,
               shape: tuple[int, int] = STIMULUS_SHAPE) -> np.ndarray:
    """A photograph seen through simulated eye/camera movements, float32 (n_frames, H, W)."""
    h, w = shape
    photos = photographs()
    img = photos[int(rng.integers(len(photos)))]
    ih, iw = img.shape
    # zoom: source pixels per screen pixel, so that the screen spans 30-85 % of the photo width
    zoom0 = rng.uniform(0.30, 0.85) * min(iw / w, ih / h * 0.999)
    zoom0 = max(zoom0, 1.0)
    zoom_wobble = np.exp(np.cumsum(rng.normal(0.0, 0.004, size=n_frames)))
    zoom = zoom0 * zoom_wobble / zoom_wobble.max()  # never exceeds zoom0: the crop stays inside
    blurred = ndimage.gaussian_filter(img, sigma=0.45 * zoom0, mode="reflect")
    gaze = _gaze_path(n_frames, frame_rate_hz, rng) * zoom[:, None]  # in source pixels
    half = np.array([(h - 1) / 2.0, (w - 1) / 2.0]) * zoom[:, None]  # (T, 2)
    lo = half
    hi = np.array([ih - 1.0, iw - 1.0])[None, :] - half
    start = np.array([rng.uniform(lo[0, 0], hi[0, 0]), rng.uniform(lo[0, 1], hi[0, 1])])
    centre = start[None, :] + gaze
    # reflect the path at the borders so the crop always stays inside the photograph
    span = np.maximum(hi - lo, 1e-6)
    rel = np.mod(centre - lo, 2.0 * span)
    centre = lo + np.where(rel > span, 2.0 * span - rel, rel)
    ys = centre[:, 0:1] + (np.arange(h) - (h - 1) / 2.0)[None, :] * zoom[:, None]  # (T, h)
    xs = centre[:, 1:2] + (np.arange(w) - (w - 1) / 2.0)[None, :] * zoom[:, None]  # (T, w)
    return _bilinear_sample(blurred, ys, xs)


def _bilinear_sample(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample ``img`` on separable grids: ys (T, h), xs (T, w) -> (T, h, w) float32."""
    ih, iw = img.shape
    ys = np.clip(ys, 0.0, ih - 1.000001)
    xs = np.clip(xs, 0.0, iw - 1.000001)
    y0 = np.floor(ys).astype(np.intp)
    x0 = np.floor(xs).astype(np.intp)
    fy = (ys - y0).astype(np.float32)[:, :, None]
    fx = (xs - x0).astype(np.float32)[:, None, :]
    r0 = y0[:, :, None]
    c0 = x0[:, None, :]
    top = img[r0, c0] * (1.0 - fx) + img[r0, c0 + 1] * fx
    bottom = img[r0 + 1, c0] * (1.0 - fx) + img[r0 + 1, c0 + 1] * fx
    return (top * (1.0 - fy) + bottom * fy).astype(np.float32, copy=False)


def make_movie(n_frames: int, frame_rate_hz: float, rng: np.random.Generator, *,
               pink_noise_fraction: float = 0.25,
               shape: tuple[int, int] = STIMULUS_SHAPE) -> np.ndarray:
    """One trial's movie: 1-3 clips cut back to back.

    Parameters
    ----------
    n_frames : int
        Length T of the movie in frames.
    frame_rate_hz : float
        Frame rate (sets the eye-movement time scales).
    rng : numpy.random.Generator
        Source of every random choice (same state -> identical movie).
    pink_noise_fraction : float
        Probability that a clip is pink noise rather than a photograph.

    Returns
    -------
    ndarray of float32, shape (T, 36, 64), values in [0, 255]
    """
    n_clips = int(min(3, 1 + rng.poisson(0.8), max(1, n_frames // _MIN_CLIP_FRAMES)))
    if n_clips > 1:
        cuts = np.sort(rng.choice(np.arange(1, n_frames // _MIN_CLIP_FRAMES), size=n_clips - 1,
                                  replace=False)) * _MIN_CLIP_FRAMES
        bounds = [0, *cuts.tolist(), n_frames]
    else:
        bounds = [0, n_frames]
    movie = np.empty((n_frames, *shape), dtype=np.float32)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if rng.random() < pink_noise_fraction:
            clip = pink_noise_clip(b - a, rng, shape)
        else:
            clip = photo_clip(b - a, frame_rate_hz, rng, shape)
        movie[a:b] = _set_luminance_contrast(clip, rng)
    return movie
