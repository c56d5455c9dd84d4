"""What a simulated dataset stores as its responses: deconvolved fluorescence or true spikes.

Used by ``rt_decoder.api.simulate`` and ``rt-decoder simulate`` (``cli/commands/simulate.py``).
Imports numpy and ``rt_decoder.deconv`` only (inside the functions); no zmq, no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rt_decoder.errors import BackendUnavailableError

#: a function (fluorescence (T, N) float, frame rate in Hz) -> responses (T, N) float32
ResponsesFn = Callable[[np.ndarray, float], np.ndarray]

RESPONSES_CHOICES = ("auto", "deconv", "spikes")


def training_deconv_settings() -> dict[str, Any]:
    """The deconvolution settings used for training responses (``ENCODER_TRAINING_DECONV``), as a dict."""
    from rt_decoder.deconv import ENCODER_TRAINING_DECONV

    return dict(ENCODER_TRAINING_DECONV)


def responses_function(choice: str) -> ResponsesFn | None:
    """The responses function for ``choice`` (``None``: write the ground-truth spike counts).

    Parameters
    ----------
    choice : {"auto", "deconv", "spikes"}
        ``deconv``: the online deconvolution (``rt_decoder.deconv.deconvolve_array`` with
        ``ENCODER_TRAINING_DECONV``) applied to each trial's fluorescence; ``spikes``: none;
        ``auto``: ``deconv`` when ``rt_decoder.deconv`` can be imported, else ``spikes``.

    Returns
    -------
    callable or None
        ``f(fluorescence (T, N), frame_rate_hz) -> (T, N)``; its ``__module__`` and
        ``__qualname__`` name ``rt_decoder.deconv.deconvolve_array`` (recorded as the source).

    Raises
    ------
    BackendUnavailableError
        ``choice == "deconv"`` and ``rt_decoder.deconv`` cannot be imported.
    """
    if choice == "spikes":
        return None
    try:
        from rt_decoder.deconv import ENCODER_TRAINING_DECONV, DeconvSettings, deconvolve_array
    except ImportError as exc:
        if choice == "deconv":
            raise BackendUnavailableError(f"--responses deconv: rt_decoder.deconv cannot be imported ({exc})"
                                          ) from exc
        return None

    def deconvolved(fluorescence: np.ndarray, frame_rate_hz: float) -> np.ndarray:
        return deconvolve_array(fluorescence, frame_rate_hz, DeconvSettings(**ENCODER_TRAINING_DECONV))

    deconvolved.__qualname__ = "deconvolve_array"
    deconvolved.__module__ = "rt_decoder.deconv"
    return deconvolved
