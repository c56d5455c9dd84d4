"""``rt-decoder simulate`` end to end on tiny cases, through ``cli.main.main``."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from cli import main as cli
from rt_decoder.io.sensorium import load_dataset
from rt_decoder.sim import RigConfig, VirtualRig


@pytest.fixture(autouse=True)
def only_simulate(monkeypatch: pytest.MonkeyPatch) -> None:
    # Isolate from the other subcommands (tests/test_cli.py covers the full parser).
    monkeypatch.setattr(cli, "COMMANDS", {"simulate": cli.COMMANDS["simulate"]})


def _run(out: Path, *extra: str) -> int:
    return cli.main(["simulate", "--out", str(out), "--neurons", "12", "--trials", "3", "--frames", "30",
                     "--seed", "7", "--no-progress", *extra])


def test_simulate_writes_a_loadable_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ds"
    assert _run(out, "--responses", "spikes", "--indicator", "GCaMP8m") == 0
    assert "wrote 3 trials x 30 frames x 12 neurons" in capsys.readouterr().out
    ds = load_dataset(out)
    assert ds.n_neurons == 12 and ds.trial_ids == [0, 1, 2]
    assert ds.meta["responses_source"] == "ground_truth_spikes"
    assert ds.meta["rig_config"]["indicator"] == "GCaMP8m" and ds.meta["rig_config"]["seed"] == 7
    # the written data are the rig's trials
    rig = VirtualRig(RigConfig(n_neurons=12, seed=7, trial_frames=30, n_trials=3, indicator="GCaMP8m"))
    tr = rig.trial(2)
    got = ds.trial(2)
    np.testing.assert_array_equal(got.video, tr.video)
    np.testing.assert_array_equal(got.fluorescence, tr.fluorescence)
    np.testing.assert_array_equal(got.responses, tr.spikes)


def test_tiers_follow_the_fractions(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert cli.main(["simulate", "--out", str(out), "--neurons", "3", "--trials", "10", "--frames", "10",
                     "--test-fraction", "0.2", "--validation-fraction", "0.1", "--responses", "spikes",
                     "--no-progress"]) == 0
    tiers = list(load_dataset(out).tiers.values())
    assert (tiers.count("train"), tiers.count("oracle"), tiers.count("final_test_main")) == (7, 1, 2)


def test_auto_uses_the_deconvolution_stage_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def deconvolve_array(f: np.ndarray, frame_rate_hz: float, settings: object = None) -> np.ndarray:
        calls.append(f.shape)
        return np.maximum(f - f.mean(axis=0), 0.0).astype(np.float32)

    fake = types.ModuleType("rt_decoder.deconv")
    fake.deconvolve_array = deconvolve_array  # type: ignore[attr-defined]
    fake.DeconvSettings = dict  # type: ignore[attr-defined]
    fake.ENCODER_TRAINING_DECONV = {"model": "ar1"}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rt_decoder.deconv", fake)
    out = tmp_path / "ds"
    assert _run(out) == 0
    ds = load_dataset(out)
    assert calls == [(30, 12)] * 3
    assert ds.meta["responses_source"] == "rt_decoder.deconv.deconvolve_array"
    f = ds.trial(0).fluorescence
    np.testing.assert_allclose(ds.trial(0).responses, np.maximum(f - f.mean(axis=0), 0.0), rtol=1e-6)


def test_auto_falls_back_to_spikes_when_deconv_is_missing(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "rt_decoder.deconv", None)  # import raises ImportError
    out = tmp_path / "ds"
    assert _run(out) == 0
    ds = load_dataset(out)
    assert ds.meta["responses_source"] == "ground_truth_spikes"
    np.testing.assert_array_equal(ds.trial(1).responses, ds.trial(1).spikes)
    assert _run(tmp_path / "ds2", "--responses", "deconv") == 2
    assert "rt_decoder.deconv cannot be imported" in capsys.readouterr().err


def test_bad_arguments_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--out", str(tmp_path / "x"), "--neurons", "0", "--no-progress"]) == 2
    assert "n_neurons" in capsys.readouterr().err
    out = tmp_path / "ds"
    assert _run(out, "--responses", "spikes") == 0
    assert _run(out, "--responses", "spikes") == 2
    err = capsys.readouterr().err
    assert "already exists and is not empty; pass --overwrite" in err
    assert _run(out, "--responses", "spikes", "--overwrite") == 0
