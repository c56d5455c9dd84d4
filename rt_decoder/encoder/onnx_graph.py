"""Build the exported ONNX graphs of one encoder straight from its numpy weights.

No PyTorch and no exporter: every node is written here, so the graphs contain only plain,
TensorRT-parsable operators (Conv, MatMul, Gather, Reshape, Transpose, SpaceToDepth, DepthToSpace,
Elu, Log, Tanh, Relu, Abs, Min, Mul, Add, Sub, Div, Concat, Slice, Pad, ReduceSum), static shapes, weights and
axes as initializers -- and the gradient is a hand-written backward pass:

* the input gradient of every stride-1 conv is an ordinary Conv with flipped,
  in/out-swapped kernels (pads swapped for the causal temporal conv);
* space-to-depth is SpaceToDepth, its adjoint DepthToSpace (DCR);
* the readout is pixel-major (``params.readout_tables``): the 2x2 cell blocks are stacked as
  patch channels (Slice + Concat), then forward = batched MatMul + Gather of rows;
  backward = Gather of rows + batched MatMul + Pad/Add. No ScatterND at all
  (ONNX Runtime's ScatterND with reduction is non-deterministic with 2+ threads, and
  TensorRT's parser rejects it).

The tests compare every graph against PyTorch autograd (``torch_model``).

Graphs (``GraphKind``):

``forward``   video (1,W,36,64) px, behaviour (W,4) -> responses (W,N)
``grad``      video, behaviour, targets (W,N), neuron_weights (N,), frame_weights (W,)
              -> loss (), grad (1,W,36,64)
``features``  video (1,W,36,64) -> features (W,C2,9,16): the per-frame core output, to
              cache for frames that no longer change (causal encoders only)
``live_grad`` as ``grad`` plus context (K-1,C2,9,16): features of the K-1 frames before
              the window; exact for a causal encoder, costs only the window's frames

This module imports numpy, onnx and the standard library only.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rt_decoder.encoder.config import FEATURE_SHAPE, FRAME_SHAPE, ArchConfig
from rt_decoder.encoder.params import Params, ReadoutTables, readout_tables

OPSET = 17
LOSS_EPS = 1e-8
GraphKind = Literal["forward", "grad", "features", "live_grad"]
GRAPH_KINDS: tuple[str, ...] = ("forward", "grad", "features", "live_grad")


class _G:
    """Tiny graph writer: unique names, initializers, nodes."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, value: np.ndarray | float | list[int], hint: str = "c", dtype: type = np.float32) -> str:
        arr: np.ndarray = np.asarray(value, dtype=dtype)
        n = self.name(hint)
        self.inits.append(numpy_helper.from_array(arr, n))
        return n

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    # helpers -----------------------------------------------------------------
    def reshape(self, x: str, shape: tuple[int, ...]) -> str:
        return self.op("Reshape", [x, self.const(list(shape), "shape", np.int64)])

    def transpose(self, x: str, perm: tuple[int, ...]) -> str:
        return self.op("Transpose", [x], perm=list(perm))

    def s2d(self, x: str, t: int, c: int, h: int, w: int) -> str:
        """torch.pixel_unshuffle(., 2): (t,c,h,w) -> (t,4c,h/2,w/2)."""
        y = self.reshape(x, (t, c, h // 2, 2, w // 2, 2))
        y = self.transpose(y, (0, 1, 3, 5, 2, 4))
        return self.reshape(y, (t, 4 * c, h // 2, w // 2))

    def d2s(self, x: str, t: int, c: int, h: int, w: int) -> str:
        """Adjoint (= inverse) of s2d: (t,4c,h/2,w/2) -> (t,c,h,w)."""
        y = self.reshape(x, (t, c, 2, 2, h // 2, w // 2))
        y = self.transpose(y, (0, 1, 4, 2, 5, 3))
        return self.reshape(y, (t, c, h, w))

    def elu_grad(self, dy: str, y: str) -> str:
        """dy * elu'(a) with elu'(a) = min(elu(a) + 1, 1) (alpha = 1)."""
        one = self.const(1.0, "one")
        return self.op("Mul", [dy, self.op("Min", [self.op("Add", [y, one]), one])])


def _conv_input_grad_kernel(w: np.ndarray) -> np.ndarray:
    """Kernel whose same-padded stride-1 Conv is the input gradient of Conv(w)."""
    return np.ascontiguousarray(np.flip(w, axis=(2, 3)).transpose(1, 0, 2, 3))


def build_graph(kind: GraphKind, params: Params, arch: ArchConfig, window_frames: int,
                *, readout: ReadoutTables | None = None) -> onnx.ModelProto:
    """Build one graph for a window of ``window_frames`` frames (static shapes).

    Parameters
    ----------
    kind : "forward" | "grad" | "features" | "live_grad"
    params : validated weights (``params.validate_params``)
    arch : the architecture the weights belong to
    window_frames : W, frames per call
    readout : optional precomputed ``ReadoutTables`` (reused across graphs)
    """
    if kind not in GRAPH_KINDS:
        raise ValueError(f"unknown graph kind {kind!r}; known: {GRAPH_KINDS}")
    if kind in ("features", "live_grad") and not arch.causal:
        raise ValueError(f"the {kind!r} graph needs a causal encoder")
    g = _G()
    T = int(window_frames)
    H, Wd = FRAME_SHAPE
    hf, wf = FEATURE_SHAPE
    P = hf * wf
    N = params["readout_b"].shape[0]
    c1, c2, c3 = arch.conv1_channels, arch.core_channels, arch.readout_channels
    k1, k2, kt = arch.conv1_kernel, arch.conv2_kernel, arch.temporal_kernel
    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("video", f32, [1, T, H, Wd])]
    outputs = []
    need_grad = kind in ("grad", "live_grad")
    if kind != "features":
        inputs.append(helper.make_tensor_value_info("behaviour", f32, [T, 4]))
    if kind == "live_grad":
        inputs.append(helper.make_tensor_value_info("context", f32, [kt - 1, c2, hf, wf]))
    if need_grad:
        inputs += [helper.make_tensor_value_info("targets", f32, [T, N]),
                   helper.make_tensor_value_info("neuron_weights", f32, [N]),
                   helper.make_tensor_value_info("frame_weights", f32, [T])]

    inv_std = 1.0 / float(params["video_std"])
    # ---------------------------------------------------------------- spatial core (per frame)
    x0 = g.op("Mul", [g.op("Sub", ["video", g.const(params["video_mean"], "video_mean")]),
                      g.const(inv_std, "inv_std")])
    x0 = g.reshape(x0, (T, 1, H, Wd))
    x1 = g.op("SpaceToDepth", [x0], blocksize=2)  # == pixel_unshuffle for one channel
    a1 = g.op("Conv", [x1, g.const(params["conv1_w"], "conv1_w"), g.const(params["conv1_b"], "conv1_b")],
              pads=[k1 // 2] * 4)
    h1 = g.op("Elu", [a1], alpha=1.0)
    # ONNX SpaceToDepth orders channels (block, c); pixel_unshuffle (c, block): permute conv2's inputs
    w2 = _s2d_reorder(params["conv2_w"], c1)
    x2 = g.op("SpaceToDepth", [h1], blocksize=2)
    a2 = g.op("Conv", [x2, g.const(w2, "conv2_w"), g.const(params["conv2_b"], "conv2_b")], pads=[k2 // 2] * 4)
    feats = g.op("Elu", [a2], alpha=1.0)  # (T, c2, hf, wf)
    if kind == "features":
        g.nodes.append(helper.make_node("Identity", [feats], ["features"]))
        outputs.append(helper.make_tensor_value_info("features", f32, [T, c2, hf, wf]))
        return _finish(g, inputs, outputs, f"encoder_{kind}")

    # ---------------------------------------------------------------- temporal + pointwise
    ft = g.reshape(g.transpose(g.reshape(feats, (T, c2, P)), (1, 0, 2)), (1, c2, T, P))
    tw = g.const(params["temporal_w"], "temporal_w")
    tb = g.const(params["temporal_b"], "temporal_b")
    if kind == "live_grad":
        ctx = g.reshape(g.transpose(g.reshape("context", (kt - 1, c2, P)), (1, 0, 2)), (1, c2, kt - 1, P))
        gt = g.op("Conv", [g.op("Concat", [ctx, ft], axis=2), tw, tb], group=c2)
    else:
        pb, pe = (kt - 1, 0) if arch.causal else ((kt - 1) // 2, (kt - 1) // 2)
        gt = g.op("Conv", [ft, tw, tb], group=c2, pads=[pb, 0, pe, 0])
    a3 = g.op("Conv", [gt, g.const(params["pointwise_w"], "pointwise_w"),
                       g.const(params["pointwise_b"], "pointwise_b")])
    h3 = g.op("Elu", [a3], alpha=1.0)  # (1, c3, T, P)
    hmap = g.reshape(g.transpose(g.reshape(h3, (c3, T, P)), (1, 0, 2)), (T, c3, hf, wf))

    # ---------------------------------------------------------------- behaviour paths
    beh = g.op("Div", [g.op("Sub", ["behaviour", g.const(params["behaviour_mean"], "beh_mean")]),
                       g.const(params["behaviour_std"], "beh_std")])
    ay = axt = None
    if arch.shifter_hidden:
        pupil = g.op("Slice", [beh, g.const([2], "st", np.int64), g.const([4], "en", np.int64),
                               g.const([1], "ax", np.int64)])
        hid = g.op("Tanh", [g.op("Add", [g.op("MatMul", [pupil, g.const(params["shifter_w1"].T, "sw1")]),
                                         g.const(params["shifter_b1"], "sb1")])])
        s = g.op("Add", [g.op("MatMul", [hid, g.const(params["shifter_w2"].T, "sw2")]),
                         g.const(params["shifter_b2"], "sb2")])  # (T, 2)
        sy = g.reshape(g.op("Slice", [s, g.const([0], "st", np.int64), g.const([1], "en", np.int64),
                                      g.const([1], "ax", np.int64)]), (T, 1, 1, 1))
        sx = g.reshape(g.op("Slice", [s, g.const([1], "st", np.int64), g.const([2], "en", np.int64),
                                      g.const([1], "ax", np.int64)]), (T, 1, 1, 1))
        iy = np.arange(hf, dtype=np.float32)
        ix = np.arange(wf, dtype=np.float32)
        one = g.const(1.0, "one")
        # ay[t,0,i,j] = relu(1-|j-i-sy|); axt[t,0,k,l] = relu(1-|k-l-sx|)
        ay = g.op("Relu", [g.op("Sub", [one, g.op("Abs", [g.op("Sub", [
            g.const((iy[None, :] - iy[:, None])[None, None], "dy"), sy])])])])
        axt = g.op("Relu", [g.op("Sub", [one, g.op("Abs", [g.op("Sub", [
            g.const((ix[:, None] - ix[None, :])[None, None], "dx"), sx])])])])
        hmap = g.op("MatMul", [g.op("MatMul", [ay, hmap]), axt])

    # ---------------------------------------------------------------- readout (pixel-major)
    tables = readout if readout is not None else readout_tables(params["readout_pos"], params["readout_w"])
    P2 = (hf - 1) * (wf - 1)
    taps = [(0, 0), (0, 1), (1, 0), (1, 1)]
    hpix = g.transpose(hmap, (2, 3, 1, 0))  # (hf, wf, c3, T)
    patches = []
    for dy_, dx_ in taps:
        patches.append(g.op("Slice", [hpix, g.const([dy_, dx_], "st", np.int64),
                                      g.const([dy_ + hf - 1, dx_ + wf - 1], "en", np.int64),
                                      g.const([0, 1], "ax", np.int64)]))
    nb = arch.gain_hidden + 1 if arch.gain_hidden else 0
    if arch.gain_hidden:
        # behaviour offset rides in the same MatMul: h+1 extra "channels" (tanh units and a
        # constant 1 for the bias) broadcast to every cell, with per-neuron weights g_n, b_n
        hid = g.op("Tanh", [g.op("Add", [g.op("MatMul", [beh, g.const(params["gain_w1"].T, "gw1")]),
                                         g.const(params["gain_b1"], "gb1")])])  # (T, h)
        hid1 = g.op("Concat", [g.transpose(hid, (1, 0)), g.const(np.ones((1, T), np.float32), "ones")], axis=0)
        patches.append(g.op("Expand", [g.reshape(hid1, (1, 1, nb, T)),
                                       g.const([hf - 1, wf - 1, nb, T], "shape", np.int64)]))
        gb = np.concatenate([params["gain_g"].T, params["readout_b"][:, None]], axis=1).astype(np.float32)  # (N, h+1)
    x4t = g.reshape(g.op("Concat", patches, axis=2), (P2, 4 * c3 + nb, T))  # channel = tap*c3 + c
    rows = []
    for gi, grp in enumerate(tables.groups):
        G, K = grp.cells.size, grp.slots_per_cell
        vals_fwd = grp.values
        if nb:
            extra = np.zeros((G * K, nb), np.float32)
            filled = grp.slot_neuron < N
            extra[filled] = gb[grp.slot_neuron[filled]]
            vals_fwd = np.concatenate([vals_fwd, extra.reshape(G, K, nb)], axis=2)
        xg = x4t if G == P2 and np.array_equal(grp.cells, np.arange(P2)) else \
            g.op("Gather", [x4t, g.const(grp.cells, f"cells{gi}", np.int64)], axis=0)  # (G, 4c3+nb, T)
        contrib = g.op("MatMul", [g.const(vals_fwd, f"readout_v{gi}"), xg])  # (G, K, T)
        rows.append(g.reshape(contrib, (G * K, T)))
    allrows = rows[0] if len(rows) == 1 else g.op("Concat", rows, axis=0)
    zr = g.op("Gather", [allrows, g.const(tables.neuron_slot, "neuron_slot", np.int64)], axis=0)  # (N, T)
    if arch.gain_hidden:
        z = zr
    else:
        z = g.op("Add", [zr, g.const(params["readout_b"][:, None], "readout_b")])
    r = g.op("Add", [g.op("Elu", [z], alpha=1.0), g.const(1.0, "one")])  # (N, T)
    if kind == "forward":
        g.nodes.append(helper.make_node("Transpose", [r], ["responses"], perm=[1, 0]))
        outputs.append(helper.make_tensor_value_info("responses", f32, [T, N]))
        return _finish(g, inputs, outputs, f"encoder_{kind}")

    # ---------------------------------------------------------------- loss, in (N, T) layout
    wnt = g.op("Mul", [g.reshape("neuron_weights", (N, 1)),
                       g.op("Mul", [g.reshape("frame_weights", (1, T)), g.const(1.0 / (T * N), "inv_tn")])])
    yt = g.transpose("targets", (1, 0))
    r_eps = g.op("Add", [r, g.const(LOSS_EPS, "eps")])
    term = g.op("Sub", [r, g.op("Mul", [yt, g.op("Log", [r_eps])])])
    loss = g.op("ReduceSum", [g.op("Mul", [term, wnt]), g.const([0, 1], "axes", np.int64)], keepdims=0)
    g.nodes.append(helper.make_node("Identity", [loss], ["loss"]))

    # ---------------------------------------------------------------- backward
    one = g.const(1.0, "one")
    dr = g.op("Mul", [wnt, g.op("Sub", [one, g.op("Div", [yt, r_eps])])])
    dz = g.op("Mul", [dr, g.op("Min", [r, one])])  # elu'(z) = min(elu(z) + 1, 1)
    dz1 = g.op("Concat", [dz, g.const(np.zeros((1, T), np.float32), "zero_row")], axis=0)  # (N+1, T)
    dblocks = []
    for gi, grp in enumerate(tables.groups):
        G, K = grp.cells.size, grp.slots_per_cell
        dslots = g.op("Gather", [dz1, g.const(grp.slot_neuron, f"slot_neuron{gi}", np.int64)], axis=0)  # (G*K, T)
        vt = np.ascontiguousarray(grp.values.transpose(0, 2, 1))  # (G, 4c3, K)
        dblocks.append(g.op("MatMul", [g.const(vt, f"readout_vt{gi}"), g.reshape(dslots, (G, K, T))]))
    dblocks.append(g.const(np.zeros((1, 4 * c3, T), np.float32), "zero_cell"))
    # every cell's row (or the zero row): a permutation Gather, no scatter
    dx4t = g.op("Gather", [g.op("Concat", dblocks, axis=0), g.const(tables.cell_row, "cell_row", np.int64)],
                axis=0)  # (P2, 4c3, T)
    dx4 = g.reshape(dx4t, (hf - 1, wf - 1, 4 * c3, T))
    dh = None
    for i, (dy_, dx_) in enumerate(taps):
        part = g.op("Slice", [dx4, g.const([i * c3], "st", np.int64), g.const([(i + 1) * c3], "en", np.int64),
                              g.const([2], "ax", np.int64)])
        # place the tap's (hf-1, wf-1) block back at offset (dy_, dx_) of the (hf, wf) map
        pads = [dy_, dx_, 0, 0, 1 - dy_, 1 - dx_, 0, 0]
        part = g.op("Pad", [part, g.const(pads, "pads", np.int64)])
        dh = part if dh is None else g.op("Add", [dh, part])
    assert dh is not None
    dh = g.transpose(dh, (3, 2, 0, 1))  # (T, c3, hf, wf)
    if ay is not None and axt is not None:
        dh = g.op("MatMul", [g.op("MatMul", [g.transpose(ay, (0, 1, 3, 2)), dh]), g.transpose(axt, (0, 1, 3, 2))])
    dh3 = g.reshape(g.transpose(g.reshape(dh, (T, c3, P)), (1, 0, 2)), (1, c3, T, P))
    da3 = g.elu_grad(dh3, h3)
    dgt = g.op("Conv", [da3, g.const(_conv_input_grad_kernel(params["pointwise_w"]), "pointwise_wt")])
    if kind == "live_grad" or arch.causal:
        pb, pe = 0, kt - 1
    else:
        pb, pe = (kt - 1) // 2, (kt - 1) // 2
    dft = g.op("Conv", [dgt, g.const(np.ascontiguousarray(np.flip(params["temporal_w"], axis=2)), "temporal_wf")],
               group=c2, pads=[pb, 0, pe, 0])  # (1, c2, T, P)
    dfeats = g.reshape(g.transpose(g.reshape(dft, (c2, T, P)), (1, 0, 2)), (T, c2, hf, wf))
    da2 = g.elu_grad(dfeats, feats)
    dx2 = g.op("Conv", [da2, g.const(_conv_input_grad_kernel(w2), "conv2_wt")], pads=[k2 // 2] * 4)
    da1 = g.elu_grad(g.op("DepthToSpace", [dx2], blocksize=2, mode="DCR"), h1)  # adjoint of SpaceToDepth
    dx1 = g.op("Conv", [da1, g.const(_conv_input_grad_kernel(params["conv1_w"]), "conv1_wt")], pads=[k1 // 2] * 4)
    dx0 = g.op("DepthToSpace", [dx1], blocksize=2, mode="DCR")
    grad = g.op("Mul", [g.reshape(dx0, (1, T, H, Wd)), g.const(inv_std, "inv_std")])
    g.nodes.append(helper.make_node("Identity", [grad], ["grad"]))
    outputs += [helper.make_tensor_value_info("loss", f32, []),
                helper.make_tensor_value_info("grad", f32, [1, T, H, Wd])]
    return _finish(g, inputs, outputs, f"encoder_{kind}")


def _s2d_reorder(w: np.ndarray, c_in: int) -> np.ndarray:
    """Reorder a conv kernel's inputs from pixel_unshuffle order (c*4+b) to SpaceToDepth order (b*C+c)."""
    idx = np.array([c * 4 + blk for blk in range(4) for c in range(c_in)])
    return np.ascontiguousarray(w[:, idx])


def _finish(g: _G, inputs: list, outputs: list, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="rt-decoder")
    model.ir_version = 8  # readable by onnxruntime >= 1.14 and TensorRT 8.6+
    onnx.checker.check_model(model, full_check=True)
    return model
