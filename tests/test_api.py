"""The Python API: cheap import, the functions, the example script and the README snippets."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rt_decoder
from rt_decoder.errors import ConfigError, InputWarning, ShapeMismatchError

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def test_import_is_cheap_and_names_resolve(tmp_path: Path) -> None:
    code = ("import sys, rt_decoder; heavy = [m for m in ('numpy', 'rt_decoder.api', 'onnxruntime', 'torch') "
            "if m in sys.modules]; print(heavy); rt_decoder.reconstruct; print('torch' in sys.modules)")
    proc = run_python(["-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[]", "False"]
    assert set(rt_decoder.__all__) >= {"reconstruct", "deconvolve", "load_model", "simulate"}
    for name in ("reconstruct", "deconvolve", "load_model", "simulate"):
        doc = getattr(rt_decoder, name).__doc__
        assert "Parameters" in doc and "Returns" in doc, name
    with pytest.raises(AttributeError):
        rt_decoder.no_such_name  # noqa: B018


def test_demo_model_path_is_the_installed_package_folder() -> None:
    path = rt_decoder.demo_model_path()
    assert path == Path(rt_decoder.__file__).parent / "models" / "demo"
    model = rt_decoder.load_model()
    assert model.neuron_ids.size == 8000 and model.n_members == 3


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rt_decoder.encoder.synthetic import write_random_model

    return write_random_model(tmp_path_factory.mktemp("m"), n_neurons=20, n_members=2, window_frames=8)


def test_reconstruct_checks_maps_ids_and_scores(small_model: Path) -> None:
    rng = np.random.default_rng(0)
    t = 40
    resp = rng.poisson(0.5, (t, 20)).astype(np.float32)
    truth = rng.uniform(0, 255, (t, 36, 64)).astype(np.float32)
    rec = rt_decoder.reconstruct(resp, model=small_model, truth=truth, iterations=2, members=1)
    assert rec.video.shape == (t, 36, 64) and len(rec.members) == 1 and np.isfinite(rec.metrics["video_corr"])
    assert rec.eval_mask is not None and rec.eval_mask.shape == (36, 64)
    model = rt_decoder.load_model(small_model)
    with pytest.warns(InputWarning, match=r"read as \(neurons, frames\)"):
        again = rt_decoder.reconstruct(resp.T, model=model, iterations=2, members=1)
    np.testing.assert_allclose(again.video, rec.video, atol=1e-4)
    assert again.metrics == {}
    # columns given by id, in another order, some unknown to the model
    ids = np.asarray(model.neuron_ids)
    order = rng.permutation(20)
    cols = np.concatenate([resp[:, order], np.ones((t, 2), np.float32)], axis=1)
    mapped = rt_decoder.reconstruct(cols, model=model, neuron_ids=np.concatenate([ids[order], [1, 2]]),
                                    iterations=2, members=1)
    np.testing.assert_allclose(mapped.video, rec.video, atol=1e-4)
    with pytest.raises(ShapeMismatchError, match="no axis of 20 neurons"):
        rt_decoder.reconstruct(resp[:, :7], model=model, iterations=1)
    with pytest.raises(ShapeMismatchError, match=r"behaviour must have shape \(T, 4\)"):
        rt_decoder.reconstruct(resp, np.zeros((t, 3)), model=model, iterations=1)
    with pytest.raises(ShapeMismatchError, match="none of the 2 neuron_ids"):
        rt_decoder.reconstruct(resp[:, :2], model=model, neuron_ids=[1, 2], iterations=1)


def test_simulate_and_deconvolve(tmp_path: Path) -> None:
    ds = rt_decoder.simulate(tmp_path / "ds", neurons=7, trials=[3, 5], frames=40, seed=2, responses="spikes")
    assert ds.trial_ids == [3, 5] and ds.n_neurons == 7
    with pytest.raises(ConfigError, match="pass overwrite=True"):
        rt_decoder.simulate(tmp_path / "ds", neurons=7, trials=1, frames=20)
    tr = ds.trial(5)
    act = rt_decoder.deconvolve(tr.fluorescence, 30.0, init_frames=30)
    assert act.shape == (40, 7) and act.dtype == np.float32
    with pytest.raises(ConfigError, match="layout"):
        rt_decoder.deconvolve(tr.fluorescence, 30.0, layout="tn")
    with pytest.raises(ConfigError, match="fs must be"):
        rt_decoder.deconvolve(tr.fluorescence, 0.0)


def test_example_script_runs_from_any_directory(tmp_path: Path) -> None:
    proc = run_python([str(ROOT / "examples" / "decode_simulated_trial.py"), str(tmp_path / "out"),
                       "--iterations", "5"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    corr = float(re.search(r"video correlation .*: (-?[0-9.]+)", proc.stdout).group(1))  # type: ignore[union-attr]
    assert 0.1 < corr < 1.0  # the held-out trial's movie is decoded (README: ~0.4 for one member)
    assert np.load(tmp_path / "out" / "trial300_reconstruction.npy").shape == (300, 36, 64)


def test_readme_python_snippets_run_as_written_from_another_directory(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 2
    for k, code in enumerate(blocks):
        proc = run_python(["-c", code], tmp_path)
        assert proc.returncode == 0, f"README python block {k}:\n{code}\n{proc.stderr}"
    assert "video correlation" in proc.stdout or any("video correlation" in b for b in blocks)
