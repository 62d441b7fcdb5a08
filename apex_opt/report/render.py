"""Shared output helpers: deterministic JSON and rich tables on stdout."""

from __future__ import annotations

import json
import sys

from pydantic import BaseModel
from rich.cells import cell_len
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


#: narrowest a folding text column (plan labels, names) gets before numbers' headers break
TEXT_MIN_WIDTH = 24
#: ... and after them, on a very narrow terminal
TEXT_HARD_MIN_WIDTH = 10


def table(title: str | None, columns: list[str], rows: list[list], *, right_from: int = 1,
          no_wrap: tuple[int, ...] = (), width: int | None = None) -> Table:
    """A left-titled table; columns from ``right_from`` are right-aligned numbers, the columns in
    ``no_wrap`` (e.g. ranks) are kept whole like them. A table wider than ``width`` (default: the
    terminal's, 160 when piped) is narrowed column by column (:func:`fit_widths`): first the
    numbers' headers wrap between their words, then text columns fold down to
    :data:`TEXT_MIN_WIDTH` characters, then, on a very narrow terminal, headers break inside words
    and text folds further -- but a number is never cut while it can be helped."""
    cells = [[str(x) for x in r] for r in rows]
    natural, headers, texts, tight = [], [], [], []
    for i, c in enumerate(columns):
        widest = max((cell_len(r[i]) for r in cells if i < len(r)), default=0)
        natural.append(max(widest, cell_len(c), 1))
        if i >= right_from or i in no_wrap:  # whole cells; the header wraps
            headers.append(max([widest, 1, *(cell_len(w) for w in c.split())]))
            texts.append(headers[-1])
            tight.append(max(widest, 1))
        else:  # text folds, but not below a readable width
            headers.append(natural[-1])
            texts.append(min(natural[-1], TEXT_MIN_WIDTH))
            tight.append(min(natural[-1], TEXT_HARD_MIN_WIDTH))
    # per column: one border and one space of padding on each side (plus the closing border)
    budget = (width or console().width) - 3 * len(columns) - 1
    widths = fit_widths(natural, [headers, texts, tight], budget)
    t = Table(title=title, title_justify="left", header_style="bold", show_lines=False)
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i >= right_from else "left", overflow="fold",
                     width=widths[i] if widths else None)
    for r in cells:
        t.add_row(*r)
    return t


def fit_widths(natural: list[int], floors: list[list[int]], budget: int) -> list[int] | None:
    """Column widths summing to at most ``budget``, or None when the ``natural`` widths fit. Each
    floor in turn (e.g. readable, then tight): one character at a time, the column with the most
    room left above that floor gives it up. At the last floor the widths stop there even when
    they do not fit (the terminal then wraps or crops the table)."""
    if sum(natural) <= budget:
        return None
    widths = list(natural)
    for floor in floors:
        excess = sum(widths) - budget
        while excess > 0:
            i = max(range(len(widths)), key=lambda j: (widths[j] - floor[j], -j))
            if widths[i] <= floor[i]:
                break
            widths[i] -= 1
            excess -= 1
        if excess <= 0:
            break
    return widths


def gib(n: float) -> str:
    return f"{n / 1024 ** 3:.1f}"
