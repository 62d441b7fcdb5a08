"""An MoE decode step prices the kernels the engines run per MoE layer: the router GEMM (bf16),
the fused routed experts, and for shared experts their two GEMMs AND the SiluAndMul between them
(vLLM deepseek_v2.py DeepseekV2MLP / qwen2_moe.py Qwen2MoeMLP, SGLang alike)."""

import numpy as np
import pytest

from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.registry import load_cluster
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import ReplicaConfig


@pytest.mark.parametrize("name", ["deepseek-v3", "kimi-k2"])
def test_shared_expert_step_includes_its_activation(name):
    model, pool = load_model(name), load_cluster("h200-1x8").pools[0]
    cm = IterationCostModel(model, pool, ReplicaConfig(tp=8, weight_dtype="fp8"))
    c = cm.iteration(np.full(16, 2048), with_breakdown=True)
    n_moe = sum(1 for i in range(model.num_layers) if model.is_moe_layer(i))
    tokens = cm.engine.graph_batch_size(16, cm.graph_max_bs) or 16
    gemms = sum(cm.dev.gemm(tokens, n, k, cm.compute_dtype, cm.weight_dtype).time_s
                for _, n, k in cm.shared_ops)
    width = next(n for name, n, _ in cm.shared_ops if name == "shared_gate_up") // 2
    act = cm.dev.elementwise("silu_and_mul", tokens, width).time_s
    assert act > 0
    assert c.breakdown["moe_shared"] == pytest.approx(n_moe * (gemms + act), rel=1e-6)
    # the router GEMM is priced on every MoE layer
    assert c.breakdown["moe_router"] == pytest.approx(
        n_moe * cm.dev.gemm(tokens, model.moe.num_experts, model.hidden_size, "bf16").time_s, rel=1e-6)


def test_no_shared_expert_no_shared_cost():
    model, pool = load_model("qwen3-235b-a22b"), load_cluster("h200-1x8").pools[0]
    cm = IterationCostModel(model, pool, ReplicaConfig(tp=8, weight_dtype="fp8"))
    assert not cm.shared_ops
    assert "moe_shared" not in cm.iteration(np.full(16, 2048), with_breakdown=True).breakdown


def test_non_gated_experts_stream_two_thirds_of_the_weights():
    """Nemotron-3's relu2 experts (MoESpec.expert_gated False): w13 is hidden -> inter, so a
    weight-bound decode layer streams 2 of the 3 expert matrices' bytes of a gated one."""
    from apex_opt.costmodel import DeviceCostModel

    d = DeviceCostModel(load_cluster("h200-1x8").pools[0].device)
    args = (64, 4096, 2688, 8, 128, 1, 1, "fp8", "fp8")
    g = d.fused_moe(*args).time_s
    ng = d.fused_moe(*args, gated=False).time_s
    assert 0.6 < ng / g < 0.8
    dg = d.fused_moe(*args, block_fp8=True, backend="deep_gemm_contiguous").time_s
    dg_ng = d.fused_moe(*args, block_fp8=True, backend="deep_gemm_contiguous", gated=False).time_s
    assert dg_ng < dg
