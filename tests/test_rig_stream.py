"""The virtual rig streamed over loopback to real subscriber processes: no gaps, right content."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bindings.virtual_rig import DeadlinePacer, trial_plan
from rt_decoder.errors import ConfigError
from rt_decoder.io.session_file import read_session
from rt_decoder.messages import FluorescenceFrame, SessionInfo
from rt_decoder.sim import RigConfig, VirtualRig
from streaming import protocol as P
from streaming.transport import StreamSubscriber

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "cli"]
N, FRAMES, SEED = 24, 40, 3


def _start_rig(*extra: str) -> tuple[subprocess.Popen[str], str]:
    rig = subprocess.Popen(CLI + ["rig", "--bind", "tcp://127.0.0.1:*", "--neurons", str(N), "--seed", str(SEED),
                                  "--frames", str(FRAMES), "--wait-subscribers", "1", "--wait-timeout-s", "60",
                                  "--report-every-s", "0", *extra],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert rig.stdout is not None
    for line in rig.stdout:
        m = re.search(r"publishing on (\S+)", line)
        if m:
            return rig, m.group(1)
    rig.wait()
    pytest.fail(f"rig did not start: {rig.stderr.read() if rig.stderr else ''}")


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def test_listen_process_receives_every_frame_without_gaps() -> None:
    rig, address = _start_rig("--trials", "2,5")
    listen = subprocess.Popen(CLI + ["listen", "--connect", address, "--timeout-s", "60", "--report-every-s", "0"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rc_l, out_l, err_l = _finish(listen, 90)
    rc_r, out_r, err_r = _finish(rig, 30)
    assert rc_l == 0 and rc_r == 0, (err_l, err_r)
    summary = json.loads(out_l.strip().splitlines()[-1])
    assert summary["frames"] == FRAMES and summary["ended"]
    assert (summary["first_frame"], summary["last_frame"], summary["missing_frames"]) == (0, FRAMES - 1, 0)
    c = summary["counters"]
    assert c["missing"] == 0 and c["malformed"] == 0 and c["sessions"] == 1
    assert c["by_kind"]["frame"] == FRAMES and c["by_kind"]["stimulus"] == FRAMES
    assert summary["n_rois"] == N and "session rig-" in out_l
    sent = json.loads(out_r.strip().splitlines()[-1])
    assert sent["frames_sent"] == FRAMES and sent["messages_sent"] == c["received"]  # every message arrived


def test_stream_content_matches_the_virtual_rig_and_the_recording(tmp_path: Path) -> None:
    record = tmp_path / "rig.h5"
    rig, address = _start_rig("--heldout", "--n-trials", "7", "--record", str(record), "--session-id", "t-1")
    frames: list[FluorescenceFrame] = []
    stimuli: dict[int, np.ndarray] = {}
    trials: set[int] = set()
    with StreamSubscriber(address) as sub:
        info = None
        while True:
            env = sub.recv(60_000)
            assert env is not None, "stream stalled"
            if isinstance(env.body, SessionInfo):
                info = env.body
                assert env.ext.get("x-clock") == "monotonic"
            elif isinstance(env.body, FluorescenceFrame):
                frames.append(env.body)
                trials.add(env.ext["x-trial"])
            elif isinstance(env.body, P.StimulusFrame):
                stimuli[env.body.frame_index] = np.array(env.body.image)
            elif env.kind == P.KIND_SESSION_END:
                break
        counters = sub.counters
    rc, _, err = _finish(rig)
    assert rc == 0, err
    assert counters.missing == 0 and counters.malformed == 0
    assert info is not None and info.session_id == "t-1" and info.n_rois == N and info.source == "virtual-rig"
    assert [f.frame_index for f in frames] == list(range(FRAMES)) and trials == {7}  # held-out: ids from n_trials
    acq = np.array([f.acq_ns for f in frames])
    assert np.all(np.diff(acq) > 0)
    ref = VirtualRig(RigConfig(n_neurons=N, seed=SEED, n_trials=7))
    np.testing.assert_array_equal(info.roi_ids, ref.roi_ids)
    for f, (fi, stim, fluo, beh) in zip(frames, ref.stream([7])):
        assert f.frame_index == fi
        np.testing.assert_array_equal(f.values, fluo)
        np.testing.assert_array_equal(f.behaviour, beh)
        np.testing.assert_array_equal(stimuli[fi], stim)
    rec = read_session(record)
    assert rec.complete and rec.n_frames == FRAMES and rec.info.session_id == "t-1"
    np.testing.assert_array_equal(rec.values, np.stack([f.values for f in frames]))
    np.testing.assert_array_equal(rec.acq_ns, acq)
    np.testing.assert_array_equal(rec.seq, [f.seq for f in frames])
    assert rec.stimulus is not None
    np.testing.assert_array_equal(rec.stimulus, np.stack([stimuli[i] for i in range(FRAMES)]))


def test_deadlines_are_absolute() -> None:
    pacer = DeadlinePacer(30.0, t0_ns=1_000)
    assert pacer.deadline(0) == 1_000
    assert pacer.deadline(30 * 3600) == 1_000 + 3600 * 10**9  # one hour later, to the nanosecond
    steps = np.diff([pacer.deadline(k) for k in range(1000)])
    assert steps.min() >= 33_333_333 and steps.max() <= 33_333_334
    with pytest.raises(ConfigError):
        DeadlinePacer(0.0, 0)


def test_trial_plans() -> None:
    take = lambda it, n: [next(it) for _ in range(n)]  # noqa: E731
    assert take(trial_plan(None, True, 20), 3) == [20, 21, 22]
    assert take(trial_plan("4, 1", False, 20), 5) == [4, 1, 4, 1, 4]
    assert take(trial_plan(None, False, 3), 4) == [0, 1, 2, 0]
    for bad in ("a,b", "-1", ","):
        with pytest.raises(ConfigError, match="trials"):
            trial_plan(bad, False, 20)


def test_rig_stream_settings_are_validated_at_construction() -> None:
    from bindings.virtual_rig import RigStreamSettings, run_rig_stream

    assert RigStreamSettings().frame_rate_hz == 30.0
    for bad, match in (({"frames": -1}, "--frames"), ({"neurons": 0}, "--neurons"),
                       ({"frame_rate_hz": 0.0}, "--fs"), ({"trials": "x"}, "trials"),
                       ({"trials": "1", "heldout": True}, "exclude")):
        with pytest.raises(ConfigError, match=match):
            RigStreamSettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="exactly one"):
        run_rig_stream(RigStreamSettings(), bind="tcp://127.0.0.1:*", connect="tcp://127.0.0.1:1")
