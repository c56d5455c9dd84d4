"""Figures and videos of reconstructions, and the one display normalisation they share.

Display normalisation (the same for ``summary.png``, ``side_by_side.gif`` and the live
viewer's page, ``streaming.viewer``):

* the **true** stimulus is drawn on its own fixed scale: pixel value 0 -> black, 255 ->
  white (what the animal saw);
* a **decoded** frame is stretched between running percentiles of the decoded video:
  ``lo``/``hi`` are the 1st/99th percentiles of all pixels of the last 300 decoded frames
  (this frame included), read from a 2,048-bin histogram over 0..255 (0.125 px bins);
  ``lo`` -> black, ``hi`` -> white, clipped; a span under 2 px is widened to 2 px around
  its centre. Decoded pixels live on the stimulus scale but span a narrow band (the demo's
  about 122-133), so a fixed 0..255 scale would draw them flat grey.

:class:`DisplayNormaliser` keeps that running state; :func:`display_video` applies it
frame by frame (causally: frame t uses frames t-299..t), exactly as the live page does.

Used by ``rt-decoder reconstruct``, the demo sink, the live viewer and
``benchmarks.quality``. matplotlib (Agg), Pillow and imageio are imported lazily: they
belong to the dev extra, and the runtime path works without them (the writers then raise
BackendUnavailableError). The normalisation itself needs numpy only.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rt_decoder.errors import BackendUnavailableError, ConfigError

#: the stimulus scale (pixel units)
PIXEL_MIN, PIXEL_MAX = 0.0, 255.0
_HIST_BINS = 2048


@dataclass(frozen=True)
class DisplaySettings:
    """How decoded frames are stretched for display.

    window_frames : decoded frames whose pixels set the range (the newest ones)
    lo_percentile, hi_percentile : percentiles of those pixels drawn black / white (%)
    min_span_px : the range is widened to at least this span (pixel units), so that a
        nearly uniform video is not stretched into noise
    """

    window_frames: int = 300
    lo_percentile: float = 1.0
    hi_percentile: float = 99.0
    min_span_px: float = 2.0

    def __post_init__(self) -> None:
        if not (isinstance(self.window_frames, int) and 1 <= self.window_frames <= 100_000):
            raise ConfigError(f"window_frames must be an integer in [1, 100000], got {self.window_frames!r}")
        if not (0.0 <= self.lo_percentile < self.hi_percentile <= 100.0):
            raise ConfigError(f"need 0 <= lo_percentile < hi_percentile <= 100, got {self.lo_percentile!r}, "
                              f"{self.hi_percentile!r}")
        if not (math.isfinite(self.min_span_px) and 0.0 < self.min_span_px <= PIXEL_MAX):
            raise ConfigError(f"min_span_px must be in (0, 255], got {self.min_span_px!r}")

    def describe(self) -> str:
        """One sentence for a page or a figure caption."""
        return (f"true: pixel values 0..255 (black..white), as shown; decoded: stretched from percentile "
                f"{self.lo_percentile:g} (black) to percentile {self.hi_percentile:g} (white) of the pixels of the "
                f"last {self.window_frames} decoded frames, clipped, span at least {self.min_span_px:g} px")


def _edges() -> np.ndarray:
    return np.linspace(PIXEL_MIN, PIXEL_MAX, _HIST_BINS + 1)


def _bin_index(image: np.ndarray) -> np.ndarray:
    v = np.asarray(image, np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    idx = np.floor((v - PIXEL_MIN) * (_HIST_BINS / (PIXEL_MAX - PIXEL_MIN))).astype(np.int64)
    return np.clip(idx, 0, _HIST_BINS - 1)


class DisplayNormaliser:
    """Running percentile range of a decoded video (see the module docstring).

    ``update(image)`` adds a frame to the window and returns the current ``(lo, hi)``;
    ``__call__(image)`` does that and returns the frame as uint8 (0 black .. 255 white).
    Cost per frame: one ``bincount`` of the frame's pixels and two cumulative sums over
    2,048 bins (about 20 us for 36 x 64 px).
    """

    def __init__(self, settings: DisplaySettings = DisplaySettings()) -> None:
        self.settings = settings
        self._counts = np.zeros(_HIST_BINS, np.int64)
        self._window: deque[np.ndarray] = deque()
        self._centres = 0.5 * (_edges()[:-1] + _edges()[1:])
        self.range: tuple[float, float] = (PIXEL_MIN, PIXEL_MAX)

    def reset(self) -> None:
        """Forget the window (a new session)."""
        self._counts[:] = 0
        self._window.clear()
        self.range = (PIXEL_MIN, PIXEL_MAX)

    @property
    def frames(self) -> int:
        """Frames in the window now."""
        return len(self._window)

    def update(self, image: np.ndarray) -> tuple[float, float]:
        """Add ``image`` (H, W) pixel units to the window; the new ``(lo, hi)`` display range."""
        idx = _bin_index(image)
        if idx.size == 0:  # an all-NaN frame changes nothing
            return self.range
        counts = np.bincount(idx, minlength=_HIST_BINS)
        self._counts += counts
        self._window.append(counts)
        while len(self._window) > self.settings.window_frames:
            self._counts -= self._window.popleft()
        cum = np.cumsum(self._counts)
        total = int(cum[-1])
        s = self.settings
        lo = float(self._centres[int(np.searchsorted(cum, s.lo_percentile / 100.0 * total, side="left"))])
        hi_pos = min(int(np.searchsorted(cum, s.hi_percentile / 100.0 * total, side="left")), _HIST_BINS - 1)
        hi = float(self._centres[hi_pos])
        if hi - lo < s.min_span_px:
            mid = 0.5 * (lo + hi)
            lo, hi = mid - 0.5 * s.min_span_px, mid + 0.5 * s.min_span_px
        self.range = (lo, hi)
        return self.range

    def __call__(self, image: np.ndarray) -> np.ndarray:
        lo, hi = self.update(image)
        return to_display(image, lo, hi)


def to_display(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map pixel values ``lo`` -> 0 and ``hi`` -> 255 (clipped, truncated) as uint8; NaN -> 128."""
    a = np.asarray(image, np.float32)
    scaled = (a - np.float32(lo)) * np.float32(255.0 / max(hi - lo, 1e-6))
    return np.clip(np.nan_to_num(scaled, nan=128.0), 0.0, 255.0).astype(np.uint8)


def stimulus_to_display(image: np.ndarray) -> np.ndarray:
    """The true stimulus on its fixed scale: 0..255 pixel units -> uint8 (NaN -> 128)."""
    return to_display(image, PIXEL_MIN, PIXEL_MAX)


def display_video(decoded: np.ndarray, settings: DisplaySettings = DisplaySettings()
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Normalise a decoded video for display, frame by frame, as the live page does.

    Parameters
    ----------
    decoded : ndarray, shape (T, H, W)
        Pixel units; all-NaN frames (missing) are drawn mid-grey and leave the window as is.

    Returns
    -------
    frames : ndarray of uint8, shape (T, H, W)
    ranges : ndarray of float64, shape (T, 2)
        The ``(lo, hi)`` used for each frame.
    """
    norm = DisplayNormaliser(settings)
    dec = np.asarray(decoded)
    frames = np.empty(dec.shape, np.uint8)
    ranges = np.empty((dec.shape[0], 2), np.float64)
    for t in range(dec.shape[0]):
        lo, hi = norm.update(dec[t])
        frames[t] = to_display(dec[t], lo, hi)
        ranges[t] = (lo, hi)
    return frames, ranges


# ---------------------------------------------------------------------------- side by side


def side_by_side_frames(true: np.ndarray | None, recon: np.ndarray, scale: int = 4, gap_px: int = 2) -> np.ndarray:
    """Stack (T, H, W) true | decoded into (T, H*scale, (2W+gap)*scale) uint8 frames.

    The true half is on the fixed 0..255 scale, the decoded half normalised by
    :func:`display_video`. With ``true=None`` (no stimulus) only the decoded video is
    returned, (T, H*scale, W*scale).
    """
    dec, _ = display_video(recon)
    if true is None:
        out = dec
    else:
        if true.shape != recon.shape:
            raise ValueError(f"true {true.shape} and recon {recon.shape} must have equal shapes")
        T, H, W = true.shape
        out = np.full((T, H, 2 * W + gap_px), 255, np.uint8)
        out[:, :, :W] = stimulus_to_display(true)
        out[:, :, W + gap_px:] = dec
    return np.repeat(np.repeat(out, scale, axis=1), scale, axis=2)


def _font(size: int):  # type: ignore[no-untyped-def]
    try:
        from PIL import ImageFont
    except ImportError as exc:  # pragma: no cover - dev extra present in tests
        raise BackendUnavailableError("labelled videos need Pillow (pip install 'rt-decoder[dev]')") from exc
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def has_frames(video: np.ndarray | None) -> bool:
    """True when ``video`` holds at least one frame with a finite pixel."""
    return video is not None and video.size > 0 and bool(np.isfinite(video).any())


def labelled_frames(true: np.ndarray | None, recon: np.ndarray, *, fps: float = 30.0,
                    frame_index: Sequence[int] | np.ndarray | None = None, eval_mask: np.ndarray | None = None,
                    scale: int = 4) -> np.ndarray:
    """Side-by-side frames with text: "true" / "decoded" above, frame, time and correlation below.

    Parameters
    ----------
    true : (T, H, W) or None
        Pixel units; None, or all NaN, draws the decoded video alone and says "no stimulus".
    recon : (T, H, W)
    fps : frame rate (Hz) for the time label (time = frame index / fps)
    frame_index : (T,) ints, optional (default 0..T-1)
    eval_mask : (H, W) bool, optional: the per-frame correlation is computed inside it
    scale : pixel scale

    Returns
    -------
    ndarray of uint8, shape (T, rows, cols, 3)
    """
    from PIL import Image, ImageDraw

    T = recon.shape[0]
    idx = np.arange(T) if frame_index is None else np.asarray(frame_index)
    with_true = has_frames(true)
    panels = side_by_side_frames(true if with_true else None, recon, scale)
    corr = np.full(T, np.nan)
    if with_true:
        assert true is not None
        m = np.ones(true.shape[1:], bool) if eval_mask is None else np.asarray(eval_mask, bool)
        for t in range(T):
            a, b = true[t][m].astype(np.float64), recon[t][m].astype(np.float64)
            if np.isfinite(a).all() and np.isfinite(b).all() and a.std() > 0 and b.std() > 0:
                corr[t] = float(np.corrcoef(a, b)[0, 1])
    W = recon.shape[2] * scale
    size = max(10, 3 * scale)
    top, bottom = size + 6, size + 6
    font = _font(size)
    rows, cols = panels.shape[1] + top + bottom, panels.shape[2]
    out = np.empty((T, rows, cols, 3), np.uint8)
    where = "in mask" if eval_mask is not None else "full frame"
    for t in range(T):
        img = Image.new("RGB", (cols, rows), (0, 0, 0))
        img.paste(Image.fromarray(panels[t]).convert("RGB"), (0, top))
        d = ImageDraw.Draw(img)
        if with_true:
            d.text((3, 2), "true", fill=(255, 255, 255), font=font)
            d.text((cols - W + 3, 2), "decoded (stretched)", fill=(255, 255, 255), font=font)
        else:
            d.text((3, 2), "decoded (stretched): no stimulus", fill=(255, 255, 255), font=font)
        label = f"frame {int(idx[t])}  t {idx[t] / fps:.2f} s"
        if with_true:
            label += f"  r {corr[t]:+.2f} ({where})" if np.isfinite(corr[t]) else "  r -"
        d.text((3, rows - bottom + 2), label, fill=(255, 255, 255), font=font)
        out[t] = np.asarray(img)
    return out


def write_side_by_side(path: str | Path, true: np.ndarray | None, recon: np.ndarray, fps: float = 30.0,
                       scale: int = 4, *, frame_index: Sequence[int] | np.ndarray | None = None,
                       eval_mask: np.ndarray | None = None) -> Path:
    """Write a looping, labelled GIF of true (left) | decoded (right); see :func:`labelled_frames`."""
    try:
        import imageio.v3 as iio
    except ImportError as exc:  # pragma: no cover - dev extra present in tests
        raise BackendUnavailableError("writing videos needs imageio (pip install 'rt-decoder[dev]')") from exc
    path = Path(path)
    frames = labelled_frames(true, recon, fps=fps, frame_index=frame_index, eval_mask=eval_mask, scale=scale)
    iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    return path


# ---------------------------------------------------------------------------- figures


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover
        raise BackendUnavailableError("figures need matplotlib (pip install 'rt-decoder[dev]')") from exc
    return plt


def write_summary_figure(path: str | Path, true: np.ndarray | None, recon: np.ndarray, metrics: Mapping[str, float],
                         frames: Sequence[int] | None = None, title: str = "") -> Path:
    """A PNG: example frames (true over decoded) and the metrics as text.

    Decoded frames use the shared display normalisation (:func:`display_video` over the
    whole ``recon``); with ``true=None`` (or all NaN) the true row says "no stimulus".
    """
    plt = _pyplot()
    T = recon.shape[0]
    picks = list(frames) if frames is not None else sorted(set(np.linspace(min(30, T - 1), T - 1, 6).astype(int)))
    dec_disp, ranges = display_video(recon)
    with_true = has_frames(true)
    fig, axes = plt.subplots(2, len(picks), figsize=(2.2 * len(picks), 3.6), squeeze=False)
    for j, t in enumerate(picks):
        for i, name in enumerate(("true", "decoded")):
            ax = axes[i][j]
            if i == 0 and with_true:
                assert true is not None
                ax.imshow(stimulus_to_display(true[t]), cmap="gray", vmin=0, vmax=255)
            elif i == 0:
                ax.set_facecolor("white")
                ax.text(0.5, 0.5, "no stimulus", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            else:
                ax.imshow(dec_disp[t], cmap="gray", vmin=0, vmax=255)
                ax.set_xlabel(f"{ranges[t, 0]:.1f}..{ranges[t, 1]:.1f} px", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name)
            if i == 0:
                ax.set_title(f"frame {t}", fontsize=8)
    text = "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    fig.suptitle((title + "\n" if title else "") + text, fontsize=8)
    fig.text(0.5, 0.005, DisplaySettings().describe(), ha="center", va="bottom", fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_latency_histogram(path: str | Path, latencies_ms: Mapping[str, np.ndarray], title: str = "",
                            frame_period_ms: float | None = None) -> Path:
    """Histogram PNG of latency samples (ms), one series per name, log-count axis.

    The legend sits below the axes (it never hides data); ``frame_period_ms`` draws a
    dashed vertical line at the frame period.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, values in latencies_ms.items():
        v = np.asarray(values, float)
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(v, bins=60, histtype="step", label=f"{name} (p50 {np.median(v):.2f}, p99 "
                                                        f"{np.percentile(v, 99):.2f} ms)")
    if frame_period_ms:
        ax.axvline(frame_period_ms, color="k", ls="--", lw=1, label=f"frame period {frame_period_ms:.1f} ms")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("frames")
    ax.set_yscale("log")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
