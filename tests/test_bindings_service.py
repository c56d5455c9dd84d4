"""The C publisher feeds the live service itself (not just a subscriber): its frames are
received, deconvolved and published by ``DecoderService`` with nothing lost or rejected."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import zmq

from streaming import protocol as P
from streaming.config import config_from_dict
from streaming.service import DecoderService, State
from tests.test_bindings_c import example, run_example  # noqa: F401  (module fixture)


def _tcp() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_c_publisher_to_the_service(example) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    n_rois, n_frames = 200, 80
    in_addr, out_addr = _tcp(), _tcp()
    cfg = config_from_dict({
        "input": {"address": in_addr, "bind": True},
        "output": {"address": out_addr, "heartbeat_every_s": 0.1},
        "status": {"address": "", "status_line_every_s": 0.0},
        "pipeline": {"warmup_rois": 8},
        "deconv": {"init_frames": 30},
        "reconstruction": {"enabled": False},
    })
    svc = DecoderService(cfg, None, log=lambda s: None)
    rc: list[int] = []
    thread = threading.Thread(target=lambda: rc.append(svc.run()), daemon=True)
    thread.start()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(out_addr)
    frames = []
    try:
        deadline = time.monotonic() + 60
        while svc.state not in (State.READY, State.RUNNING) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sub.poll(20_000), "no heartbeat from the service's output"
        proc = run_example(example, in_addr, "--rois", str(n_rois), "--frames", str(n_frames), "--sid", "c-svc",
                           "--rate", "100", "--paced", "--wait-ms", "500")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not frames or frames[-1].frame_index < n_frames - 1):
            if sub.poll(100):
                env = P.decode(sub.recv_multipart())
                if env.kind == P.KIND_ACTIVITY:
                    frames.append(env.body)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        svc.request_stop("test")
        thread.join(30)
        sub.close(linger=0)
        ctx.term()
    assert rc == [0]
    assert [f.frame_index for f in frames] == list(range(n_frames))
    assert all(f.values.shape == (n_rois,) for f in frames)
    snap = svc.metrics.snapshot()
    assert snap["counters"].get("frames_received") == n_frames
    assert snap["malformed_total"] == 0 and snap["counters"].get("frames_missing", 0) == 0
    names = [name for name, _ in frames[-1].stamps]
    assert {"rx", "decode", "deconv", "tx"} <= set(names)


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
