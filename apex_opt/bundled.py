"""Bundled data files (models, clusters, devices, profiles, engines, examples): where they are
(importlib.resources), their names and their raw contents. No typed specs here: this module sits
below :mod:`apex_opt.specs` (which resolves bundled device names and engine files through it);
:mod:`apex_opt.registry` builds the typed specs on top.

Names resolve to bundled files; anything that looks like a path (has a suffix or a separator and
exists) is read from disk instead.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from .errors import InputError
from .io import load_data, parse_json, parse_yaml

_DATA = "apex_opt.data"


def data_dir(*parts: str):
    """Traversable for a bundled data folder, e.g. ``data_dir('profiles', 'h100-sxm-80gb')``."""
    ref = resources.files(_DATA)
    for p in parts:
        ref = ref / p
    return ref


def _names(folder: str, suffix: str) -> list[str]:
    return sorted(f.name[: -len(suffix)] for f in data_dir(folder).iterdir() if f.name.endswith(suffix))


def model_names() -> list[str]:
    return _names("models", ".json")


def cluster_names() -> list[str]:
    return _names("clusters", ".yaml")


def device_names() -> list[str]:
    return _names("devices", ".yaml")


def profile_names() -> list[str]:
    return sorted(f.name for f in data_dir("profiles").iterdir() if f.is_dir())


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or "\\" in ref or ref.endswith((".json", ".yaml", ".yml")) or Path(ref).exists()


def _read_bundled(folder: str, name: str, suffix: str, kind: str, known: list[str]) -> tuple[Any, str]:
    f = data_dir(folder) / f"{name}{suffix}"
    if not f.is_file():
        raise InputError(f"unknown {kind} name {name!r}; bundled: {', '.join(known)} "
                         f"(or pass a path to a file)")
    text = f.read_text(encoding="utf-8")
    src = f"<bundled {kind} {name}>"
    return (parse_json(text, src) if suffix == ".json" else parse_yaml(text, src)), src


def load_model_config(ref: str) -> tuple[dict, str, str]:
    """Return (HF config dict, source label, model name) for a bundled name or a config.json path."""
    if _looks_like_path(ref):
        p = Path(ref)
        if p.is_dir():
            p = p / "config.json"
        data = load_data(p)
        name = p.parent.name if p.name == "config.json" else p.stem
        src = str(p)
    else:
        data, src = _read_bundled("models", ref, ".json", "model", model_names())
        name = ref
    if not isinstance(data, dict):
        raise InputError("expected a JSON object (an HF config.json)", source=src)
    return data, src, name


