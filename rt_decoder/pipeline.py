"""The live path as a chain of small stages, and the runner that drives it.

No sockets here: the application (``streaming.service``) builds a source and sinks from the
transport, builds the stages, and hands them to ``Runner``. Tests hand it in-memory ones.

The chain, in order::

    source --[receiver thread]--> intake queue (bounded, never blocks: overflow counted)
      --[frame thread]--> IntakeStage      messages counted
                      --> SessionStage     sessions and who owns them, sequence and frame-index
                                           gaps, ROI-count and non-finite checks, frames
                                           stamped rx/decode
                      --> RecordTap        received frames and stimuli to the recording
                      --> DeconvStage      fluorescence -> activity (+ the recent window)
      --[latest-frame handoff: a newer frame replaces one still waiting, counted as skipped]-->
      --[reconstruction thread]--> ReconstructionStage  activity window -> decoded frames
                      --> OutputStage      publish (stamp tx), latency metrics
                      --> RecordTap        decoded frames to the recording

Without a reconstruction stage, the output and decoded-record stages run on the frame
thread and activity frames are published.

What flows is one of the item types below. The runner calls, for every stage:
``reset(info)`` when a ``SessionStarted`` reaches it (then passes the item on),
``flush()`` when a ``SessionEnded`` reaches it (its outputs go on before the item),
``__call__(item)`` for everything else, ``warmup(info)`` once before READY, and
``stats()`` for the status channel.

Counting goes through a ``Counters`` object (``streaming.metrics.MetricsRecorder`` is one).
This module imports numpy and the core only: never zmq, streaming or bindings.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import numpy as np

from rt_decoder.errors import StageError
from rt_decoder.messages import ActivityFrame, DecodedFrame, FluorescenceFrame, SessionInfo, now_ns

if TYPE_CHECKING:
    from rt_decoder.deconv import DeconvSettings, OnlineDeconvolver

# message kinds a source delivers (the wire protocol's names, streaming.protocol.KIND_*)
KIND_SESSION_START = "session_start"
KIND_SESSION_END = "session_end"
KIND_FRAME = "frame"
KIND_ACTIVITY = "activity"
KIND_HEARTBEAT = "heartbeat"
KIND_STIMULUS = "stimulus"


#: A sequence number further ahead than this is a new numbering, not lost messages
#: (2^32 messages would be over four years of a 30 Hz stream).
MAX_SEQ_GAP = 2**32

#: A ``session_end`` must continue the session's numbering within this many messages.
MAX_CONTROL_SEQ_GAP = 64

# ------------------------------------------------------------------------------ items


class Message(Protocol):
    """A validated inbound message (``streaming.protocol.Envelope`` is one)."""

    @property
    def kind(self) -> str: ...

    @property
    def session_id(self) -> str: ...

    @property
    def seq(self) -> int: ...

    @property
    def body(self) -> Any: ...


@dataclass(frozen=True)
class Inbound:
    """One message off the source, with the times it was received and validated (monotonic ns)
    and, for session control messages, who sent it (``Source.last_peer``; "" = unknown)."""

    message: Message
    rx_ns: int
    decode_ns: int
    peer: str = ""


@dataclass(frozen=True)
class SessionStarted:
    """A new session begins (every stage downstream gets ``reset(info)``)."""

    info: SessionInfo


@dataclass(frozen=True)
class SessionEnded:
    """The source ended its session after ``n_frames`` frames (stages get ``flush()``)."""

    session_id: str
    n_frames: int


@dataclass(frozen=True)
class FrameGap:
    """``n_missing`` frames never arrived before the next one; ``restart``: too many to bridge."""

    n_missing: int
    restart: bool
    frame_index: int


@dataclass(frozen=True)
class Stimulus:
    """The true stimulus shown at ``frame_index`` (for recordings; decoders ignore it)."""

    frame_index: int
    image: np.ndarray


@dataclass(frozen=True)
class ActivityWindow:
    """An activity frame plus the freshest estimates of the last W frames, (W, N) float32,
    oldest first, the newest row belonging to ``frame`` (what the reconstruction reads)."""

    frame: ActivityFrame
    recent: np.ndarray | None


Item = (Inbound | SessionStarted | SessionEnded | FrameGap | Stimulus | FluorescenceFrame | ActivityFrame
        | ActivityWindow | DecodedFrame)


class Counters(Protocol):
    """Where stages count (``streaming.metrics.MetricsRecorder`` implements it)."""

    notes: dict[str, str]
    session_id: str

    def count(self, name: str, n: int = 1) -> None: ...

    def count_malformed(self, reason: str) -> None: ...

    def record_frame(self, stamps: tuple[tuple[str, int], ...], acq_ns: int) -> None: ...

    def record_frame_path(self, ms: float) -> None: ...


@runtime_checkable
class Stage(Protocol):
    """One step of the chain. Every method is required (a stage with nothing to do passes)."""

    name: str

    def reset(self, info: SessionInfo) -> None: ...

    def warmup(self, info: SessionInfo) -> None: ...

    def __call__(self, item: Item) -> list[Item]: ...

    def flush(self) -> list[Item]: ...

    def stats(self) -> dict[str, Any]: ...


class PassStage:
    """Base with do-nothing ``reset``/``warmup``/``flush``/``stats``; ``__call__`` passes items on."""

    name = "pass"

    def reset(self, info: SessionInfo) -> None:
        return None

    def warmup(self, info: SessionInfo) -> None:
        return None

    def __call__(self, item: Item) -> list[Item]:
        return [item]

    def flush(self) -> list[Item]:
        return []

    def stats(self) -> dict[str, Any]:
        return {}


def run_chain(stages: Sequence[Stage], items: list[Item]) -> list[Item]:
    """Push ``items`` through ``stages`` in order with the runner's session rules; returns what
    comes out of the last stage."""
    for stage in stages:
        out: list[Item] = []
        for item in items:
            if isinstance(item, SessionStarted):
                stage.reset(item.info)
                out.append(item)
            elif isinstance(item, SessionEnded):
                out.extend(stage.flush())
                out.append(item)
            else:
                out.extend(stage(item))
        items = out
        if not items:
            break
    return items


# ------------------------------------------------------------------------------ frame-path stages


class IntakeStage(PassStage):
    """Counts every message (``messages_received``); validation of a frame's values against
    its session is the session stage's."""

    name = "intake"

    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    def __call__(self, item: Item) -> list[Item]:
        if isinstance(item, Inbound):
            self.counters.count("messages_received")
        return [item]


class SessionStage(PassStage):
    """Sessions, sequence numbers and frame indices of the input.

    A ``session_start`` with a new id, a new ROI count, or the same id with its sequence
    restarted begins a new session (``SessionStarted``); frames of another session, or
    before any, are counted and dropped (``frames_before_info``). Sequence gaps count
    ``messages_lost``; a jump beyond ``MAX_SEQ_GAP`` is no loss anyone could have had: counted
    once (``seq_jumps``) and followed only when the next message continues from it.

    Frame indices: a small step back (up to ``confirm_jump_frames``) is a duplicate or
    reordered frame, dropped (``stale_frame_index``); a jump ahead of up to
    ``confirm_jump_frames`` emits a ``FrameGap`` at once. A frame further away, ahead or
    back, is held until the next frame decides: if that one continues from it, the source
    renumbered (a ``FrameGap`` with ``restart`` when the jump exceeds ``max_gap_frames`` or
    went back: ``frame_index_epochs``); if it continues the old numbering, the held frame was
    an outlier, dropped (``frame_index_outlier``). So one bad index costs at most itself and
    one frame period, never the frames after it. Frames whose length is not the session's
    ROI count are dropped (``n_rois_mismatch``).

    Session control belongs to the session's publisher: while a session runs (not ended,
    heard from within ``takeover_after_s``), a ``session_start`` of another session id, or
    from another peer, is refused (``session_takeover_refused``); the same id with its
    sequence restarted from the same (or an unknown) peer is a restart, and a new id from
    the same CURVE key is accepted at once. A
    ``session_end`` is accepted only when it continues the session's sequence numbers (at
    most ``MAX_CONTROL_SEQ_GAP`` ahead) and, when both are known, comes from the peer that
    started the session (else ``session_control_refused``).

    Parameters
    ----------
    counters : Counters
    max_gap_frames : int
        Larger frame-index jumps restart the deconvolution instead of being bridged.
    confirm_jump_frames : int
        Frame-index jumps further than this wait for the next frame to confirm them.
    takeover_after_s : float
        A different session may replace a running one only after that one ended or was
        silent this long (seconds).
    on_session_end : callable(session_id, n_frames) -> None, optional
        Called after a ``session_end`` (the service may stop on it).
    """

    name = "session"

    def __init__(self, counters: Counters, *, max_gap_frames: int, confirm_jump_frames: int = 30,
                 takeover_after_s: float = 2.0, on_session_end: Callable[[str, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.counters = counters
        self._seq_jump: int | None = None
        self.takeover_after_s = float(takeover_after_s)
        self._clock = clock
        self._last_heard = 0.0
        self._ended = False
        self._peer = ""
        self.max_gap_frames = int(max_gap_frames)
        self.confirm_jump_frames = int(confirm_jump_frames)
        self._held: FluorescenceFrame | ActivityFrame | None = None
        self.on_session_end = on_session_end
        self.info: SessionInfo | None = None
        self._last_seq: int | None = None
        self._last_frame_index: int | None = None
        self.frames_in_session = 0

    def _track_seq(self, seq: int) -> None:
        m = self.counters
        if self._last_seq is not None:
            expected = self._last_seq + 1
            if self._seq_jump is not None:
                jumped, self._seq_jump = self._seq_jump, None
                if jumped < seq <= jumped + MAX_CONTROL_SEQ_GAP:
                    self._last_seq = seq  # the next message continues the jump: a new numbering, followed
                    return
            if seq > expected + MAX_SEQ_GAP:
                # not a loss anyone could have had: counted once, followed only if the next
                # message continues from it
                m.count("seq_jumps")
                self._seq_jump = seq
                return
            if seq > expected:
                m.count("messages_lost", seq - expected)
                m.count("gap_events")
            elif seq < expected:
                m.count_malformed("seq_regress")
        self._last_seq = max(seq, self._last_seq if self._last_seq is not None else -1)

    def __call__(self, item: Item) -> list[Item]:
        if not isinstance(item, Inbound):
            return [item]
        msg, m = item.message, self.counters
        kind = msg.kind
        now = self._clock()
        if kind == KIND_SESSION_START:
            info = msg.body
            assert isinstance(info, SessionInfo)
            cur = self.info
            restarted = (cur is not None and info.session_id == cur.session_id
                         and self._last_seq is not None and msg.seq < self._last_seq)
            if cur is None or restarted or info.session_id != cur.session_id or info.n_rois != cur.n_rois:
                if not self._may_take_over(item.peer, now, same_id=cur is not None and info.session_id == cur.session_id):
                    m.count("session_takeover_refused")
                    assert cur is not None
                    m.notes["last_session_refused"] = (
                        f"session_start of {info.session_id!r} ({item.peer or 'unknown peer'}) refused: session "
                        f"{cur.session_id!r} is running (it may be replaced after it ends or is silent for "
                        f"{self.takeover_after_s:g} s)")
                    return []
                return self._start(info, msg.seq, item.peer, now)
            self._last_heard = now
            self._track_seq(msg.seq)
            return []
        if self.info is None or msg.session_id != self.info.session_id:
            if kind in (KIND_FRAME, KIND_ACTIVITY):
                m.count("frames_before_info")
            return []
        if kind == KIND_SESSION_END and not self._owns_end(item, msg.seq):
            m.count("session_control_refused")
            m.notes["last_session_refused"] = (f"session_end of {msg.session_id!r} with seq {msg.seq} "
                                               f"({item.peer or 'unknown peer'}) refused: not from the session's "
                                               f"publisher (last seq {self._last_seq})")
            return []
        self._last_heard = now
        self._track_seq(msg.seq)
        if kind == KIND_HEARTBEAT:
            m.count("heartbeats_received")
            return []
        if kind == KIND_SESSION_END:
            self._ended = True
            out = self.end_held()
            m.notes["last_session_end"] = f"{msg.session_id} after {self.frames_in_session} frames"
            if self.on_session_end is not None:
                self.on_session_end(msg.session_id, self.frames_in_session)
            return [*out, SessionEnded(msg.session_id, self.frames_in_session)]
        if kind == KIND_STIMULUS:
            return [Stimulus(int(msg.body.frame_index), msg.body.image)]
        if kind in (KIND_FRAME, KIND_ACTIVITY):
            return self._frame(item)
        return []

    def _may_take_over(self, peer: str, now: float, *, same_id: bool) -> bool:
        if self.info is None or self._ended or now - self._last_heard >= self.takeover_after_s:
            return True
        if peer and self._peer and peer != self._peer:
            return False  # another publisher (CURVE key or address) while the session runs
        if same_id:
            return True  # the session's publisher restarted its numbering under the same id
        return peer.startswith("key:") and peer == self._peer  # the same CURVE key, a new session

    def _owns_end(self, item: Inbound, seq: int) -> bool:
        last = self._last_seq if self._last_seq is not None else -1
        if not last < seq <= last + MAX_CONTROL_SEQ_GAP:
            return False
        return not (item.peer and self._peer and item.peer != self._peer)

    def _start(self, info: SessionInfo, seq: int, peer: str = "", now: float = 0.0) -> list[Item]:
        m = self.counters
        if self.info is not None:
            m.count("session_restarts")
            m.notes["last_session_restart"] = (f"{self.info.session_id} -> {info.session_id} "
                                               f"({self.info.n_rois} -> {info.n_rois} ROIs)")
        m.count("sessions_started")
        m.session_id = info.session_id
        self.info = info
        self._last_seq = seq
        self._seq_jump = None
        self._last_frame_index = None
        self._held = None
        self._peer = peer
        self._ended = False
        self._last_heard = now
        self.frames_in_session = 0
        m.notes["session"] = (f"{info.session_id}: {info.n_rois} ROIs at {info.frame_rate_hz:g} Hz, "
                              f"{'activity (deconvolution bypassed)' if info.is_activity else 'fluorescence'}")
        return [SessionStarted(info)]

    def _frame(self, item: Inbound) -> list[Item]:
        m, info = self.counters, self.info
        assert info is not None
        frame = item.message.body
        if frame.values.shape[0] != info.n_rois:
            m.count_malformed("n_rois_mismatch")
            m.notes["last_malformed"] = (f"frame {frame.frame_index} has {frame.values.shape[0]} values, "
                                         f"session {info.session_id} has {info.n_rois} ROIs")
            return []
        finite = np.isfinite(frame.values)
        if not finite.all():
            # a non-finite value is a missing sample of that ROI (the deconvolution bridges it; an
            # activity session passes it to the reconstruction as no evidence); a frame with no
            # finite value at all carries nothing
            n_bad = int(frame.values.size - np.count_nonzero(finite))
            if n_bad == frame.values.size:
                m.count_malformed("nonfinite")
                m.notes["last_malformed"] = f"frame {frame.frame_index}: no finite value"
                return []
            m.count("nonfinite_values", n_bad)
        frame = dataclasses.replace(frame, stamps=frame.stamps + (("rx", item.rx_ns), ("decode", item.decode_ns)))
        fi, out = int(frame.frame_index), []
        bound = self.confirm_jump_frames
        if self._held is not None:
            held = self._held
            self._held = None
            if held.frame_index < fi <= held.frame_index + bound:
                # the next frame continues from the held one: a new numbering, confirmed
                out = self._accept(held, epoch=True)
            else:
                m.count_malformed("frame_index_outlier")
                m.notes["last_malformed"] = (f"frame index {held.frame_index} did not continue (next {fi}, "
                                             f"previous {self._last_frame_index}): dropped as an outlier")
        last = self._last_frame_index
        if last is not None:
            missing = fi - last - 1
            if -bound <= missing < 0:
                m.count_malformed("stale_frame_index")
                return out
            if missing > bound or missing < -bound:
                # too far from the running numbering to trust alone: held until the next frame
                self._held = frame
                return out
        return out + self._accept(frame, epoch=False)

    def _accept(self, frame: FluorescenceFrame | ActivityFrame, *, epoch: bool) -> list[Item]:
        m, out = self.counters, cast(list[Item], [])
        fi, last = int(frame.frame_index), self._last_frame_index
        if last is not None and fi != last + 1:
            missing = fi - last - 1
            if epoch and not 0 < missing <= self.max_gap_frames:
                m.count("frame_index_epochs")
                m.notes["last_frame_index_epoch"] = f"frame index {last} -> {fi}"
                out.append(FrameGap(max(missing, 0), True, fi))
            else:
                m.count("frames_missing", missing)
                out.append(FrameGap(missing, missing > self.max_gap_frames, fi))
        self._last_frame_index = fi
        self.frames_in_session += 1
        m.count("frames_received")
        out.append(frame)
        return out

    def end_held(self) -> list[Item]:
        """The session ended with a frame still held: nothing contradicts it, so it goes on."""
        if self._held is None:
            return []
        held, self._held = self._held, None
        return self._accept(held, epoch=True)

    def stats(self) -> dict[str, Any]:
        return {"frames_in_session": self.frames_in_session}


class Recording(Protocol):
    """The recording a ``RecordTap`` writes to (``streaming.recorder.SessionRecorder``)."""

    def start_session(self, info: SessionInfo) -> None: ...

    def end_session(self) -> None: ...

    def submit_frame(self, frame: FluorescenceFrame | ActivityFrame) -> None: ...

    def submit_stimulus(self, frame_index: int, image: Any) -> None: ...

    def submit_decoded(self, frame: DecodedFrame) -> None: ...


class RecordTap(PassStage):
    """Hands what passes to the recording (never blocks) and passes everything on.

    ``what="input"`` (on the frame path) opens the session file at a session start and
    records received frames and stimuli; ``what="decoded"`` (after the output) records
    decoded frames and closes the file at the session end, after the reconstruction's
    last frames.
    """

    def __init__(self, recording: Recording, what: str) -> None:
        if what not in ("input", "decoded"):
            raise ValueError(f"what must be input or decoded, got {what!r}")
        self.recording = recording
        self.what = what
        self.name = f"record_{what}"

    def reset(self, info: SessionInfo) -> None:
        if self.what == "input":
            self.recording.start_session(info)

    def flush(self) -> list[Item]:
        if self.what == "decoded":
            self.recording.end_session()
        return []

    def __call__(self, item: Item) -> list[Item]:
        if self.what == "input":
            if isinstance(item, (FluorescenceFrame, ActivityFrame)):
                self.recording.submit_frame(item)
            elif isinstance(item, Stimulus):
                self.recording.submit_stimulus(item.frame_index, item.image)
                return []
        elif isinstance(item, DecodedFrame):
            self.recording.submit_decoded(item)
        return [item]


class DeconvStage(PassStage):
    """Fluorescence -> activity with ``rt_decoder.deconv.OnlineDeconvolver`` (one per session).

    Activity frames (``SessionInfo.is_activity`` sessions) pass with a ``deconv`` stamp.
    With ``window_frames`` > 0 the output is an ``ActivityWindow`` (frame + the freshest
    estimates of the last ``window_frames`` frames, for the reconstruction), else the
    ``ActivityFrame``.

    The initial batch runs off the frame path: the frame (or gap) that completes it is
    handed, with every frame that arrives meanwhile, to a background thread, which runs the
    parameter estimation and then catches up on those frames in order, exactly as the
    deconvolver would have in line (same calls, same results). Until it has caught up,
    frames keep flowing with zero activity (``frames_before_deconv_ready`` counts them when
    a reconstruction waits for windows; decoding starts once the parameters are ready).
    ``background_init=False`` runs it in line instead.
    """

    name = "deconv"

    def __init__(self, settings: DeconvSettings, counters: Counters, *, window_frames: int = 0,
                 background_init: bool = True) -> None:
        from rt_decoder.deconv import DeconvSettings

        if not isinstance(settings, DeconvSettings):
            raise TypeError(f"settings must be DeconvSettings, got {type(settings).__name__}")
        if window_frames > settings.history_frames:
            from rt_decoder.errors import ConfigError

            raise ConfigError(f"[pipeline] recent_window_frames = {window_frames} exceeds "
                              f"[deconv] history_frames = {settings.history_frames}")
        self.settings = settings
        self.counters = counters
        self.window_frames = int(window_frames)
        self.background_init = bool(background_init)
        self.deconv: OnlineDeconvolver | None = None
        # activity sessions: the last window_frames activity rows as a ring (row _head is the oldest)
        self._recent: np.ndarray | None = None
        self._head = 0
        self._lock = threading.Lock()
        self._backlog: collections.deque[FluorescenceFrame | FrameGap] = collections.deque()
        self._init_thread: threading.Thread | None = None
        self._init_error: BaseException | None = None

    def reset(self, info: SessionInfo) -> None:
        from rt_decoder.deconv import OnlineDeconvolver

        with self._lock:  # a background catch-up of the previous session stops at its next item
            self._backlog.clear()
            self._init_thread = None
            self._init_error = None
            self.deconv = None if info.is_activity else OnlineDeconvolver(self.settings, info.n_rois,
                                                                           info.frame_rate_hz)
        self._recent = (np.zeros((self.window_frames, info.n_rois), np.float32)
                        if (self.window_frames and info.is_activity) else None)
        self._head = 0

    def warmup(self, info: SessionInfo) -> None:
        """Compile the kernels and run the parameter estimation on a dummy session."""
        from rt_decoder.deconv import OnlineDeconvolver

        rng = np.random.default_rng(0)
        dec = OnlineDeconvolver(self.settings, info.n_rois, info.frame_rate_hz)
        n_frames = self.settings.init_frames + 3
        for i in range(n_frames):
            values = (100.0 + 10.0 * rng.standard_normal(info.n_rois)).astype(np.float32)
            dec(FluorescenceFrame(i, i, now_ns(), values=values))
            if i == n_frames - 2:
                dec.push_gap(1)
        if self.window_frames:
            dec.recent(self.window_frames)
        self.counters.notes["warmup"] = f"deconvolution run on {info.n_rois} dummy ROIs for {n_frames} frames"

    @property
    def catching_up(self) -> bool:
        """True while the initial batch is estimated (and the frames since caught up) off the frame path."""
        return self._init_thread is not None

    def _apply(self, dec: OnlineDeconvolver, item: FluorescenceFrame | FrameGap) -> ActivityFrame | None:
        """One frame or gap through ``dec`` (on whichever thread owns it now)."""
        if isinstance(item, FrameGap):
            if item.restart:
                self.counters.count("deconv_resets")
                self.counters.notes["last_deconv_reset"] = (f"frame index jumped by {item.n_missing + 1} "
                                                            f"at frame {item.frame_index}")
                dec.reset()
            else:
                dec.push_gap(int(item.n_missing))
            return None
        try:
            return dec(item)  # keeps the frame's stamps and adds "deconv"
        except StageError as exc:
            self.counters.count("stage_errors")
            self.counters.notes["last_stage_error"] = str(exc)[:200]
            return None

    def _completes_batch(self, dec: OnlineDeconvolver, item: FluorescenceFrame | FrameGap) -> bool:
        k = item.n_missing if isinstance(item, FrameGap) else 1
        return (self.background_init and not dec.ready and k > 0
                and dec.frames_seen + k >= dec.settings.init_frames)

    def _feed(self, item: FluorescenceFrame | FrameGap) -> tuple[bool, ActivityFrame | None]:
        """(handled in line?, its output). Items go to the background catch-up while it runs."""
        dec = self.deconv
        assert dec is not None  # a fluorescence session
        with self._lock:
            if self._init_error is not None:
                err, self._init_error = self._init_error, None
                raise err
            if self._init_thread is not None:
                self._backlog.append(item)
                return False, None
            if self._completes_batch(dec, item):
                self._backlog.append(item)
                self._init_thread = threading.Thread(target=self._catch_up, args=(dec,), daemon=True,
                                                     name="deconv-init")
                self._init_thread.start()
                self.counters.notes["deconv_init"] = "initial batch: estimating parameters off the frame path"
                return False, None
        return True, self._apply(dec, item)

    def _catch_up(self, dec: OnlineDeconvolver) -> None:
        try:
            while True:
                with self._lock:
                    if self.deconv is not dec:
                        return  # the session changed: this deconvolver is gone
                    if not self._backlog:
                        self._init_thread = None
                        self.counters.notes["deconv_init"] = (f"parameters ready after {dec.frames_seen} frames "
                                                              "(estimated off the frame path)")
                        return
                    item = self._backlog.popleft()
                self._apply(dec, item)
        except Exception as exc:  # noqa: BLE001 -- handed to the frame thread, which raises it (fatal)
            with self._lock:
                self._init_error = exc
                self._init_thread = None

    def __call__(self, item: Item) -> list[Item]:
        if isinstance(item, FrameGap):
            if self.deconv is not None:
                self._feed(item)
            if self._recent is not None:  # missing frames: rows of no evidence
                k = min(item.n_missing, len(self._recent))
                self._recent[(self._head + np.arange(k)) % len(self._recent)] = 0.0
                self._head = (self._head + k) % len(self._recent)
            return []
        if not isinstance(item, (FluorescenceFrame, ActivityFrame)):
            return [item]
        m = self.counters
        frame = item
        decoding = True
        if self.deconv is None or isinstance(frame, ActivityFrame):
            act: ActivityFrame | None = ActivityFrame(frame.seq, frame.frame_index, frame.acq_ns, stamps=frame.stamps,
                                                      values=frame.values, behaviour=frame.behaviour).with_stamp("deconv")
        else:
            if not frame.values.flags.writeable:
                # a zero-copy view of the received message; the numba kernels want a writable array
                frame = dataclasses.replace(frame, values=frame.values.copy())
            in_line, act = self._feed(frame)
            if in_line and act is None:
                return []  # a stage error, counted
            if not in_line:  # with the background catch-up: zero activity now
                act = ActivityFrame(frame.seq, frame.frame_index, frame.acq_ns, stamps=frame.stamps,
                                    values=np.zeros(frame.values.shape[0], np.float32),
                                    behaviour=frame.behaviour).with_stamp("deconv")
                decoding = False
            elif not self.deconv.ready:
                decoding = False  # the initial batch: all zeros
        assert act is not None
        m.count("frames_processed")
        rx, ready = act.stamp("rx"), act.stamp("deconv")
        if rx is not None and ready is not None:
            m.record_frame_path((ready - rx) / 1e6)
        if not self.window_frames:
            return [act]
        if not decoding:
            # nothing to decode yet (zeros would only drag the warm-started video off course)
            m.count("frames_before_deconv_ready")
            return []
        if self.deconv is not None:
            recent = np.asarray(self.deconv.recent(self.window_frames), np.float32)  # a fresh copy
        else:
            ring, h = self._recent, self._head
            assert ring is not None
            ring[h] = act.values
            if not np.isfinite(ring[h]).all():  # missing samples: no evidence
                np.nan_to_num(ring[h], copy=False, nan=0.0, posinf=0.0, neginf=0.0)
                act = dataclasses.replace(act, values=ring[h].copy())
            self._head = (h + 1) % len(ring)
            recent = np.concatenate((ring[self._head:], ring[:self._head]))  # oldest first, one copy
        return [ActivityWindow(act, recent)]

    def stats(self) -> dict[str, Any]:
        d = self.deconv
        if d is None:
            return {}
        return {"deconv_ready": bool(d.ready) and not self.catching_up, "deconv_frames_seen": int(d.frames_seen)}


# ------------------------------------------------------------------------------ reconstruction


class Reconstructor(Protocol):
    """What ``ReconstructionStage`` drives (``rt_decoder.recon.stage.LiveStage``, or
    ``rt_decoder.recon.process.ReconstructionProcess`` running one in a child process).

    ``model_deconv``: the deconvolution settings its model's training responses were made
    with (the service runs the same, under its config's explicit ``[deconv]`` keys); empty
    when it has none.
    """

    @property
    def model_deconv(self) -> Mapping[str, Any]: ...

    def reset(self, info: SessionInfo) -> None: ...

    def warmup(self) -> None: ...

    def __call__(self, frame: ActivityFrame, recent_activity: np.ndarray | None) -> list[DecodedFrame]: ...

    def flush(self) -> list[DecodedFrame]: ...

    def stats(self) -> dict[str, Any]: ...


class ReconstructionStage(PassStage):
    """Activity window -> decoded frames through a ``Reconstructor``; stamps ``recon``.

    A ``StageError`` (e.g. a session sharing no ROI with the model) is counted in
    ``stage_errors`` and the frame yields nothing; anything else propagates (fatal).
    """

    name = "reconstruction"

    def __init__(self, reconstructor: Reconstructor, counters: Counters) -> None:
        self.reconstructor = reconstructor
        self.counters = counters
        self.processed = 0
        self.refused = ""

    def reset(self, info: SessionInfo) -> None:
        """New session. A reconstructor that refuses the session (``StageError`` from its
        ``reset``, e.g. too few of the model's neurons among the ROIs) is not called for it:
        its activity frames go to the output instead, and the reason is in the notes."""
        m = self.counters
        try:
            self.reconstructor.reset(info)
            self.refused = ""
            m.notes.pop("reconstruction_refused", None)
        except StageError as exc:
            self.refused = str(exc)
            m.count("sessions_not_reconstructed")
            m.notes["reconstruction_refused"] = self.refused[:300]
        coverage = self.reconstructor.stats().get("recon_roi_coverage")
        if isinstance(coverage, float):
            m.notes["roi_coverage"] = f"{coverage:.0%}"

    def warmup(self, info: SessionInfo) -> None:
        self.reconstructor.warmup()

    def _stamped(self, outputs: Sequence[DecodedFrame], stamps: tuple[tuple[str, int], ...]) -> list[Item]:
        t = now_ns()
        return [(o if o.stamps else dataclasses.replace(o, stamps=stamps)).with_stamp("recon", t) for o in outputs]

    def __call__(self, item: Item) -> list[Item]:
        if not isinstance(item, ActivityWindow):
            return [item]
        if self.refused:
            return [item.frame.with_stamp("recon")]  # activity still flows
        try:
            outputs = self.reconstructor(item.frame, item.recent)
        except StageError as exc:
            self.counters.count("stage_errors")
            self.counters.notes["last_stage_error"] = str(exc)[:200]
            return []
        self.processed += 1
        return self._stamped(outputs, item.frame.stamps)

    def flush(self) -> list[Item]:
        if self.refused:
            return []
        try:
            outputs = self.reconstructor.flush()
        except StageError as exc:
            self.counters.count("stage_errors")
            self.counters.notes["last_stage_error"] = str(exc)[:200]
            return []
        return self._stamped(outputs, ())

    def stats(self) -> dict[str, Any]:
        return self.reconstructor.stats()


class ActivityPassThrough(PassStage):
    """Stands in for the reconstruction when there is none: activity frames go on to the
    output as they are, with a ``recon`` stamp (so every output frame has every stamp)."""

    name = "reconstruction"

    def __call__(self, item: Item) -> list[Item]:
        if isinstance(item, ActivityFrame):
            return [item.with_stamp("recon")]
        return [item]


# ------------------------------------------------------------------------------ output


class FrameOutput(Protocol):
    """Where output frames go (``streaming.transport.OutputStream``)."""

    def begin(self, info: SessionInfo) -> object: ...

    def end(self, n_frames: int) -> object: ...

    def send(self, frame: ActivityFrame | DecodedFrame) -> ActivityFrame | DecodedFrame: ...


class OutputStage(PassStage):
    """Publishes frames (the output stamps ``tx``) and records their stage latencies; the
    output session follows the input's (as activity, ``source="rt-decoder serve"``)."""

    name = "output"

    def __init__(self, output: FrameOutput, counters: Counters) -> None:
        self.output = output
        self.counters = counters
        self._n = 0

    def reset(self, info: SessionInfo) -> None:
        self._n = 0
        self.output.begin(dataclasses.replace(info, is_activity=True, source="rt-decoder serve"))

    def __call__(self, item: Item) -> list[Item]:
        if not isinstance(item, (ActivityFrame, DecodedFrame)):
            return []
        out = self.output.send(item)
        self.counters.record_frame(out.stamps, out.acq_ns)
        self.counters.count("frames_published")
        self._n += 1
        return [out]

    def flush(self) -> list[Item]:
        """The session ended: announce it with the number of frames this output sent."""
        self.end()
        return []

    def end(self) -> None:
        """Announce the end of the output session (once; the output ignores a repeat)."""
        self.output.end(self._n)


# ------------------------------------------------------------------------------ the runner


class Source(Protocol):
    """Where messages come from (``streaming.transport.StreamSubscriber``)."""

    last_recv_ns: int
    last_peer: str

    def recv(self, timeout_ms: int | None = None) -> Message | None: ...

    def close(self) -> None: ...


_DRAIN = object()


class LatestHandoff:
    """A one-slot mailbox: ``put`` never blocks and replaces a waiting item (a *skip*)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._busy = False
        self._closed = False
        self.generation = 0

    def put(self, item: Any) -> bool:
        """Leave ``item``; returns True when it replaced one still waiting."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify_all()
            return replaced

    def take(self) -> tuple[Any, int] | None:
        """Wait for an item; None once closed and empty. Marks the taker busy until ``done``."""
        with self._cond:
            while self._item is None and not self._closed:
                self._cond.wait()
            if self._item is None:
                return None
            item, self._item = self._item, None
            self._busy = True
            return item, self.generation

    def done(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def clear(self) -> None:
        """Drop a waiting item (not a skip) and wait for the taker to finish its current one."""
        with self._cond:
            self._item = None
            self.generation += 1
            while self._busy:
                self._cond.wait(0.05)

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._item is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Runner:
    """Drives the chain: a receiver thread, the frame thread, and (with a reconstruction) the
    reconstruction thread behind a ``LatestHandoff``.

    Parameters
    ----------
    source : Source
    frame_stages : sequence of Stage
        Run on the frame thread, in order, on every message.
    recon_stages : sequence of Stage
        Run on the reconstruction thread on the newest ``ActivityWindow`` (empty: the
        ``out_stages`` follow the frame stages on the frame thread).
    out_stages : sequence of Stage
        After the reconstruction (or the frame stages): output, decoded recording.
    counters : Counters
    intake_queue_frames : int
        Bound of the receiver -> frame thread queue (overflow counted in ``intake_overflow``).
    on_fatal : callable(str) -> None
        A stage raised something other than ``StageError``: the runner stops taking input.
    """

    def __init__(self, source: Source, frame_stages: Sequence[Stage], recon_stages: Sequence[Stage],
                 out_stages: Sequence[Stage], counters: Counters, *, intake_queue_frames: int,
                 on_fatal: Callable[[str], None]) -> None:
        self.source = source
        self.frame_stages = list(frame_stages)
        self.recon_stages = list(recon_stages)
        self.out_stages = list(out_stages)
        self.counters = counters
        self.on_fatal = on_fatal
        self.intake: queue.Queue[Any] = queue.Queue(maxsize=intake_queue_frames)
        self.handoff = LatestHandoff()
        self.skipped = 0
        self.submitted = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._fatal = False

    @property
    def stages(self) -> list[Stage]:
        return [*self.frame_stages, *self.recon_stages, *self.out_stages]

    def warmup(self, info: SessionInfo) -> None:
        """``warmup(info)`` on every stage, in order (before READY)."""
        for stage in self.stages:
            stage.warmup(info)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for stage in self.stages:
            out.update(stage.stats())
        return out

    def start(self) -> None:
        targets = [(self._receive, "receiver"), (self._frames, "frames")]
        if self.recon_stages:
            targets.append((self._reconstruct, "reconstruction"))
        for fn, name in targets:
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    # -- threads
    def _fail(self, where: str, exc: BaseException) -> None:
        self._fatal = True
        self.on_fatal(f"{where}: {type(exc).__name__}: {exc}")

    def _receive(self) -> None:
        src, q = self.source, self.intake
        while not self._stop.is_set():
            try:
                msg = src.recv(50)
            except Exception as exc:  # noqa: BLE001 -- the input must outlive any one bad event
                self.counters.count("input_errors")
                self.counters.notes["last_input_error"] = f"{type(exc).__name__}: {exc}"[:300]
                self._stop.wait(0.05)
                continue
            if msg is None:
                continue
            item = Inbound(msg, src.last_recv_ns, now_ns(), src.last_peer)
            try:
                q.put_nowait(item)
            except queue.Full:
                self.counters.count("intake_overflow")

    def _frames(self) -> None:
        while True:
            item = self.intake.get()
            if item is _DRAIN:
                return
            try:
                self._frame_path(item)
            except Exception as exc:  # noqa: BLE001 -- a stage cannot continue: fatal, visibly
                self._fail("pipeline", exc)
                return

    def _frame_path(self, item: Item) -> None:
        out = run_chain(self.frame_stages, [item])
        if not self.recon_stages:
            run_chain(self.out_stages, out)
            return
        for it in out:
            if isinstance(it, ActivityWindow) and self._refused():
                # a session the reconstruction refused: its activity goes out at once, in full
                run_chain(self.out_stages, [it.frame.with_stamp("recon")])
            elif isinstance(it, ActivityWindow):
                self.submitted += 1
                if self.handoff.put(it):
                    self.skipped += 1
                    self.counters.count("skipped_frames")
            elif isinstance(it, SessionStarted):
                self.handoff.clear()
                run_chain([*self.recon_stages, *self.out_stages], [it])
            elif isinstance(it, SessionEnded):
                # the reconstruction thread is idle after this (only this thread feeds it)
                self.handoff.wait_idle(60.0)
                run_chain([*self.recon_stages, *self.out_stages], [it])

    def _refused(self) -> bool:
        return any(isinstance(st, ReconstructionStage) and st.refused for st in self.recon_stages)

    def _reconstruct(self) -> None:
        while True:
            got = self.handoff.take()
            if got is None:
                return
            window, generation = got
            try:
                out = run_chain(self.recon_stages, [window])
                if generation == self.handoff.generation:  # else the session changed meanwhile
                    run_chain(self.out_stages, out)
            except Exception as exc:  # noqa: BLE001 -- the reconstruction cannot continue: fatal
                self._fail("reconstruction stage", exc)
                self.handoff.done()
                self.handoff.close()
                return
            finally:
                self.handoff.done()

    # -- stopping
    def drain(self, timeout_s: float) -> None:
        """Stop receiving, finish the queued frames and the pending reconstruction."""
        self._stop.set()
        if self._threads:
            self._threads[0].join(timeout=5.0)
            try:
                self.intake.put(_DRAIN, timeout=max(timeout_s, 0.1))
            except queue.Full:
                pass
            self._threads[1].join(timeout=max(timeout_s, 0.1) + 1.0)
        if self.recon_stages and not self._fatal:
            self.handoff.wait_idle(timeout_s)
        self.handoff.close()
        for t in self._threads[2:]:
            t.join(timeout=5.0)


__all__ = [
    "ActivityPassThrough", "ActivityWindow", "Counters", "DeconvStage", "FrameGap", "FrameOutput", "Inbound", "IntakeStage",
    "LatestHandoff", "Message", "OutputStage", "PassStage", "ReconstructionStage", "Reconstructor",
    "RecordTap", "Recording", "Runner", "SessionEnded", "SessionStage", "SessionStarted", "Source", "Stage",
    "Stimulus", "run_chain",
]
