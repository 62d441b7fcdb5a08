"""Requests the simulator serves: trace loaders and synthetic generation.

* :class:`Requests` -- a batch of requests as numpy arrays (arrival seconds, prompt and output
  token counts), sorted by arrival.
* :func:`load_trace` -- APEX JSONL (``StartTimeOffset`` ns, ``ContextTokens``, ``GeneratedTokens``)
  or Azure LLM-inference CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``). Broken traces raise
  :class:`~apex_opt.errors.InputError` naming the file, line, field and value; nothing partial is
  returned.
* :func:`generate` -- sample a :class:`~apex_opt.specs.workload.WorkloadSpec` (vectorised).

Arrival times of APEX traces keep their offsets (a data-parallel split of a trace starts where its
first request arrived); Azure CSV times are converted to seconds after the first row.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..io import read_text
from ..specs.common import StrictModel
from ..specs.workload import ArrivalSpec, LengthDist, WorkloadSpec, lognormal_params
from .metrics import R6, R6Opt, Stats, stats_of

# --------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True, eq=False)
class Requests:
    """Requests sorted by arrival time.

    ``arrival_s`` float64 seconds (non-decreasing), ``prompt_tokens`` int64 (>= 1),
    ``output_tokens`` int64 (>= 1), optional ``ids`` (one string per request) and a ``source``
    label (file path or ``synthetic:<name>``).
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    ids: list[str] | None = None
    source: str = "synthetic"

    def __post_init__(self) -> None:
        arr = np.ascontiguousarray(self.arrival_s, dtype=np.float64)
        pr = np.ascontiguousarray(self.prompt_tokens, dtype=np.int64)
        out = np.ascontiguousarray(self.output_tokens, dtype=np.int64)
        n = arr.shape[0]
        if arr.ndim != 1 or pr.shape != (n,) or out.shape != (n,):
            raise ValueError(f"Requests arrays must be 1-D of equal length "
                             f"(got {arr.shape}, {pr.shape}, {out.shape})")
        if self.ids is not None and len(self.ids) != n:
            raise ValueError(f"Requests.ids has {len(self.ids)} entries for {n} requests")
        if n and (not np.all(np.isfinite(arr)) or arr[0] < 0):
            raise ValueError("Requests.arrival_s must be finite and >= 0")
        if n > 1 and np.any(np.diff(arr) < 0):
            raise ValueError("Requests.arrival_s must be sorted (non-decreasing)")
        if n and (pr.min() < 1 or out.min() < 1):
            raise ValueError("Requests need >= 1 prompt token and >= 1 output token each")
        for a in (arr, pr, out):
            a.setflags(write=False)
        object.__setattr__(self, "arrival_s", arr)
        object.__setattr__(self, "prompt_tokens", pr)
        object.__setattr__(self, "output_tokens", out)
        if self.ids is not None:
            object.__setattr__(self, "ids", list(self.ids))

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    def subset(self, idx: slice | Sequence[int] | np.ndarray) -> "Requests":
        """The requests selected by a slice, a bool mask or an index array (duplicates dropped,
        arrival order kept)."""
        if isinstance(idx, slice):
            sel = np.arange(len(self))[idx]
        else:
            a = np.asarray(idx)
            if a.dtype == bool:
                if a.shape != (len(self),):
                    raise ValueError(f"boolean mask of shape {a.shape} for {len(self)} requests")
                sel = np.flatnonzero(a)
            else:
                sel = np.unique(a.astype(np.int64))
                if sel.size and (sel[0] < 0 or sel[-1] >= len(self)):
                    raise IndexError(f"request index out of range [0, {len(self)})")
        ids = [self.ids[i] for i in sel] if self.ids is not None else None
        return Requests(self.arrival_s[sel], self.prompt_tokens[sel], self.output_tokens[sel],
                        ids, self.source)

    def split_round_robin(self, k: int) -> list["Requests"]:
        """Split over ``k`` replicas: request ``i`` goes to replica ``i % k``."""
        if k < 1:
            raise ValueError(f"split_round_robin needs k >= 1 (got {k})")
        return [self.subset(slice(r, None, k)) for r in range(k)]

    def scaled_rate(self, factor: float) -> "Requests":
        """Same requests arriving ``factor`` times faster: gaps after the first arrival are
        divided by ``factor`` (the first arrival time is kept)."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"rate factor must be a finite number > 0 (got {factor})")
        if not len(self):
            return self
        t0 = self.arrival_s[0]
        return Requests(t0 + (self.arrival_s - t0) / factor, self.prompt_tokens,
                        self.output_tokens, self.ids, self.source)

    @property
    def duration_s(self) -> float:
        """Time between the first and the last arrival."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    @property
    def max_seq_len(self) -> int:
        """Largest prompt + output length (what the KV cache of one request must hold)."""
        return int((self.prompt_tokens + self.output_tokens).max()) if len(self) else 0

    def summary(self) -> "WorkloadSummary":
        """Counts, rate and length statistics (a pydantic model, for reports and ``--json``)."""
        n = len(self)
        dur = self.duration_s
        return WorkloadSummary(
            source=self.source, num_requests=n, duration_s=dur,
            rate_req_s=(n - 1) / dur if n > 1 and dur > 0 else None,
            prompt_tokens=stats_of(self.prompt_tokens), output_tokens=stats_of(self.output_tokens),
            total_prompt_tokens=int(self.prompt_tokens.sum()),
            total_output_tokens=int(self.output_tokens.sum()), max_seq_len=self.max_seq_len)


class WorkloadSummary(StrictModel):
    """What a workload looks like: size, rate and token-length statistics."""

    source: str
    num_requests: int
    duration_s: R6
    rate_req_s: R6Opt = None
    prompt_tokens: Stats
    output_tokens: Stats
    total_prompt_tokens: int
    total_output_tokens: int
    max_seq_len: int


# --------------------------------------------------------------------------------------------
# Trace loaders


def load_trace(path: str | Path) -> Requests:
    """Load a request trace: APEX JSONL or Azure CSV (by suffix, else by the first character)."""
    text = read_text(path)
    src = str(path)
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _load_jsonl(text, src)
    if suffix == ".csv":
        return _load_csv(text, src)
    first = text.lstrip()[:1]
    if not first:
        raise InputError("trace is empty (no requests)", source=src)
    return _load_jsonl(text, src) if first == "{" else _load_csv(text, src)


def _err(src: str, line: int, msg: str, fld: str | None = None, value: Any = None) -> InputError:
    return InputError(msg, source=f"{src}, line {line}", field=fld, value=value)


def _as_count(v: Any, src: str, line: int, fld: str, minimum: int) -> int:
    """A token count: an integer (or an integral float / numeric string) >= ``minimum``."""
    raw = v
    if isinstance(v, str):
        try:
            v = float(v) if any(c in v for c in ".eE") else int(v)
        except ValueError:
            raise _err(src, line, "token count is not a number", fld, raw) from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _err(src, line, "token count must be an integer", fld, raw)
    if isinstance(v, float):
        if not math.isfinite(v) or v != int(v):
            raise _err(src, line, "token count must be an integer", fld, raw)
        v = int(v)
    if v < 0:
        raise _err(src, line, "token count must not be negative", fld, raw)
    if v < minimum:
        what = "output token" if fld == "GeneratedTokens" else "prompt token"
        raise _err(src, line, f"token count must be >= {minimum} (every request needs at least "
                              f"one {what})", fld, raw)
    return v


def _check_sorted(times: list, lines: list[int], src: str, fld: str) -> None:
    for i in range(1, len(times)):
        if times[i] < times[i - 1]:
            raise _err(src, lines[i], f"arrival times must be non-decreasing (previous request, "
                                      f"line {lines[i - 1]}, has {times[i - 1]})", fld, times[i])


_JSONL_FIELDS = ("StartTimeOffset", "ContextTokens", "GeneratedTokens")


def _load_jsonl(text: str, src: str) -> Requests:
    """APEX JSONL: one object per line; ``StartTimeOffset`` is in nanoseconds."""
    t_ns: list[int | float] = []
    prompt: list[int] = []
    output: list[int] = []
    ids: list[str | None] = []
    lines: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _err(src, lineno, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise _err(src, lineno, f"expected a JSON object, got {type(obj).__name__}")
        for k in _JSONL_FIELDS:
            if k not in obj:
                raise _err(src, lineno, "required field is missing", k)
        t = obj["StartTimeOffset"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise _err(src, lineno, "StartTimeOffset must be a number of nanoseconds",
                       "StartTimeOffset", t)
        if t < 0:
            raise _err(src, lineno, "arrival time must not be negative", "StartTimeOffset", t)
        t_ns.append(t)
        prompt.append(_as_count(obj["ContextTokens"], src, lineno, "ContextTokens", 1))
        output.append(_as_count(obj["GeneratedTokens"], src, lineno, "GeneratedTokens", 1))
        rid = obj.get("RequestID")
        ids.append(None if rid is None else str(rid))
        lines.append(lineno)
    if not lines:
        raise InputError("trace is empty (no requests)", source=src)
    _check_sorted(t_ns, lines, src, "StartTimeOffset")
    arrival = np.asarray(t_ns, dtype=np.float64) / 1e9
    return Requests(arrival, np.asarray(prompt), np.asarray(output), _fill_ids(ids, lines), src)


def _fill_ids(ids: list[str | None], lines: list[int]) -> list[str] | None:
    if all(i is None for i in ids):
        return None
    return [i if i is not None else f"line-{ln}" for i, ln in zip(ids, lines)]


_CSV_FIELDS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_DATETIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
                       r"(Z|[+-]\d{2}:?\d{2})?$")


def _parse_timestamp(s: str) -> tuple[str, int]:
    """('num', ns) for a number of seconds, ('dt', ns since 0001-01-01 UTC) for a datetime;
    raises ValueError otherwise."""
    s = s.strip()
    m = _DATETIME.match(s)
    if m is None:
        x = float(s)
        if not math.isfinite(x):
            raise ValueError("not finite")
        return "num", round(x * 1e9)
    y, mo, d, h, mi, sec, frac, tz = m.groups()
    day = _dt.date(int(y), int(mo), int(d)).toordinal()
    hh, mm, ss = int(h), int(mi), int(sec)
    if hh > 23 or mm > 59 or ss > 60:
        raise ValueError("time of day out of range")
    secs = day * 86400 + hh * 3600 + mm * 60 + ss
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        secs -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    ns = int((frac or "").ljust(9, "0"))
    return "dt", secs * 1_000_000_000 + ns


def _load_csv(text: str, src: str) -> Requests:
    """Azure LLM-inference CSV: ``TIMESTAMP,ContextTokens,GeneratedTokens`` (extra columns ok)."""
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    for row in reader:
        if any(c.strip() for c in row):
            header = [c.strip().lstrip("\ufeff") for c in row]
            break
    if header is None:
        raise InputError("trace is empty (no header, no requests)", source=src)
    missing = [c for c in _CSV_FIELDS if c not in header]
    if missing:
        raise InputError(f"CSV header lacks column(s) {', '.join(missing)}; expected "
                         f"{','.join(_CSV_FIELDS)}", source=src, field="header",
                         value=",".join(header))
    col = {c: header.index(c) for c in _CSV_FIELDS}
    width = max(col.values()) + 1
    t_ns: list[int] = []
    prompt: list[int] = []
    output: list[int] = []
    lines: list[int] = []
    kind: str | None = None
    for row in reader:
        lineno = reader.line_num
        if not any(c.strip() for c in row):
            continue
        if len(row) < width:
            raise _err(src, lineno, f"row has {len(row)} columns, header has {len(header)}",
                       None, None)
        raw_t = row[col["TIMESTAMP"]]
        try:
            k, ns = _parse_timestamp(raw_t)
        except (ValueError, OverflowError):
            raise _err(src, lineno, "TIMESTAMP is neither a date-time (YYYY-MM-DD HH:MM:SS.fff) "
                                    "nor a number of seconds", "TIMESTAMP", raw_t) from None
        if kind is None:
            kind = k
        elif k != kind:
            raise _err(src, lineno, "TIMESTAMP format differs from the first row", "TIMESTAMP",
                       raw_t)
        if k == "num" and ns < 0:
            raise _err(src, lineno, "arrival time must not be negative", "TIMESTAMP", raw_t)
        t_ns.append(ns)
        prompt.append(_as_count(row[col["ContextTokens"]].strip(), src, lineno, "ContextTokens", 1))
        output.append(_as_count(row[col["GeneratedTokens"]].strip(), src, lineno,
                                "GeneratedTokens", 1))
        lines.append(lineno)
    if not lines:
        raise InputError("trace is empty (header only, no requests)", source=src)
    for i in range(1, len(t_ns)):
        if t_ns[i] < t_ns[i - 1]:
            raise _err(src, lines[i], f"arrival times must be non-decreasing (previous request, "
                                      f"line {lines[i - 1]}, is later)", "TIMESTAMP",
                       _raw_field(text, lines[i], col["TIMESTAMP"]))
    t0 = t_ns[0]  # exact integer ns; subtract before converting (absolute ns overflow int64)
    arrival = np.asarray([t - t0 for t in t_ns], dtype=np.float64) / 1e9
    return Requests(arrival, np.asarray(prompt), np.asarray(output), None, src)


def _raw_field(text: str, lineno: int, index: int) -> str:
    """The raw text of column ``index`` on line ``lineno`` (for error messages)."""
    line = text.splitlines()[lineno - 1]
    cells = next(csv.reader([line]), [])
    return cells[index] if index < len(cells) else ""


# --------------------------------------------------------------------------------------------
# Synthetic generation


def generate(spec: WorkloadSpec, rng: np.random.Generator | None = None) -> Requests:
    """Sample ``spec`` (vectorised). Without ``rng`` a generator seeded with ``spec.seed`` is used.

    Arrivals, prompt lengths and output lengths come from three independent child generators, so
    changing one distribution does not change the samples of the others.
    """
    if rng is None:
        rng = np.random.default_rng(spec.seed)
    seeds = rng.integers(0, 2 ** 63 - 1, size=3)
    r_arr, r_prompt, r_out = (np.random.default_rng(int(s)) for s in seeds)
    n = spec.num_requests
    arrival = sample_arrivals(spec.arrival, n, r_arr)
    prompt = sample_lengths(spec.prompt_len, n, r_prompt)
    output = sample_lengths(spec.output_len, n, r_out)
    name = spec.name or "workload"
    return Requests(arrival, prompt, output, None, f"synthetic:{name}")


def sample_arrivals(a: ArrivalSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (s) of ``n`` requests; the first arrives at 0."""
    mean_gap = 1.0 / a.rate
    if a.process == "constant":
        gaps = np.full(n - 1, mean_gap)
    elif a.process == "poisson":
        gaps = rng.exponential(mean_gap, size=n - 1)
    else:  # gamma: shape k = 1/cv^2, scale = mean/k
        assert a.cv is not None
        k = 1.0 / a.cv ** 2
        gaps = rng.gamma(k, mean_gap / k, size=n - 1)
    out = np.empty(n, dtype=np.float64)
    out[0] = 0.0
    np.cumsum(gaps, out=out[1:])
    return out


def sample_lengths(d: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` integer lengths from ``d``, rounded and clipped to ``[d.min, d.max]``."""
    lo, hi = d.min, d.upper
    if d.dist == "fixed":
        assert d.mean is not None
        x = np.full(n, float(d.mean))
    elif d.dist == "uniform":
        return rng.integers(lo, hi, size=n, endpoint=True, dtype=np.int64)
    elif d.dist == "lognormal":
        mu, sigma = lognormal_params(d)
        x = rng.lognormal(mu, sigma, size=n)
    elif d.dist == "normal":
        assert d.mean is not None
        sd = d.sigma if d.sigma is not None else d.cv * d.mean
        x = rng.normal(d.mean, sd, size=n)
    else:
        return _zipf(d, n, rng)
    return np.clip(np.rint(x), lo, hi).astype(np.int64)


def _zipf(d: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    """Bounded Zipf on ``[min, max]`` by inverse CDF (any alpha > 0)."""
    assert d.alpha is not None
    k = np.arange(d.min, d.upper + 1, dtype=np.float64)
    cdf = np.cumsum(k ** -d.alpha)
    cdf /= cdf[-1]
    idx = np.searchsorted(cdf, rng.random(n), side="right")
    return (d.min + np.minimum(idx, k.size - 1)).astype(np.int64)
