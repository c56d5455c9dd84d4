"""Benchmark of the online deconvolution stage: speed per frame and accuracy.

Run::

    python -m benchmarks.deconv [--quick] --out FILE.json

Speed: median and p99 wall time of one ``OnlineDeconvolver.__call__`` (FluorescenceFrame ->
ActivityFrame, all ROIs, after warm-up and the initial batch) for N = 1,000 / 10,000 /
100,000 ROIs with numba on 1 and 2 threads (AR(1), otherwise default settings; ``rt_decoder_ar2``:
AR(2), 1 thread; ``rt_decoder_auto``: ``model="auto"``, the default, 1 thread, with the
fraction of ROIs it put on AR(2)); with one thread also the calling thread's CPU time per frame
(``frame_cpu_ms_*``), which a shared, loaded machine does not inflate; compared, in the
same run, with

- ``per_neuron_online``: the common online practice (CaImAn OnACID style): one OASIS
  object per neuron, ``fit_next(y)`` called in a Python loop for every neuron and frame.
  CaImAn's object is Cython; here each object's ``fit_next`` is a compiled numba function
  on the object's own state array (the same pool algorithm), so the loop pays Python's
  per-call overhead as CaImAn's does (more per call than Cython: see ``us_per_neuron_frame``);
- ``oasis_batch``: oasis-deconv's ``oasisAR1`` / ``oasisAR2`` on whole traces, one call
  per neuron; its per-frame time is the total divided by the number of frames (amortised,
  not a live latency; for 100,000 neurons extrapolated from 10,000).

Accuracy (1): mean over neurons of the Pearson correlation between inferred and true spikes,
on simulated AR(1) and AR(2) traces at several SNRs (one spike's calcium jump divided by
the noise standard deviation), for the stage read out at lags 0/1/2/5/30 frames (known
kinetics, all else estimated online), the same stage with estimated kinetics
(``rt_decoder_est``), the per-neuron online loop, and batch OASIS with known kinetics
(``oasis.functions.deconvolve``, L1 penalty chosen from the noise level, baseline
optimised: its documented default). These rows have ``indicator: null``.

Accuracy (2), per indicator of the virtual rig (``rt_decoder.sim.INDICATORS``: GCaMP6s,
6f, 7f, 8f, 8m, 8s; rows with ``indicator``): see ``indicator_accuracy``; ``spike_corr``
as above and ``spike_corr_smoothed`` (the protocol of the real ground-truth recordings:
Gaussian smoothing, sigma 2 frames, of estimate and spike counts, first 300 frames out).
Models ``ar1``, ``ar2`` and ``auto`` (per-ROI choice, ``ar2_fraction``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

FS_HZ = 30.0
TAU_DECAY_S = 0.65  # gamma = 0.95 at 30 Hz, as in REFERENCE.md section 4
TAU_RISE_S = 0.05
SPIKE_RATE_HZ = 1.0
F0 = 100.0
SPIKE_DFF = 0.1


# --------------------------------------------------------------------------- data
def ar_coefs(model: str) -> tuple[float, float]:
    d = float(np.exp(-1.0 / (TAU_DECAY_S * FS_HZ)))
    if model == "ar1":
        return d, 0.0
    r = float(np.exp(-1.0 / (TAU_RISE_S * FS_HZ)))
    return d + r, -d * r


def simulate(n: int, T: int, model: str, snr: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Raw fluorescence (T, n) float32 and true spike counts (T, n) of AR(p) neurons."""
    g1, g2 = ar_coefs(model)
    spikes = rng.poisson(SPIKE_RATE_HZ / FS_HZ, (T, n)).astype(np.float64)
    c = np.zeros((T, n))
    for t in range(T):
        c[t] = spikes[t] + (g1 * c[t - 1] if t >= 1 else 0.0) + (g2 * c[t - 2] if t >= 2 else 0.0)
    amp = F0 * SPIKE_DFF
    F = F0 + amp * c + (amp / snr) * rng.standard_normal((T, n))
    return F.astype(np.float32), spikes


class FrameSource:
    """Streams simulated AR(1) frames for N ROIs without holding them all in memory."""

    def __init__(self, n: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.g = ar_coefs("ar1")[0]
        self.c = np.zeros(n, np.float32)
        self.n = n

    def next(self) -> np.ndarray:
        self.c *= self.g
        self.c += (self.rng.random(self.n, dtype=np.float32) < SPIKE_RATE_HZ / FS_HZ)
        noise = self.rng.standard_normal(self.n, dtype=np.float32)
        return (F0 + 10.0 * self.c + 3.3 * noise).astype(np.float32)  # SNR about 3


def spike_corr(est: np.ndarray, spikes: np.ndarray) -> float:
    """Mean over neurons of corr(est[:, i], spikes[:, i]) (neurons with no variance skipped)."""
    e = est - est.mean(0)
    s = spikes - spikes.mean(0)
    den = np.sqrt((e * e).sum(0) * (s * s).sum(0))
    ok = den > 0
    return float(np.mean((e * s).sum(0)[ok] / den[ok])) if ok.any() else float("nan")


# --------------------------------------------------------------------------- per-neuron online
def _make_fit_next() -> Any:
    import numba as nb

    @nb.njit("float64(float64[::1], float64, int64)", cache=True, nogil=True)
    def fit_next(state: np.ndarray, y: float, lag: int) -> float:  # pragma: no cover - numba
        # state: [count, t, g, s_min, K, pools (v, w, g^l, l) x K]; AR(1) OASIS (oasisAR1 rules)
        cnt = int(state[0])
        t = int(state[1])
        g = state[2]
        smin = state[3]
        K = int(state[4])
        base = 5
        if cnt == K:  # full: forget the oldest half (CaImAn keeps a growing vector)
            h = K // 2
            for k in range(4 * (K - h)):
                state[base + k] = state[base + 4 * h + k]
            cnt -= h
        p = base + 4 * cnt
        state[p] = y
        state[p + 1] = 1.0
        state[p + 2] = g
        state[p + 3] = 1.0
        cnt += 1
        while cnt > 1:
            a = base + 4 * (cnt - 2)
            b = a + 4
            if state[a] / state[a + 1] * state[a + 2] + smin > state[b] / state[b + 1]:
                gl = state[a + 2]
                state[a] += state[b] * gl
                state[a + 1] += state[b + 1] * gl * gl
                state[a + 2] = gl * state[b + 2]
                state[a + 3] += state[b + 3]
                cnt -= 1
            else:
                break
        state[0] = cnt
        state[1] = t + 1
        # readout at lag: walk back to the pool holding frame t - lag
        u = t - lag
        end = t
        j = cnt - 1
        while j >= 0:
            q = base + 4 * j
            start = end - int(state[q + 3]) + 1
            if u >= start:
                if u != start or j == 0:
                    return 0.0
                c = state[q] / state[q + 1]
                c = c if c >= smin else 0.0
                qp = q - 4
                cp = state[qp] / state[qp + 1]
                cp = 0.0 if cp < (0.0 if j - 1 == 0 else smin) else cp
                return c - g * cp * state[qp + 2] / g
            end = start - 1
            j -= 1
        return 0.0

    return fit_next


class PerNeuronOasis:
    """One neuron's online AR(1) OASIS with a CaImAn-like ``fit_next`` (see module docstring)."""

    K = 64

    def __init__(self, g: float, s_min: float, fit_next: Any) -> None:
        self.state = np.zeros(5 + 4 * self.K)
        self.state[2], self.state[3], self.state[4] = g, s_min, self.K
        self._fit = fit_next

    def fit_next(self, y: float, lag: int) -> float:
        return self._fit(self.state, y, lag)


def per_neuron_run(Y: np.ndarray, g: float, s_min: np.ndarray, lag: int, fit_next: Any) -> np.ndarray:
    """Python loop over neurons per frame; Y is already baseline-free dF/F (T, n)."""
    T, n = Y.shape
    objs = [PerNeuronOasis(g, float(s_min[i]), fit_next) for i in range(n)]
    out = np.zeros((T, n))
    for t in range(T):
        row = Y[t].tolist()
        for i, o in enumerate(objs):
            out[t, i] = o.fit_next(row[i], lag)
    return out


# --------------------------------------------------------------------------- speed
def time_stage(n: int, threads: int, frames: int, seed: int, model: str = "ar1") -> dict[str, Any]:
    import numba

    from rt_decoder.deconv import DeconvSettings, OnlineDeconvolver
    from rt_decoder.messages import FluorescenceFrame

    numba.set_num_threads(threads)
    s = DeconvSettings(model=model)
    src = FrameSource(n, seed)
    stage = OnlineDeconvolver(s, n, FS_HZ)
    stage.process(np.stack([src.next() for _ in range(s.init_frames)]))
    for i in range(20):  # warm
        stage(FluorescenceFrame(seq=i, frame_index=i, acq_ns=0, values=src.next()))
    ts = np.empty(frames)
    cpu = np.empty(frames)
    for i in range(frames):
        fr = FluorescenceFrame(seq=i, frame_index=i, acq_ns=0, values=src.next())
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        stage(fr)
        ts[i] = time.perf_counter_ns() - t0
        cpu[i] = time.thread_time_ns() - c0
    ts /= 1e6
    row = {"impl": "rt_decoder" if model == "ar1" else f"rt_decoder_{model}", "neurons": n, "threads": threads,
           "frame_ms_median": float(np.median(ts)), "frame_ms_p99": float(np.percentile(ts, 99)),
           "frames_timed": frames}
    if model == "auto":
        assert stage.parameters is not None
        row["ar2_fraction"] = float(np.mean(stage.parameters.g2 != 0.0))
    if threads == 1:  # CPU time of the calling thread (= all the work on one thread): immune to preemption
        row["frame_cpu_ms_median"] = float(np.median(cpu) / 1e6)
        row["frame_cpu_ms_p99"] = float(np.percentile(cpu, 99) / 1e6)
    return row


def time_per_neuron(n: int, frames: int, seed: int, fit_next: Any) -> dict[str, Any]:
    src = FrameSource(n, seed)
    g = ar_coefs("ar1")[0]
    objs = [PerNeuronOasis(g, 0.0, fit_next) for _ in range(n)]  # default settings: no penalty
    ts = np.empty(frames)
    for k in range(frames + 10):
        row = ((src.next() - F0) / F0).tolist()
        t0 = time.perf_counter_ns()
        for i, o in enumerate(objs):
            o.fit_next(row[i], 5)
        if k >= 10:
            ts[k - 10] = time.perf_counter_ns() - t0
    ts /= 1e6
    med = float(np.median(ts))
    return {"impl": "per_neuron_online", "neurons": n, "threads": 1, "frame_ms_median": med,
            "frame_ms_p99": float(np.percentile(ts, 99)), "frames_timed": frames,
            "us_per_neuron_frame": med * 1e3 / n}


def time_batch(n: int, T: int, seed: int) -> dict[str, Any]:
    from oasis.oasis_methods import oasisAR1

    m = min(n, 10_000)
    src = FrameSource(m, seed)
    Y = ((np.stack([src.next() for _ in range(T)]) - F0) / F0).astype(np.float64)
    g = ar_coefs("ar1")[0]
    cols = [np.ascontiguousarray(Y[:, i]) for i in range(m)]
    t0 = time.perf_counter_ns()
    for y in cols:
        oasisAR1(y, g, 0.0, 0.0)
    total_ms = (time.perf_counter_ns() - t0) / 1e6 * (n / m)
    per = total_ms / T
    row: dict[str, Any] = {"impl": "oasis_batch", "neurons": n, "threads": 1, "frame_ms_median": per,
                           "frame_ms_p99": per, "amortised_over_frames": T}
    if m < n:
        row["extrapolated_from_neurons"] = m
    return row


# --------------------------------------------------------------------------- accuracy
def accuracy(model: str, snr: float, n: int, T: int, lags: list[int], seed: int, fit_next: Any,
             n_per_neuron: int) -> list[dict[str, Any]]:
    from oasis.functions import deconvolve

    from rt_decoder.deconv import DeconvSettings, deconvolve_array

    rng = np.random.default_rng(seed)
    F, spikes = simulate(n, T, model, snr, rng)
    rows: list[dict[str, Any]] = []
    g = ar_coefs(model)
    tau_r = 0.0 if model == "ar1" else TAU_RISE_S  # same g as ar_coefs (oasis.functions.tau_to_ar1/2)
    batch = np.zeros((T, n))
    for i in range(n):
        batch[:, i] = deconvolve(F[:, i].astype(np.float64), tau_d=TAU_DECAY_S, tau_r=tau_r, framerate=FS_HZ,
                                 penalty=1)[1]
    rows.append({"impl": "oasis_batch", "indicator": None, "model": model, "snr": snr, "lag_frames": None,
                 "spike_corr": spike_corr(batch, spikes)})
    for L in lags:
        row_lag: dict[str, Any] = {"indicator": None, "model": model, "snr": snr, "lag_frames": L}
        # revise_frames = L (>= the default 5): the row is the estimate as read at lag L
        rev = max(5, L)
        s = DeconvSettings(model=model, kinetics="fixed", tau_decay_s=TAU_DECAY_S, tau_rise_s=TAU_RISE_S,
                           lag_frames=L, revise_frames=rev, history_frames=max(64, L + 1))
        est = deconvolve_array(F, FS_HZ, s)
        rows.append({"impl": "rt_decoder", **row_lag, "spike_corr": spike_corr(est, spikes)})
        s_est = DeconvSettings(model=model, kinetics="estimate", lag_frames=L, revise_frames=rev,
                               history_frames=max(64, L + 1))
        est2 = deconvolve_array(F, FS_HZ, s_est)
        rows.append({"impl": "rt_decoder_est", **row_lag, "spike_corr": spike_corr(est2, spikes)})
        if model == "ar1" and n_per_neuron > 0:
            from rt_decoder.deconv import estimate_parameters

            m = min(n, n_per_neuron)
            p = estimate_parameters(F[:300, :m], FS_HZ, s)
            Y = (F[:, :m] - p.baseline_f) / p.baseline_f
            lagged = per_neuron_run(Y, g[0], s.penalty_sigmas * p.sigma_y, L, fit_next)
            aligned = np.zeros_like(lagged)
            aligned[:T - L] = lagged[L:]
            rows.append({"impl": "per_neuron_online", **row_lag, "spike_corr": spike_corr(aligned, spikes[:, :m]),
                         "neurons_evaluated": m})
    return rows


def smoothed_corr(est: np.ndarray, spikes: np.ndarray, sigma_frames: float = 2.0, skip_frames: int = 300) -> float:
    """The real-data protocol: mean over neurons of corr after Gaussian smoothing (sigma 2 frames) of
    both the estimate and the spike counts, the first ``skip_frames`` frames left out."""
    from scipy.ndimage import gaussian_filter1d

    e = gaussian_filter1d(np.asarray(est, np.float64)[skip_frames:], sigma_frames, axis=0)
    sp = gaussian_filter1d(np.asarray(spikes, np.float64)[skip_frames:], sigma_frames, axis=0)
    return spike_corr(e, sp)


def indicator_accuracy(indicator: str, n: int, trials: int, seed: int) -> list[dict[str, Any]]:
    """Accuracy on the virtual rig's imaging of one indicator (rt_decoder.sim presets).

    Spikes: the rig's stimulus-driven gamma-Poisson trains of ``n`` neurons over ``trials``
    10 s trials; fluorescence: the rig's imaging (indicator kinetics and saturation,
    neuropil, drift, shot noise), one continuous session. Rows: the stage with
    model ar1 / ar2 / auto (kinetics estimated, no indicator prior) at lag 5 and fully
    revised (lag = revise = 60), ``auto`` with the indicator's preset, the per-ROI
    kinetics estimate of earlier versions (``kinetics="per_roi"``) and the preset's kinetics
    for every ROI (``kinetics="fixed"``, the simulation's median values), both at lag 5 and
    fully revised, and batch OASIS
    (``oasis.functions.deconvolve``, AR(1) / AR(2) with its own per-trace estimation).
    """
    from oasis.functions import deconvolve

    from rt_decoder.deconv import DeconvSettings, OnlineDeconvolver, deconvolve_array, estimate_parameters
    from rt_decoder.sim import INDICATORS, RigConfig, VirtualRig

    INDICATOR_TAU_DECAY_S = {k: v.tau_decay_s for k, v in INDICATORS.items()}  # noqa: N806

    rig = VirtualRig(RigConfig(n_neurons=n, seed=seed, indicator=indicator))
    gt = rig.ground_truth_session(range(trials))
    F, spikes = gt.fluorescence, gt.spikes
    preset = indicator.lower()
    rows: list[dict[str, Any]] = []

    def add(impl: str, model: str, lag: int | None, est: np.ndarray, **extra: Any) -> None:
        rows.append({"impl": impl, "indicator": indicator, "model": model, "snr": None, "lag_frames": lag,
                     "spike_corr": spike_corr(est, spikes), "spike_corr_smoothed": smoothed_corr(est, spikes), **extra})

    for model in ("ar1", "ar2", "auto"):
        for lag in (5, 60):
            s = DeconvSettings(model=model, lag_frames=lag, revise_frames=lag, history_frames=64)
            extra: dict[str, Any] = {"kinetics": "estimate", "indicator_prior": "auto"}
            if model == "auto" and lag == 5:
                st = OnlineDeconvolver(s, n, FS_HZ, warmup=False)
                st.process(F[:s.init_frames])
                assert st.parameters is not None
                extra["ar2_fraction"] = float(np.mean(st.parameters.g2 != 0.0))
            add("rt_decoder", model, lag, deconvolve_array(F, FS_HZ, s), **extra)
    add("rt_decoder", "auto", 5, deconvolve_array(F, FS_HZ, DeconvSettings(indicator=preset)),
        kinetics="estimate", indicator_prior=preset)
    for model in ("ar1", "ar2"):
        for lag in (5, 60):  # the estimator of earlier versions, and the readout finding it explains
            s = DeconvSettings(model=model, kinetics="per_roi", lag_frames=lag, revise_frames=lag)
            tau: dict[str, Any] = {}
            if model == "ar1" and lag == 5:  # how far the per-ROI decay estimates scatter
                g1 = estimate_parameters(F[:s.init_frames], FS_HZ, s).g1
                tau_s = -1.0 / (FS_HZ * np.log(g1))
                tau = {"tau_decay_s_median": float(np.median(tau_s)),
                       "tau_decay_s_p10_p90": [float(np.percentile(tau_s, 10)), float(np.percentile(tau_s, 90))],
                       "tau_decay_s_simulated_median": INDICATOR_TAU_DECAY_S[indicator]}
            add("rt_decoder_per_roi_kinetics", model, lag, deconvolve_array(F, FS_HZ, s), kinetics="per_roi",
                indicator_prior="auto", **tau)
            # the preset's (the simulation's median) kinetics for every ROI
            s = DeconvSettings(model=model, kinetics="fixed", indicator=preset, lag_frames=lag, revise_frames=lag)
            add("rt_decoder_preset_kinetics", model, lag, deconvolve_array(F, FS_HZ, s), kinetics="fixed",
                indicator_prior=preset)
    for tau_r, model in ((0.0, "ar1"), (None, "ar2")):  # decay (and rise) estimated per trace by OASIS
        batch = np.zeros(F.shape)
        for i in range(n):
            batch[:, i] = deconvolve(F[:, i].astype(np.float64), tau_d=None, tau_r=tau_r, penalty=1)[1]
        add("oasis_batch", model, None, batch)
    return rows


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.deconv", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    ap.add_argument("--out", required=True, help="JSON output file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import numba

    from rt_decoder.deconv import DeconvSettings

    q = args.quick
    sizes = [1_000, 10_000, 100_000]
    frames = {1_000: 300, 10_000: 200, 100_000: 60} if q else {1_000: 2000, 10_000: 1000, 100_000: 300}
    pn_frames = {1_000: 20, 10_000: 5, 100_000: 0} if q else {1_000: 200, 10_000: 50, 100_000: 5}
    acc_n, acc_T = (40, 1500) if q else (200, 3000)
    snrs = [1.0, 2.0, 3.3, 5.0]
    lags = [0, 1, 2, 5, 30]
    t_start = time.time()
    fit_next = _make_fit_next()
    speed: list[dict[str, Any]] = []
    for n in sizes:
        for th in (1, 2):
            if th <= numba.config.NUMBA_NUM_THREADS:
                speed.append(time_stage(n, th, frames[n], args.seed))
                print(f"  speed rt_decoder N={n} threads={th}: {speed[-1]['frame_ms_median']:.3f} ms", file=sys.stderr)
        speed.append(time_stage(n, 1, frames[n], args.seed, model="ar2"))
        speed.append(time_stage(n, 1, frames[n], args.seed, model="auto"))
        if pn_frames[n]:
            speed.append(time_per_neuron(n, pn_frames[n], args.seed, fit_next))
        speed.append(time_batch(n, 300 if q else 1000, args.seed))
    accuracy_rows: list[dict[str, Any]] = []
    for model in ("ar1", "ar2"):
        for snr in snrs:
            accuracy_rows += accuracy(model, snr, acc_n, acc_T, lags, args.seed, fit_next, 20 if q else 50)
            print(f"  accuracy {model} snr={snr} done", file=sys.stderr)
    from rt_decoder.sim import INDICATORS

    ind_n, ind_trials = (60, 5) if q else (200, 10)
    for ind in INDICATORS:
        accuracy_rows += indicator_accuracy(ind, ind_n, ind_trials, args.seed)
        print(f"  accuracy {ind} done", file=sys.stderr)
    result = {
        "benchmark": "deconv",
        "command": "python -m benchmarks.deconv" + (" --quick" if q else "") + f" --out {args.out}",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "numba_threads_max": numba.config.NUMBA_NUM_THREADS, "numba": numba.__version__,
                    "python": platform.python_version(),
                    "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "settings": DeconvSettings().to_dict(),
        "simulation": {"fs_hz": FS_HZ, "tau_decay_s": TAU_DECAY_S, "tau_rise_s": TAU_RISE_S,
                       "spike_rate_hz": SPIKE_RATE_HZ, "accuracy_neurons": acc_n, "accuracy_frames": acc_T,
                       "indicator_neurons": ind_n, "indicator_trials": ind_trials},
        "speed": speed,
        "accuracy": accuracy_rows,
        "wall_s": time.time() - t_start,
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print_table(result)
    return 0


def print_table(result: dict[str, Any]) -> None:
    print(f"# {result['command']}  (wall {result['wall_s']:.0f} s, load {result['machine']['loadavg_at_start']})")
    print(f"{'impl':<18} {'neurons':>8} {'thr':>3} {'median ms':>10} {'p99 ms':>9} {'cpu med':>8} {'cpu p99':>8}")
    for r in result["speed"]:
        cpu = (f" {r['frame_cpu_ms_median']:>8.3f} {r['frame_cpu_ms_p99']:>8.3f}" if "frame_cpu_ms_median" in r else "")
        print(f"{r['impl']:<18} {r['neurons']:>8} {r['threads']:>3} {r['frame_ms_median']:>10.3f} "
              f"{r['frame_ms_p99']:>9.3f}{cpu}")
    acc = [r for r in result["accuracy"] if r["indicator"] is None]
    lags = sorted({r["lag_frames"] for r in acc if r["lag_frames"] is not None})
    print(f"\n{'model':<5} {'snr':>4} {'impl':<18} " + " ".join(f"{'lag' + str(L):>7}" for L in lags) + f" {'batch':>7}")
    for model in ("ar1", "ar2"):
        for snr in sorted({r["snr"] for r in acc}):
            b = [r["spike_corr"] for r in acc if r["model"] == model and r["snr"] == snr and r["impl"] == "oasis_batch"]
            for impl in ("rt_decoder", "rt_decoder_est", "per_neuron_online"):
                vals = {r["lag_frames"]: r["spike_corr"] for r in acc
                        if r["model"] == model and r["snr"] == snr and r["impl"] == impl}
                if vals:
                    cells = " ".join(f"{vals.get(L, float('nan')):>7.3f}" for L in lags)
                    print(f"{model:<5} {snr:>4} {impl:<18} {cells} {b[0] if b else float('nan'):>7.3f}")
    ind_rows = [r for r in result["accuracy"] if r["indicator"] is not None]
    if ind_rows:
        print("\nvirtual-rig indicators, corr after smoothing (sigma 2 frames, first 300 frames out); "
              "rt_decoder at lag 5 / fully revised")
        print(f"{'indicator':<9} {'ar1':>13} {'ar2':>13} {'auto':>13} {'auto-best':>9} {'ar2 frac':>8} "
              f"{'auto+preset':>11} {'per-ROI ar1':>13} {'per-ROI ar2':>13} {'preset ar1':>13} {'preset ar2':>13} "
              f"{'batch ar1':>9} {'batch ar2':>9}")
        for ind in dict.fromkeys(r["indicator"] for r in ind_rows):
            rr = [r for r in ind_rows if r["indicator"] == ind]

            def get(impl: str, model: str, lag: int | None, prior: str = "auto") -> float:
                for r in rr:
                    if (r["impl"], r["model"], r["lag_frames"]) == (impl, model, lag) and \
                            r.get("indicator_prior", "auto") in (prior, None):
                        return float(r["spike_corr_smoothed"])
                return float("nan")

            icells = [f"{get('rt_decoder', m, 5):.3f}/{get('rt_decoder', m, 60):.3f}" for m in ("ar1", "ar2", "auto")]
            gap = get("rt_decoder", "auto", 5) - max(get("rt_decoder", "ar1", 5), get("rt_decoder", "ar2", 5))
            frac = next(r["ar2_fraction"] for r in rr if "ar2_fraction" in r)
            print(f"{ind:<9} {icells[0]:>13} {icells[1]:>13} {icells[2]:>13} {gap:>+9.3f} {frac:>8.2f} "
                  f"{get('rt_decoder', 'auto', 5, ind.lower()):>11.3f} "
                  + " ".join(f"{get(impl, m, 5, pr):.3f}/{get(impl, m, 60, pr):.3f}".rjust(13)
                             for impl, pr in (("rt_decoder_per_roi_kinetics", "auto"),
                                              ("rt_decoder_preset_kinetics", ind.lower()))
                             for m in ("ar1", "ar2"))
                  + f" {get('oasis_batch', 'ar1', None):>9.3f} {get('oasis_batch', 'ar2', None):>9.3f}")


if __name__ == "__main__":
    sys.exit(main())
