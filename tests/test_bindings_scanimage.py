"""The ScanImage bindings (bindings/scanimage/*.m) run under GNU Octave with the
octave-zeromq transport and publish to a real pyzmq subscriber; the subscriber decodes
every message with streaming.protocol and the values equal what Octave sent, bit for
bit. The system packages are installed by bindings/install_system_deps.sh when missing
(root + apt), else the tests skip with the reason."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import msgpack
import numpy as np
import pytest

from bindings.testing import REPO_ROOT, CollectingSubscriber, ensure_system_packages
from rt_decoder.messages import FluorescenceFrame, SessionInfo

SI_DIR = REPO_ROOT / "bindings" / "scanimage"


@pytest.fixture(scope="module")
def octave() -> str:
    reason = ensure_system_packages("octave", "octave-zeromq")
    if reason:
        pytest.skip(reason)
    exe = shutil.which("octave-cli") or shutil.which("octave")
    if exe is None:
        pytest.skip("octave is installed but not on PATH")
    return exe


def run_octave(octave: str, script: str, cwd: Path, timeout_s: float = 120) -> subprocess.Popen[str]:
    path = cwd / "driver.m"
    path.write_text(f"addpath('{SI_DIR}');\n" + textwrap.dedent(script))
    return subprocess.Popen([octave, "--no-gui", "--norc", "--quiet", str(path)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"octave failed:\n{out}\n{err}"
    return out


def test_msgpack_encoder_matches_python(octave: str, tmp_path: Path) -> None:
    script = """
    s = struct();
    s.pos = int64(127); s.u8 = uint8(200); s.u16 = uint16(65535); s.u32 = uint32(4294967295);
    s.u64 = intmax('uint64'); s.i64min = intmin('int64'); s.neg = int32(-33); s.negfix = int8(-32);
    s.f = 0.1; s.nan = NaN; s.inf = -Inf; s.t = true; s.n = [];
    s.list = {int64(1), 'two', {}, 2.5}; s.longstr = repmat('a', 1, 300); s.utf = 'caf\u00e9';
    s.vec = int64([1 2 3]);
    fid = fopen('out.bin', 'w'); fwrite(fid, rtd_msgpack(s), 'uint8'); fclose(fid);
    """
    finish(run_octave(octave, script, tmp_path))
    got = msgpack.unpackb((tmp_path / "out.bin").read_bytes(), raw=False)
    assert got["pos"] == 127 and got["u8"] == 200 and got["u16"] == 65535 and got["u32"] == 2**32 - 1
    assert got["u64"] == 2**64 - 1 and got["i64min"] == -(2**63) and got["neg"] == -33 and got["negfix"] == -32
    assert got["f"] == 0.1 and np.isnan(got["nan"]) and got["inf"] == -np.inf
    assert got["t"] is True and got["n"] is None
    assert got["list"] == [1, "two", [], 2.5] and got["longstr"] == "a" * 300
    assert got["vec"] == [1, 2, 3] and got["utf"] == "caf\u00e9"
    assert list(got) == ["pos", "u8", "u16", "u32", "u64", "i64min", "neg", "negfix", "f", "nan", "inf", "t", "n",
                         "list", "longstr", "utf", "vec"]


def _fake_si_frames(rng: np.random.Generator, n_frames: int, ly: int, lx: int) -> np.ndarray:
    return rng.integers(-2000, 30000, size=(n_frames, ly, lx), dtype=np.int16)


def test_frame_acquired_hook_publishes_mask_means(octave: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n_frames, ly, lx, n_rois = 25, 32, 48, 17
    frames = _fake_si_frames(rng, n_frames, ly, lx)
    # weighted masks, Ly x Lx x N (column-major on disk, as MATLAB reads it)
    masks = (rng.random((ly, lx, n_rois)) < 0.05) * rng.random((ly, lx, n_rois))
    masks[0, 0, :] += 0.5  # no empty mask
    frames.transpose(0, 2, 1).astype("<i2").tofile(tmp_path / "frames.bin")  # each frame column-major
    masks.transpose(2, 1, 0).astype("<f8").tofile(tmp_path / "masks.bin")
    timestamps = 0.5 + np.arange(n_frames) / 30.0
    with CollectingSubscriber() as sub:
        script = f"""
        Ly = {ly}; Lx = {lx}; N = {n_rois}; T = {n_frames};
        fid = fopen('masks.bin'); masks = reshape(fread(fid, Inf, 'double=>double', 0, 'ieee-le'), Ly, Lx, N); fclose(fid);
        fid = fopen('frames.bin'); mov = reshape(fread(fid, Inf, 'int16=>int16', 0, 'ieee-le'), Ly, Lx, T); fclose(fid);
        cfg = struct('address', '{sub.address}', 'session_id', 'si-masks', 'masks', masks, ...
                     'roi_centres_px', [(1:N)' (N:-1:1)'] * 0.5, 'transport', 'octave');
        hSI = struct(); hSI.hRoiManager = struct('scanFrameRate', 29.76);
        rtd_si_setup(hSI, [], cfg);
        pause(0.5);  % let the subscriber connect (PUB drops what nobody receives yet)
        rtd_publisher('start');
        sent = zeros(N, T, 'single');
        ts = {{{", ".join(repr(float(x)) for x in timestamps)}}};
        for t = 1:T
            rd = struct('channels', [1 2]); rd.imageData = {{ {{mov(:, :, t)}}, {{zeros(Ly, Lx, 'int16')}} }};
            hSI.hDisplay.lastStripeData = struct('frameNumberAcq', t, 'frameTimestamp', ts{{t}}, 'roiData', {{{{rd}}}});
            rtd_si_frame_acquired(hSI, []);
            sent(:, t) = single(rtd_roi_means(mov(:, :, t)));
        end
        rtd_si_teardown(hSI, []);
        fid = fopen('sent.bin', 'w'); fwrite(fid, sent, 'single', 0, 'ieee-le'); fclose(fid);
        printf('errors=%d\\n', rtd_si_error_count('get'));
        """
        proc = run_octave(octave, script, tmp_path)
        envs = sub.collect(timeout_s=60, idle_check=lambda: proc.poll() is not None)
        out = finish(proc)
    assert "errors=0" in out
    assert sub.n_malformed == 0, sub.errors
    kinds = [e.kind for e in envs]
    assert kinds[0] == "session_start" and kinds[-1] == "session_end"
    assert [e.seq for e in envs] == list(range(envs[0].seq, envs[0].seq + len(envs)))
    infos = [e.body for e in envs if e.kind == "session_start"]
    info = infos[0]
    assert isinstance(info, SessionInfo)
    assert info.session_id == "si-masks" and info.n_rois == n_rois and info.source == "scanimage"
    assert info.frame_rate_hz == 29.76 and info.stimulus_shape == (36, 64)
    np.testing.assert_array_equal(info.roi_ids, np.arange(n_rois))
    assert info.roi_centres_px is not None
    np.testing.assert_array_equal(info.roi_centres_px[:, 0], (np.arange(n_rois) + 1) * 0.5)
    np.testing.assert_array_equal(info.roi_centres_px[:, 1], (n_rois - np.arange(n_rois)) * 0.5)
    got = [e.body for e in envs if e.kind == "frame"]
    assert len(got) == n_frames
    sent = np.fromfile(tmp_path / "sent.bin", dtype="<f4").reshape(n_frames, n_rois)
    w = masks.reshape(ly * lx, n_rois) / masks.reshape(ly * lx, n_rois).sum(axis=0)
    for t, frame in enumerate(got):
        assert isinstance(frame, FluorescenceFrame)
        assert frame.frame_index == t and frame.acq_ns == round(timestamps[t] * 1e9)
        assert frame.values.tobytes() == sent[t].tobytes()  # exactly what Octave sent
        ref = frames[t].reshape(-1).astype(np.float64) @ w  # numpy reference ROI means
        np.testing.assert_allclose(frame.values, ref, rtol=1e-6, atol=1e-3)
    assert envs[-1].body.n_frames == n_frames  # type: ignore[union-attr]


def test_integration_output_hook_publishes_scanimage_values(octave: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n_frames, n_rois = 30, 1200
    vals = rng.normal(100, 30, size=(n_frames, n_rois)).astype(np.float32)
    vals[3, 5] = np.nan
    vals[4, 6] = np.inf
    vals[5, 7] = -0.0
    vals.astype("<f4").tofile(tmp_path / "vals.bin")  # row-major: frame after frame
    beh_sent = "[1.5 -2 0.25 1e30]"
    with CollectingSubscriber() as sub:
        script = f"""
        T = {n_frames}; N = {n_rois};
        fid = fopen('vals.bin'); vals = reshape(fread(fid, Inf, 'single=>single', 0, 'ieee-le'), N, T); fclose(fid);
        cfg = struct('address', '{sub.address}', 'session_id', 'si-integration', 'roi_ids', int64(5000 + (0:N-1)), ...
                     'frame_rate_hz', 15, 'stimulus_shape', [], 'source', 'scanimage-integration', 'plane', 2);
        rtd_si_setup([], [], cfg);
        pause(0.5);
        rtd_publisher('start');
        for t = 1:T
            if t <= 10
                r = rtd_si_integration_output(vals(:, t));
            else
                r = rtd_si_integration_output(vals(:, t), struct('frameNumber', 100 + t, 'timestamp', t / 15));
            end
        end
        rtd_publisher('heartbeat');
        rtd_publisher('frame', int64(9999), int64(-5), vals(:, 1), {beh_sent});
        rtd_si_teardown([], []);
        printf('errors=%d r=%d\\n', rtd_si_error_count('get'), r);
        """
        proc = run_octave(octave, script, tmp_path)
        envs = sub.collect(timeout_s=60, idle_check=lambda: proc.poll() is not None)
        out = finish(proc)
    assert "errors=0 r=0" in out
    assert sub.n_malformed == 0, sub.errors
    info = next(e.body for e in envs if e.kind == "session_start")
    assert isinstance(info, SessionInfo)
    assert info.plane == 2 and info.frame_rate_hz == 15.0 and info.stimulus_shape is None
    assert info.source == "scanimage-integration" and info.roi_centres_px is None
    np.testing.assert_array_equal(info.roi_ids, 5000 + np.arange(n_rois))
    frames = [e for e in envs if e.kind == "frame"]
    assert len(frames) == n_frames + 1
    for t, env in enumerate(frames[:n_frames]):
        body = env.body
        assert isinstance(body, FluorescenceFrame)
        assert body.values.tobytes() == vals[t].tobytes()  # bit for bit, incl. NaN, inf, -0.0
        if t < 10:
            assert body.frame_index == t
        else:
            assert body.frame_index == 100 + t and body.acq_ns == round((t + 1) / 15 * 1e9)
    last = frames[-1].body
    assert isinstance(last, FluorescenceFrame)
    assert last.frame_index == 9999 and last.acq_ns == -5 and last.behaviour is not None
    np.testing.assert_array_equal(last.behaviour, np.array([1.5, -2, 0.25, 1e30], np.float32))
    assert "heartbeat" in [e.kind for e in envs]
    assert envs[-1].kind == "session_end" and envs[-1].body.n_frames == n_frames + 1  # type: ignore[union-attr]


def test_suite2p_masks_file_gives_suite2p_F_in_octave(octave: str, tmp_path: Path) -> None:
    """Masks exported from a Suite2p plane (bindings.scanimage_masks) -> the Octave frame
    hook publishes Suite2p's F (no registration, no neuropil) for each frame."""
    from bindings.scanimage_masks import export_masks
    from bindings.suite2p_live import LiveSettings, Suite2pLiveExtractor, load_suite2p_plane
    from bindings.suite2p_live.synthetic import random_stats, write_plane_folder

    rng = np.random.default_rng(21)
    ly, lx, n_rois, n_frames = 40, 56, 12, 6
    frames = _fake_si_frames(rng, n_frames, ly, lx)
    plane_dir = write_plane_folder(tmp_path / "plane0", ref_img=frames[0],
                                   stats=random_stats(n_rois, (ly, lx), rng, radius_px=3.0))
    assert export_masks(plane_dir, tmp_path / "masks.mat") == n_rois
    frames.transpose(0, 2, 1).astype("<i2").tofile(tmp_path / "frames.bin")
    with CollectingSubscriber() as sub:
        script = f"""
        Ly = {ly}; Lx = {lx}; T = {n_frames};
        fid = fopen('frames.bin'); mov = reshape(fread(fid, Inf, 'int16=>int16', 0, 'ieee-le'), Ly, Lx, T); fclose(fid);
        cfg = struct('address', '{sub.address}', 'session_id', 'si-s2p', 'masks', 'masks.mat', 'frame_rate_hz', 30);
        rtd_si_setup([], [], cfg);
        pause(0.5);
        rtd_publisher('start');
        hSI = struct();
        for t = 1:T
            rd = struct('channels', 1); rd.imageData = {{ {{mov(:, :, t)}} }};
            hSI.hDisplay.lastStripeData = struct('frameNumberAcq', t, 'frameTimestamp', t, 'roiData', {{{{rd}}}});
            rtd_si_frame_acquired(hSI, []);
        end
        rtd_si_teardown(hSI, []);
        printf('errors=%d\\n', rtd_si_error_count('get'));
        """
        proc = run_octave(octave, script, tmp_path)
        envs = sub.collect(timeout_s=60, idle_check=lambda: proc.poll() is not None)
        out = finish(proc)
    assert "errors=0" in out and sub.n_malformed == 0, sub.errors
    info = next(e.body for e in envs if e.kind == "session_start")
    assert isinstance(info, SessionInfo)
    np.testing.assert_array_equal(info.roi_ids, np.arange(n_rois))
    ex = Suite2pLiveExtractor(load_suite2p_plane(plane_dir), LiveSettings(register=False))
    got = [e.body for e in envs if e.kind == "frame"]
    assert len(got) == n_frames
    for t, frame in enumerate(got):
        assert isinstance(frame, FluorescenceFrame)
        F = ex(frames[t], t, 0).F
        np.testing.assert_allclose(frame.values, F, rtol=0, atol=1e-5 * np.abs(F).max())
