"""Model specification read from a Hugging Face ``config.json``.

The HF config is read leniently: unknown keys are ignored, and only the fields that shape the
architecture are used (layer count, widths, attention form, MoE and MLA layout). The result is a
frozen :class:`ModelSpec` that knows its parameter counts, KV-cache footprint, FLOPs per token and
the full (unsharded) shapes of its linear layers, which the cost model shards for TP/EP.

Supported layouts:

* dense GQA/MHA decoders (Llama, Mistral, Qwen2/2.5 with q/k/v bias, Qwen3 with q/k RMSNorm,
  explicit ``head_dim`` that differs from ``hidden_size / num_attention_heads``);
* Mixtral-style MoE (``num_local_experts``, ``num_experts_per_tok``; expert width =
  ``intermediate_size``);
* Qwen2-MoE / Qwen3-MoE (``num_experts``, ``moe_intermediate_size``,
  ``shared_expert_intermediate_size`` with its sigmoid gate, ``decoder_sparse_step``,
  ``mlp_only_layers``);
* Llama-4 text (``num_local_experts``, ``interleave_moe_layer_step``, ``intermediate_size_mlp``
  for dense layers, one always-on shared expert of width ``intermediate_size``);
* DeepSeek-V3 / Kimi-K2 (MLA: ``q_lora_rank``, ``kv_lora_rank``, ``qk_nope_head_dim``,
  ``qk_rope_head_dim``, ``v_head_dim``; MoE: ``n_routed_experts``, ``n_shared_experts``,
  ``moe_intermediate_size``, ``first_k_dense_replace``, ``moe_layer_freq``). Multi-token-prediction
  layers (``num_nextn_predict_layers``) are not counted: they are not loaded for serving;
* multimodal wrappers that nest the language model under ``text_config`` (Gemma-3, Llama-4, ...):
  the nested dict is used when the top level lacks the text fields. Vision towers are not counted.

* hybrid layer stacks (per-layer attention kinds, ``ModelSpec.layer_kinds``): ``layer_types``
  entries ``full_attention`` / ``sliding_attention`` (window ``sliding_window``: gpt-oss, Gemma-3)
  / ``linear_attention`` (Gated DeltaNet: Qwen3-Next, Qwen3.5, with ``linear_num_key_heads``,
  ``linear_num_value_heads``, ``linear_key_head_dim``, ``linear_value_head_dim``,
  ``linear_conv_kernel_dim``; or ``full_attention_interval`` when ``layer_types`` is absent).
  Qwen3-Next / Qwen3.5 full-attention layers carry an output gate (``attn_output_gate``: q_proj
  is doubled). Sliding layers without a ``sliding_window`` are counted as full attention.
  MiMo-V2-Flash's ``hybrid_layer_pattern`` (1 = sliding) gives the kinds too;
* attention shapes per layer kind (``ModelSpec.attn_shapes``, :class:`AttnShape`): Gemma-4
  (``global_head_dim``, ``num_global_key_value_heads``, ``attention_k_eq_v``; its
  ``enable_moe_block`` dense MLP + MoE as an always-on shared expert), MiMo-V2-Flash
  (``swa_num_key_value_heads``, ``swa_head_dim``, ``swa_v_head_dim``, ``v_head_dim``, sink bias)
  and any GQA ``v_head_dim`` != ``head_dim``;

Parameter counts include the input embedding and an untied LM head, as published totals do.
Mamba / RWKV / other recurrent layer types are refused (exit 2) with a one-line message.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr

from ..errors import InputError
from . import hf_families

DENSE_NORMS_PER_LAYER = 2  # input_layernorm + post_attention_layernorm (RMSNorm weight, width H)

_QKV_BIAS_MODEL_TYPES = frozenset({"qwen2", "qwen2_moe", "qwen2_vl", "qwen2_5_vl"})
_TEXT_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads")
_INHERITED_KEYS = ("quantization_config",)  # *_config keys of the wrapper the text model inherits
_MAX_DIM = 1 << 22       # 4M: anything wider than this in one dimension is not a real model
_MAX_LAYERS = 10_000


class MLASpec(BaseModel):
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank Q and a shared compressed KV latent."""

    model_config = ConfigDict(frozen=True)

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


class DSASpec(BaseModel):
    """DeepSeek Sparse Attention lightning indexer (DeepSeek-V3.2, GLM-5: ``index_n_heads``,
    ``index_head_dim``, ``index_topk``; vLLM deepseek_v2.py Indexer, SGLang nsa_indexer.py): per
    MLA layer wq_b (q_lora_rank -> n_heads x head_dim), wk (hidden -> head_dim), k_norm
    (LayerNorm, weight + bias) and weights_proj (hidden -> n_heads, never quantized), all
    ReplicatedLinear. The indexer scores every cached token with its own fp8 key cache and the MLA
    attends only the top ``topk`` of them per query."""

    model_config = ConfigDict(frozen=True)

    n_heads: int
    head_dim: int
    topk: int

    @property
    def key_cache_bytes(self) -> int:
        """Bytes of the indexer's key cache per token and layer, whatever the KV dtype: fp8 keys +
        one fp32 scale per 128 elements (vLLM deepseek_v2.py DeepseekV32IndexerCache head_dim +
        head_dim // 128 * 4, uint8; SGLang NSA index_k buffer), on every TP rank."""
        return self.head_dim + self.head_dim // 128 * 4


class MoESpec(BaseModel):
    """Mixture-of-experts layout of the MLP blocks."""

    model_config = ConfigDict(frozen=True)

    num_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    num_shared_experts: int
    shared_intermediate_size: int  # total width of the shared-expert MLP (0 if none)
    moe_layers: tuple[int, ...]   # indices of layers whose MLP is MoE
    norm_topk_prob: bool = False
    shared_expert_gate: bool = False  # Qwen2-MoE: sigmoid gate Linear(hidden, 1) on the shared expert
    #: False: experts (and shared experts) are up -> activation -> down with no gate (Nemotron-3
    #: relu2 experts: vLLM nemotron_h.py FusedMoE activation_without_mul, ckpt up_proj/down_proj)
    expert_gated: bool = True
    #: LatentMoE (Nemotron-3 Super / Ultra ``moe_latent_size``): the routed experts run in this
    #: width between a hidden -> latent and a latent -> hidden projection, both replicated on every
    #: TP rank (vLLM nemotron_h.py fc1_latent_proj / fc2_latent_proj ReplicatedLinear); 0 = none
    latent_size: int = 0


class LinearAttnSpec(BaseModel):
    """Gated DeltaNet mixer of ``linear_attention`` layers (Qwen3-Next / Qwen3.5; HF
    Qwen3NextGatedDeltaNet, vLLM qwen3_next.py): in_proj_qkvz (q, k of ``key_dim``; v, z of
    ``value_dim``), in_proj_ba (beta and the decay gate a, one per value head), a depthwise causal
    conv1d over q|k|v (``conv_kernel`` taps, no bias), A_log and dt_bias per value head, a gated
    RMSNorm of width ``head_v_dim`` and out_proj (value_dim -> hidden). The recurrent state per
    sequence and layer is ``num_v_heads x head_k_dim x head_v_dim`` plus the conv window
    ``conv_dim x (conv_kernel - 1)``."""

    model_config = ConfigDict(frozen=True)

    num_k_heads: int
    num_v_heads: int
    head_k_dim: int
    head_v_dim: int
    conv_kernel: int

    @property
    def key_dim(self) -> int:
        return self.num_k_heads * self.head_k_dim

    @property
    def value_dim(self) -> int:
        return self.num_v_heads * self.head_v_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the causal conv1d (q, k and v; not z)."""
        return 2 * self.key_dim + self.value_dim


class MambaSpec(BaseModel):
    """Mamba2 mixer (Nemotron-H ``M`` blocks; HF NemotronHMamba2Mixer, vLLM MambaMixer2):
    in_proj (hidden -> z and x of ``d_inner``, B and C of ``n_groups x state_size``, dt per head),
    a depthwise causal conv1d over x|B|C (``conv_kernel`` taps, with bias), A_log / D / dt_bias per
    head, a grouped gated RMSNorm of width d_inner, out_proj (d_inner -> hidden). The recurrent
    state per sequence and layer is ``num_heads x head_dim x state_size`` plus the conv window
    ``conv_dim x (conv_kernel - 1)``."""

    model_config = ConfigDict(frozen=True)

    num_heads: int
    head_dim: int
    state_size: int
    n_groups: int
    conv_kernel: int
    chunk_size: int = 128

    @property
    def d_inner(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.state_size


#: attention kinds of a layer: full causal attention (KV grows with the context), sliding-window
#: attention (KV of the last ``sliding_window`` tokens attended), Gated DeltaNet linear attention
#: and Mamba2 (fixed recurrent state per sequence), or no token mixer (an MLP-only block)
LayerKind = Literal["full", "sliding", "linear", "mamba", "none"]


class AttnShape(BaseModel):
    """Attention shape of the layers of one kind (full / sliding) when it differs between kinds
    (ModelSpec.attn_shapes): KV heads, key (and query) head width, value head width.

    * Gemma-4 (vLLM gemma4.py Gemma4DecoderLayer): full layers use ``global_head_dim`` and, with
      ``attention_k_eq_v``, ``num_global_key_value_heads``; the checkpoint has no v_proj there
      (``k_eq_v``) and vLLM loads k_proj's weights into BOTH the K and V slots of its fused
      QKVParallelLinear (Gemma4Attention: "k_eq_v layers load K weights into both K and V slots")
      -- the served GEMM and the KV cache hold a V like any other layer;
    * MiMo-V2-Flash (vLLM mimo_v2_flash.py MiMoV2Attention): sliding layers
      ``swa_num_key_value_heads`` / ``swa_head_dim`` / ``swa_v_head_dim``, full layers
      ``num_key_value_heads`` / ``head_dim`` / ``v_head_dim`` (V narrower than K: QKVParallelLinear
      v_head_size, o_proj in heads x v_head_dim, FullAttentionSpec head_size_v); ``sink``: a
      learned per-head attention-sink bias (``add_swa_attention_sink_bias``: num_heads params).

    SGLang builds the same layers (models/gemma4_causal.py: full layers in head_dim /
    num_key_value_heads, sliding layers in swa_head_dim / swa_num_key_value_heads after its config
    remap, one fused QKVParallelLinear with a V part; models/mimo_v2_flash.py) and keeps them in
    an SWA pool of per-kind head_num / head_dim / v_head_dim (MHATokenToKVPool swa_head_num,
    swa_head_dim, swa_v_head_dim).
    """

    model_config = ConfigDict(frozen=True)

    num_kv_heads: int
    head_dim: int
    v_head_dim: int
    k_eq_v: bool = False
    sink: bool = False

    @property
    def kv_width(self) -> int:
        """K + V elements one KV head caches per token."""
        return self.head_dim + self.v_head_dim


class LinearOp(BaseModel):
    """One linear layer: ``y[tokens, n] = x[tokens, k] @ W[n, k]^T`` with full (unsharded) shapes.

    ``split``: 'column' = tensor parallelism splits ``n``; 'row' = TP splits ``k`` (needs an
    all-reduce after); 'replicated' = every TP rank holds the whole weight.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    n: int
    k: int
    split: Literal["column", "row", "replicated"]

    @property
    def params(self) -> int:
        """Weight elements (no bias)."""
        return self.n * self.k

    def flops(self, tokens: int = 1) -> float:
        """Multiply-add FLOPs for ``tokens`` rows."""
        return 2.0 * tokens * self.n * self.k


def serving_weight_dtype(checkpoint_dtype: str) -> str:
    """The weight dtype a server loads a checkpoint stored in ``checkpoint_dtype`` in (vLLM and
    SGLang read config.json's quantization_config and serve the checkpoint as published): fp8
    for fp8 checkpoints, int4 for AWQ/GPTQ; int8 checkpoints are sized like fp8 (one byte);
    unquantized fp16/bf16/fp32 checkpoints serve in bf16. ReplicaConfig.resolved uses it for an
    unset weight_dtype."""
    return {"fp8": "fp8", "int8": "fp8", "int4": "int4", "fp4": "fp4"}.get(checkpoint_dtype, "bf16")


#: Bytes per stored weight element of checkpoint-specific quantized formats (:func:`weight_format`;
#: costmodel/roofline.py WEIGHT_BYTES has them too): ``mxfp4`` = OCP MXFP4 (gpt-oss): E2M1 two
#: per byte + one E8M0 (1-byte) scale per 32 elements (vLLM Mxfp4MoEMethod.create_weights
#: 0.12-0.18: w13_weight uint8 [E, 2I, H/2] + w13_weight_scale uint8 [E, 2I, H/32], likewise w2;
#: mxfp4_block = 32); ``int4_g32`` / ``int4_g64``: int4 with one bf16 scale per 32 / 64 elements
#: (compressed-tensors pack-quantized, symmetric: weight_packed int32 [n, k/8] + weight_scale
#: bf16 [n, k/group]; e.g. moonshotai/Kimi-K2.5 group_size 32).
CHECKPOINT_FORMAT_BYTES = {"mxfp4": 0.5 + 1.0 / 32, "int4_g32": 0.5 + 2.0 / 32,
                           "int4_g64": 0.5 + 2.0 / 64}
#: Stored bytes per linear-weight element of every format, scales included: int4 = AWQ / GPTQ's
#: usual group of 128 with a bf16 scale; fp4 = NVFP4, E2M1 two per byte + one FP8-E4M3 block scale
#: per 16 elements (vLLM ModelOptNvFp4LinearMethod.create_weights: weight uint8 [n, k/2],
#: weight_scale float8_e4m3fn [n, k/16]; the two fp32 per-tensor scales are negligible); plus the
#: checkpoint-specific formats above. The one table memory.py and costmodel/roofline.py read.
WEIGHT_ELEMENT_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 2.0 / 128,
                        "fp4": 0.5 + 1.0 / 16, **CHECKPOINT_FORMAT_BYTES}


def weight_format(weight_dtype: str, quant_scheme: str = "") -> str:
    """The storage format of linear weights in ``weight_dtype`` with a checkpoint's scaling layout
    ``quant_scheme`` (ModelSpec.quant_scheme; pass it only when the checkpoint is served as
    published): 'mxfp4' for an MXFP4 checkpoint served as fp4, 'int4_g32' / 'int4_g64' for int4
    checkpoints of group size 32 / 64 (CHECKPOINT_FORMAT_BYTES); otherwise ``weight_dtype``
    itself (int4: group 128, fp4: NVFP4)."""
    if weight_dtype == "fp4" and quant_scheme == "mxfp4":
        return "mxfp4"
    if weight_dtype == "int4" and quant_scheme.startswith("int4_group"):
        key = "int4_g" + quant_scheme[len("int4_group"):]
        return key if key in CHECKPOINT_FORMAT_BYTES else "int4"
    return weight_dtype


class ModelSpec(BaseModel):
    """Architecture of a decoder-only LLM, enough to size weights, KV cache and per-op cost."""

    model_config = ConfigDict(frozen=True)

    name: str
    architecture: str
    source: str
    model_type: str = ""
    hidden_size: int
    num_layers: int
    vocab_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int          # dense-MLP width (used by non-MoE layers)
    tie_word_embeddings: bool
    max_position_embeddings: int
    attention: Literal["gqa", "mla"]
    mla: MLASpec | None = None
    #: DeepSeek Sparse Attention indexer of the MLA layers (None = dense MLA): its weights are
    #: costed as GEMMs, its fp8 key cache counted next to the latent (memory.py), and the MLA
    #: attends only the top-k keys (costmodel/iteration.py ``_dsa_attention``)
    dsa: DSASpec | None = None
    moe: MoESpec | None = None
    qkv_bias: bool = False          # Qwen2: bias on q, k, v projections
    qk_norm: bool = False           # Qwen3: per-head RMSNorm on q and k (weights of width head_dim)
    #: MiniMax-M2 (use_qk_norm, qk_norm_type 'per_layer'): one RMSNorm over ALL q heads and one over
    #: all k heads of a layer; with TP each rank holds a slice, so the variances are all-reduced
    #: across the TP group once per layer (vLLM minimax_m2.py MiniMaxText01RMSNormTP.forward_qk:
    #: local q/k squares, one tensor_model_parallel_all_reduce of the [tokens, 2] fp32 variances)
    qk_norm_tp: bool = False
    checkpoint_dtype: str = "bf16"  # dtype of the published weights ('fp8' for block-fp8 checkpoints)
    #: linear weights a quantized checkpoint keeps unquantized (bf16), read from its quantization
    #: config's exclusion list (see _quant_exclude): 'attention' (every attention projection),
    #: 'attention.<op>' (one projection, op names of attention_linear_ops, e.g. 'attention.q_a'),
    #: 'mlp' (dense MLP layers), 'shared_experts', 'experts'. Empty = every linear layer stored in
    #: checkpoint_dtype. Applies when the checkpoint is served as published (:meth:`keeps_bf16`).
    quant_exclude: tuple[str, ...] = ()
    #: linear weights a lower-precision (fp4 / int4) checkpoint stores in fp8 instead, same names
    #: as quant_exclude: ModelOpt MIXED_PRECISION exports keep attention (and e.g. shared experts)
    #: in FP8 / MXFP8 next to NVFP4 experts (nvidia/Qwen3.6-*-NVFP4, MiniMax-M3-NVFP4); vLLM and
    #: SGLang ModelOptMixedPrecisionConfig serve each layer with its own algorithm. Applies when
    #: the checkpoint is served as published (:meth:`stored_dtype`).
    quant_fp8: tuple[str, ...] = ()
    #: KV-cache dtype the checkpoint declares: 'fp8' for a ModelOpt checkpoint whose
    #: kv_cache_quant_algo is FP8 or whose kv_cache_scheme is static float 8-bit (nvidia/*-NVFP4,
    #: *-FP8), '' = none. Engines that resolve --kv-cache-dtype auto from it
    #: (EngineSpec.kv_dtype_from_checkpoint) use it when the plan leaves kv_dtype unset
    #: (ReplicaConfig.resolved).
    checkpoint_kv_dtype: str = ""
    #: how a quantized checkpoint scales its weights (selects the engine's GEMM kernel path, see
    #: costmodel/kernels.yaml): 'fp8_block' (128x128 weight blocks, per-token-group activation quant:
    #: DeepSeek-V3, Qwen3-FP8), 'fp8_tensor' / 'fp8_channel' (one scale per tensor / output channel,
    #: dynamic per-tensor / per-token activation quant), 'int4_group' (AWQ/GPTQ), 'nvfp4' (NVFP4
    #: W4A4: ModelOpt quant_algo NVFP4, compressed-tensors nvfp4-pack-quantized with fp4
    #: activations), 'nvfp4_w4a16' (NVFP4 weights, bf16 activations: weight-only on every GPU),
    #: 'mxfp4' (OCP MXFP4 under checkpoint_dtype 'fp4': E2M1 + E8M0 scale per 32, gpt-oss; MoE
    #: experts only), 'int4_group32' / 'int4_group64' (int4 of group size 32 / 64, e.g. Kimi-K2.5),
    #: '' = not quantized.
    quant_scheme: str = ""
    #: attention kind of every layer (``LayerKind``); empty = every layer full attention
    layer_kinds: tuple[LayerKind, ...] = ()
    sliding_window: int = 0          # tokens a 'sliding' layer attends (incl. the query's own)
    linear_attn: LinearAttnSpec | None = None
    mamba: MambaSpec | None = None
    #: layers without an MLP (Nemotron-H: a mixer block not followed by an MLP block)
    mlp_free_layers: tuple[int, ...] = ()
    #: the config's hidden layers (``num_hidden_layers`` blocks) each modelled layer holds, in
    #: order (Nemotron-H: a mixer block and the MLP / MoE block after it are one layer of 2);
    #: empty = one block per layer. Engines split and count pipeline stages in blocks.
    layer_blocks: tuple[int, ...] = ()
    #: False: the dense MLP is up -> activation -> down, no gate (Nemotron-H relu2, and the
    #: families of hf_families.UNGATED_MLP_TYPES: Phi-2, StarCoder2, GPT-2 / BigCode, Falcon, ...)
    mlp_gated: bool = True
    #: rows of a learned absolute-position embedding table (GPT-2 / GPT-BigCode wpe, OPT), counted
    #: with the token embedding; 0 = rotary / ALiBi positions (no weights)
    position_embeddings: int = 0
    attn_output_gate: bool = False   # Qwen3-Next/3.5: sigmoid gate on the attention output (q_proj x2)
    #: dtype of the recurrent (SSM / delta-rule) state the checkpoint asks for (config
    #: ``mamba_ssm_dtype``: 'fp32' / 'bf16'); '' = not given (the engine's default applies)
    state_dtype: str = ""
    #: per attention kind ('full' / 'sliding') shapes that differ from (num_kv_heads, head_dim,
    #: head_dim) -- Gemma-4, MiMo-V2-Flash (:class:`AttnShape`); empty = one shape for every layer
    attn_shapes: tuple[tuple[str, AttnShape], ...] = ()
    #: RMSNorm weights of width hidden_size per layer (Gemma-4: input, post-attention,
    #: pre- and post-feedforward norms)
    layer_norms: int = DENSE_NORMS_PER_LAYER
    #: extra per-MoE-layer weights outside the GEMMs (Gemma-4: the MoE branch's three norms and
    #: the router's input scale, 4 x hidden, plus per_expert_scale)
    moe_layer_extra_params: int = 0

    _moe_set: frozenset[int] = PrivateAttr(default=frozenset())

    def model_post_init(self, __context: Any) -> None:
        self._moe_set = frozenset(self.moe.moe_layers) if self.moe is not None else frozenset()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_hf_config(cls, cfg: dict, name: str = "model", source: str = "<config>") -> "ModelSpec":
        """Build a spec from an HF ``config.json`` dict (unknown keys ignored).

        Raises :class:`InputError` naming ``source``, the field and the value for missing or absurd
        values.
        """
        cfg = _normalize_modelopt(cfg, source)
        spec = _build(cfg, name, source)
        q = _text_section(cfg, source)[0].get("quantization_config")
        update: dict[str, Any] = {}
        if spec.checkpoint_dtype not in ("bf16", "fp16", "fp32"):
            mixed = _mixed_precision(q)
            if mixed is not None:
                excl, fp8 = _mixed_components(mixed, spec)
                if fp8:
                    update["quant_fp8"] = fp8
            else:
                excl = _quant_exclude(q, spec)
            if excl:
                update["quant_exclude"] = excl
        kv = _checkpoint_kv_dtype(q)
        if kv:
            update["checkpoint_kv_dtype"] = kv
        return spec.model_copy(update=update) if update else spec

    # ------------------------------------------------------------------ layer layout
    def is_moe_layer(self, i: int) -> bool:
        """True when layer ``i``'s MLP is a mixture of experts."""
        return self.moe is not None and i in self._moe_layer_set()

    def _moe_layer_set(self) -> frozenset[int]:
        return self._moe_set

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe.moe_layers) if self.moe is not None else 0

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers - len(self.mlp_free_layers)

    def has_mlp(self, i: int) -> bool:
        """False for a layer with no MLP (Nemotron-H mixer-only blocks)."""
        return not self.mlp_free_layers or i not in self.mlp_free_layers

    # ------------------------------------------------------------------ attention kinds
    def attn_shape(self, kind: str = "full") -> AttnShape:
        """Attention shape of the layers of kind ``kind`` (GQA): the per-kind override of
        :attr:`attn_shapes`, else (num_kv_heads, head_dim, head_dim)."""
        for k, s in self.attn_shapes:
            if k == kind:
                return s
        return AttnShape(num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                         v_head_dim=self.head_dim)

    def kind_of(self, i: int) -> str:
        """Attention kind of layer ``i``: 'full', 'sliding' or 'linear'."""
        return self.layer_kinds[i] if self.layer_kinds else "full"

    @property
    def blocks_per_layer(self) -> tuple[int, ...]:
        """The config's hidden layers in each modelled layer (``layer_blocks``, else 1 each)."""
        return self.layer_blocks or (1,) * self.num_layers

    @property
    def is_hybrid(self) -> bool:
        """True when some layer is not full attention."""
        return bool(self.layer_kinds)

    def kind_counts(self, layers=None) -> dict[str, int]:
        """Layers of each attention kind among ``layers`` (default all), in first-seen order."""
        idx = range(self.num_layers) if layers is None else layers
        out: dict[str, int] = {}
        for i in idx:
            k = self.kind_of(i)
            out[k] = out.get(k, 0) + 1
        return out

    @property
    def num_kv_layers(self) -> int:
        """Layers whose KV cache grows with the context (full attention)."""
        return self.kind_counts().get("full", 0)

    def mixer_extra_params(self, kind: str = "full") -> int:
        """Non-GEMM weights of a layer's token mixer: Gated DeltaNet conv1d taps, A_log, dt_bias;
        Mamba2 conv1d taps + bias, A_log, D, dt_bias."""
        if kind == "mamba" and self.mamba is not None:
            mb = self.mamba
            return mb.conv_dim * (mb.conv_kernel + 1) + 3 * mb.num_heads
        if kind in ("full", "sliding") and self.attn_shapes and self.attn_shape(kind).sink:
            return self.num_attention_heads  # the per-head attention-sink bias
        if kind != "linear" or self.linear_attn is None:
            return 0
        la = self.linear_attn
        return la.conv_dim * la.conv_kernel + 2 * la.num_v_heads

    # ------------------------------------------------------------------ linear ops
    def attention_linear_ops(self, kind: str = "full") -> list[LinearOp]:
        """Linear layers of one attention block (vLLM's non-absorbed MLA form for prefill) of a
        layer of attention kind ``kind`` (sliding layers have the full layers' projections)."""
        h, H = self.num_attention_heads, self.hidden_size
        if kind == "none":
            return []
        if kind == "mamba":
            mb = self.mamba
            assert mb is not None
            return [LinearOp(name="in_proj", n=2 * mb.d_inner + 2 * mb.n_groups * mb.state_size
                             + mb.num_heads, k=H, split="column"),
                    LinearOp(name="out_proj", n=H, k=mb.d_inner, split="row")]
        if kind == "linear":
            la = self.linear_attn
            assert la is not None
            return [LinearOp(name="in_proj_qkvz", n=2 * la.key_dim + 2 * la.value_dim, k=H,
                             split="column"),
                    LinearOp(name="in_proj_ba", n=2 * la.num_v_heads, k=H, split="column"),
                    LinearOp(name="out_proj", n=H, k=la.value_dim, split="row")]
        if self.attention == "gqa" and self.attn_shapes:
            # per-kind shape: q and k in head_dim, v (and o's input) in v_head_dim; a k_eq_v
            # layer's served GEMM still produces V (vLLM loads k_proj into the V slot)
            s = self.attn_shape(kind)
            q = 2 * h if self.attn_output_gate else h
            return [LinearOp(name="qkv", n=(q + s.num_kv_heads) * s.head_dim
                             + s.num_kv_heads * s.v_head_dim, k=H, split="column"),
                    LinearOp(name="o", n=H, k=h * s.v_head_dim, split="row")]
        if self.attention == "gqa":
            q = 2 * h if self.attn_output_gate else h
            return [LinearOp(name="qkv", n=(q + 2 * self.num_kv_heads) * self.head_dim, k=H,
                             split="column"),
                    LinearOp(name="o", n=H, k=h * self.head_dim, split="row")]
        m = self.mla
        assert m is not None
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        ops: list[LinearOp] = []
        if m.q_lora_rank:
            ops.append(LinearOp(name="q_a", n=m.q_lora_rank, k=H, split="replicated"))
            ops.append(LinearOp(name="q_b", n=h * qk, k=m.q_lora_rank, split="column"))
        else:
            ops.append(LinearOp(name="q", n=h * qk, k=H, split="column"))
        ops.append(LinearOp(name="kv_a", n=m.kv_lora_rank + m.qk_rope_head_dim, k=H,
                            split="replicated"))
        ops.append(LinearOp(name="kv_b", n=h * (m.qk_nope_head_dim + m.v_head_dim),
                            k=m.kv_lora_rank, split="column"))
        ops.append(LinearOp(name="o", n=H, k=h * m.v_head_dim, split="row"))
        if self.dsa is not None and m.q_lora_rank:
            d = self.dsa
            ops += [LinearOp(name="indexer_q_b", n=d.n_heads * d.head_dim, k=m.q_lora_rank,
                             split="replicated"),
                    LinearOp(name="indexer_k", n=d.head_dim, k=H, split="replicated"),
                    LinearOp(name="indexer_weights", n=d.n_heads, k=H, split="replicated")]
        return ops

    def dense_mlp_linear_ops(self) -> list[LinearOp]:
        """Gated (SwiGLU) dense MLP: fused gate+up, then down (up, then down when not gated)."""
        if not self.mlp_gated:
            return [LinearOp(name="up", n=self.intermediate_size, k=self.hidden_size, split="column"),
                    LinearOp(name="down", n=self.hidden_size, k=self.intermediate_size, split="row")]
        return _gated_mlp("", self.intermediate_size, self.hidden_size)

    def shared_expert_linear_ops(self) -> list[LinearOp]:
        """The dense GEMMs of one MoE layer every token runs: the shared-expert MLP (all shared
        experts fused) and a LatentMoE's two replicated latent projections; [] if none."""
        if self.moe is None:
            return []
        ops: list[LinearOp] = []
        if self.moe.latent_size:
            ops += [LinearOp(name="latent_in", n=self.moe.latent_size, k=self.hidden_size,
                             split="replicated"),
                    LinearOp(name="latent_out", n=self.hidden_size, k=self.moe.latent_size,
                             split="replicated")]
        if self.moe.shared_intermediate_size == 0:
            return ops
        if not self.moe.expert_gated:
            w = self.moe.shared_intermediate_size
            return ops + [LinearOp(name="shared_up", n=w, k=self.hidden_size, split="column"),
                          LinearOp(name="shared_down", n=self.hidden_size, k=w, split="row")]
        ops += _gated_mlp("shared_", self.moe.shared_intermediate_size, self.hidden_size)
        if self.moe.shared_expert_gate:
            ops.append(LinearOp(name="shared_expert_gate", n=1, k=self.hidden_size,
                                split="replicated"))
        return ops

    def expert_linear_ops(self) -> list[LinearOp]:
        """ONE routed expert: gate_up (n = 2 × expert width) and down -- up (n = expert width)
        and down when not gated -- in the hidden width (a LatentMoE's latent width); [] for dense
        models."""
        if self.moe is None:
            return []
        h, w = self.moe_hidden_size, self.moe.expert_intermediate_size
        if not self.moe.expert_gated:
            return [LinearOp(name="up", n=w, k=h, split="column"),
                    LinearOp(name="down", n=h, k=w, split="row")]
        return _gated_mlp("", w, h)

    @property
    def moe_hidden_size(self) -> int:
        """Width the routed experts read and write: hidden_size, or a LatentMoE's latent size."""
        return (self.moe.latent_size or self.hidden_size) if self.moe is not None else self.hidden_size

    def router_params(self) -> int:
        """Router (gate) weights of one MoE layer: hidden × num_experts."""
        return self.hidden_size * self.moe.num_experts if self.moe is not None else 0

    # ------------------------------------------------------------------ parameter counts
    def _attention_params(self, kind: str = "full") -> int:
        n = sum(op.params for op in self.attention_linear_ops(kind))
        if kind in ("linear", "mamba", "none"):
            return n + self.mixer_extra_params(kind)
        if self.attn_shapes:
            s = self.attn_shape(kind)
            if s.k_eq_v:  # the checkpoint has no v_proj (the engine duplicates k_proj)
                n -= s.num_kv_heads * s.v_head_dim * self.hidden_size
            n += self.mixer_extra_params(kind)
            if self.qkv_bias:
                n += (self.num_attention_heads + s.num_kv_heads) * s.head_dim \
                    + (0 if s.k_eq_v else s.num_kv_heads * s.v_head_dim)
            return n
        if self.qkv_bias:
            n += (self.num_attention_heads + 2 * self.num_kv_heads) * self.head_dim
        return n

    @property
    def norm_params_per_layer(self) -> int:
        """Norm weights of one decoder layer (the same in every layer)."""
        return self._norm_params()

    def _norm_params(self, kind: str = "full", mlp: bool = True) -> int:
        n = self.layer_norms * self.hidden_size
        if kind in ("mamba", "none") or not mlp:  # Nemotron-H: one norm per mixer / MLP block
            n = self.hidden_size * (int(kind != "none") + int(mlp))
            return n + (self.mamba.d_inner if kind == "mamba" and self.mamba is not None else 0)
        if kind == "linear" and self.linear_attn is not None:
            return n + self.linear_attn.head_v_dim  # the gated RMSNorm on the delta-rule output
        if self.qk_norm:
            n += 2 * (self.attn_shape(kind).head_dim if self.attn_shapes else self.head_dim)
        if self.qk_norm_tp:
            n += (self.num_attention_heads + self.num_kv_heads) * self.head_dim
        if self.mla is not None:
            n += self.mla.kv_lora_rank + (self.mla.q_lora_rank or 0)
            if self.dsa is not None and self.mla.q_lora_rank:
                n += 2 * self.dsa.head_dim  # indexer k_norm: LayerNorm weight + bias
        return n

    def params_by_component(self, layer: int) -> dict[str, int]:
        """Weights of decoder layer ``layer`` by component.

        Keys: attention, mlp (dense MLP), router, experts (all routed experts), shared_experts,
        norms.
        """
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range 0..{self.num_layers - 1}")
        kind = self.kind_of(layer)
        mlp = self.has_mlp(layer)
        out = {"attention": self._attention_params(kind), "mlp": 0, "router": 0, "experts": 0,
               "shared_experts": 0, "norms": self._norm_params(kind, mlp)}
        if not mlp:
            return out
        if self.is_moe_layer(layer):
            assert self.moe is not None
            out["router"] = self.router_params()
            out["experts"] = self.moe.num_experts * _ops_params(self.expert_linear_ops())
            out["shared_experts"] = _ops_params(self.shared_expert_linear_ops())
            out["norms"] += self.moe_layer_extra_params
        else:
            out["mlp"] = _ops_params(self.dense_mlp_linear_ops())
        return out

    def _active_layer_params(self, layer: int) -> int:
        c = self.params_by_component(layer)
        experts = c["experts"]
        if experts:
            assert self.moe is not None
            experts = experts * self.moe.experts_per_token // self.moe.num_experts
        return c["attention"] + c["mlp"] + c["router"] + experts + c["shared_experts"] + c["norms"]

    @property
    def embedding_params(self) -> int:
        """Token embedding (+ a learned position table, :attr:`position_embeddings`)."""
        return (self.vocab_size + self.position_embeddings) * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """0 when the LM head is tied to the embedding."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def final_norm_params(self) -> int:
        return self.hidden_size

    def _layer_kinds(self) -> tuple[int, int]:
        """(one dense layer index or -1, one MoE layer index or -1): layers of a kind are equal."""
        moe = self._moe_layer_set()
        dense = next((i for i in range(self.num_layers) if i not in moe), -1)
        return dense, (min(moe) if moe else -1)

    def _sum_layers(self, per_layer: Callable[[int], int]) -> int:
        if self.is_hybrid:  # layers alike in (MLP type, attention kind) cost the same
            groups: dict[tuple[bool, str, bool], list[int]] = {}
            for i in range(self.num_layers):
                groups.setdefault((self.is_moe_layer(i), self.kind_of(i), self.has_mlp(i)),
                                  []).append(i)
            return int(sum(len(g) * per_layer(g[0]) for g in groups.values()))
        dense, moe = self._layer_kinds()
        total = 0
        if dense >= 0:
            total += self.num_dense_layers * per_layer(dense)
        if moe >= 0:
            total += self.num_moe_layers * per_layer(moe)
        return int(total)

    @property
    def params_total(self) -> int:
        """All weights: embedding, decoder layers, final norm, untied LM head."""
        layers = self._sum_layers(lambda i: sum(self.params_by_component(i).values()))
        return self.embedding_params + layers + self.final_norm_params + self.lm_head_params

    @property
    def params_active(self) -> int:
        """Weights touched per token: top-k routed experts + shared + dense + attention + embeddings."""
        layers = self._sum_layers(self._active_layer_params)
        return self.embedding_params + layers + self.final_norm_params + self.lm_head_params

    def weight_bytes(self, dtype_bytes: float = 2) -> int:
        """Bytes of all weights at ``dtype_bytes`` per element."""
        return int(math.ceil(self.params_total * dtype_bytes))

    # ------------------------------------------------------------------ KV cache and FLOPs
    def kv_elems_per_token_per_layer(self, kind: str = "full") -> int:
        """Cached elements per token per layer (of attention kind ``kind``): GQA
        2·kv_heads·head_dim (kv_heads·(head_dim + v_head_dim) with per-kind shapes); MLA latent +
        rope key."""
        if self.attention == "mla":
            assert self.mla is not None
            return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        if self.attn_shapes:
            s = self.attn_shape(kind)
            return s.num_kv_heads * s.kv_width
        return 2 * self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, dtype_bytes: float = 2) -> int:
        """KV-cache bytes of one token over the full-attention layers (all layers of a uniform
        model; sliding-window and linear-attention layers hold a bounded state per sequence,
        see :meth:`linear_state_bytes`)."""
        return int(math.ceil(self.kv_elems_per_token_per_layer() * self.num_kv_layers * dtype_bytes))

    def mamba_state_bytes(self, tp: int = 1, ssm_bytes: float = 4, conv_bytes: float = 2) -> float:
        """Recurrent state of ONE sequence in ONE Mamba2 layer on one of ``tp`` ranks: the SSM
        state (num_heads/tp x head_dim x state_size) and the conv window (conv_dim/tp x
        (conv_kernel - 1)) -- vLLM MambaStateShapeCalculator.mamba2_state_shape, SGLang
        Mamba2StateShape (n_groups not divisible by tp are replicated: ignored here)."""
        mb = self.mamba
        if mb is None:
            return 0.0
        ssm = mb.num_heads / tp * mb.head_dim * mb.state_size * ssm_bytes
        conv = mb.conv_dim / tp * (mb.conv_kernel - 1) * conv_bytes
        return ssm + conv

    def recurrent_state_bytes(self, layers=None, tp: int = 1, ssm_bytes: float = 4,
                              conv_bytes: float = 2) -> float:
        """Recurrent state of one sequence over the linear-attention and Mamba2 layers among
        ``layers`` (default all) on one of ``tp`` ranks."""
        c = self.kind_counts(layers)
        return (c.get("linear", 0) * self.linear_state_bytes(tp, ssm_bytes, conv_bytes)
                + c.get("mamba", 0) * self.mamba_state_bytes(tp, ssm_bytes, conv_bytes))

    def linear_state_bytes(self, tp: int = 1, ssm_bytes: float = 4, conv_bytes: float = 2) -> float:
        """Recurrent state of ONE sequence in ONE linear-attention layer on one of ``tp`` ranks:
        the delta-rule state (num_v_heads/tp x head_k_dim x head_v_dim at ``ssm_bytes``) and the
        conv window (conv_dim/tp x (conv_kernel - 1) at ``conv_bytes``) -- the shapes of vLLM
        MambaStateShapeCalculator.gated_delta_net_state_shape and SGLang Mamba2CacheParams."""
        la = self.linear_attn
        if la is None:
            return 0.0
        ssm = la.num_v_heads / tp * la.head_k_dim * la.head_v_dim * ssm_bytes
        conv = la.conv_dim / tp * (la.conv_kernel - 1) * conv_bytes
        return ssm + conv

    def attention_flops_per_token(self, context: int, kind: str = "full") -> float:
        """QKᵀ + PV FLOPs of one query token over ``context`` keys, one layer (of attention kind
        ``kind``), all heads.

        MLA is counted in its non-absorbed form (q·k over nope+rope dims, p·v over v dims).
        """
        if context < 0:
            raise ValueError("context must be >= 0")
        h = self.num_attention_heads
        if self.attention == "mla":
            assert self.mla is not None
            qk = self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim
            return 2.0 * h * context * (qk + self.mla.v_head_dim)
        if self.attn_shapes:  # q.k over head_dim, p.v over v_head_dim
            return 2.0 * h * context * self.attn_shape(kind).kv_width
        return 4.0 * h * self.head_dim * context

    def linear_flops_per_token(self) -> float:
        """2 × active linear weights of all layers + the LM head (norms and embedding excluded)."""
        if self.is_hybrid:  # attention projections by kind, the MLP side as for uniform models
            attn_all = sum(n * _ops_params(self.attention_linear_ops(k))
                           for k, n in self.kind_counts().items())
            return self._linear_flops(attn_all)
        return self._linear_flops(self.num_layers * _ops_params(self.attention_linear_ops()))

    def _linear_flops(self, attn_all: int) -> float:
        dense_mlp = _ops_params(self.dense_mlp_linear_ops())
        per_moe = 0
        if self.moe is not None:
            per_moe = (self.router_params() + _ops_params(self.shared_expert_linear_ops())
                       + self.moe.experts_per_token * _ops_params(self.expert_linear_ops()))
        params = (attn_all + self.num_dense_layers * dense_mlp
                  + self.num_moe_layers * per_moe + self.vocab_size * self.hidden_size)
        return 2.0 * params

    def flops_per_token(self, context: int) -> float:
        """Whole-model forward FLOPs of one token attending over ``context`` keys (sliding
        layers over at most ``sliding_window`` keys; linear-attention layers: the recurrent
        update, 4 x heads x head_k_dim x head_v_dim -- decay + rank-1 update, then the read-out)."""
        if not self.is_hybrid:
            return self.linear_flops_per_token() + self.num_layers * self.attention_flops_per_token(context)
        c = self.kind_counts()
        att = c.get("full", 0) * self.attention_flops_per_token(context)
        att += c.get("sliding", 0) * self.attention_flops_per_token(min(context, self.sliding_window),
                                                                    "sliding")
        la = self.linear_attn
        if la is not None:
            att += c.get("linear", 0) * 4.0 * la.num_v_heads * la.head_k_dim * la.head_v_dim
        mb = self.mamba
        if mb is not None:  # decay + update + read-out of the heads x head_dim x state state
            att += c.get("mamba", 0) * 6.0 * mb.num_heads * mb.head_dim * mb.state_size
        return self.linear_flops_per_token() + att

    @property
    def default_weight_dtype(self) -> str:
        """The weight dtype a server loads this checkpoint in (``--weight-dtype`` default): the
        checkpoint's own (fp8 for fp8 checkpoints, int4 for AWQ/GPTQ); int8 checkpoints are sized
        like fp8 (one byte); unquantized fp16/bf16/fp32 checkpoints serve in bf16."""
        return serving_weight_dtype(self.checkpoint_dtype)

    def keeps_bf16(self, component: str, op: str = "", weight_dtype: str | None = None) -> bool:
        """True when the checkpoint stores linear weights of ``component`` ('attention', 'mlp',
        'shared_experts', 'experts'; ``op`` = one projection's name) unquantized (quant_exclude)
        and it is served as published: ``weight_dtype`` None or the checkpoint's own. Quantizing
        it to another dtype online (e.g. --quantization fp8 of its bf16 parts) is not that."""
        if not self.quant_exclude or (weight_dtype is not None
                                      and weight_dtype != self.default_weight_dtype):
            return False
        return component in self.quant_exclude or (bool(op) and f"{component}.{op}" in self.quant_exclude)

    def stored_dtype(self, component: str, op: str = "", weight_dtype: str | None = None) -> str | None:
        """dtype the checkpoint stores ``component``'s linear weights in when it differs from the
        served weight dtype ('bf16': quant_exclude, 'fp8': quant_fp8), else None (the plan's
        weight dtype). Only when served as published (``weight_dtype`` None or the checkpoint's)."""
        if self.keeps_bf16(component, op, weight_dtype):
            return "bf16"
        if component in self.quant_fp8 and (weight_dtype is None
                                             or weight_dtype == self.default_weight_dtype):
            return "fp8"
        return None

    # ------------------------------------------------------------------ report
    def summary(self) -> dict:
        """Plain dict for ``apex-opt models show --json``."""
        moe = self.moe
        return {
            "name": self.name, "architecture": self.architecture, "model_type": self.model_type,
            "source": self.source,
            "params_total": self.params_total, "params_active": self.params_active,
            "num_layers": self.num_layers, "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size, "num_attention_heads": self.num_attention_heads,
            "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size, "attention": self.attention,
            "kv_bytes_per_token": self.kv_bytes_per_token(2),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "checkpoint_dtype": self.checkpoint_dtype,
            "quant_scheme": self.quant_scheme,
            "quant_exclude": list(self.quant_exclude),
            "quant_fp8": list(self.quant_fp8),
            "checkpoint_kv_dtype": self.checkpoint_kv_dtype,
            "num_experts": moe.num_experts if moe else 0,
            "experts_per_token": moe.experts_per_token if moe else 0,
            "expert_intermediate_size": moe.expert_intermediate_size if moe else 0,
            "num_shared_experts": moe.num_shared_experts if moe else 0,
            "num_moe_layers": self.num_moe_layers,
            "mla": self.mla.model_dump() if self.mla else None,
            **({"dsa": self.dsa.model_dump()} if self.dsa else {}),
            **({"layer_kinds": self.kind_counts(), "sliding_window": self.sliding_window,
                "linear_attention": self.linear_attn.model_dump() if self.linear_attn else None,
                "mamba": self.mamba.model_dump() if self.mamba else None,
                "mlp_free_layers": len(self.mlp_free_layers),
                "attn_output_gate": self.attn_output_gate} if self.is_hybrid else {}),
            **({"attn_shapes": {k: v.model_dump() for k, v in self.attn_shapes}}
               if self.attn_shapes else {}),
            **({"mlp_gated": False} if not self.mlp_gated else {}),
            **({"position_embeddings": self.position_embeddings} if self.position_embeddings else {}),
        }


# ====================================================================== helpers
def _gated_mlp(prefix: str, width: int, hidden: int) -> list[LinearOp]:
    if width == 0:
        return []
    return [LinearOp(name=f"{prefix}gate_up", n=2 * width, k=hidden, split="column"),
            LinearOp(name=f"{prefix}down", n=hidden, k=width, split="row")]


def _ops_params(ops: list[LinearOp]) -> int:
    return sum(op.params for op in ops)


class _Reader:
    """Typed access to an HF config dict that raises field-naming InputErrors."""

    def __init__(self, cfg: dict, source: str, prefix: str = "", origin: dict[str, str] | None = None):
        self.cfg, self.source, self.prefix = cfg, source, prefix
        self.origin = origin or {}  # canonical key -> the spelling the file uses (hf_families)

    def fail(self, key: str, message: str, value: Any = None) -> InputError:
        return InputError(message, source=self.source, field=self.prefix + self.origin.get(key, key),
                          value=value)

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def get_int(self, key: str, default: int | None = None, *, minimum: int = 1,
            maximum: int = _MAX_DIM) -> int:
        """Integer field; ``default`` None means required. Integral floats (4096.0) are accepted."""
        v = self.cfg.get(key)
        if v is None:
            if default is None:
                raise self.fail(key, "required field is missing")
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(key, "must be an integer", v)
        if isinstance(v, float):
            if not math.isfinite(v) or v != int(v):
                raise self.fail(key, "must be an integer", v)
            v = int(v)
        if v < minimum:
            raise self.fail(key, f"must be >= {minimum}", v)
        if v > maximum:
            raise self.fail(key, f"is absurdly large (> {maximum})", v)
        return v

    def get_bool(self, key: str, default: bool) -> bool:
        v = self.cfg.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.fail(key, "must be true or false", v)
        return v

    def get_int_list(self, key: str, upper: int) -> list[int]:
        v = self.cfg.get(key)
        if v is None:
            return []
        if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
            raise self.fail(key, "must be a list of layer indices", v)
        bad = [x for x in v if not 0 <= x < upper]
        if bad:
            raise self.fail(key, f"layer index out of range 0..{upper - 1}", bad[0])
        return list(v)


#: where multimodal wrappers nest their language model: text_config (transformers' own VLMs),
#: llm_config (InternVL's InternVLChatConfig), language_config (DeepSeek-VL2) -- the sections
#: vLLM's internvl.py / deepseek_vl2.py build the language model from
_TEXT_SECTIONS = ("text_config", "llm_config", "language_config")


def _text_section(cfg: dict, source: str) -> tuple[dict, str]:
    """The dict holding the language-model fields and the field prefix for error messages."""
    if all(k in cfg for k in _TEXT_KEYS):
        return cfg, ""
    for key in _TEXT_SECTIONS:
        text = cfg.get(key)
        if isinstance(text, dict):
            merged = {k: v for k, v in cfg.items()
                      if not k.endswith("_config") or k in _INHERITED_KEYS}
            merged.update(text)
            return merged, key + "."
        if text is not None:
            raise InputError("must be a mapping", source=source, field=key,
                             value=type(text).__name__)
    return cfg, ""


def _architecture(cfg: dict, top: dict) -> tuple[str, str]:
    archs = top.get("architectures") or cfg.get("architectures")
    model_type = str(cfg.get("model_type") or top.get("model_type") or "")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0], model_type
    return model_type or "unknown", model_type


#: model_types and architecture-name fragments of state-space / recurrent / hybrid models: their
#: layers keep a fixed-size recurrent state instead of a growing KV cache, which the memory and
#: cost models here do not describe.
_SSM_MODEL_TYPES = frozenset({"mamba", "mamba2", "falcon_mamba", "jamba", "zamba", "zamba2",
                              "bamba", "nemotron_h", "granitemoehybrid", "falcon_h1", "rwkv",
                              "rwkv5", "rwkv6", "recurrent_gemma", "lfm2", "minimax", "plamo2"})
_SSM_ARCH_PARTS = ("Mamba", "Jamba", "Zamba", "Bamba", "Rwkv", "RWKV", "RecurrentGemma",
                   "NemotronH", "FalconH1", "Hybrid")
#: layer_types entries that are attention (anything else, e.g. 'mamba', 'linear_attention', is not)
_ATTENTION_LAYER_TYPES = frozenset({"attention", "full_attention", "sliding_attention",
                                    "chunked_attention", "global", "local", "sliding_window",
                                    # GLM-5.2: MLA with the DSA indexer (full attention)
                                    "deepseek_sparse_attention"})
#: layer_types entries of sliding-window attention (the rest of _ATTENTION_LAYER_TYPES is full)
_SLIDING_LAYER_TYPES = frozenset({"sliding_attention", "local", "sliding_window"})
#: Nemotron-H hybrid_override_pattern blocks modelled: Mamba2 mixer, attention, dense MLP, and
#: Nemotron-3's MoE 'E' blocks (non-gated relu2 experts, LatentMoE projections: _nemotron_moe)
_NEMOTRON_H_BLOCKS = "M*-E"
_MAMBA_KEYS = ("mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "conv_kernel")
#: config keys of a Gated DeltaNet linear-attention layer (Qwen3-Next / Qwen3.5)
_LINEAR_ATTN_KEYS = ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                     "linear_value_head_dim", "linear_conv_kernel_dim")
#: keys that mark a vision-language wrapper (vision tower config / image-token plumbing)
_VISION_KEYS = ("vision_config", "vision_tower", "mm_vision_tower", "visual", "image_token_index",
                "image_token_id", "vision_start_token_id", "mm_projector_type")


def _reject_ssm(arch: str, model_type: str, cfg: dict, source: str) -> None:
    """One-line InputError for state-space / hybrid architectures (no KV-cache model here)."""
    types = cfg.get("layer_types")
    # Gated DeltaNet layers are modelled when the config describes them (linear_* keys)
    known = _ATTENTION_LAYER_TYPES | ({"linear_attention"} if all(
        cfg.get(k) is not None for k in _LINEAR_ATTN_KEYS) else frozenset())
    odd = sorted({str(t) for t in types if str(t) not in known}) \
        if isinstance(types, list) else []
    pattern = _block_pattern(cfg)
    if isinstance(pattern, str) and pattern and set(pattern) <= set(_NEMOTRON_H_BLOCKS) \
            and all(cfg.get(k) is not None for k in _MAMBA_KEYS) and not odd:
        return  # Nemotron-H: Mamba2 / attention / MLP blocks, modelled (_nemotron_h_layers)
    if model_type in _SSM_MODEL_TYPES or any(p in arch for p in _SSM_ARCH_PARTS) or odd:
        what = f" (layer_types {', '.join(odd)})" if odd else ""
        raise InputError(f"architecture {arch} is not supported: state-space / recurrent layers"
                         f"{what} keep a recurrent state that apex-opt does not model (hybrid "
                         f"models it plans: sliding-window attention, Gated DeltaNet "
                         f"linear_attention with its linear_* config keys, Nemotron-H Mamba2 / "
                         f"attention / dense-MLP blocks)",
                         source=source, field="architectures")


#: model_types that are not decoder-only language models: encoder-decoder (seq2seq, speech),
#: encoder-only (BERT family) and vision-only (image classifiers, vision towers on their own)
_NON_DECODER_MODEL_TYPES = {
    "encoder-decoder": frozenset({"t5", "mt5", "umt5", "longt5", "switch_transformers", "bart",
                                  "mbart", "pegasus", "pegasus_x", "marian", "m2m_100", "nllb_moe",
                                  "fsmt", "led", "blenderbot", "blenderbot-small", "prophetnet",
                                  "whisper", "encoder-decoder", "speech-encoder-decoder",
                                  "seamless_m4t", "seamless_m4t_v2", "florence2"}),
    "encoder-only": frozenset({"bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "deberta",
                               "deberta-v2", "distilbert", "electra", "albert", "modernbert",
                               "camembert", "mpnet", "nomic_bert"}),
    "vision-only": frozenset({"vit", "deit", "beit", "swin", "swinv2", "convnext", "convnextv2",
                              "dinov2", "resnet", "clip_vision_model", "siglip_vision_model",
                              "regnet", "efficientnet", "mobilenet_v2", "sam", "detr"}),
}
#: architecture-name endings of the same kinds (HF task heads that do not generate text)
_NON_DECODER_ARCH_ENDINGS = {
    "encoder-decoder": ("ForSeq2SeqLM", "ForSpeechSeq2Seq"),
    "encoder-only": ("ForMaskedLM",),
    "vision-only": ("ForImageClassification", "ForObjectDetection", "ForSemanticSegmentation",
                    "VisionModel"),
}


#: Nemotron-H ``layers_block_type`` entries (newer HF NemotronHConfig) as hybrid_override_pattern
#: characters
_BLOCK_TYPE_CHARS = {"mamba": "M", "attention": "*", "mlp": "-", "moe": "E"}


def _block_pattern(cfg: dict) -> str | None:
    """Nemotron-H block pattern: ``hybrid_override_pattern``, or the same spelled from the
    per-layer ``layers_block_type`` list (mamba / attention / mlp / moe -> M * - E; an unknown
    entry is kept as '?', which no modelled pattern contains)."""
    pattern = cfg.get("hybrid_override_pattern")
    if isinstance(pattern, str):
        return pattern
    types = cfg.get("layers_block_type")
    if isinstance(types, list) and types:
        return "".join(_BLOCK_TYPE_CHARS.get(str(t), "?") for t in types)
    return None


def _is_gemma4(cfg: dict) -> bool:
    """Gemma-4 text config: per-kind attention keys (global_head_dim, num_global_key_value_heads,
    attention_k_eq_v)."""
    return (any(cfg.get(k) is not None for k in ("global_head_dim", "num_global_key_value_heads"))
            or cfg.get("attention_k_eq_v") is True)


def _attn_shapes(r: "_Reader", kinds: tuple[str, ...], kv_heads: int,
                 head_dim: int) -> tuple[tuple[str, AttnShape], ...]:
    """Per-kind attention shapes (ModelSpec.attn_shapes), () when every layer has
    (kv_heads, head_dim, head_dim).

    * Gemma-4 (vLLM gemma4.py Gemma4DecoderLayer): full layers head_dim = global_head_dim; with
      attention_k_eq_v their KV heads are num_global_key_value_heads and the checkpoint has no
      v_proj; sliding layers (head_dim, num_key_value_heads);
    * MiMo-V2-Flash (vLLM mimo_v2_flash.py): full layers (num_key_value_heads, head_dim,
      v_head_dim), sliding layers (swa_num_key_value_heads, swa_head_dim, swa_v_head_dim), the
      sliding layers' attention-sink bias (add_swa_attention_sink_bias; the full layers' flag is
      add_full_attention_sink_bias);
    * any GQA config with v_head_dim != head_dim: V narrower / wider than K on every layer."""
    cfg = r.cfg
    v_dim = r.get_int("v_head_dim") if r.has("v_head_dim") else head_dim
    full = AttnShape(num_kv_heads=kv_heads, head_dim=head_dim, v_head_dim=v_dim,
                     sink=r.get_bool("add_full_attention_sink_bias", False))
    sliding = full.model_copy(update={"sink": r.get_bool("add_swa_attention_sink_bias", False)})
    if _is_gemma4(cfg):
        k_eq_v = r.get_bool("attention_k_eq_v", False)
        g_kv = r.get_int("num_global_key_value_heads") if (k_eq_v and r.has(
            "num_global_key_value_heads")) else kv_heads
        g_dim = r.get_int("global_head_dim") if r.has("global_head_dim") else head_dim
        full = AttnShape(num_kv_heads=g_kv, head_dim=g_dim, v_head_dim=g_dim, k_eq_v=k_eq_v)
    if any(r.has(k) for k in ("swa_num_key_value_heads", "swa_head_dim", "swa_v_head_dim")):
        sd = r.get_int("swa_head_dim") if r.has("swa_head_dim") else head_dim
        sliding = AttnShape(
            num_kv_heads=r.get_int("swa_num_key_value_heads") if r.has("swa_num_key_value_heads")
            else kv_heads, head_dim=sd,
            v_head_dim=r.get_int("swa_v_head_dim") if r.has("swa_v_head_dim") else sd,
            sink=r.get_bool("add_swa_attention_sink_bias", False))
    for kv in (full.num_kv_heads, sliding.num_kv_heads):
        heads = r.get_int("num_attention_heads")
        if kv > heads or heads % kv:
            raise r.fail("num_key_value_heads", f"a layer kind's KV heads ({kv}) must divide "
                         f"num_attention_heads ({heads})", kv)
    default = AttnShape(num_kv_heads=kv_heads, head_dim=head_dim, v_head_dim=head_dim)
    present = set(kinds) if kinds else {"full"}
    out = tuple((k, s) for k, s in (("full", full), ("sliding", sliding)) if k in present)
    return out if any(s != default for _, s in out) else ()


def _reject_unmodelled(arch: str, model_type: str, cfg: dict, source: str) -> None:
    """One-line InputError for architectures whose attention, residual or MLP structure the layer
    model here does not describe, naming the config field that shows it (checked before the
    generic width checks, whose messages would name a symptom instead of the cause)."""
    def refuse(field: str, why: str) -> None:
        raise InputError(f"architecture {arch} (model_type {model_type or '?'}) is not supported: "
                         f"{why}", source=source, field=field)

    if cfg.get("hc_mult") is not None or cfg.get("compress_ratios") is not None:
        # DeepSeek-V4 (HF DeepseekV4 / vLLM deepseek_v4.py): hc_mult parallel residual streams
        # mixed by Sinkhorn hyper-connections around every sublayer; per-layer compressed
        # (compress_ratios 4 / 128) sparse attention with a sliding window; grouped low-rank
        # output projection (o_groups, o_lora_rank); hash-routed first layers (num_hash_layers)
        ratios = cfg.get("compress_ratios")
        rs = sorted({r for r in ratios if isinstance(r, int)}) if isinstance(ratios, list) else []
        refuse("hc_mult" if cfg.get("hc_mult") is not None else "compress_ratios",
               f"hyper-connections (hc_mult={cfg.get('hc_mult')}: parallel residual streams "
               f"mixed around every sublayer) and compressed sparse attention (compress_ratios "
               f"{rs}, sliding_window {cfg.get('sliding_window')}, o_groups "
               f"{cfg.get('o_groups')}) are not modelled; its KV cache and active parameters "
               f"would be read wrong")
    lin = cfg.get("linear_attn_config")
    if model_type == "kimi_linear" or (isinstance(lin, dict) and lin.get("kda_layers")):
        # Kimi Linear (HF modeling_kimi_linear / vLLM kimi_linear.py): Kimi Delta Attention
        # layers (gated delta rule with per-channel decay, short conv) interleaved with MLA layers
        n = len(lin.get("kda_layers") or []) if isinstance(lin, dict) else 0
        extra = ""
        if cfg.get("routed_expert_hidden_size") not in (None, cfg.get("hidden_size")):
            extra = (f"; latent MoE (routed_expert_hidden_size {cfg.get('routed_expert_hidden_size')}"
                     f" != hidden_size {cfg.get('hidden_size')}) is not modelled either")
        refuse("linear_attn_config.kda_layers",
               f"Kimi Delta Attention linear layers ({n} of {cfg.get('num_hidden_layers')} layers) "
               f"are not modelled (apex-opt models Gated DeltaNet linear_attention layers){extra}")
    pattern = _block_pattern(cfg)
    if isinstance(pattern, str) and "E" in pattern and cfg.get("n_routed_experts") is None:
        refuse("n_routed_experts", f"Nemotron-H MoE 'E' blocks ({pattern.count('E')} of "
               f"{len(pattern)}) need n_routed_experts, moe_intermediate_size and "
               f"num_experts_per_tok")
    if isinstance(cfg.get("block_configs"), list):
        # DeciLM / Nemotron-NAS (HF modeling_decilm): each layer has its own FFN width
        # (ffn_mult), attention group size, or a no-op / linear replacement
        bc = [b for b in cfg["block_configs"] if isinstance(b, dict)]
        mults = sorted({(b.get("ffn") or {}).get("ffn_mult") for b in bc} - {None})
        noop = sum(1 for b in bc if (b.get("attention") or {}).get("no_op")
                   or (b.get("attention") or {}).get("replace_with_linear"))
        refuse("block_configs",
               f"per-layer NAS blocks (ffn_mult {mults[0] if mults else '?'}.."
               f"{mults[-1] if mults else '?'}, {noop} of {len(bc)} layers with no-op / linear "
               f"attention) give every layer its own widths; apex-opt models one dense-MLP "
               f"width and one attention shape per model")
    if _is_gemma4(cfg):
        # Gemma-4 (vLLM gemma4.py): per-kind attention shapes are modelled (_attn_shapes); the
        # E2B/E4B-only features are not
        shared = cfg.get("num_kv_shared_layers") or 0
        if shared:
            refuse("num_kv_shared_layers",
                   f"KV-shared layers (the last {shared} layers reuse an earlier layer's KV cache, "
                   f"vLLM kv_sharing_target_layer_name) are not modelled")
        ple = cfg.get("hidden_size_per_layer_input") or 0
        if ple:
            refuse("hidden_size_per_layer_input",
                   f"per-layer input embeddings (hidden_size_per_layer_input {ple}) are not "
                   f"modelled")
    heads = cfg.get("swa_num_attention_heads")
    if heads is not None and heads != cfg.get("num_attention_heads"):
        # MiMo-V2-Flash style sliding layers with their own query-head count
        refuse("swa_num_attention_heads",
               f"sliding-window layers have their own query heads (swa_num_attention_heads "
               f"{heads} vs num_attention_heads {cfg.get('num_attention_heads')}); apex-opt "
               f"models one query-head count per model")


def _reject_non_decoder(arch: str, model_type: str, cfg: dict, top: dict, source: str) -> None:
    """One-line InputError for configs that are not decoder-only language models (the serving
    model here is autoregressive decoding with a KV cache over one decoder stack)."""
    kind = next((k for k, types in _NON_DECODER_MODEL_TYPES.items() if model_type in types), None)
    kind = kind or next((k for k, ends in _NON_DECODER_ARCH_ENDINGS.items()
                         if arch.endswith(ends)), None)
    if kind is None and (cfg.get("is_encoder_decoder") is True
                         or top.get("is_encoder_decoder") is True):
        kind = "encoder-decoder"
    if kind is not None:
        raise InputError(f"architecture {arch} (model_type {model_type or '?'}) is not supported: "
                         f"it is {'a' if kind.startswith('v') else 'an'} {kind} model; apex-opt plans decoder-only language models "
                         f"(e.g. LlamaForCausalLM, DeepseekV3ForCausalLM)",
                         source=source, field="architectures")


def _sparse_attention_warning(arch: str, cfg: dict, name: str) -> None:
    """Warn about sparse-attention layouts read only approximately: MiniMax-M3's and Phi-3-small's
    block-sparse attention (costed dense; MiniMax-M3's index projections and index-key cache not
    counted) and GLM-5.2's shared indexers (every layer counted with its own)."""
    from ..errors import warn

    sp = cfg.get("sparse_attention_config")
    if isinstance(sp, dict) and sp.get("use_sparse_attention"):
        freq = sp.get("sparse_attention_freq")
        n = sum(1 for f in freq if f) if isinstance(freq, list) else "?"
        warn(f"{name}: {arch} block-sparse attention (sparse_attention_config: top "
             f"{sp.get('sparse_topk_blocks')} blocks of {sp.get('sparse_block_size')} tokens on {n} "
             f"of {cfg.get('num_hidden_layers')} layers) is planned as dense attention: attention "
             f"time at long context is over-estimated, and its index projections and index-key "
             f"cache ({sp.get('sparse_index_dim')} elements per token per sparse layer) are not "
             f"counted, so KV memory is under-estimated")
    every = cfg.get("dense_attention_every_n_layers")
    if cfg.get("blocksparse_block_size") is not None and isinstance(every, int) and every > 0:
        # Phi-3-small (vLLM phi3_small.py): layers whose (index + 1) is not a multiple of
        # dense_attention_every_n_layers attend local blocks plus a vertical stride
        n = cfg.get("num_hidden_layers")
        sparse = sum(1 for i in range(n) if (i + 1) % every) if isinstance(n, int) else "?"
        warn(f"{name}: {arch} block-sparse attention ({sparse} of {n} layers: "
             f"{cfg.get('blocksparse_num_local_blocks')} local blocks of "
             f"{cfg.get('blocksparse_block_size')} tokens, vertical stride "
             f"{cfg.get('blocksparse_vert_stride')}) is planned as dense attention: attention time "
             f"past the local blocks is over-estimated (its KV cache is the dense one)")
    types = cfg.get("indexer_types")
    if isinstance(types, list) and any(t != "full" for t in types):
        own = sum(1 for t in types if t == "full")
        warn(f"{name}: {arch} has its own DSA indexer in {own} of {len(types)} layers "
             f"(indexer_types; the others reuse a previous layer's top-k); every layer is planned "
             f"with its own indexer weights and indexer pass (a slight over-estimate)")


def _vision_warning(arch: str, top: dict, text_prefix: str, name: str) -> None:
    """Warn that only the language model of a vision-language config is planned for."""
    found = [k for k in _VISION_KEYS if k in top]
    if not found:
        return
    from ..errors import warn

    lm = f"its language model ({text_prefix.rstrip('.')})" if text_prefix else "its language model"
    warn(f"{name}: {arch} is a vision-language model; planning for {lm} only: ignored are the "
         f"vision tower and image tokens ({', '.join(found)}), so prompts with images need more "
         f"memory and compute than planned")


def _modelopt_algo(q: dict) -> str:
    """ModelOpt's ``quant_algo`` (upper case): flat in config.json's quantization_config, or nested
    under ``quantization`` as in hf_quant_config.json (vLLM ModelOptNvFp4Config
    override_quantization_method / from_config read both)."""
    algo = q.get("quant_algo")
    if not algo and isinstance(q.get("quantization"), dict):
        algo = q["quantization"].get("quant_algo")
    return str(algo or "").upper()


#: ModelOpt quant_algo -> the quant_method vLLM gives a config.json quantization_config that names
#: no quant_method but says ``producer: {name: modelopt}`` with the algorithm nested under
#: ``quantization`` (vllm/config/model.py ``_normalize_quantization_config``; older releases
#: ``_parse_quant_hf_config`` for FP8 / NVFP4 only); any other nested algorithm makes vLLM refuse
#: the checkpoint ("Unknown ModelOpt quant algo").
_MODELOPT_NESTED_METHOD = {"FP8": "modelopt", "FP8_PER_CHANNEL_PER_TOKEN": "modelopt",
                           "FP8_PB_WO": "modelopt", "NVFP4": "modelopt_fp4"}


def _normalize_modelopt(cfg: Any, source: str) -> Any:
    """``cfg`` with the quant_method vLLM infers for a ModelOpt export that names none (see
    _MODELOPT_NESTED_METHOD), in the top-level and any text section's quantization_config. A
    ModelOpt config whose quant_algo sits flat at the top with no quant_method is not recognised
    by vLLM (its inference reads the nested key only; ModelOptQuantConfigBase needs a quant_method
    starting with 'modelopt' for the flat layout), so it loads as unquantised and fails on the
    fp8 scales: an InputError naming the fix."""
    if not isinstance(cfg, dict):
        return cfg

    def fixed(q: Any, field: str) -> Any:
        if not isinstance(q, dict) or q.get("quant_method") is not None:
            return q
        producer = q.get("producer")
        if not (isinstance(producer, dict) and producer.get("name") == "modelopt"):
            return q
        nested = q.get("quantization")
        algo = nested.get("quant_algo") if isinstance(nested, dict) else None
        if algo is None:
            if q.get("quant_algo") is not None:
                raise InputError(
                    f"is missing, and this ModelOpt export's quant_algo "
                    f"{q.get('quant_algo')!r} sits at the top level, which vLLM does not infer a "
                    f"method from (it reads quantization.quant_algo only), so the engine would load "
                    f"the checkpoint as unquantised and fail on its scales; add \"quant_method\": "
                    f"\"modelopt\" (\"modelopt_fp4\" for NVFP4), as ModelOpt's own exports write",
                    source=source, field=f"{field}.quant_method")
            return q
        method = _MODELOPT_NESTED_METHOD.get(str(algo).upper())
        if method is None:
            raise InputError(f"ModelOpt quantization algorithm is not one vLLM serves "
                             f"({', '.join(_MODELOPT_NESTED_METHOD)})", source=source,
                             field=f"{field}.quantization.quant_algo", value=algo)
        return {**q, "quant_method": method}

    out = dict(cfg)
    if "quantization_config" in out:
        out["quantization_config"] = fixed(out["quantization_config"], "quantization_config")
    for key in _TEXT_SECTIONS:
        text = out.get(key)
        if isinstance(text, dict) and "quantization_config" in text:
            out[key] = {**text, "quantization_config": fixed(text["quantization_config"],
                                                              f"{key}.quantization_config")}
    return out


def _nvfp4_scheme(q: dict) -> str | None:
    """'nvfp4' (W4A4) / 'nvfp4_w4a16' for an NVFP4 checkpoint, else None. ModelOpt: quant_method
    'modelopt' (or 'modelopt_fp4') with an FP4 quant_algo (NVFP4; W4A16_NVFP4 is weight-only);
    compressed-tensors (format nvfp4-pack-quantized): float 4-bit weights in groups of 16, W4A4
    when the input activations are 4-bit too (vLLM CompressedTensorsW4A4Fp4, else W4A16Fp4)."""
    method = str(q.get("quant_method", "")).lower()
    if method in ("modelopt", "modelopt_fp4"):
        algo = _modelopt_algo(q)
        if "FP4" in algo and "MXFP4" not in algo:
            return "nvfp4_w4a16" if "W4A16" in algo else "nvfp4"
        return None
    if method == "compressed-tensors":
        groups = q.get("config_groups")
        for g in (groups.values() if isinstance(groups, dict) else ()):
            w = g.get("weights") if isinstance(g, dict) else None
            if isinstance(w, dict) and w.get("type") == "float" and w.get("num_bits") == 4:
                if w.get("group_size") == 32:
                    return None  # MXFP4 (mxfp4-pack-quantized, E8M0 scales per 32): _is_mxfp4
                a = g.get("input_activations")
                return "nvfp4" if isinstance(a, dict) and a.get("num_bits") == 4 else "nvfp4_w4a16"
    return None


def _is_mxfp4(q: dict) -> bool:
    """An OCP MXFP4 checkpoint: quant_method 'mxfp4' (gpt-oss; vLLM / SGLang Mxfp4Config), or
    compressed-tensors float 4-bit weights in groups of 32 (mxfp4-pack-quantized; vLLM 0.15+
    CompressedTensorsW4A16Mxfp4)."""
    if str(q.get("quant_method", "")).lower() == "mxfp4":
        return True
    w = _compressed_tensors_weights(q) if str(q.get("quant_method", "")).lower() == "compressed-tensors" else None
    return (isinstance(w, dict) and w.get("type") == "float" and w.get("num_bits") == 4
            and w.get("group_size") == 32)


#: quantization_config quant_methods whose weights the memory and cost models size (see
#: _checkpoint_dtype); any other would silently be planned as a bf16 checkpoint
_QUANT_METHODS = ("fp8", "fbgemm_fp8", "gptq", "awq", "modelopt", "modelopt_fp4", "mxfp4",
                  "compressed-tensors")
#: torch_dtype / dtype values of HF configs (torch dtype names, optionally 'torch.'-prefixed)
_TORCH_DTYPE = re.compile(r"^(torch\.)?(b?float\d*|half|double|auto|u?int\d+|float8_\w+|bf16|fp16|fp32)$")


def _check_quantization(cfg: dict, source: str) -> None:
    """One-line InputError for a checkpoint format the models cannot size: a quantization_config
    that is no mapping, names no or an unknown quant_method, or GPTQ / AWQ bits other than 4 and
    8; a torch_dtype that is no dtype. Each would otherwise be read as a bf16 checkpoint."""
    for key in ("torch_dtype", "dtype"):
        dt = cfg.get(key)
        if dt is not None and not (isinstance(dt, str) and _TORCH_DTYPE.match(dt.strip().lower())):
            raise InputError("is not a torch dtype (e.g. bfloat16, float16, float32)",
                             source=source, field=key, value=dt)
    if "quantization_config" not in cfg or cfg["quantization_config"] is None:
        return
    q = cfg["quantization_config"]
    if not isinstance(q, dict):
        raise InputError("must be a mapping with a quant_method", source=source,
                         field="quantization_config", value=q)
    method = q.get("quant_method")
    if method is None:
        raise InputError(f"is missing: the checkpoint's quantization is unknown (apex-opt sizes "
                         f"{', '.join(_QUANT_METHODS)} checkpoints)", source=source,
                         field="quantization_config.quant_method")
    if not isinstance(method, str) or method.lower() not in _QUANT_METHODS:
        raise InputError(f"quantization method is not modelled (apex-opt sizes "
                         f"{', '.join(_QUANT_METHODS)} checkpoints); planning it as bf16 would "
                         f"misstate its weights", source=source,
                         field="quantization_config.quant_method", value=method)
    bits = q.get("bits")
    if method.lower() in ("gptq", "awq") and bits is not None and bits not in (4, 8):
        raise InputError(f"{method} with {bits}-bit weights is not modelled (4 or 8 bits)",
                         source=source, field="quantization_config.bits", value=bits)


def _checkpoint_dtype(cfg: dict) -> str:
    q = cfg.get("quantization_config")
    mixed = _mixed_precision(q)
    if mixed is not None:
        main = _mixed_main(mixed)
        if main is not None:
            return main[0]
    if isinstance(q, dict):
        if _nvfp4_scheme(q) is not None or _is_mxfp4(q):
            return "fp4"
        method = str(q.get("quant_method", "")).lower()
        if method in ("fp8", "fbgemm_fp8"):
            return "fp8"
        bits = q.get("bits")
        if method in ("gptq", "awq") and bits in (4, 8):
            return "int4" if bits == 4 else "int8"
        if method == "modelopt" and "FP8" in _modelopt_algo(q):
            return "fp8"  # quant_algo flat, or nested as hf_quant_config.json has it
        w = _compressed_tensors_weights(q) if method == "compressed-tensors" else None
        if w is not None:
            if w.get("type") == "float" and w.get("num_bits") == 8:
                return "fp8"
            if w.get("type") == "int" and w.get("num_bits") in (4, 8):
                return "int4" if w.get("num_bits") == 4 else "int8"
    dt = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16").lower()
    return {"float16": "fp16", "float32": "fp32"}.get(dt, "bf16")


def _compressed_tensors_weights(q: dict) -> dict | None:
    """The ``weights`` block of the first config group of a compressed-tensors checkpoint."""
    groups = q.get("config_groups")
    if isinstance(groups, dict):
        for g in groups.values():
            if isinstance(g, dict) and isinstance(g.get("weights"), dict):
                return g["weights"]
    return None


def _quant_scheme(cfg: dict, dtype: str) -> str:
    """Scaling layout of a quantized checkpoint (see ``ModelSpec.quant_scheme``)."""
    q = cfg.get("quantization_config")
    if not isinstance(q, dict) or dtype in ("bf16", "fp16", "fp32"):
        return ""
    mixed = _mixed_precision(q)
    if mixed is not None:
        main = _mixed_main(mixed)
        return main[1] if main is not None else ""
    if dtype in ("int4", "int8"):
        return _int4_scheme(q) if dtype == "int4" else "int8_channel"
    if dtype == "fp4":
        return "mxfp4" if _is_mxfp4(q) else (_nvfp4_scheme(q) or "nvfp4")
    method = str(q.get("quant_method", "")).lower()
    if q.get("weight_block_size"):
        return "fp8_block"
    if method == "fbgemm_fp8":
        return "fp8_channel"
    if method.startswith("modelopt"):
        # ModelOptFp8Config: FP8 = per-tensor weight + static activation scale;
        # FP8_PER_CHANNEL_PER_TOKEN = per-channel weight + dynamic per-token activation;
        # FP8_PB_WO = 128x128 weight blocks, dynamic per-token-group activation (vLLM modelopt.py)
        algo = _modelopt_algo(q)
        return {"FP8_PER_CHANNEL_PER_TOKEN": "fp8_channel", "FP8_PB_WO": "fp8_block"}.get(
            algo, "fp8_tensor")
    w = _compressed_tensors_weights(q) if method == "compressed-tensors" else None
    if w is not None:
        strategy = str(w.get("strategy", "tensor")).lower()
        return {"block": "fp8_block", "channel": "fp8_channel"}.get(strategy, "fp8_tensor")
    return "fp8_tensor"


def _int4_scheme(q: dict) -> str:
    """'int4_group' (one bf16 scale per 128 weights: AWQ / GPTQ's usual group), or 'int4_group32' /
    'int4_group64' for checkpoints of group size 32 / 64 (GPTQ/AWQ ``group_size``; compressed-tensors
    weights ``group_size``, e.g. moonshotai/Kimi-K2.5: 32); weight_format
    maps it to its bytes per weight."""
    g = q.get("group_size")
    w = _compressed_tensors_weights(q)
    if w is not None:
        g = w.get("group_size")
    return f"int4_group{g}" if g in (32, 64) else "int4_group"


def _mla(r: _Reader) -> MLASpec | None:
    if not r.has("kv_lora_rank"):
        return None
    return MLASpec(
        q_lora_rank=r.get_int("q_lora_rank") if r.has("q_lora_rank") else None,
        kv_lora_rank=r.get_int("kv_lora_rank"),
        qk_nope_head_dim=r.get_int("qk_nope_head_dim", minimum=0),
        qk_rope_head_dim=r.get_int("qk_rope_head_dim", minimum=0),
        v_head_dim=r.get_int("v_head_dim"),
    )


def _dsa(r: _Reader, mla: MLASpec | None) -> DSASpec | None:
    """The DeepSeek Sparse Attention indexer of an MLA model that names one (index_* keys)."""
    if mla is None or not all(r.has(k) for k in ("index_n_heads", "index_head_dim", "index_topk")):
        return None
    return DSASpec(n_heads=r.get_int("index_n_heads"), head_dim=r.get_int("index_head_dim"),
                   topk=r.get_int("index_topk", maximum=1 << 31))


def _moe(r: _Reader, model_type: str, num_layers: int) -> tuple[MoESpec | None, int | None]:
    """MoE layout, plus an override of the dense-MLP width where the family names it differently."""
    if r.get_bool("enable_moe_block", False):
        # Gemma-4 26B-A4B (vLLM gemma4.py Gemma4DecoderLayer): every layer runs its dense
        # Gemma4MLP (intermediate_size, gated GELU) AND, in parallel on the same residual, a
        # FusedMoE of num_experts experts (moe_intermediate_size, top_k_experts, renormalized);
        # the outputs are summed -- an always-on ungated shared expert of intermediate_size in
        # cost and weights (the model card's "128 experts + 1 shared")
        n_exp = r.get_int("num_experts")
        topk = r.get_int("top_k_experts")
        if topk > n_exp:
            raise r.fail("top_k_experts", f"exceeds the number of experts (num_experts={n_exp})", topk)
        width = r.get_int("moe_intermediate_size") if r.has("moe_intermediate_size") \
            else r.get_int("expert_intermediate_size")
        return MoESpec(num_experts=n_exp, experts_per_token=topk, expert_intermediate_size=width,
                       num_shared_experts=1, shared_intermediate_size=r.get_int("intermediate_size"),
                       moe_layers=tuple(range(num_layers)), norm_topk_prob=True), None
    if r.has("moe_num_experts"):                                    # ERNIE-4.5 MoE
        return _ernie_moe(r, num_layers), None
    if model_type.startswith("hunyuan") and r.has("num_experts"):   # Hunyuan-A13B
        return _hunyuan_moe(r, num_layers), None
    if r.has("n_routed_experts"):                                   # DeepSeek-V2/V3, Kimi-K2
        n_exp = r.get_int("n_routed_experts")
        layers = _moe_layer_list(r, num_layers)
        width = r.get_int("moe_intermediate_size")
        n_shared = r.get_int("n_shared_experts", 0, minimum=0)
        return _moe_spec(r, n_exp, "n_routed_experts", width, n_shared, n_shared * width, layers,
                         r.get_bool("norm_topk_prob", False), False), None
    if model_type.startswith("llama4") and r.has("num_local_experts"):  # Llama-4 text
        n_exp = r.get_int("num_local_experts")
        step = r.get_int("interleave_moe_layer_step", 1)
        moe_set = r.get_int_list("moe_layers", num_layers)
        layers = tuple(moe_set) if moe_set else tuple(
            i for i in range(num_layers) if (i + 1) % step == 0)
        width = r.get_int("intermediate_size")
        return (_moe_spec(r, n_exp, "num_local_experts", width, 1, width, layers, False, False),
                r.get_int("intermediate_size_mlp", width))
    if r.has("num_local_experts") and (r.has("dense_intermediate_size")
                                       or r.has("shared_intermediate_size")):
        # MiniMax-M3 (vLLM minimax_m3): dense MLP layers of width dense_intermediate_size where
        # moe_layer_freq is 0 (the first first_k_dense_replace), block_sparse_moe with
        # n_shared_experts shared experts of width shared_intermediate_size elsewhere
        n_exp = r.get_int("num_local_experts")
        width = r.get_int("moe_intermediate_size") if r.has("moe_intermediate_size") \
            else r.get_int("intermediate_size")
        n_shared = r.get_int("n_shared_experts", 1 if r.has("shared_intermediate_size") else 0,
                             minimum=0)
        shared = n_shared * r.get_int("shared_intermediate_size", 0, minimum=0)
        dense = r.get_int("dense_intermediate_size") if r.has("dense_intermediate_size") else None
        return (_moe_spec(r, n_exp, "num_local_experts", width, n_shared, shared,
                          _moe_layer_list(r, num_layers), r.get_bool("norm_topk_prob", True),
                          False), dense)
    if r.has("num_local_experts"):                                   # Mixtral
        n_exp = r.get_int("num_local_experts")
        width = r.get_int("intermediate_size")
        return _moe_spec(r, n_exp, "num_local_experts", width, 0, 0, tuple(range(num_layers)),
                         True, False), None
    if r.has("num_experts") and r.get_int("num_experts", minimum=0) > 0:  # Qwen2-MoE / Qwen3-MoE
        n_exp = r.get_int("num_experts")
        step = r.get_int("decoder_sparse_step", 1)
        dense_only = set(r.get_int_list("mlp_only_layers", num_layers))
        # Step-3.5/3.7 (vLLM step3p5.py): the first first_k_dense_replace layers are dense
        first = r.get_int("first_k_dense_replace", 0, minimum=0, maximum=num_layers)
        layers = tuple(i for i in range(first, num_layers)
                       if i not in dense_only and (i + 1) % step == 0)
        # OLMoE (vLLM olmoe.py OlmoeMoE): the experts' width is intermediate_size
        width = r.get_int("moe_intermediate_size") if r.has("moe_intermediate_size") \
            else r.get_int("intermediate_size")
        shared = r.get_int("shared_expert_intermediate_size", 0, minimum=0)
        if shared:
            return _moe_spec(r, n_exp, "num_experts", width, 1, shared, layers,
                             r.get_bool("norm_topk_prob", False), True), None
        # Step-3.5/3.7: an always-on ungated shared expert of width share_expert_dim per MoE layer
        n_shared = r.get_int("n_shared_experts", 1, minimum=0) if r.has("share_expert_dim") else 0
        shared = n_shared * r.get_int("share_expert_dim", 0, minimum=0)
        return _moe_spec(r, n_exp, "num_experts", width, n_shared, shared, layers,
                         r.get_bool("norm_topk_prob", False), False), None
    return None, None


def _ernie_moe(r: _Reader, num_layers: int) -> MoESpec | None:
    """ERNIE-4.5 MoE (vLLM ernie45_moe.py Ernie4_5_MoeDecoderLayer): layer i is MoE when use_moe
    (default moe_num_experts > 0), (i + 1) % moe_layer_interval == 0 and moe_layer_start_index <=
    i <= moe_layer_end_index; moe_k routed experts of moe_intermediate_size, renormalized, plus
    moe_num_shared_experts x moe_intermediate_size of always-on shared MLP; the other layers run
    the dense MLP of intermediate_size."""
    if isinstance(r.cfg.get("moe_num_experts"), list):
        raise r.fail("moe_num_experts", "per-modality expert groups (ERNIE-4.5-VL) are not "
                     "modelled; apex-opt plans one expert group per MoE layer",
                     r.cfg["moe_num_experts"])
    n_exp = r.get_int("moe_num_experts", minimum=0)
    if not r.get_bool("use_moe", n_exp > 0) or n_exp == 0:
        return None
    topk = r.get_int("moe_k")
    if topk > n_exp:
        raise r.fail("moe_k", f"exceeds the number of experts (moe_num_experts={n_exp})", topk)
    start = r.get_int("moe_layer_start_index", 0, minimum=0, maximum=num_layers)
    end = r.get_int("moe_layer_end_index", num_layers - 1, minimum=0, maximum=num_layers)
    step = r.get_int("moe_layer_interval", 1)
    layers = tuple(i for i in range(num_layers) if (i + 1) % step == 0 and start <= i <= end)
    if not layers:
        return None
    width = r.get_int("moe_intermediate_size")
    n_shared = r.get_int("moe_num_shared_experts", 0, minimum=0)
    return MoESpec(num_experts=n_exp, experts_per_token=topk, expert_intermediate_size=width,
                   num_shared_experts=n_shared, shared_intermediate_size=n_shared * width,
                   moe_layers=layers, norm_topk_prob=True)


def _uniform(r: _Reader, key: str, default: int | None = None, minimum: int = 1) -> int:
    """An int field that Hunyuan configs may give per layer (a list): its one value."""
    v = r.cfg.get(key)
    if isinstance(v, list):
        vals = {x for x in v if isinstance(x, int) and not isinstance(x, bool)}
        if len(vals) != 1 or len(v) == 0 or any(not isinstance(x, int) or isinstance(x, bool) for x in v):
            raise r.fail(key, "per-layer values that differ are not modelled; apex-opt plans one "
                         "value for every MoE layer", v[:4])
        v = vals.pop()
        if v < minimum:
            raise r.fail(key, f"must be >= {minimum}", v)
        return v
    return r.get_int(key, default, minimum=minimum)


def _hunyuan_moe(r: _Reader, num_layers: int) -> MoESpec | None:
    """Hunyuan MoE (vLLM hunyuan_v1.py HunYuanSparseMoeBlock): num_experts experts of
    moe_intermediate_size, moe_topk routed per token (either may be a per-layer list), and with
    use_mixed_mlp_moe an always-on shared MLP of intermediate_size x num_shared_expert; every
    layer is MoE. Cross-layer attention (use_cla: layers sharing one KV cache) is refused."""
    if r.get_bool("use_cla", False):
        raise r.fail("use_cla", "cross-layer attention (KV caches shared by cla_share_factor "
                     "layers) is not modelled; its KV cache would be over-counted", True)
    n_exp = _uniform(r, "num_experts")
    if n_exp <= 1:
        return None
    topk = _uniform(r, "moe_topk")
    if topk > n_exp:
        raise r.fail("moe_topk", f"exceeds the number of experts (num_experts={n_exp})", topk)
    width = _uniform(r, "moe_intermediate_size") if r.has("moe_intermediate_size") \
        else r.get_int("intermediate_size")
    n_shared = _uniform(r, "num_shared_expert", 1, minimum=0) \
        if r.get_bool("use_mixed_mlp_moe", False) else 0
    return MoESpec(num_experts=n_exp, experts_per_token=topk, expert_intermediate_size=width,
                   num_shared_experts=n_shared,
                   shared_intermediate_size=n_shared * r.get_int("intermediate_size"),
                   moe_layers=tuple(range(num_layers)), norm_topk_prob=True)


def _moe_layer_list(r: _Reader, num_layers: int) -> tuple[int, ...]:
    """MoE layer indices of the DeepSeek-style keys: ``mlp_layer_types`` ('dense' / 'sparse' per
    layer: GLM-5.2), a per-layer 0/1 ``moe_layer_freq`` list (MiMo-V2-Flash, MiniMax-M3), else
    layers from ``first_k_dense_replace`` on whose index is a multiple of ``moe_layer_freq``
    (HF DeepseekV3: ``layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0``)."""
    types = r.cfg.get("mlp_layer_types")
    if isinstance(types, list) and types:
        if len(types) < num_layers or not {str(t) for t in types} <= {"dense", "sparse"}:
            raise r.fail("mlp_layer_types", f"must list 'dense' / 'sparse' for each of "
                         f"{num_layers} layers", types[:4])
        return tuple(i for i, t in enumerate(types[:num_layers]) if t == "sparse")
    freq = r.cfg.get("moe_layer_freq")
    if isinstance(freq, list):
        if len(freq) < num_layers or any(f not in (0, 1) or isinstance(f, bool) for f in freq):
            raise r.fail("moe_layer_freq", f"a per-layer list must hold 0 / 1 for each of "
                         f"{num_layers} layers", freq[:4])
        return tuple(i for i, f in enumerate(freq[:num_layers]) if f)
    first = r.get_int("first_k_dense_replace", 0, minimum=0, maximum=num_layers)
    step = r.get_int("moe_layer_freq", 1)
    return tuple(i for i in range(first, num_layers) if i % step == 0)


def _layer_kinds(r: _Reader, num_layers: int) -> tuple[tuple[str, ...], int, LinearAttnSpec | None]:
    """(per-layer attention kinds, sliding window, Gated DeltaNet layout) from ``layer_types``
    (one entry per layer: HF gpt-oss, Gemma-3, Qwen3-Next, Qwen3.5) or, without it, Qwen3-Next's
    ``full_attention_interval`` (layer i is full attention when (i + 1) % interval == 0, HF
    Qwen3NextConfig). Kinds are () when every layer is full attention (uniform model)."""
    lin = None
    if all(r.has(k) for k in _LINEAR_ATTN_KEYS):
        lin = LinearAttnSpec(num_k_heads=r.get_int("linear_num_key_heads"),
                             num_v_heads=r.get_int("linear_num_value_heads"),
                             head_k_dim=r.get_int("linear_key_head_dim"),
                             head_v_dim=r.get_int("linear_value_head_dim"),
                             conv_kernel=r.get_int("linear_conv_kernel_dim"))
    window = r.get_int("sliding_window", 0, minimum=0, maximum=1 << 31)
    types = r.cfg.get("layer_types")
    kinds: list[str]
    if isinstance(types, list) and types:
        if len(types) < num_layers:
            raise r.fail("layer_types", f"has {len(types)} entries for {num_layers} layers", len(types))
        kinds = []
        for t in types[:num_layers]:
            t = str(t)
            if t == "linear_attention":
                kinds.append("linear")
            elif t in _SLIDING_LAYER_TYPES and window > 0:
                kinds.append("sliding")
            else:  # full / global / chunked (Llama-4 chunks are counted as full, as before)
                kinds.append("full")
    elif isinstance(r.cfg.get("hybrid_layer_pattern"), list) and window > 0:
        # MiMo-V2-Flash (vLLM mimo_v2_flash.py is_compressed_softmax_layer): 1 = sliding window
        pat = r.cfg["hybrid_layer_pattern"]
        if len(pat) < num_layers or any(p not in (0, 1) or isinstance(p, bool) for p in pat):
            raise r.fail("hybrid_layer_pattern", f"must hold 0 (full) / 1 (sliding) for each of "
                         f"{num_layers} layers", pat[:4])
        kinds = ["sliding" if p == 1 else "full" for p in pat[:num_layers]]
    elif lin is not None and r.has("full_attention_interval"):
        step = r.get_int("full_attention_interval")
        kinds = ["full" if (i + 1) % step == 0 else "linear" for i in range(num_layers)]
    else:
        kinds = []
    if "linear" in kinds and lin is None:
        raise r.fail("linear_num_value_heads", "linear_attention layers need the linear_* keys")
    if all(k == "full" for k in kinds):
        return (), 0, None
    return tuple(kinds), (window if "sliding" in kinds else 0), (lin if "linear" in kinds else None)


def _nemotron_h_layers(r: _Reader) -> tuple[tuple[str, ...], tuple[int, ...], MambaSpec,
                                              tuple[int, ...], tuple[int, ...]] | None:
    """Nemotron-H (HF NemotronHConfig): every block of ``hybrid_override_pattern`` holds ONE
    sublayer -- 'M' Mamba2, '*' attention, '-' MLP, 'E' MoE (Nemotron-3) -- each with its own
    pre-norm and residual. They are grouped into the (mixer, MLP) layers the cost model walks: a
    mixer block with the MLP / MoE block that follows it, a mixer block followed by another mixer
    alone (MLP-free), an MLP / MoE block with no mixer before it alone (mixer 'none'). Returns
    (kinds, MLP-free layer indices, Mamba2 layout, MoE layer indices, blocks per layer) or None
    for other configs."""
    pattern = _block_pattern(r.cfg)
    if not isinstance(pattern, str) or not pattern or not all(r.has(k) for k in _MAMBA_KEYS):
        return None
    kinds: list[str] = []
    free: list[int] = []
    moe: list[int] = []
    blocks: list[int] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c in "-E":  # an MLP / MoE block with no mixer before it
            kinds.append("none")
            if c == "E":
                moe.append(len(kinds) - 1)
            blocks.append(1)
            i += 1
            continue
        kinds.append("mamba" if c == "M" else "full")
        if i + 1 < len(pattern) and pattern[i + 1] in "-E":
            if pattern[i + 1] == "E":
                moe.append(len(kinds) - 1)
            blocks.append(2)
            i += 2
        else:
            free.append(len(kinds) - 1)
            blocks.append(1)
            i += 1
    mb = MambaSpec(num_heads=r.get_int("mamba_num_heads"), head_dim=r.get_int("mamba_head_dim"),
                   state_size=r.get_int("ssm_state_size"), n_groups=r.get_int("n_groups"),
                   conv_kernel=r.get_int("conv_kernel"), chunk_size=r.get_int("chunk_size", 128))
    return tuple(kinds), tuple(free), mb, tuple(moe), tuple(blocks)


def _nemotron_moe(r: _Reader, layers: tuple[int, ...]) -> MoESpec:
    """Nemotron-3 MoE blocks (vLLM nemotron_h.py NemotronHMoE): n_routed_experts non-gated relu2
    experts of moe_intermediate_size (top num_experts_per_tok, sigmoid grouped routing), a
    non-gated shared MLP of moe_shared_expert_intermediate_size x n_shared_experts, and with
    ``moe_latent_size`` (LatentMoE, Nemotron-3 Super / Ultra) the routed experts in that width
    between two replicated projections."""
    n_exp = r.get_int("n_routed_experts")
    n_shared = r.get_int("n_shared_experts", 0, minimum=0)
    shared = n_shared * r.get_int("moe_shared_expert_intermediate_size", 0, minimum=0) if n_shared else 0
    latent = r.get_int("moe_latent_size", 0, minimum=0) if r.cfg.get("moe_latent_size") is not None else 0
    spec = _moe_spec(r, n_exp, "n_routed_experts", r.get_int("moe_intermediate_size"), n_shared,
                     shared, layers, r.get_bool("norm_topk_prob", True), False)
    assert spec is not None  # layers is not empty
    return spec.model_copy(update={"expert_gated": False, "latent_size": latent})


def _state_dtype(cfg: dict) -> str:
    dt = str(cfg.get("mamba_ssm_dtype") or cfg.get("mamba_ssm_cache_dtype") or "").lower()
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dt, "")


def _moe_spec(r: _Reader, n_exp: int, n_key: str, width: int, n_shared: int, shared_width: int,
              layers: tuple[int, ...], norm_topk: bool, shared_gate: bool) -> MoESpec | None:
    topk = r.get_int("num_experts_per_tok")
    if topk > n_exp:
        raise r.fail("num_experts_per_tok", f"exceeds the number of experts ({n_key}={n_exp})", topk)
    if not layers:
        return None
    return MoESpec(num_experts=n_exp, experts_per_token=topk, expert_intermediate_size=width,
                   num_shared_experts=n_shared, shared_intermediate_size=shared_width,
                   moe_layers=layers, norm_topk_prob=norm_topk, shared_expert_gate=shared_gate)


def _build(cfg: Any, name: str, source: str) -> ModelSpec:
    if not isinstance(cfg, dict):
        raise InputError(f"expected a JSON object (an HF config.json), got {type(cfg).__name__}",
                         source=source)
    text, prefix = _text_section(cfg, source)
    if "num_hidden_layers" not in text and isinstance(text.get("layers_block_type"), list):
        # newer HF NemotronHConfig (Nemotron-3 Ultra): the layer count is the block list's length
        text = {**text, "num_hidden_layers": len(text["layers_block_type"])}
    r = _Reader(text, source, prefix)
    arch, model_type = _architecture(text, cfg)
    _reject_unmodelled(arch, model_type, text, source)
    _reject_ssm(arch, model_type, text, source)
    _reject_non_decoder(arch, model_type, text, cfg, source)
    _vision_warning(arch, cfg, prefix, name)
    _sparse_attention_warning(arch, text, name)
    _check_quantization(text, source)
    text, notes, origin = hf_families.normalize(text, model_type)
    r = _Reader(text, source, prefix, origin)
    if notes:
        from ..errors import warn

        for note in notes:
            warn(f"{name}: {note}")
    hidden = r.get_int("hidden_size")
    layers = r.get_int("num_hidden_layers", maximum=_MAX_LAYERS)
    heads = r.get_int("num_attention_heads")
    kv_heads = r.get_int("num_key_value_heads", heads)
    if kv_heads > heads or heads % kv_heads:
        raise r.fail("num_key_value_heads",
                     f"must divide num_attention_heads ({heads})", kv_heads)
    if r.has("head_dim"):
        head_dim = r.get_int("head_dim")
    else:
        if hidden % heads:
            raise r.fail("num_attention_heads",
                         f"does not divide hidden_size ({hidden}) and head_dim is not given", heads)
        head_dim = hidden // heads
    vocab = r.get_int("vocab_size")
    max_pos = r.get_int("max_position_embeddings", maximum=1 << 31)
    mla = _mla(r)
    moe, dense_override = _moe(r, model_type, layers)
    needs_dense = moe is None or len(moe.moe_layers) < layers
    if dense_override is not None:
        inter = dense_override
    elif needs_dense:
        inter = r.get_int("intermediate_size")
    else:
        inter = r.get_int("intermediate_size", 0, minimum=0)
    if mla is not None:
        head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    kinds, window, lin = _layer_kinds(r, layers)
    nh = _nemotron_h_layers(r)
    free: tuple[int, ...] = ()
    blocks: tuple[int, ...] = ()
    mamba = None
    if nh is not None:
        kinds, free, mamba, moe_layers, blocks = nh
        layers = len(kinds)
        if moe_layers:
            moe = _nemotron_moe(r, moe_layers)
        pat = _block_pattern(r.cfg)
        if len(pat or "") != r.get_int("num_hidden_layers", maximum=_MAX_LAYERS):
            raise r.fail("hybrid_override_pattern", "must have one block per hidden layer "
                         "(num_hidden_layers)", pat)
    return ModelSpec(
        name=name, architecture=arch, source=source, model_type=model_type,
        hidden_size=hidden, num_layers=layers, vocab_size=vocab, num_attention_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim, intermediate_size=inter,
        tie_word_embeddings=r.get_bool("tie_word_embeddings", hf_families.tied_by_default(model_type)),
        max_position_embeddings=max_pos,
        position_embeddings=(max_pos + hf_families.LEARNED_POSITION_TYPES[model_type]
                             if model_type in hf_families.LEARNED_POSITION_TYPES else 0),
        attention="mla" if mla is not None else "gqa", mla=mla, dsa=_dsa(r, mla), moe=moe,
        # attention_bias (Llama-style), and the families' own switches for linear biases
        # (ChatGLM add_qkv_bias, StarCoder2 use_bias, InternLM / Falcon bias), read when boolean
        qkv_bias=r.get_bool("attention_bias", model_type in _QKV_BIAS_MODEL_TYPES)
        or any(text.get(k) is True for k in ("add_qkv_bias", "use_bias", "bias")),
        qk_norm=model_type.startswith("qwen3") or _is_gemma4(text),
        qk_norm_tp=(r.get_bool("use_qk_norm", False)
                    and str(text.get("qk_norm_type", "")).lower() == "per_layer"),
        checkpoint_dtype=_checkpoint_dtype(text),
        quant_scheme=_quant_scheme(text, _checkpoint_dtype(text)),
        layer_kinds=kinds, sliding_window=window, linear_attn=lin, mamba=mamba,
        mlp_free_layers=free, layer_blocks=blocks,
        mlp_gated=nh is None and model_type not in hf_families.UNGATED_MLP_TYPES,
        attn_output_gate=bool(kinds) and r.get_bool("attn_output_gate", lin is not None),
        attn_shapes=_attn_shapes(r, kinds, kv_heads, head_dim) if mla is None else (),
        # Gemma-4: q_norm / k_norm per head, four hidden-width norms per layer, and per MoE
        # layer three more norms + the router's input scale (4 x hidden) + per_expert_scale
        **({"layer_norms": 4, "moe_layer_extra_params": (4 * hidden + moe.num_experts)
            if moe is not None else 0} if _is_gemma4(text) else {}),
        state_dtype=_state_dtype(text) if (lin is not None or mamba is not None) else "",
    )


# ---------------------------------------------------------------- quantization exclusions
#: components every linear layer of which is left unquantized by an MXFP4 checkpoint: vLLM's
#: Mxfp4Config.get_quant_method (0.12-0.18) returns UnquantizedLinearMethod for every LinearBase
#: ("MXFP4 linear layer is not implemented") and Mxfp4MoEMethod only for FusedMoE; SGLang 0.5.9
#: mxfp4.py likewise quantizes FusedMoE only. gpt-oss's modules_to_not_convert (self_attn,
#: router, embed_tokens, lm_head) says the same.
_MXFP4_EXCLUDE = ("attention", "mlp", "shared_experts")
#: checkpoint module names of each component's projections, per naming family ({L} = the layer
#: prefix): the first family whose names the exclusion patterns match is the checkpoint's
_ATTN_NAMES = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "q": ("q_proj",),
               "q_a": ("q_a_proj",), "q_b": ("q_b_proj",), "kv_a": ("kv_a_proj_with_mqa",),
               "kv_b": ("kv_b_proj",), "indexer_q_b": ("indexer.wq_b",),
               "indexer_k": ("indexer.wk",), "indexer_weights": ("indexer.weights_proj",)}
_MLP_FAMILIES = (("mlp", ("gate_proj", "up_proj", "down_proj")),
                 ("feed_forward", ("gate_proj", "up_proj", "down_proj")))
_SHARED_FAMILIES = (("mlp.shared_experts", ("gate_proj", "up_proj", "down_proj")),
                    ("mlp.shared_expert", ("gate_proj", "up_proj", "down_proj")),
                    ("feed_forward.shared_expert", ("gate_proj", "up_proj", "down_proj")))
_EXPERT_FAMILIES = (("mlp.experts.0", ("gate_proj", "up_proj", "down_proj")),
                    ("block_sparse_moe.experts.0", ("w1", "w2", "w3")),
                    ("feed_forward.experts.0", ("gate_proj", "up_proj", "down_proj")),
                    ("mlp.experts", ("gate_up_proj", "down_proj")))
_LAYER_PREFIXES = ("model.layers", "language_model.model.layers", "model.language_model.layers")


def _exclusion_patterns(q: dict) -> list[str]:
    """The module-exclusion list of a quantization config, whatever the producer calls it: fp8 /
    AWQ / mxfp4 ``modules_to_not_convert`` and fp8 ``ignored_layers`` (vLLM Fp8Config.from_config
    reads both), compressed-tensors and ModelOpt-in-config.json ``ignore`` (vLLM ModelOptConfig
    reads "ignore" from config.json), ModelOpt ``exclude_modules`` (flat, or nested under
    ``quantization`` as in hf_quant_config.json), GPTQ ``dynamic`` "-:" entries."""
    out: list[str] = []
    sources = [q]
    if isinstance(q.get("quantization"), dict):
        sources.append(q["quantization"])
    for src in sources:
        for key in ("modules_to_not_convert", "ignored_layers", "ignore", "exclude_modules"):
            v = src.get(key)
            if isinstance(v, list):
                out += [str(x) for x in v if isinstance(x, str) and x]
    # GPTQ (GPTQModel) per-module overrides: a "-:<regex>" key leaves matching modules unquantized
    # (vLLM gptq_utils.get_dynamic_override: re.match on the layer prefix -> False = skip)
    dyn = q.get("dynamic")
    if isinstance(dyn, dict):
        out += ["re:" + k[2:] for k in dyn if isinstance(k, str) and k.startswith("-:")]
    return out


def _pattern_regex(patterns: list[str]):
    """One compiled regex matching a module name the way the engines read each entry:
    ``re:<regex>`` (compressed-tensors: re.match), a wildcard (ModelOpt exclude_modules are
    fnmatch patterns, vLLM ModelOptConfig.is_layer_excluded), or a plain name that equals the
    module or one of its parents (vLLM is_layer_skipped exact prefix; ModelOpt substring)."""
    import fnmatch
    import re

    parts = []
    for p in patterns:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error:
                continue
            parts.append(f"(?:{p[3:]})")
        elif any(c in p for c in "*?["):
            parts.append(fnmatch.translate(p))
        else:
            parts.append(re.escape(p) + r"(?:\..*)?\Z")
    return re.compile("|".join(parts)) if parts else None


def _quant_exclude(q: Any, spec: ModelSpec) -> tuple[str, ...]:
    """Which linear weights a quantized checkpoint leaves in bf16 (ModelSpec.quant_exclude).

    A component (or one attention projection) counts as excluded when the checkpoint's exclusion
    patterns match its module in every layer that has it (e.g. moonshotai/Kimi-K2.5's
    ``ignore: [re:.*self_attn.*, re:.*shared_experts.*, re:.*mlp\\.(gate|up|gate_up|down)_proj.*]``
    -> attention, shared experts and the dense layer stay bf16: int4 routed experts only;
    nvidia/DeepSeek-V3.1-NVFP4's exclude_modules name q_a/q_b/kv_a/kv_b_proj of every layer but
    not o_proj). Patterns naming layers beyond num_hidden_layers (MTP) do not count. MXFP4
    checkpoints quantize the MoE experts only (_MXFP4_EXCLUDE)."""
    if not isinstance(q, dict):
        return ()
    if _is_mxfp4(q) and str(q.get("quant_method", "")).lower() == "mxfp4":
        return tuple(c for c in _MXFP4_EXCLUDE if _has_component(spec, c))
    rx = _pattern_regex(_exclusion_patterns(q))
    if rx is None:
        return ()

    kind_of = getattr(spec, "kind_of", lambda i: "full")

    def matched(layers, names_of) -> bool:
        """Every layer's modules matched in one naming family."""
        layers = list(layers)
        if not layers:
            return False
        for pre in _LAYER_PREFIXES:
            if all(all(rx.match(n) for n in names_of(f"{pre}.{i}")) for i in layers):
                return True
        return False

    out: list[str] = []
    all_layers = range(spec.num_layers)
    attn_ops = [op.name for op in spec.attention_linear_ops()]
    full = [i for i in all_layers if kind_of(i) != "linear"]
    attn_hit = [op for op in attn_ops if op in _ATTN_NAMES and matched(
        full, lambda L, op=op: [f"{L}.self_attn.{x}" for x in _ATTN_NAMES[op]])]
    # Gated DeltaNet layers (hybrid models): their projections live under linear_attn
    lin = [i for i in all_layers if kind_of(i) == "linear"]
    lin_ok = not lin or matched(lin, lambda L: [f"{L}.linear_attn.in_proj_qkvz",
                                                f"{L}.linear_attn.out_proj"])
    if attn_hit and len(attn_hit) == len(attn_ops) and lin_ok:
        out.append("attention")
    else:
        out += [f"attention.{op}" for op in attn_hit]
    moe_layers = [i for i in all_layers if spec.is_moe_layer(i)]
    dense_layers = [i for i in all_layers if not spec.is_moe_layer(i)]
    shared_fams, expert_fams = _SHARED_FAMILIES, _EXPERT_FAMILIES
    if spec.model_type.startswith("gemma4"):
        # Gemma-4 MoE layers (HF Gemma4TextDecoderLayer): the always-on dense MLP (our shared
        # expert) is layers.N.mlp, the routed experts layers.N.experts -- not under mlp
        shared_fams, expert_fams = _MLP_FAMILIES[:1], (("experts", ("gate_up_proj", "down_proj")),)
    for comp, layers, families in (("mlp", dense_layers, _MLP_FAMILIES),
                                   ("shared_experts", moe_layers if spec.shared_expert_linear_ops() else [],
                                    shared_fams),
                                   ("experts", moe_layers, expert_fams)):
        if any(matched(layers, lambda L, m=mod, ns=names: [f"{L}.{m}.{n}" for n in ns])
               for mod, names in families):
            out.append(comp)
    return tuple(out)


#: ModelOpt per-layer quant_algo -> (stored dtype, apex-opt quant_scheme), as vLLM / SGLang
#: ModelOptMixedPrecisionConfig dispatch them (FP8: static per-tensor W8A8, MXFP8: E8M0 scale per
#: 32 -> per-group fp8, FP8_PB_WO: 128x128 block weight-only, NVFP4 W4A4, W4A16_NVFP4 weight-only,
#: W4A16_AWQ / W4A8_AWQ int4 groups of 128)
_MODELOPT_LAYER_ALGOS = {"FP8": ("fp8", "fp8_tensor"), "MXFP8": ("fp8", "fp8_block"),
                         "FP8_PB_WO": ("fp8", "fp8_block"), "NVFP4": ("fp4", "nvfp4"),
                         "W4A16_NVFP4": ("fp4", "nvfp4_w4a16"), "W4A16_AWQ": ("int4", "int4_group"),
                         "W4A8_AWQ": ("int4", "int4_group")}
_DTYPE_RANK = {"bf16": 0, "fp8": 1, "int4": 2, "fp4": 2}


def _mixed_precision(q: Any) -> dict[str, tuple[str, str]] | None:
    """A ModelOpt MIXED_PRECISION checkpoint's (dtype, scheme) per component ('attention', 'mlp',
    'shared_experts', 'experts'; the algorithm most of its modules use) from ``quantized_layers``
    (flat in config.json's quantization_config, or nested under ``quantization`` as in
    hf_quant_config.json); None for any other checkpoint. Modules absent from the list are not
    quantized (ModelOptMixedPrecisionConfig: no entry -> unquantized method)."""
    if not isinstance(q, dict) or _modelopt_algo(q) != "MIXED_PRECISION":
        return None
    layers = q.get("quantized_layers")
    if not isinstance(layers, dict) and isinstance(q.get("quantization"), dict):
        layers = q["quantization"].get("quantized_layers")
    if not isinstance(layers, dict):
        return None
    from collections import Counter

    votes: dict[str, Counter] = {}
    for mod, v in layers.items():
        algo = str(v.get("quant_algo", "")).upper() if isinstance(v, dict) else ""
        comp = _mixed_component(str(mod))
        if comp is None or algo not in _MODELOPT_LAYER_ALGOS:
            continue
        votes.setdefault(comp, Counter())[_MODELOPT_LAYER_ALGOS[algo]] += 1
    # most modules' algorithm; ties to the lower precision (the larger share of bytes saved)
    return {c: max(cnt.items(), key=lambda kv: (kv[1], _DTYPE_RANK[kv[0][0]]))[0]
            for c, cnt in votes.items()}


def _mixed_component(module: str) -> str | None:
    """The apex-opt weight component of a checkpoint module name (None: embeddings, lm_head,
    routers, MTP and vision modules, which apex-opt does not count as quantized linear weights)."""
    if ".layers." not in module or module.startswith("mtp") or ".mtp." in module:
        return None
    if "vision" in module or "visual" in module:
        return None
    if "shared_expert" in module:
        return "shared_experts"
    if ".experts" in module:
        return "experts"
    if any(k in module for k in (".self_attn.", ".linear_attn.", ".attn.", ".attention.")):
        return "attention"
    if ".mixer." in module:  # Nemotron-H: mamba / attention mixer projections (not its MoE gate)
        return None if module.endswith(".gate") else "attention"
    if ".mlp." in module or ".feed_forward." in module:
        return None if module.endswith((".gate", ".router")) else "mlp"
    return None


def _mixed_main(mixed: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    """(dtype, scheme) a MIXED_PRECISION checkpoint is served as: its routed experts' (most of
    an MoE's weights), else its dense MLP's, else the lowest precision it stores."""
    for comp in ("experts", "mlp"):
        if comp in mixed:
            return mixed[comp]
    return max(mixed.values(), key=lambda ds: _DTYPE_RANK[ds[0]]) if mixed else None


def _mixed_components(mixed: dict[str, tuple[str, str]], spec: ModelSpec) -> tuple[tuple[str, ...],
                                                                                  tuple[str, ...]]:
    """(quant_exclude, quant_fp8) of a MIXED_PRECISION checkpoint: components the model has that
    the list leaves unquantized, and those it stores in fp8 below a lower-precision main dtype."""
    main = _mixed_main(mixed)
    excl, fp8 = [], []
    for comp in ("attention", "mlp", "shared_experts", "experts"):
        if comp != "attention" and not _has_component(spec, comp):
            continue
        if comp == "experts" and spec.moe is None:
            continue
        got = mixed.get(comp)
        if got is None:
            excl.append(comp)
        elif main is not None and got[0] == "fp8" and main[0] != "fp8":
            fp8.append(comp)
    return tuple(excl), tuple(fp8)


def _checkpoint_kv_dtype(q: Any) -> str:
    """'fp8' when a ModelOpt checkpoint declares an FP8 KV cache, else ''. The rule of vLLM's
    get_kv_cache_quant_algo_string (vllm/utils/torch_utils.py, 0.14.0-0.18.0 wheels; ModelOpt only:
    quant_method modelopt*, hf_quant_config.json's included): kv_cache_scheme (nested under
    ``quantization`` or flat) {dynamic: false, num_bits: 8, type: float}, else kv_cache_quant_algo
    "FP8"; SGLang 0.5.3+ ModelRunner.configure_kv_cache_dtype likewise takes the ModelOpt config's
    kv_cache_quant_algo FP8 (derived from kv_cache_scheme too, modelopt_quant.py)."""
    if not isinstance(q, dict) or not str(q.get("quant_method", "")).lower().startswith("modelopt"):
        return ""
    inner = q.get("quantization") if isinstance(q.get("quantization"), dict) else q
    kv = (inner.get("kv_cache_scheme") or q.get("kv_cache_scheme")
          or inner.get("kv_cache_quant_algo") or q.get("kv_cache_quant_algo"))
    if isinstance(kv, dict):
        ok = kv.get("dynamic") is False and kv.get("num_bits") == 8 and kv.get("type") == "float"
        return "fp8" if ok else ""
    return "fp8" if isinstance(kv, str) and kv.lower() == "fp8" else ""


def _has_component(spec: ModelSpec, comp: str) -> bool:
    if comp == "mlp":
        return spec.num_dense_layers > 0 and spec.intermediate_size > 0
    if comp == "shared_experts":
        return bool(spec.shared_expert_linear_ops())
    return True


def load_model(ref: str | Path) -> ModelSpec:
    """A bundled model name (``apex-opt models list``) or a path to a config.json / its directory."""
    from ..bundled import load_model_config

    cfg, source, name = load_model_config(str(ref))
    return ModelSpec.from_hf_config(_with_hf_quant_config(cfg, source), name=name, source=source)


def _with_hf_quant_config(cfg: Any, source: str) -> Any:
    """ModelOpt checkpoints may describe their quantization only in ``hf_quant_config.json`` next to
    ``config.json`` (e.g. NVFP4 exports of nvidia-modelopt 0.2x); vLLM reads that file when
    config.json has no quantization_config (ModelOptNvFp4Config.get_config_filenames), so it is
    read here too, for the checkpoint dtype only."""
    if not isinstance(cfg, dict) or "quantization_config" in cfg:
        return cfg
    p = Path(source)
    side = p.parent / "hf_quant_config.json"
    if p.name != "config.json" or not side.is_file():
        return cfg
    import json

    try:
        hq = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return cfg
    if not isinstance(hq, dict):
        return cfg
    return {**cfg, "quantization_config": {"quant_method": "modelopt", **hq}}
