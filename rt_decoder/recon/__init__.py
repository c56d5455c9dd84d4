"""Reconstruction: the published offline protocol and the live sliding-window stage.

Public API::

    from rt_decoder.recon import (OfflineSettings, LiveSettings, OptimSettings,
                                  reconstruct_single, reconstruct_ensemble, LiveReconstructor)
    from rt_decoder.recon.metrics import video_correlation, quality_report

Runs on any object with the ``Encoder`` protocol (``rt_decoder.encoder_protocol``:
window_frames, n_neurons, forward, loss_and_grad); the live stage's cached-context path on a
``LiveEncoder``. Never imports torch or zmq.
"""

from rt_decoder.encoder_protocol import Encoder, LiveEncoder
from rt_decoder.recon.live import LIVE_OPTIM, LiveReconstructor, LiveSettings
from rt_decoder.recon.offline import (
    OfflineSettings,
    blur_video,
    coverage,
    reconstruct_ensemble,
    reconstruct_single,
    window_starts,
)
from rt_decoder.recon.optim import OptimSettings

__all__ = [
    "Encoder",
    "LIVE_OPTIM",
    "LiveEncoder",
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
