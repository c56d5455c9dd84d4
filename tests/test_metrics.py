"""streaming.metrics: latencies from stage stamps, counters, summaries, Prometheus endpoint."""

from __future__ import annotations

import json
import math
import urllib.request
from pathlib import Path

import numpy as np

from streaming.metrics import (
    HISTOGRAM_EDGES_MS,
    LATENCY_COLUMNS,
    MetricsRecorder,
    PrometheusServer,
    percentiles,
    stage_latencies_ms,
    write_summary,
)


def _stamps(base: int, d: list[int]) -> tuple[tuple[str, int], ...]:
    names = ("rx", "decode", "deconv", "recon", "tx")
    t = base
    out = []
    for name, step in zip(names, d):
        t += step
        out.append((name, t))
    return tuple(out)


def test_stage_latencies_from_hand_stamps() -> None:
    st = _stamps(1_000_000, [500_000, 10_000, 200_000, 1_000, 50_000])  # acq = 1_000_000
    row = stage_latencies_ms(st, 1_000_000)
    want = dict(transport=0.5, decode=0.01, deconv=0.2, recon=0.001, publish=0.05, service=0.261, e2e=0.761)
    for i, name in enumerate(LATENCY_COLUMNS):
        assert math.isclose(row[i], want[name], rel_tol=1e-12), name
    # a missing stamp gives NaN in the spans that need it only
    row = stage_latencies_ms((("rx", 5), ("tx", 9)), 1)
    assert np.isnan(row[LATENCY_COLUMNS.index("deconv")])
    assert row[LATENCY_COLUMNS.index("service")] == 4e-6


def test_percentiles_match_numpy() -> None:
    x = np.random.default_rng(0).exponential(1.0, 1000)
    p = percentiles(x)
    assert p["count"] == 1000
    assert p["p50"] == np.percentile(x, 50) and p["p99"] == np.percentile(x, 99) and p["max"] == x.max()
    assert math.isnan(percentiles(np.zeros(0))["p50"])


def test_recorder_ring_buffer_keeps_the_last_samples() -> None:
    rec = MetricsRecorder(max_samples=100)
    for k in range(250):
        rec.record_frame((("rx", 0), ("tx", (k + 1) * 1_000_000)), 0)
    lat = rec.latencies()
    assert lat.shape == (100, len(LATENCY_COLUMNS))
    service = np.sort(lat[:, LATENCY_COLUMNS.index("service")])
    np.testing.assert_allclose(service, np.arange(151, 251, dtype=float))
    h = rec.histograms()
    assert sum(h["service"]) == 100 and len(h["service"]) == len(HISTOGRAM_EDGES_MS) - 1
    assert sum(h["deconv"]) == 0


def test_counters_summary_and_json(tmp_path: Path) -> None:
    rec = MetricsRecorder(max_samples=10)
    rec.count("frames_received", 3)
    rec.count_malformed("bad_version")
    rec.count_malformed("bad_version")
    snap = rec.snapshot()
    assert snap["counters"]["frames_received"] == 3
    assert snap["malformed"] == {"bad_version": 2} and snap["malformed_total"] == 2
    assert "rx=3" in rec.status_line()
    out = tmp_path / "s.json"
    write_summary(str(out), rec.summary())
    data = json.loads(out.read_text())
    assert data["latency_ms"]["e2e"]["p50"] is None  # NaN -> null, valid JSON
    assert data["counters"]["frames_received"] == 3


def test_prometheus_endpoint_serves_text_on_loopback() -> None:
    rec = MetricsRecorder(max_samples=10)
    rec.count("frames_published", 7)
    rec.count_malformed("too_large")
    rec.record_frame(_stamps(0, [1, 1, 1, 1, 1]), 0)
    srv = PrometheusServer(rec, 0).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/plain")
    finally:
        srv.close()
    assert "rt_decoder_frames_published_total 7" in text
    assert 'rt_decoder_malformed_total{reason="too_large"} 1' in text
    assert 'rt_decoder_latency_ms{stage="service",quantile="0.99"}' in text
    assert 'rt_decoder_state{state="STARTING"} 1' in text
