"""Shared output helpers: deterministic JSON and rich tables on stdout."""

from __future__ import annotations

import json
import sys

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table


def to_json(obj: BaseModel | dict | list) -> str:
    """Deterministic JSON of a pydantic model (or plain data): same input → same bytes."""
    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)


def console() -> Console:
    """Console on stdout, wide enough for our tables when piped."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160,
                   highlight=False, soft_wrap=False)


def table(title: str | None, columns: list[str], rows: list[list], *, right_from: int = 1,
          no_wrap: tuple[int, ...] = ()) -> Table:
    """A left-titled table; columns from ``right_from`` are right-aligned numbers, the columns in
    ``no_wrap`` (e.g. plan labels) are never folded."""
    t = Table(title=title, title_justify="left", header_style="bold", show_lines=False)
    for i, c in enumerate(columns):
        right = i >= right_from
        t.add_column(c, justify="right" if right else "left", no_wrap=right or i in no_wrap,
                     overflow="ellipsis" if right else "fold")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t


def gib(n: float) -> str:
    return f"{n / 1024 ** 3:.1f}"
