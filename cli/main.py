"""The ``rt-decoder`` console script: one entry point, one module per subcommand.

Each subcommand lives in ``cli/commands/<name>.py`` and defines ``HELP`` (one line),
``EPILOG`` (real example command lines, shown at the end of its ``--help``),
``add_arguments(parser)`` and ``run(args) -> int``; optionally ``rewrite_argv(prog, argv)``
to turn an old spelling that argparse cannot express into the new one before parsing.
Those modules keep their top-level imports light (heavy imports go inside ``run``) so
``--help`` is instant and the runtime path never imports torch.

Run it as ``rt-decoder ...`` (installed) or ``python -m cli ...`` (a checkout).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from cli.flags import deprecation_epilog
from rt_decoder import __version__
from rt_decoder.errors import RtDecoderError

#: subcommand name -> module (in the order shown by --help)
COMMANDS: dict[str, str] = {
    "demo": "cli.commands.demo",
    "simulate": "cli.commands.simulate",
    "rig": "cli.commands.rig",
    "listen": "cli.commands.listen",
    "train": "cli.commands.train",
    "export": "cli.commands.export",
    "reconstruct": "cli.commands.reconstruct",
    "serve": "cli.commands.serve",
    "sink": "cli.commands.sink",
    "view": "cli.commands.view",
    "replay": "cli.commands.replay",
    "suite2p-live": "cli.commands.suite2p_live",
    "deconvolve": "cli.commands.deconvolve",
    "to-nwb": "cli.commands.to_nwb",
    "recover": "cli.commands.recover",
}

PROG = "rt-decoder"


def _command_module(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name])


def build_parser() -> argparse.ArgumentParser:
    """The full parser: global options and one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Real-time movie decoding from live two-photon ROI fluorescence streams.",
        epilog="example:\n  rt-decoder demo\n\nrun `rt-decoder COMMAND --help` for a command's flags and examples",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rt-decoder {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = _command_module(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.epilog = module.EPILOG.strip("\n") + "\n" + ("\n" + deprecation_epilog(p) if deprecation_epilog(p) else "")
        p.set_defaults(_run=module.run)
    return parser


def _rewrite(argv: list[str]) -> list[str]:
    """Apply the chosen subcommand's ``rewrite_argv`` (old spellings argparse cannot express)."""
    for i, token in enumerate(argv):
        if token.startswith("-"):
            continue
        if token in COMMANDS:
            module = _command_module(token)
            rewrite = getattr(module, "rewrite_argv", None)
            if rewrite is not None:
                return argv[:i + 1] + list(rewrite(f"{PROG} {token}", argv[i + 1:]))
        break
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand, return its exit code."""
    parser = build_parser()
    args = parser.parse_args(_rewrite(list(sys.argv[1:] if argv is None else argv)))
    try:
        return int(args._run(args) or 0)
    except RtDecoderError as exc:
        print(f"rt-decoder {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
