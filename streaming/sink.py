"""The demo sink's bookkeeping: true stimulus and decoded frames matched by frame index,
latencies from the frames' own stamps, gaps, skips, and the live video correlation.

Three streams feed it (each through its own ``StreamSubscriber``):

* the **source** stream (the virtual rig): ``stimulus`` messages carry the true frame shown
  at each frame index; ``session_start`` says whether ``t_ns`` is on this machine's
  monotonic clock (``x-clock: "monotonic"``); ``session_end`` starts the drain. Fluorescence
  frames are ignored.
* the service's **output** stream: ``decoded`` frames (or ``activity`` frames when the
  service has no reconstruction stage: then nothing is decoded, and the result says so),
  each with its frame index, the source's acquisition stamp and the stage stamps
  ``rx, decode, deconv, recon, tx`` (monotonic ns, one machine: comparable clocks).
* the service's **status** stream (optional): lifecycle state and counters, among them
  ``skipped_frames`` (frames the reconstruction skipped to stay current).

:class:`SinkCollector` knows no sockets: ``on_source`` / ``on_output`` / ``on_status`` take
validated envelopes and their receive time; ``stop_reason`` applies the stop rules;
``finish`` computes the metrics (a JSON-able dict) and the aligned videos.
:func:`run_sink` is the receive loop over subscribers handed in by the caller.
:func:`format_summary` renders the metrics as the table printed by the sink and the demo.

Latency spans (ms) of one output frame with stamps ``s1..sk`` received by the sink at
``t_sink``: ``acq->s1`` (only when the source clock is monotonic), ``s1->s2``, ...,
``sk->sink``; totals ``s1->sink`` (service in -> sink) and ``acq->sink`` (end to end,
acquisition -> sink, monotonic sources only). A decoded frame keeps the acquisition stamp
of the frame it shows but carries the stage stamps of the newest frame, whose arrival
released it at the decoding lag L: ``acq->rx`` and ``acq->sink`` then include about L
frame periods (the status channel's ``reconstruction.recon_lag_frames`` gives L).

Imports numpy, the standard library and rt_decoder / streaming modules without sockets
(never zmq, never torch); ``rt_decoder.recon.metrics`` is imported in ``finish``.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rt_decoder.errors import ConfigError
from rt_decoder.messages import ActivityFrame, DecodedFrame, SessionInfo
from streaming import protocol as P
from streaming.metrics import percentiles

SOURCE_CLOCKS = ("auto", "monotonic", "unknown")

#: Output frames whose stamps span more than this are counted as implausible (ms).
_MAX_PLAUSIBLE_MS = 3_600_000.0
#: Latency samples kept (the newest frames; about 1.8 hours at 30 Hz).
_MAX_TIMING_FRAMES = 200_000


@dataclass(frozen=True)
class SinkSettings:
    """Settings of the sink.

    max_frames : stop after this many output frames (0 = no limit)
    timeout_s : stop after this long in all (0 = no limit), seconds
    drain_s : after the source's (or the output's) ``session_end``, the longest wait for
        the decoder's last frames, seconds
    quiet_s : once both streams ended, stop after this long without an output frame, seconds
    max_kept_frames : images kept per stream (oldest dropped beyond it: bounded memory)
    skip_frames : leading frames of the source stream left out of the correlation
        (the published protocol leaves out 30; add the deconvolution's initial batch)
    max_lag_frames : the best-lag search covers -max_lag_frames..+max_lag_frames
    source_clock : "auto" (monotonic when the source says ``x-clock: "monotonic"``),
        "monotonic" or "unknown" (no acquisition -> sink latency)
    """

    max_frames: int = 0
    timeout_s: float = 0.0
    drain_s: float = 5.0
    quiet_s: float = 0.5
    max_kept_frames: int = 36_000
    skip_frames: int = 30
    max_lag_frames: int = 15
    source_clock: str = "auto"

    def __post_init__(self) -> None:
        if not (isinstance(self.max_frames, int) and self.max_frames >= 0):
            raise ConfigError(f"max_frames must be an integer >= 0, got {self.max_frames!r}")
        for name, lo in (("timeout_s", 0.0), ("drain_s", 0.0), ("quiet_s", 0.0)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= lo):
                raise ConfigError(f"{name} must be a finite number >= {lo}, got {v!r}")
        if not (isinstance(self.max_kept_frames, int) and 1 <= self.max_kept_frames <= 10_000_000):
            raise ConfigError(f"max_kept_frames must be in [1, 10000000], got {self.max_kept_frames!r}")
        if not (isinstance(self.skip_frames, int) and self.skip_frames >= 0):
            raise ConfigError(f"skip_frames must be an integer >= 0, got {self.skip_frames!r}")
        if not (isinstance(self.max_lag_frames, int) and 0 <= self.max_lag_frames <= 1000):
            raise ConfigError(f"max_lag_frames must be in [0, 1000], got {self.max_lag_frames!r}")
        if self.source_clock not in SOURCE_CLOCKS:
            raise ConfigError(f"source_clock must be one of {SOURCE_CLOCKS}, got {self.source_clock!r}")


def load_eval_mask(path: str) -> np.ndarray:
    """Read the boolean (H, W) evaluation mask from an ``.npz`` (a model's ``alpha.npz``).

    Uses the array ``eval_mask``; a file holding a single array uses that one. Loaded
    with ``allow_pickle=False``.

    Raises
    ------
    ConfigError
        The file is missing, unreadable, has no usable array, or the mask is not 2-D or empty.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if "eval_mask" in names:
                mask = np.asarray(npz["eval_mask"])
            elif len(names) == 1:
                mask = np.asarray(npz[names[0]])
            else:
                raise ConfigError(f"evaluation mask file {path!r} has no 'eval_mask' array (it has {names})")
    except (OSError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"cannot read evaluation mask file {path!r}: {exc}") from None
    if mask.ndim != 2:
        raise ConfigError(f"evaluation mask in {path!r} must be 2-D (H, W), got shape {mask.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ConfigError(f"evaluation mask in {path!r} selects no pixel")
    return mask


@dataclass
class SinkResult:
    """What ``SinkCollector.finish`` returns.

    metrics : JSON-able dict (see ``SinkCollector.finish``)
    latencies_ms : span name -> (n,) float64 samples in ms
    frame_index : (T,) int64, the contiguous range of output frame indices
    true, decoded : (T, H, W) float32 videos over ``frame_index`` (NaN where a frame is
        missing), or None when nothing was decoded
    """

    metrics: dict[str, Any]
    latencies_ms: dict[str, np.ndarray]
    frame_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    true: np.ndarray | None = None
    decoded: np.ndarray | None = None


class SinkCollector:
    """Matches decoded frames with the true stimulus; counts, latencies, correlation.

    Parameters
    ----------
    settings : SinkSettings
    clock_s : callable returning float seconds
        Injectable clock for the stop rules (default ``time.monotonic``).
    """

    def __init__(self, settings: SinkSettings = SinkSettings(), *,
                 clock_s: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock_s
        self.t_start = clock_s()
        # source stream
        self.stimulus: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self.source_sessions: list[str] = []
        self.monotonic_sessions: set[str] = set()
        self.source_rate_hz: float | None = None
        self.source_first_index: int | None = None
        self.source_n_frames: int | None = None
        self.source_ended_at: float | None = None
        self.stimulus_received = 0
        self.stimulus_missing = 0
        self._last_stimulus_index: int | None = None
        # output stream
        self.decoded: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self.output_kinds: collections.Counter[str] = collections.Counter()
        self.output_indices: list[int] = []
        self.output_missing = 0
        self.output_duplicates = 0
        self._last_output_index: int | None = None
        self.output_ended_at: float | None = None
        self.last_output_at: float | None = None
        self.output_sessions: list[str] = []
        # (session id, acq_ns, stamps, recv_ns) per output frame; spans computed in finish,
        # when the source's clock declaration is surely known
        self._timing: collections.deque[tuple[str, int, tuple[tuple[str, int], ...], int]] = \
            collections.deque(maxlen=_MAX_TIMING_FRAMES)
        # status stream
        self.status_messages = 0
        self.service_states: list[str] = []
        self.last_status: Mapping[str, Any] | None = None
        # malformed input the subscribers accepted but the sink cannot use
        self.rejected: collections.Counter[str] = collections.Counter()
        self.first_error: str = ""

    # ------------------------------------------------------------------ feeding
    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        if not self.first_error:
            self.first_error = detail[:200]

    def _keep(self, store: collections.OrderedDict[int, np.ndarray], index: int, image: np.ndarray) -> None:
        store[index] = image
        while len(store) > self.settings.max_kept_frames:
            store.popitem(last=False)

    def on_source(self, env: P.Envelope, recv_ns: int) -> None:
        """A validated message of the source stream (stimulus, session_start/end; frames ignored)."""
        body = env.body
        if env.kind == P.KIND_SESSION_START and isinstance(body, SessionInfo):
            if env.session_id not in self.source_sessions:
                self.source_sessions.append(env.session_id)
            if env.ext.get("x-clock") == "monotonic":
                self.monotonic_sessions.add(env.session_id)
            self.source_rate_hz = float(body.frame_rate_hz)
        elif env.kind == P.KIND_STIMULUS and isinstance(body, P.StimulusFrame):
            image = np.asarray(body.image)
            if image.ndim != 2 or not np.isfinite(image).all():
                self._reject("bad_stimulus_image", f"stimulus frame {body.frame_index}: shape {image.shape} "
                             "or non-finite pixels")
                return
            fi = int(body.frame_index)
            if self._last_stimulus_index is not None and fi > self._last_stimulus_index + 1:
                self.stimulus_missing += fi - self._last_stimulus_index - 1
            if self._last_stimulus_index is None or fi > self._last_stimulus_index:
                self._last_stimulus_index = fi
            if self.source_first_index is None or fi < self.source_first_index:
                self.source_first_index = fi
            self.stimulus_received += 1
            self._keep(self.stimulus, fi, np.array(image, dtype=np.float32))
        elif env.kind == P.KIND_SESSION_END and isinstance(body, P.SessionEnd):
            self.source_n_frames = int(body.n_frames)
            if self.source_ended_at is None:
                self.source_ended_at = self._clock()

    def _is_monotonic(self, session_id: str) -> bool:
        mode = self.settings.source_clock
        if mode != "auto":
            return mode == "monotonic"
        # the service copies the source's session id to its output; a renamed output
        # session still counts when every source session seen declared the monotonic clock
        if session_id in self.monotonic_sessions:
            return True
        return bool(self.source_sessions) and all(s in self.monotonic_sessions for s in self.source_sessions)

    def on_output(self, env: P.Envelope, recv_ns: int) -> None:
        """A validated message of the service's output stream."""
        body = env.body
        if env.kind == P.KIND_SESSION_START:
            if env.session_id not in self.output_sessions:
                self.output_sessions.append(env.session_id)
            return
        if env.kind == P.KIND_SESSION_END:
            if self.output_ended_at is None:
                self.output_ended_at = self._clock()
            return
        if not isinstance(body, (DecodedFrame, ActivityFrame)):
            return  # heartbeats and anything else a service may add
        self.output_kinds[env.kind] += 1
        self.last_output_at = self._clock()
        fi = int(body.frame_index)
        self.output_indices.append(fi)
        last = self._last_output_index
        if last is not None:
            if fi > last + 1:
                self.output_missing += fi - last - 1
            elif fi <= last:
                self.output_duplicates += 1
        if last is None or fi > last:
            self._last_output_index = fi
        self._timing.append((env.session_id, int(body.acq_ns),
                             tuple((str(n), int(t)) for n, t in body.stamps), int(recv_ns)))
        if isinstance(body, DecodedFrame):
            image = np.asarray(body.image)
            if image.ndim != 2:
                self._reject("bad_decoded_image", f"decoded frame {fi}: image shape {image.shape}")
            elif not np.isfinite(image).all():
                self._reject("nonfinite_decoded_image", f"decoded frame {fi} has NaN/Inf pixels")
            elif fi in self.decoded:
                self._reject("duplicate_decoded_frame", f"decoded frame {fi} arrived twice")
            else:
                self._keep(self.decoded, fi, np.array(image, dtype=np.float32))

    def latency_spans(self) -> tuple[dict[str, np.ndarray], set[str], int]:
        """Span name -> (n,) ms samples, the names of the totals, and the implausible frames.

        See the module docstring for the spans; frames whose spans exceed an hour either
        way (stamps from clocks that are not comparable) are left out and counted.
        """
        spans: dict[str, list[float]] = {}
        totals: set[str] = set()
        implausible = 0
        for sid, acq_ns, stamps, recv_ns in self._timing:
            points: list[tuple[str, int]] = [("acq", acq_ns)] if self._is_monotonic(sid) else []
            points += list(stamps)
            points.append(("sink", recv_ns))
            row = [(f"{a}->{b}", (tb - ta) / 1e6) for (a, ta), (b, tb) in zip(points[:-1], points[1:])]
            tot = []
            if len(stamps) > 1:
                tot.append((f"{stamps[0][0]}->sink", (recv_ns - stamps[0][1]) / 1e6))
            if points[0][0] == "acq" and len(points) > 2:
                tot.append(("acq->sink", (recv_ns - acq_ns) / 1e6))
            if any(not (-_MAX_PLAUSIBLE_MS < ms < _MAX_PLAUSIBLE_MS) for _, ms in row + tot):
                implausible += 1
                continue
            totals.update(name for name, _ in tot)
            for name, ms in row + tot:
                spans.setdefault(name, []).append(ms)
        return {k: np.asarray(v, np.float64) for k, v in spans.items()}, totals, implausible

    def on_status(self, env: P.Envelope, recv_ns: int) -> None:
        """A validated message of the service's status stream."""
        body = env.body
        if env.kind != P.KIND_STATUS or not isinstance(body, P.Status):
            return
        self.status_messages += 1
        state = str(body.state)
        if not self.service_states or self.service_states[-1] != state:
            self.service_states.append(state)
        self.last_status = body.metrics if isinstance(body.metrics, Mapping) else {}

    # ------------------------------------------------------------------ stopping
    @property
    def output_frames(self) -> int:
        return int(sum(self.output_kinds.values()))

    def stop_reason(self, *, have_source: bool = True, have_output: bool = True) -> str:
        """Why to stop now ("" = keep going): frames, timeout, session_end or drain_timeout."""
        s = self.settings
        now = self._clock()
        if s.max_frames and self.output_frames >= s.max_frames:
            return "frames"
        if s.timeout_s and now - self.t_start >= s.timeout_s:
            return "timeout"
        ends = [t for t in (self.source_ended_at, self.output_ended_at) if t is not None]
        if not ends:
            return ""
        source_done = self.source_ended_at is not None or not have_source
        output_done = self.output_ended_at is not None or not have_output
        idle_since = max(ends + ([self.last_output_at] if self.last_output_at is not None else []))
        if source_done and output_done and now - idle_since >= s.quiet_s:
            return "session_end"
        if now - min(ends) >= s.drain_s:
            return "drain_timeout"
        return ""

    # ------------------------------------------------------------------ results
    def _correlation(self, eval_mask: np.ndarray | None) -> dict[str, Any]:
        from rt_decoder.recon.metrics import per_frame_correlation, video_correlation

        s = self.settings
        out: dict[str, Any] = {"video_corr": None, "video_corr_full_screen": None, "mean_frame_corr": None,
                               "best_lag_frames": None, "best_lag_corr": None, "frames_scored": 0,
                               "skip_frames": s.skip_frames, "eval_mask": eval_mask is not None}
        if not self.decoded:
            out["why_none"] = "no decoded frames"
            return out
        if not self.stimulus:
            out["why_none"] = "no stimulus frames (is the sink subscribed to the source?)"
            return out
        first = self.source_first_index if self.source_first_index is not None else min(self.stimulus)
        scored = [i for i in self.decoded if i >= first + s.skip_frames]
        shape = next(iter(self.stimulus.values())).shape
        scored = [i for i in scored if self.decoded[i].shape == shape]
        if eval_mask is not None and eval_mask.shape != shape:
            out["why_none"] = f"evaluation mask shape {eval_mask.shape} differs from the stimulus {shape}"
            return out

        def pairs(lag: int) -> tuple[np.ndarray, np.ndarray] | None:
            idx = [i for i in scored if (i - lag) in self.stimulus]
            if len(idx) < 2:
                return None
            return (np.stack([self.stimulus[i - lag] for i in idx]), np.stack([self.decoded[i] for i in idx]))

        zero = pairs(0)
        if zero is None:
            out["why_none"] = (f"fewer than 2 decoded frames after the first {s.skip_frames} frames "
                               "have a true stimulus frame")
            return out
        t0, d0 = zero
        out["frames_scored"] = int(t0.shape[0])
        out["video_corr"] = video_correlation(t0, d0, eval_mask, 0)
        out["video_corr_full_screen"] = video_correlation(t0, d0, None, 0)
        per_frame = per_frame_correlation(t0, d0, eval_mask, 0)
        per_frame = per_frame[np.isfinite(per_frame)]  # NaN for frames without contrast
        out["mean_frame_corr"] = float(per_frame.mean()) if per_frame.size else None
        best: tuple[int, float] | None = None
        for lag in range(-s.max_lag_frames, s.max_lag_frames + 1):
            pr = pairs(lag)
            if pr is None:
                continue
            c = video_correlation(pr[0], pr[1], eval_mask, 0)
            if math.isfinite(c) and (best is None or c > best[1]):
                best = (lag, c)
        if best is not None:
            out["best_lag_frames"], out["best_lag_corr"] = best[0], float(best[1])
        return out

    def videos(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(frame_index, true, decoded) over the contiguous range of decoded frame indices.

        Missing frames (either side) are NaN; (T,) int64 and two (T, H, W) float32, or
        ``(empty, None, None)`` when nothing was decoded.
        """
        if not self.decoded:
            return np.zeros(0, np.int64), None, None
        shape = next(iter(self.decoded.values())).shape
        lo, hi = min(self.decoded), max(self.decoded)
        idx = np.arange(lo, hi + 1, dtype=np.int64)
        true = np.full((idx.size, *shape), np.nan, np.float32)
        dec = np.full((idx.size, *shape), np.nan, np.float32)
        for k, i in enumerate(idx.tolist()):
            img = self.decoded.get(i)
            if img is not None and img.shape == shape:
                dec[k] = img
            st = self.stimulus.get(i)
            if st is not None and st.shape == shape:
                true[k] = st
        return idx, true, dec

    def finish(self, *, eval_mask: np.ndarray | None = None, stop_reason: str = "",
               subscriber_counters: Mapping[str, Mapping[str, Any]] | None = None) -> SinkResult:
        """Compute the metrics and the aligned videos.

        Parameters
        ----------
        eval_mask : ndarray of bool, shape (H, W), optional
        stop_reason : str
            Recorded in the metrics.
        subscriber_counters : mapping stream name -> ``SubscriberCounters.as_dict()``
            Lost and malformed messages per stream.
        """
        counters = {k: dict(v) for k, v in (subscriber_counters or {}).items()}
        lat, total_names, implausible = self.latency_spans()
        stage_names = [n for n in lat if n not in total_names]
        end_names = [n for n in lat if n in total_names]
        n_dec, n_act = self.output_kinds.get(P.KIND_DECODED, 0), self.output_kinds.get(P.KIND_ACTIVITY, 0)
        if n_dec:
            output_kind, note = "decoded", ""
        elif n_act:
            output_kind = "activity"
            note = ("nothing decoded: the service published activity frames (it has no reconstruction stage); "
                    "latencies are those of the deconvolution pipeline")
        else:
            output_kind, note = "none", "no output frame arrived from the service"
        status = dict(self.last_status or {})
        sc, sn, sr = status.get("counters"), status.get("notes"), status.get("reconstruction")
        status_counters: Mapping[str, Any] = sc if isinstance(sc, Mapping) else {}
        notes: Mapping[str, Any] = sn if isinstance(sn, Mapping) else {}
        recon_stats: dict[str, Any] = dict(sr) if isinstance(sr, Mapping) else {}

        def counter(stream: str, key: str) -> Any:
            return counters.get(stream, {}).get(key)

        matched = sum(1 for i in self.decoded if i in self.stimulus)
        metrics: dict[str, Any] = {
            "version": 1,
            "output_kind": output_kind,
            "decoded": bool(n_dec),
            "note": note,
            "stop_reason": stop_reason,
            "elapsed_s": round(self._clock() - self.t_start, 3),
            "source": {"sessions": list(self.source_sessions), "rate_hz": self.source_rate_hz,
                       "clock": "monotonic" if any(self._is_monotonic(s) for s in self.output_sessions
                                                   or self.source_sessions) else "unknown",
                       "frames_sent": self.source_n_frames, "ended": self.source_ended_at is not None},
            "frames": {"stimulus": self.stimulus_received, "output": self.output_frames, "decoded": int(n_dec),
                       "activity": int(n_act), "matched": int(matched),
                       "first_output_index": min(self.output_indices) if self.output_indices else None,
                       "last_output_index": max(self.output_indices) if self.output_indices else None},
            "gaps": {"output_messages_lost": counter("output", "missing"),
                     "output_gap_events": counter("output", "gap_events"),
                     "output_frames_missing": self.output_missing,
                     "output_out_of_order": self.output_duplicates,
                     "stimulus_messages_lost": counter("source", "missing"),
                     "stimulus_frames_missing": self.stimulus_missing},
            "skips": {"service_skipped_frames": status_counters.get("skipped_frames"),
                      "service_frames_missing": status_counters.get("frames_missing"),
                      "service_intake_overflow": status_counters.get("intake_overflow"),
                      "service_output_dropped": status_counters.get("output_dropped"),
                      "status_messages": self.status_messages, "service_states": list(self.service_states),
                      "service_reconstruction": notes.get("reconstruction"),
                      "recon_unoptimised_frames": recon_stats.get("recon_unoptimised_frames")},
            "decoding": {"lag_frames": recon_stats.get("recon_lag_frames"),
                         "members_active": recon_stats.get("recon_members_active"),
                         "step_ms": recon_stats.get("recon_step_ms"),
                         "roi_coverage": recon_stats.get("recon_roi_coverage"),
                         "service_stats": recon_stats},
            "malformed": {"by_stream": {k: v.get("malformed_by_reason", {}) for k, v in counters.items()},
                          "total": int(sum(int(v.get("malformed", 0)) for v in counters.values())),
                          "sink_rejected": dict(self.rejected), "first_sink_error": self.first_error,
                          "implausible_latency_frames": implausible},
            "latency_ms": {"stages": {n: percentiles(lat[n]) for n in stage_names},
                           "end_to_end": {n: percentiles(lat[n]) for n in end_names}},
            "correlation": self._correlation(eval_mask),
            "subscribers": counters,
        }
        idx, true, dec = self.videos()
        return SinkResult(metrics=metrics, latencies_ms=lat, frame_index=idx, true=true, decoded=dec)


# ---------------------------------------------------------------------------- the loop


def run_sink(collector: SinkCollector, subscribers: Mapping[str, Any], *,
             wait: Callable[[int], Any], should_stop: Callable[[], bool] = lambda: False,
             on_tick: Callable[[SinkCollector], None] | None = None, tick_every_s: float = 1.0) -> str:
    """Receive from ``subscribers`` until a stop rule fires; returns the stop reason.

    Parameters
    ----------
    collector : SinkCollector
    subscribers : mapping with keys among "source", "output", "status"
        ``StreamSubscriber`` objects (or anything with ``recv(timeout_ms)`` and ``last_recv_ns``).
    wait : callable(timeout_ms)
        Blocks until a subscriber may have input or the timeout passes (a zmq poller over
        their sockets; ``time.sleep`` in tests).
    should_stop : callable() -> bool
        External stop (a signal); the reason is then "signal".
    on_tick : callable(collector), optional
        Called about every ``tick_every_s`` (status lines).
    """
    handlers = {"source": collector.on_source, "output": collector.on_output, "status": collector.on_status}
    unknown = sorted(set(subscribers) - set(handlers))
    if unknown:
        raise ConfigError(f"unknown sink stream(s) {unknown}; known: {sorted(handlers)}")
    order = [(name, subscribers[name], handlers[name]) for name in ("source", "output", "status")
             if name in subscribers]
    last_tick = time.monotonic()
    while True:
        got = False
        for _name, sub, handle in order:
            for _ in range(1024):  # bounded burst per stream, then the others get their turn
                env = sub.recv(0)
                if env is None:
                    break
                got = True
                handle(env, sub.last_recv_ns)
        reason = collector.stop_reason(have_source="source" in subscribers, have_output="output" in subscribers)
        if reason:
            return reason
        if should_stop():
            return "signal"
        if on_tick is not None and time.monotonic() - last_tick >= tick_every_s:
            on_tick(collector)
            last_tick = time.monotonic()
        if not got:
            wait(50)


# ---------------------------------------------------------------------------- the table


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _fmt_ms(v: Any) -> str:
    """A latency in ms with 3 significant decimals below 10 ms, fewer above (never run together)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}" if abs(v) < 1000 else f"{v:,.0f}"


def _latency_table(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """The latency rows, each column as wide as its widest cell plus two spaces."""
    head = ["latency (ms)", "p50", "p95", "p99", "max", "frames"]
    cells = [[name + ("  (end to end)" if name == "acq->sink" else ""),
              *(_fmt_ms(st.get(q)) for q in ("p50", "p95", "p99", "max")), str(st.get("count", 0))]
             for name, st in rows]
    widths = [max(len(r[i]) for r in [head, *cells]) for i in range(len(head))]
    out = []
    for r in [head, *cells]:
        out.append("  " + r[0].ljust(widths[0]) + "".join("  " + c.rjust(w) for c, w in zip(r[1:], widths[1:])))
    return out


def format_summary(metrics: Mapping[str, Any]) -> str:
    """The summary table of a sink run (latency p50/p95/p99/max, gaps, skips, correlation)."""
    fr, gaps, skips = metrics.get("frames", {}), metrics.get("gaps", {}), metrics.get("skips", {})
    mal, corr = metrics.get("malformed", {}), metrics.get("correlation", {})
    lines = [f"output: {fr.get('output', 0)} frames ({metrics.get('output_kind')}: {fr.get('decoded', 0)} decoded, "
             f"{fr.get('activity', 0)} activity), {fr.get('stimulus', 0)} true stimulus frames, "
             f"{fr.get('matched', 0)} matched; source sent {_fmt(metrics.get('source', {}).get('frames_sent'))}"]
    if metrics.get("note"):
        lines.append(f"NOTE: {metrics['note']}")
    dec = metrics.get("decoding") or {}
    if metrics.get("decoded") and dec.get("lag_frames") is not None:
        lines.append(f"decoding lag {dec['lag_frames']} frames, {_fmt(dec.get('members_active'))} ensemble member(s) "
                     f"active: a decoded frame carries the stage stamps of the newest frame (whose arrival "
                     f"released it), so acq->rx and acq->sink include the decoding lag")
    lat = metrics.get("latency_ms", {})
    rows = [*lat.get("stages", {}).items(), *lat.get("end_to_end", {}).items()]
    if rows:
        lines += _latency_table(rows)
    lines.append(f"gaps: output messages lost {_fmt(gaps.get('output_messages_lost'))}, output frames missing "
                 f"{_fmt(gaps.get('output_frames_missing'))}, stimulus messages lost "
                 f"{_fmt(gaps.get('stimulus_messages_lost'))}; skipped frames (service) "
                 f"{_fmt(skips.get('service_skipped_frames'))}"
                 + (f", emitted without a gradient step {skips['recon_unoptimised_frames']}"
                    if skips.get("recon_unoptimised_frames") is not None else "")
                 + f"; malformed {_fmt(mal.get('total'))}, "
                 f"rejected by sink {sum(mal.get('sink_rejected', {}).values())}")
    if corr.get("video_corr") is not None:
        lines.append(f"live video correlation: {_fmt(corr.get('video_corr'), 3)} "
                     f"({'eval mask' if corr.get('eval_mask') else 'no mask given'}), full screen "
                     f"{_fmt(corr.get('video_corr_full_screen'), 3)}, best lag {_fmt(corr.get('best_lag_frames'))} "
                     f"frames ({_fmt(corr.get('best_lag_corr'), 3)}); {corr.get('frames_scored')} frames scored, "
                     f"first {corr.get('skip_frames')} left out")
    else:
        lines.append(f"live video correlation: - ({corr.get('why_none', 'not computed')})")
    return "\n".join(lines)

