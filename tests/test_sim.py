"""The virtual rig: determinism, shapes, value ranges, calibration and model behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from rt_decoder.errors import ConfigError, ShapeMismatchError
from rt_decoder.messages import BEHAVIOUR_FIELDS, STIMULUS_SHAPE, SessionInfo
from rt_decoder.sim import INDICATORS, RigConfig, Trial, VirtualRig
from rt_decoder.sim.behaviour import PUPIL_MEAN, make_behaviour
from rt_decoder.sim.calibration import measure_calibration, per_neuron_correlation
from rt_decoder.sim.imaging import sample_spikes
from rt_decoder.sim.movies import make_movie, photographs, pink_noise_clip
from rt_decoder.sim.population import DEG_PER_PX, shift_frames

H, W = STIMULUS_SHAPE


@pytest.fixture(scope="module")
def small_rig() -> VirtualRig:
    return VirtualRig(RigConfig(n_neurons=60, seed=3, trial_frames=90))


def _neutral_behaviour(t: int) -> np.ndarray:
    b = np.zeros((t, 4), np.float32)
    b[:, 0] = PUPIL_MEAN
    return b


# ------------------------------------------------------------------ config
def test_config_defaults_match_the_interface() -> None:
    c = RigConfig()
    assert (c.n_neurons, c.seed, c.indicator, c.frame_rate_hz, c.trial_frames, c.n_trials) == (
        8000, 0, "GCaMP6s", 30.0, 300, 20)


@pytest.mark.parametrize("bad", [{"n_neurons": 0}, {"n_neurons": 100_001}, {"n_neurons": True},
                                 {"n_neurons": 10.0}, {"indicator": "GCaMP3"}, {"frame_rate_hz": float("nan")},
                                 {"spike_dispersion": -0.1}, {"seed": -1}])
def test_config_rejects_bad_values(bad: dict) -> None:
    name = next(iter(bad))
    with pytest.raises(ConfigError, match=name):
        RigConfig(**bad)


def test_config_from_dict_rejects_unknown_keys_by_name() -> None:
    assert RigConfig.from_dict({"n_neurons": 5}).n_neurons == 5
    with pytest.raises(ConfigError, match="'n_neuron'"):
        RigConfig.from_dict({"n_neuron": 5})
    assert RigConfig.from_dict(RigConfig(seed=4).to_dict()) == RigConfig(seed=4)


# ------------------------------------------------------------------ determinism, shapes, ranges
def _assert_trials_equal(a: Trial, b: Trial) -> None:
    for name in ("video", "behaviour", "rates", "spikes", "calcium", "fluorescence"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_same_seed_gives_identical_trials_in_any_order(small_rig: VirtualRig) -> None:
    other = VirtualRig(small_rig.config)
    t1_first = other.trial(1)
    _assert_trials_equal(small_rig.trial(0), other.trial(0))
    _assert_trials_equal(small_rig.trial(1), t1_first)


def test_different_seed_or_trial_gives_different_data(small_rig: VirtualRig) -> None:
    a = small_rig.trial(0)
    b = small_rig.trial(1)
    c = VirtualRig(small_rig.config.replace(seed=4)).trial(0)
    for other in (b, c):
        assert not np.array_equal(a.video, other.video)
        assert not np.array_equal(a.fluorescence, other.fluorescence)
    assert not np.array_equal(small_rig.neuron_params, VirtualRig(small_rig.config.replace(seed=4)).neuron_params)


def test_trial_shapes_dtypes_and_ranges(small_rig: VirtualRig) -> None:
    tr = small_rig.trial(2)
    t, n = 90, 60
    assert tr.trial_id == 2 and tr.n_frames == t
    assert tr.video.shape == (t, H, W)
    assert tr.behaviour.shape == (t, len(BEHAVIOUR_FIELDS))
    for name in ("rates", "spikes", "calcium", "fluorescence"):
        arr = getattr(tr, name)
        assert arr.shape == (t, n), name
        assert arr.dtype == np.float32, name
        assert np.isfinite(arr).all(), name
    assert tr.video.dtype == np.float32 and tr.behaviour.dtype == np.float32
    assert tr.video.min() >= 0.0 and tr.video.max() <= 255.0 and tr.video.std() > 5.0
    assert (tr.rates >= 0).all() and tr.rates.max() > tr.rates.min()
    assert (tr.spikes >= 0).all() and np.array_equal(tr.spikes, np.round(tr.spikes))
    assert (tr.calcium >= 0).all()
    assert (tr.fluorescence > 0).all()
    assert (tr.behaviour[:, 1] >= 0).all() and (tr.behaviour[:, 0] > 0).all()


def test_rig_geometry_and_session_info(small_rig: VirtualRig) -> None:
    assert small_rig.n_neurons == 60
    assert small_rig.roi_ids.dtype == np.int64 and np.array_equal(small_rig.roi_ids, np.arange(60))
    assert small_rig.roi_centres_px.shape == (60, 2) and small_rig.roi_centres_px.dtype == np.float32
    assert small_rig.cell_motor_coordinates_um.shape == (60, 3)
    info = small_rig.session_info("s1")
    assert isinstance(info, SessionInfo)
    assert info.source == "virtual-rig" and info.n_rois == 60 and info.frame_rate_hz == 30.0
    assert info.stimulus_shape == STIMULUS_SHAPE and not info.is_activity


def test_rf_centres_are_inside_the_screen_and_cover_part_of_it() -> None:
    rig = VirtualRig(RigConfig(n_neurons=5000, seed=1))
    p = rig.neuron_params
    assert p["y_px"].min() >= 0 and p["y_px"].max() <= H - 1
    assert p["x_px"].min() >= 0 and p["x_px"].max() <= W - 1
    occupied = np.zeros(STIMULUS_SHAPE, bool)
    occupied[np.rint(p["y_px"]).astype(int), np.rint(p["x_px"]).astype(int)] = True
    assert 0.35 <= occupied.mean() <= 0.8  # a field of view sees part of the screen, not all of it
    assert 2.0 <= p["sigma_px"].min() and p["sigma_px"].max() <= 5.0
    assert 0.05 <= p["sf_cyc_per_px"].min() and p["sf_cyc_per_px"].max() <= 0.12
    assert 0.3 < p["is_complex"].mean() < 0.5


# ------------------------------------------------------------------ calibration
def test_calibration_single_trial_ceiling_is_in_the_v1_range() -> None:
    rig = VirtualRig(RigConfig(n_neurons=300, seed=0))
    report = measure_calibration(rig, [0, 1, 2, 3])
    assert 0.3 <= report.ceiling_mean <= 0.5, report
    assert 1.0 <= report.mean_rate_hz <= 15.0, report
    assert report.n_constant_neurons == 0


def test_per_neuron_correlation_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 4))
    b = a + rng.normal(size=(50, 4))
    b[:, 3] = 1.0
    c = per_neuron_correlation(a, b)
    for j in range(3):
        assert c[j] == pytest.approx(np.corrcoef(a[:, j], b[:, j])[0, 1], abs=1e-12)
    assert np.isnan(c[3])


# ------------------------------------------------------------------ response model
def _drifting_grating(p: np.void, t: int, tf_hz: float = 2.0, fps: float = 30.0) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    xr = (xx - p["x_px"]) * np.cos(p["orientation_rad"]) + (yy - p["y_px"]) * np.sin(p["orientation_rad"])
    phase = 2 * np.pi * tf_hz * np.arange(t) / fps
    g = np.cos(2 * np.pi * p["sf_cyc_per_px"] * xr[None] + phase[:, None, None])
    return (127.5 + 127.0 * g).astype(np.float32)


def test_simple_cells_modulate_with_grating_phase_complex_cells_do_not() -> None:
    rig = VirtualRig(RigConfig(n_neurons=40, seed=5, complex_fraction=0.5))
    t = 90
    ratio = np.empty(rig.n_neurons)
    for n, p in enumerate(rig.neuron_params):
        r = rig.expected_rates(_drifting_grating(p, t), _neutral_behaviour(t))[30:, n]  # 4 cycles at 2 Hz
        spec = np.abs(np.fft.rfft(r - 0.0))
        ratio[n] = spec[4] * 2 / max(spec[0], 1e-9)  # F1/F0
    cx = rig.neuron_params["is_complex"].astype(bool)
    assert cx.sum() >= 10 and (~cx).sum() >= 10
    assert np.median(ratio[~cx]) > 1.0          # simple: response follows the phase
    assert np.median(ratio[cx]) < 0.3           # complex: phase invariant
    assert np.mean(ratio[~cx] > ratio[cx].max()) > 0.7


def test_pupil_position_shifts_receptive_fields_like_moving_the_image(small_rig: VirtualRig) -> None:
    video, _ = small_rig.stimulus(0)
    video = video[:40]
    beh = _neutral_behaviour(40)
    shifted = video.copy()
    shifted[:, :, :-1] = video[:, :, 1:]  # image content moves 1 px to the left, edges clamped
    beh_eye = beh.copy()
    beh_eye[:, 2] = DEG_PER_PX  # eye rotated 1 px to the right
    r_eye = small_rig.expected_rates(video, beh_eye)
    np.testing.assert_allclose(r_eye, small_rig.expected_rates(shifted, beh), rtol=1e-4, atol=1e-6)
    assert np.abs(r_eye - small_rig.expected_rates(video, beh)).max() > 1e-3


def test_shift_frames_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(1)
    frames = rng.random((3, 6, 7)).astype(np.float32)
    dy, dx = np.array([0.3, -1.7, 2.0]), np.array([1.25, 0.0, -0.6])
    out = shift_frames(frames, dy, dx)
    for t in range(3):
        for y in range(6):
            for x in range(7):
                yy = min(max(y + dy[t], 0), 5)
                xx = min(max(x + dx[t], 0), 6)
                y0, x0 = min(int(yy), 4), min(int(xx), 5)
                fy, fx = yy - y0, xx - x0
                f = frames[t]
                ref = ((1 - fy) * ((1 - fx) * f[y0, x0] + fx * f[y0, x0 + 1])
                       + fy * ((1 - fx) * f[y0 + 1, x0] + fx * f[y0 + 1, x0 + 1]))
                assert out[t, y, x] == pytest.approx(ref, abs=1e-5)


def test_running_raises_the_gain_of_running_modulated_cells(small_rig: VirtualRig) -> None:
    video, _ = small_rig.stimulus(1)
    beh = _neutral_behaviour(video.shape[0])
    run = beh.copy()
    run[:, 1] = 25.0
    r0 = small_rig.expected_rates(video, beh).mean(axis=0)
    r1 = small_rig.expected_rates(video, run).mean(axis=0)
    g = small_rig.neuron_params["running_gain"]
    assert (r1[g > 0.05] > r0[g > 0.05]).all() and (r1[g < -0.05] < r0[g < -0.05]).all()


def test_expected_rates_rejects_wrong_shapes(small_rig: VirtualRig) -> None:
    with pytest.raises(ShapeMismatchError, match="video"):
        small_rig.expected_rates(np.zeros((5, 36, 60), np.float32), _neutral_behaviour(5))
    with pytest.raises(ShapeMismatchError, match="behaviour"):
        small_rig.expected_rates(np.zeros((5, 36, 64), np.float32), _neutral_behaviour(4))


# ------------------------------------------------------------------ imaging
def test_spike_counts_follow_the_gamma_poisson_moments() -> None:
    rng = np.random.default_rng(0)
    rates = np.full((200_000, 2), [0.2, 1.5], np.float32)
    for d in (0.0, 0.5):
        s = sample_spikes(rates, d, rng)
        mean, var = s.mean(axis=0), s.var(axis=0)
        np.testing.assert_allclose(mean, [0.2, 1.5], rtol=0.02)
        np.testing.assert_allclose(var, [0.2 + d * 0.04, 1.5 + d * 2.25], rtol=0.05)


@pytest.mark.parametrize("indicator", sorted(INDICATORS))
def test_single_spike_peaks_at_dff_per_spike(indicator: str) -> None:
    rig = VirtualRig(RigConfig(n_neurons=5, indicator=indicator))
    spikes = np.zeros((200, 5), np.float32)
    spikes[10] = 1.0
    state = rig.imaging.initial_state(np.zeros(5, np.float32), np.random.default_rng(0))
    dff = rig.imaging.expected_dff(spikes, state)
    np.testing.assert_allclose(dff.max(axis=0), rig.neuron_params["dff_per_spike"], rtol=1e-5)
    assert (dff[:10] == 0).all()


def test_gcamp8m_decays_faster_than_gcamp6s() -> None:
    half = {}
    for ind in ("GCaMP6s", "GCaMP8m"):
        rig = VirtualRig(RigConfig(n_neurons=20, indicator=ind))
        spikes = np.zeros((300, 20), np.float32)
        spikes[0] = 1.0
        state = rig.imaging.initial_state(np.zeros(20, np.float32), np.random.default_rng(0))
        dff = rig.imaging.expected_dff(spikes, state)
        peak_t = dff.argmax(axis=0)
        below = dff < 0.5 * dff.max(axis=0)
        half[ind] = np.median([np.argmax(below[peak_t[n]:, n]) for n in range(20)]) / 30.0
    assert 0.6 <= half["GCaMP6s"] <= 1.3      # decay tau ~1.25 s -> half decay ~0.85 s
    assert 0.1 <= half["GCaMP8m"] <= 0.3      # decay tau ~0.25 s -> ~0.17 s
    assert half["GCaMP6s"] > 3 * half["GCaMP8m"]


def test_noise_at_baseline_matches_the_snr_definition() -> None:
    cfg = RigConfig(n_neurons=50, drift_fraction=0.0, neuropil_coefficient=0.0, snr_median=2.0)
    rig = VirtualRig(cfg)
    state = rig.imaging.initial_state(np.zeros(50, np.float32), np.random.default_rng(0))
    _, f = rig.imaging.run(np.zeros((4000, 50), np.float32), state, np.random.default_rng(1))
    p = rig.neuron_params
    noise_sd = p["dff_per_spike"] * p["f0"] / p["snr"]
    np.testing.assert_allclose(f.std(axis=0), noise_sd, rtol=0.06)
    assert (np.abs(f.mean(axis=0) - p["f0"]) < 5 * noise_sd / np.sqrt(4000)).all()
    assert p["snr"].std() > 0  # per-neuron SNR spread


# ------------------------------------------------------------------ streaming
def test_stream_is_a_continuous_session(small_rig: VirtualRig) -> None:
    rows = list(small_rig.stream([4, 2]))
    assert [r[0] for r in rows] == list(range(180))
    idx, stim, fluo, beh = rows[0]
    assert stim.shape == STIMULUS_SHAPE and fluo.shape == (60,) and beh.shape == (4,)
    assert fluo.dtype == np.float32 and beh.dtype == np.float32
    t4, t2 = small_rig.trial(4), small_rig.trial(2)
    f = np.stack([r[2] for r in rows])
    np.testing.assert_array_equal(f[:90], t4.fluorescence)     # first trial == standalone trial
    np.testing.assert_array_equal(np.stack([r[1] for r in rows[90:]]), t2.video)
    np.testing.assert_array_equal(np.stack([r[3] for r in rows[90:]]), t2.behaviour)
    assert not np.array_equal(f[90:], t2.fluorescence)         # calcium/drift state carried over
    # continuity: the jump across the boundary is no larger than typical frame-to-frame changes
    step = np.abs(np.diff(f, axis=0)).mean(axis=1)
    assert step[89] < 5 * np.median(step)


def test_stream_trials_blocks_are_the_same_session(small_rig: VirtualRig) -> None:
    rows = list(small_rig.stream([1, 0, 3]))
    blocks = list(small_rig.stream_trials([1, 0, 3]))
    assert [b.trial_id for b in blocks] == [1, 0, 3]
    assert [b.first_frame_index for b in blocks] == [0, 90, 180]
    np.testing.assert_array_equal(np.concatenate([b.fluorescence for b in blocks]), np.stack([r[2] for r in rows]))
    np.testing.assert_array_equal(np.concatenate([b.behaviour for b in blocks]), np.stack([r[3] for r in rows]))


# ------------------------------------------------------------------ movies and behaviour
def test_photographs_are_available_offline() -> None:
    photos = photographs()
    assert len(photos) >= 8
    assert all(p.ndim == 2 and min(p.shape) >= 300 and p.dtype == np.float32 for p in photos)


def test_movies_are_deterministic_and_in_range() -> None:
    a = make_movie(120, 30.0, np.random.default_rng(7))
    b = make_movie(120, 30.0, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (120, H, W) and a.min() >= 0 and a.max() <= 255
    assert np.abs(np.diff(a, axis=0)).mean() > 0.1  # it moves


def test_pink_noise_has_a_falling_spatial_spectrum() -> None:
    clip = pink_noise_clip(64, np.random.default_rng(0))
    power = (np.abs(np.fft.fft2(clip)) ** 2).mean(axis=0)
    fy = np.fft.fftfreq(H)[:, None]
    fx = np.fft.fftfreq(W)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    low = power[(f > 0.03) & (f < 0.08)].mean()
    high = power[(f > 0.3) & (f < 0.5)].mean()
    assert low > 20 * high


def test_behaviour_has_running_bouts_and_a_pupil_that_follows_running() -> None:
    b = make_behaviour(30 * 600, 30.0, np.random.default_rng(2))
    speed, pupil = b[:, 1], b[:, 0]
    running = speed > 2.0
    assert 0.15 < running.mean() < 0.7
    assert np.count_nonzero(np.diff(running.astype(int)) == 1) >= 10  # many bouts
    assert np.corrcoef(speed, pupil)[0, 1] > 0.3
    assert 0.3 < b[:, 2].std() < 5.0 and 0.3 < b[:, 3].std() < 5.0  # pupil centre moves a few degrees


# ----------------------------------------------------------------------------- issue 14: indicator presets
def test_indicator_presets_cover_the_deconvolution_presets() -> None:
    from rt_decoder.deconv.settings import INDICATOR_KINETICS
    from rt_decoder.sim import IndicatorPreset

    assert {k.lower() for k in INDICATORS} == set(INDICATOR_KINETICS)
    for name, preset in INDICATORS.items():
        k = INDICATOR_KINETICS[name.lower()]
        assert (preset.tau_rise_s, preset.tau_decay_s) == (k.tau_rise_s, k.tau_decay_s)
    # the default rig's numbers (and GCaMP8m's) stay those the shipped model was trained on
    assert INDICATORS["GCaMP6s"] == IndicatorPreset("GCaMP6s", 0.065, 1.25, 0.20, 0.0)
    assert INDICATORS["GCaMP8m"] == IndicatorPreset("GCaMP8m", 0.012, 0.25, 0.30, 0.0)
    assert RigConfig().indicator == "GCaMP6s"


def test_saturating_indicator_is_sublinear_and_linear_ones_are_untouched() -> None:
    spikes = np.zeros((120, 4), np.float32)
    spikes[10] = [1.0, 5.0, 10.0, 20.0]
    peaks = {}
    for ind in ("GCaMP6s", "GCaMP8f"):
        rig = VirtualRig(RigConfig(n_neurons=4, indicator=ind))
        state = rig.imaging.initial_state(np.zeros(4, np.float32), np.random.default_rng(0))
        dff = rig.imaging.expected_dff(spikes, state)
        peaks[ind] = dff.max(axis=0) / rig.neuron_params["dff_per_spike"]
        if ind == "GCaMP6s":  # linear: exactly the AR(2) recursion times the per-neuron scale
            c = np.zeros(4, np.float32)
            c1 = np.zeros(4, np.float32)
            ref = np.empty_like(dff)
            for t in range(120):
                c, c1 = rig.imaging.phi1 * c + rig.imaging.phi2 * c1 + spikes[t], c
                ref[t] = c * rig.imaging.dff_scale
            np.testing.assert_array_equal(dff, ref)
    np.testing.assert_allclose(peaks["GCaMP6s"], [1, 5, 10, 20], rtol=1e-5)
    n = INDICATORS["GCaMP8f"].saturation_spikes
    np.testing.assert_allclose(peaks["GCaMP8f"], [x * (1 + 1 / n) / (1 + x / n) for x in (1, 5, 10, 20)], rtol=1e-5)


def test_ground_truth_session_is_the_streamed_session() -> None:
    rig = VirtualRig(RigConfig(n_neurons=30, seed=3, trial_frames=40, indicator="GCaMP7f"))
    gt = rig.ground_truth_session([2, 0])
    blocks = list(rig.stream_trials([2, 0]))
    np.testing.assert_array_equal(gt.fluorescence, np.concatenate([b.fluorescence for b in blocks]))
    np.testing.assert_array_equal(gt.spikes, np.concatenate([rig.trial(2).spikes, rig.trial(0).spikes]))
    assert gt.calcium.shape == gt.spikes.shape == (80, 30) and gt.trial_ids == (2, 0)
