"""Typed settings trees: field metadata, a validating builder, a TOML renderer.

Every settings class of rt-decoder is a frozen dataclass. A scalar field declared with
:func:`option` carries its meaning, bounds and allowed values; a field whose type is
another settings dataclass is a nested section (declared with :func:`section`). From that
alone this module

- validates an instance (:func:`validate`; a class calls it in ``__post_init__``, so a
  value out of bounds fails at construction however the object is made),
- builds a tree from a nested mapping such as parsed TOML (:func:`build`): types checked
  (an int is accepted for a float), bounds and choices checked, unknown keys refused
  naming them and the known ones, errors naming the full dotted section
  (``[reconstruction.live] lag_frames = 500 is above its maximum 120``); keys a class
  lists in ``moved_keys`` (old name -> dotted new place) still load, with a
  :class:`SettingsDeprecationWarning`,
- renders a tree as TOML with every option's default, meaning and bounds
  (:func:`render_toml`), which :func:`build` reads back to the same defaults.

Defaults come from an instance, not from the class: a nested section's defaults are those
of its parent's default (``LiveSettings().optim`` is the live step rule, not
``OptimSettings()``), so the builder updates ``dataclasses.replace(parent_default, ...)``.

Imports the standard library and ``rt_decoder.errors`` only.
"""

from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from rt_decoder.errors import ConfigError

T = TypeVar("T")

#: metadata keys of an option field
_HELP, _LO, _HI, _CHOICES = "help", "min", "max", "choices"
#: metadata of a section field: render its keys commented out (defaults that a later layer,
#: e.g. a model's recorded settings, may replace unless the file sets them)
COMMENTED = "commented"
#: metadata of a field that is not part of the file format (built in code)
INTERNAL = "internal"


class SettingsDeprecationWarning(FutureWarning):
    """A settings key was found at its old place; it is read there for one more release.

    A ``FutureWarning`` so that it is shown to users by default.
    """


def option(default: Any, help: str, lo: float | None = None, hi: float | None = None,
           choices: Sequence[str] | None = None) -> Any:
    """A scalar settings field: default, one-line meaning, inclusive bounds, allowed values."""
    meta = {_HELP: help, _LO: lo, _HI: hi, _CHOICES: tuple(choices) if choices is not None else None}
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, help: str = "", *, commented: bool = False, default: Any = None) -> Any:
    """A nested settings field of type ``cls`` (default ``cls()`` or the given instance)."""
    factory = (lambda: default) if default is not None else cls
    return dataclasses.field(default_factory=factory, metadata={_HELP: help or _first_line(cls.__doc__),
                                                                 COMMENTED: commented})


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of ``cls`` (cached)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _is_settings(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get(INTERNAL)]


def _where(path: str) -> str:
    return f"[{path}]" if path else "config"


def check_value(f: dataclasses.Field[Any], tp: Any, value: Any, name: str) -> Any:
    """``value`` checked against field ``f`` of type ``tp`` (int -> float converted).

    Raises ConfigError naming ``name`` (e.g. ``[reconstruction.live] lag_frames``) and the value.
    """
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
    choices = f.metadata.get(_CHOICES)
    if choices is not None and value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    lo, hi = f.metadata.get(_LO), f.metadata.get(_HI)
    if lo is not None and value < lo:
        raise ConfigError(f"{name} = {value!r} is below its minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name} = {value!r} is above its maximum {hi}")
    return value


def validate(obj: Any) -> None:
    """Check every option field of the settings instance ``obj`` (types, bounds, choices).

    Call it from ``__post_init__``; errors name ``ClassName.field``.
    """
    cls = type(obj)
    hints = _hints(cls)
    for f in _fields(cls):
        tp = hints[f.name]
        if _is_settings(tp) or _HELP not in f.metadata:
            continue
        check_value(f, tp, getattr(obj, f.name), f"{cls.__name__}.{f.name}")


def build(cls: type[T], data: Mapping[str, Any], *, base: T | None = None, path: str = "") -> T:
    """A validated ``cls`` from a nested mapping; unset keys keep ``base`` (default ``cls()``).

    Parameters
    ----------
    cls : settings dataclass type
    data : mapping of field name -> value (a nested mapping for a nested section)
    base : the instance whose values unset keys keep (its nested sections are the bases of
        the nested tables)
    path : dotted section name used in error messages (``"reconstruction.live"``)

    Raises
    ------
    ConfigError
        unknown keys (named, with the known ones), wrong types, values out of bounds or
        not among the choices, or whatever the class's own validation refuses; the
        message names the dotted section.
    """
    where = _where(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table, got {data!r}")
    data = _apply_moved(cls, dict(data), path)
    fields = {f.name: f for f in _fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        what = "section(s)" if not path else "key(s)"
        raise ConfigError(f"{where} has unknown {what} {unknown}; known: {sorted(fields)}")
    base_obj: Any = cls() if base is None else base
    hints = _hints(cls)
    updates: dict[str, Any] = {}
    for key, value in data.items():
        f, tp = fields[key], hints[key]
        sub = f"{path}.{key}" if path else key
        if _is_settings(tp):
            updates[key] = value if isinstance(value, tp) else build(tp, value, base=getattr(base_obj, key), path=sub)
        else:
            updates[key] = check_value(f, tp, value, f"{where} {key}")
    try:
        return dataclasses.replace(base_obj, **updates)
    except ConfigError as exc:
        if not path:
            raise
        raise ConfigError(f"{where} {exc}") from None
    except TypeError as exc:  # a class whose own fields are not all declared (should not happen)
        raise ConfigError(f"{where} {exc}") from None


def _apply_moved(cls: type, data: dict[str, Any], path: str) -> dict[str, Any]:
    """Move keys listed in ``cls.moved_keys`` (old -> "a.b.new") to their new place, warning."""
    moved: Mapping[str, str] = getattr(cls, "moved_keys", {})
    for old in [k for k in data if k in moved]:
        new = moved[old]
        *parents, leaf = new.split(".")
        where = _where(path)
        new_where = _where(".".join([p for p in (path, *parents) if p]))
        warnings.warn(f"{where} {old} is deprecated at this place: write it as {new_where} {leaf} "
                      "(read from the old place for one more release)", SettingsDeprecationWarning, stacklevel=4)
        table = data
        for p in parents:
            nxt = table.get(p, {})
            if not isinstance(nxt, Mapping):
                raise ConfigError(f"{new_where} must be a table, got {nxt!r}")
            table[p] = nxt = dict(nxt)
            table = nxt
        if leaf in table:
            raise ConfigError(f"{where} {old} and {new_where} {leaf} are the same setting; give it once")
        table[leaf] = data.pop(old)
    return data


def to_dict(obj: Any) -> dict[str, Any]:
    """The settings tree as nested plain dicts (what :func:`build` reads back)."""
    out: dict[str, Any] = {}
    for f in _fields(type(obj)):
        v = getattr(obj, f.name)
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else v
    return out


def toml_value(v: Any) -> str:
    """A TOML literal for a bool, int, float or str."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{v!r} cannot be written as TOML")
    return repr(v)


def _describe(f: dataclasses.Field[Any]) -> str:
    text = str(f.metadata.get(_HELP, ""))
    choices = f.metadata.get(_CHOICES)
    lo, hi = f.metadata.get(_LO), f.metadata.get(_HI)
    if choices is not None:
        text += f" (one of: {', '.join(map(str, choices))})"
    elif lo is not None or hi is not None:
        text += f" (range {'-inf' if lo is None else lo}..{'inf' if hi is None else hi})"
    return text


def render_toml(obj: Any, path: str = "", *, help: str = "", commented: bool = False) -> list[str]:
    """TOML lines for the settings instance ``obj`` at table ``path`` (recursively).

    Each key is preceded by a comment with its meaning and bounds; nested sections follow
    as ``[path.name]`` tables. ``commented``: keys written as comments (``# key = value``).
    """
    cls = type(obj)
    hints = _hints(cls)
    lines: list[str] = []
    scalars = [f for f in _fields(cls) if not _is_settings(hints[f.name])]
    nested = [f for f in _fields(cls) if _is_settings(hints[f.name])]
    if path:
        text = help or _first_line(cls.__doc__)
        lines.append(f"# {text}" if text.startswith(f"[{path}]") else f"# [{path}] -- {text}")
        lines.append(f"[{path}]")
    for f in scalars:
        lines.append(f"# {_describe(f)}")
        lines.append(f"{'# ' if commented else ''}{f.name} = {toml_value(getattr(obj, f.name))}")
    if path:
        lines.append("")
    for f in nested:
        sub = f"{path}.{f.name}" if path else f.name
        lines += render_toml(getattr(obj, f.name), sub, help=str(f.metadata.get(_HELP, "")),
                             commented=commented or bool(f.metadata.get(COMMENTED)))
    return lines
