"""Figures and videos of reconstructions: side-by-side GIF, summary PNG, latency histogram.

Used by ``rt-decoder reconstruct``, the demo sink and ``benchmarks.quality``. matplotlib
(Agg) and imageio are imported lazily: they belong to the dev extra, and the runtime path
works without them (these functions then raise BackendUnavailableError).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rt_decoder.errors import BackendUnavailableError


def _to_uint8(video: np.ndarray) -> np.ndarray:
    return np.clip(np.nan_to_num(video, nan=127.5), 0, 255).astype(np.uint8)


def side_by_side_frames(true: np.ndarray, recon: np.ndarray, scale: int = 4, gap_px: int = 2) -> np.ndarray:
    """Stack (T, H, W) true | reconstructed into (T, H*scale, (2W+gap)*scale) uint8 frames."""
    if true.shape != recon.shape:
        raise ValueError(f"true {true.shape} and recon {recon.shape} must have equal shapes")
    T, H, W = true.shape
    out = np.full((T, H, 2 * W + gap_px), 255, np.uint8)
    out[:, :, :W] = _to_uint8(true)
    out[:, :, W + gap_px:] = _to_uint8(recon)
    return np.repeat(np.repeat(out, scale, axis=1), scale, axis=2)


def write_side_by_side(path: str | Path, true: np.ndarray, recon: np.ndarray, fps: float = 30.0,
                       scale: int = 4) -> Path:
    """Write a looping GIF of true (left) | reconstructed (right)."""
    try:
        import imageio.v3 as iio
    except ImportError as exc:  # pragma: no cover - dev extra present in tests
        raise BackendUnavailableError("writing videos needs imageio (pip install 'rt-decoder[dev]')") from exc
    path = Path(path)
    frames = side_by_side_frames(true, recon, scale)
    iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    return path


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover
        raise BackendUnavailableError("figures need matplotlib (pip install 'rt-decoder[dev]')") from exc
    return plt


def write_summary_figure(path: str | Path, true: np.ndarray, recon: np.ndarray, metrics: Mapping[str, float],
                         frames: Sequence[int] | None = None, title: str = "") -> Path:
    """A PNG: example frames (true over reconstructed) and the metrics as text."""
    plt = _pyplot()
    T = true.shape[0]
    picks = list(frames) if frames is not None else list(np.linspace(min(30, T - 1), T - 1, 6).astype(int))
    fig, axes = plt.subplots(2, len(picks), figsize=(2.2 * len(picks), 3.4), squeeze=False)
    for j, t in enumerate(picks):
        for i, (vid, name) in enumerate(((true, "true"), (recon, "decoded"))):
            ax = axes[i][j]
            ax.imshow(vid[t], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name)
            if i == 0:
                ax.set_title(f"frame {t}", fontsize=8)
    text = "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
    fig.suptitle((title + "\n" if title else "") + text, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_latency_histogram(path: str | Path, latencies_ms: Mapping[str, np.ndarray], title: str = "") -> Path:
    """Histogram PNG of latency samples (ms), one series per name, log-count axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in latencies_ms.items():
        v = np.asarray(values, float)
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(v, bins=60, histtype="step", label=f"{name} (p50 {np.median(v):.2f}, p99 "
                                                        f"{np.percentile(v, 99):.2f} ms)")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("frames")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
