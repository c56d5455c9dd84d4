"""Simulated behaviour of the virtual mouse, one sample per frame.

Columns follow ``rt_decoder.messages.BEHAVIOUR_FIELDS``:

* ``pupil_dilation`` (a.u., about 8-35; mean ``PUPIL_MEAN``): a slow Ornstein-Uhlenbeck
  fluctuation (tau 5 s) plus a component that follows running, low-passed (tau 1.5 s);
* ``running_speed`` (cm/s, >= 0): a two-state process (rest bouts of ~8 s, run bouts
  of ~5 s), each run bout at its own speed (log-normal, median 12 cm/s), smoothed with a
  0.6 s time constant, plus jitter while running;
* ``pupil_x``, ``pupil_y`` (degrees of eye rotation from the session's mean position):
  fixations with slow drift pulled back to the centre (tau 3 s) and saccade-like jumps
  (about 0.4 per second, sd 2 deg), more frequent while running.

Everything is a pure function of the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import numpy as np

#: Mean and sd of pupil dilation (a.u.): the population model z-scores dilation with these.
PUPIL_MEAN = 18.0
PUPIL_SD = 4.0
#: Running speed (cm/s) at which the running gain reaches tanh(1) of its maximum.
RUNNING_SCALE_CM_S = 10.0

_REST_BOUT_S = 8.0
_RUN_BOUT_S = 5.0


def _ou(n: int, tau_frames: float, sd: float, rng: np.random.Generator, x0: float | None = None) -> np.ndarray:
    a = float(np.exp(-1.0 / tau_frames))
    eps = rng.standard_normal(n) * sd * np.sqrt(1.0 - a * a)
    out = np.empty(n)
    x = rng.normal(0.0, sd) if x0 is None else x0
    for t in range(n):
        x = a * x + eps[t]
        out[t] = x
    return out


def _lowpass(x: np.ndarray, tau_frames: float, x0: float) -> np.ndarray:
    a = float(np.exp(-1.0 / tau_frames))
    out = np.empty_like(x)
    y = x0
    for t in range(x.size):
        y = a * y + (1.0 - a) * x[t]
        out[t] = y
    return out


def make_behaviour(n_frames: int, frame_rate_hz: float, rng: np.random.Generator) -> np.ndarray:
    """One trial of behaviour.

    Parameters
    ----------
    n_frames : int
        Number of frames T.
    frame_rate_hz : float
        Frame rate (Hz); every time constant above is in seconds.
    rng : numpy.random.Generator
        Source of every random draw. The process starts from its stationary state.

    Returns
    -------
    ndarray of float32, shape (T, 4)
        ``(pupil_dilation, running_speed, pupil_x, pupil_y)`` per frame.
    """
    fr = float(frame_rate_hz)
    # --- running: two-state Markov chain, bout speeds, smoothing
    p_start = 1.0 / (_REST_BOUT_S * fr)
    p_stop = 1.0 / (_RUN_BOUT_S * fr)
    running = rng.random() < _RUN_BOUT_S / (_REST_BOUT_S + _RUN_BOUT_S)
    bout_speed = float(rng.lognormal(np.log(12.0), 0.45))
    u = rng.random(n_frames)
    target = np.empty(n_frames)
    for t in range(n_frames):
        if running and u[t] < p_stop:
            running = False
        elif not running and u[t] < p_start:
            running = True
            bout_speed = float(rng.lognormal(np.log(12.0), 0.45))
        target[t] = bout_speed if running else 0.0
    jitter = np.abs(_ou(n_frames, 0.3 * fr, 1.5, rng)) * (target > 0)
    speed = np.maximum(_lowpass(target + jitter, 0.6 * fr, x0=target[0]), 0.0)
    # --- pupil dilation: slow fluctuation + running-driven dilation
    run_drive = _lowpass(speed, 1.5 * fr, x0=speed[0]) / 12.0
    dilation = PUPIL_MEAN - 1.5 + 3.0 * run_drive + _ou(n_frames, 5.0 * fr, 3.0, rng)
    dilation = np.clip(dilation, 4.0, None)
    # --- pupil centre: centre-reverting drift + saccade-like jumps
    centre = np.empty((n_frames, 2))
    pos = rng.normal(0.0, 1.5, size=2)
    a = float(np.exp(-1.0 / (3.0 * fr)))
    jumps = rng.random(n_frames) < (0.4 + 0.6 * (speed > 1.0)) / fr
    jump_sizes = rng.normal(0.0, 2.0, size=(n_frames, 2))
    drift = rng.normal(0.0, 0.05, size=(n_frames, 2))
    for t in range(n_frames):
        pos = a * pos + drift[t]
        if jumps[t]:
            pos = pos + jump_sizes[t]
        centre[t] = pos
    out = np.empty((n_frames, 4), dtype=np.float32)
    out[:, 0] = dilation
    out[:, 1] = speed
    out[:, 2] = centre[:, 1]  # x
    out[:, 3] = centre[:, 0]  # y
    return out
