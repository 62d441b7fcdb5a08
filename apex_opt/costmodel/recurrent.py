"""Recurrent token mixers between their projections (which go through the GEMM path): Gated
DeltaNet (Qwen3-Next / Qwen3.5 ``linear_attention`` layers) and Mamba2 (Nemotron-H ``M`` blocks).

Kernel structure (vLLM model_executor/layers/fla/ops and SGLang layers/attention/fla, both the
flash-linear-attention Triton kernels; vLLM qwen3_next.py / SGLang hybrid_linear_attn_backend.py):

* decode (one token per sequence): ``causal_conv1d_update`` (reads and rewrites the conv window of
  ``conv_dim x (kernel - 1)`` per sequence) and ``fused_recurrent_gated_delta_rule`` (reads the
  ``heads x d_k x d_v`` state, decays it, applies the rank-1 delta update, reads out q.S and writes
  the state back). Memory-bound: ``2 x state bytes`` per sequence at the device's streaming
  bandwidth. FLOPs ~ 7 d_k d_v per head and token (decay, k.S, rank-1 update, q.S).
* prefill (chunk mode, ``chunk_gated_delta_rule`` with chunk C = 64, FLA chunk.py:
  chunk_local_cumsum, chunk_scaled_dot_kkt_fwd, solve_tril, recompute_w_u_fwd,
  chunk_gated_delta_rule_fwd_h, chunk_fwd_o) after ``causal_conv1d_fn``: per token and value
  head ~ ``6 d_k d_v`` (state recurrence K^T V_new, W.S, q.S) ``+ 4 C (d_k + d_v)`` (the chunk-local
  K K^T, W/U = A.K / A.V, q.K^T and its product with V) tensor-core FLOPs, and the per-chunk states
  ``h`` (bf16, [chunks, heads, d_k, d_v]) written by fwd_h and read by fwd_o, plus w and u, through
  HBM. Time = max(FLOPs at the device's measured attention-kernel efficiency -- the same class of
  Triton/CUTLASS tile-matmul kernel, fitted on attention.csv --, bytes at the streaming bandwidth),
  the per-sequence initial / final states read and written on top.

All quantities are per GPU (heads already divided by TP).
"""

from __future__ import annotations

import math
from typing import Sequence

#: FLA chunk_gated_delta_rule chunk length (BT = 64 in chunk.py / chunk_delta_h.py)
CHUNK = 64
#: bf16 activations / per-chunk intermediates (q, k, v, w, u, h, o)
ACT_BYTES = 2.0


def decode_work(n_seqs: int, heads: float, dk: int, dv: int, conv_ch: float, conv_kernel: int,
                ssm_bytes: float, conv_bytes: float = 2.0) -> tuple[float, float, float]:
    """(state bytes moved, conv bytes moved, FLOPs) of one decode step of ``n_seqs`` sequences."""
    state = n_seqs * heads * dk * dv * ssm_bytes
    conv = n_seqs * conv_ch * (conv_kernel - 1) * conv_bytes
    # q, k, v in; o out (bf16) are small next to the state
    io = n_seqs * (heads * (dk + 2 * dv)) * ACT_BYTES
    return 2.0 * state + io, 2.0 * conv + n_seqs * conv_ch * ACT_BYTES * 2, 7.0 * n_seqs * heads * dk * dv


def prefill_work(chunks: Sequence[tuple[int, int]], heads: float, k_heads: float, dk: int, dv: int,
                 ssm_bytes: float) -> tuple[float, float, float]:
    """(FLOPs, scan bytes, query tiles) of the chunked delta rule over ``(new tokens, cached)``
    chunks: the recurrence starts from each sequence's cached state whatever its length."""
    tokens = float(sum(q for q, _ in chunks))
    n = len(chunks)
    if tokens <= 0:
        return 0.0, 0.0, 0.0
    flops = tokens * heads * (6.0 * dk * dv + 4.0 * CHUNK * (dk + dv))
    n_chunks = float(sum(math.ceil(q / CHUNK) for q, _ in chunks))
    nbytes = (tokens * (k_heads * 2 * dk + heads * 2 * dv) * ACT_BYTES      # q, k, v in; o out
              + 2.0 * tokens * heads * (dk + dv) * ACT_BYTES * 2            # w, u written + read
              + 2.0 * n_chunks * heads * dk * dv * ACT_BYTES                # h written + read
              + 2.0 * n * heads * dk * dv * ssm_bytes)                      # initial / final state
    return flops, nbytes, n_chunks * heads


def mamba_decode_work(n_seqs: int, heads: float, head_dim: int, state: int, conv_ch: float,
                      conv_kernel: int, ssm_bytes: float, conv_bytes: float = 2.0) -> tuple[float, float, float]:
    """(state bytes moved, conv bytes moved, FLOPs) of one Mamba2 decode step
    (selective_state_update: per head, decay the head_dim x state state, add dt.x.B^T, read out
    C.state -- ~6 head_dim x state FLOPs; causal_conv1d_update)."""
    st = n_seqs * heads * head_dim * state * ssm_bytes
    conv = n_seqs * conv_ch * (conv_kernel - 1) * conv_bytes
    io = n_seqs * (2 * heads * head_dim) * ACT_BYTES
    return 2.0 * st + io, 2.0 * conv + n_seqs * conv_ch * ACT_BYTES * 2, 6.0 * n_seqs * heads * head_dim * state


def mamba_prefill_work(chunks: Sequence[tuple[int, int]], heads: float, head_dim: int, state: int,
                       groups: float, chunk: int, ssm_bytes: float) -> tuple[float, float, float]:
    """(FLOPs, bytes, query tiles) of Mamba2's chunked SSD scan (mamba_chunk_scan_combined:
    _chunk_cumsum, _bmm_chunk_fwd C.B^T per group, _chunk_state_fwd, _state_passing_fwd,
    _chunk_scan_fwd): per token and head ~ 4 head_dim x state (chunk states in, state read-out)
    + 2 chunk x head_dim (the intra-chunk (C.B^T * L).x), plus 2 chunk x state per group for C.B^T;
    the per-chunk states (fp32, [chunks, heads, head_dim, state]) written and read through HBM."""
    tokens = float(sum(q for q, _ in chunks))
    if tokens <= 0:
        return 0.0, 0.0, 0.0
    n = len(chunks)
    flops = tokens * (heads * (4.0 * head_dim * state + 2.0 * chunk * head_dim)
                      + groups * 2.0 * chunk * state)
    n_chunks = float(sum(math.ceil(q / chunk) for q, _ in chunks))
    nbytes = (tokens * (2 * heads * head_dim + 2 * groups * state) * ACT_BYTES   # x, B, C in; y out
              + 2.0 * n_chunks * heads * head_dim * state * 4.0                 # chunk states (fp32)
              + 2.0 * n * heads * head_dim * state * ssm_bytes)                 # initial / final
    return flops, nbytes, n_chunks * heads
