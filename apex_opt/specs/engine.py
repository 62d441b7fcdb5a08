"""Serving-engine profiles: every fact of one engine generation, as versioned data.

Loaded from ``apex_opt/data/engines/<name>.yaml`` so that no engine constant lives in code. A profile
says which engine it models (``engine``: vllm | sglang), which releases (``versions``, a PEP 440
specifier), its scheduler policy, its defaults (token budget, max sequences, chunked prefill, prefix
caching -- by GPU memory where the engine decides by it), how it sizes memory, its CUDA-graph mode and
capture sizes, its host (CPU) costs, whether host work overlaps the GPU (async scheduling / overlap
scheduler), the front-end latency and its launch-flag vocabulary.

``load_engine("vllm")`` loads a profile; ``load_engine("vllm@0.10")`` also checks the release against
``versions`` and applies the profile's ``version_overrides`` for it (e.g. async scheduling only where
that release has it on by default).
"""

from __future__ import annotations

import re

from functools import lru_cache
from typing import Literal, get_args

from pydantic import Field, model_validator

from .common import DPRouterPolicy, NonNegFloat, PosFloat, StrictModel


class BatchDefaults(StrictModel):
    """Default scheduler limits for devices of at least ``min_device_gib`` memory."""

    min_device_gib: NonNegFloat = Field(0.0, description="Smallest device memory (GiB) of the tier.")
    exclude_devices: tuple[str, ...] = Field(
        (), description="Device-name substrings excluded from this tier (vLLM keeps A100 on the "
                        "small defaults).")
    max_num_batched_tokens: int = Field(ge=1, description="Token budget per step.")
    max_num_seqs: int = Field(ge=1, description="Max running sequences.")
    cuda_graph_max_bs_tp_lt4: int | None = Field(
        None, ge=1, description="Largest captured decode batch when TP < 4 (SGLang); None = all "
                                "of cuda_graph_batch_sizes.")
    cuda_graph_max_bs_tp_ge4: int | None = Field(
        None, ge=1, description="Largest captured decode batch when TP >= 4 (SGLang).")


class StaticFractionRule(StrictModel):
    """SGLang ``mem_fraction_static`` default: total minus a reserve, or a table by TP size."""

    rule: Literal["reserve", "tp_table"] = Field(
        description="'reserve' (SGLang 0.5): (total - reserved) / total with reserved from the "
                    "chunk size, CUDA-graph batch and TP x PP; 'tp_table' (SGLang 0.4): fixed "
                    "fraction by TP size.")
    base_mib: NonNegFloat = Field(0.0, description="Constant reserve (attention metadata).")
    per_chunk_token_mib: NonNegFloat = Field(0.0, description="Reserve per chunked-prefill token "
                                                               "(activations), at least 2048 tokens.")
    per_graph_bs_mib: NonNegFloat = Field(0.0, description="Reserve per CUDA-graph batch entry.")
    per_gpu_mib: NonNegFloat = Field(0.0, description="Reserve per GPU of TP x PP.")
    min_reserve_mib_large_gpu: NonNegFloat = Field(
        0.0, description="Floor on the reserve for devices above 60 GiB.")
    per_graph_bs_dp_mib: NonNegFloat = Field(
        0.0, description="Data-parallel attention: extra reserve per CUDA-graph batch entry and "
                         "attention rank (padding).")
    per_graph_bs_dp_large_mib: NonNegFloat = Field(
        0.0, description="... and a further reserve per entry and rank when the graph batch "
                         "exceeds large_graph_bs.")
    large_graph_bs: int = Field(300, ge=1, description="See per_graph_bs_dp_large_mib.")
    tp_table: dict[int, float] = Field(
        default_factory=dict, description="'tp_table': fraction for TP >= key (largest key wins).")


class NewTokenRatio(StrictModel):
    """SGLang's reserve of decode room when admitting prefills (schedule_policy / scheduler)."""

    init: float = Field(gt=0, le=1, description="Initial ratio (SGLANG_INIT_NEW_TOKEN_RATIO).")
    min_factor: float = Field(gt=0, le=1, description="min ratio = init x min_factor.")
    decay_steps: int = Field(ge=1, description="Decode steps to decay from init to min.")
    retract_decode_steps: int = Field(
        20, ge=0, description="Decode-out-of-memory retraction (ScheduleBatch.retract_decode): "
                              "requests are retracted until the pool has this many tokens free "
                              "per remaining one, and the ratio becomes (decoded + this x n) / "
                              "(max_new_tokens summed + 1) over them (SGLANG_RETRACT_DECODE_STEPS).")


#: request-routing policies over data-parallel replicas (apex_opt/sim/router.py implements them)
DP_ROUTER_POLICIES: tuple[str, ...] = get_args(DPRouterPolicy)
_ROUTER_PARAMS = {
    "sglang_cache_aware": ("cache_threshold", "balance_abs_threshold", "balance_rel_threshold",
                           "eviction_interval_s", "max_tree_size_chars", "chars_per_token"),
    "vllm_dp_lb": ("waiting_weight", "stats_interval_s"),
}


class DPRouterSpec(StrictModel):
    """How the engine's own deployment spreads requests over data-parallel replicas."""

    policy: DPRouterPolicy = \
        Field(description="'round_robin' (request i -> replica i mod R), 'least_outstanding' "
                          "(fewest unfinished requests), 'sglang_cache_aware' (sgl-router's "
                          "approximate radix tree + load-balance override), 'vllm_dp_lb' (vLLM "
                          "V1 internal DP load balancer: lowest waiting x w + running).")
    cache_threshold: float | None = Field(
        None, ge=0, le=1, description="sglang_cache_aware: prefix-match ratio above which the "
                                      "request goes to the worker with the longest match.")
    balance_abs_threshold: int | None = Field(
        None, ge=0, description="sglang_cache_aware: load imbalance needs max - min > this...")
    balance_rel_threshold: float | None = Field(
        None, ge=0, description="... and max > min x this; then the least-loaded worker wins.")
    eviction_interval_s: float | None = Field(
        None, gt=0, description="sglang_cache_aware: seconds between evictions of the trees.")
    max_tree_size_chars: int | None = Field(
        None, ge=1, description="sglang_cache_aware: characters per worker's tree kept by an "
                                "eviction (LRU leaves dropped beyond it).")
    chars_per_token: float | None = Field(
        None, gt=0, description="sglang_cache_aware: characters of prompt text per token (the "
                                "tree holds text; the simulator counts tokens).")
    waiting_weight: float | None = Field(
        None, ge=0, description="vllm_dp_lb: weight of an engine's waiting requests in its score "
                                "(running requests weigh 1).")
    stats_interval_s: float | None = Field(
        None, gt=0, description="vllm_dp_lb: period of the DP coordinator's count snapshots.")
    launch: str | None = Field(
        None, description="What deploys this router (for the launch plan / the reader).")

    @model_validator(mode="after")
    def _needs(self) -> "DPRouterSpec":
        missing = [k for k in _ROUTER_PARAMS.get(self.policy, ()) if getattr(self, k) is None]
        if missing:
            raise ValueError(f"dp_router policy {self.policy} needs {', '.join(missing)}")
        return self


class SharedExpertFusion(StrictModel):
    """When the engine folds a model's shared expert into the routed-expert MoE kernel as one more
    expert that every token selects (SGLang deepseek_v2.py determine_num_fused_shared_experts:
    num_experts = routed + 1, top_k = k + 1, the shared expert's weights loaded as
    ``experts.<n_routed>``), instead of running it as a separate MLP."""

    architectures: list[str] = Field(description="HF architectures the engine fuses for.")
    routed_experts: list[int] | None = Field(
        None, description="Routed-expert counts it accepts (None: any).")
    shared_experts: int = Field(1, ge=1, description="Shared-expert count it accepts.")
    min_compute_capability: float = Field(
        0.0, ge=0, description="Lowest CUDA compute capability (major.minor) it fuses on.")
    expert_parallel: bool = Field(
        False, description="Whether it still fuses under expert parallelism (moe_ep_size > 1).")

    def applies(self, architecture: str | None, routed: int, shared: int,
                compute_capability: str | None, ep: int) -> bool:
        try:
            cc = float(compute_capability) if compute_capability else None
        except ValueError:
            cc = None
        return (architecture in self.architectures
                and (self.routed_experts is None or routed in self.routed_experts)
                and shared == self.shared_experts and (ep == 1 or self.expert_parallel)
                and (cc is None or cc >= self.min_compute_capability))


class EngineSpec(StrictModel):
    """Every behaviour constant of one serving-engine generation."""

    name: str = Field(description="Profile name, e.g. 'vllm', 'vllm-0.6', 'sglang'.")
    engine: Literal["vllm", "sglang"] = Field(description="Which engine this profile models.")
    versions: str = Field(description="PEP 440 specifier of the releases modelled, e.g. "
                                      "'>=0.9,<0.20'.")
    reference_version: str = Field(description="Release whose behaviour the constants describe "
                                               "when no version is given.")
    default: bool = Field(False, description="The default profile (exactly one is).")
    description: str = Field("", description="One line for `apex-opt engines`.")
    scheduler: Literal["vllm", "vllm_v1", "sglang"] = Field(
        "vllm", description="'vllm': V0 scheduler (unchunked: prefill-only or decode-only steps; "
                            "chunked: decodes first, then prefills, whole prompt's blocks at "
                            "admission, watermark). 'vllm_v1': one token budget per step over "
                            "running requests first (decodes and partial prefills), then waiting "
                            "ones; blocks allocated per chunk; no watermark. 'sglang': "
                            "prefill-first (a chunked prefill batch runs whenever one can be "
                            "formed; decodes wait), admission reserves decode room with the "
                            "new-token ratio.")
    kv_sizing: Literal["profile_run", "static_fraction"] = Field(
        "profile_run", description="'profile_run': KV = total*util - weights - profiled activation "
                                   "peak - buffers (vLLM). 'static_fraction': weights + KV pool = "
                                   "total*mem_fraction_static (SGLang); activations, CUDA "
                                   "graphs and context live in the rest.")
    static_fraction: StaticFractionRule | None = Field(
        None, description="How SGLang picks mem_fraction_static when the plan does not set it.")
    kv_must_hold_max_len: bool = Field(
        True, description="The server refuses to start when the KV cache holds fewer tokens than "
                          "max_model_len (vLLM); SGLang starts anyway and rejects longer requests.")
    context_limit_exclusive: bool = Field(
        False, description="A request needs prompt + max new tokens *below* the context length "
                           "(SGLang's tokenizer manager refuses a total >= context_len); False: up "
                           "to it (vLLM refuses only a total > max_model_len).")
    clip_output_to_kv_pool: bool = Field(
        False, description="A request longer than the KV pool is served with its output cut to "
                           "fit: max new tokens = min(asked, min(context, pool) - prompt - 2), and "
                           "a prompt above min(context, pool) - 6 is refused (SGLang's scheduler, "
                           "max_req_len / max_req_input_len). False: such a request can never run "
                           "and counts as dropped.")
    watermark_fraction: NonNegFloat = Field(0.01, description="Share of KV blocks kept free when "
                                                               "admitting a prefill (V0 only).")
    block_size: int = Field(16, ge=1, le=1024, description="KV-cache block (page) size in tokens.")
    pp_layer_remainder: Literal["last", "before_last", "last_n"] = Field(
        "before_last", description="Where the engine's default pipeline split puts the hidden "
                                   "layers left over by num_layers // pp: 'last' all on the last "
                                   "stage (vLLM 0.6), 'before_last' one each on the stages before "
                                   "the last, from the second-to-last back (vLLM get_pp_indices), "
                                   "'last_n' one each on the last `remainder` stages (SGLang "
                                   "get_pp_indices).")
    hybrid_kv: Literal["none", "shared_pool", "separate_pools"] = Field(
        "none", description="How hybrid models' bounded per-sequence state is stored (see "
                            "memory.stage_kv_layout). 'shared_pool': vLLM V1 hybrid KV cache "
                            "manager (sliding layers keep window + 1 block, recurrent state one "
                            "block per request, all in one block pool). 'separate_pools': SGLang "
                            "(SWA pool of swa_full_tokens_ratio x the full pool; recurrent state "
                            "in a MambaPool sized by mamba_full_memory_ratio). 'none': sliding "
                            "layers hold every token; recurrent state reserved per sequence.")
    recurrent_state_dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="dtype of the SSM / delta-rule state (the conv window is bf16).")
    recurrent_state_dtype_from_config: bool = Field(
        False, description="The checkpoint's config mamba_ssm_dtype overrides "
                           "recurrent_state_dtype (SGLang mamba2_state_dtype).")
    recurrent_state_dtype_by_architecture: dict[str, Literal["bf16", "fp16", "fp32"]] = Field(
        default_factory=dict,
        description="Architectures whose state dtype the engine takes from the checkpoint's "
                    "config (mamba_ssm_cache_dtype / mamba_ssm_dtype), with this dtype when the "
                    "config gives none (vLLM's NemotronH config hook).")
    kv_dtype_from_checkpoint: bool = Field(
        False, description="An unset KV-cache dtype (--kv-cache-dtype auto) takes the one the "
                           "checkpoint declares (ModelSpec.checkpoint_kv_dtype: ModelOpt FP8 KV).")
    mamba_full_memory_ratio: NonNegFloat = Field(
        0.9, description="SGLang: recurrent-state pool / full KV pool memory ratio.")
    mamba_slots_per_request: int = Field(
        1, ge=1, description="SGLang: recurrent-state slots per running request "
                             "(MAMBA_CACHE_SIZE_MAX_RUNNING_REQUESTS_RATIO with the radix cache).")
    swa_full_tokens_ratio: NonNegFloat = Field(
        0.8, description="SGLang: SWA pool tokens / full pool tokens.")
    hybrid_swa_disabled_architectures: list[str] = Field(
        default_factory=list,
        description="Architectures whose sliding-window layers this engine stores like full "
                    "layers (every token in the KV cache) although hybrid_kv would bound them: "
                    "SGLang's per-architecture disable_hybrid_swa_memory (Gemma-2 / Gemma-3). "
                    "Their attention is still computed over the window.")
    cuda_context_gib: NonNegFloat = Field(description="CUDA context + library workspaces per GPU "
                                                      "(outside the utilisation budget).")
    cuda_graph_gib: NonNegFloat = Field(description="CUDA-graph memory pools per GPU, allocated "
                                                    "after the KV cache is sized.")
    nccl_buffers_gib: NonNegFloat = Field(description="NCCL buffers per GPU of a multi-GPU replica.")
    custom_allreduce_buffers_gib: NonNegFloat = Field(description="Custom all-reduce IPC buffers.")
    allocator_slack: NonNegFloat = Field(description="Fractional slack on the activation peak.")
    cuda_graph_mode: Literal["decode_only", "piecewise", "full_and_piecewise"] = Field(
        "decode_only", description="'decode_only': decode-only batches replay a full graph, "
                                   "anything with a prefill runs eagerly (V0, SGLang). "
                                   "'piecewise': every batch up to the largest capture size "
                                   "replays graphs of the GEMM/elementwise pieces, attention runs "
                                   "eagerly between them (vLLM V1 0.9-0.10). "
                                   "'full_and_piecewise': decode-only batches replay full graphs, "
                                   "mixed batches piecewise ones (vLLM V1 >= 0.11).")
    cuda_graph_batch_sizes: tuple[int, ...] = Field(description="Captured batch sizes (decode "
                                                                "sequences, or tokens for "
                                                                "piecewise graphs).")
    chunked_prefill_budget: int = Field(512, ge=1, description="Default max_num_batched_tokens "
                                                                "with chunked prefill when no "
                                                                "batch_defaults tier applies.")
    chunked_prefill_above_len: int = Field(
        32768, ge=0, description="Chunked prefill is on by default when max_model_len exceeds "
                                 "this (vLLM 0.6: 32768; 0 = always on).")
    batch_defaults: tuple[BatchDefaults, ...] = Field(
        (), description="Default (max_num_batched_tokens, max_num_seqs) by device memory; the "
                        "first tier the device qualifies for wins.")
    default_max_num_seqs: int = Field(256, ge=1, description="max_num_seqs when no tier applies.")
    search_max_num_seqs_factors: tuple[float, ...] = Field(
        (0.25, 1.0), min_length=1, description="solve: max_num_seqs values searched, as factors of "
                                               "the engine's default on the device.")
    search_batched_tokens_factors: tuple[float, ...] = Field(
        (0.25, 1.0), min_length=1, description="solve: max_num_batched_tokens values searched, as "
                                               "factors of the engine's default on the device.")
    long_prefill_token_threshold: int = Field(
        0, ge=0, description="vLLM V1: a request prefills at most this many tokens per step "
                             "(0 = no limit, the default with max_num_partial_prefills = 1).")
    max_num_partial_prefills: int = Field(1, ge=1, description="vLLM: concurrent partial "
                                                               "prefills (default 1).")
    prefix_caching: bool = Field(False, description="Prefix caching on by default.")
    mixed_chunk: bool = Field(
        False, description="SGLang --enable-mixed-chunk on by default: the running decodes join "
                           "every prefill batch (each taking one token of its chunk budget) "
                           "instead of waiting for it. Only the SGLang scheduler has it (vLLM "
                           "mixes whenever chunked prefill is on).")
    max_prefill_tokens: int | None = Field(
        None, ge=1, description="SGLang ServerArgs.max_prefill_tokens: the prefill batch's cap "
                                "on new prompt tokens (PrefillAdder.rem_input_tokens), separate "
                                "from the chunk budget; None = the engine has no such knob.")
    prefix_cache: Literal["none", "block_hash", "radix"] = Field(
        "none", description="'block_hash' (vLLM): whole full blocks reused by chained block "
                            "hashes, never the whole prompt; free cached blocks evicted LRU. "
                            "'radix' (SGLang): token-granular radix tree, LRU leaf eviction.")
    new_token_ratio: NewTokenRatio | None = Field(
        None, description="SGLang decode-room reserve at admission (None = no reserve).")
    host_step_base_ms: NonNegFloat = Field(description="Fixed CPU time per engine step.")
    host_per_seq_us: NonNegFloat = Field(description="CPU time per sequence in a step "
                                                     "(scheduling, input preparation, sampling "
                                                     "bookkeeping, output processing).")
    host_multi_gpu_ms: NonNegFloat = Field(description="Extra CPU time per step to broadcast "
                                                       "step metadata to the workers (TP/PP > 1).")
    frontend_in_process: bool = Field(
        False, description="The HTTP API server shares the engine's process and event loop "
                           "(vLLM < 0.5.4, or 0.5.x with --disable-frontend-multiprocessing): its "
                           "per-token work runs between engine steps, serial with them.")
    frontend_per_token_us: NonNegFloat = Field(
        0.0, description="With frontend_in_process: API-server CPU time per sequence per step "
                         "(handing each RequestOutput to its request's handler and resuming it).")
    async_scheduling: bool = Field(
        False, description="Host work of step N+1 (scheduling, input preparation, output "
                           "processing of step N) overlaps the GPU work of step N: the step "
                           "period is max(GPU, host) + host_serial_ms (vLLM async scheduling, "
                           "SGLang overlap scheduler).")
    host_serial_ms: NonNegFloat = Field(
        0.0, description="With async_scheduling: host time per step that cannot overlap the GPU "
                         "(waiting for the sampled tokens and launching the next step).")
    pp_shares_max_num_seqs: bool = Field(
        False, description="With pipeline parallelism the running-request cap (max_num_seqs / "
                           "max_running_requests) covers every in-flight micro-batch together: "
                           "each of the pp virtual engines runs at most cap // pp (vLLM V1: one "
                           "scheduler whose running list holds them all; SGLang: "
                           "pp_max_micro_batch_size). False: each virtual engine has the whole "
                           "cap (vLLM 0.6: one Scheduler per virtual engine).")
    pp_shares_kv_pool: bool = Field(
        False, description="With pipeline parallelism the in-flight micro-batches allocate from "
                           "ONE pool of KV blocks (vLLM V1: one KVCacheManager per scheduler; "
                           "SGLang: one token-to-KV pool), so one micro-batch may hold more than "
                           "1/pp of it and a request may use the whole cache. False: each virtual "
                           "engine owns num_blocks // pp (vLLM 0.6's per-virtual-engine Scheduler).")
    overlap_with_pp: bool = Field(
        False, description="The host/GPU overlap (async scheduling, SGLang's overlap scheduler, "
                           "vLLM 0.6's async output processing) stays on with pipeline "
                           "parallelism; False: the engine turns it off when pp > 1.")
    request_overhead_ms: NonNegFloat = Field(
        0.0, description="Per-request latency before the engine can schedule a new request "
                         "(HTTP handling, request parsing, tokenisation, hand-off to the engine "
                         "process) plus first-token output processing.")
    # streaming front end (sim/engine.py StreamFrontEnd)
    frontend_chunk_us: NonNegFloat = Field(
        0.0, description="CPU time the server process that streams tokens to the clients (SGLang "
                         "TokenizerManager + HTTP, vLLM V1 API server) spends per streamed chunk. "
                         "One process serves every request of a replica: chunks queue FIFO and a "
                         "client sees its tokens when the front end has written them (0 = not "
                         "modelled).")
    frontend_chunk_per_token_ns: NonNegFloat = Field(
        0.0, description="Extra front-end time per streamed chunk per token the request has "
                         "generated so far (cumulative, non-incremental streaming copies).")
    stream_interval: int = Field(
        1, ge=1, description="Tokens per streamed chunk (--stream-interval; 1 = every token).")
    graph_launch_saving_us: NonNegFloat = Field(description="Launch latency per kernel that a CUDA-graph "
                                                            "replay removes from isolated-kernel timings.")
    eager_launch_us: NonNegFloat = Field(
        description="Eager mode, fallback: CPU cost per counted kernel for engines whose "
                    "data/kernels.yaml entry lists no eager_ops inventory (those price each "
                    "component's ops by kind instead).")
    attention_backend: str | None = Field(
        None, description="Attention backend the server runs (SGLang --attention-backend): picks "
                          "the eager host cost of attention from data/kernels.yaml eager_ops "
                          "(None = the engine's default there).")
    piecewise_layer_cpu_us: NonNegFloat = Field(
        0.0, description="Piecewise graphs: CPU time per layer to replay the graph pieces and run "
                         "the eager attention op between them.")
    sampler_top_p_bytes_per_logit: NonNegFloat = Field(
        0.0, description="GPU cost of the sampler's top-p filter, as HBM-equivalent bytes per "
                         "logit (sampled sequence x vocabulary entry) on every TP rank, paid by "
                         "the whole step when any request in it sets top_p < 1. 0 = a fused "
                         "kernel of negligible cost (FlashInfer sampling).")
    sampler_top_k_bytes_per_logit: NonNegFloat = Field(
        0.0, description="The same for a step whose requests set top_k (with or without top_p).")
    dp_attention: bool = Field(False, description="Supports data-parallel attention for MoE "
                                                  "models: per-rank schedulers and KV caches, "
                                                  "attention on tp/attention_dp GPUs, experts over "
                                                  "all tp GPUs (SGLang --enable-dp-attention; vLLM "
                                                  "V1 --data-parallel-size with expert parallelism).")
    redundant_experts_argv: tuple[str, ...] = Field(
        (), description="Launch arguments that place N redundant (replicated) expert slots for "
                        "expert-parallel load balancing (EPLB), '{n}' standing for N (SGLang: "
                        "--ep-num-redundant-experts N; vLLM V1: --enable-eplb with "
                        "num_redundant_experts). Empty: this release cannot place any.")
    moe_a2a_argv: tuple[str, ...] = Field(
        (), description="Launch arguments that dispatch MoE tokens by all-to-all (DeepEP) under "
                        "data-parallel attention (SGLang 0.5: --moe-a2a-backend deepep; vLLM "
                        ">= 0.11.1: --all2all-backend deepep_low_latency).")
    moe_a2a_env: dict[str, str] = Field(
        default_factory=dict, description="Environment that selects it where the release has no "
                                          "flag (vLLM 0.9-0.11.0: VLLM_ALL2ALL_BACKEND). Neither "
                                          "argv nor env: not available in this release.")

    @property
    def moe_a2a(self) -> bool:
        """Whether this release can dispatch MoE tokens by all-to-all (DeepEP)."""
        return bool(self.moe_a2a_argv or self.moe_a2a_env)
    # --- data-parallel attention: what one lockstep step runs (owner: the DP-attention model)
    dp_attention_collectives: tuple[tuple[str, str, str], ...] = Field(
        (("all_reduce", "attention_tp", "rank"), ("all_gather", "all", "all_ranks"),
         ("reduce_scatter", "all", "all_ranks")),
        description="DP attention: the collectives of one MoE layer in order, each [op, group, "
                    "size]: op all_reduce / all_gather / reduce_scatter; group attention_tp (the "
                    "tp/attention_dp GPUs of one rank; skipped when that is one GPU) or all (the "
                    "replica's tp GPUs); size rank (one rank's tokens x hidden bf16) or all_ranks "
                    "(every rank's tokens, each padded to the busiest rank when the step runs a "
                    "CUDA graph).")
    dp_attention_gathered_dense: bool = Field(
        True, description="DP attention: dense (non-MoE) MLP layers and the LM head run on every "
                          "rank's gathered tokens sharded over all tp GPUs (with the MoE layers' "
                          "collectives); False: each rank runs them on its own tokens sharded over "
                          "its attention-TP group (an all-reduce there after the MLP).")
    dp_attention_split_prefill_budget: bool = Field(
        False, description="DP attention: each rank's chunked-prefill budget is the configured one "
                           "divided by attention_dp (SGLang server_args _handle_data_parallelism: "
                           "chunked_prefill_size //= dp_size); False: every rank keeps the whole "
                           "budget (vLLM: each DP rank an engine core with --max-num-batched-tokens).")
    dp_attention_graph_bs_multiple: bool = Field(
        False, description="DP attention: CUDA graphs are captured only for batch sizes that are "
                           "multiples of the attention-TP size (SGLang cuda_graph_runner "
                           "get_batch_sizes_to_capture: mul_base *= attn_tp_size when the gathered "
                           "buffer is used), so a rank's batch pads to the next such size.")
    dp_attention_conservativeness: PosFloat = Field(
        1.0, description="DP attention: factor on the new-token-ratio decode reserve (SGLang "
                         "server_args: schedule_conservativeness x 0.3, which scales the "
                         "scheduler's init / min new_token_ratio).")
    moe_shared_expert_fusion: list[SharedExpertFusion] = Field(
        default_factory=list, description="MoE models whose shared expert runs inside the "
                                          "routed-expert kernel as an always-selected extra "
                                          "expert, one rule per model family (none: a separate "
                                          "MLP).")
    dp_router: DPRouterSpec = Field(
        default_factory=lambda: DPRouterSpec(policy="least_outstanding"),
        description="Router over data-parallel replicas in the engine's own DP deployment "
                    "(what a plan's router 'engine' means).")
    launch_flags: dict[str, str] = Field(
        default_factory=dict, description="Planner concept -> CLI flag spelling of this engine "
                                          "(e.g. max_num_seqs -> --max-running-requests).")
    flag_vocabulary: tuple[str, ...] = Field((), description="CLI flags this release accepts "
                                                             "that a launch command may use.")
    version_overrides: tuple[dict, ...] = Field(
        (), description="[{versions: SPEC, field: value, ...}]: field values for releases "
                        "matching SPEC (applied in order by load_engine('name@version')).")
    version: str | None = Field(None, description="Release pinned by 'name@version' (None = "
                                                  "reference_version).")

    @model_validator(mode="after")
    def _check(self) -> "EngineSpec":
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion, Version

        try:
            spec = SpecifierSet(self.versions)
        except InvalidSpecifier:
            raise ValueError(f"versions {self.versions!r} is not a PEP 440 specifier") from None
        try:
            ref = Version(self.reference_version)
        except InvalidVersion:
            raise ValueError(f"reference_version {self.reference_version!r} is not a version") \
                from None
        if ref not in spec:
            raise ValueError(f"reference_version {ref} is outside versions {self.versions}")
        if list(self.cuda_graph_batch_sizes) != sorted(set(self.cuda_graph_batch_sizes)):
            raise ValueError("cuda_graph_batch_sizes must be strictly increasing")
        for c in self.dp_attention_collectives:
            if (len(c) != 3 or c[0] not in ("all_reduce", "all_gather", "reduce_scatter")
                    or c[1] not in ("attention_tp", "all") or c[2] not in ("rank", "all_ranks")):
                raise ValueError(f"dp_attention_collectives: {list(c)} is not [all_reduce|"
                                 f"all_gather|reduce_scatter, attention_tp|all, rank|all_ranks]")
        for o in self.version_overrides:
            if "versions" not in o:
                raise ValueError("every version_overrides entry needs 'versions'")
            SpecifierSet(str(o["versions"]))
            bad = set(o) - {"versions"} - set(type(self).model_fields)
            if bad:
                raise ValueError(f"version_overrides: unknown fields {sorted(bad)}")
        return self

    # ------------------------------------------------------------------ derived behaviour
    @property
    def label(self) -> str:
        """'vllm@0.12' when a release is pinned, else the profile name."""
        return f"{self.name}@{self.version}" if self.version else self.name

    def graph_batch_size(self, n: int, max_bs: int | None = None) -> int | None:
        """Captured CUDA-graph size a batch of ``n`` is padded to (None = no graph fits)."""
        for s in self.cuda_graph_batch_sizes:
            if max_bs is not None and s > max_bs:
                return None
            if s >= n:
                return s
        return None

    def _tier(self, device_name: str, device_gib: float) -> BatchDefaults | None:
        name = device_name.lower()
        for t in self.batch_defaults:
            if device_gib >= t.min_device_gib and not any(x in name for x in t.exclude_devices):
                return t
        return None

    def default_batched_tokens(self, device_name: str, device_gib: float) -> int:
        """Default max_num_batched_tokens (chunked prefill) on a device."""
        t = self._tier(device_name, device_gib)
        return t.max_num_batched_tokens if t else self.chunked_prefill_budget

    def default_max_num_seqs_for(self, device_name: str, device_gib: float) -> int:
        """Default max_num_seqs on a device."""
        t = self._tier(device_name, device_gib)
        return t.max_num_seqs if t else self.default_max_num_seqs

    def cuda_graph_max_bs(self, device_name: str, device_gib: float, tp: int) -> int | None:
        """Largest captured decode batch (None = every size in cuda_graph_batch_sizes)."""
        t = self._tier(device_name, device_gib)
        if t is None:
            return None
        return t.cuda_graph_max_bs_tp_lt4 if tp < 4 else t.cuda_graph_max_bs_tp_ge4

    def mem_fraction_static(self, device_gib: float, tp: int, pp: int, chunk: int,
                            graph_max_bs: int, attention_dp: int = 1) -> float | None:
        """SGLang's default mem_fraction_static (None = not a static-fraction engine)."""
        r = self.static_fraction
        if r is None:
            return None
        if r.rule == "tp_table":
            frac = None
            for k in sorted(r.tp_table):
                if tp >= k:
                    frac = r.tp_table[k]
            return frac
        mem_mib = device_gib * 1024
        reserved = (r.base_mib + max(chunk, 2048) * r.per_chunk_token_mib
                    + graph_max_bs * r.per_graph_bs_mib + tp * pp * r.per_gpu_mib)
        if attention_dp > 1:
            reserved += graph_max_bs * attention_dp * r.per_graph_bs_dp_mib
            if graph_max_bs > r.large_graph_bs:
                reserved += graph_max_bs * attention_dp * r.per_graph_bs_dp_large_mib
        if device_gib > 60:
            reserved = max(reserved, r.min_reserve_mib_large_gpu)
        return round((mem_mib - reserved) / mem_mib, 3)


def _engine_dir():
    from ..bundled import data_dir

    return data_dir("engines")


def engine_names() -> list[str]:
    """Bundled engine profiles."""
    return sorted(f.name[:-5] for f in _engine_dir().iterdir() if f.name.endswith(".yaml"))


@lru_cache(maxsize=32)
def _load_profile(name: str) -> EngineSpec:
    from ..io import parse_yaml, validate

    f = _engine_dir() / f"{name}.yaml"
    src = f"<bundled engine {name}>"
    return validate(EngineSpec, parse_yaml(f.read_text(encoding="utf-8"), src), src)


def all_engines() -> list[EngineSpec]:
    return [_load_profile(n) for n in engine_names()]


def default_engine_name() -> str:
    defaults = [e.name for e in all_engines() if e.default]
    if len(defaults) != 1:  # pragma: no cover - guarded by tests/test_engines.py
        raise RuntimeError(f"exactly one bundled engine must be the default, found {defaults}")
    return defaults[0]


@lru_cache(maxsize=64)
def load_engine(name: str | None = None) -> EngineSpec:
    """Engine profile ``name`` (default: the default profile, vLLM V1), optionally ``name@X.Y``
    to pin a release: it must match the profile's ``versions`` and picks its overrides.

    Raises :class:`~apex_opt.errors.InputError` for an unknown name or a release outside the
    profile's range (one line naming the value and the valid names)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    from ..errors import InputError

    if name is None:
        name = default_engine_name()
    base, _, ver = str(name).partition("@")
    names = engine_names()
    if base not in names:
        import difflib

        close = difflib.get_close_matches(base.strip().lower(), names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise InputError(f"unknown engine {base!r}; {hint}valid engines: {', '.join(names)} "
                         f"(optionally NAME@VERSION, see `apex-opt engines`)",
                         field="engine", value=name)
    spec = _load_profile(base)
    if not ver and "@" in str(name):
        raise InputError(f"no version after '@' (e.g. {base}@{spec.reference_version}, or just "
                         f"{base})", field="engine", value=name)
    if not ver:
        return spec
    if _is_dev_build(ver):
        # a nightly / main-branch build is newer than every release: the newest profile, with its
        # overrides for the first release past its range
        up = _upper_bound(spec)
        if up is None or not _newer_than_every_profile(spec, up):
            newest = max((e for e in all_engines() if e.engine == spec.engine),
                         key=lambda e: Version(e.reference_version))
            raise InputError(f"a {ver} build is newer than every {spec.engine} release; use "
                             f"{newest.name}@{ver}", field="engine", value=name)
        from ..errors import warn

        warn(f"{spec.engine} {ver} (a development build, newer than every release whose source "
             f"the profiles were read from) is modelled as {base} ({spec.versions}) at {up}, the "
             f"newest profile: check the predictions against a measurement before relying on "
             f"release-specific behaviour")
        ver = str(up)
    try:
        v = Version(ver)
    except InvalidVersion:
        raise InputError(f"{ver!r} is not a version number (e.g. {base}@{spec.reference_version}, "
                         f"or {base}@nightly for a development build)",
                         field="engine", value=name) from None
    if v not in SpecifierSet(spec.versions):
        fits = [e.name for e in all_engines() if e.engine == spec.engine
                and v in SpecifierSet(e.versions)]
        hint = f"; use {fits[0]}@{ver}" if fits else ""
        if fits or not _newer_than_every_profile(spec, v):
            raise InputError(f"engine profile {base} models {spec.engine} {spec.versions}, not "
                             f"{ver}{hint}", field="engine", value=name)
        from ..errors import warn

        if not _is_dev_build(str(name).partition("@")[2]):
            warn(f"{spec.engine} {ver} is newer than every release whose source the profiles were "
                 f"read from; modelled as {base} ({spec.versions}), the newest profile: check the "
                 f"predictions against a measurement before relying on release-specific behaviour")
    data = spec.model_dump()
    for o in spec.version_overrides:
        if v in SpecifierSet(str(o["versions"])):
            data.update({k: val for k, val in o.items() if k != "versions"})
    data["version"] = str(v)
    return EngineSpec(**data)


#: version strings of development builds (vLLM's nightly wheels and images, SGLang's
#: nightly-dev images, a source checkout of main): newer than every release
_DEV_BUILD = re.compile(r"^(nightly|main|latest|dev)([-+._].*)?$", re.IGNORECASE)


def _is_dev_build(ver: str) -> bool:
    return bool(_DEV_BUILD.match(ver.strip()))


def _upper_bound(e: EngineSpec):
    """The exclusive upper release bound of a profile's ``versions`` (None when open-ended)."""
    from packaging.version import Version

    bounds = [Version(x.split("<", 1)[1].lstrip("=").strip()) for x in e.versions.split(",")
              if x.strip().startswith("<")]
    return max(bounds) if bounds else None


def _newer_than_every_profile(spec: EngineSpec, v) -> bool:
    """``v`` is at or above the upper bound of every profile of ``spec``'s engine family and
    ``spec`` is the family's newest profile (the one with the highest upper bound)."""
    fam = [e for e in all_engines() if e.engine == spec.engine]
    ups = [_upper_bound(e) for e in fam]
    if any(u is None for u in ups):
        return False  # an open-ended profile claims every newer release itself
    return _upper_bound(spec) == max(ups) and v >= _upper_bound(spec)


def engine_for(engine: str, version: str | None) -> str:
    """Profile name (with @version) for an engine family and release, e.g. ('vllm', '0.6.0') ->
    'vllm-0.6@0.6.0'; no version -> the family's profile marked default or named like it."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    fam = [e for e in all_engines() if e.engine == engine]
    if not fam:
        from ..errors import InputError

        raise InputError(f"unknown engine family {engine!r}", field="engine", value=engine)
    if not version:
        named = [e for e in fam if e.name == engine]
        return (named or fam)[0].name
    newest = max(fam, key=lambda e: Version(e.reference_version))
    if _is_dev_build(version):
        return f"{newest.name}@{version}"
    try:
        v = Version(version)
    except InvalidVersion:
        from ..errors import InputError

        raise InputError(f"{version!r} is not a version number", field="engine_version",
                         value=version) from None
    for e in fam:
        if v in SpecifierSet(e.versions):
            return f"{e.name}@{v}"
    return newest.name


def dp_router_for(router: str, engine: EngineSpec) -> DPRouterSpec:
    """The routing policy and parameters a plan's ``router`` means on ``engine``: 'engine' = the
    profile's own ``dp_router``; a policy name = that policy, with the engine's parameters when its
    own router is that policy, else those of the bundled profile that deploys it (same engine
    family first, e.g. 'sglang_cache_aware' on a vLLM plan takes the sglang profile's)."""
    if router == "engine":
        return engine.dp_router
    if router not in DP_ROUTER_POLICIES:
        raise ValueError(f"unknown router {router!r}; expected 'engine' or one of "
                         f"{DP_ROUTER_POLICIES}")
    if engine.dp_router.policy == router:
        return engine.dp_router
    if router not in _ROUTER_PARAMS:
        return DPRouterSpec(policy=router)
    profiles = sorted(all_engines(), key=lambda e: (e.engine != engine.engine, e.name))
    for e in profiles:
        if e.dp_router.policy == router:
            return e.dp_router
    raise ValueError(f"no bundled engine profile defines the parameters of router {router!r}")
