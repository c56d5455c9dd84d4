"""The encoder in PyTorch: used for training and as the reference for every exported graph.

Imports torch at module level: the runtime (manifest, backends' ONNX/TensorRT paths,
reconstruction, service) must never import this module except through
``rt_decoder.encoder.backends.TorchBackend``, which does so lazily.

The layer order is described in ``rt_decoder.encoder.config``. The readout samples the
(shifted) feature map with ``grid_sample(align_corners=True, padding_mode="zeros")`` at
learned positions, the exact bilinear rule the exported pixel-major tables encode.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rt_decoder.encoder.config import FEATURE_SHAPE, FRAME_SHAPE, ArchConfig
from rt_decoder.encoder.params import Params, param_shapes, validate_params

LOSS_EPS = 1e-8


def shift_matrices(shift: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear shift operators: A[t, i, j] = relu(1 - |j - i - s_t|), shape (T, size, size).

    ``A @ v`` samples v at i + s_t (zero outside), the exact bilinear rule.
    """
    idx = torch.arange(size, dtype=shift.dtype, device=shift.device)
    d = idx[None, :] - idx[:, None]  # d[i, j] = j - i
    return torch.relu(1.0 - torch.abs(d[None] - shift[:, None, None]))


class Encoder(nn.Module):
    """Video window + behaviour -> expected responses of every neuron at every frame.

    Parameters
    ----------
    arch : ArchConfig
    n_neurons : int
    """

    video_mean: torch.Tensor
    video_std: torch.Tensor
    behaviour_mean: torch.Tensor
    behaviour_std: torch.Tensor
    conv1_w: nn.Parameter
    conv1_b: nn.Parameter
    conv2_w: nn.Parameter
    conv2_b: nn.Parameter
    temporal_w: nn.Parameter
    temporal_b: nn.Parameter
    pointwise_w: nn.Parameter
    pointwise_b: nn.Parameter
    readout_pos: nn.Parameter
    readout_w: nn.Parameter
    readout_b: nn.Parameter
    shifter_w1: nn.Parameter
    shifter_b1: nn.Parameter
    shifter_w2: nn.Parameter
    shifter_b2: nn.Parameter
    gain_w1: nn.Parameter
    gain_b1: nn.Parameter
    gain_g: nn.Parameter

    def __init__(self, arch: ArchConfig, n_neurons: int) -> None:
        super().__init__()
        self.arch = arch
        self.n_neurons = int(n_neurons)
        for name, shape in param_shapes(arch, n_neurons).items():
            if name in ("video_mean", "video_std", "behaviour_mean", "behaviour_std"):
                self.register_buffer(name, torch.zeros(shape))
            else:
                setattr(self, name, nn.Parameter(torch.zeros(shape)))
        self.video_std.fill_(1.0)
        self.behaviour_std.fill_(1.0)

    # ---------------------------------------------------------------- weights
    def load_numpy(self, params: Params) -> None:
        """Copy a validated numpy weight dict into this module."""
        params = validate_params(params, self.arch, self.n_neurons)
        sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()}
        own = self.state_dict()
        self.load_state_dict({k: sd[k].to(own[k].dtype) for k in own})

    def to_numpy(self) -> Params:
        """Weights as float32 numpy arrays (the ``weights.npz`` content)."""
        return {k: v.detach().cpu().float().numpy().copy() for k, v in self.state_dict().items()}

    def init_weights(self, generator: torch.Generator, mean_response: np.ndarray | None = None,
                     positions: np.ndarray | None = None) -> None:
        """Random initialisation from ``generator`` (deterministic for a seed)."""
        a = self.arch
        with torch.no_grad():
            for name in ("conv1_w", "conv2_w", "pointwise_w"):
                w = getattr(self, name)
                fan_in = w[0].numel()
                w.copy_(torch.randn(w.shape, generator=generator) * (1.0 / fan_in) ** 0.5)
            kt = a.temporal_kernel
            tw = torch.randn(self.temporal_w.shape, generator=generator) * 0.3 / kt ** 0.5
            tw[:, 0, -1 if a.causal else kt // 2, 0] += 1.0  # start near identity (present frame)
            self.temporal_w.copy_(tw)
            for name in ("conv1_b", "conv2_b", "temporal_b", "pointwise_b"):
                getattr(self, name).zero_()
            self.readout_w.copy_(torch.randn(self.readout_w.shape, generator=generator)
                                 * (1.0 / a.readout_channels) ** 0.5 * 0.1)
            hf, wf = FEATURE_SHAPE
            if positions is None:
                pos = torch.rand((self.n_neurons, 2), generator=generator) * torch.tensor([hf - 1.0, wf - 1.0])
            else:
                pos = torch.as_tensor(np.asarray(positions, np.float32))
            self.readout_pos.copy_(pos)
            if mean_response is not None:
                m = torch.as_tensor(np.maximum(np.asarray(mean_response, np.float32), 1e-3))
                # ELU+1 inverse: r = exp(b) for b <= 0, r = b + 1 above
                self.readout_b.copy_(torch.where(m < 1.0, torch.log(m), m - 1.0))
            else:
                self.readout_b.zero_()
            if a.shifter_hidden:
                self.shifter_w1.copy_(torch.randn(self.shifter_w1.shape, generator=generator) * 0.5)
                self.shifter_b1.zero_()
                self.shifter_w2.zero_()
                self.shifter_b2.zero_()
            if a.gain_hidden:
                self.gain_w1.copy_(torch.randn(self.gain_w1.shape, generator=generator) * 0.5)
                self.gain_b1.zero_()
                self.gain_g.zero_()

    # ---------------------------------------------------------------- model
    def core_features(self, video: torch.Tensor) -> torch.Tensor:
        """Per-frame spatial features, video (B, T, 36, 64) pixels -> (B, T, C2, 9, 16)."""
        b, t = video.shape[:2]
        x = (video.reshape(b * t, 1, *FRAME_SHAPE) - self.video_mean) / self.video_std
        x = F.pixel_unshuffle(x, 2)
        x = F.elu(F.conv2d(x, self.conv1_w, self.conv1_b, padding=self.arch.conv1_kernel // 2))
        x = F.pixel_unshuffle(x, 2)
        x = F.elu(F.conv2d(x, self.conv2_w, self.conv2_b, padding=self.arch.conv2_kernel // 2))
        return x.reshape(b, t, *x.shape[1:])

    def responses_from_features(self, feats: torch.Tensor, behaviour: torch.Tensor,
                                context: torch.Tensor | None = None) -> torch.Tensor:
        """Features (B, T, C2, 9, 16) (+ optional causal context (B, K-1, C2, 9, 16)) -> (B, T, N)."""
        a = self.arch
        b, t, c2 = feats.shape[:3]
        hf, wf = FEATURE_SHAPE
        p = hf * wf
        g = feats.reshape(b, t, c2, p).permute(0, 2, 1, 3)  # (B, C2, T, P)
        kt = a.temporal_kernel
        if context is not None:
            if not a.causal:
                raise ValueError("context features need a causal encoder")
            ctx = context.reshape(b, kt - 1, c2, p).permute(0, 2, 1, 3)
            g = F.conv2d(torch.cat([ctx, g], dim=2), self.temporal_w, self.temporal_b, groups=c2)
        else:
            pad = (0, 0, kt - 1, 0) if a.causal else (0, 0, (kt - 1) // 2, (kt - 1) // 2)
            g = F.conv2d(F.pad(g, pad), self.temporal_w, self.temporal_b, groups=c2)
        h = F.elu(F.conv2d(g, self.pointwise_w, self.pointwise_b))  # (B, C3, T, P)
        c3 = h.shape[1]
        h = h.permute(0, 2, 1, 3).reshape(b * t, c3, hf, wf)
        beh = ((behaviour - self.behaviour_mean) / self.behaviour_std).reshape(b * t, 4)
        if a.shifter_hidden:
            hid = torch.tanh(beh[:, 2:4] @ self.shifter_w1.T + self.shifter_b1)
            s = hid @ self.shifter_w2.T + self.shifter_b2  # (BT, 2) (dy, dx) in cells
            ay = shift_matrices(s[:, 0], hf)  # (BT, hf, hf)
            axt = shift_matrices(s[:, 1], wf).transpose(1, 2)  # (BT, wf, wf)
            h = ay[:, None] @ h @ axt[:, None]
        raw = self.readout_pos
        pos = torch.stack([raw[:, 0].clamp(0, hf - 1), raw[:, 1].clamp(0, wf - 1)], dim=1)
        grid = torch.stack([pos[:, 1] * (2.0 / (wf - 1)) - 1.0, pos[:, 0] * (2.0 / (hf - 1)) - 1.0], dim=1)
        grid = grid[None, None].expand(b * t, 1, self.n_neurons, 2)
        sampled = F.grid_sample(h, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        z = torch.einsum("bcn,nc->bn", sampled[:, :, 0, :], self.readout_w) + self.readout_b
        if a.gain_hidden:
            # behaviour modulation inside the output nonlinearity: r = exp(z + m) = exp(m) exp(z)
            # for z + m <= 0 (a multiplicative gain), additive above
            hid = torch.tanh(beh @ self.gain_w1.T + self.gain_b1)
            z = z + hid @ self.gain_g
        r = F.elu(z) + 1.0
        return r.reshape(b, t, self.n_neurons)

    def forward(self, video: torch.Tensor, behaviour: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """Video (B, T, 36, 64) pixels 0..255, behaviour (B, T, 4) -> responses (B, T, N)."""
        return self.responses_from_features(self.core_features(video), behaviour, context)


def poisson_loss(pred: torch.Tensor, target: torch.Tensor, neuron_weights: torch.Tensor | None = None,
                 frame_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted Poisson negative log-likelihood (up to a constant), mean over frames x neurons.

    loss = sum_{t,n} fw_t nw_n (r - y log(r + 1e-8)) / (T N), pred/target (..., T, N).
    """
    term = pred - target * torch.log(pred + LOSS_EPS)
    if neuron_weights is not None:
        term = term * neuron_weights
    if frame_weights is not None:
        term = term * frame_weights[..., :, None]
    return term.sum() / (pred.shape[-1] * pred.shape[-2])


def loss_and_grad(model: Encoder, video: np.ndarray, behaviour: np.ndarray, targets: np.ndarray,
                  neuron_weights: np.ndarray, frame_weights: np.ndarray | None = None,
                  dtype: torch.dtype = torch.float32) -> tuple[float, np.ndarray]:
    """Reference loss and d loss / d video by autograd, one window (T, 36, 64)."""
    v = torch.tensor(np.asarray(video), dtype=dtype).reshape(1, -1, *FRAME_SHAPE).requires_grad_(True)
    t = v.shape[1]
    beh = torch.tensor(np.asarray(behaviour), dtype=dtype).reshape(1, t, 4)
    y = torch.tensor(np.asarray(targets), dtype=dtype).reshape(1, t, -1)
    nw = torch.tensor(np.asarray(neuron_weights), dtype=dtype)
    fw = None if frame_weights is None else torch.tensor(np.asarray(frame_weights), dtype=dtype)
    loss = poisson_loss(model(v, beh), y, nw, fw)
    (grad,) = torch.autograd.grad(loss, v)
    return float(loss.detach()), grad.detach().reshape(t, *FRAME_SHAPE).numpy()
