"""The gradient preconditioner and the amortised decoder (issue: decoding quality)."""

from __future__ import annotations

import numpy as np
import pytest

from rt_decoder.errors import ConfigError, ModelError, ShapeMismatchError
from rt_decoder.recon.amortised import AmortisedDecoder, AmortisedSettings, fit_amortised, lagged
from rt_decoder.recon.optim import OptimSettings, precondition


def _hf_fraction(v: np.ndarray, cut: float = 0.25) -> float:
    v = v - v.mean(axis=(1, 2), keepdims=True)
    p = np.abs(np.fft.fft2(v)) ** 2
    f = np.sqrt(np.fft.fftfreq(v.shape[1])[:, None] ** 2 + np.fft.fftfreq(v.shape[2])[None, :] ** 2)
    return float(p[:, f > cut].sum() / p.sum())


def test_precondition_off_is_the_masked_gradient() -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((6, 8, 10)).astype(np.float32)
    mask = np.zeros((8, 10), np.float32)
    mask[2:6, 3:9] = 1
    out = precondition(g, mask, OptimSettings())
    np.testing.assert_array_equal(out, g * mask)


def test_precondition_smooths_keeps_norm_mask_and_active_frames() -> None:
    rng = np.random.default_rng(1)
    g = rng.standard_normal((10, 36, 64)).astype(np.float32)
    mask = np.zeros((36, 64), np.float32)
    mask[5:30, 10:50] = 1
    active = np.zeros(10, bool)
    active[4:8] = True
    g[~active] = 0
    s = OptimSettings(smooth_sigma_px=2.0, smooth_sigma_frames=1.0)
    out = precondition(g, mask, s, active)
    masked = g * mask
    # same L2 norm as the masked gradient, nothing outside the mask or the active frames
    assert np.linalg.norm(out) == pytest.approx(np.linalg.norm(masked), rel=1e-5)
    assert np.all(out[:, mask == 0] == 0)
    assert np.all(out[~active] == 0)
    # white noise in, smooth out: the high-frequency share drops by far
    assert _hf_fraction(out[active]) < 0.1 * _hf_fraction(masked[active])


def test_precondition_settings_bounds() -> None:
    with pytest.raises(ConfigError, match="smooth_sigma_px"):
        OptimSettings(smooth_sigma_px=-1.0)
    with pytest.raises(ConfigError, match="smooth_sigma_frames"):
        OptimSettings(smooth_sigma_frames=100.0)


def test_lagged_shifts_and_pads_with_zeros() -> None:
    z = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = lagged(z, 3)
    np.testing.assert_array_equal(out[0, 0], z[0])
    np.testing.assert_array_equal(out[0, 2], z[2])
    np.testing.assert_array_equal(out[3, 1], 0)
    np.testing.assert_array_equal(out[2, 1], z[3])


def _linear_world(n_trials: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Smooth random videos and neurons that respond linearly to them 2 frames later."""
    from scipy.ndimage import gaussian_filter

    H, W, N, T = 12, 16, 150, 80
    enc = rng.standard_normal((N, H * W)).astype(np.float32) / np.sqrt(H * W)
    out = []
    for _ in range(n_trials):
        v = gaussian_filter(rng.standard_normal((T, H, W)), (1.5, 2.5, 2.5))
        v = (127.5 + 400 * v).clip(0, 255).astype(np.float32)
        drive = (v.reshape(T, -1) - 127.5) @ enc.T
        r = np.zeros((T, N), np.float32)
        r[2:] = drive[:-2]
        r += 2.0 * rng.standard_normal((T, N)).astype(np.float32)
        out.append((v, r))
    return out


def test_amortised_decoder_recovers_a_linear_world_and_round_trips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    data = _linear_world(14, rng)
    s = AmortisedSettings(response_frames=4, response_components=40, video_components=60)
    dec = fit_amortised(data[:10], data[10:12], s, seed=0, fitted_on={"trials": list(range(10))})
    assert dec.info["fitted_on"]["trials"] == list(range(10))
    assert dec.info["ridge"] in s.ridge_grid
    test_v, test_r = data[12]
    pred = dec.decode(test_r)
    assert pred.shape == test_v.shape
    c = np.corrcoef(pred[:-4].ravel(), test_v[:-4].ravel())[0, 1]
    assert c > 0.7, c
    # the same fit from the same seed; the file round trip within float16 storage error
    again = fit_amortised(data[:10], data[10:12], s, seed=0)
    np.testing.assert_array_equal(again.weights, dec.weights)
    dec.save(tmp_path / "a.npz")
    back = AmortisedDecoder.load(tmp_path / "a.npz")
    np.testing.assert_allclose(back.decode(test_r), pred, atol=2.0)
    assert back.info == dec.info
    # missing neurons read as their mean: a decoder given only the mean gives the mean frame
    w = np.zeros(dec.n_neurons, np.float32)
    flat = dec.decode(test_r, neuron_weights=w)
    np.testing.assert_allclose(flat, np.clip(dec.video_mean, 0, 255)[None].repeat(len(flat), 0), atol=1e-3)


def test_amortised_decoder_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    data = _linear_world(4, rng)
    dec = fit_amortised(data[:3], data[3:], AmortisedSettings(response_frames=2, response_components=8,
                                                                video_components=8))
    with pytest.raises(ShapeMismatchError):
        dec.decode(np.zeros((10, dec.n_neurons + 1), np.float32))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="bad.npz"):
        AmortisedDecoder.load(tmp_path / "bad.npz")
    with pytest.raises(ConfigError):
        fit_amortised([], data, AmortisedSettings())
    with pytest.raises(ConfigError):
        AmortisedSettings(response_frames=0)


def test_live_stage_restarts_each_frame_from_the_amortised_estimate() -> None:
    """With a vanishing step size the emitted frames are the amortised decoder's estimates."""
    from rt_decoder.messages import ActivityFrame
    from rt_decoder.recon import LiveReconstructor, LiveSettings
    from tests._lnp_encoder import LNPEncoder

    rng = np.random.default_rng(4)
    data = _linear_world(8, rng)
    H, W = data[0][0].shape[1:]
    N = data[0][1].shape[1]
    dec = fit_amortised(data[:6], data[6:7], AmortisedSettings(response_frames=3, response_components=20,
                                                               video_components=30))
    enc = LNPEncoder(N, window=8, shape=(H, W))
    lag = 4
    st = LiveSettings(lag_frames=lag, fixed_steps=1, blur_sigma_px=0.0, blur_sigma_frames=0.0,
                      optim=OptimSettings(learning_rate_px=1e-6))
    video, resp = data[7]
    resp = np.maximum(resp, 0)
    live = LiveReconstructor([enc], np.ones((H, W), bool), st, amortised=dec)
    out = {}
    for t in range(len(resp)):
        for d in live(ActivityFrame(t, t, 0, values=resp[t]), recent=resp[max(0, t - 7):t + 1]):
            out[d.frame_index] = d.image
    expected = dec.decode(resp)
    # frames emitted at the lag had their L = 3 response frames in: the same estimate as offline
    for f in range(5, len(resp) - lag):
        np.testing.assert_allclose(out[f], expected[f], atol=0.05)
    assert live.amortised_starts == len(resp) - 2
    # switched off: the frames stay at their warm start (grey here), not the estimate
    off = LiveReconstructor([enc], np.ones((H, W), bool), LiveSettings(
        lag_frames=lag, fixed_steps=1, blur_sigma_px=0.0, blur_sigma_frames=0.0, warm_start="grey",
        amortised_start=False, optim=OptimSettings(learning_rate_px=1e-6)), amortised=dec)
    frames = [d.image for t in range(12) for d in off(ActivityFrame(t, t, 0, values=resp[t]))]
    assert off.amortised_starts == 0 and np.allclose(frames, 127.5, atol=0.01)
    with pytest.raises(ConfigError, match="neurons"):
        LiveReconstructor([LNPEncoder(N + 1, window=8, shape=(H, W))], np.ones((H, W), bool), st, amortised=dec)


def test_offline_starts_from_the_given_video() -> None:
    from rt_decoder.errors import StageError
    from rt_decoder.recon import OfflineSettings, reconstruct_single
    from tests._lnp_encoder import LNPEncoder

    rng = np.random.default_rng(5)
    enc = LNPEncoder(50, window=8, shape=(12, 16))
    init = rng.uniform(0, 255, (16, 12, 16)).astype(np.float32)
    s = OfflineSettings(window_frames=8, stride_frames=4, iterations=0)
    out = reconstruct_single(enc, np.zeros((16, 50), np.float32), np.zeros((16, 4), np.float32),
                             np.ones((12, 16), bool), s, frame_shape=(12, 16), init_video=init)
    np.testing.assert_array_equal(out, init)
    with pytest.raises(StageError, match="init_video"):
        reconstruct_single(enc, np.zeros((16, 50), np.float32), np.zeros((16, 4), np.float32),
                           np.ones((12, 16), bool), s, frame_shape=(12, 16), init_video=init[:3])


def test_estimate_frame_on_onnx_runtime_equals_the_numpy_path() -> None:
    rng = np.random.default_rng(6)
    data = _linear_world(6, rng)
    dec = fit_amortised(data[:4], data[4:5], AmortisedSettings(response_frames=4, response_components=16,
                                                               video_components=24))
    _, resp = data[5]
    z = dec.project(resp)
    for a in (1, 2, 4):          # rows available: the rest read as the mean (zero components)
        comps = np.zeros((1, 4, z.shape[1]), np.float32)
        comps[0, :a] = z[10:10 + a]
        ref = dec.frames_from_components(comps)[0]
        np.testing.assert_allclose(dec.estimate_frame(resp[10:10 + a]), ref, atol=1e-2, rtol=1e-4)
    w = np.ones(dec.n_neurons, np.float32)
    w[:30] = 0
    comps = np.zeros((1, 4, z.shape[1]), np.float32)
    comps[0] = dec.project(resp[10:14], w)
    np.testing.assert_allclose(dec.estimate_frame(resp[10:14], w), dec.frames_from_components(comps)[0],
                               atol=1e-2, rtol=1e-4)
    with pytest.raises(ShapeMismatchError):
        dec.estimate_frame(resp[10:16])
