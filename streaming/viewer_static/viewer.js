// rt-decoder live viewer: WebSocket client, canvas drawing and small canvas plots.
// Binary frame messages: "RTV1", uint32 LE header length, JSON header, decoded uint8 (h*w),
// then true uint8 (h*w) when header.has_true. Text messages: JSON {type: hello|status|viewer|pong}.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const rtv = (window.rtv = {
    painted: 0, received: 0, dropped: 0, lastHeader: null, lastStatus: null, lastViewer: null,
    offsetMs: null, rttMs: null, connects: 0, paintLatencies: [],
  });
  const WINDOW_S = 30, MAX_POINTS = 3000;
  const series = { t: [], corr: [], roll: [], lat: {} };
  const LAT_SHOWN = { service: "#1f77b4", deconv: "#2ca02c", recon: "#d62728", publish: "#9467bd" };
  let pending = null, rafScheduled = false, ws = null, backoff = 500, rate = 30;
  const syncs = [];
  const decoder = new TextDecoder();

  // ---------------------------------------------------------------- drawing frames
  const off = document.createElement("canvas");
  const offCtx = off.getContext("2d");
  function drawGrey(canvas, pixels, h, w) {
    if (off.width !== w || off.height !== h) { off.width = w; off.height = h; }
    const img = offCtx.createImageData(w, h), d = img.data;
    for (let i = 0, j = 0; i < pixels.length; i++, j += 4) { const v = pixels[i]; d[j] = v; d[j + 1] = v; d[j + 2] = v; d[j + 3] = 255; }
    offCtx.putImageData(img, 0, 0);
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
  }
  function drawText(canvas, text) {
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#555"; ctx.font = "16px sans-serif"; ctx.textAlign = "center";
    ctx.fillText(text, canvas.width / 2, canvas.height / 2);
  }
  const fmt = (v, nd) => (v === null || v === undefined || !isFinite(v)) ? "-" : Number(v).toFixed(nd);

  function paint() {
    rafScheduled = false;
    const f = pending;
    if (!f) return;
    pending = null;
    const h = f.header;
    drawGrey($("cv-decoded"), f.dec, h.h, h.w);
    if (f.tru) drawGrey($("cv-true"), f.tru, h.h, h.w); else drawText($("cv-true"), "no stimulus for this frame");
    const tPaint = performance.now();
    let latency = null;
    if (rtv.offsetMs !== null && h.tx_ms !== null) latency = tPaint + rtv.offsetMs - h.tx_ms;
    rtv.painted++;
    rtv.lastHeader = h;
    if (latency !== null) { rtv.paintLatencies.push(latency); if (rtv.paintLatencies.length > 20000) rtv.paintLatencies.shift(); }
    reports.push(latency === null ? null : Math.round(latency * 1000) / 1000);
    arrivals.push(f.arrive === null ? null : Math.round(f.arrive * 1000) / 1000);
    reportDropped += f.droppedBefore;
    $("frame-index").textContent = h.frame;
    $("frame-time").textContent = fmt(h.t_s, 2);
    $("corr").textContent = fmt(h.corr, 3);
    $("rolling-corr").textContent = fmt(h.rolling_corr, 3);
    $("rolling-n").textContent = h.rolling_frames ? "(" + h.rolling_frames + " frames)" : "";
    $("range").textContent = "stretched " + fmt(h.lo, 1) + ".." + fmt(h.hi, 1) + " px";
    addPoint(h);
    drawPlots();
  }

  // ---------------------------------------------------------------- plots
  function addPoint(h) {
    const t = h.t_s;
    if (series.t.length && t < series.t[series.t.length - 1]) { series.t = []; series.corr = []; series.roll = []; series.lat = {}; }
    series.t.push(t); series.corr.push(h.corr); series.roll.push(h.rolling_corr);
    for (const k in LAT_SHOWN) { (series.lat[k] = series.lat[k] || []).push(h.lat ? h.lat[k] : null); }
    while (series.t.length > MAX_POINTS || (series.t.length && series.t[0] < t - WINDOW_S)) {
      series.t.shift(); series.corr.shift(); series.roll.shift();
      for (const k in series.lat) series.lat[k].shift();
    }
  }
  function axes(ctx, W, H, x0, x1, y0, y1, yTicks, unit) {
    ctx.clearRect(0, 0, W, H);
    ctx.strokeStyle = "#ddd"; ctx.fillStyle = "#666"; ctx.font = "10px sans-serif"; ctx.lineWidth = 1;
    for (const v of yTicks) {
      const y = H - 14 - (v - y0) / (y1 - y0) * (H - 24);
      ctx.beginPath(); ctx.moveTo(36, y); ctx.lineTo(W - 4, y); ctx.stroke();
      ctx.textAlign = "right"; ctx.fillText(v + unit, 33, y + 3);
    }
    ctx.textAlign = "center";
    const tick = (x1 - x0) > 12 ? 5 : 1;
    for (let s = Math.ceil(x0 / tick) * tick; s <= x1; s += tick) ctx.fillText(s + " s", 36 + (s - x0) / (x1 - x0) * (W - 40), H - 2);
  }
  function line(ctx, W, H, xs, ys, x0, x1, y0, y1, color, dots) {
    ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
    let pen = false;
    for (let i = 0; i < xs.length; i++) {
      const v = ys[i];
      if (v === null || v === undefined || !isFinite(v)) { pen = false; continue; }
      const x = 36 + (xs[i] - x0) / (x1 - x0) * (W - 40);
      const y = H - 14 - (Math.max(y0, Math.min(y1, v)) - y0) / (y1 - y0) * (H - 24);
      if (dots) { ctx.fillRect(x - 1, y - 1, 2, 2); continue; }
      if (pen) ctx.lineTo(x, y); else { ctx.moveTo(x, y); pen = true; }
    }
    if (!dots) ctx.stroke();
  }
  function legend(ctx, W, items) {
    let x = 40; ctx.font = "10px sans-serif"; ctx.textAlign = "left";
    for (const [name, color] of items) { ctx.fillStyle = color; ctx.fillRect(x, 3, 10, 3); ctx.fillText(name, x + 13, 9); x += 16 + ctx.measureText(name).width + 10; }
  }
  function drawPlots() {
    if (!series.t.length) return;
    const x0 = Math.max(series.t[0], series.t[series.t.length - 1] - WINDOW_S);
    const x1 = Math.max(series.t[series.t.length - 1], x0 + 5);
    let c = $("plot-corr"), ctx = c.getContext("2d");
    axes(ctx, c.width, c.height, x0, x1, -0.5, 1.0, [-0.5, 0, 0.5, 1], "");
    line(ctx, c.width, c.height, series.t, series.corr, x0, x1, -0.5, 1.0, "#999", true);
    line(ctx, c.width, c.height, series.t, series.roll, x0, x1, -0.5, 1.0, "#1f77b4", false);
    legend(ctx, c.width, [["per frame", "#999"], ["rolling video correlation", "#1f77b4"]]);
    c = $("plot-lat"); ctx = c.getContext("2d");
    const period = 1000 / rate;
    let ymax = period * 1.25;
    for (const k in series.lat) for (const v of series.lat[k]) if (v !== null && isFinite(v) && v > ymax) ymax = v;
    ymax = Math.ceil(ymax / 10) * 10;
    const step = ymax > 200 ? 100 : ymax > 80 ? 20 : 10, ticks = [];
    for (let v = 0; v <= ymax; v += step) ticks.push(v);
    axes(ctx, c.width, c.height, x0, x1, 0, ymax, ticks, "");
    ctx.setLineDash([4, 3]); line(ctx, c.width, c.height, [x0, x1], [period, period], x0, x1, 0, ymax, "#000", false); ctx.setLineDash([]);
    const items = [];
    for (const k in LAT_SHOWN) { if (series.lat[k]) { line(ctx, c.width, c.height, series.t, series.lat[k], x0, x1, 0, ymax, LAT_SHOWN[k], false); items.push([k, LAT_SHOWN[k]]); } }
    items.push(["frame period " + period.toFixed(1) + " ms", "#000"]);
    legend(ctx, c.width, items);
  }

  // ---------------------------------------------------------------- messages
  function onFrame(buf) {
    const dv = new DataView(buf);
    if (buf.byteLength < 8 || dv.getUint8(0) !== 82 || dv.getUint8(1) !== 84 || dv.getUint8(2) !== 86 || dv.getUint8(3) !== 49) return;
    const n = dv.getUint32(4, true);
    const header = JSON.parse(decoder.decode(new Uint8Array(buf, 8, n)));
    const px = header.h * header.w;
    const tArrive = performance.now();
    const dec = new Uint8Array(buf, 8 + n, px);
    const tru = header.has_true ? new Uint8Array(buf, 8 + n + px, px) : null;
    rtv.received++;
    let droppedBefore = 0;
    if (pending) { rtv.dropped++; droppedBefore = 1 + pending.droppedBefore; }
    const arrive = (rtv.offsetMs !== null && header.tx_ms !== null) ? tArrive + rtv.offsetMs - header.tx_ms : null;
    pending = { header, dec, tru, droppedBefore, arrive };
    if (!rafScheduled) { rafScheduled = true; requestAnimationFrame(paint); }
  }
  function setText(id, v) { const e = $(id); if (e) e.textContent = (v === null || v === undefined) ? "-" : v; }
  function onStatus(s) {
    rtv.lastStatus = s;
    const m = s.metrics || {}, c = m.counters || {}, r = m.reconstruction || {};
    const st = $("state"); st.textContent = s.state; st.dataset.state = s.state;
    setText("session", "session " + (s.session_id || "-"));
    setText("status-seq", s.seq);
    for (const k of ["frames_received", "frames_published", "skipped_frames", "frames_missing", "messages_lost", "gap_events", "intake_overflow"]) setText("c-" + k, c[k]);
    setText("c-malformed_total", m.malformed_total);
    setText("c-roi_coverage", r.recon_roi_coverage === undefined ? "-" : fmt(100 * r.recon_roi_coverage, 1) + " %");
    setText("c-lag", r.recon_lag_frames === undefined ? "-" : r.recon_lag_frames + " frames");
    setText("c-members", r.recon_members_active);
    const tb = $("t-latency").tBodies[0];
    const lat = m.latency_ms || {};
    const rows = [];
    for (const k in lat) rows.push("<tr><td>" + k + "</td><td>" + fmt(lat[k].p50, 2) + "</td><td>" + fmt(lat[k].p99, 2) + "</td><td>" + (lat[k].count || 0) + "</td></tr>");
    tb.innerHTML = rows.join("");
    setText("lat-note", r.recon_lag_frames === undefined ? "" : "transport and e2e of a decoded frame include the " +
      r.recon_lag_frames + "-frame decoding lag");
  }
  function onViewer(v) {
    rtv.lastViewer = v;
    rate = v.rate_hz || rate;
    setText("fps", fmt(v.decoded_fps, 1));
    const p = v.paint_latency_ms || {};
    setText("v-paint-p50", fmt(p.p50, 1)); setText("v-paint-p99", fmt(p.p99, 1));
    setText("v-page-fps", fmt(v.page_fps, 1)); setText("v-page-skipped", v.page_skipped_frames);
    const o = (v.subscribers || {}).output || {};
    setText("v-gaps", o.missing); setText("v-malformed", (o.malformed || 0) + (v.rejected || 0));
    setText("v-cpu", fmt(v.cpu_percent_one_core, 1));
    if (v.activity_frames > 0 && v.frames_in === 0) drawText($("cv-decoded"), "the service publishes activity frames: nothing decoded");
    $("nrt").hidden = !!v.real_time; setText("nrt-why", v.not_real_time_why);
    const silent = $("silent");
    if (v.service_silent_s !== null && v.service_silent_s > 3) { silent.hidden = false; silent.textContent = "service silent for " + v.service_silent_s.toFixed(0) + " s"; }
    else silent.hidden = true;
  }
  function onHello(h) {
    setText("display-note", "Display: " + h.display + ". Correlations " + h.correlation_where + "; rolling over the last " + h.rolling_frames + " frames that have a true stimulus.");
    setText("corr-where", h.correlation_where);
    setText("sources", "decoded " + h.decoded + " · status " + (h.status || "-") + " · stimulus " + (h.stimulus || "none"));
    if (!h.stimulus) drawText($("cv-true"), "no stimulus stream");
  }
  function onPong(p) {
    const t1 = performance.now(), rtt = t1 - p.t_page, offset = p.t_server_ms - (p.t_page + t1) / 2;
    syncs.push({ rtt, offset }); if (syncs.length > 16) syncs.shift();
    let best = syncs[0]; for (const s of syncs) if (s.rtt < best.rtt) best = s;
    rtv.offsetMs = best.offset; rtv.rttMs = best.rtt;
  }
  function send(obj) { if (ws && ws.readyState === 1) ws.send(JSON.stringify(obj)); }
  function ping() { send({ type: "ping", t_page: performance.now() }); }

  function connect() {
    const conn = $("conn");
    conn.textContent = "connecting"; conn.dataset.conn = "connecting";
    ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      rtv.connects++; backoff = 500; syncs.length = 0;
      conn.textContent = "connected"; conn.dataset.conn = "open";
      for (let i = 0; i < 5; i++) setTimeout(ping, 50 * i);
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== "string") { onFrame(ev.data); return; }
      const m = JSON.parse(ev.data);
      if (m.type === "status") onStatus(m); else if (m.type === "viewer") onViewer(m);
      else if (m.type === "pong") onPong(m); else if (m.type === "hello") onHello(m);
    };
    ws.onclose = () => {
      conn.textContent = "disconnected: retrying"; conn.dataset.conn = "closed";
      setTimeout(connect, backoff); backoff = Math.min(5000, backoff * 2);
    };
  }
  // paint reports go back in batches (4 messages/s instead of one per frame)
  let reports = [], arrivals = [], reportDropped = 0;
  setInterval(() => {
    if (!reports.length) return;
    send({ type: "paints", latency_ms: reports, arrive_ms: arrivals, rtt_ms: rtv.rttMs, dropped: reportDropped });
    reports = []; arrivals = []; reportDropped = 0;
  }, 250);
  setInterval(ping, 2000);
  connect();
})();
