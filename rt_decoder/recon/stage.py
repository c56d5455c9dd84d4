"""The live reconstruction stage as the service runs it: model + ROI mapping + LiveReconstructor.

``LiveStage`` fits the service's reconstruction slot (``streaming.service``):
``stage(frame, recent_activity) -> [DecodedFrame]``, ``reset(info)`` at each session
start, ``warmup()`` before READY.

ROIs are matched to the model's neurons by id at each session start: model neurons
absent from the session get weight 0 (ignored by the loss, not pushed to zero), session
ROIs the model does not know are ignored. A session sharing no ROI with the model cannot
be decoded: ``reset`` raises ``StageError``.

Imports the encoder's runtime side (ONNX Runtime), never torch unless the torch backend
is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rt_decoder.encoder_protocol import BACKEND_KINDS
from rt_decoder.errors import ConfigError, StageError
from rt_decoder.messages import ActivityFrame, DecodedFrame, SessionInfo
from rt_decoder.recon.amortised import AmortisedDecoder
from rt_decoder.recon.live import LiveReconstructor, LiveSettings
from rt_decoder.settings import option, section, validate

#: The shipped demo ensemble (trained on the default virtual rig).
DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "demo"


@dataclass(frozen=True)
class ReconstructionSettings:
    """[reconstruction] -- the live sliding-window reconstruction through the encoder.

    The model and its backend here; the live stage's own settings in ``live``
    (``LiveSettings``, ``[reconstruction.live]``) with its step rule in ``live.optim``
    (``[reconstruction.live.optim]``). ``live.lag_frames`` is the one decoding lag: the
    live graph's length is derived from it (``live_frames``).

    Keys of the older flat ``[reconstruction]`` table (``lag_frames``, ``learning_rate_px``,
    ...) still load, moved to their new place (``moved_keys``), with a
    ``SettingsDeprecationWarning``.
    """

    enabled: bool = option(True, "run live reconstruction (false: publish activity frames instead)")
    model_dir: str = option("", "encoder model directory (rt-decoder train); empty = the shipped demo model")
    backend: str = option("onnxruntime", "encoder backend", choices=BACKEND_KINDS)
    threads: int = option(2, "intra-op threads of the encoder backend (with process = true, at most the "
                          "machine's cores minus one: one core stays with the frame path)", 1, 256)
    cached_context: bool = option(True, "reuse the core features of frozen frames (exact for causal encoders; "
                                  "the tensorrt backend has no live graph and needs false)")
    min_roi_coverage: float = option(0.5, "a session whose ROI ids cover less than this share of the model's "
                                     "neurons is not reconstructed (its activity is published instead, with the "
                                     "reason on the status channel)", 0.0, 1.0)
    process: bool = option(True, "run the reconstruction in its own process at a lower CPU priority, so the frame "
                           "path (intake, deconvolution, recording, output) never waits for it; false: a thread "
                           "of the service")
    process_nice: int = option(10, "CPU niceness added to the reconstruction process (0 = the service's)", 0, 19)
    process_idle: bool = option(True, "run the reconstruction process under SCHED_IDLE (Linux): it gets only CPU "
                                "time nothing else wants, so the frame path preempts it at once; false: "
                                "process_nice only")
    live: LiveSettings = section(LiveSettings, "the live stage: lag, steps, budget, ensemble, warm start, blur")

    #: keys of the flat [reconstruction] table (before the live/optim subtables) -> new place
    moved_keys: ClassVar[dict[str, str]] = {
        **{k: f"live.{k}" for k in ("lag_frames", "fixed_steps", "budget_ms", "max_members", "steps_per_member",
                                    "warm_start", "warm_start_decay", "blur_sigma_px", "blur_sigma_frames",
                                    "target_ramp_frames", "amortised_start")},
        **{k: f"live.optim.{k}" for k in ("learning_rate_px", "momentum", "warmup_iterations", "smooth_sigma_px",
                                          "smooth_sigma_frames", "decay_iterations")},
    }

    def __post_init__(self) -> None:
        validate(self)

    @property
    def live_frames(self) -> int:
        """Frames of the encoder's live graph: ``live.lag_frames + 1`` with the cached context, else 0."""
        return self.live.live_frames if self.cached_context else 0


class LiveStage:
    """The service's reconstruction stage.

    Parameters
    ----------
    settings : ReconstructionSettings
        ``model_dir`` "" means the shipped demo model; ``enabled`` is the caller's business
        (``build_stage`` builds no stage when it is false).

    Raises
    ------
    ConfigError
        ``model_dir`` is not a model directory.
    BackendUnavailableError
        the backend cannot run here, or cannot run the cached-context path (TensorRT).
    """

    def __init__(self, settings: ReconstructionSettings) -> None:
        from rt_decoder.recon.runner import open_model

        model_dir = Path(settings.model_dir) if settings.model_dir else DEMO_MODEL_DIR
        if not (model_dir / "manifest.json").is_file():
            raise ConfigError(f"[reconstruction] model_dir {str(model_dir)!r} is not a model directory "
                              "(no manifest.json); train one with `rt-decoder train` or `make models`")
        self.settings = settings
        self.opened = open_model(model_dir, backend=settings.backend, threads=settings.threads,
                                 max_members=settings.live.max_members, live_frames=settings.live_frames)
        self.model_dir = model_dir
        self.neuron_ids = np.asarray(self.opened.model.neuron_ids, np.int64)
        self._index = np.arange(self.neuron_ids.size)   # model neuron -> session ROI column (-1 = absent)
        self._present = np.ones(self.neuron_ids.size, bool)
        from rt_decoder.recon.runner import load_amortised

        self.amortised: AmortisedDecoder | None = (load_amortised(self.opened.model)
                                                   if settings.live.amortised_start else None)
        #: the deconvolution settings the model's training responses were made with (manifest
        #: ``training.deconv_settings``): the service uses them under its own [deconv] keys
        #: (``ServiceConfig.deconv_for_model``)
        ds = self.opened.model.manifest.training.get("deconv_settings")
        self.model_deconv: dict[str, Any] = dict(ds) if isinstance(ds, dict) else {}
        self.live = LiveReconstructor(self.opened.encoders, self.opened.train_mask, settings.live,
                                      cached_context=settings.cached_context, amortised=self.amortised)
        self.roi_coverage = 1.0
        self._mismatch = ""
        self._identity = True

    @property
    def n_neurons(self) -> int:
        return int(self.neuron_ids.size)

    def reset(self, info: SessionInfo) -> None:
        """New session: match its ROIs to the model's neurons, clear the window.

        Raises
        ------
        StageError
            The session's ROI ids cover less than ``min_roi_coverage`` of the model's
            neurons (the service then publishes its activity instead).
        """
        pos = {int(r): i for i, r in enumerate(info.roi_ids)}
        index = np.array([pos.get(int(n), -1) for n in self.neuron_ids], np.int64)
        present = index >= 0
        self._index, self._present = index, present
        # the usual case: the session's ROIs are the model's neurons in the model's order
        self._identity = bool(present.all() and info.n_rois == self.n_neurons
                              and np.array_equal(index, np.arange(self.n_neurons)))
        self.roi_coverage = float(present.mean())
        self._mismatch = "" if present.any() else (
            f"session {info.session_id!r}: none of its {info.n_rois} ROI ids is a neuron of the model in "
            f"{self.model_dir} ({self.n_neurons} neurons): nothing can be decoded")
        if self.roi_coverage < self.settings.min_roi_coverage:
            self._mismatch = self._mismatch or (
                f"session {info.session_id!r}: its {info.n_rois} ROI ids cover {self.roi_coverage:.0%} of the "
                f"{self.n_neurons} neurons of the model in {self.model_dir} (at least "
                f"{self.settings.min_roi_coverage:.0%} needed, [reconstruction] min_roi_coverage): wrong model or "
                "wrong ROI ids? Not reconstructed; its activity is published instead")
            raise StageError(self._mismatch)
        self.live.set_neuron_weights(present.astype(np.float32))
        self.live.reset()

    def warmup(self) -> None:
        """Run a few dummy steps (compiles/allocates everything; sizes the ensemble to the budget)."""
        self.live.warmup(5)

    def _map(self, values: np.ndarray) -> np.ndarray:
        if self._identity:
            return np.asarray(values, np.float32)
        out = np.zeros(values.shape[:-1] + (self.n_neurons,), np.float32)
        out[..., self._present] = values[..., self._index[self._present]]
        return out

    def __call__(self, frame: ActivityFrame, recent_activity: np.ndarray | None = None) -> list[DecodedFrame]:
        if self._mismatch:
            raise StageError(self._mismatch)
        values = self._map(np.asarray(frame.values, np.float32))
        recent = None
        if recent_activity is not None and recent_activity.size:
            recent = self._map(np.asarray(recent_activity, np.float32))
        mapped = ActivityFrame(frame.seq, frame.frame_index, frame.acq_ns, stamps=frame.stamps, values=values,
                               behaviour=frame.behaviour)
        return self.live(mapped, recent)

    def flush(self) -> list[DecodedFrame]:
        """End of session: the frames still inside the decoding lag, at their current estimate."""
        return [] if self._mismatch else self.live.flush()

    def stats(self) -> dict[str, Any]:
        """Counters for the status channel."""
        lv = self.live
        return {"recon_frames_emitted": lv.frames_emitted, "recon_unoptimised_frames": lv.skipped,
                "recon_steps_total": lv.steps_total, "recon_step_ms": lv.step_ns_estimate / 1e6,
                "recon_members_active": lv.n_members_active, "recon_lag_frames": self.settings.live.lag_frames,
                "recon_roi_coverage": self.roi_coverage, "recon_cached_context": lv.cached_context,
                "recon_amortised_starts": lv.amortised_starts}
