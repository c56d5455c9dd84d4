"""The live viewer: its bookkeeping against plain references, and the page in a real Chromium.

The browser test starts a real ``rt-decoder serve`` (live reconstruction with a small random
model), the virtual rig and ``rt-decoder view`` as processes, opens the page in Debian's
headless ``chromium`` driven by Playwright (installed by the fixture when missing: root +
apt, as the Octave fixture does), and checks what a person would look at: frames arrive,
the decoded canvas changes and is not uniform, the counters shown are those of the status
channel, and the page keeps working when the service is killed and started again.
``RT_DECODER_VIEWER_SCREENSHOT=docs/viewer.png`` runs it with the shipped demo model on
8,000 ROIs (held-out trials) and saves the screenshot there (the README's picture).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rt_decoder.errors import ConfigError
from rt_decoder.messages import DecodedFrame, SessionInfo
from rt_decoder.recon.report import (DisplayNormaliser, DisplaySettings, display_video, labelled_frames,
                                     stimulus_to_display, to_display)
from streaming import protocol as P
from streaming.viewer import (RollingCorrelation, ViewerServer, ViewerSettings, ViewerState, pack_frame,
                              parse_bind, unpack_frame)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- display normalisation


def _reference_range(frames: list[np.ndarray], s: DisplaySettings) -> tuple[float, float]:
    v = np.concatenate([f.reshape(-1) for f in frames[-s.window_frames:]])
    lo, hi = np.percentile(v, [s.lo_percentile, s.hi_percentile])
    if hi - lo < s.min_span_px:
        mid = 0.5 * (lo + hi)
        lo, hi = mid - s.min_span_px / 2, mid + s.min_span_px / 2
    return float(lo), float(hi)


def test_running_percentiles_match_numpy_over_the_window() -> None:
    rng = np.random.default_rng(0)
    s = DisplaySettings(window_frames=7)
    norm = DisplayNormaliser(s)
    frames = []
    for t in range(25):  # the window slides: old frames must leave the histogram
        level = 120.0 + 0.5 * t
        f = (level + 3.0 * rng.standard_normal((36, 64))).astype(np.float32)
        frames.append(f)
        lo, hi = norm.update(f)
        ref = _reference_range(frames, s)
        assert abs(lo - ref[0]) <= 0.13 and abs(hi - ref[1]) <= 0.13, (t, (lo, hi), ref)  # one 0.125 px bin
    assert norm.frames == 7


def test_a_uniform_video_is_not_stretched_into_noise() -> None:
    norm = DisplayNormaliser(DisplaySettings(min_span_px=2.0))
    lo, hi = norm.update(np.full((4, 4), 127.0, np.float32))
    assert hi - lo == pytest.approx(2.0) and lo < 127.0 < hi
    assert to_display(np.array([[lo, hi, np.nan]]), lo, hi).tolist() == [[0, 255, 128]]
    with pytest.raises(ConfigError, match="percentile"):
        DisplaySettings(lo_percentile=50, hi_percentile=50)


def test_the_page_and_the_files_share_one_normalisation() -> None:
    """The viewer's frames are display_video's frames (the function summary.png and the GIF use)."""
    rng = np.random.default_rng(1)
    video = (126 + 4 * rng.standard_normal((40, 36, 64))).astype(np.float32)
    want, ranges = display_video(video)
    state = ViewerState(ViewerSettings(decoded="tcp://127.0.0.1:1"))
    for t in range(video.shape[0]):
        frame = DecodedFrame(t, t, 0, stamps=(("rx", 1), ("tx", 2)), image=video[t])
        env = P.decode(P.encode_decoded(frame, "s"))
        msg = state.on_output(env)
        assert msg is not None
        header, dec, true = unpack_frame(msg)
        np.testing.assert_array_equal(dec, want[t])
        assert header["lo"] == pytest.approx(ranges[t, 0], abs=1e-3) and true is None
    assert want.std() > 30  # a narrow band of pixel values fills the grey scale


def test_viewer_matches_frames_with_the_stimulus_and_correlates_inside_the_mask() -> None:
    rng = np.random.default_rng(2)
    mask = np.zeros((36, 64), bool)
    mask[5:30, 10:50] = True
    state = ViewerState(ViewerSettings(decoded="tcp://127.0.0.1:1", rolling_frames=10), eval_mask=mask)
    trues, decs, per_frame = [], [], []
    for t in range(15):
        true = rng.uniform(0, 255, (36, 64)).astype(np.float32)
        dec = (127 + 0.05 * (true - 127) + 3 * rng.standard_normal((36, 64))).astype(np.float32)
        dec[~mask] = 0.0  # outside the mask: must not count
        state.on_stimulus(P.decode(P.encode_stimulus("s", seq=t, t_ns=0, frame_index=t, image=true)))
        header, d8, t8 = unpack_frame(state.on_output(P.decode(P.encode_decoded(
            DecodedFrame(t, t, 0, stamps=(("rx", 0), ("tx", 1_000_000)), image=dec), "s"))) or b"")
        trues.append(true[mask])
        decs.append(dec[mask])
        per_frame.append(np.corrcoef(true[mask], dec[mask])[0, 1])
        assert header["has_true"] and t8 is not None
        np.testing.assert_array_equal(t8, stimulus_to_display(true))
        assert header["corr"] == pytest.approx(per_frame[-1], abs=1e-9)
        ref = np.corrcoef(np.concatenate(trues[-10:]), np.concatenate(decs[-10:]))[0, 1]
        assert header["rolling_corr"] == pytest.approx(ref, abs=1e-9)
        assert header["tx_ms"] == pytest.approx(1.0) and header["frame"] == t
    assert state.matched == 15


def test_rolling_correlation_without_contrast_is_nan() -> None:
    rc = RollingCorrelation(3)
    assert np.isnan(rc.add(np.ones(5), np.arange(5.0))) and np.isnan(rc.value)


def test_frame_messages_are_compact_binary() -> None:
    header = {"frame": 3, "h": 2, "w": 3, "has_true": True}
    dec = np.arange(6, dtype=np.uint8)
    msg = pack_frame(header, dec.tobytes() + (dec + 10).tobytes())
    assert msg[:4] == b"RTV1" and len(msg) < 100
    h, d, t = unpack_frame(msg)
    assert h == header and d.tolist() == [[0, 1, 2], [3, 4, 5]] and t is not None and t[1, 2] == 15


def test_the_source_subscription_selects_stimulus_messages_only() -> None:
    from rt_decoder.messages import FluorescenceFrame
    from streaming.viewer import stimulus_subscription

    prefix = stimulus_subscription()
    stim = bytes(P.encode_stimulus("rig-1", seq=7, t_ns=5, frame_index=3, image=np.ones((36, 64), np.float32))[0])
    frame = bytes(P.encode_frame(FluorescenceFrame(8, 3, 5, values=np.ones(10, np.float32)), "rig-1")[0])
    start = bytes(P.encode_session_start(SessionInfo("rig-1", np.arange(3), 30.0), seq=0, t_ns=0)[0])
    assert len(prefix) > 10 and stim.startswith(prefix)
    assert not frame.startswith(prefix) and not start.startswith(prefix)


def test_addresses_are_loopback_unless_allowed() -> None:
    assert parse_bind("127.0.0.1:0", allow_non_loopback=False) == ("127.0.0.1", 0)
    assert parse_bind("http://localhost:8050", allow_non_loopback=False) == ("localhost", 8050)
    with pytest.raises(ConfigError, match="allow-non-loopback"):
        parse_bind("0.0.0.0:8050", allow_non_loopback=False)
    assert parse_bind("0.0.0.0:8050", allow_non_loopback=True) == ("0.0.0.0", 8050)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_bind("8050", allow_non_loopback=False)
    with pytest.raises(ConfigError, match="not loopback"):
        ViewerSettings(decoded="tcp://10.1.2.3:5556")


def test_page_reports_are_validated_and_counted() -> None:
    server = ViewerServer(ViewerSettings(decoded="tcp://127.0.0.1:1"))

    class FakePage:
        def __init__(self) -> None:
            self.texts: list[str] = []

        def offer_text(self, t: str) -> None:
            self.texts.append(t)

    page: Any = FakePage()
    for junk in ("not json", "[]", '{"type": "paints", "latency_ms": "x"}', '{"type": "evil"}',
                 '{"type": "ping", "t_page": NaN}', '{"type": "paints", "latency_ms": [1, "a"]}',
                 '{"type": "paints", "latency_ms": []}', '{"type": "paints", "latency_ms": [Infinity]}'):
        server._on_page_message(page, junk)
    assert server.paint.rejected == 8 and server.paint.painted == 0 and not page.texts
    server._on_page_message(page, '{"type": "ping", "t_page": 12.5}')
    pong = json.loads(page.texts[-1])
    assert pong["type"] == "pong" and pong["t_page"] == 12.5 and pong["t_server_ms"] > 0
    server._on_page_message(page, '{"type": "paints", "latency_ms": [7.5, null, 9.5], "rtt_ms": 0.2, "dropped": 2}')
    summary = server.paint.summary()
    assert summary["paint_latency_ms"]["p50"] == 8.5 and summary["paint_latency_ms"]["count"] == 2
    assert summary["frames_painted"] == 3 and summary["page_skipped_frames"] == 2


def test_server_serves_its_assets_only_and_refuses_other_origins() -> None:
    import asyncio

    import aiohttp

    server = ViewerServer(ViewerSettings(decoded=_tcp(), status="", port=0), log=lambda s: None)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.url and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    url = server.url

    async def probe() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with aiohttp.ClientSession() as http:
            for path in ("", "static/viewer.js", "static/viewer.css", "static/..%2Fviewer.py", "static/index.html",
                         "stats.json"):
                async with http.get(url + path) as resp:
                    out[path] = (resp.status, resp.headers.get("Content-Type", ""))
            try:
                async with http.ws_connect(url + "ws", headers={"Origin": "http://evil.example"}):
                    out["evil"] = "connected"
            except aiohttp.WSServerHandshakeError as exc:
                out["evil"] = exc.status
            async with http.ws_connect(url + "ws", headers={"Origin": url.rstrip("/")}) as ws:
                hello = await ws.receive_json(timeout=5)
                out["hello"] = hello
        return out

    try:
        out = asyncio.run(probe())
    finally:
        server.stop()
        thread.join(timeout=10)
    assert out[""][0] == 200 and "text/html" in out[""][1]
    assert out["static/viewer.js"][0] == 200 and "javascript" in out["static/viewer.js"][1]
    assert out["static/viewer.css"][0] == 200
    assert out["static/..%2Fviewer.py"][0] == 404 and out["static/index.html"][0] == 404
    assert out["stats.json"][0] == 200
    assert out["evil"] == 403
    assert out["hello"]["type"] == "hello" and "percentile 1" in out["hello"]["display"]


def test_not_real_time_when_the_service_skips_or_runs_late() -> None:
    now = [0.0]
    state = ViewerState(ViewerSettings(decoded="tcp://127.0.0.1:1"), clock_s=lambda: now[0])

    def status(skipped: int, received: int) -> None:
        state.on_status(P.decode(P.encode_status("s", seq=0, t_ns=0, state="RUNNING", metrics={
            "counters": {"skipped_frames": skipped, "frames_received": received}})))

    status(0, 0)
    now[0] = 2.0
    status(1, 60)
    assert state.real_time() == (True, "")
    now[0] = 4.0
    status(30, 120)
    ok, why = state.real_time()
    assert not ok and "skipped" in why


# ---------------------------------------------------------------------------- the files' pictures


def test_gif_frames_are_labelled_and_a_missing_stimulus_is_said() -> None:
    rng = np.random.default_rng(3)
    true = rng.uniform(0, 255, (3, 36, 64)).astype(np.float32)
    dec = (127 + 2 * rng.standard_normal((3, 36, 64))).astype(np.float32)
    both = labelled_frames(true, dec, scale=2, frame_index=[30, 31, 32])
    alone = labelled_frames(np.full_like(true, np.nan), dec, scale=2)
    assert both.shape[2] > alone.shape[2] == 64 * 2  # no blank "true" half
    assert both.shape[1] > 36 * 2 and both.dtype == np.uint8  # text bands above and below
    top = both[0, :10, :, 0]
    assert top.max() > 200 and top.min() == 0  # light text on black: the labels are drawn


def test_sink_pictures_without_a_stimulus_show_the_decoded_video_alone(tmp_path: Path) -> None:
    """A replay without stimulus: the GIF has no blank true half, summary.png says "no stimulus"."""
    import argparse

    import imageio.v3 as iio

    from cli.commands.sink import _write_outputs
    from streaming.sink import SinkResult

    rng = np.random.default_rng(5)
    dec = (127 + 2 * rng.standard_normal((12, 36, 64))).astype(np.float32)
    metrics = {"output_kind": "decoded", "frames": {"output": 12}, "source": {"clock": "unknown", "rate_hz": None},
               "latency_ms": {"end_to_end": {}}, "correlation": {}}
    result = SinkResult(metrics=metrics, latencies_ms={"rx->tx": rng.gamma(2, 1, 12)},
                        frame_index=np.arange(100, 112), true=np.full_like(dec, np.nan), decoded=dec)
    args = argparse.Namespace(no_figures=False, max_gif_frames=900, gif_scale=2)
    written = _write_outputs(tmp_path, result, args, print)
    assert {p.name for p in written} >= {"side_by_side.gif", "summary.png", "latency_hist.png"}
    gif = iio.imread(tmp_path / "side_by_side.gif")
    assert gif.shape[0] == 12 and gif.shape[2] == 64 * 2


def test_latency_table_columns_never_run_together() -> None:
    from streaming.sink import format_summary

    st = {"p50": 12345.678, "p95": 23456.7, "p99": 34567.8, "max": 123456.7, "count": 10}
    text = format_summary({"latency_ms": {"stages": {"rx->tx": st}, "end_to_end": {"acq->sink": st}},
                           "frames": {}, "correlation": {}})
    row = next(line for line in text.splitlines() if "rx->tx" in line)
    assert len(row.split()) == 6, row  # name + p50 p95 p99 max frames, each separated


def test_latency_histogram_has_a_frame_period_line(tmp_path: Path) -> None:
    from cli.commands.sink import write_latency_figure

    rng = np.random.default_rng(4)
    png = write_latency_figure(tmp_path / "h.png",
                               {"rx->tx": rng.gamma(2, 5, 300), "acq->sink": rng.gamma(2, 200, 300)},
                               {"acq->sink"}, "t", frame_period_ms=33.3)
    assert png.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------- in a real browser


def _tcp() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    if _chromium_path() is None:
        from bindings.testing import ensure_system_packages

        reason = ensure_system_packages("chromium", "fonts-dejavu-core")
        if reason:
            pytest.skip(reason)
    path = _chromium_path()
    if path is None:
        pytest.skip("chromium is installed but not on PATH")
    return path


class _Procs:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []
        self.files: list[Any] = []

    def start(self, name: str, *argv: str) -> subprocess.Popen[str]:
        log = open(self.tmp / f"{name}.log", "a")  # noqa: SIM115 -- closed in stop_all
        self.files.append(log)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        p = subprocess.Popen([sys.executable, "-m", "cli", *argv], cwd=REPO, env=env, text=True,
                             stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def wait_log(self, name: str, needle: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log(name)
            if needle in text:
                return text
            time.sleep(0.1)
        raise AssertionError(f"{name} never printed {needle!r}:\n{self.log(name)}")

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self.files:
            f.close()


class _StatusRecorder(threading.Thread):
    """Our own subscription to the status channel: seq -> (state, counters, malformed_total)."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.seen: dict[tuple[str, int], tuple[str, dict[str, Any], Any]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(100):
                env = P.decode(self.sock.recv_multipart())
                if env.kind == P.KIND_STATUS:
                    body: Any = env.body
                    m = dict(body.metrics)
                    self.seen[(env.session_id, env.seq)] = (body.state, dict(m["counters"]), m.get("malformed_total"))
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def live_rig(tmp_path: Path) -> Iterator[dict[str, Any]]:
    from rt_decoder.encoder.synthetic import write_random_model

    shipped = REPO / "rt_decoder" / "models" / "demo"
    rig_args: list[str] = []
    if os.environ.get("RT_DECODER_VIEWER_SCREENSHOT") and (shipped / "manifest.json").is_file():
        # the README's picture: the shipped model decoding held-out trials of 8,000 ROIs
        n, model, recon, init = 8000, shipped, "", 100
        rig_args = ["--heldout", "--n-trials", "30"]
    else:  # quick: a small random model whose neurons are the rig's ROIs
        n, init, recon = 300, 30, "[reconstruction.live]\nlag_frames = 4\nfixed_steps = 1\n"
        model = write_random_model(tmp_path / "model", n_neurons=n, n_members=1, seed=0, window_frames=16)
        np.save(model / "neuron_ids.npy", np.arange(n, dtype=np.int64), allow_pickle=False)  # the rig's ids
    rig_addr, out_addr, status_addr = _tcp(), _tcp(), _tcp()
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'[input]\naddress = "{rig_addr}"\nbind = false\n[output]\naddress = "{out_addr}"\n'
                   f'[status]\naddress = "{status_addr}"\npublish_every_s = 0.25\nstatus_line_every_s = 0\n'
                   f'[deconv]\ninit_frames = {init}\n'
                   f'[reconstruction]\nenabled = true\nmodel_dir = "{model}"\n{recon}')
    procs = _Procs(tmp_path)
    rec = _StatusRecorder(status_addr)
    rec.start()
    try:
        procs.start("serve", "serve", "--config", str(cfg))
        procs.start("view", "view", "--decoded", out_addr, "--status", status_addr, "--stimulus", rig_addr,
                    "--bind", "127.0.0.1:0", "--eval-mask", str(model / "alpha.npz"))
        text = procs.wait_log("view", "serving http", 60)
        url = text.split("serving ", 1)[1].split(" ", 1)[0]
        procs.wait_log("serve", "READY", 120)
        procs.start("rig", "rig", "--bind", rig_addr, "--neurons", str(n), "--frames", "9000", "--fs", "30",
                    "--wait-subscribers", "2", "--wait-timeout-s", "60", "--quiet", *rig_args)
        yield {"url": url, "config": cfg, "procs": procs, "status": rec, "tmp": tmp_path}
    finally:
        rec.stop.set()
        procs.stop_all()
        rec.join(timeout=5)


def _decoded_pixels(page: Any) -> np.ndarray:
    data = page.evaluate("""() => { const c = document.getElementById('cv-decoded');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }""")
    return np.asarray(data, np.uint8).reshape(216, 384, 4)[..., 0]


@pytest.mark.slow
def test_page_shows_live_decoding_and_survives_a_service_restart(chromium: str, live_rig: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    url, procs, rec, tmp = live_rig["url"], live_rig["procs"], live_rig["status"], live_rig["tmp"]
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert b"rt-decoder" in resp.read()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1320, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_function("window.rtv.painted > 20 && window.rtv.lastHeader.has_true", timeout=90_000)
        # the decoded canvas changes over time and is not uniform
        a = _decoded_pixels(page)
        page.wait_for_function(f"window.rtv.lastHeader.frame > {page.evaluate('window.rtv.lastHeader.frame')} + 15",
                               timeout=20_000)
        b = _decoded_pixels(page)
        assert a.std() > 10 and b.std() > 10, (a.std(), b.std())
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0
        true_px = page.evaluate("""() => { const c = document.getElementById('cv-true');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let s = 0, s2 = 0;
            for (let i = 0; i < d.length; i += 4) { s += d[i]; s2 += d[i] * d[i]; }
            const n = d.length / 4; return Math.sqrt(s2 / n - (s / n) ** 2); }""")
        assert true_px > 10  # the true stimulus is drawn too
        page.wait_for_function("window.rtv.lastViewer && window.rtv.lastViewer.paint_latency_ms.count > 10",
                               timeout=20_000)
        shot = tmp / "viewer.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:4] == b"\x89PNG"
        if os.environ.get("RT_DECODER_VIEWER_SCREENSHOT"):
            shutil.copy(shot, REPO / os.environ["RT_DECODER_VIEWER_SCREENSHOT"])
        # the counters on the page are those of the status message it says it shows
        shown = page.evaluate("""() => { const t = (id) => document.getElementById(id).textContent;
            return {seq: Number(t('status-seq')), session: window.rtv.lastStatus.session_id, state: t('state'),
                    frames_received: Number(t('c-frames_received')), frames_published: Number(t('c-frames_published')),
                    skipped_frames: Number(t('c-skipped_frames')), frames_missing: Number(t('c-frames_missing')),
                    messages_lost: Number(t('c-messages_lost')), malformed_total: Number(t('c-malformed_total'))}; }""")
        state, counters, malformed = rec.seen[(shown["session"], shown["seq"])]
        assert shown["state"] == state == "RUNNING"
        for key in ("frames_received", "frames_published", "skipped_frames", "frames_missing", "messages_lost"):
            assert shown[key] == counters[key], (key, shown, counters)
        assert shown["malformed_total"] == malformed
        assert shown["frames_published"] > 20
        # kill the service; the page notices, then resumes on the restarted service
        serve = next(p for p in procs.procs if "serve" in p.args)
        serve.send_signal(signal.SIGKILL)
        serve.wait()
        painted = page.evaluate("window.rtv.painted")
        page.wait_for_function("!document.getElementById('silent').hidden", timeout=20_000)
        procs.start("serve2", "serve", "--config", str(live_rig["config"]), "--view", "127.0.0.1:0")
        text = procs.wait_log("serve2", "live viewer at http", 60)  # serve --view prints the page's address
        url2 = text.split("live viewer at ", 1)[1].split()[0]
        with urllib.request.urlopen(url2, timeout=10) as resp:
            assert b"rt-decoder" in resp.read()
        page.wait_for_function(f"window.rtv.painted > {painted} + 20 && window.rtv.lastStatus.state == 'RUNNING'",
                               timeout=90_000)
        assert page.evaluate("document.getElementById('silent').hidden")
        assert page.evaluate("window.rtv.connects") == 1  # the page never reloaded nor reconnected
        c = _decoded_pixels(page)
        assert c.std() > 10
        # the viewer itself restarts (same address): the page reconnects by itself
        view = next(p for p in procs.procs if "view" in p.args)
        view.send_signal(signal.SIGTERM)
        view.wait(15)
        page.wait_for_function("document.getElementById('conn').dataset.conn == 'closed'", timeout=10_000)
        painted = page.evaluate("window.rtv.painted")
        port = url.rstrip("/").rsplit(":", 1)[1]
        procs.start("view2", *[a if a != "127.0.0.1:0" else f"127.0.0.1:{port}" for a in view.args[3:]])
        page.wait_for_function(f"window.rtv.connects == 2 && window.rtv.painted > {painted} + 10", timeout=30_000)
        assert not errors, errors
        browser.close()
    # serve --view's viewer stops with its service
    serve2 = next(p for p in procs.procs if "--view" in p.args)
    serve2.send_signal(signal.SIGINT)
    serve2.wait(30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url2, timeout=1)
        except OSError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the viewer of serve --view still answers at {url2} after serve stopped")
