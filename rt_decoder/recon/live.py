"""The live, sliding-window, warm-started reconstruction stage.

As each activity frame arrives the window of the last ``W`` frames (``W`` = the
encoder's window) slides by one; the new frame is initialised by a warm start (the
previous frame's solution, or grey); gradient steps run on the frames not yet frozen
until the per-frame time budget is spent (or a fixed number of steps, for reproducible
runs); the frame ``lag_frames`` behind the newest is then emitted and frozen: it leaves
the optimisation but stays in the window as temporal context for the encoder.

Targets for the whole window are refreshed on every frame from the deconvolution's
freshest estimates (``recent``), since OASIS revises recent frames as data arrive.

If the service hands over a frame whose index jumps ahead (reconstruction fell behind
and the service skipped to the newest window), the window advances by the jump; frames
that are emitted without having received a single step are counted in ``skipped``.

Each step (per ensemble member): gradient of the window's Poisson loss; zeroed on frozen
and not-yet-valid frames; divided by its L2 norm; masked to the alpha training mask;
Adam-style first-moment step with per-frame warm-up; clamp. With an ensemble, every
active member keeps its own video and the emitted frame is the members' mean, blurred
spatially with sigma ``blur_sigma_px``.

Encoders are anything with the ``Encoder`` protocol (``rt_decoder.encoder_protocol``); the
cached-context path (``cached_context=True``, what ``serve`` runs) needs ``LiveEncoder``s,
checked at construction.

This module never imports torch or zmq; time comes from an injectable clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from rt_decoder.encoder_protocol import Encoder, LiveEncoder
from rt_decoder.errors import ConfigError, ShapeMismatchError, StageError
from rt_decoder.messages import ActivityFrame, DecodedFrame
from rt_decoder.recon.amortised import AmortisedDecoder
from rt_decoder.recon.optim import OptimSettings, apply_step, normalise, precondition
from rt_decoder.settings import build, option, section, validate

WARM_STARTS = ("previous", "grey")

#: The live step rule (``LiveSettings().optim``, what ``serve`` runs): the published rule
#: with a 300-px step and gradient smoothing, chosen on validation trials
#: (``python -m benchmarks.quality --sweep``).
LIVE_OPTIM = OptimSettings(learning_rate_px=300.0, smooth_sigma_px=2.0, smooth_sigma_frames=1.0)


@dataclass(frozen=True)
class LiveSettings:
    """Settings of the live stage.

    lag_frames : decoding lag; frame t - lag_frames is emitted when frame t arrives
    fixed_steps : steps per frame per member; 0 = use the time budget instead
    budget_ms : per-frame time budget for gradient steps (all members together)
    steps_per_member : budget mode: gradient steps per frame for each member (fewer if the
        budget runs out first); the ensemble is sized so that this many fit the budget.
        More steps are not better: the live window overfits the noise of single-trial
        responses (measured: benchmarks.quality)
    max_members : cap on ensemble members used (0 = as many as the budget allows)
    warm_start : "previous" (copy the newest solution) or "grey"
    warm_start_decay : with "previous", the new frame starts at grey + decay * (previous -
        grey): below 1 it forgets what the data no longer support, so errors cannot
        accumulate over a long session
    blur_sigma_px : spatial Gaussian blur of the emitted frame (0 = off)
    blur_sigma_frames : temporal Gaussian blur of the emitted frame with its neighbours in the
        window (the frame before, already frozen, and the one after, still optimised); 0 = off
    amortised_start : with an amortised decoder (``rt_decoder.recon.amortised``), each frame
        restarts from the decoder's estimate once ``min(L - 1, lag_frames)`` later response
        frames are in (L: the decoder's ``response_frames``), and gradient steps refine it
        until it is emitted; False, or a model without one: warm start only
    target_ramp_frames : loss weight of a frame's responses ramps up linearly over its first
        frames in the window (age a -> min(1, (a + 1) / ramp)), since the deconvolution
        still revises the newest estimates; 0 = every frame weighs 1
    optim : the step rule (default ``LIVE_OPTIM``)

    Bounds and meanings are in the fields' metadata (``rt_decoder.settings.option``); the
    service's ``[reconstruction.live]`` table is this class.
    """

    lag_frames: int = option(15, "decoding lag: frame t - lag_frames is emitted when frame t arrives "
                             "(the live graph covers lag_frames + 1 frames)", 0, 120)
    fixed_steps: int = option(0, "gradient steps per frame per member (reproducible runs); 0 = use budget_ms",
                              0, 10_000)
    budget_ms: float = option(20.0, "per-frame time budget for gradient steps (all members together); "
                              "used when fixed_steps = 0", 1e-3, 10_000.0)
    steps_per_member: int = option(3, "gradient steps per frame per member (fewer if the budget runs out); "
                                   "the ensemble is sized so this many fit budget_ms", 1, 1000)
    max_members: int = option(0, "ensemble members to use at most; 0 = as many as the budget allows", 0, 64)
    warm_start: str = option("previous", "new frame starts from: previous (last solution) | grey",
                             choices=WARM_STARTS)
    warm_start_decay: float = option(0.9, "with previous: start at grey + decay * (previous - grey), so errors "
                                     "cannot accumulate over a long session (1 = plain copy)", 0.0, 1.0)
    blur_sigma_px: float = option(1.0, "spatial Gaussian blur of each emitted frame (0 = off)", 0.0, 10.0)
    blur_sigma_frames: float = option(1.0, "temporal Gaussian blur of each emitted frame with its neighbours "
                                      "(0 = off)", 0.0, 10.0)
    target_ramp_frames: int = option(8, "the newest frames' responses weigh less in the loss, ramping to 1 over "
                                     "this many frames (the deconvolution still revises them); 0 = off", 0, 120)
    amortised_start: bool = option(True, "each frame restarts from the model's amortised decoder (a direct "
                                   "linear decoder of the responses) once its responses are in; gradient steps "
                                   "refine it (ignored for a model without one)")
    optim: OptimSettings = section(OptimSettings, "the live step rule (optimiser)", default=LIVE_OPTIM)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def live_frames(self) -> int:
        """Frames the cached-context live graph covers: the ``lag_frames + 1`` still optimised."""
        return self.lag_frames + 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LiveSettings:
        """Build from a mapping (an "optim" table holds ``OptimSettings`` keys); unknown keys
        raise ConfigError naming them; unset keys keep the live defaults."""
        return build(cls, data, path=cls.__name__)


@dataclass
class _Member:
    encoder: Encoder
    live: LiveEncoder | None  # the same encoder on the cached-context path, else None
    video: np.ndarray      # (W, H, Wd)
    moment: np.ndarray     # (W, H, Wd)
    iters: np.ndarray      # (W,) int64
    features: np.ndarray | None = None   # (W, C, h, w) cached core features (cached-context path)
    feat_ok: np.ndarray | None = None    # (W,) bool


class LiveReconstructor:
    """Sliding-window warm-started reconstruction, one call per activity frame.

    Parameters
    ----------
    encoders : sequence of Encoder
        Ensemble members (all with the same window and neuron count). With
        ``cached_context`` each must be a ``LiveEncoder`` opened with a live graph of
        ``settings.live_frames`` frames (``ReconstructionSettings.live_frames`` opens it so).
    grad_mask : ndarray of bool, shape (H, W)
        Pixels that receive gradient (alpha >= 0.5).
    settings : LiveSettings
    cached_context : bool
        Optimise the ``lag_frames + 1`` newest frames through the encoders' live graph, with
        the frozen frames before them entering as cached core features (exact for causal
        encoders); False: the encoders' full window every step.
    neuron_weights : ndarray (N,) or None
        0 for neurons to ignore (e.g. dropped ROIs).
    clock_ns : callable returning monotonic ns (injectable for tests)
    amortised : AmortisedDecoder or None
        Starting points for the frames (used when ``settings.amortised_start``).

    Raises
    ------
    ConfigError
        ``cached_context`` with an encoder that is not a ``LiveEncoder`` (named).
    """

    def __init__(self, encoders: Sequence[Encoder], grad_mask: np.ndarray,
                 settings: LiveSettings = LiveSettings(), *, cached_context: bool = False,
                 neuron_weights: np.ndarray | None = None,
                 clock_ns: Callable[[], int] = time.perf_counter_ns,
                 amortised: AmortisedDecoder | None = None) -> None:
        if not encoders:
            raise ConfigError("the live stage needs at least one encoder")
        self.n_neurons = int(encoders[0].n_neurons)
        self.cached_context = cached_context
        self._live: list[LiveEncoder | None] = [None] * len(encoders)
        if cached_context:
            for i, e in enumerate(encoders):
                if not isinstance(e, LiveEncoder):
                    raise ConfigError(
                        f"cached_context needs encoders with the live graph (LiveEncoder: live_frames, "
                        f"context_frames, features, loss_and_grad_live); member {i} ({type(e).__name__}) has "
                        "none: open the model with live_frames or set cached_context = false")
                self._live[i] = e
            first = self._live[0]
            assert first is not None
            self._context = int(first.context_frames)
            self.window = settings.live_frames + self._context
        else:
            self._context = 0
            self.window = int(encoders[0].window_frames)
        for e in encoders:
            if e.n_neurons != self.n_neurons:
                raise ConfigError("all ensemble members must share n_neurons")
            if not self.cached_context and e.window_frames != self.window:
                raise ConfigError("all ensemble members must share window_frames")
        if settings.lag_frames >= self.window:
            raise ConfigError(f"lag_frames={settings.lag_frames} must be below the encoder window {self.window}")
        age = np.arange(self.window)[::-1]                   # 0 = newest slot
        ramp = settings.target_ramp_frames
        self._ramp = (np.minimum(1.0, (age + 1) / ramp) if ramp else np.ones(self.window)).astype(np.float32)
        mask = np.asarray(grad_mask, bool)
        if mask.ndim != 2:
            raise ConfigError(f"grad_mask must be 2-D (H, W), got shape {mask.shape}")
        self.frame_shape: tuple[int, int] = (int(mask.shape[0]), int(mask.shape[1]))
        self._maskf = mask.astype(np.float32)
        self.settings = settings
        self._encoders = list(encoders)
        w = np.ones(self.n_neurons, np.float32) if neuron_weights is None else np.asarray(neuron_weights, np.float32)
        if w.shape != (self.n_neurons,):
            raise ShapeMismatchError(f"neuron_weights must have shape ({self.n_neurons},), got {w.shape}")
        self._weights = w
        self._clock = clock_ns
        self.amortised = amortised if settings.amortised_start else None
        if self.amortised is not None:
            if self.amortised.n_neurons != self.n_neurons:
                raise ConfigError(f"the amortised decoder reads {self.amortised.n_neurons} neurons, the encoders "
                                  f"{self.n_neurons}")
            if self.amortised.frame_shape != self.frame_shape:
                raise ConfigError(f"the amortised decoder makes {self.amortised.frame_shape} frames, the mask is "
                                  f"{self.frame_shape}")
            # response frames after a frame that its start waits for (at most the lag)
            self._amortised_wait = min(self.amortised.response_frames - 1, settings.lag_frames, self.window - 1)
        self.amortised_starts = 0
        self.n_members_active = len(self._encoders) if settings.max_members == 0 else min(
            settings.max_members, len(self._encoders))
        self.step_ns_estimate = 0.0
        self.reset()

    # ------------------------------------------------------------------ lifecycle
    def set_neuron_weights(self, neuron_weights: np.ndarray) -> None:
        """Replace the per-neuron loss weights (0 = ignore the neuron), e.g. at a new session."""
        w = np.asarray(neuron_weights, np.float32)
        if w.shape != (self.n_neurons,):
            raise ShapeMismatchError(f"neuron_weights must have shape ({self.n_neurons},), got {w.shape}")
        self._weights = w

    def reset(self) -> None:
        """Forget the stream (new session): empty window, zero counters."""
        W, (H, Wd) = self.window, self.frame_shape
        init = self.settings.optim.init_value_px
        self._members = [
            _Member(e, live, np.full((W, H, Wd), init, np.float32), np.zeros((W, H, Wd), np.float32),
                    np.zeros(W, np.int64))
            for e, live in zip(self._encoders, self._live)
        ]
        for m in self._members:
            if m.live is not None:
                grey = np.asarray(m.live.features(m.video[:1]), np.float32)
                m.features = np.repeat(grey, W, axis=0)
                m.feat_ok = np.zeros(W, bool)
        self._targets = np.zeros((W, self.n_neurons), np.float32)
        self._behaviour = np.zeros((W, 4), np.float32)
        self._frame_index = np.full(W, -1, np.int64)    # -1 = no frame yet
        self._acq_ns = np.zeros(W, np.int64)
        self._steps = np.zeros(W, np.int64)             # steps each slot has received
        self._stamps: list[tuple[tuple[str, int], ...]] = [() for _ in range(W)]
        self.newest: int | None = None
        self.frames_emitted = 0
        self.skipped = 0
        self.steps_total = 0
        self.amortised_starts = 0
        self._emitted = -1

    def warmup(self, n_steps: int = 3) -> float:
        """Run a few steps on a dummy window; returns and stores the step time estimate (ns).

        In budget mode also decides how many ensemble members the budget allows.
        """
        saved = [(m.video.copy(), m.moment.copy(), m.iters.copy()) for m in self._members]
        saved_idx = self._frame_index.copy()
        self._frame_index[:] = np.arange(self.window)          # pretend a full window
        times = []
        # a whole step as the frame loop runs it (gradient, smoothing, update), on the frames
        # a real window optimises
        active = np.zeros(self.window, bool)
        active[self.window - 1 - self.settings.lag_frames:] = True
        for k in range(max(1, n_steps)):
            m = self._members[k % len(self._members)]
            t0 = self._clock()
            self._step_member(m, active)
            times.append(self._clock() - t0)
        for m, (v, mo, it) in zip(self._members, saved):
            m.video[:], m.moment[:], m.iters[:] = v, mo, it
            if m.feat_ok is not None:
                m.feat_ok[:] = False
        self._frame_index[:] = saved_idx
        est = float(np.median(times))
        self.step_ns_estimate = est
        s = self.settings
        if s.fixed_steps == 0 and est > 0:
            allowed = int(s.budget_ms * 1e6 // (est * s.steps_per_member))
            cap = len(self._encoders) if s.max_members == 0 else min(s.max_members, len(self._encoders))
            self.n_members_active = int(np.clip(allowed, 1, cap))
        return est

    # ------------------------------------------------------------------ per frame
    def _shift(self, k: int, *, warm_value: list[np.ndarray]) -> None:
        W = self.window
        k = min(k, W)
        init = self.settings.optim.init_value_px
        for m, warm in zip(self._members, warm_value):
            m.video[:-k] = m.video[k:].copy() if k < W else m.video[:0]
            m.moment[:-k] = m.moment[k:].copy() if k < W else m.moment[:0]
            m.iters[:-k] = m.iters[k:].copy() if k < W else m.iters[:0]
            if self.settings.warm_start == "previous":
                d = self.settings.warm_start_decay
                m.video[-k:] = warm if d == 1.0 else init + d * (warm - init)
            else:
                m.video[-k:] = init
            m.moment[-k:] = 0.0
            m.iters[-k:] = 0
            if m.features is not None and m.feat_ok is not None:
                if k < W:
                    m.features[:-k] = m.features[k:].copy()
                    m.feat_ok[:-k] = m.feat_ok[k:].copy()
                m.feat_ok[-k:] = False
        for arr in (self._targets, self._behaviour, self._frame_index, self._acq_ns, self._steps):
            if k < W:
                arr[:-k] = arr[k:].copy()
        self._frame_index[-k:] = -1
        self._steps[-k:] = 0
        self._stamps = self._stamps[k:] + [() for _ in range(k)]

    def __call__(self, frame: ActivityFrame, recent: np.ndarray | None = None) -> list[DecodedFrame]:
        """Take one activity frame; return the frames whose decoding lag has expired.

        Parameters
        ----------
        frame : ActivityFrame
            ``values`` (N,) activity; ``behaviour`` (4,) or None (held from the last value).
        recent : ndarray, shape (R, N), or None
            The deconvolution's current estimates of the last R frames, ending at
            ``frame``; they replace the window's targets where they overlap.
        """
        values = np.asarray(frame.values, np.float32)
        if values.shape != (self.n_neurons,):
            raise ShapeMismatchError(f"activity frame has {values.shape} values; the encoder expects "
                                     f"({self.n_neurons},)")
        if recent is not None and (recent.ndim != 2 or recent.shape[1] != self.n_neurons):
            raise ShapeMismatchError(f"recent must be (R, {self.n_neurons}), got {recent.shape}")
        idx = int(frame.frame_index)
        if self.newest is not None and idx <= self.newest:
            raise StageError(f"frame index {idx} is not after the newest frame {self.newest}")
        k = 1 if self.newest is None else idx - self.newest
        out = self._emit_leaving(idx)
        if k > self.window:
            # frames jumped over that never fit into the window: not decoded at all
            self.skipped += k - self.window
        warm = [m.video[-1].copy() for m in self._members]
        last_beh = self._behaviour[-1].copy()
        self._shift(k, warm_value=warm)
        # frames jumped over: unknown behaviour held; targets from `recent` below
        self._behaviour[-k:] = last_beh
        fill = np.arange(idx - min(k, self.window) + 1, idx + 1)
        self._frame_index[-fill.size:] = fill
        # frames jumped over: acquisition stamps interpolated between the last two known
        kk = min(k, self.window)
        prev_acq = (int(self._acq_ns[-kk - 1]) if (kk < self.window and self._frame_index[-kk - 1] >= 0)
                    else int(frame.acq_ns))
        self._acq_ns[-kk:] = np.linspace(prev_acq, frame.acq_ns, kk + 1)[1:].astype(np.int64)
        self._acq_ns[-1] = frame.acq_ns
        self._stamps[-1] = frame.stamps
        self._targets[-1] = values
        if frame.behaviour is not None:
            self._behaviour[-1] = np.asarray(frame.behaviour, np.float32)
        if recent is not None:
            r = np.asarray(recent, np.float32)[-self.window:]
            self._targets[-r.shape[0]:] = r
        np.maximum(self._targets, 0.0, out=self._targets)
        self.newest = idx
        if self.amortised is not None:
            self._amortised_restart()
        self._optimise()
        return out + self._emit(idx)

    def _amortised_restart(self) -> None:
        """The frame whose later responses are now in restarts from the amortised estimate."""
        assert self.amortised is not None and self.newest is not None
        a = self._amortised_wait
        slot = self.window - 1 - a
        if self._frame_index[slot] < 0 or self._frame_index[slot] < self.newest - self.settings.lag_frames:
            return
        o = self.settings.optim
        frame = np.clip(self.amortised.estimate_frame(self._targets[slot:slot + a + 1], self._weights),
                        o.pixel_min_px, o.pixel_max_px)
        for m in self._members:
            m.video[slot] = frame
            if m.feat_ok is not None:
                m.feat_ok[slot] = False
        self.amortised_starts += 1

    def _optimisable(self) -> np.ndarray:
        assert self.newest is not None
        return (self._frame_index >= 0) & (self._frame_index >= self.newest - self.settings.lag_frames)

    def _member_grad(self, m: _Member) -> np.ndarray:
        valid = (self._frame_index >= 0).astype(np.float32) * self._ramp
        if m.live is None:
            _, g = m.encoder.loss_and_grad(m.video, self._behaviour, self._targets, self._weights,
                                           frame_weights=valid)
            return np.asarray(g, np.float32).copy()
        assert m.features is not None and m.feat_ok is not None
        n = self.settings.live_frames
        W = self.window
        ctx = slice(W - n - self._context, W - n)
        for slot in range(ctx.start, ctx.stop):      # frozen frames: features computed once
            if not m.feat_ok[slot]:
                m.features[slot] = m.live.features(m.video[slot:slot + 1])[0]
                m.feat_ok[slot] = True
        _, g_live = m.live.loss_and_grad_live(
            m.video[-n:], m.features[ctx], self._behaviour[-n:], self._targets[-n:], self._weights,
            frame_weights=valid[-n:])
        g = np.zeros_like(m.video)
        g[-n:] = np.asarray(g_live, np.float32).reshape(n, *self.frame_shape)
        return g

    def _step_member(self, m: _Member, active: np.ndarray) -> None:
        g = self._member_grad(m)
        g[~active] = 0.0
        g = precondition(normalise(g), self._maskf, self.settings.optim, active)
        apply_step(m.video, m.moment, m.iters, g, active, self.settings.optim)

    def _optimise(self) -> None:
        # At session start the window is not full: empty slots keep grey pixels and zero
        # targets; their gradient is zeroed, and with a causal encoder their loss cannot
        # reach the valid frames, which follow them.
        active = self._optimisable()
        s = self.settings
        members = self._members[: self.n_members_active]
        if s.fixed_steps > 0:
            for m in members:
                for _ in range(s.fixed_steps):
                    self._step_member(m, active)
            n = s.fixed_steps
        else:
            budget = s.budget_ms * 1e6
            t0 = self._clock()
            n = 0
            while n < s.steps_per_member:
                ts = self._clock()
                for m in members:
                    self._step_member(m, active)
                n += 1
                now = self._clock()
                per_round = now - ts
                self.step_ns_estimate = 0.8 * self.step_ns_estimate + 0.2 * per_round / len(members)
                if now - t0 + per_round > budget:
                    break
        self._steps[active] += n
        self.steps_total += n * len(members)

    def _temporal_mean(self, slot: int, members: list[_Member]) -> np.ndarray:
        """Ensemble mean at ``slot``, blurred in time with the neighbouring slots when asked."""
        sig = self.settings.blur_sigma_frames
        if sig <= 0:
            return np.mean([m.video[slot] for m in members], axis=0).astype(np.float32)
        acc = np.zeros(self.frame_shape, np.float64)
        total = 0.0
        for d in (-1, 0, 1):
            k = slot + d
            if 0 <= k < self.window and self._frame_index[k] >= 0:
                w = float(np.exp(-0.5 * (d / sig) ** 2))
                acc += w * np.mean([m.video[k] for m in members], axis=0)
                total += w
        return (acc / total).astype(np.float32)

    def flush(self) -> list[DecodedFrame]:
        """Emit every frame not yet emitted with its current estimate (end of a session)."""
        if self.newest is None:
            return []
        return self._emit(self.newest, ignore_lag=True)

    def _emit_leaving(self, new_newest: int) -> list[DecodedFrame]:
        """Emit not-yet-emitted frames that a jump to ``new_newest`` pushes out of the window."""
        if self.newest is None:
            return []
        return self._emit(min(self.newest, new_newest - self.window), ignore_lag=True)

    def _emit(self, newest: int, ignore_lag: bool = False) -> list[DecodedFrame]:
        out: list[DecodedFrame] = []
        due = newest if ignore_lag else newest - self.settings.lag_frames
        members = self._members[: self.n_members_active]
        for slot in range(self.window):
            fi = int(self._frame_index[slot])
            # a slot is emitted once, when it reaches the lag (or leaves the window)
            if fi < 0 or fi > due or fi <= self._emitted:
                continue
            image = self._temporal_mean(slot, members)
            if self.settings.blur_sigma_px > 0:
                image = gaussian_filter(image, self.settings.blur_sigma_px, mode="nearest").astype(np.float32)
            if self._steps[slot] == 0:
                self.skipped += 1
            # acq_ns: acquisition of the decoded frame (so source -> output includes the decoding
            # lag); stamps: those of the newest frame, whose arrival triggered this emission
            out.append(DecodedFrame(seq=fi, frame_index=fi, acq_ns=int(self._acq_ns[slot]),
                                    stamps=self._stamps[-1], image=image))
            self._emitted = fi
            self.frames_emitted += 1
        return out
