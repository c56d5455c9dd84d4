"""docs/protocol.md against the code: reason names, counters, stamps, states, the numbers in the
session and frame-index rules, and the doc's sender example run against a real ``serve``.

The doc is parsed, not copied: tables are found by their header cell, names are the
backticked first cells. The service's own rejection reasons are collected from the code
(every ``count_malformed("...")`` call) so a reason added to the code without a doc row, or
a doc row without code, fails here.
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rt_decoder import pipeline
from streaming import metrics as M
from streaming import protocol as P
from streaming.service import State
from tests._serve import ENV, REPO, Serve, doc_example_sender

DOC = (REPO / "docs" / "protocol.md").read_text()
#: the service's modules that count (the pipeline, the service, the recorder)
COUNTING_MODULES = [REPO / "rt_decoder" / "pipeline.py", REPO / "streaming" / "service.py",
                    REPO / "streaming" / "recorder.py"]


# ---------------------------------------------------------------------------- parsing the doc


def section(title_start: str) -> str:
    """The text of the section whose heading starts with ``title_start`` (up to the next heading
    of the same or a higher level)."""
    lines = DOC.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(#+) (.*)$", line)
        if m and m.group(2).startswith(title_start):
            level = len(m.group(1))
            out = []
            for rest in lines[i + 1:]:
                h = re.match(r"^(#+) ", rest)
                if h and len(h.group(1)) <= level:
                    break
                out.append(rest)
            return "\n".join(out)
    raise AssertionError(f"docs/protocol.md has no section {title_start!r}")


def table(first_header: str, text: str = DOC) -> list[list[str]]:
    """Rows (cells stripped) of the markdown table whose header row starts with ``first_header``."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(rf"^\|\s*{re.escape(first_header)}\s*\|", line)]
    assert len(starts) == 1, f"expected one table headed {first_header!r}, found {len(starts)}"
    rows = []
    for line in lines[starts[0] + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    assert rows, f"table {first_header!r} is empty"
    return rows


def flat(text: str) -> str:
    """``text`` with every run of whitespace (line breaks too) made one space."""
    return " ".join(text.split())


def names(rows: list[list[str]]) -> list[str]:
    """The backticked names of the first column."""
    out = []
    for row in rows:
        m = re.fullmatch(r"`([^`]+)`", row[0])
        assert m, f"first cell {row[0]!r} is not a `name`"
        out.append(m.group(1))
    return out


# ---------------------------------------------------------------------------- reading the code


def _calls(path: Path, method: str) -> list[ast.Call]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == method]


def _literal_first_args(method: str) -> tuple[set[str], list[str]]:
    """String literals passed as the first argument of ``.method(...)`` in the counting modules,
    and where a call passes something else."""
    found: set[str] = set()
    other: list[str] = []
    for path in COUNTING_MODULES:
        for call in _calls(path, method):
            arg = call.args[0] if call.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value)
            else:
                other.append(f"{path.name}:{call.lineno}")
    return found, other


def service_reasons() -> set[str]:
    """The reasons the service counts beyond the protocol's (``count_malformed("...")`` calls)."""
    found, other = _literal_first_args("count_malformed")
    # the one non-literal call forwards the input subscriber's reasons (the protocol's)
    assert [o.split(":")[0] for o in other] == ["service.py"], other
    return found


def counted_names() -> set[str]:
    """Counter names the code counts: ``.count("...")`` calls, and the transport totals the
    service folds in (``totals[...]``, ``totals.update(...)``)."""
    found, other = _literal_first_args("count")
    assert not [o for o in other if not o.startswith("service.py")], other
    tree = ast.parse((REPO / "streaming" / "service.py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "totals"
                and isinstance(node.slice, ast.Constant)):
            found.add(node.slice.value)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "totals"):
            found.update(k.arg for k in node.keywords if k.arg)
    return found


# ---------------------------------------------------------------------------- tests


def test_protocol_reasons_table_is_streaming_protocol_REASONS() -> None:
    doc = names(table("reason", section("8. Limits")))
    assert len(doc) == len(set(doc))
    assert set(doc) == set(P.REASONS)


def test_service_reasons_table_is_what_the_service_counts() -> None:
    doc = names(table("service reason"))
    code = service_reasons()
    assert len(doc) == len(set(doc))
    assert set(doc) == code, f"only in the doc: {set(doc) - code}; only in the code: {code - set(doc)}"
    assert not code & set(P.REASONS), "a service reason shadows a protocol reason"
    # the generic subscriber's own reasons (section 3) are spelt as the service's
    from streaming.transport import SUBSCRIBER_REASONS

    assert set(SUBSCRIBER_REASONS) <= code
    assert all(f"`{r}`" in section("3. Message kinds") for r in SUBSCRIBER_REASONS)
    # the reasons the issue named are all there
    assert {"n_rois_mismatch", "nonfinite", "stale_frame_index", "frame_index_outlier", "seq_regress"} <= code


def test_counter_table_is_streaming_metrics_COUNTER_NAMES() -> None:
    doc = names(table("counter"))
    assert len(doc) == len(set(doc))
    assert set(doc) == set(M.COUNTER_NAMES), (f"only in the doc: {set(doc) - set(M.COUNTER_NAMES)}; "
                                               f"undocumented: {set(M.COUNTER_NAMES) - set(doc)}")


def test_the_code_counts_only_declared_counters() -> None:
    counted = counted_names()
    assert counted, "found no counting calls: the AST scan is broken"
    assert counted <= set(M.COUNTER_NAMES), counted - set(M.COUNTER_NAMES)


def test_every_declared_counter_is_counted_somewhere() -> None:
    assert set(M.COUNTER_NAMES) <= counted_names(), set(M.COUNTER_NAMES) - counted_names()


def test_stamp_table_is_the_service_stamps_in_order() -> None:
    doc = names(table("stamp"))
    assert doc == ["rx", "decode", "deconv", "recon", "tx"]
    spans = {name for _, late, early in M._SPANS for name in (late, early)} - {"acq"}
    assert set(doc) == spans
    # section 6 names no other stamp (it once said recv/send)
    s6 = section("6. Time stamps")
    bullet = s6[s6.index("* `stamps`"):]
    bullet = bullet[:bullet.index("\n* ")]
    assert set(re.findall(r"`([a-z_]+)`", bullet)) - {"stamps"} <= set(doc)
    # the pipeline stamps these names (the output adds tx)
    src = (REPO / "rt_decoder" / "pipeline.py").read_text()
    for name in ("rx", "decode", "deconv", "recon"):
        assert f'"{name}"' in src


def test_state_table_is_the_service_lifecycle() -> None:
    assert names(table("state")) == [s.value for s in State]


def test_the_numbers_in_the_session_and_frame_index_rules_are_the_code_constants() -> None:
    from streaming.config import PipelineSettings, ServiceConfig

    takeover = PipelineSettings().session_takeover_after_s
    bound = PipelineSettings().confirm_jump_frames
    params = inspect.signature(pipeline.SessionStage.__init__).parameters
    assert params["takeover_after_s"].default == takeover and params["confirm_jump_frames"].default == bound
    s3, s4 = flat(section("13.3")), flat(section("13.4"))
    assert f"`[pipeline] session_takeover_after_s` (default **{takeover:g} s**)" in s3
    assert f"within {takeover:g} s" in s3
    assert f"`[pipeline] confirm_jump_frames` = {bound} (the default" in s4
    assert f"at most {pipeline.MAX_CONTROL_SEQ_GAP} ahead" in s3
    assert pipeline.MAX_SEQ_GAP == 2**32 and "more than 2^32" in s3
    assert f"`last + 2` up to `last + {bound + 1}`" in s4
    assert f"`last - {bound - 1}` up to `last`" in s4
    assert f"at most {bound}), the source renumbered" in s4
    assert f"at most {bound - 1} below it" in flat(section("13.2"))
    assert f"(default {PipelineSettings().max_gap_frames:,})" in s4
    cfg = ServiceConfig()
    rows = {r[0]: r[1] for r in table("socket")}
    assert rows["input (SUB)"] == f"`{cfg.input.address}`" and not cfg.input.bind
    assert rows["output (XPUB)"] == f"`{cfg.output.address}`" and cfg.output.bind
    assert rows["status (XPUB)"] == f"`{cfg.status.address}`"
    assert f"2 x [input] max_message_bytes + {P.MAX_HEADER_BYTES:,}" in flat(section("13.2"))


@pytest.mark.slow
def test_the_doc_sender_waits_for_ready_and_every_frame_comes_out(tmp_path: Path) -> None:
    """The doc's example, as a separate process, against a real serve that is still compiling
    when the example starts (so the wait for READY is exercised)."""
    script = tmp_path / "sender.py"
    script.write_text(doc_example_sender())
    n_frames, n_rois = 60, 50
    srv = Serve(tmp_path, {"pipeline": {"stop_on_session_end": True}})
    sender = None
    try:
        # the sender first: it must wait for serve's READY by itself
        sender = subprocess.Popen(
            [sys.executable, str(script), "--bind", srv.input_address, "--status", srv.status_address,
             "--frames", str(n_frames), "--fs", "100", "--rois", str(n_rois)],
            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        srv.start()
        out, err = sender.communicate(timeout=300)
        assert sender.returncode == 0, err
        assert srv.wait_exit(60) == 0, srv.log()[-3000:]  # stop_on_session_end
        srv.poll_output(0.5)
        srv.poll_status(200)
        summary = srv.summary()
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
            sender.communicate()
        srv.close()
    c = summary["counters"]
    assert c["frames_received"] == c["frames_published"] == n_frames
    assert summary["malformed_total"] == 0 and c["messages_lost"] == 0 and c["frames_before_info"] == 0
    assert summary["notes"]["stop_reason"] == "session_end"

    # the output stream (13.7): idle heartbeats as "rt-decoder", then the input's sid from seq 0
    seen = srv.output_seen
    first = next(i for i, e in enumerate(seen) if e.kind == P.KIND_SESSION_START)
    idle, session = seen[:first], seen[first:]
    assert all(e.session_id == "rt-decoder" and e.kind == P.KIND_HEARTBEAT for e in idle)
    assert [e.seq for e in idle] == list(range(idle[0].seq, idle[0].seq + len(idle))) if idle else True
    sid = session[0].session_id
    assert sid != "rt-decoder" and all(e.session_id == sid for e in session)
    assert [e.seq for e in session] == list(range(len(session)))  # from 0, no gap
    assert session[0].body.is_activity and session[0].body.n_rois == n_rois
    assert session[0].body.source == "rt-decoder serve"
    ends = [e for e in session if e.kind == P.KIND_SESSION_END]
    assert len(ends) == 1 and ends[0].body.n_frames == n_frames
    frames = [e for e in session if e.kind == P.KIND_ACTIVITY]
    assert [e.body.frame_index for e in frames] == list(range(n_frames))
    # values pass through an activity session unchanged (the example's seeded random values)
    rng = np.random.default_rng(0)
    for e in frames:
        np.testing.assert_array_equal(e.body.values, rng.random(n_rois).astype("<f4"))
    # every output frame carries the doc's stamps, in order
    doc_stamps = names(table("stamp"))
    assert all([name for name, _ in e.body.stamps] == doc_stamps for e in frames)
    assert all(np.all(np.diff([t for _, t in e.body.stamps]) >= 0) for e in frames)

    # the status channel (13.8): sid "rt-decoder" before the session, then the session's;
    # seq counts status messages without restarting; metrics have the doc's keys
    st = srv.status_seen
    assert [e.seq for e in st] == list(range(st[0].seq, st[0].seq + len(st)))
    assert {e.session_id for e in st} <= {"rt-decoder", sid}
    assert all(e.session_id == sid for e in st if e.body.state in ("RUNNING", "DRAINING", "STOPPED"))
    states = [e.body.state for e in st]
    assert "READY" in states and states[-2:] == ["DRAINING", "STOPPED"]
    doc_keys = set(names(table("key", section("13.8"))))
    keys = set(st[-1].body.metrics)
    assert keys <= doc_keys and doc_keys - keys == {"reconstruction"}  # only with a reconstruction
    m = st[-1].body.metrics
    assert set(m["counters"]) == set(M.COUNTER_NAMES)
    assert set(m["latency_ms"]) == {*M.LATENCY_COLUMNS, "frame_path"}
    assert m["real_time"] is True and m["real_time_reason"] == ""


@pytest.mark.slow
def test_without_waiting_for_ready_frames_are_lost_uncounted(tmp_path: Path) -> None:
    """Why 13.1 is a MUST: frames a PUB sends before serve's subscription never reach it,
    and nothing counts them."""
    from streaming.transport import StreamPublisher
    from rt_decoder.messages import SessionInfo, now_ns

    srv = Serve(tmp_path)
    pub = StreamPublisher(srv.input_address, SessionInfo("early", np.arange(8), 30.0, is_activity=True),
                          bind=True, context=srv.ctx, linger_ms=0)
    try:
        for k in range(20):  # serve is not even started
            pub.send_activity(np.ones(8, np.float32), k, now_ns())
        srv.start()
        srv.wait_ready()
        srv.poll_output(1.0)
        summary = srv.stop()
    finally:
        pub.close()
        srv.close()
    c = summary["counters"]
    assert c["messages_received"] == 0 and c["frames_received"] == 0 and c["messages_lost"] == 0
    assert summary["malformed_total"] == 0
    # before any session the output sends heartbeats only, as "rt-decoder", numbered from 0
    idle = srv.output_seen
    assert len(idle) >= 3 and all(e.kind == P.KIND_HEARTBEAT and e.session_id == "rt-decoder" for e in idle)
    assert [e.seq for e in idle] == list(range(idle[0].seq, idle[0].seq + len(idle))) and idle[0].seq <= 1
