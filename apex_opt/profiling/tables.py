"""Measure each table of a profile: rows are dicts keyed by the CSV columns of
:data:`apex_opt.profiling.output.COLUMNS`.

A case that does not fit in memory (or raises out-of-memory) is skipped and counted in ``notes``;
every other failure propagates so that a broken run writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .kernels import Capabilities, Maker
from .shapes import AttnCase, ElementwiseCase, GemmShape, GroupedCase, ProfilePlan, kv_bytes
from .timing import is_oom

Progress = Callable[[str], None]


@dataclass
class Notes:
    """Cases skipped per table (did not fit in memory); ends up in the output README."""

    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, table: str, n: int = 1) -> None:
        if n > 0:
            self.skipped[table] = self.skipped.get(table, 0) + n


def attention_flops(c: AttnCase) -> float:
    """QK^T and PV FLOPs under a lower-right causal mask (a full square mask for prefill):
    attended pairs = q_len * (kv_len - q_len) + q_len^2 / 2."""
    pairs = c.q_len * (c.kv_len - c.q_len) + c.q_len * c.q_len / 2
    return 4.0 * c.batch * c.q_heads * c.head_dim * pairs


def _tflops(flops: float, ms: float) -> float:
    return flops / ms / 1e9


def _gbps(nbytes: float, ms: float) -> float:
    return nbytes / ms / 1e6


def _pad16(m: int) -> int:
    return -(-m // 16) * 16


# --- GEMM ----------------------------------------------------------------------------------------

def _gemm_bytes(m: int, n: int, k: int, fp8: bool) -> int:
    """Memory a case needs: bf16 W, x and y, plus their fp8 copies when fp8 is measured."""
    mp = _pad16(m)
    return 2 * (n * k + m * k + 2 * m * n) + (n * k + mp * k + 2 * mp * n if fp8 else 0)


def gemm_table(mk: Maker, caps: Capabilities, plan: ProfilePlan, notes: Notes,
               say: Progress) -> list[dict]:
    rows: list[dict] = []
    for i, shape in enumerate(plan.gemm_shapes):
        if i % 10 == 0:
            say(f"gemm: shape {i + 1}/{len(plan.gemm_shapes)} (n={shape.n}, k={shape.k})")
        mk.b.release()
        free = mk.b.free_bytes()
        ms_ok = [m for m in plan.gemm_m if _gemm_bytes(m, shape.n, shape.k, caps.fp8) <= free]
        notes.skip("gemm.csv", (len(plan.gemm_m) - len(ms_ok)) * (2 if caps.fp8 else 1))
        if not ms_ok:
            continue
        try:
            rows += _gemm_shape(mk, caps, shape, ms_ok)
        except Exception as exc:  # noqa: BLE001 -- only OOM is tolerated
            if not is_oom(exc):
                raise
            notes.skip("gemm.csv", len(ms_ok) * (2 if caps.fp8 else 1))
    return rows


def _gemm_shape(mk: Maker, caps: Capabilities, s: GemmShape, ms: list[int]) -> list[dict]:
    t = mk.t
    mmax = max(ms)
    w = mk.randn(s.n, s.k)
    x = mk.randn(_pad16(mmax), s.k)
    wq = w.to(t.float8_e4m3fn) if caps.fp8 else None
    xq = x.to(t.float8_e4m3fn) if caps.fp8 else None
    rows = []
    for m in ms:
        ms_bf16 = mk.b.time_ms(mk.mm(x[:m], w))
        nbytes = 2 * (s.n * s.k + m * s.k + m * s.n)
        flops = 2.0 * m * s.n * s.k
        rows.append({"dtype": "bf16", "m": m, "n": s.n, "k": s.k, "tag": s.tag, "ms": ms_bf16,
                     "tflops": _tflops(flops, ms_bf16), "gbps": _gbps(nbytes, ms_bf16),
                     "m_padded": None})
        if caps.fp8:
            mp = _pad16(m)
            ms_fp8 = mk.b.time_ms(mk.scaled_mm(xq[:mp], wq))
            nbytes8 = s.n * s.k + mp * s.k + 2 * mp * s.n
            rows.append({"dtype": "fp8", "m": m, "n": s.n, "k": s.k, "tag": s.tag, "ms": ms_fp8,
                         "tflops": _tflops(flops, ms_fp8), "gbps": _gbps(nbytes8, ms_fp8),
                         "m_padded": mp})
    return rows


# --- grouped GEMM --------------------------------------------------------------------------------

def grouped_table(mk: Maker, caps: Capabilities, plan: ProfilePlan, notes: Notes,
                  say: Progress) -> list[dict]:
    groups: dict[tuple[str, int, int, int], list[GroupedCase]] = {}
    for c in plan.grouped:
        groups.setdefault((c.model, c.experts, c.k, c.n), []).append(c)
    say(f"grouped gemm ({caps.grouped}): {len(plan.grouped)} cases")
    rows: list[dict] = []
    for (model, experts, k, n), cases in groups.items():
        mk.b.release()
        free = mk.b.free_bytes()
        need = lambda c: 2 * (experts * n * k * 2 + experts * c.tokens_per_expert * (k + 2 * n))  # noqa: E731
        ok = [c for c in cases if need(c) <= free]
        notes.skip("grouped_gemm.csv", len(cases) - len(ok))
        if not ok:
            continue
        try:
            w = mk.grouped_weight(caps, mk.randn(experts, n, k))
            x = mk.randn(experts * max(c.tokens_per_expert for c in ok), k)
            for c in ok:
                ms = mk.b.time_ms(mk.grouped(caps, x, w, experts, c.tokens_per_expert))
                flops = 2.0 * experts * c.tokens_per_expert * k * n
                rows.append({"model": model, "experts": experts,
                             "tokens_per_expert": c.tokens_per_expert, "k": k, "n": n, "ms": ms,
                             "tflops": _tflops(flops, ms)})
            del w, x
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            notes.skip("grouped_gemm.csv", len(ok))
    return rows


# --- attention -----------------------------------------------------------------------------------

def _attn_bytes(c: AttnCase, caps: Capabilities) -> int:
    """Memory of one case: q and output, K and V (repeated to the query heads without native
    GQA), an explicit mask if one is built, and 25 % slack for kernel workspace."""
    q_out = 2 * 2 * c.batch * c.q_heads * c.q_len * c.head_dim
    kv = kv_bytes(c.batch, c.kv_heads, c.kv_len, c.head_dim)
    if caps.gqa != "enable_gqa":
        kv *= 1 + c.q_heads // c.kv_heads
    mask = c.q_len * c.kv_len if c.phase == "chunked_prefill" else 0
    return int(1.25 * (q_out + kv + mask))


def _attn_ms(mk: Maker, caps: Capabilities, c: AttnCase) -> float:
    q = mk.randn(c.batch, c.q_heads, c.q_len, c.head_dim)
    k = mk.randn(c.batch, c.kv_heads, c.kv_len, c.head_dim)
    v = mk.randn(c.batch, c.kv_heads, c.kv_len, c.head_dim)
    if c.phase == "chunked_prefill":
        fn = mk.attention(caps, q, k, v, causal=False,
                          mask=mk.lower_right_mask(caps, c.q_len, c.kv_len))
    else:
        fn = mk.attention(caps, q, k, v, causal=c.phase == "prefill")
    return mk.b.time_ms(fn)


def attention_table(mk: Maker, caps: Capabilities, cases: tuple[AttnCase, ...], table: str,
                    notes: Notes, say: Progress) -> list[dict]:
    """Prefill / decode rows (attention.csv) or chunked-prefill rows (attention_chunked.csv)."""
    say(f"{table}: {len(cases)} cases (GQA via {caps.gqa})")
    rows: list[dict] = []
    for c in cases:
        need = _attn_bytes(c, caps)
        if not mk.b.fits(need):
            mk.b.release()
            if not mk.b.fits(need):
                notes.skip(table)
                continue
        try:
            ms = _attn_ms(mk, caps, c)
        except Exception as exc:  # noqa: BLE001
            if not is_oom(exc):
                raise
            mk.b.release()
            notes.skip(table)
            continue
        row = {"phase": c.phase, "batch": c.batch, "q_heads": c.q_heads, "kv_heads": c.kv_heads,
               "head_dim": c.head_dim, "q_len": c.q_len, "kv_len": c.kv_len, "ms": ms}
        if c.phase == "decode":
            row.update(tflops=None, gbps=_gbps(kv_bytes(c.batch, c.kv_heads, c.kv_len,
                                                        c.head_dim), ms))
        elif c.phase == "prefill":
            row.update(tflops=_tflops(attention_flops(c), ms), gbps=None)
        else:
            row["tflops"] = _tflops(attention_flops(c), ms)
        rows.append(row)
    return rows


# --- elementwise and bandwidth -------------------------------------------------------------------

def _elementwise_fn(mk: Maker, op: str, ops: dict, tokens: int):
    x, r, gu, w = ops["x"][:tokens], ops["r"][:tokens], ops["gu"][:tokens], ops["w"]
    if op == "rmsnorm":
        return mk.rmsnorm(x, w)
    if op == "silu_mul":
        return mk.silu_mul(gu)
    if op == "residual_add":
        return mk.residual_add(x, r)
    raise ValueError(f"unknown elementwise op {op!r}")


def elementwise_table(mk: Maker, cases: tuple[ElementwiseCase, ...], say: Progress) -> list[dict]:
    say(f"elementwise: {len(cases)} cases")
    rows: list[dict] = []
    for h in sorted({c.hidden for c in cases}):
        mine = [c for c in cases if c.hidden == h]
        tmax = max(c.tokens for c in mine)
        ops = {"x": mk.randn(tmax, h), "r": mk.randn(tmax, h), "gu": mk.randn(tmax, 2 * h),
               "w": mk.randn(h)}
        for c in mine:
            ms = mk.b.time_ms(_elementwise_fn(mk, c.op, ops, c.tokens))
            rows.append({"op": c.op, "tokens": c.tokens, "hidden": h, "ms": ms})
    return rows


def bandwidth_table(mk: Maker, sizes_mib: tuple[int, ...], notes: Notes,
                    say: Progress) -> list[dict]:
    say(f"bandwidth: d2d copy of {', '.join(map(str, sizes_mib))} MiB")
    rows = []
    for mib in sizes_mib:
        nbytes = mib * 1024 ** 2
        if not mk.b.fits(2 * nbytes):
            notes.skip("bandwidth.csv")
            continue
        ms = mk.b.time_ms(mk.copy(nbytes))
        rows.append({"op": "d2d_copy", "mbytes": mib, "ms": ms, "gbps_rw": _gbps(2 * nbytes, ms)})
        mk.b.release()
    return rows
