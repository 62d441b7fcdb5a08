"""Per-kind attention shapes (ModelSpec.attn_shapes): Gemma-4's 512-wide global layers with their
own KV heads and K = V checkpoints, MiMo-V2-Flash's sliding layers with their own KV heads and
V heads narrower than K. Parameter totals against the published sizes, KV bytes per token of
each kind in both engines' managers, attention cost per kind, and that models with one shape are
unchanged.

Configs are inline dicts with the published config.json values (google/gemma-4-26B-A4B,
google/gemma-4-31B, XiaomiMiMo/MiMo-V2-Flash); only the keys the loader reads.
"""

from __future__ import annotations

import numpy as np
import pytest

from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.errors import InputError
from apex_opt.memory import (kv_bytes_per_token_per_layer, replica_memory, stage_kv_layout,
                             weight_bytes_by_component)
from apex_opt.registry import load_cluster
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import ModelSpec
from apex_opt.specs.plan import ReplicaConfig

_GEMMA_TYPES = (["sliding_attention"] * 5 + ["full_attention"])


def _gemma4_26b(**kw) -> dict:
    text = {"model_type": "gemma4_text", "hidden_size": 2816, "num_hidden_layers": 30,
            "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
            "global_head_dim": 512, "num_global_key_value_heads": 2, "attention_k_eq_v": True,
            "enable_moe_block": True, "intermediate_size": 2112, "moe_intermediate_size": 704,
            "num_experts": 128, "top_k_experts": 8, "hidden_size_per_layer_input": 0,
            "num_kv_shared_layers": 0, "sliding_window": 1024, "vocab_size": 262144,
            "max_position_embeddings": 262144, "tie_word_embeddings": True,
            "hidden_activation": "gelu_pytorch_tanh", "layer_types": _GEMMA_TYPES * 5}
    text.update(kw)
    return {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
            "text_config": text}


def _gemma4_31b(**kw) -> dict:
    return _gemma4_26b(**{"hidden_size": 5376, "num_hidden_layers": 60, "num_attention_heads": 32,
                          "num_key_value_heads": 16, "num_global_key_value_heads": 4,
                          "enable_moe_block": False, "intermediate_size": 21504,
                          "num_experts": None, "top_k_experts": None,
                          "moe_intermediate_size": None, "layer_types": _GEMMA_TYPES * 10, **kw})


def _mimo_v2_flash(**kw) -> dict:
    pattern = [0] + ([1] * 4 + [0]) + ([1] * 5 + [0]) * 7
    cfg = {"architectures": ["MiMoV2FlashForCausalLM"], "model_type": "mimo_v2_flash",
           "num_hidden_layers": 48, "hidden_size": 4096, "num_attention_heads": 64,
           "num_key_value_heads": 4, "head_dim": 192, "v_head_dim": 128,
           "intermediate_size": 16384, "vocab_size": 152576, "max_position_embeddings": 262144,
           "sliding_window": 128, "swa_num_attention_heads": 64, "swa_num_key_value_heads": 8,
           "swa_head_dim": 192, "swa_v_head_dim": 128, "hybrid_layer_pattern": pattern,
           "moe_layer_freq": [0] + [1] * 47, "moe_intermediate_size": 2048,
           "n_routed_experts": 256, "n_shared_experts": None, "num_experts_per_tok": 8,
           "norm_topk_prob": True, "scoring_func": "sigmoid", "add_swa_attention_sink_bias": True,
           "add_full_attention_sink_bias": False, "tie_word_embeddings": False,
           "attention_bias": False, "torch_dtype": "bfloat16"}
    cfg.update(kw)
    return cfg


def _m(cfg: dict) -> ModelSpec:
    return ModelSpec.from_hf_config(cfg, "m", "test")


@pytest.fixture(scope="module")
def node():
    return load_cluster("h200-1x8")


# ------------------------------------------------------------------------------ parameters
def test_published_parameter_totals():
    # Gemma-4 model card (ai.google.dev/gemma/docs/core/model_card_4): 26B A4B 25.2B total /
    # 3.8B active, 31B 30.7B; MiMo-V2-Flash README (github.com/XiaomiMiMo/MiMo-V2-Flash):
    # 309B total / 15B active (MTP layers not counted: not loaded for serving)
    g26, g31, mimo = _m(_gemma4_26b()), _m(_gemma4_31b()), _m(_mimo_v2_flash())
    assert g26.params_total / 1e9 == pytest.approx(25.2, abs=0.1)
    assert g26.params_active / 1e9 == pytest.approx(3.8, abs=0.1)
    assert g31.params_total / 1e9 == pytest.approx(30.7, abs=0.1)
    assert g31.params_active == g31.params_total
    assert mimo.params_total / 1e9 == pytest.approx(309, abs=1.5)
    assert mimo.params_active / 1e9 == pytest.approx(15, abs=0.6)


def test_gemma4_layer_shapes():
    m = _m(_gemma4_26b())
    assert m.kind_counts() == {"sliding": 25, "full": 5}
    full, sw = m.attn_shape("full"), m.attn_shape("sliding")
    assert (full.num_kv_heads, full.head_dim, full.k_eq_v) == (2, 512, True)
    assert (sw.num_kv_heads, sw.head_dim, sw.k_eq_v) == (8, 256, False)
    H = 2816
    # served qkv (vLLM loads k_proj into the V slot too) vs the checkpoint's q, k (no v_proj)
    qkv = {k: m.attention_linear_ops(k)[0].n for k in ("full", "sliding")}
    assert qkv == {"full": 16 * 512 + 2 * 2 * 512, "sliding": 16 * 256 + 2 * 8 * 256}
    assert m.params_by_component(5)["attention"] == H * (16 * 512 + 2 * 512) + 16 * 512 * H
    assert m.params_by_component(0)["attention"] == H * (16 * 256 + 2 * 8 * 256) + 16 * 256 * H
    # the dense MLP next to the 128 experts: an always-on shared expert of intermediate_size
    c = m.params_by_component(0)
    assert c["shared_experts"] == 3 * H * 2112 and c["experts"] == 128 * 3 * H * 704
    assert m.num_dense_layers == 0 and m.num_moe_layers == 30


def test_mimo_v2_layer_shapes():
    m = _m(_mimo_v2_flash())
    assert m.kind_counts() == {"full": 9, "sliding": 39}
    full, sw = m.attn_shape("full"), m.attn_shape("sliding")
    assert (full.num_kv_heads, full.head_dim, full.v_head_dim, full.sink) == (4, 192, 128, False)
    assert (sw.num_kv_heads, sw.head_dim, sw.v_head_dim, sw.sink) == (8, 192, 128, True)
    H = 4096
    ops = {op.name: op for op in m.attention_linear_ops("sliding")}
    assert ops["qkv"].n == 64 * 192 + 8 * 192 + 8 * 128 and ops["o"].k == 64 * 128
    # sink bias: one value per query head on the sliding layers only
    assert m.params_by_component(1)["attention"] == (64 * 192 + 8 * 320) * H + 64 * 128 * H + 64
    assert m.params_by_component(0)["attention"] == (64 * 192 + 4 * 320) * H + 64 * 128 * H


# ------------------------------------------------------------------------------ KV cache
def test_kv_bytes_per_token_per_kind():
    g, mimo = _m(_gemma4_26b()), _m(_mimo_v2_flash())
    # K and V of each kind's heads (k_eq_v layers still cache a V: vLLM's V slot)
    assert kv_bytes_per_token_per_layer(g, 1, "bf16", "full") == 2 * 512 * 2 * 2
    assert kv_bytes_per_token_per_layer(g, 1, "bf16", "sliding") == 8 * 256 * 2 * 2
    assert kv_bytes_per_token_per_layer(mimo, 1, "bf16", "full") == 4 * (192 + 128) * 2
    assert kv_bytes_per_token_per_layer(mimo, 1, "fp8", "sliding") == 8 * (192 + 128) * 1
    # TP past the KV heads replicates them (vLLM max(1, kv // tp))
    assert kv_bytes_per_token_per_layer(mimo, 8, "bf16", "full") == 1 * 320 * 2
    assert kv_bytes_per_token_per_layer(mimo, 8, "bf16", "sliding") == 1 * 320 * 2
    assert g.kv_bytes_per_token(2) == 5 * 2 * 512 * 2 * 2
    assert mimo.kv_bytes_per_token(2) == 9 * 4 * 320 * 2


def test_kv_layout_in_both_engines():
    m = _m(_mimo_v2_flash())
    layers = range(m.num_layers)
    p_full, p_sw = 4 * 320 * 2, 8 * 320 * 2
    kv, seq, pool = stage_kv_layout(m, layers, 1, "bf16", load_engine("vllm"))
    # V1 shared pool: the full layers' pages are half the sliding layers' -> the sliding kind
    # keeps block 16, its window of 128 in (127/16 + 1) blocks
    assert kv == 9 * p_full and pool == 0
    assert seq == 39 * p_sw * (-(-127 // 16) + 1) * 16
    sg = load_engine("sglang")
    kv, seq, pool = stage_kv_layout(m, layers, 1, "bf16", sg)
    assert kv == pytest.approx(9 * p_full + sg.swa_full_tokens_ratio * 39 * p_sw) and seq == 0
    old = load_engine("vllm-0.6")
    assert stage_kv_layout(m, layers, 1, "bf16", old)[0] == 9 * p_full + 39 * p_sw


def test_vllm_block_size_unifies_page_sizes(node):
    # unify_kv_cache_spec_page_size: the full layers' smaller page -> block size x 2
    m = _m(_gemma4_26b())
    dev = node.pools[0].device
    r = replica_memory(m, dev, ReplicaConfig(tp=1, max_model_len=32768), load_engine("vllm"))
    assert r.fits and r.block_size == 32 and r.kv_tokens % 32 == 0
    # every sequence holds 25 sliding layers x (1023/16 + 1) blocks of 16 x 8 KiB of KV
    assert r.stages[0].seq_state_bytes == 25 * 8192 * 65 * 16


def test_weights_hold_the_served_v_slot(node):
    m = _m(_gemma4_31b())
    cfg = ReplicaConfig(tp=2, weight_dtype="bf16")
    w = weight_bytes_by_component(m, cfg, 0)
    H, tp = 5376, 2
    full = (32 // tp * 512 + 2 * 2 * 512) * H + 32 // tp * 512 * H
    sw = (32 // tp * 256 + 8 * 2 * 256) * H + 32 // tp * 256 * H
    assert w["attention"] == pytest.approx((10 * full + 50 * sw) * 2)


# ------------------------------------------------------------------------------ cost
def test_full_and_sliding_layers_cost_differently(node):
    m = _m(_gemma4_31b())
    pool = node.pools[0]
    cm = IterationCostModel(m, pool, ReplicaConfig(tp=2), load_engine("vllm"))
    ctx = np.full(32, 800)  # inside the window: the kinds differ by shape only
    per = cm._attention_kinds_rank(ctx, [])
    # bytes read per layer: full 4 KV heads / 2 ranks x 1024 vs sliding 16 / 2 x 512
    assert per["full"][3] == 32 * 800 * 2 * 1024 * 2
    assert per["sliding"][3] == 32 * 800 * 8 * 512 * 2
    assert per["sliding"][0] > per["full"][0]
    pf = cm._attention_kinds_rank(np.array([], dtype=np.int64), [(4096, 0)])
    # prefill FLOPs with each kind's head width (q heads alike): a full layer twice a sliding
    # one over the first window, and more beyond it
    assert pf["full"][2] > 2 * pf["sliding"][2]


def test_mimo_value_width_in_attention_flops(node):
    m = _m(_mimo_v2_flash())
    cm = IterationCostModel(m, node.pools[0], ReplicaConfig(tp=8, ep=8), load_engine("vllm"))
    per = cm._attention_kinds_rank(np.full(4, 1000), [])
    # q.k over 192, p.v over 128: 2 x 8 heads/rank x 320 x keys
    assert per["full"][2] == pytest.approx(2 * 8 * 320 * 4000)
    assert per["sliding"][2] == pytest.approx(2 * 8 * 320 * 4 * 128)
    t = cm.iteration(np.full(64, 8192)).time_s
    assert 0 < t < 1


# ------------------------------------------------------------------------------ refusals
def test_gemma4_features_still_refused():
    with pytest.raises(InputError, match="num_kv_shared_layers"):
        _m(_gemma4_26b(num_kv_shared_layers=10))
    with pytest.raises(InputError, match="hidden_size_per_layer_input"):
        _m(_gemma4_26b(hidden_size_per_layer_input=256))
    with pytest.raises(InputError, match="swa_num_attention_heads"):
        _m(_mimo_v2_flash(swa_num_attention_heads=32))


def test_one_shape_models_have_no_shapes():
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 512,
           "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
           "head_dim": 64, "vocab_size": 1000, "max_position_embeddings": 4096,
           "intermediate_size": 1024}
    m = _m(cfg)
    assert m.attn_shapes == () and "attn_shapes" not in m.summary()
    assert m.attention_flops_per_token(100) == 4.0 * 8 * 64 * 100
