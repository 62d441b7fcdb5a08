"""Requests the simulator serves: trace loaders and synthetic generation.

* :class:`Requests` -- a batch of requests as numpy arrays (arrival seconds, prompt and output
  token counts), sorted by arrival, optionally with the ids of their prompt's prefix blocks
  (shared prefixes a prefix cache can reuse) and a closed-loop client count.
* :func:`load_trace` -- three formats, told apart by the file's content:

  - APEX JSONL (``StartTimeOffset`` ns, ``ContextTokens``, ``GeneratedTokens``);
  - Mooncake JSONL (``timestamp`` ms, ``input_length``, ``output_length``, optional ``hash_ids``:
    ids of the prompt's consecutive 512-token blocks; equal leading ids = a shared prefix);
  - Azure LLM-inference CSV (``TIMESTAMP,ContextTokens,GeneratedTokens``; header names matched
    case-insensitively).

  Broken traces raise :class:`~apex_opt.errors.InputError` naming the file, line, field and value;
  nothing partial is returned. A trace whose arrivals go backwards is an error unless
  ``sort=True`` (``--sort-trace``) sorts it by arrival time (stable: equal times keep file order).
* :func:`generate` -- sample a :class:`~apex_opt.specs.workload.WorkloadSpec` (vectorised),
  including shared-prefix groups and closed-loop concurrency.

Arrival times of APEX and Mooncake traces keep their offsets (a data-parallel split of a trace
starts where its first request arrived); Azure CSV times are converted to seconds after the first
row.

Closed loop (``Requests.concurrency = N``): N clients each send their next request as soon as the
previous one finished (``vllm bench serve --max-concurrency N``); all N start at the first arrival
time and requests are sent in index order (the next unsent request goes to whichever client is
free first). ``arrival_s`` then only orders the requests; the simulator measures latencies from
the time each request was really sent.
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
from pydantic import Field

from ..errors import InputError
from ..io import DuplicateJSONKey, read_text, unique_json_keys
from ..specs.common import StrictModel
from ..specs.workload import (MAX_ARRIVAL_S, ArrivalSpec, LengthDist, PrefixSpec, WorkloadSpec,
                               lognormal_params)
from .metrics import R6, R6Opt, Stats, stats_of

# --------------------------------------------------------------------------------------------
# Requests


#: Tokens per prefix block of Mooncake traces (``hash_ids``).
MOONCAKE_BLOCK_TOKENS = 512
#: Largest token count a trace row may give: engines count positions in int32; a longer request
#: is no request (longer than the model's context but below this: the context check's business)
MAX_TRACE_TOKENS = 2 ** 31 - 1
#: ``Requests.max_tokens`` value for clients that send no max_tokens (the engine's own limit)
MAX_TOKENS_NONE = "none"


@dataclass(frozen=True, eq=False)
class Requests:
    """Requests sorted by arrival time.

    ``arrival_s`` float64 seconds (non-decreasing), ``prompt_tokens`` int64 (>= 1),
    ``output_tokens`` int64 (>= 1), optional ``ids`` (one string per request) and a ``source``
    label (file path or ``synthetic:<name>``).

    ``prefix_blocks`` (optional): per request, the ids of its prompt's consecutive blocks of
    ``prefix_block_tokens`` tokens. Two requests whose tuples start with the same ids share those
    blocks' tokens (a prefix cache may reuse them); the last id of a prompt may cover a partial
    block (``prompt_tokens % prefix_block_tokens`` tokens). A tuple may be shorter than the
    prompt's block count: the tokens after its last id are unique to the request. An empty tuple
    = nothing known to be shared.

    ``concurrency`` (optional): a closed loop of that many clients (see the module docstring);
    ``None`` = open loop, requests arrive at ``arrival_s``. ``client_ramp_s``: a closed loop's
    client ``i`` (0-based) sends its first request ``i * client_ramp_s / concurrency`` seconds
    after the first arrival (0 = all at once).

    ``top_p`` / ``top_k``: the sampling filter every request asks for (1.0 / 0 = none, e.g.
    greedy, what ``vllm bench serve`` sends by default). A filter costs the engine's sampler GPU
    time on every step (``EngineSpec.sampler_top_p_bytes_per_logit``); see :attr:`sampler`.

    ``max_tokens``: the output limit every request declares. ``None`` = each declares its own
    output length (what benchmark clients that force exact lengths with ignore_eos send); an
    integer N = every request sends max_tokens N and ends at its output length (EOS) or at N,
    whichever comes first (longer outputs are cut to N here); ``"none"`` = the clients send no
    limit and the engine fills in its own (up to the context length). The declared limit is what
    SGLang's admission reserves KV room for (PrefillAdder: min(max_new_tokens, 4096) per joining
    request, the new-token ratio of it for running ones) and what vLLM checks against
    max_model_len (prompt + max_tokens > max_model_len is refused).
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    ids: list[str] | None = None
    source: str = "synthetic"
    prefix_blocks: list[tuple[int, ...]] | None = None
    prefix_block_tokens: int = MOONCAKE_BLOCK_TOKENS
    concurrency: int | None = None
    top_p: float = 1.0
    top_k: int = 0
    client_ramp_s: float = 0.0
    max_tokens: int | str | None = None

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
        if not (isinstance(self.prefix_block_tokens, (int, np.integer))
                and self.prefix_block_tokens >= 1):
            raise ValueError(f"prefix_block_tokens must be an integer >= 1 "
                             f"(got {self.prefix_block_tokens!r})")
        if self.prefix_blocks is not None:
            if len(self.prefix_blocks) != n:
                raise ValueError(f"Requests.prefix_blocks has {len(self.prefix_blocks)} entries "
                                 f"for {n} requests")
            bt = int(self.prefix_block_tokens)
            blocks = [tuple(b) for b in self.prefix_blocks]
            for i, (b, p) in enumerate(zip(blocks, pr.tolist())):
                if len(b) > -(-p // bt):
                    raise ValueError(f"request {i}: {len(b)} prefix blocks of {bt} tokens for a "
                                     f"{p}-token prompt")
            object.__setattr__(self, "prefix_blocks", blocks)
        if self.concurrency is not None and not (isinstance(self.concurrency, (int, np.integer))
                                                 and self.concurrency >= 1):
            raise ValueError(f"concurrency must be an integer >= 1 (got {self.concurrency!r})")
        for a in (arr, pr, out):
            a.setflags(write=False)
        object.__setattr__(self, "arrival_s", arr)
        object.__setattr__(self, "prompt_tokens", pr)
        object.__setattr__(self, "output_tokens", out)
        object.__setattr__(self, "prefix_block_tokens", int(self.prefix_block_tokens))
        if self.concurrency is not None:
            object.__setattr__(self, "concurrency", int(self.concurrency))
        ramp = float(self.client_ramp_s)
        if not (math.isfinite(ramp) and ramp >= 0.0):
            raise ValueError(f"client_ramp_s must be a finite number >= 0 (got {self.client_ramp_s!r})")
        object.__setattr__(self, "client_ramp_s", ramp)
        if not (0.0 < float(self.top_p) <= 1.0):
            raise ValueError(f"top_p must be in (0, 1] (got {self.top_p!r})")
        if not (isinstance(self.top_k, (int, np.integer)) and self.top_k >= 0):
            raise ValueError(f"top_k must be an integer >= 0, 0 = off (got {self.top_k!r})")
        object.__setattr__(self, "top_p", float(self.top_p))
        object.__setattr__(self, "top_k", int(self.top_k))
        mt = self.max_tokens
        if mt is not None and mt != MAX_TOKENS_NONE:
            if isinstance(mt, bool) or not isinstance(mt, (int, np.integer)) or mt < 1:
                raise ValueError(f"max_tokens must be an integer >= 1, {MAX_TOKENS_NONE!r} (the "
                                 f"clients send none) or None (each request its own output "
                                 f"length); got {mt!r}")
            object.__setattr__(self, "max_tokens", int(mt))
            if n and out.max() > mt:  # the engine stops every request at max_tokens
                object.__setattr__(self, "output_tokens", np.minimum(out, int(mt)))
        if self.ids is not None:
            object.__setattr__(self, "ids", list(self.ids))

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    @property
    def sampler(self) -> str:
        """The sampler path the engine runs for these requests: ``"top_k"`` (top-k, with or
        without top-p), ``"top_p"`` or ``"greedy"`` (no filter)."""
        if self.top_k > 0:
            return "top_k"
        return "top_p" if self.top_p < 1.0 else "greedy"

    def _replace(self, sel: np.ndarray | None = None, **kw) -> "Requests":
        """A copy with the requests ``sel`` (all when None) and fields ``kw`` replaced."""
        if sel is None:
            fields = dict(arrival_s=self.arrival_s, prompt_tokens=self.prompt_tokens,
                          output_tokens=self.output_tokens, ids=self.ids,
                          prefix_blocks=self.prefix_blocks)
        else:
            fields = dict(
                arrival_s=self.arrival_s[sel], prompt_tokens=self.prompt_tokens[sel],
                output_tokens=self.output_tokens[sel],
                ids=[self.ids[i] for i in sel] if self.ids is not None else None,
                prefix_blocks=([self.prefix_blocks[i] for i in sel]
                               if self.prefix_blocks is not None else None))
        fields.update(source=self.source, prefix_block_tokens=self.prefix_block_tokens,
                      concurrency=self.concurrency, top_p=self.top_p, top_k=self.top_k,
                      client_ramp_s=self.client_ramp_s, max_tokens=self.max_tokens)
        fields.update(kw)
        return Requests(**fields)

    def subset(self, idx: slice | Sequence[int] | np.ndarray) -> "Requests":
        """The requests selected by a slice, a bool mask or an index array (duplicates dropped,
        arrival order kept). A closed loop keeps its client count (at most one client per
        request)."""
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
        conc = self.concurrency
        if conc is not None:
            conc = max(1, min(conc, int(sel.size)))
        return self._replace(sel, concurrency=conc)

    def split_round_robin(self, k: int) -> list["Requests"]:
        """Split over ``k`` replicas: request ``i`` goes to replica ``i % k``. A closed loop's
        clients are split the same way (part ``r`` gets clients ``r, r + k, ...``; at least
        one)."""
        if k < 1:
            raise ValueError(f"split_round_robin needs k >= 1 (got {k})")
        parts = [self.subset(slice(r, None, k)) for r in range(k)]
        if self.concurrency is not None:
            parts = [p._replace(concurrency=max(1, min(len(p), len(range(r, self.concurrency, k)))))
                     if len(p) else p for r, p in enumerate(parts)]
        return parts

    def with_arrival_s(self, arrival_s: np.ndarray) -> "Requests":
        """The same requests with other (sorted) arrival times, e.g. a closed loop's send
        times."""
        return self._replace(arrival_s=arrival_s)

    def with_output_tokens(self, output_tokens: np.ndarray) -> "Requests":
        """The same requests with other output lengths (e.g. those an engine cut)."""
        return self._replace(output_tokens=np.asarray(output_tokens, dtype=np.int64))

    def with_sampling(self, top_p: float | None = None, top_k: int | None = None) -> "Requests":
        """The same requests asking for another sampling filter (None = keep the current)."""
        return self._replace(top_p=self.top_p if top_p is None else top_p,
                             top_k=self.top_k if top_k is None else top_k)

    def with_concurrency(self, n: int | None, ramp_s: float | None = None) -> "Requests":
        """The same requests as a closed loop of ``n`` clients (``None`` = open loop again),
        their first requests staggered over ``ramp_s`` seconds (None = keep the current ramp;
        an open loop has none)."""
        ramp = self.client_ramp_s if ramp_s is None else ramp_s
        return self._replace(concurrency=n, client_ramp_s=ramp if n is not None else 0.0)

    def scaled_rate(self, factor: float) -> "Requests":
        """Same requests arriving ``factor`` times faster: gaps after the first arrival are
        divided by ``factor`` (the first arrival time is kept). A closed loop scales its client
        count instead (rounded, at least 1): the offered load of a closed loop is its
        concurrency."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"rate factor must be a finite number > 0 (got {factor})")
        if not len(self):
            return self
        if self.concurrency is not None:
            return self._replace(concurrency=max(1, round(self.concurrency * factor)))
        t0 = self.arrival_s[0]
        return self._replace(arrival_s=t0 + (self.arrival_s - t0) / factor)

    def prefix_reuse_tokens(self) -> int:
        """Prompt tokens in blocks whose whole prefix (this id after the same leading ids) an
        earlier request already had: what an unbounded prefix cache could skip (an upper bound
        on the cache hits of any real cache)."""
        if self.prefix_blocks is None:
            return 0
        bt = self.prefix_block_tokens
        trie: dict[tuple[int, int], int] = {}  # (parent node, block id) -> node
        reused = 0
        for blocks, p in zip(self.prefix_blocks, self.prompt_tokens.tolist()):
            node, hit = 0, True
            for j, b in enumerate(blocks):
                nxt = trie.get((node, b))
                if nxt is None:
                    hit = False
                    nxt = trie[(node, b)] = len(trie) + 1
                elif hit:
                    reused += min(bt, p - j * bt)
                node = nxt
        return reused

    @property
    def duration_s(self) -> float:
        """Time between the first and the last arrival."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) else 0.0

    @property
    def max_seq_len(self) -> int:
        """Largest prompt + output length (what the KV cache of one request must hold)."""
        return int((self.prompt_tokens + self.output_tokens).max()) if len(self) else 0

    @property
    def max_request_len(self) -> int:
        """Largest context a request needs the engine to accept: prompt + the larger of its
        output and the max_tokens it declares (vLLM refuses prompt + max_tokens above
        max_model_len). Equals :attr:`max_seq_len` unless the clients declare more."""
        if not len(self):
            return 0
        return int((self.prompt_tokens + np.maximum(self.declared_max_tokens(),
                                                    self.output_tokens)).max())

    def with_max_tokens(self, max_tokens: int | str | None) -> "Requests":
        """The same requests declaring another output limit (see the class docstring)."""
        return self._replace(max_tokens=max_tokens)

    def declared_max_tokens(self) -> np.ndarray:
        """Per request, the max_tokens it sends: its output length (``max_tokens`` None), N, or
        ``-1`` where the clients send none (the engine's own limit applies)."""
        if self.max_tokens is None:
            return self.output_tokens.copy()
        if self.max_tokens == MAX_TOKENS_NONE:
            return np.full(len(self), -1, dtype=np.int64)
        return np.full(len(self), int(self.max_tokens), dtype=np.int64)

    def summary(self) -> "WorkloadSummary":
        """Counts, rate and length statistics (a pydantic model, for reports and ``--json``)."""
        n = len(self)
        dur = self.duration_s
        closed = self.concurrency is not None
        return WorkloadSummary(
            source=self.source, num_requests=n, duration_s=dur,
            rate_req_s=(n - 1) / dur if n > 1 and dur > 0 and not closed else None,
            prompt_tokens=stats_of(self.prompt_tokens), output_tokens=stats_of(self.output_tokens),
            total_prompt_tokens=int(self.prompt_tokens.sum()),
            total_output_tokens=int(self.output_tokens.sum()), max_seq_len=self.max_seq_len,
            concurrency=self.concurrency,
            client_ramp_s=self.client_ramp_s if closed and self.client_ramp_s > 0 else None,
            prefix_block_tokens=self.prefix_block_tokens if self.prefix_blocks is not None else None,
            prefix_reuse_tokens=(self.prefix_reuse_tokens() if self.prefix_blocks is not None
                                 else None),
            top_p=self.top_p, top_k=self.top_k, max_tokens=self.max_tokens)


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
    concurrency: int | None = Field(None, description="Closed-loop clients (None = open loop: "
                                                      "requests arrive at their arrival times).")
    client_ramp_s: R6Opt = Field(None, description="Closed loop: seconds over which the clients' "
                                                   "first requests are staggered (None = all at "
                                                   "once).")
    prefix_block_tokens: int | None = Field(None, description="Tokens per prefix block id "
                                                              "(None = no prefix information).")
    prefix_reuse_tokens: int | None = Field(
        None, description="Prompt tokens an unbounded prefix cache could reuse (blocks an "
                          "earlier request already had after the same leading ids).")
    top_p: float = Field(1.0, description="top_p every request sends (1 = no filter).")
    top_k: int = Field(0, description="top_k every request sends (0 = no filter).")
    max_tokens: int | str | None = Field(
        None, description="max_tokens every request sends (None = its own output length; "
                          "'none' = no limit sent, the engine's own applies).")


# --------------------------------------------------------------------------------------------
# Trace loaders


def load_trace(path: str | Path, *, sort: bool = False) -> Requests:
    """Load a request trace: APEX JSONL, Mooncake JSONL or Azure CSV.

    JSON lines (suffix ``.jsonl``/``.json``/``.ndjson``, or a file starting with ``{``) are APEX or
    Mooncake by the fields of their first object; anything else is read as CSV. ``sort`` sorts
    the requests by arrival time (stable) instead of rejecting a trace whose arrivals go back.
    """
    text = read_text(path)
    src = str(path)
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _load_jsonl(text, src, sort)
    if suffix == ".csv":
        return _load_csv(text, src, sort)
    first = text.lstrip()[:1]
    if not first:
        raise InputError("trace is empty (no requests)", source=src)
    return _load_jsonl(text, src, sort) if first == "{" else _load_csv(text, src, sort)


def _err(src: str, line: int, msg: str, fld: str | None = None, value: Any = None) -> InputError:
    return InputError(msg, source=f"{src}, line {line}", field=fld, value=value)


_OUTPUT_FIELDS = ("GeneratedTokens", "output_length")


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
        what = "output token" if fld in _OUTPUT_FIELDS else "prompt token"
        raise _err(src, line, f"token count must be >= {minimum} (every request needs at least "
                              f"one {what})", fld, raw)
    if v > MAX_TRACE_TOKENS:
        raise _err(src, line, f"token count is absurd (> {MAX_TRACE_TOKENS:,}, the int32 range "
                              f"engines count positions in)", fld, raw)
    return v


def _arrival_order(times: list, lines: list[int], src: str, fld: str, sort: bool,
                   raw: Any = None) -> list[int] | None:
    """None when ``times`` never decrease; else the stable sorting permutation (``sort``) or an
    InputError naming the first line that goes back. ``raw(i)`` gives the value to quote."""
    for i in range(1, len(times)):
        if times[i] < times[i - 1]:
            if sort:
                return sorted(range(len(times)), key=times.__getitem__)
            value = raw(i) if raw is not None else times[i]
            raise _err(src, lines[i], f"arrival times must be non-decreasing (previous request, "
                                      f"line {lines[i - 1]}, is later); pass --sort-trace "
                                      f"(load_trace(..., sort=True)) to sort the trace by "
                                      f"arrival time", fld, value)
    return None


def _permute(order: list[int] | None, *cols: list) -> tuple[list, ...]:
    if order is None:
        return cols
    return tuple([c[i] for i in order] if c is not None else None for c in cols)


_JSONL_FIELDS = ("StartTimeOffset", "ContextTokens", "GeneratedTokens")
_MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length")


def _json_lines(text: str, src: str):
    """(line number, object) of every non-blank line; malformed lines raise InputError."""
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=unique_json_keys)
        except json.JSONDecodeError as exc:
            raise _err(src, lineno, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
        except DuplicateJSONKey as exc:  # which of the two values is meant?
            raise _err(src, lineno, "key given twice in one object; remove one", exc.key,
                       None) from None
        if not isinstance(obj, dict):
            raise _err(src, lineno, f"expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _load_jsonl(text: str, src: str, sort: bool = False) -> Requests:
    """APEX or Mooncake JSONL, by the fields of the first object."""
    rows = _json_lines(text, src)
    first = next(rows, None)
    if first is None:
        raise InputError("trace is empty (no requests)", source=src)
    obj = first[1]
    if "StartTimeOffset" not in obj and any(k in obj for k in _MOONCAKE_FIELDS):
        return _load_mooncake(first, rows, src, sort)
    if "StartTimeOffset" not in obj and not any(k in obj for k in _JSONL_FIELDS):
        raise _err(src, first[0], "unknown JSONL trace format: expected APEX fields "
                                  f"({', '.join(_JSONL_FIELDS)}) or Mooncake fields "
                                  f"({', '.join(_MOONCAKE_FIELDS)}[, hash_ids])", "fields",
                   ",".join(list(obj)[:8]))
    return _load_apex(first, rows, src, sort)


#: seconds per unit of the trace formats' time fields
_TIME_UNITS = {"nanoseconds": 1e-9, "milliseconds": 1e-3, "seconds": 1.0}


def _time_value(obj: dict, fld: str, src: str, lineno: int, unit: str) -> int | float:
    t = obj[fld]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise _err(src, lineno, f"{fld} must be a number of {unit}", fld, t)
    if t < 0:
        raise _err(src, lineno, "arrival time must not be negative", fld, t)
    _check_time(t * _TIME_UNITS[unit], src, lineno, fld, t, f"{fld} is in {unit}")
    return t


def _check_time(seconds: float, src: str, lineno: int, fld: str, raw: Any, hint: str) -> None:
    """An arrival time past :data:`MAX_ARRIVAL_S` is no real trace's (the simulator's float
    clock would lose its microseconds there): InputError ending in ``hint`` (the unit)."""
    if seconds > MAX_ARRIVAL_S:
        raise _err(src, lineno, f"arrival time {seconds:.3g} s is absurd (> {MAX_ARRIVAL_S:.0e} s, "
                                f"about 317 years); {hint}", fld, raw)


def _load_apex(first, rows, src: str, sort: bool) -> Requests:
    """APEX JSONL: one object per line; ``StartTimeOffset`` is in nanoseconds."""
    t_ns: list[int | float] = []
    prompt: list[int] = []
    output: list[int] = []
    ids: list[str | None] = []
    lines: list[int] = []
    for lineno, obj in _chain(first, rows):
        for k in _JSONL_FIELDS:
            if k not in obj:
                raise _err(src, lineno, "required field is missing", k)
        t_ns.append(_time_value(obj, "StartTimeOffset", src, lineno, "nanoseconds"))
        prompt.append(_as_count(obj["ContextTokens"], src, lineno, "ContextTokens", 1))
        output.append(_as_count(obj["GeneratedTokens"], src, lineno, "GeneratedTokens", 1))
        rid = obj.get("RequestID")
        ids.append(None if rid is None else str(rid))
        lines.append(lineno)
    order = _arrival_order(t_ns, lines, src, "StartTimeOffset", sort)
    t_ns, prompt, output, ids, lines = _permute(order, t_ns, prompt, output, ids, lines)
    arrival = np.asarray(t_ns, dtype=np.float64) / 1e9
    return Requests(arrival, np.asarray(prompt), np.asarray(output), _fill_ids(ids, lines), src)


def _chain(first, rows):
    yield first
    yield from rows


def _hash_ids(v: Any, prompt: int, src: str, lineno: int) -> tuple[int, ...]:
    """Mooncake ``hash_ids``: a list of integer block ids, at most one per 512-token block."""
    if not isinstance(v, list):
        raise _err(src, lineno, "hash_ids must be a list of integer block ids", "hash_ids",
                   _short(v))
    if not set(map(type, v)) <= {int}:  # C-speed check (bool is not int here); then find it
        bad = next(x for x in v if type(x) is not int)
        raise _err(src, lineno, "hash_ids must be a list of integer block ids", "hash_ids",
                   _short(bad))
    nblocks = -(-prompt // MOONCAKE_BLOCK_TOKENS)
    if len(v) > nblocks:
        raise _err(src, lineno, f"{len(v)} hash_ids for a {prompt}-token prompt, which has "
                                f"only {nblocks} blocks of {MOONCAKE_BLOCK_TOKENS} tokens",
                   "hash_ids", _short(v))
    return tuple(v)


def _short(v: Any) -> Any:
    r = json.dumps(v) if not isinstance(v, str) else v
    return r if len(r) <= 60 else r[:57] + "..."


def _load_mooncake(first, rows, src: str, sort: bool) -> Requests:
    """Mooncake JSONL (kvcache-ai/Mooncake FAST'25 traces): ``timestamp`` ms, ``input_length``,
    ``output_length``, optional ``hash_ids`` (ids of the prompt's 512-token blocks)."""
    t_ms: list[int | float] = []
    prompt: list[int] = []
    output: list[int] = []
    blocks: list[tuple[int, ...]] = []
    lines: list[int] = []
    any_hash = False
    for lineno, obj in _chain(first, rows):
        for k in _MOONCAKE_FIELDS:
            if k not in obj:
                raise _err(src, lineno, "required field is missing (Mooncake trace: timestamp, "
                                        "input_length, output_length[, hash_ids])", k)
        t_ms.append(_time_value(obj, "timestamp", src, lineno, "milliseconds"))
        p = _as_count(obj["input_length"], src, lineno, "input_length", 1)
        prompt.append(p)
        output.append(_as_count(obj["output_length"], src, lineno, "output_length", 1))
        h = obj.get("hash_ids")
        if h is None:
            blocks.append(())
        else:
            any_hash = True
            blocks.append(_hash_ids(h, p, src, lineno))
        lines.append(lineno)
    order = _arrival_order(t_ms, lines, src, "timestamp", sort)
    t_ms, prompt, output, blocks = _permute(order, t_ms, prompt, output, blocks)
    arrival = np.asarray(t_ms, dtype=np.float64) / 1e3
    return Requests(arrival, np.asarray(prompt), np.asarray(output), None, src,
                    prefix_blocks=blocks if any_hash else None,
                    prefix_block_tokens=MOONCAKE_BLOCK_TOKENS)


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


def _load_csv(text: str, src: str, sort: bool = False) -> Requests:
    """Azure LLM-inference CSV: ``TIMESTAMP,ContextTokens,GeneratedTokens`` (extra columns ok;
    header names matched case-insensitively)."""
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    for row in reader:
        if any(c.strip() for c in row):
            header = [c.strip().lstrip("\ufeff") for c in row]
            break
    if header is None:
        raise InputError("trace is empty (no header, no requests)", source=src)
    folded = [h.casefold() for h in header]
    missing = [c for c in _CSV_FIELDS if c.casefold() not in folded]
    if missing:
        raise InputError(f"CSV header lacks column(s) {', '.join(missing)}; expected "
                         f"{','.join(_CSV_FIELDS)} (any letter case)", source=src, field="header",
                         value=",".join(header))
    twice = [c for c in _CSV_FIELDS if folded.count(c.casefold()) > 1]
    if twice:  # which of the two columns is meant?
        raise InputError(f"CSV header has column {twice[0]} twice (any letter case); keep one",
                         source=src, field="header", value=",".join(header))
    col = {c: folded.index(c.casefold()) for c in _CSV_FIELDS}
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
        except OverflowError:  # a number of seconds beyond any nanosecond count
            raise _err(src, lineno, f"arrival time is absurd (beyond {MAX_ARRIVAL_S:.0e} s, about "
                                    f"317 years); TIMESTAMP is in seconds", "TIMESTAMP",
                       raw_t) from None
        except ValueError:
            raise _err(src, lineno, "TIMESTAMP is neither a date-time (YYYY-MM-DD HH:MM:SS.fff) "
                                    "nor a number of seconds", "TIMESTAMP", raw_t) from None
        if kind is None:
            kind = k
        elif k != kind:
            raise _err(src, lineno, "TIMESTAMP format differs from the first row", "TIMESTAMP",
                       raw_t)
        if k == "num" and ns < 0:
            raise _err(src, lineno, "arrival time must not be negative", "TIMESTAMP", raw_t)
        if k == "num":
            _check_time(ns / 1e9, src, lineno, "TIMESTAMP", raw_t, "TIMESTAMP is in seconds")
        elif t_ns:
            _check_time((ns - t_ns[0]) / 1e9, src, lineno, "TIMESTAMP", raw_t,
                        "counted from the first row's date-time")
        t_ns.append(ns)
        prompt.append(_as_count(row[col["ContextTokens"]].strip(), src, lineno, "ContextTokens", 1))
        output.append(_as_count(row[col["GeneratedTokens"]].strip(), src, lineno,
                                "GeneratedTokens", 1))
        lines.append(lineno)
    if not lines:
        raise InputError("trace is empty (header only, no requests)", source=src)
    order = _arrival_order(t_ns, lines, src, "TIMESTAMP", sort,
                           lambda i: _raw_field(text, lines[i], col["TIMESTAMP"]))
    t_ns, prompt, output = _permute(order, t_ns, prompt, output)
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
    changing one distribution does not change the samples of the others (the prefix groups, when
    the spec has them, from a fourth). A closed loop has all arrival times 0 and
    ``Requests.concurrency`` set.
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
    blocks, bt = None, MOONCAKE_BLOCK_TOKENS
    if spec.prefix is not None:
        r_prefix = np.random.default_rng(int(rng.integers(0, 2 ** 63 - 1)))
        blocks, bt = prefix_blocks(spec.prefix, prompt, r_prefix)
    return Requests(arrival, prompt, output, None, f"synthetic:{name}", prefix_blocks=blocks,
                    prefix_block_tokens=bt, concurrency=spec.arrival.concurrency,
                    top_p=spec.top_p, top_k=spec.top_k, client_ramp_s=spec.arrival.ramp_s,
                    max_tokens=spec.max_tokens)


def prefix_blocks(p: PrefixSpec, prompt: np.ndarray,
                  rng: np.random.Generator) -> tuple[list[tuple[int, ...]], int]:
    """Prefix-block ids of shared-prefix groups, and the block size in tokens.

    Group ``g`` owns ids ``g*K .. g*K + K - 1`` for its ``K = shared_tokens // block_tokens``
    whole shared blocks; a request lists the ids of the shared blocks its prompt covers (only
    whole blocks: ``min(prompt, shared_tokens) // block_tokens``). The rest of its prompt is
    unique to it, which a tuple shorter than the prompt's block count means."""
    n = int(prompt.shape[0])
    if p.assignment == "round_robin":
        group = np.arange(n, dtype=np.int64) % p.groups
    else:
        group = rng.integers(0, p.groups, size=n, dtype=np.int64)
    bt = p.block_tokens
    k = p.shared_tokens // bt
    m = np.minimum(prompt, p.shared_tokens) // bt
    return [tuple(range(g * k, g * k + c)) for g, c in zip(group.tolist(), m.tolist())], bt


def sample_arrivals(a: ArrivalSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (s) of ``n`` requests; the first arrives at 0 (a closed loop: all at 0, the
    times only order the requests)."""
    if a.process == "closed_loop":
        return np.zeros(n, dtype=np.float64)
    assert a.rate is not None
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
