"""Imports run one way, down the layers (DESIGN.md): specs -> memory -> costmodel -> sim -> solver
-> search -> report -> commands -> cli. Every import in the package (module-level or inside a
function) is checked against the layer table below; an import that runs up a layer fails."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "apex_opt"

#: (module prefix, layer): the longest matching prefix wins. Same-layer imports are allowed.
LAYERS = [
    ("apex_opt.errors", 0), ("apex_opt.io", 1), ("apex_opt.bundled", 1), ("apex_opt.specs", 2),
    ("apex_opt.registry", 3), ("apex_opt.parallel", 3), ("apex_opt.shapes", 3), ("apex_opt.memory", 4),
    ("apex_opt.costmodel", 5), ("apex_opt.profiling", 6), ("apex_opt.sim", 6),
    ("apex_opt.solver", 7), ("apex_opt.search", 8), ("apex_opt.check", 8),
    ("apex_opt.estimate", 8), ("apex_opt.report", 9), ("apex_opt.commands", 10),
    ("apex_opt.cli", 11), ("apex_opt", 11),
]


def layer(module: str) -> int:
    best = max((p for p, _ in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return dict(LAYERS)[best]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("apex_opt")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("apex_opt"):
                continue
            if node.module is None or node.level and not node.module:
                # `from . import x`: each name is a submodule
                out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, target))
    return out


def _violations() -> list[str]:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        mod = _module_name(path)
        for line, target in _imports(path):
            if layer(target) > layer(mod):
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {mod} (layer {layer(mod)}) "
                           f"imports {target} (layer {layer(target)})")
    return bad


def test_no_import_runs_up_the_layers() -> None:
    bad = _violations()
    assert not bad, "imports running up the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("mod,target,upward", [
    ("apex_opt.solver.explain", "apex_opt.search.pipeline", True),
    ("apex_opt.search.pipeline", "apex_opt.solver.explain", False),
    ("apex_opt.specs.cluster", "apex_opt.memory", True),
    ("apex_opt.specs.cluster", "apex_opt.registry", True),   # the registry <-> specs cycle, broken
    ("apex_opt.registry", "apex_opt.specs.cluster", False),
])
def test_layer_table(mod, target, upward) -> None:
    assert (layer(target) > layer(mod)) is upward


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(target: str, mods: dict) -> str:
    """The module a target names (``pkg.func`` -> ``pkg``)."""
    while target not in mods and "." in target:
        target = target.rsplit(".", 1)[0]
    return target


def test_no_two_modules_import_each_other() -> None:
    """Same-layer cycles (registry <-> specs.cluster, search <-> solver.explain, costmodel <->
    costmodel.collectives were the known ones) are caught here: a package's ``__init__`` importing
    its own submodule counts, so does a submodule importing the package."""
    mods = _modules()
    edges = {m: {_resolve(t, mods) for _l, t in _imports(p)} - {m} for m, p in mods.items()}
    pairs = sorted({tuple(sorted((a, b))) for a, bs in edges.items() for b in bs
                    if a in edges.get(b, ())})
    assert not pairs, f"modules importing each other: {pairs}"
