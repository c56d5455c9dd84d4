"""``rt-decoder deconvolve`` over the three input kinds, checked against deconvolve_array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from rt_decoder.deconv import DeconvSettings, deconvolve_array

FS = 30.0


def fluorescence(T: int, N: int, seed: int = 0) -> np.ndarray:
    """Raw fluorescence (T, N) float32 with sparse AR(1) transients."""
    rng = np.random.default_rng(seed)
    s = rng.poisson(0.04, (T, N))
    c = np.zeros((T, N))
    for t in range(T):
        c[t] = s[t] + (0.95 * c[t - 1] if t else 0)
    return (100 + 12 * c + 3 * rng.standard_normal((T, N))).astype(np.float32)


def test_plain_npy_roi_major(tmp_path: Path) -> None:
    F = fluorescence(360, 5)
    np.save(tmp_path / "f.npy", F.T)
    out = tmp_path / "act.npy"
    assert main(["deconvolve", str(tmp_path / "f.npy"), "--fs", "30", "--out", str(out)]) == 0
    got = np.load(out, allow_pickle=False)
    assert got.shape == (360, 5) and got.dtype == np.float32
    np.testing.assert_array_equal(got, deconvolve_array(F, FS))
    assert np.count_nonzero(got) > 20
    assert main(["deconvolve", str(tmp_path / "f.npy"), "--fs", "30", "--out", str(out), "--roi-major",
                 "--calcium-model", "ar2", "--lag-frames", "2", "--overwrite"]) == 0
    np.testing.assert_array_equal(np.load(out), deconvolve_array(F, FS, DeconvSettings(model="ar2", lag_frames=2)).T)


def test_suite2p_folder_neuropil_and_iscell(tmp_path: Path) -> None:
    F = fluorescence(330, 6, seed=1)
    Fneu = np.full_like(F, 20.0) + np.random.default_rng(2).standard_normal(F.shape).astype(np.float32)
    np.save(tmp_path / "F.npy", (F + 0.7 * Fneu).T)
    np.save(tmp_path / "Fneu.npy", Fneu.T)
    iscell = np.array([[1, 0.9], [0, 0.1], [1, 0.8], [1, 0.7], [0, 0.2], [1, 0.6]])
    np.save(tmp_path / "iscell.npy", iscell)
    out = tmp_path / "o" / "spks.npy"
    assert main(["deconvolve", str(tmp_path), "--fs", "30", "--out", str(out)]) == 0
    got = np.load(out)
    rois = np.load(tmp_path / "o" / "spks.rois.npy")
    np.testing.assert_array_equal(rois, [0, 2, 3, 5])
    F_corr = ((F + 0.7 * Fneu).T - 0.7 * Fneu.T).astype(np.float32).T
    np.testing.assert_array_equal(got, deconvolve_array(np.ascontiguousarray(F_corr[:, rois]), FS))


def test_session_file_with_missing_frames(tmp_path: Path) -> None:
    from rt_decoder.io.session_file import SessionWriter
    from rt_decoder.messages import FluorescenceFrame, SessionInfo

    F = fluorescence(340, 4, seed=3)
    lost = {100, 101, 102, 250}
    info = SessionInfo(session_id="s", roi_ids=np.arange(4), frame_rate_hz=FS)
    path = tmp_path / "session.h5"
    with SessionWriter(path, info) as w:
        for k in range(340):
            if k not in lost:
                w.append_frame(FluorescenceFrame(seq=k, frame_index=k, acq_ns=k, values=F[k]))
    out = tmp_path / "act.npy"
    assert main(["deconvolve", str(path), "--out", str(out)]) == 0  # frame rate from the file
    got = np.load(out)
    G = F.copy()
    G[sorted(lost)] = np.nan
    keep = [k for k in range(340) if k not in lost]
    assert got.shape == (340 - len(lost), 4)
    np.testing.assert_array_equal(got, deconvolve_array(G, FS)[keep])


def test_bad_inputs_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "f.npy", fluorescence(100, 3).T)
    assert main(["deconvolve", str(tmp_path / "f.npy"), "--out", str(tmp_path / "o.npy")]) == 2
    assert "--fs" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    assert main(["deconvolve", str(tmp_path / "d"), "--fs", "30", "--out", str(tmp_path / "o.npy")]) == 2
    assert "F.npy" in capsys.readouterr().err
    np.save(tmp_path / "obj.npy", np.array(["a", "b"]))
    assert main(["deconvolve", str(tmp_path / "obj.npy"), "--fs", "30", "--out", str(tmp_path / "o.npy")]) == 2
    assert "obj.npy" in capsys.readouterr().err


def test_indicator_and_auto_model_options(tmp_path: Path) -> None:
    F = fluorescence(360, 5, seed=4)
    np.save(tmp_path / "f.npy", F.T)
    out = tmp_path / "act.npy"
    assert main(["deconvolve", str(tmp_path / "f.npy"), "--fs", "30", "--out", str(out), "--calcium-model", "auto",
                 "--indicator", "gcamp8f"]) == 0
    np.testing.assert_array_equal(np.load(out), deconvolve_array(F, FS, DeconvSettings(indicator="gcamp8f")))
    assert not np.array_equal(np.load(out), deconvolve_array(F, FS, DeconvSettings(indicator="gcamp6s")))
    with pytest.raises(SystemExit):
        main(["deconvolve", str(tmp_path / "f.npy"), "--fs", "30", "--out", str(out), "--indicator", "gcamp3"])


def test_service_config_takes_auto_model_and_indicator(tmp_path: Path) -> None:
    from rt_decoder.errors import ConfigError
    from streaming.config import load_config

    cfg = tmp_path / "serve.toml"
    cfg.write_text('[deconv]\nmodel = "auto"\nindicator = "gcamp6f"\nrevise_frames = 8\n')
    settings = DeconvSettings.from_dict(load_config(cfg).deconv_dict)
    assert (settings.model, settings.indicator, settings.revise_frames) == ("auto", "gcamp6f", 8)
    cfg.write_text('[deconv]\nindicator = "gcamp9"\n')
    with pytest.raises(ConfigError, match="indicator"):
        load_config(cfg)


_KERNEL_PROBE = """
import sys
from rt_decoder.deconv import _kernels as k
if sys.argv[1] == "compile":
    k.get_kernel("recent_ar1")
print("CACHE", k.cache_dir())
"""


def _probe(env: dict[str, str], what: str) -> tuple[str, str]:
    import os
    import subprocess
    import sys

    full = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    full.update(env)
    p = subprocess.run([sys.executable, "-c", _KERNEL_PROBE, what], env=full, capture_output=True, text=True,
                       timeout=600, check=True)
    return p.stdout, p.stderr


def test_kernel_cache_location_and_one_compile_notice(tmp_path: Path) -> None:
    # no NUMBA_CACHE_DIR: a per-user directory (works when the package directory is read-only)
    out, _ = _probe({"XDG_CACHE_HOME": str(tmp_path / "xdg")}, "where")
    assert f"CACHE {tmp_path / 'xdg' / 'rt-decoder' / 'numba'}" in out
    # an empty cache: the compile notice, once; a filled one: silence
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    _, err = _probe(env, "compile")
    assert err.count("compiling kernels, once per machine") == 1
    assert any((tmp_path / "cache").rglob("*.nbi"))
    _, err = _probe(env, "compile")
    assert "compiling kernels" not in err
