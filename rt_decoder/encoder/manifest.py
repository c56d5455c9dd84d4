"""The model directory: ``manifest.json`` and the files it names, validated on load.

Layout of a model directory (written by ``rt-decoder train``; ``rt-decoder export`` adds
the ONNX graphs)::

    manifest.json            this module's Manifest (format, shapes, neurons, masks, ...)
    neuron_ids.npy           (N,) int64 ROI / unit ids, in the order of every response row
    alpha.npz                alpha (36, 64) float32; train_mask, eval_mask (36, 64) bool
    member_<k>/weights.npz   weights of ensemble member k (``params.save_params``)
    member_<k>/<kind>_w<W>.onnx   exported graphs (optional; built in memory when absent)

Loading needs numpy, onnx and the standard library only -- never PyTorch. Every problem
raises ``ModelError`` naming the file and the field.

Normalisation recorded in the manifest: the graphs take pixels in 0..255 and compute
``(video - video_mean) / video_std`` inside; behaviour ``(b - behaviour_mean) /
behaviour_std`` per channel, in ``BEHAVIOUR_FIELDS`` order. The loss is the Poisson
negative log-likelihood ``sum_{t,n} fw_t nw_n (r - y log(r + 1e-8)) / (W N)``.

Alpha masks (REFERENCE.md section 1): ``alpha`` in [0, 1.x] per pixel says how much the
population sees that pixel (from the trained encoders' input gradients, normalised so
that the 95th percentile is 1); reconstruction applies gradients where alpha >=
``train_threshold`` (0.5) and scores where alpha >= ``eval_threshold`` (1.0).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rt_decoder.encoder.config import FRAME_SHAPE, ArchConfig
from rt_decoder.encoder.params import Params, load_params
from rt_decoder.errors import ConfigError, ModelError
from rt_decoder.messages import BEHAVIOUR_FIELDS

FORMAT = "rt-decoder-encoder"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

_REQUIRED = ("format", "format_version", "arch", "n_neurons", "frame_rate_hz", "frame_shape",
             "behaviour_fields", "window_frames", "onnx_opset", "normalisation", "masks", "members",
             "training")
_OPTIONAL = ("loss", "graphs", "notes", "amortised")


@dataclass(frozen=True)
class MemberInfo:
    """One ensemble member: its directory, seed, weights hash and validation figures."""

    name: str
    seed: int
    weights_sha256: str
    val_corr: float | None = None
    graphs: dict[str, str] = field(default_factory=dict)  # "<kind>_w<W>" -> relative path

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "weights_sha256": self.weights_sha256,
                "val_corr": self.val_corr, "graphs": dict(self.graphs)}


@dataclass(frozen=True)
class Manifest:
    """Contents of ``manifest.json`` (see the module docstring)."""

    arch: ArchConfig
    n_neurons: int
    frame_rate_hz: float
    window_frames: int
    normalisation: dict[str, Any]
    members: tuple[MemberInfo, ...]
    training: dict[str, Any]
    masks: dict[str, Any] = field(default_factory=lambda: {
        "file": "alpha.npz", "train_threshold": 0.5, "eval_threshold": 1.0})
    onnx_opset: int = 17
    frame_shape: tuple[int, int] = FRAME_SHAPE
    behaviour_fields: tuple[str, ...] = BEHAVIOUR_FIELDS
    loss: dict[str, Any] = field(default_factory=lambda: {
        "kind": "poisson", "eps": 1e-8, "reduction": "sum / (W * N)"})
    notes: str = ""
    #: the amortised decoder, if the model has one: {"file": ..., "sha256": ...} (rt_decoder.recon.amortised)
    amortised: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "arch": self.arch.to_dict(),
            "n_neurons": self.n_neurons, "frame_rate_hz": self.frame_rate_hz,
            "frame_shape": list(self.frame_shape), "behaviour_fields": list(self.behaviour_fields),
            "window_frames": self.window_frames, "onnx_opset": self.onnx_opset,
            "normalisation": self.normalisation, "masks": self.masks,
            "members": [m.to_dict() for m in self.members], "training": self.training,
            "loss": self.loss, "notes": self.notes,
            **({"amortised": self.amortised} if self.amortised else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = MANIFEST) -> Manifest:
        """Validate a parsed manifest; ModelError names the offending field."""
        if not isinstance(d, dict):
            raise ModelError(f"{source}: top level must be an object")
        missing = [k for k in _REQUIRED if k not in d]
        unknown = sorted(set(d) - set(_REQUIRED) - set(_OPTIONAL))
        if missing or unknown:
            raise ModelError(f"{source}: missing fields {missing}, unknown fields {unknown}")
        if d["format"] != FORMAT or d["format_version"] != FORMAT_VERSION:
            raise ModelError(f"{source}: format {d['format']!r} v{d['format_version']!r}, "
                             f"expected {FORMAT!r} v{FORMAT_VERSION}")
        try:
            arch = ArchConfig.from_dict(dict(d["arch"]))
        except (ConfigError, TypeError) as exc:
            raise ModelError(f"{source}: field 'arch': {exc}") from exc
        n = d["n_neurons"]
        if not isinstance(n, int) or not 1 <= n <= 1_000_000:
            raise ModelError(f"{source}: field 'n_neurons' must be an int in [1, 1e6], got {n!r}")
        if tuple(d["frame_shape"]) != FRAME_SHAPE:
            raise ModelError(f"{source}: field 'frame_shape' is {d['frame_shape']!r}, this build needs {list(FRAME_SHAPE)}")
        if tuple(d["behaviour_fields"]) != BEHAVIOUR_FIELDS:
            raise ModelError(f"{source}: field 'behaviour_fields' is {d['behaviour_fields']!r}, "
                             f"expected {list(BEHAVIOUR_FIELDS)}")
        w = d["window_frames"]
        if not isinstance(w, int) or not 1 <= w <= 1024:
            raise ModelError(f"{source}: field 'window_frames' must be an int in [1, 1024], got {w!r}")
        fr = d["frame_rate_hz"]
        if not isinstance(fr, (int, float)) or not 0 < fr <= 1000:
            raise ModelError(f"{source}: field 'frame_rate_hz' must be in (0, 1000], got {fr!r}")
        masks = d["masks"]
        if not isinstance(masks, dict) or not {"file", "train_threshold", "eval_threshold"} <= set(masks):
            raise ModelError(f"{source}: field 'masks' needs file, train_threshold, eval_threshold")
        members = []
        if not isinstance(d["members"], list) or not d["members"]:
            raise ModelError(f"{source}: field 'members' must be a non-empty list")
        for i, m in enumerate(d["members"]):
            try:
                members.append(MemberInfo(name=str(m["name"]), seed=int(m["seed"]),
                                          weights_sha256=str(m["weights_sha256"]),
                                          val_corr=None if m.get("val_corr") is None else float(m["val_corr"]),
                                          graphs=dict(m.get("graphs", {}))))
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelError(f"{source}: members[{i}] is invalid ({exc!r})") from exc
        norm = d["normalisation"]
        for key in ("video_mean", "video_std", "behaviour_mean", "behaviour_std", "pixel_range"):
            if not isinstance(norm, dict) or key not in norm:
                raise ModelError(f"{source}: field 'normalisation' lacks {key!r}")
        return cls(arch=arch, n_neurons=n, frame_rate_hz=float(fr), window_frames=w, normalisation=norm,
                   members=tuple(members), training=dict(d["training"]), masks=dict(masks),
                   onnx_opset=int(d["onnx_opset"]), loss=dict(d.get("loss", {})), notes=str(d.get("notes", "")),
                   amortised=_amortised_field(d.get("amortised", {}), source))


def _amortised_field(a: Any, source: str) -> dict[str, Any]:
    if not isinstance(a, dict):
        raise ModelError(f"{source}: field 'amortised' must be an object")
    if a and not (isinstance(a.get("file"), str) and isinstance(a.get("sha256"), str)):
        raise ModelError(f"{source}: field 'amortised' needs 'file' and 'sha256' strings")
    return dict(a)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class AlphaMasks:
    """Alpha map (36, 64) float32 and the boolean training/evaluation masks derived from it."""

    alpha: np.ndarray
    train_mask: np.ndarray
    eval_mask: np.ndarray
    train_threshold: float = 0.5
    eval_threshold: float = 1.0


@dataclass(frozen=True)
class EncoderModel:
    """A loaded model directory: manifest, neuron ids, masks and every member's weights."""

    root: Path
    manifest: Manifest
    neuron_ids: np.ndarray
    masks: AlphaMasks
    params: tuple[Params, ...]

    @property
    def n_neurons(self) -> int:
        return self.manifest.n_neurons

    @property
    def n_members(self) -> int:
        return len(self.params)

    def member_hash(self, k: int) -> str:
        """Identity of member k's weights (sha256 of weights.npz), used to key caches."""
        return self.manifest.members[k].weights_sha256


def _refuse_incomplete(root: Path) -> None:
    """A model folder whose writer (train/export) was killed carries an INCOMPLETE marker."""
    from rt_decoder.errors import DataFormatError
    from rt_decoder.io.safe import check_complete

    try:
        check_complete(root, "model")
    except DataFormatError as exc:
        raise ModelError(str(exc)) from None


def load_model(root: str | Path, *, expected_neurons: int | None = None) -> EncoderModel:
    """Load and validate a model directory.

    Parameters
    ----------
    root : model directory
    expected_neurons : if given, the model must predict exactly this many neurons

    Raises
    ------
    ModelError
        naming the file and field that is wrong (missing files, bad JSON, wrong shapes,
        neuron count mismatch, weights that do not match their recorded hash).
    """
    root = Path(root)
    _refuse_incomplete(root)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ModelError(f"{mpath}: no manifest (is {root} a model directory?)")
    try:
        raw = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{mpath}: cannot parse ({exc})") from exc
    man = Manifest.from_dict(raw, str(mpath))
    if expected_neurons is not None and man.n_neurons != expected_neurons:
        raise ModelError(f"{mpath}: model predicts n_neurons={man.n_neurons}, the data has {expected_neurons}")
    ids_path = root / "neuron_ids.npy"
    try:
        ids = np.load(ids_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{ids_path}: cannot read neuron ids ({exc})") from exc
    if ids.shape != (man.n_neurons,):
        raise ModelError(f"{ids_path}: shape {ids.shape}, manifest n_neurons={man.n_neurons}")
    masks = _load_masks(root, man)
    params = []
    for m in man.members:
        wpath = root / m.name / "weights.npz"
        if not wpath.is_file():
            raise ModelError(f"{wpath}: missing weights of member {m.name!r}")
        digest = sha256_file(wpath)
        if digest != m.weights_sha256:
            raise ModelError(f"{wpath}: sha256 {digest[:12]}... does not match the manifest's "
                             f"{m.weights_sha256[:12]}...")
        params.append(load_params(wpath, man.arch, man.n_neurons))
    return EncoderModel(root=root, manifest=man, neuron_ids=ids.astype(np.int64), masks=masks, params=tuple(params))


def _load_masks(root: Path, man: Manifest) -> AlphaMasks:
    path = root / str(man.masks["file"])
    try:
        with np.load(path, allow_pickle=False) as z:
            alpha = np.asarray(z["alpha"], np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: cannot read alpha masks ({exc})") from exc
    if alpha.shape != FRAME_SHAPE:
        raise ModelError(f"{path}: alpha has shape {alpha.shape}, expected {FRAME_SHAPE}")
    tt, et = float(man.masks["train_threshold"]), float(man.masks["eval_threshold"])
    return AlphaMasks(alpha=alpha, train_mask=alpha >= tt, eval_mask=alpha >= et,
                      train_threshold=tt, eval_threshold=et)


def save_masks(path: Path, alpha: np.ndarray, train_threshold: float = 0.5, eval_threshold: float = 1.0) -> None:
    """Write ``alpha.npz`` (alpha and both boolean masks)."""
    alpha = np.asarray(alpha, np.float32)
    np.savez_compressed(path, alpha=alpha, train_mask=alpha >= train_threshold, eval_mask=alpha >= eval_threshold)


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically."""
    path = Path(root) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=1, sort_keys=False))
    tmp.replace(path)
    return path
