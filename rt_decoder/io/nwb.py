"""Decoded movies out as NWB files (Neurodata Without Borders, through ``pynwb``).

Two writers, both atomic (temporary name, renamed when complete; ``rt_decoder.io.safe``)
and refusing an existing file unless ``overwrite``:

- :func:`write_reconstructions_nwb` (``rt-decoder reconstruct --nwb OUT.nwb``): one
  ``ImageSeries`` per reconstructed trial in the processing module ``decoding``
  (``reconstruction_trial_<id>``, frames x height x width, pixel values 0..255), the true
  stimulus of each trial as a stimulus ``ImageSeries`` (``stimulus_trial_<id>``), a trials
  table (start, stop, ``trial_id``, ``video_corr``), trials laid end to end on one time axis;
- :func:`write_session_nwb` (``rt-decoder to-nwb``): a recorded service session
  (``rt_decoder.io.session_file``): the decoded frames as an ``ImageSeries`` with
  timestamps (``decoded``), their frame indices and per-stage latency stamps, the received
  ROI values (``received``, frames x ROIs) with the ROI ids (``rois`` table) and
  behaviour, and the true stimulus where the session carried it.

The model and settings go into the file's metadata: ``notes`` holds them as JSON
(``{"rt_decoder": {...}}``), ``source_script`` names the rt-decoder command and version.
Timestamps are seconds from the session's first frame (``timestamps_reference_time`` =
``session_start_time``).

``pynwb`` is an optional dependency (``pip install 'rt-decoder[nwb]'``); without it the
writers raise ``BackendUnavailableError`` saying so.
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rt_decoder.errors import BackendUnavailableError, DataFormatError
from rt_decoder.io.safe import atomic_file

PIXEL_DESCRIPTION = "frames x height x width, greyscale pixel values 0..255 (36 x 64 px in rt-decoder)"


def require_pynwb() -> Any:
    """Import and return ``pynwb``, or raise ``BackendUnavailableError`` naming the extra."""
    try:
        import pynwb
    except ImportError:
        raise BackendUnavailableError("NWB output needs pynwb, which is not installed: "
                                      "pip install 'rt-decoder[nwb]'") from None
    return pynwb


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def model_summary(model_dir: str | Path | None) -> dict[str, Any] | None:
    """What identifies a model folder: its path, members and training record (no weights)."""
    if not model_dir:
        return None
    p = Path(model_dir)
    out: dict[str, Any] = {"path": str(p.resolve())}
    try:
        man = json.loads((p / "manifest.json").read_text())
    except (OSError, ValueError):
        return out
    out["n_neurons"] = man.get("n_neurons")
    out["window_frames"] = man.get("window_frames")
    out["members"] = [{k: m.get(k) for k in ("name", "seed", "weights_sha256")} for m in man.get("members", [])]
    training = man.get("training", {})
    out["training"] = {k: training.get(k) for k in ("data_hash", "seed", "ensemble", "responses_source",
                                                    "n_train_trials", "heldout_corr_ensemble") if k in training}
    return out


def _nwbfile(pynwb: Any, *, description: str, session_id: str, start: _dt.datetime, notes: dict[str, Any],
             command: str) -> Any:
    from rt_decoder import __version__

    return pynwb.NWBFile(
        session_description=description, identifier=f"rt-decoder-{session_id}-{uuid.uuid4()}",
        session_start_time=start, session_id=session_id, keywords=["rt-decoder", "movie reconstruction"],
        notes=json.dumps({"rt_decoder": _json_safe(notes)}, indent=1, sort_keys=True),
        source_script=f"rt-decoder {__version__}: {command}", source_script_file_name="rt_decoder/io/nwb.py",
        related_publications=["doi:10.7554/eLife.105081"])


def _write(pynwb: Any, nwb: Any, path: str | Path, overwrite: bool) -> Path:
    with atomic_file(path, overwrite=overwrite) as tmp:
        with pynwb.NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwb)
    return Path(path)


def _check_movie(video: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(video, np.float32)
    if v.ndim != 3 or v.shape[0] == 0:
        raise DataFormatError(f"{what}: expected frames x height x width, got shape {v.shape}")
    return v


def write_reconstructions_nwb(path: str | Path, results: Sequence[Any], truths: Sequence[np.ndarray] | None, *,
                              frame_rate_hz: float, model_dir: str | Path | None = None,
                              settings: Mapping[str, Any] | None = None, source: str = "",
                              overwrite: bool = False, session_id: str = "reconstruction") -> Path:
    """Write offline reconstructions (``rt_decoder.recon.runner.TrialResult``) as NWB.

    Parameters
    ----------
    path : str or Path
        The ``.nwb`` file to write.
    results : sequence of TrialResult
        Each with ``trial_id``, ``video`` (T, H, W) and ``metrics`` (a dict).
    truths : sequence of ndarray (T, H, W), optional
        The true stimulus of each trial, same order (written as stimulus ImageSeries).
    frame_rate_hz : float
        Frame rate of the reconstructed movies (Hz).
    model_dir, settings, source :
        Recorded in the file's metadata (``notes``): the model folder's identity, the
        reconstruction settings and the dataset the trials came from.
    overwrite : bool
        Replace an existing file.
    """
    pynwb = require_pynwb()
    from pynwb.image import ImageSeries

    if not results:
        raise DataFormatError(f"{path}: no reconstructions to write")
    if truths is not None and len(truths) != len(results):
        raise DataFormatError(f"{path}: {len(truths)} true movies for {len(results)} reconstructions")
    notes = {"kind": "offline reconstruction", "model": model_summary(model_dir), "settings": dict(settings or {}),
             "data": source, "frame_rate_hz": frame_rate_hz}
    start = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)
    nwb = _nwbfile(pynwb, description=f"rt-decoder offline movie reconstruction of {len(results)} trial(s) "
                                      f"of {source or 'a dataset'}", session_id=session_id, start=start,
                   notes=notes, command="reconstruct --nwb")
    module = nwb.create_processing_module("decoding", "movies reconstructed from neural activity by rt-decoder")
    nwb.add_trial_column("trial_id", "the trial's id in the dataset")
    nwb.add_trial_column("video_corr", "video correlation of the reconstruction with the true stimulus "
                                       "(evaluation mask, first 30 frames excluded; NaN if unknown)")
    t0 = 0.0
    for k, res in enumerate(results):
        video = _check_movie(res.video, f"reconstruction of trial {res.trial_id}")
        corr = float(res.metrics.get("video_corr", float("nan")))
        module.add(ImageSeries(
            name=f"reconstruction_trial_{int(res.trial_id)}", data=video, unit="n.a.", format="raw",
            starting_time=t0, rate=float(frame_rate_hz),
            description=f"reconstructed movie of trial {int(res.trial_id)}, {PIXEL_DESCRIPTION}; video_corr "
                        f"{corr:.4f}; metrics: {json.dumps(_json_safe(res.metrics))}"))
        if truths is not None:
            truth = _check_movie(truths[k], f"true stimulus of trial {res.trial_id}")
            nwb.add_stimulus(ImageSeries(
                name=f"stimulus_trial_{int(res.trial_id)}", data=truth, unit="n.a.", format="raw",
                starting_time=t0, rate=float(frame_rate_hz),
                description=f"the true stimulus movie of trial {int(res.trial_id)}, {PIXEL_DESCRIPTION}"))
        duration = video.shape[0] / float(frame_rate_hz)
        nwb.add_trial(start_time=t0, stop_time=t0 + duration, trial_id=int(res.trial_id), video_corr=corr)
        t0 += duration
    return _write(pynwb, nwb, path, overwrite)


def _seconds(acq_ns: np.ndarray, frame_index: np.ndarray, rate_hz: float, t0_ns: int, first_index: int
             ) -> np.ndarray:
    """Seconds from the session's first frame: from acquisition stamps when they increase
    with the frame index, else from frame indices at the frame rate."""
    acq = np.asarray(acq_ns, np.int64)
    fi = np.asarray(frame_index, np.int64)
    if acq.size and t0_ns > 0 and np.all(acq >= t0_ns) and np.all(np.diff(acq) >= 0):
        return (acq - t0_ns).astype(np.float64) / 1e9
    return (fi - first_index).astype(np.float64) / float(rate_hz)


def write_session_nwb(path: str | Path, session: Any, *, model_dir: str | Path | None = None,
                      settings: Mapping[str, Any] | None = None, overwrite: bool = False,
                      start_unix_s: float | None = None) -> Path:
    """Write a recorded service session (``rt_decoder.io.session_file.RecordedSession``) as NWB.

    Parameters
    ----------
    path : str or Path
        The ``.nwb`` file to write.
    session : RecordedSession
        From ``read_session``: received frames (T, N), decoded frames (K, H, W) with
        stamps, the stimulus when recorded.
    model_dir, settings :
        The model that decoded the session and the service's settings (e.g. the parsed
        ``serve.toml``), recorded in the file's metadata.
    overwrite : bool
        Replace an existing file.
    start_unix_s : float, optional
        Session start (Unix seconds; default: the recording's ``created_unix_s``, else the
        file's modification time).
    """
    pynwb = require_pynwb()
    from hdmf.common import DynamicTable, VectorData
    from pynwb import TimeSeries
    from pynwb.image import ImageSeries

    info = session.info
    if session.n_frames == 0 and (session.decoded is None or session.decoded.shape[0] == 0):
        raise DataFormatError(f"{session.path}: the recording holds no frames")
    rate = float(info.frame_rate_hz)
    fi = np.asarray(session.frame_index, np.int64)
    dfi = np.asarray(session.decoded_frame_index, np.int64)
    firsts = [int(a[0]) for a in (fi, dfi) if a.size]
    first_index = min(firsts)
    acq_firsts = [int(a[0]) for a in (np.asarray(session.acq_ns), np.asarray(session.decoded_acq_ns)) if a.size]
    t0_ns = min(acq_firsts) if acq_firsts else 0
    created = start_unix_s if start_unix_s is not None else read_created_unix_s(session.path)
    start = (_dt.datetime.fromtimestamp(float(created), _dt.timezone.utc) if created
             else _dt.datetime.fromtimestamp(Path(session.path).stat().st_mtime, _dt.timezone.utc))
    notes = {"kind": "live session recording", "recording": str(session.path), "complete": bool(session.complete),
             "recovered": bool(getattr(session, "recovered", False)), "source": info.source, "frame_rate_hz": rate, "is_activity": bool(info.is_activity),
             "model": model_summary(model_dir), "settings": dict(settings or {}),
             "decoded_stamp_names": list(session.decoded_stamp_names)}
    nwb = _nwbfile(pynwb, description=f"rt-decoder live session {info.session_id} ({info.source}): received "
                                      "ROI values and the movie decoded from them in real time",
                   session_id=info.session_id, start=start.replace(microsecond=0), notes=notes,
                   command="to-nwb")
    module = nwb.create_processing_module("decoding", "rt-decoder live session: received frames and the movie "
                                                      "decoded from them")
    if session.n_frames:
        ts = _seconds(session.acq_ns, fi, rate, t0_ns, first_index)
        module.add(DynamicTable(name="rois", description="ROI ids of the columns of 'received', in order",
                                columns=[VectorData(name="roi_id", description="the session's ROI id",
                                                    data=np.asarray(info.roi_ids, np.int64))]))
        kind = "deconvolved activity" if info.is_activity else "ROI fluorescence"
        module.add(TimeSeries(name="received", data=np.asarray(session.values, np.float32), unit="a.u.",
                              timestamps=ts, description=f"{kind} as received, frames x ROIs (columns: the "
                                                         "'rois' table)"))
        module.add(TimeSeries(name="received_frame_index", data=fi, unit="frames", timestamps=ts,
                              description="frame index of each received frame (gaps = frames never received)"))
        beh = np.asarray(session.behaviour, np.float32)
        if np.isfinite(beh).any():
            module.add(TimeSeries(name="behaviour", data=beh, unit="a.u.", timestamps=ts,
                                  description="pupil dilation, running speed (cm/s), pupil x, pupil y (deg); NaN "
                                              "where the frame carried none"))
        if session.stimulus is not None:
            stim = np.asarray(session.stimulus, np.float32)
            shown = np.isfinite(stim).all(axis=(1, 2))
            if shown.any():
                nwb.add_stimulus(ImageSeries(name="stimulus", data=stim[shown], unit="n.a.", format="raw",
                                             timestamps=ts[shown],
                                             description=f"the true stimulus frames sent by the source, "
                                                         f"{PIXEL_DESCRIPTION}"))
    if session.decoded is not None and session.decoded.shape[0]:
        dts = _seconds(session.decoded_acq_ns, dfi, rate, t0_ns, first_index)
        module.add(ImageSeries(name="decoded", data=np.asarray(session.decoded, np.float32), unit="n.a.",
                               format="raw", timestamps=dts,
                               description=f"movie decoded live by rt-decoder, {PIXEL_DESCRIPTION}; timestamp = "
                                           "acquisition time of the frame it decodes"))
        module.add(TimeSeries(name="decoded_frame_index", data=dfi, unit="frames", timestamps=dts,
                              description="frame index each decoded frame belongs to"))
        if session.decoded_stamps_ns.shape[1]:
            module.add(TimeSeries(name="decoded_stage_stamps", data=np.asarray(session.decoded_stamps_ns, np.int64),
                                  unit="ns", timestamps=dts,
                                  description="monotonic-ns stamps of each stage, columns: "
                                              f"{', '.join(session.decoded_stamp_names)} (-1 = absent)"))
    return _write(pynwb, nwb, path, overwrite)


def read_created_unix_s(path: str | Path) -> float | None:
    """The ``created_unix_s`` attribute of a session file (None if absent)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            v = f.attrs.get("created_unix_s")
            return None if v is None else float(v)
    except OSError:
        return None
