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

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np

from ..errors import InputError
from ..memory import recurrent_state_dtype
from ..parallel import kv_heads_per_rank, shared_expert_split, stage_layer_ranges
from ..specs.cluster import PoolSpec
from ..specs.common import DTYPE_BYTES
from ..specs.engine import EngineSpec, load_engine
from ..specs.model import ModelSpec
from ..specs.plan import ReplicaConfig
from .collectives import collective_model_for
from .kernels import eager_host, engine_kernels, kernel_facts
from .power import IterationWork, check_gpu_settings, dvfs_model, memory_activity_per_utilisation
from .roofline import WEIGHT_BYTES, weight_format
from . import recurrent as _rec
from .attention import window_chunks
from . import (DeviceCostModel, _active_experts, fp4_engine_path, fp4_unsupported_message,
               fp8_block_moe_backend)
from .kernels import mxfp4_path, mxfp4_unsupported_message


@lru_cache(maxsize=None)
def _mem_activity(profile_name: str) -> float:
    from .profile import load_profile
    return memory_activity_per_utilisation(load_profile(profile_name))

#: MLA's absorbed per-head GEMMs (run in bf16 whatever the checkpoint dtype)
_ABSORBED = frozenset({"w_uk", "w_uv"})
#: GEMMs whose input is the attention output (no norm/activation kernel to fuse its fp8 quant into)
_AFTER_ATTENTION = frozenset({"o"})
#: dynamic activation-quant kernels a fused MoE layer launches per compute dtype: fp8 quantizes
#: both expert GEMMs' inputs; NVFP4 only the layer input (the intermediate's quant runs inside
#: FlashInfer's fused MoE activation)
_MOE_QUANT_KERNELS = {"fp8": 2, "fp4": 1}


def _chunks_key(prefill) -> tuple:
    return tuple((int(q), int(c)) for q, c in prefill)


class IterationCost(NamedTuple):
    """Cost of one iteration of one replica."""

    time_s: float
    stage_times_s: tuple[float, ...]
    energy_j: float
    busy_gpu_s: float
    flops: float
    hbm_bytes: float
    breakdown: dict[str, float] | None
    #: SM clock (MHz) the iteration settled at when a clock / cap is set or the board limit
    #: throttled it (None = boost clock, unthrottled)
    sm_clock_mhz: float | None = None


@dataclass
class _Part:
    """Accumulates time (s), energy (J per GPU), FLOPs, bytes and the breakdown of one stage."""

    time: float = 0.0
    energy: float = 0.0
    flops: float = 0.0
    bytes: float = 0.0
    kernels: int = 0
    #: seconds bound by SM throughput (DVFS: they scale with 1 / SM clock)
    cmp_time: float = 0.0
    peak: float = 0.0
    bw: float = 0.0
    #: power window (DVFS): activity energy split memory / compute, compute seconds at max clock
    e_mem: float = 0.0
    e_cmp: float = 0.0
    cmp_max: float = 0.0
    split: object = None
    #: when a list: every breakdown increment (class, seconds) in order, to replay for an
    #: identical stage
    log: list | None = None

    def add(self, cls: str, t: float, p: float, bd: dict[str, float], n: float = 1.0,
            kernels: int = 1, flops: float = 0.0, nbytes: float = 0.0) -> None:
        if self.split is not None:
            em, ec, tc_, tcm = self.split(t, p, flops, nbytes)
            self.e_mem += em * n
            self.e_cmp += ec * n
            self.cmp_time += tc_ * n
            self.cmp_max += tcm * n
        elif flops > 0 and self.peak > 0:
            tc = flops / self.peak
            tm = nbytes / self.bw if self.bw > 0 else 0.0
            self.cmp_time += t * n * tc / (tc + tm)
        self.time += t * n
        self.energy += t * p * n
        self.flops += flops * n
        self.bytes += nbytes * n
        self.kernels += int(kernels * n)
        bd[cls] = bd.get(cls, 0.0) + t * n
        if self.log is not None:
            self.log.append((cls, t * n))


class IterationCostModel:
    """Iteration latency/energy for one replica shape (``cfg``) of ``model`` on ``pool``."""

    #: iteration() takes each DP-attention rank's batch as ``attention_ranks`` (sim/engine.py)
    supports_attention_dp = True

    def __init__(self, model: ModelSpec, pool: PoolSpec, cfg: ReplicaConfig,
                 engine: EngineSpec | None = None, *, moe_imbalance: float = 1.15,
                 sampler: str = "greedy", device_model: DeviceCostModel | None = None,
                 token_cache: dict | None = None):
        """``device_model`` (kernel costs of ``pool``'s device, memoised) and ``token_cache`` (the
        token-count-only work, see :meth:`_token_work`) may be shared with models of the same
        device / of the same shape, dtypes and engine that differ only in KV dtype or engine
        limits (the solver's surrogate curves of many candidates)."""
        self.model, self.pool, self.cfg = model, pool, cfg
        self.engine = engine or load_engine()
        # sampler filter of the requests ("greedy" | "top_p" | "top_k", Requests.sampler): the
        # engine's cost per logit of each sampled sequence, on every TP rank (full vocabulary)
        if sampler not in ("greedy", "top_p", "top_k"):
            raise ValueError(f"sampler must be greedy, top_p or top_k (got {sampler!r})")
        self.sampler = sampler
        self._filter_bytes = {"greedy": 0.0,
                              "top_p": self.engine.sampler_top_p_bytes_per_logit,
                              "top_k": self.engine.sampler_top_k_bytes_per_logit}[sampler]
        self.device = pool.device
        self.dvfs = dvfs_model(pool.device)
        # kernel times: the profile's sustained (back-to-back) times; with DVFS data the board
        # power limit (or a set cap / clock) is also applied over each iteration, the power
        # controller's window (see _power_window)
        self.dev = device_model if device_model is not None else DeviceCostModel(pool.device)
        if self.dev.device != pool.device:
            raise ValueError("device_model is not a model of the pool's device")
        self.tp, self.pp, self.ep = cfg.tp, cfg.pp, cfg.ep
        self.num_gpus = cfg.tp * cfg.pp
        self.moe_imbalance = moe_imbalance
        # DVFS (apex_opt/costmodel/power.py): clock / power-cap settings and the awake power of
        # the GPUs in the gaps between kernels (host part of a step, idle replica)
        self.sm_clock_mhz, self.power_cap_w = cfg.sm_clock_mhz, cfg.power_cap_w
        check_gpu_settings(pool.device, cfg.sm_clock_mhz, cfg.power_cap_w)
        self.idle_power_w = (self.dvfs.base_power(min(cfg.sm_clock_mhz or self.dvfs.f_max, self.dvfs.f_max))
                             if self.dvfs is not None
                             else pool.device.active_idle_power_w or pool.device.idle_power_w)
        # weight storage dtype: as set, else the checkpoint's (ReplicaConfig.resolved_weight_dtype)
        self.stored_dtype = wd = cfg.resolved_weight_dtype(model)
        #: stored bytes per linear-weight element the breakdown counts (NVFP4 with its per-16
        #: FP8 block scales, roofline.WEIGHT_BYTES; other dtypes their element size)
        #: the checkpoint's storage format when served as published (roofline.weight_format:
        #: 'mxfp4', 'int4_g32', ...), else the dtype's default layout
        fmt = weight_format(wd, model.quant_scheme if wd == model.default_weight_dtype else "")
        self.weight_elt_bytes = (WEIGHT_BYTES[fmt] if fmt != wd else
                                 WEIGHT_BYTES["fp4"] if wd == "fp4" else DTYPE_BYTES.get(wd, 2))
        self.compute_dtype = "fp8" if (wd == "fp8" and "fp8" in pool.device.peak_tflops) else "bf16"
        if fmt == "mxfp4":
            # MXFP4 experts (gpt-oss; the rest of the model is bf16, ModelSpec.quant_exclude):
            # bf16-activation kernels (vLLM; SGLang on Hopper) or MXFP4 x MXFP8 at the fp8 rate
            # (SGLang on Blackwell): data/kernels.yaml common.mxfp4
            path = mxfp4_path(pool.device, self.engine.name)
            if path is None:
                raise InputError(mxfp4_unsupported_message(pool.device, self.engine.name),
                                 field="weight_dtype", value="fp4")
            self.compute_dtype = "fp8" if path == "w4a8" else "bf16"
        elif wd == "fp4":
            # NVFP4: W4A4 on GPUs with FP4 tensor cores, else weight-only FP4 Marlin (bf16
            # compute); none on e.g. MI300X (data/kernels.yaml common.fp4). A W4A16 checkpoint
            # (no activation scales) runs Marlin on every GPU (vLLM ModelOptNvFp4W4A16 /
            # CompressedTensorsW4A16Fp4).
            path = fp4_engine_path(pool.device, self.engine.name)
            if path is None:
                raise InputError(fp4_unsupported_message(pool.device, self.engine.name),
                                 field="weight_dtype", value="fp4")
            a16 = model.checkpoint_dtype == "fp4" and model.quant_scheme == "nvfp4_w4a16"
            self.compute_dtype = "fp4" if (path == "w4a4" and not a16) else "bf16"
        self.weight_dtype = None if wd == "bf16" else fmt
        self.peak_flops = pool.device.tflops(self.compute_dtype) * 1e12 * self.num_gpus
        self.peak_bytes_per_s = pool.device.hbm_bandwidth_gbps * 1e9 * self.num_gpus
        # energy per FLOP at max clock and memory-activity power, from the fitted power model
        fit = self.dev.cal.power
        self._awake_w = self.dev.idle_power_w
        span = pool.device.power_limit_w - self._awake_w
        self._span_w = span
        self._j_per_flop = span * fit.a_cmp / (pool.device.tflops(self.compute_dtype) * 1e12)
        self._mem_w = (span * fit.a_mem, fit.gamma)
        self._tau_s = self.dev.cal.derate.tau_s
        # memory energy is linear in bytes moved (a constant energy per byte, measured on the
        # profile's memory-bound rows), J per byte of this device
        self._j_per_byte = (span * _mem_activity(self.dev.cal.profile.name)
                            / (pool.device.hbm_bandwidth_gbps * 1e9))
        self._split_cache: dict = {}
        self.tp_comm = collective_model_for(pool, cfg.tp) if cfg.tp > 1 else None
        self.custom_ar = cfg.custom_allreduce and cfg.tp > 1 and cfg.tp <= pool.gpus_per_node
        cross_node = cfg.tp * cfg.pp > pool.gpus_per_node
        self.pp_comm = collective_model_for(pool, pool.gpus_per_node + 1 if cross_node else 2) \
            if cfg.pp > 1 else None
        ranges = stage_layer_ranges(model, cfg, self.engine)
        #: per stage (dense-MLP layers, MoE layers) and all its layers (Nemotron-H: some have no MLP)
        self.stage_nlayers = [len(r) for r in ranges]
        #: hybrid models: sublayer blocks per stage (a mixer, an MLP), each with its pre-norm and
        #: TP all-reduce -- 2 per layer except Nemotron-H's mixer-only / MLP-only blocks
        self.stage_blocks = [sum(int(model.kind_of(i) != "none") + int(model.has_mlp(i)) for i in r)
                             for r in ranges]
        #: some block has no mixer or no MLP: a pre-norm per block, not two per layer
        self.norm_per_block = bool(model.mlp_free_layers) or "none" in model.kind_counts()
        self.stage_layers = [(sum(1 for i in r if not model.is_moe_layer(i) and model.has_mlp(i)),
                              sum(1 for i in r if model.is_moe_layer(i))) for r in ranges]
        #: hybrid models: layers of each attention kind per stage (sorted: a stable role key)
        self.stage_kinds = [tuple(sorted(model.kind_counts(r).items())) for r in ranges]
        h, tp = model.hidden_size, cfg.tp
        # DP attention (SGLang --enable-dp-attention; vLLM V1 --data-parallel-size with expert
        # parallelism), MoE models: `attn_dp` data-parallel attention ranks of tp/attn_dp GPUs
        # each; each runs attention (projections, norms, MLA / GQA) for its own requests only, then
        # the MLP/MoE runs over the tokens of all ranks, gathered before and reduce-scattered after
        # every layer's MLP (sglang layers/dp_attention.py dp_gather / dp_scatter; vLLM's
        # allgather_reducescatter all2all backend). ReplicaConfig.attention_dp: the attention-DP size.
        self.attn_dp = max(1, int(getattr(cfg, "attention_dp", 1) or 1))
        if self.attn_dp > 1 and (tp % self.attn_dp or model.moe is None):
            raise InputError("DP attention needs a MoE model and a DP size dividing TP",
                             field="attention_dp", value=self.attn_dp)
        self.attn_tp = tp // self.attn_dp
        self.attn_comm = collective_model_for(pool, self.attn_tp) if self.attn_tp > 1 else None
        #: per MoE layer, in order: (op, group, size) -- EngineSpec.dp_attention_collectives
        self.dp_colls = tuple(tuple(c) for c in self.engine.dp_attention_collectives)
        #: dense MLP layers / LM head on the gathered tokens over all tp GPUs (SGLang) or per rank
        #: on its own tokens over its attention-TP group (vLLM: each DP rank is an engine core)
        self.dp_gathered_dense = self.attn_dp == 1 or bool(self.engine.dp_attention_gathered_dense)
        self.q_heads = model.num_attention_heads // self.attn_tp
        self.kv_heads = kv_heads_per_rank(model, self.attn_tp)
        self.kv_bytes = DTYPE_BYTES[cfg.kv_dtype]
        #: recurrent-state dtype of linear-attention layers (engine default or the checkpoint's)
        self.state_dtype = recurrent_state_dtype(model, self.engine)
        self.attn_ops = [self._shard(op, self.attn_tp) for op in model.attention_linear_ops()]
        #: hybrid models: the projections of each attention kind (sliding = full's)
        self.kind_ops = {k: [self._shard(op, self.attn_tp, k) for op in model.attention_linear_ops(k)]
                         for k in model.kind_counts()} if model.is_hybrid else {}
        self.mlp_ops = [self._shard(op) for op in model.dense_mlp_linear_ops()]
        if not self.dp_gathered_dense:  # DP attention, per-rank dense MLP: attention-TP shards
            self.mlp_ops = [self._shard(op, self.attn_tp) for op in model.dense_mlp_linear_ops()]
        #: all-to-all MoE dispatch (ReplicaConfig.moe_a2a, DeepEP): each rank keeps its tokens
        self.a2a = bool(getattr(cfg, "moe_a2a", False)) and self.attn_dp > 1
        #: shared experts: the TP degree their weights split over and whose tokens they run on
        #: (parallel.shared_expert_split)
        shared_tp, self.shared_tokens = shared_expert_split(cfg, self.engine)
        self.shared_ops = [self._shard(op, shared_tp) for op in model.shared_expert_linear_ops()]
        if model.moe:
            etp = tp // cfg.ep
            self.expert_ops = [(op.name, op.n // etp if op.split == "column" else op.n,
                                op.k // etp if op.split == "row" else op.k)
                               for op in model.expert_linear_ops()]
            #: expert slots of a MoE layer: the routed experts + the EPLB replicas
            self.slots = model.moe.num_experts + cfg.redundant_experts
            self.local_experts = self.slots // cfg.ep
        #: GEMMs (class, n, k) the checkpoint keeps in bf16 (ModelSpec.quant_exclude, e.g. the
        #: attention of gpt-oss / Kimi-K2.5): bf16 GEMMs without an activation quant
        self._bf16_ops = self._kept_bf16_gemms(model, wd)
        #: GEMMs a mixed-precision checkpoint stores in fp8 below an fp4 / int4 main dtype
        #: (ModelSpec.quant_fp8, e.g. the attention of nvidia/Qwen3.6-*-NVFP4)
        self._fp8_ops = self._stored_fp8_gemms(model, wd)
        self.hidden = h
        #: LM head shard: over the GPUs that compute the logits (one DP rank's without gathering)
        self.lm_tp = tp if self.dp_gathered_dense else self.attn_tp
        self.vocab_shard = -(-model.vocab_size // self.lm_tp)
        # kernel paths (data/kernels.yaml): fp8 W8A8 quantizes each GEMM input dynamically with the
        # checkpoint's scheme (online fp8 of a bf16 checkpoint: per-tensor); block-fp8 MoE tiles
        kf = kernel_facts()
        scheme = model.quant_scheme if (wd == model.checkpoint_dtype == "fp8"
                                        and model.quant_scheme) else "fp8_tensor"
        self.block_fp8 = scheme == "fp8_block"
        self.act_quant = kf.scheme_act_quant.get(scheme) if self.compute_dtype == "fp8" else None
        if self.compute_dtype == "fp4":  # NVFP4 W4A4: scaled_fp4_quant before every GEMM
            self.act_quant = kf.scheme_act_quant["nvfp4"]
        self.act_quant_kernels = kf.act_quant[self.act_quant].kernels if self.act_quant else 0
        #: bytes the breakdown counts per quantized activation element (fp8: read 2 + write 1)
        self.act_quant_bytes = (kf.act_quant[self.act_quant].bytes_per_elt
                                if self.compute_dtype == "fp4" else 3.0)
        # vLLM V1 compiles RMSNorm / SiluAndMul / QuantFP8 as native ops that Inductor fuses: the
        # quant of a GEMM input produced by a norm or an activation adds only its fp8 write to
        # that kernel; engines that run them as custom ops launch a separate quant kernel
        self.quant_fused = bool(engine_kernels(self.engine.name).get("act_quant_fused_into_producer", False))
        # NVFP4's scaled_fp4_quant is a C++ custom op (torch.ops._C), not native torch code that
        # Inductor fuses: it stays a kernel of its own (vLLM's optional silu_and_mul+nvfp4 /
        # norm+nvfp4 fusion passes are not modelled)
        if self.compute_dtype == "fp4":
            self.quant_fused = False
        self.stream_bw = self.dev.bw * self.dev.cal.stream.eff
        #: activation-quant kernels of a fused MoE layer (MXFP4 x MXFP8: one, as NVFP4's)
        self.moe_quant_kernels = (1 if self.weight_dtype == "mxfp4" and self.compute_dtype == "fp8"
                                  else _MOE_QUANT_KERNELS.get(self.compute_dtype, 0))
        self.moe_kernels = 2 + kf.moe_aux_kernels + self.moe_quant_kernels
        self.mla_norms: tuple[int, ...] = ()
        if model.attention == "mla":
            # decode runs MLA weight-absorbed: kv_b_proj becomes two per-head batched GEMMs, q_nope
            # x W_UK (into the latent) before attention and latent x W_UV after, in bf16 (vLLM
            # MLACommonImpl dequantizes kv_b_proj at load; sglang forward_absorb uses torch.bmm)
            mla = model.mla
            self.attn_ops = [op for op in self.attn_ops if op[0] != "kv_b"] + [
                ("w_uk", self.q_heads * mla.kv_lora_rank, mla.qk_nope_head_dim),
                ("w_uv", self.q_heads * mla.v_head_dim, mla.kv_lora_rank)][:kf.mla_absorbed_bmm_kernels]
            self.mla_norms = ((mla.q_lora_rank,) if mla.q_lora_rank else ()) + (mla.kv_lora_rank,)
        #: the routed experts' kernel (see _moe_backend), fixed by the replica's shape
        self.moe_backend = self._moe_backend() if model.moe is not None else None
        #: the engine's Triton fused_moe against the dense-GEMM fit's compute rate (kernels.yaml
        #: fused_moe.triton_compute_eff; block fp8 under its own key, fp8_block)
        self._moe_compute_eff = 1.0
        if self.moe_backend == "triton":
            key = "fp8_block" if (self.block_fp8 and self.compute_dtype == "fp8") else self.compute_dtype
            self._moe_compute_eff = kf.moe_compute_eff(self.engine.engine, key,
                                                       pool.device.compute_capability)
        #: shared experts the engine runs inside the routed-expert MoE kernel as experts every
        #: token picks (SGLang's shared-expert fusion, EngineSpec.moe_shared_expert_fusion): no
        #: separate shared MLP then. Only the Triton fused_moe takes them (SGLang turns the fusion
        #: off for its FlashInfer TRT-LLM / CuteDSL MoE runners, server_args
        #: _handle_moe_kernel_config: "--disable-shared-experts-fusion is automatically set"), and
        #: not under weight-only formats
        self.fused_shared = 0
        if (self.moe_backend == "triton" and self.shared_ops and wd in ("bf16", "fp8")
                and any(rule.applies(model.architecture, model.moe.num_experts,
                                     model.moe.num_shared_experts, pool.device.compute_capability,
                                     cfg.ep)
                        for rule in self.engine.moe_shared_expert_fusion)):
            self.fused_shared = model.moe.num_shared_experts
            self.shared_ops = []
        self.graph = cfg.cuda_graphs
        self._eager_init(engine_kernels(self.engine.name))
        #: largest captured batch (SGLang's cuda_graph_max_bs by GPU memory and TP; None = all
        #: of the engine's capture sizes)
        self.graph_max_bs = self.engine.cuda_graph_max_bs(pool.device.name,
                                                          float(pool.device.memory_gib), cfg.tp)
        self._token_cache: dict = token_cache if token_cache is not None else {}
        #: exact memo of whole iterations (see iteration())
        self._iter_cache: dict = {}
        self._attn_cache: dict = {}

    # ------------------------------------------------------------------ eager host cost
    def _eager_init(self, ek: dict) -> None:
        """Host microseconds per layer / stage component of an eager step, from the engine's op
        inventory and the per-kind costs (data/kernels.yaml eager_ops, eager_host_us); None = no
        inventory, the flat ``eager_launch_us`` per counted kernel applies."""
        e = self.eager = eager_host(self.engine.name, self.engine.attention_backend,
                                    self.engine.eager_launch_us)
        if e is None:
            return
        quant_op_us = e.cost_us[ek.get("quant_kernel_kind", "custom_op")]
        # the fp8 activation quant before a GEMM, unless fused into its producer (V1 Inductor)
        q_us = self.act_quant_kernels * quant_op_us
        gemm, coll = e.us("gemm"), e.us("allreduce")
        attn_gemms = sum(gemm + (q_us if (self.act_quant and not (
            self.quant_fused and name not in _AFTER_ATTENTION) and name not in _ABSORBED
            and ("attention_proj", n_, k_) not in self._bf16_ops) else 0.0)
            for name, n_, k_ in self.attn_ops)
        n_coll = 0
        if self.attn_dp == 1:
            n_coll = 2 if self.tp_comm is not None else 0
        else:  # DP attention: the engine's per-layer collectives that have more than one GPU
            n_coll = sum(1 for _, g, _ in self.dp_colls
                         if (self.attn_comm if g == "attention_tp" else self.tp_comm) is not None)
        gq = gemm + (0.0 if (self.quant_fused or not self.act_quant) else q_us)
        #: per layer (any kind), per dense-MLP layer, per MoE layer; per first / last stage
        self._eager_layer_us = (e.us("layer") + attn_gemms + n_coll * coll
                                + len(self.mla_norms) * e.cost_us["custom_op"])
        def gq_of(cls: str, ops) -> float:  # GEMMs kept in bf16 launch no quant kernel
            if not self._bf16_ops:
                return len(ops) * gq
            return sum(gemm if (cls, n, k) in self._bf16_ops else gq for _, n, k in ops)

        self._eager_dense_us = gq_of("mlp", self.mlp_ops) + e.us("mlp")
        moe_us = 0.0
        if self.model.moe:
            path = "moe_ep" if (self.ep > 1 and e.has("moe_ep")) else "moe"
            moe_us = gemm + e.us(path)  # + the router GEMM (bf16)
            # fused_moe quantizes both expert GEMMs' inputs (fp8); the FP4 MoE only its input
            moe_us += self.moe_quant_kernels * quant_op_us
            if self.shared_ops:
                moe_us += gq_of("moe_shared", self.shared_ops) + e.us("mlp")
        self._eager_moe_us = moe_us
        self._eager_first_us, self._eager_last_us = e.us("stage_first"), e.us("stage_last")

    def _eager_stage_s(self, s: int, decode: bool, prefill: bool, sampling: bool) -> float | None:
        """Host seconds to issue stage ``s``'s work eagerly (None: no op inventory)."""
        if self.eager is None:
            return None
        n_dense, n_moe = self.stage_layers[s]
        us = (self.stage_nlayers[s] * (self._eager_layer_us + self.eager.attention_us(decode, prefill))
              + n_dense * self._eager_dense_us + n_moe * self._eager_moe_us)
        if s == 0:
            us += self._eager_first_us
        if s == self.pp - 1 and sampling:
            us += self._eager_last_us
        return us * 1e-6

    # ------------------------------------------------------------------ helpers
    def _shard(self, op, tp: int | None = None, kind: str = "full") -> tuple[str, int, int]:
        tp, m = tp or self.tp, self.model
        if op.split == "replicated":
            return op.name, op.n, op.k
        if op.name == "qkv" and m.attention == "gqa" and m.attn_shapes:
            sh = m.attn_shape(kind)  # this kind's K / V heads (replicated past their count)
            q = 2 * m.num_attention_heads // tp if m.attn_output_gate else m.num_attention_heads // tp
            return op.name, q * sh.head_dim + max(1, sh.num_kv_heads // tp) * sh.kv_width, op.k
        if op.name == "qkv" and m.attention == "gqa":
            q = 2 * self.q_heads if m.attn_output_gate else self.q_heads  # output gate: q_proj x2
            return op.name, (q + 2 * kv_heads_per_rank(m, tp)) * m.head_dim, op.k
        if op.split == "column":
            return op.name, op.n // tp, op.k
        return op.name, op.n, op.k // tp

    def _kept_bf16_gemms(self, model: ModelSpec, wd: str) -> frozenset:
        """(class, n, k) of the sharded GEMMs whose weights the checkpoint stores unquantized
        (ModelSpec.keeps_bf16), for :meth:`_gemm`."""
        if not model.quant_exclude or wd in ("bf16", "fp16"):
            return frozenset()
        out = set()
        for kind in (model.kind_counts() if model.is_hybrid else ("full",)):
            for op in model.attention_linear_ops(kind):
                if model.keeps_bf16("attention", op.name, wd):
                    out.add(("attention_proj",) + self._shard(op, self.attn_tp)[1:])
        for cls, comp, ops in (("mlp", "mlp", self.mlp_ops), ("moe_shared", "shared_experts", self.shared_ops)):
            if model.keeps_bf16(comp, weight_dtype=wd):
                out |= {(cls, n, k) for _, n, k in ops}
        return frozenset(out)

    def _stored_fp8_gemms(self, model: ModelSpec, wd: str) -> frozenset:
        """(class, n, k) of the sharded GEMMs a mixed-precision checkpoint stores in fp8
        (ModelSpec.stored_dtype 'fp8'), for :meth:`_gemm`."""
        if not model.quant_fp8 or wd in ("bf16", "fp16", "fp8"):
            return frozenset()
        out = set()
        if model.stored_dtype("attention", weight_dtype=wd) == "fp8":
            for kind in (model.kind_counts() if model.is_hybrid else ("full",)):
                out |= {("attention_proj",) + self._shard(op, self.attn_tp)[1:]
                        for op in model.attention_linear_ops(kind)}
        for cls, comp, ops in (("mlp", "mlp", self.mlp_ops), ("moe_shared", "shared_experts", self.shared_ops)):
            if model.stored_dtype(comp, weight_dtype=wd) == "fp8":
                out |= {(cls, n, k) for _, n, k in ops}
        return frozenset(out)

    def _gemm_fp8(self, part: _Part, bd: dict, cls: str, m: int, n: int, k: int, count: float,
                  fusible: bool) -> None:
        """A GEMM whose weights the checkpoint stores in fp8 inside an fp4 / int4 plan: W8A8
        with one activation-quant kernel on GPUs with fp8 tensor cores (ModelOpt FP8 layers carry
        a static input_scale: a single scaled_fp8_quant pass, like per-token quant), fp8 Marlin
        (weight-only, bf16 compute) elsewhere (DeviceCostModel.gemm)."""
        c = self.dev.gemm(m, n, k, "fp8", "fp8")
        part.add(cls, c.time_s, c.power_w, bd, count, flops=2.0 * m * n * k,
                 nbytes=n * k * 1.0 + 2.0 * m * (n + k))
        if "fp8" not in self.dev.device.peak_tflops:
            return
        if self.quant_fused and fusible:
            part.add("act_quant", m * k * 1.0 / self.stream_bw, c.power_w, bd, count, kernels=0,
                     nbytes=1.0 * m * k)
            return
        q = self.dev.act_quant("fp8_channel", m, k)
        part.add("act_quant", q.time_s, q.power_w, bd, count, kernels=1, nbytes=3.0 * m * k)

    def _gemm(self, part: _Part, bd: dict, cls: str, m: int, n: int, k: int, count: float,
              bf16: bool = False, fusible: bool = True) -> None:
        if not bf16 and self._bf16_ops and (cls, n, k) in self._bf16_ops:
            bf16 = True  # kept unquantized by the checkpoint (ModelSpec.quant_exclude)
        if not bf16 and self._fp8_ops and (cls, n, k) in self._fp8_ops:
            self._gemm_fp8(part, bd, cls, m, n, k, count, fusible)
            return
        if bf16:  # e.g. MLA's absorbed W_UK / W_UV batched GEMMs (dequantized to bf16 at load)
            c = self.dev.gemm(m, n, k, "bf16", None)
            part.add(cls, c.time_s, c.power_w, bd, count, flops=2.0 * m * n * k,
                     nbytes=n * k * 2.0 + 2.0 * m * (n + k))
            return
        c = self.dev.gemm(m, n, k, self.compute_dtype, self.weight_dtype)
        wb = self.weight_elt_bytes
        part.add(cls, c.time_s, c.power_w, bd, count, flops=2.0 * m * n * k,
                 nbytes=n * k * wb + 2.0 * m * (n + k))
        if self.act_quant is not None:  # W8A8: dynamic fp8 quant of this GEMM's input first
            if self.quant_fused and fusible:
                t = m * k * 1.0 / self.stream_bw  # fp8 copy written by the producing kernel
                part.add("act_quant", t, c.power_w, bd, count, kernels=0, nbytes=1.0 * m * k)
                return
            q = self.dev.act_quant(self.act_quant, m, k)
            part.add("act_quant", q.time_s, q.power_w, bd, count,
                     kernels=self.act_quant_kernels, nbytes=self.act_quant_bytes * m * k)

    def _allreduce(self, part: _Part, bd: dict, tokens: int, count: float) -> None:
        if self.tp_comm is None:
            return
        nbytes = tokens * self.hidden * 2.0
        t = self.tp_comm.all_reduce(nbytes, self.tp, custom=self.custom_ar)
        part.add("communication", t, self.tp_comm.power_w(), bd, count)

    def _dp_attention_comm(self, part: _Part, bd: dict, tokens: int, t_att: int, n_gathered: int,
                           n_rank: int = 0, n_mixer: int = 0,
                           groups: tuple[str, ...] = ("attention_tp", "all")) -> None:
        """DP attention collectives of one stage. ``n_gathered`` layers whose MLP (MoE, or dense
        when the engine gathers it) runs on every rank's tokens: the engine's
        ``dp_attention_collectives`` in order (e.g. vLLM: o_proj all-reduce in the attention-TP
        group, all-gather of all ranks' tokens over the tp GPUs, reduce-scatter back, all-gather
        of the rank's sequence-parallel shards). ``n_rank`` dense layers run per rank: an
        all-reduce in the attention-TP group after o_proj and after the MLP; ``n_mixer`` blocks
        without an MLP: the o_proj all-reduce. ``tokens``: all ranks' tokens (each padded to the
        busiest rank under a CUDA graph); ``t_att``: one rank's. ``groups``: which of the list's
        collectives to charge (all-to-all dispatch keeps only the attention-TP ones)."""
        h2 = self.hidden * 2.0
        for op, group, size in self.dp_colls:
            comm, n = (self.attn_comm, self.attn_tp) if group == "attention_tp" else (self.tp_comm, self.tp)
            if comm is None or not n_gathered or group not in groups:
                continue
            nbytes = (t_att if size == "rank" else tokens) * h2
            t = (comm.all_reduce(nbytes, n, custom=self.custom_ar) if op == "all_reduce"
                 else getattr(comm, op)(nbytes, n))
            part.add("communication", t, comm.power_w(), bd, n_gathered)
        if self.attn_comm is not None and (n_rank or n_mixer):
            t = self.attn_comm.all_reduce(t_att * h2, self.attn_tp, custom=self.custom_ar)
            part.add("communication", t, self.attn_comm.power_w(), bd, 2 * n_rank + n_mixer)

    def _a2a_comm(self, part: _Part, bd: dict, t_att: int, n_moe: int) -> None:
        """All-to-all MoE dispatch (DeepEP, both engines) of ``n_moe`` layers: the attention-TP
        collectives of the engine's DP-attention list (each attention-TP GPU keeps 1/attn_tp of
        its rank's tokens), then per layer a dispatch that sends each of this GPU's tokens once to
        every EP rank holding one of its top-k experts -- expected distinct ranks under random
        routing, ep (1 - (1 - 1/ep)^k) -- in the MoE's activation dtype (fp8 + one fp32 scale per
        128 values for fp8 / fp4 compute), and a combine that returns them in bf16; both costed as
        the link's measured all-to-all over the tp GPUs."""
        if not n_moe or self.tp_comm is None:
            return
        self._dp_attention_comm(part, bd, t_att, t_att, n_moe, groups=("attention_tp",))
        moe = self.model.moe
        ep = self.ep
        dest = ep * (1.0 - (1.0 - 1.0 / ep) ** moe.experts_per_token)
        local = -(-t_att // self.attn_tp)
        h = self.model.moe_hidden_size
        disp = h * (1.0 + 4.0 / 128.0) if self.compute_dtype in ("fp8", "fp4") else h * 2.0
        for per_token in (disp, h * 2.0):  # dispatch, combine
            t = self.tp_comm.all_to_all(local * dest * per_token, self.tp)
            part.add("communication", t, self.tp_comm.power_w(), bd, n_moe)

    # ------------------------------------------------------------------ token-count-only work
    def _token_work(self, tokens: int, sampling: int, t_att: int | None = None,
                    s_rank: int | None = None) -> tuple[tuple[_Part, ...], dict]:
        """Per-stage cost of everything except attention for ``tokens`` tokens (cached). DP
        attention: ``tokens`` / ``sampling`` are every rank's, ``t_att`` / ``s_rank`` the busiest
        rank's (default: an even split), which sets the lockstep step's attention-side time."""
        if t_att is None:
            t_att = -(-tokens // self.attn_dp)
        if s_rank is None:
            s_rank = -(-sampling // self.attn_dp)
        key = (tokens, sampling, t_att, s_rank)
        hit = self._token_cache.get(key)
        if hit is not None:
            return hit
        bd: dict[str, float] = {}
        parts = []
        h = self.hidden
        mla = self.model.mla
        rope_width = ((self.q_heads + 1) * mla.qk_rope_head_dim if mla is not None
                      else (self.q_heads + self.kv_heads) * self.model.head_dim)
        roles: dict = {}
        for s, (n_dense, n_moe) in enumerate(self.stage_layers):
            # stages with the same layers and role cost the same: computed once, their
            # breakdown increments replayed in order (the same sums bit for bit)
            role = (n_dense, n_moe, s == 0, s == self.pp - 1, self.stage_kinds[s])
            done = roles.get(role)
            if done is not None:
                for cls, v in done.log:
                    bd[cls] = bd.get(cls, 0.0) + v
                parts.append(done)
                continue
            part = _Part(peak=self.peak_flops / self.num_gpus,
                         bw=self.peak_bytes_per_s / self.num_gpus,
                         split=self._split if self.dvfs is not None else None, log=[])
            roles[role] = part
            n_layers = self.stage_nlayers[s]
            n_rope = n_layers
            if self.kind_ops:  # hybrid: each kind's projections on its layers; no rope in GDN
                kinds = dict(self.stage_kinds[s])
                n_rope = kinds.get("full", 0) + kinds.get("sliding", 0)
                for kind, cnt in self.stage_kinds[s]:
                    for name, n, k in self.kind_ops[kind]:
                        self._gemm(part, bd, "attention_proj", t_att, n, k, cnt,
                                   fusible=name not in _AFTER_ATTENTION and name != "out_proj")
            for name, n, k in (() if self.kind_ops else self.attn_ops):
                self._gemm(part, bd, "attention_proj", t_att, n, k, n_layers, bf16=name in _ABSORBED,
                           fusible=name not in _AFTER_ATTENTION)
            for width in self.mla_norms:  # MLA: q_a_layernorm, kv_a_layernorm
                c = self.dev.elementwise("rms_norm", t_att, width)
                part.add("elementwise", c.time_s, c.power_w, bd, n_layers, nbytes=4.0 * t_att * width)
            norms = (("fused_add_rmsnorm", h, n_layers), ("fused_add_rmsnorm", h, n_layers))
            if self.norm_per_block:
                norms = (("fused_add_rmsnorm", h, self.stage_blocks[s]),)
            for op, width, cnt in norms:
                c = self.dev.elementwise(op, t_att, width)
                part.add("elementwise", c.time_s, c.power_w, bd, cnt, nbytes=4.0 * t_att * width)
            if self.model.attn_shapes and self.kind_ops:
                # per-kind shapes: each kind's rope over its own q + k heads and width
                kinds = dict(self.stage_kinds[s])
                for kind in ("full", "sliding"):
                    if kinds.get(kind):
                        sh = self.model.attn_shape(kind)
                        w = (self.q_heads + max(1, sh.num_kv_heads // self.attn_tp)) * sh.head_dim
                        rope = self.dev.elementwise("rope", t_att, w)
                        part.add("elementwise", rope.time_s, rope.power_w, bd, kinds[kind])
            else:
                rope = self.dev.elementwise("rope", t_att, rope_width)
                part.add("elementwise", rope.time_s, rope.power_w, bd, n_rope)
            if self.model.qk_norm_tp:
                # MiniMax-M2's whole-layer q/k RMSNorm: the norms over this rank's q and k slices,
                # and with TP one all-reduce of the [tokens, 2] fp32 variances per layer. vLLM
                # writes it in PyTorch ops around that all-reduce (MiniMaxText01RMSNormTP: pow,
                # mean, all-reduce, rsqrt, two muls, for q and for k), not one fused norm kernel:
                # the profile's unfused PyTorch rmsnorm is the closer measurement
                width = (self.q_heads + self.kv_heads) * self.model.head_dim
                c = self.dev.elementwise("rmsnorm", t_att, width)
                part.add("elementwise", c.time_s, c.power_w, bd, n_rope, nbytes=4.0 * t_att * width)
                comm = self.attn_comm if self.attn_dp > 1 else self.tp_comm
                if comm is not None:
                    t = comm.all_reduce(t_att * 2 * 4.0, self.attn_tp, custom=self.custom_ar)
                    part.add("communication", t, comm.power_w(), bd, n_rope)
            if self.attn_dp == 1:
                self._allreduce(part, bd, tokens, self.stage_blocks[s] if self.kind_ops else 2 * n_layers)
            elif self.a2a:  # MoE layers: all-to-all dispatch / combine of the rank's tokens
                self._dp_attention_comm(part, bd, tokens, t_att,
                                        n_dense if self.dp_gathered_dense else 0,
                                        n_rank=0 if self.dp_gathered_dense else n_dense,
                                        n_mixer=n_layers - n_moe - n_dense)
                self._a2a_comm(part, bd, t_att, n_moe)
            elif self.dp_gathered_dense:
                self._dp_attention_comm(part, bd, tokens, t_att, n_moe + n_dense,
                                        n_mixer=n_layers - n_moe - n_dense)
            else:
                self._dp_attention_comm(part, bd, tokens, t_att, n_moe, n_rank=n_dense,
                                        n_mixer=n_layers - n_moe - n_dense)
            if n_dense:
                m_mlp = tokens if self.dp_gathered_dense else t_att
                for name, n, k in self.mlp_ops:
                    self._gemm(part, bd, "mlp", m_mlp, n, k, n_dense)
                c = self.dev.elementwise("silu_and_mul", m_mlp,
                                         self.mlp_ops[0][1] // (2 if self.model.mlp_gated else 1))
                part.add("elementwise", c.time_s, c.power_w, bd, n_dense)
            if n_moe:
                self._moe(part, bd, tokens, n_moe, t_att)
            if s == 0:  # each DP-attention rank embeds its own tokens
                c = self.dev.elementwise("embedding", t_att, h)
                part.add("elementwise", c.time_s, c.power_w, bd)
            if s == self.pp - 1 and sampling:
                # the final norm (vLLM / SGLang: fused residual add + RMSNorm, one kernel)
                c = self.dev.elementwise("fused_add_rmsnorm", s_rank, h)
                part.add("elementwise", c.time_s, c.power_w, bd)
                # the LM head is not quantized (ParallelLMHead stays bf16 in fp8 checkpoints);
                # DP attention: over the gathered samples of all ranks, or per rank
                m_lm = sampling if self.dp_gathered_dense else s_rank
                self._gemm(part, bd, "lm_head", m_lm, self.vocab_shard, h, 1, bf16=True)
                lm_comm = self.tp_comm if self.lm_tp == self.tp else self.attn_comm
                if lm_comm is not None:
                    t = lm_comm.all_gather(m_lm * self.model.vocab_size * 2.0, self.lm_tp)
                    part.add("communication", t, lm_comm.power_w(), bd)
                c = self.dev.elementwise("sampling", s_rank, self.model.vocab_size)
                part.add("sampling", c.time_s, c.power_w, bd)
                if self._filter_bytes:
                    c = self.dev.stream(self._filter_bytes * s_rank * self.model.vocab_size)
                    part.add("sampling", c.time_s, c.power_w, bd)
            if s < self.pp - 1 and self.pp_comm is not None:
                t = self.pp_comm.send_recv(2.0 * tokens * h * 2.0)
                part.add("communication", t, self.pp_comm.power_w(), bd)
            parts.append(part)
        out = (tuple(parts), bd)
        if len(self._token_cache) < 65536:
            self._token_cache[key] = out
        return out

    def _moe_backend(self) -> str:
        """The routed experts' kernel: Triton fused_moe, or for block fp8 where the engine release
        runs it DeepGEMM's padded contiguous layout (data/kernels.yaml fused_moe.deep_gemm), the
        engine's own NVFP4 kernel, or SGLang's FlashInfer TRT-LLM MoE on SM100."""
        backend = (fp8_block_moe_backend(self.engine.name, self.engine.version or self.engine.reference_version,
                                         self.device.compute_capability, self.tp, self.ep)
                   if self.block_fp8 and self.compute_dtype == "fp8" else "triton")
        if self.compute_dtype == "fp4":  # the engine's own NVFP4 MoE kernel (kernels.yaml)
            backend = kernel_facts().moe_fp4_backend.get(self.engine.engine, backend)
        elif (self.compute_dtype == "fp8" and self.engine.engine == "sglang"
              and str(self.device.compute_capability or "").startswith("10.")
              and self.model.architecture in kernel_facts().moe_sglang_sm100_trtllm_archs):
            backend = "flashinfer_trtllm"  # SGLang's own choice on SM100 (kernels.yaml fused_moe)
        return backend

    def _moe(self, part: _Part, bd: dict, tokens: int, n_moe: int, t_att: int) -> None:
        """One MoE layer's router, routed and shared experts on one GPU: ``tokens`` every
        attention rank's, ``t_att`` the busiest rank's (= ``tokens`` without DP attention)."""
        moe = self.model.moe
        assert moe is not None
        # the shared experts' rows on one GPU (parallel.shared_expert_split)
        t_shared = {"all": tokens, "rank": t_att,
                    "local": -(-t_att // self.attn_tp)}[self.shared_tokens]
        if self.a2a:
            self._moe_a2a(part, bd, tokens, -(-t_att // self.attn_tp), t_shared, n_moe)
            return
        # router (replicated, tiny) + top-k
        c = self.dev.gemm(tokens, moe.num_experts, self.hidden, "bf16", None)
        part.add("moe_router", c.time_s, c.power_w, bd, n_moe)
        # routed experts: Triton fused_moe (two grouped GEMMs streaming every hit expert's weights,
        # tokens padded per expert to BLOCK_SIZE_M, + top-k/align/silu/sum and fp8 quant kernels),
        # or for block fp8 where the engine release runs it, DeepGEMM's padded contiguous layout
        # (data/kernels.yaml fused_moe.deep_gemm)
        etp = self.tp // self.ep
        backend = self.moe_backend
        c = self.dev.fused_moe(tokens, self.model.moe_hidden_size, moe.expert_intermediate_size,
                               moe.experts_per_token, self.slots, etp, self.ep,
                               self.compute_dtype, self.weight_dtype,
                               imbalance=self.moe_imbalance if self.ep > 1 else 1.0,
                               block_fp8=self.block_fp8, backend=backend, gated=moe.expert_gated,
                               shared=self.fused_shared, compute_eff=self._moe_compute_eff)
        assignments = tokens * moe.experts_per_token / self.ep
        active = _active_experts(tokens, moe.experts_per_token, self.slots, self.local_experts,
                                 assignments, balanced=False) + self.fused_shared
        assignments += self.fused_shared * tokens
        wbytes = sum(n * k for _, n, k in self.expert_ops) * self.weight_elt_bytes
        part.add("moe_experts", c.time_s, c.power_w, bd, n_moe, kernels=self.moe_kernels,
                 flops=2.0 * assignments * sum(n * k for _, n, k in self.expert_ops),
                 nbytes=active * wbytes)
        self._shared_experts(part, bd, t_shared, n_moe)

    def _shared_experts(self, part: _Part, bd: dict, tokens: int, n_moe: int) -> None:
        """The shared experts' GEMMs on ``tokens`` rows and the activation between their gate_up
        and down GEMMs, a kernel of its own in both engines (vLLM deepseek_v2.py DeepseekV2MLP /
        qwen2_moe.py Qwen2MoeMLP and SGLang's: gate_up_proj -> SiluAndMul -> down_proj), as the
        dense MLP's; a non-gated shared MLP (Nemotron-3 relu2) reads and writes its up
        projection's output."""
        for name, n, k in self.shared_ops:
            self._gemm(part, bd, "moe_shared", tokens, n, k, n_moe)
        for name, n, _ in self.shared_ops:
            if name == "shared_gate_up":
                c = self.dev.elementwise("silu_and_mul", tokens, n // 2)
            elif name == "shared_up":
                c = self.dev.stream(4.0 * tokens * n)
            else:
                continue
            part.add("moe_shared", c.time_s, c.power_w, bd, n_moe)

    def _moe_a2a(self, part: _Part, bd: dict, tokens: int, t_local: int, t_shared: int,
                 n_moe: int) -> None:
        """One GPU's MoE under all-to-all dispatch: the router and the (replicated) shared experts
        on its own ``t_local`` tokens; the routed experts on the token copies dispatched to it,
        tokens x top-k / ep of them spread over its (E + redundant) / ep local experts."""
        moe = self.model.moe
        c = self.dev.gemm(t_local, moe.num_experts, self.hidden, "bf16", None)
        part.add("moe_router", c.time_s, c.power_w, bd, n_moe)
        e_local = self.local_experts
        k = min(moe.experts_per_token, e_local)
        pairs = tokens * moe.experts_per_token / self.ep  # token copies this GPU receives
        # the busiest rank's share (moe_imbalance, as the gathered path's fused_moe applies it)
        rows = max(1, math.ceil(pairs * self.moe_imbalance / k))
        c = self.dev.fused_moe(rows, self.model.moe_hidden_size, moe.expert_intermediate_size, k,
                               e_local, self.tp // self.ep, 1, self.compute_dtype, self.weight_dtype,
                               imbalance=1.0, block_fp8=self.block_fp8, backend=self.moe_backend,
                               gated=moe.expert_gated, compute_eff=self._moe_compute_eff)
        active = _active_experts(rows, k, e_local, e_local, pairs, balanced=False)
        wbytes = sum(n * kk for _, n, kk in self.expert_ops) * self.weight_elt_bytes
        part.add("moe_experts", c.time_s, c.power_w, bd, n_moe,
                 kernels=self.moe_kernels,
                 flops=2.0 * pairs * sum(n * kk for _, n, kk in self.expert_ops),
                 nbytes=active * wbytes)
        self._shared_experts(part, bd, t_shared, n_moe)

    # ------------------------------------------------------------------ attention
    def _split_ranks(self, decode_ctx: np.ndarray, prefill: Sequence[tuple[int, int]]) -> list:
        """DP attention without the ranks' own batches: the sequences round robin over the
        ranks (SGLang's DataParallelController default)."""
        d = self.attn_dp
        return [(decode_ctx[r::d], list(prefill)[r::d]) for r in range(d)]

    def _attention(self, decode_ctx: np.ndarray, prefill: Sequence[tuple[int, int]],
                   ranks: list | None = None) -> tuple[float, float, float, float]:
        """(time, energy/GPU, flops, bytes) of attention in ONE layer on one GPU. With DP attention
        each rank attends over its own batch (``ranks``: [(decode_ctx, prefill)] per rank, default
        :meth:`_split_ranks`): the slowest rank sets the time, energy / FLOPs / bytes are the
        ranks' mean."""
        if self.attn_dp == 1:
            return self._attention_rank(decode_ctx, prefill)
        ranks = [self._attention_rank(np.asarray(c, dtype=np.int64), pf)
                 for c, pf in (ranks or self._split_ranks(decode_ctx, prefill))]
        d = float(self.attn_dp)
        return (max(x[0] for x in ranks), sum(x[1] for x in ranks) / d, sum(x[2] for x in ranks) / d,
                sum(x[3] for x in ranks) / d)

    def _op_memo(self, key: tuple, fn):
        """Attention kernel costs memoised exactly: decode attention depends on the sequences only
        through their count and context sum (KV bytes read), prefill on its exact chunk list."""
        hit = self._attn_cache.get(key)
        if hit is None:
            hit = fn()
            if len(self._attn_cache) < 262144:
                self._attn_cache[key] = hit
        return hit

    def _attention_kinds(self, decode_ctx: np.ndarray, prefill: Sequence[tuple[int, int]],
                         ranks: list | None = None) -> dict[str, tuple[float, float, float, float]]:
        """Hybrid models: (time, energy/GPU, FLOPs, bytes) of ONE layer of each attention kind on
        one GPU: full layers as :meth:`_attention_rank`; sliding layers the same kernels with every
        query's keys capped at the window; linear layers the Gated DeltaNet recurrence."""
        if self.attn_dp != 1:  # DP attention: as _attention, the slowest rank sets the time
            d = float(self.attn_dp)
            ranks = [self._attention_kinds_rank(np.asarray(c, dtype=np.int64), pf)
                     for c, pf in (ranks or self._split_ranks(decode_ctx, prefill))]
            return {k: (max(x[k][0] for x in ranks), sum(x[k][1] for x in ranks) / d,
                        sum(x[k][2] for x in ranks) / d, sum(x[k][3] for x in ranks) / d)
                    for k in ranks[0]}
        return self._attention_kinds_rank(decode_ctx, prefill)

    def _attention_kinds_rank(self, decode_ctx: np.ndarray,
                              prefill: Sequence[tuple[int, int]]) -> dict[str, tuple[float, float, float, float]]:
        m = self.model
        out: dict[str, tuple[float, float, float, float]] = {}
        for kind in self.kind_ops:
            if kind == "full":
                out[kind] = self._attention_rank(decode_ctx, prefill)
            elif kind == "sliding":
                w = m.sliding_window
                out[kind] = self._attention_rank(np.minimum(decode_ctx, w), window_chunks(prefill, w),
                                                 tag="sw", kind="sliding")
            elif kind == "linear":
                out[kind] = self._linear_attention(int(decode_ctx.shape[0]), prefill)
            elif kind == "mamba":
                out[kind] = self._mamba_mixer(int(decode_ctx.shape[0]), prefill)
            else:  # an MLP-only block: no token mixer
                out[kind] = (0.0, 0.0, 0.0, 0.0)
        return out

    def _mamba_mixer(self, n_dec: int, prefill: Sequence[tuple[int, int]]) -> tuple[float, float, float, float]:
        """Mamba2 token mixer of one layer on one GPU (costmodel/recurrent.py): decode
        (causal_conv1d_update + selective_state_update) streams each sequence's conv window and
        SSM state in and out; prefill runs causal_conv1d_fn and the chunked SSD scan; the grouped
        gated RMSNorm streams tokens x d_inner."""
        mb, tp = self.model.mamba, self.attn_tp
        heads, ssm_b = mb.num_heads / tp, DTYPE_BYTES[self.state_dtype]

        def decode():
            return _rec.mamba_decode_work(n_dec, heads, mb.head_dim, mb.state_size,
                                          mb.conv_dim / tp, mb.conv_kernel, ssm_b)

        def scan():
            return _rec.mamba_prefill_work(prefill, heads, mb.head_dim, mb.state_size,
                                           mb.n_groups / tp, mb.chunk_size, ssm_b)

        return self._recurrent_mixer(("mamba2", n_dec, _chunks_key(prefill)), n_dec, prefill,
                                     mb.conv_dim / tp, mb.conv_kernel, mb.d_inner / tp, decode, scan)

    def _linear_attention(self, n_dec: int, prefill: Sequence[tuple[int, int]]) -> tuple[float, float, float, float]:
        """Gated DeltaNet token mixer of one layer on one GPU (costmodel/recurrent.py): decode
        streams each sequence's state in and out; prefill runs the chunked delta rule after the
        causal conv; the gated RMSNorm on the output streams tokens x value_dim."""
        la, tp = self.model.linear_attn, self.attn_tp
        heads, ssm_b = la.num_v_heads / tp, DTYPE_BYTES[self.state_dtype]

        def decode():
            return _rec.decode_work(n_dec, heads, la.head_k_dim, la.head_v_dim, la.conv_dim / tp,
                                    la.conv_kernel, ssm_b)

        def scan():
            return _rec.prefill_work(prefill, heads, la.num_k_heads / tp, la.head_k_dim,
                                     la.head_v_dim, ssm_b)

        return self._recurrent_mixer(("gdn", n_dec, _chunks_key(prefill)), n_dec, prefill,
                                     la.conv_dim / tp, la.conv_kernel, la.value_dim / tp, decode, scan)

    def _recurrent_mixer(self, key: tuple, n_dec: int, prefill: Sequence[tuple[int, int]],
                         conv_ch: float, conv_kernel: int, norm_width: float, decode, scan
                         ) -> tuple[float, float, float, float]:
        """(time, energy, FLOPs, bytes) of one recurrent token mixer (Gated DeltaNet, Mamba2) on one
        GPU, memoised: decode streams the conv window and the state (``decode()`` -> state bytes,
        conv bytes, FLOPs); prefill streams the causal conv's input/output and each sequence's conv
        window, then the chunked scan (``scan()`` -> FLOPs, bytes, tiles) at the attention
        kernels' efficiency, at least its memory traffic; the gated RMSNorm streams
        3 x tokens x ``norm_width`` activations."""
        hit = self._attn_cache.get(key)
        if hit is not None:
            return hit
        parts = []
        if n_dec:
            sb, cb, f = decode()
            parts += [(self.dev.stream(cb), 0.0, cb), (self.dev.stream(sb), f, sb)]
        if prefill:
            tok = float(sum(q for q, _ in prefill))
            cbytes = tok * conv_ch * 2 * _rec.ACT_BYTES + len(prefill) * conv_ch * (conv_kernel - 1) * 2.0 * 2
            f, nbytes, tiles = scan()
            ts = max(self.dev._prefill(0.0, f, tiles), self.dev._stream_time(nbytes))
            parts += [(self.dev.stream(cbytes), 0.0, cbytes),
                      (self.dev._cost(ts, f, nbytes, "bf16", "attention"), f, nbytes)]
        tok_all = n_dec + sum(q for q, _ in prefill)
        nb = 3.0 * tok_all * norm_width * _rec.ACT_BYTES
        parts.append((self.dev.stream(nb), 0.0, nb))
        t = e = fl = by = 0.0
        for c, f, b in parts:
            t += c.time_s
            e += c.time_s * c.power_w
            fl += f
            by += b
        out = (t, e, fl, by)
        if len(self._attn_cache) < 262144:
            self._attn_cache[key] = out
        return out

    def _dsa_attention(self, decode_ctx: np.ndarray,
                       prefill: Sequence[tuple[int, int]]) -> tuple[float, float, float, float]:
        """DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-5; vLLM deepseek_v2.py Indexer + the
        FlashMLA sparse backend, SGLang nsa): the lightning indexer scores every cached token of
        the sequence -- fp8 MQA logits of ``n_heads`` query heads against one ``head_dim`` index
        key per token, read from its own cache of head_dim fp8 bytes + one fp32 scale per 128
        (vLLM DeepseekV32IndexerCache) -- and the MLA attends only the top ``topk`` keys of each
        query: decode reads min(context, topk) latents, a prefill query at position p min(p + 1,
        topk) (counted as window_chunks). Decode logits are a stream of the index keys, prefill
        logits a causal fp8 GEMM; the top-k
        selection kernel is not costed. The prefill GEMM is q rows x key columns x (n_heads x
        head_dim) deep: the FLOPs of every head's logits, and the kernel's output -- one
        head-weighted logit per (query, key) -- as its output (DeepGEMM fp8_mqa_logits)."""
        d = self.model.dsa
        t, e, fl, by = self._attention_rank(np.minimum(decode_ctx, d.topk),
                                            window_chunks(prefill, d.topk), tag="dsa")
        n_dec = len(decode_ctx)
        if n_dec:
            ctx_sum = int(decode_ctx.sum())
            nbytes = float(ctx_sum) * d.key_cache_bytes
            c = self._op_memo(("dsa_index_decode", ctx_sum), lambda: self.dev.stream(nbytes))
            t += c.time_s
            e += c.time_s * c.power_w
            by += nbytes
            fl += 2.0 * d.n_heads * d.head_dim * float(ctx_sum)
        for q, cached in prefill:
            keys = max(1, int(round(cached + (q + 1) / 2)))
            c = self.dev.gemm(int(q), keys, d.n_heads * d.head_dim, "fp8")
            t += c.time_s
            e += c.time_s * c.power_w
            fl += 2.0 * q * d.n_heads * d.head_dim * keys
        return t, e, fl, by

    def _attention_rank(self, decode_ctx: np.ndarray, prefill: Sequence[tuple[int, int]],
                        tag: str = "", kind: str = "full") -> tuple[float, float, float, float]:
        t = e = fl = by = 0.0
        m = self.model
        if m.dsa is not None and not tag:
            return self._dsa_attention(decode_ctx, prefill)
        if m.attention == "gqa" and m.attn_shapes:
            return self._shaped_attention(decode_ctx, prefill, tag, kind)
        n_dec = len(decode_ctx)
        ctx_sum = int(decode_ctx.sum()) if n_dec else 0  # exact (int64), float() of it as before
        if m.attention == "mla":
            if n_dec:
                c = self._op_memo(("mla_decode", n_dec, ctx_sum), lambda: self.dev.mla_decode(
                    self.q_heads, m.mla.kv_lora_rank, m.mla.qk_rope_head_dim, decode_ctx, self.cfg.kv_dtype))
                t += c.time_s
                e += c.time_s * c.power_w
                by += float(ctx_sum) * m.kv_elems_per_token_per_layer() * self.kv_bytes
            if prefill:
                c = self._op_memo(("mla_prefill", _chunks_key(prefill)), lambda: self.dev.mla_prefill(
                    self.q_heads, m.mla.qk_nope_head_dim, m.mla.qk_rope_head_dim, m.mla.v_head_dim, prefill,
                    self.cfg.kv_dtype))
                t += c.time_s
                e += c.time_s * c.power_w
        else:
            if n_dec:
                c = self._op_memo(("decode" + tag, n_dec, ctx_sum), lambda: self.dev.attention_decode(
                    self.q_heads, self.kv_heads, m.head_dim, decode_ctx, self.cfg.kv_dtype))
                t += c.time_s
                e += c.time_s * c.power_w
                by += float(ctx_sum) * 2 * self.kv_heads * m.head_dim * self.kv_bytes
                fl += 4.0 * self.q_heads * m.head_dim * float(ctx_sum)
            if prefill:
                c = self._op_memo(("prefill" + tag, _chunks_key(prefill)), lambda: self.dev.attention_prefill(
                    self.q_heads, self.kv_heads, m.head_dim, prefill, self.cfg.kv_dtype))
                t += c.time_s
                e += c.time_s * c.power_w
                for q, cached in prefill:
                    fl += 4.0 * self.q_heads * m.head_dim * q * (cached + (q + 1) / 2)
        return t, e, fl, by

    def _shaped_attention(self, decode_ctx: np.ndarray, prefill: Sequence[tuple[int, int]],
                          tag: str, kind: str) -> tuple[float, float, float, float]:
        """GQA attention of one layer of kind ``kind`` with that kind's own shape
        (ModelSpec.attn_shapes: Gemma-4's 512-wide global layers, MiMo-V2's K of 192 / V of 128):
        its KV heads per rank, and K and V widths. The kernel curves take one head width; at the
        mean of K's and V's, (head_dim + v_head_dim) / 2, both the decode KV bytes read
        (kv_heads x (head_dim + v_head_dim) per token) and the prefill FLOPs (q.k over head_dim,
        p.v over v_head_dim) are exact."""
        t = e = fl = by = 0.0
        sh = self.model.attn_shape(kind)
        kvh = max(1, sh.num_kv_heads // self.attn_tp)
        d = sh.kv_width / 2.0
        n_dec = len(decode_ctx)
        ctx_sum = int(decode_ctx.sum()) if n_dec else 0
        if n_dec:
            c = self._op_memo(("decode" + tag, n_dec, ctx_sum), lambda: self.dev.attention_decode(
                self.q_heads, kvh, d, decode_ctx, self.cfg.kv_dtype))
            t += c.time_s
            e += c.time_s * c.power_w
            by += float(ctx_sum) * kvh * sh.kv_width * self.kv_bytes
            fl += 2.0 * self.q_heads * sh.kv_width * float(ctx_sum)
        if prefill:
            c = self._op_memo(("prefill" + tag, _chunks_key(prefill)), lambda: self.dev.attention_prefill(
                self.q_heads, kvh, d, prefill, self.cfg.kv_dtype))
            t += c.time_s
            e += c.time_s * c.power_w
            for q, cached in prefill:
                fl += 2.0 * self.q_heads * sh.kv_width * q * (cached + (q + 1) / 2)
        return t, e, fl, by

    # ------------------------------------------------------------------ public
    def iteration(self, decode_ctx: np.ndarray, prefill: Sequence[tuple[int, int]] = (), *,
                  with_breakdown: bool = False, prefill_sampling: int | None = None,
                  attention_ranks: list | None = None) -> IterationCost:
        """Cost of one iteration.

        decode_ctx: context length (tokens in the KV cache including this step's) of each decoding
        sequence. prefill: ``(chunk_tokens, cached_tokens_before)`` of each prefilling sequence.
        prefill_sampling: how many of the prefill chunks finish their prompt (and so sample a token);
        default all. attention_ranks: DP attention, each rank's (decode_ctx, prefill) -- the
        union is ``decode_ctx`` / ``prefill``; default: the union round robin over the ranks.

        Memoised exactly: without DP attention an iteration depends on its decode sequences only
        through their count and context SUM (decode attention is costed on the KV bytes read, every
        other op on token counts), so (count, sum, prefill chunks, sampling) is an exact key and a
        hit returns the same numbers bit for bit (the breakdown as a fresh dict).
        """
        decode_ctx = np.asarray(decode_ctx, dtype=np.int64)
        if self.attn_dp != 1:
            return self._iteration(decode_ctx, prefill, with_breakdown, prefill_sampling,
                                   attention_ranks or self._split_ranks(decode_ctx, prefill))
        key = (int(decode_ctx.shape[0]), int(decode_ctx.sum()),
               _chunks_key(prefill), prefill_sampling, with_breakdown)
        if self.model.sliding_window:  # sliding layers read min(context, window) keys
            key += (int(np.minimum(decode_ctx, self.model.sliding_window).sum()),)
        if self.model.dsa is not None:  # sparse MLA reads min(context, topk) keys
            key += (int(np.minimum(decode_ctx, self.model.dsa.topk).sum()),)
        hit = self._iter_cache.get(key)
        if hit is None:
            hit = self._iteration(decode_ctx, prefill, with_breakdown, prefill_sampling)
            if len(self._iter_cache) < 262144:
                self._iter_cache[key] = hit
        if hit.breakdown is not None:
            return hit._replace(breakdown=dict(hit.breakdown))
        return hit

    def _iteration(self, decode_ctx: np.ndarray, prefill: Sequence[tuple[int, int]],
                   with_breakdown: bool, prefill_sampling: int | None,
                   ranks: list | None = None) -> IterationCost:
        n_dec = int(decode_ctx.shape[0])
        n_pre_tok = int(sum(q for q, _ in prefill))
        sampling = n_dec + (len(prefill) if prefill_sampling is None else prefill_sampling)
        tokens = n_dec + n_pre_tok
        t_att = s_rank = None
        host_seqs = n_dec + len(prefill)
        # CUDA-graph mode of the engine (EngineSpec.cuda_graph_mode): a full graph for decode-only
        # batches (padded to a captured batch size); vLLM V1's piecewise graphs for batches up to
        # the largest capture size (tokens padded; attention runs eagerly between the pieces)
        mode = self.engine.cuda_graph_mode
        graph = piecewise = False
        if ranks is not None:  # DP attention: the lockstep step of every rank's batch
            tokens, sampling, t_att, s_rank, graph, piecewise, host_seqs = self._dp_step_shape(
                ranks, sampling - n_dec)
        elif self.graph and tokens:
            if not prefill and mode != "piecewise":
                padded = self.engine.graph_batch_size(n_dec, self.graph_max_bs)
                if padded is not None:
                    graph = True
                    tokens = sampling = padded
            if not graph and mode != "decode_only":
                padded = self.engine.graph_batch_size(tokens, self.graph_max_bs)
                if padded is not None:
                    piecewise = True
                    tokens = padded
        if tokens == 0:
            return IterationCost(0.0, tuple(0.0 for _ in range(self.pp)), 0.0, 0.0, 0.0, 0.0,
                                 {} if with_breakdown else None)
        parts, bd_tok = self._token_work(tokens, sampling, t_att, s_rank)
        stage_times, energy, busy, flops, nbytes = [], 0.0, 0.0, 0.0, 0.0
        cmp_s = 0.0
        win = [0.0, 0.0, 0.0, 0.0, 0.0]  # e_mem, e_cmp, cmp (table), cmp at f_max, kernel time
        if self.kind_ops:
            # hybrid: every stage's layers of each attention kind, as one mean layer per stage
            per_kind = self._attention_kinds(decode_ctx, prefill, ranks)
            stage_attn = []
            for kinds in self.stage_kinds:
                n = sum(c for _, c in kinds)
                stage_attn.append(self._attn_terms(*(
                    sum(c * per_kind[k][j] for k, c in kinds) / n for j in range(4))))
        else:
            stage_attn = [self._attn_terms(*self._attention(decode_ctx, prefill, ranks))] * self.pp
        bd = dict(bd_tok) if with_breakdown else None
        same: dict = {}  # stages sharing a part (same layers and role) add the same increments
        for s, part in enumerate(parts):
            inc = same.get(id(part))
            if inc is None:
                eager_s = None if (graph or piecewise) else self._eager_stage_s(
                    s, n_dec > 0, bool(prefill), sampling > 0)
                a_t, a_e, a_f, a_b, a_cmp, a_em, a_ec, a_c, a_cm = stage_attn[s]
                inc = same[id(part)] = self._stage_increments(part, self.stage_nlayers[s], a_t,
                                                              a_e, a_cmp, a_em, a_ec, a_c, a_cm,
                                                              a_f, a_b, graph, piecewise, eager_s)
            t, gpu, e_i, busy_i, cmp_i, win_i, fl_i, nb_i, bd_i = inc
            stage_times.append(t)
            energy += e_i
            busy += busy_i
            cmp_s += cmp_i
            if win_i is not None:
                for i, v in enumerate(win_i):
                    win[i] += v
            flops += fl_i
            nbytes += nb_i
            if bd is not None:
                for key, v in bd_i:
                    bd[key] = bd.get(key, 0.0) + v
        host = self.host_time(host_seqs)  # DP attention: each rank's engine core, the busiest's
        if bd is not None:
            bd["host"] = host
        total = sum(stage_times) + host
        if self.dvfs is not None and win[4] > 0:
            return self._power_window(total, host, stage_times, busy, flops, nbytes, bd, win)
        return IterationCost(total, tuple(stage_times), energy, busy, flops, nbytes, bd)

    def _dp_step_shape(self, ranks: list, pre_samples: int) -> tuple:
        """DP attention: the token counts of one lockstep step over the ranks' batches ``ranks``
        ([(decode_ctx, prefill)] per rank; ``pre_samples`` prefill chunks sample, taken in rank
        order). Under a CUDA graph every rank pads to the busiest rank's captured size (vLLM
        vllm/v1/worker/dp_utils.py coordinate_batch_across_dp: an all-reduce of each rank's
        padded count, _post_process_dp_padding pads all to the max unless the synced cudagraph
        mode is NONE; SGLang dp_attention.py DpPaddingMode.MAX_LEN in CUDA graphs), an idle rank
        running a dummy / idle batch of that size; without one each rank keeps its own count
        (vLLM all_gatherv sizes, SGLang SUM_LEN). Returns (all ranks' tokens, all ranks'
        samples, the busiest rank's tokens, its samples, graph, piecewise, its sequences)."""
        n, samp, seqs = [], [], []
        left = pre_samples
        for c, pf in ranks:
            k = min(len(pf), left)
            left -= k
            n.append(len(c) + sum(q for q, _ in pf))
            samp.append(len(c) + k)
            seqs.append(len(c) + len(pf))
        t_att = max(n)
        mode = self.engine.cuda_graph_mode
        graph = piecewise = False
        if self.graph and t_att:
            padded = self.engine.graph_batch_size(t_att, self.graph_max_bs)
            if padded is not None and self.engine.dp_attention_graph_bs_multiple and self.attn_tp > 1:
                # SGLang captures only multiples of the attention-TP size
                padded = next((b for b in self.engine.cuda_graph_batch_sizes
                               if b >= t_att and b % self.attn_tp == 0
                               and (self.graph_max_bs is None or b <= self.graph_max_bs)), None)
            if padded is not None and mode != "piecewise" and all(not pf for _, pf in ranks):
                graph = True
                samp = [padded] * len(ranks)
            elif padded is not None and mode != "decode_only":
                piecewise = True
            if graph or piecewise:
                t_att = padded
        tokens = len(ranks) * t_att if (graph or piecewise) else sum(n)
        return tokens, sum(samp), t_att, max(samp), graph, piecewise, max(seqs)

    def _attn_terms(self, a_t: float, a_e: float, a_f: float, a_b: float) -> tuple:
        """One layer's attention (time, energy, FLOPs, bytes) with its compute-bound seconds and
        DVFS window terms: (a_t, a_e, a_f, a_b, a_cmp, a_em, a_ec, a_c, a_cm)."""
        if self.dvfs is not None and a_t > 0:
            a_em, a_ec, a_c, a_cm = self._split(a_t, a_e / a_t, a_f, a_b)
            a_em = max(0.0, a_e - self._awake_w * a_t - a_ec)  # attention: its own fitted power
        else:
            a_em = a_ec = a_c = a_cm = 0.0
        gpu_peak, gpu_bw = self.peak_flops / self.num_gpus, self.peak_bytes_per_s / self.num_gpus
        a_tc, a_tm = a_f / gpu_peak, a_b / gpu_bw
        a_cmp = a_t * a_tc / (a_tc + a_tm) if a_tc > 0 else 0.0
        return a_t, a_e, a_f, a_b, a_cmp, a_em, a_ec, a_c, a_cm

    def _stage_increments(self, part: _Part, n_layers: int, a_t, a_e, a_cmp, a_em, a_ec, a_c, a_cm,
                          a_f, a_b, graph: bool, piecewise: bool,
                          eager_s: float | None = None) -> tuple:
        """What one pipeline stage adds to the iteration's sums: (stage time, GPU time, energy,
        busy GPU s, compute-bound s, DVFS window terms, FLOPs, bytes, breakdown increments).
        ``eager_s``: host seconds to issue the stage eagerly (:meth:`_eager_stage_s`; None = the
        flat ``eager_launch_us`` per counted kernel)."""
        tp = self.tp
        gpu = part.time + a_t * n_layers
        kernels = part.kernels + n_layers  # + one attention kernel per layer
        if graph:
            saving = kernels * self.engine.graph_launch_saving_us * 1e-6
            gpu = max(gpu - saving, 0.5 * gpu)
            t = gpu
        elif piecewise:  # graphed pieces; per layer the CPU replays them + eager attention
            saving = part.kernels * self.engine.graph_launch_saving_us * 1e-6
            gpu = max(gpu - saving, 0.5 * gpu)
            t = max(gpu, n_layers * self.engine.piecewise_layer_cpu_us * 1e-6)
        else:
            launch_cpu = (eager_s if eager_s is not None
                          else kernels * self.engine.eager_launch_us * 1e-6)
            t = max(gpu, launch_cpu)
        win = None
        if self.dvfs is not None:
            win = tuple(v * tp for v in (part.e_mem + a_em * n_layers, part.e_cmp + a_ec * n_layers,
                                         part.cmp_time + a_c * n_layers,
                                         part.cmp_max + a_cm * n_layers, part.time + a_t * n_layers))
        bd = [("attention", a_t * n_layers)]
        raw = part.time + a_t * n_layers
        if gpu < raw:  # launch latency a CUDA graph removes (negative: the parts sum to the step)
            bd.append(("cuda_graph_saving", -(raw - gpu)))
        if t > gpu:
            bd.append(("launch_overhead", t - gpu))
        return (t, gpu, (part.energy + a_e * n_layers) * tp, gpu * tp,
                min(gpu, part.cmp_time + a_cmp * n_layers) * tp, win,
                (part.flops + a_f * n_layers) * tp, (part.bytes + a_b * n_layers) * tp, bd)

    def _power_window(self, total, host, stage_times, busy, flops, nbytes, bd, win) -> IterationCost:
        """Apply the board power limit (or a set cap / locked clock) over the iteration: the clock
        settles where the iteration's average power meets the cap (costmodel/power.py); the
        compute-bound seconds stretch with 1 / clock, the energy follows f V^2."""
        g = self.num_gpus
        e_mem, e_cmp, cmp_tab, cmp_max, t_kern = (v / g for v in win)
        t_other = max(0.0, t_kern - cmp_tab)
        dv = self.dvfs
        knobs = self.sm_clock_mhz is not None or self.power_cap_w is not None
        if not knobs:  # fast path: under the board limit at boost clock -> tables stand
            t_max = t_other + cmp_max
            if t_max > 0 and dv.p_awake + (e_mem + e_cmp) / t_max <= dv.p_limit:
                energy = dv.p_awake * busy + (e_mem + e_cmp) * g
                return IterationCost(total, tuple(stage_times), energy, busy, flops, nbytes, bd)
        # the cap holds over the GPU's busy time: with asynchronous scheduling (vLLM V1, SGLang)
        # the host part of a step overlaps the GPU, so its gaps cannot be counted on to pull the
        # average down
        w = IterationWork(t_host=0.0, t_other=t_other, t_cmp=cmp_max, e_mem=e_mem, e_cmp=e_cmp)
        # default: the calibrated kernel times stand unless the iteration as a whole would exceed
        # the board limit at them (then the clock drops and the compute-bound share stretches);
        # never faster than the tables (their long kernels were measured at their own settled
        # clock, and the controller acts within ~tau, shorter than an iteration)
        f_def = dv.settle(w, None, None)
        t_def = max(t_kern, dv.gpu_time(w, f_def))
        f = f_def
        t_gpu = t_def
        if knobs:
            f = dv.settle(w, self.sm_clock_mhz, self.power_cap_w)
            if f < f_def:
                t_gpu = t_def * dv.gpu_time(w, f) / dv.gpu_time(w, f_def)
        ft = t_gpu / t_kern
        stage_times = [t * ft for t in stage_times]
        total = sum(stage_times) + host
        if bd is not None and ft != 1.0:
            for k in bd:
                if k != "host":
                    bd[k] *= ft
        busy_new = busy * ft
        v = dv.voltage(f)
        energy = (dv.base_power(f) * busy_new / g + e_mem + e_cmp * v * v) * g
        return IterationCost(total, tuple(stage_times), energy, busy_new, flops, nbytes, bd,
                             f if (knobs or f < dv.f_max) else None)

    def _split(self, t: float, p: float, flops: float, nbytes: float) -> tuple[float, float, float, float]:
        """One kernel for the power window: (memory activity J, compute activity J -- unclipped,
        i.e. what it would draw at max clock --, compute-bound seconds, the same at max clock).

        The compute-bound share of a kernel is its roofline compute time over compute + memory
        time. Its table time was measured at max clock when short, at the clock its own power
        settles at when long (the controller needs ~``tau`` = the profile's fitted derate time
        constant to pull the clock down): clock = f_max e^(-t/tau) + f_alone (1 - e^(-t/tau)).
        """
        if t <= 0:
            return 0.0, 0.0, 0.0, 0.0
        key = (t, p, flops, nbytes)
        hit = self._split_cache.get(key)
        if hit is not None:
            return hit
        g = self.num_gpus
        peak, bw = self.peak_flops / g, self.peak_bytes_per_s / g
        if flops <= 0 and nbytes <= 0:  # links, tiny ops: their own power, clock-independent
            out = (max(0.0, p - self._awake_w) * t, 0.0, 0.0, 0.0)
        else:
            tc, tm = flops / peak, nbytes / bw
            share = tc / (tc + tm) if tc > 0 else 0.0
            e_mem = self._j_per_byte * nbytes
            e_cmp = self._j_per_flop * flops
            f_max = self.dvfs.f_max
            f_alone = self.dvfs.default_clock(IterationWork(0.0, (1 - share) * t, share * t, e_mem, e_cmp))
            w = math.exp(-t / self._tau_s)
            f_tab = f_max * w + f_alone * (1.0 - w)
            out = (e_mem, e_cmp, share * t, share * t * f_tab / f_max)
        if len(self._split_cache) < 200_000:
            self._split_cache[key] = out
        return out

    def work(self, time_s: float, busy_gpu_s: float, cmp_gpu_s: float, flops: float,
             nbytes: float) -> IterationWork:
        """One average GPU's share of an iteration, split for the DVFS model (all inputs are
        totals over the replica's GPUs except ``time_s``)."""
        g = self.num_gpus
        t_gpu = busy_gpu_s / g
        bw = self.peak_bytes_per_s / g
        u = min(1.0, nbytes / g / (t_gpu * bw)) if t_gpu > 0 else 0.0
        a, gamma = self._mem_w
        return IterationWork(t_host=max(0.0, time_s - t_gpu), t_other=max(0.0, t_gpu - cmp_gpu_s / g),
                             t_cmp=min(t_gpu, cmp_gpu_s / g), e_mem=a * u ** gamma * t_gpu,
                             e_cmp=self._j_per_flop * flops / g)

    def host_time(self, num_seqs: int) -> float:
        """CPU time of one engine step for ``num_seqs`` sequences."""
        e = self.engine
        t = e.host_step_base_ms * 1e-3 + e.host_per_seq_us * 1e-6 * num_seqs
        if self.num_gpus > 1:
            t += e.host_multi_gpu_ms * 1e-3
        if e.frontend_in_process:
            # the API server runs in the engine's event loop between steps: every sequence's
            # output is handed to its request handler, which resumes before the next step
            t += e.frontend_per_token_us * 1e-6 * num_seqs
        return t
