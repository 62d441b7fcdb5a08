"""Per-device memory of a replica shape, and the KV-cache capacity vLLM would allocate.

vLLM 0.6 sizes memory like this (worker ``determine_num_available_blocks``): load the weights, run
one profiling forward pass with ``max_num_batched_tokens`` tokens spread over up to
``max_num_seqs`` sequences, and measure the peak; then

    kv_bytes = total_memory × gpu_memory_utilization − weights − peak_activations − non_torch

and ``num_blocks = kv_bytes // (block_size × kv_bytes_per_token_on_this_device)``. (SGLang instead
sizes a static pool: weights + KV = total × ``mem_fraction_static``; activations, graphs and the
context must fit in the remainder -- ``EngineSpec.kv_sizing == "static_fraction"``.) With pipeline
parallelism every stage gets the same block count (the minimum over stages). The server refuses to
start when ``num_blocks × block_size < max_model_len``. The CUDA context and the CUDA-graph pools
sit outside the utilisation budget and must fit in the remaining ``1 − utilisation`` share.

Sharding rules (per GPU of a stage): attention and dense-MLP weights split over TP (KV heads are
replicated when TP > KV heads, so each rank keeps one); vocab-parallel embedding on the first stage
and LM head on the last stage, split over TP (a tied LM head on a different stage is a second copy);
routed experts spread over EP groups and each expert split over TP/EP, so every GPU holds 1/TP of all
expert weights; router and norms replicated. Linear weights are stored in ``weight_dtype`` (int4
adds a bf16 scale per 128-element group, fp4 = NVFP4 an FP8-E4M3 scale per 16 elements);
embeddings, LM head, norms and routers stay bf16.
"""

from __future__ import annotations

import math
from typing import Iterable

from pydantic import BaseModel, Field

from .specs.cluster import DeviceSpec
from .specs.common import DTYPE_BYTES
from .specs.engine import EngineSpec, load_engine
from .specs.model import WEIGHT_ELEMENT_BYTES, LinearOp, ModelSpec, weight_format
from .parallel import default_layers_per_stage, kv_heads_per_rank, stage_layer_ranges  # noqa: F401
from .parallel import shared_expert_split
from .specs.plan import ReplicaConfig

GIB = 1024 ** 3


def linear_weight_bytes_per_elem(weight_dtype: str, quant_scheme: str = "") -> float:
    """Stored bytes per linear-weight element in ``weight_dtype`` (int4 with its group-128 bf16
    scales, fp4 = NVFP4 with its FP8 block scales); with a checkpoint's scaling layout
    ``quant_scheme`` (when it is served as published) the checkpoint's own format: MXFP4 (E2M1 +
    one E8M0 byte per 32 = 0.53125 B), int4 of group size 32 / 64 (specs/model.py weight_format,
    WEIGHT_ELEMENT_BYTES)."""
    return WEIGHT_ELEMENT_BYTES[weight_format(weight_dtype, quant_scheme)]


def kv_bytes_per_token_per_layer(model: ModelSpec, tp: int, kv_dtype: str,
                                 kind: str = "full") -> float:
    """Bytes one token's KV occupies in one layer (of attention kind ``kind``) on one TP rank.
    Per-kind shapes (ModelSpec.attn_shapes): that kind's KV heads per rank x (head_dim +
    v_head_dim) -- vLLM FullAttentionSpec / SlidingWindowSpec page = block x kv_heads x
    (head_size + head_size_v) x dtype; SGLang MHATokenToKVPool k_buffer (head_dim) + v_buffer
    (v_head_dim), the SWA pool with swa_head_num / swa_head_dim / swa_v_head_dim."""
    b = DTYPE_BYTES[kv_dtype]
    if model.attention == "mla":
        # the compressed latent + rope key is not split over TP: every rank caches it whole
        return model.kv_elems_per_token_per_layer() * b + dsa_index_bytes_per_token(model)
    if model.attn_shapes:
        sh = model.attn_shape(kind)
        return max(1, sh.num_kv_heads // tp) * sh.kv_width * b
    return 2 * kv_heads_per_rank(model, tp) * model.head_dim * b


def dsa_index_bytes_per_token(model: ModelSpec) -> float:
    """Bytes of DeepSeek Sparse Attention's indexer key cache per token and layer, kept next to
    the MLA latent (DSASpec.key_cache_bytes; 0 without DSA)."""
    return float(model.dsa.key_cache_bytes) if model.dsa is not None else 0.0


def recurrent_state_dtype(model: ModelSpec, engine: EngineSpec) -> str:
    """dtype of a hybrid model's recurrent (SSM / delta-rule) state: the engine's default, or the
    checkpoint's ``mamba_ssm_dtype`` where the engine reads it (EngineSpec
    .recurrent_state_dtype_from_config), or for the architectures the engine configures itself
    (``recurrent_state_dtype_by_architecture``) the checkpoint's, else that default."""
    by_arch = engine.recurrent_state_dtype_by_architecture.get(model.architecture)
    if by_arch is not None:
        return model.state_dtype or by_arch
    return (model.state_dtype if (engine.recurrent_state_dtype_from_config and model.state_dtype)
            else engine.recurrent_state_dtype)


def hybrid_block_size(model: ModelSpec, tp: int, kv_dtype: str, engine: EngineSpec,
                      conv_bytes: float = 2.0) -> int:
    """KV block size (tokens) the engine runs a model with. vLLM V1 with linear-attention
    (mamba-type) layers raises the attention block size until one attention page holds a layer's
    recurrent state (platforms/interface.py _align_hybrid_block_size, without prefix caching:
    ``alignment x ceil(mamba_page / (alignment x attention bytes per token))``, the alignment being
    the cache block size, 16) and pads the state page to it; other engines / models: the
    engine's block size."""
    bs = engine.block_size
    if engine.hybrid_kv == "shared_pool" and model.attn_shapes:
        return _kind_block_sizes(model, tp, kv_dtype, bs).get("full", bs)
    if engine.hybrid_kv != "shared_pool" or (model.linear_attn is None and model.mamba is None):
        return bs
    plb = kv_bytes_per_token_per_layer(model, tp, kv_dtype)
    ssm = DTYPE_BYTES[recurrent_state_dtype(model, engine)]
    page = max(model.linear_state_bytes(tp, ssm, conv_bytes),
               model.mamba_state_bytes(tp, ssm, conv_bytes))
    return max(bs, bs * math.ceil(page / (bs * plb)))


def _kind_block_sizes(model: ModelSpec, tp: int, kv_dtype: str, bs: int) -> dict[str, int]:
    """vLLM V1 with attention kinds of different page sizes (per-kind shapes): the hybrid KV cache
    manager needs one page size, so unify_kv_cache_spec_page_size multiplies the block size of
    every kind whose page (bs x bytes per token) is smaller than the largest by the ratio (it
    raises when the ratio is not whole; rounded up here)."""
    plb = {k: kv_bytes_per_token_per_layer(model, tp, kv_dtype, k)
           for k in model.kind_counts() if k in ("full", "sliding")}
    top = max(plb.values(), default=0.0)
    return {k: bs * max(1, math.ceil(top / v)) for k, v in plb.items()}


def stage_kv_layout(model: ModelSpec, layers, tp: int, kv_dtype: str, engine: EngineSpec,
                    conv_bytes: float = 2.0) -> tuple[float, float, float]:
    """(KV bytes per token, fixed bytes per running sequence in the KV pool, recurrent-state bytes
    per sequence in a separate pool) of the ``layers`` of one stage on one GPU.

    Full-attention layers hold every token. How the engine stores the bounded state of the other
    kinds (``EngineSpec.hybrid_kv``):

    * 'shared_pool' (vLLM V1 hybrid KV cache manager, vllm/v1/core/kv_cache_utils.py
      _get_kv_cache_groups_uniform_page_size + single_type_kv_cache_manager.py): all groups share
      one block pool; a sliding-window layer keeps the blocks of its last ``window - 1`` tokens
      plus the block being written (SlidingWindowManager.get_num_skipped_tokens frees the rest);
      a linear-attention layer holds one state block per request (MambaManager), a page of
      :func:`hybrid_block_size` tokens of attention KV (the state padded to it);
    * 'separate_pools' (SGLang 0.5): sliding layers live in an SWA pool of
      ``swa_full_tokens_ratio`` x the full pool's tokens (server_args.swa_full_tokens_ratio,
      SWAKVPool); recurrent state in a MambaPool of its own (returned as the third number);
    * 'none': every attention layer holds every token (no window); recurrent state is reserved
      per sequence in the KV budget.
    """
    plb = kv_bytes_per_token_per_layer(model, tp, kv_dtype)
    if not model.is_hybrid:
        return plb * len(layers), 0.0, 0.0
    if model.attn_shapes:  # per-kind shapes: each kind's own bytes per token
        return _shaped_kv_layout(model, layers, tp, kv_dtype, engine)
    c = model.kind_counts(layers)
    full, sliding = c.get("full", 0), c.get("sliding", 0)
    if model.architecture in engine.hybrid_swa_disabled_architectures:
        full, sliding = full + sliding, 0  # the engine keeps every token of the sliding layers
    linear = c.get("linear", 0) + c.get("mamba", 0)  # layers with a recurrent state
    state = model.recurrent_state_bytes(layers, tp, DTYPE_BYTES[recurrent_state_dtype(model, engine)], conv_bytes)
    mode = engine.hybrid_kv
    if mode == "separate_pools":
        return plb * (full + engine.swa_full_tokens_ratio * sliding), 0.0, state
    if mode == "shared_pool":
        bs = hybrid_block_size(model, tp, kv_dtype, engine, conv_bytes)
        window_tokens = (-(-(model.sliding_window - 1) // bs) + 1) * bs
        if linear:  # one padded page (bs tokens of attention KV) per linear layer and request
            state = linear * bs * plb
        return plb * full, plb * sliding * window_tokens + state, 0.0
    return plb * (full + sliding), state, 0.0


def _shaped_kv_layout(model: ModelSpec, layers, tp: int, kv_dtype: str,
                      engine: EngineSpec) -> tuple[float, float, float]:
    """:func:`stage_kv_layout` for full / sliding layers of their own shapes (Gemma-4,
    MiMo-V2-Flash): full layers hold every token at their bytes per token; sliding layers their
    window at theirs -- in vLLM's shared pool the window's blocks of the sliding kind's block size
    (:func:`_kind_block_sizes`), in SGLang's SWA pool swa_full_tokens_ratio x the full pool's
    tokens (SWAKVPool sizes each pool with its own head_num / head_dim / v_head_dim)."""
    c = model.kind_counts(layers)
    full, sliding = c.get("full", 0), c.get("sliding", 0)
    p_full = kv_bytes_per_token_per_layer(model, tp, kv_dtype, "full")
    p_sw = kv_bytes_per_token_per_layer(model, tp, kv_dtype, "sliding")
    mode = engine.hybrid_kv
    if mode == "separate_pools":
        return p_full * full + engine.swa_full_tokens_ratio * p_sw * sliding, 0.0, 0.0
    if mode == "shared_pool":
        bs = _kind_block_sizes(model, tp, kv_dtype, engine.block_size).get("sliding",
                                                                           engine.block_size)
        window_tokens = (-(-(model.sliding_window - 1) // bs) + 1) * bs
        return p_full * full, p_sw * sliding * window_tokens, 0.0
    return p_full * full + p_sw * sliding, 0.0, 0.0


def _sharded_params(op: LinearOp, tp: int, model: ModelSpec, kind: str = "full") -> float:
    if op.split == "replicated":
        return op.n * op.k
    if op.name == "qkv" and model.attention == "gqa" and model.attn_shapes:
        sh = model.attn_shape(kind)  # q heads split; K / V heads replicated past their count
        q = 2 if model.attn_output_gate else 1
        return (q * model.num_attention_heads / tp * sh.head_dim
                + max(1, sh.num_kv_heads // tp) * sh.kv_width) * op.k
    if op.name == "qkv" and model.attention == "gqa":
        q = 2 if model.attn_output_gate else 1  # the output gate doubles q_proj
        per_rank_heads = q * model.num_attention_heads / tp + 2 * kv_heads_per_rank(model, tp)
        return per_rank_heads * model.head_dim * op.k
    return op.n * op.k / tp


def _ops_params(ops: Iterable[LinearOp], tp: int, model: ModelSpec, kind: str = "full") -> float:
    return sum(_sharded_params(op, tp, model, kind) for op in ops)


def weight_bytes_by_component(model: ModelSpec, cfg: ReplicaConfig, stage: int,
                              engine: EngineSpec | None = None) -> dict[str, int]:
    """Weight bytes on one GPU of pipeline stage ``stage`` (of ``engine``'s default split when
    ``cfg`` gives none), by component."""
    wd = cfg.resolved_weight_dtype(model)
    tp, wb = cfg.tp, linear_weight_bytes_per_elem(
        wd, model.quant_scheme if wd == model.default_weight_dtype else "")
    bf16 = DTYPE_BYTES["bf16"]
    layers = stage_layer_ranges(model, cfg, engine)[stage]
    # data-parallel attention (SGLang): each attention rank is tp / attention_dp GPUs
    attn = _ops_params(model.attention_linear_ops(), tp // cfg.attention_dp, model)
    n_attn = len(layers)
    if model.is_hybrid:  # per attention kind; 'attn' is then the stage's sum, n_attn = 1
        tpa = tp // cfg.attention_dp
        attn = sum(n * (_ops_params(model.attention_linear_ops(k), tpa, model, k)
                        + model.mixer_extra_params(k) / tpa)
                   for k, n in model.kind_counts(layers).items())
        n_attn = 1
    dense = _ops_params(model.dense_mlp_linear_ops(), tp, model)
    # shared experts: split as the engine runs them (parallel.shared_expert_split: over all tp
    # GPUs, a vLLM DP rank's attention TP, or whole on every GPU)
    shared = (_ops_params(model.shared_expert_linear_ops(),
                          shared_expert_split(cfg, engine or load_engine())[0], model)
              if model.moe else 0.0)
    expert = _ops_params(model.expert_linear_ops(), 1, model) if model.moe else 0.0
    n_moe = sum(1 for i in layers if model.is_moe_layer(i))
    n_dense = len(layers) - n_moe - sum(1 for i in layers if not model.has_mlp(i))
    norms = model.norm_params_per_layer * len(layers)
    out = {
        "attention": attn * n_attn * wb,
        "mlp": dense * n_dense * wb,
        # every expert slot, the EPLB replicas too (redundant_experts): (E + N) / ep experts of
        # tp / ep shards each per GPU = (E + N) / tp experts' worth
        "experts": ((model.moe.num_experts + cfg.redundant_experts) * expert / tp) * n_moe * wb
                   if model.moe else 0.0,
        "shared_experts": shared * n_moe * wb,
        "router": (model.router_params() * n_moe * bf16) if model.moe else 0.0,
        "norms": norms * bf16,
        "embedding": 0.0,
        "lm_head": 0.0,
    }
    vocab_shard = math.ceil(model.vocab_size / tp) * model.hidden_size * bf16
    if stage == 0:
        # a learned position table (GPT-2 / BigCode wpe, OPT) is a plain nn.Embedding in vLLM:
        # every TP rank holds all of it
        out["embedding"] = vocab_shard + model.position_embeddings * model.hidden_size * bf16
    if stage == cfg.pp - 1:
        out["norms"] += model.final_norm_params * bf16
        if not model.tie_word_embeddings or cfg.pp > 1:
            out["lm_head"] = vocab_shard
    _keep_bf16(model, cfg, out, wb)
    return {k: int(round(v)) for k, v in out.items()}


def _keep_bf16(model: ModelSpec, cfg: ReplicaConfig, out: dict[str, float], wb: float) -> None:
    """Re-price at bf16 the linear weights a checkpoint leaves unquantized (ModelSpec.quant_exclude:
    e.g. gpt-oss's MXFP4 covers the MoE experts only, Kimi-K2.5's int4 the routed experts only);
    a single excluded attention projection by its share of the attention weights; at fp8 the
    components a mixed-precision checkpoint stores in fp8 (ModelSpec.quant_fp8)."""
    wd = cfg.resolved_weight_dtype(model)
    if not (model.quant_exclude or model.quant_fp8) or wd in ("bf16", "fp16"):
        return
    r = DTYPE_BYTES["bf16"] / wb
    for comp in ("attention", "mlp", "shared_experts", "experts"):
        stored = model.stored_dtype(comp, weight_dtype=wd)
        if stored is not None:
            out[comp] *= linear_weight_bytes_per_elem(stored) / wb
    if not model.keeps_bf16("attention", weight_dtype=wd):
        tpa = cfg.tp // cfg.attention_dp
        ops = model.attention_linear_ops()
        total = _ops_params(ops, tpa, model)
        excl = sum(_sharded_params(op, tpa, model) for op in ops
                   if model.keeps_bf16("attention", op.name, wd))
        if excl and total:
            out["attention"] *= 1.0 + (r - 1.0) * excl / total


def activation_peak_bytes(model: ModelSpec, cfg: ReplicaConfig, tokens: int) -> int:
    """Peak activation memory of vLLM's profiling pass on one GPU (bf16 activations).

    Live at the MLP peak: residual + normed hidden states, the gate/up output and the activated
    intermediate of the largest MLP (fused-MoE intermediate caches for MoE layers: tokens × top-k
    copies), plus the attention projections; and the sampler's fp32 logits/probs for up to
    ``max_num_seqs`` sequences over the full (gathered) vocabulary.
    """
    tp, b = cfg.tp, DTYPE_BYTES["bf16"]
    h = model.hidden_size
    hidden = 3 * tokens * h * b
    attn_out = sum(_sharded_params(op, tp, model) / op.k for op in model.attention_linear_ops())
    attn = tokens * attn_out * b
    mlp = 0.0
    if model.intermediate_size and any(not model.is_moe_layer(i) for i in range(model.num_layers)):
        # gate|up output (2 x width) + activated (1 x); an ungated MLP's up output is 1 x
        mlp = tokens * (3 if model.mlp_gated else 2) * model.intermediate_size / tp * b
    if model.moe:
        m = model.moe
        inter = m.expert_intermediate_size / (tp // cfg.ep)
        moe = tokens * m.experts_per_token * (3 * inter + h) * b
        moe += tokens * 3 * m.shared_intermediate_size / tp * b
        mlp = max(mlp, moe)
    seqs = min(cfg.max_num_seqs, tokens)
    logits = seqs * model.vocab_size * 4 * 3
    return int(hidden + max(attn, mlp) + logits)


class StageMemory(BaseModel):
    """Memory of one GPU in one pipeline stage (all TP ranks of a stage are alike)."""

    stage: int
    layers: int
    weights_bytes: int
    weights_by_component: dict[str, int]
    activation_bytes: int
    runtime_overhead_bytes: int = Field(description="NCCL / custom all-reduce buffers inside the budget")
    outside_budget_bytes: int = Field(description="CUDA context + CUDA graphs (must fit in 1 − util)")
    budget_bytes: int = Field(description="total × gpu_memory_utilization")
    kv_cache_bytes: int = Field(description="Bytes left for the KV cache (negative = overflow)")
    kv_bytes_per_token: float
    kv_blocks: int
    #: hybrid models: bounded per-sequence state in the KV pool (sliding windows, recurrent
    #: state where the engine keeps it there) and recurrent state in a pool of its own
    seq_state_bytes: float = 0.0
    state_pool_bytes: int = 0


class MemoryReport(BaseModel):
    """Memory breakdown and KV capacity of one replica shape on one device type."""

    pool: str | None
    device: str
    tp: int
    pp: int
    ep: int
    gpus: int
    weight_dtype: str
    kv_dtype: str
    layers_per_stage: list[int]
    max_model_len: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    device_memory_bytes: int
    stages: list[StageMemory]
    kv_blocks: int
    kv_tokens: int
    max_concurrent_full_len: int = Field(description="Sequences of max_model_len that fit at once")
    fits: bool
    #: KV blocks every running sequence holds besides its tokens' (hybrid models' bounded state)
    seq_state_blocks: int = 0
    #: tokens per KV block when the engine changes it for this model (vLLM V1 with linear-attention
    #: layers, :func:`hybrid_block_size`); None = the engine's block_size
    block_size: int | None = None
    #: most running sequences the engine's recurrent-state pool admits (SGLang MambaPool); None
    #: = no such pool
    max_state_seqs: int | None = None
    problem: str | None = Field(None, description="Why it does not fit")
    overflow_component: str | None = None
    overflow_bytes: int = 0

    @property
    def weights_per_gpu_max(self) -> int:
        return max(s.weights_bytes for s in self.stages)


def replica_memory(model: ModelSpec, device: DeviceSpec, cfg: ReplicaConfig,
                   engine: EngineSpec | None = None) -> MemoryReport:
    """Memory breakdown, KV blocks and the fit verdict of ``cfg`` on ``device``."""
    engine = engine or load_engine()
    # engine defaults (by GPU memory where the engine decides so), one place
    cfg = cfg.resolved(engine, model, device)
    max_len = cfg.resolved_max_model_len(model.max_position_embeddings)
    tokens = cfg.resolved_batched_tokens(max_len, engine.chunked_prefill_budget)
    total = device.memory_bytes
    budget = int(total * cfg.gpu_memory_utilization)
    outside = int((engine.cuda_context_gib + (engine.cuda_graph_gib if cfg.cuda_graphs else 0)) * GIB)
    multi = cfg.tp * cfg.pp > 1
    runtime = 0
    if multi:
        runtime += int(engine.nccl_buffers_gib * GIB)
        if cfg.custom_allreduce and cfg.tp > 1:
            runtime += int(engine.custom_allreduce_buffers_gib * GIB)
    act = int(activation_peak_bytes(model, cfg, tokens) * (1 + engine.allocator_slack))
    stages: list[StageMemory] = []
    bs = hybrid_block_size(model, cfg.tp // cfg.attention_dp, cfg.kv_dtype, engine)
    state_per_seq: list[float] = []  # recurrent-state bytes per sequence in a pool of its own
    ranges = stage_layer_ranges(model, cfg, engine)
    for s, layers in enumerate(ranges):
        comp = weight_bytes_by_component(model, cfg, s, engine)
        w = sum(comp.values())
        kv_tok, seq_b, state_b = stage_kv_layout(model, layers, cfg.tp // cfg.attention_dp,
                                                 cfg.kv_dtype, engine)
        if engine.kv_sizing == "static_fraction":
            # SGLang: weights + KV pool = total x mem_fraction_static; activations live outside.
            # It measures the free memory after loading the weights (profile_max_num_token), so
            # the CUDA context (and NCCL buffers) already taken count against the pool too
            kv = budget - w - runtime - int(engine.cuda_context_gib * GIB)
        else:
            kv = budget - w - act - runtime
        pool_b = 0
        state_per_seq.append(state_b)
        if state_b > 0 and kv > 0:
            # SGLang 0.5.9 handle_max_mamba_cache: mamba state / full KV = mamba_full_memory_ratio
            pool_b = int(kv * engine.mamba_full_memory_ratio / (1 + engine.mamba_full_memory_ratio))
            kv -= pool_b
        if kv_tok <= 0:  # a stage with no full-attention layer: no per-token limit here
            blocks = 1 << 40
        else:
            blocks = max(0, int(kv // (bs * kv_tok))) if kv > 0 else 0
        stages.append(StageMemory(stage=s, layers=len(layers), weights_bytes=w,
                                  weights_by_component=comp, activation_bytes=act,
                                  runtime_overhead_bytes=runtime, outside_budget_bytes=outside,
                                  budget_bytes=budget, kv_cache_bytes=int(kv),
                                  kv_bytes_per_token=kv_tok, kv_blocks=blocks,
                                  seq_state_bytes=seq_b, state_pool_bytes=pool_b))
    # with data-parallel attention every attention rank holds a pool of its own requests
    rank_blocks = min(s.kv_blocks for s in stages)
    blocks = rank_blocks * cfg.attention_dp
    kv_tokens = blocks * bs
    rank_tokens = rank_blocks * bs
    # bounded per-sequence state, in blocks of the stage that holds the fewest (every stage's
    # pool admits the same sequences); SGLang's recurrent-state pool caps running requests at
    # its slots // MAMBA_CACHE_SIZE_MAX_RUNNING_REQUESTS_RATIO (model_runner.init_memory_pool)
    seq_blocks, max_state = 0, None
    for st in stages:
        if st.seq_state_bytes > 0 and st.kv_bytes_per_token > 0:
            seq_blocks = max(seq_blocks, math.ceil(
                st.seq_state_bytes / (bs * st.kv_bytes_per_token)))
    state_seqs = [int(st.state_pool_bytes // sb) for st, sb in zip(stages, state_per_seq) if sb > 0]
    if state_seqs:
        max_state = cfg.attention_dp * (min(state_seqs) // engine.mamba_slots_per_request)
    problem, comp_name, overflow = None, None, 0
    worst = min(stages, key=lambda s: s.kv_cache_bytes)
    if engine.kv_sizing == "static_fraction":
        outside += act - int(engine.cuda_context_gib * GIB)  # the context is inside the pool
    if outside > total - budget:
        overflow = outside - (total - budget)
        comp_name = "cuda_context_and_graphs"
        what = "CUDA context + graphs" + (" + activations" if engine.kv_sizing == "static_fraction" else "")
        problem = (f"{what} need {outside / GIB:.2f} GiB outside the "
                   f"gpu_memory_utilization budget but only {(total - budget) / GIB:.2f} GiB is left; "
                   f"lower gpu_memory_utilization")
    elif worst.kv_cache_bytes <= 0:
        overflow = -worst.kv_cache_bytes + int(worst.kv_bytes_per_token * max_len)
        comp_name = max(worst.weights_by_component, key=worst.weights_by_component.get)
        # a static-fraction engine keeps activations outside the budget (the CUDA context counts in)
        inside = (f"CUDA context {engine.cuda_context_gib:.2f} GiB" if engine.kv_sizing == "static_fraction"
                  else f"activations {worst.activation_bytes / GIB:.1f} GiB")
        problem = (f"stage {worst.stage}: weights {worst.weights_bytes / GIB:.1f} GiB + {inside} + "
                   f"buffers {runtime / GIB:.2f} GiB exceed the "
                   f"{budget / GIB:.1f} GiB budget by {-worst.kv_cache_bytes / GIB:.1f} GiB "
                   f"(largest component: {comp_name})")
    elif max_state == 0:
        overflow = int(max(state_per_seq) * engine.mamba_slots_per_request)
        comp_name = "recurrent_state"
        problem = ("the recurrent-state pool holds fewer than "
                   f"{engine.mamba_slots_per_request} sequences' state (short by "
                   f"{overflow / GIB:.2f} GiB per GPU)")
    elif rank_tokens < max_len and engine.kv_must_hold_max_len:
        overflow = int((max_len - rank_tokens) * worst.kv_bytes_per_token)
        comp_name = "kv_cache"
        problem = (f"KV cache holds {rank_tokens} tokens"
                   + (" per attention-DP rank" if cfg.attention_dp > 1 else "")
                   + f", fewer than max_model_len={max_len} "
                   f"(short by {overflow / GIB:.2f} GiB per GPU), so the engine will not start; "
                   f"set max_model_len <= {rank_tokens} (the longest context this pool holds, "
                   f"vLLM's 'estimated maximum model length'), or give the KV cache more memory "
                   f"(gpu_memory_utilization, fp8 KV, more GPUs)")
    return MemoryReport(
        pool=cfg.pool, device=device.name, tp=cfg.tp, pp=cfg.pp, ep=cfg.ep, gpus=cfg.gpus,
        weight_dtype=cfg.weight_dtype, kv_dtype=cfg.kv_dtype,
        layers_per_stage=[len(r) for r in ranges], max_model_len=max_len,
        max_num_batched_tokens=tokens, gpu_memory_utilization=cfg.gpu_memory_utilization,
        device_memory_bytes=total, stages=stages, kv_blocks=blocks, kv_tokens=kv_tokens,
        max_concurrent_full_len=cfg.attention_dp * (rank_tokens // max_len) if max_len else 0,
        fits=problem is None, seq_state_blocks=seq_blocks, max_state_seqs=max_state,
        block_size=bs if bs != engine.block_size else None,
        problem=problem, overflow_component=comp_name,
        overflow_bytes=int(overflow))
