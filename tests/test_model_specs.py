"""Golden tests of the HF-config model adapter against published parameter counts and KV sizes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apex_opt.errors import ApexWarning, InputError
from apex_opt.registry import load_model_config, model_names
from apex_opt.specs.model import LinearOp, ModelSpec, load_model

# name: (published total params, published active params or None, KV bytes/token bf16 all layers)
PUBLISHED = {
    "llama-3.1-8b": (8.03e9, None, 131_072),
    "llama-3.1-70b": (70.55e9, None, 327_680),
    "llama-3.1-405b": (405.9e9, None, 516_096),
    "llama-3.2-1b": (1.24e9, None, 32_768),
    "mistral-large-2407": (122.6e9, None, 360_448),
    "mixtral-8x7b": (46.7e9, 12.9e9, 131_072),
    "mixtral-8x22b": (140.6e9, 39.2e9, 229_376),
    "qwen2.5-32b": (32.76e9, None, 262_144),
    "qwen3-32b": (32.8e9, None, 262_144),
    "qwen3-30b-a3b": (30.5e9, 3.3e9, 98_304),     # "3.3B" has 2 digits: 3.35B rounds to it
    "qwen2-57b-a14b": (57.4e9, 14.2e9, 57_344),
    "qwen3-235b-a22b": (235.1e9, 22.1e9, 192_512),
    "deepseek-v3": (671e9, 37.4e9, 70_272),
    "kimi-k2": (1.03e12, 32.7e9, 70_272),
}

REQUIRED = {"llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "mistral-large-2407", "mixtral-8x7b",
            "mixtral-8x22b", "qwen3-235b-a22b", "deepseek-v3", "kimi-k2", "qwen2.5-32b",
            "qwen3-32b", "qwen2-57b-a14b"}


def test_every_bundled_model_has_a_golden_row():
    names = set(model_names())
    assert REQUIRED <= names
    assert names == set(PUBLISHED), "add published numbers for new bundled models"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_params_and_kv(name):
    total, active, kv = PUBLISHED[name]
    m = load_model(name)
    assert m.params_total == pytest.approx(total, rel=0.01)
    if active is None:
        assert m.moe is None
        assert m.params_active == m.params_total
    else:
        assert m.moe is not None
        # 1 %, or half a unit of the published figure's last digit when that is coarser
        assert m.params_active == pytest.approx(active, rel=max(0.01, 0.05e9 / active + 1e-3))
    assert m.kv_bytes_per_token() == kv
    assert m.kv_bytes_per_token(1) * 2 == kv


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_layer_sum_matches_total(name):
    """params_total (summed by layer kind) equals an explicit per-layer loop over components."""
    m = load_model(name)
    layers = sum(sum(m.params_by_component(i).values()) for i in range(m.num_layers))
    assert m.params_total == m.embedding_params + layers + m.final_norm_params + m.lm_head_params
    for i in range(m.num_layers):
        c = m.params_by_component(i)
        assert set(c) == {"attention", "mlp", "router", "experts", "shared_experts", "norms"}
        assert (c["mlp"] == 0) == m.is_moe_layer(i)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_json_roundtrip_and_frozen(name):
    m = load_model(name)
    again = ModelSpec.model_validate(json.loads(json.dumps(m.model_dump(mode="json"))))
    assert again == m
    with pytest.raises(Exception):
        m.num_layers = 1  # type: ignore[misc]
    s = m.summary()
    json.dumps(s)
    assert s["params_total"] == m.params_total and s["kv_bytes_per_token"] == m.kv_bytes_per_token()


def test_deepseek_v3_layout_excludes_mtp():
    m = load_model("deepseek-v3")
    assert m.attention == "mla" and m.mla is not None and m.moe is not None
    assert m.num_layers == 61  # num_nextn_predict_layers=1 is not an extra decoder layer
    assert m.moe.moe_layers == tuple(range(3, 61))
    assert not m.is_moe_layer(2) and m.is_moe_layer(3)
    assert m.moe.num_shared_experts == 1 and m.moe.shared_intermediate_size == 2048
    assert m.kv_elems_per_token_per_layer() == 512 + 64
    assert m.checkpoint_dtype == "fp8"
    ops = {op.name: op for op in m.attention_linear_ops()}
    assert ops["q_a"] == LinearOp(name="q_a", n=1536, k=7168, split="replicated")
    assert ops["q_b"] == LinearOp(name="q_b", n=128 * 192, k=1536, split="column")
    assert ops["kv_a"] == LinearOp(name="kv_a", n=576, k=7168, split="replicated")
    assert ops["kv_b"] == LinearOp(name="kv_b", n=128 * 256, k=512, split="column")
    assert ops["o"] == LinearOp(name="o", n=7168, k=128 * 128, split="row")
    assert m.router_params() == 7168 * 256
    # one token over 1000 keys: q·k over 192 dims + p·v over 128 dims, 128 heads
    assert m.attention_flops_per_token(1000) == 2 * 128 * 1000 * (192 + 128)


def test_kimi_k2_is_deepseek_v3_with_384_experts():
    m = load_model("kimi-k2")
    assert m.moe is not None and m.mla is not None
    assert m.moe.num_experts == 384 and m.num_attention_heads == 64
    assert m.moe.moe_layers == tuple(range(1, 61))
    assert m.vocab_size == 163840


def test_gqa_shapes_and_flops():
    m = load_model("llama-3.1-70b")
    assert m.attention_linear_ops() == [
        LinearOp(name="qkv", n=(64 + 2 * 8) * 128, k=8192, split="column"),
        LinearOp(name="o", n=8192, k=8192, split="row")]
    assert m.dense_mlp_linear_ops() == [
        LinearOp(name="gate_up", n=2 * 28672, k=8192, split="column"),
        LinearOp(name="down", n=8192, k=28672, split="row")]
    assert m.expert_linear_ops() == [] and m.shared_expert_linear_ops() == [] and m.router_params() == 0
    # dense model: linear FLOPs = 2 x (all weights but the embedding lookup and the norms)
    norms = sum(m.params_by_component(i)["norms"] for i in range(m.num_layers)) + m.final_norm_params
    assert m.flops_per_token(0) == pytest.approx(2 * (m.params_total - m.embedding_params - norms
                                                      + m.vocab_size * m.hidden_size - m.lm_head_params))
    assert m.attention_flops_per_token(4096) == 4 * 64 * 128 * 4096
    assert m.flops_per_token(4096) - m.flops_per_token(0) == pytest.approx(80 * 4 * 64 * 128 * 4096)


def test_explicit_head_dim_and_qk_norm():
    m = load_model("qwen3-32b")
    assert m.head_dim == 128 and m.hidden_size // m.num_attention_heads == 80
    assert m.qk_norm and not m.qkv_bias
    assert m.params_by_component(0)["norms"] == 2 * 5120 + 2 * 128
    assert m.attention_linear_ops()[0].n == (64 + 16) * 128
    assert m.attention_linear_ops()[1].k == 64 * 128


def test_qwen2_qkv_bias_counted():
    m = load_model("qwen2.5-32b")
    assert m.qkv_bias
    weights = sum(op.params for op in m.attention_linear_ops())
    assert m.params_by_component(0)["attention"] == weights + (40 + 16) * 128


def test_mixtral_and_qwen_moe_layouts():
    mx = load_model("mixtral-8x7b")
    assert mx.moe is not None and mx.moe.num_experts == 8 and mx.moe.experts_per_token == 2
    assert mx.moe.expert_intermediate_size == 14336 and mx.moe.shared_intermediate_size == 0
    assert all(mx.is_moe_layer(i) for i in range(32))
    assert mx.expert_linear_ops()[0].n == 2 * 14336
    q2 = load_model("qwen2-57b-a14b")
    assert q2.moe is not None and q2.moe.shared_expert_gate
    assert q2.moe.shared_intermediate_size == 20480 and q2.moe.expert_intermediate_size == 2560
    assert [op.name for op in q2.shared_expert_linear_ops()] == [
        "shared_gate_up", "shared_down", "shared_expert_gate"]
    c = q2.params_by_component(0)
    assert c["experts"] == 64 * 3 * 3584 * 2560
    assert c["shared_experts"] == 3 * 3584 * 20480 + 3584
    assert c["router"] == 3584 * 64
    q3 = load_model("qwen3-235b-a22b")
    assert q3.moe is not None and q3.moe.norm_topk_prob and q3.moe.num_shared_experts == 0


def test_qwen_moe_sparse_step_and_mlp_only_layers():
    cfg, _, _ = load_model_config("qwen2-57b-a14b")
    m = ModelSpec.from_hf_config({**cfg, "decoder_sparse_step": 2, "mlp_only_layers": [1]}, "x", "t")
    assert m.moe is not None
    assert m.moe.moe_layers == tuple(range(3, 28, 2))
    assert m.params_by_component(1)["mlp"] == 3 * 3584 * 18944
    assert m.params_by_component(1)["experts"] == 0


def test_text_config_nesting_llama4_maverick():
    """Multimodal wrapper: the language model lives under text_config (vision tower not counted)."""
    cfg = {
        "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
        "tie_word_embeddings": False,
        "text_config": {"model_type": "llama4_text", "hidden_size": 5120, "intermediate_size": 8192,
                        "intermediate_size_mlp": 16384, "num_hidden_layers": 48,
                        "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
                        "num_local_experts": 128, "num_experts_per_tok": 1,
                        "interleave_moe_layer_step": 2, "vocab_size": 202048,
                        "max_position_embeddings": 1048576},
        "vision_config": {"hidden_size": 1408, "num_hidden_layers": 34, "model_type": "llama4_vision"},
    }
    with pytest.warns(ApexWarning, match="vision tower"):  # the language model is planned
        m = ModelSpec.from_hf_config(cfg, "llama-4-maverick", "test")
    assert m.architecture == "Llama4ForConditionalGeneration" and m.model_type == "llama4_text"
    assert m.moe is not None and m.moe.moe_layers == tuple(range(1, 48, 2))
    assert m.intermediate_size == 16384 and m.moe.shared_intermediate_size == 8192
    assert m.params_total == pytest.approx(400e9, rel=0.01)   # published: 400B total, 17B active
    assert m.params_active == pytest.approx(17e9, rel=0.02)
    assert m.kv_bytes_per_token() == 48 * 2 * 8 * 128 * 2


def test_text_config_nesting_gemma3_style_errors_name_nested_field():
    cfg = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
           "text_config": {"model_type": "gemma3_text", "hidden_size": 5376, "head_dim": 128,
                           "intermediate_size": 21504, "num_attention_heads": 32,
                           "num_hidden_layers": 62, "num_key_value_heads": 16,
                           "vocab_size": 262208, "max_position_embeddings": 131072}}
    m = ModelSpec.from_hf_config(cfg, "gemma-3-27b", "test")
    assert m.tie_word_embeddings and m.lm_head_params == 0   # Gemma ties by default
    assert m.head_dim == 128 and m.kv_bytes_per_token() == 62 * 2 * 16 * 128 * 2
    bad = {**cfg, "text_config": {**cfg["text_config"], "num_hidden_layers": -3}}
    with pytest.raises(InputError, match=r"text_config\.num_hidden_layers.*-3"):
        ModelSpec.from_hf_config(bad, "g", "cfg.json")


def _llama8b() -> dict:
    cfg, _, _ = load_model_config("llama-3.1-8b")
    return dict(cfg)


def test_unknown_keys_ignored():
    base = load_model("llama-3.1-8b")
    m = ModelSpec.from_hf_config({**_llama8b(), "some_future_knob": [1, 2], "rope_scaling": "x"},
                                 "llama-3.1-8b", base.source)
    assert m == base


@pytest.mark.parametrize("edit, field, pattern", [
    ({"hidden_size": None}, "hidden_size", "missing"),
    ({"num_hidden_layers": -4}, "num_hidden_layers", "-4"),
    ({"num_hidden_layers": 0}, "num_hidden_layers", ">= 1"),
    ({"num_attention_heads": "32"}, "num_attention_heads", "integer"),
    ({"num_key_value_heads": 5}, "num_key_value_heads", "divide"),
    ({"num_key_value_heads": 64}, "num_key_value_heads", "divide"),
    ({"vocab_size": 1.5}, "vocab_size", "integer"),
    ({"hidden_size": 4100}, "num_attention_heads", "does not divide"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings", "true or false"),
    ({"intermediate_size": 10**12}, "intermediate_size", "absurd"),
])
def test_bad_values_raise_input_error(edit, field, pattern):
    cfg = {k: v for k, v in {**_llama8b(), **edit}.items() if v is not None}
    with pytest.raises(InputError) as exc:
        ModelSpec.from_hf_config(cfg, "x", "bad/config.json")
    assert exc.value.source == "bad/config.json" and exc.value.field == field
    assert pattern in str(exc.value) and "bad/config.json" in str(exc.value)


def test_bad_moe_values():
    cfg, _, _ = load_model_config("mixtral-8x7b")
    with pytest.raises(InputError, match="num_experts_per_tok.*exceeds"):
        ModelSpec.from_hf_config({**cfg, "num_experts_per_tok": 9}, "x", "s")
    q, _, _ = load_model_config("qwen3-235b-a22b")
    with pytest.raises(InputError, match="mlp_only_layers.*out of range"):
        ModelSpec.from_hf_config({**q, "mlp_only_layers": [94]}, "x", "s")
    d, _, _ = load_model_config("deepseek-v3")
    with pytest.raises(InputError, match="kv_lora_rank"):
        ModelSpec.from_hf_config({**d, "kv_lora_rank": 0}, "x", "s")


@pytest.mark.parametrize("cfg", [[1, 2], "llama", None, 3])
def test_non_dict_config(cfg):
    with pytest.raises(InputError, match="expected a JSON object"):
        ModelSpec.from_hf_config(cfg, "x", "s")  # type: ignore[arg-type]


def test_text_config_not_a_mapping():
    with pytest.raises(InputError, match="text_config"):
        ModelSpec.from_hf_config({"model_type": "x", "text_config": [1]}, "x", "s")


def test_load_from_file_and_directory(tmp_path):
    d = tmp_path / "my-model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(_llama8b()))
    from_dir = load_model(str(d))
    from_file = load_model(str(d / "config.json"))
    assert from_dir.name == from_file.name == "my-model"
    assert from_dir.source == str(d / "config.json")
    assert from_dir.params_total == load_model("llama-3.1-8b").params_total
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_llama8b()))
    assert load_model(str(other)).name == "other"
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(InputError, match="list.json"):
        load_model(str(tmp_path / "list.json"))
    with pytest.raises(InputError, match="not found"):
        load_model(str(tmp_path / "missing" / "config.json"))


def test_unknown_bundled_name_lists_names():
    with pytest.raises(InputError) as exc:
        load_model("llama-9")
    msg = str(exc.value)
    assert "llama-9" in msg
    for name in model_names():
        assert name in msg


@settings(max_examples=60, deadline=None)
@given(layers=st.integers(1, 12), kv=st.sampled_from([1, 2, 4]), group=st.integers(1, 4),
       hd=st.sampled_from([32, 64, 128]), experts=st.integers(0, 16), topk=st.integers(1, 4),
       step=st.integers(1, 3), tie=st.booleans())
def test_counts_consistent_for_random_configs(layers, kv, group, hd, experts, topk, step, tie):
    heads = kv * group
    cfg = {"model_type": "qwen2_moe", "hidden_size": heads * hd, "num_hidden_layers": layers,
           "num_attention_heads": heads, "num_key_value_heads": kv, "intermediate_size": 256,
           "vocab_size": 1000, "max_position_embeddings": 4096, "tie_word_embeddings": tie,
           "num_experts": experts, "num_experts_per_tok": min(topk, max(experts, 1)),
           "moe_intermediate_size": 64, "decoder_sparse_step": step,
           "shared_expert_intermediate_size": 128}
    m = ModelSpec.from_hf_config(cfg, "rand", "gen")
    per_layer = [m.params_by_component(i) for i in range(layers)]
    assert m.params_total == (m.embedding_params + m.lm_head_params + m.final_norm_params
                              + sum(sum(c.values()) for c in per_layer))
    assert m.params_active <= m.params_total
    assert (m.params_active == m.params_total) == (m.moe is None or m.moe.experts_per_token
                                                   == m.moe.num_experts)
    assert m.lm_head_params == (0 if tie else 1000 * heads * hd)
    assert m.kv_bytes_per_token() == layers * 2 * kv * hd * 2
    n_moe = sum(1 for i in range(layers) if experts and (i + 1) % step == 0)
    assert sum(m.is_moe_layer(i) for i in range(layers)) == n_moe
