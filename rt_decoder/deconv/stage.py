"""The online deconvolution stage: fluorescence frames in, activity frames out.

``OnlineDeconvolver`` keeps, per ROI, a running baseline F0, the noise level, and the
OASIS pools of an AR(1) or AR(2) calcium model, and advances all ROIs by one frame in one
numba pass (``rt_decoder.deconv._kernels``). ``deconvolve_array`` runs the same stage over
a whole (T, N) array.

Timeline of a live stream
-------------------------
- Frames ``0 .. init_frames - 2``: buffered for parameter estimation; the stage returns an
  ActivityFrame of zeros for each (a live rig keeps its frame clock; nothing is dropped).
- Frame ``init_frames - 1``: parameters are estimated per ROI from the batch, the whole
  batch is deconvolved (catch-up; one-off cost measured here about 30 ms per 1,000 ROIs,
  i.e. that frame is late by 0.3 s at 10,000 ROIs, 0.6-1 s with ``model="auto"`` when a
  rise is resolvable, which compares both models' fits of the batch: pass ``parameters=``
  to avoid it) and this frame's activity is the real lagged estimate. ``recent(W)`` covers
  the batch frames from then on.
- Readout: an estimate is revised as new frames arrive until it is ``revise_frames`` old,
  then it is final (``recent`` returns it; a ``lag_frames`` beyond ``revise_frames`` reads it).
- Afterwards: each frame costs one kernel pass (two with ``model="auto"`` when the ROIs
  are split between AR(1) and AR(2)). The ActivityFrame returned for input
  frame t keeps t's ``seq``, ``frame_index`` and ``acq_ns`` (so stage latency is measured
  per input) and carries the estimate of frame ``t - lag_frames`` (``lag_frames`` is an
  attribute of the stage; 0 before the stream's first frame).
- Passing ``parameters=`` skips the initial batch (e.g. parameters from a calibration
  run): every frame is deconvolved from the first one.

Missing data: ``push_gap(n)`` and non-finite values of one ROI are missing samples (the
newest OASIS pool decays through them); they touch no other ROI, and once valid data return
the estimates are exactly those of a trace with NaN at those frames. A frame of the wrong
length raises ``ShapeMismatchError`` before any state changes.

This module imports numpy, the standard library and rt_decoder (numba via ``_kernels``,
lazily; no scipy).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rt_decoder.deconv._estimate import RoiParameters, estimate_parameters, gaussian_quantile_offset
from rt_decoder.deconv.settings import DeconvSettings
from rt_decoder.errors import ConfigError, ShapeMismatchError, StageError
from rt_decoder.messages import ActivityFrame, FluorescenceFrame

STAGE_NAME = "deconv"


class _Group:
    """The ROIs of one calcium model (AR(1) or AR(2)): the kernels' state arrays, owned here.

    ``cols`` is None when the group holds every ROI in order (no gather / scatter per frame).
    """

    def __init__(self, model: str, cols: np.ndarray | None, n: int, settings: DeconvSettings, kn: Any) -> None:
        K, H = settings.max_pools, settings.history_frames
        npf = kn.NPF_AR1 if model == "ar1" else kn.NPF_AR2
        self.model = model
        self.cols = cols
        self.n = n
        self.par = np.zeros((n, kn.NPAR), np.float64)
        self.st = np.zeros((n, kn.NST), np.float64)
        self.ist = np.zeros((n, kn.NIST), np.int64)
        self.pf = np.zeros((n, K, npf), np.float64)
        self.pl = np.zeros((n, K), np.int32)
        self.hist = np.zeros((H, n), np.float32)
        self.frz = np.zeros((H, n), np.float32)
        self.out1 = np.zeros((1, n), np.float32)
        self.recent_buf = np.zeros((H, n), np.float32)


class OnlineDeconvolver:
    """Frame-by-frame OASIS deconvolution of N ROIs.

    Parameters
    ----------
    settings : DeconvSettings or None
        Stage settings (default ``DeconvSettings()``).
    n_rois : int
        Number of ROIs N (>= 1); every frame must have exactly N values.
    frame_rate_hz : float
        Frame rate in Hz (sets the AR coefficients from time constants and the baseline
        tracker's step).
    parameters : RoiParameters or None, keyword-only
        Per-ROI parameters; when given, no initial batch is collected. With
        ``model="auto"`` ROIs with ``g2 == 0`` run the AR(1) model, the others AR(2).
    warmup : bool, keyword-only
        Compile / load the numba kernels now (default True); otherwise on first use.

    Notes
    -----
    With ``model="auto"`` the ROIs are split into an AR(1) and an AR(2) group once their
    models are known (after the initial batch); each group is one kernel pass per frame, on
    its own state arrays, with the group's columns gathered from and scattered to the frame
    (nothing of the kind when all ROIs share one model).
    """

    def __init__(self, settings: DeconvSettings | None, n_rois: int, frame_rate_hz: float, *,
                 parameters: RoiParameters | None = None, warmup: bool = True) -> None:
        self.settings = settings if settings is not None else DeconvSettings()
        if isinstance(n_rois, bool) or not isinstance(n_rois, (int, np.integer)) or not 1 <= n_rois <= 10_000_000:
            raise ConfigError(f"n_rois must be an int in [1, 10000000], got {n_rois!r}")
        if not (isinstance(frame_rate_hz, (int, float)) and math.isfinite(frame_rate_hz)
                and 0.0 < frame_rate_hz <= 10_000.0):
            raise ConfigError(f"frame_rate_hz must be in (0, 10000], got {frame_rate_hz!r}")
        if parameters is not None and parameters.n_rois != n_rois:
            raise ConfigError(f"parameters are for {parameters.n_rois} ROIs, the stage has {n_rois}")
        self.n_rois = int(n_rois)
        self.frame_rate_hz = float(frame_rate_hz)
        self.lag_frames = self.settings.lag_frames
        self.revise_frames = self.settings.revise_frames
        self._given_parameters = parameters
        self._kernels: dict[str, Any] = {}
        from rt_decoder.deconv import _kernels as kn

        self._kn = kn
        self._groups: list[_Group] = []
        self._group_key: tuple[bytes, ...] | None = None
        self._init_buf: np.ndarray | None = None
        self.reset()
        if warmup:
            self.warmup()

    # ------------------------------------------------------------------ lifecycle
    @property
    def parameters(self) -> RoiParameters | None:
        """Per-ROI parameters in use (None while the initial batch is being collected)."""
        return self._params

    @property
    def ready(self) -> bool:
        """True once parameters are known and frames are being deconvolved."""
        return self._params is not None

    @property
    def frames_seen(self) -> int:
        """Frames of the stream so far, missing ones (gaps) included."""
        return self._t

    @property
    def roi_models(self) -> np.ndarray | None:
        """Per-ROI model, ``"ar1"``/``"ar2"`` (N,) strings, once parameters are known."""
        if self._params is None:
            return None
        return np.where(self._is_ar2, "ar2", "ar1")

    def _models_in_play(self) -> tuple[str, ...]:
        if self._groups:
            return tuple(sorted({g.model for g in self._groups}))
        m = self.settings.model
        return ("ar1", "ar2") if m == "auto" else (m,)

    def _kernel(self, name: str) -> Any:
        fn = self._kernels.get(name)
        if fn is None:
            fn = self._kernels[name] = self._kn.get_kernel(name)
        return fn

    def warmup(self) -> None:
        """Compile (or load from cache) the kernels this stage can use and run them once on a dummy ROI."""
        kn = self._kn
        for m in self._models_in_play():
            npf = kn.NPF_AR1 if m == "ar1" else kn.NPF_AR2
            par = np.zeros((1, kn.NPAR))
            par[0, [kn.P_G1, kn.P_D, kn.P_SF, kn.P_GINV]] = 0.9, 0.9, 1.0, 1 / 0.9
            if m == "ar2":
                par[0, [kn.P_G1, kn.P_G2, kn.P_D, kn.P_R]] = 1.4, -0.45, 0.9, 0.5
            st = np.zeros((1, kn.NST))
            ist = np.zeros((1, kn.NIST), np.int64)
            pf = np.zeros((1, 4, npf))
            pl = np.zeros((1, 4), np.int32)
            hist = np.zeros((4, 1), np.float32)
            frz = np.zeros((4, 1), np.float32)
            out = np.zeros((8, 1), np.float32)
            self._kernel(f"block_{m}")(np.ones((8, 1), np.float32), 0, 1, 2, par, st, ist, pf, pl, hist, frz, 0, out)
            self._kernel(f"gap_{m}")(2, 8, 2, par, st, ist, pf, pl, hist, frz)
            self._kernel(f"recent_{m}")(9, 2, par, st, ist, pf, pl, hist, frz, out[:3])
            if self.settings.reestimate_every_s > 0:
                self._kernel(f"flush_{m}")(9, par, st, ist, pf, pl, hist)

    def reset(self) -> None:
        """Forget the stream: back to frame 0 (and to the initial batch unless parameters were given)."""
        self._t = 0
        self._params: RoiParameters | None = None
        for g in self._groups:
            for a in (g.pl, g.pf, g.ist, g.st, g.hist, g.frz):
                a.fill(0)
        self._init_buf = None
        self._init_n = 0
        s = self.settings
        self._reest_every = max(1, round(s.reestimate_every_s * self.frame_rate_hz)) if s.reestimate_every_s > 0 else 0
        self._ring: np.ndarray | None = None
        self._next_reest = -1
        if self._reest_every:
            self._ring = np.full((s.init_frames, self.n_rois), np.nan, np.float32)
        if self._given_parameters is not None:
            self._set_parameters(self._given_parameters)
        else:
            self._init_buf = np.zeros((self.settings.init_frames, self.n_rois), np.float32)

    def _make_groups(self, is_ar2: np.ndarray) -> None:
        key = (is_ar2.tobytes(),)
        if key == self._group_key:
            return
        s, kn, N = self.settings, self._kn, self.n_rois
        n2 = int(is_ar2.sum())
        if n2 == 0 or n2 == N:
            self._groups = [_Group("ar2" if n2 else "ar1", None, N, s, kn)]
        else:
            self._groups = [_Group("ar1", np.flatnonzero(~is_ar2), N - n2, s, kn),
                            _Group("ar2", np.flatnonzero(is_ar2), n2, s, kn)]
        self._group_key = key

    def _set_parameters(self, p: RoiParameters, *, keep_baseline: bool = False) -> None:
        kn, s = self._kn, self.settings
        g1 = p.g1
        if s.model == "ar1":
            g2 = np.zeros_like(p.g2)
            is_ar2 = np.zeros(self.n_rois, bool)
        elif s.model == "ar2":
            g2 = p.g2
            is_ar2 = np.ones(self.n_rois, bool)
        else:
            g2 = p.g2
            is_ar2 = g2 != 0.0
        disc = g1 * g1 + 4 * g2
        with np.errstate(invalid="ignore"):
            d2 = (g1 + np.sqrt(disc)) / 2
            r2 = (g1 - np.sqrt(disc)) / 2
        d = np.where(is_ar2, d2, g1)
        r = np.where(is_ar2, r2, 0.0)
        bad2 = ~(np.isfinite(d) & (d < 1) & (r > 0) & (d - r >= 1e-3))
        bad1 = ~((g1 > 0) & (g1 < 1))
        bad = np.where(is_ar2, bad2, bad1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"ROI {i}: AR coefficients g1={g1[i]!r}, g2={g2[i]!r} are not a decaying "
                              f"{'two-root' if is_ar2[i] else 'one-root'} calcium kernel")
        if keep_baseline:
            base = self._gather_state(kn.S_BASE)
        self._make_groups(is_ar2)
        pen = s.penalty_sigmas * p.sigma_y
        z = gaussian_quantile_offset(s.baseline_quantile) if s.baseline == "tracked" else 0.0
        for g in self._groups:
            c = slice(None) if g.cols is None else g.cols
            par = g.par
            par[:, kn.P_G1] = g1[c]
            par[:, kn.P_G2] = g2[c]
            par[:, kn.P_D] = d[c]
            par[:, kn.P_R] = r[c]
            par[:, kn.P_SHIFT] = (pen * (1 - g1 - g2))[c] if s.penalty == "l1" else 0.0
            par[:, kn.P_SMIN] = pen[c] if s.penalty == "s_min" else 0.0
            par[:, kn.P_SF] = p.sigma_f[c]
            par[:, kn.P_GINV] = 1.0 / g1[c]
            if s.baseline == "tracked":
                par[:, kn.P_STEP] = s.baseline_rate_sigmas_per_s * p.sigma_f[c] / self.frame_rate_hz
                par[:, kn.P_Q] = s.baseline_quantile
                par[:, kn.P_ZOFF] = z * p.sigma_f[c]
            else:
                par[:, kn.P_STEP] = 0.0
                par[:, kn.P_ZOFF] = 0.0
            if keep_baseline:
                g.st[:, kn.S_BASE] = base[c]
            else:
                g.st[:, kn.S_BASE] = (p.baseline_f - z * p.sigma_f)[c]
        self._flags = (kn.FLAG_DFF if s.normalise == "dff" else 0) | (kn.FLAG_TRACK if s.baseline == "tracked" else 0)
        self._params = p
        self._is_ar2 = is_ar2
        if self._reest_every:
            self._next_reest = self._t + self._reest_every

    def _gather_state(self, col: int) -> np.ndarray:
        out = np.empty(self.n_rois)
        for g in self._groups:
            out[slice(None) if g.cols is None else g.cols] = g.st[:, col]
        return out

    # ------------------------------------------------------------------ frames
    def _check(self, values: np.ndarray) -> np.ndarray:
        arr = np.asarray(values)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.n_rois:
            raise ShapeMismatchError(f"deconvolution stage expects frames of {self.n_rois} ROIs, "
                                     f"got an array of shape {np.shape(values)}")
        if not np.issubdtype(arr.dtype, np.number):
            raise StageError(f"fluorescence values must be numeric, got dtype {arr.dtype}")
        X = np.ascontiguousarray(arr, dtype=np.float32)
        if not X.flags.writeable:  # e.g. a zero-copy view of a network buffer: the kernels take writable arrays
            X = X.copy()
        return X

    def process(self, values: np.ndarray) -> np.ndarray:
        """Advance by one frame (N,) or a block of frames (T, N) of raw fluorescence.

        Returns
        -------
        ndarray, float32, shape (T, N)
            Row k: activity estimate of frame ``t_k - lag_frames`` (t_k = stream index of
            row k), read right after row k; zeros for rows inside the initial batch
            except its last one. The array is a fresh copy.
        """
        X = self._check(values)
        T = X.shape[0]
        out = np.zeros((T, self.n_rois), np.float32)
        k = 0
        if self._params is None:
            assert self._init_buf is not None
            take = min(T, self._init_buf.shape[0] - self._init_n)
            self._init_buf[self._init_n:self._init_n + take] = X[:take]
            self._init_n += take
            self._t += take
            self._record(X[:take])
            k = take
            if self._init_n == self._init_buf.shape[0]:
                out[k - 1] = self._finish_init()
        while k < T:
            m = T - k if self._next_reest < 0 else min(T - k, max(1, self._next_reest - self._t))
            self._run(X[k:k + m], out[k:k + m])
            k += m
            self._maybe_reestimate()
        return out

    def _record(self, X: np.ndarray) -> None:
        # keep the last init_frames raw frames for slow re-estimation (only when enabled)
        ring = self._ring
        if ring is None:
            return
        R = ring.shape[0]
        rows = X[-R:]
        idx = (self._t - rows.shape[0] + np.arange(rows.shape[0])) % R
        ring[idx] = rows

    def _maybe_reestimate(self) -> None:
        if self._next_reest >= 0 and self._t >= self._next_reest:
            self.reestimate()

    def reestimate(self) -> None:
        """Re-estimate noise, penalty and (with ``kinetics`` not ``"fixed"``) kinetics per ROI.

        Uses the last ``init_frames`` raw frames (kept only when ``reestimate_every_s`` > 0;
        then called automatically every ``reestimate_every_s`` seconds of stream, at the same
        frames however the stream is chunked). The baseline tracker carries on; each ROI
        keeps the model chosen at start (``model="auto"``). New kinetics invalidate the
        OASIS pools: they are committed first (their estimates become final).
        Costs about as much as the initial estimation (synchronous, in the frame that
        triggers it).
        """
        if self._ring is None:
            raise StageError("reestimate() needs settings.reestimate_every_s > 0 (keeps the recent raw frames)")
        if self._params is None:
            return
        R = self._ring.shape[0]
        order = (self._t + np.arange(R)) % R
        kn, s, old = self._kn, self.settings, self._params
        new = estimate_parameters(self._ring[order], self.frame_rate_hz, s, ar2_rois=self._is_ar2)
        if s.kinetics != "fixed":
            for g in self._groups:
                self._kernel(f"flush_{g.model}")(self._t - 1, g.par, g.st, g.ist, g.pf, g.pl, g.hist)
            g1, g2 = new.g1, new.g2
        else:
            g1, g2 = old.g1, old.g2
        z = gaussian_quantile_offset(s.baseline_quantile) if s.baseline == "tracked" else 0.0
        baseline = self._gather_state(kn.S_BASE) + z * new.sigma_f
        self._set_parameters(RoiParameters(g1=g1, g2=g2, baseline_f=baseline, sigma_f=new.sigma_f,
                                           sigma_y=new.sigma_y), keep_baseline=True)

    def _run(self, X: np.ndarray, out: np.ndarray) -> None:
        for g in self._groups:
            fn = self._kernel(f"block_{g.model}")
            if g.cols is None:
                fn(X, self._t, self.lag_frames, self.revise_frames, g.par, g.st, g.ist, g.pf, g.pl, g.hist, g.frz,
                   self._flags, out)
            else:
                gout = np.empty((X.shape[0], g.n), np.float32) if X.shape[0] > 1 else g.out1
                fn(np.ascontiguousarray(X[:, g.cols]), self._t, self.lag_frames, self.revise_frames, g.par, g.st,
                   g.ist, g.pf, g.pl, g.hist, g.frz, self._flags, gout)
                out[:, g.cols] = gout
        self._t += X.shape[0]
        self._record(X)

    def _finish_init(self) -> np.ndarray:
        buf = self._init_buf
        assert buf is not None
        self._set_parameters(estimate_parameters(buf, self.frame_rate_hz, self.settings))
        n = buf.shape[0]
        self._t -= n
        res = np.zeros_like(buf)
        ring, self._ring = self._ring, None  # these frames are recorded already
        self._run(buf, res)
        self._ring = ring
        self._init_buf = None
        if self._reest_every:
            self._next_reest = self._t + self._reest_every
        return res[-1]

    def __call__(self, frame: FluorescenceFrame) -> ActivityFrame:
        """Deconvolve one frame; see the module docstring for what the values mean."""
        X = self._check(frame.values)
        if X.shape[0] != 1:
            raise ShapeMismatchError(f"a FluorescenceFrame holds one frame, got values of shape {np.shape(frame.values)}")
        if self._params is None:
            values = self.process(X)[0]
        else:
            values = np.empty(self.n_rois, np.float32)
            self._run(X, values[None, :])
            self._maybe_reestimate()
        act = ActivityFrame(seq=frame.seq, frame_index=frame.frame_index, acq_ns=frame.acq_ns,
                            stamps=frame.stamps, values=values, behaviour=frame.behaviour)
        return act.with_stamp(STAGE_NAME)

    def push_gap(self, n_missing: int) -> None:
        """Account for ``n_missing`` lost frames: missing samples for every ROI (not zeros)."""
        if isinstance(n_missing, bool) or not isinstance(n_missing, (int, np.integer)) or n_missing < 0:
            raise StageError(f"n_missing must be a non-negative int, got {n_missing!r}")
        n = int(n_missing)
        if n == 0:
            return
        if self._params is None:
            assert self._init_buf is not None
            room = self._init_buf.shape[0] - self._init_n
            if n < room:
                self._init_buf[self._init_n:self._init_n + n] = np.nan
                self._init_n += n
                self._t += n
                if self._ring is not None:
                    self._record(np.full((n, self.n_rois), np.nan, np.float32))
                return
            self.process(np.full((room, self.n_rois), np.nan, np.float32))
            n -= room
            if n == 0:
                return
        while n > 0:
            m = n if self._next_reest < 0 else min(n, max(1, self._next_reest - self._t))
            for g in self._groups:
                self._kernel(f"gap_{g.model}")(m, self._t, self.revise_frames, g.par, g.st, g.ist, g.pf, g.pl,
                                               g.hist, g.frz)
            self._t += m
            n -= m
            if self._ring is not None:
                self._record(np.full((min(m, self._ring.shape[0]), self.n_rois), np.nan, np.float32))
            self._maybe_reestimate()

    def recent(self, n_frames: int) -> np.ndarray:
        """Activity estimates of the last ``n_frames`` frames.

        Frames younger than ``revise_frames`` carry their current (provisional) estimate;
        older ones the estimate they had at ``revise_frames`` frames old (final).

        Returns
        -------
        ndarray, float32, shape (n_frames, N)
            Row ``n_frames - 1`` is the newest frame; frames before the stream (or not yet
            deconvolved, during the initial batch) are 0. A fresh copy.
        """
        H = self.settings.history_frames
        if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or not 1 <= n_frames <= H:
            raise StageError(f"n_frames must be an int in [1, history_frames={H}], got {n_frames!r}")
        W = int(n_frames)
        if self._params is None or self._t == 0:
            return np.zeros((W, self.n_rois), np.float32)
        if len(self._groups) == 1:
            g = self._groups[0]
            out = g.recent_buf[:W]
            self._kernel(f"recent_{g.model}")(self._t - 1, self.revise_frames, g.par, g.st, g.ist, g.pf, g.pl,
                                              g.hist, g.frz, out)
            return out.copy()
        res = np.empty((W, self.n_rois), np.float32)
        for g in self._groups:
            out = g.recent_buf[:W]
            self._kernel(f"recent_{g.model}")(self._t - 1, self.revise_frames, g.par, g.st, g.ist, g.pf, g.pl,
                                              g.hist, g.frz, out)
            res[:, g.cols] = out
        return res


def deconvolve_array(F: np.ndarray, frame_rate_hz: float, settings: DeconvSettings | None = None, *,
                     parameters: RoiParameters | None = None) -> np.ndarray:
    """Run the online stage over a whole recording, time-aligned.

    Parameters
    ----------
    F : ndarray, shape (T, N)
        Raw fluorescence, time-major (NaN/Inf = missing sample).
    frame_rate_hz : float
        Frame rate, Hz.
    settings : DeconvSettings or None
        Stage settings (default ``DeconvSettings()``).
    parameters : RoiParameters or None, keyword-only
        Fixed per-ROI parameters; by default estimated from the first
        ``settings.init_frames`` frames, exactly as the live stage does (from all frames
        when the recording is shorter; at least 30 are needed).

    Returns
    -------
    ndarray, float32, shape (T, N)
        Row t: the estimate of frame t as the live stage reads it out ``lag_frames``
        later (the last ``lag_frames`` rows: their latest estimates). With ``lag_frames``
        and ``revise_frames`` >= T this is the fully revised (batch-equivalent) solution;
        with the default ``revise_frames`` (5) every estimate is final at 5 frames old.
    """
    s = settings if settings is not None else DeconvSettings()
    X = np.asarray(F)
    if X.ndim != 2:
        raise ShapeMismatchError(f"deconvolve_array expects (T, N) fluorescence, got shape {X.shape}")
    T, N = X.shape
    if T == 0:
        return np.zeros((0, N), np.float32)
    if parameters is None:
        if T < 30:
            raise StageError(f"the recording has {T} frames: at least 30 are needed to estimate parameters")
        parameters = estimate_parameters(X[:min(s.init_frames, T)], frame_rate_hz, s)
    stage = OnlineDeconvolver(s, N, frame_rate_hz, parameters=parameters, warmup=False)  # kernels on first use
    lagged = stage.process(X)
    L = s.lag_frames
    if L == 0:
        return lagged
    if T <= L:
        return stage.recent(T)
    out = np.empty((T, N), np.float32)
    out[:T - L] = lagged[L:]
    out[T - L:] = stage.recent(L)
    return out
