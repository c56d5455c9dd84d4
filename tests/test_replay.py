"""streaming.replay: every source format, pacing by absolute deadlines, loop, jitter, drops."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rt_decoder.errors import ConfigError, DataFormatError
from rt_decoder.messages import ActivityFrame, FluorescenceFrame, SessionInfo
from streaming import protocol as P
from streaming.replay import (
    ArraySource,
    Replayer,
    ReplaySettings,
    detect_format,
    open_source,
)
from streaming.transport import fake_pair


def received(sub: Any) -> list[P.Envelope]:
    out = []
    while (env := sub.recv(0)) is not None:
        out.append(env)
    return out


def replay_in_memory(source: Any, settings: ReplaySettings = ReplaySettings(speed=0)) -> tuple[list[Any], Any, Any]:
    pub, sub, _ = fake_pair(source.info, subscriber_kw={"reject_nonfinite": False})
    stats = Replayer(source, pub, settings).run()
    envs = received(sub)
    return envs, sub, stats


def frames_of(envs: list[P.Envelope]) -> list[Any]:
    return [e.body for e in envs if e.kind in (P.KIND_FRAME, P.KIND_ACTIVITY)]


# ---------------------------------------------------------------------------- formats


def write_suite2p(folder: Path, n: int = 6, t: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    F = (100 + rng.standard_normal((n, t))).astype(np.float32)
    Fneu = (20 + rng.standard_normal((n, t))).astype(np.float32)
    iscell = np.stack([np.array([1, 0, 1, 1, 0, 1][:n], float), rng.random(n)], axis=1)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "F.npy", F)
    np.save(folder / "Fneu.npy", Fneu)
    np.save(folder / "iscell.npy", iscell)
    return F, Fneu, iscell


def test_suite2p_folder(tmp_path: Path) -> None:
    folder = tmp_path / "suite2p" / "plane0"
    F, Fneu, iscell = write_suite2p(folder)
    assert detect_format(tmp_path) == "suite2p"
    with pytest.raises(ConfigError, match="--fs"):
        open_source(tmp_path)
    src = open_source(tmp_path, fs=15.0)
    keep = iscell[:, 0] > 0.5
    assert src.info.frame_rate_hz == 15.0 and not src.info.is_activity
    np.testing.assert_array_equal(src.info.roi_ids, np.flatnonzero(keep))
    envs, sub, stats = replay_in_memory(src)
    frames = frames_of(envs)
    assert stats.frames_sent == 40 and all(isinstance(f, FluorescenceFrame) for f in frames)
    want = (F - 0.7 * Fneu)[keep].T.astype(np.float32)
    np.testing.assert_array_equal(np.stack([f.values for f in frames]), want)
    assert [f.frame_index for f in frames] == list(range(40))
    assert envs[-1].kind == P.KIND_SESSION_END and sub.counters.missing == 0


def test_session_file(tmp_path: Path) -> None:
    from rt_decoder.io.session_file import SessionWriter

    info = SessionInfo("recorded", np.arange(5), 30.0, stimulus_shape=(36, 64), source="test")
    rng = np.random.default_rng(1)
    vals = rng.standard_normal((25, 5)).astype(np.float32)
    beh = rng.standard_normal((25, 4)).astype(np.float32)
    path = tmp_path / "s.h5"
    with SessionWriter(path, info, stimulus_shape=(36, 64)) as w:
        for t in range(25):
            w.append_frame(FluorescenceFrame(t, t + 100, 0, values=vals[t], behaviour=beh[t]))
    assert detect_format(path) == "session"
    src = open_source(path, session_id="again")
    envs, _, stats = replay_in_memory(src)
    frames = frames_of(envs)
    assert envs[0].session_id == "again" and stats.frames_sent == 25
    assert [f.frame_index for f in frames] == list(range(100, 125))
    np.testing.assert_array_equal(np.stack([f.values for f in frames]), vals)
    np.testing.assert_array_equal(np.stack([f.behaviour for f in frames]), beh)


@dataclass
class _Trial:
    trial_id: int
    video: np.ndarray
    behaviour: np.ndarray
    spikes: np.ndarray


def test_sensorium_folder_replays_activity(tmp_path: Path) -> None:
    from rt_decoder.io.sensorium import write_dataset

    rng = np.random.default_rng(2)
    trials = [_Trial(i, rng.uniform(0, 255, (12, 36, 64)).astype(np.float32),
                     rng.standard_normal((12, 4)).astype(np.float32),
                     rng.poisson(0.3, (12, 7)).astype(np.float32)) for i in range(2)]
    root = write_dataset(tmp_path / "ds", trials, roi_ids=np.arange(7) + 10, tiers=["train", "oracle"])
    assert detect_format(root) == "sensorium"
    src = open_source(root)
    assert src.info.is_activity and src.info.n_rois == 7
    envs, _, stats = replay_in_memory(src)
    frames = frames_of(envs)
    info = next(e.body for e in envs if e.kind == P.KIND_SESSION_START)
    assert info.is_activity  # the flag the service honours (deconvolution bypassed)
    assert stats.frames_sent == 24 and all(isinstance(f, ActivityFrame) for f in frames)
    np.testing.assert_array_equal(np.stack([f.values for f in frames]),
                                  np.concatenate([t.spikes for t in trials]))
    assert [f.frame_index for f in frames] == list(range(24))


def test_nwb_file(tmp_path: Path) -> None:
    pynwb = pytest.importorskip("pynwb", reason="pynwb is not installed: NWB replay is optional")
    from datetime import datetime, timezone

    from pynwb.ophys import ImageSegmentation, OpticalChannel, RoiResponseSeries

    nwb = pynwb.NWBFile(session_description="replay test", identifier="id",
                        session_start_time=datetime.now(timezone.utc))
    dev = nwb.create_device(name="scope")
    ch = OpticalChannel(name="ch", description="green", emission_lambda=500.0)
    plane = nwb.create_imaging_plane(name="plane", optical_channel=ch, description="", device=dev,
                                     excitation_lambda=600.0, imaging_rate=30.0, indicator="GCaMP6s",
                                     location="V1")
    seg = ImageSegmentation()
    ps = seg.create_plane_segmentation(description="rois", imaging_plane=plane)
    for i in range(3):
        mask = np.zeros((4, 4))
        mask[i, i] = 1
        ps.add_roi(image_mask=mask)
    mod = nwb.create_processing_module(name="ophys", description="ophys")
    mod.add(seg)
    data = np.random.default_rng(3).standard_normal((20, 3)).astype(np.float32)
    region = ps.create_roi_table_region(description="all", region=[0, 1, 2])
    mod.add(RoiResponseSeries(name="F", data=data, rois=region, unit="a.u.", rate=30.0))
    path = tmp_path / "x.nwb"
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    envs, _, stats = replay_in_memory(open_source(path))
    np.testing.assert_array_equal(np.stack([f.values for f in frames_of(envs)]), data)


def test_unknown_sources_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="empty"):
        detect_format(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataFormatError, match="x.txt"):
        detect_format(tmp_path / "x.txt")
    with pytest.raises(ConfigError, match="nope"):
        open_source(tmp_path, fmt="nope")


# ---------------------------------------------------------------------------- pacing and faults


class FakeClock:
    """Injectable clock: sleep advances time; send times are recorded by the publisher."""

    def __init__(self) -> None:
        self.t = 1_000_000_000

    def __call__(self) -> int:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += int(round(s * 1e9))


class RecordingPublisher:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent: list[tuple[int, int, int]] = []  # (frame_index, acq_ns, send time)
        self._seq = 0

    def start(self) -> None:
        self._seq += 1

    def send_frame(self, values: np.ndarray, frame_index: int, acq_ns: int, behaviour: Any = None) -> None:
        self.sent.append((frame_index, acq_ns, self.clock.t))
        self._seq += 1

    def heartbeat_if_idle(self) -> None:
        pass

    def end(self, n: int) -> None:
        pass


def _source(t: int = 30, rate: float = 10.0) -> ArraySource:
    return ArraySource(SessionInfo("p", np.arange(2), rate), np.zeros((t, 2), np.float32))


@pytest.mark.parametrize("speed", [1.0, 2.0])
def test_absolute_deadline_pacing(speed: float) -> None:
    clock = FakeClock()
    pub = RecordingPublisher(clock)
    Replayer(_source(), pub, ReplaySettings(speed=speed), sleep=clock.sleep, clock_ns=clock).run()
    t0 = pub.sent[0][2]
    period = int(round(1e8 / speed))
    for k, (fi, acq, sent) in enumerate(pub.sent):
        assert fi == k and acq == t0 + k * period and sent == acq  # no drift, sent at the deadline


def test_jitter_is_bounded_and_seeded() -> None:
    def run(seed: int) -> list[int]:
        clock = FakeClock()
        pub = RecordingPublisher(clock)
        Replayer(_source(), pub, ReplaySettings(jitter_ms=5.0, seed=seed), sleep=clock.sleep, clock_ns=clock).run()
        return [sent - acq for _, acq, sent in pub.sent]

    delays = run(3)
    assert all(0 <= d <= 5_000_000 for d in delays) and len(set(delays)) > 10
    assert delays == run(3) and delays != run(4)


def test_drops_are_seq_gaps_and_seeded() -> None:
    src = _source(200)
    envs, sub, stats = replay_in_memory(src, ReplaySettings(speed=0, drop_rate=0.2, seed=5))
    frames = frames_of(envs)
    assert stats.frames_dropped + stats.frames_sent == 200 and 20 < stats.frames_dropped < 60
    assert len(frames) == stats.frames_sent
    assert sub.counters.missing == stats.frames_dropped  # the subscriber sees each drop as a lost message
    _, _, again = replay_in_memory(src, ReplaySettings(speed=0, drop_rate=0.2, seed=5))
    assert again.frames_dropped == stats.frames_dropped


def test_loop_keeps_frame_indices_increasing() -> None:
    envs, _, stats = replay_in_memory(_source(10), ReplaySettings(speed=0, loop=True, max_frames=25))
    assert [f.frame_index for f in frames_of(envs)] == list(range(25))
    assert stats.loops == 2


def test_settings_are_validated() -> None:
    for kw in ({"speed": -1.0}, {"drop_rate": 1.0}, {"jitter_ms": -2.0}, {"max_frames": -1}):
        with pytest.raises(ConfigError):
            ReplaySettings(**kw)


def test_replay_cli_streams_a_suite2p_folder_to_a_subscriber(tmp_path: Path) -> None:
    from streaming.transport import StreamSubscriber

    F, Fneu, iscell = write_suite2p(tmp_path / "s2p", t=30)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    sub = StreamSubscriber(addr, bind=True)
    # a bound SUB only sends its subscription while its thread uses the socket: receive
    # while the replay runs (as the service's receiver thread does)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "replay", str(tmp_path / "s2p"), "--connect", addr,
         "--fs", "30", "--speed", "0", "--wait-s", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    envs = []
    try:
        while (env := sub.recv(30_000)) is not None:
            envs.append(env)
            if env.kind == P.KIND_SESSION_END:
                break
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        sub.close()
    assert proc.returncode == 0, err
    frames = frames_of(envs)
    keep = iscell[:, 0] > 0.5
    assert len(frames) == 30
    np.testing.assert_array_equal(np.stack([f.values for f in frames]), (F - 0.7 * Fneu)[keep].T.astype(np.float32))
    assert '"frames_sent": 30' in out


# ---------------------------------------------------------------------------- real datasets


def _sensorium(root: Path, n: int = 7, t: int = 12) -> list[_Trial]:
    from rt_decoder.io.sensorium import write_dataset

    rng = np.random.default_rng(5)
    trials = [_Trial(i, rng.uniform(0, 255, (t, 36, 64)).astype(np.float32),
                     rng.standard_normal((t, 4)).astype(np.float32),
                     rng.poisson(0.3, (t, n)).astype(np.float32)) for i in range(3)]
    write_dataset(root, trials, roi_ids=np.arange(n) + 10, tiers=["train", "oracle", "final_test_main"])
    return trials


def test_sensorium_trial_selection_and_frame_count(tmp_path: Path) -> None:
    trials = _sensorium(tmp_path / "ds")
    src = open_source(tmp_path / "ds", trials=[2, 0])
    assert src.trial_ids == [2, 0] and src.n_frames == 24  # type: ignore[attr-defined]
    envs, _, _ = replay_in_memory(src)
    np.testing.assert_array_equal(np.stack([f.values for f in frames_of(envs)]),
                                  np.concatenate([trials[2].spikes, trials[0].spikes]))
    assert open_source(tmp_path / "ds", tier="oracle").trial_ids == [1]  # type: ignore[attr-defined]
    assert open_source(tmp_path / "ds").n_frames == 36
    with pytest.raises(ConfigError, match=r"no trial\(s\) \[9\]"):
        open_source(tmp_path / "ds", trials=[9])
    with pytest.raises(ConfigError, match="not in tier 'oracle'"):
        open_source(tmp_path / "ds", trials=[0], tier="oracle")
    with pytest.raises(DataFormatError, match="no trials in tier 'live_test_main'"):
        open_source(tmp_path / "ds", tier="live_test_main")
    write_suite2p(tmp_path / "s2p")
    with pytest.raises(ConfigError, match="select trials of a Sensorium folder"):
        open_source(tmp_path / "s2p", fs=30.0, trials=[0])


def test_replay_publishes_the_stimulus_and_the_sink_scores_it(tmp_path: Path) -> None:
    """Replay carries the true stimulus as the rig does: a sink scores replayed sessions."""
    from rt_decoder.messages import DecodedFrame
    from streaming.sink import SinkCollector, SinkSettings

    trials = _sensorium(tmp_path / "ds", t=40)
    envs, _, _ = replay_in_memory(open_source(tmp_path / "ds", trials=[0, 1]))
    kinds = [e.kind for e in envs if e.kind in (P.KIND_ACTIVITY, P.KIND_STIMULUS)]
    assert kinds == [P.KIND_ACTIVITY, P.KIND_STIMULUS] * 80  # each frame, then its stimulus
    stims = [e.body for e in envs if e.kind == P.KIND_STIMULUS]
    video = np.concatenate([trials[0].video, trials[1].video])
    assert [s.frame_index for s in stims] == list(range(80))
    np.testing.assert_array_equal(np.stack([s.image for s in stims]), video)
    c = SinkCollector(SinkSettings(skip_frames=10, max_lag_frames=2))
    for env in envs:
        c.on_source(env, 0)
    start = next(e for e in envs if e.kind == P.KIND_SESSION_START)
    c.on_output(start, 0)
    for i in range(80):  # a decoder that outputs a noisy copy of the truth
        img = video[i] + np.random.default_rng(i).normal(0, 30, video[i].shape).astype(np.float32)
        c.on_output(P.decode(P.encode_decoded(DecodedFrame(i, i, 0, image=img), "x")), 0)
    m = c.finish().metrics
    assert m["frames"]["stimulus"] == 80 and m["correlation"]["video_corr"] > 0.8
    envs, _, _ = replay_in_memory(open_source(tmp_path / "ds"), ReplaySettings(speed=0, send_stimulus=False))
    assert not any(e.kind == P.KIND_STIMULUS for e in envs)


def test_suite2p_roi_ids_and_the_model_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main
    from rt_decoder.encoder.synthetic import write_random_model
    from streaming.replay import check_model_coverage

    write_suite2p(tmp_path / "s2p")  # iscell keeps rows 0, 2, 3, 5
    model = write_random_model(tmp_path / "model", n_neurons=4)  # neuron ids 1000..1003
    np.save(tmp_path / "ids.npy", np.array([1000, 9, 1001, 1002, 8, 1003]))
    src = open_source(tmp_path / "s2p", fs=30.0, roi_ids_file=tmp_path / "ids.npy")
    assert list(src.info.roi_ids) == [1000, 1001, 1002, 1003]
    assert check_model_coverage(src.info, model) == (4, 4)
    np.save(tmp_path / "short.npy", np.array([1, 2]))
    with pytest.raises(DataFormatError, match="2 ROI ids for 6 ROIs"):
        open_source(tmp_path / "s2p", fs=30.0, roi_ids_file=tmp_path / "short.npy")
    # without the ids the ROIs are 0..N-1: the model's neurons are not there, and replay says so
    argv = ["replay", str(tmp_path / "s2p"), "--fs", "30", "--model", str(model), "--bind", "tcp://127.0.0.1:1",
            "--wait-s", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "contain only 0 of the 4 neurons of the model" in err and "--roi-ids FILE.npy" in err


def test_replay_banner_counts_sensorium_frames_and_trials(tmp_path: Path) -> None:
    _sensorium(tmp_path / "ds")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    proc = subprocess.run([sys.executable, "-m", "cli", "replay", str(tmp_path / "ds"), "--bind", addr,
                           "--speed", "0", "--wait-s", "0", "--tier", "train"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(7 ROIs, 1 trial(s), 12 frames at 30 Hz, activity, with stimulus)" in proc.stderr
    assert "-1 frames" not in proc.stderr


def test_replayed_sensorium_session_is_scored_by_the_sink(tmp_path: Path) -> None:
    """rt-decoder replay (a process) sends the stimulus over ZeroMQ as the rig does, so the
    sink scores the decoded frames against it (here a stand-in decoder: the true frame plus
    noise). The whole chain replay -> serve -> sink with the demo model: README, replay."""
    from rt_decoder.messages import DecodedFrame
    from streaming.sink import SinkCollector, SinkSettings
    from streaming.transport import StreamSubscriber

    trials = _sensorium(tmp_path / "ds", t=30)
    true = np.concatenate([trials[1].video, trials[2].video])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    sub = StreamSubscriber(addr)
    proc = subprocess.Popen([sys.executable, "-m", "cli", "replay", str(tmp_path / "ds"), "--bind", addr,
                             "--trials", "1,2", "--speed", "0", "--wait-s", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    c = SinkCollector(SinkSettings(skip_frames=0, timeout_s=120.0))
    rng = np.random.default_rng(0)
    k = 0
    try:
        while (env := sub.recv(60_000)) is not None:
            c.on_source(env, 0)
            if env.kind == P.KIND_SESSION_START and k == 0:
                c.on_output(env, 0)
            if env.kind == P.KIND_ACTIVITY:
                fi = env.body.frame_index
                img = true[fi] + rng.normal(0, 30, true[fi].shape).astype(np.float32)
                c.on_output(P.decode(P.encode_decoded(DecodedFrame(k, fi, 0, image=img), "x")), 0)
                k += 1
            if env.kind == P.KIND_SESSION_END:
                break
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
    assert proc.returncode == 0, err
    m = c.finish().metrics
    assert k == 60 and m["frames"]["stimulus"] == 60 and m["frames"]["matched"] == 60
    assert m["correlation"]["video_corr"] > 0.8 and "why_none" not in m["correlation"]


def test_make_publisher_follows_the_address_policy() -> None:
    """`replay --allow-non-loopback` reaches the publisher: a non-loopback bind works with it
    and is refused without it."""
    from rt_decoder.errors import ConfigError
    from rt_decoder.messages import SessionInfo
    from streaming.replay import make_publisher

    info = SessionInfo("policy", np.arange(3), 30.0)
    with pytest.raises(ConfigError, match="not loopback"):
        make_publisher("tcp://0.0.0.0:*", info, bind=True)
    pub = make_publisher("tcp://0.0.0.0:*", info, bind=True, allow_non_loopback=True)
    try:
        assert pub.address.startswith("tcp://0.0.0.0:")
    finally:
        pub.close()
