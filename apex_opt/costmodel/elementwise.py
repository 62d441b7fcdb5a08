"""Memory-bound kernels: element-wise ops, copies, embedding, sampling.

Two sources:

* ``rmsnorm``, ``silu_mul``, ``residual_add``: the measured PyTorch ops of ``elementwise.csv``
  (``rmsnorm`` there is the unfused fp32-accumulate PyTorch version: several kernels, ~25 us even
  for one token), interpolated log-log in ``tokens x hidden`` (time grows linearly beyond the table);
* every other op (and all ops on a device without a profile): one streaming kernel,
  ``t = t0 + B / (BW * eff) * (1 + (B_half / B) ** a)`` fitted on the single-kernel measurements
  (small ``residual_add`` rows of ``elementwise.csv`` for the launch floor; ``bandwidth.csv``
  device copies, read + write bytes, for the bandwidth). Bytes per op (bf16 activations):

  ==================== ===========================================================================
  fused_add_rmsnorm    vLLM's fused residual-add + RMSNorm: read x, residual; write both (4 T H 2 B)
  rms_norm             the engines' one-kernel RMSNorm without residual (vLLM ``ops.rms_norm``,
                       SGLang / FlashInfer ``rmsnorm``): read x, write y (2 T H 2 B) -- MLA's
                       q_a / kv_a norms
  silu_and_mul         vLLM's fused SwiGLU: read gate and up (hidden = intermediate size), write one
  rope                 rotary embedding in place on q and k (hidden = q + k width): read + write
  embedding            gather rows of the embedding table + write (2 T H 2 B)
  sampling             logits (hidden = vocab) in fp32, ~3 passes (softmax, top-p/top-k, sample)
  copy                 read + write (2 T H 2 B)
  ==================== ===========================================================================

Use the fused names to model vLLM; the table names reproduce the profile's PyTorch ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .attention import DecodeFit
from .fitting import least_squares
from .profile import Profile

TABLE_OPS = ("rmsnorm", "silu_mul", "residual_add")
#: Bytes moved per (token x hidden) element for the streaming-kernel ops.
STREAM_BYTES_PER_ELT = {
    "fused_add_rmsnorm": 8.0,
    "rms_norm": 4.0,
    "silu_and_mul": 6.0,
    "rope": 4.0,
    "embedding": 4.0,
    "sampling": 12.0,
    "copy": 4.0,
    "residual_add": 6.0,
    "rmsnorm": 4.0,
    "silu_mul": 6.0,
    # MoE aux kernels (vLLM/SGLang fused_moe): router logits in fp32 (hidden = experts), the
    # token-to-expert sort (hidden = 1, ids in int32 read + written), the top-k weighted sum of the
    # expert outputs (hidden = topk x model hidden: read bf16, write 1/topk of it).
    "router_topk": 4.0,
    "moe_align": 8.0,
    "moe_sum": 2.5,
}
OPS = tuple(STREAM_BYTES_PER_ELT)


@dataclass(frozen=True)
class TableCurve:
    """Measured time as a function of elements (tokens x hidden), log-log."""

    log_elts: np.ndarray
    log_s: np.ndarray

    def __call__(self, elements: float) -> float:
        le = np.log(max(elements, 1.0))
        if le > self.log_elts[-1]:  # beyond the table: linear in elements from the last point
            return float(np.exp(self.log_s[-1] + le - self.log_elts[-1]))
        return float(np.exp(np.interp(le, self.log_elts, self.log_s)))


def table_curves(profile: Profile) -> dict[str, TableCurve]:
    e = profile.table("elementwise.csv")
    out = {}
    for op in TABLE_OPS:
        sel = e["op"] == op
        if not np.any(sel):
            continue
        elts = e["tokens"][sel].astype(float) * e["hidden"][sel].astype(float)
        s = e["ms"][sel].astype(float) * 1e-3
        uniq = np.unique(elts)
        med = np.array([np.median(s[elts == u]) for u in uniq])
        out[op] = TableCurve(np.log(uniq), np.log(np.maximum.accumulate(med)))
    return out


#: ``residual_add`` rows used for the streaming fit only up to this many elements (launch-bound
#: regime). At large sizes the profile's residual_add implies > 4 TB/s for 3 bf16 passes -- above
#: the HBM peak, so its byte count is not what we assume (in-place / cached operand); the device
#: copies of ``bandwidth.csv`` carry the bandwidth instead.
STREAM_FIT_MAX_ELTS = 64 * 8192


def stream_rows(profile: Profile) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, seconds) of single-kernel streaming measurements."""
    e = profile.table("elementwise.csv")
    sel = (e["op"] == "residual_add") & (e["tokens"].astype(float) * e["hidden"].astype(float) <= STREAM_FIT_MAX_ELTS)
    b1 = 3.0 * 2.0 * e["tokens"][sel].astype(float) * e["hidden"][sel].astype(float)
    s1 = e["ms"][sel].astype(float) * 1e-3
    bw = profile.table("bandwidth.csv")
    b2 = 2.0 * bw["mbytes"].astype(float) * 2.0 ** 20
    s2 = bw["ms"].astype(float) * 1e-3
    return np.concatenate([b1, b2]), np.concatenate([s1, s2])


def fit_stream(nbytes: np.ndarray, seconds: np.ndarray, bw: float) -> DecodeFit:
    """Same functional form as decode attention: launch + bytes at a size-dependent efficiency."""
    lt = np.log(seconds)

    def make(x):
        e = [float(v) for v in np.exp(x)]
        return DecodeFit(launch_s=e[0], eff=e[1], bytes_half=e[2], power=e[3])

    return make(least_squares(lambda x: np.log(make(x).time(nbytes, bw)) - lt,
                              np.log([4e-6, 0.9, 1e7, 0.5])))


def op_bytes(op: str, tokens: int, hidden: int) -> float:
    if op not in STREAM_BYTES_PER_ELT:
        raise InputError(f"unknown element-wise op; known: {', '.join(OPS)}", field="op", value=op)
    if tokens < 0 or hidden <= 0:
        raise InputError("tokens must be >= 0 and hidden > 0", field="tokens/hidden", value=(tokens, hidden))
    return STREAM_BYTES_PER_ELT[op] * float(tokens) * float(hidden)
