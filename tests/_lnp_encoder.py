"""A small, exact numpy linear-nonlinear-Poisson encoder for reconstruction tests.

r[t, n] = softplus(a[n] * sum_k h[k] * (S[n] . x~[t - k]) + b[n]),  x~ = (x - 127.5) / 64,
causal within the window (frames before the window count as zero contrast). The loss is
the Poisson negative log-likelihood sum_t sum_n w[n] * (r - y * log r). Its gradient is
written out by hand, so reconstruction logic is tested without torch or ONNX.
"""

from __future__ import annotations

import numpy as np


def _softplus(u: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, u)


class LNPEncoder:
    def __init__(self, n_neurons: int, window: int = 8, shape: tuple[int, int] = (12, 16),
                 n_taps: int = 3, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        H, W = shape
        yy, xx = np.mgrid[0:H, 0:W]
        cy = rng.uniform(2, H - 2, n_neurons)
        cx = rng.uniform(2, W - 2, n_neurons)
        sig = rng.uniform(1.0, 2.0, n_neurons)
        theta = rng.uniform(0, np.pi, n_neurons)
        phase = rng.uniform(0, 2 * np.pi, n_neurons)
        d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
        proj = (np.cos(theta)[:, None, None] * (xx[None] - cx[:, None, None])
                + np.sin(theta)[:, None, None] * (yy[None] - cy[:, None, None]))
        rf = np.exp(-d2 / (2 * sig[:, None, None] ** 2)) * np.cos(0.8 * proj + phase[:, None, None])
        self.S = (rf.reshape(n_neurons, -1) / np.linalg.norm(rf.reshape(n_neurons, -1), axis=1, keepdims=True)
                  ).astype(np.float64)
        self.h = np.array([0.3, 1.0, 0.5][:n_taps], np.float64)
        self.a = rng.uniform(1.0, 2.0, n_neurons)
        self.b = rng.uniform(-1.0, 0.0, n_neurons)
        self.shape = shape
        self._window = window
        self.calls = 0

    @property
    def window_frames(self) -> int:
        return self._window

    @property
    def n_neurons(self) -> int:
        return self.S.shape[0]

    def _drive(self, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = (video.reshape(video.shape[0], -1).astype(np.float64) - 127.5) / 64.0
        z = x @ self.S.T                                   # (T, N)
        u = np.zeros_like(z)
        for k, hk in enumerate(self.h):
            u[k:] += hk * z[: z.shape[0] - k]
        return z, self.a * u + self.b

    def forward(self, video: np.ndarray, behaviour: np.ndarray | None = None) -> np.ndarray:
        return _softplus(self._drive(video)[1]).astype(np.float32)

    def loss_and_grad(self, video: np.ndarray, behaviour: np.ndarray, targets: np.ndarray,
                      neuron_weights: np.ndarray, frame_weights: np.ndarray | None = None
                      ) -> tuple[float, np.ndarray]:
        self.calls += 1
        _, u = self._drive(video)
        r = _softplus(u) + 1e-8
        y = targets.astype(np.float64)
        w = neuron_weights.astype(np.float64)[None, :]
        if frame_weights is not None:
            w = w * np.asarray(frame_weights, np.float64)[:, None]
        loss = float(np.sum(w * (r - y * np.log(r))))
        du = w * (1.0 - y / r) / (1.0 + np.exp(-u))       # dL/du
        dz = np.zeros_like(du)
        T = du.shape[0]
        for k, hk in enumerate(self.h):
            dz[: T - k] += self.a * hk * du[k:]
        dx = dz @ self.S / 64.0
        return loss, dx.reshape(video.shape).astype(np.float32)
