"""The ``rt-decoder`` console script: one entry point, one module per subcommand.

Each subcommand lives in ``rt_decoder/commands/<name>.py`` and defines ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int``. Those modules keep their
top-level imports light (heavy imports go inside ``run``) so ``--help`` is instant and
the runtime path never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rt_decoder import __version__
from rt_decoder.errors import RtDecoderError

#: subcommand name -> module (in the order shown by --help)
COMMANDS: dict[str, str] = {
    "demo": "rt_decoder.commands.demo",
    "simulate": "rt_decoder.commands.simulate",
    "rig": "rt_decoder.commands.rig",
    "listen": "rt_decoder.commands.listen",
    "train": "rt_decoder.commands.train",
    "export": "rt_decoder.commands.export",
    "reconstruct": "rt_decoder.commands.reconstruct",
    "serve": "rt_decoder.commands.serve",
    "sink": "rt_decoder.commands.sink",
    "view": "rt_decoder.commands.view",
    "replay": "rt_decoder.commands.replay",
    "suite2p-live": "rt_decoder.commands.suite2p_live",
    "deconvolve": "rt_decoder.commands.deconvolve",
    "to-nwb": "rt_decoder.commands.to_nwb",
    "recover": "rt_decoder.commands.recover",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rt-decoder",
        description="Real-time movie decoding from live two-photon ROI fluorescence streams.",
    )
    parser.add_argument("--version", action="version", version=f"rt-decoder {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand, return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except RtDecoderError as exc:
        print(f"rt-decoder {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
