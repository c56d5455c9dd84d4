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
                       ({"trials": "1", "heldout": True}, "exclude"), ({"lead_trials": -1}, "--lead-trials"),
                       ({"lead_trials": 3, "buffer_trials": 2}, "--buffer-trials"),
                       ({"buffer_trials": 0}, "--buffer-trials")):
        with pytest.raises(ConfigError, match=match):
            RigStreamSettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="exactly one"):
        run_rig_stream(RigStreamSettings(), bind="tcp://127.0.0.1:*", connect="tcp://127.0.0.1:1")


def _run_slow_rig(monkeypatch: pytest.MonkeyPatch, *, lead_trials: int, trials: int,
                  delay_s: float) -> dict[str, object]:
    """The rig in this process at 240 Hz (a 300-frame trial lasts 1.25 s), its generator
    worker sleeping ``delay_s`` before each trial: slower than real time when delay_s > 1.25."""
    from bindings.virtual_rig import RigStreamSettings, run_rig_stream

    monkeypatch.setenv("RT_DECODER_RIG_TEST_GENERATION_DELAY_S", str(delay_s))
    s = RigStreamSettings(neurons=N, seed=SEED, frames=300 * trials, frame_rate_hz=240.0, send_stimulus=False,
                          quiet=True, report_every_s=0.0, lead_trials=lead_trials,
                          buffer_trials=max(lead_trials, 4))
    return run_rig_stream(s, bind="tcp://127.0.0.1:*")


def test_a_slow_generator_never_makes_the_rig_late_once_the_lead_is_buffered(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 s per 1.25 s trial: slower than real time. 3 trials are generated before the first
    # frame; the 4th is generated while the first three stream and is ready before its deadline.
    summary = _run_slow_rig(monkeypatch, lead_trials=3, trials=4, delay_s=2.0)
    assert summary["frames_sent"] == 1200
    assert summary["lead_frames"] == 900 and summary["lead_filled_frames"] == 900
    assert summary["buffer_capacity_frames"] == 1200
    assert summary["generator_underruns"] == 0
    assert summary["buffer_min_frames"] is not None and summary["buffer_min_frames"] > 0  # type: ignore[operator]
    assert summary["send_lateness_ms_p50"] == summary["send_lateness"]["median_ms"]  # type: ignore[index]


def test_without_a_lead_the_same_slow_generator_underruns_and_the_summary_says_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the old behaviour (stream as soon as the first trial exists): trial 2 is needed 1.25 s
    # after the first frame but is generated 2 s after it: its first ~170 frames are underruns
    summary = _run_slow_rig(monkeypatch, lead_trials=0, trials=2, delay_s=2.0)
    assert summary["frames_sent"] == 600 and summary["lead_frames"] == 0
    assert summary["generator_underruns"] >= 100  # type: ignore[operator]  # about 170 at 240 Hz
    assert summary["real_time"] is False and "generator underruns" in str(summary["real_time_reason"])


def test_rig_real_time_judgement() -> None:
    from bindings.virtual_rig import rig_real_time

    assert rig_real_time(0, 0.2, 30.0) == (True, "")
    ok, why = rig_real_time(0, 20.0, 30.0)  # half a period at 30 Hz is 16.7 ms
    assert not ok and "send lateness p99 20.0 ms" in why
    ok, why = rig_real_time(3, float("nan"), 30.0)
    assert not ok and why.startswith("3 frame(s) not generated")
