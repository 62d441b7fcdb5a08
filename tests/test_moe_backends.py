"""Block-fp8 MoE kernel path per vLLM release and GPU (data/kernels.yaml fused_moe.deep_gemm, read
in the vLLM 0.12-0.19 wheels and DeepGEMM's SM90/SM100 kernels) and the cost of each path:
0.13/0.14 on Hopper run DeepGEMM's contiguous layout with the padding blocks' MMAs skipped but
their activation tiles still loaded and their output tiles still stored; SM100 computes them."""

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

# MiniMax-M2.5 experts: hidden 3072, expert width 1536, 256 experts, top-8
H, INTER, E, TOPK = 3072, 1536, 256, 8


@pytest.fixture(scope="module")
def h200():
    return DeviceCostModel(load_device("h200-sxm-141gb"))


@pytest.mark.parametrize("version, cc, tp, ep, backend", [
    # 0.12: padding rows keep id 0 and are computed (SM90 and SM100); TP >= 8 -> Triton
    ("0.12.0", "9.0", 4, 1, "deep_gemm_contiguous"),
    # 0.13 / 0.14: ids -1; DeepGEMM's SM90 kernel skips the MMAs only, SM100 computes them
    ("0.13.0", "9.0", 4, 1, "deep_gemm_contiguous_skip"),
    ("0.14.0", "9.0", 2, 1, "deep_gemm_contiguous_skip"),
    ("0.14.0", "9.0", 8, 1, "triton"),                       # DeepGEMM MoE off at MoE TP >= 8
    ("0.14.0", "9.0", 8, 8, "deep_gemm_contiguous_skip"),    # under EP the MoE TP size is 1
    ("0.13.0", "10.0", 4, 1, "deep_gemm_contiguous"),
    ("0.14.0", "10.3", 4, 1, "deep_gemm_contiguous"),
    # 0.15 / 0.16 oracle: FlashInfer CUTLASS first on SM90 (vllm issue #34249), no TP rule
    ("0.15.1", "9.0", 4, 1, "flashinfer_cutlass"),
    ("0.16.0", "9.0", 8, 1, "flashinfer_cutlass"),
    # 0.17+: Triton first on SM90 without EP, FlashInfer CUTLASS with EP
    ("0.17.0", "9.0", 4, 1, "triton"),
    ("0.18.0", "9.0", 8, 1, "triton"),
    ("0.18.0", "9.0", 8, 8, "flashinfer_cutlass"),
    # SM100 family, 0.15+: FlashInfer TRT-LLM
    ("0.16.0", "10.0", 4, 1, "flashinfer_trtllm"),
    ("0.19.0", "10.0", 2, 1, "flashinfer_trtllm"),
    ("0.19.0", "10.3", 4, 1, "flashinfer_trtllm"),
    # no rule: earlier releases, other GPUs, other engines
    ("0.11.0", "9.0", 4, 1, "triton"),
    ("0.16.0", "8.0", 4, 1, "triton"),
])
def test_vllm_backend_by_release_and_gpu(version, cc, tp, ep, backend):
    assert fp8_block_moe_backend("vllm", version, cc, tp, ep) == backend


def test_other_engines_keep_triton():
    assert fp8_block_moe_backend("sglang", "0.5.9", "9.0", 4) == "triton"
    assert fp8_block_moe_backend("sglang", "0.5.9", "10.0", 4) == "triton"
    assert fp8_block_moe_backend("vllm", None, "9.0", 4) == "triton"


def _moe(dev, tokens, tp, backend="triton"):
    return dev.fused_moe(tokens, H, INTER, TOPK, E, tp, 1, "fp8", None, block_fp8=True,
                         backend=backend).time_s


def test_skip_path_pays_for_the_padding_traffic(h200):
    align = deep_gemm_moe_facts()["m_alignment"]
    m, tp = 4, 4
    m_sum = math.ceil((m * TOPK + E * (align - 1)) / align) * align
    assert m_sum == 32640
    inter_l = INTER // tp
    # 4 tokens hit at most 32 experts: >= 224 of the 255 blocks are padding
    rows_pad = m_sum - m * TOPK * align
    pad_bytes = sum(rows_pad * (k + 4 * math.ceil(k / 128) + 2 * n)
                    for n, k in ((2 * inter_l, H), (H, inter_l)))
    floor = pad_bytes / (h200.bw * h200.cal.stream.eff)
    skip, tri = _moe(h200, m, tp, "deep_gemm_contiguous_skip"), _moe(h200, m, tp)
    assert skip - tri > floor
    assert skip > 2.0 * tri
    # cheaper than 0.12's computed padding rows at small batch, and never dearer than it by more
    # than the (tiny) leftover padding traffic once nearly every expert is hit
    assert skip < 0.8 * _moe(h200, m, tp, "deep_gemm_contiguous")
    assert _moe(h200, 256, tp, "deep_gemm_contiguous_skip") < 1.05 * _moe(h200, 256, tp, "deep_gemm_contiguous")


def test_skip_path_is_nearly_flat_at_small_batch(h200):
    # Triton streams only the hit experts (grows ~linearly with them); the padding traffic is the
    # same whatever the batch, so the DeepGEMM path grows by far less
    tri = [_moe(h200, m, 4) for m in (4, 16)]
    dg = [_moe(h200, m, 4, "deep_gemm_contiguous_skip") for m in (4, 16)]
    assert tri[1] > 1.8 * tri[0]
    assert dg[1] < 1.4 * dg[0]
    # and its extra over Triton shrinks as the hit experts fill the padding blocks
    assert dg[1] - tri[1] < dg[0] - tri[0]


def test_flashinfer_backends_cost_as_triton(h200):
    """FlashInfer CUTLASS has no kernel measurement here: costed as Triton. TRT-LLM-gen has its own
    per-tile latency (data/kernels.yaml fused_moe.trtllm_tile_latency_ns), measured on Blackwell
    only -- on an H200 (where vLLM never selects it) it streams like Triton without tile term."""
    tri = _moe(h200, 8, 4)
    assert _moe(h200, 8, 4, "flashinfer_cutlass") == tri
    assert _moe(h200, 8, 4, "flashinfer_trtllm") < tri
    with pytest.raises(Exception):
        _moe(h200, 8, 4, "deep_gemm_masked")


def test_iteration_follows_the_release():
    model = load_model("qwen3-235b-a22b").model_copy(update={"checkpoint_dtype": "fp8",
                                                             "quant_scheme": "fp8_block"})
    pool = load_cluster("h200-1x8").pools[0]
    cfg = ReplicaConfig(tp=4, weight_dtype="fp8")
    ctx = np.array([1500] * 4)

    def moe(engine):
        it = IterationCostModel(model, pool, cfg, load_engine(engine)).iteration(ctx, [], with_breakdown=True)
        return it.breakdown["moe_experts"]

    v12, v13, v16, v18 = (moe(f"vllm@{v}") for v in ("0.12.0", "0.13.0", "0.16.0", "0.18.0"))
    assert v12 > v13 > 1.5 * v16
    # FlashInfer CUTLASS and Triton: the same weight stream at decode (only Triton's measured
    # block-fp8 compute factor, kernels.yaml triton_compute_eff, differs: < 1 % at 4 tokens)
    assert v16 == pytest.approx(v18, rel=0.01)
