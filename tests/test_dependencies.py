"""Every third-party module the package imports is a declared dependency (core or an extra):
a fresh `pip install -e .` must run `apex-opt solve` (the README's first command)."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: distribution name -> the module it provides, where they differ
MODULE_OF = {"pyyaml": "yaml", "nvidia-ml-py": "pynvml"}


def _declared() -> tuple[set[str], set[str]]:
    text = (ROOT / "pyproject.toml").read_text()

    def names(block: str) -> set[str]:
        return {MODULE_OF.get(m.lower(), m.lower().replace("-", "_"))
                for m in re.findall(r'"([A-Za-z0-9_.-]+)\s*[<>=!~]', block)}

    core = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    extras = re.search(r"^\[project\.optional-dependencies\](.*?)^\[", text, re.S | re.M).group(1)
    return names(core), names(extras)


def _imported() -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted((ROOT / "apex_opt").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top != "apex_opt" and top not in sys.stdlib_module_names and top != "__future__":
                    out.setdefault(top, str(path.relative_to(ROOT)))
    return out


def test_every_third_party_import_is_declared():
    core, extras = _declared()
    assert {"ortools", "numpy", "pydantic", "yaml", "click", "rich", "packaging"} <= core
    missing = {m: f for m, f in _imported().items() if m not in core | extras}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_core_does_not_import_an_extra_at_module_level():
    """plot / ray / profile extras stay optional: only imported inside functions."""
    core, extras = _declared()
    optional = extras - core
    offenders = []
    for path in sorted((ROOT / "apex_opt").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:  # module level only
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                    and node.module else [])
            offenders += [f"{path.relative_to(ROOT)}: {m}" for m in mods if m.split(".")[0] in optional]
    assert not offenders, offenders
