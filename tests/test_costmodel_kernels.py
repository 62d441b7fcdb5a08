"""Kernel paths engines really run: checkpoint dtype defaults, fp8 activation quant, Marlin,
fused MoE at small batch, MLA decode."""

from __future__ import annotations

import json

from click.testing import CliRunner

from apex_opt.cli import main
from apex_opt.specs.model import ModelSpec, load_model


def test_checkpoint_quantization_is_read_from_the_hf_config():
    ds = load_model("deepseek-v3")
    assert ds.checkpoint_dtype == "fp8" and ds.quant_scheme == "fp8_block"
    assert ds.default_weight_dtype == "fp8"
    llama = load_model("llama-3.1-8b")
    assert llama.default_weight_dtype == "bf16" and llama.quant_scheme == ""
    base = {"hidden_size": 4096, "num_hidden_layers": 2, "num_attention_heads": 32, "vocab_size": 1000,
            "max_position_embeddings": 4096, "intermediate_size": 14336}
    ct = dict(base, quantization_config={"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}})
    spec = ModelSpec.from_hf_config(ct)
    assert (spec.checkpoint_dtype, spec.quant_scheme) == ("fp8", "fp8_channel")
    awq = ModelSpec.from_hf_config(dict(base, quantization_config={"quant_method": "awq", "bits": 4}))
    assert (awq.default_weight_dtype, awq.quant_scheme) == ("int4", "int4_group")
    mo = ModelSpec.from_hf_config(dict(base, quantization_config={"quant_method": "modelopt",
                                                                  "quant_algo": "FP8"}))
    assert (mo.default_weight_dtype, mo.quant_scheme) == ("fp8", "fp8_tensor")


def test_deepseek_v3_fits_one_h200_node_without_flags():
    res = CliRunner().invoke(main, ["check", "--model", "deepseek-v3", "--cluster", "h200-1x8", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["options"]["weight_dtype"] == "fp8"
    assert any(r["tp"] == 8 and r["pp"] == 1 for r in doc["feasible"])
    # an explicit --weight-dtype still wins: bf16 DeepSeek-V3 does not fit one node
    res = CliRunner().invoke(main, ["check", "--model", "deepseek-v3", "--cluster", "h200-1x8",
                                    "--weight-dtype", "bf16", "--json"])
    assert res.exit_code == 3


# ---------------------------------------------------------------------------------- kernel physics
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from apex_opt.costmodel import DeviceCostModel  # noqa: E402
from apex_opt.costmodel.iteration import IterationCostModel  # noqa: E402
from apex_opt.registry import load_cluster, load_device  # noqa: E402
from apex_opt.specs.plan import ReplicaConfig  # noqa: E402


@pytest.fixture(scope="module")
def h200():
    return DeviceCostModel(load_device("h200-sxm-141gb"))


def _bd(model, cluster, cfg, decode=(), prefill=()):
    it = IterationCostModel(load_model(model), load_cluster(cluster).pools[0], cfg)
    return it.iteration(np.asarray(decode, dtype=int), list(prefill), with_breakdown=True)


def test_fp8_activation_quant_is_charged_and_grows_with_tokens(h200):
    small, large = h200.act_quant("fp8_tensor", 16, 8192), h200.act_quant("fp8_tensor", 8192, 8192)
    assert large.time_s > 8 * small.time_s
    # per-tensor dynamic quant is two passes (max, then quant); per-token one
    assert h200.act_quant("fp8_tensor", 8192, 8192).time_s > 1.4 * h200.act_quant("fp8_channel", 8192, 8192).time_s
    cfg8 = ReplicaConfig(tp=8, weight_dtype="fp8")
    f8 = _bd("llama-3.1-70b", "h100-sxm-1x8", cfg8, prefill=[(4096, 0)])
    bf = _bd("llama-3.1-70b", "h100-sxm-1x8", ReplicaConfig(tp=8), prefill=[(4096, 0)])
    assert f8.breakdown["act_quant"] > 0.05 * f8.breakdown["attention_proj"]
    assert "act_quant" not in bf.breakdown


def test_a100_fp8_runs_weight_only_marlin_bound_by_weight_bytes():
    a100 = DeviceCostModel(load_device("a100-sxm-80gb"))
    bf, f8, i4 = (a100.gemm(1, 8192, 8192, "bf16", wd).time_s for wd in (None, "fp8", "int4"))
    # decode GEMM streams the weights: fp8 ~ half, int4 ~ a quarter (+ group scales) of bf16
    assert 0.45 < f8 / bf < 0.65 and 0.25 < i4 / bf < 0.45
    # large m is compute-bound on bf16 tensor cores, with Marlin's dequant overhead on top
    assert a100.gemm(8192, 8192, 8192, "fp8").time_s > a100.gemm(8192, 8192, 8192, "bf16").time_s
    # no fp8 activation quant on A100 (not W8A8)
    res = _bd("llama-3.1-70b", "a100-80g-1x8", ReplicaConfig(tp=8, weight_dtype="fp8"), prefill=[(2048, 0)])
    assert "act_quant" not in res.breakdown


def test_fused_moe_small_batch_reads_each_active_experts_weights(h200):
    # Mixtral-like layer, one token, top-2 of 8: two experts' weights (bf16) are streamed
    one = h200.fused_moe(1, 4096, 14336, 2, 8, balanced=True).time_s
    expert_bytes = 3 * 4096 * 14336 * 2.0
    bw = 4.8e12
    assert 2 * expert_bytes / bw < one < 2 * expert_bytes / (0.6 * bw)
    two = h200.fused_moe(2, 4096, 14336, 2, 8, balanced=True).time_s
    assert two == pytest.approx(2 * one, rel=0.15)
    # all 8 experts hit from 4 tokens on: time saturates until compute takes over
    t4, t64 = (h200.fused_moe(t, 4096, 14336, 2, 8, balanced=True).time_s for t in (4, 64))
    assert t64 == pytest.approx(t4, rel=0.1)
    # random routing over 256 experts: expected distinct experts grow sub-linearly (8 -> ~101
    # experts' weights, x12.6), on top of the aux kernels' fixed latency floors
    r1, r16 = (h200.fused_moe(t, 7168, 2048, 8, 256, tp=8, dtype="fp8", block_fp8=True).time_s for t in (1, 16))
    assert 3 < r16 / r1 < 12.6


def test_mla_decode_scales_with_latent_kv(h200):
    short = h200.mla_decode(16, 512, 64, [1024] * 64).time_s
    long = h200.mla_decode(16, 512, 64, [8192] * 64).time_s
    assert 4 < long / short < 8.5
    # latent bytes per token and layer: (512 + 64) x 2 B, shared by all heads
    nbytes = 64 * 8192 * 576 * 2.0
    assert long > nbytes / 4.8e12


def test_deepseek_decode_has_the_kernels_engines_run():
    res = _bd("deepseek-v3", "h200-1x8", ReplicaConfig(tp=8, weight_dtype="fp8"), decode=[1536] * 4)
    bd = res.breakdown
    for cls in ("act_quant", "moe_experts", "moe_shared", "moe_router", "attention", "communication"):
        assert bd[cls] > 0, cls
    # more concurrent streams hit more experts: MoE time grows well before compute matters
    res16 = _bd("deepseek-v3", "h200-1x8", ReplicaConfig(tp=8, weight_dtype="fp8"), decode=[1536] * 16)
    assert res16.breakdown["moe_experts"] > 1.8 * bd["moe_experts"]


def test_dp_attention_splits_attention_and_gathers_for_the_moe():
    model, pool = load_model("deepseek-v3"), load_cluster("h200-1x8").pools[0]
    cfg = ReplicaConfig(tp=8, weight_dtype="fp8")
    tp_only = IterationCostModel(model, pool, cfg)
    dpa = IterationCostModel(model, pool, cfg.model_copy(update={"attention_dp": 8}))
    ctx = np.full(256, 4096)
    a_tp = tp_only.iteration(ctx, with_breakdown=True).breakdown
    a_dp = dpa.iteration(ctx, with_breakdown=True).breakdown
    # each rank reads only its own 32 sequences' latent KV (TP reads all 256 on every GPU)
    assert a_dp["attention"] < 0.5 * a_tp["attention"]
    # ... but holds whole attention weights (no TP split of the projections)
    assert a_dp["attention_proj"] > 1.5 * a_tp["attention_proj"]
    # the MoE still sees every token
    assert a_dp["moe_experts"] == pytest.approx(a_tp["moe_experts"])
    # uneven split: 9 sequences over 8 ranks -> the rank with 2 sets the pace
    t9 = dpa._attention(np.full(9, 4096), [])[0]
    t8 = dpa._attention(np.full(8, 4096), [])[0]
    assert t9 > t8


def test_dp_attention_needs_a_moe_model_and_a_dividing_size():
    pool = load_cluster("h100-sxm-1x8").pools[0]
    from apex_opt.errors import InputError

    # a dense model has nothing to share across attention ranks: DP is plain replicas
    with pytest.raises(InputError):
        IterationCostModel(load_model("llama-3.1-70b"), pool,
                           ReplicaConfig(tp=8).model_copy(update={"attention_dp": 8}))
    with pytest.raises(InputError):
        IterationCostModel(load_model("deepseek-v3"), pool,
                           ReplicaConfig(tp=8, weight_dtype="fp8").model_copy(update={"attention_dp": 3}))


def test_dp_attention_on_a_gqa_moe_splits_kv_reads_over_the_ranks():
    # vLLM V1 DP + EP (and SGLang DP attention) for a GQA MoE such as Qwen3-235B: each of the
    # 4 attention ranks (TP2) reads the KV of its own quarter of the sequences
    model, pool = load_model("qwen3-235b-a22b"), load_cluster("h200-1x8").pools[0]
    cfg = ReplicaConfig(tp=8, ep=8, weight_dtype="fp8")
    tp_only = IterationCostModel(model, pool, cfg)
    dpa = IterationCostModel(model, pool, cfg.model_copy(update={"attention_dp": 4}))
    assert dpa.attn_dp == 4 and dpa.attn_tp == 2
    ctx = np.full(128, 8192)
    a_tp = tp_only.iteration(ctx, with_breakdown=True).breakdown
    a_dp = dpa.iteration(ctx, with_breakdown=True).breakdown
    # TP8 with 4 KV heads replicates them: every GPU reads 1 head x all 128 sequences; an
    # attention rank of 2 GPUs reads 2 heads x 32 sequences per GPU -> half the bytes
    assert a_dp["attention"] < 0.7 * a_tp["attention"]
    assert a_dp["moe_experts"] == pytest.approx(a_tp["moe_experts"])


def test_v1_fuses_fp8_input_quant_into_the_producing_kernel():
    from apex_opt.specs.engine import load_engine

    model, pool = load_model("llama-3.1-70b"), load_cluster("h100-sxm-1x8").pools[0]
    cfg = ReplicaConfig(tp=4, weight_dtype="fp8")
    ctx = np.full(64, 2048)
    v1 = IterationCostModel(model, pool, cfg, load_engine("vllm")).iteration(ctx, with_breakdown=True)
    sg = IterationCostModel(model, pool, cfg, load_engine("sglang")).iteration(ctx, with_breakdown=True)
    # V1: only o_proj's input (after attention) needs its own quant kernel; SGLang launches four
    assert 0 < v1.breakdown["act_quant"] < 0.5 * sg.breakdown["act_quant"]
    # the LM head is never quantized: same bf16 time under both dtypes
    bf = IterationCostModel(model, pool, ReplicaConfig(tp=4), load_engine("vllm")).iteration(ctx, with_breakdown=True)
    assert v1.breakdown["lm_head"] == pytest.approx(bf.breakdown["lm_head"])
