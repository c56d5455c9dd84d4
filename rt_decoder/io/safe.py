"""Safe outputs: refuse to overwrite, write under a temporary name, rename when complete.

Every rt-decoder command that writes files goes through this module:

- :func:`check_target` refuses an existing non-empty folder, or an existing file, unless
  ``overwrite`` (``--overwrite`` on the command line); call it *before* reading inputs so
  that nothing is computed for an output that would be refused, and before touching it;
- :func:`atomic_dir` / :func:`atomic_file` hand out a temporary sibling of the target
  (``.<name>.incomplete-<random>``), and only when the block completes rename it onto the
  target (the old output is moved aside and deleted after the rename). Ctrl-C (or any
  error) inside the block removes the temporary output, so the old output is left as it
  was; a process killed outright (SIGKILL, power loss) leaves the temporary sibling,
  whose name says it is incomplete and, for folders, an :data:`INCOMPLETE_MARKER` file
  inside it that the readers (``load_dataset``, ``load_model``) refuse with a message;
- the renames at the end run with SIGINT/SIGTERM deferred (on the main thread), so a
  Ctrl-C at that moment does not leave the target missing.

Imports the standard library and ``rt_decoder.errors`` only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from rt_decoder.errors import ConfigError, DataFormatError

#: file inside a folder that is still being written (or whose writer was killed)
INCOMPLETE_MARKER = "INCOMPLETE"


def check_target(path: str | Path, *, overwrite: bool, kind: str = "dir", flag: str = "--overwrite") -> Path:
    """Refuse an existing output unless ``overwrite``; return the target as a Path.

    Parameters
    ----------
    path : str or Path
        The output folder (``kind="dir"``) or file (``kind="file"``).
    overwrite : bool
        Whether an existing output may be replaced.
    kind : {"dir", "file"}
        What the output is; an existing path of the other kind is always refused.
    flag : str
        How the user says "overwrite" (named in the message).

    Raises
    ------
    ConfigError
        Naming the path and the flag.
    """
    p = Path(path)
    if kind not in ("dir", "file"):
        raise ValueError(f"kind must be 'dir' or 'file', got {kind!r}")
    if p.exists() or p.is_symlink():
        if kind == "dir" and not p.is_dir():
            raise ConfigError(f"{p} exists and is not a folder; choose another output path")
        if kind == "file" and p.is_dir():
            raise ConfigError(f"{p} is a folder; the output is a file: choose another output path")
        non_empty = not p.is_dir() or any(p.iterdir())
        if non_empty and not overwrite:
            what = "already exists and is not empty" if p.is_dir() else "already exists"
            python = " (overwrite=True in Python)" if flag.startswith("--") else ""
            raise ConfigError(f"{p} {what}; pass {flag} to replace it{python}, or choose another output path")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{p}: {parent} is a file, so the output cannot be created there")
    return p


def check_complete(path: str | Path, what: str) -> None:
    """Refuse a folder that carries :data:`INCOMPLETE_MARKER` (its writer did not finish).

    The process that is writing the folder (the pid recorded in the marker) may read it.

    Raises
    ------
    DataFormatError
        Saying which writer was interrupted and how to write it again.
    """
    marker = Path(path) / INCOMPLETE_MARKER
    if marker.is_file():
        try:
            detail = marker.read_text(errors="replace").strip()[:300]
        except OSError:
            detail = ""
        if detail.startswith(f"pid {os.getpid()}:"):
            return  # this process is the writer, reading its own output before the final rename
        raise DataFormatError(f"{path}: an incomplete {what} (its writing was interrupted and never finished"
                              f"{': ' + detail if detail else ''}); write it again (with --overwrite)")


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.getsignal(s) for s in sigs}

    def hold(signum: int, _frame: object) -> None:
        got.append(signum)

    for s in sigs:
        if old[s] is not None:
            signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in old.items():
            if handler is not None:
                signal.signal(s, handler)
        if got:
            signal.raise_signal(got[0])


def _temp_sibling(target: Path, *, directory: bool) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.incomplete-"
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix="".join(target.suffixes[-1:]), dir=target.parent)
    os.close(fd)
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def replace_paths(pairs: Sequence[tuple[Path, Path]], *, remove: Sequence[Path] = ()) -> None:
    """Rename each ``(temporary, target)`` pair onto its target, with signals deferred.

    An existing target is moved aside first and deleted after every rename succeeded;
    paths in ``remove`` (stale companions of an old output) are deleted as well.
    """
    aside: list[Path] = []
    with deferred_signals():
        for tmp, target in pairs:
            if target.exists() or target.is_symlink():
                old = target.parent / f".{target.name}.old-{os.getpid()}-{len(aside)}"
                os.rename(target, old)
                aside.append(old)
            os.rename(tmp, target)
        for p in remove:
            if p.exists() or p.is_symlink():
                _remove(p)
    for old in aside:
        _remove(old)


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, overwrite: bool, what: str = "output",
               keep_partial: bool = False) -> Iterator[Path]:
    """Write a folder under a temporary name; rename it onto ``target`` when the block ends.

    Parameters
    ----------
    target : str or Path
        The folder to produce.
    overwrite : bool
        Whether an existing non-empty ``target`` may be replaced (checked first).
    what : str
        What is written ("dataset", "model"), recorded in the incomplete marker.
    keep_partial : bool
        On Ctrl-C or an error, keep what was written as ``<target>.incomplete`` (marked
        incomplete) instead of deleting it; the old ``target`` is left untouched either way.

    Yields
    ------
    pathlib.Path
        The temporary folder to write into (it holds :data:`INCOMPLETE_MARKER` until the end).
    """
    target = check_target(target, overwrite=overwrite, kind="dir")
    tmp = _temp_sibling(target, directory=True)
    marker = tmp / INCOMPLETE_MARKER
    marker.write_text(f"pid {os.getpid()}: {what} for {target.name}\n")
    try:
        yield tmp
    except BaseException:
        if keep_partial:
            partial = target.with_name(target.name + ".incomplete")
            with deferred_signals():
                if partial.exists():
                    _remove(partial)
                os.rename(tmp, partial)
        else:
            _remove(tmp)
        raise
    marker.unlink()
    replace_paths([(tmp, target)])


@contextlib.contextmanager
def atomic_file(target: str | Path, *, overwrite: bool) -> Iterator[Path]:
    """Write one file under a temporary name (same suffix); rename it onto ``target`` at the end.

    On Ctrl-C or an error the temporary file is deleted and the old ``target`` left as it was.
    """
    target = check_target(target, overwrite=overwrite, kind="file")
    tmp = _temp_sibling(target, directory=False)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    replace_paths([(tmp, target)])


@contextlib.contextmanager
def atomic_files(targets: Sequence[str | Path], *, overwrite: bool,
                 stale: Sequence[str | Path] = ()) -> Iterator[list[Path]]:
    """Like :func:`atomic_file` for several files that belong together (renamed together).

    Targets the block did not write (temporary file left empty) are not created; ``stale``
    paths (companions of an old output that the new one lacks) are deleted at the end.
    """
    paths = [check_target(t, overwrite=overwrite, kind="file") for t in targets]
    tmps: list[Path] = []
    try:
        for p in paths:
            tmps.append(_temp_sibling(p, directory=False))
        yield list(tmps)
    except BaseException:
        for t in tmps:
            _remove(t)
        raise
    pairs, remove = [], [Path(s) for s in stale]
    for tmp, p in zip(tmps, paths):
        if tmp.stat().st_size == 0:
            _remove(tmp)
            remove.append(p)
        else:
            pairs.append((tmp, p))
    replace_paths(pairs, remove=[r for r in remove if overwrite])


def is_incomplete_name(path: str | Path) -> bool:
    """Whether ``path`` is a temporary output left by a killed writer (see the module docstring)."""
    name = Path(path).name
    return name.startswith(".") and ".incomplete-" in name


def refuse_incomplete_name(path: str | Path, what: str) -> None:
    """Raise ``DataFormatError`` for a temporary output of a killed writer."""
    if is_incomplete_name(path):
        raise DataFormatError(f"{path}: an incomplete {what} left by an interrupted rt-decoder command "
                              "(its name says so); write it again")
