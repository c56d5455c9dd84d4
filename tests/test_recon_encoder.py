"""The live stage on the real exported encoder (ONNX Runtime), with a random-weight model.

The cached-context path (loss over the frames still optimised, context features of the
frozen frames cached) must give the same decoded frames as the full-window path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rt_decoder.messages import ActivityFrame
from rt_decoder.recon import LiveReconstructor, LiveSettings, OptimSettings
from rt_decoder.recon.runner import open_model

N = 60
LAG = 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rt_decoder.encoder.synthetic import write_random_model

    return write_random_model(tmp_path_factory.mktemp("model"), n_neurons=N, n_members=2, window_frames=16)


def _run(live: LiveReconstructor, resp: np.ndarray, beh: np.ndarray) -> dict[int, np.ndarray]:
    out = {}
    for t in range(resp.shape[0]):
        for d in live(ActivityFrame(t, t, 0, values=resp[t], behaviour=beh[t])):
            out[d.frame_index] = d.image
    return out


def test_cached_context_path_equals_full_window_path(model_dir: Path) -> None:
    rng = np.random.default_rng(0)
    T = 24
    resp = rng.poisson(0.5, size=(T, N)).astype(np.float32)
    beh = np.tile(np.array([18.0, 3.0, 0.0, 0.0], np.float32), (T, 1))
    st = LiveSettings(lag_frames=LAG, fixed_steps=2, blur_sigma_px=0.0, optim=OptimSettings(learning_rate_px=300.0))
    full = open_model(model_dir, max_members=1, threads=1)
    live_full = LiveReconstructor(full.encoders, full.train_mask, st)
    cached = open_model(model_dir, max_members=1, threads=1, live_frames=st.live_frames)
    live_cached = LiveReconstructor(cached.encoders, cached.train_mask, st, cached_context=True)
    assert live_cached.cached_context and not live_full.cached_context
    a = _run(live_full, resp, beh)
    b = _run(live_cached, resp, beh)
    assert sorted(a) == sorted(b) == list(range(T - LAG))
    moved = 0
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=2e-2)   # float32 graphs, 1000-px steps
        moved += int(np.any(a[k] != 127.5))
    assert moved > T // 2


def test_ensemble_live_on_onnx_runtime_is_deterministic(model_dir: Path) -> None:
    rng = np.random.default_rng(1)
    T = 20
    resp = rng.poisson(0.5, size=(T, N)).astype(np.float32)
    beh = np.tile(np.array([18.0, 3.0, 0.0, 0.0], np.float32), (T, 1))
    st = LiveSettings(lag_frames=LAG, fixed_steps=1)
    opened = open_model(model_dir, threads=2, live_frames=st.live_frames)
    assert len(opened.encoders) == 2
    r1 = _run(LiveReconstructor(opened.encoders, opened.train_mask, st, cached_context=True), resp, beh)
    r2 = _run(LiveReconstructor(opened.encoders, opened.train_mask, st, cached_context=True), resp, beh)
    for k in r1:
        np.testing.assert_array_equal(r1[k], r2[k])


def test_live_stage_maps_rois_by_id_and_ignores_missing(model_dir: Path) -> None:
    from rt_decoder.errors import StageError
    from rt_decoder.messages import SessionInfo
    from rt_decoder.recon.stage import LiveStage, ReconstructionSettings

    stage = LiveStage(ReconstructionSettings(model_dir=str(model_dir), threads=1,
                                             live=LiveSettings(lag_frames=LAG, fixed_steps=1, max_members=1)))
    assert stage.live.cached_context and stage.opened.encoders[0].live_frames == LAG + 1  # type: ignore[attr-defined]
    stage.warmup()
    ids = stage.neuron_ids
    # the session has the model's neurons in reverse order, minus 10, plus 5 unknown ROIs
    sess_ids = np.concatenate([ids[10:][::-1], np.arange(5) + 10**6])
    stage.reset(SessionInfo("s", sess_ids, 30.0))
    assert stage.roi_coverage == pytest.approx((N - 10) / N)
    assert np.all(stage.live._weights[:10] == 0) and np.all(stage.live._weights[10:] == 1)
    vals = np.arange(sess_ids.size, dtype=np.float32)
    mapped = stage._map(vals)
    # model neuron k (k >= 10) sits at session column (N - 1 - k)
    for k in (10, 30, N - 1):
        assert mapped[k] == vals[N - 1 - k]
    assert np.all(mapped[:10] == 0)
    out = []
    for t in range(LAG + 3):
        out += stage(ActivityFrame(t, t, 0, values=vals, behaviour=np.zeros(4, np.float32)),
                     np.tile(vals, (4, 1)))
    assert [d.frame_index for d in out] == [0, 1, 2]
    assert [d.frame_index for d in stage.flush()] == list(range(3, LAG + 3))
    # a session sharing no ROI with the model, or too few, is refused at its start (the service
    # then publishes its activity) and cannot be decoded
    with pytest.raises(StageError, match="none of its"):
        stage.reset(SessionInfo("s2", np.arange(3) + 10**7, 30.0))
    with pytest.raises(StageError, match="nothing can be decoded"):
        stage(ActivityFrame(0, 0, 0, values=np.zeros(3, np.float32)), None)
    with pytest.raises(StageError, match=r"cover 25% .*min_roi_coverage"):
        stage.reset(SessionInfo("s3", ids[: N // 4], 30.0))
    low = LiveStage(ReconstructionSettings(model_dir=str(model_dir), threads=1, min_roi_coverage=0.2,
                                           live=LiveSettings(lag_frames=LAG, fixed_steps=1, max_members=1)))
    low.reset(SessionInfo("s3", ids[: N // 4], 30.0))  # the threshold is configurable
    assert low.roi_coverage == pytest.approx(0.25)


def test_target_ramp_down_weights_the_newest_frames(model_dir: Path) -> None:
    st = LiveSettings(lag_frames=LAG, fixed_steps=1, target_ramp_frames=3)
    opened = open_model(model_dir, max_members=1, threads=1, live_frames=st.live_frames)
    live = LiveReconstructor(opened.encoders, opened.train_mask, st, cached_context=True)
    np.testing.assert_allclose(live._ramp[-3:], [1.0, 2 / 3, 1 / 3])
    assert np.all(live._ramp[:-3] == 1.0)
    rng = np.random.default_rng(2)
    for t in range(8):
        live(ActivityFrame(t, t, 0, values=rng.poisson(0.5, N).astype(np.float32), behaviour=np.zeros(4, np.float32)))
    assert live.steps_total == 8


def test_every_backend_implements_the_live_protocol_or_refuses_it(model_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from rt_decoder.encoder import BackendSettings, Encoder, LiveEncoder, TensorRTBackend, load_model, open_backend
    from rt_decoder.errors import BackendUnavailableError
    from rt_decoder.recon.stage import LiveStage, ReconstructionSettings

    model = load_model(model_dir)
    ort = open_backend(model, 0, BackendSettings(live_frames=LAG + 1))
    assert isinstance(ort, Encoder) and isinstance(ort, LiveEncoder) and ort.live_frames == LAG + 1
    # TensorRT has no live graph: asked for one it refuses at construction, even where TensorRT
    # itself is importable (a fake module here; the real one cannot be installed on this machine)
    assert not any(hasattr(TensorRTBackend, m) for m in ("features", "loss_and_grad_live"))
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "0.0-fake"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(BackendUnavailableError, match=r"no live graph .*features and loss_and_grad_live.*"
                                                      r"cached_context = false"):
        TensorRTBackend(model, 0, BackendSettings(kind="tensorrt", live_frames=LAG + 1))
    # the service's default (cached context) with backend = "tensorrt": refused when the stage is built
    with pytest.raises(BackendUnavailableError, match="no live graph"):
        LiveStage(ReconstructionSettings(model_dir=str(model_dir), backend="tensorrt", threads=1))
    # without the cached context no live graph is asked for: it gets past that check to TensorRT itself
    with pytest.raises(BackendUnavailableError) as exc:
        LiveStage(ReconstructionSettings(model_dir=str(model_dir), backend="tensorrt", threads=1,
                                         cached_context=False))
    assert "no live graph" not in str(exc.value)
