"""``rt-decoder export``: write a model's ONNX graphs (forward, loss+gradient) and manifest.

The model is loaded and checked first; ``--out`` must be absent or empty unless
``--overwrite`` (also when ``--out`` is the model folder itself: the graphs are then added
to a copy of it). The output is written under a temporary name and renamed when complete,
so Ctrl-C leaves an older ``--out`` as it was.
"""

from __future__ import annotations

import argparse

HELP = "export a trained encoder to ONNX graphs (forward, loss and gradient) with a manifest"

EPILOG = """examples:
  rt-decoder export models/sim --out models/sim --overwrite
  rt-decoder export models/sim --out models/sim-onnx --window 32 --live-frames 6
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="model directory written by 'rt-decoder train'")
    p.add_argument("--out", required=True, help="output directory (may equal MODEL_DIR, with --overwrite)")
    p.add_argument("--window", type=int, default=32, help="frames per window (default 32)")
    p.add_argument("--live-frames", type=int, default=0,
                   help="also write the cached-context live graphs for this many new frames")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing non-empty --out (for --out = MODEL_DIR: add the graphs to it)")


def run(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from rt_decoder.encoder.export import export_model
    from rt_decoder.encoder.manifest import load_model
    from rt_decoder.io.safe import atomic_dir, check_target

    final = check_target(args.out, overwrite=args.overwrite)
    load_model(args.model_dir)  # the input is checked before anything is written
    in_place = final.exists() and final.resolve() == Path(args.model_dir).resolve()
    with atomic_dir(final, overwrite=args.overwrite, what="model (rt-decoder export)") as tmp:
        src = args.model_dir
        if in_place:
            shutil.copytree(final, tmp, dirs_exist_ok=True)
            src = tmp
        _, reports = export_model(src, tmp, window_frames=args.window, live_frames=args.live_frames)
    for r in reports:
        print(f"{r.graph_name}: {r.n_nodes} nodes, TensorRT-ready ({', '.join(r.op_types)})")
    print(f"wrote {final}")
    return 0
