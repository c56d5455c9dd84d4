"""The C publisher (bindings/c): built with `make bindings-c`, its example program
publishes to a real pyzmq subscriber that decodes with streaming.protocol; every
received value equals what the C side computed (bit for bit)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from bindings.testing import REPO_ROOT, CollectingSubscriber, ensure_system_packages
from rt_decoder.messages import FluorescenceFrame, SessionInfo

EXAMPLE = REPO_ROOT / "build" / "bindings" / "c" / "rt_publisher_example"


@pytest.fixture(scope="module")
def example() -> Path:
    reason = ensure_system_packages("libzmq3-dev", "pkg-config", "gcc", "make")
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(["make", "-s", "bindings-c"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert EXAMPLE.exists()
    return EXAMPLE


def expected_values(frame: int, n_rois: int) -> np.ndarray:
    i = np.arange(n_rois, dtype=np.int64)
    num = ((frame * 7919 + i * 104729) % 100003).astype(np.float32)
    return num / np.float32(7.0) - np.float32(1000.0)


def run_example(example: Path, address: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(example), address, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_c_example_frames_decode_exactly(example: Path) -> None:
    n_rois, n_frames = 300, 40
    with CollectingSubscriber() as sub:
        proc = run_example(example, sub.address, "--rois", str(n_rois), "--frames", str(n_frames),
                           "--sid", "c-test-session", "--rate", "29.5")
        envs = sub.collect(timeout_s=20, idle_check=lambda: proc.poll() is not None)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert sub.n_malformed == 0, sub.errors
    kinds = [e.kind for e in envs]
    assert kinds == ["session_start"] + ["frame"] * n_frames + ["heartbeat", "session_end"]
    assert [e.seq for e in envs] == list(range(len(envs)))
    assert {e.session_id for e in envs} == {"c-test-session"}
    info = envs[0].body
    assert isinstance(info, SessionInfo)
    assert info.n_rois == n_rois and info.frame_rate_hz == 29.5 and info.plane == 0
    np.testing.assert_array_equal(info.roi_ids, 1000 + np.arange(n_rois))
    assert info.roi_centres_px is not None
    np.testing.assert_array_equal(info.roi_centres_px[:, 0], np.arange(n_rois, dtype=np.float32) * 0.5)
    assert info.stimulus_shape == (36, 64) and info.source == "c-example" and not info.is_activity
    for f, env in enumerate(envs[1:-2]):
        frame = env.body
        assert isinstance(frame, FluorescenceFrame)
        assert frame.frame_index == f and frame.acq_ns == 1_000_000 * f + 17 and env.t_ns == frame.acq_ns
        assert frame.values.dtype == np.float32
        assert frame.values.tobytes() == expected_values(f, n_rois).tobytes()
        assert frame.behaviour is not None
        np.testing.assert_array_equal(frame.behaviour, np.array([f, -f, 0.5, 0.25], np.float32))
    assert envs[-1].body.n_frames == n_frames  # type: ignore[union-attr]
    assert "sent 40 frames of 300 ROIs" in out


def test_c_example_rejects_bad_endpoint(example: Path) -> None:
    proc = subprocess.run([str(example), "nonsense://x", "--frames", "1", "--wait-ms", "0"],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1
    assert "cannot connect nonsense://x" in proc.stderr
