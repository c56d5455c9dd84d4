"""suite2p-live (bindings/suite2p_live): registration and extraction against plain numpy
references and against real Suite2p, the Suite2p file layouts, the frame sources, the
raw_frame message kind, and the CLI publishing to a real subscriber.

Tolerances: integer shifts must be identical; F and Fneu agree with Suite2p's own F.npy /
Fneu.npy to float32 rounding (|diff| <= 1e-5 * max|F|), because both sum the same
pixels of the same registered int16 frames, Suite2p in float32 and suite2p-live in
float64 (then cast to float32).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zmq

from bindings.suite2p_live import (
    BinaryReplaySource,
    LiveSettings,
    Suite2pLiveExtractor,
    TiffFollowSource,
    load_suite2p_plane,
    open_source,
    run_live,
)
from bindings.suite2p_live.masks import cell_and_neuropil_masks
from bindings.suite2p_live.reference import extract_reference, register_reference
from bindings.suite2p_live.registration import RigidRegistration
from bindings.suite2p_live.synthetic import random_stats, render_movie, write_plane_folder
from bindings.testing import REPO_ROOT, CollectingSubscriber
from rt_decoder.errors import ConfigError, DataFormatError, ProtocolError, ShapeMismatchError
from rt_decoder.messages import FluorescenceFrame, SessionInfo
from streaming import protocol as P

REL_TOL = 1e-5  # of max |F|: float32 summation-order differences


# ---------------------------------------------------------------- synthetic plane (no suite2p needed)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict:
    rng = np.random.default_rng(11)
    Ly, Lx, n_rois, T = 96, 112, 40, 30
    stats = random_stats(n_rois, (Ly, Lx), rng, radius_px=3.5)
    centres = np.array([s["med"] for s in stats], dtype=np.float64)
    traces = rng.gamma(2.0, 400.0, size=(T, n_rois))
    movie, shifts = render_movie(traces, centres, (Ly, Lx), rng, max_shift_px=4)
    ref = movie[0]  # frame 0 is unshifted
    root = tmp_path_factory.mktemp("s2p_synth")
    classic = write_plane_folder(root / "classic" / "plane0", ref_img=ref, stats=stats, movie=movie,
                                 iscell=np.column_stack([np.arange(n_rois) % 3 != 0, np.full(n_rois, 0.9)]))
    split = write_plane_folder(root / "split", ref_img=ref, stats=stats, layout="split", movie=movie)
    return {"classic": classic, "split": split, "movie": movie, "shifts": shifts, "root": root, "stats": stats}


def test_registration_matches_plain_reference(synthetic: dict) -> None:
    plane = load_suite2p_plane(synthetic["classic"])
    reg = RigidRegistration(plane.ref_img, maxregshift=0.1, smooth_sigma=1.15, rmin=plane.rmin, rmax=plane.rmax)
    ref = np.clip(plane.ref_img, plane.rmin, plane.rmax)
    for t, frame in enumerate(synthetic["movie"]):
        dy, dx, c = reg(frame)
        rdy, rdx, rc = register_reference(frame, ref, maxregshift=0.1, smooth_sigma=1.15,
                                          rmin=plane.rmin, rmax=plane.rmax)
        assert (dy, dx) == (rdy, rdx)
        assert c == pytest.approx(rc, rel=1e-3, abs=1e-5)
        # the rendered motion is undone: frame t shows the scene moved by -shifts[t]
        assert (dy, dx) == tuple(-synthetic["shifts"][t])


@pytest.mark.parametrize("kernel", ["box", "runs"])
def test_extraction_kernels_match_reference(synthetic: dict, kernel: str) -> None:
    plane = load_suite2p_plane(synthetic["classic"])
    ex = Suite2pLiveExtractor(plane, LiveSettings(neuropil_coefficient=0.5), kernel=kernel)
    assert ex.kernel == kernel
    for t, frame in enumerate(synthetic["movie"][:12]):
        out = ex(frame, t, 1000 + t)
        F, Fneu = extract_reference(frame, out.dy, out.dx, ex.cell_masks, ex.neuropil_masks)
        np.testing.assert_allclose(out.F, F, rtol=0, atol=REL_TOL * np.abs(F).max())
        np.testing.assert_allclose(out.Fneu, Fneu, rtol=0, atol=REL_TOL * np.abs(Fneu).max())
        np.testing.assert_allclose(out.values, out.F - np.float32(0.5) * out.Fneu, rtol=1e-6)
        assert out.frame_index == t and out.acq_ns == 1000 + t


def test_extraction_with_explicit_shifts_and_uint16(synthetic: dict) -> None:
    plane = load_suite2p_plane(synthetic["classic"])
    ex = Suite2pLiveExtractor(plane, LiveSettings(register=False))
    frame = (synthetic["movie"][3].astype(np.int32) + 5000).astype(np.uint16)
    out = ex(frame, 0, 0)
    assert (out.dy, out.dx) == (0, 0)
    F, Fneu = extract_reference(frame, 0, 0, ex.cell_masks, ex.neuropil_masks)
    np.testing.assert_allclose(out.F, F, rtol=0, atol=REL_TOL * np.abs(F).max())
    # every shift within the window, incl. wrap-around at the edges
    ex_box = Suite2pLiveExtractor(plane, kernel="box")
    ex_runs = Suite2pLiveExtractor(plane, kernel="runs")
    for dy, dx in [(-9, 11), (9, -11), (0, 11), (-9, 0)]:
        for e in (ex_box, ex_runs):
            Fk = np.empty(plane.n_rois, np.float32)
            Fn = np.empty(plane.n_rois, np.float32)
            p = e.packed
            from bindings.suite2p_live import _kernels
            if e.kernel == "box":
                _kernels.extract_box(synthetic["movie"][0], dy, dx, p.cell_ptr, p.cell_y, p.cell_x, p.cell_w,
                                     p.boxes, p.cell_pix, p.ring_ptr, p.ring_y, p.ring_x, p.neu_npix,
                                     np.empty((plane.Ly, plane.Lx)), np.empty((plane.Ly + 1, plane.Lx + 1)),
                                     np.empty((plane.Ly + 1, plane.Lx + 1)), Fk, Fn)
            else:
                _kernels.extract(synthetic["movie"][0], dy, dx, p.cell_ptr, p.cell_y, p.cell_x, p.cell_w, p.run_ptr,
                                 p.run_y, p.run_x0, p.run_len, p.neu_npix, np.empty((plane.Ly, plane.Lx + 1)), Fk, Fn)
            F, Fneu = extract_reference(synthetic["movie"][0], dy, dx, e.cell_masks, e.neuropil_masks)
            np.testing.assert_allclose(Fk, F, rtol=0, atol=REL_TOL * np.abs(F).max())
            np.testing.assert_allclose(Fn, Fneu, rtol=0, atol=REL_TOL * np.abs(Fneu).max())


def test_split_layout_equals_classic(synthetic: dict) -> None:
    a = load_suite2p_plane(synthetic["classic"].parent)  # finds plane0/ inside
    b = load_suite2p_plane(synthetic["split"])
    assert (a.layout, b.layout) == ("classic", "split")
    assert a.registration == b.registration and a.masks == b.masks
    assert (a.Ly, a.Lx, a.rmin, a.rmax, a.n_frames) == (b.Ly, b.Lx, b.rmin, b.rmax, b.n_frames)
    np.testing.assert_array_equal(a.ref_img, b.ref_img)
    frame = synthetic["movie"][5]
    fa = Suite2pLiveExtractor(a)(frame, 5, 0)
    fb = Suite2pLiveExtractor(b)(frame, 5, 0)
    assert fa.F.tobytes() == fb.F.tobytes() and fa.Fneu.tobytes() == fb.Fneu.tobytes()


def test_cells_only_session_and_errors(synthetic: dict, tmp_path: Path) -> None:
    plane = load_suite2p_plane(synthetic["classic"])
    assert plane.iscell is not None
    ex = Suite2pLiveExtractor(plane, LiveSettings(cells_only=True))
    info = ex.session_info("s1")
    np.testing.assert_array_equal(info.roi_ids, np.flatnonzero(np.arange(plane.n_rois) % 3 != 0))
    out = ex(synthetic["movie"][1], 1, 0)
    np.testing.assert_array_equal(out.values, (out.F - np.float32(0.7) * out.Fneu)[info.roi_ids])
    with pytest.raises(ShapeMismatchError, match="shape"):
        ex(np.zeros((5, 5), np.int16), 2, 0)
    with pytest.raises(ConfigError, match="neuropil_coefficient"):
        LiveSettings(neuropil_coefficient=3.0)
    with pytest.raises(ConfigError, match="unknown suite2p-live setting"):
        LiveSettings.from_dict({"neuropil_coef": 0.7})
    with pytest.raises(ConfigError, match="does not exist"):
        load_suite2p_plane(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    with pytest.raises(DataFormatError, match="no Suite2p plane"):
        load_suite2p_plane(tmp_path / "bad")
    bad = write_plane_folder(tmp_path / "bad2", ref_img=np.zeros((8, 8), np.int16),
                             stats=[{"ypix": np.array([0, 9]), "xpix": np.array([0, 1]), "lam": np.ones(2)}])
    with pytest.raises(DataFormatError, match="outside"):
        load_suite2p_plane(bad)


def test_binary_and_tiff_sources(synthetic: dict, tmp_path: Path) -> None:
    movie = synthetic["movie"]
    src = open_source("replay", Ly=movie.shape[1], Lx=movie.shape[2], default_bin=synthetic["classic"] / "data.bin")
    assert isinstance(src, BinaryReplaySource)
    items = list(src)
    assert [i.frame_index for i in items] == list(range(movie.shape[0]))
    np.testing.assert_array_equal(np.stack([i.pixels for i in items]), movie)
    # a TIFF written while it is followed (two interleaved channels, use channel 1)
    import tifffile

    path = tmp_path / "acq.tif"
    n = 8

    def writer() -> None:
        with tifffile.TiffWriter(path) as tw:
            for t in range(n):
                tw.write(movie[t])
                tw.write((movie[t] // 2).astype(np.int16))
                time.sleep(0.02)

    th = threading.Thread(target=writer)
    th.start()
    got = list(TiffFollowSource(path, channels=2, channel=1, idle_timeout_s=1.0, poll_s=0.01))
    th.join()
    assert [g.frame_index for g in got] == list(range(n))
    for g in got:
        np.testing.assert_array_equal(g.pixels, movie[g.frame_index] // 2)
    with pytest.raises(ConfigError, match="expected"):
        open_source("frames.avi", Ly=4, Lx=4)


def test_raw_frame_message_round_trip() -> None:
    rng = np.random.default_rng(1)
    for dtype in (np.int16, np.uint16):
        px = rng.integers(0, 30000, size=(7, 9)).astype(dtype)
        env = P.decode(P.encode_raw_frame("cam", seq=5, t_ns=-3, frame_index=11, pixels=px, stamps=(("grab", 9),)))
        assert env.kind == P.KIND_RAW_FRAME and env.seq == 5 and env.t_ns == -3
        body = env.body
        assert isinstance(body, P.RawFrame)
        assert body.frame_index == 11 and body.stamps == (("grab", 9),)
        assert body.pixels.dtype == dtype and body.pixels.tobytes() == px.tobytes()
        big_endian = px.astype(np.dtype(dtype).newbyteorder(">"))
        env = P.decode(P.encode_raw_frame("cam", seq=6, t_ns=0, frame_index=12, pixels=big_endian))
        np.testing.assert_array_equal(env.body.pixels, px)  # type: ignore[union-attr]
    with pytest.raises(ProtocolError):
        P.encode_raw_frame("cam", seq=0, t_ns=0, frame_index=0, pixels=np.zeros((3, 3), np.float32))
    parts = P.encode_raw_frame("cam", seq=0, t_ns=0, frame_index=0, pixels=np.zeros((3, 3), np.int16))
    with pytest.raises(ProtocolError):
        P.decode([parts[0], b"\x00" * 17])  # wrong payload size


def test_run_live_publishes_through_a_fake_publisher(synthetic: dict) -> None:
    class FakePublisher:
        def __init__(self) -> None:
            self.sent: list[tuple] = []
            self.ended: int | None = None

        def start(self) -> int:
            return 0

        def send_frame(self, values, frame_index, acq_ns, behaviour=None, *, stamps=()):  # type: ignore[no-untyped-def]
            self.sent.append((np.array(values), frame_index, acq_ns, stamps))
            return len(self.sent)

        def heartbeat_if_idle(self) -> bool:
            return False

        def end(self, n_frames: int) -> int:
            self.ended = n_frames
            return 0

    plane = load_suite2p_plane(synthetic["classic"])
    ex = Suite2pLiveExtractor(plane)
    src = BinaryReplaySource(synthetic["classic"] / "data.bin", plane.Ly, plane.Lx, stop=10)
    pub = FakePublisher()
    stats = run_live(ex, src, pub)
    assert stats.n_frames == 10 and pub.ended == 10 and stats.n_errors == 0
    ref = Suite2pLiveExtractor(plane)
    for values, idx, _, stamps in pub.sent:
        assert values.tobytes() == ref(synthetic["movie"][idx], idx, 0).values.tobytes()
        assert [s for s, _ in stamps] == ["s2p_in", "s2p_extracted"]


# ---------------------------------------------------------------- real Suite2p


@pytest.fixture(scope="module")
def suite2p_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    try:
        import suite2p  # noqa: F401
        from suite2p import default_ops, run_s2p
    except Exception as exc:  # ImportError, or an incompatible install
        pytest.skip(f"suite2p is not importable ({type(exc).__name__}: {exc}); `make venv` installs suite2p==0.14.6")
    import tifffile

    from rt_decoder.sim import RigConfig, VirtualRig

    rig = VirtualRig(RigConfig(n_neurons=40, trial_frames=200, n_trials=1, seed=3))
    trial = rig.trial(0)
    rng = np.random.default_rng(5)
    centres = rig.roi_centres_px / 512.0 * 112.0 + 8.0  # the rig's FOV (512 px) onto 128 x 128
    traces = trial.fluorescence / np.median(trial.fluorescence, axis=0) * 600.0
    movie, shifts = render_movie(traces, centres, (128, 128), rng, max_shift_px=3)
    root = tmp_path_factory.mktemp("s2p_real")
    (root / "raw").mkdir()
    tifffile.imwrite(root / "raw" / "movie.tif", movie)
    ops = default_ops()
    ops.update(nonrigid=False, fs=30.0, tau=0.5, spikedetect=False, do_bidiphase=False, nimg_init=200,
               diameter=8, sparse_mode=False, input_format="tif", save_path0=str(root / "out"))
    with warnings.catch_warnings():  # suite2p 0.14's own deprecation warnings (scipy, numpy)
        warnings.simplefilter("ignore")
        run_s2p(ops=ops, db={"data_path": [str(root / "raw")], "save_path0": str(root / "out")})
        # suite2p 0.14 leaves its TIFF reader open: collect it here, where the ResourceWarning
        # is ignored, rather than in whichever later test the garbage collector happens to run
        import gc

        gc.collect()
    plane_dir = root / "out" / "suite2p" / "plane0"
    return {"dir": plane_dir, "movie": movie, "root": root}


@pytest.mark.slow
def test_masks_equal_suite2p_masks(suite2p_run: dict) -> None:
    from suite2p.extraction.masks import create_masks

    plane_dir = suite2p_run["dir"]
    ops = np.load(plane_dir / "ops.npy", allow_pickle=True).item()  # Suite2p's own pickled format
    stat = np.load(plane_dir / "stat.npy", allow_pickle=True)  # Suite2p's own pickled format
    cells, neuropil = create_masks(stat, ops["Ly"], ops["Lx"], ops)
    plane = load_suite2p_plane(plane_dir)
    ours = cell_and_neuropil_masks(plane.stats, plane.Ly, plane.Lx, plane.masks)
    assert plane.n_rois == len(stat) >= 10
    assert ours.neuropil_masks is not None
    for (ip, lam), (ip2, lam2) in zip(cells, ours.cell_masks):
        np.testing.assert_array_equal(ip, ip2)
        np.testing.assert_allclose(lam, lam2, rtol=1e-6)
    for a, b in zip(neuropil, ours.neuropil_masks):
        np.testing.assert_array_equal(np.sort(a), b)


@pytest.mark.slow
def test_live_F_and_Fneu_equal_suite2p(suite2p_run: dict) -> None:
    plane_dir = suite2p_run["dir"]
    ops = np.load(plane_dir / "ops.npy", allow_pickle=True).item()  # Suite2p's own pickled format
    F_s2p = np.load(plane_dir / "F.npy")
    Fneu_s2p = np.load(plane_dir / "Fneu.npy")
    plane = load_suite2p_plane(plane_dir)
    ex = Suite2pLiveExtractor(plane)
    assert ex.kernel == "box"
    movie = suite2p_run["movie"]  # the raw frames Suite2p read from the TIFF
    outs = [ex(frame, t, 0) for t, frame in enumerate(movie)]
    np.testing.assert_array_equal([o.dy for o in outs], ops["yoff"])
    np.testing.assert_array_equal([o.dx for o in outs], ops["xoff"])
    assert np.ptp(ops["yoff"]) > 0  # there was motion to correct
    F = np.stack([o.F for o in outs], axis=1)
    Fneu = np.stack([o.Fneu for o in outs], axis=1)
    np.testing.assert_allclose(F, F_s2p, rtol=0, atol=REL_TOL * np.abs(F_s2p).max())
    np.testing.assert_allclose(Fneu, Fneu_s2p, rtol=0, atol=REL_TOL * np.abs(Fneu_s2p).max())


@pytest.mark.slow
def test_cli_streams_raw_frames_to_a_subscriber(suite2p_run: dict) -> None:
    plane_dir = suite2p_run["dir"]
    movie = suite2p_run["movie"][:60]
    F_s2p = np.load(plane_dir / "F.npy")[:, :60]
    Fneu_s2p = np.load(plane_dir / "Fneu.npy")[:, :60]
    ctx = zmq.Context.instance()
    raw_pub = ctx.socket(zmq.XPUB)
    raw_pub.setsockopt(zmq.LINGER, 1000)
    raw_pub.setsockopt(zmq.SNDHWM, 10_000)
    raw_port = raw_pub.bind_to_random_port("tcp://127.0.0.1")
    try:
        with CollectingSubscriber() as sub:
            env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "suite2p-live", str(plane_dir),
                 "--raw-frames", f"tcp://127.0.0.1:{raw_port}", "--connect", sub.address,
                 "--wait-subscribers", "1", "--session-id", "live-test", "--idle-timeout-s", "60"],
                cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                assert raw_pub.poll(60_000), "suite2p-live never subscribed to the raw frames"
                raw_pub.recv()  # the subscription notice
                time.sleep(0.2)
                for t, frame in enumerate(movie):
                    raw_pub.send_multipart(P.encode_raw_frame("rig", seq=t, t_ns=10_000 + t, frame_index=t,
                                                              pixels=frame))
                raw_pub.send_multipart(P.encode_session_end("rig", seq=len(movie), t_ns=0, n_frames=len(movie)))
                envs = sub.collect(timeout_s=60, idle_check=lambda: proc.poll() is not None)
                out, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    finally:
        raw_pub.close(0)
    assert proc.returncode == 0, err
    assert sub.n_malformed == 0, sub.errors
    info = next(e.body for e in envs if e.kind == "session_start")
    assert isinstance(info, SessionInfo)
    assert info.session_id == "live-test" and info.source == "suite2p-live" and info.n_rois == F_s2p.shape[0]
    frames = [e.body for e in envs if e.kind == "frame"]
    assert [f.frame_index for f in frames] == list(range(len(movie)))  # type: ignore[union-attr]
    expected = F_s2p - np.float32(0.7) * Fneu_s2p
    for f in frames:
        assert isinstance(f, FluorescenceFrame)
        assert f.acq_ns == 10_000 + f.frame_index
        np.testing.assert_allclose(f.values, expected[:, f.frame_index], rtol=0,
                                   atol=2 * REL_TOL * np.abs(F_s2p).max())
    assert envs[-1].kind == "session_end" and envs[-1].body.n_frames == len(movie)  # type: ignore[union-attr]
