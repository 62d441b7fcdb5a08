"""ModelOpt MIXED_PRECISION checkpoints (nvidia/Qwen3.6-*-NVFP4, MiniMax-M3-NVFP4): a per-module
``quantized_layers`` map with NVFP4 experts / MLP next to FP8 attention, served by vLLM and SGLang
ModelOptMixedPrecisionConfig layer by layer. Read as an fp4 checkpoint whose attention (and any
other FP8 component) is stored in fp8 (ModelSpec.quant_fp8) and whose unlisted components stay
bf16 (quant_exclude): bytes per component and the GEMM dtype per component. Configs are small
inline dicts shaped like the published ones."""

from __future__ import annotations

from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.memory import weight_bytes_by_component
from apex_opt.registry import load_cluster
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import ModelSpec
from apex_opt.specs.plan import ReplicaConfig


def _qwen_moe(q: dict | None, layers: int = 4) -> ModelSpec:
    """A Qwen3-MoE-shaped model (every layer MoE with a shared expert), few layers."""
    cfg = {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": 2048,
           "num_hidden_layers": layers, "num_attention_heads": 16, "num_key_value_heads": 2,
           "head_dim": 128, "intermediate_size": 5632, "moe_intermediate_size": 512,
           "shared_expert_intermediate_size": 512, "num_experts": 64, "num_experts_per_tok": 8,
           "vocab_size": 151936, "max_position_embeddings": 32768, "torch_dtype": "bfloat16"}
    if q is not None:
        cfg["quantization_config"] = q
    return ModelSpec.from_hf_config(cfg, name="mixed")


def _mixed_q(layers: int = 4, attn: str = "FP8", experts: str = "W4A16_NVFP4", shared: str | None = "W4A16_NVFP4",
             nested: bool = False) -> dict:
    ql = {}
    for i in range(layers):
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            ql[f"model.layers.{i}.self_attn.{p}"] = {"quant_algo": attn}
        ql[f"model.layers.{i}.mlp.experts"] = {"quant_algo": experts, "group_size": 16}
        if shared:
            for p in ("gate_proj", "up_proj", "down_proj"):
                ql[f"model.layers.{i}.mlp.shared_expert.{p}"] = {"quant_algo": shared}
    ql["lm_head"] = {"quant_algo": "W4A16_NVFP4"}
    body = {"quant_algo": "MIXED_PRECISION", "quantized_layers": ql, "kv_cache_quant_algo": "FP8"}
    return {"quant_method": "modelopt", "quantization": body} if nested else {"quant_method": "modelopt", **body}


def test_mixed_precision_reads_components():
    for nested in (False, True):  # config.json flat / hf_quant_config.json nested
        m = _qwen_moe(_mixed_q(nested=nested))
        assert (m.checkpoint_dtype, m.quant_scheme) == ("fp4", "nvfp4_w4a16")
        assert m.quant_fp8 == ("attention",) and m.quant_exclude == ()
        assert m.checkpoint_kv_dtype == "fp8"
        assert m.stored_dtype("attention") == "fp8" and m.stored_dtype("experts") is None
        # quantizing it another way online is not serving it as published
        assert m.stored_dtype("attention", weight_dtype="fp8") is None
    # W4A4 experts, shared expert left out of the list -> bf16
    m = _qwen_moe(_mixed_q(experts="NVFP4", shared=None))
    assert (m.checkpoint_dtype, m.quant_scheme) == ("fp4", "nvfp4")
    assert m.quant_exclude == ("shared_experts",) and m.quant_fp8 == ("attention",)
    # an ordinary NVFP4 checkpoint is untouched
    plain = _qwen_moe({"quant_method": "modelopt", "quant_algo": "NVFP4"})
    assert plain.quant_fp8 == () and plain.checkpoint_dtype == "fp4"


def test_fp8_attention_bytes_and_gemm_dtype():
    mixed = _qwen_moe(_mixed_q())
    plain = _qwen_moe({"quant_method": "modelopt", "quant_algo": "NVFP4"})
    bf16 = _qwen_moe(None)
    cfg = ReplicaConfig(tp=1)
    wm = weight_bytes_by_component(mixed, cfg, 0)
    wp = weight_bytes_by_component(plain, cfg, 0)
    wb = weight_bytes_by_component(bf16, ReplicaConfig(tp=1, weight_dtype="bf16"), 0)
    # attention at 1 B per element: half of bf16, 1/0.5625 of NVFP4's; experts as NVFP4
    assert abs(wm["attention"] / wb["attention"] - 0.5) < 1e-6
    assert abs(wm["attention"] / wp["attention"] - 1.0 / 0.5625) < 1e-6
    assert wm["experts"] == wp["experts"]
    pool = load_cluster("h100-sxm-1x8").pools[0]
    eng = load_engine("vllm")
    cm = IterationCostModel(mixed, pool, cfg, eng)
    assert cm._fp8_ops and {c for c, _, _ in cm._fp8_ops} == {"attention_proj"}
    cp = IterationCostModel(plain, pool, cfg, eng)
    assert not cp._fp8_ops
    import numpy as np
    ctx = np.full(8, 1024)
    am = cm.iteration(ctx, with_breakdown=True).breakdown
    ap = cp.iteration(ctx, with_breakdown=True).breakdown
    # H100 runs the FP8 attention as W8A8 (its own quant kernel) and the W4A16 experts on Marlin:
    # the fp8 attention projections differ from NVFP4-Marlin ones; the experts cost the same
    assert am["attention_proj"] != ap["attention_proj"]
    assert am["moe_experts"] == ap["moe_experts"]
    assert am.get("act_quant", 0.0) > ap.get("act_quant", 0.0)
