"""Encoder benchmark: forward and loss+gradient time per backend, window, neurons, threads.

    python -m benchmarks.encoder [--quick] --out FILE [--model rt_decoder/models/demo]

Fixed cases (random weights of the default architecture; timing does not depend on the
values): windows 16 / 32, N = 1,000 / 8,000 / 30,000, 1 and 2 intra-op threads, ONNX
Runtime (CPU) and the PyTorch reference; plus the live (cached-context) graph and an
architecture trade-off table. Warm-up, then medians and p90 over repeats. Held-out and
ceiling correlations and training time are read from the demo model's manifest.
``--quick`` (< 1 min): N = 1k / 8k, ONNX Runtime plus one PyTorch point, fewer repeats.

JSON fields: ``steps`` = [{backend, neurons, window, threads, forward_ms_median,
grad_ms_median, grad_ms_p90}] (random weights), ``demo_model_steps`` (the trained demo
model: its readout positions cluster, so the pixel-major tables carry more padding),
``live_steps``, ``tradeoff``, ``model`` (parameters,
MACs), ``heldout_corr``, ``ceiling_corr``, ``train_seconds``, ``machine``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rt_decoder.encoder import BackendSettings, OnnxRuntimeBackend, load_model, open_backend
from rt_decoder.encoder.config import ArchConfig
from rt_decoder.encoder.params import param_shapes
from rt_decoder.encoder.synthetic import write_random_model


def _time(fn, reps: int, warmup: int = 3) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts)), float(np.percentile(ts, 90))


def _inputs(w: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, (w, 36, 64)).astype(np.float32),
            (rng.normal(size=(w, 4)) * [4, 6, 2, 2] + [18, 5, 0, 0]).astype(np.float32),
            rng.poisson(0.3, (w, n)).astype(np.float32), np.ones(n, np.float32))


def macs(arch: ArchConfig, n: int, w: int) -> dict[str, float]:
    core = sum(arch.macs_per_frame().values())
    ro = arch.readout_macs_per_frame(n)
    return {"core_macs_per_frame": core, "readout_macs_per_frame": ro,
            "forward_mmacs_per_window": (core + ro) * w / 1e6,
            # input gradient: each layer's transposed op costs what its forward costs
            "grad_mmacs_per_window": 2 * (core + ro) * w / 1e6}


def run(quick: bool, model_path: str | None) -> dict[str, Any]:
    arch = ArchConfig()
    neurons = [1000, 8000] if quick else [1000, 8000, 30000]
    reps = 10 if quick else 30
    steps: list[dict[str, Any]] = []
    live_steps: list[dict[str, Any]] = []
    tradeoff: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in neurons:
            root = write_random_model(Path(tmp) / f"n{n}", arch, n_neurons=n, seed=0, window_frames=32)
            model = load_model(root)
            for w in (16, 32):
                video, beh, y, nw = _inputs(w, n)
                for threads in (1, 2):
                    enc = open_backend(model, 0, BackendSettings(window_frames=w, intra_op_threads=threads))
                    f_med, _ = _time(lambda: enc.forward(video, beh), reps)
                    g_med, g_p90 = _time(lambda: enc.loss_and_grad(video, beh, y, nw), reps)
                    steps.append({"backend": "onnxruntime", "neurons": n, "window": w, "threads": threads,
                                  "forward_ms_median": f_med, "grad_ms_median": g_med, "grad_ms_p90": g_p90})
                    print(f"onnxruntime N={n:6d} W={w} threads={threads}: forward {f_med:6.2f} ms, "
                          f"loss+grad {g_med:6.2f} ms (p90 {g_p90:.2f})", flush=True)
                torch_cases = [(8000, 32, 2)] if quick else [(n, w, 1), (n, w, 2)]
                for tn, tw, tt in torch_cases:
                    if (tn, tw) != (n, w):
                        continue
                    try:
                        enc = open_backend(model, 0, BackendSettings(kind="torch", window_frames=w,
                                                                     intra_op_threads=tt))
                    except Exception as exc:  # torch missing: record why
                        print(f"torch backend unavailable: {exc}")
                        continue
                    f_med, _ = _time(lambda: enc.forward(video, beh), max(3, reps // 3))
                    g_med, g_p90 = _time(lambda: enc.loss_and_grad(video, beh, y, nw), max(3, reps // 3))
                    steps.append({"backend": "torch", "neurons": n, "window": w, "threads": tt,
                                  "forward_ms_median": f_med, "grad_ms_median": g_med, "grad_ms_p90": g_p90})
                    print(f"torch       N={n:6d} W={w} threads={tt}: forward {f_med:6.2f} ms, "
                          f"loss+grad {g_med:6.2f} ms", flush=True)
            if n == 8000:
                for L in (8, 16):
                    enc = OnnxRuntimeBackend(model, 0, BackendSettings(window_frames=32, live_frames=L, intra_op_threads=2))
                    video, beh, y, nw = _inputs(L, n)
                    ctx = enc.features(video[:1].repeat(enc.context_frames, 0))
                    g_med, g_p90 = _time(lambda: enc.loss_and_grad_live(video, ctx, beh, y, nw), reps)
                    f_med, _ = _time(lambda: enc.features(video[:1]), reps)
                    live_steps.append({"backend": "onnxruntime", "neurons": n, "live_frames": L,
                                       "context_frames": enc.context_frames, "threads": 2,
                                       "grad_ms_median": g_med, "grad_ms_p90": g_p90, "features_ms_per_frame": f_med})
                    print(f"live        N={n:6d} L={L} (+{enc.context_frames} cached): loss+grad {g_med:.2f} ms, "
                          f"features {f_med:.2f} ms/frame", flush=True)
        variants = {
            "default": arch,
            "conv1 3x3": ArchConfig(conv1_kernel=3),
            "conv2 1x1": ArchConfig(conv2_kernel=1),
            "readout 16ch": ArchConfig(readout_channels=16),
            "core 32ch": ArchConfig(core_channels=32),
            "wide (c1 16, core 32, ro 16)": ArchConfig(conv1_channels=16, core_channels=32, readout_channels=16),
        }
        if quick:
            variants = {k: variants[k] for k in ("default", "conv1 3x3")}
        for name, a in variants.items():
            root = write_random_model(Path(tmp) / f"v{len(tradeoff)}", a, n_neurons=8000, seed=0, window_frames=32)
            enc = open_backend(load_model(root), 0, BackendSettings(window_frames=32, intra_op_threads=2))
            video, beh, y, nw = _inputs(32, 8000)
            g_med, g_p90 = _time(lambda: enc.loss_and_grad(video, beh, y, nw), reps)
            n_params = sum(int(np.prod(s)) for s in param_shapes(a, 8000).values())
            tradeoff.append({"name": name, "arch": a.to_dict(), "parameters_n8000": n_params,
                             **macs(a, 8000, 32), "grad_ms_median_w32_n8000_2t": g_med})
            print(f"trade-off {name:30s}: {g_med:6.2f} ms, {macs(a, 8000, 32)['grad_mmacs_per_window']:.0f} MMAC",
                  flush=True)
    shapes = param_shapes(arch, 8000)
    per_neuron = sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith(("readout_", "gain_g")))
    result: dict[str, Any] = {
        "quick": quick,
        "steps": steps,
        "live_steps": live_steps,
        "tradeoff": tradeoff,
        "model": {"arch": arch.to_dict(), "shared_parameters": sum(int(np.prod(s)) for s in shapes.values()) - per_neuron,
                  "parameters_per_neuron": per_neuron // 8000, **macs(arch, 8000, 32)},
        "heldout_corr": None, "ceiling_corr": None, "train_seconds": None,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
                    "load_average": os.getloadavg(), "note": "shared machine: timings are under others' load"},
    }
    if model_path and Path(model_path, "manifest.json").is_file():
        demo = load_model(model_path)
        demo_steps = []
        for w in (16, 32):
            for threads in (1, 2):
                enc = open_backend(demo, 0, BackendSettings(window_frames=w, intra_op_threads=threads))
                video, beh, y, nw = _inputs(w, demo.n_neurons)
                beh = np.repeat(demo.params[0]["behaviour_mean"][None], w, 0)
                f_med, _ = _time(lambda: enc.forward(video, beh), reps)
                g_med, g_p90 = _time(lambda: enc.loss_and_grad(video, beh, y, nw), reps)
                demo_steps.append({"backend": "onnxruntime", "model": "demo (trained)", "neurons": demo.n_neurons,
                                   "window": w, "threads": threads, "forward_ms_median": f_med,
                                   "grad_ms_median": g_med, "grad_ms_p90": g_p90})
                print(f"demo model  N={demo.n_neurons:6d} W={w} threads={threads}: forward {f_med:6.2f} ms, "
                      f"loss+grad {g_med:6.2f} ms (p90 {g_p90:.2f})", flush=True)
        result["demo_model_steps"] = demo_steps
        t = demo.manifest.training
        result.update({"heldout_corr": t.get("heldout_corr_ensemble"), "heldout_corr_members": t.get("heldout_corr_members"),
                       "ceiling_corr": t.get("ceiling_corr"), "train_seconds": t.get("train_seconds"),
                       "responses_source": t.get("responses_source"), "model_path": str(model_path)})
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=str(Path(__file__).resolve().parent.parent / "rt_decoder" / "models" / "demo"))
    a = p.parse_args(argv)
    res = run(a.quick, a.model)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"heldout_corr {res['heldout_corr']}, ceiling_corr {res['ceiling_corr']}; wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
