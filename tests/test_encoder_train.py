"""Training on a tiny virtual-rig dataset, and the train / export commands end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cli.main import main  # noqa: E402
from rt_decoder.encoder import BackendSettings, load_model, open_backend  # noqa: E402
from rt_decoder.encoder.config import ArchConfig, TrainConfig  # noqa: E402
from rt_decoder.encoder.train import load_split, train_member  # noqa: E402

N_NEURONS = 80


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rt_decoder.io.sensorium import write_dataset
    from rt_decoder.sim import RigConfig, VirtualRig

    root = tmp_path_factory.mktemp("enc") / "data"
    rig = VirtualRig(RigConfig(n_neurons=N_NEURONS, n_trials=8, trial_frames=150, seed=1))
    tiers = ["train"] * 6 + ["oracle", "final_test_main"]
    write_dataset(root, (rig.trial(i) for i in range(8)), roi_ids=rig.roi_ids, tiers=tiers)
    return root


SMALL = ArchConfig(conv1_channels=4, core_channels=8, readout_channels=4, temporal_kernel=6)


def test_split_by_tier(tiny_dataset: Path) -> None:
    split = load_split(tiny_dataset)
    assert [len(split.train), len(split.val), len(split.test)] == [6, 1, 1]
    assert split.neuron_ids.shape == (N_NEURONS,)
    assert split.train[0].responses.shape == (150, N_NEURONS)
    assert len(split.data_hash) == 64


def test_training_improves_validation_correlation_and_is_reproducible(tiny_dataset: Path) -> None:
    split = load_split(tiny_dataset)
    cfg = TrainConfig(epochs=3, patience_epochs=3, chunk_frames=40, batch_chunks=2, skip_frames_eval=20)
    net, info = train_member(split, SMALL, cfg, seed=5)
    assert info["best_val_corr"] > info["initial_val_corr"] + 0.01
    net2, info2 = train_member(split, SMALL, cfg, seed=5)
    assert info2["best_val_corr"] == info["best_val_corr"]
    for (k, a), b in zip(net.state_dict().items(), net2.state_dict().values()):
        assert torch.equal(a, b), k


def test_train_and_export_commands(tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model"
    rc = main(["train", "--data", str(tiny_dataset), "--out", str(out), "--ensemble", "2", "--seed", "3",
               "--epochs", "1", "--window", "8", "--live-frames", "4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "held-out correlation" in printed
    man = json.loads((out / "manifest.json").read_text())
    assert man["training"]["seed"] == 3 and [m["seed"] for m in man["members"]] == [3, 4]
    assert man["members"][0]["graphs"]["grad_w8"] == "member_0/grad_w8.onnx"
    assert (out / "train.log").read_text().count("epoch 0") == 2
    model = load_model(out)
    assert model.masks.train_mask.any() and model.masks.eval_mask.any()
    rc = main(["export", str(out), "--out", str(tmp_path / "exp"), "--window", "6"])
    assert rc == 0
    enc = open_backend(load_model(tmp_path / "exp"), 1, BackendSettings())
    assert enc.window_frames == 6
    loss, grad = enc.loss_and_grad(np.full((6, 36, 64), 127.5, np.float32), np.zeros((6, 4), np.float32),
                                   np.zeros((6, N_NEURONS), np.float32), np.ones(N_NEURONS, np.float32))
    assert np.isfinite(loss) and grad.shape == (6, 36, 64) and np.abs(grad).max() > 0
