"""Reading user files into pydantic models with one-line, field-naming errors.

Every loader raises :class:`apex_opt.errors.InputError` naming the file, the field path and the
value, never a raw traceback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import InputError

M = TypeVar("M", bound=BaseModel)


def read_text(path: str | Path) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("file not found", source=str(p)) from None
    except IsADirectoryError:
        raise InputError("is a directory, expected a file", source=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read file ({exc.__class__.__name__}: {exc})", source=str(p)) from None


def parse_yaml(text: str, source: str) -> Any:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"malformed YAML{where}: {problem}", source=source) from None
    return data


def parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                         source=source) from None


def load_data(path: str | Path) -> Any:
    """Load a YAML or JSON file (by suffix; YAML is a superset so unknown suffixes parse as YAML)."""
    text = read_text(path)
    if str(path).endswith(".json"):
        return parse_json(text, str(path))
    return parse_yaml(text, str(path))


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def format_validation_error(exc: ValidationError, source: str) -> InputError:
    """First error of a pydantic ValidationError as a one-line InputError."""
    err = exc.errors()[0]
    loc = _loc(tuple(p for p in err.get("loc", ()) if not (isinstance(p, str) and p.startswith("function-"))))
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        msg = "unknown field (check the spelling; see the schema)"
    elif kind == "missing":
        msg = "required field is missing"
        return InputError(msg, source=source, field=loc)
    else:
        msg = err.get("msg", "invalid value")
    value = err.get("input")
    if isinstance(value, (dict, list)) and kind != "extra_forbidden":
        value = None
    more = len(exc.errors()) - 1
    if more:
        msg += f" (+{more} more error{'s' if more > 1 else ''})"
    return InputError(msg, source=source, field=loc, value=value)


def validate(model: type[M], data: Any, source: str) -> M:
    if data is None:
        raise InputError("file is empty", source=source)
    if not isinstance(data, dict):
        raise InputError(f"expected a mapping at the top level, got {type(data).__name__}", source=source)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, source) from None


def load_model_file(model: type[M], path: str | Path) -> M:
    return validate(model, load_data(path), str(path))


def finite_positive(value: float, name: str) -> float:
    if value is None or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0")
    return value
