"""Reconstruction and training on a real two-node Ray cluster, compared with the local run.

The cluster (``ray.cluster_utils.Cluster``: a head and a second node, one CPU each, on this
machine) is started once for the module and shut down at its end. The model is a tiny
encoder trained here on a tiny virtual-rig dataset; every comparison runs the local
command and the ``--ray`` one with the same seeds and ``--threads 1`` and asserts equality
bit for bit (videos, weights, alpha masks; per-trial metrics except the seconds).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from cli.main import main
from rt_decoder.encoder import load_model
from rt_decoder.errors import BackendUnavailableError, ModelError

pytestmark = pytest.mark.slow  # a real cluster: about a minute for the module

N_NEURONS = 80
RECON_ARGS = ["--allow-training-trials", "--threads", "1", "--no-figures", "--no-progress"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 * 2**20,
                                                      "include_dashboard": False})
    try:
        c.add_node(num_cpus=1, object_store_memory=100 * 2**20)
        c.wait_for_nodes()
        yield c.address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny dataset, a 2-member model trained on it locally, and a local reconstruction."""
    from rt_decoder.io.sensorium import write_dataset
    from rt_decoder.sim import RigConfig, VirtualRig

    root = tmp_path_factory.mktemp("scale")
    data = root / "data"
    rig = VirtualRig(RigConfig(n_neurons=N_NEURONS, n_trials=8, trial_frames=150, seed=1))
    write_dataset(data, (rig.trial(i) for i in range(8)), roi_ids=rig.roi_ids,
                  tiers=["train"] * 6 + ["oracle", "final_test_main"])
    model = root / "model"
    assert main(["train", "--data", str(data), "--out", str(model), "--ensemble", "2", "--seed", "3", "--epochs", "2",
                 "--threads", "1", "--window", "8", "--no-export"]) == 0
    recon = root / "recon_local"
    assert main(["reconstruct", "--model", str(model), "--data", str(data), "--out", str(recon),
                 "--iterations", "15", "--trials", "6,7", *RECON_ARGS]) == 0
    return {"data": data, "model": model, "recon": recon}


def test_training_on_ray_gives_the_local_weights(cluster: str, tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "model_ray"
    assert main(["train", "--data", str(tiny["data"]), "--out", str(out), "--ensemble", "2", "--seed", "3",
                 "--epochs", "2", "--threads", "1", "--window", "8", "--no-export", "--ray", cluster]) == 0
    local, remote = load_model(tiny["model"]), load_model(out)
    assert [m.seed for m in remote.manifest.members] == [3, 4]
    for k, (a, b) in enumerate(zip(local.params, remote.params)):
        assert a.keys() == b.keys()
        for name in a:
            assert np.array_equal(a[name], b[name]), f"member {k} {name}"
    assert np.array_equal(local.masks.alpha, remote.masks.alpha)
    for key in ("heldout_corr_members", "heldout_corr_ensemble", "data_hash", "n_parameters"):
        assert local.manifest.training[key] == remote.manifest.training[key], key
    for k in range(2):
        h_local = json.loads((tiny["model"] / f"member_{k}" / "history.json").read_text())
        h_ray = json.loads((out / f"member_{k}" / "history.json").read_text())
        assert [e["val_corr"] for e in h_local["history"]] == [e["val_corr"] for e in h_ray["history"]]
    log = (out / "train.log").read_text()  # the workers' epoch lines reach the driver's log
    assert "seed 3 epoch 1" in log and "seed 4 epoch 0" in log


def _same_trial_metrics(a: dict, b: dict) -> None:
    a, b = dict(a), dict(b)
    a.pop("seconds"), b.pop("seconds")  # local: wall time of the trial; Ray: sum of its tasks' compute time
    assert a == b


def test_reconstruction_on_ray_gives_the_local_videos_and_metrics(cluster: str, tiny: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "recon_ray"
    assert main(["reconstruct", "--model", str(tiny["model"]), "--data", str(tiny["data"]), "--out", str(out),
                 "--iterations", "15", "--trials", "6,7", *RECON_ARGS, "--ray", cluster]) == 0
    for t in (6, 7):
        local = np.load(tiny["recon"] / f"{t}_recon.npy")
        remote = np.load(out / f"{t}_recon.npy")
        assert local.shape == (150, 36, 64) and np.array_equal(local, remote)
        _same_trial_metrics(json.loads((tiny["recon"] / f"{t}_metrics.json").read_text()),
                            json.loads((out / f"{t}_metrics.json").read_text()))
    m_local = json.loads((tiny["recon"] / "metrics.json").read_text())
    m_ray = json.loads((out / "metrics.json").read_text())
    ray_info = m_ray["summary"].pop("ray")
    assert m_ray["summary"] == m_local["summary"]
    assert ray_info["tasks"] == 4 and sum(w["tasks"] for w in ray_info["workers"].values()) == 4
    assert len(ray_info["workers"]) >= 2  # both one-CPU nodes took tasks
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tiny["recon"].iterdir())


# ----------------------------------------------------------------------------- failures
def _descendant_tasks(prefix: bytes) -> list[tuple[int, str]]:
    """(pid, title) of this process's descendants whose title (cmdline) starts with ``prefix``."""
    me = os.getpid()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
        except OSError:
            continue
        if not cmd.startswith(prefix):
            continue
        p = int(d)
        while p > 1:
            try:
                p = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                break
            if p == me:
                found.append((int(d), cmd.split(b"\0")[0].decode(errors="replace")))
                break
    return found


def test_a_worker_killed_mid_task_is_retried_and_the_run_completes(cluster: str, tiny: dict[str, Path]) -> None:
    from rt_decoder.io.sensorium import load_dataset
    from rt_decoder.recon.offline import OfflineSettings
    from rt_decoder.recon.runner import open_model, reconstruct_trial
    from rt_decoder.scale import RaySettings
    from rt_decoder.scale.recon import reconstruct_on_ray

    opened = open_model(tiny["model"], threads=1)
    trial = load_dataset(tiny["data"]).trial(7)
    settings = OfflineSettings(window_frames=8, stride_frames=8, iterations=120)
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["run"] = reconstruct_on_ray(opened, [trial], settings,
                                            RaySettings(address=cluster, threads_per_task=1, progress=False))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed: tuple[int, str] | None = None
    deadline = time.monotonic() + 60
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        tasks = _descendant_tasks(b"ray::rt-decoder-recon")
        if tasks:
            killed = tasks[0]
            os.kill(killed[0], signal.SIGKILL)
        time.sleep(0.02)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert "error" not in box, box.get("error")
    assert killed is not None, "no task process was seen running"
    result = box["run"]
    task = "trial 7 member " + killed[1].rsplit("-m", 1)[1]
    workers = [t.worker for t in result.tasks if t.task == task]  # type: ignore[attr-defined]
    assert len(workers) == 1 and not workers[0].endswith(f":{killed[0]}")  # re-run by another worker process
    local = reconstruct_trial(opened, trial, settings)
    assert np.array_equal(result.results[0].video, local.video)  # type: ignore[attr-defined]


def test_ctrl_c_leaves_only_complete_outputs(cluster: str, tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "cli", "reconstruct", "--model", str(tiny["model"]), "--data",
           str(tiny["data"]), "--out", str(out), "--iterations", "150", "--trials", "5,6,7", *RECON_ARGS,
           "--ray", cluster]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:  # 6 tasks on 2 CPUs: the first trial is written well before the last one
        deadline = time.monotonic() + 90
        while not list(out.glob("*_recon.npy")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, output[-2000:]
    names = sorted(p.name for p in out.iterdir())
    done = sorted({n.split("_")[0] for n in names})
    assert 1 <= len(done) < 3 and names == sorted(f"{t}_{kind}" for t in done  # no temporary files,
                                                  for kind in ("metrics.json", "recon.npy")), names  # no metrics.json
    for t in done:
        assert np.load(out / f"{t}_recon.npy").shape == (150, 36, 64)
        assert json.loads((out / f"{t}_metrics.json").read_text())["trial_id"] == int(t)


def test_an_error_inside_a_task_ends_the_run_with_that_error(cluster: str) -> None:
    from rt_decoder.errors import ConfigError
    from rt_decoder.scale import RaySettings
    from rt_decoder.scale._ray import TaskBar, ray_session, run_tasks

    def bad_task(x: int) -> int:  # defined here: Ray ships it by value
        from rt_decoder.errors import ConfigError

        raise ConfigError(f"window_frames must be in [1, 1024], got {x}")

    def slow_task() -> int:
        time.sleep(30)
        return 1

    with ray_session(RaySettings(address=cluster, progress=False)) as r:
        refs = {"bad": r.remote(max_retries=3)(bad_task).remote(0), "slow": r.remote(slow_task).remote()}
        bar = TaskBar({"bad": 1, "slow": 1}, unit="it", desc="t", enabled=False)
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match="got 0"):  # the task's own error, not retried
            run_tasks(r, refs, lambda name, value: None, bar)
        assert time.monotonic() - t0 < 20  # did not wait for the slow task, which was cancelled
        with pytest.raises(r.exceptions.TaskCancelledError):
            r.get(refs["slow"], timeout=20)
    assert not ray.is_initialized()


# ----------------------------------------------------------------------------- no cluster needed
def test_without_ray_the_error_names_the_extra(tiny: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    from rt_decoder.scale import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'rt-decoder\[scale\]'"):
        require_ray()
    rc = main(["reconstruct", "--model", str(tiny["model"]), "--data", str(tiny["data"]), "--out",
               str(tmp_path / "o"), "--iterations", "1", "--trials", "6", *RECON_ARGS, "--ray"])
    assert rc == 2 and "rt-decoder[scale]" in capsys.readouterr().err


def test_the_core_and_the_scale_package_import_without_ray() -> None:
    code = ("import sys; import rt_decoder.scale, rt_decoder.scale.recon, rt_decoder.scale.train, "
            "cli.commands.reconstruct, cli.commands.train; assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_model_files_travel_as_bytes_and_load_with_the_manifest_loader(tiny: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    from rt_decoder.scale._ray import materialise_model, model_files

    model = load_model(tiny["model"])
    files = model_files(model)
    assert sorted(files) == ["alpha.npz", "manifest.json", "member_0/weights.npz", "member_1/weights.npz",
                             "neuron_ids.npy"]
    root = materialise_model(files, cache_dir=tmp_path)
    assert materialise_model(files, cache_dir=tmp_path) == root  # reused, not rewritten
    again = load_model(root)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(model.params, again.params) for k in a)
    (root / "neuron_ids.npy").write_bytes(b"changed on disk")
    private = materialise_model(files, cache_dir=tmp_path)  # not trusted: a fresh copy
    assert private != root and (private / "neuron_ids.npy").read_bytes() == files["neuron_ids.npy"]
    with pytest.raises(ModelError, match="relative path"):
        materialise_model({"../evil": b"x", **files}, cache_dir=tmp_path)
    tampered = dict(files)
    tampered["member_1/weights.npz"] = files["member_0/weights.npz"]
    with pytest.raises(ModelError, match="sha256"):  # the manifest loader's hash check still applies
        load_model(materialise_model(tampered, cache_dir=tmp_path))
