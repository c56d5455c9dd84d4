"""Recordings after a crash: plain h5py opens them, `rt-decoder recover` repairs the rest.

A writer killed between flushes leaves a closed file (the writer holds it open only inside a
flush); one killed inside a flush leaves HDF5's "open for write" flags set, which `recover`
clears (and drops the half-written block). The last test kills a real `serve` process that
records a real virtual rig on loopback and compares the file with what the rig sent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from rt_decoder.errors import DataFormatError
from rt_decoder.io._hdf5_superblock import lookup3, read_superblock
from rt_decoder.io.session_file import SessionReader, SessionWriter, read_session, recover_session
from tests._serve import plain_open_error

REPO = Path(__file__).resolve().parents[1]
#: how tests start the command line (one place to change when the CLI package moves)
CLI = [sys.executable, "-m", "cli"]
TIMEOUT_S = 180.0
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def cli(*argv: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------- the superblock checksum


def test_lookup3_matches_jenkins_test_vectors_and_hdf5_superblocks(tmp_path: Path) -> None:
    # from lookup3.c's driver5 (Bob Jenkins, 2006)
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"", 0xDEADBEEF) == 0xBD5B7DDE
    assert lookup3(b"Four score and seven years ago") == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161
    path = tmp_path / "x.h5"
    with h5py.File(path, "w", libver="latest") as f:
        f["a"] = np.arange(3)
    sb = read_superblock(path)
    assert sb is not None and sb.version == 3 and sb.checksum_ok and sb.flags == 0
    assert sb.eof_address == path.stat().st_size


# ---------------------------------------------------------------------------- killed writers

_WRITER = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np
    from rt_decoder.io import session_file as sf
    from rt_decoder.messages import FluorescenceFrame, SessionInfo, DecodedFrame

    path, mode = sys.argv[1], sys.argv[2]
    n = 9
    info = SessionInfo("killed", np.arange(n), 30.0)
    w = sf.SessionWriter(path, info, stimulus_shape=(2, 3), decoded_shape=(2, 3), flush_every_s=3600,
                         max_buffered_frames=1000)

    def frame(k):
        return FluorescenceFrame(k, k, 10**9 + k, values=np.arange(n, dtype=np.float32) * k + 0.25,
                                 behaviour=np.full(4, k, np.float32))

    for block in range(3):  # three complete blocks on disk
        for k in range(40 * block, 40 * block + 40):
            w.append_frame(frame(k), np.full((2, 3), k, np.float32))
            w.append_decoded(DecodedFrame(k, k, 10**9 + k, image=np.full((2, 3), -k, np.float32),
                                          stamps=(("rx", k), ("tx", k + 1))))
        w.flush()
    for k in range(120, 130):  # buffered, never flushed
        w.append_frame(frame(k), np.full((2, 3), k, np.float32))
    if mode == "inside-flush":
        # the process dies inside the next flush, after the first datasets of the block grew
        real = sf.SessionWriter._write_blocks

        def dying(self, f):
            for name in ("seq", "frame_index", "values"):
                ds = f["frames/" + name]
                ds.resize(130, axis=0)
                ds[120:130] = self._rows[name].buf[:10]
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        sf.SessionWriter._write_blocks = dying
        w.flush()
    print("ready", flush=True)
    if mode == "alive":
        time.sleep(60)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def run_writer(path: Path, mode: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _WRITER, str(path), mode], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def check_three_blocks(path: Path) -> None:
    """The 120 flushed frames (and decoded frames) are there, bit-identical; the rest is not."""
    rec = read_session(path)
    k = np.arange(120)
    assert rec.n_frames == 120
    np.testing.assert_array_equal(rec.frame_index, k)
    np.testing.assert_array_equal(rec.seq, k.astype(np.uint64))
    np.testing.assert_array_equal(rec.acq_ns, 10**9 + k)
    np.testing.assert_array_equal(rec.values, np.arange(9, dtype=np.float32)[None, :] * k[:, None] + 0.25)
    np.testing.assert_array_equal(rec.behaviour, np.repeat(k[:, None], 4, axis=1).astype(np.float32))
    assert rec.stimulus is not None and rec.decoded is not None
    np.testing.assert_array_equal(rec.stimulus[:, 1, 2], k.astype(np.float32))
    np.testing.assert_array_equal(rec.decoded[:, 0, 0], -k.astype(np.float32))
    assert rec.decoded_stamp_names == ("rx", "tx")
    np.testing.assert_array_equal(rec.decoded_stamps()["tx"], k + 1)


def test_writer_killed_between_flushes_leaves_a_file_plain_h5py_opens(tmp_path: Path) -> None:
    path = tmp_path / "between.h5"
    run_writer(path, "between-flushes")
    assert plain_open_error(path) is None
    sb = read_superblock(path)
    assert sb is not None and sb.flags == 0
    with h5py.File(path, "r") as f:  # what anyone's script does
        assert f["frames/values"].shape == (120, 9) and int(f["closed"][()]) == 0
    check_three_blocks(path)
    assert not read_session(path).complete and not read_session(path).recovered
    before = path.read_bytes()
    report = recover_session(path)  # nothing to repair but marking it
    assert not report.flags_cleared and report.frames == 120 and report.frames_trimmed == 0
    assert read_session(path).recovered and len(path.read_bytes()) == len(before)
    check_three_blocks(path)


def test_writer_killed_inside_a_flush_is_repaired_by_rt_decoder_recover(tmp_path: Path) -> None:
    path = tmp_path / "inside.h5"
    run_writer(path, "inside-flush")
    err = plain_open_error(path)
    assert err is not None and "already open for write" in err  # what the issue saw
    sb = read_superblock(path)
    assert sb is not None and sb.flags != 0 and sb.checksum_ok
    with SessionReader(path) as r:  # SWMR read needs no repair: the three blocks are intact
        assert r.n_frames == 120
    # the readers refuse it and say how to repair it
    out = cli("deconvolve", str(path), "--out", str(tmp_path / "a.npy"))
    assert out.returncode == 2 and "rt-decoder recover" in out.stderr, out.stderr
    # a repaired copy first: the original is left as it was
    copy = tmp_path / "copy.h5"
    original = path.read_bytes()
    out = cli("recover", str(path), "--out", str(copy), "--summary-json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    assert path.read_bytes() == original and plain_open_error(copy) is None
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary[0]["flags_cleared"] and summary[0]["frames"] == 120 and summary[0]["frames_trimmed"] == 10
    # then in place
    out = cli("recover", str(path))
    assert out.returncode == 0, out.stderr
    assert "cleared the HDF5 'open for write' flags" in out.stderr and "120 frames" in out.stderr
    assert plain_open_error(path) is None
    with h5py.File(path, "r") as f:
        assert {f[f"frames/{n}"].shape[0] for n in f["frames"]} == {120}
    check_three_blocks(path)
    check_three_blocks(copy)
    rec = read_session(path)
    assert rec.recovered and not rec.complete
    # readers take a recovered file without --allow-incomplete; recover again changes nothing
    out = cli("deconvolve", str(path), "--out", str(tmp_path / "a.npy"), "--fs", "30")
    assert out.returncode == 0, out.stderr
    assert np.load(tmp_path / "a.npy").shape == (120, 9)
    again = recover_session(path)
    assert not again.changed and again.frames == 120


def test_recover_refuses_a_file_still_being_written_and_files_it_cannot_repair(tmp_path: Path) -> None:
    path = tmp_path / "alive.h5"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "alive"], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert plain_open_error(path) is None  # between flushes even a live writer's file opens
        out = cli("recover", str(path))
        assert out.returncode == 2 and "another process has the file open" in out.stderr, out.stderr
    finally:
        proc.kill()
        proc.communicate(timeout=TIMEOUT_S)
    assert recover_session(path).frames == 120  # once the writer is gone
    # not HDF5; not a session file; a damaged superblock
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all" * 100)
    out = cli("recover", str(junk))
    assert out.returncode == 2 and "not an HDF5 file" in out.stderr, out.stderr
    other = tmp_path / "other.h5"
    with h5py.File(other, "w", libver="latest") as f:
        f["x"] = np.arange(3)
    with pytest.raises(DataFormatError, match="format"):
        recover_session(other)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(path.read_bytes())
    with open(broken, "r+b") as fh:
        fh.seek(36)  # the root group's address
        fh.write(b"\x77")
    with pytest.raises(DataFormatError, match="checksum"):
        recover_session(broken)
    assert cli("recover", str(tmp_path / "missing.h5")).returncode == 2


def test_a_clean_recording_is_left_as_it_is(tmp_path: Path) -> None:
    from rt_decoder.messages import FluorescenceFrame, SessionInfo

    path = tmp_path / "clean.h5"
    with SessionWriter(path, SessionInfo("clean", np.arange(3), 30.0)) as w:
        for k in range(5):
            w.append_frame(FluorescenceFrame(k, k, k, values=np.full(3, k, np.float32)))
    report = recover_session(path)
    assert report.was_complete and not report.changed and report.frames == 5
    rec = read_session(path)
    assert rec.complete and not rec.recovered


# ---------------------------------------------------------------------------- kill -9 of a real serve


def tcp() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


FLUSH_EVERY_S = 0.5
RATE_HZ = 30.0


def test_serve_killed_mid_stream_leaves_the_rigs_frames_bit_identical_and_loses_at_most_the_bound(
        tmp_path: Path) -> None:
    """rig (real process, records what it sends) -> serve (recording on) on loopback; kill -9
    serve after about 4 s of frames; the serve recording must open with plain h5py (or, if
    the kill fell inside a flush, after `recover`), hold a prefix of the rig's frames
    bit-identical, and lack at most the frames sent in the last ``flush_every_s`` before the
    kill plus a margin (0.5 s) for frames in flight / in the recorder's queue."""
    rig_addr = tcp()
    rec_dir = tmp_path / "rec"
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f"""
[input]
address = "{rig_addr}"
bind = false
[output]
address = "{tcp()}"
[status]
address = ""
status_line_every_s = 0
[recording]
enabled = true
directory = "{rec_dir}"
flush_every_s = {FLUSH_EVERY_S}
[reconstruction]
enabled = false
""")
    srv = subprocess.Popen([*CLI, "serve", "--config", str(cfg)], cwd=REPO, env=ENV,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rig_file = tmp_path / "rig.h5"
    rig = subprocess.Popen([*CLI, "rig", "--bind", rig_addr, "--neurons", "300", "--frames", "360",
                            "--rate-hz", str(RATE_HZ), "--session-id", "crash", "--record", str(rig_file),
                            "--wait-subscribers", "1", "--wait-timeout-s", str(TIMEOUT_S), "--quiet"],
                           cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    served = rec_dir / "crash.h5"
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and not served.exists():  # the session started in serve
            assert srv.poll() is None and rig.poll() is None, (srv.stderr, rig.stderr)
            time.sleep(0.05)
        assert served.exists()
        time.sleep(4.0)
        t_kill = time.monotonic_ns()
        os.kill(srv.pid, signal.SIGKILL)
        srv.communicate(timeout=TIMEOUT_S)
        _, rig_err = rig.communicate(timeout=TIMEOUT_S)  # it streams on to nobody, then closes its file
    finally:
        for p in (srv, rig):
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert srv.returncode == -signal.SIGKILL
    sent = read_session(rig_file)
    assert sent.complete and sent.n_frames == 360, rig_err
    err = plain_open_error(served)
    if err is not None:  # the kill fell inside one of the ~1 ms flushes: recover repairs it
        assert "already open for write" in err, err
        out = cli("recover", str(served))
        assert out.returncode == 0, out.stderr
        assert plain_open_error(served) is None
    with h5py.File(served, "r") as f:  # plain h5py, as the issue tried
        n = f["frames/values"].shape[0]
        got = {name: f[f"frames/{name}"][:] for name in ("seq", "frame_index", "acq_ns", "values", "behaviour")}
        stim = f["frames/stimulus"][:]
    assert n > 60  # frames were flowing for about 4 s
    for name in ("seq", "frame_index", "acq_ns", "values", "behaviour"):
        np.testing.assert_array_equal(got[name], getattr(sent, name)[:n], err_msg=name)
    # stimulus messages follow their frame: all but possibly the last recorded one are there
    assert sent.stimulus is not None
    np.testing.assert_array_equal(stim[:n - 1], sent.stimulus[:n - 1])
    # the bound: everything sent more than flush_every_s (+ 0.5 s for frames in flight and
    # in the recorder's queue on a loaded machine) before the kill is in the file
    sent_before = int(np.sum(sent.recv_ns < t_kill))  # the rig records its send time in recv_ns
    old_enough = int(np.sum(sent.recv_ns < t_kill - int((FLUSH_EVERY_S + 0.5) * 1e9)))
    print(f"sent before the kill {sent_before}, recorded {n}, bound {old_enough}, plain open: {err is None}")
    assert old_enough <= n <= sent_before, (old_enough, n, sent_before)
    # the service's readers take it (after recover, as the message says)
    out = cli("recover", str(served))
    assert out.returncode == 0, out.stderr
    from streaming.replay import session_file_source

    src = session_file_source(served)
    assert src.info.session_id == "crash" and src.values.shape == (n, 300)


_BUSY_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from rt_decoder.io.session_file import SessionWriter
    from rt_decoder.messages import DecodedFrame, FluorescenceFrame, SessionInfo
    n = 4000
    w = SessionWriter(sys.argv[1], SessionInfo("busy", np.arange(n), 30.0), stimulus_shape=(36, 64),
                      flush_every_s=0.01)  # flushing nearly all the time: kills land inside flushes
    print("go", flush=True)
    k = 0
    while True:
        w.append_frame(FluorescenceFrame(k, k, k, values=np.full(n, k, np.float32)), np.full((36, 64), k, np.float32))
        w.append_decoded(DecodedFrame(k, k, k, image=np.full((36, 64), -k, np.float32), stamps=(("rx", k),)))
        k += 1
""")


def test_kills_at_random_moments_always_leave_a_bit_exact_prefix_after_recover(tmp_path: Path) -> None:
    rng = np.random.default_rng(15)
    inside = 0
    for it in range(8):
        path = tmp_path / f"busy{it}.h5"
        proc = subprocess.Popen([sys.executable, "-c", _BUSY_WRITER, str(path)], cwd=REPO, env=ENV,
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
            time.sleep(float(rng.uniform(0.2, 0.5)))
        finally:
            proc.kill()
            proc.communicate(timeout=TIMEOUT_S)
        inside += plain_open_error(path) is not None
        report = recover_session(path)
        assert plain_open_error(path) is None
        rec = read_session(path)
        k = np.arange(rec.n_frames)
        assert rec.n_frames == report.frames > 0
        np.testing.assert_array_equal(rec.frame_index, k)
        np.testing.assert_array_equal(rec.values[:, -1], k.astype(np.float32))
        assert rec.stimulus is not None
        np.testing.assert_array_equal(rec.stimulus[:, 35, 63], k.astype(np.float32))
        kd = np.arange(0 if rec.decoded is None else rec.decoded.shape[0])
        if rec.decoded is not None:
            np.testing.assert_array_equal(rec.decoded[:, 0, 0], -kd.astype(np.float32))
    print(f"{inside} of 8 kills fell inside a flush")


_STEPPED_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from rt_decoder.io.session_file import SessionWriter
    from rt_decoder.messages import FluorescenceFrame, SessionInfo
    w = SessionWriter(sys.argv[1], SessionInfo("followed", np.arange(5), 30.0), flush_every_s=3600)
    for block in range(3):
        for k in range(40 * block, 40 * block + 40):
            w.append_frame(FluorescenceFrame(k, k, k, values=np.full(5, k, np.float32)))
        w.flush()
        print(block, flush=True)
        sys.stdin.readline()
    w.close()
    print("closed", flush=True)
""")


def test_a_reader_follows_the_file_across_the_writers_open_and_close_cycles(tmp_path: Path) -> None:
    path = tmp_path / "followed.h5"
    proc = subprocess.Popen([sys.executable, "-c", _STEPPED_WRITER, str(path)], cwd=REPO, env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "0"
        with SessionReader(path) as live:
            assert live.n_frames == 40 and not live.complete
            for block in (1, 2):
                proc.stdin.write("\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == str(block)
                live.refresh()
                assert live.n_frames == 40 * (block + 1)
                np.testing.assert_array_equal(live.read_frames(40 * block)["values"][:, 0],
                                              np.arange(40 * block, 40 * block + 40, dtype=np.float32))
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "closed"
            live.refresh()
            assert live.complete and live.n_frames == 120
        proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0
