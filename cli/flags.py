"""One flag vocabulary for every subcommand, and the old spellings kept for one release.

The vocabulary (new flags use exactly these spellings):

==========================  ==========================================================
``--fs HZ``                 frame rate in Hz
``--frames N``              how many frames
``--bind ADDR``             bind this ZeroMQ address (mutually exclusive with ``--connect``)
``--connect ADDR``          connect to this ZeroMQ address
``--allow-non-loopback``    allow an address that is not loopback
``--summary-json PATH``     write the run's JSON summary here
``--model DIR``             a model folder (and nothing else)
``--no-progress``           no progress bar
``--overwrite``             replace an existing output
==========================  ==========================================================

An old spelling still works for one release and prints one line to stderr::

    rt-decoder rig: warning: --rate-hz is deprecated, use --fs

:func:`deprecated_alias` adds such a spelling (hidden from ``--help``; listed in the
epilog), :func:`rewrite_to_connect` turns the old ``--to ADDR [--connect]`` pair into
``--bind ADDR`` / ``--connect ADDR`` before parsing. Only ``cli`` imports this module.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["DEPRECATED_ATTR", "deprecated_alias", "deprecation_epilog", "group", "note_deprecated", "rewrite_to_connect", "warn_deprecated"]

#: attribute of an argparse parser holding its deprecated spellings as (old, new) pairs
DEPRECATED_ATTR = "_rt_deprecated"


def warn_deprecated(prog: str, old: str, new: str) -> None:
    """Print ``<prog>: warning: <old> is deprecated, use <new>`` to stderr (one line)."""
    print(f"{prog}: warning: {old} is deprecated, use {new}", file=sys.stderr, flush=True)


class _DeprecatedAction(argparse.Action):
    """Stores like the new flag (a value, or ``const`` when it takes none) and warns."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        warn_deprecated(parser.prog, option_string or self.option_strings[0], self.new)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def deprecated_alias(parser: argparse.ArgumentParser | Any, old: str, new: str, *, dest: str,
                     type: Callable[[str], Any] | None = None, flag: bool = False, metavar: str | None = None,
                     const: Any = True, choices: Sequence[Any] | None = None) -> None:
    """Accept ``old`` as a deprecated spelling of ``new`` (same ``dest``), hidden from ``--help``.

    Parameters
    ----------
    parser : argparse.ArgumentParser or argument group
        Where the new flag was added (a mutually exclusive group keeps the exclusion).
    old, new : str
        The old and the new spelling, e.g. ``"--rate-hz"``, ``"--fs"``.
    dest : str
        The new flag's ``dest``.
    type : callable, optional
        The value's type (for flags that take a value).
    flag : bool
        The old spelling takes no value; it stores ``const``.
    metavar : str, optional
        Shown in error messages.
    choices : sequence, optional
        The allowed values (as the new flag's).
    const : Any
        Stored by a ``flag`` (default True).
    """
    kwargs: dict[str, Any] = {"nargs": 0, "const": const} if flag else {"type": type, "metavar": metavar, "choices": choices}
    parser.add_argument(old, dest=dest, action=_DeprecatedAction, new=new, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS, **kwargs)
    note_deprecated(parser, old, new)


def note_deprecated(parser: argparse.ArgumentParser | Any, old: str, new: str) -> None:
    """List ``old -> new`` in ``parser``'s epilog (for spellings handled outside argparse)."""
    owner = getattr(parser, "_rt_owner", parser)
    pairs = getattr(owner, DEPRECATED_ATTR, None)
    if pairs is None:
        pairs = []
        setattr(owner, DEPRECATED_ATTR, pairs)
    pairs.append((old, new))


def deprecation_epilog(parser: argparse.ArgumentParser) -> str:
    """The epilog lines listing ``parser``'s deprecated spellings ("" when it has none)."""
    pairs = getattr(parser, DEPRECATED_ATTR, [])
    if not pairs:
        return ""
    return ("deprecated spellings (still accepted in this release, with a warning):\n"
            + "".join(f"  {old:<22} -> {new}\n" for old, new in pairs))


def group(parser: argparse.ArgumentParser, *, required: bool = False) -> Any:
    """A mutually exclusive group of ``parser`` whose deprecated aliases are listed in the epilog."""
    g = parser.add_mutually_exclusive_group(required=required)
    g._rt_owner = parser  # type: ignore[attr-defined]
    return g


def _is_endpoint(token: str) -> bool:
    return "://" in token


def rewrite_to_connect(prog: str, argv: Sequence[str], *, default_address: str | None = None) -> list[str]:
    """Rewrite the old ``--to ADDR [--connect]`` spelling into ``--bind ADDR`` / ``--connect ADDR``.

    ``--to ADDR`` becomes ``--bind ADDR``; ``--to ADDR --connect`` (in any order) becomes
    ``--connect ADDR``; a bare ``--connect`` without ``--to`` (not followed by an address, i.e.
    a token with ``://``) connects to ``default_address``. Each rewrite prints one deprecation
    line. Anything else is returned unchanged.

    Parameters
    ----------
    prog : str
        The subcommand's prog (``rt-decoder replay``) for the warning.
    argv : sequence of str
        The subcommand's arguments (after the subcommand's name).
    default_address : str, optional
        What the old ``--to`` defaulted to, for a bare ``--connect``; None: no default.

    Returns
    -------
    list of str
        The arguments in the new spelling.
    """
    args = list(argv)
    if "--" in args:  # leave anything after "--" alone
        cut = args.index("--")
        return rewrite_to_connect(prog, args[:cut], default_address=default_address) + args[cut:]
    to_addr: str | None = None
    to_pos: int | None = None
    bare_connect: list[int] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--to" and i + 1 < len(args):
            to_addr, to_pos = args[i + 1], i
            del args[i:i + 2]
            continue
        if a.startswith("--to="):
            to_addr, to_pos = a[len("--to="):], i
            del args[i]
            continue
        if a == "--connect" and (i + 1 >= len(args) or not _is_endpoint(args[i + 1]) or to_addr is not None
                                 or "--to" in args[i + 1:] or any(x.startswith("--to=") for x in args[i + 1:])):
            bare_connect.append(i)
        i += 1
    if to_addr is None and not bare_connect:
        return args
    connect = bool(bare_connect)
    for j in reversed(bare_connect):
        del args[j]
    if to_addr is None:
        if default_address is None:
            return args + ["--connect"]  # argparse reports the missing address
        warn_deprecated(prog, "--connect without an address", f"--connect ADDR (here: --connect {default_address})")
        to_addr, to_pos = default_address, len(args)
    else:
        warn_deprecated(prog, "--to ADDR --connect" if connect else "--to ADDR",
                        "--connect ADDR" if connect else "--bind ADDR")
    assert to_pos is not None
    pos = min(to_pos - sum(1 for j in bare_connect if j < to_pos), len(args))
    args[pos:pos] = ["--connect" if connect else "--bind", to_addr]
    return args
