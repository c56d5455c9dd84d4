"""The virtual rig: a simulated mouse V1 population under two-photon imaging.

Public API::

    from rt_decoder.sim import RigConfig, VirtualRig, Trial
    rig = VirtualRig(RigConfig(n_neurons=8000, seed=0))
    tr = rig.trial(0)                  # video (T,36,64), behaviour (T,4), rates/spikes/calcium/fluorescence (T,N)
    for i, stim, f_row, beh in rig.stream([0, 1, 2]): ...
    for block in rig.stream_trials([0, 1, 2]): ...   # same session, one trial per block

Modules: ``config`` (settings, indicator presets), ``movies`` (stimuli), ``behaviour``,
``population`` (receptive fields, response model), ``imaging`` (spikes, calcium,
fluorescence), ``rig`` (the facade), ``calibration`` (the single-trial ceiling).
Nothing here imports zmq or torch.
"""

from rt_decoder.sim.config import INDICATORS, IndicatorPreset, RigConfig
from rt_decoder.sim.rig import GroundTruthSession, StreamBlock, Trial, VirtualRig

__all__ = ["INDICATORS", "GroundTruthSession", "IndicatorPreset", "RigConfig", "StreamBlock", "Trial", "VirtualRig"]
