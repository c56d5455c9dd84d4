"""Exported ONNX graphs vs the PyTorch reference (autograd), and the TensorRT-readiness check.

Tolerances: ONNX Runtime (float32, 2 intra-op threads) vs PyTorch autograd (float32):
forward max |diff| <= 1e-5 x max |r|; loss relative 1e-5; gradient max |diff| <= 1e-4 x
max |grad| (measured about 1.5e-6). PyTorch gradient vs central finite differences in
float64: relative 1e-6.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")

from rt_decoder.encoder.config import ArchConfig  # noqa: E402
from rt_decoder.encoder.onnx_graph import GRAPH_KINDS, build_graph  # noqa: E402
from rt_decoder.encoder.params import readout_tables  # noqa: E402
from rt_decoder.encoder.synthetic import random_params  # noqa: E402
from rt_decoder.encoder.torch_model import Encoder, loss_and_grad  # noqa: E402
from rt_decoder.encoder.trt_check import assert_trt_ready, check_trt_ready  # noqa: E402
from rt_decoder.errors import ModelError  # noqa: E402

N = 150
W = 12
ARCHS = {
    "default": ArchConfig(),
    "centred-plain": ArchConfig(causal=False, temporal_kernel=5, shifter_hidden=0, gain_hidden=0, conv2_kernel=1),
    "small": ArchConfig(conv1_channels=4, conv1_kernel=3, core_channels=6, temporal_kernel=3, readout_channels=3),
}


def _session(model: onnx.ModelProto, threads: int = 2) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _net(arch: ArchConfig, params: dict, dtype=torch.float32) -> Encoder:
    net = Encoder(arch, N)
    net.load_numpy(params)
    return net.to(dtype).eval()


def _inputs(rng: np.random.Generator, w: int = W, real: bool = False):
    if real:
        from rt_decoder.sim import RigConfig, VirtualRig

        tr = VirtualRig(RigConfig(n_neurons=N, n_trials=1, trial_frames=60, seed=3)).trial(0)
        video, beh = tr.video[20:20 + w].astype(np.float32), tr.behaviour[20:20 + w].astype(np.float32)
        targets = tr.spikes[20:20 + w].astype(np.float32)
    else:
        video = rng.uniform(0, 255, (w, 36, 64)).astype(np.float32)
        beh = (rng.normal(size=(w, 4)) * [4, 6, 2, 2] + [18, 5, 0, 0]).astype(np.float32)
        targets = rng.poisson(0.3, (w, N)).astype(np.float32)
    nw = rng.uniform(0.2, 1.0, N).astype(np.float32)
    fw = rng.uniform(0.5, 1.0, w).astype(np.float32)
    return video, beh, targets, nw, fw


@pytest.mark.parametrize("arch_name", sorted(ARCHS))
@pytest.mark.parametrize("real", [False, True], ids=["random", "rig"])
def test_forward_and_gradient_parity(arch_name: str, real: bool) -> None:
    arch = ARCHS[arch_name]
    params = random_params(arch, N, seed=1)
    rng = np.random.default_rng(2)
    video, beh, y, nw, fw = _inputs(rng, real=real)
    net = _net(arch, params)
    with torch.no_grad():
        ref_r = net(torch.from_numpy(video)[None], torch.from_numpy(beh)[None])[0].numpy()
    ref_loss, ref_g = loss_and_grad(net, video, beh, y, nw, fw)
    fwd = _session(build_graph("forward", params, arch, W))
    grad = _session(build_graph("grad", params, arch, W))
    feed = {"video": video[None], "behaviour": beh, "targets": y, "neuron_weights": nw, "frame_weights": fw}
    results = []
    for _ in range(5):  # repeated with 2 threads: catches non-deterministic kernels
        (r,) = fwd.run(None, {"video": video[None], "behaviour": beh})
        loss, g = grad.run(None, feed)
        results.append((r, float(loss), g[0]))
    for r, loss, g in results:
        assert np.abs(r - ref_r).max() <= 1e-5 * np.abs(ref_r).max()
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert np.abs(g - ref_g).max() <= 1e-4 * np.abs(ref_g).max()
        np.testing.assert_array_equal(g, results[0][2])
    assert np.abs(ref_g).max() > 0


def test_torch_gradient_matches_finite_differences() -> None:
    arch = ARCHS["default"]
    params = random_params(arch, N, seed=4)
    net = _net(arch, params, torch.float64)
    rng = np.random.default_rng(5)
    video, beh, y, nw, fw = _inputs(rng, w=6)
    _, g = loss_and_grad(net, video.astype(np.float64), beh, y, nw, fw, dtype=torch.float64)
    eps = 1e-3
    for _ in range(12):
        idx = tuple(int(rng.integers(s)) for s in video.shape)
        vp, vm = video.astype(np.float64), video.astype(np.float64)
        vp[idx] += eps
        vm[idx] -= eps
        lp, _ = loss_and_grad(net, vp, beh, y, nw, fw, dtype=torch.float64)
        lm, _ = loss_and_grad(net, vm, beh, y, nw, fw, dtype=torch.float64)
        fd = (lp - lm) / (2 * eps)
        assert fd == pytest.approx(g[idx], rel=1e-6, abs=1e-12)


def test_zero_neuron_weight_removes_its_influence() -> None:
    arch = ARCHS["default"]
    params = random_params(arch, N, seed=6)
    sess = _session(build_graph("grad", params, arch, W))
    rng = np.random.default_rng(7)
    video, beh, y, nw, fw = _inputs(rng)
    nw[:40] = 0.0
    feed = {"video": video[None], "behaviour": beh, "targets": y, "neuron_weights": nw, "frame_weights": fw}
    loss0, g0 = sess.run(None, feed)
    y2 = y.copy()
    y2[:, :40] = rng.poisson(5.0, (W, 40))  # wildly different targets for the dropped neurons
    loss1, g1 = sess.run(None, {**feed, "targets": y2})
    assert float(loss1) == float(loss0)
    np.testing.assert_array_equal(g1, g0)
    loss2, g2 = sess.run(None, {**feed, "targets": y2, "neuron_weights": np.ones(N, np.float32)})
    assert np.abs(g2 - g0).max() > 1e-3 * np.abs(g0).max()


def test_live_graph_with_cached_context_equals_full_window() -> None:
    arch = ARCHS["default"]
    params = random_params(arch, N, seed=8)
    rng = np.random.default_rng(9)
    ctx_n = arch.temporal_kernel - 1
    L = 5
    video, beh, y, nw, _ = _inputs(rng, w=ctx_n + L)
    fw = np.zeros(ctx_n + L, np.float32)
    fw[ctx_n:] = 1.0  # the full window with loss only on the last L frames
    full = _session(build_graph("grad", params, arch, ctx_n + L))
    loss_f, g_f = full.run(None, {"video": video[None], "behaviour": beh, "targets": y, "neuron_weights": nw,
                                  "frame_weights": fw})
    feats = _session(build_graph("features", params, arch, ctx_n))
    (context,) = feats.run(None, {"video": video[None, :ctx_n]})
    live = _session(build_graph("live_grad", params, arch, L))
    loss_l, g_l = live.run(None, {"video": video[None, ctx_n:], "context": context, "behaviour": beh[ctx_n:],
                                  "targets": y[ctx_n:], "neuron_weights": nw, "frame_weights": fw[ctx_n:]})
    # the loss normalisation is 1/(W N): rescale the live loss to the full window's W
    assert float(loss_l) * L / (ctx_n + L) == pytest.approx(float(loss_f), rel=1e-5)
    gl = g_l[0] * L / (ctx_n + L)
    assert np.abs(gl - g_f[0, ctx_n:]).max() <= 1e-4 * np.abs(g_f).max()
    assert np.abs(g_f[0, :ctx_n]).max() > 0  # context frames do get gradient in the full graph


def test_readout_tables_reproduce_bilinear_sampling() -> None:
    rng = np.random.default_rng(10)
    pos = rng.uniform([-1, -1], [10, 17], (300, 2))  # includes out-of-range and edge positions
    pos[:4] = [[8, 15], [0, 0], [8, 0], [0, 15]]
    w = rng.normal(size=(300, 3)).astype(np.float32)
    t = readout_tables(pos, w)
    fmap = rng.normal(size=(3, 9, 16)).astype(np.float32)
    x4 = np.concatenate([fmap[:, dy:dy + 8, dx:dx + 15] for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1))])
    x4 = x4.reshape(12, 120).T  # (P2, 4C)
    z = t.apply(x4)
    grid = torch.from_numpy(np.stack([np.clip(pos[:, 1], 0, 15) / 7.5 - 1, np.clip(pos[:, 0], 0, 8) / 4 - 1], 1))
    ref = torch.nn.functional.grid_sample(torch.from_numpy(fmap)[None], grid[None, None].float(),
                                          align_corners=True)[0, :, 0].numpy()  # (C, N)
    np.testing.assert_allclose(z, (ref.T * w).sum(1), rtol=1e-5, atol=1e-5)
    slot_neuron = np.concatenate([g.slot_neuron for g in t.groups])
    np.testing.assert_array_equal(slot_neuron[t.neuron_slot], np.arange(300))


def _clustered(params: dict, rng: np.random.Generator) -> dict:
    """Readout positions crowded into a few cells (as trained models have), many cells empty."""
    n = params["readout_pos"].shape[0]
    out = dict(params)
    pos = rng.normal([4.0, 7.0], [0.8, 1.5], (n, 2))
    pos[: n // 10] = rng.uniform([0, 0], [8, 15], (n // 10, 2))
    out["readout_pos"] = np.clip(pos, 0, [8, 15]).astype(np.float32)
    return out


def test_clustered_positions_use_two_groups_and_keep_parity() -> None:
    arch = ARCHS["default"]
    rng = np.random.default_rng(12)
    params = _clustered(random_params(arch, N, seed=13), rng)
    t = readout_tables(params["readout_pos"], params["readout_w"])
    assert len(t.groups) == 2
    assert sum(g.cells.size for g in t.groups) < 120  # empty cells left out
    video, beh, y, nw, fw = _inputs(rng)
    net = _net(arch, params)
    ref_loss, ref_g = loss_and_grad(net, video, beh, y, nw, fw)
    with torch.no_grad():
        ref_r = net(torch.from_numpy(video)[None], torch.from_numpy(beh)[None])[0].numpy()
    (r,) = _session(build_graph("forward", params, arch, W)).run(None, {"video": video[None], "behaviour": beh})
    loss, g = _session(build_graph("grad", params, arch, W)).run(
        None, {"video": video[None], "behaviour": beh, "targets": y, "neuron_weights": nw, "frame_weights": fw})
    assert np.abs(r - ref_r).max() <= 1e-5 * np.abs(ref_r).max()
    assert float(loss) == pytest.approx(ref_loss, rel=1e-5)
    assert np.abs(g[0] - ref_g).max() <= 1e-4 * np.abs(ref_g).max()


@pytest.mark.parametrize("kind", GRAPH_KINDS)
@pytest.mark.parametrize("window", [1, 16, 32])
def test_every_exported_graph_is_tensorrt_ready(kind: str, window: int) -> None:
    arch = ARCHS["default"]
    report = assert_trt_ready(build_graph(kind, random_params(arch, 64, 0), arch, window))  # type: ignore[arg-type]
    assert report.ok and "ScatterND" not in report.op_types


def _tiny(nodes, inits, inp_shape=(4, 3)):
    graph = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(inp_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_trt_check_catches_bad_graphs() -> None:
    idx = onnx.numpy_helper.from_array(np.array([[0], [1]], np.int64), "idx")
    upd = onnx.numpy_helper.from_array(np.ones((2, 3), np.float32), "upd")
    scatter = _tiny([helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"], reduction="add")], [idx, upd])
    rep = check_trt_ready(scatter)
    assert not rep.ok and any("reduction='add'" in p for p in rep.problems)
    with pytest.raises(ModelError, match="ScatterND"):
        assert_trt_ready(scatter)
    # axes computed at run time instead of an initializer
    dyn_axes = _tiny([helper.make_node("Shape", ["x"], ["s"]),
                      helper.make_node("ReduceSum", ["x", "s"], ["y"])], [])
    assert any("must be an initializer" in p for p in check_trt_ready(dyn_axes).problems)
    # an operator outside the support list
    unsupported = _tiny([helper.make_node("NonZero", ["x"], ["y"])], [])
    assert any("support list" in p for p in check_trt_ready(unsupported).problems)
    # a dynamic input dimension
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "dyn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    dyn = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert any("dynamic" in p for p in check_trt_ready(dyn).problems)
    # a float64 initializer
    f64 = _tiny([helper.make_node("Add", ["x", "c"], ["y"])],
                [onnx.numpy_helper.from_array(np.ones((4, 3)), "c")])
    assert not check_trt_ready(f64).ok
