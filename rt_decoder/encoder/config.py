"""Frozen, validated settings of the encoder: its architecture and its training.

The architecture is sized for live reconstruction (REFERENCE.md sections 2 and 6): one
loss-and-gradient step for a 16-32 frame window at N = 8,000 neurons must cost a few
milliseconds through ONNX Runtime on two CPU cores. The core is therefore small and
factorised:

* per frame (spatial, no temporal mixing): space-to-depth 2x2 (36x64 -> 4 x 18x32), a
  ``conv1_kernel`` conv to ``conv1_channels`` + ELU, space-to-depth 2x2 again (-> 9x16), a
  ``conv2_kernel`` conv to ``core_channels`` + ELU;
* temporal: one depthwise causal (or centred) conv of ``temporal_kernel`` frames per
  channel, then a pointwise conv to ``readout_channels`` + ELU;
* readout: every neuron samples the 9x16 feature map bilinearly at a learned position
  (shifted per frame by a pupil-position shifter MLP) and weights the channels; ELU+1
  output of z_n + MLP(behaviour) . g_n: the behaviour term is a multiplicative gain
  exp(MLP . g_n) wherever the rate is below 1 (the exponential branch of ELU+1).

Because everything before the temporal conv is per frame, the core features of frames
that no longer change can be cached (``live`` graphs). This module imports only the
standard library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from rt_decoder.errors import ConfigError

#: Stimulus geometry the architecture is built for (height, width) in pixels.
FRAME_SHAPE: tuple[int, int] = (36, 64)
#: Down-sampling of the core: 36x64 -> 9x16 feature map.
FEATURE_SHAPE: tuple[int, int] = (FRAME_SHAPE[0] // 4, FRAME_SHAPE[1] // 4)


def _reject_unknown(cls: type, data: dict[str, Any]) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(known)}")


def _check_int(name: str, value: int, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class ArchConfig:
    """Architecture of one encoder (see the module docstring for the layer order).

    Parameters
    ----------
    conv1_channels : channels of the first spatial conv (at 18x32)
    conv1_kernel : odd kernel size of the first conv, in 18x32 cells (1 cell = 2 px)
    core_channels : channels of the second spatial conv (at 9x16) and the temporal conv
    conv2_kernel : odd kernel size of the second conv, in 9x16 cells (1 cell = 4 px)
    temporal_kernel : frames of the depthwise temporal conv (receptive field in frames)
    readout_channels : channels the readout samples
    shifter_hidden : hidden units of the pupil-position shifter MLP (0 disables it)
    gain_hidden : hidden units of the behaviour gain MLP (0 disables it)
    causal : True: a frame's prediction depends on that frame and the previous
        ``temporal_kernel - 1`` only (live use); False: centred temporal conv
    """

    conv1_channels: int = 8
    conv1_kernel: int = 5
    core_channels: int = 16
    conv2_kernel: int = 3
    temporal_kernel: int = 10
    readout_channels: int = 8
    shifter_hidden: int = 5
    gain_hidden: int = 4
    causal: bool = True

    def __post_init__(self) -> None:
        _check_int("conv1_channels", self.conv1_channels, 1, 256)
        _check_int("conv1_kernel", self.conv1_kernel, 1, 15)
        _check_int("core_channels", self.core_channels, 1, 256)
        _check_int("conv2_kernel", self.conv2_kernel, 1, 9)
        _check_int("temporal_kernel", self.temporal_kernel, 1, 64)
        _check_int("readout_channels", self.readout_channels, 1, 256)
        _check_int("shifter_hidden", self.shifter_hidden, 0, 64)
        _check_int("gain_hidden", self.gain_hidden, 0, 64)
        for name in ("conv1_kernel", "conv2_kernel"):
            if getattr(self, name) % 2 != 1:
                raise ConfigError(f"{name} must be odd, got {getattr(self, name)}")
        if not isinstance(self.causal, bool):
            raise ConfigError(f"causal must be a bool, got {self.causal!r}")
        if not self.causal and self.temporal_kernel % 2 != 1:
            raise ConfigError(f"a centred temporal conv needs an odd temporal_kernel, got {self.temporal_kernel}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        """Build from a mapping, rejecting unknown keys."""
        _reject_unknown(cls, data)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def macs_per_frame(self) -> dict[str, int]:
        """Multiply-adds per frame of each core stage (forward; the input gradient costs the same)."""
        h1, w1 = FRAME_SHAPE[0] // 2, FRAME_SHAPE[1] // 2
        h2, w2 = FEATURE_SHAPE
        return {
            "conv1": h1 * w1 * self.conv1_channels * 4 * self.conv1_kernel ** 2,
            "conv2": h2 * w2 * self.core_channels * 4 * self.conv1_channels * self.conv2_kernel ** 2,
            "temporal": h2 * w2 * self.core_channels * self.temporal_kernel,
            "pointwise": h2 * w2 * self.readout_channels * self.core_channels,
            "shifter": self.readout_channels * (h2 * h2 * w2 + h2 * w2 * w2) if self.shifter_hidden else 0,
        }

    def readout_macs_per_frame(self, n_neurons: int) -> int:
        """Multiply-adds per frame of the readout (4 bilinear taps x channels per neuron)."""
        return 4 * n_neurons * self.readout_channels


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (see ``rt_decoder.encoder.train``).

    Parameters
    ----------
    epochs : maximum passes over the training trials
    patience_epochs : early stopping: epochs without a better validation correlation
    chunk_frames : frames per training sample (random crops of trials)
    batch_chunks : chunks per optimiser step
    learning_rate : AdamW learning rate
    weight_decay : AdamW weight decay (not applied to readout positions and biases)
    skip_frames_eval : frames skipped at the start of every trial when scoring (Sensorium: 50)
    val_fraction : share of trials used for validation when the dataset has no "oracle" tier
    max_minutes : wall-clock cap per ensemble member (0 = none)
    """

    epochs: int = 30
    patience_epochs: int = 5
    chunk_frames: int = 60
    batch_chunks: int = 4
    learning_rate: float = 0.01
    weight_decay: float = 1e-4
    skip_frames_eval: int = 50
    val_fraction: float = 0.2
    max_minutes: float = 0.0

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, 1, 10_000)
        _check_int("patience_epochs", self.patience_epochs, 1, 10_000)
        _check_int("chunk_frames", self.chunk_frames, 4, 10_000)
        _check_int("batch_chunks", self.batch_chunks, 1, 1024)
        _check_int("skip_frames_eval", self.skip_frames_eval, 0, 10_000)
        if not 0.0 < self.learning_rate <= 1.0:
            raise ConfigError(f"learning_rate must be in (0, 1], got {self.learning_rate!r}")
        if not 0.0 <= self.weight_decay <= 1.0:
            raise ConfigError(f"weight_decay must be in [0, 1], got {self.weight_decay!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if not 0.0 <= self.max_minutes <= 10_000.0:
            raise ConfigError(f"max_minutes must be in [0, 10000], got {self.max_minutes!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        _reject_unknown(cls, data)
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
