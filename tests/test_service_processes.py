"""The service as a real process: rig -> serve -> subscriber, SIGTERM drain, SIGKILL recording."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from rt_decoder.messages import SessionInfo, now_ns
from streaming import protocol as P

TIMEOUT_S = 120.0


def tcp() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def write_config(path: Path, text: str) -> Path:
    """These tests exercise the service's plumbing with small synthetic populations: no
    reconstruction (the end-to-end test with the demo model lives in test_demo/test_recon_service)."""
    if "[reconstruction]" not in text:
        text += "\n[reconstruction]\nenabled = false\n"
    path.write_text(text)
    return path


def serve(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cli", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_rig_to_serve_to_subscriber_and_sigterm_drain(tmp_path: Path) -> None:
    from rt_decoder.io.session_file import read_session

    rig_addr, out_addr, status_addr = tcp(), tcp(), tcp()
    n_frames, n_rois = 150, 300
    summary = tmp_path / "summary.json"
    cfg = write_config(tmp_path / "serve.toml", f"""
[input]
address = "{rig_addr}"
bind = false
[output]
address = "{out_addr}"
heartbeat_every_s = 0.2
[status]
address = "{status_addr}"
publish_every_s = 0.2
status_line_every_s = 1.0
summary_json = "{summary}"
[recording]
enabled = true
directory = "{tmp_path / 'rec'}"
[deconv]
init_frames = 60
""")
    ctx = zmq.Context()
    sink = ctx.socket(zmq.SUB)
    sink.setsockopt(zmq.SUBSCRIBE, b"")
    sink.connect(out_addr)
    status = ctx.socket(zmq.SUB)
    status.setsockopt(zmq.SUBSCRIBE, b"")
    status.connect(status_addr)
    srv = serve(cfg)
    # PUB/SUB slow joiner: start the source only once our subscription to the service's
    # output is in place (its idle heartbeats reach us)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and not sink.poll(200):
        assert srv.poll() is None, srv.communicate()[1]
    assert P.decode(sink.recv_multipart()).kind in (P.KIND_HEARTBEAT, P.KIND_SESSION_START)
    rig = subprocess.Popen(
        [sys.executable, "-m", "cli", "rig", "--bind", rig_addr, "--neurons", str(n_rois),
         "--frames", str(n_frames), "--fs", "60", "--session-id", "e2e", "--wait-subscribers", "1",
         "--wait-timeout-s", "100", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    frames: list[Any] = []
    states: list[str] = []
    try:
        deadline = time.monotonic() + TIMEOUT_S
        poller = zmq.Poller()
        poller.register(sink, zmq.POLLIN)
        poller.register(status, zmq.POLLIN)
        while time.monotonic() < deadline and (not frames or frames[-1].frame_index < n_frames - 1):
            for sock, _ in poller.poll(100):
                env = P.decode(sock.recv_multipart())
                if env.kind == P.KIND_ACTIVITY:
                    frames.append(env.body)
                elif env.kind == P.KIND_STATUS and (not states or states[-1] != env.body.state):
                    states.append(env.body.state)
            assert srv.poll() is None, srv.communicate()[1]
        rig_out, rig_err = rig.communicate(timeout=TIMEOUT_S)
        assert rig.returncode == 0, rig_err
        srv.send_signal(signal.SIGTERM)
        _, err = srv.communicate(timeout=TIMEOUT_S)
        while status.poll(500):
            env = P.decode(status.recv_multipart())
            if env.kind == P.KIND_STATUS and states[-1] != env.body.state:
                states.append(env.body.state)
    finally:
        for p in (rig, srv):
            if p.poll() is None:
                p.kill()
                p.communicate()
        sink.close(linger=0)
        status.close(linger=0)
        ctx.term()
    assert srv.returncode == 0, err
    # every frame the rig sent came out, deconvolved, in order, with every stage stamp
    assert [f.frame_index for f in frames] == list(range(n_frames))
    assert all(f.values.shape == (n_rois,) for f in frames)
    assert [n for n, _ in frames[-1].stamps] == ["rx", "decode", "deconv", "recon", "tx"]
    assert np.any(np.stack([f.values for f in frames[70:]]) > 0)  # real activity after the initial batch
    assert "RUNNING" in states and states[-2:] == ["DRAINING", "STOPPED"]
    assert "RUNNING" in err and "STOPPED" in err
    data = json.loads(summary.read_text())
    c = data["counters"]
    assert c["frames_received"] == c["frames_published"] == n_frames
    assert c["messages_lost"] == 0 and c["frames_missing"] == 0 and data["malformed_total"] == 0
    assert data["notes"]["stop_reason"] == "SIGTERM"
    assert data["latency_ms"]["service"]["count"] == n_frames
    assert sum(data["histogram"]["e2e"]) == n_frames
    rec = read_session(tmp_path / "rec" / "e2e.h5")
    assert rec.n_frames == n_frames and list(rec.frame_index) == list(range(n_frames))
    assert rec.stimulus is not None and np.isfinite(rec.stimulus[:-1]).all()  # stimulus messages recorded too


def test_sigkill_leaves_a_readable_recording_missing_at_most_the_last_second(tmp_path: Path) -> None:
    from rt_decoder.io.session_file import read_session
    from streaming.transport import StreamPublisher

    src_addr = tcp()
    cfg = write_config(tmp_path / "serve.toml", f"""
[input]
address = "{src_addr}"
[output]
address = "{tcp()}"
[status]
address = ""
status_line_every_s = 0
[recording]
enabled = true
directory = "{tmp_path / 'rec'}"
flush_every_s = 0.5
""")
    rate_hz, n = 100.0, 40
    info = SessionInfo("killed", np.arange(n), rate_hz, source="test")
    ctx = zmq.Context()
    pub = StreamPublisher(src_addr, info, bind=True, context=ctx)
    srv = serve(cfg)
    sent: list[np.ndarray] = []
    rng = np.random.default_rng(0)
    try:
        assert pub.wait_for_subscribers(1, timeout_s=TIMEOUT_S), "serve never subscribed"
        time.sleep(0.2)
        t0 = time.monotonic()
        k = 0
        while time.monotonic() - t0 < 3.0:
            v = (100 + rng.standard_normal(n)).astype(np.float32)
            pub.send_frame(v, k, now_ns())
            sent.append(v)
            k += 1
            time.sleep(max(0.0, t0 + k / rate_hz - time.monotonic()))
        os.kill(srv.pid, signal.SIGKILL)
        srv.communicate(timeout=TIMEOUT_S)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.communicate()
        pub.close()
        ctx.term()
    rec = read_session(tmp_path / "rec" / "killed.h5")
    assert not rec.complete
    assert len(sent) - rec.n_frames <= rate_hz * 1.0, (len(sent), rec.n_frames)
    np.testing.assert_array_equal(rec.frame_index, np.arange(rec.n_frames))
    np.testing.assert_array_equal(rec.values, np.stack(sent[:rec.n_frames]))
