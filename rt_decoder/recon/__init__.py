"""Reconstruction: the published offline protocol and the live sliding-window stage.

Public API::

    from rt_decoder.recon import (OfflineSettings, LiveSettings, OptimSettings,
                                  reconstruct_single, reconstruct_ensemble, LiveReconstructor)
    from rt_decoder.recon.metrics import video_correlation, quality_report

Runs on any object with the ``GradientEncoder`` protocol (window_frames, n_neurons,
loss_and_grad); never imports torch or zmq.
"""

from rt_decoder.recon.live import LiveReconstructor, LiveSettings
from rt_decoder.recon.offline import (
    OfflineSettings,
    blur_video,
    coverage,
    reconstruct_ensemble,
    reconstruct_single,
    window_starts,
)
from rt_decoder.recon.optim import GradientEncoder, OptimSettings

__all__ = [
    "GradientEncoder",
    "LiveReconstructor",
    "LiveSettings",
    "OfflineSettings",
    "OptimSettings",
    "blur_video",
    "coverage",
    "reconstruct_ensemble",
    "reconstruct_single",
    "window_starts",
]
