"""The amortised decoder: a fast linear map from a window of responses to a frame.

Reconstruction by gradient descent through the encoder starts, in the published method,
from uniform grey. Here a direct decoder, fitted on the encoder's training data, gives the
starting point instead (offline: the whole trial; live: each frame of the window once its
responses are in), and gradient steps through the encoder refine it.

The map, for frame t, from the standardised responses of frames t .. t + L - 1
(``response_frames`` = L; neural activity follows the stimulus):

* responses are standardised per neuron (mean, std of the training frames; std floored at
  1% of the mean std, as Sensorium scores), then projected on their first K principal
  components (``response_components``; randomized SVD of the training frames);
* the K x L lagged projections are mapped by ridge regression onto the first M principal
  components of the training video (``video_components``); the frame is the video's
  mean frame plus those components;
* the ridge strength is chosen on validation trials (never on scored trials), by the
  pixel correlation inside the evaluation mask.

Frames whose later responses fall past the end of the data (the last L - 1 frames of an
offline trial) see the mean (zero after standardisation) for the missing lags.

Stored as ``amortised.npz`` (plain arrays, ``allow_pickle=False``) in the model directory,
named by the manifest's ``amortised`` field. Numpy only: no torch, no zmq.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rt_decoder.errors import ConfigError, ModelError, ShapeMismatchError

FILE_NAME = "amortised.npz"


@dataclass(frozen=True)
class AmortisedSettings:
    """How the amortised decoder is fitted.

    response_frames : L, frames of responses (t .. t + L - 1) that decode frame t
    response_components : K, principal components of the standardised responses kept
    video_components : M, principal components of the video predicted
    ridge_grid : ridge strengths tried (relative to the mean eigenvalue of the design's
        Gram matrix); the best on validation trials is kept
    """

    response_frames: int = 8
    response_components: int = 96
    video_components: int = 160
    ridge_grid: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)

    def __post_init__(self) -> None:
        if not (1 <= self.response_frames <= 64):
            raise ConfigError(f"response_frames must be in [1, 64], got {self.response_frames}")
        if not (1 <= self.response_components <= 4096):
            raise ConfigError(f"response_components must be in [1, 4096], got {self.response_components}")
        if not (1 <= self.video_components <= 4096):
            raise ConfigError(f"video_components must be in [1, 4096], got {self.video_components}")
        if not self.ridge_grid or any(not (r > 0) for r in self.ridge_grid):
            raise ConfigError(f"ridge_grid must be non-empty and positive, got {self.ridge_grid}")


class AmortisedDecoder:
    """A fitted amortised decoder (see the module docstring).

    Parameters
    ----------
    projection : ndarray (N, K) float32
        Maps raw responses to standardised principal components (already divided by the
        per-neuron std).
    offset : ndarray (K,) float32
        Subtracted after projection (the projected mean response).
    weights : ndarray (L * K, M) float32
        Ridge weights; row block d holds lag d (responses of frame t + d).
    video_basis : ndarray (M, H * W) float32
    video_mean : ndarray (H, W) float32
    response_mean : ndarray (N,) float32
        Substituted for neurons that a session lacks.
    info : dict
        What it was fitted on (trials, seed, ridge, validation score).
    """

    def __init__(self, projection: np.ndarray, offset: np.ndarray, weights: np.ndarray, video_basis: np.ndarray,
                 video_mean: np.ndarray, response_mean: np.ndarray, info: dict[str, Any] | None = None) -> None:
        self.projection = np.ascontiguousarray(projection, np.float32)
        self.offset = np.ascontiguousarray(offset, np.float32)
        self.weights = np.ascontiguousarray(weights, np.float32)
        self.video_basis = np.ascontiguousarray(video_basis, np.float32)
        self.video_mean = np.ascontiguousarray(video_mean, np.float32)
        self.response_mean = np.ascontiguousarray(response_mean, np.float32)
        self.info = dict(info or {})
        n, k = self.projection.shape
        if self.offset.shape != (k,):
            raise ModelError(f"amortised offset has shape {self.offset.shape}, expected ({k},)")
        if self.weights.shape[0] % k or self.weights.shape[0] == 0:
            raise ModelError(f"amortised weights have {self.weights.shape[0]} rows, not a multiple of K={k}")
        m = self.weights.shape[1]
        if self.video_basis.shape[0] != m or self.video_mean.ndim != 2 or \
                self.video_basis.shape[1] != self.video_mean.size:
            raise ModelError("amortised video basis and mean frame do not match the weights")
        if self.response_mean.shape != (n,):
            raise ModelError(f"amortised response mean has shape {self.response_mean.shape}, expected ({n},)")
        self._decode = (self.weights @ self.video_basis).astype(np.float32)   # (L*K, H*W)
        self._session: Any = None
        self._rows = np.empty((self.response_frames, self.n_neurons), np.float32)

    @property
    def n_neurons(self) -> int:
        return int(self.projection.shape[0])

    @property
    def response_frames(self) -> int:
        return int(self.weights.shape[0] // self.projection.shape[1])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (int(self.video_mean.shape[0]), int(self.video_mean.shape[1]))

    # ------------------------------------------------------------------ use
    def project(self, responses: np.ndarray, neuron_weights: np.ndarray | None = None) -> np.ndarray:
        """Responses (T, N) -> standardised components (T, K); neurons of weight 0 read as their mean."""
        r = np.asarray(responses, np.float32)
        if r.ndim != 2 or r.shape[1] != self.n_neurons:
            raise ShapeMismatchError(f"responses must be (T, {self.n_neurons}), got {r.shape}")
        if neuron_weights is not None:
            missing = np.asarray(neuron_weights) == 0
            if missing.any():
                r = r.copy()
                r[:, missing] = self.response_mean[missing]
        return r @ self.projection - self.offset

    def frames_from_components(self, comps: np.ndarray) -> np.ndarray:
        """Lagged components (T, L, K) (lag d = responses of frame t + d) -> frames (T, H, W)."""
        c = np.asarray(comps, np.float32)
        L, K = self.response_frames, self.projection.shape[1]
        if c.ndim != 3 or c.shape[1:] != (L, K):
            raise ShapeMismatchError(f"components must be (T, {L}, {K}), got {c.shape}")
        flat = c.reshape(c.shape[0], L * K) @ self._decode
        return (flat.reshape(c.shape[0], *self.frame_shape) + self.video_mean).astype(np.float32)

    def estimate_frame(self, rows: np.ndarray, neuron_weights: np.ndarray | None = None) -> np.ndarray:
        """One frame from its first ``len(rows)`` response frames (rows[d] = frame t + d), (H, W).

        The live path: later response frames not yet in read as the mean (zero components).
        Runs a small ONNX Runtime graph (MatMul -> MatMul, one thread): numpy's BLAS on
        these shapes costs up to 20x more on some machines. Equal to
        ``frames_from_components`` of the projected rows (tested).
        """
        r = np.asarray(rows, np.float32)
        L = self.response_frames
        if r.ndim != 2 or r.shape[1] != self.n_neurons or not 1 <= r.shape[0] <= L:
            raise ShapeMismatchError(f"rows must be (1..{L}, {self.n_neurons}), got {r.shape}")
        x = self._rows                      # (L, N), allocated once: this runs every live frame
        x[: r.shape[0]] = r
        x[r.shape[0]:] = self.response_mean
        if neuron_weights is not None:
            missing = np.asarray(neuron_weights) == 0
            if missing.any():
                x[:, missing] = self.response_mean[missing]
        if self._session is None:
            self._session = self._build_session()
        out = self._session.run(None, {"rows": x})[0]
        return np.asarray(out, np.float32).reshape(self.frame_shape)

    def _build_session(self) -> Any:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        L, K = self.response_frames, self.projection.shape[1]
        hw = self.video_mean.size
        nodes = [helper.make_node("MatMul", ["rows", "projection"], ["z"]),
                 helper.make_node("Sub", ["z", "offset"], ["zc"]),
                 helper.make_node("Reshape", ["zc", "flat_shape"], ["flat"]),
                 helper.make_node("MatMul", ["flat", "decode"], ["pix"]),
                 helper.make_node("Add", ["pix", "video_mean"], ["frame"])]
        inits = [numpy_helper.from_array(self.projection, "projection"),
                 numpy_helper.from_array(self.offset, "offset"),
                 numpy_helper.from_array(np.array([1, L * K], np.int64), "flat_shape"),
                 numpy_helper.from_array(self._decode, "decode"),
                 numpy_helper.from_array(self.video_mean.reshape(1, hw), "video_mean")]
        graph = helper.make_graph(nodes, "amortised", [helper.make_tensor_value_info("rows", TensorProto.FLOAT,
                                                                                      [L, self.n_neurons])],
                                  [helper.make_tensor_value_info("frame", TensorProto.FLOAT, [1, hw])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    def decode(self, responses: np.ndarray, neuron_weights: np.ndarray | None = None) -> np.ndarray:
        """A whole trial: responses (T, N) -> frames (T, H, W), pixels clipped to [0, 255]."""
        z = self.project(responses, neuron_weights)
        return np.clip(self.frames_from_components(lagged(z, self.response_frames)), 0.0, 255.0)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        """Write ``amortised.npz`` (plain arrays; the fit info as a JSON string)."""
        np.savez_compressed(path, projection=self.projection.astype(np.float16), offset=self.offset,
                            weights=self.weights, video_basis=self.video_basis.astype(np.float16),
                            video_mean=self.video_mean, response_mean=self.response_mean,
                            info=np.array(json.dumps(self.info)))

    @classmethod
    def load(cls, path: str | Path) -> AmortisedDecoder:
        """Read ``amortised.npz``; ModelError names the file when it is missing or malformed."""
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("projection", "offset", "weights", "video_basis", "video_mean",
                                            "response_mean", "info")}
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{p}: cannot read the amortised decoder ({exc})") from exc
        try:
            info = json.loads(str(arrays.pop("info")))
        except json.JSONDecodeError as exc:
            raise ModelError(f"{p}: bad info field ({exc})") from exc
        return cls(info=info, **{k: v.astype(np.float32) for k, v in arrays.items()})


def lagged(z: np.ndarray, n_lags: int) -> np.ndarray:
    """(T, K) -> (T, L, K): entry [t, d] = z[t + d], zero past the end."""
    T, K = z.shape
    out = np.zeros((T, n_lags, K), np.float32)
    for d in range(n_lags):
        if d < T:
            out[: T - d, d] = z[d:]
    return out


def _top_components(x: np.ndarray, k: int, rng: np.random.Generator, n_iter: int = 3) -> np.ndarray:
    """First ``k`` right singular vectors (D, k) of centred ``x`` (T, D) by randomized SVD."""
    d = x.shape[1]
    k = min(k, d, x.shape[0])
    q = x @ rng.standard_normal((d, min(d, k + 16))).astype(np.float32)
    q, _ = np.linalg.qr(q)
    for _ in range(n_iter):
        q, _ = np.linalg.qr(x.T @ q)
        q, _ = np.linalg.qr(x @ q)
    b = q.T @ x
    _, _, vt = np.linalg.svd(b, full_matrices=False)
    return vt[:k].T.astype(np.float32)


def _masked_corr(truth: Sequence[np.ndarray], pred: Sequence[np.ndarray], mask: np.ndarray) -> float:
    a = np.concatenate([t[:, mask].ravel() for t in truth]).astype(np.float64)
    b = np.concatenate([p[:, mask].ravel() for p in pred]).astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def fit_amortised(train: Sequence[tuple[np.ndarray, np.ndarray]], val: Sequence[tuple[np.ndarray, np.ndarray]],
                  settings: AmortisedSettings = AmortisedSettings(), *, eval_mask: np.ndarray | None = None,
                  seed: int = 0, fitted_on: dict[str, Any] | None = None,
                  max_pca_frames: int = 40_000) -> AmortisedDecoder:
    """Fit on training trials, choose the ridge strength on validation trials.

    Parameters
    ----------
    train, val : sequences of (video (T, H, W) px, responses (T, N)) per trial
    eval_mask : (H, W) bool or None (whole frame)
        Pixels the validation score looks at.
    seed : int
        Seed of the randomized SVDs.
    fitted_on : dict or None
        Recorded in ``info`` (e.g. trial ids, rig seed).
    max_pca_frames : int
        The response components come from at most this many training frames (every k-th
        frame of each trial); the regression uses every frame.
    """
    if not train or not val:
        raise ConfigError("the amortised decoder needs training and validation trials")
    rng = np.random.default_rng(seed)
    s = settings
    L = s.response_frames
    H, W = train[0][0].shape[1:]
    mask = np.ones((H, W), bool) if eval_mask is None else np.asarray(eval_mask, bool)
    # per-neuron mean and std over all training frames, without one big copy of them
    n_frames = sum(len(r) for _, r in train)
    acc = np.zeros(train[0][1].shape[1], np.float64)
    acc2 = np.zeros_like(acc)
    for _, r in train:
        r64 = np.asarray(r, np.float64)
        acc += r64.sum(0)
        acc2 += (r64 * r64).sum(0)
    mean = (acc / n_frames).astype(np.float32)
    std = np.sqrt(np.maximum(acc2 / n_frames - (acc / n_frames) ** 2, 0.0))
    std = np.maximum(std, 0.01 * float(std.mean()) + 1e-12).astype(np.float32)
    # principal components from at most ``max_pca_frames`` evenly spaced training frames
    step = max(1, int(np.ceil(n_frames / max_pca_frames)))
    Z = np.concatenate([(np.asarray(r, np.float32)[::step] - mean) / std for _, r in train])
    P = _top_components(Z, s.response_components, rng)              # (N, K)
    del Z
    proj = (P / std[:, None]).astype(np.float32)
    offset = (mean @ proj).astype(np.float32)
    V = np.concatenate([np.asarray(v, np.float32).reshape(len(v), -1) for v, _ in train])
    vmean = V.mean(0)
    B = _top_components(V - vmean, s.video_components, rng).T       # (M, H*W)
    del V

    def design(trials: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        return np.concatenate([lagged(np.asarray(r, np.float32) @ proj - offset, L).reshape(len(r), -1)
                               for _, r in trials])

    X = design(train)
    Y = np.concatenate([(np.asarray(v, np.float32).reshape(len(v), -1) - vmean) @ B.T for v, _ in train])
    G = (X.T @ X).astype(np.float64)
    XtY = (X.T @ Y).astype(np.float64)
    del X, Y
    scale = float(np.trace(G) / G.shape[0])
    Xv = design(val)
    truth = [np.asarray(v, np.float32) for v, _ in val]
    lens = [len(v) for v in truth]
    best: tuple[float, float, np.ndarray] | None = None
    scores = {}
    for lam in s.ridge_grid:
        Wt = np.linalg.solve(G + lam * scale * np.eye(G.shape[0]), XtY).astype(np.float32)
        pred = np.clip((Xv @ Wt) @ B + vmean, 0, 255).reshape(-1, H, W)
        parts = np.split(pred, np.cumsum(lens)[:-1])
        c = _masked_corr(truth, parts, mask)
        scores[str(lam)] = c
        if best is None or c > best[0]:
            best = (c, lam, Wt)
    assert best is not None
    info = {"settings": {**asdict(s), "ridge_grid": list(s.ridge_grid)}, "ridge": best[1], "val_corr": best[0],
            "val_scores": scores, "seed": seed, "n_train_frames": int(n_frames),
            "fitted_on": dict(fitted_on or {})}
    return AmortisedDecoder(proj, offset, best[2], B, vmean.reshape(H, W), mean, info)
