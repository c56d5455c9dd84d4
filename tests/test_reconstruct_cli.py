"""``rt-decoder reconstruct`` refuses to score the model's own training trials unless told."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rt_decoder.encoder.synthetic import write_random_model

CLI = [sys.executable, "-m", "cli"]


@pytest.fixture(scope="module")
def data_and_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("recon_cli")
    data = root / "data"
    subprocess.run(CLI + ["simulate", "--out", str(data), "--neurons", "60", "--trials", "10", "--frames", "48",
                          "--seed", "3", "--responses", "spikes", "--no-progress"], check=True, timeout=300)
    model = write_random_model(root / "model", n_neurons=60, window_frames=16)
    np.save(model / "neuron_ids.npy", np.load(data / "meta" / "neurons" / "unit_ids.npy"), allow_pickle=False)
    man = json.loads((model / "manifest.json").read_text())
    rig = json.loads((data / "meta" / "rig.json").read_text())["rig_config"]
    man["training"]["trial_ids"] = {"train": [0, 1, 2, 3, 4, 5, 6], "val": [7], "test": [8, 9],
                                    "all": list(range(10))}
    man["training"]["rig_config"] = rig
    (model / "manifest.json").write_text(json.dumps(man))
    return data, model


def _reconstruct(data: Path, model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CLI + ["reconstruct", "--model", str(model), "--data", str(data), "--out", str(out),
                                 "--iterations", "2", "--no-figures", "--no-progress", *extra],
                          capture_output=True, text=True, timeout=300)


def test_training_trials_are_refused_with_a_message(data_and_model: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = data_and_model
    p = _reconstruct(data, model, tmp_path / "a", "--trials", "2,8")
    assert p.returncode != 0
    assert "[2]" in p.stderr and "--allow-training-trials" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "a" / "metrics.json").exists()


def test_held_out_trials_and_the_override_are_scored(data_and_model: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = data_and_model
    p = _reconstruct(data, model, tmp_path / "b", "--trials", "8")
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "b" / "metrics.json").read_text())["summary"]
    assert summary["trials"] == [8] and summary["training_trials_scored"] == []
    p = _reconstruct(data, model, tmp_path / "c", "--trials", "2", "--allow-training-trials")
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "c" / "metrics.json").read_text())["summary"]
    assert summary["training_trials_scored"] == [2]


def test_a_dataset_from_another_rig_seed_is_not_the_training_data(data_and_model: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    from rt_decoder.encoder.manifest import load_model
    from rt_decoder.recon.runner import training_trials_among

    _, model = data_and_model
    m = load_model(model)
    seed = m.manifest.training["rig_config"]["seed"]
    assert training_trials_among(m, {"rig_config": {"seed": seed}}, [1, 7, 8]) == [1, 7]
    assert training_trials_among(m, {"rig_config": {"seed": seed + 1}}, [1, 7, 8]) == []
    assert training_trials_among(m, {}, [1, 9]) == [1]


def test_simulate_first_trial_writes_held_out_ids(tmp_path: Path) -> None:
    from rt_decoder.io.sensorium import load_dataset
    from rt_decoder.sim import RigConfig, VirtualRig

    out = tmp_path / "heldout"
    subprocess.run(CLI + ["simulate", "--out", str(out), "--neurons", "20", "--trials", "2", "--frames", "40",
                          "--seed", "3", "--first-trial", "5", "--responses", "spikes", "--no-progress"],
                   check=True, timeout=300)
    ds = load_dataset(out)
    assert list(ds.trial_ids) == [5, 6] and ds.trials("final_test_main") == [5, 6]
    rig = VirtualRig(RigConfig(n_neurons=20, seed=3, trial_frames=40))
    np.testing.assert_allclose(ds.trial(6).video, rig.trial(6).video[:40], atol=1e-4)
