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
          no_wrap: tuple[int, ...] = (), width: int | None = None,
          optional: tuple[int, ...] = ()) -> Table:
    """A left-titled table; columns from ``right_from`` are right-aligned numbers, the columns in
    ``no_wrap`` (e.g. ranks) are kept whole like them. A table wider than ``width`` (default: the
    terminal's, 160 when piped) is narrowed column by column (:func:`fit_widths`): first the
    numbers' headers wrap between their words, then text columns fold down to
    :data:`TEXT_MIN_WIDTH` characters, then, on a very narrow terminal, headers break inside words
    and text folds further -- but a number is never cut while it can be helped. Before headers
    break inside words, ``optional`` columns are left out, the last listed first, and the caption
    says which."""
    # a short row leaves its last cells blank, as rich's add_row does
    cells = [[str(x) for x in r] + [""] * (len(columns) - len(r)) for r in rows]
    total = width or console().width
    keep = list(range(len(columns)))

    def floors(idx: list[int]) -> tuple[list[int], ...]:
        return _floors([columns[j] for j in idx], [[r[j] for j in idx] for r in cells],
                       [j >= right_from or j in no_wrap for j in idx])

    def room(idx: list[int]) -> int:
        # per column: one border and one space of padding on each side, plus the closing border
        return total - 3 * len(idx) - 1

    fl = floors(keep)
    for i in reversed(optional):  # while headers would have to break inside words
        if sum(fl[2]) <= room(keep):
            break
        keep.remove(i)
        fl = floors(keep)
    hidden = [c for j, c in enumerate(columns) if j not in keep]
    natural, headers, texts, tight = fl
    widths = fit_widths(natural, [headers, texts, tight], room(keep))
    caption = (f"{len(hidden)} column(s) left out at this terminal width: {', '.join(hidden)}"
               " (a wider terminal or --json shows them)") if hidden else None
    t = Table(title=title, title_justify="left", header_style="bold", show_lines=False,
              caption=caption, caption_justify="left")
    for n, j in enumerate(keep):
        t.add_column(columns[j], justify="right" if j >= right_from else "left", overflow="fold",
                     width=widths[n] if widths else None)
    for r in cells:
        t.add_row(*[r[j] for j in keep])
    return t


def _floors(columns: list[str], cells: list[list[str]],
            whole: list[bool]) -> tuple[list[int], list[int], list[int], list[int]]:
    """Per column: its natural width, and its narrowest once numbers' headers wrap, once text
    folds to :data:`TEXT_MIN_WIDTH`, and at the tightest; ``whole`` marks the columns whose
    cells are never cut (numbers, ``no_wrap``)."""
    natural, headers, texts, tight = [], [], [], []
    for i, c in enumerate(columns):
        widest = max((cell_len(r[i]) for r in cells), default=0)
        natural.append(max(widest, cell_len(c), 1))
        if whole[i]:  # whole cells; the header wraps
            headers.append(max([widest, 1, *(cell_len(w) for w in c.split())]))
            texts.append(headers[-1])
            tight.append(max(widest, 1))
        else:  # text folds, but not below a readable width
            headers.append(natural[-1])
            texts.append(min(natural[-1], TEXT_MIN_WIDTH))
            tight.append(min(natural[-1], TEXT_HARD_MIN_WIDTH))
    return natural, headers, texts, tight


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
