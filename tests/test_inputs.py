"""User mistakes in inputs: one clear message each (exit code 2, no traceback), or a warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from rt_decoder.errors import DataFormatError, InputWarning
from rt_decoder.io.inputs import load_npy, load_suite2p, orient_rois_by_frames


def deconvolve(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(["deconvolve", *argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def fluo(n: int, t: int, seed: int = 0) -> np.ndarray:
    return (100 + np.random.default_rng(seed).standard_normal((n, t))).astype(np.float32)


def test_empty_text_and_pickled_npy_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "o.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    rc, err = deconvolve(capsys, str(tmp_path / "empty.npy"), "--fs", "30", "--out", out)
    assert rc == 2 and "empty.npy: the file is empty (0 bytes)" in err
    (tmp_path / "text.npy").write_text("1,2,3\n4,5,6\n")
    rc, err = deconvolve(capsys, str(tmp_path / "text.npy"), "--fs", "30", "--out", out)
    assert rc == 2 and "not a .npy file" in err and "looks like text" in err and "allow_pickle" not in err
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataFormatError, match="pickled object array .* never unpickles"):
        load_npy(tmp_path / "obj.npy")
    full = tmp_path / "trunc.npy"
    np.save(full, np.zeros((50, 50)))
    full.write_bytes(full.read_bytes()[:200])
    with pytest.raises(DataFormatError, match="trunc.npy"):
        load_npy(full)
    assert not Path(out).exists()


def test_empty_arrays_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for shape in ((0, 0), (5, 0), (0, 400)):
        np.save(tmp_path / "z.npy", np.zeros(shape, np.float32))
        rc, err = deconvolve(capsys, str(tmp_path / "z.npy"), "--fs", "30", "--out", str(tmp_path / "o.npy"))
        assert rc == 2 and "is empty (no ROIs or no frames)" in err, shape
    assert not (tmp_path / "o.npy").exists()


def test_frames_by_rois_is_refused_with_a_hint_or_read_as_told(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    F = fluo(4, 360)
    np.save(tmp_path / "tn.npy", F.T)  # (T, N) where (N, T) is expected
    rc, err = deconvolve(capsys, str(tmp_path / "tn.npy"), "--fs", "30", "--out", str(tmp_path / "o.npy"))
    assert rc == 2 and "fewer frames (4) than ROIs (360): is it (frames, ROIs)?" in err
    assert "--input-layout" in err
    rc, _ = deconvolve(capsys, str(tmp_path / "tn.npy"), "--fs", "30", "--out", str(tmp_path / "o.npy"),
                       "--input-layout", "frames-by-rois")
    assert rc == 0 and np.load(tmp_path / "o.npy").shape == (360, 4)
    # where something says the ROI count, the axis of that length is the ROI axis
    assert orient_rois_by_frames(F.T, "x", n_rois=4).shape == (4, 360)
    with pytest.raises(DataFormatError, match="no axis of 7 ROIs"):
        orient_rois_by_frames(F, "x", n_rois=7)


def test_suite2p_without_iscell_says_so_and_transposed_f_is_named(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "F.npy", fluo(3, 400))
    np.save(tmp_path / "Fneu.npy", fluo(3, 400, 1) * 0.2)
    rc, err = deconvolve(capsys, str(tmp_path), "--fs", "30", "--out", str(tmp_path / "o" / "a.npy"))
    assert rc == 0 and "no iscell.npy, so all 3 ROIs are kept (no cell classification)" in err
    notes: list[str] = []
    plane = load_suite2p(tmp_path, warn=notes.append)
    assert plane.values.shape == (400, 3) and any("no iscell.npy" in n for n in notes)
    bad = tmp_path / "t"
    bad.mkdir()
    np.save(bad / "F.npy", fluo(3, 400).T)
    np.save(bad / "iscell.npy", np.ones((3, 2)))
    with pytest.raises(DataFormatError, match="F.npy looks transposed"):
        load_suite2p(bad)


def test_nan_only_rois_are_warned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import rt_decoder

    F = fluo(4, 360)
    F[2] = np.nan
    np.save(tmp_path / "f.npy", F)
    rc, err = deconvolve(capsys, str(tmp_path / "f.npy"), "--fs", "30", "--out", str(tmp_path / "o.npy"))
    assert rc == 0 and "1 of 4 ROIs are NaN in every frame (ROI indices 2)" in err and "zeros" in err
    with pytest.warns(InputWarning, match="1 of 4 ROIs are NaN in every frame"):
        act = rt_decoder.deconvolve(F.T, 30.0)
    assert act.shape == (360, 4) and np.all(act[:, 2] == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rt_decoder.deconvolve(fluo(2, 360), 30.0, layout="rois-by-frames")  # no warning for clean data


def test_sensorium_responses_given_transposed_are_named(tmp_path: Path) -> None:
    from rt_decoder.io.sensorium import load_dataset, write_dataset
    from rt_decoder.sim import RigConfig, VirtualRig

    rig = VirtualRig(RigConfig(n_neurons=5, n_trials=1, trial_frames=20, seed=0))
    write_dataset(tmp_path / "ds", [rig.trial(0)], roi_ids=rig.roi_ids, tiers=["train"])
    resp = tmp_path / "ds" / "data" / "responses" / "0.npy"
    np.save(resp, np.load(resp).T)
    with pytest.raises(DataFormatError, match=r"looks transposed: \(T, N\) given"):
        load_dataset(tmp_path / "ds").trial(0)
