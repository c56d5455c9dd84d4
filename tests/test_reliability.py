"""The reliability battery (issue 15) against a real ``python -m cli serve`` process.

Each test starts ``serve`` with a small config (activity sessions unless said, no
reconstruction, 8 warm-up ROIs, a 30-frame initial deconvolution batch), drives it from a
hand-written publisher on loopback ZeroMQ (``tests._serve.Publisher``: it can forge any
field), reads what came out of the output and status channels and the ``--summary-json``
file, and asserts that nothing valid was lost and that everything else was counted, by the
names docs/protocol.md section 13 gives:

* fuzz: random bytes and random msgpack between valid frames;
* oversized messages in the default layout (the service connects): over the limit
  (``too_large``) and over twice it (ZeroMQ cuts the connection; the input is rebuilt);
* forged session control from a second publisher; takeover only after 2 s of silence;
* a far-ahead frame index, 2^63-1, a confirmed renumbering, a duplicate;
* sequence number 2^64-1 followed by valid frames;
* kill -9 while recording, then plain ``h5py.File(path, "r")``;
* a publisher process killed and restarted (the doc's example sender, twice);
* a slow subscriber on the output (``output_dropped`` = the gaps it sees).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import h5py
import msgpack
import numpy as np
import pytest

from rt_decoder.errors import ProtocolError
from rt_decoder.messages import ActivityFrame, now_ns
from streaming import protocol as P
from tests._serve import ENV, REPO, TIMEOUT_S, Publisher, Serve, doc_example_sender, join_session, plain_open_error

pytestmark = pytest.mark.slow


def local_reason(parts: list[bytes], max_bytes: int) -> str | None:
    """The reason the protocol rejects ``parts`` (None: the message is valid)."""
    try:
        P.decode(parts, max_bytes=max_bytes)
    except ProtocolError as exc:
        return P.error_reason(exc)
    return None


def random_value(rng: np.random.Generator, depth: int = 0) -> Any:
    pick = int(rng.integers(0, 12 if depth < 2 else 9))
    if pick == 0:
        return int(rng.integers(-(2**63), 2**63 - 1))
    if pick == 1:
        return [2**64 - 1, -1, 0, 1, 2**63][int(rng.integers(0, 5))]
    if pick == 2:
        return float(rng.choice([np.nan, np.inf, -1e308, 0.5, 1.0]))
    if pick == 3:
        return "".join(chr(int(c)) for c in rng.integers(32, 0x2FF, int(rng.integers(0, 12))))
    if pick == 4:
        return bytes(rng.integers(0, 256, int(rng.integers(0, 16)), dtype=np.uint8))
    if pick == 5:
        return bool(rng.integers(0, 2))
    if pick == 6:
        return None
    if pick == 7:
        return str(rng.choice(list(P.KINDS) + ["frame ", "", "x"]))
    if pick == 8:
        return 1
    if pick == 9:
        return [random_value(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))]
    if pick == 10:
        return [str(rng.choice(["values", "roi_ids", "x-a"])), str(rng.choice(["<f4", "<i8", ">f4", "f4"])),
                [int(rng.integers(-1, 40))]]
    return {str(random_value(rng, depth + 1)): random_value(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))}


KEYS = ["v", "kind", "sid", "seq", "t_ns", "bufs", "frame", "beh", "stamps", "rate_hz", "plane", "n_rois",
        "activity", "n_frames", "state", "metrics", "x-a", "bogus"]


def garbage(rng: np.random.Generator, n: int, max_bytes: int) -> list[list[bytes]]:
    """``n`` invalid messages: random bytes, random msgpack maps, and valid frames with one
    header byte flipped (each checked invalid by the protocol's own decoder)."""
    valid = P.encode_activity(ActivityFrame(0, 0, 0, values=np.zeros(16, np.float32)), "fuzz")
    valid = [bytes(memoryview(p)) for p in valid]
    out: list[list[bytes]] = []
    while len(out) < n:
        kind = int(rng.integers(0, 3))
        if kind == 0:
            parts = [bytes(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8))
                     for _ in range(int(rng.integers(1, 4)))]
        elif kind == 1:
            header = {str(rng.choice(KEYS)): random_value(rng) for _ in range(int(rng.integers(0, 9)))}
            if rng.random() < 0.5:
                header.update(v=1, kind=str(rng.choice(list(P.KINDS))), sid="fuzz")
            parts = [msgpack.packb(header)] + [bytes(int(rng.integers(0, 80))) for _ in range(int(rng.integers(0, 3)))]
        else:
            head = bytearray(valid[0])
            head[int(rng.integers(0, len(head)))] = int(rng.integers(0, 256))
            parts = [bytes(head), valid[1]]
        if local_reason(parts, max_bytes) is not None:
            out.append(parts)
    return out


# ---------------------------------------------------------------------------- fuzz


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Valid frames interleaved with 3,000 invalid messages, then frames with bad values."""
    tmp_path = tmp_path_factory.mktemp("fuzz")
    max_bytes = 1 << 16
    rng = np.random.default_rng(1501)
    bad = garbage(rng, 3000, max_bytes)
    expected = Counter(local_reason(parts, max_bytes) for parts in bad)
    n_frames = 200
    is_frame = np.zeros(len(bad) + n_frames, bool)
    is_frame[rng.choice(is_frame.size, n_frames, replace=False)] = True
    srv = Serve(tmp_path, {"input": {"max_message_bytes": max_bytes}})
    pub = Publisher(srv.ctx, srv.input_address, bind=True, sid="fuzz", n_rois=16)
    sent: list[np.ndarray] = []
    try:
        srv.start()
        srv.wait_ready()
        join_session(srv, pub)
        it = iter(bad)
        for i, frame in enumerate(is_frame):
            if frame:
                sent.append(pub.frame(len(sent)))
            else:
                pub.send(next(it))
            if i % 100 == 0:
                time.sleep(0.002)
        k = len(sent)
        # bad values: 3 NaN/Inf values (missing samples, the frame goes on), a frame with no
        # finite value and one with the wrong ROI count (both dropped; they reuse index k)
        partial = np.ones(16, np.float32)
        partial[[0, 1, 2]] = [np.nan, np.inf, np.nan]
        pub.frame(k, partial)
        pub.frame(k + 1, np.full(16, np.nan, np.float32))
        pub.frame(k + 1, np.ones(17, np.float32))
        last = pub.frame(k + 1)
        pub.session_end(k + 2)
        srv.wait_output_frames("fuzz", k + 2)
        summary = srv.stop()
    finally:
        pub.close()
        srv.close()
    return {"summary": summary, "expected": expected, "sent": sent, "last": last, "n_frames": n_frames,
            "out": srv.output_frames("fuzz")}


def test_fuzz_every_invalid_message_is_counted_by_reason_and_no_valid_frame_is_lost(fuzz_run: dict[str, Any]) -> None:
    s, expected, n = fuzz_run["summary"], fuzz_run["expected"], fuzz_run["n_frames"]
    out = fuzz_run["out"]
    assert len(expected) >= 5, expected  # the garbage reaches many reasons
    assert [e.body.frame_index for e in out] == list(range(n + 2))
    for e, v in zip(out, fuzz_run["sent"]):
        np.testing.assert_array_equal(e.body.values, v)
    np.testing.assert_array_equal(out[-1].body.values, fuzz_run["last"])
    # the frame with 3 non-finite values went on (published as received: activity, no reconstruction)
    v = out[n].body.values
    assert np.isnan(v[[0, 2]]).all() and np.isposinf(v[1]) and np.isfinite(v[3:]).all()
    c = s["counters"]
    assert c["frames_received"] == c["frames_published"] == n + 2
    assert c["nonfinite_values"] == 3
    malformed = dict(s["malformed"])
    assert malformed.pop("nonfinite") == 1 and malformed.pop("n_rois_mismatch") == 1
    assert malformed == dict(expected)
    assert s["malformed_total"] == sum(expected.values()) + 2
    assert c["sessions_started"] == 1 and c["session_restarts"] == 0 and c["frames_missing"] == 0


def test_a_dropped_nonfinite_frame_is_not_also_counted_as_lost(fuzz_run: dict[str, Any]) -> None:
    assert fuzz_run["summary"]["counters"]["messages_lost"] == 0


# ---------------------------------------------------------------------------- oversized


def test_oversized_messages_in_the_connect_layout_are_counted_and_the_input_recovers(tmp_path: Path) -> None:
    max_bytes = 1 << 16
    srv = Serve(tmp_path, {"input": {"max_message_bytes": max_bytes, "bind": False}})
    pub = Publisher(srv.ctx, srv.input_address, bind=True, sid="big", n_rois=16)  # the source binds

    def big(n_values: int) -> list[Any]:
        return P.encode_activity(ActivityFrame(pub._next(None), 999, now_ns(), values=np.zeros(n_values, np.float32)),
                                 "big")

    try:
        srv.start()
        srv.wait_ready()
        join_session(srv, pub)
        for k in range(20):
            pub.frame(k)
        pub.send(big(3 * max_bytes // 4 // 2))  # 1.5 x the limit: too_large, the connection stays
        for k in range(20, 40):
            pub.frame(k)
        srv.wait_output_frames("big", 40)
        pub.send(big(3 * max_bytes // 4 + 4096))  # a part over 2 x limit + 64 KiB: ZeroMQ cuts the connection
        pub.wait_subscribed(2, TIMEOUT_S)  # the service rebuilt its socket and subscribed again
        m = srv.wait_counter("input_socket_rebuilds", 1)
        assert m["counters"]["input_disconnects"] >= 1
        for k in range(40, 80):
            pub.frame(k)
        pub.session_end(80)
        out = srv.wait_output_frames("big", 80)
        summary = srv.stop()
    finally:
        pub.close()
        srv.close()
    assert [e.body.frame_index for e in out] == list(range(80))
    c = summary["counters"]
    assert c["frames_received"] == c["frames_published"] == 80
    assert summary["malformed"] == {"too_large": 1}
    assert c["messages_lost"] == 2  # the two messages the service could not read, from their seq
    assert c["input_disconnects"] >= 1 and c["input_socket_rebuilds"] >= 1 and c["frames_missing"] == 0


# ---------------------------------------------------------------------------- forged control


def test_forged_session_control_from_a_second_publisher_is_refused_and_counted(tmp_path: Path) -> None:
    from rt_decoder.io.session_file import read_session

    rec = tmp_path / "rec"
    srv = Serve(tmp_path, {"input": {"bind": True}, "recording": {"enabled": True, "directory": str(rec)}})
    owner = Publisher(srv.ctx, srv.input_address, bind=False, sid="owner", n_rois=16)
    intruder = Publisher(srv.ctx, srv.input_address, bind=False, sid="intruder", n_rois=16)
    sent: list[np.ndarray] = []
    try:
        srv.start()
        srv.wait_ready()
        join_session(srv, owner)
        intruder.wait_subscribed()
        for k in range(30):
            sent.append(owner.frame(k))
        intruder.session_start()  # another session while the owner's runs
        intruder.frame(0)
        intruder.frame(1)
        srv.wait_counter("session_takeover_refused", 1)
        for k in range(30, 60):
            sent.append(owner.frame(k))
        intruder.session_end(60, sid="owner", seq=3)  # behind the owner's numbering
        intruder.session_end(60, sid="owner", seq=owner.seq + 1000)  # far ahead of it
        srv.wait_counter("session_control_refused", 2)
        for k in range(60, 90):
            sent.append(owner.frame(k))
        t_silent = time.monotonic()  # the owner goes silent: the intruder is accepted only after 2 s
        join_session(srv, intruder)  # announces at once, then every 0.5 s
        waited = time.monotonic() - t_silent
        srv.wait_output_frames("owner", 90)
        for k in range(10):
            intruder.frame(k)
        intruder.session_end(10)
        srv.wait_output_frames("intruder", 10)
        summary = srv.stop()
    finally:
        owner.close()
        intruder.close()
        srv.close()
    assert waited >= 1.9, waited
    assert [e.body.frame_index for e in srv.output_frames("owner")] == list(range(90))
    c = summary["counters"]
    assert c["session_takeover_refused"] >= 2  # once above, and while the owner was silent < 2 s
    assert c["session_control_refused"] == 2
    assert c["frames_before_info"] == 2
    assert c["sessions_started"] == 2 and c["session_restarts"] == 1
    assert c["frames_received"] == c["frames_published"] == 100
    assert c["recorder_dropped"] == 0 and summary["malformed_total"] == 0
    owner_rec = read_session(rec / "owner.h5")  # recording went on to the owner's last frame
    assert owner_rec.n_frames == 90
    np.testing.assert_array_equal(owner_rec.values, np.stack(sent))
    assert read_session(rec / "intruder.h5").n_frames == 10


# ---------------------------------------------------------------------------- frame indices


def test_far_frame_indices_cost_only_themselves(tmp_path: Path) -> None:
    srv = Serve(tmp_path)
    pub = Publisher(srv.ctx, srv.input_address, bind=True, sid="idx", n_rois=16)
    good = [*range(150), *range(10_000, 10_020), 10_021]
    try:
        srv.start()
        srv.wait_ready()
        join_session(srv, pub)
        for k in range(50):
            pub.frame(k)
        pub.frame(1049)  # one index far ahead: held, then an outlier
        for k in range(50, 100):
            pub.frame(k)
        pub.frame(2**63 - 1)  # the largest legal index
        for k in range(100, 150):
            pub.frame(k)
        for k in range(10_000, 10_020):  # a real renumbering: confirmed by the next frame
            pub.frame(k)
        pub.frame(10_021)  # one frame missing
        pub.frame(10_021)  # a duplicate
        pub.session_end(len(good))
        out = srv.wait_output_frames("idx", len(good))
        summary = srv.stop()
    finally:
        pub.close()
        srv.close()
    assert [e.body.frame_index for e in out] == good
    for e in out:
        np.testing.assert_array_equal(e.body.values, (e.body.frame_index + np.arange(16) / 1000.0).astype(np.float32))
    c = summary["counters"]
    assert summary["malformed"] == {"frame_index_outlier": 2, "stale_frame_index": 1}
    assert c["frame_index_epochs"] == 1 and c["frames_missing"] == 1
    assert c["frames_received"] == c["frames_published"] == len(good)
    assert c["messages_lost"] == 0 and c["session_restarts"] == 0


# ---------------------------------------------------------------------------- sequence numbers


@pytest.fixture(scope="module")
def seq_max_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A frame with seq 2^64-1 amid a session numbered normally, then frames and the
    periodic session_start re-send a rig sends."""
    tmp_path = tmp_path_factory.mktemp("seqmax")
    srv = Serve(tmp_path)
    pub = Publisher(srv.ctx, srv.input_address, bind=True, sid="seq", n_rois=16)
    try:
        srv.start()
        srv.wait_ready()
        join_session(srv, pub)
        for k in range(30):
            pub.frame(k)
        pub.frame(30, seq=2**64 - 1)
        for k in range(31, 60):
            pub.frame(k)
        pub.session_start()  # the rig's periodic re-send
        for k in range(60, 90):
            pub.frame(k)
        out = srv.wait_output_frames("seq", 90)
        # the service is up and its status messages still encode
        m = srv.wait_status(lambda e: e.body.metrics["counters"]["frames_published"] >= 90).body.metrics
        pub.session_end(90)
        summary = srv.stop()
    finally:
        pub.close()
        srv.close()
    return {"summary": summary, "status": m, "out": out}


def test_sequence_number_2_64_minus_1_keeps_the_service_up_and_every_frame_flowing(seq_max_run: dict[str, Any]) -> None:
    assert [e.body.frame_index for e in seq_max_run["out"]] == list(range(90))
    c = seq_max_run["summary"]["counters"]
    assert c["frames_received"] == c["frames_published"] == 90
    assert c["seq_jumps"] == 1 and c["messages_lost"] == 0
    assert seq_max_run["status"]["counters"]["seq_jumps"] == 1


def test_one_far_sequence_number_does_not_disturb_the_session(seq_max_run: dict[str, Any]) -> None:
    s = seq_max_run["summary"]
    assert s["malformed"].get("seq_regress", 0) == 0
    assert s["counters"]["sessions_started"] == 1 and s["counters"]["session_restarts"] == 0


# ---------------------------------------------------------------------------- kill -9 while recording


def test_kill_9_while_recording_leaves_a_file_plain_h5py_reads(tmp_path: Path) -> None:
    rate_hz, n = 100.0, 40
    rec = tmp_path / "rec"
    srv = Serve(tmp_path, {"recording": {"enabled": True, "directory": str(rec), "flush_every_s": 0.2}})
    pub = Publisher(srv.ctx, srv.input_address, bind=True, sid="killed", n_rois=n, activity=False,
                    rate_hz=rate_hz)  # a fluorescence session: the deconvolution runs
    rng = np.random.default_rng(9)
    sent: list[np.ndarray] = []
    try:
        srv.start()
        srv.wait_ready()
        join_session(srv, pub)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:
            sent.append(pub.frame(len(sent), (100 + 5 * rng.standard_normal(n)).astype(np.float32)))
            time.sleep(max(0.0, t0 + len(sent) / rate_hz - time.monotonic()))
        srv.kill9()
    finally:
        pub.close()
        srv.close()
    path = rec / "killed.h5"
    err = plain_open_error(path)
    repaired = err is not None
    if repaired:  # the kill fell inside a flush (rare): the documented repair makes it plain-readable
        r = subprocess.run([sys.executable, "-m", "cli", "recover", str(path)], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=TIMEOUT_S)
        assert r.returncode == 0, r.stderr
        assert plain_open_error(path) is None
    with h5py.File(path, "r") as f:
        values = f["frames/values"][:]
        index = f["frames/frame_index"][:] if "frames/frame_index" in f else np.arange(len(values))
    k = values.shape[0]
    assert k > 0 and len(sent) - k <= rate_hz * 1.0, (len(sent), k, repaired)  # at most the last second
    np.testing.assert_array_equal(index, np.arange(k))
    np.testing.assert_array_equal(values, np.stack(sent[:k]))


# ---------------------------------------------------------------------------- publisher restart


def test_a_killed_publisher_process_is_replaced_by_its_restart(tmp_path: Path) -> None:
    """The doc's example sender as the rig: killed with SIGKILL mid-session, started again
    (new session id); the service takes the new session after 2 s of silence and decodes
    every frame the restarted sender sent."""
    script = tmp_path / "sender.py"
    script.write_text(doc_example_sender())
    srv = Serve(tmp_path, {"pipeline": {"stop_on_session_end": True}})
    n_rois, n_frames = 20, 50

    def sender(frames: int) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, str(script), "--bind", srv.input_address, "--status",
                                 srv.status_address, "--frames", str(frames), "--fs", "100", "--rois", str(n_rois)],
                                cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = second = None
    try:
        srv.start()
        first = sender(100_000)
        srv.wait_ready()
        m = srv.wait_status(lambda e: e.body.metrics["counters"]["frames_published"] >= 30, TIMEOUT_S,
                            "30 frames of the first sender").body.metrics
        sid1 = m["session_id"]
        first.kill()
        first.communicate(timeout=TIMEOUT_S)
        second = sender(n_frames)
        _, err = second.communicate(timeout=TIMEOUT_S)
        assert second.returncode == 0, err
        assert srv.wait_exit(TIMEOUT_S) == 0, srv.log()[-3000:]  # stop_on_session_end
        srv.poll_output(0.5)
        summary = srv.summary()
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
        srv.close()
    sids = [e.session_id for e in srv.output_seen if e.kind == P.KIND_SESSION_START]
    sid2 = sids[-1]
    assert sid2 != sid1 and sid1 in sids
    out2 = srv.output_frames(sid2)
    assert [e.body.frame_index for e in out2] == list(range(n_frames))
    rng = np.random.default_rng(0)
    for e in out2:
        np.testing.assert_array_equal(e.body.values, rng.random(n_rois).astype("<f4"))
    out1 = srv.output_frames(sid1)
    assert [e.body.frame_index for e in out1] == list(range(len(out1)))
    c = summary["counters"]
    assert c["frames_received"] == c["frames_published"] == len(out1) + n_frames
    assert c["sessions_started"] == 2 and c["session_restarts"] == 1
    assert c["frames_before_info"] == 0 and summary["malformed_total"] == 0 and c["messages_lost"] == 0


# ---------------------------------------------------------------------------- slow subscriber


def test_a_slow_output_subscriber_sees_exactly_the_gaps_counted_as_output_dropped(tmp_path: Path) -> None:
    n_rois, n_frames = 20_000, 400  # 80 KB frames: the socket buffers fill fast
    srv = Serve(tmp_path, {"output": {"send_hwm_messages": 2}}, output_options={"RCVHWM": 1, "RCVBUF": 65536})
    pub = Publisher(srv.ctx, srv.input_address, bind=True, sid="slow", n_rois=n_rois)
    try:
        srv.start()
        srv.wait_ready()
        join_session(srv, pub)
        values = np.arange(n_rois, dtype=np.float32)
        for k in range(n_frames):  # the output subscriber reads nothing meanwhile
            pub.frame(k, values)
        m = srv.wait_counter("frames_published", n_frames)
        assert m["counters"]["output_dropped"] > 0
        srv.poll_output(0.5)  # now it reads everything
        pub.session_end(n_frames)
        srv.wait_status(lambda e: e.body.metrics["notes"].get("last_session_end", "").startswith("slow"))
        srv.poll_output(0.5)
        summary = srv.stop()
    finally:
        pub.close()
        srv.close()
    c = summary["counters"]
    assert c["frames_received"] == c["frames_published"] == n_frames  # the input lost nothing
    gaps = 0
    for sid in {e.session_id for e in srv.output_seen}:
        seqs = [e.seq for e in srv.output_seen if e.session_id == sid]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        start = 0 if sid == "slow" else seqs[0]  # the session from seq 0; the idle stream from its first seen
        gaps += seqs[-1] + 1 - start - len(seqs)
    assert any(e.kind == P.KIND_SESSION_END and e.session_id == "slow" for e in srv.output_seen)
    assert c["output_dropped"] == gaps > 0


# ---------------------------------------------------------------------------- CURVE


def curve_keys(tmp_path: Path) -> dict[str, Any]:
    """A service key pair and two authorised publisher key pairs (zmq.auth files)."""
    import zmq.auth

    keys, allowed = tmp_path / "keys", tmp_path / "authorized"
    keys.mkdir()
    allowed.mkdir()
    out: dict[str, Any] = {"dir": allowed}
    for name in ("server", "a", "b"):
        public_file, secret_file = zmq.auth.create_certificates(str(keys), name)
        out[name] = zmq.auth.load_certificate(secret_file)  # (public, secret)
        out[name + "_secret_file"] = secret_file
        if name != "server":
            (allowed / f"{name}.key").write_bytes(Path(public_file).read_bytes())
    return out


def test_curve_key_is_the_publisher_identity(tmp_path: Path) -> None:
    """With an authorised-keys directory only the session's key controls it: another
    authorised key cannot end it with the right seq nor restart it under its id; the
    owner's key starts a new session at once."""
    k = curve_keys(tmp_path)
    srv = Serve(tmp_path, {"input": {"bind": True, "curve_secret_key_file": k["server_secret_file"],
                                     "curve_authorized_keys_dir": str(k["dir"])}})
    a = Publisher(srv.ctx, srv.input_address, bind=False, sid="a1", n_rois=8, curve=(*k["a"], k["server"][0]))
    b = Publisher(srv.ctx, srv.input_address, bind=False, sid="a1", n_rois=8, curve=(*k["b"], k["server"][0]))
    try:
        srv.start()
        srv.wait_ready()
        join_session(srv, a)
        b.wait_subscribed()
        for i in range(20):
            a.frame(i)
        srv.wait_output_frames("a1", 20)
        b.session_end(20, seq=a.seq)  # the right seq, the wrong key
        srv.wait_counter("session_control_refused", 1)
        b.session_start(seq=0)  # a1 "restarted" from another key
        srv.wait_counter("session_takeover_refused", 1)
        for i in range(20, 40):
            a.frame(i)
        srv.wait_output_frames("a1", 40)
        a.heartbeat()  # a1 was just heard from: a2 cannot be a takeover after 2 s of silence
        t0 = time.monotonic()
        a.new_session("a2")  # the same key, a new session: accepted at once
        join_session(srv, a)
        at_once = time.monotonic() - t0
        for i in range(10):
            a.frame(i)
        a.session_end(10)
        srv.wait_output_frames("a2", 10)
        summary = srv.stop()
    finally:
        a.close()
        b.close()
        srv.close()
    assert at_once < 1.8, at_once
    assert [e.body.frame_index for e in srv.output_frames("a1")] == list(range(40))
    c = summary["counters"]
    assert c["session_control_refused"] == 1 and c["session_takeover_refused"] == 1
    assert c["sessions_started"] == 2 and c["session_restarts"] == 1
    assert c["frames_received"] == c["frames_published"] == 50 and summary["malformed_total"] == 0


def test_a_failed_curve_handshake_in_the_connect_layout_is_counted_and_the_input_recovers(tmp_path: Path) -> None:
    k = curve_keys(tmp_path)
    srv = Serve(tmp_path, {"input": {"bind": False, "curve_secret_key_file": k["server_secret_file"],
                                     "curve_authorized_keys_dir": str(k["dir"])}})
    a = Publisher(srv.ctx, srv.input_address, bind=True, sid="c1", n_rois=8, curve=(*k["a"], k["server"][0]))
    plain = a2 = None
    try:
        srv.start()
        srv.wait_ready()
        join_session(srv, a)
        for i in range(20):
            a.frame(i)
        srv.wait_output_frames("c1", 20)
        seq = a.seq
        a.sock.close(linger=0)  # the authorised publisher goes; a plain one takes its address
        plain = Publisher(srv.ctx, srv.input_address, bind=True, sid="plain", n_rois=8)
        srv.wait_counter("input_handshake_failures", 1)
        for i in range(30):  # it sends for a while: nothing of it gets through
            plain.frame(i)
            time.sleep(0.05)
        plain.sock.close(linger=0)
        # the authorised publisher is back (same session, numbering continued)
        a2 = Publisher(srv.ctx, srv.input_address, bind=True, sid="c1", n_rois=8, curve=(*k["a"], k["server"][0]))
        a2.seq = seq
        try:
            a2.wait_subscribed(1, 20.0)
        except AssertionError:
            c = srv.metrics()["counters"]
            raise AssertionError("the input never came back to the authorised publisher: " + str(
                {n: c[n] for n in ("input_handshake_failures", "input_socket_rebuilds", "input_disconnects")})) from None
        for i in range(20, 50):
            a2.frame(i)
        a2.session_end(50)
        out = srv.wait_output_frames("c1", 50)
        summary = srv.stop()
    finally:
        a.close()
        for p in (plain, a2):
            if p is not None:
                p.close()
        srv.close()
    assert [e.body.frame_index for e in out] == list(range(50))
    c = summary["counters"]
    # every refused handshake is counted; the input came back (by libzmq's own reconnect, or, when
    # libzmq gave up on the connection, by the service rebuilding its socket: input_socket_rebuilds)
    assert c["input_handshake_failures"] >= 1
    assert c["frames_received"] == c["frames_published"] == 50
    assert c["messages_lost"] == 0 and c["frames_before_info"] == 0 and summary["malformed_total"] == 0


def test_an_exception_in_the_source_does_not_kill_the_input_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process (deterministic): a source whose recv raises once, then delivers again."""
    import threading

    from rt_decoder.messages import SessionInfo
    from rt_decoder.pipeline import IntakeStage, Runner
    from streaming.metrics import MetricsRecorder
    from streaming.transport import InMemoryLink, StreamPublisher, StreamSubscriber

    died: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", died.append)  # a receiver thread that dies is seen here
    link = InMemoryLink()
    pub = StreamPublisher(link.pub_socket, SessionInfo("s", np.arange(4), 30.0, is_activity=True))
    sub = StreamSubscriber(link.sub_socket)

    class FlakySource:
        def __init__(self) -> None:
            self.calls = 0
            self.last_recv_ns = 0
            self.last_peer = ""

        def recv(self, timeout_ms: int | None = None) -> Any:
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("input socket could not be rebuilt")
            msg = sub.recv(timeout_ms)
            self.last_recv_ns = sub.last_recv_ns
            return msg

        def close(self) -> None:
            sub.close()

    metrics, fatal = MetricsRecorder(1000), []
    runner = Runner(FlakySource(), [IntakeStage(metrics)], [], [], metrics, intake_queue_frames=100,
                    on_fatal=fatal.append)
    runner.start()
    for k in range(10):
        pub.send_activity(np.ones(4, np.float32), k, now_ns())
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not fatal and metrics.counters["messages_received"] < 11:
        time.sleep(0.01)
    runner.drain(1.0)
    assert fatal or metrics.counters["messages_received"] == 11, "the input stopped without a word"
    assert not died and metrics.counters["input_errors"] == 1
    assert "could not be rebuilt" in metrics.notes["last_input_error"]
