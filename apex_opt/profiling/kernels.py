"""The measured operators, built once per case so that timing covers only the kernel call.

Each ``make_*`` returns a zero-argument callable plus the bytes it allocated; the callers in
:mod:`apex_opt.profiling.tables` time it. ``detect_capabilities`` decides, by trying each feature on
a tiny problem, which code path this torch build and device support (fp8 GEMM, grouped GEMM,
native GQA, lower-right causal masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .timing import Bench

Fn = Callable[[], Any]


@dataclass(frozen=True)
class Capabilities:
    """Which implementation each table uses on this device (written to README / device.json)."""

    fp8: bool
    fp8_note: str
    grouped: str  # "torch._grouped_mm" | "torch.bmm"
    grouped_b_transposed: bool  # pass W as [E, n, k] viewed transposed (column-major B)
    gqa: str  # "enable_gqa" | "repeat_interleave"
    lower_right: str  # "causal_lower_right" | "explicit boolean mask"


class Maker:
    """Allocates operands on the benchmark device with a seeded generator."""

    def __init__(self, bench: Bench, seed: int = 0):
        self.b = bench
        self.t = bench.torch
        self.gen = self.t.Generator(device=bench.device)
        self.gen.manual_seed(seed)

    def randn(self, *shape: int, dtype=None):
        t = self.t
        return t.randn(*shape, generator=self.gen, device=self.b.device,
                       dtype=dtype or t.bfloat16)

    # --- GEMM -----------------------------------------------------------------------------------
    def mm(self, x, w) -> Fn:
        """bf16 y = x . W^T with W stored [n, k] (the nn.Linear layout)."""
        mm, wt = self.t.mm, w.t()
        return lambda: mm(x, wt)

    def scaled_mm(self, xq, wq) -> Fn:
        """fp8 e4m3 x and W with per-tensor scales, bf16 output."""
        t = self.t
        one = t.ones((), dtype=t.float32, device=self.b.device)
        wt = wq.t()
        return lambda: t._scaled_mm(xq, wt, scale_a=one, scale_b=one, out_dtype=t.bfloat16)

    # --- grouped GEMM ---------------------------------------------------------------------------
    @staticmethod
    def grouped_weight(caps: Capabilities, w_enk):
        """Expert weights stored [E, n, k] as the [E, k, n] operand the grouped kernel wants:
        a transposed view (column-major B), or a contiguous copy when the kernel needs one."""
        wb = w_enk.transpose(-2, -1)
        return wb if caps.grouped_b_transposed else wb.contiguous()

    def grouped(self, caps: Capabilities, x, w_ekn, experts: int, tokens_per_expert: int) -> Fn:
        """x [E*t, k] times each expert's [k, n] weight -> [E*t, n] (or [E, t, n] for bmm)."""
        t = self.t
        xs = x[:experts * tokens_per_expert]
        if caps.grouped == "torch._grouped_mm":
            offs = (t.arange(1, experts + 1, device=self.b.device, dtype=t.int32)
                    * tokens_per_expert)
            return lambda: t._grouped_mm(xs, w_ekn, offs=offs)
        x3 = xs.view(experts, tokens_per_expert, -1)
        return lambda: t.bmm(x3, w_ekn)

    # --- attention ------------------------------------------------------------------------------
    def attention(self, caps: Capabilities, q, k, v, *, causal: bool, mask=None) -> Fn:
        """scaled_dot_product_attention with GQA (native, or KV repeated before timing)."""
        f = self.t.nn.functional.scaled_dot_product_attention
        hq, hkv = q.shape[1], k.shape[1]
        if hq != hkv and caps.gqa != "enable_gqa":
            k = k.repeat_interleave(hq // hkv, dim=1)
            v = v.repeat_interleave(hq // hkv, dim=1)
        kw: dict[str, Any] = {"enable_gqa": True} if caps.gqa == "enable_gqa" else {}
        if mask is not None:
            return lambda: f(q, k, v, attn_mask=mask, **kw)
        return lambda: f(q, k, v, is_causal=causal, **kw)

    def lower_right_mask(self, caps: Capabilities, q_len: int, kv_len: int):
        """Causal mask aligned to the bottom-right corner: query i sees keys <= kv_len-q_len+i."""
        t = self.t
        if caps.lower_right == "causal_lower_right":
            from torch.nn.attention.bias import causal_lower_right
            return causal_lower_right(q_len, kv_len)
        ones = t.ones(q_len, kv_len, dtype=t.bool, device=self.b.device)
        return ones.tril(kv_len - q_len)

    # --- elementwise ----------------------------------------------------------------------------
    def rmsnorm(self, x, weight, eps: float = 1e-6) -> Fn:
        """RMSNorm with fp32 accumulation, output in the input dtype."""
        t = self.t

        def run():
            xf = x.float()
            inv = t.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
            return (xf * inv).to(x.dtype) * weight
        return run

    def silu_mul(self, gate_up) -> Fn:
        """SwiGLU: silu(gate) * up over a [tokens, 2*hidden] input."""
        silu = self.t.nn.functional.silu
        h = gate_up.shape[-1] // 2
        g, u = gate_up[:, :h], gate_up[:, h:]
        return lambda: silu(g) * u

    @staticmethod
    def residual_add(x, r) -> Fn:
        return lambda: x + r

    def copy(self, nbytes: int) -> Fn:
        t = self.t
        src = t.ones(nbytes, dtype=t.uint8, device=self.b.device)
        dst = t.empty_like(src)
        return lambda: dst.copy_(src)


def _try(fn: Fn) -> str | None:
    """None when ``fn()`` runs, else a one-line reason."""
    try:
        fn()
        return None
    except Exception as exc:  # noqa: BLE001 -- any failure means "not supported here"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]


def _detect_fp8(mk: Maker) -> tuple[bool, str]:
    t, b = mk.t, mk.b
    if not b.cuda:
        return False, "fp8 skipped: not a CUDA device"
    cap = t.cuda.get_device_capability(b.device)
    if cap < (8, 9):
        return False, f"fp8 skipped: compute capability {cap[0]}.{cap[1]} < 8.9"
    if not hasattr(t, "_scaled_mm") or not hasattr(t, "float8_e4m3fn"):
        return False, "fp8 skipped: this torch has no torch._scaled_mm / float8_e4m3fn"
    x = mk.randn(16, 64).to(t.float8_e4m3fn)
    w = mk.randn(32, 64).to(t.float8_e4m3fn)
    err = _try(mk.scaled_mm(x, w))
    if err:
        return False, f"fp8 skipped: torch._scaled_mm failed ({err})"
    return True, "fp8 = e4m3 weights and activations via torch._scaled_mm, bf16 output"


def _detect_grouped(mk: Maker) -> tuple[str, bool]:
    t = mk.t
    if not hasattr(t, "_grouped_mm"):
        return "torch.bmm", True
    experts, tokens, k, n = 2, 16, 64, 32
    x = mk.randn(experts * tokens, k)
    w = mk.randn(experts, n, k)
    ref = t.bmm(x.view(experts, tokens, k), w.transpose(-2, -1)).reshape(experts * tokens, n)
    for transposed in (True, False):
        caps = Capabilities(False, "", "torch._grouped_mm", transposed, "", "")
        fn = mk.grouped(caps, x, mk.grouped_weight(caps, w), experts, tokens)
        try:
            out = fn()
        except Exception:  # noqa: BLE001 -- layout / device not supported: try the next one
            continue
        if out.shape == ref.shape and t.allclose(out.float(), ref.float(), rtol=2e-2, atol=2e-1):
            return "torch._grouped_mm", transposed
    return "torch.bmm", True


def _detect_gqa(mk: Maker) -> str:
    q, kv = mk.randn(1, 4, 8, 64), mk.randn(1, 2, 8, 64)
    f = mk.t.nn.functional.scaled_dot_product_attention
    return "enable_gqa" if _try(lambda: f(q, kv, kv, is_causal=True, enable_gqa=True)) is None \
        else "repeat_interleave"


def _detect_lower_right(mk: Maker, gqa: str) -> str:
    try:
        from torch.nn.attention.bias import causal_lower_right
    except ImportError:
        return "explicit boolean mask"
    caps = Capabilities(False, "", "torch.bmm", True, gqa, "causal_lower_right")
    q, kv = mk.randn(1, 4, 8, 64), mk.randn(1, 2, 32, 64)
    fn = mk.attention(caps, q, kv, kv, causal=False, mask=causal_lower_right(8, 32))
    return "causal_lower_right" if _try(fn) is None else "explicit boolean mask"


def detect_capabilities(mk: Maker) -> Capabilities:
    fp8, note = _detect_fp8(mk)
    grouped, transposed = _detect_grouped(mk)
    gqa = _detect_gqa(mk)
    return Capabilities(fp8, note, grouped, transposed, gqa, _detect_lower_right(mk, gqa))
