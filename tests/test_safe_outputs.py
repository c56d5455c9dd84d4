"""Every command that writes: refuses an existing output, checks inputs first, writes
atomically, and an interrupted run (Ctrl-C, SIGKILL) leaves the old output or a marked
incomplete one that the readers refuse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from rt_decoder.errors import ConfigError, DataFormatError, ModelError
from rt_decoder.io.safe import INCOMPLETE_MARKER, atomic_dir, atomic_file, atomic_files, check_target
from rt_decoder.io.sensorium import load_dataset, write_dataset
from rt_decoder.sim import RigConfig, VirtualRig

TIMEOUT_S = 120.0


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".incomplete" in p.name or ".old-" in p.name)


def wait_for(cond, what: str, proc: subprocess.Popen | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + TIMEOUT_S
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {proc.communicate()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def cli(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return subprocess.Popen([sys.executable, "-m", "cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


# ---------------------------------------------------------------------------- the helpers


def test_check_target_refuses_existing_outputs(tmp_path: Path) -> None:
    check_target(tmp_path / "new", overwrite=False)
    (tmp_path / "empty").mkdir()
    check_target(tmp_path / "empty", overwrite=False)  # an empty folder is fine
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="full already exists and is not empty; pass --overwrite"):
        check_target(tmp_path / "full", overwrite=False)
    check_target(tmp_path / "full", overwrite=True)
    (tmp_path / "f.npy").write_bytes(b"x")
    with pytest.raises(ConfigError, match="f.npy already exists; pass --overwrite"):
        check_target(tmp_path / "f.npy", overwrite=False, kind="file")
    with pytest.raises(ConfigError, match="is not a folder"):
        check_target(tmp_path / "f.npy", overwrite=True)
    with pytest.raises(ConfigError, match="is a folder"):
        check_target(tmp_path / "full", overwrite=True, kind="file")
    with pytest.raises(ConfigError, match="is a file, so the output cannot be created"):
        check_target(tmp_path / "f.npy" / "sub", overwrite=False)


def test_atomic_dir_keeps_the_old_output_on_interrupt_and_replaces_it_whole(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target, overwrite=True) as tmp:
            assert (tmp / INCOMPLETE_MARKER).is_file() and tmp.parent == tmp_path
            (tmp / "new.txt").write_text("new")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"] and leftovers(tmp_path) == []
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]  # no stale file, no marker
    assert leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target, overwrite=True, keep_partial=True) as tmp:
            (tmp / "part.txt").write_text("part")
            raise KeyboardInterrupt
    assert (target / "new.txt").is_file()
    partial = tmp_path / "out.incomplete"
    assert (partial / "part.txt").is_file() and (partial / INCOMPLETE_MARKER).is_file()


def test_atomic_files_write_together_and_remove_stale_companions(tmp_path: Path) -> None:
    a, b = tmp_path / "a.npy", tmp_path / "a.rois.npy"
    np.save(a, np.zeros(2))
    np.save(b, np.zeros(2))
    with pytest.raises(ConfigError, match="already exists"):
        with atomic_files([a, b], overwrite=False):
            pass
    with atomic_files([a, b], overwrite=True, stale=[b]) as (ta, _tb):
        np.save(ta, np.ones(3))
    np.testing.assert_array_equal(np.load(a), np.ones(3))
    assert not b.exists() and leftovers(tmp_path) == []
    with pytest.raises(RuntimeError):
        with atomic_file(a, overwrite=True) as t:
            np.save(t, np.full(4, 7.0))
            raise RuntimeError("boom")
    np.testing.assert_array_equal(np.load(a), np.ones(3))
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- simulate


def _write(root: Path, seed: int, n_trials: int, **kw: object) -> None:
    rig = VirtualRig(RigConfig(n_neurons=6, n_trials=n_trials, trial_frames=12, seed=seed))
    write_dataset(root, (rig.trial(i) for i in range(n_trials)), roi_ids=rig.roi_ids,
                  tiers=["train"] * n_trials, extra_meta={"seed": seed}, **kw)  # type: ignore[arg-type]


def test_write_dataset_overwrite_replaces_the_whole_folder(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write(root, seed=1, n_trials=4)
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        _write(root, seed=2, n_trials=2)
    _write(root, seed=2, n_trials=2, overwrite=True)
    ds = load_dataset(root)
    assert ds.trial_ids == [0, 1] and ds.meta["seed"] == 2  # no stale trials 2, 3 from the old seed
    assert not (root / "data" / "videos" / "3.npy").exists() and leftovers(tmp_path) == []


def test_interrupted_simulate_leaves_the_old_dataset_and_killed_one_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    assert main(["simulate", "--out", str(out), "--neurons", "50", "--trials", "2", "--frames", "20", "--seed", "1",
                 "--responses", "spikes", "--no-progress"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    args = ["simulate", "--out", str(out), "--neurons", "3000", "--trials", "40", "--frames", "300", "--seed", "2",
            "--responses", "spikes", "--no-progress", "--overwrite"]

    def first_trial_written() -> bool:
        return any((p / "data" / "videos" / "0.npy").exists() for p in tmp_path.glob(".ds.incomplete-*"))

    proc = cli(*args)
    wait_for(first_trial_written, "the first trial", proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C mid-run
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the old dataset, byte for byte: seed 1, 2 trials
    assert json.loads((out / "meta" / "rig.json").read_text())["rig_config"]["seed"] == 1
    assert leftovers(tmp_path) == []

    proc = cli(*args)  # killed outright: the temporary folder stays, marked, and is refused
    wait_for(first_trial_written, "the first trial", proc)
    proc.kill()
    proc.communicate(timeout=TIMEOUT_S)
    (partial,) = tmp_path.glob(".ds.incomplete-*")
    assert (partial / INCOMPLETE_MARKER).is_file()
    with pytest.raises(DataFormatError, match="an incomplete dataset .*write it again"):
        load_dataset(partial)
    assert load_dataset(out).meta["rig_config"]["seed"] == 1


# ---------------------------------------------------------------------------- train


def test_train_checks_the_target_and_data_before_touching_anything(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "m0"
    out.mkdir()
    (out / "train.log").write_text("the old model's log")
    assert main(["train", "--data", str(tmp_path / "typo"), "--out", str(out)]) == 2
    assert "already exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "typo"), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "typo: not a directory" in err and "Traceback" not in err
    assert (out / "train.log").read_text() == "the old model's log" and leftovers(tmp_path) == []
    # 3 train trials and no oracle tier: the message says what is needed (5 with the default split)
    ds = tmp_path / "ds"
    rig = VirtualRig(RigConfig(n_neurons=5, n_trials=4, trial_frames=12, seed=0))
    write_dataset(ds, (rig.trial(i) for i in range(4)), roi_ids=rig.roi_ids,
                  tiers=["train", "train", "train", "final_test_main"])
    assert main(["train", "--data", str(ds), "--out", str(tmp_path / "m1")]) == 2
    assert "needs an 'oracle' tier or >= 5 'train' trials" in capsys.readouterr().err
    assert not (tmp_path / "m1").exists()
    # --data pointing at a folder of animal folders lists them
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m1")]) == 2
    assert "holds 1 animal folder(s): ds; pass one of them" in capsys.readouterr().err


def test_train_without_torch_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "needs PyTorch" in err and "pip install 'rt-decoder[train]'" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_interrupted_train_leaves_the_old_model(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from rt_decoder.encoder.synthetic import write_random_model

    ds = tmp_path / "ds"
    rig = VirtualRig(RigConfig(n_neurons=40, n_trials=8, trial_frames=150, seed=1))
    write_dataset(ds, (rig.trial(i) for i in range(8)), roi_ids=rig.roi_ids,
                  tiers=["train"] * 6 + ["oracle", "final_test_main"])
    out = write_random_model(tmp_path / "model", n_neurons=40)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = cli("train", "--data", str(ds), "--out", str(out), "--overwrite", "--epochs", "50", "--patience", "50")

    def training() -> bool:
        return any((p / "train.log").exists() and "epoch" in (p / "train.log").read_text()
                   for p in tmp_path.glob(".model.incomplete-*"))

    wait_for(training, "the first epoch", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130, err
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- export, reconstruct


@pytest.fixture()
def model_and_data(tmp_path: Path) -> tuple[Path, Path]:
    from rt_decoder.encoder.synthetic import write_random_model

    n = 30
    model = write_random_model(tmp_path / "model", n_neurons=n, window_frames=8)
    rig = VirtualRig(RigConfig(n_neurons=n, n_trials=2, trial_frames=40, seed=3))
    ds = tmp_path / "ds"
    write_dataset(ds, (rig.trial(i) for i in range(2)), roi_ids=np.arange(n) + 1000,
                  tiers=["final_test_main", "final_test_main"])
    return model, ds


def test_export_refuses_checks_and_is_atomic(model_and_data: tuple[Path, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = model_and_data
    out = tmp_path / "exp"
    assert main(["export", str(tmp_path / "nomodel"), "--out", str(out), "--window", "8"]) == 2
    assert "no manifest" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(model), "--out", str(out), "--window", "8"]) == 0
    assert main(["export", str(model), "--out", str(out), "--window", "8"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    # in place (--out = the model folder) needs --overwrite and keeps the model's own files
    assert main(["export", str(model), "--out", str(model), "--window", "8"]) == 2
    assert main(["export", str(model), "--out", str(model), "--window", "8", "--overwrite"]) == 0
    assert (model / "member_0" / "grad_w8.onnx").is_file() and (model / "member_0" / "weights.npz").is_file()
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    import rt_decoder.encoder.export as exp

    real = exp.build_graph
    calls = []

    def interrupted(*a: object, **k: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C after the first graph was written
        return real(*a, **k)

    monkeypatch.setattr(exp, "build_graph", interrupted)
    assert main(["export", str(model), "--out", str(out), "--window", "6", "--overwrite"]) == 130
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and leftovers(tmp_path) == []
    # a model folder whose writer was killed is refused by the loader
    from rt_decoder.encoder.manifest import load_model

    killed = tmp_path / ".m.incomplete-x"
    killed.mkdir()
    (killed / INCOMPLETE_MARKER).write_text("pid 1: model (rt-decoder train) for m\n")
    with pytest.raises(ModelError, match="an incomplete model"):
        load_model(killed)


def test_reconstruct_refuses_and_keeps_the_old_output_on_interrupt(model_and_data: tuple[Path, Path],
                                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model, ds = model_and_data
    out = tmp_path / "recon"
    base = ["reconstruct", "--model", str(model), "--data", str(ds), "--out", str(out), "--iterations", "2",
            "--no-progress", "--no-figures"]
    assert main(base) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0_metrics.json", "0_recon.npy", "1_metrics.json",
                                                     "1_recon.npy", "metrics.json"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(base) == 2
    assert "already exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert main([*base[:6], str(tmp_path / "x"), "--trials", "0,seven"]) == 2
    assert "'seven' is not a trial id" in capsys.readouterr().err
    import rt_decoder.recon.runner as runner

    real = runner.reconstruct_trial
    done = []

    def interrupted(*a: object, **k: object) -> object:
        if done:
            raise KeyboardInterrupt  # Ctrl-C during the second trial
        done.append(1)
        return real(*a, **k)

    monkeypatch.setattr(runner, "reconstruct_trial", interrupted)
    assert main([*base, "--overwrite", "--iterations", "3"]) == 130
    assert "trials finished so far are in" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # metrics.json of the earlier run, intact
    partial = tmp_path / "recon.incomplete"
    assert (partial / INCOMPLETE_MARKER).is_file() and (partial / "0_recon.npy").is_file()
    assert not (partial / "metrics.json").exists()


# ---------------------------------------------------------------------------- deconvolve


def test_deconvolve_refuses_and_keeps_the_old_output_on_interrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "F.npy", (100 + rng.standard_normal((3, 400))).astype(np.float32))
    out = tmp_path / "act.npy"
    np.save(out, np.full((2, 2), 5.0, np.float32))
    assert main(["deconvolve", str(tmp_path / "F.npy"), "--fs", "30", "--out", str(out)]) == 2
    assert "act.npy already exists; pass --overwrite" in capsys.readouterr().err
    import rt_decoder.deconv as deconv

    def interrupted(*a: object, **k: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(deconv, "deconvolve_array", interrupted)
    assert main(["deconvolve", str(tmp_path / "F.npy"), "--fs", "30", "--out", str(out), "--overwrite"]) == 130
    np.testing.assert_array_equal(np.load(out), np.full((2, 2), 5.0, np.float32))
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- recordings

_KILLED_WRITER = """
import os, signal, sys
import numpy as np
from rt_decoder.io.session_file import SessionWriter
from rt_decoder.messages import FluorescenceFrame, SessionInfo
info = SessionInfo("killed", np.arange(4), 30.0, stimulus_shape=(36, 64))
w = SessionWriter(sys.argv[1], info, stimulus_shape=(36, 64))
for k in range(400):
    w.append_frame(FluorescenceFrame(k, k, 10**9 + k * 33_333_333, values=np.full(4, 100.0 + k % 7, np.float32)),
                   np.full((36, 64), k % 255, np.float32))
w.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_recording_whose_writer_was_killed_is_refused_unless_allowed(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The service's recordings never overwrite (a new name per session) and are marked
    complete only when closed (SIGINT/SIGTERM drain closes them: tests/test_service_processes)."""
    from streaming.recorder import session_path

    path = tmp_path / "killed.h5"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)], env=env, capture_output=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL
    assert session_path(tmp_path, "killed") == tmp_path / "killed-1.h5"  # a new session never overwrites it
    for argv in (["deconvolve", str(path), "--out", str(tmp_path / "a.npy")],
                 ["to-nwb", str(path), "--out", str(tmp_path / "a.nwb")],
                 ["replay", str(path), "--bind", "tcp://127.0.0.1:1", "--wait-s", "0"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "an incomplete recording" in err and "--allow-incomplete" in err, err
    assert main(["deconvolve", str(path), "--out", str(tmp_path / "a.npy"), "--allow-incomplete",
                 "--init-frames", "100"]) == 0
    assert np.load(tmp_path / "a.npy").shape == (400, 4)


def test_rig_record_refuses_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = tmp_path / "s.h5"
    rec.write_bytes(b"an earlier recording")
    assert main(["rig", "--bind", "tcp://127.0.0.1:1", "--frames", "1", "--record", str(rec)]) == 2
    assert "s.h5 already exists; pass --overwrite" in capsys.readouterr().err
    assert rec.read_bytes() == b"an earlier recording"


def test_ctrl_c_closes_a_recording_cleanly_and_it_converts(tmp_path: Path) -> None:
    """A recording interrupted by Ctrl-C is closed (marked complete) and every reader takes it."""
    import socket

    from rt_decoder.io.inputs import read_complete_session
    from rt_decoder.io.session_file import SessionReader

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    rec = tmp_path / "live.h5"
    proc = cli("rig", "--bind", addr, "--neurons", "40", "--fs", "200", "--frames", "0", "--record", str(rec),
               "--session-id", "live", "--quiet")

    def some_frames() -> bool:
        if not rec.exists():
            return False
        try:
            with SessionReader(rec) as r:
                return r.n_frames >= 20
        except DataFormatError:
            return False

    wait_for(some_frames, "recorded frames", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    got = read_complete_session(rec)
    assert got.complete and got.n_frames >= 20
    assert list(got.frame_index) == list(range(got.n_frames))
    pytest.importorskip("pynwb")
    assert main(["to-nwb", str(rec), "--out", str(tmp_path / "live.nwb")]) == 0
