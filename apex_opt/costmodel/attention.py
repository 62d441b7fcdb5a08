"""Attention latency (flash-attention style kernels), fitted on ``attention.csv`` /
``attention_chunked.csv`` and expressed relative to datasheet peaks so it transfers to other devices.

Decode (one query per sequence, GQA): memory-bound on the KV bytes actually read,
``B = sum_i L_i * kv_heads * head_dim * 2 (K and V) * bytes(kv_dtype)`` -- every sequence with its
own context length, never an average. The efficiency grows with the amount of work
(tiny batches are launch/latency bound)::

    t = t0 + B / (BW * eff) * (1 + (B_half / B) ** a)

Prefill (causal over cached + new tokens, lower-right mask): FLOPs-bound. For a chunk of ``q`` new
tokens after ``c`` cached ones the attended (query, key) pairs are ``q*c + q*(q+1)/2``; the
triangular part and the rectangular "cached" part get separate efficiencies (the chunked kernel in
the profile is slower than the square causal one), and small problems (few 128-row query tiles
across heads and sequences) run below peak::

    t = t0 + (F_causal / (P * eff_causal) + F_cached / (P * eff_cached)) * (1 + (tiles_half / tiles) ** a)
    F = 4 * q_heads * head_dim * pairs

Layer kinds with their own shape (ModelSpec.attn_shapes: Gemma-4's 512-wide global layers,
MiMo-V2-Flash's K of 192 / V of 128, sliding layers with their own KV heads): each kind is costed
with its own KV heads per rank and ``head_dim = (k_head_dim + v_head_dim) / 2``, which makes both
formulas above exact -- decode reads ``L * kv_heads * (k_head_dim + v_head_dim)`` elements and
prefill does ``2 * q_heads * (k_head_dim + v_head_dim) * pairs`` FLOPs (q.k over K's width, p.v
over V's).

MLA (DeepSeek-V3) -- our choice, documented:

* decode reads the compressed latent once per token and layer (``kv_lora_rank + rope`` elements,
  shared by all heads, replicated on every TP rank as vLLM does) and runs the weight-absorbed form:
  ``FLOPs = 2 * heads * L * (kv_lora_rank + rope) + 2 * heads * L * kv_lora_rank``; time is the max of
  the decode memory curve on the latent bytes and the causal-prefill compute efficiency on those FLOPs;
* prefill runs as ordinary multi-head attention with ``qk_head_dim = nope + rope`` and ``v_head_dim``:
  ``F = 2 * heads * pairs * (qk_head_dim + v_head_dim)``.

Other GPUs (no profile): the attention FLOP efficiency is scaled by the ratio of the best published
forward utilisation of the kernel the device's compute capability runs to that of the profiled
H100's (FlashAttention-2 on A100/L40S, 73 %, vs FlashAttention-3 on Hopper, 75 %;
``attention_kernel_scale``, sources in ``data/device_transfer.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..specs.common import DTYPE_BYTES
from .fitting import least_squares
from .profile import Profile

Q_TILE = 128
#: Upper bound on the achieved fraction of peak for attention FLOPs (the best measured GEMM
#: efficiency on H100 is ~0.78 of the datasheet peak); keeps the fitted small-problem penalty from
#: extrapolating above peak for problems far larger than the profile's.
MAX_ATTN_EFF = 0.78


@dataclass(frozen=True)
class DecodeFit:
    launch_s: float
    eff: float
    bytes_half: float
    power: float

    def time(self, nbytes, bw: float):
        nbytes = np.maximum(np.asarray(nbytes, dtype=float), 1.0)
        return self.launch_s + nbytes / (bw * self.eff) * (1.0 + (self.bytes_half / nbytes) ** self.power)


@dataclass(frozen=True)
class PrefillFit:
    launch_s: float
    eff_causal: float
    eff_cached: float
    tiles_half: float
    power: float

    def time(self, flops_causal, flops_cached, tiles, peak_flops: float):
        tiles = np.maximum(np.asarray(tiles, dtype=float), 1.0)
        work = flops_causal / (peak_flops * self.eff_causal) + flops_cached / (peak_flops * self.eff_cached)
        mult = np.maximum(1.0 + (self.tiles_half / tiles) ** self.power,
                          max(self.eff_causal, self.eff_cached) / MAX_ATTN_EFF)
        return self.launch_s + work * mult


def kv_bytes(kv_dtype: str) -> float:
    if kv_dtype not in ("bf16", "fp16", "fp8"):
        raise InputError("unsupported KV-cache dtype (bf16, fp16, fp8)", field="kv_dtype", value=kv_dtype)
    return DTYPE_BYTES[kv_dtype]


def decode_rows(profile: Profile) -> dict[str, np.ndarray]:
    a = profile.table("attention.csv")
    sel = a["phase"] == "decode"
    rows = {c: a[c][sel].astype(float) for c in ("batch", "q_heads", "kv_heads", "head_dim", "kv_len", "ms")}
    rows["bytes"] = rows["batch"] * rows["kv_len"] * rows["kv_heads"] * rows["head_dim"] * 2 * 2.0
    rows["s"] = rows["ms"] * 1e-3
    return rows


def fit_decode(rows: dict[str, np.ndarray], bw: float, mask: np.ndarray | None = None) -> DecodeFit:
    m = np.ones(len(rows["s"]), dtype=bool) if mask is None else mask
    b, t = rows["bytes"][m], np.log(rows["s"][m])

    def make(x):
        e = [float(v) for v in np.exp(x)]
        return DecodeFit(launch_s=e[0], eff=e[1], bytes_half=e[2], power=e[3])

    x = least_squares(lambda x: np.log(make(x).time(b, bw)) - t, np.log([7e-6, 0.9, 3e7, 0.5]))
    return make(x)


def prefill_rows(profile: Profile) -> dict[str, np.ndarray]:
    a = profile.table("attention.csv")
    c = profile.table("attention_chunked.csv")
    sel = a["phase"] == "prefill"
    cols = ("batch", "q_heads", "kv_heads", "head_dim", "q_len", "kv_len", "ms")
    rows = {k: np.concatenate([a[k][sel].astype(float), c[k].astype(float)]) for k in cols}
    rows["chunked"] = np.concatenate([np.zeros(int(sel.sum()), bool), np.ones(len(c["ms"]), bool)])
    q, kv, b, h, d = rows["q_len"], rows["kv_len"], rows["batch"], rows["q_heads"], rows["head_dim"]
    cached = kv - q
    rows["f_causal"] = 4.0 * h * d * b * q * (q + 1) / 2.0
    rows["f_cached"] = 4.0 * h * d * b * q * cached
    rows["tiles"] = b * h * np.ceil(q / Q_TILE)
    rows["s"] = rows["ms"] * 1e-3
    return rows


def fit_prefill(rows: dict[str, np.ndarray], peak: float, mask: np.ndarray | None = None) -> PrefillFit:
    m = np.ones(len(rows["s"]), dtype=bool) if mask is None else mask
    fc, fk, tl, t = rows["f_causal"][m], rows["f_cached"][m], rows["tiles"][m], np.log(rows["s"][m])

    def make(x):
        e = [float(v) for v in np.exp(x)]
        return PrefillFit(launch_s=e[0], eff_causal=e[1], eff_cached=e[2], tiles_half=e[3], power=e[4])

    x = least_squares(lambda x: np.log(make(x).time(fc, fk, tl, peak)) - t,
                      np.log([1e-5, 0.6, 0.4, 500.0, 0.5]))
    return make(x)


def chunk_work(chunks: Sequence[tuple[int, int]], heads: int, flops_per_pair: float) -> tuple[float, float, float]:
    """(causal FLOPs, cached FLOPs, query tiles) of a list of (new_tokens, cached_tokens) chunks."""
    arr = np.asarray(chunks, dtype=float).reshape(-1, 2)
    if arr.size == 0:
        return 0.0, 0.0, 0.0
    if not (arr.min() >= 0 and np.isfinite(arr.max())):
        raise InputError("chunk sizes must be non-negative", field="chunks", value=arr.tolist()[:4])
    q, c = arr[:, 0], arr[:, 1]
    causal = float(np.sum(q * (q + 1) / 2.0)) * heads * flops_per_pair
    cached = float(np.sum(q * c)) * heads * flops_per_pair
    tiles = float(np.sum(np.ceil(q / Q_TILE))) * heads
    return causal, cached, tiles


def context_array(context_lens) -> np.ndarray:
    arr = np.asarray(context_lens, dtype=float).ravel()
    if arr.size and not (arr.min() >= 0 and np.isfinite(arr.max())):
        raise InputError("context lengths must be non-negative", field="context_lens", value=arr[:4].tolist())
    return arr


def attention_kernel_scale(device, profile: str) -> float:
    """Factor on the attention compute efficiency fitted on ``profile`` for ``device``: the best
    published forward utilisation of the flash-attention kernel its compute capability runs
    (FlashAttention-2 on sm_8x: no wgmma/TMA) over that of the reference device's kernel
    (``data/device_transfer.yaml``). 1 when either compute capability is not listed."""
    from .roofline import reference_facts, transfer_facts

    kernels = transfer_facts()["attention_kernels"]
    ref_cc = reference_facts(profile).get("compute_capability")
    dev_cc = getattr(device, "compute_capability", None)
    if dev_cc is None or ref_cc is None or dev_cc not in kernels or ref_cc not in kernels:
        return 1.0
    return float(kernels[dev_cc]["peak_fraction"]) / float(kernels[ref_cc]["peak_fraction"])


def window_chunks(chunks: Sequence[tuple[int, int]], window: int) -> list[tuple[int, int]]:
    """Prefill chunks of a sliding-window layer as (new tokens, cached tokens) pieces the causal
    kernel cost applies to: a query at absolute position p attends min(p + 1, window) keys (the
    kernel skips key tiles left of the window, FlashAttention ``window_size``). Each chunk is cut
    into pieces of at most ``window`` queries; a piece of l queries starting at position s is
    charged min(s, window - (l + 1) // 2) cached keys (exact when s = 0, l * window pairs -- the
    windowed count up to a triangle of l^2 / 2 -- once the window is full)."""
    out: list[tuple[int, int]] = []
    for q, c in chunks:
        q, start = int(q), int(c)
        while q > 0:
            ln = min(q, window)
            out.append((ln, max(0, min(start, window - (ln + 1) // 2))))
            start += ln
            q -= ln
    return out
