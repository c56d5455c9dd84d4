"""Model directory (manifest validation), backends behind one interface, export, no-torch runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rt_decoder.encoder import BackendSettings, load_model, open_backend
from rt_decoder.encoder.config import ArchConfig
from rt_decoder.encoder.export import export_model
from rt_decoder.encoder.synthetic import write_random_model
from rt_decoder.errors import BackendUnavailableError, ConfigError, ModelError, ShapeMismatchError

N = 120
W = 10


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    return write_random_model(tmp_path / "m", ArchConfig(), n_neurons=N, n_members=2, seed=3, window_frames=W)


def _window(seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 255, (W, 36, 64)).astype(np.float32),
            (rng.normal(size=(W, 4)) * [4, 6, 2, 2] + [18, 5, 0, 0]).astype(np.float32),
            rng.poisson(0.3, (W, N)).astype(np.float32), np.ones(N, np.float32))


def test_load_model_and_masks(model_dir: Path) -> None:
    m = load_model(model_dir)
    assert m.n_neurons == N and m.n_members == 2
    assert m.neuron_ids.shape == (N,)
    assert m.masks.alpha.shape == (36, 64)
    assert m.masks.eval_mask.sum() < m.masks.train_mask.sum() <= 36 * 64
    assert np.all(m.masks.train_mask[m.masks.eval_mask])


def _edit_manifest(root: Path, **changes) -> None:
    p = root / "manifest.json"
    d = json.loads(p.read_text())
    d.update(changes)
    p.write_text(json.dumps(d))


@pytest.mark.parametrize("change, match", [
    ({"n_neurons": N + 1}, "neuron_ids.npy"),
    ({"frame_shape": [32, 64]}, "frame_shape"),
    ({"bogus": 1}, "unknown fields"),
    ({"window_frames": 0}, "window_frames"),
    ({"arch": {"conv1_channels": 8, "oops": 1}}, "arch"),
    ({"format_version": 99}, "format"),
    ({"behaviour_fields": ["a", "b", "c", "d"]}, "behaviour_fields"),
])
def test_manifest_validation_names_the_problem(model_dir: Path, change: dict, match: str) -> None:
    _edit_manifest(model_dir, **change)
    with pytest.raises(ModelError, match=match):
        load_model(model_dir)


def test_wrong_weights_and_neuron_count_are_rejected(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="n_neurons=120"):
        load_model(model_dir, expected_neurons=N + 5)
    other = write_random_model(tmp_path / "other", ArchConfig(), n_neurons=N + 3, seed=9)
    (model_dir / "member_1" / "weights.npz").write_bytes((other / "member_0" / "weights.npz").read_bytes())
    with pytest.raises(ModelError, match="sha256"):
        load_model(model_dir)
    d = json.loads((model_dir / "manifest.json").read_text())
    from rt_decoder.encoder.manifest import sha256_file

    d["members"][1]["weights_sha256"] = sha256_file(model_dir / "member_1" / "weights.npz")
    (model_dir / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ModelError, match="readout_pos has shape"):
        load_model(model_dir)
    with pytest.raises(ModelError, match="no manifest"):
        load_model(tmp_path)


def test_backend_input_validation(model_dir: Path) -> None:
    enc = open_backend(load_model(model_dir))
    video, beh, y, nw = _window()
    with pytest.raises(ShapeMismatchError, match="targets"):
        enc.loss_and_grad(video, beh, y[:, :-1], nw)
    with pytest.raises(ShapeMismatchError, match="video"):
        enc.forward(video[:-1], beh)
    with pytest.raises(ConfigError, match="backend kind"):
        BackendSettings(kind="magic")
    with pytest.raises(ConfigError, match="unknown BackendSettings"):
        BackendSettings.from_dict({"kind": "torch", "thread": 2})


def test_onnxruntime_and_torch_backends_agree(model_dir: Path) -> None:
    pytest.importorskip("torch")
    model = load_model(model_dir)
    video, beh, y, nw = _window(1)
    for member in (0, 1):
        ort_b = open_backend(model, member, BackendSettings(kind="onnxruntime", intra_op_threads=2))
        th_b = open_backend(model, member, BackendSettings(kind="torch"))
        assert ort_b.window_frames == th_b.window_frames == W and ort_b.n_neurons == N
        r1, r2 = ort_b.forward(video, beh), th_b.forward(video, beh)
        assert r1.shape == (W, N)
        assert np.abs(r1 - r2).max() <= 1e-5 * np.abs(r2).max()
        l1, g1 = ort_b.loss_and_grad(video, beh, y, nw)
        l2, g2 = th_b.loss_and_grad(video, beh, y, nw)
        assert g1.shape == (W, 36, 64)
        assert l1 == pytest.approx(l2, rel=1e-5)
        assert np.abs(g1 - g2).max() <= 1e-4 * np.abs(g2).max()


def test_live_path_of_the_backends(model_dir: Path) -> None:
    pytest.importorskip("torch")
    model = load_model(model_dir)
    L = 4
    ctx = model.manifest.arch.temporal_kernel - 1
    rng = np.random.default_rng(2)
    video = rng.uniform(0, 255, (ctx + L, 36, 64)).astype(np.float32)
    beh = np.zeros((L, 4), np.float32) + [18, 5, 0, 0]
    y = rng.poisson(0.3, (L, N)).astype(np.float32)
    nw = np.ones(N, np.float32)
    ort_b = open_backend(model, 0, BackendSettings(live_frames=L))
    th_b = open_backend(model, 0, BackendSettings(kind="torch", live_frames=L))
    c1, c2 = ort_b.features(video[:ctx]), th_b.features(video[:ctx])
    assert c1.shape == (ctx, model.manifest.arch.core_channels, 9, 16)
    np.testing.assert_allclose(c1, c2, rtol=1e-4, atol=1e-5)
    l1, g1 = ort_b.loss_and_grad_live(video[ctx:], c1, beh, y, nw)
    l2, g2 = th_b.loss_and_grad_live(video[ctx:], c1, beh, y, nw)
    assert l1 == pytest.approx(l2, rel=1e-5)
    assert np.abs(g1 - g2).max() <= 1e-4 * np.abs(g2).max()


def test_export_writes_trt_ready_graphs_that_load(model_dir: Path, tmp_path: Path) -> None:
    out, reports = export_model(model_dir, tmp_path / "exported", window_frames=W, live_frames=3)
    assert len(reports) == 2 * 4 and all(r.ok for r in reports)
    m = load_model(out)
    assert m.manifest.members[0].graphs["grad_w10"] == "member_0/grad_w10.onnx"
    assert (out / "member_1" / "live_grad_w3.onnx").is_file()
    enc = open_backend(m, 1)
    video, beh, y, nw = _window(3)
    ref = open_backend(load_model(model_dir), 1)
    np.testing.assert_array_equal(enc.loss_and_grad(video, beh, y, nw)[1], ref.loss_and_grad(video, beh, y, nw)[1])


def test_tensorrt_backend_fails_at_startup_without_tensorrt(model_dir: Path) -> None:
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here; covered by the gpu tests")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailableError, match="TensorRT"):
        open_backend(load_model(model_dir), 0, BackendSettings(kind="tensorrt"))


def test_onnxruntime_gpu_providers_fail_cleanly_without_them(model_dir: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu present")
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        open_backend(load_model(model_dir), 0, BackendSettings(providers="cuda"))


def test_runtime_path_never_imports_torch(model_dir: Path) -> None:
    code = (f"import sys, numpy as np\n"
            f"from rt_decoder.encoder import load_model, open_backend\n"
            f"m = load_model({str(model_dir)!r})\n"
            f"e = open_backend(m)\n"
            f"e.loss_and_grad(np.zeros(({W}, 36, 64), np.float32), np.zeros(({W}, 4), np.float32),"
            f" np.zeros(({W}, {N}), np.float32), np.ones({N}, np.float32))\n"
            f"assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA GPU (torch.cuda.is_available() is False)")
def test_gpu_parity_torch_cuda_graphs_and_trt(model_dir: Path) -> None:
    model = load_model(model_dir)
    video, beh, y, nw = _window(4)
    ref = open_backend(model, 0, BackendSettings(kind="torch"))
    l0, g0 = ref.loss_and_grad(video, beh, y, nw)
    cuda = open_backend(model, 0, BackendSettings(kind="torch", device="cuda", cuda_graphs=True))
    for _ in range(3):  # replayed CUDA graph with new inputs each time
        l1, g1 = cuda.loss_and_grad(video, beh, y, nw)
        assert l1 == pytest.approx(l0, rel=1e-4)
        assert np.abs(g1 - g0).max() <= 1e-3 * np.abs(g0).max()
    try:
        trt_b = open_backend(model, 0, BackendSettings(kind="tensorrt"))
    except BackendUnavailableError as exc:
        pytest.skip(f"TensorRT not installed: {exc}")
    l2, g2 = trt_b.loss_and_grad(video, beh, y, nw)
    assert l2 == pytest.approx(l0, rel=1e-3)
    assert np.abs(g2 - g0).max() <= 1e-2 * np.abs(g0).max()


DEMO = Path(__file__).resolve().parent.parent / "rt_decoder" / "models" / "demo"


@pytest.mark.skipif(not (DEMO / "manifest.json").is_file(), reason="demo model not generated (make models)")
def test_shipped_demo_model_loads_is_trt_ready_and_matches_torch() -> None:
    from rt_decoder.encoder.onnx_graph import build_graph
    from rt_decoder.encoder.trt_check import assert_trt_ready

    model = load_model(DEMO)
    t = model.manifest.training
    assert model.n_members == 3 and model.n_neurons == 8000
    for key in ("data_hash", "seed", "responses_source", "heldout_corr_ensemble", "ceiling_corr"):
        assert t[key] is not None, key
    assert 0.3 < model.masks.train_mask.mean() < 1.0 and model.masks.eval_mask.any()
    for kind in ("forward", "grad"):
        assert_trt_ready(build_graph(kind, model.params[0], model.manifest.arch, 8))
    pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    video = np.clip(rng.normal(127.5, 60, (8, 36, 64)), 0, 255).astype(np.float32)
    beh = np.repeat(model.params[0]["behaviour_mean"][None], 8, 0)
    y = rng.poisson(0.1, (8, 8000)).astype(np.float32)
    nw = np.ones(8000, np.float32)
    a = open_backend(model, 2, BackendSettings(window_frames=8))
    b = open_backend(model, 2, BackendSettings(kind="torch", window_frames=8))
    la, ga = a.loss_and_grad(video, beh, y, nw)
    lb, gb = b.loss_and_grad(video, beh, y, nw)
    assert la == pytest.approx(lb, rel=1e-5)
    assert np.abs(ga - gb).max() <= 1e-4 * np.abs(gb).max()
