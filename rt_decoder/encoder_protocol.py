"""What reconstruction needs from an encoder: one protocol and its live extension.

``Encoder`` is what every backend (``rt_decoder.encoder.backends``: ONNX Runtime, PyTorch,
TensorRT) and every test encoder implements, and what the offline protocol and the live
stage's full-window path call. ``LiveEncoder`` adds the cached-context path the live stage
runs by default (``rt_decoder.recon.live``): exactly the members that module calls.

A backend either implements ``LiveEncoder`` when it is opened with a live graph
(``BackendSettings.live_frames > 0``) or refuses at construction with
``BackendUnavailableError`` naming what it lacks (TensorRT has no live graph).

Shapes: video (W, H, Wd) float32 pixels 0..255, time-major; behaviour (W, 4); targets
(W, N); neuron_weights (N,) (0 removes a neuron from the loss); frame_weights (W,) (None =
ones). Imports numpy and the standard library only.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

#: encoder backends (``rt_decoder.encoder.backends``): ONNX Runtime, PyTorch, native TensorRT
BACKEND_KINDS = ("onnxruntime", "torch", "tensorrt")


@runtime_checkable
class Encoder(Protocol):
    """A differentiable encoding model: video window + behaviour -> every neuron's response."""

    @property
    def window_frames(self) -> int:
        """Frames per ``forward`` / ``loss_and_grad`` call."""
        ...

    @property
    def n_neurons(self) -> int:
        """Neurons predicted (N)."""
        ...

    def forward(self, video: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
        """Predicted responses (W, N) of video (W, H, Wd) and behaviour (W, 4)."""
        ...

    def loss_and_grad(self, video: np.ndarray, behaviour: np.ndarray, targets: np.ndarray,
                      neuron_weights: np.ndarray, frame_weights: np.ndarray | None = None
                      ) -> tuple[float, np.ndarray]:
        """Poisson loss of the window and its gradient w.r.t. ``video``, shape (W, H, Wd)."""
        ...


@runtime_checkable
class LiveEncoder(Encoder, Protocol):
    """An ``Encoder`` of a causal model with the cached-context live graph.

    The live stage optimises the ``live_frames`` newest frames of its window; the
    ``context_frames`` frozen frames before them enter only through their core features,
    computed once per frame by ``features``.
    """

    @property
    def live_frames(self) -> int:
        """Frames per ``loss_and_grad_live`` call (the live stage's lag + 1)."""
        ...

    @property
    def context_frames(self) -> int:
        """Frozen frames whose features the live graph takes as context (temporal kernel - 1)."""
        ...

    def features(self, video: np.ndarray) -> np.ndarray:
        """Per-frame core features (K, C, h, w) of video (K, H, Wd)."""
        ...

    def loss_and_grad_live(self, video: np.ndarray, context: np.ndarray, behaviour: np.ndarray,
                           targets: np.ndarray, neuron_weights: np.ndarray,
                           frame_weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """Loss over the ``live_frames`` frames of ``video`` given the ``context`` features
        (context_frames, C, h, w); gradient w.r.t. ``video``, shape (live_frames, H, Wd)."""
        ...
