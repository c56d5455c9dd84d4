"""NWB output: reconstruct --nwb and rt-decoder to-nwb, checked with pynwb's own validator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pynwb = pytest.importorskip("pynwb")

from cli.main import main  # noqa: E402
from rt_decoder.sim import RigConfig, VirtualRig  # noqa: E402

N = 30


def validate(path: Path) -> None:
    errors = pynwb.validate(path=str(path))
    if isinstance(errors, tuple):  # older pynwb: (errors, status)
        errors = errors[0]
    assert list(errors) == [], errors


def test_reconstruct_writes_a_valid_nwb_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rt_decoder.encoder.synthetic import write_random_model
    from rt_decoder.io.sensorium import write_dataset

    model = write_random_model(tmp_path / "model", n_neurons=N, window_frames=8)
    rig = VirtualRig(RigConfig(n_neurons=N, n_trials=2, trial_frames=40, seed=3))
    write_dataset(tmp_path / "ds", (rig.trial(i) for i in range(2)), roi_ids=np.arange(N) + 1000,
                  tiers=["final_test_main"] * 2)
    nwb_path = tmp_path / "recon.nwb"
    argv = ["reconstruct", "--model", str(model), "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "r"),
            "--iterations", "2", "--no-progress", "--no-figures", "--nwb", str(nwb_path)]
    assert main(argv) == 0
    validate(nwb_path)
    with pynwb.NWBHDF5IO(str(nwb_path), "r") as io:
        nwb = io.read()
        for tid in (0, 1):
            series = nwb.processing["decoding"][f"reconstruction_trial_{tid}"]
            np.testing.assert_allclose(series.data[:], np.load(tmp_path / "r" / f"{tid}_recon.npy"), rtol=1e-6)
            assert series.rate == 30.0
            np.testing.assert_array_equal(nwb.stimulus[f"stimulus_trial_{tid}"].data[:], rig.trial(tid).video)
        assert nwb.processing["decoding"]["reconstruction_trial_1"].starting_time == pytest.approx(40 / 30)
        trials = nwb.trials.to_dataframe()
        assert list(trials["trial_id"]) == [0, 1]
        meta = json.loads(nwb.notes)["rt_decoder"]
        assert meta["model"]["path"] == str(model.resolve()) and meta["settings"]["iterations"] == 2
        assert meta["model"]["members"][0]["weights_sha256"]
    # the NWB file is an output like the others: refused when it exists
    assert main([*argv[:6], str(tmp_path / "r2"), *argv[7:]]) == 2
    assert "recon.nwb already exists; pass --overwrite" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_to_nwb_converts_a_recorded_session(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rt_decoder.encoder.synthetic import write_random_model
    from rt_decoder.io.session_file import SessionWriter
    from rt_decoder.messages import DecodedFrame, FluorescenceFrame, SessionInfo

    rng = np.random.default_rng(0)
    t, n = 50, 6
    info = SessionInfo("rec-1", np.arange(n) + 500, 30.0, stimulus_shape=(36, 64), source="virtual-rig")
    stim = rng.uniform(0, 255, (t, 36, 64)).astype(np.float32)
    period = 33_333_333
    path = tmp_path / "rec-1.h5"
    with SessionWriter(path, info, stimulus_shape=(36, 64)) as w:
        for k in range(t):
            if k == 20:
                continue  # a frame never received
            acq = 10**12 + k * period
            w.append_frame(FluorescenceFrame(k, k, acq, values=rng.normal(100, 1, n).astype(np.float32),
                                             behaviour=np.array([18, 2, 0, 0], np.float32)),
                           stim[k] if k % 2 == 0 else None)
            if k >= 5:
                w.append_decoded(DecodedFrame(k, k - 5, 10**12 + (k - 5) * period,
                                              stamps=(("rx", acq + 10**6), ("tx", acq + 2 * 10**6)),
                                              image=stim[k - 5] * 0.5))
    model = write_random_model(tmp_path / "model", n_neurons=n)
    out = tmp_path / "rec.nwb"
    (tmp_path / "serve.toml").write_text("[recording]\nenabled = true\n")
    assert main(["to-nwb", str(path), "--out", str(out), "--model", str(model), "--config",
                 str(tmp_path / "serve.toml")]) == 0
    validate(out)
    with pynwb.NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        mod = nwb.processing["decoding"]
        dec = mod["decoded"]
        assert dec.data.shape == (t - 5 - 1, 36, 64)
        np.testing.assert_allclose(dec.data[0], stim[0] * 0.5)
        np.testing.assert_allclose(dec.timestamps[:3], np.arange(3) * period / 1e9)
        np.testing.assert_array_equal(mod["decoded_frame_index"].data[:5], [0, 1, 2, 3, 4])
        assert mod["decoded_stage_stamps"].data.shape == (t - 6, 2)
        rx = mod["received"]
        assert rx.data.shape == (t - 1, n) and rx.timestamps[20] == pytest.approx(21 * period / 1e9)
        assert list(mod["rois"]["roi_id"].data[:]) == list(range(500, 500 + n))
        shown = nwb.stimulus["stimulus"]
        assert shown.data.shape[0] == 24  # even frames carried their stimulus (frame 20 was lost)
        np.testing.assert_array_equal(shown.data[1], stim[2])
        meta = json.loads(nwb.notes)["rt_decoder"]
        assert meta["complete"] and "[recording]" in meta["settings"]["serve_toml"]
        assert meta["model"]["n_neurons"] == n
    assert main(["to-nwb", str(path), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["to-nwb", str(path), "--out", str(tmp_path / "x.h5")]) == 2
    assert "must name a .nwb file" in capsys.readouterr().err


def test_missing_pynwb_is_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynwb", None)
    assert main(["to-nwb", str(tmp_path / "x.h5"), "--out", str(tmp_path / "x.nwb")]) == 2
    assert "pip install 'rt-decoder[nwb]'" in capsys.readouterr().err
