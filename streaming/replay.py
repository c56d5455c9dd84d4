"""Replay a recorded session as a live stream (``rt-decoder replay``).

Sources (``open_source`` picks one from the path, or ``fmt=`` forces it):

- ``session``: our recorded-session HDF5 file (``rt_decoder.io.session_file``); frame
  indices, behaviour and stimulus as recorded.
- ``suite2p``: a Suite2p plane folder (``F.npy``, ``Fneu.npy``, ``iscell.npy``; also found
  under ``suite2p/plane0``): values = F - neuropil_coeff * Fneu for ROIs with iscell = 1;
  the frame rate must be given (``fs``): ``ops.npy`` needs pickle and is never loaded.
- ``sensorium``: a Sensorium-2023-layout folder (``rt_decoder.io.sensorium``): its
  responses are already deconvolved, so it is replayed as ACTIVITY frames with
  ``SessionInfo.is_activity = True`` (the service then bypasses its deconvolution);
  trials (all, those of one tier, or a list) are concatenated in the given order (30 Hz
  unless the folder's meta says otherwise).

Sources that have the true stimulus (Sensorium videos, session files recorded with it)
send it after each frame as a ``stimulus`` message, as the virtual rig does, so that
``rt-decoder sink`` scores replayed sessions. A session file whose writer was killed is
refused unless ``allow_incomplete``.
- ``nwb``: the first ``RoiResponseSeries`` of an NWB file (needs ``pynwb``; without it a
  ``BackendUnavailableError`` says so).

:class:`Replayer` publishes a source through ``streaming.transport.StreamPublisher`` with
absolute-deadline pacing (frame k is due at t0 + k / (rate * speed); no drift), ``speed
= 0`` as fast as possible, optional looping (frame indices keep increasing), and
injected faults for robustness tests: ``jitter_ms`` (each send delayed by a uniform
random 0..J ms) and ``drop_rate`` (each frame dropped with that probability), both from
a seeded ``np.random.Generator``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rt_decoder.errors import BackendUnavailableError, ConfigError, DataFormatError
from rt_decoder.messages import SessionInfo, now_ns

if TYPE_CHECKING:
    from streaming.transport import StreamPublisher

FORMATS = ("auto", "session", "suite2p", "sensorium", "nwb")


@dataclass(frozen=True)
class ReplayFrame:
    """One frame to send: values (N,) float32, behaviour (4,) float32 or None."""

    frame_index: int
    values: np.ndarray
    behaviour: np.ndarray | None = None
    stimulus: np.ndarray | None = None


class ReplaySource(Protocol):
    """What ``Replayer`` needs: session metadata, a frame count (-1: unknown) and a frame iterator."""

    info: SessionInfo
    n_frames: int

    def frames(self) -> Iterator[ReplayFrame]: ...


# ------------------------------------------------------------------------------ sources


@dataclass
class ArraySource:
    """Frames from an in-memory (T, N) array (also the base of the file sources)."""

    info: SessionInfo
    values: np.ndarray
    behaviour: np.ndarray | None = None
    frame_index: np.ndarray | None = None
    stimulus: Any = None
    n_frames: int = field(init=False)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float32)
        if self.values.ndim != 2 or self.values.shape[1] != self.info.n_rois:
            raise DataFormatError(f"replay values must be (T, {self.info.n_rois}), got {self.values.shape}")
        self.n_frames = int(self.values.shape[0])

    def frames(self) -> Iterator[ReplayFrame]:
        for t in range(self.n_frames):
            beh = None
            if self.behaviour is not None:
                b = np.asarray(self.behaviour[t], np.float32)
                beh = None if np.all(np.isnan(b)) else b
            fi = int(self.frame_index[t]) if self.frame_index is not None else t
            stim = np.asarray(self.stimulus[t], np.float32) if self.stimulus is not None else None
            yield ReplayFrame(fi, self.values[t], beh, stim)


def session_file_source(path: str | Path, session_id: str | None = None,
                        allow_incomplete: bool = False) -> ArraySource:
    """Our recorded-session HDF5 file (one whose writer was killed only with ``allow_incomplete``)."""
    from rt_decoder.io.inputs import read_complete_session

    rec = read_complete_session(path, allow_incomplete)
    info = rec.info
    if session_id:
        info = _with_sid(info, session_id)
    return ArraySource(info, rec.values, rec.behaviour, np.asarray(rec.frame_index, np.int64), rec.stimulus)


def _with_sid(info: SessionInfo, sid: str) -> SessionInfo:
    import dataclasses

    return dataclasses.replace(info, session_id=sid)


def suite2p_source(folder: str | Path, fs: float | None, *, neuropil_coeff: float = 0.7,
                   only_cells: bool = True, session_id: str | None = None,
                   roi_ids_file: str | Path | None = None, warn: Any = None) -> ArraySource:
    """A Suite2p plane folder: F - neuropil_coeff * Fneu for iscell ROIs, at ``fs`` Hz.

    ROI ids are the rows of ``F.npy`` (0..N-1) unless ``roi_ids_file`` (an ``.npy`` with one
    id per row of ``F.npy``, e.g. the unit ids a model was trained with) says otherwise.
    ``warn`` receives what the user should know (no ``iscell.npy``, NaN-only ROIs).
    """
    from rt_decoder.io.inputs import find_suite2p_plane, load_suite2p

    if find_suite2p_plane(folder) is None:
        raise DataFormatError(f"{folder}: no F.npy (Suite2p plane folder expected)")
    if fs is None or not (0 < fs <= 10_000):
        raise ConfigError(f"Suite2p replay needs the frame rate (--fs HZ), got {fs!r}; "
                          "ops.npy is not read because it needs pickle")
    plane = load_suite2p(folder, only_cells=only_cells, roi_ids_file=roi_ids_file,
                         neuropil_coeff=neuropil_coeff, warn=warn)
    info = SessionInfo(session_id or f"suite2p-{plane.folder.name}", plane.roi_ids, float(fs), stimulus_shape=None,
                       source="suite2p")
    return ArraySource(info, plane.values)


class SensoriumSource:
    """A Sensorium-layout folder replayed as activity frames, trial after trial."""

    def __init__(self, folder: str | Path, session_id: str | None = None, tier: str | None = None,
                 trials: Sequence[int] | None = None) -> None:
        from rt_decoder.io.sensorium import load_dataset

        self.ds = load_dataset(folder)
        self.trial_ids = list(self.ds.trials(tier)) if tier else list(self.ds.trial_ids)
        if trials is not None:
            missing = [int(t) for t in trials if int(t) not in self.ds.tiers]
            if missing:
                raise ConfigError(f"{folder}: no trial(s) {missing} (trials {self.ds.trial_ids[0]}.."
                                  f"{self.ds.trial_ids[-1]})")
            chosen = [int(t) for t in trials]
            if tier:
                wrong = [t for t in chosen if self.ds.tiers[t] != tier]
                if wrong:
                    raise ConfigError(f"{folder}: trial(s) {wrong} are not in tier {tier!r}")
            self.trial_ids = chosen
        if not self.trial_ids:
            tiers = sorted(set(self.ds.tiers.values()))
            raise DataFormatError(f"{folder}: no trials{f' in tier {tier!r} (tiers: {tiers})' if tier else ''}")
        first = self.ds.trial(self.trial_ids[0])
        self.info = SessionInfo(session_id or f"sensorium-{Path(folder).name}", np.asarray(self.ds.unit_ids),
                                float(self.ds.frame_rate_hz), roi_centres_px=self.ds.roi_centres_px,
                                stimulus_shape=tuple(first.video.shape[1:]), is_activity=True,  # type: ignore[arg-type]
                                source="sensorium")
        self.n_frames = sum(self._trial_frames(i) for i in self.trial_ids)

    def _trial_frames(self, tid: int) -> int:
        """Frames of one trial (its video up to the first NaN frame), read memory-mapped."""
        try:
            v = np.load(self.ds.root / "data" / "videos" / f"{tid}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataFormatError(f"{self.ds.root}: video of trial {tid} cannot be read ({exc})") from None
        if v.ndim != 3:
            raise DataFormatError(f"{self.ds.root}: video of trial {tid} has shape {v.shape}, expected (H, W, T)")
        if v.dtype.kind != "f":
            return int(v.shape[2])
        nan = np.isnan(v[0, 0, :])
        return int(np.argmax(nan)) if nan.any() else int(v.shape[2])

    def frames(self) -> Iterator[ReplayFrame]:
        k = 0
        for i in self.trial_ids:
            tr = self.ds.trial(i)
            resp = np.asarray(tr.responses, np.float32)
            for t in range(resp.shape[0]):
                yield ReplayFrame(k, resp[t], np.asarray(tr.behaviour[t], np.float32),
                                  np.asarray(tr.video[t], np.float32))
                k += 1


def nwb_source(path: str | Path, session_id: str | None = None) -> ArraySource:
    """The first ``RoiResponseSeries`` of an NWB file (needs pynwb)."""
    try:
        import pynwb
    except ImportError:
        raise BackendUnavailableError("NWB replay needs pynwb (pip install pynwb)") from None
    with pynwb.NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        series = None
        for obj in nwb.objects.values():
            if isinstance(obj, pynwb.ophys.RoiResponseSeries):
                series = obj
                break
        if series is None:
            raise DataFormatError(f"{path}: no RoiResponseSeries in this NWB file")
        data = np.asarray(series.data[:], np.float32)
        if data.ndim == 1:
            data = data[:, None]
        if series.rate is not None:
            rate = float(series.rate)
        else:
            ts = np.asarray(series.timestamps[:], np.float64)
            rate = float(1.0 / np.median(np.diff(ts)))
        try:
            ids = np.asarray(series.rois.data[:], np.int64)
        except (AttributeError, TypeError):
            ids = np.arange(data.shape[1], dtype=np.int64)
        if ids.shape[0] != data.shape[1]:
            ids = np.arange(data.shape[1], dtype=np.int64)
    info = SessionInfo(session_id or f"nwb-{Path(path).stem}", ids, rate, stimulus_shape=None, source="nwb")
    return ArraySource(info, data)


def detect_format(path: str | Path) -> str:
    """Guess the source format from the path (see the module docstring)."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() == ".nwb":
            return "nwb"
        if p.suffix.lower() in (".h5", ".hdf5", ".hdf"):
            return "session"
        raise DataFormatError(f"{p}: unknown replay file type (expected .h5 session file or .nwb)")
    if p.is_dir():
        if any((c / "F.npy").exists() for c in (p, p / "plane0", p / "suite2p" / "plane0")):
            return "suite2p"
        if (p / "data").is_dir() or (p / "meta").is_dir():
            return "sensorium"
        raise DataFormatError(f"{p}: neither a Suite2p folder (F.npy) nor a Sensorium folder (data/, meta/)")
    raise DataFormatError(f"{p}: no such file or folder")


def open_source(path: str | Path, *, fmt: str = "auto", fs: float | None = None,
                session_id: str | None = None, trials: Sequence[int] | None = None, tier: str | None = None,
                roi_ids_file: str | Path | None = None, allow_incomplete: bool = False,
                warn: Any = None) -> ReplaySource:
    """Open a replay source of format ``fmt`` (``"auto"`` detects it).

    ``trials`` / ``tier`` select Sensorium trials; ``roi_ids_file`` gives a Suite2p folder's
    ROI ids; ``allow_incomplete`` accepts a session file whose writer was killed.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown replay format {fmt!r}; expected one of {FORMATS}")
    if fmt == "auto":
        fmt = detect_format(path)
    if (trials is not None or tier) and fmt != "sensorium":
        raise ConfigError(f"--trials/--tier select trials of a Sensorium folder; {path} is a {fmt} source")
    if roi_ids_file and fmt != "suite2p":
        raise ConfigError(f"--roi-ids gives the ROI ids of a Suite2p folder; {path} is a {fmt} source "
                          "(its ROI ids come from the file)")
    if fmt == "session":
        return session_file_source(path, session_id, allow_incomplete)
    if fmt == "suite2p":
        return suite2p_source(path, fs, session_id=session_id, roi_ids_file=roi_ids_file, warn=warn)
    if fmt == "sensorium":
        return SensoriumSource(path, session_id, tier=tier, trials=trials)
    return nwb_source(path, session_id)


def check_model_coverage(info: SessionInfo, model_dir: str | Path) -> tuple[int, int]:
    """Refuse (``ConfigError``) a source that lacks some of the model's neurons.

    Returns (model neurons found in the source, model neurons). The model's neuron ids are
    read from its folder (``neuron_ids.npy``; the manifest is validated).
    """
    from rt_decoder.encoder.manifest import load_model

    ids = np.asarray(load_model(model_dir).neuron_ids, np.int64)
    present = np.isin(ids, np.asarray(info.roi_ids, np.int64))
    found = int(present.sum())
    if found < ids.size:
        missing = ids[~present]
        shown = ", ".join(str(int(i)) for i in missing[:8]) + (", ..." if missing.size > 8 else "")
        hint = (" A Suite2p folder's ROIs are numbered 0..N-1 unless --roi-ids FILE.npy gives their ids."
                if info.source == "suite2p" else "")
        raise ConfigError(f"the source's {info.n_rois} ROI ids contain only {found} of the {ids.size} neurons of the "
                          f"model in {model_dir} (missing ids {shown}): decoding with this model would use the "
                          f"wrong or no neurons.{hint}")
    return found, int(ids.size)


# ------------------------------------------------------------------------------ replayer


@dataclass(frozen=True)
class ReplaySettings:
    """Pacing and fault injection of a replay."""

    speed: float = 1.0          # 1 = real time, 2 = twice as fast, 0 = as fast as possible
    loop: bool = False          # start again at the end (frame indices keep increasing)
    jitter_ms: float = 0.0      # each send delayed by uniform 0..jitter_ms
    drop_rate: float = 0.0      # probability each frame is not sent
    seed: int = 0
    max_frames: int = 0         # stop after this many frames (sent or dropped); 0 = source length (x loops)
    end_session: bool = True    # send session_end at the end
    send_stimulus: bool = True  # send the true stimulus frame after each frame when the source has it

    def __post_init__(self) -> None:
        if not (0.0 <= self.speed <= 1000.0):
            raise ConfigError(f"speed must be in [0, 1000], got {self.speed!r}")
        if not (0.0 <= self.jitter_ms <= 10_000.0):
            raise ConfigError(f"jitter_ms must be in [0, 10000], got {self.jitter_ms!r}")
        if not (0.0 <= self.drop_rate < 1.0):
            raise ConfigError(f"drop_rate must be in [0, 1), got {self.drop_rate!r}")
        if self.max_frames < 0:
            raise ConfigError(f"max_frames must be >= 0, got {self.max_frames!r}")
        if self.loop and self.max_frames == 0:
            pass  # loops until stopped


@dataclass
class ReplayStats:
    frames_sent: int = 0
    frames_dropped: int = 0
    loops: int = 0
    wall_s: float = 0.0
    lateness_ms_p99: float = float("nan")


class Replayer:
    """Publish a ``ReplaySource`` through a ``StreamPublisher``-like object.

    Parameters
    ----------
    source : ReplaySource
    publisher : object
        ``streaming.transport.StreamPublisher`` (or its in-memory fake): ``start()``,
        ``send_frame(values, frame_index, acq_ns, behaviour=None)``, ``send_activity(...)``,
        ``heartbeat_if_idle()``, ``end(n_frames)``, ``close()``.
    settings : ReplaySettings
    stop : callable returning bool, optional
        Polled between frames; True stops the replay.
    sleep, clock_ns : injectable for tests (default ``time.sleep``, ``now_ns``)
    """

    def __init__(self, source: ReplaySource, publisher: Any, settings: ReplaySettings = ReplaySettings(), *,
                 stop: Any = None, sleep: Any = time.sleep, clock_ns: Any = now_ns) -> None:
        self.source = source
        self.pub = publisher
        self.settings = settings
        self._stop = stop or (lambda: False)
        self._sleep = sleep
        self._clock = clock_ns
        self.rng = np.random.default_rng(settings.seed)
        self.stats = ReplayStats()

    def _send(self, fr: ReplayFrame, frame_index: int, acq_ns: int) -> None:
        if self.source.info.is_activity:
            self.pub.send_activity(fr.values, frame_index, acq_ns, behaviour=fr.behaviour)
        else:
            self.pub.send_frame(fr.values, frame_index, acq_ns, behaviour=fr.behaviour)
        # the true stimulus follows its frame, as the virtual rig sends it (for sinks and
        # recordings; decoders ignore it); frames recorded without one (NaN) send none
        if fr.stimulus is not None and self.settings.send_stimulus and np.isfinite(fr.stimulus).all():
            self.pub.send_stimulus(fr.stimulus, frame_index, acq_ns)

    def _drop(self) -> None:
        # keep the sequence numbering honest: a dropped frame is a seq gap, as a real
        # network loss would be
        self.pub.skip(1)

    def run(self) -> ReplayStats:
        """Replay (blocking) and return the statistics."""
        s = self.settings
        rate = self.source.info.frame_rate_hz
        period_ns = 0 if s.speed == 0 else int(round(1e9 / (rate * s.speed)))
        self.pub.start()
        t0 = self._clock()
        k = 0
        offset = 0
        last_index = -1
        late: list[float] = []
        stopped = False
        while not stopped:
            for fr in self.source.frames():
                if self._stop() or (s.max_frames and k >= s.max_frames):
                    stopped = True
                    break
                fi = fr.frame_index + offset
                last_index = fi
                if period_ns:
                    due = t0 + k * period_ns
                    if s.jitter_ms:
                        due_send = due + int(self.rng.uniform(0.0, s.jitter_ms) * 1e6)
                    else:
                        due_send = due
                    while True:
                        left = due_send - self._clock()
                        if left <= 0:
                            break
                        if hasattr(self.pub, "heartbeat_if_idle"):
                            self.pub.heartbeat_if_idle()
                        self._sleep(min(left / 1e9, 0.1))
                    acq = due
                    late.append((self._clock() - due_send) / 1e6)
                else:
                    acq = self._clock()
                k += 1
                if s.drop_rate and self.rng.random() < s.drop_rate:
                    self.stats.frames_dropped += 1
                    self._drop()
                    continue
                self._send(fr, fi, acq)
                self.stats.frames_sent += 1
            else:
                self.stats.loops += 1
                if not s.loop:
                    break
                offset = last_index + 1
                continue
        if s.end_session:
            self.pub.end(self.stats.frames_sent)
        self.stats.wall_s = (self._clock() - t0) / 1e9
        if late:
            self.stats.lateness_ms_p99 = float(np.percentile(late, 99))
        return self.stats


def make_publisher(address: str, info: SessionInfo, *, bind: bool, ctx: Any = None,
                   curve_client_key_file: str = "", curve_server_key_file: str = "",
                   allow_non_loopback: bool = False, sndhwm: int = 100_000) -> StreamPublisher:
    """A ``StreamPublisher`` for ``address``, a CURVE client of the server when both key files
    are given."""
    from streaming.transport import Curve, StreamPublisher

    curve: Curve | None = None
    if curve_client_key_file or curve_server_key_file:
        if not (curve_client_key_file and curve_server_key_file):
            raise ConfigError("CURVE needs both the client secret key file and the server public key file")
        curve = Curve(curve_client_key_file, server=False, server_public_key_file=curve_server_key_file)
    return StreamPublisher(address, info, bind=bind, allow_non_loopback=allow_non_loopback, sndhwm=sndhwm, context=ctx,
                           curve=curve, linger_ms=2000)


def stats_json(stats: ReplayStats) -> str:
    return json.dumps({k: (None if isinstance(v, float) and v != v else v) for k, v in stats.__dict__.items()})
