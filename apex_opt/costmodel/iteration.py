"""One engine iteration of a replica: latency, energy and a per-operator breakdown.

An iteration runs a batch that mixes decode tokens (each sequence with its own context length) and
prefill chunks (each with its own chunk length and already-cached context) through every layer of
every pipeline stage:

* per layer: input RMSNorm, QKV (or MLA) projections, rotary, attention (prefill part causal over
  cached + new tokens; decode part memory-bound on each sequence's KV), output projection, TP
  all-reduce, post-attention RMSNorm, then either a gated MLP or an MoE block (router, routed-expert
  grouped GEMMs with top-k routing and an explicit load-imbalance factor, shared experts), and a
  second all-reduce;
* stage 0 adds the embedding lookup, the last stage the final norm, LM head for the sequences that
  sample this step (last prompt chunk or a decode), the logits gather and sampling;
* between stages a send/recv of the hidden states;
* the engine's CPU step (scheduling, metadata broadcast, sampling, detokenising) and kernel-launch
  costs: decode-only batches replay a CUDA graph at a padded batch size, prefill / mixed batches run
  eagerly, where a layer takes max(GPU time, CPU launch time of its kernels).

GEMM-like work depends only on the token count, so it is cached per (tokens, sampling sequences,
graph mode); attention is computed per call from the per-sequence lengths.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np

from ..memory import kv_heads_per_rank, stage_layer_ranges
from ..specs.cluster import PoolSpec
from ..specs.common import DTYPE_BYTES
from ..specs.engine import EngineSpec, load_engine
from ..specs.model import ModelSpec
from ..specs.plan import ReplicaConfig
from .collectives import collective_model_for
from . import DeviceCostModel

class IterationCost(NamedTuple):
    """Cost of one iteration of one replica."""

    time_s: float
    stage_times_s: tuple[float, ...]
    energy_j: float
    busy_gpu_s: float
    flops: float
    hbm_bytes: float
    breakdown: dict[str, float] | None


@dataclass
class _Part:
    """Accumulates time (s), energy (J per GPU), FLOPs, bytes and the breakdown of one stage."""

    time: float = 0.0
    energy: float = 0.0
    flops: float = 0.0
    bytes: float = 0.0
    kernels: int = 0

    def add(self, cls: str, t: float, p: float, bd: dict[str, float], n: float = 1.0,
            kernels: int = 1, flops: float = 0.0, nbytes: float = 0.0) -> None:
        self.time += t * n
        self.energy += t * p * n
        self.flops += flops * n
        self.bytes += nbytes * n
        self.kernels += int(kernels * n)
        bd[cls] = bd.get(cls, 0.0) + t * n


class IterationCostModel:
    """Iteration latency/energy for one replica shape (``cfg``) of ``model`` on ``pool``."""

    def __init__(self, model: ModelSpec, pool: PoolSpec, cfg: ReplicaConfig,
                 engine: EngineSpec | None = None, *, moe_imbalance: float = 1.15):
        self.model, self.pool, self.cfg = model, pool, cfg
        self.engine = engine or load_engine()
        self.device = pool.device
        self.dev = DeviceCostModel(pool.device)
        self.tp, self.pp, self.ep = cfg.tp, cfg.pp, cfg.ep
        self.num_gpus = cfg.tp * cfg.pp
        self.moe_imbalance = moe_imbalance
        self.idle_power_w = pool.device.idle_power_w
        self.compute_dtype = "fp8" if (cfg.weight_dtype == "fp8" and "fp8" in pool.device.peak_tflops) else "bf16"
        self.weight_dtype = None if cfg.weight_dtype == "bf16" else cfg.weight_dtype
        self.peak_flops = pool.device.tflops(self.compute_dtype) * 1e12 * self.num_gpus
        self.peak_bytes_per_s = pool.device.hbm_bandwidth_gbps * 1e9 * self.num_gpus
        self.tp_comm = collective_model_for(pool, cfg.tp) if cfg.tp > 1 else None
        self.custom_ar = cfg.custom_allreduce and cfg.tp > 1 and cfg.tp <= pool.gpus_per_node
        cross_node = cfg.tp * cfg.pp > pool.gpus_per_node
        self.pp_comm = collective_model_for(pool, pool.gpus_per_node + 1 if cross_node else 2) \
            if cfg.pp > 1 else None
        ranges = stage_layer_ranges(model.num_layers, cfg)
        self.stage_layers = [(sum(1 for i in r if not model.is_moe_layer(i)),
                              sum(1 for i in r if model.is_moe_layer(i))) for r in ranges]
        h, tp = model.hidden_size, cfg.tp
        self.q_heads = model.num_attention_heads // tp
        self.kv_heads = kv_heads_per_rank(model, tp)
        self.kv_bytes = DTYPE_BYTES[cfg.kv_dtype]
        self.attn_ops = [self._shard(op) for op in model.attention_linear_ops()]
        self.mlp_ops = [self._shard(op) for op in model.dense_mlp_linear_ops()]
        self.shared_ops = [self._shard(op) for op in model.shared_expert_linear_ops()]
        if model.moe:
            etp = tp // cfg.ep
            self.expert_ops = [(op.name, op.n // etp if op.split == "column" else op.n,
                                op.k // etp if op.split == "row" else op.k)
                               for op in model.expert_linear_ops()]
            self.local_experts = model.moe.num_experts // cfg.ep
        self.hidden = h
        self.vocab_shard = -(-model.vocab_size // tp)
        self.graph = cfg.cuda_graphs
        self._token_cache: dict = {}

    # ------------------------------------------------------------------ helpers
    def _shard(self, op) -> tuple[str, int, int]:
        tp, m = self.tp, self.model
        if op.split == "replicated":
            return op.name, op.n, op.k
        if op.name == "qkv" and m.attention == "gqa":
            return op.name, (self.q_heads + 2 * kv_heads_per_rank(m, tp)) * m.head_dim, op.k
        if op.split == "column":
            return op.name, op.n // tp, op.k
        return op.name, op.n, op.k // tp

    def _gemm(self, part: _Part, bd: dict, cls: str, m: int, n: int, k: int, count: float) -> None:
        c = self.dev.gemm(m, n, k, self.compute_dtype, self.weight_dtype)
        wb = DTYPE_BYTES.get(self.cfg.weight_dtype, 2)
        part.add(cls, c.time_s, c.power_w, bd, count, flops=2.0 * m * n * k,
                 nbytes=n * k * wb + 2.0 * m * (n + k))

    def _allreduce(self, part: _Part, bd: dict, tokens: int, count: float) -> None:
        if self.tp_comm is None:
            return
        nbytes = tokens * self.hidden * 2.0
        t = self.tp_comm.all_reduce(nbytes, self.tp, custom=self.custom_ar)
        part.add("communication", t, self.tp_comm.power_w(), bd, count)

    # ------------------------------------------------------------------ token-count-only work
    def _token_work(self, tokens: int, sampling: int) -> tuple[tuple[_Part, ...], dict]:
        """Per-stage cost of everything except attention for ``tokens`` tokens (cached)."""
        key = (tokens, sampling)
        hit = self._token_cache.get(key)
        if hit is not None:
            return hit
        bd: dict[str, float] = {}
        parts = []
        h = self.hidden
        for s, (n_dense, n_moe) in enumerate(self.stage_layers):
            part = _Part()
            n_layers = n_dense + n_moe
            for name, n, k in self.attn_ops:
                self._gemm(part, bd, "attention_proj", tokens, n, k, n_layers)
            for op, width in (("fused_add_rmsnorm", h), ("fused_add_rmsnorm", h)):
                c = self.dev.elementwise(op, tokens, width)
                part.add("elementwise", c.time_s, c.power_w, bd, n_layers, nbytes=4.0 * tokens * width)
            rope = self.dev.elementwise("rope", tokens, (self.q_heads + self.kv_heads) * self.model.head_dim)
            part.add("elementwise", rope.time_s, rope.power_w, bd, n_layers)
            self._allreduce(part, bd, tokens, 2 * n_layers)
            if n_dense:
                for name, n, k in self.mlp_ops:
                    self._gemm(part, bd, "mlp", tokens, n, k, n_dense)
                c = self.dev.elementwise("silu_and_mul", tokens, self.mlp_ops[0][1] // 2)
                part.add("elementwise", c.time_s, c.power_w, bd, n_dense)
            if n_moe:
                self._moe(part, bd, tokens, n_moe)
            if s == 0:
                c = self.dev.elementwise("embedding", tokens, h)
                part.add("elementwise", c.time_s, c.power_w, bd)
            if s == self.pp - 1 and sampling:
                c = self.dev.elementwise("rmsnorm", sampling, h)
                part.add("elementwise", c.time_s, c.power_w, bd)
                self._gemm(part, bd, "lm_head", sampling, self.vocab_shard, h, 1)
                if self.tp_comm is not None:
                    t = self.tp_comm.all_gather(sampling * self.model.vocab_size * 2.0, self.tp)
                    part.add("communication", t, self.tp_comm.power_w(), bd)
                c = self.dev.elementwise("sampling", sampling, self.model.vocab_size)
                part.add("sampling", c.time_s, c.power_w, bd)
            if s < self.pp - 1 and self.pp_comm is not None:
                t = self.pp_comm.send_recv(2.0 * tokens * h * 2.0)
                part.add("communication", t, self.pp_comm.power_w(), bd)
            parts.append(part)
        out = (tuple(parts), bd)
        if len(self._token_cache) < 65536:
            self._token_cache[key] = out
        return out

    def _moe(self, part: _Part, bd: dict, tokens: int, n_moe: int) -> None:
        moe = self.model.moe
        assert moe is not None
        # router (replicated, tiny) + top-k
        c = self.dev.gemm(tokens, moe.num_experts, self.hidden, "bf16", None)
        part.add("moe_router", c.time_s, c.power_w, bd, n_moe)
        assignments = tokens * moe.experts_per_token
        # expected number of distinct local experts that receive at least one token
        p_hit = 1.0 - (1.0 - 1.0 / moe.num_experts) ** assignments
        active = max(1.0, self.local_experts * p_hit)
        per_rank = assignments / self.ep * (self.moe_imbalance if self.ep > 1 else 1.0)
        per_expert = max(per_rank / active, 1e-9)
        n_active = max(1, int(round(active)))
        for name, n, k in self.expert_ops:
            c = self.dev.grouped_gemm(n_active, per_expert, n, k, self.compute_dtype, self.weight_dtype)
            part.add("moe_experts", c.time_s, c.power_w, bd, n_moe,
                     flops=2.0 * per_rank * n * k, nbytes=n_active * n * k * DTYPE_BYTES.get(self.cfg.weight_dtype, 2))
        c = self.dev.elementwise("silu_and_mul", int(max(1, per_rank)), self.expert_ops[0][1] // 2)
        part.add("elementwise", c.time_s, c.power_w, bd, n_moe)
        for name, n, k in self.shared_ops:
            self._gemm(part, bd, "moe_shared", tokens, n, k, n_moe)

    # ------------------------------------------------------------------ attention
    def _attention(self, decode_ctx: np.ndarray, prefill: Sequence[tuple[int, int]]) -> tuple[float, float, float, float]:
        """(time, energy/GPU, flops, bytes) of attention in ONE layer on one GPU."""
        t = e = fl = by = 0.0
        m = self.model
        if m.attention == "mla":
            if len(decode_ctx):
                c = self.dev.mla_decode(self.q_heads, m.mla.kv_lora_rank, m.mla.qk_rope_head_dim,
                                       decode_ctx, self.cfg.kv_dtype)
                t += c.time_s
                e += c.time_s * c.power_w
                by += float(decode_ctx.sum()) * m.kv_elems_per_token_per_layer() * self.kv_bytes
            if prefill:
                c = self.dev.mla_prefill(self.q_heads, m.mla.qk_nope_head_dim, m.mla.qk_rope_head_dim,
                                        m.mla.v_head_dim, prefill, self.cfg.kv_dtype)
                t += c.time_s
                e += c.time_s * c.power_w
        else:
            if len(decode_ctx):
                c = self.dev.attention_decode(self.q_heads, self.kv_heads, m.head_dim, decode_ctx,
                                              self.cfg.kv_dtype)
                t += c.time_s
                e += c.time_s * c.power_w
                by += float(decode_ctx.sum()) * 2 * self.kv_heads * m.head_dim * self.kv_bytes
                fl += 4.0 * self.q_heads * m.head_dim * float(decode_ctx.sum())
            if prefill:
                c = self.dev.attention_prefill(self.q_heads, self.kv_heads, m.head_dim, prefill,
                                               self.cfg.kv_dtype)
                t += c.time_s
                e += c.time_s * c.power_w
                for q, cached in prefill:
                    fl += 4.0 * self.q_heads * m.head_dim * q * (cached + (q + 1) / 2)
        return t, e, fl, by

    # ------------------------------------------------------------------ public
    def iteration(self, decode_ctx: np.ndarray, prefill: Sequence[tuple[int, int]] = (), *,
                  with_breakdown: bool = False, prefill_sampling: int | None = None) -> IterationCost:
        """Cost of one iteration.

        decode_ctx: context length (tokens in the KV cache including this step's) of each decoding
        sequence. prefill: ``(chunk_tokens, cached_tokens_before)`` of each prefilling sequence.
        prefill_sampling: how many of the prefill chunks finish their prompt (and so sample a token);
        default all.
        """
        decode_ctx = np.asarray(decode_ctx, dtype=np.int64)
        n_dec = int(decode_ctx.shape[0])
        n_pre_tok = int(sum(q for q, _ in prefill))
        sampling = n_dec + (len(prefill) if prefill_sampling is None else prefill_sampling)
        graph = self.graph and not prefill and n_dec > 0
        tokens = n_dec + n_pre_tok
        if graph:
            padded = self.engine.graph_batch_size(n_dec)
            if padded is None:
                graph = False
            else:
                tokens = sampling = padded
        if tokens == 0:
            return IterationCost(0.0, tuple(0.0 for _ in range(self.pp)), 0.0, 0.0, 0.0, 0.0,
                                 {} if with_breakdown else None)
        parts, bd_tok = self._token_work(tokens, sampling)
        a_t, a_e, a_f, a_b = self._attention(decode_ctx, prefill)
        stage_times, energy, busy, flops, nbytes = [], 0.0, 0.0, 0.0, 0.0
        bd = dict(bd_tok) if with_breakdown else None
        for s, part in enumerate(parts):
            n_layers = sum(self.stage_layers[s])
            gpu = part.time + a_t * n_layers
            kernels = part.kernels + n_layers  # + one attention kernel per layer
            if graph:
                saving = kernels * self.engine.graph_launch_saving_us * 1e-6
                gpu = max(gpu - saving, 0.5 * gpu)
                t = gpu
            else:
                launch_cpu = kernels * self.engine.eager_launch_us * 1e-6
                t = max(gpu, launch_cpu)
            stage_times.append(t)
            energy += (part.energy + a_e * n_layers) * self.tp
            busy += gpu * self.tp
            flops += (part.flops + a_f * n_layers) * self.tp
            nbytes += (part.bytes + a_b * n_layers) * self.tp
            if bd is not None:
                bd["attention"] = bd.get("attention", 0.0) + a_t * n_layers
                if t > gpu:
                    bd["launch_overhead"] = bd.get("launch_overhead", 0.0) + (t - gpu)
        host = self.host_time(n_dec + len(prefill))
        if bd is not None:
            bd["host"] = host
        total = sum(stage_times) + host
        return IterationCost(total, tuple(stage_times), energy, busy, flops, nbytes, bd)

    def host_time(self, num_seqs: int) -> float:
        """CPU time of one engine step for ``num_seqs`` sequences."""
        e = self.engine
        t = e.host_step_base_ms * 1e-3 + e.host_per_seq_us * 1e-6 * num_seqs
        if self.num_gpus > 1:
            t += e.host_multi_gpu_ms * 1e-3
        return t
