"""Export a model directory's members to ONNX graphs (+ manifest) -- no PyTorch needed.

``export_model(model_dir, out_dir, window_frames=32)`` writes, per member,
``member_<k>/{forward,grad}_w<W>.onnx`` (and ``features_w1`` / ``live_grad_w<L>`` for a
causal encoder when ``live_frames`` > 0), checks every graph with the static
TensorRT-readiness check, and writes the manifest listing them (with the window). When
``out_dir`` differs from ``model_dir`` the weights, masks and neuron ids are copied too,
so the output is itself a complete model directory.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import onnx

from rt_decoder.encoder.manifest import MANIFEST, load_model, write_manifest
from rt_decoder.encoder.onnx_graph import OPSET, build_graph
from rt_decoder.encoder.params import readout_tables
from rt_decoder.encoder.trt_check import TrtReport, assert_trt_ready
from rt_decoder.errors import ConfigError


def export_model(model_dir: str | Path, out_dir: str | Path, *, window_frames: int = 32,
                 live_frames: int = 0) -> tuple[Path, list[TrtReport]]:
    """Write the ONNX graphs and manifest; return (out_dir, TensorRT-check reports)."""
    if not 1 <= window_frames <= 1024:
        raise ConfigError(f"window_frames must be in [1, 1024], got {window_frames}")
    if not 0 <= live_frames <= 1024:
        raise ConfigError(f"live_frames must be in [0, 1024], got {live_frames}")
    model = load_model(model_dir)
    src, out = Path(model_dir).resolve(), Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if out != src:
        for name in ("neuron_ids.npy", str(model.manifest.masks["file"])):
            shutil.copy2(src / name, out / name)
    arch = model.manifest.arch
    jobs = [("forward", window_frames), ("grad", window_frames)]
    if live_frames:
        if not arch.causal:
            raise ConfigError("live graphs need a causal encoder")
        jobs += [("features", 1), ("live_grad", live_frames)]
    reports: list[TrtReport] = []
    members = []
    for k, info in enumerate(model.manifest.members):
        mdir = out / info.name
        mdir.mkdir(exist_ok=True)
        if out != src:
            shutil.copy2(src / info.name / "weights.npz", mdir / "weights.npz")
        params = model.params[k]
        tables = readout_tables(params["readout_pos"], params["readout_w"])
        graphs = {}
        for kind, w in jobs:
            g = build_graph(kind, params, arch, w, readout=tables)  # type: ignore[arg-type]
            reports.append(assert_trt_ready(g))
            rel = f"{info.name}/{kind}_w{w}.onnx"
            onnx.save_model(g, str(out / rel))
            graphs[f"{kind}_w{w}"] = rel
        members.append(dataclasses.replace(info, graphs=graphs))
    man = dataclasses.replace(model.manifest, members=tuple(members), window_frames=window_frames, onnx_opset=OPSET)
    write_manifest(out, man)
    assert (out / MANIFEST).is_file()
    return out, reports
