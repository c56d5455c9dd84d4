"""rt-decoder: real-time movie decoding from live two-photon ROI streams.

The Python API (``rt_decoder.api``, imported on first use so ``import rt_decoder`` stays
cheap): :func:`simulate`, :func:`deconvolve`, :func:`load_model`, :func:`reconstruct`,
:func:`demo_model_path` and :class:`Reconstruction`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("Reconstruction", "deconvolve", "demo_model_path", "load_model", "reconstruct", "simulate")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from rt_decoder import api

        return getattr(api, name)
    raise AttributeError(f"module 'rt_decoder' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API))
