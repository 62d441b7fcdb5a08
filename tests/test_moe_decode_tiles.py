"""Decode-size Triton fused-MoE cost against AIConfigurator's measured MoE kernel tables
(ai-dynamo/aiconfigurator aic-core/src/aiconfigurator_core/systems/data/<gpu>/moe/<engine>/<ver>/
moe_perf.parquet: the FusedMoE module inside a CUDA graph, router logits given, 'balanced'
routing; numbers in microseconds, copied from the tables).

Two mechanisms are pinned (data/kernels.yaml fused_moe.tile_latency_ns, costmodel fused_moe):
* every output tile of the expert GEMMs adds a fixed latency, so small expert shards (high TP)
  stream their weights well below the copy rate -- without the term the TP8-TP32 rows run
  1.2-2x too fast;
* under expert parallelism (vLLM's expert_map, no all-to-all kernel) every rank still covers all
  tokens x topk rows in the activation / quant / align kernels and writes zeros for the
  non-local experts' blocks.
"""

import dataclasses

import pytest

from apex_opt.costmodel import DeviceCostModel
from apex_opt.costmodel import kernels as kmod
from apex_opt.costmodel.kernels import kernel_facts
from apex_opt.registry import load_cluster
from apex_opt.specs.engine import load_engine

# MiniMax-M2.5 MoE (hidden 3072, inter 1536, 256 experts, top-8), bf16, H200, vLLM 0.19.0, 64 tokens
H200_VLLM_BF16_MINIMAX_64TOK_US = {1: 1640.53, 4: 452.95, 8: 277.32, 16: 191.59}
# GLM-5 MoE (hidden 6144, inter 2048, 256 experts, top-8), block fp8, B200, SGLang 0.5.9, 64 tokens
B200_SGLANG_FP8_GLM_64TOK_US = {1: 1621.76, 4: 520.61, 8: 367.86, 16: 282.37}
# MiniMax-M2.5 MoE, bf16, H200, vLLM 0.19.0, TP1 with expert parallelism: (ep, tokens) -> us
H200_VLLM_BF16_MINIMAX_EP_US = {(4, 256): 475.66, (8, 256): 265.79, (8, 64): 244.79}


def _dev(cluster: str) -> DeviceCostModel:
    return DeviceCostModel(load_cluster(cluster).pools[0].device)


def _in_graph_us(t_s: float, quant_kernels: int) -> float:
    kernels = 2 + kernel_facts().moe_aux_kernels + quant_kernels
    return t_s * 1e6 - kernels * load_engine("vllm").graph_launch_saving_us


@pytest.fixture
def no_tile_latency(monkeypatch):
    """The cost model without the per-tile latency (every device's entry removed)."""
    _without_tiles(monkeypatch)


@pytest.mark.parametrize("tp", sorted(H200_VLLM_BF16_MINIMAX_64TOK_US))
def test_small_expert_shards_h200_vllm_bf16(tp):
    t = _in_graph_us(_dev("h200-1x8").fused_moe(64, 3072, 1536, 8, 256, tp, 1, "bf16",
                                                balanced=True).time_s, 0)
    assert t == pytest.approx(H200_VLLM_BF16_MINIMAX_64TOK_US[tp], rel=0.2)


@pytest.mark.parametrize("tp", sorted(B200_SGLANG_FP8_GLM_64TOK_US))
def test_small_expert_shards_b200_sglang_block_fp8(tp):
    t = _in_graph_us(_dev("b200-1x8").fused_moe(64, 6144, 2048, 8, 256, tp, 1, "fp8", "fp8",
                                                balanced=True, block_fp8=True).time_s, 2)
    assert t == pytest.approx(B200_SGLANG_FP8_GLM_64TOK_US[tp], rel=0.2)


def test_without_tile_latency_small_shards_run_too_fast(no_tile_latency):
    d = _dev("h200-1x8")
    t = _in_graph_us(d.fused_moe(64, 3072, 1536, 8, 256, 16, 1, "bf16", balanced=True).time_s, 0)
    assert t < 0.8 * H200_VLLM_BF16_MINIMAX_64TOK_US[16]


def test_tile_latency_lowers_the_stream_rate_of_small_shards(monkeypatch):
    """Same 256 hit experts: an 8x smaller shard takes well over 1/8 of the time (the table:
    277 x 8 / 1641 = 1.35); without the term only the fixed kernels' share is added."""
    def ratio():
        d = _dev("h200-1x8")
        t1 = d.fused_moe(64, 3072, 1536, 8, 256, 1, 1, "bf16", balanced=True).time_s
        return 8 * d.fused_moe(64, 3072, 1536, 8, 256, 8, 1, "bf16", balanced=True).time_s / t1
    with_tiles = ratio()
    assert with_tiles > 1.2
    _without_tiles(monkeypatch)
    assert ratio() < with_tiles - 0.07
    # and the term is per GPU: none where no balanced-routing table was measured
    assert "a100-sxm-80gb" not in kernel_facts().moe_tile_latency_s
    assert kernel_facts().moe_tile_latency_s["b200"] > kernel_facts().moe_tile_latency_s["h200-sxm-141gb"]


def _without_tiles(monkeypatch):
    kf = dataclasses.replace(kernel_facts(), moe_tile_latency_s={})
    monkeypatch.setattr(kmod, "kernel_facts", lambda: kf)


def test_tile_latency_hidden_when_compute_bound(monkeypatch):
    """At prefill sizes the tiles are compute bound and their latency overlaps the math; at
    decode sizes it adds."""
    args = (4096, 14336, 2, 8, 1, 1, "bf16")
    big, small = _dev("h200-1x8").fused_moe(8192, *args).time_s, _dev("h200-1x8").fused_moe(16, *args).time_s
    _without_tiles(monkeypatch)
    assert _dev("h200-1x8").fused_moe(8192, *args).time_s == pytest.approx(big, rel=1e-9)
    assert _dev("h200-1x8").fused_moe(16, *args).time_s < small


def test_triton_tile_latency_not_on_fp4_or_marlin_kernels(monkeypatch):
    """The Triton term applies to the Triton kernel only: NVFP4 (FlashInfer, its own measured
    term) and Marlin experts keep their costs."""
    shape = (64, 7168, 2048, 8, 384, 8, 1)
    fp4, marlin = (_dev("b200-1x8").fused_moe(*shape, "fp4").time_s,
                   _dev("b200-1x8").fused_moe(*shape, "bf16", "int4").time_s)
    bf16 = _dev("b200-1x8").fused_moe(*shape, "bf16").time_s
    _without_tiles(monkeypatch)
    assert _dev("b200-1x8").fused_moe(*shape, "fp4").time_s == fp4
    assert _dev("b200-1x8").fused_moe(*shape, "bf16", "int4").time_s == marlin
    assert _dev("b200-1x8").fused_moe(*shape, "bf16").time_s < bf16


@pytest.mark.parametrize("ep_tok", sorted(H200_VLLM_BF16_MINIMAX_EP_US))
def test_expert_parallel_triton_covers_all_rows(ep_tok):
    ep, tokens = ep_tok
    t = _in_graph_us(_dev("h200-1x8").fused_moe(tokens, 3072, 1536, 8, 256, 1, ep, "bf16",
                                                balanced=True).time_s, 0)
    assert t == pytest.approx(H200_VLLM_BF16_MINIMAX_EP_US[ep_tok], rel=0.15)


def test_expert_parallel_activation_spans_all_token_slots():
    """EP8 at 1024 tokens: the silu_and_mul / quant / zero writes over all 8192 token slots make
    the layer much dearer than an eighth of the EP1 activation work would."""
    d = _dev("h200-1x8")
    ep8 = d.fused_moe(1024, 3072, 1536, 8, 256, 1, 8, "fp8", "fp8", balanced=True).time_s
    act_all = d.elementwise("silu_and_mul", 1024 * 8, 1536).time_s
    act_local = d.elementwise("silu_and_mul", 1024, 1536).time_s
    assert act_all > 2 * act_local
    # the weights of the 32 local experts alone (~150 MB fp8) stream in ~35 us at copy speed
    assert ep8 > 150e-6


# MiniMax-M2.5 MoE, NVFP4, B200, vLLM 0.19.0 (kernel_source vllm_flashinfer_trtllm_moe_fp4), 64 tokens
B200_VLLM_NVFP4_MINIMAX_64TOK_US = {1: 306.0, 4: 105.0, 8: 75.0}


@pytest.mark.parametrize("tp", sorted(B200_VLLM_NVFP4_MINIMAX_64TOK_US))
def test_vllm_nvfp4_moe_tiles(tp):
    t = _in_graph_us(_dev("b200-1x8").fused_moe(64, 3072, 1536, 8, 256, tp, 1, "fp4",
                                                balanced=True).time_s, 1)
    assert t == pytest.approx(B200_VLLM_NVFP4_MINIMAX_64TOK_US[tp], rel=0.15)


def test_nvfp4_tile_term_only_on_vllm_kernel(monkeypatch):
    d = _dev("b200-1x8")
    shape = (64, 3072, 1536, 8, 256, 8, 1, "fp4")
    v, s = d.fused_moe(*shape).time_s, d.fused_moe(*shape, backend="flashinfer_cutedsl").time_s
    kf = dataclasses.replace(kernel_facts(), moe_trtllm_tile_latency_s={})
    monkeypatch.setattr(kmod, "kernel_facts", lambda: kf)
    assert _dev("b200-1x8").fused_moe(*shape).time_s < 0.85 * v
    assert _dev("b200-1x8").fused_moe(*shape, backend="flashinfer_cutedsl").time_s == s


def test_sglang_sm100_deepseek_fp8_runs_trtllm_tiles():
    """SGLang on SM100 runs DeepseekV3ForCausalLM's fp8 MoE with flashinfer_trtllm (server_args),
    priced with TRT-LLM-gen's tile latency, not Triton's; on Hopper it stays Triton."""
    import numpy as np

    from apex_opt.costmodel.iteration import IterationCostModel
    from apex_opt.specs.model import load_model
    from apex_opt.specs.plan import ReplicaConfig

    model = load_model("deepseek-v3")
    assert model.architecture in kernel_facts().moe_sglang_sm100_trtllm_archs

    def moe(cluster, engine):
        cm = IterationCostModel(model, load_cluster(cluster).pools[0],
                                ReplicaConfig(tp=8, weight_dtype="fp8"), load_engine(engine))
        return cm.iteration(np.full(32, 2048), with_breakdown=True).breakdown["moe_experts"]

    d = _dev("b200-1x8")
    n_moe = sum(1 for i in range(model.num_layers) if model.is_moe_layer(i))
    tokens = 32
    args = (tokens, 7168, 2048, 8, 256, 8, 1, "fp8", "fp8")
    trt = d.fused_moe(*args, block_fp8=True, backend="flashinfer_trtllm").time_s
    tri = d.fused_moe(*args, block_fp8=True).time_s
    assert trt < 0.9 * tri
    assert moe("b200-1x8", "sglang") == pytest.approx(n_moe * trt, rel=1e-6)
