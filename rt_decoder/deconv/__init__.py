"""Online deconvolution: live ROI fluorescence -> inferred spiking, frame by frame.

Public API::

    from rt_decoder.deconv import DeconvSettings, OnlineDeconvolver, deconvolve_array, RoiParameters

``OnlineDeconvolver(settings, n_rois, frame_rate_hz)`` is the pipeline stage
(``FluorescenceFrame -> ActivityFrame``), ``deconvolve_array(F (T, N), frame_rate_hz)``
runs it over a recording. Method: OASIS (Friedrich, Zhou and Paninski 2017) for AR(1) and
AR(2) calcium models, one numba pass over all ROIs per frame (``_kernels``), checked
against a plain Python reference (``_reference``) and oasis-deconv.

Importing this package imports numpy only; numba compiles (or loads its cache) when the
first stage is built or warmed up.
"""

from rt_decoder.deconv._estimate import RoiParameters, estimate_parameters
from rt_decoder.deconv.settings import ENCODER_TRAINING_DECONV, DeconvSettings
from rt_decoder.deconv.stage import OnlineDeconvolver, deconvolve_array

__all__ = ["ENCODER_TRAINING_DECONV", "DeconvSettings", "OnlineDeconvolver", "RoiParameters", "deconvolve_array", "estimate_parameters"]
