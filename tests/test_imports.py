"""Imports flow one way: ``cli`` -> ``bindings``/``streaming`` -> ``rt_decoder`` (-> numpy, numba, ...).

The core package ``rt_decoder`` never imports ``streaming``, ``bindings``, ``cli`` or zmq,
not even inside a function; ``streaming`` and ``bindings`` never import ``cli``. Checked
twice: statically (the AST of every module: every ``import``/``from ... import``,
relative ones resolved, and ``importlib.import_module("...")`` with a literal name) and at
run time (a fresh interpreter imports every module of ``rt_decoder`` and looks at
``sys.modules``).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: package -> top-level names it must never import
FORBIDDEN: dict[str, frozenset[str]] = {
    "rt_decoder": frozenset({"streaming", "bindings", "cli", "zmq"}),
    "streaming": frozenset({"cli"}),
    "bindings": frozenset({"cli"}),
}


def _modules(package: str) -> dict[str, Path]:
    """Every module of ``package`` (pkgutil.walk_packages) -> its source file."""
    root = REPO / package
    found = {package: root / "__init__.py"}
    for info in pkgutil.walk_packages([str(root)], prefix=f"{package}."):
        spec = importlib.util.find_spec(info.name)
        assert spec is not None and spec.origin is not None, info.name
        found[info.name] = Path(spec.origin)
    return found


def _imported_names(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, functions and branches included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                parts = module.split(".")
                base = parts if is_package else parts[:-1]
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            out.append((node.lineno, node.args[0].value))
    return out


def _violations(package: str) -> list[str]:
    bad = []
    for module, path in sorted(_modules(package).items()):
        for line, name in _imported_names(path, module):
            if name.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(REPO)}:{line}: {module} imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_the_walk_sees_every_module_on_disk(package: str) -> None:
    """pkgutil finds every .py file of the package (so nothing escapes the checks below)."""
    on_disk = {p for p in (REPO / package).rglob("*.py")
               if all((d / "__init__.py").is_file() for d in p.relative_to(REPO).parents if str(d) != ".")}
    walked = set(_modules(package).values())
    assert on_disk - walked == set()
    assert len(walked) > 3


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_what_its_package_must_not(package: str) -> None:
    assert _violations(package) == []


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    src = tmp_path / "mod.py"
    src.write_text("import numpy\n"
                   "def f():\n    import zmq.asyncio\n    from streaming.transport import X\n"
                   "    if True:\n        from ..cli import main\n"
                   "    importlib.import_module('bindings.virtual_rig')\n")
    names = [n for _, n in _imported_names(src, "rt_decoder.sub.mod")]
    assert names == ["numpy", "zmq.asyncio", "streaming.transport", "rt_decoder.cli", "bindings.virtual_rig"]
    found = [n for n in names if n.split(".")[0] in FORBIDDEN["rt_decoder"]]
    assert found == ["zmq.asyncio", "streaming.transport", "bindings.virtual_rig"]  # rt_decoder.cli is inside


def test_importing_every_core_module_loads_none_of_the_outer_packages() -> None:
    modules = sorted(_modules("rt_decoder"))
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "outer = sorted(m for m in sys.modules if m.split('.')[0] in ('streaming', 'bindings', 'cli', 'zmq'))\n"
            "print(json.dumps({'imported': len([m for m in sys.modules if m.startswith('rt_decoder')]), "
            "'outer': outer}))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["outer"] == []
    assert result["imported"] >= len(modules)
