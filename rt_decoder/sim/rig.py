"""The virtual rig: a simulated mouse V1 population watching movies under two-photon imaging.

``VirtualRig(config)`` builds the population from ``config.seed``; ``rig.trial(i)`` is a
pure function of ``(config, i)`` (each trial starts from the stationary imaging state);
``rig.stream(ids)`` yields one continuous session, frame by frame, generating one trial at
a time and carrying calcium, drift and neuropil state across trial boundaries (its first
trial equals ``rig.trial(ids[0])``; stimulus, behaviour, rates and spikes of every trial are
those of ``rig.trial``; only the imaging state and hence the fluorescence of later trials
differ). The grey screen between trials resets the visual drive.

Random streams: population from ``SeedSequence([seed, 0x5157, 0])``; trial i from
``SeedSequence([seed, 0x7419, i])`` spawned into movie, behaviour, spikes, imaging noise and
initial state, so changing one model part leaves the others' draws untouched.
Imports numpy/scipy (and skimage.data for the photographs) only; no zmq, no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from rt_decoder.errors import ConfigError
from rt_decoder.messages import STIMULUS_SHAPE, SessionInfo
from rt_decoder.sim.behaviour import make_behaviour
from rt_decoder.sim.config import RigConfig
from rt_decoder.sim.imaging import Imaging, ImagingState, sample_spikes
from rt_decoder.sim.movies import make_movie
from rt_decoder.sim.population import Population


@dataclass(frozen=True)
class Trial:
    """One simulated trial, time-major, all float32.

    Attributes
    ----------
    trial_id : int
    video : (T, 36, 64) stimulus, 0..255
    behaviour : (T, 4) in ``BEHAVIOUR_FIELDS`` order (a.u., cm/s, deg, deg)
    rates : (T, N) noiseless expected activity (expected spike count per frame)
    spikes : (T, N) sampled spike counts
    calcium : (T, N) calcium-driven dF/F (dimensionless)
    fluorescence : (T, N) raw ROI fluorescence (a.u.) incl. F0, neuropil, noise, drift
    """

    trial_id: int
    video: np.ndarray
    behaviour: np.ndarray
    rates: np.ndarray
    spikes: np.ndarray
    calcium: np.ndarray
    fluorescence: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.video.shape[0])


@dataclass(frozen=True)
class StreamBlock:
    """One trial of a continuous session (``VirtualRig.stream_trials``).

    ``first_frame_index`` is the session frame index of row 0; video (T, 36, 64),
    fluorescence (T, N) and behaviour (T, 4) are float32, time-major.
    """

    trial_id: int
    first_frame_index: int
    video: np.ndarray
    fluorescence: np.ndarray
    behaviour: np.ndarray


@dataclass(frozen=True)
class GroundTruthSession:
    """A continuous session with its ground truth (``VirtualRig.ground_truth_session``).

    All arrays are float32, time-major (T, N) over the concatenated trials: ``spikes``
    (counts per frame), ``calcium`` (calcium-driven dF/F) and ``fluorescence`` (raw ROI
    fluorescence, identical to the blocks of ``stream_trials`` for the same trials).
    """

    trial_ids: tuple[int, ...]
    spikes: np.ndarray
    calcium: np.ndarray
    fluorescence: np.ndarray


@dataclass(frozen=True)
class _Draws:
    movie: np.random.Generator
    behaviour: np.random.Generator
    spikes: np.random.Generator
    noise: np.random.Generator
    init: np.random.Generator


class VirtualRig:
    """Deterministic virtual two-photon session (see the module docstring).

    Parameters
    ----------
    config : RigConfig, optional
        Defaults to ``RigConfig()`` (8,000 neurons, GCaMP6s, 30 Hz, 300-frame trials).
    """

    def __init__(self, config: RigConfig | None = None) -> None:
        self.config = RigConfig() if config is None else config
        if not isinstance(self.config, RigConfig):
            raise ConfigError(f"VirtualRig needs a RigConfig, got {type(config).__name__}")
        self.population = Population(self.config)
        self.imaging = Imaging(self.population.params, self.population.neuropil_weights, self.config)
        self._roi_ids = np.arange(self.config.n_neurons, dtype=np.int64)
        self._roi_ids.setflags(write=False)

    # ----------------------------------------------------------------- properties
    @property
    def n_neurons(self) -> int:
        return self.config.n_neurons

    @property
    def roi_ids(self) -> np.ndarray:
        """(N,) int64 ROI identifiers 0..N-1 (the order of every frame's values)."""
        return self._roi_ids

    @property
    def roi_centres_px(self) -> np.ndarray:
        """(N, 2) float32 ROI centres (y, x) in field-of-view pixels (512 x 512 FOV)."""
        return self.population.roi_centres_px

    @property
    def cell_motor_coordinates_um(self) -> np.ndarray:
        """(N, 3) float32 cortical positions (x, y, z) in micrometres."""
        return self.population.cell_motor_coordinates_um

    @property
    def neuron_params(self) -> np.ndarray:
        """(N,) structured array (``population.NEURON_DTYPE``): per-neuron ground truth."""
        return self.population.params

    # ----------------------------------------------------------------- generation
    def _draws(self, trial_id: int) -> _Draws:
        if isinstance(trial_id, bool) or not isinstance(trial_id, (int, np.integer)) or trial_id < 0:
            raise ConfigError(f"trial id must be a non-negative int, got {trial_id!r}")
        ss = np.random.SeedSequence([self.config.seed, 0x7419, int(trial_id)])
        return _Draws(*(np.random.default_rng(s) for s in ss.spawn(5)))

    def stimulus(self, trial_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The movie (T, 36, 64) and behaviour (T, 4) of a trial (cheap: no neurons)."""
        d = self._draws(trial_id)
        return self._stimulus(d)

    def _stimulus(self, d: _Draws) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        video = make_movie(cfg.trial_frames, cfg.frame_rate_hz, d.movie,
                           pink_noise_fraction=cfg.pink_noise_fraction)
        behaviour = make_behaviour(cfg.trial_frames, cfg.frame_rate_hz, d.behaviour)
        return video, behaviour

    def expected_rates(self, video: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
        """Ground-truth encoder: expected spikes per frame (T, N) for any movie and behaviour."""
        return self.population.expected_rates(video, behaviour)

    def _neural(self, trial_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, _Draws]:
        d = self._draws(trial_id)
        video, behaviour = self._stimulus(d)
        rates = self.population.expected_rates(video, behaviour)
        spikes = sample_spikes(rates, self.config.spike_dispersion, d.spikes)
        return video, behaviour, rates, spikes, d

    def initial_imaging_state(self, rates: np.ndarray, trial_id: int) -> ImagingState:
        """The stationary imaging state a standalone trial starts from (for tools and tests)."""
        return self.imaging.initial_state(rates.mean(axis=0), self._draws(trial_id).init)

    def trial(self, trial_id: int) -> Trial:
        """Simulate one trial, deterministic for ``(config, trial_id)``, independent of others."""
        video, behaviour, rates, spikes, d = self._neural(trial_id)
        state = self.imaging.initial_state(rates.mean(axis=0), d.init)
        calcium, fluorescence = self.imaging.run(spikes, state, d.noise)
        return Trial(int(trial_id), video, behaviour, rates, spikes, calcium, fluorescence)

    def stream_trials(self, trial_ids: Iterable[int]) -> Iterator[StreamBlock]:
        """The continuous session of ``stream``, one trial-sized block at a time.

        Each block is generated when requested (about 0.5-1 s for 8,000 neurons on two
        cores), so a real-time publisher can fetch block k+1 in a worker thread while it
        paces out block k; the imaging state is carried from block to block.
        """
        state: ImagingState | None = None
        frame_index = 0
        for tid in trial_ids:
            video, behaviour, rates, spikes, d = self._neural(tid)
            if state is None:
                state = self.imaging.initial_state(rates.mean(axis=0), d.init)
            _, fluorescence = self.imaging.run(spikes, state, d.noise)
            yield StreamBlock(int(tid), frame_index, video, fluorescence, behaviour)
            frame_index += video.shape[0]

    def ground_truth_session(self, trial_ids: Iterable[int]) -> GroundTruthSession:
        """The continuous session of ``stream_trials`` with its spikes and calcium, in memory.

        For benchmarks of spike inference (``benchmarks/deconv.py``): the fluorescence is
        exactly that of ``stream_trials(trial_ids)``, the spikes those of ``trial(i)``.
        """
        ids = tuple(int(t) for t in trial_ids)
        if not ids:
            raise ConfigError("ground_truth_session needs at least one trial id")
        state: ImagingState | None = None
        spikes_l, calcium_l, fluo_l = [], [], []
        for tid in ids:
            _, _, rates, spikes, d = self._neural(tid)
            if state is None:
                state = self.imaging.initial_state(rates.mean(axis=0), d.init)
            calcium, fluorescence = self.imaging.run(spikes, state, d.noise)
            spikes_l.append(spikes)
            calcium_l.append(calcium)
            fluo_l.append(fluorescence)
        return GroundTruthSession(ids, np.concatenate(spikes_l), np.concatenate(calcium_l), np.concatenate(fluo_l))

    def stream(self, trial_ids: Iterable[int]) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """A continuous session over ``trial_ids``, frame by frame.

        Yields
        ------
        frame_index : int
            0, 1, 2, ... across the whole session.
        stimulus : ndarray of float32, shape (36, 64)
        fluorescence : ndarray of float32, shape (N,)
        behaviour : ndarray of float32, shape (4,)

        One trial is generated at a time (the others are never all in memory); the frame
        that starts a trial waits for that trial's generation (see ``stream_trials``).
        """
        for block in self.stream_trials(trial_ids):
            for t in range(block.video.shape[0]):
                yield block.first_frame_index + t, block.video[t], block.fluorescence[t], block.behaviour[t]

    def session_info(self, session_id: str) -> SessionInfo:
        """``SessionInfo`` of a stream from this rig (source ``"virtual-rig"``)."""
        return SessionInfo(session_id=session_id, roi_ids=self.roi_ids, frame_rate_hz=self.config.frame_rate_hz,
                           plane=0, roi_centres_px=self.roi_centres_px, stimulus_shape=STIMULUS_SHAPE,
                           is_activity=False, source="virtual-rig")
