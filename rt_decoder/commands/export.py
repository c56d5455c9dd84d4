"""``rt-decoder export``: write a model's ONNX graphs (forward, loss+gradient) and manifest."""

from __future__ import annotations

import argparse

HELP = "export a trained encoder to ONNX graphs (forward, loss and gradient) with a manifest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="model directory written by 'rt-decoder train'")
    p.add_argument("--out", required=True, help="output directory (may equal MODEL_DIR)")
    p.add_argument("--window", type=int, default=32, help="frames per window (default 32)")
    p.add_argument("--live-frames", type=int, default=0,
                   help="also write the cached-context live graphs for this many new frames")


def run(args: argparse.Namespace) -> int:
    from rt_decoder.encoder.export import export_model

    out, reports = export_model(args.model_dir, args.out, window_frames=args.window, live_frames=args.live_frames)
    for r in reports:
        print(f"{r.graph_name}: {r.n_nodes} nodes, TensorRT-ready ({', '.join(r.op_types)})")
    print(f"wrote {out}")
    return 0
