"""Where numba's compiled kernels are cached, and the one-time notice when they compile.

Every numba kernel of the project (``rt_decoder.deconv._kernels``,
``bindings.suite2p_live._kernels``) is built with :func:`compile_cached`:

- the on-disk cache lives in ``NUMBA_CACHE_DIR`` when the user sets it, else in
  ``$XDG_CACHE_HOME/rt-decoder/numba`` or ``~/.cache/rt-decoder/numba``, so that it works
  when the package directory is read-only (a system-wide install); if that directory cannot
  be created, numba's own choice applies (the package's ``__pycache__``, then
  ``~/.cache/numba``);
- before the first kernel that is not in the cache compiles, :data:`COMPILE_NOTICE` is
  printed once per process on stderr (a first start on a machine takes tens of seconds and
  would otherwise look hung); later starts load the kernels in well under a second.

This module imports the standard library only; numba when a kernel is built.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

#: printed on stderr (once per process) before the first kernel that is not in the cache compiles
COMPILE_NOTICE = ("rt-decoder: compiling kernels, once per machine (up to a few minutes; later starts load "
                  "them from {cache})")

_lock = threading.RLock()
_state = {"configured": False, "noticed": False}


def configure_cache() -> None:
    """Point numba's cache at the per-user directory (unless ``NUMBA_CACHE_DIR`` is set); idempotent."""
    import numba

    with _lock:
        if _state["configured"]:
            return
        _state["configured"] = True
        if os.environ.get("NUMBA_CACHE_DIR") or numba.config.CACHE_DIR:  # type: ignore[attr-defined]
            return
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "rt-decoder", "numba")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError:
            return
        if os.access(path, os.W_OK):
            numba.config.CACHE_DIR = path  # type: ignore[attr-defined]


def cache_dir() -> str:
    """The cache directory in use (after :func:`configure_cache`)."""
    import numba

    configure_cache()
    return str(numba.config.CACHE_DIR) or "the package's __pycache__ (numba's default)"  # type: ignore[attr-defined]


def _in_cache(disp: Any, sig: Any) -> bool:
    # numba's own index lookup (the key Dispatcher.compile uses: signature, CPU, source stamp);
    # anything unexpected counts as "not cached" (at worst one notice too many)
    try:
        key = disp._cache._index_key(sig, disp.targetctx.codegen())
        return key in disp._cache._cache_file._load_index()
    except Exception:  # pragma: no cover - numba internals changed
        return False


def notice_compiling() -> None:
    """Print :data:`COMPILE_NOTICE` on stderr unless this process already did."""
    with _lock:
        if _state["noticed"]:
            return
        _state["noticed"] = True
    print(COMPILE_NOTICE.format(cache=cache_dir()), file=sys.stderr, flush=True)


def compile_cached(py_func: Callable[..., Any], signatures: Sequence[Any], **options: Any) -> Any:
    """``numba.njit(signatures, cache=True, **options)(py_func)``, announcing a real compilation.

    Returns the dispatcher, compiled for exactly ``signatures`` (further compilation disabled).
    """
    import numba

    configure_cache()
    with _lock:
        disp = numba.njit(cache=True, **options)(py_func)
        if not all(_in_cache(disp, sig) for sig in signatures):
            notice_compiling()
        for sig in signatures:
            disp.compile(sig)
        disp.disable_compile()
    return disp


def jit_cached(signatures: Sequence[Any], **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Decorator form of :func:`compile_cached` (compiles, or loads, when applied)."""
    def wrap(py_func: Callable[..., Any]) -> Any:
        return compile_cached(py_func, signatures, **options)

    return wrap
