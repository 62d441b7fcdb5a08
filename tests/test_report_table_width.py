"""Rich tables on terminals narrower than the table: the numbers stay whole, text folds, headers
wrap (apex_opt.report.render.table / fit_widths)."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from apex_opt.report.render import fit_widths, table

# the shape of solve's ranked-plans table: rank, plan label, then numbers
COLUMNS = ["#", "plan", "GPUs", "TTFT p90 ms", "TPOT p90 ms", "E2E p90 s", "dropped", "tok/s",
           "J/token", "attain.", "SLO met", "obj: E2E mean s"]
ROWS = [[1, "1xTP8-wfp8-kvfp8@h100(seqs1024,tok8192)", 8, 118, "11.0", "5.00", 0, 716, "3.465",
         "1.000", "yes", "2.598"],
        [12, "1xTP8-wfp8-kvfp8@h100(seqs1024,tok8192) + 2xTP8-wfp8-kvfp8@a100(seqs256,tok2048)",
         24, 238, "12.4", "5.47", "3 (1%)", 716, "7.992", "0.994", "no", "10.83"]]


def _render(width: int, **kw) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=width, highlight=False, soft_wrap=False, color_system=None)
    con.print(table("ranked plans", COLUMNS, ROWS, right_from=2, no_wrap=(0,), width=width, **kw))
    return buf.getvalue()


def _body_cells(text: str) -> list[list[str]]:
    """The stripped cells of every body line (between the header rule and the bottom rule)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("┡"))
    return [[c.strip() for c in ln.strip("│").split("│")] for ln in lines[start + 1:]
            if ln.startswith("│")]


@pytest.mark.parametrize("width", [100, 120, 160])
def test_every_number_is_printed_whole_on_one_line(width):
    text = _render(width)
    assert max(len(ln) for ln in text.splitlines()) <= width
    cells = _body_cells(text)
    numbers = [str(v) for r in ROWS for v in r[2:]] + [str(r[0]) for r in ROWS]
    flat = [c for row in cells for c in row]
    for n in numbers:
        assert n in flat, f"{n!r} cut or wrapped at width {width}"
    assert "…" not in text


def test_a_long_plan_label_folds_instead_of_squeezing_the_numbers():
    cells = _body_cells(_render(120))
    second = next(i for i, row in enumerate(cells) if row[0] == "12")
    pieces = [row[1] for row in cells[second:]]
    assert len(pieces) > 1 and all(row[0] == "" for row in cells[second + 1:])
    # the folded pieces, top to bottom, are the label (rich breaks at its one space)
    assert "".join(pieces).replace(" ", "") == ROWS[1][1].replace(" ", "")


def test_a_table_that_fits_keeps_its_natural_layout():
    narrow = [["a", 1.5], ["bb", 22.25]]
    assert fit_widths([2, 5], [[2, 5]], budget=40) is None
    t = table(None, ["name", "value"], narrow, width=160)
    assert all(c.width is None for c in t.columns)  # rich lays it out as before


def test_headers_wrap_before_text_folds_and_text_before_headers_break():
    natural = [30, 11, 9]          # a label and two numeric columns with long headers
    headers = [30, 4, 4]           # the numbers' headers may wrap between words
    texts = [24, 4, 4]             # then the label may fold to 24
    tight = [10, 3, 3]             # then break inside words
    # 4 characters short: the headers give them up, the label stays whole
    assert fit_widths(natural, [headers, texts, tight], budget=46) == [30, 8, 8]
    # 20 short: headers wrap to their longest word, then the label folds
    assert fit_widths(natural, [headers, texts, tight], budget=30) == [22, 4, 4]
    # hopeless: stops at the tight floor rather than cutting numbers further
    assert fit_widths(natural, [headers, texts, tight], budget=5) == [10, 3, 3]


def test_only_whitespace_separates_header_words():
    # "obj: E2E mean s" wraps between words; its longest word bounds the column
    text = _render(100)
    header = [ln for ln in text.splitlines() if ln.startswith("┃")]
    assert any(re.search(r"obj:", ln) for ln in header)
    assert any(re.search(r"mean", ln) for ln in header)


def test_too_narrow_even_folded_leaves_out_optional_columns_and_says_so():
    optional = (9, 6, 8, 7)
    wide = _render(120, optional=optional)
    assert "left out" not in wide  # 120 columns fit every column
    narrow = _render(80, optional=optional)
    assert max(len(ln) for ln in narrow.splitlines()) <= 80
    assert "left out at this terminal width: dropped, tok/s" in " ".join(narrow.split())
    header = " ".join(ln for ln in narrow.splitlines() if ln.startswith("┃"))
    assert "tok/s" not in header and "GPUs" in header  # tok/s went first, GPUs stays
    flat = [c for row in _body_cells(narrow) for c in row]
    for v in ("118", "11.0", "5.00", "2.598", "238", "10.83", "yes", "no"):
        assert v in flat, v
