"""Static TensorRT-readiness check of an ONNX graph (no TensorRT needed).

TensorRT cannot be installed on the development machines (its PyPI packages fetch the
real binaries from NVIDIA's own index), so the exported graphs are checked statically
against what TensorRT's ONNX parser accepts, for the targeted version:

* target: TensorRT 10.x, whose parser accepts opsets 9-20. The operator list below is the
  set marked supported in onnx-tensorrt's ``docs/operators.md`` for TensorRT 8.4 (every one
  of them is still supported in 10.x), so it is a conservative subset;
* no ``ScatterND``/``ScatterElements`` with a ``reduction`` other than "none" (ScatterND
  with reduction is rejected by the parser, ScatterElements with reduction needs a plugin;
  ONNX Runtime's ScatterND add-reduction is also non-deterministic with 2+ threads);
* the inputs that TensorRT requires to be constant are initializers: Conv/ConvTranspose
  weights, and every shape/axes/pads/starts/ends input (Reshape, Expand, Slice, Pad,
  Squeeze, Unsqueeze, Reduce*, Tile, TopK);
* static shapes: every graph input and output and every inferred intermediate has fixed,
  positive dimensions;
* element types TensorRT handles: float32/float16 tensors, int64/int32 indices, bool.

This module imports onnx and the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from rt_decoder.errors import ModelError

TARGET_TRT_VERSION = "10.x"
MIN_OPSET, MAX_OPSET = 9, 20

SUPPORTED_OPS: frozenset[str] = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten
Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GRU HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN
LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
MaxPool Mean Min Mul Neg NonMaxSuppression Not Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomUniform RandomUniformLike Range ReduceL1 ReduceL2 ReduceLogSum
ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
Reshape Resize ReverseSequence RNN Round ScaledTanh Scan Scatter ScatterElements ScatterND
Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split
Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where
Xor
""".split())

#: op -> indices of inputs that must be initializers (constant) for TensorRT
CONSTANT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1,), "ConvTranspose": (1,),
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "TopK": (1,),
    "Slice": (1, 2, 3, 4), "Pad": (1, 2), "Squeeze": (1,), "Unsqueeze": (1,),
    "ReduceSum": (1,), "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
    "ReduceL1": (1,), "ReduceL2": (1,), "ReduceSumSquare": (1,), "ReduceLogSum": (1,),
    "ReduceLogSumExp": (1,), "CumSum": (1,),
}

ALLOWED_ELEM_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.INT64,
                                TensorProto.INT32, TensorProto.BOOL})


@dataclass
class TrtReport:
    """Result of :func:`check_trt_ready`: ``ok`` and the list of problems found."""

    graph_name: str
    n_nodes: int
    op_types: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _static_dims(vi: onnx.ValueInfoProto) -> bool:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return False
    return all(d.HasField("dim_value") and d.dim_value > 0 for d in t.shape.dim) or len(t.shape.dim) == 0


def check_trt_ready(model: onnx.ModelProto) -> TrtReport:
    """Check one ONNX model against the rules in the module docstring."""
    graph = model.graph
    report = TrtReport(graph.name, len(graph.node), sorted({n.op_type for n in graph.node}))
    probs = report.problems
    opsets = {o.domain: o.version for o in model.opset_import}
    v = opsets.get("", opsets.get("ai.onnx"))
    if v is None or not MIN_OPSET <= v <= MAX_OPSET:
        probs.append(f"default-domain opset {v} outside TensorRT {TARGET_TRT_VERSION}'s {MIN_OPSET}-{MAX_OPSET}")
    inits = {i.name for i in graph.initializer}
    constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    for init in graph.initializer:
        if init.data_type not in ALLOWED_ELEM_TYPES:
            probs.append(f"initializer {init.name!r} has element type "
                         f"{TensorProto.DataType.Name(init.data_type)}")
    for node in graph.node:
        where = f"node {node.name or node.output[0]!r} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            probs.append(f"{where}: custom domain {node.domain!r}")
            continue
        if node.op_type not in SUPPORTED_OPS:
            probs.append(f"{where}: operator not in TensorRT's ONNX parser support list")
        for attr in node.attribute:
            if attr.name == "reduction" and node.op_type in ("ScatterND", "ScatterElements"):
                red = attr.s.decode() if attr.s else "none"
                if red != "none":
                    probs.append(f"{where}: reduction={red!r} (rejected by TensorRT's parser / needs a plugin; "
                                 "non-deterministic in ONNX Runtime with 2+ threads)")
        for idx in CONSTANT_INPUTS.get(node.op_type, ()):
            if idx < len(node.input) and node.input[idx] and node.input[idx] not in inits | constants:
                probs.append(f"{where}: input {idx} ({node.input[idx]!r}) must be an initializer")
    for vi in list(graph.input) + list(graph.output):
        if not _static_dims(vi):
            probs.append(f"graph input/output {vi.name!r} has a dynamic or unknown shape")
        if vi.type.tensor_type.elem_type not in ALLOWED_ELEM_TYPES:
            probs.append(f"graph input/output {vi.name!r} has an element type TensorRT does not take")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # onnx raises several exception types here
        probs.append(f"shape inference failed: {exc}")
    else:
        for vi in inferred.graph.value_info:
            if not _static_dims(vi):
                probs.append(f"intermediate {vi.name!r} has a dynamic or unknown shape")
            elif vi.type.tensor_type.elem_type not in ALLOWED_ELEM_TYPES:
                probs.append(f"intermediate {vi.name!r} has element type "
                             f"{TensorProto.DataType.Name(vi.type.tensor_type.elem_type)}")
    return report


def assert_trt_ready(model: onnx.ModelProto) -> TrtReport:
    """:func:`check_trt_ready`, raising ModelError listing the problems."""
    report = check_trt_ready(model)
    if not report.ok:
        raise ModelError(f"graph {report.graph_name!r} is not TensorRT-ready: " + "; ".join(report.problems[:10]))
    return report
