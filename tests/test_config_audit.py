"""Audit of current public model configs (aiconfigurator model_configs families): each family's
config keys are read into the right layout, and architectures the layer model does not describe
are refused with ONE line naming the real cause (file field and value), exit 2 -- never loaded
and silently read wrong. Small inline config dicts shaped like the published ones."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from apex_opt.cli import main
from apex_opt.errors import InputError
from apex_opt.specs.model import ModelSpec


def _base(**kw) -> dict:
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 512,
           "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 2,
           "head_dim": 64, "vocab_size": 1000, "max_position_embeddings": 4096,
           "intermediate_size": 1024}
    cfg.update(kw)
    return cfg


def _mla(**kw) -> dict:
    cfg = dict(architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3",
               q_lora_rank=256, kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=16,
               v_head_dim=32, n_routed_experts=8, num_experts_per_tok=2,
               moe_intermediate_size=128, n_shared_experts=1, first_k_dense_replace=1)
    cfg.update(kw)
    return _base(**cfg)


def _refusal(cfg: dict) -> str:
    with pytest.raises(InputError) as e:
        ModelSpec.from_hf_config(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------ MoE layouts
def test_step3p7_first_dense_layers_and_ungated_shared_expert():
    # stepfun-ai/Step-3.7-Flash: num_experts + first_k_dense_replace + share_expert_dim
    cfg = _base(architectures=["Step3p7FlashForCausalLM"], model_type="step3p7", num_experts=16,
                num_experts_per_tok=2, moe_intermediate_size=128, first_k_dense_replace=2,
                share_expert_dim=96, n_shared_experts=1)
    m = ModelSpec.from_hf_config(cfg)
    assert m.moe.moe_layers == (2, 3, 4, 5)
    assert m.moe.shared_intermediate_size == 96 and m.moe.num_shared_experts == 1
    assert not m.moe.shared_expert_gate
    assert m.num_dense_layers == 2
    # a Qwen3-MoE config (no first_k_dense_replace / share_expert_dim) is read as before
    q = ModelSpec.from_hf_config(_base(model_type="qwen3_moe", num_experts=16,
                                       num_experts_per_tok=2, moe_intermediate_size=128))
    assert q.moe.moe_layers == tuple(range(6)) and q.moe.shared_intermediate_size == 0


def test_minimax_m3_dense_layers_and_shared_expert():
    # MiniMaxAI/MiniMax-M3: num_local_experts with dense_intermediate_size, a per-layer
    # moe_layer_freq list and shared_intermediate_size (not Mixtral's every-layer MoE)
    cfg = _base(architectures=["MiniMaxM3ForCausalLM"], model_type="minimax_m3",
                num_local_experts=8, num_experts_per_tok=2, intermediate_size=128,
                moe_intermediate_size=128, dense_intermediate_size=2048,
                shared_intermediate_size=128, n_shared_experts=1, first_k_dense_replace=2,
                moe_layer_freq=[0, 0, 1, 1, 1, 1])
    m = ModelSpec.from_hf_config(cfg)
    assert m.moe.moe_layers == (2, 3, 4, 5)
    assert m.intermediate_size == 2048
    assert m.moe.shared_intermediate_size == 128 and m.moe.expert_intermediate_size == 128
    dense = m.params_by_component(0)["mlp"]
    assert dense == 3 * 512 * 2048
    # Mixtral: every layer MoE, no shared expert
    mx = ModelSpec.from_hf_config(_base(model_type="mixtral", num_local_experts=8,
                                        num_experts_per_tok=2))
    assert mx.moe.moe_layers == tuple(range(6)) and mx.moe.shared_intermediate_size == 0


def test_per_layer_moe_lists():
    # moe_layer_freq as a 0/1 list per layer (MiMo-V2-Flash) and GLM-5.2's mlp_layer_types
    m = ModelSpec.from_hf_config(_mla(moe_layer_freq=[0, 1, 0, 1, 1, 1]))
    assert m.moe.moe_layers == (1, 3, 4, 5)
    g = ModelSpec.from_hf_config(_mla(mlp_layer_types=["dense"] * 3 + ["sparse"] * 3))
    assert g.moe.moe_layers == (3, 4, 5)
    # the integer form keeps DeepSeek's rule
    d = ModelSpec.from_hf_config(_mla(moe_layer_freq=1))
    assert d.moe.moe_layers == (1, 2, 3, 4, 5)
    msg = _refusal(_mla(moe_layer_freq=[0, 1]))
    assert "moe_layer_freq" in msg


# ------------------------------------------------------------------ DeepSeek Sparse Attention
def test_dsa_indexer_weights_counted():
    dense = ModelSpec.from_hf_config(_mla())
    dsa = ModelSpec.from_hf_config(_mla(index_n_heads=4, index_head_dim=32, index_topk=2048))
    assert dense.dsa is None
    assert dsa.dsa.topk == 2048
    names = [op.name for op in dsa.attention_linear_ops()]
    assert names[-3:] == ["indexer_q_b", "indexer_k", "indexer_weights"]
    assert all(op.split == "replicated" for op in dsa.attention_linear_ops()[-3:])
    # wq_b 256 -> 4x32, wk 512 -> 32, weights_proj 512 -> 4, k_norm LayerNorm 2 x 32 per layer
    per_layer = 256 * 128 + 512 * 32 + 512 * 4 + 2 * 32
    assert dsa.params_total - dense.params_total == 6 * per_layer
    assert dsa.kv_bytes_per_token() == dense.kv_bytes_per_token()


def test_glm52_deepseek_sparse_attention_layer_type_is_full_mla():
    cfg = _mla(architectures=["GlmMoeDsaForCausalLM"], model_type="glm_moe_dsa",
               index_n_heads=4, index_head_dim=32, index_topk=2048,
               layer_types=["deepseek_sparse_attention"] * 6)
    m = ModelSpec.from_hf_config(cfg)
    assert m.attention == "mla" and not m.is_hybrid and m.dsa is not None


# ------------------------------------------------------------------ refusals
def test_deepseek_v4_refused_naming_hyper_connections():
    cfg = _base(architectures=["DeepseekV4ForCausalLM"], model_type="deepseek_v4", hc_mult=4,
                compress_ratios=[0, 4, 128, 4, 128, 0], sliding_window=128, o_groups=8,
                num_key_value_heads=1, n_routed_experts=8, num_experts_per_tok=2,
                moe_intermediate_size=128)
    msg = _refusal(cfg)
    assert "field 'hc_mult'" in msg and "hyper-connections" in msg and "[0, 4, 128]" in msg


def test_kimi_linear_refused_naming_kda_layers():
    text = _mla(architectures=["KimiLinearForCausalLM"], model_type="kimi_linear",
                num_attention_heads=12, head_dim=None, hidden_size=512,
                routed_expert_hidden_size=256,
                linear_attn_config={"kda_layers": [1, 2, 4], "full_attn_layers": [3, 5],
                                    "num_heads": 12, "head_dim": 32})
    cfg = {"architectures": ["KimiK3ForConditionalGeneration"], "model_type": "kimi_k3",
           "text_config": text}
    msg = _refusal(cfg)
    assert "kda_layers" in msg and "Kimi Delta Attention" in msg and "latent MoE" in msg
    assert "divide" not in msg


@pytest.mark.parametrize("key,value", [
    ("hybrid_override_pattern", "MEM*EM"),
    ("layers_block_type", ["mamba", "moe", "mamba", "attention", "moe", "mamba"]),
])
def test_nemotron3_moe_blocks_planned(key, value):
    """Nemotron-3 'E' blocks (either spelling of the pattern) are planned: non-gated experts in
    the latent width; without the expert keys they are refused naming n_routed_experts."""
    common = dict(architectures=["NemotronHForCausalLM"], model_type="nemotron_h",
                  mamba_num_heads=8, mamba_head_dim=32, ssm_state_size=16, n_groups=2,
                  conv_kernel=4, mlp_hidden_act="relu2", **{key: value})
    m = ModelSpec.from_hf_config(_base(**common, n_routed_experts=16, num_experts_per_tok=2,
                                       moe_intermediate_size=64, moe_latent_size=256))
    assert m.moe.moe_layers == (0, 2) and m.moe.latent_size == 256 and not m.moe.expert_gated
    msg = _refusal(_base(**common))
    assert "field 'n_routed_experts'" in msg and "'E' blocks (2 of 6" in msg


def test_nemotron_h_layers_block_type_without_moe_is_planned():
    cfg = _base(architectures=["NemotronHForCausalLM"], model_type="nemotron_h",
                mamba_num_heads=8, mamba_head_dim=32, ssm_state_size=16, n_groups=2,
                conv_kernel=4, layers_block_type=["mamba", "mlp", "attention", "mlp",
                                                  "mamba", "mlp"])
    m = ModelSpec.from_hf_config(cfg)
    assert m.layer_kinds == ("mamba", "full", "mamba") and not m.mlp_gated


def test_nemotron_nas_block_configs_refused():
    blocks = [{"attention": {"n_heads_in_group": 4, "no_op": i == 2},
               "ffn": {"ffn_mult": 2.5 if i % 2 else 5.25, "no_op": False}} for i in range(6)]
    cfg = _base(architectures=["DeciLMForCausalLM"], model_type="nemotron-nas",
                intermediate_size=None, num_key_value_heads=None, block_configs=blocks)
    msg = _refusal(cfg)
    assert "field 'block_configs'" in msg and "2.5..5.25" in msg and "1 of 6" in msg


def test_gemma4_kv_shared_layers_refused():
    # per-kind shapes are modelled (tests/test_attention_kinds.py); KV sharing is not
    text = _base(model_type="gemma4_text", head_dim=64, global_head_dim=128,
                 num_global_key_value_heads=1, attention_k_eq_v=True, sliding_window=256,
                 num_kv_shared_layers=2,
                 layer_types=["sliding_attention"] * 5 + ["full_attention"])
    cfg = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
           "text_config": text}
    msg = _refusal(cfg)
    assert "field 'num_kv_shared_layers'" in msg and "last 2 layers" in msg


def test_mimo_v2_sliding_query_heads_refused():
    cfg = _base(architectures=["MiMoV2FlashForCausalLM"], model_type="mimo_v2_flash",
                swa_num_attention_heads=4, swa_num_key_value_heads=4, swa_head_dim=64,
                v_head_dim=64)
    msg = _refusal(cfg)
    assert "field 'swa_num_attention_heads'" in msg and "4 vs num_attention_heads 8" in msg


def test_gqa_value_width_differs_is_modelled():
    m = ModelSpec.from_hf_config(_base(v_head_dim=32))
    assert m.kv_elems_per_token_per_layer() == 2 * (64 + 32)
    assert m.attention_linear_ops()[1].k == 8 * 32   # o_proj reads heads x v_head_dim


def test_refusal_exit_code_2(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(_base(architectures=["DeepseekV4ForCausalLM"],
                                  model_type="deepseek_v4", hc_mult=4)))
    r = CliRunner().invoke(main, ["models", "show", str(p)])
    assert r.exit_code == 2
    assert "hyper-connections" in r.output


def test_dsa_sparse_attention_cost():
    """Decode: the MLA reads min(context, index_topk) latents, the indexer streams every cached
    index key (head_dim fp8 + fp32 scale). Below top-k the indexer only adds; far above it the
    sparse model reads far fewer bytes than dense MLA."""
    import numpy as np

    from apex_opt.costmodel.iteration import IterationCostModel
    from apex_opt.registry import load_cluster
    from apex_opt.specs.engine import load_engine
    from apex_opt.specs.plan import ReplicaConfig

    pool = load_cluster("h100-sxm-1x8").pools[0]
    eng = load_engine("vllm")
    kw = dict(num_attention_heads=16, hidden_size=1024, head_dim=None)
    dense = ModelSpec.from_hf_config(_mla(**kw))
    dsa = ModelSpec.from_hf_config(_mla(index_n_heads=4, index_head_dim=128, index_topk=256, **kw))
    cd = IterationCostModel(dense, pool, ReplicaConfig(tp=1), eng)
    cs = IterationCostModel(dsa, pool, ReplicaConfig(tp=1), eng)
    short, long = np.full(8, 200), np.full(8, 60000)
    # bytes of one layer's attention: latents of min(ctx, topk) + index keys of the whole context
    lat = (128 + 16) * 2
    assert cs._attention(long, [])[3] == 8 * (256 * lat + 60000 * (128 + 4))
    assert cd._attention(long, [])[3] == 8 * 60000 * lat
    assert cs._attention(short, [])[3] > cd._attention(short, [])[3]
    assert cs._attention(long, [])[0] < cd._attention(long, [])[0]
    # prefill: a long chunk's queries each attend at most topk keys (+ the indexer GEMM)
    assert cs._attention(np.zeros(0, dtype=np.int64), [(8192, 0)])[2] > 0
    assert cs.iteration(long).time_s < cd.iteration(long).time_s


def test_sparse_attention_approximations_warn():
    from apex_opt.errors import ApexWarning

    m3 = _base(architectures=["MiniMaxM3ForCausalLM"], model_type="minimax_m3",
               num_local_experts=8, num_experts_per_tok=2, dense_intermediate_size=2048,
               shared_intermediate_size=128, moe_intermediate_size=128,
               moe_layer_freq=[0, 1, 1, 1, 1, 1],
               sparse_attention_config={"use_sparse_attention": True, "sparse_topk_blocks": 16,
                                        "sparse_block_size": 128, "sparse_index_dim": 64,
                                        "sparse_attention_freq": [0, 1, 1, 1, 1, 1]})
    with pytest.warns(ApexWarning, match="top 16 blocks of 128 tokens on 5 of 6 layers"):
        ModelSpec.from_hf_config(m3)
    glm = _mla(index_n_heads=4, index_head_dim=32, index_topk=2048,
               indexer_types=["full", "shared", "shared", "full", "shared", "shared"])
    with pytest.warns(ApexWarning, match="own DSA indexer in 2 of 6 layers"):
        ModelSpec.from_hf_config(glm)
