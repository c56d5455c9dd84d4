"""The demo sink: bookkeeping on hand-made envelopes, and the CLI on real loopback sockets."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rt_decoder.errors import ConfigError
from rt_decoder.messages import ActivityFrame, DecodedFrame, SessionInfo
from streaming import protocol as P
from streaming.sink import SinkCollector, SinkSettings, format_summary, load_eval_mask, run_sink

H, W = 36, 64
MS = 1_000_000  # ns


def movie(n: int, seed: int = 0) -> np.ndarray:
    """(n, H, W) smooth random frames in 0..255 (distinct frames: correlation picks the lag)."""
    rng = np.random.default_rng(seed)
    return np.clip(128 + 60 * rng.standard_normal((n, H, W)), 0, 255).astype(np.float32)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def info(sid: str = "s1", n: int = 5, activity: bool = False) -> SessionInfo:
    return SessionInfo(sid, np.arange(n), 30.0, is_activity=activity)


def env(parts: list[Any]) -> P.Envelope:
    return P.decode(parts)


def stamps_for(acq: int) -> tuple[tuple[str, int], ...]:
    """rx 1 ms after acquisition, then 0.1 / 2 / 5 / 0.2 ms per stage."""
    rx = acq + 1 * MS
    return (("rx", rx), ("decode", rx + MS // 10), ("deconv", rx + MS // 10 + 2 * MS),
            ("recon", rx + MS // 10 + 7 * MS), ("tx", rx + MS // 10 + 7 * MS + MS // 5))


def feed(c: SinkCollector, true: np.ndarray, decoded: dict[int, np.ndarray], *, monotonic: bool = True,
         acq0: int = 10**12, sink_delay_ns: int = 3 * MS, activity: bool = False) -> None:
    ext = {"x-clock": "monotonic"} if monotonic else {}
    c.on_source(env(P.encode_session_start(info(), seq=0, t_ns=acq0, ext=ext)), 0)
    for i in range(true.shape[0]):
        acq = acq0 + i * 33 * MS
        c.on_source(env(P.encode_stimulus("s1", seq=1 + i, t_ns=acq, frame_index=i, image=true[i])), 0)
    c.on_output(env(P.encode_session_start(info(activity=True), seq=0, t_ns=acq0)), 0)
    for k, (i, img) in enumerate(sorted(decoded.items())):
        acq = acq0 + i * 33 * MS
        st = stamps_for(acq)
        if activity:
            parts = P.encode_activity(ActivityFrame(1 + k, i, acq, stamps=st, values=np.ones(5, np.float32)), "s1")
        else:
            parts = P.encode_decoded(DecodedFrame(1 + k, i, acq, stamps=st, image=img), "s1")
        c.on_output(env(parts), st[-1][1] + sink_delay_ns)


def test_counts_latencies_and_perfect_correlation() -> None:
    true = movie(60)
    c = SinkCollector(SinkSettings(skip_frames=10, max_lag_frames=3))
    feed(c, true, {i: true[i] for i in range(60)})
    m = c.finish().metrics
    assert m["output_kind"] == "decoded" and m["decoded"] and m["note"] == ""
    assert m["frames"] == {"stimulus": 60, "output": 60, "decoded": 60, "activity": 0, "matched": 60,
                           "first_output_index": 0, "last_output_index": 59}
    st, e2e = m["latency_ms"]["stages"], m["latency_ms"]["end_to_end"]
    assert list(st) == ["acq->rx", "rx->decode", "decode->deconv", "deconv->recon", "recon->tx", "tx->sink"]
    for name, want in (("acq->rx", 1.0), ("rx->decode", 0.1), ("decode->deconv", 2.0), ("deconv->recon", 5.0),
                       ("recon->tx", 0.2), ("tx->sink", 3.0)):
        assert st[name]["count"] == 60
        assert st[name]["p50"] == pytest.approx(want, abs=1e-9) and st[name]["max"] == pytest.approx(want, abs=1e-9)
    assert set(e2e) == {"rx->sink", "acq->sink"}
    assert e2e["acq->sink"]["p99"] == pytest.approx(1 + 0.1 + 2 + 5 + 0.2 + 3, abs=1e-9)
    assert e2e["rx->sink"]["p50"] == pytest.approx(0.1 + 2 + 5 + 0.2 + 3, abs=1e-9)
    corr = m["correlation"]
    assert corr["video_corr"] == pytest.approx(1.0, abs=1e-6)
    assert corr["video_corr_full_screen"] == pytest.approx(1.0, abs=1e-6)
    assert corr["best_lag_frames"] == 0 and corr["frames_scored"] == 50
    assert m["gaps"]["output_frames_missing"] == 0 and m["malformed"]["sink_rejected"] == {}
    table = format_summary(m)
    assert "acq->sink" in table and "live video correlation: 1.000" in table


def test_lag_gaps_rejections_and_mask() -> None:
    true = movie(80, seed=1)
    decoded = {i: true[i - 3] for i in range(3, 80) if i not in (40, 41, 42)}  # 3 frames late, 3 missing
    c = SinkCollector(SinkSettings(skip_frames=5, max_lag_frames=6))
    feed(c, true, decoded)
    bad = DecodedFrame(999, 80, 0, stamps=stamps_for(0), image=np.full((H, W), np.nan, np.float32))
    c.on_output(env(P.encode_decoded(bad, "s1")), 0)
    m = c.finish().metrics
    assert m["gaps"]["output_frames_missing"] == 3 + 0  # 40..42 (80 follows 79)
    assert m["malformed"]["sink_rejected"] == {"nonfinite_decoded_image": 1}
    corr = m["correlation"]
    assert corr["best_lag_frames"] == 3 and corr["best_lag_corr"] == pytest.approx(1.0, abs=1e-6)
    assert corr["video_corr"] < 0.5  # at lag 0 the frames are unrelated noise
    mask = np.zeros((H, W), bool)
    mask[10:20, 20:40] = True
    c2 = SinkCollector(SinkSettings(skip_frames=5))
    dec2 = {i: true[i].copy() for i in range(80)}
    for img in dec2.values():
        img[~mask] = 0.0  # wrong outside the mask only
    feed(c2, true, dec2)
    corr2 = c2.finish(eval_mask=mask).metrics["correlation"]
    assert corr2["video_corr"] == pytest.approx(1.0, abs=1e-6) and corr2["video_corr_full_screen"] < 0.9


def test_activity_output_says_nothing_is_decoded_and_unknown_clock_has_no_e2e() -> None:
    true = movie(20)
    c = SinkCollector(SinkSettings())
    feed(c, true, {i: true[i] for i in range(20)}, monotonic=False, activity=True)
    res = c.finish()
    m = res.metrics
    assert m["output_kind"] == "activity" and not m["decoded"] and "nothing decoded" in m["note"]
    assert m["frames"]["activity"] == 20 and m["frames"]["decoded"] == 0
    assert "acq->rx" not in m["latency_ms"]["stages"] and "acq->sink" not in m["latency_ms"]["end_to_end"]
    assert m["latency_ms"]["end_to_end"]["rx->sink"]["count"] == 20
    assert m["correlation"]["video_corr"] is None and res.decoded is None
    assert "nothing decoded" in format_summary(m)


def test_stop_rules_and_status() -> None:
    clock = FakeClock()
    c = SinkCollector(SinkSettings(drain_s=2.0, quiet_s=0.5, timeout_s=100.0), clock_s=clock)
    assert c.stop_reason() == ""
    c.on_status(env(P.encode_status("s1", seq=0, t_ns=0, state="READY", metrics={"counters": {}})), 0)
    c.on_status(env(P.encode_status("s1", seq=1, t_ns=0, state="RUNNING",
                                    metrics={"counters": {"skipped_frames": 4}, "notes": {"reconstruction": "X"}})), 0)
    c.on_source(env(P.encode_session_end("s1", seq=5, t_ns=0, n_frames=7)), 0)
    assert c.stop_reason() == ""  # the output has not ended: keep draining
    clock.t += 1.0
    c.on_output(env(P.encode_session_end("s1", seq=9, t_ns=0, n_frames=7)), 0)
    assert c.stop_reason() == ""  # quiet period
    clock.t += 0.6
    assert c.stop_reason() == "session_end"
    m = c.finish().metrics
    assert m["skips"]["service_skipped_frames"] == 4 and m["skips"]["service_states"] == ["READY", "RUNNING"]
    assert m["skips"]["service_reconstruction"] == "X" and m["source"]["frames_sent"] == 7
    d = SinkCollector(SinkSettings(drain_s=2.0), clock_s=clock)
    d.on_source(env(P.encode_session_end("s1", seq=5, t_ns=0, n_frames=7)), 0)
    clock.t += 2.5
    assert d.stop_reason() == "drain_timeout"
    clock.t += 200
    assert SinkCollector(SinkSettings(max_frames=0, timeout_s=1.0), clock_s=lambda: 0.0).stop_reason() == ""
    e = SinkCollector(SinkSettings(timeout_s=1.0), clock_s=clock)
    clock.t += 1.5
    assert e.stop_reason() == "timeout"


def test_settings_and_mask_file_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="skip_frames"):
        SinkSettings(skip_frames=-1)
    with pytest.raises(ConfigError, match="source_clock"):
        SinkSettings(source_clock="gps")
    good = tmp_path / "alpha.npz"
    mask = np.zeros((H, W), bool)
    mask[3:5, 3:5] = True
    np.savez(good, alpha=mask.astype(np.float32), eval_mask=mask, train_mask=mask)
    assert (load_eval_mask(str(good)) == mask).all()
    bad = tmp_path / "two.npz"
    np.savez(bad, a=mask, b=mask)
    with pytest.raises(ConfigError, match="eval_mask"):
        load_eval_mask(str(bad))
    with pytest.raises(ConfigError, match="cannot read"):
        load_eval_mask(str(tmp_path / "missing.npz"))
    empty = tmp_path / "empty.npz"
    np.savez(empty, eval_mask=np.zeros((H, W), bool))
    with pytest.raises(ConfigError, match="no pixel"):
        load_eval_mask(str(empty))


def test_sink_command_refuses_a_non_loopback_address_unless_allowed(tmp_path: Path, capsys: Any) -> None:
    from cli.main import main

    rc = main(["sink", "--decoded", "tcp://192.0.2.1:5556", "--out", str(tmp_path / "out"), "--no-figures"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--decoded" in err and "not loopback" in err and "--allow-non-loopback" in err


def test_run_sink_loop_on_in_memory_links() -> None:
    from streaming.transport import fake_pair

    true = movie(12)
    src_pub, src_sub, _ = fake_pair(info())
    out_pub, out_sub, out_link = fake_pair(info(activity=True))
    src_pub.start()
    for i in range(12):
        src_pub.send_stimulus(true[i], i, 10**9 + i)
    out_pub.start()
    for i in range(12):
        out_pub.send_decoded(true[i], i, 10**9 + i, stamps_for(10**9 + i))
        if i == 5:
            out_link.inject([b"\x00garbage"])  # a malformed message between frames
    src_pub.end(12)
    out_pub.end(12)
    c = SinkCollector(SinkSettings(skip_frames=2, quiet_s=0.0))
    reason = run_sink(c, {"source": src_sub, "output": out_sub}, wait=lambda ms: time.sleep(ms / 1000))
    assert reason == "session_end"
    m = c.finish(subscriber_counters={"source": src_sub.counters.as_dict(),
                                      "output": out_sub.counters.as_dict()}).metrics
    assert m["frames"]["decoded"] == 12 and m["malformed"]["total"] == 1
    assert m["correlation"]["video_corr"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ConfigError, match="unknown sink stream"):
        run_sink(c, {"bogus": src_sub}, wait=lambda ms: None)


# ---------------------------------------------------------------------------- the CLI, real sockets


def _tcp() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_sink_process_on_loopback_writes_files_and_right_metrics(tmp_path: Path) -> None:
    import zmq

    from rt_decoder.messages import now_ns
    from streaming.transport import StreamPublisher

    src_addr, out_addr, status_addr = _tcp(), _tcp(), _tcp()
    n = 45
    true = movie(n, seed=2)
    mask = np.zeros((H, W), bool)
    mask[5:30, 10:50] = True
    np.savez(tmp_path / "alpha.npz", eval_mask=mask)
    out = tmp_path / "out"
    sink = subprocess.Popen([sys.executable, "-m", "cli", "sink", "--stimulus", src_addr, "--decoded",
                             out_addr, "--status", status_addr, "--out", str(out), "--skip-frames", "5",
                             "--eval-mask", str(tmp_path / "alpha.npz"), "--timeout-s", "90", "--drain-s", "3",
                             "--report-every-s", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    raw_out = ctx.socket(zmq.XPUB)
    raw_out.bind(out_addr)
    src = StreamPublisher(src_addr, info("rig-1"), info_ext={"x-clock": "monotonic"}, context=ctx)
    outp = StreamPublisher(raw_out, info("rig-1", activity=True))  # type: ignore[arg-type]
    status = StreamPublisher(status_addr, info("rig-1"), context=ctx)
    try:
        assert src.wait_for_subscribers(1, 60) and status.wait_for_subscribers(1, 60)
        deadline = time.monotonic() + 60
        while not raw_out.poll(100) and time.monotonic() < deadline:
            pass
        raw_out.recv()  # the sink's subscription to the output
        src.start()
        outp.start()
        status.send_status("RUNNING", {"counters": {"skipped_frames": 2}})
        for i in range(n):
            acq = now_ns() - 20 * MS  # every stamp lies in the past: the spans between them are exact
            src.send_frame(np.ones(5, np.float32), i, acq)  # ignored by the sink
            src.send_stimulus(true[i], i, acq)
            st = (("rx", acq + 1 * MS), ("decode", acq + 2 * MS), ("deconv", acq + 4 * MS), ("recon", acq + 7 * MS),
                  ("tx", acq + 8 * MS))
            if i == 20:
                raw_out.send_multipart([b"not msgpack", b"x"])  # malformed: counted, no crash
            if i != 30:  # one decoded frame never sent: a gap in the output frame indices
                outp.send_decoded(true[i], i, acq, st)
            time.sleep(0.005)
        src.end(n)
        outp.end(n)
        status.send_status("STOPPED", {"counters": {"skipped_frames": 3}})
        stdout, stderr = sink.communicate(timeout=90)
    finally:
        if sink.poll() is None:
            sink.kill()
        src.close()
        outp.close()
        status.close()
        raw_out.close(linger=0)
        ctx.term()
    assert sink.returncode == 0, stderr + stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["stop_reason"] == "session_end" and m["output_kind"] == "decoded"
    assert m["frames"]["stimulus"] == n and m["frames"]["decoded"] == n - 1 and m["frames"]["matched"] == n - 1
    assert m["gaps"]["output_frames_missing"] == 1 and m["gaps"]["output_messages_lost"] == 0
    assert m["malformed"]["total"] == 1 and m["malformed"]["by_stream"]["output"]
    assert m["skips"]["service_skipped_frames"] == 3 and m["skips"]["service_states"][-1] == "STOPPED"
    st = m["latency_ms"]["stages"]
    assert st["acq->rx"]["p50"] == pytest.approx(1.0) and st["rx->decode"]["max"] == pytest.approx(1.0)
    assert st["decode->deconv"]["p50"] == pytest.approx(2.0) and st["recon->tx"]["p99"] == pytest.approx(1.0)
    e2e = m["latency_ms"]["end_to_end"]
    assert 20.0 <= e2e["acq->sink"]["p50"] < 5_000.0 and e2e["acq->sink"]["count"] == n - 1
    assert e2e["rx->sink"]["p50"] == pytest.approx(e2e["acq->sink"]["p50"] - 1.0, abs=1e-6)
    assert st["tx->sink"]["p50"] == pytest.approx(e2e["acq->sink"]["p50"] - 8.0, abs=1e-6)
    assert m["correlation"]["video_corr"] == pytest.approx(1.0, abs=1e-6) and m["correlation"]["eval_mask"]
    assert m["correlation"]["best_lag_frames"] == 0
    for name in ("side_by_side.gif", "latency_hist.png", "summary.png"):
        assert (out / name).stat().st_size > 1000, name
    assert "live video correlation: 1.000" in stdout and "tx->sink" in stdout


class _EchoStage:
    """A stand-in reconstruction stage: 'decodes' frame i as the true stimulus frame i."""

    model_deconv: dict[str, Any] = {}

    def __init__(self, true: np.ndarray) -> None:
        self.true = true

    def reset(self, info: Any) -> None:
        pass

    def warmup(self) -> None:
        pass

    def flush(self) -> list[DecodedFrame]:
        return []

    def stats(self) -> dict[str, Any]:
        return {}

    def __call__(self, frame: ActivityFrame, recent_activity: np.ndarray) -> list[DecodedFrame]:
        return [DecodedFrame(frame.seq, frame.frame_index, frame.acq_ns, stamps=frame.stamps,
                             image=self.true[frame.frame_index])]


def test_sink_on_the_real_service_with_a_stand_in_stage() -> None:
    """Source -> DecoderService (real sockets, deconvolution, slot) -> sink: the real output format."""
    import threading

    from rt_decoder.messages import now_ns
    from streaming.config import config_from_dict
    from streaming.service import DecoderService, State
    from streaming.transport import StreamPublisher, StreamSubscriber

    n, n_rois = 50, 8
    true = movie(n, seed=4)
    src_addr, out_addr, status_addr = _tcp(), _tcp(), _tcp()
    cfg = config_from_dict({
        "input": {"address": src_addr, "bind": False},
        "output": {"address": out_addr, "heartbeat_every_s": 0.2},
        "status": {"address": status_addr, "publish_every_s": 0.2, "status_line_every_s": 0.0},
        "pipeline": {"warmup_rois": 8}, "deconv": {"init_frames": 30}})
    svc = DecoderService(cfg, _EchoStage(true), log=lambda s: None)
    rc: list[int] = []
    thread = threading.Thread(target=lambda: rc.append(svc.run()), daemon=True)
    thread.start()
    src = StreamPublisher(src_addr, info("rig-x", n=n_rois), info_ext={"x-clock": "monotonic"})
    subs = {"source": StreamSubscriber(src_addr), "output": StreamSubscriber(out_addr),
            "status": StreamSubscriber(status_addr)}
    try:
        deadline = time.monotonic() + 60
        while svc.state not in (State.READY, State.RUNNING) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert src.wait_for_subscribers(2, 60)  # the service and the sink
        time.sleep(0.3)  # the sink's connections to the service's output and status
        rng = np.random.default_rng(0)
        for i in range(n):
            acq = now_ns()
            src.send_frame((100 + rng.standard_normal(n_rois)).astype(np.float32), i, acq)
            src.send_stimulus(true[i], i, acq)
            time.sleep(0.02)
        src.end(n)
        c = SinkCollector(SinkSettings(skip_frames=0, timeout_s=60.0))
        reason = run_sink(c, subs, wait=lambda ms: time.sleep(0.002))
        m = c.finish(stop_reason=reason, subscriber_counters={k: v.counters.as_dict() for k, v in subs.items()}).metrics
    finally:
        svc.request_stop("test")
        thread.join(60)
        src.close()
        for sub in subs.values():
            sub.close()
    assert rc == [0] and reason == "session_end"
    skipped = m["skips"]["service_skipped_frames"]  # the slot may skip a frame on a loaded machine
    decoded = m["frames"]["decoded"]
    # the first init_frames - 1 frames are the deconvolution's initial batch, and the frames that
    # arrive while it is estimated off the frame path (at least the one completing it): not reconstructed
    not_ready = 30
    assert m["output_kind"] == "decoded" and decoded + skipped <= n - not_ready and decoded >= n - not_ready - 5
    assert m["frames"]["matched"] == decoded and m["frames"]["stimulus"] == n
    assert list(m["latency_ms"]["stages"]) == ["acq->rx", "rx->decode", "decode->deconv", "deconv->recon",
                                              "recon->tx", "tx->sink"]
    assert all(v["count"] == decoded and v["p50"] >= 0 for v in m["latency_ms"]["stages"].values())
    assert m["gaps"]["output_messages_lost"] == 0 and "RUNNING" in m["skips"]["service_states"]
    assert m["skips"]["service_reconstruction"] == "_EchoStage"
    assert m["correlation"]["video_corr"] == pytest.approx(1.0, abs=1e-6)
