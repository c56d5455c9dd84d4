"""Random (untrained) encoders and model directories, for tests and benchmarks.

Weights are drawn with numpy from a seed, in the shapes of ``params.param_shapes``, with
scales that keep activations and rates in a realistic range, and non-zero shifter and
gain weights so that every path of the graphs is exercised. Imports numpy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rt_decoder.encoder.config import FEATURE_SHAPE, ArchConfig
from rt_decoder.encoder.manifest import Manifest, MemberInfo, save_masks, sha256_file, write_manifest
from rt_decoder.encoder.params import Params, param_shapes, save_params


def random_params(arch: ArchConfig, n_neurons: int, seed: int = 0) -> Params:
    """Random weights for ``arch`` and ``n_neurons`` (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    hf, wf = FEATURE_SHAPE
    out: Params = {}
    for name, shape in param_shapes(arch, n_neurons).items():
        if name.endswith("_w") and len(shape) == 4 and name != "temporal_w":
            fan_in = int(np.prod(shape[1:]))
            a = rng.normal(0, 1.0 / np.sqrt(fan_in), shape)
        elif name == "temporal_w":
            a = rng.normal(0, 0.3 / np.sqrt(arch.temporal_kernel), shape)
            a[:, 0, -1 if arch.causal else arch.temporal_kernel // 2, 0] += 1.0
        elif name == "readout_pos":
            a = rng.uniform(0, 1, shape) * np.array([hf - 1, wf - 1])
        elif name == "readout_w":
            a = rng.normal(0, 0.5, shape)
        elif name == "readout_b":
            a = rng.normal(-1.5, 0.3, shape)
        elif name in ("video_mean",):
            a = np.array(110.0)
        elif name in ("video_std",):
            a = np.array(60.0)
        elif name == "behaviour_mean":
            a = np.array([18.0, 5.0, 0.0, 0.0])
        elif name == "behaviour_std":
            a = np.array([4.0, 6.0, 2.0, 2.0])
        else:
            a = rng.normal(0, 0.3, shape)
        out[name] = np.asarray(a, np.float32).reshape(shape)
    return out


def write_random_model(root: str | Path, arch: ArchConfig | None = None, n_neurons: int = 200,
                       n_members: int = 1, seed: int = 0, window_frames: int = 16) -> Path:
    """A complete model directory with random weights (no graphs; they are built on load)."""
    arch = arch or ArchConfig()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    members = []
    for k in range(n_members):
        d = root / f"member_{k}"
        d.mkdir(exist_ok=True)
        p = random_params(arch, n_neurons, seed + k)
        save_params(d / "weights.npz", p)
        members.append(MemberInfo(name=f"member_{k}", seed=seed + k, weights_sha256=sha256_file(d / "weights.npz")))
    np.save(root / "neuron_ids.npy", np.arange(n_neurons, dtype=np.int64) + 1000, allow_pickle=False)
    yy, xx = np.mgrid[0:36, 0:64]
    alpha = np.exp(-(((yy - 18) / 12.0) ** 2 + ((xx - 32) / 20.0) ** 2)) * 1.5
    save_masks(root / "alpha.npz", alpha)
    p0 = random_params(arch, n_neurons, seed)
    man = Manifest(arch=arch, n_neurons=n_neurons, frame_rate_hz=30.0, window_frames=window_frames,
                   normalisation={"video_mean": float(p0["video_mean"]), "video_std": float(p0["video_std"]),
                                  "behaviour_mean": p0["behaviour_mean"].tolist(),
                                  "behaviour_std": p0["behaviour_std"].tolist(), "pixel_range": [0.0, 255.0]},
                   members=tuple(members), training={"data_hash": "random", "seed": seed, "note": "untrained"})
    write_manifest(root, man)
    return root
