"""Compute backends of the encoder behind one protocol (``rt_decoder.encoder_protocol.Encoder``).

::

    backend = open_backend(load_model("rt_decoder/models/demo"), member=0,
                           settings=BackendSettings(kind="onnxruntime", window_frames=32))
    responses = backend.forward(video, behaviour)                 # (W,36,64), (W,4) -> (W,N)
    loss, grad = backend.loss_and_grad(video, behaviour, targets, neuron_weights)

Kinds (``BackendSettings.kind``):

``onnxruntime`` (default) ONNX Runtime, CPU provider with ``intra_op_threads`` threads;
    ``providers="cuda"`` / ``"tensorrt"`` use the CUDA / TensorRT execution providers of
    ``onnxruntime-gpu`` (BackendUnavailableError when that build is not installed).
``torch``   the PyTorch reference (autograd), CPU or CUDA; on CUDA the loss-and-gradient
    step is captured once in a CUDA graph and replayed. torch is imported lazily, only here.
``tensorrt`` native TensorRT (``tensorrt`` Python API + ``cuda-python``): builds an engine
    from the same ONNX graph, caches the serialized plan keyed by the graph's sha256, the
    GPU name and the TensorRT version; FP16 optional.

Every backend fails at construction (``BackendUnavailableError`` naming what is missing),
never in the frame loop. Inputs are validated (``ShapeMismatchError``). Video is in pixel
units 0..255, time-major (W, 36, 64); behaviour (W, 4) in ``BEHAVIOUR_FIELDS`` order;
targets (W, N); neuron_weights (N,) (0 removes a neuron from the loss); frame_weights (W,)
(default ones).

Causal encoders also offer the cached-context path used live (``LiveEncoder``):
``features(video)`` returns the per-frame core features (K, C2, 9, 16) of frames that no
longer change, and ``loss_and_grad_live(video, context, ...)`` computes the loss over the
``live_frames`` newest frames with ``context`` = the features of the ``temporal_kernel - 1``
frames before them: exact, and only the new frames pass through the spatial core. ONNX
Runtime and torch implement it; TensorRT has no live graph and refuses ``live_frames > 0``
at construction (``BackendUnavailableError``).

This module imports numpy, onnx(runtime) and the standard library at module level; never
torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rt_decoder.encoder.config import FEATURE_SHAPE, FRAME_SHAPE
from rt_decoder.encoder.manifest import EncoderModel
from rt_decoder.encoder.onnx_graph import build_graph
from rt_decoder.encoder.params import readout_tables
from rt_decoder.encoder_protocol import BACKEND_KINDS, Encoder
from rt_decoder.errors import BackendUnavailableError, ConfigError, ShapeMismatchError

__all__ = ["BACKEND_KINDS", "BackendSettings", "OnnxRuntimeBackend", "TensorRTBackend", "TorchBackend",
           "open_backend", "open_ensemble"]


@dataclass(frozen=True)
class BackendSettings:
    """Which backend runs the encoder, and how.

    Parameters
    ----------
    kind : "onnxruntime" | "torch" | "tensorrt"
    window_frames : frames per ``forward`` / ``loss_and_grad`` call (0: the manifest's)
    live_frames : frames per ``loss_and_grad_live`` call (0: no live graph)
    intra_op_threads : ONNX Runtime / torch CPU threads
    providers : ONNX Runtime provider: "cpu", "cuda" or "tensorrt"
    device : torch device: "cpu" or "cuda"
    cuda_graphs : torch on CUDA: capture the step in a CUDA graph
    fp16 : TensorRT (native or EP): allow FP16 kernels
    plan_cache_dir : TensorRT plan cache ("" = ~/.cache/rt-decoder/tensorrt)
    """

    kind: str = "onnxruntime"
    window_frames: int = 0
    live_frames: int = 0
    intra_op_threads: int = 2
    providers: str = "cpu"
    device: str = "cpu"
    cuda_graphs: bool = True
    fp16: bool = False
    plan_cache_dir: str = ""

    def __post_init__(self) -> None:
        if self.kind not in BACKEND_KINDS:
            raise ConfigError(f"backend kind {self.kind!r} unknown; choose one of {BACKEND_KINDS}")
        if self.providers not in ("cpu", "cuda", "tensorrt"):
            raise ConfigError(f"providers must be 'cpu', 'cuda' or 'tensorrt', got {self.providers!r}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        for name, lo, hi in (("window_frames", 0, 1024), ("live_frames", 0, 1024), ("intra_op_threads", 1, 256)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ConfigError(f"{name} must be an int in [{lo}, {hi}], got {v!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackendSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown BackendSettings key(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


# ------------------------------------------------------------------------------- helpers
def _as(x: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """float32, C-contiguous, exactly ``shape`` (a leading axis of length 1 is accepted)."""
    a = np.asarray(x, dtype=np.float32)
    if a.shape == (1, *shape):
        a = a.reshape(shape)
    if a.shape != shape:
        raise ShapeMismatchError(f"{name} has shape {a.shape}, the encoder expects {shape}")
    return np.ascontiguousarray(a)


class _Base:
    """Shared input validation and bookkeeping."""

    name = "base"

    def __init__(self, model: EncoderModel, member: int, settings: BackendSettings) -> None:
        if not 0 <= member < model.n_members:
            raise ConfigError(f"member {member} out of range: the model has {model.n_members}")
        self.model = model
        self.member = member
        self.settings = settings
        self.arch = model.manifest.arch
        self._window = settings.window_frames or model.manifest.window_frames
        self._live = settings.live_frames
        if self._live and not self.arch.causal:
            raise ConfigError("live_frames needs a causal encoder")
        self._tables = readout_tables(model.params[member]["readout_pos"], model.params[member]["readout_w"])

    @property
    def window_frames(self) -> int:
        return self._window

    @property
    def live_frames(self) -> int:
        return self._live

    @property
    def n_neurons(self) -> int:
        return self.model.n_neurons

    @property
    def context_frames(self) -> int:
        return self.arch.temporal_kernel - 1

    def _feed(self, w: int, video: np.ndarray, behaviour: np.ndarray | None = None,
              targets: np.ndarray | None = None, neuron_weights: np.ndarray | None = None,
              frame_weights: np.ndarray | None = None, context: np.ndarray | None = None) -> dict[str, np.ndarray]:
        n = self.n_neurons
        feed = {"video": _as(video, (w, *FRAME_SHAPE), "video").reshape(1, w, *FRAME_SHAPE)}
        if behaviour is not None:
            feed["behaviour"] = _as(behaviour, (w, 4), "behaviour")
        if context is not None:
            feed["context"] = _as(context, (self.context_frames, self.arch.core_channels, *FEATURE_SHAPE), "context")
        if targets is not None:
            assert neuron_weights is not None, "neuron_weights are required with targets"
            feed["targets"] = _as(targets, (w, n), "targets")
            feed["neuron_weights"] = _as(neuron_weights, (n,), "neuron_weights")
            fw = np.ones(w, np.float32) if frame_weights is None else frame_weights
            feed["frame_weights"] = _as(fw, (w,), "frame_weights")
        return feed

    def graph_bytes(self, kind: str, w: int) -> bytes:
        """Serialized ONNX graph: the exported file when the manifest lists it, else built now."""
        info = self.model.manifest.members[self.member]
        rel = info.graphs.get(f"{kind}_w{w}")
        if rel:
            path = self.model.root / rel
            if path.is_file():
                return path.read_bytes()
        return build_graph(kind, self.model.params[self.member], self.arch, w,  # type: ignore[arg-type]
                           readout=self._tables).SerializeToString()


# ------------------------------------------------------------------------------- ONNX Runtime
class OnnxRuntimeBackend(_Base):
    """ONNX Runtime sessions for the forward, gradient (and live) graphs of one member."""

    name = "onnxruntime"

    def __init__(self, model: EncoderModel, member: int = 0, settings: BackendSettings | None = None) -> None:
        settings = settings or BackendSettings()
        super().__init__(model, member, settings)
        import onnxruntime as ort

        avail = ort.get_available_providers()
        if settings.providers == "cpu":
            providers: list[Any] = ["CPUExecutionProvider"]
        elif settings.providers == "cuda":
            if "CUDAExecutionProvider" not in avail:
                raise BackendUnavailableError(
                    f"ONNX Runtime has no CUDAExecutionProvider here (available: {avail}); install onnxruntime-gpu "
                    "and the CUDA libraries, see README 'GPU / TensorRT'")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            if "TensorrtExecutionProvider" not in avail:
                raise BackendUnavailableError(
                    f"ONNX Runtime has no TensorrtExecutionProvider here (available: {avail}); install onnxruntime-gpu "
                    "and TensorRT, see README 'GPU / TensorRT'")
            cache = _plan_cache_dir(settings)
            providers = [("TensorrtExecutionProvider", {"trt_fp16_enable": settings.fp16,
                                                        "trt_engine_cache_enable": True,
                                                        "trt_engine_cache_path": str(cache)}),
                         "CUDAExecutionProvider", "CPUExecutionProvider"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = settings.intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._ort = ort
        self._so = so
        self._providers = providers
        self._sessions: dict[tuple[str, int], Any] = {}
        try:
            self._session("grad", self._window)
            self._session("forward", self._window)
            if self._live:
                self._session("live_grad", self._live)
                self._session("features", 1)
        except Exception as exc:  # ORT raises its own exception types at session creation
            raise BackendUnavailableError(f"ONNX Runtime could not load the encoder graphs: {exc}") from exc

    def _session(self, kind: str, w: int) -> Any:
        key = (kind, w)
        if key not in self._sessions:
            self._sessions[key] = self._ort.InferenceSession(self.graph_bytes(kind, w), self._so,
                                                             providers=self._providers)
        return self._sessions[key]

    def forward(self, video: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
        """Responses (W, N) for video (W, 36, 64) px and behaviour (W, 4)."""
        w = self._window
        return self._session("forward", w).run(["responses"], self._feed(w, video, behaviour))[0]

    def loss_and_grad(self, video: np.ndarray, behaviour: np.ndarray, targets: np.ndarray,
                      neuron_weights: np.ndarray, frame_weights: np.ndarray | None = None
                      ) -> tuple[float, np.ndarray]:
        """Poisson loss of the window and d loss / d video, shape (W, 36, 64)."""
        w = self._window
        loss, grad = self._session("grad", w).run(
            ["loss", "grad"], self._feed(w, video, behaviour, targets, neuron_weights, frame_weights))
        return float(loss), grad.reshape(w, *FRAME_SHAPE)

    def features(self, video: np.ndarray) -> np.ndarray:
        """Per-frame core features (K, C2, 9, 16) of video (K, 36, 64), one frame at a time."""
        v = np.asarray(video, np.float32).reshape(-1, *FRAME_SHAPE)
        sess = self._session("features", 1)
        return np.concatenate([sess.run(["features"], {"video": v[i][None, None]})[0] for i in range(v.shape[0])])

    def loss_and_grad_live(self, video: np.ndarray, context: np.ndarray, behaviour: np.ndarray,
                           targets: np.ndarray, neuron_weights: np.ndarray,
                           frame_weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """Loss over the ``live_frames`` newest frames given the cached context features."""
        if not self._live:
            raise ConfigError("this backend was opened without live_frames")
        w = self._live
        loss, grad = self._session("live_grad", w).run(
            ["loss", "grad"], self._feed(w, video, behaviour, targets, neuron_weights, frame_weights, context))
        return float(loss), grad.reshape(w, *FRAME_SHAPE)


# ------------------------------------------------------------------------------- PyTorch
class TorchBackend(_Base):
    """The PyTorch reference model (autograd). CUDA: the step is replayed from a CUDA graph."""

    name = "torch"

    def __init__(self, model: EncoderModel, member: int = 0, settings: BackendSettings | None = None) -> None:
        settings = settings or BackendSettings(kind="torch")
        super().__init__(model, member, settings)
        try:
            import torch

            from rt_decoder.encoder import torch_model
        except ImportError as exc:
            raise BackendUnavailableError(f"the torch backend needs PyTorch (pip install -e '.[train]'): {exc}") from exc
        if settings.device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("torch backend: device='cuda' but torch.cuda.is_available() is False")
        self._torch = torch
        self._tm = torch_model
        self._dev = torch.device(settings.device)
        if settings.device == "cpu":
            torch.set_num_threads(settings.intra_op_threads)
        net = torch_model.Encoder(self.arch, self.n_neurons)
        net.load_numpy(model.params[member])
        self.net = net.to(self._dev).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self._graph: Any = None

    def _t(self, a: np.ndarray) -> Any:
        return self._torch.from_numpy(a).to(self._dev)

    def forward(self, video: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
        w = self._window
        f = self._feed(w, video, behaviour)
        with self._torch.no_grad():
            r = self.net(self._t(f["video"]), self._t(f["behaviour"])[None])
        return r[0].cpu().numpy()

    def _step(self, v: Any, b: Any, y: Any, nw: Any, fw: Any) -> tuple[Any, Any]:
        v = v.detach().requires_grad_(True)
        loss = self._tm.poisson_loss(self.net(v, b[None]), y[None], nw, fw)
        (g,) = self._torch.autograd.grad(loss, v)
        return loss.detach(), g

    def loss_and_grad(self, video: np.ndarray, behaviour: np.ndarray, targets: np.ndarray,
                      neuron_weights: np.ndarray, frame_weights: np.ndarray | None = None
                      ) -> tuple[float, np.ndarray]:
        w = self._window
        f = self._feed(w, video, behaviour, targets, neuron_weights, frame_weights)
        names = ("video", "behaviour", "targets", "neuron_weights", "frame_weights")
        if self._dev.type == "cuda" and self.settings.cuda_graphs:
            torch = self._torch
            if self._graph is None:
                self._static = [self._t(f[k]).clone() for k in names]
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):  # warm-up outside the capture (cuDNN autotuning, allocator)
                        self._step(*self._static)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._static_out = self._step(*self._static)
                self._graph = graph
            for s, k in zip(self._static, names):
                s.copy_(torch.from_numpy(f[k]), non_blocking=False)
            self._graph.replay()
            loss, g = self._static_out
            return float(loss), g.reshape(w, *FRAME_SHAPE).cpu().numpy()
        loss, g = self._step(*(self._t(f[k]) for k in names))
        return float(loss), g.reshape(w, *FRAME_SHAPE).cpu().numpy()

    def features(self, video: np.ndarray) -> np.ndarray:
        v = np.asarray(video, np.float32).reshape(1, -1, *FRAME_SHAPE)
        with self._torch.no_grad():
            return self.net.core_features(self._t(v))[0].cpu().numpy()

    def loss_and_grad_live(self, video: np.ndarray, context: np.ndarray, behaviour: np.ndarray,
                           targets: np.ndarray, neuron_weights: np.ndarray,
                           frame_weights: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        w = self._live or np.asarray(video).reshape(-1, *FRAME_SHAPE).shape[0]
        f = self._feed(w, video, behaviour, targets, neuron_weights, frame_weights, context)
        torch = self._torch
        v = self._t(f["video"]).requires_grad_(True)
        pred = self.net(v, self._t(f["behaviour"])[None], context=self._t(f["context"])[None])
        loss = self._tm.poisson_loss(pred, self._t(f["targets"])[None], self._t(f["neuron_weights"]),
                                     self._t(f["frame_weights"]))
        (g,) = torch.autograd.grad(loss, v)
        return float(loss.detach()), g.reshape(w, *FRAME_SHAPE).cpu().numpy()


# ------------------------------------------------------------------------------- TensorRT
def _plan_cache_dir(settings: BackendSettings) -> Path:
    d = Path(settings.plan_cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "rt-decoder", "tensorrt"))
    d.mkdir(parents=True, exist_ok=True)
    return d


class TensorRTBackend(_Base):
    """Native TensorRT engines built from the exported ONNX graphs (plans cached on disk)."""

    name = "tensorrt"

    def __init__(self, model: EncoderModel, member: int = 0, settings: BackendSettings | None = None) -> None:
        settings = settings or BackendSettings(kind="tensorrt")
        super().__init__(model, member, settings)
        if settings.live_frames:
            raise BackendUnavailableError(
                "the tensorrt backend has no live graph (it lacks the LiveEncoder methods features and "
                "loss_and_grad_live), so it cannot run the cached-context path (live_frames = "
                f"{settings.live_frames}): set [reconstruction] cached_context = false to run TensorRT on the full "
                "window, or use backend = \"onnxruntime\"")
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailableError(
                "the tensorrt backend needs NVIDIA TensorRT's Python package (not installable from PyPI "
                f"alone; see README 'GPU / TensorRT'): {exc}") from exc
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            try:
                from cuda import cudart  # older cuda-python
            except ImportError as exc:
                raise BackendUnavailableError(f"the tensorrt backend needs cuda-python (pip install cuda-python): {exc}"
                                              ) from exc
        self._trt = trt
        self._cudart = cudart
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            raise BackendUnavailableError(f"the tensorrt backend needs an NVIDIA GPU (cudaGetDeviceCount: {err}, {count})")
        err, props = cudart.cudaGetDeviceProperties(0)
        name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        self.gpu_name = name.strip("\x00").strip()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        err, self._stream = cudart.cudaStreamCreate()
        self._engines: dict[tuple[str, int], Any] = {}
        self._engine("grad", self._window)
        self._engine("forward", self._window)

    def plan_path(self, graph: bytes, kind: str, w: int) -> Path:
        """Cache key: graph sha256 + GPU name + TensorRT version + precision."""
        digest = hashlib.sha256(graph).hexdigest()[:16]
        gpu = "".join(c if c.isalnum() else "-" for c in self.gpu_name)
        prec = "fp16" if self.settings.fp16 else "fp32"
        return _plan_cache_dir(self.settings) / f"{kind}_w{w}_{digest}_{gpu}_trt{self._trt.__version__}_{prec}.plan"

    def _engine(self, kind: str, w: int) -> Any:
        key = (kind, w)
        if key in self._engines:
            return self._engines[key]
        trt, cudart = self._trt, self._cudart
        graph = self.graph_bytes(kind, w)
        path = self.plan_path(graph, kind, w)
        plan = path.read_bytes() if path.is_file() else None
        if plan is None:
            builder = trt.Builder(self._logger)
            network = builder.create_network(0)
            parser = trt.OnnxParser(network, self._logger)
            if not parser.parse(graph):
                errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise BackendUnavailableError(f"TensorRT could not parse the {kind} graph: {errs}")
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
            if self.settings.fp16:
                config.set_flag(trt.BuilderFlag.FP16)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise BackendUnavailableError(f"TensorRT failed to build an engine for the {kind} graph")
            plan = bytes(serialized)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(plan)
            tmp.replace(path)
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise BackendUnavailableError(f"TensorRT could not deserialize {path}")
        context = engine.create_execution_context()
        buffers: dict[str, tuple[int, np.ndarray]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(engine.get_tensor_shape(name))
            dtype = trt.nptype(engine.get_tensor_dtype(name))
            host = np.empty(shape, dtype=dtype)
            err, ptr = cudart.cudaMalloc(max(host.nbytes, 1))
            if int(err) != 0:
                raise BackendUnavailableError(f"cudaMalloc failed ({err}) for {name}")
            context.set_tensor_address(name, ptr)
            buffers[name] = (ptr, host)
        self._engines[key] = (engine, context, buffers)
        return self._engines[key]

    def _run(self, kind: str, w: int, feed: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        cudart = self._cudart
        engine, context, buffers = self._engine(kind, w)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, arr in feed.items():
            ptr, host = buffers[name]
            np.copyto(host, arr.reshape(host.shape))
            cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, self._stream)
        if not context.execute_async_v3(self._stream):
            raise RuntimeError(f"TensorRT execution of the {kind} graph failed")
        outs = []
        for name in outputs:
            ptr, host = buffers[name]
            cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, self._stream)
            outs.append(host)
        cudart.cudaStreamSynchronize(self._stream)
        return [o.copy() for o in outs]

    def forward(self, video: np.ndarray, behaviour: np.ndarray) -> np.ndarray:
        w = self._window
        return self._run("forward", w, self._feed(w, video, behaviour), ["responses"])[0].astype(np.float32)

    def loss_and_grad(self, video: np.ndarray, behaviour: np.ndarray, targets: np.ndarray,
                      neuron_weights: np.ndarray, frame_weights: np.ndarray | None = None
                      ) -> tuple[float, np.ndarray]:
        w = self._window
        loss, grad = self._run("grad", w, self._feed(w, video, behaviour, targets, neuron_weights, frame_weights),
                               ["loss", "grad"])
        return float(loss.reshape(())), grad.astype(np.float32).reshape(w, *FRAME_SHAPE)


def open_backend(model: EncoderModel, member: int = 0, settings: BackendSettings | None = None) -> Encoder:
    """Construct the backend ``settings.kind`` for ensemble member ``member``.

    Raises
    ------
    BackendUnavailableError
        when the backend cannot run on this machine (message says what is missing).
    """
    settings = settings or BackendSettings()
    classes: dict[str, Any] = {"onnxruntime": OnnxRuntimeBackend, "torch": TorchBackend, "tensorrt": TensorRTBackend}
    backend: Encoder = classes[settings.kind](model, member, settings)
    return backend


def open_ensemble(model: EncoderModel, settings: BackendSettings | None = None,
                  max_members: int = 0) -> list[Encoder]:
    """One backend per ensemble member (the first ``max_members`` if > 0)."""
    k = model.n_members if max_members <= 0 else min(max_members, model.n_members)
    return [open_backend(model, i, settings) for i in range(k)]
