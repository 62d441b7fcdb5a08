"""HF config.json conventions of the model families that do not spell a Llama-style config.

``config.json`` files of older or non-Llama families name the same quantities differently
(GPT-2's ``n_embd``, ChatGLM's ``num_layers``, MPT's ``d_model``), leave some to their
``transformers`` config class's defaults (GPT-2's MLP width, Falcon's multi-query attention,
Gemma-2's alternating sliding-window layers), and differ in structure (an ungated MLP). vLLM reads
them through ``transformers`` (``PretrainedConfig.attribute_map`` and each config class's
``__init__``), so :func:`normalize` does the same before :mod:`apex_opt.specs.model` reads the
canonical keys. Only keys the file leaves out are filled in; an explicit canonical key wins.
Pure functions over dicts (no I/O); the one warning goes through :func:`apex_opt.errors.warn`.
"""

from __future__ import annotations

from typing import Any

#: canonical key <- the family spellings ``transformers`` maps onto it (``attribute_map`` of
#: GPT2Config / GPTBigCodeConfig / GPTJConfig / CodeGenConfig: n_embd, n_layer, n_head, n_inner;
#: FalconConfig / BloomConfig: n_layer, n_head (Bloom's old n_embed); MptConfig: d_model, n_layers,
#: n_heads; OPTConfig: ffn_dim; ChatGLMConfig / ExaoneConfig: num_layers, ChatGLM's
#: ffn_hidden_size, padded_vocab_size and kv_channels (= head_dim, also Qwen-1's); Phi-3-small's
#: ff_intermediate_size (Phi3SmallConfig))
ALIASES: dict[str, tuple[str, ...]] = {
    "hidden_size": ("n_embd", "d_model", "n_embed"),
    "num_hidden_layers": ("n_layer", "num_layers", "n_layers"),
    "num_attention_heads": ("n_head", "n_heads"),
    "intermediate_size": ("n_inner", "ffn_hidden_size", "ffn_dim", "ff_intermediate_size"),
    "vocab_size": ("padded_vocab_size",),
    "head_dim": ("kv_channels",),
}

#: The keys vLLM reads a model's maximum context from, in its order; it takes the SMALLEST one
#: present (vllm/config.py ``_get_and_verify_max_len`` possible_keys: OPT, GPT-2, MPT, ChatGLM2,
#: Command-R, Whisper, others) and assumes 2,048 tokens with a warning when none is.
MAX_LEN_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                "model_max_length", "max_target_positions", "max_sequence_length",
                "max_seq_length", "seq_len")
DEFAULT_MAX_LEN = 2048

#: model_types whose decoder MLP is up -> activation -> down with no gate projection (vLLM's
#: model files: phi.py PhiMLP fc1/fc2, starcoder2.py Starcoder2MLP c_fc/c_proj, gpt_bigcode.py and
#: gpt2.py c_fc/c_proj, gpt_j.py fc_in/fc_out, gpt_neox.py and falcon.py and bloom.py and
#: persimmon.py dense_h_to_4h/dense_4h_to_h, opt.py fc1/fc2, mpt.py up_proj/down_proj, codegen
#: (GPT-J layout), nemotron.py and arcee.py up_proj -> relu^2 -> down_proj, apertus.py up_proj ->
#: xIELU -> down_proj)
UNGATED_MLP_TYPES = frozenset({"phi", "starcoder2", "gpt_bigcode", "gpt2", "gptj", "gpt_neox",
                               "falcon", "RefinedWeb", "RefinedWebModel", "bloom", "persimmon",
                               "opt", "mpt", "codegen", "nemotron", "arcee", "apertus"})

#: Families whose MLP width defaults to 4 x hidden when the config leaves it out (GPT2Config /
#: GPTJConfig / CodeGenConfig n_inner None, FalconConfig ffn_hidden_size None, BloomConfig has no
#: width key at all); MPT's is expansion_ratio x d_model (MptConfig default 4).
FOUR_X_MLP_TYPES = frozenset({"gpt2", "gpt_bigcode", "gptj", "codegen", "falcon", "RefinedWeb",
                              "RefinedWebModel", "bloom"})

#: model_types whose config class ties the LM head to the embedding when config.json does not say
#: (PretrainedConfig's default True is kept by GPT2Config, GPTBigCodeConfig, FalconConfig,
#: OPTConfig, BloomConfig, MptConfig, Starcoder2Config, CohereConfig / Cohere2Config and the Gemma
#: configs; LlamaConfig, MistralConfig, Qwen2Config, PhiConfig, GPTJConfig, GPTNeoXConfig and
#: most newer classes set False)
TIED_BY_DEFAULT = frozenset({"gpt2", "gpt_bigcode", "falcon", "RefinedWeb", "RefinedWebModel",
                             "opt", "bloom", "mpt", "starcoder2", "cohere", "cohere2"})


def tied_by_default(model_type: str) -> bool:
    return model_type in TIED_BY_DEFAULT or model_type.startswith("gemma")


#: Families with a learned absolute-position table of max_position_embeddings rows (GPT-2 /
#: GPT-BigCode ``wpe``; OPT's OPTLearnedPositionalEmbedding has 2 extra rows, its offset).
LEARNED_POSITION_TYPES = {"gpt2": 0, "gpt_bigcode": 0, "opt": 2}


def _present(cfg: dict, key: str) -> bool:
    return cfg.get(key) is not None


def normalize(cfg: dict, model_type: str) -> tuple[dict, list[str], dict[str, str]]:
    """The text config with its canonical keys filled in from the family's spellings and config
    defaults, the notes worth a warning (only the assumed context length, as vLLM warns), and
    for each canonical key read from another spelling, that spelling (so an error can name the
    key the file really has). The caller's dict is not modified."""
    out = dict(cfg)
    notes: list[str] = []
    origin: dict[str, str] = {}
    for key, spellings in ALIASES.items():
        if not _present(out, key):
            alias = next((a for a in spellings if _present(out, a)), None)
            if alias is not None:
                out[key] = out[alias]
                origin[key] = alias
    _kv_heads(out, model_type)
    if model_type == "dbrx":
        _dbrx_ffn(out)
    _mlp_width(out, model_type)
    # (a non-positive value stays in: the reader then names it as invalid)
    lens = [out[k] for k in MAX_LEN_KEYS if isinstance(out.get(k), (int, float))
            and not isinstance(out.get(k), bool)]
    if lens:
        # vLLM: the smallest of the keys present (e.g. Command-R: max_position_embeddings 8,192,
        # model_max_length 131,072 -> 8,192)
        key = min((k for k in MAX_LEN_KEYS if out.get(k) in lens), key=lambda k: out[k])
        if key != "max_position_embeddings":
            origin["max_position_embeddings"] = key
        out["max_position_embeddings"] = out[key]
    elif not _present(out, "max_position_embeddings"):
        out["max_position_embeddings"] = DEFAULT_MAX_LEN
        notes.append(f"the config gives no maximum context ({', '.join(MAX_LEN_KEYS)}); "
                     f"assuming {DEFAULT_MAX_LEN:,} tokens as vLLM does")
    types = default_layer_types(out, model_type)
    if types is not None:
        out["layer_types"] = types
    return out, notes, origin


def _kv_heads(cfg: dict, model_type: str) -> None:
    """Multi-query / grouped-query spellings: Falcon (new_decoder_architecture: num_kv_heads, else
    multi_query -- FalconConfig default True -- one KV head), GPT-BigCode (multi_query, default
    True), ChatGLM (multi_query_attention: multi_query_group_num), MPT (attn_config.kv_n_heads)."""
    if _present(cfg, "num_key_value_heads"):
        return
    if model_type in ("falcon", "RefinedWeb", "RefinedWebModel"):
        if cfg.get("new_decoder_architecture") and _present(cfg, "num_kv_heads"):
            cfg["num_key_value_heads"] = cfg["num_kv_heads"]
        elif _present(cfg, "n_head_kv"):
            cfg["num_key_value_heads"] = cfg["n_head_kv"]
        elif cfg.get("multi_query", True) and not cfg.get("new_decoder_architecture"):
            cfg["num_key_value_heads"] = 1
    elif model_type == "gpt_bigcode":
        if cfg.get("multi_query", True):
            cfg["num_key_value_heads"] = 1
    elif model_type == "chatglm":
        if cfg.get("multi_query_attention") and _present(cfg, "multi_query_group_num"):
            cfg["num_key_value_heads"] = cfg["multi_query_group_num"]
    elif model_type in ("mpt", "dbrx"):
        attn = cfg.get("attn_config")
        if isinstance(attn, dict) and _present(attn, "kv_n_heads"):
            cfg["num_key_value_heads"] = attn["kv_n_heads"]


def _dbrx_ffn(cfg: dict) -> None:
    """DBRX keeps its MoE in ``ffn_config`` (vLLM dbrx.py DbrxExperts: moe_num_experts experts of
    ffn_hidden_size, gated, moe_top_k per token, every layer): the Mixtral-style keys."""
    ffn = cfg.get("ffn_config")
    if not isinstance(ffn, dict):
        return
    for key, src in (("num_local_experts", "moe_num_experts"), ("num_experts_per_tok", "moe_top_k"),
                     ("intermediate_size", "ffn_hidden_size")):
        if not _present(cfg, key) and _present(ffn, src):
            cfg[key] = ffn[src]


def _mlp_width(cfg: dict, model_type: str) -> None:
    """Qwen-1 (model_type qwen): intermediate_size is both halves of its gated MLP (vLLM qwen.py
    QWenMLP(hidden, intermediate_size // 2)); families whose config class defaults the width."""
    if model_type == "qwen" and isinstance(cfg.get("intermediate_size"), int):
        cfg["intermediate_size"] = cfg["intermediate_size"] // 2
    if _present(cfg, "intermediate_size") or not isinstance(cfg.get("hidden_size"), int):
        return
    if model_type == "mpt":
        ratio = cfg.get("expansion_ratio", 4)
        if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and ratio > 0:
            cfg["intermediate_size"] = int(ratio * cfg["hidden_size"])
    elif model_type in FOUR_X_MLP_TYPES:
        cfg["intermediate_size"] = 4 * cfg["hidden_size"]


def default_layer_types(cfg: dict, model_type: str) -> list[str] | None:
    """``layer_types`` as the transformers config class derives it when config.json has none
    (vLLM's model code then reads ``config.layer_types``), or None to leave the config as it is:

    * Gemma-2 (Gemma2Config): layer i is sliding when (i + 1) % 2, i.e. every even layer;
    * Gemma-3 / Cohere-2 (Gemma3TextConfig, Cohere2Config): sliding unless (i + 1) is a multiple of
      ``sliding_window_pattern`` (default 6 / 4);
    * gpt-oss (GptOssConfig): alternating as Gemma-2;
    * Qwen2 / Qwen3 and their MoE (Qwen2Config & co.): with use_sliding_window, layers from
      max_window_layers on are sliding (the released checkpoints set use_sliding_window false).
    Only with a positive ``sliding_window``."""
    if _present(cfg, "layer_types"):
        return None
    window = cfg.get("sliding_window")
    n = cfg.get("num_hidden_layers")
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0 \
            or not isinstance(n, int) or n <= 0:
        return None

    def every(pattern: Any) -> list[str] | None:
        if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 1:
            return None
        return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]

    if model_type in ("gemma2", "gpt_oss"):
        return every(2)
    if model_type in ("gemma3", "gemma3_text"):
        return every(cfg.get("sliding_window_pattern", 6))
    if model_type == "cohere2":
        return every(cfg.get("sliding_window_pattern", 4))
    if model_type in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe") and cfg.get("use_sliding_window"):
        first = cfg.get("max_window_layers", n)
        if isinstance(first, int) and not isinstance(first, bool):
            return ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
    return None
