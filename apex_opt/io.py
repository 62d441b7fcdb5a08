"""Reading user files into pydantic models with one-line, field-naming errors.

Every loader raises :class:`apex_opt.errors.InputError` naming the file, the field path and the
value, never a raw traceback.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import typing
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


class _DuplicateKey(yaml.YAMLError):
    """A mapping key given twice (raised while loading, turned into an InputError)."""

    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


#: libyaml's parser where PyYAML was built with it (4-5x faster on the bundled data files, same
#: documents); the pure-Python SafeLoader otherwise
_SafeBase = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeBase):  # type: ignore[misc, valid-type]
    """SafeLoader that rejects a key given twice in one mapping (PyYAML silently keeps the last)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:  # the keys written here; '<<' merges may be overridden
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue  # unhashable key: construct_mapping reports it
        line = key_node.start_mark.line + 1
        if key in seen:
            raise _DuplicateKey(key, line, seen[key])
        seen[key] = line
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _construct_unique_mapping)

# PyYAML follows YAML 1.1, where ``1e6`` and ``1.0e6`` (no sign after the e) are strings; YAML 1.2
# and every user read them as floats. Resolve them as floats too (the 1.1 forms still work).
_FLOAT_1_2 = re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$""")
_UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2,
                                       list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML safely; syntax errors and duplicate keys become an InputError naming the line."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise InputError(f"key given twice in one mapping (lines {exc.first} and {exc.line}); "
                         f"remove one", source=source, field=str(exc.key)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"malformed YAML{where}: {problem}", source=source) from None
    return data


class DuplicateJSONKey(ValueError):
    """A JSON object with a key given twice (raised by :func:`unique_json_keys`)."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def unique_json_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json object_pairs_hook that refuses a key given twice (json.loads keeps the last one
    silently, as PyYAML does; parse_yaml refuses it too)."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateJSONKey(k)
        out[k] = v
    return out


def parse_json(text: str, source: str) -> Any:
    if not text.strip():
        raise InputError("file is empty", source=source)
    try:
        return json.loads(text, object_pairs_hook=unique_json_keys)
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                         source=source) from None
    except DuplicateJSONKey as exc:
        raise InputError("key given twice in one object; remove one", source=source,
                         field=exc.key) from None


def load_data(path: str | Path) -> Any:
    """Load a YAML or JSON file (by suffix; YAML is a superset so unknown suffixes parse as YAML)."""
    text = read_text(path)
    if str(path).endswith(".json"):
        return parse_json(text, str(path))
    return parse_yaml(text, str(path))


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic marks errors in a dict key this way; the key is already there
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _clean_loc(err: dict) -> tuple:
    return tuple(p for p in err.get("loc", ()) if not (isinstance(p, str) and p.startswith("function-")))


def _misspelt(err: dict, errors: list[dict]) -> dict | None:
    """For an unknown key, the "missing" error of the closest required key beside it (a typo)."""
    loc = _clean_loc(err)
    if not loc:
        return None
    beside = {str(_clean_loc(e)[-1]): e for e in errors
              if e.get("type") == "missing" and _clean_loc(e) and _clean_loc(e)[:-1] == loc[:-1]}
    close = difflib.get_close_matches(str(loc[-1]), list(beside), n=1, cutoff=0.6)
    return beside[close[0]] if close else None


def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic model classes inside a field annotation (through Optional, Union, Annotated,
    list/tuple/dict values)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += _model_classes(arg)
    return out


def _fields_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """Field names (and aliases) of the model that the location ``loc`` (without its last part)
    points into, or [] when it cannot be followed."""
    classes = [model] if model is not None else []
    for part in loc[:-1]:
        if isinstance(part, int) or not classes:
            continue  # list index: the element type is what the annotation already gave
        nxt: list[type[BaseModel]] = []
        for c in classes:
            f = c.model_fields.get(str(part))
            if f is not None:
                nxt += _model_classes(f.annotation)
        classes = nxt
    names: list[str] = []
    for c in classes:
        for name, f in c.model_fields.items():
            names.append(f.alias or name)
    return names


def format_validation_error(exc: ValidationError, source: str,
                            model: type[BaseModel] | None = None) -> InputError:
    """The most telling error of a pydantic ValidationError as a one-line InputError.

    An unknown field is reported before anything else: a misspelt key also makes the real key
    "missing", and the misspelling is what the user must fix. With ``model`` (the class being
    validated) an unknown key is also matched against the optional fields beside it, so
    ``ttft_msec`` gets "did you mean 'ttft_ms'?"."""
    errors = exc.errors()
    err = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])
    loc = _loc(_clean_loc(err))
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        msg = "unknown field (check the spelling; see the schema)"
        typo = _misspelt(err, errors)
        if typo is not None:  # the misspelt key also made the real one "missing": one mistake
            msg += f"; did you mean '{_clean_loc(typo)[-1]}'?"
            errors = [e for e in errors if e is not typo]
        else:
            loc_t = _clean_loc(err)
            close = difflib.get_close_matches(str(loc_t[-1]) if loc_t else "",
                                              _fields_at(model, loc_t), n=1, cutoff=0.6)
            if close:
                msg += f"; did you mean '{close[0]}'?"
    elif kind == "missing":
        msg = "required field is missing"
        return InputError(msg, source=source, field=loc)
    elif kind == "value_error" and "error" in err.get("ctx", {}):
        msg = str(err["ctx"]["error"])  # our own validator's message, without pydantic's prefix
    else:
        msg = err.get("msg", "invalid value")
    value = err.get("input")
    if isinstance(value, (dict, list)) and kind != "extra_forbidden":
        value = None
    # a parent container's own error (e.g. a list left "too short" because its only item failed)
    # is a consequence of the first error, not another mistake to count
    loc0 = tuple(err.get("loc", ()))
    more = sum(1 for e in errors if e is not err
               and not (len(tuple(e.get("loc", ()))) < len(loc0)
                        and loc0[:len(tuple(e.get("loc", ())))] == tuple(e.get("loc", ()))))
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
        raise format_validation_error(exc, source, model) from None


def load_model_file(model: type[M], path: str | Path) -> M:
    return validate(model, load_data(path), str(path))


def finite_positive(value: float, name: str) -> float:
    if value is None or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0")
    return value
