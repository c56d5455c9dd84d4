"""Encoder weights as plain numpy arrays, and the fixed readout tables derived from them.

The weights of one ensemble member live in ``weights.npz`` (``np.savez``; loaded with
``allow_pickle=False``) under the names listed by :func:`param_shapes`; the PyTorch
reference model and the ONNX graph builder both read this dict, so the two stay the same
model by construction. Layouts follow PyTorch's (``conv*_w`` is (out, in, kh, kw)).

:func:`readout_tables` turns the learned readout positions and channel weights into the
pixel-major tables the exported graphs use: every neuron reads the 2x2 block of feature
cells around its position; the graph stacks the four shifted copies of the feature map as
"patch channels" per top-left cell, and lists for every such cell the neurons that read it,
so both the forward and the input gradient of the readout are a batched MatMul plus a
Gather of rows -- no scatter anywhere.

This module imports numpy and the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rt_decoder.encoder.config import FEATURE_SHAPE, ArchConfig
from rt_decoder.errors import ModelError

Params = dict[str, np.ndarray]


def param_shapes(arch: ArchConfig, n_neurons: int) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight array of one encoder."""
    c1, c2, c3 = arch.conv1_channels, arch.core_channels, arch.readout_channels
    k1, k2, kt = arch.conv1_kernel, arch.conv2_kernel, arch.temporal_kernel
    shapes: dict[str, tuple[int, ...]] = {
        "video_mean": (), "video_std": (),
        "behaviour_mean": (4,), "behaviour_std": (4,),
        "conv1_w": (c1, 4, k1, k1), "conv1_b": (c1,),
        "conv2_w": (c2, 4 * c1, k2, k2), "conv2_b": (c2,),
        "temporal_w": (c2, 1, kt, 1), "temporal_b": (c2,),
        "pointwise_w": (c3, c2, 1, 1), "pointwise_b": (c3,),
        "readout_pos": (n_neurons, 2), "readout_w": (n_neurons, c3), "readout_b": (n_neurons,),
    }
    if arch.shifter_hidden:
        h = arch.shifter_hidden
        shapes.update({"shifter_w1": (h, 2), "shifter_b1": (h,), "shifter_w2": (2, h), "shifter_b2": (2,)})
    if arch.gain_hidden:
        h = arch.gain_hidden
        shapes.update({"gain_w1": (h, 4), "gain_b1": (h,), "gain_g": (h, n_neurons)})
    return shapes


def validate_params(params: Params, arch: ArchConfig, n_neurons: int, *, source: str = "weights") -> Params:
    """Check names, shapes and finiteness; return float32 copies.

    Raises
    ------
    ModelError
        naming the missing, unexpected, mis-shaped or non-finite array.
    """
    shapes = param_shapes(arch, n_neurons)
    missing = sorted(set(shapes) - set(params))
    extra = sorted(set(params) - set(shapes))
    if missing or extra:
        raise ModelError(f"{source}: missing arrays {missing}, unexpected arrays {extra}")
    out: Params = {}
    for name, shape in shapes.items():
        a = np.asarray(params[name], dtype=np.float32)
        if a.shape != shape:
            raise ModelError(f"{source}: {name} has shape {a.shape}, expected {shape}")
        if not np.all(np.isfinite(a)):
            raise ModelError(f"{source}: {name} has non-finite values")
        out[name] = a
    if float(out["video_std"]) <= 0 or np.any(out["behaviour_std"] <= 0):
        raise ModelError(f"{source}: normalisation std must be > 0")
    return out


def save_params(path: Path, params: Params) -> None:
    """Write ``params`` to an ``.npz`` file (no pickle)."""
    np.savez_compressed(path, **{k: np.asarray(v, np.float32) for k, v in params.items()})  # type: ignore[arg-type]


def load_params(path: Path, arch: ArchConfig, n_neurons: int) -> Params:
    """Read and validate an ``.npz`` written by :func:`save_params`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot read encoder weights ({exc})") from exc
    return validate_params(raw, arch, n_neurons, source=str(path))


def clamp_positions(pos: np.ndarray) -> np.ndarray:
    """Clamp readout positions (N, 2) (y, x) in feature cells to the feature map."""
    hf, wf = FEATURE_SHAPE
    out = np.empty_like(pos, dtype=np.float64)
    out[:, 0] = np.clip(pos[:, 0], 0.0, hf - 1)
    out[:, 1] = np.clip(pos[:, 1], 0.0, wf - 1)
    return out


@dataclass(frozen=True)
class ReadoutGroup:
    """Top-left cells that share one slot count K (one batched MatMul in the graph).

    cells : int64 (G,) flat top-left cell indices (in the (hf-1)x(wf-1) grid)
    values : float32 (G, K, 4C): values[g, j, tap*C + c] = bilinear weight of ``tap`` x
        channel weight ``c`` of the neuron in slot j of cell ``cells[g]`` (0 in padding slots)
    slot_neuron : int64 (G*K,) neuron of every slot; N (an appended zero row) for padding
    """

    cells: np.ndarray
    values: np.ndarray
    slot_neuron: np.ndarray

    @property
    def slots_per_cell(self) -> int:
        return int(self.values.shape[1])


@dataclass(frozen=True)
class ReadoutTables:
    """Pixel-major readout tables (see module docstring).

    Every neuron reads the 2x2 block of feature cells whose top-left cell is its
    ``bilinear_cells`` cell. The graph stacks the four shifted copies of the feature map as
    4*C "patch channels" per top-left cell, so each neuron occupies exactly one slot. Cells
    are split into groups by how many neurons read them (at most two groups, chosen to
    minimise padding; cells no neuron reads are left out), because trained positions
    cluster.

    Attributes
    ----------
    groups : tuple of ReadoutGroup
    neuron_slot : int64 (N,)
        every neuron's row in the concatenation of the groups' (G*K) slot rows.
    cell_row : int64 (P2,)
        every top-left cell's row in the concatenation of the groups' cells, or the index
        of an appended zero row for cells no neuron reads (the backward Gather).
    """

    groups: tuple[ReadoutGroup, ...]
    neuron_slot: np.ndarray
    cell_row: np.ndarray

    @property
    def n_slots(self) -> int:
        return int(sum(g.slot_neuron.size for g in self.groups))

    @property
    def fill(self) -> float:
        """Share of slots that hold a neuron (1 = no padding waste)."""
        return float(self.neuron_slot.size / max(self.n_slots, 1))

    def apply(self, x4: np.ndarray) -> np.ndarray:
        """Numpy reference of the readout: patch channels (P2, 4C) -> (N,)."""
        rows = [np.einsum("gkc,gc->gk", g.values, x4[g.cells]).reshape(-1) for g in self.groups]
        return np.concatenate(rows)[self.neuron_slot]


def bilinear_cells(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-left cell (N,) (flat index in the (hf-1)x(wf-1) grid) and tap weights (N, 4).

    Same values as ``torch.nn.functional.grid_sample(align_corners=True)`` at (y, x) in
    cell units, positions clamped to the map.
    """
    hf, wf = FEATURE_SHAPE
    p = clamp_positions(pos)
    y0 = np.minimum(np.floor(p[:, 0]), hf - 2).astype(np.int64)
    x0 = np.minimum(np.floor(p[:, 1]), wf - 2).astype(np.int64)
    fy = p[:, 0] - y0
    fx = p[:, 1] - x0
    w = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], axis=1)
    return y0 * (wf - 1) + x0, w


def _split_groups(counts: np.ndarray) -> list[np.ndarray]:
    """Cells with neurons, in at most two groups (by count) minimising padded slots."""
    used = np.flatnonzero(counts > 0)
    if used.size == 0:
        return [np.array([0], np.int64)]
    order = used[np.argsort(counts[used], kind="stable")]
    c = counts[order]
    best_cost, best_i = c.size * (int(c[-1]) + 1), c.size
    for i in range(1, c.size):  # group A = order[:i] (K = c[i-1]+1), group B = order[i:] (K = c[-1]+1)
        cost = i * (int(c[i - 1]) + 1) + (c.size - i) * (int(c[-1]) + 1)
        if cost < best_cost:
            best_cost, best_i = cost, i
    groups = [order[:best_i], order[best_i:]]
    return [np.sort(g) for g in groups if g.size]


def readout_tables(pos: np.ndarray, weights: np.ndarray) -> ReadoutTables:
    """Fold positions (N, 2) and channel weights (N, C) into pixel-major tables."""
    hf, wf = FEATURE_SHAPE
    n, c = weights.shape
    n_cells = (hf - 1) * (wf - 1)
    cells, tapw = bilinear_cells(pos)
    counts = np.bincount(cells, minlength=n_cells)
    vals_n = (tapw[:, :, None] * weights.astype(np.float64)[:, None, :]).astype(np.float32).reshape(n, 4 * c)
    order = np.argsort(cells, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    j = np.empty(n, np.int64)
    j[order] = np.arange(n) - starts[cells[order]]  # rank of each neuron within its cell
    groups = []
    neuron_slot = np.empty(n, np.int64)
    cell_row = np.full(n_cells, -1, np.int64)
    row0 = slot0 = 0
    for gcells in _split_groups(counts):
        k = int(counts[gcells].max()) + 1  # >= 1 padding slot per cell
        local = np.full(n_cells, -1, np.int64)
        local[gcells] = np.arange(gcells.size)
        members = np.flatnonzero(local[cells] >= 0)
        slot = local[cells[members]] * k + j[members]
        values = np.zeros((gcells.size * k, 4 * c), np.float32)
        values[slot] = vals_n[members]
        slot_neuron = np.full(gcells.size * k, n, np.int64)
        slot_neuron[slot] = members
        neuron_slot[members] = slot0 + slot
        cell_row[gcells] = row0 + np.arange(gcells.size)
        groups.append(ReadoutGroup(cells=gcells.astype(np.int64), values=values.reshape(gcells.size, k, 4 * c),
                                   slot_neuron=slot_neuron))
        row0 += gcells.size
        slot0 += gcells.size * k
    cell_row[cell_row < 0] = row0  # the zero row appended after the groups' cells
    return ReadoutTables(groups=tuple(groups), neuron_slot=neuron_slot, cell_row=cell_row)
