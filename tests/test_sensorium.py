"""Sensorium-layout datasets: writer/loader round trip, real-data conventions, error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rt_decoder.errors import ConfigError, DataFormatError
from rt_decoder.io import sensorium
from rt_decoder.io.sensorium import TIER_NAMES, assign_tiers, load_dataset, write_dataset
from rt_decoder.sim import RigConfig, Trial, VirtualRig

N, T = 25, 40


@pytest.fixture(scope="module")
def rig() -> VirtualRig:
    return VirtualRig(RigConfig(n_neurons=N, seed=2, trial_frames=T))


@pytest.fixture(scope="module")
def trials(rig: VirtualRig) -> list[Trial]:
    return [rig.trial(i) for i in range(4)]


def _write(rig: VirtualRig, trials: list[Trial], root: Path, **kw) -> Path:  # type: ignore[no-untyped-def]
    kw.setdefault("tiers", ["train", "train", "oracle", "final_test_main"])
    return write_dataset(root, iter(trials), roi_ids=rig.roi_ids, roi_centres_px=rig.roi_centres_px,
                         cell_motor_coordinates_um=rig.cell_motor_coordinates_um,
                         neuron_params=rig.neuron_params, extra_meta={"rig_config": rig.config.to_dict()}, **kw)


@pytest.fixture()
def dataset(rig: VirtualRig, trials: list[Trial], tmp_path: Path) -> Path:
    return _write(rig, trials, tmp_path / "animal")


# ------------------------------------------------------------------ round trip
def test_round_trip_preserves_every_array(rig: VirtualRig, trials: list[Trial], dataset: Path) -> None:
    ds = load_dataset(dataset)
    assert ds.n_neurons == N and len(ds) == 4 and ds.trial_ids == [0, 1, 2, 3]
    assert ds.tiers == {0: "train", 1: "train", 2: "oracle", 3: "final_test_main"}
    assert ds.trials("train") == [0, 1] and ds.trials("oracle") == [2] and ds.trials() == [0, 1, 2, 3]
    np.testing.assert_array_equal(ds.unit_ids, rig.roi_ids)
    np.testing.assert_array_equal(ds.cell_motor_coordinates, rig.cell_motor_coordinates_um)
    np.testing.assert_array_equal(ds.roi_centres_px, rig.roi_centres_px)
    assert ds.neuron_params is not None and ds.neuron_params.dtype == rig.neuron_params.dtype
    np.testing.assert_array_equal(ds.neuron_params, rig.neuron_params)
    for tr in trials:
        got = ds.trial(tr.trial_id)
        assert got.tier == ds.tiers[tr.trial_id] and got.n_frames == T
        np.testing.assert_array_equal(got.video, tr.video)
        np.testing.assert_array_equal(got.behaviour, tr.behaviour)
        np.testing.assert_array_equal(got.responses, tr.spikes)  # default: ground-truth spikes
        np.testing.assert_array_equal(got.fluorescence, tr.fluorescence)
        np.testing.assert_array_equal(got.spikes, tr.spikes)
        np.testing.assert_array_equal(got.rates, tr.rates)
        for name in ("video", "responses", "behaviour"):
            assert getattr(got, name).dtype == np.float32
    assert ds.meta["responses_source"] == "ground_truth_spikes"
    assert ds.meta["rig_config"]["seed"] == 2 and ds.frame_rate_hz == 30.0


def test_files_follow_the_sensorium_layout(dataset: Path) -> None:
    assert np.load(dataset / "data/videos/0.npy").shape == (36, 64, T)
    assert np.load(dataset / "data/responses/0.npy").shape == (N, T)
    assert np.load(dataset / "data/behavior/0.npy").shape == (2, T)
    assert np.load(dataset / "data/pupil_center/0.npy").shape == (2, T)
    assert np.load(dataset / "meta/neurons/cell_motor_coordinates.npy").shape == (N, 3)
    tiers = np.load(dataset / "meta/trials/tiers.npy", allow_pickle=False)
    assert tiers.dtype.kind == "U" and tiers.tolist() == ["train", "train", "oracle", "final_test_main"]
    for key in ("videos", "responses", "behavior", "pupil_center"):
        for stat in ("mean", "std", "min", "max", "median"):
            assert (dataset / "meta/statistics" / key / "all" / f"{stat}.npy").is_file()


def test_statistics_match_numpy(trials: list[Trial], dataset: Path) -> None:
    ds = load_dataset(dataset)
    resp = np.concatenate([t.spikes for t in trials])           # (4T, N)
    video = np.concatenate([t.video for t in trials])
    beh = np.concatenate([t.behaviour for t in trials])
    st = ds.statistics
    for stat, fn in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max), ("median", np.median)):
        np.testing.assert_allclose(st["responses"][stat], fn(resp, axis=0), rtol=1e-4, atol=1e-5, err_msg=stat)
        np.testing.assert_allclose(st["videos"][stat], fn(video), rtol=1e-4, err_msg=stat)
        np.testing.assert_allclose(st["behavior"][stat], fn(beh[:, :2], axis=0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(st["pupil_center"][stat], fn(beh[:, 2:], axis=0), rtol=1e-4, atol=1e-5)
    assert st["responses"]["mean"].shape == (N,) and st["videos"]["mean"].shape == ()


def test_sampled_median_when_over_budget(rig: VirtualRig, trials: list[Trial], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sensorium, "_MEDIAN_BUDGET", 4 * N * 10)  # 10 frames per trial for responses
    ds = load_dataset(_write(rig, trials, tmp_path / "a"))
    resp = np.concatenate([t.spikes for t in trials])
    np.testing.assert_allclose(ds.statistics["responses"]["mean"], resp.mean(axis=0), rtol=1e-5)
    assert np.abs(ds.statistics["responses"]["median"] - np.median(resp, axis=0)).max() <= resp.max()


def test_responses_fn_supplies_the_responses(rig: VirtualRig, trials: list[Trial], tmp_path: Path) -> None:
    calls = []

    def double_fluorescence(f: np.ndarray, frame_rate_hz: float) -> np.ndarray:
        calls.append((f.shape, frame_rate_hz))
        return 2.0 * f

    ds = load_dataset(_write(rig, trials, tmp_path / "a", responses_fn=double_fluorescence, frame_rate_hz=30.0))
    np.testing.assert_allclose(ds.trial(1).responses, 2.0 * trials[1].fluorescence)
    assert calls == [((T, N), 30.0)] * 4
    assert ds.meta["responses_source"].endswith("double_fluorescence")


# ------------------------------------------------------------------ writer errors
def test_writer_rejects_bad_tiers_and_counts(rig: VirtualRig, trials: list[Trial], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'training'"):
        _write(rig, trials, tmp_path / "a", tiers=["training"] * 4)
    with pytest.raises(ConfigError, match="3 tiers"):
        _write(rig, trials, tmp_path / "b", tiers=["train"] * 3)
    with pytest.raises(ConfigError, match="5 tiers"):
        _write(rig, trials, tmp_path / "c", tiers=["train"] * 5)


def test_writer_refuses_to_overwrite_a_dataset(rig: VirtualRig, trials: list[Trial], dataset: Path) -> None:
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        _write(rig, trials, dataset)
    _write(rig, trials, dataset, overwrite=True)


def test_assign_tiers() -> None:
    tiers = assign_tiers(20, seed=1)
    assert (tiers.count("train"), tiers.count("oracle"), tiers.count("final_test_main")) == (16, 2, 2)
    assert tiers == assign_tiers(20, seed=1) and tiers != assign_tiers(20, seed=2)
    assert set(tiers) <= set(TIER_NAMES)
    assert assign_tiers(1) == ["train"]
    with pytest.raises(ConfigError, match="no training trial"):
        assign_tiers(2, validation_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match="test_fraction"):
        assign_tiers(10, test_fraction=1.5)


# ------------------------------------------------------------------ real Sensorium conventions
def _real_like(root: Path, n: int = 7, t_valid: int = 250) -> Path:
    """A folder shaped like a real Sensorium 2023 animal: NaN padding, no extra files."""
    rng = np.random.default_rng(0)
    for key in ("videos", "responses", "behavior", "pupil_center"):
        (root / "data" / key).mkdir(parents=True)
    for i in range(3):
        video = rng.uniform(0, 255, (36, 64, 300))
        video[:, :, t_valid:] = np.nan
        resp = rng.gamma(1.0, 1.0, (n, 300))
        resp[:, t_valid:] = np.nan
        np.save(root / f"data/videos/{i}.npy", video)
        np.save(root / f"data/responses/{i}.npy", resp)
        np.save(root / f"data/behavior/{i}.npy", rng.normal(size=(2, 300)))
        np.save(root / f"data/pupil_center/{i}.npy", rng.normal(size=(2, 300)))
    (root / "meta/neurons").mkdir(parents=True)
    (root / "meta/trials").mkdir(parents=True)
    np.save(root / "meta/neurons/unit_ids.npy", np.arange(1, n + 1))
    np.save(root / "meta/neurons/cell_motor_coordinates.npy", rng.normal(size=(n, 3)))
    np.save(root / "meta/trials/tiers.npy", np.array(["train", "oracle", "final_test_main"]))
    return root


def test_loads_a_real_sensorium_style_folder(tmp_path: Path) -> None:
    root = _real_like(tmp_path / "real")
    ds = load_dataset(root)
    assert ds.n_neurons == 7 and ds.meta == {} and ds.statistics == {} and ds.neuron_params is None
    tr = ds.trial(1)
    assert tr.tier == "oracle" and tr.n_frames == 250  # length = first NaN frame
    assert tr.video.shape == (250, 36, 64) and tr.responses.shape == (250, 7) and tr.behaviour.shape == (250, 4)
    assert np.isfinite(tr.video).all() and tr.fluorescence is None and tr.spikes is None and tr.rates is None
    raw = np.load(root / "data/pupil_center/1.npy")
    np.testing.assert_allclose(tr.behaviour[:, 2], raw[0, :250], rtol=1e-6)  # pupil x -> column 2


# ------------------------------------------------------------------ loader errors name the file
def test_missing_file_is_named(dataset: Path) -> None:
    (dataset / "data/responses/2.npy").unlink()
    ds = load_dataset(dataset)
    with pytest.raises(DataFormatError, match=r"responses[/\\]2\.npy: missing file"):
        ds.trial(2)


def test_corrupted_file_is_named(dataset: Path) -> None:
    path = dataset / "data/videos/1.npy"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataFormatError, match=r"videos[/\\]1\.npy: not a readable \.npy"):
        load_dataset(dataset).trial(1)


def test_wrong_shape_is_named(dataset: Path) -> None:
    np.save(dataset / "data/behavior/0.npy", np.zeros((3, T), np.float32))
    with pytest.raises(DataFormatError, match=r"behavior[/\\]0\.npy: expected shape \(2, T\).*wrong shape"):
        load_dataset(dataset).trial(0)


def test_neuron_count_mismatch_is_named(dataset: Path) -> None:
    np.save(dataset / "data/responses/3.npy", np.zeros((N - 1, T), np.float32))
    with pytest.raises(DataFormatError, match=r"responses[/\\]3\.npy: has 24 neurons.*N mismatch"):
        load_dataset(dataset).trial(3)
    np.save(dataset / "meta/neurons/cell_motor_coordinates.npy", np.zeros((N + 1, 3)))
    with pytest.raises(DataFormatError, match=r"cell_motor_coordinates\.npy.*N mismatch"):
        load_dataset(dataset)


def test_short_responses_are_named(dataset: Path) -> None:
    np.save(dataset / "data/spikes/0.npy", np.zeros((N, T - 5), np.float32))
    with pytest.raises(DataFormatError, match=r"spikes[/\\]0\.npy: has 35 frames but the video has 40"):
        load_dataset(dataset).trial(0)


def test_pickled_tiers_are_refused_with_a_clear_message(dataset: Path) -> None:
    np.save(dataset / "meta/trials/tiers.npy", np.array(["train", 3, None, "oracle"], dtype=object),
            allow_pickle=True)
    with pytest.raises(DataFormatError, match=r"tiers\.npy: holds a pickled object array"):
        load_dataset(dataset)


def test_missing_unit_ids_and_videos_are_named(dataset: Path, tmp_path: Path) -> None:
    (dataset / "meta/neurons/unit_ids.npy").unlink()
    with pytest.raises(DataFormatError, match=r"unit_ids\.npy: missing file"):
        load_dataset(dataset)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match=r"data[/\\]videos: missing folder"):
        load_dataset(tmp_path / "empty")
    # a folder of animal folders: they are listed
    with pytest.raises(DataFormatError, match=rf"holds 1 animal folder\(s\): {dataset.name}; pass one of them"):
        load_dataset(dataset.parent)
    with pytest.raises(DataFormatError, match="not a directory"):
        load_dataset(tmp_path / "nowhere")


def test_bad_rig_json_and_unknown_trial_are_named(dataset: Path) -> None:
    with pytest.raises(DataFormatError, match="no trial 9"):
        load_dataset(dataset).trial(9)
    (dataset / "meta/rig.json").write_text("{not json")
    with pytest.raises(DataFormatError, match=r"rig\.json: not valid JSON"):
        load_dataset(dataset)
    (dataset / "meta/rig.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DataFormatError, match="expected a JSON object"):
        load_dataset(dataset)
