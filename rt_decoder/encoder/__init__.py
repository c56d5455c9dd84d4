"""The encoder: video window + behaviour -> every neuron's response, and its input gradient.

Runtime API (imports numpy, onnx, onnxruntime only -- never torch)::

    from rt_decoder.encoder import load_model, open_backend, BackendSettings
    model = load_model("rt_decoder/models/demo")           # manifest validated, ModelError otherwise
    enc = open_backend(model, member=0, settings=BackendSettings(window_frames=32))
    r = enc.forward(video, behaviour)                       # (W,36,64) px, (W,4) -> (W,N)
    loss, grad = enc.loss_and_grad(video, behaviour, targets, neuron_weights)
    model.masks.train_mask, model.masks.eval_mask           # alpha masks (36,64) bool

Modules: ``config`` (architecture / training settings), ``params`` (numpy weights, readout
tables), ``onnx_graph`` (hand-written forward + backward ONNX graphs), ``manifest`` (model
directory), ``backends`` (ONNX Runtime, PyTorch, TensorRT), ``trt_check`` (static
TensorRT-readiness check), ``export``. Torch-only: ``torch_model``, ``train``.
"""

from rt_decoder.encoder.backends import (
    BackendSettings,
    OnnxRuntimeBackend,
    TensorRTBackend,
    TorchBackend,
    open_backend,
    open_ensemble,
)
from rt_decoder.encoder.config import ArchConfig, TrainConfig
from rt_decoder.encoder.manifest import AlphaMasks, EncoderModel, Manifest, load_model
from rt_decoder.encoder.trt_check import assert_trt_ready, check_trt_ready
from rt_decoder.encoder_protocol import Encoder, LiveEncoder

__all__ = [
    "AlphaMasks", "ArchConfig", "BackendSettings", "Encoder", "EncoderModel", "LiveEncoder", "Manifest",
    "OnnxRuntimeBackend", "TensorRTBackend", "TorchBackend", "TrainConfig", "assert_trt_ready",
    "check_trt_ready", "load_model", "open_backend", "open_ensemble",
]
