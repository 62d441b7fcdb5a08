"""SGLang's shared-expert fusion (EngineSpec.moe_shared_expert_fusion, data/engines/sglang.yaml):
DeepSeek-V3's shared expert runs inside the Triton fused MoE as a 257th expert every token picks,
so its separate gate_up / SiLU / down kernels disappear; vLLM, expert parallelism, SGLang's
FlashInfer TRT-LLM MoE (SM100) and other architectures keep the separate shared MLP."""

import numpy as np
import pytest

from apex_opt.costmodel import DeviceCostModel
from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.registry import load_cluster
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import ReplicaConfig


def _cm(model: str, cluster: str, engine: str, tp: int = 8, ep: int = 1, wd: str = "fp8"):
    return IterationCostModel(load_model(model), load_cluster(cluster).pools[0],
                              ReplicaConfig(tp=tp, ep=ep, weight_dtype=wd), load_engine(engine))


def _decode(cm, batch: int = 32, ctx: int = 3000):
    return cm.iteration(np.full(batch, ctx), with_breakdown=True)


def test_sglang_fuses_deepseek_shared_expert_on_hopper():
    fused = _cm("deepseek-v3", "h200-1x8", "sglang")
    assert fused.fused_shared == 1 and fused.shared_ops == []
    bd = _decode(fused).breakdown
    assert "moe_shared" not in bd
    # the routed-expert kernel now carries the shared expert: exactly fused_moe(..., shared=1)
    m = load_model("deepseek-v3")
    n_moe = sum(1 for i in range(m.num_layers) if m.is_moe_layer(i))
    one = fused.dev.fused_moe(32, 7168, 2048, 8, 256, 8, 1, "fp8", "fp8", block_fp8=True, shared=1)
    assert bd["moe_experts"] == pytest.approx(n_moe * one.time_s, rel=1e-9)


def test_fusion_saves_the_shared_mlp_kernels():
    """Same plan, fusion off (the same engine without the rule): the step pays the shared MLP's
    own GEMMs and activation, which the fused kernel replaces by one more streamed expert."""
    sg = load_engine("sglang")
    off = IterationCostModel(load_model("deepseek-v3"), load_cluster("h200-1x8").pools[0],
                             ReplicaConfig(tp=8, weight_dtype="fp8"),
                             sg.model_copy(update={"moe_shared_expert_fusion": []}))
    on = _cm("deepseek-v3", "h200-1x8", "sglang")
    assert off.fused_shared == 0
    b_off, b_on = _decode(off), _decode(on)
    assert b_off.breakdown["moe_shared"] > 0
    assert b_on.breakdown["moe_experts"] > b_off.breakdown["moe_experts"]
    assert b_on.time_s < b_off.time_s


@pytest.mark.parametrize("model,cluster,engine,ep", [
    ("deepseek-v3", "h200-1x8", "vllm", 1),      # vLLM never fuses
    ("deepseek-v3", "h200-1x8", "sglang", 8),    # expert parallelism turns it off
    ("deepseek-v3", "b200-1x8", "sglang", 1),    # SM100: FlashInfer TRT-LLM MoE, fusion off
    ("kimi-k2", "h200-1x8", "sglang", 1),        # 384 experts: not on the allow-list
    ("qwen2-57b-a14b", "h200-1x8", "sglang", 1),  # another architecture
])
def test_no_fusion_elsewhere(model, cluster, engine, ep):
    cm = _cm(model, cluster, engine, ep=ep, wd="fp8" if model != "qwen2-57b-a14b" else "bf16")
    assert cm.fused_shared == 0
    assert cm.shared_ops
    assert _decode(cm, batch=8).breakdown.get("moe_shared", 0.0) > 0


def test_fused_shared_expert_is_always_streamed():
    """One token: the fused kernel streams the routed experts it hits plus the shared one, and
    the shared expert adds the tiles of its rows whatever the routing."""
    d = DeviceCostModel(load_cluster("h200-1x8").pools[0].device)
    args = (7168, 2048, 8, 256, 8, 1, "fp8", "fp8")
    for tokens in (1, 64, 1024):
        base = d.fused_moe(tokens, *args, block_fp8=True).time_s
        fused = d.fused_moe(tokens, *args, block_fp8=True, shared=1).time_s
        assert fused > base
    # at one token the extra expert costs about what one more hit expert costs
    one = d.fused_moe(1, *args, block_fp8=True).time_s
    with_shared = d.fused_moe(1, *args, block_fp8=True, shared=1).time_s
    assert with_shared - one < 0.5 * one


def test_engine_rule_conditions():
    rule = load_engine("sglang").moe_shared_expert_fusion[0]
    assert rule.applies("DeepseekV3ForCausalLM", 256, 1, "9.0", 1)
    assert not rule.applies("DeepseekV3ForCausalLM", 256, 1, "7.5", 1)
    assert not rule.applies("DeepseekV3ForCausalLM", 256, 2, "9.0", 1)
    assert not rule.applies("DeepseekV3ForCausalLM", 256, 1, "9.0", 8)
    assert not rule.applies("Qwen3MoeForCausalLM", 256, 1, "9.0", 1)
    assert load_engine("vllm").moe_shared_expert_fusion == []
    assert load_engine("sglang-0.4").moe_shared_expert_fusion == []
    glm = load_engine("sglang").moe_shared_expert_fusion[1]
    assert glm.applies("Glm4MoeForCausalLM", 128, 1, "9.0", 1)  # GLM-4.5-Air
    assert glm.applies("Glm4MoeForCausalLM", 160, 1, "9.0", 1)  # GLM-4.5
    assert not glm.applies("Glm4MoeForCausalLM", 160, 1, "9.0", 4)


def test_fused_shared_expert_under_expert_parallelism():
    """A profile that fuses under EP (SGLang does on MI300-class GPUs): the shared expert sits
    on every EP rank and takes all tokens there -- dearer than the routed share alone."""
    d = DeviceCostModel(load_cluster("h200-1x8").pools[0].device)
    args = (64, 7168, 2048, 8, 256, 1, 8, "fp8", "fp8")
    assert d.fused_moe(*args, block_fp8=True, shared=1).time_s > d.fused_moe(*args, block_fp8=True).time_s
    rule = load_engine("sglang").moe_shared_expert_fusion[0].model_copy(update={"expert_parallel": True})
    assert rule.applies("DeepseekV3ForCausalLM", 256, 1, "9.0", 8)


def test_glm45_air_fuses_on_sglang():
    """GLM-4.5-Air (Glm4MoeForCausalLM, 128 routed + 1 shared expert; its HF config numbers):
    SGLang's glm4_moe.py fuses it too, whatever the routed-expert count; vLLM does not."""
    from apex_opt.specs.model import ModelSpec

    cfg = {"architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", "hidden_size": 4096,
           "num_hidden_layers": 46, "n_routed_experts": 128, "n_shared_experts": 1,
           "num_experts_per_tok": 8, "moe_intermediate_size": 1408, "intermediate_size": 10944,
           "first_k_dense_replace": 1, "num_attention_heads": 96, "num_key_value_heads": 8,
           "head_dim": 128, "vocab_size": 151552, "max_position_embeddings": 131072,
           "rms_norm_eps": 1e-5, "hidden_act": "silu", "partial_rotary_factor": 0.5,
           "torch_dtype": "bfloat16", "n_group": 1, "topk_group": 1, "norm_topk_prob": True,
           "tie_word_embeddings": False}
    m = ModelSpec.from_hf_config(cfg, "glm-4.5-air", "test")
    pool = load_cluster("h200-1x8").pools[0]
    sg = IterationCostModel(m, pool, ReplicaConfig(tp=4), load_engine("sglang"))
    vl = IterationCostModel(m, pool, ReplicaConfig(tp=4), load_engine("vllm"))
    assert sg.fused_shared == 1 and vl.fused_shared == 0
    assert "moe_shared" not in _decode(sg).breakdown
    assert _decode(vl).breakdown["moe_shared"] > 0
