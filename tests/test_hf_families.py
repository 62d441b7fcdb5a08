"""config.json files of families that do not spell a Llama-style config (specs/hf_families.py):
GPT-2-style key names, ungated MLPs, multi-query flags, learned position tables, the context-length
keys vLLM reads, and the sliding-window layer layout transformers derives when ``layer_types`` is
absent (Gemma-2 / Gemma-3 / Cohere-2 / Qwen2).

Configs are inline dicts with the published config.json values (only the keys the loader reads);
parameter totals are checked against the published sizes (model cards / papers, cited per case).
Before these conventions, Phi-2 and StarCoder2 were planned with a gated MLP (+30-38 % weights),
GPT-J / StarCoder / ChatGLM / EXAONE / Baichuan configs stopped at a "required field is missing",
and Gemma-2 / Gemma-3 were planned with every layer holding the whole context.
"""

from __future__ import annotations

import warnings

import pytest

from apex_opt.errors import ApexWarning
from apex_opt.memory import activation_peak_bytes, replica_memory
from apex_opt.registry import load_cluster
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import ModelSpec
from apex_opt.specs.plan import ReplicaConfig


def _m(cfg: dict) -> ModelSpec:
    return ModelSpec.from_hf_config(cfg, "m", "test")


PHI2 = {"architectures": ["PhiForCausalLM"], "model_type": "phi", "hidden_size": 2560,
        "intermediate_size": 10240, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 32, "vocab_size": 51200, "max_position_embeddings": 2048,
        "partial_rotary_factor": 0.4, "hidden_act": "gelu_new", "tie_word_embeddings": False}
GPTJ = {"architectures": ["GPTJForCausalLM"], "model_type": "gptj", "n_embd": 4096, "n_layer": 28,
        "n_head": 16, "n_inner": None, "n_positions": 2048, "rotary_dim": 64, "vocab_size": 50400,
        "tie_word_embeddings": False}
STARCODER = {"architectures": ["GPTBigCodeForCausalLM"], "model_type": "gpt_bigcode", "n_embd": 6144,
             "n_layer": 40, "n_head": 48, "n_inner": 24576, "n_positions": 8192, "multi_query": True,
             "vocab_size": 49152}


def _starcoder2(hidden, layers, heads, kv, inter) -> dict:
    return {"architectures": ["Starcoder2ForCausalLM"], "model_type": "starcoder2",
            "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": 49152,
            "max_position_embeddings": 16384, "sliding_window": 4096, "use_bias": True,
            "hidden_act": "gelu_pytorch_tanh"}


CHATGLM3 = {"architectures": ["ChatGLMModel"], "model_type": "chatglm", "hidden_size": 4096,
            "ffn_hidden_size": 13696, "num_layers": 28, "num_attention_heads": 32, "kv_channels": 128,
            "multi_query_attention": True, "multi_query_group_num": 2, "padded_vocab_size": 65024,
            "seq_length": 8192, "add_qkv_bias": True}
EXAONE = {"architectures": ["ExaoneForCausalLM"], "model_type": "exaone", "hidden_size": 4096,
          "intermediate_size": 14336, "num_layers": 32, "num_attention_heads": 32,
          "num_key_value_heads": 8, "vocab_size": 102400, "max_position_embeddings": 32768,
          "activation_function": "silu", "tie_word_embeddings": False}
GEMMA2_9B = {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": 3584,
             "intermediate_size": 14336, "num_hidden_layers": 42, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 256000,
             "max_position_embeddings": 8192, "sliding_window": 4096,
             "hidden_activation": "gelu_pytorch_tanh"}
GEMMA3_27B = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
              "text_config": {"model_type": "gemma3_text", "hidden_size": 5376,
                              "intermediate_size": 21504, "num_hidden_layers": 62,
                              "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128,
                              "sliding_window": 1024, "sliding_window_pattern": 6,
                              "max_position_embeddings": 131072, "vocab_size": 262208}}


@pytest.mark.parametrize("cfg, published, tol", [
    # microsoft/phi-2 model card: 2.7B; HF safetensors 2,779,683,840 (biases included)
    (PHI2, 2.7797e9, 0.002),
    # EleutherAI/gpt-j-6b model card: 6,053,381,344 parameters
    (GPTJ, 6.0534e9, 0.002),
    # StarCoder (bigcode/starcoder, arXiv 2305.06161): 15.5B
    (STARCODER, 15.5e9, 0.005),
    # StarCoder2 (arXiv 2402.19173) 3B / 7B: 3.03B / 7.17B (Starcoder2Config ties the LM head)
    (_starcoder2(3072, 30, 24, 2, 12288), 3.03e9, 0.005),
    (_starcoder2(4608, 32, 36, 4, 18432), 7.17e9, 0.005),
    # THUDM/chatglm3-6b: 6.24B
    (CHATGLM3, 6.24e9, 0.005),
    # google/gemma-2-9b: 9.24B
    (GEMMA2_9B, 9.24e9, 0.005),
])
def test_published_sizes(cfg, published, tol):
    assert _m(cfg).params_total == pytest.approx(published, rel=tol)


def test_exaone_num_layers_and_non_embedding_size():
    # LGAI-EXAONE/EXAONE-3.5-7.8B-Instruct model card: 6.98B parameters without embeddings
    m = _m(EXAONE)
    assert m.num_layers == 32
    assert m.params_total - 2 * 102400 * 4096 == pytest.approx(6.98e9, rel=0.005)


def test_ungated_mlp_families():
    for cfg in (PHI2, GPTJ, STARCODER, _starcoder2(3072, 30, 24, 2, 12288)):
        m = _m(cfg)
        assert not m.mlp_gated
        assert [op.name for op in m.dense_mlp_linear_ops()] == ["up", "down"]
    # Llama-layout families keep the fused gate|up projection
    for cfg in (CHATGLM3, EXAONE, GEMMA2_9B):
        assert _m(cfg).mlp_gated
    # the MLP's activation peak counts one up output, not gate + up
    phi = _m(PHI2)
    gated = phi.model_copy(update={"mlp_gated": True})
    cfg = ReplicaConfig(tp=1, max_num_seqs=1)
    diff = activation_peak_bytes(gated, cfg, 8192) - activation_peak_bytes(phi, cfg, 8192)
    assert diff == pytest.approx(8192 * 10240 * 2, rel=0.01)


def test_key_spellings_and_defaults():
    j = _m(GPTJ)
    # GPT-J: n_embd / n_layer / n_head / n_positions; n_inner None -> 4 x n_embd
    assert (j.hidden_size, j.num_layers, j.num_attention_heads) == (4096, 28, 16)
    assert j.intermediate_size == 4 * 4096 and j.max_position_embeddings == 2048
    assert not j.tie_word_embeddings
    g = _m(CHATGLM3)
    # ChatGLM: kv_channels = head_dim, multi_query_group_num KV heads, padded vocab, seq_length
    assert (g.head_dim, g.num_kv_heads, g.vocab_size) == (128, 2, 65024)
    assert g.max_position_embeddings == 8192 and g.intermediate_size == 13696
    assert g.qkv_bias


def test_multi_query_flags():
    assert _m(STARCODER).num_kv_heads == 1  # GPTBigCodeConfig.multi_query
    falcon7 = {"architectures": ["FalconForCausalLM"], "model_type": "falcon", "hidden_size": 4544,
               "num_hidden_layers": 32, "num_attention_heads": 71, "multi_query": True,
               "parallel_attn": True, "vocab_size": 65024, "max_position_embeddings": 2048}
    f = _m(falcon7)
    assert f.num_kv_heads == 1 and f.head_dim == 64 and f.intermediate_size == 4 * 4544
    assert f.tie_word_embeddings and not f.mlp_gated
    # tiiuae/falcon-7b: 6.92B in safetensors (7B)
    assert f.params_total == pytest.approx(6.92e9, rel=0.005)
    falcon40 = {**falcon7, "hidden_size": 8192, "num_hidden_layers": 60, "num_attention_heads": 128,
                "new_decoder_architecture": True, "num_kv_heads": 8}
    assert _m(falcon40).num_kv_heads == 8
    old40 = {"architectures": ["RWForCausalLM"], "model_type": "RefinedWeb", "hidden_size": 8192,
             "n_layer": 60, "n_head": 128, "n_head_kv": 8, "vocab_size": 65024}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApexWarning)
        assert _m(old40).num_kv_heads == 8


def test_learned_position_tables():
    s = _m(STARCODER)
    assert s.position_embeddings == 8192
    assert s.embedding_params == (49152 + 8192) * 6144
    opt = {"architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": 5120,
           "ffn_dim": 20480, "num_hidden_layers": 40, "num_attention_heads": 40,
           "vocab_size": 50272, "max_position_embeddings": 2048}
    o = _m(opt)
    # OPTLearnedPositionalEmbedding: max_position_embeddings + 2 rows; facebook/opt-13b: 12.85B
    assert o.position_embeddings == 2050 and o.intermediate_size == 20480 and not o.mlp_gated
    assert o.params_total == pytest.approx(12.85e9, rel=0.005)
    # rotary families hold no table
    assert _m(PHI2).position_embeddings == 0


def test_context_length_keys_as_vllm_reads_them():
    # Command-R: max_position_embeddings 8192 and model_max_length 131072 -> the smaller
    cmd = {"architectures": ["CohereForCausalLM"], "model_type": "cohere", "hidden_size": 8192,
           "intermediate_size": 22528, "num_hidden_layers": 40, "num_attention_heads": 64,
           "vocab_size": 256000, "max_position_embeddings": 8192, "model_max_length": 131072}
    c = _m(cmd)
    assert c.max_position_embeddings == 8192 and c.tie_word_embeddings
    baichuan = {"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan",
                "hidden_size": 5120, "intermediate_size": 13696, "num_hidden_layers": 40,
                "num_attention_heads": 40, "vocab_size": 125696, "model_max_length": 4096}
    assert _m(baichuan).max_position_embeddings == 4096
    bare = {k: v for k, v in baichuan.items() if k != "model_max_length"}
    with pytest.warns(ApexWarning, match="assuming 2,048 tokens"):
        assert _m(bare).max_position_embeddings == 2048


def test_default_sliding_layers():
    g2 = _m(GEMMA2_9B)
    # Gemma2Config: layer i sliding when (i + 1) % 2 -> every even layer
    assert g2.sliding_window == 4096
    assert [k for k in g2.layer_kinds[:4]] == ["sliding", "full", "sliding", "full"]
    assert g2.layer_kinds.count("sliding") == 21
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApexWarning)  # vision-language wrapper
        g3 = _m(GEMMA3_27B)
    # Gemma3TextConfig sliding_window_pattern 6: layers 5, 11, ..., 59 are global
    assert [i for i, k in enumerate(g3.layer_kinds) if k == "full"] == list(range(5, 62, 6))
    cohere2 = {"architectures": ["Cohere2ForCausalLM"], "model_type": "cohere2", "hidden_size": 4096,
               "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 8, "vocab_size": 256000, "max_position_embeddings": 131072,
               "sliding_window": 4096}
    assert _m(cohere2).layer_kinds.count("full") == 8  # pattern 4
    # an explicit layer_types wins
    listed = {**GEMMA2_9B, "layer_types": ["full_attention"] * 42}
    assert _m(listed).layer_kinds == ()
    # Qwen2: the released checkpoints carry a sliding_window with use_sliding_window false
    qwen = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
            "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 32768,
            "sliding_window": 131072, "max_window_layers": 28, "use_sliding_window": False}
    assert _m(qwen).layer_kinds == ()
    on = _m({**qwen, "sliding_window": 4096, "use_sliding_window": True, "max_window_layers": 20})
    assert [i for i, k in enumerate(on.layer_kinds) if k == "sliding"] == list(range(20, 28))


def _kv_tokens(model: ModelSpec, engine: str) -> int:
    """KV-cache tokens of ``model`` at TP1 on one H100 (max_model_len 32,768) under ``engine``."""
    dev = load_cluster("h100-sxm-1x8").pools[0].device
    return replica_memory(model, dev, ReplicaConfig(tp=1, max_model_len=32768),
                          load_engine(engine)).kv_tokens


def _gemma3(**update) -> tuple[ModelSpec, ModelSpec]:
    """Gemma-3 27B as its config lays it out, and the same with every layer global."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApexWarning)  # vision-language wrapper
        m = _m({**GEMMA3_27B, **update})
    return m, m.model_copy(update={"layer_kinds": (), "sliding_window": 0})


def test_gemma3_windowed_layers_hold_more_tokens():
    """vLLM V1's hybrid manager keeps only the window of the sliding layers, so Gemma-3 27B on
    one H100 holds several times the tokens it would if every layer kept the whole context."""
    m, flat = _gemma3()
    assert _kv_tokens(m, "vllm") > 3 * _kv_tokens(flat, "vllm")


def test_errors_name_the_spelling_in_the_file():
    from apex_opt.errors import InputError

    with pytest.raises(InputError, match="field 'n_layer': must be >= 1"):
        _m({**STARCODER, "n_layer": 0})
    with pytest.raises(InputError, match="field 'seq_length'"):
        _m({**CHATGLM3, "seq_length": 1.5})


ERNIE45_300B = {"architectures": ["Ernie4_5_MoeForCausalLM"], "model_type": "ernie4_5_moe",
                "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 54,
                "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 103424,
                "max_position_embeddings": 131072, "moe_num_experts": 64, "moe_k": 8,
                "moe_intermediate_size": 3584, "moe_layer_start_index": 3, "moe_layer_interval": 1,
                "moe_num_shared_experts": 0, "tie_word_embeddings": False}
HUNYUAN_A13B = {"architectures": ["HunYuanMoEV1ForCausalLM"], "model_type": "hunyuan_v1_moe",
                "hidden_size": 4096, "intermediate_size": 3072, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                "num_experts": 64, "moe_topk": [8] * 32, "moe_intermediate_size": [3072] * 32,
                "num_shared_expert": [1] * 32, "use_mixed_mlp_moe": True, "use_cla": False,
                "vocab_size": 128167, "max_position_embeddings": 32768, "tie_word_embeddings": True}


def test_ernie_and_hunyuan_moe_keys():
    # baidu/ERNIE-4.5-300B-A47B: 300B total, 47B activated; before, its moe_num_experts / moe_k
    # keys were not read and it was planned as a 48B dense model
    e = _m(ERNIE45_300B)
    assert e.moe is not None and (e.moe.num_experts, e.moe.experts_per_token) == (64, 8)
    assert e.moe.moe_layers == tuple(range(3, 54))  # moe_layer_start_index 3
    assert e.params_total == pytest.approx(300e9, rel=0.01)
    assert e.params_active == pytest.approx(47.5e9, rel=0.02)
    # tencent/Hunyuan-A13B: 80B total, 13B active; per-layer lists of one value
    h = _m(HUNYUAN_A13B)
    assert (h.moe.num_experts, h.moe.experts_per_token, h.moe.num_shared_experts) == (64, 8, 1)
    assert h.params_total == pytest.approx(80e9, rel=0.01)
    assert h.params_active == pytest.approx(13e9, rel=0.03)


def test_moe_layouts_not_modelled_are_refused():
    from apex_opt.errors import InputError

    with pytest.raises(InputError, match="field 'moe_topk': per-layer values that differ"):
        _m({**HUNYUAN_A13B, "moe_topk": [8] * 16 + [4] * 16})
    with pytest.raises(InputError, match="field 'use_cla': cross-layer attention"):
        _m({**HUNYUAN_A13B, "use_cla": True, "cla_share_factor": 2})
    with pytest.raises(InputError, match="field 'moe_num_experts': per-modality"):
        _m({**ERNIE45_300B, "moe_num_experts": [64, 64]})


def test_dbrx_olmoe_apertus():
    # databricks/dbrx-base: ffn_config / attn_config nested keys; 132B total, 36B active
    dbrx = {"architectures": ["DbrxForCausalLM"], "model_type": "dbrx", "d_model": 6144,
            "n_heads": 48, "n_layers": 40, "max_seq_len": 32768, "vocab_size": 100352,
            "attn_config": {"kv_n_heads": 8}, "tie_word_embeddings": False,
            "ffn_config": {"ffn_hidden_size": 10752, "moe_num_experts": 16, "moe_top_k": 4}}
    d = _m(dbrx)
    assert (d.moe.num_experts, d.moe.experts_per_token, d.num_kv_heads) == (16, 4, 8)
    assert d.params_total == pytest.approx(132e9, rel=0.01)
    assert d.params_active == pytest.approx(36e9, rel=0.02)
    # allenai/OLMoE-1B-7B: experts of intermediate_size (no moe_intermediate_size); 6.9B / 1.3B
    olmoe = {"architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "hidden_size": 2048,
             "intermediate_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 16,
             "num_experts": 64, "num_experts_per_tok": 8, "vocab_size": 50304,
             "max_position_embeddings": 4096, "tie_word_embeddings": False}
    o = _m(olmoe)
    assert o.moe.expert_intermediate_size == 1024
    assert o.params_total == pytest.approx(6.9e9, rel=0.01)
    assert o.params_active == pytest.approx(1.3e9, rel=0.02)
    # swiss-ai/Apertus-8B: up_proj -> xIELU -> down_proj (no gate); 8B
    apertus = {"architectures": ["ApertusForCausalLM"], "model_type": "apertus", "hidden_size": 4096,
               "intermediate_size": 21504, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 8, "vocab_size": 131072, "max_position_embeddings": 65536,
               "hidden_act": "xielu", "tie_word_embeddings": False}
    a = _m(apertus)
    assert not a.mlp_gated and a.params_total == pytest.approx(8.05e9, rel=0.01)


def test_sglang_keeps_gemma_sliding_layers_whole():
    """SGLang 0.5 switches its hybrid SWA memory off for Gemma-2 / Gemma-3 (server_args
    disable_hybrid_swa_memory): every layer keeps every token there, unlike vLLM V1."""
    m, flat = _gemma3(architectures=["Gemma3ForCausalLM"])
    assert "Gemma3ForCausalLM" in load_engine("sglang").hybrid_swa_disabled_architectures
    assert _kv_tokens(m, "sglang") == _kv_tokens(flat, "sglang")
    # gpt-oss-style sliding layers (not in the list) still get SGLang's SWA pool
    other = m.model_copy(update={"architecture": "GptOssForCausalLM"})
    assert _kv_tokens(other, "sglang") > _kv_tokens(m, "sglang")


def test_vllm_before_the_hybrid_manager_keeps_sliding_layers_whole():
    m, flat = _gemma3()
    assert _kv_tokens(m, "vllm@0.9.2") == _kv_tokens(flat, "vllm@0.9.2")
    assert _kv_tokens(m, "vllm@0.10.0") > 3 * _kv_tokens(m, "vllm@0.9.2")


def test_an_invalid_context_key_is_named_not_skipped():
    from apex_opt.errors import InputError

    with pytest.raises(InputError, match="field 'max_position_embeddings': must be >= 1"):
        _m({**CHATGLM3, "max_position_embeddings": -5})


def test_phi3_small_is_planned_dense_with_a_warning():
    # microsoft/Phi-3-small-8k-instruct: ff_intermediate_size, block-sparse attention on every
    # other layer (dense_attention_every_n_layers 2); 7.39B
    cfg = {"architectures": ["Phi3SmallForCausalLM"], "model_type": "phi3small", "hidden_size": 4096,
           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "ff_intermediate_size": 14336, "vocab_size": 100352, "max_position_embeddings": 8192,
           "blocksparse_block_size": 64, "blocksparse_num_local_blocks": 16,
           "blocksparse_vert_stride": 8, "dense_attention_every_n_layers": 2,
           "tie_word_embeddings": True}
    with pytest.warns(ApexWarning, match="block-sparse attention \\(16 of 32 layers"):
        m = _m(cfg)
    assert m.intermediate_size == 14336 and m.mlp_gated
    assert m.params_total == pytest.approx(7.39e9, rel=0.005)


def test_language_model_sections_of_multimodal_wrappers():
    # OpenGVLab/InternVL2_5-8B: the language model (InternLM2.5-7B, 7.74B) under llm_config
    llm = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "hidden_size": 4096,
           "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 92553, "max_position_embeddings": 32768,
           "tie_word_embeddings": False}
    cfg = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "llm_config": llm,
           "vision_config": {"hidden_size": 1024, "num_hidden_layers": 24}}
    with pytest.warns(ApexWarning, match="vision-language model; planning for its language model"):
        m = _m(cfg)
    assert m.params_total == pytest.approx(7.74e9, rel=0.005)
    from apex_opt.errors import InputError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ApexWarning)
        with pytest.raises(InputError, match="field 'llm_config.num_attention_heads'"):
            _m({**cfg, "llm_config": {**llm, "num_attention_heads": 0}})
