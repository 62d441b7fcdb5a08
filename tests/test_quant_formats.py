"""Checkpoint quantization formats beyond one dtype for every linear layer: MXFP4 (gpt-oss: E2M1 +
one E8M0 scale per 32, MoE experts only), int4 of group size 32 (Kimi-K2.5), and the modules a
checkpoint leaves in bf16 (modules_to_not_convert / ignore / exclude_modules ->
ModelSpec.quant_exclude): detection, bytes per component, the GEMM dtype per component and the
MXFP4 expert kernel path per engine and GPU (data/kernels.yaml common.mxfp4). Configs are small
inline dicts shaped like the published ones."""

from __future__ import annotations

import pytest

from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.costmodel.kernels import mxfp4_path
from apex_opt.errors import InputError
from apex_opt.memory import linear_weight_bytes_per_elem, replica_memory, weight_bytes_by_component
from apex_opt.registry import load_cluster
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import ModelSpec
from apex_opt.specs.plan import ReplicaConfig

GIB = 1024 ** 3
MXFP4_Q = {"quant_method": "mxfp4",
           "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                      "model.embed_tokens", "lm_head"]}


def gpt_oss_120b(q: dict | None = MXFP4_Q) -> ModelSpec:
    """openai/gpt-oss-120b's config.json (architecture fields + its quantization_config)."""
    cfg = {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": 2880,
           "num_hidden_layers": 36, "num_attention_heads": 64, "num_key_value_heads": 8,
           "head_dim": 64, "intermediate_size": 2880, "num_local_experts": 128,
           "num_experts_per_tok": 4, "experts_per_token": 4, "vocab_size": 201088,
           "max_position_embeddings": 131072, "tie_word_embeddings": False, "attention_bias": True,
           "torch_dtype": "bfloat16"}
    if q is not None:
        cfg["quantization_config"] = q
    return ModelSpec.from_hf_config(cfg, name="gpt-oss-120b")


def kimi_like(q: dict, layers: int = 4) -> ModelSpec:
    """A Kimi-K2 / DeepSeek-V3-shaped MLA MoE (first layer dense, shared expert), few layers."""
    return ModelSpec.from_hf_config({
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "kimi_k2", "hidden_size": 7168,
        "num_hidden_layers": layers, "num_attention_heads": 64, "num_key_value_heads": 64,
        "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_routed_experts": 384,
        "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 1,
        "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
        "v_head_dim": 128, "vocab_size": 163840, "max_position_embeddings": 262144,
        "torch_dtype": "bfloat16", "quantization_config": q}, name="kimi-like")


KIMI_INT4_Q = {  # moonshotai/Kimi-K2.5 quantization_config (compressed-tensors W4A16, group 32)
    "quant_method": "compressed-tensors", "format": "pack-quantized",
    "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None,
                                  "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                              "strategy": "group", "group_size": 32}}},
    "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*",
               "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"]}


# ------------------------------------------------------------------------------ detection
def test_mxfp4_checkpoint_is_fp4_mxfp4_experts_only():
    m = gpt_oss_120b()
    assert (m.checkpoint_dtype, m.quant_scheme, m.default_weight_dtype) == ("fp4", "mxfp4", "fp4")
    assert m.quant_exclude == ("attention",)  # no dense / shared MLP in gpt-oss
    assert m.keeps_bf16("attention") and not m.keeps_bf16("experts")
    # quantizing it some other way online is not the checkpoint's layout
    assert not m.keeps_bf16("attention", weight_dtype="fp8")
    assert gpt_oss_120b(None).quant_exclude == ()


def test_kimi_int4_routed_experts_only_group32():
    m = kimi_like(KIMI_INT4_Q)
    assert (m.checkpoint_dtype, m.quant_scheme) == ("int4", "int4_group32")
    assert m.quant_exclude == ("attention", "mlp", "shared_experts")


def test_modelopt_exclusions_per_projection_and_mtp_layers_ignored():
    # nvidia/DeepSeek-V3.1-NVFP4 hf_quant_config.json: q_a/q_b/kv_a/kv_b of every layer, not o_proj;
    # "model.layers.4*" is the MTP layer beyond num_hidden_layers
    names = [f"model.layers.{i}.self_attn.{p}" for i in range(4)
             for p in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj")]
    q = {"quant_method": "modelopt", "quantization": {"quant_algo": "NVFP4", "group_size": 16,
                                                      "exclude_modules": ["lm_head", *names,
                                                                          "model.layers.4*"]}}
    m = kimi_like(q)
    assert m.checkpoint_dtype == "fp4"
    assert m.quant_exclude == ("attention.q_a", "attention.q_b", "attention.kv_a", "attention.kv_b")
    # wildcards (nvidia/MiniMax-M2.5-NVFP4, Kimi-K2.5-NVFP4: "...layers.N.self_attn*", also under
    # a language_model. prefix) exclude the whole attention
    for pre in ("model", "language_model.model"):
        q2 = {"quant_method": "modelopt", "quant_algo": "NVFP4",
              "ignore": [f"{pre}.layers.{i}.self_attn*" for i in range(4)]}
        assert kimi_like(q2).quant_exclude == ("attention",)
    # only some layers excluded: not a whole-component exclusion
    q3 = {"quant_method": "modelopt", "quant_algo": "NVFP4", "ignore": ["model.layers.0.self_attn*"]}
    assert kimi_like(q3).quant_exclude == ()


def test_fp8_router_and_head_exclusions_change_nothing():
    # MiniMaxAI/MiniMax-M2.5: modules_to_not_convert [gate, e_score_correction_bias, lm_head]
    # (router / head are bf16 in the model anyway); vLLM's is_layer_skipped matches names exactly
    q = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128],
         "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"]}
    m = kimi_like(q)
    assert (m.checkpoint_dtype, m.quant_scheme, m.quant_exclude) == ("fp8", "fp8_block", ())


# ------------------------------------------------------------------------------ bytes
def test_mxfp4_bytes_per_component():
    m = gpt_oss_120b()
    assert linear_weight_bytes_per_elem("fp4", "mxfp4") == pytest.approx(0.5 + 1 / 32)
    assert linear_weight_bytes_per_elem("fp4") == pytest.approx(0.5 + 1 / 16)  # NVFP4 unchanged
    c = weight_bytes_by_component(m, ReplicaConfig(tp=1), 0)
    bf16 = weight_bytes_by_component(m, ReplicaConfig(tp=1, weight_dtype="bf16"), 0)
    assert c["attention"] == bf16["attention"]                      # attention stays bf16
    assert c["experts"] == pytest.approx(bf16["experts"] * (0.5 + 1 / 32) / 2, rel=1e-9)
    # published: gpt-oss-120b's checkpoint is 60.8 GiB ("fits on one 80 GB GPU", model card)
    assert sum(c.values()) / GIB == pytest.approx(60.8, abs=0.3)


def test_gpt_oss_120b_fits_one_h100_at_tp1():
    dev = load_cluster("h100-sxm-1x8").pools[0].device
    m = gpt_oss_120b()
    r = replica_memory(m, dev, ReplicaConfig(tp=1, max_model_len=8192))
    assert r.fits, r.problem
    assert r.weights_per_gpu_max / GIB < 62
    # read as bf16 (what apex-opt did before MXFP4 was recognised) it cannot fit
    assert not replica_memory(m, dev, ReplicaConfig(tp=1, max_model_len=8192,
                                                    weight_dtype="bf16")).fits


def test_kimi_int4_bytes_match_published_total():
    m = kimi_like(KIMI_INT4_Q, layers=61)
    c = weight_bytes_by_component(m, ReplicaConfig(tp=1), 0)
    bf16 = weight_bytes_by_component(m, ReplicaConfig(tp=1, weight_dtype="bf16"), 0)
    for comp in ("attention", "mlp", "shared_experts"):
        assert c[comp] == bf16[comp]
    assert c["experts"] == pytest.approx(bf16["experts"] * (0.5 + 2 / 32) / 2, rel=1e-9)
    # Kimi-K2-Thinking / K2.5 int4 checkpoint: ~594 GB on disk
    assert sum(c.values()) / 1e9 == pytest.approx(594, rel=0.01)
    # the same model with int4 everywhere (the old reading) was ~14 GB lighter
    assert sum(c.values()) > sum(weight_bytes_by_component(
        kimi_like({**KIMI_INT4_Q, "ignore": []}, layers=61), ReplicaConfig(tp=1), 0).values()) + 10e9


def test_single_excluded_projection_priced_by_its_share():
    names = [f"model.layers.{i}.self_attn.kv_b_proj" for i in range(4)]
    m = kimi_like({"quant_method": "fp8", "weight_block_size": [128, 128],
                   "modules_to_not_convert": names})
    assert m.quant_exclude == ("attention.kv_b",)
    fp8 = weight_bytes_by_component(m, ReplicaConfig(tp=1), 0)["attention"]
    kv_b = next(op for op in m.attention_linear_ops() if op.name == "kv_b")
    plain = weight_bytes_by_component(kimi_like({"quant_method": "fp8",
                                                 "weight_block_size": [128, 128]}),
                                      ReplicaConfig(tp=1), 0)["attention"]
    assert fp8 - plain == pytest.approx(4 * kv_b.params * (2 - 1), rel=1e-6)


# ------------------------------------------------------------------------------ kernel paths
@pytest.mark.parametrize("engine, cluster, path", [
    ("vllm", "h100-sxm-1x8", "weight_only"),   # triton_kernels matmul_ogs, bf16 activations
    ("vllm", "h200-1x8", "weight_only"),
    ("vllm", "b200-1x8", "weight_only"),       # FlashInfer TRT-LLM-gen MXFP4 x BF16 by default
    ("sglang", "b200-1x8", "w4a8"),            # flashinfer_mxfp4, MXFP8 activations
    ("sglang", "h100-sxm-1x8", "weight_only"),
    ("vllm-0.6", "h100-sxm-1x8", None),        # no MXFP4 before vLLM 0.10.1
])
def test_mxfp4_path_per_engine_and_gpu(engine, cluster, path):
    assert mxfp4_path(load_cluster(cluster).pools[0].device, engine) == path


def test_gpt_oss_gemms_attention_bf16_experts_mxfp4():
    pool = load_cluster("h100-sxm-1x8").pools[0]
    m = gpt_oss_120b()
    it = IterationCostModel(m, pool, ReplicaConfig(tp=1), load_engine("vllm"))
    assert (it.compute_dtype, it.weight_dtype) == ("bf16", "mxfp4")
    assert it.weight_elt_bytes == pytest.approx(0.5 + 1 / 32)
    assert {c for c, _, _ in it._bf16_ops} == {"attention_proj"}
    # the attention projections cost what a bf16 model's do; the experts stream ~1/4 of bf16's bytes
    ref = IterationCostModel(gpt_oss_120b(None), pool, ReplicaConfig(tp=1, weight_dtype="bf16"),
                             load_engine("vllm"))
    import numpy as np
    ctx = np.full(32, 2048)
    a = it.iteration(ctx, with_breakdown=True).breakdown
    b = ref.iteration(ctx, with_breakdown=True).breakdown
    assert a["attention_proj"] == pytest.approx(b["attention_proj"], rel=1e-9)
    assert a["moe_experts"] < 0.45 * b["moe_experts"]
    # SGLang on B200: MXFP4 x MXFP8 experts at the fp8 rate
    b200 = load_cluster("b200-1x8").pools[0]
    assert IterationCostModel(m, b200, ReplicaConfig(tp=1), load_engine("sglang")).compute_dtype == "fp8"


def test_mxfp4_refused_where_no_engine_runs_it():
    pool = load_cluster("h100-sxm-1x8").pools[0]
    with pytest.raises(InputError, match="MXFP4"):
        IterationCostModel(gpt_oss_120b(), pool, ReplicaConfig(tp=1), load_engine("vllm-0.6"))


def test_gptq_dynamic_skip_and_awq_modules_to_not_convert():
    # GPTQModel "dynamic": {"-:<regex>": {}} leaves matching modules unquantized (vLLM
    # get_dynamic_override); AWQ modules_to_not_convert names modules by prefix
    gptq = {"quant_method": "gptq", "bits": 4, "group_size": 128,
            "dynamic": {"-:.*shared_experts.*": {}, "+:.*experts.*": {"bits": 4}}}
    m = kimi_like(gptq)
    assert (m.checkpoint_dtype, m.quant_scheme, m.quant_exclude) == ("int4", "int4_group",
                                                                     ("shared_experts",))
    awq = {"quant_method": "awq", "bits": 4, "group_size": 64,
           "modules_to_not_convert": [f"model.layers.{i}.self_attn" for i in range(4)]}
    m = kimi_like(awq)
    assert (m.quant_scheme, m.quant_exclude) == ("int4_group64", ("attention",))
    assert linear_weight_bytes_per_elem("int4", "int4_group64") == pytest.approx(0.5 + 2 / 64)


# ------------------------------------------------------------------------------ KV dtype
@pytest.mark.parametrize("q, kv", [
    # hf_quant_config.json (nvidia/DeepSeek-V3.1-NVFP4 ...): quantization.kv_cache_quant_algo
    ({"quant_method": "modelopt", "quantization": {"quant_algo": "NVFP4",
                                                   "kv_cache_quant_algo": "FP8"}}, "fp8"),
    # config.json ModelOpt (nvidia/Kimi-K2.5-NVFP4): kv_cache_scheme static float 8-bit
    ({"quant_method": "modelopt", "quant_algo": "NVFP4",
      "kv_cache_scheme": {"dynamic": False, "num_bits": 8, "type": "float"}}, "fp8"),
    ({"quant_method": "modelopt", "quant_algo": "NVFP4", "kv_cache_quant_algo": None}, ""),
    # vLLM reads it for ModelOpt only: a compressed-tensors kv_cache_scheme does not set it
    ({**KIMI_INT4_Q, "kv_cache_scheme": {"dynamic": False, "num_bits": 8, "type": "float"}}, ""),
])
def test_checkpoint_kv_dtype(q, kv):
    assert kimi_like(q).checkpoint_kv_dtype == kv


def test_unset_kv_dtype_is_the_checkpoints_where_the_engine_reads_it():
    q = {"quant_method": "modelopt", "quantization": {"quant_algo": "NVFP4",
                                                      "kv_cache_quant_algo": "FP8"}}
    m = kimi_like(q, layers=61)
    dev = load_cluster("b200-1x8").pools[0].device
    # vLLM resolve_kv_cache_dtype_string from 0.14 (absent in 0.12 / 0.13); SGLang from 0.5.3
    for eng, kv in (("vllm", "fp8"), ("vllm@0.14.0", "fp8"), ("vllm@0.13.0", "bf16"),
                    ("sglang", "fp8"), ("sglang@0.5.2", "bf16"), ("vllm-0.6", "bf16")):
        assert ReplicaConfig(tp=8).resolved(load_engine(eng), m, dev).kv_dtype == kv, eng
    # an explicit kv_dtype wins; None means unset; a bf16 checkpoint keeps bf16
    assert ReplicaConfig(tp=8, kv_dtype="bf16").resolved(load_engine("vllm"), m, dev).kv_dtype == "bf16"
    assert ReplicaConfig(tp=8, kv_dtype=None).resolved(load_engine("vllm"), m, dev).kv_dtype == "fp8"
    assert ReplicaConfig(tp=8).resolved(load_engine("vllm"), kimi_like(KIMI_INT4_Q), dev).kv_dtype == "bf16"
    # served in another dtype than the checkpoint's: not its KV scales either
    assert ReplicaConfig(tp=8, weight_dtype="fp8").resolved(load_engine("vllm"), m, dev).kv_dtype == "bf16"
    # the KV pool holds twice the tokens
    e = load_engine("vllm")
    fp8 = replica_memory(m, dev, ReplicaConfig(tp=8), e).kv_tokens
    bf16 = replica_memory(m, dev, ReplicaConfig(tp=8, kv_dtype="bf16"), e).kv_tokens
    assert fp8 == pytest.approx(2 * bf16, rel=0.01)


def test_mxfp4_checkpoint_planned_where_its_kernels_run():
    # SGLang runs MXFP4 on Hopper (triton_kernels) although it runs no NVFP4 there; vLLM on
    # MI300X (ROCm Triton); vLLM 0.6 has none
    from apex_opt.check import CheckOptions, check

    m = gpt_oss_120b()
    for cluster, engine in (("h100-sxm-1x8", "sglang"), ("mi300x-1x8", "vllm")):
        r = check(m, load_cluster(cluster), CheckOptions(engine=engine, max_model_len=8192),
                  suggest=False)
        assert r.fits and any(f.tp == 1 for f in r.feasible), (cluster, engine)
    with pytest.raises(InputError, match="MXFP4"):
        check(m, load_cluster("h100-sxm-1x8"), CheckOptions(engine="vllm-0.6", max_model_len=8192))


def test_cli_kv_dtype_default_follows_the_checkpoint(tmp_path):
    import json

    from click.testing import CliRunner

    from apex_opt.cli import main

    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
           "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 14336, "vocab_size": 128256, "max_position_embeddings": 8192,
           "torch_dtype": "bfloat16",
           "quantization_config": {"quant_method": "modelopt", "quant_algo": "FP8",
                                   "kv_cache_quant_algo": "FP8"}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    args = ["estimate", "--model", str(tmp_path), "--cluster", "h100-sxm-1x8", "--tp", "1",
            "--batch", "decode:4x512", "--json"]
    for extra, kv in (([], "fp8"), (["--kv-dtype", "bf16"], "bf16"), (["--engine", "vllm@0.13.0"], "bf16")):
        r = CliRunner().invoke(main, args + extra)
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["kv_dtype"] == kv, extra


def test_mxfp4_hopper_expert_kernel_is_sm_bound():
    # AIConfigurator's published kernel tables (moe_dtype w4a16_mxfp4, gpt-oss-120b MoE layer, TP1,
    # 32 tokens, balanced): H100 SXM 0.687 ms (vLLM 0.24 Triton matmul_ogs), H200 0.717 ms (vLLM
    # 0.18): H200's 1.4x HBM bandwidth buys nothing (data/kernels.yaml common.mxfp4)
    from apex_opt.costmodel import DeviceCostModel

    t = {}
    for cl in ("h100-sxm-1x8", "h200-1x8"):
        dev = DeviceCostModel(load_cluster(cl).pools[0].device)
        t[cl] = dev.fused_moe(32.0, 2880, 2880, 4, 128, 1, 1, "bf16", "mxfp4", balanced=True).time_s
    assert t["h100-sxm-1x8"] * 1e3 == pytest.approx(0.687, rel=0.15)
    assert t["h200-1x8"] * 1e3 == pytest.approx(0.717, rel=0.15)
    assert t["h200-1x8"] > 0.9 * t["h100-sxm-1x8"]
