"""Reconstruction: offline protocol pieces, the live stage, and their agreement."""

from __future__ import annotations

import numpy as np
import pytest

from rt_decoder.errors import ConfigError, ShapeMismatchError, StageError
from rt_decoder.messages import ActivityFrame
from rt_decoder.recon import (
    LiveReconstructor,
    LiveSettings,
    OfflineSettings,
    OptimSettings,
    blur_video,
    coverage,
    reconstruct_ensemble,
    reconstruct_single,
    window_starts,
)
from rt_decoder.recon.metrics import best_lag, per_frame_correlation, quality_report, video_correlation
from rt_decoder.recon.optim import apply_step, normalise
from rt_decoder.recon.offline import trial_gradient
from tests._lnp_encoder import LNPEncoder

SHAPE = (12, 16)


def _movie(T: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth random movie in 0..255: blurred noise drifting in time."""
    base = rng.normal(size=(T + 8, *SHAPE))
    v = blur_video(base, 2.0, 1.5)
    v = (v - v.mean()) / v.std()
    return np.clip(127.5 + 50 * v[:T], 0, 255).astype(np.float32)


# ------------------------------------------------------------------ windows and coverage

def test_window_starts_cover_every_frame_and_end_at_trial_end() -> None:
    s = window_starts(300, 32, 8)
    assert s[0] == 0 and s[-1] == 300 - 32
    assert np.all(np.diff(s) <= 8)
    c = coverage(300, 32, 8)
    assert c.min() >= 1 and c.max() == 5   # 268 = 33.5 strides: a final window at 268
    # hand-checked: frames 0..7 are covered by the first window only
    assert np.all(c[:8] == 1) and np.all(c[8:16] == 2)


def test_window_starts_adds_a_final_window_when_stride_does_not_divide() -> None:
    assert list(window_starts(45, 32, 8)) == [0, 8, 13]
    with pytest.raises(StageError, match="shorter"):
        window_starts(10, 32, 8)


def test_trial_gradient_is_mean_of_normalised_window_gradients() -> None:
    rng = np.random.default_rng(1)
    enc = LNPEncoder(20, window=8, shape=SHAPE)
    T = 20
    video = _movie(T, rng)
    beh = np.zeros((T, 4), np.float32)
    resp = rng.poisson(1.0, size=(T, 20)).astype(np.float32)
    w = np.ones(20, np.float32)
    _, g = trial_gradient(enc, video, beh, resp, w, 8, 4)
    # by hand: starts 0, 4, 8, 12
    expect = np.zeros_like(video)
    count = np.zeros(T)
    for s in (0, 4, 8, 12):
        _, gw = enc.loss_and_grad(video[s:s + 8], beh[s:s + 8], resp[s:s + 8], w)
        expect[s:s + 8] += gw / np.linalg.norm(gw)
        count[s:s + 8] += 1
    expect /= count[:, None, None]
    np.testing.assert_allclose(g, expect, rtol=1e-5, atol=1e-7)


def test_normalise_gives_unit_norm_and_leaves_zero_alone() -> None:
    g = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    assert np.linalg.norm(normalise(g)) == pytest.approx(1.0, rel=1e-5)
    z = np.zeros((2, 2), np.float32)
    assert np.all(normalise(z) == 0)


def test_step_clamps_and_warms_up_per_frame() -> None:
    s = OptimSettings(learning_rate_px=1000.0, momentum=0.9, warmup_iterations=10)
    video = np.full((2, 3, 3), 127.5, np.float32)
    moment = np.zeros_like(video)
    iters = np.array([0, 20], np.int64)
    g = np.ones_like(video)
    apply_step(video, moment, iters, g, np.array([True, True]), s)
    # frame 0: first iteration of warm-up: lr * 1/10 * (0.1 g / (1 - 0.9)) = 100 -> 27.5
    assert video[0, 0, 0] == pytest.approx(27.5, abs=1e-3)
    # frame 1 is past warm-up: full rate, bias correction of its 21st iteration
    assert video[1, 0, 0] == pytest.approx(127.5 - 1000 * 0.1 / (1 - 0.9 ** 21), abs=1e-3)
    assert list(iters) == [1, 21]
    apply_step(video, moment, iters, 100 * g, np.array([True, True]), s)
    assert np.all(video >= 0.0) and np.any(video == 0.0)      # clamped at 0
    # inactive frames do not move
    before = video.copy()
    apply_step(video, moment, iters, -g, np.array([False, False]), s)
    np.testing.assert_array_equal(video, before)


def test_gradient_only_inside_mask() -> None:
    rng = np.random.default_rng(2)
    enc = LNPEncoder(30, window=8, shape=SHAPE)
    T = 16
    truth = _movie(T, rng)
    resp = enc.forward(truth)
    mask = np.zeros(SHAPE, bool)
    mask[3:9, 4:12] = True
    out = reconstruct_single(enc, resp, np.zeros((T, 4), np.float32), mask,
                             OfflineSettings(window_frames=8, stride_frames=4, iterations=5),
                             frame_shape=SHAPE)
    assert np.all(out[:, ~mask] == 127.5)
    assert np.any(out[:, mask] != 127.5)


def test_ensemble_average_then_blur() -> None:
    rng = np.random.default_rng(3)
    encs = [LNPEncoder(30, window=8, shape=SHAPE, seed=s) for s in (0, 1)]
    T = 16
    resp = encs[0].forward(_movie(T, rng))
    mask = np.ones(SHAPE, bool)
    st = OfflineSettings(window_frames=8, stride_frames=4, iterations=3)
    mean, members = reconstruct_ensemble(encs, resp, np.zeros((T, 4), np.float32), mask, st, frame_shape=SHAPE)
    np.testing.assert_allclose(mean, blur_video((members[0] + members[1]) / 2, 0.5, 0.5), atol=1e-4)


def test_offline_correlation_rises_with_iterations() -> None:
    rng = np.random.default_rng(4)
    enc = LNPEncoder(400, window=8, shape=SHAPE)
    T = 40
    truth = _movie(T, rng)
    resp = enc.forward(truth)            # the model's own predicted responses
    mask = np.ones(SHAPE, bool)
    corrs = []
    for iters in (2, 10, 40):
        v = reconstruct_single(enc, resp, np.zeros((T, 4), np.float32), mask,
                               OfflineSettings(window_frames=8, stride_frames=4, iterations=iters,
                                               optim=OptimSettings(learning_rate_px=200.0)),
                               frame_shape=SHAPE)
        corrs.append(video_correlation(truth, v, mask, skip_frames=4))
    assert corrs[0] < corrs[1] < corrs[2]
    assert corrs[2] > 0.5


def test_offline_rejects_mismatched_inputs() -> None:
    enc = LNPEncoder(10, window=8, shape=SHAPE)
    mask = np.ones(SHAPE, bool)
    with pytest.raises(StageError, match="neurons"):
        reconstruct_single(enc, np.zeros((16, 11), np.float32), np.zeros((16, 4), np.float32), mask,
                           OfflineSettings(window_frames=8), frame_shape=SHAPE)
    with pytest.raises(ConfigError, match="window"):
        reconstruct_single(enc, np.zeros((16, 10), np.float32), np.zeros((16, 4), np.float32), mask,
                           OfflineSettings(window_frames=16), frame_shape=SHAPE)


def test_settings_reject_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        LiveSettings.from_dict({"lag_frames": 3, "bogus": 1})
    with pytest.raises(ConfigError, match="lr"):
        OfflineSettings.from_dict({"optim": {"lr": 3}})


# ------------------------------------------------------------------ metrics

def test_metrics_hand_checked() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=(40, 4, 5))
    assert video_correlation(a, a, skip_frames=30) == pytest.approx(1.0)
    assert video_correlation(a, -a, skip_frames=30) == pytest.approx(-1.0)
    assert video_correlation(a, 3 * a + 2, skip_frames=0) == pytest.approx(1.0)
    mask = np.zeros((4, 5), bool)
    mask[0, 0] = True
    b = a.copy()
    b[:, 1:, :] = rng.normal(size=(40, 3, 5))
    b[:, 0, 1:] = rng.normal(size=(40, 4))
    assert video_correlation(a, b, mask, skip_frames=0) == pytest.approx(1.0)
    assert per_frame_correlation(a, a, skip_frames=30).shape == (10,)
    late = np.concatenate([a[:3], a[:-3]])  # reconstruction 3 frames late
    lag, c = best_lag(a, late, skip_frames=5)
    assert lag == 3 and c == pytest.approx(1.0)
    rep = quality_report(a, a, np.ones((4, 5), bool), skip_frames=30)
    assert rep.video_corr == pytest.approx(1.0)


# ------------------------------------------------------------------ live stage

def _causal_reference(enc: LNPEncoder, resp: np.ndarray, lag: int, steps: int, s: OptimSettings,
                      mask: np.ndarray) -> np.ndarray:
    """Plain re-statement of the live protocol over a whole array (no ring buffers)."""
    T = resp.shape[0]
    W = enc.window_frames
    H, Wd = mask.shape
    video = np.full((T, H, Wd), s.init_value_px, np.float32)
    moment = np.zeros_like(video)
    iters = np.zeros(T, np.int64)
    out = np.zeros_like(video)
    for t in range(T):
        if t > 0:
            video[t] = video[t - 1]          # warm start: previous solution
        lo = t - W + 1
        pad = max(0, -lo)
        win = np.full((W, H, Wd), s.init_value_px, np.float32)
        tgt = np.zeros((W, resp.shape[1]), np.float32)
        win[pad:] = video[max(lo, 0): t + 1]
        tgt[pad:] = resp[max(lo, 0): t + 1]
        frames = np.arange(lo, t + 1)
        active = (frames >= 0) & (frames >= t - lag)
        for _ in range(steps):
            win[pad:] = video[max(lo, 0): t + 1]
            _, g = enc.loss_and_grad(win, np.zeros((W, 4), np.float32), tgt, np.ones(resp.shape[1], np.float32))
            g = g.copy()
            g[~active] = 0
            g = normalise(g) * mask
            sub_v, sub_m, sub_i = video[max(lo, 0): t + 1], moment[max(lo, 0): t + 1], iters[max(lo, 0): t + 1]
            apply_step(sub_v, sub_m, sub_i, g[pad:], active[pad:], s)
        if t - lag >= 0:
            out[t - lag] = video[t - lag]
    return out


def _run_live(enc: LNPEncoder, resp: np.ndarray, settings: LiveSettings) -> tuple[np.ndarray, LiveReconstructor]:
    mask = np.ones(SHAPE, bool)
    live = LiveReconstructor([enc], mask, settings)
    out = np.zeros((resp.shape[0], *SHAPE), np.float32)
    for t in range(resp.shape[0]):
        for d in live(ActivityFrame(t, t, 1000 + t, values=resp[t])):
            out[d.frame_index] = d.image
    return out, live


def test_live_fixed_steps_equals_causal_offline_and_is_deterministic() -> None:
    rng = np.random.default_rng(6)
    enc = LNPEncoder(200, window=8, shape=SHAPE)
    T = 30
    resp = rng.poisson(enc.forward(_movie(T, rng))).astype(np.float32)
    opt = OptimSettings(learning_rate_px=300.0)
    # the reference weighs every frame alike: no target ramp (the live default ramps over 8 frames)
    st = LiveSettings(lag_frames=3, fixed_steps=4, blur_sigma_px=0.0, blur_sigma_frames=0.0, warm_start_decay=1.0,
                      target_ramp_frames=0, optim=opt)
    out1, live = _run_live(enc, resp, st)
    out2, _ = _run_live(enc, resp, st)
    np.testing.assert_array_equal(out1, out2)
    ref = _causal_reference(enc, resp, 3, 4, opt, np.ones(SHAPE, np.float32))
    np.testing.assert_allclose(out1[: T - 3], ref[: T - 3], atol=1e-3)
    assert live.frames_emitted == T - 3 and live.skipped == 0
    rest = live.flush()
    assert [d.frame_index for d in rest] == [T - 3, T - 2, T - 1] and live.flush() == []


def test_live_reconstruction_correlates_with_truth() -> None:
    rng = np.random.default_rng(7)
    enc = LNPEncoder(400, window=8, shape=SHAPE)
    T = 60
    truth = _movie(T, rng)
    resp = rng.poisson(enc.forward(truth)).astype(np.float32)
    out, _ = _run_live(enc, resp, LiveSettings(lag_frames=5, fixed_steps=6,
                                               optim=OptimSettings(learning_rate_px=200.0)))
    assert video_correlation(truth[: T - 5], out[: T - 5], skip_frames=10) > 0.5


def test_live_jump_ahead_counts_skipped_frames() -> None:
    rng = np.random.default_rng(8)
    enc = LNPEncoder(50, window=8, shape=SHAPE)
    live = LiveReconstructor([enc], np.ones(SHAPE, bool), LiveSettings(lag_frames=2, fixed_steps=1))
    resp = rng.poisson(1.0, size=(40, 50)).astype(np.float32)
    emitted = []
    for t in range(10):
        emitted += [d.frame_index for d in live(ActivityFrame(t, t, 0, values=resp[t]))]
    # the service skipped to frame 20: frames 10..19 never got a step
    recent = resp[13:21]
    emitted += [d.frame_index for d in live(ActivityFrame(20, 20, 0, values=resp[20]), recent)]
    # 0..7 by lag; 8, 9 as they leave the window; 10..12 never fit the new window (13..20)
    assert emitted == list(range(0, 10)) + list(range(13, 19))
    # skipped: 10..12 (not decoded) and 13..17 (emitted at once, never stepped: only 18..20 are
    # within the lag of frame 20)
    assert live.skipped == 8
    with pytest.raises(StageError, match="not after"):
        live(ActivityFrame(20, 20, 0, values=resp[20]))
    with pytest.raises(ShapeMismatchError):
        live(ActivityFrame(21, 21, 0, values=resp[21, :10]))


def test_live_budget_mode_uses_clock_and_limits_members() -> None:
    now = [0]

    def clock() -> int:
        now[0] += 1_000_000        # every clock read advances 1 ms
        return now[0]

    encs = [LNPEncoder(20, window=8, shape=SHAPE, seed=s) for s in range(4)]
    live = LiveReconstructor(encs, np.ones(SHAPE, bool),
                             LiveSettings(lag_frames=2, budget_ms=6.0, steps_per_member=1), clock_ns=clock)
    live.warmup(3)
    assert 1 <= live.n_members_active <= 4
    live(ActivityFrame(0, 0, 0, values=np.ones(20, np.float32)))
    assert live.steps_total >= 1
    # a generous budget: each member takes exactly steps_per_member steps, no more
    roomy = LiveReconstructor(encs, np.ones(SHAPE, bool),
                              LiveSettings(lag_frames=2, budget_ms=1000.0, steps_per_member=3), clock_ns=clock)
    roomy.warmup(2)
    assert roomy.n_members_active == 4
    roomy(ActivityFrame(0, 0, 0, values=np.ones(20, np.float32)))
    assert roomy.steps_total == 3 * 4


def test_live_settings_validation() -> None:
    with pytest.raises(ConfigError, match="warm_start"):
        LiveSettings(warm_start="magic")
    enc = LNPEncoder(5, window=8, shape=SHAPE)
    with pytest.raises(ConfigError, match="lag_frames"):
        LiveReconstructor([enc], np.ones(SHAPE, bool), LiveSettings(lag_frames=8))


def test_report_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from rt_decoder.recon.report import (side_by_side_frames, write_latency_histogram, write_side_by_side,
                                         write_summary_figure)

    rng = np.random.default_rng(9)
    true = _movie(40, rng)
    rec = true[::-1].copy()
    frames = side_by_side_frames(true, rec, scale=2)
    assert frames.shape == (40, 24, 2 * (32 + 2)) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[5, ::2, :32:2], np.clip(true[5], 0, 255).astype(np.uint8))
    gif = write_side_by_side(tmp_path / "v.gif", true, rec)
    import imageio.v3 as iio

    back = iio.imread(gif)
    assert back.shape[0] == 40
    png = write_summary_figure(tmp_path / "s.png", true, rec, {"video_corr": 0.5})
    assert png.stat().st_size > 1000
    hist = write_latency_histogram(tmp_path / "h.png", {"e2e": rng.gamma(2.0, 1.0, 500)})
    assert hist.read_bytes()[:4] == b"\x89PNG"


def test_live_temporal_blur_uses_the_neighbouring_frames() -> None:
    rng = np.random.default_rng(10)
    enc = LNPEncoder(40, window=8, shape=SHAPE)
    lag = 2
    live = LiveReconstructor([enc], np.ones(SHAPE, bool),
                             LiveSettings(lag_frames=lag, fixed_steps=2, blur_sigma_px=0.0, blur_sigma_frames=1.0,
                                          optim=OptimSettings(learning_rate_px=300.0)))
    resp = rng.poisson(1.0, size=(12, 40)).astype(np.float32)
    for t in range(12):
        out = live(ActivityFrame(t, t, 0, values=resp[t]))
    v = live._members[0].video
    s = live.window - 1 - lag
    w1 = np.exp(-0.5)
    expect = (w1 * v[s - 1] + v[s] + w1 * v[s + 1]) / (1 + 2 * w1)
    assert [d.frame_index for d in out] == [11 - lag]
    np.testing.assert_allclose(out[0].image, expect, rtol=1e-5)
    assert not np.allclose(out[0].image, v[s])


def test_target_ramp_reaches_the_encoder_as_frame_weights() -> None:
    enc = LNPEncoder(5, window=8, shape=SHAPE)
    seen: list[np.ndarray] = []
    plain = enc.loss_and_grad

    def spy(*args: np.ndarray, frame_weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        assert frame_weights is not None
        seen.append(np.array(frame_weights))
        return plain(*args, frame_weights=frame_weights)

    enc.loss_and_grad = spy  # type: ignore[method-assign]
    live = LiveReconstructor([enc], np.ones(SHAPE, bool), LiveSettings(lag_frames=2, fixed_steps=1,
                                                                       target_ramp_frames=3))
    resp = np.ones((10, 5), np.float32)
    live(ActivityFrame(0, 0, 0, values=resp[0]))
    np.testing.assert_allclose(seen[-1], [0, 0, 0, 0, 0, 0, 0, 1 / 3], rtol=1e-6)   # empty slots weigh 0
    for t in range(1, 10):
        live(ActivityFrame(t, t, 0, values=resp[t]))
    np.testing.assert_allclose(seen[-1], [1, 1, 1, 1, 1, 1, 2 / 3, 1 / 3], rtol=1e-6)


def test_cached_context_needs_live_encoders() -> None:
    enc = LNPEncoder(5, window=8, shape=SHAPE)   # has no live graph (not a LiveEncoder)
    with pytest.raises(ConfigError, match=r"LiveEncoder.*member 0 \(LNPEncoder\)"):
        LiveReconstructor([enc], np.ones(SHAPE, bool), LiveSettings(lag_frames=2), cached_context=True)


def test_warm_start_decay_pulls_the_new_frame_towards_grey() -> None:
    enc = LNPEncoder(20, window=8, shape=SHAPE)
    resp = np.random.default_rng(11).poisson(1.0, size=(6, 20)).astype(np.float32)
    live = LiveReconstructor([enc], np.ones(SHAPE, bool), LiveSettings(lag_frames=2, fixed_steps=2,
                                                                       warm_start_decay=0.5))
    for t in range(5):
        live(ActivityFrame(t, t, 0, values=resp[t]))
    prev = live._members[0].video[-1].copy()
    st0 = LiveReconstructor([enc], np.ones(SHAPE, bool), LiveSettings(lag_frames=2, fixed_steps=0, budget_ms=1e-3,
                                                                      warm_start_decay=0.5))
    st0._members[0].video[-1] = prev
    st0.newest = 4
    st0._frame_index[-1] = 4
    st0._shift(1, warm_value=[prev])
    np.testing.assert_allclose(st0._members[0].video[-1], 127.5 + 0.5 * (prev - 127.5), rtol=1e-6)
    with pytest.raises(ConfigError, match="warm_start_decay"):
        LiveSettings(warm_start_decay=1.5)
