"""Block-fp8 MoE kernel path: vLLM 0.12's DeepGEMM contiguous layout (data/kernels.yaml
fused_moe.deep_gemm). In 0.12 the padding rows of the worst-case M_sum buffer keep expert id 0 and
are computed, so at decode the MoE costs ~E_local*128 rows of dense fp8 GEMM whatever the batch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apex_opt.costmodel import DeviceCostModel, deep_gemm_moe_facts, fp8_block_moe_backend
from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.registry import load_cluster, load_device
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import ReplicaConfig

H, INTER, E, TOPK = 4096, 1536, 128, 8  # Qwen3-235B-A22B experts


@pytest.fixture(scope="module")
def h200():
    return DeviceCostModel(load_device("h200-sxm-141gb"))


def test_backend_by_release_gpu_and_tp():
    assert fp8_block_moe_backend("vllm", "0.12.0", "9.0", 2) == "deep_gemm_contiguous"
    assert fp8_block_moe_backend("vllm@0.12.0", "0.12.0", "10.0", 4) == "deep_gemm_contiguous"
    # TP >= 8: DeepGEMM MoE off by default (vLLM PR #29346); under EP the MoE's TP size is 1
    assert fp8_block_moe_backend("vllm", "0.12.0", "9.0", 8) == "triton"
    assert fp8_block_moe_backend("vllm", "0.12.0", "9.0", 8, ep=8) == "deep_gemm_contiguous"
    # 0.11.0 gated Hopper E8M0 off (decode ran Triton); 0.13 skips the padding MMAs; no fp8 TCs
    assert fp8_block_moe_backend("vllm", "0.11.0", "9.0", 2) == "triton"
    assert fp8_block_moe_backend("vllm", "0.13.0", "9.0", 2) == "deep_gemm_contiguous_skip"
    assert fp8_block_moe_backend("vllm", "0.12.0", "8.0", 2) == "triton"
    assert fp8_block_moe_backend("vllm", None, "9.0", 2) == "triton"
    assert fp8_block_moe_backend("sglang", "0.5.9", "9.0", 2) == "triton"


def _dg(dev, tokens, tp):
    return dev.fused_moe(tokens, H, INTER, TOPK, E, tp, 1, "fp8", "fp8", block_fp8=True,
                         backend="deep_gemm_contiguous").time_s


def _tri(dev, tokens, tp):
    return dev.fused_moe(tokens, H, INTER, TOPK, E, tp, 1, "fp8", "fp8", block_fp8=True).time_s


def test_deep_gemm_is_flat_in_the_decode_batch(h200):
    # Triton streams only the hit experts (grows with the batch); DeepGEMM's rows are fixed by
    # the E*(128-1) padding term
    assert _tri(h200, 32, 2) > 2.0 * _tri(h200, 4, 2)
    assert _dg(h200, 32, 2) < 1.05 * _dg(h200, 4, 2)
    # and it shrinks with the expert shard inter/tp (the dense rows run at every TP), less than
    # proportionally: the down GEMM's K = inter/tp shrinks too and DeepGEMM pays a fixed cost per
    # output tile whatever K (sm90_compute)
    assert 1.3 < _dg(h200, 16, 2) / _dg(h200, 16, 4) < 2.0


def test_deep_gemm_runs_at_its_published_sm90_rate_per_k(h200):
    # deepseek-ai/DeepGEMM's H800 table: TFLOPS = P x K / (K + K0), P = 0.687 x the fp8 peak,
    # K0 = 630 (kernels.yaml fused_moe.deep_gemm.sm90_compute); at K = 512 that is ~610 TFLOPS
    # on an H100/H200 (measured 590), below what the cuBLAS table gives
    f = deep_gemm_moe_facts()["sm90_compute"]
    assert f["compute_capability"] == ("9.0",) and f["k_overhead"] == 630
    peak = h200.peak_flops("fp8")
    rate = peak * f["peak_fraction"] * 512 / (512 + f["k_overhead"])
    assert 560e12 < rate < 660e12
    m_sum = 16384
    # TP8 shard of Qwen3-235B's experts: the down GEMM has K = 1536 / 8 = 192
    t = h200.fused_moe(16, H, INTER, TOPK, E, 8, 1, "fp8", "fp8", block_fp8=True,
                       backend="deep_gemm_contiguous").time_s
    k = INTER // 8
    dg_down = 2.0 * m_sum * H * k / (peak * f["peak_fraction"] * k / (k + f["k_overhead"]))
    assert t > dg_down > 1.5 * h200.gemm(m_sum, H, k, "fp8").time_s
    # SM100 runs other kernels: its DeepGEMM path keeps the dense fp8 table
    b200 = DeviceCostModel(load_device("b200"))
    cc = b200.device.compute_capability
    assert cc not in f["compute_capability"]
    d = (b200.gemm(m_sum, 2 * (INTER // 2), H, "fp8").time_s
         + b200.gemm(m_sum, H, INTER // 2, "fp8").time_s)
    t100 = b200.fused_moe(16, H, INTER, TOPK, E, 2, 1, "fp8", "fp8", block_fp8=True,
                          backend="deep_gemm_contiguous").time_s
    assert d <= t100 < 1.5 * d


def test_padding_rows_are_computed(h200):
    align = deep_gemm_moe_facts()["m_alignment"]
    m_sum = math.ceil((16 * TOPK + E * (align - 1)) / align) * align
    assert m_sum == 16384
    inter_l = INTER // 2
    dense = h200.gemm(m_sum, 2 * inter_l, H, "fp8").time_s + h200.gemm(m_sum, H, inter_l, "fp8").time_s
    t = _dg(h200, 16, 2)
    assert dense <= t < 1.5 * dense
    # at small batches far above the Triton path, which streams ~10 of 128 experts
    assert t > 3.0 * _tri(h200, 2, 2)


def test_backend_only_changes_block_fp8_w8a8(h200):
    bf = h200.fused_moe(16, H, INTER, TOPK, E, 2, 1, "bf16", None)
    bf_dg = h200.fused_moe(16, H, INTER, TOPK, E, 2, 1, "bf16", None, backend="deep_gemm_contiguous")
    assert bf == bf_dg
    ch = h200.fused_moe(16, H, INTER, TOPK, E, 2, 1, "fp8", "fp8")
    ch_dg = h200.fused_moe(16, H, INTER, TOPK, E, 2, 1, "fp8", "fp8", backend="deep_gemm_contiguous")
    assert ch == ch_dg
    with pytest.raises(Exception):
        h200.fused_moe(16, H, INTER, TOPK, E, 2, 1, "fp8", "fp8", block_fp8=True, backend="cutlass")


def test_iteration_picks_the_release_path():
    model = load_model("qwen3-235b-a22b").model_copy(update={"checkpoint_dtype": "fp8",
                                                             "quant_scheme": "fp8_block"})
    pool = load_cluster("h200-1x8").pools[0]
    cfg = ReplicaConfig(tp=2, weight_dtype="fp8")
    ctx = np.array([1500] * 4)
    v12 = IterationCostModel(model, pool, cfg, load_engine("vllm@0.12.0")).iteration(ctx, [], with_breakdown=True)
    ref = IterationCostModel(model, pool, cfg, load_engine("vllm")).iteration(ctx, [], with_breakdown=True)
    assert v12.breakdown["moe_experts"] > 2.0 * ref.breakdown["moe_experts"]
    # per-tensor fp8 (no block scales) keeps the Triton path on every release
    pt = load_model("qwen3-235b-a22b")
    a = IterationCostModel(pt, pool, cfg, load_engine("vllm@0.12.0")).iteration(ctx, [])
    b = IterationCostModel(pt, pool, cfg, load_engine("vllm")).iteration(ctx, [])
    assert a.time_s == pytest.approx(b.time_s, rel=0.02)
