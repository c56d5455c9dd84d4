"""Tests of the online deconvolution stage (rt_decoder.deconv).

Tolerances: outputs are float32; against float64 solvers (oasis-deconv, the Python
reference) on inputs exactly representable in float32 they agree to 1e-6 absolute
(values are O(1)). Chunked feeding, gaps-as-NaN and the numba kernels are deterministic,
so those comparisons are exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from rt_decoder.deconv import DeconvSettings, OnlineDeconvolver, RoiParameters, deconvolve_array, estimate_parameters
from rt_decoder.deconv._estimate import gaussian_quantile_offset
from rt_decoder.deconv._reference import ReferenceRoi, reference_run
from rt_decoder.errors import ConfigError, ShapeMismatchError, StageError
from rt_decoder.messages import FluorescenceFrame

FS = 30.0


def ar_trace(rng: np.random.Generator, T: int, N: int, g1: float, g2: float = 0.0, noise: float = 0.3,
             rate: float = 0.05) -> np.ndarray:
    """Calcium of an AR(p) model plus Gaussian noise, float32-representable float64 (T, N)."""
    s = rng.poisson(rate, (T, N)).astype(float)
    c = np.zeros((T, N))
    for t in range(T):
        c[t] = s[t] + (g1 * c[t - 1] if t else 0) + (g2 * c[t - 2] if t > 1 else 0)
    return (c + noise * rng.standard_normal((T, N))).astype(np.float32).astype(np.float64)


def fixed_params(N: int, g1: float, g2: float, pen: float) -> RoiParameters:
    return RoiParameters(g1=np.full(N, g1), g2=np.full(N, g2), baseline_f=np.zeros(N), sigma_f=np.ones(N),
                         sigma_y=np.full(N, pen))


def raw_settings(model: str, T: int, **kw: object) -> DeconvSettings:
    """No baseline, no normalisation, unbounded pools and history: the plain OASIS problem."""
    base = dict(model=model, normalise="none", baseline="fixed", lag_frames=0, history_frames=T + 1,
                revise_frames=T, max_pools=T + 1, penalty_sigmas=1.0)
    base.update(kw)
    return DeconvSettings(**base)  # type: ignore[arg-type]


def final_solution(stage: OnlineDeconvolver) -> np.ndarray:
    return stage.recent(stage.frames_seen).astype(np.float64)


# ----------------------------------------------------------------------------- vs oasis-deconv
@pytest.mark.parametrize("s_min,lam", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.4)])
def test_ar1_final_solution_equals_oasisAR1(s_min: float, lam: float) -> None:
    from oasis.oasis_methods import oasisAR1

    rng = np.random.default_rng(1)
    T, N, g = 400, 4, 0.95
    Y = ar_trace(rng, T, N, g)
    Y[50:53, 1] = np.nan  # missing samples for one ROI (oasisAR1 handles NaN the same way)
    Y[200, 2] = np.nan
    pen = lam if lam else s_min
    s = raw_settings("ar1", T, penalty="l1" if lam else "s_min")
    stage = OnlineDeconvolver(s, N, FS, parameters=fixed_params(N, g, 0.0, pen))
    stage.process(Y)
    fin = final_solution(stage)
    for n in range(N):
        y = Y[:, n].copy()
        y[-1] += lam * g  # oasisAR1 treats the last sample as the end of the trace: undo that
        _, s_ref = oasisAR1(y, g, lam=lam, s_min=s_min)
        ok = np.isfinite(y)
        np.testing.assert_allclose(fin[ok, n], s_ref[ok], rtol=0, atol=1e-6)
        assert np.all(fin[~ok, n] == 0.0)
        assert np.count_nonzero(s_ref[ok] > 1e-3) > 5  # the comparison is not vacuous


@pytest.mark.parametrize("s_min,lam", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.3)])
def test_ar2_final_solution_equals_oasisAR2(s_min: float, lam: float) -> None:
    from oasis.oasis_methods import oasisAR2

    rng = np.random.default_rng(2)
    T, N = 400, 3
    d, r = 0.95, 0.6
    g1, g2 = d + r, -d * r
    Y = ar_trace(rng, T, N, g1, g2, noise=0.2)
    pen = lam if lam else s_min
    s = raw_settings("ar2", T, penalty="l1" if lam else "s_min")
    stage = OnlineDeconvolver(s, N, FS, parameters=fixed_params(N, g1, g2, pen))
    stage.process(Y)
    fin = final_solution(stage)
    for n in range(N):
        y = Y[:, n].copy()
        y[-2] += lam * g2  # undo oasisAR2's end-of-trace penalty
        y[-1] += lam * (g1 + g2)
        _, s_ref = oasisAR2(y, g1, g2, lam=lam, s_min=s_min)
        np.testing.assert_allclose(fin[:, n], s_ref, rtol=0, atol=1e-6)
        assert np.count_nonzero(s_ref > 1e-3) > 5


# ----------------------------------------------------------------------------- vs the reference
def reference_rois(stage: OnlineDeconvolver) -> list[ReferenceRoi]:
    p, s = stage.parameters, stage.settings
    assert p is not None
    z = gaussian_quantile_offset(s.baseline_quantile)
    tracked = s.baseline == "tracked"
    rois = []
    for n in range(stage.n_rois):
        g2 = float(p.g2[n]) if s.model != "ar1" else 0.0
        pen = s.penalty_sigmas * float(p.sigma_y[n])
        rois.append(ReferenceRoi(
            g1=float(p.g1[n]), g2=g2, s_min=pen if s.penalty == "s_min" else 0.0,
            shift=pen * (1 - float(p.g1[n]) - g2) if s.penalty == "l1" else 0.0,
            baseline=float(p.baseline_f[n]) - (z * float(p.sigma_f[n]) if tracked else 0.0),
            step=s.baseline_rate_sigmas_per_s * float(p.sigma_f[n]) / FS, q=s.baseline_quantile,
            zoff=z * float(p.sigma_f[n]) if tracked else 0.0, sigma_f=float(p.sigma_f[n]),
            dff=s.normalise == "dff", track=tracked, ar2=g2 != 0.0))
    return rois


def raw_fluorescence(rng: np.random.Generator, T: int, N: int, model: str) -> np.ndarray:
    if model == "auto":  # every other ROI AR(1), the others AR(2)
        F = raw_fluorescence(rng, T, N, "ar2")
        F[:, ::2] = raw_fluorescence(rng, T, N, "ar1")[:, ::2]
        return F
    d, r = 0.94, 0.5
    g1, g2 = (d, 0.0) if model == "ar1" else (d + r, -d * r)
    c = ar_trace(rng, T, N, g1, g2, noise=0.0, rate=0.06)
    drift = np.linspace(0, 5, T)[:, None]
    F = 100 + drift + 15 * c + 3 * rng.standard_normal((T, N))
    return F.astype(np.float32)


@pytest.mark.parametrize("model,penalty", [("ar1", "s_min"), ("ar1", "l1"), ("ar2", "s_min"), ("ar2", "l1")])
def test_numba_stage_equals_python_reference(model: str, penalty: str) -> None:
    rng = np.random.default_rng(3)
    T, N = 160, 3
    F = raw_fluorescence(rng, T + 40, N, model)
    F[70:74, 0] = np.nan
    F[90, 1] = np.inf
    s = DeconvSettings(model=model, penalty=penalty, penalty_sigmas=0.7, lag_frames=3, init_frames=40,
                       history_frames=T + 1, revise_frames=T, max_pools=T + 1)
    params = estimate_parameters(F[:40], FS, s)
    X = F[40:]
    stage = OnlineDeconvolver(s, N, FS, parameters=params)
    lagged = stage.process(X)
    ref_lagged, ref_final = reference_run(X.astype(np.float64), reference_rois(stage), lag_frames=3)
    np.testing.assert_allclose(lagged, ref_lagged, rtol=0, atol=1e-6)
    np.testing.assert_allclose(final_solution(stage), ref_final, rtol=0, atol=1e-6)
    assert np.count_nonzero(ref_final > 1e-3) > 10


def test_float32_stage_tracks_float64_reference() -> None:
    """Float32 input rounding (1e-7 relative on F ~ 100) changes the estimates only slightly."""
    rng = np.random.default_rng(4)
    T, N = 150, 3
    F64 = 100 + 15 * ar_trace(rng, T, N, 0.94, noise=0.0) + 3 * rng.standard_normal((T, N))
    s = DeconvSettings(model="ar1", lag_frames=2, init_frames=30, history_frames=T + 1, revise_frames=T,
                       max_pools=T + 1)
    params = estimate_parameters(F64[:30], FS, s)
    stage = OnlineDeconvolver(s, N, FS, parameters=params)
    stage.process(F64)  # float64 in: cast to float32 (the wire type)
    _, ref_final = reference_run(F64, reference_rois(stage), lag_frames=2)
    np.testing.assert_allclose(final_solution(stage), ref_final, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(deconvolve_array(F64, FS, s, parameters=params),
                                  deconvolve_array(F64.astype(np.float32), FS, s, parameters=params))


# ----------------------------------------------------------------------------- streaming = batch
def _feed_chunks(stage: OnlineDeconvolver, F: np.ndarray, rng: np.random.Generator,
                 gaps: dict[int, int]) -> np.ndarray:
    outs, k, T = [], 0, F.shape[0]
    while k < T:
        if k in gaps:
            stage.push_gap(gaps[k])
        size = int(rng.choice([1, 1, 2, 3, 7, 16, 41]))
        size = min(size, T - k, *(g - k for g in gaps if g > k))
        if size == 1 and rng.random() < 0.5:
            act = stage(FluorescenceFrame(seq=k, frame_index=k, acq_ns=0, values=F[k]))
            outs.append(act.values[None])
        else:
            outs.append(stage.process(F[k:k + size]))
        k += size
    return np.concatenate(outs)


@pytest.mark.parametrize("model", ["ar1", "ar2", "auto"])
def test_random_chunks_equal_one_shot(model: str) -> None:
    rng = np.random.default_rng(5)
    T, N = 260, 6
    F = raw_fluorescence(rng, T, N, model)
    extra = {"indicator": "gcamp6s"} if model == "auto" else {}  # auto: a mix of AR(1) and AR(2) ROIs
    s = DeconvSettings(model=model, init_frames=60, lag_frames=4, history_frames=40, max_pools=6, **extra)
    gaps = {30: 3, 150: 5}  # one inside the initial batch, one after
    one = OnlineDeconvolver(s, N, FS)
    ref_out = []
    for k0, k1 in ((0, 30), (30, 150), (150, T)):
        if k0 in gaps:
            one.push_gap(gaps[k0])
        ref_out.append(one.process(F[k0:k1]))
    ref = np.concatenate(ref_out)
    assert len(one._groups) == (2 if model == "auto" else 1)
    for seed in range(3):
        stage = OnlineDeconvolver(s, N, FS, warmup=False)
        got = _feed_chunks(stage, F, np.random.default_rng(seed), gaps)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(stage.recent(40), one.recent(40))
        assert stage.frames_seen == T + 8
    assert np.count_nonzero(ref) > 50


@pytest.mark.parametrize("model", ["ar1", "ar2", "auto"])
def test_slow_reestimation_is_chunking_invariant(model: str) -> None:
    rng = np.random.default_rng(13)
    T, N = 300, 5
    F = raw_fluorescence(rng, T, N, model)
    F[150:, :] += (6 * rng.standard_normal((T - 150, N))).astype(np.float32)  # noise x 2.2 half way
    extra = {"indicator": "gcamp7f"} if model == "auto" else {}  # auto: a mix of AR(1) and AR(2) ROIs
    s = DeconvSettings(model=model, init_frames=60, lag_frames=3, max_pools=6, reestimate_every_s=1.0, **extra)
    gaps = {100: 4, 200: 40}
    one = OnlineDeconvolver(s, N, FS)
    ref = np.concatenate([one.process(F[:100]), (one.push_gap(4), one.process(F[100:200]))[1],
                          (one.push_gap(40), one.process(F[200:]))[1]])
    assert one.parameters is not None and len(one._groups) == (2 if model == "auto" else 1)
    first = estimate_parameters(F[:60], FS, s)
    assert np.median(one.parameters.sigma_f / first.sigma_f) > 1.5  # re-estimated from recent frames
    stage = OnlineDeconvolver(s, N, FS, warmup=False)
    got = _feed_chunks(stage, F, np.random.default_rng(1), gaps)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(stage.recent(64), one.recent(64))
    assert np.all(np.isfinite(ref)) and np.count_nonzero(ref[150:]) > 30
    with pytest.raises(StageError, match="reestimate_every_s"):
        OnlineDeconvolver(DeconvSettings(), N, FS, warmup=False).reestimate()


def test_gap_equals_missing_frames_and_array_matches_live() -> None:
    rng = np.random.default_rng(6)
    T, N = 200, 4
    F = raw_fluorescence(rng, T, N, "ar1")
    s = DeconvSettings(init_frames=50, lag_frames=5)
    a = OnlineDeconvolver(s, N, FS)
    a.process(F[:120])
    a.push_gap(7)
    out_a = a.process(F[120:])
    G = np.concatenate([F[:120], np.full((7, N), np.nan, np.float32), F[120:]])
    b = OnlineDeconvolver(s, N, FS)
    out_b = b.process(G)
    np.testing.assert_array_equal(out_a, out_b[127:])
    np.testing.assert_array_equal(a.recent(64), b.recent(64))
    # deconvolve_array is the live stage, time-aligned: live row t (after the batch) = array row t - lag
    arr = deconvolve_array(G, FS, s)
    np.testing.assert_array_equal(out_b[50:], arr[45:-5])
    np.testing.assert_array_equal(arr[-5:], b.recent(5))
    assert np.all(out_b[:49] == 0) and np.count_nonzero(out_b[49:]) > 20


def test_init_batch_outputs_and_recent() -> None:
    rng = np.random.default_rng(7)
    F = raw_fluorescence(rng, 120, 5, "ar1")
    s = DeconvSettings(init_frames=60, lag_frames=2, history_frames=80)
    st = OnlineDeconvolver(s, 5, FS)
    out = st.process(F[:59])
    assert not st.ready and np.all(out == 0) and np.all(st.recent(10) == 0)
    st.process(F[59:])
    assert st.ready and st.parameters is not None
    np.testing.assert_array_equal(deconvolve_array(F, FS, s)[-2:], st.recent(2))
    # a recording shorter than init_frames: parameters from all of it
    short = DeconvSettings(init_frames=300, lag_frames=2)
    np.testing.assert_array_equal(deconvolve_array(F, FS, short),
                                  deconvolve_array(F, FS, short, parameters=estimate_parameters(F, FS, short)))
    with pytest.raises(StageError, match="30"):
        deconvolve_array(F[:20], FS)
    # with a lag as long as the history, deconvolve_array returns the current estimates
    s79 = DeconvSettings(init_frames=60, lag_frames=79, history_frames=80)
    np.testing.assert_array_equal(deconvolve_array(F, FS, s79)[-79:], st.recent(79))
    assert np.count_nonzero(st.recent(80)[:20]) > 0  # frames of the initial batch were deconvolved


# ----------------------------------------------------------------------------- robustness
def test_nan_in_one_roi_touches_no_other_roi_and_recovers() -> None:
    from oasis.oasis_methods import oasisAR1

    rng = np.random.default_rng(8)
    T, N, g = 300, 5, 0.95
    Y = ar_trace(rng, T, N, g)
    bad = Y.copy()
    bad[100:110, 2] = np.nan
    bad[150, 2] = np.inf
    bad[151, 2] = -np.inf
    s = raw_settings("ar1", T, lag_frames=3, penalty_sigmas=0.0)
    clean_st = OnlineDeconvolver(s, N, FS, parameters=fixed_params(N, g, 0.0, 0.0))
    bad_st = OnlineDeconvolver(s, N, FS, parameters=fixed_params(N, g, 0.0, 0.0))
    clean, dirty = clean_st.process(Y), bad_st.process(bad)
    others = [0, 1, 3, 4]
    np.testing.assert_array_equal(clean[:, others], dirty[:, others])
    assert np.all(np.isfinite(dirty))
    # the affected ROI's estimate is exactly that of a trace with those samples missing
    y = np.where(np.isfinite(bad[:, 2]), bad[:, 2], np.nan)
    _, s_ref = oasisAR1(y, g)
    ok = np.isfinite(y)
    np.testing.assert_allclose(final_solution(bad_st)[ok, 2], s_ref[ok], atol=1e-6, rtol=0)


def test_wrong_length_frame_raises_and_leaves_state_intact() -> None:
    rng = np.random.default_rng(9)
    F = raw_fluorescence(rng, 150, 4, "ar2")
    s = DeconvSettings(model="ar2", init_frames=50)
    a, b = OnlineDeconvolver(s, 4, FS), OnlineDeconvolver(s, 4, FS)
    a.process(F[:30])
    b.process(F[:30])
    with pytest.raises(ShapeMismatchError, match="4 ROIs"):
        a(FluorescenceFrame(seq=0, frame_index=30, acq_ns=0, values=np.zeros(5, np.float32)))
    a.process(F[30:80])
    b.process(F[30:80])
    def state(st: OnlineDeconvolver) -> list[np.ndarray]:
        return [x for g in st._groups for x in (g.par, g.st, g.ist, g.pf, g.pl, g.hist, g.frz)]

    snapshot = [x.copy() for x in state(a)]
    with pytest.raises(ShapeMismatchError):
        a.process(np.zeros((3, 3), np.float32))
    with pytest.raises(ShapeMismatchError):
        a(FluorescenceFrame(seq=0, frame_index=80, acq_ns=0, values=np.zeros((2, 4), np.float32)))
    for before, after in zip(snapshot, state(a), strict=True):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(a.process(F[80:]), b.process(F[80:]))
    assert a.frames_seen == b.frames_seen == 150
    with pytest.raises(StageError):
        a.push_gap(-1)
    with pytest.raises(StageError):
        a.recent(0)


def test_small_pool_capacity_stays_close_to_unbounded() -> None:
    rng = np.random.default_rng(10)
    T, N = 600, 8
    F = raw_fluorescence(rng, T, N, "ar1")
    small = deconvolve_array(F, FS, DeconvSettings(init_frames=100, max_pools=6, lag_frames=5))
    big = deconvolve_array(F, FS, DeconvSettings(init_frames=100, max_pools=512, lag_frames=5))
    assert np.corrcoef(small.ravel(), big.ravel())[0, 1] > 0.99
    assert np.all(np.isfinite(small)) and np.all(small >= -1e-6)


def test_activity_frame_identity_and_stamp_and_reset() -> None:
    rng = np.random.default_rng(11)
    F = raw_fluorescence(rng, 80, 3, "ar1")
    s = DeconvSettings(init_frames=40, lag_frames=1)
    st = OnlineDeconvolver(s, 3, FS)
    outs = []
    for k in range(80):
        fr = FluorescenceFrame(seq=k + 7, frame_index=k, acq_ns=123 + k, values=F[k], stamps=(("recv", 5),))
        act = st(fr)
        assert (act.seq, act.frame_index, act.acq_ns) == (k + 7, k, 123 + k)
        assert act.stamps[0] == ("recv", 5) and act.stamp("deconv") is not None
        assert act.values.dtype == np.float32 and act.values.shape == (3,)
        outs.append(act.values)
    st.reset()
    assert st.frames_seen == 0 and not st.ready
    ro = F.copy()
    ro.flags.writeable = False  # read-only input (zero-copy network buffers) is accepted
    again = st.process(ro)
    np.testing.assert_array_equal(np.stack(outs), again)


def test_parameter_estimation_on_simulated_traces() -> None:
    rng = np.random.default_rng(12)
    T, N, g = 600, 60, 0.95
    c = ar_trace(rng, T, N, g, noise=0.0, rate=0.03)
    F = (200 * (1 + 0.1 * c) + 4 * rng.standard_normal((T, N))).astype(np.float32)
    p = estimate_parameters(F, FS, DeconvSettings(init_frames=600))
    assert abs(np.median(p.sigma_f) - 4) < 0.4
    assert abs(np.median(p.g1) - g) < 0.02
    assert abs(np.median(p.baseline_f) - 200) < 4
    np.testing.assert_allclose(p.sigma_y, p.sigma_f / p.baseline_f)


def test_settings_validation() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        DeconvSettings.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="model"):
        DeconvSettings(model="ar3")
    with pytest.raises(ConfigError, match="lag_frames"):
        DeconvSettings(lag_frames=70, history_frames=64)
    with pytest.raises(ConfigError, match="tau_rise_s"):
        DeconvSettings(model="ar2", tau_rise_s=2.0)
    assert DeconvSettings.from_dict(DeconvSettings().to_dict()) == DeconvSettings()
    with pytest.raises(ConfigError, match="n_rois"):
        OnlineDeconvolver(None, 0, FS)
    with pytest.raises(ConfigError, match="ROI 1"):
        OnlineDeconvolver(DeconvSettings(), 2, FS, parameters=RoiParameters(
            g1=np.array([0.9, 1.2]), g2=np.zeros(2), baseline_f=np.ones(2), sigma_f=np.ones(2), sigma_y=np.ones(2)))


# ----------------------------------------------------------------------------- issue 14: auto, priors, readout
def test_numpy_welch_equals_scipy() -> None:
    from scipy.signal import welch

    from rt_decoder.deconv._estimate import welch_psd

    rng = np.random.default_rng(20)
    for T, nperseg in ((300, 256), (1000, 256), (57, 57), (300, 255), (40, 32)):
        y = rng.standard_normal((T, 3)) + np.linspace(0, 1, T)[:, None]
        np.testing.assert_allclose(welch_psd(y, nperseg), welch(y, axis=0, nperseg=nperseg)[1], rtol=1e-10,
                                   atol=1e-14)


def _mixed_traces(rng: np.random.Generator, T: int, N: int, tau_r_frames: float) -> np.ndarray:
    d, r = float(np.exp(-1 / 20)), float(np.exp(-1 / tau_r_frames))
    c = ar_trace(rng, T, N, d + r, -d * r, noise=0.0, rate=0.05)
    peak = max((d ** (k + 1) - r ** (k + 1)) / (d - r) for k in range(200))  # one spike peaks at dF/F 0.1
    return (100 * (1 + 0.1 * c / peak) + 1.5 * rng.standard_normal((T, N))).astype(np.float32)


def _smoothed_corr(est: np.ndarray, spikes: np.ndarray) -> float:
    from scipy.ndimage import gaussian_filter1d

    e = gaussian_filter1d(est[300:].astype(np.float64), 2, axis=0)
    s = gaussian_filter1d(spikes[300:].astype(np.float64), 2, axis=0)
    e, s = e - e.mean(0), s - s.mean(0)
    return float(np.mean((e * s).sum(0) / np.sqrt((e * e).sum(0) * (s * s).sum(0))))


@pytest.mark.parametrize("tau_r_frames", [0.2, 3.0])
def test_auto_is_as_good_as_the_better_model(tau_r_frames: float) -> None:
    """A 3-frame rise: AR(2) nearly everywhere; a 0.2-frame rise: mostly AR(1); either way the
    spike correlation of ``auto`` is within 0.005 of the better fixed model's."""
    rng = np.random.default_rng(21)
    T, N = 3000, 40
    d, r = float(np.exp(-1 / 20)), float(np.exp(-1 / tau_r_frames))
    spikes = rng.poisson(0.05, (T, N)).astype(np.float64)
    c = np.zeros((T, N))
    for t in range(T):
        c[t] = spikes[t] + (d + r) * (c[t - 1] if t else 0.0) - d * r * (c[t - 2] if t > 1 else 0.0)
    peak = max((d ** (k + 1) - r ** (k + 1)) / (d - r) for k in range(200))
    F = (100 * (1 + 0.1 * c / peak) + 1.5 * rng.standard_normal((T, N))).astype(np.float32)
    corr = {m: _smoothed_corr(deconvolve_array(F, FS, DeconvSettings(model=m)), spikes) for m in ("ar1", "ar2", "auto")}
    assert corr["auto"] >= max(corr["ar1"], corr["ar2"]) - 0.005, corr
    frac2 = np.mean(estimate_parameters(F[:300], FS, DeconvSettings()).g2 != 0)
    if tau_r_frames > 1:
        assert frac2 > 0.8 and corr["ar2"] > corr["ar1"] + 0.05
    else:
        assert frac2 < 0.5


def test_pooled_kinetics_shrink_towards_population_and_preset() -> None:
    rng = np.random.default_rng(22)
    F = (100 + 15 * ar_trace(rng, 300, 80, 0.9, noise=0.0, rate=0.05)
         + 3 * rng.standard_normal((300, 80))).astype(np.float32)
    per_roi = estimate_parameters(F, FS, DeconvSettings(model="ar1", kinetics="per_roi"))
    pooled = estimate_parameters(F, FS, DeconvSettings(model="ar1"))
    tau = lambda g: -1 / (FS * np.log(g))  # noqa: E731
    assert np.std(np.log(tau(pooled.g1))) < 0.5 * np.std(np.log(tau(per_roi.g1)))
    assert abs(np.median(pooled.g1) - 0.9) < 0.02
    # two ROIs, 60 frames: the preset dominates; generic prior: the data do
    few = F[:60, :2]
    g8f = estimate_parameters(few, FS, DeconvSettings(model="ar1", indicator="gcamp8f", init_frames=60))
    assert np.all(np.abs(np.log(tau(g8f.g1) / 0.12)) < 0.35)
    fixed = estimate_parameters(few, FS, DeconvSettings(model="auto", kinetics="fixed", indicator="gcamp6s"))
    d, r = np.exp(-1 / (1.25 * FS)), np.exp(-1 / (0.065 * FS))
    np.testing.assert_allclose(fixed.g1, d + r) and np.testing.assert_allclose(fixed.g2, -d * r)
    fixed8 = estimate_parameters(few, FS, DeconvSettings(model="auto", kinetics="fixed", indicator="gcamp8m"))
    assert np.all(fixed8.g2 == 0)  # a 12 ms rise is not resolvable at 30 Hz


def _mixed_parameters(N: int) -> RoiParameters:
    d, r = np.exp(-1 / 20), np.exp(-1 / 2.5)
    ar2 = np.arange(N) % 3 == 1
    return RoiParameters(g1=np.where(ar2, d + r, 0.93), g2=np.where(ar2, -d * r, 0.0), baseline_f=np.full(N, 100.0),
                         sigma_f=np.full(N, 3.0), sigma_y=np.full(N, 0.03))


def test_auto_stage_with_mixed_models_equals_one_stage_per_model() -> None:
    rng = np.random.default_rng(23)
    T, N = 240, 9
    F = raw_fluorescence(rng, T, N, "ar2")
    F[100:103, 4] = np.nan
    p = _mixed_parameters(N)
    s = DeconvSettings(model="auto", lag_frames=3, revise_frames=6, max_pools=6)
    mixed = OnlineDeconvolver(s, N, FS, parameters=p)
    assert list(mixed.roi_models) == ["ar1", "ar2", "ar1"] * 3
    out = np.concatenate([mixed.process(F[:120]), (mixed.push_gap(5), mixed.process(F[120:]))[1]])
    for model, cols in (("ar1", [0, 2, 3, 5, 6, 8]), ("ar2", [1, 4, 7])):
        sub = RoiParameters(**{k: getattr(p, k)[cols] for k in ("g1", "g2", "baseline_f", "sigma_f", "sigma_y")})
        one = OnlineDeconvolver(DeconvSettings(model=model, lag_frames=3, revise_frames=6, max_pools=6), len(cols),
                                FS, parameters=sub)
        ref = np.concatenate([one.process(F[:120, cols]), (one.push_gap(5), one.process(F[120:, cols]))[1]])
        np.testing.assert_array_equal(out[:, cols], ref)
        np.testing.assert_array_equal(mixed.recent(40)[:, cols], one.recent(40))
    # and fed in random chunks, frame by frame included
    st = OnlineDeconvolver(s, N, FS, parameters=p, warmup=False)
    got = _feed_chunks(st, np.concatenate([F[:120], F[120:]]), np.random.default_rng(2), {120: 5})
    np.testing.assert_array_equal(got, out)


@pytest.mark.parametrize("model", ["ar1", "ar2"])
def test_estimates_freeze_after_revise_frames(model: str) -> None:
    """recent() and long-lag readouts return each frame's estimate as read revise_frames later
    (the reference's lag-R readout); the newest R frames stay provisional."""
    rng = np.random.default_rng(24)
    T, N, R = 150, 3, 4
    X = raw_fluorescence(rng, T, N, model).astype(np.float64)
    X[60:63, 1] = np.nan
    base = dict(model=model, normalise="none", baseline="fixed", penalty_sigmas=0.0, history_frames=T + 1,
                max_pools=T + 1)
    d, r = np.exp(-1 / 80), np.exp(-1 / 2.0)  # decay slower than the data's: later frames revise earlier ones
    g1, g2 = (d, 0.0) if model == "ar1" else (d + r, -d * r)
    params = fixed_params(N, g1, g2, 0.0)
    ref_lag_r, ref_final = reference_run(X, reference_rois(OnlineDeconvolver(DeconvSettings(**base), N, FS,
                                                                                   parameters=params)), R)
    frozen = np.zeros_like(ref_lag_r)
    frozen[:T - R] = ref_lag_r[R:]  # frozen[u] = estimate of frame u read at u + R
    for lag in (1, R, 9):
        st = OnlineDeconvolver(DeconvSettings(lag_frames=lag, revise_frames=R, **base), N, FS, parameters=params)
        lagged = st.process(X)
        rec = st.recent(T).astype(np.float64)
        np.testing.assert_allclose(rec[:T - R], frozen[:T - R], rtol=0, atol=1e-6)
        np.testing.assert_allclose(rec[T - R:], ref_final[T - R:], rtol=0, atol=1e-6)
        if lag >= R:
            np.testing.assert_allclose(lagged[lag:], frozen[:T - lag], rtol=0, atol=1e-6)
    assert np.abs(frozen[:T - R] - ref_final[:T - R]).max() > 1e-3  # later revisions exist and are not used


def test_settings_validation_of_the_new_fields() -> None:
    with pytest.raises(ConfigError, match="indicator"):
        DeconvSettings(indicator="gcamp3")
    with pytest.raises(ConfigError, match="revise_frames"):
        DeconvSettings(revise_frames=64, history_frames=64)
    with pytest.raises(ConfigError, match="kinetics"):
        DeconvSettings(kinetics="median")
    assert DeconvSettings().model == "auto" and DeconvSettings(indicator="gcamp8f").prior_kinetics == (0.12, 0.007)


def test_fit_evidence_prefers_the_model_that_generated_the_data() -> None:
    """Per ROI, with each model's right kinetics: the BIC of the two OASIS fits picks the true model."""
    from rt_decoder.deconv._estimate import fit_evidence_ar2

    rng = np.random.default_rng(25)
    T, N = 300, 30
    F = np.concatenate([_mixed_traces(rng, T, N, 0.2), _mixed_traces(rng, T, N, 3.0)], axis=1).astype(np.float64)
    y = F / 100.0 - 1.0
    d = np.full(2 * N, np.exp(-1 / 20))
    ev = fit_evidence_ar2(y, FS, DeconvSettings(), d, d, np.full(2 * N, np.exp(-1 / 3.0)), np.full(2 * N, 0.015))
    assert np.mean(ev[:N] < 0) > 0.9 and np.mean(ev[N:] > 0) > 0.9
