"""The NVFP4 MoE kernel is the engine's: vLLM runs FlashInfer TRT-LLM-gen (~0.9 of HBM), SGLang
0.5.9 FlashInfer CuteDSL (~0.65 of HBM, data/kernels.yaml fused_moe.backend_stream_eff)."""

from __future__ import annotations

import pytest

from apex_opt.costmodel import DeviceCostModel
from apex_opt.costmodel.kernels import kernel_facts
from apex_opt.registry import load_device


def test_sglang_streams_nvfp4_experts_slower_than_vllm():
    kf = kernel_facts()
    assert kf.moe_fp4_backend["sglang"] == "flashinfer_cutedsl"
    assert "vllm" not in kf.moe_fp4_backend
    dev = DeviceCostModel(load_device("b200"))
    # Kimi-K2.5-shaped layer, 128 tokens: every one of 384 experts hit, weight-stream bound
    args = (128, 7168, 2048, 8, 384)
    v = dev.fused_moe(*args, dtype="fp4").time_s
    s = dev.fused_moe(*args, dtype="fp4", backend="flashinfer_cutedsl").time_s
    assert s > 1.15 * v
    # 9.51 GB of fp4 weights at ~0.65 x 8 TB/s: ~1.8 ms, not the TRT-LLM-gen ~1.33 ms
    assert s == pytest.approx(9.51e9 / (0.65 * 8e12), rel=0.25)
    # other dtypes ignore the fp4 kernel's rate
    assert dev.fused_moe(*args, dtype="bf16", backend="flashinfer_cutedsl").time_s == pytest.approx(
        dev.fused_moe(*args, dtype="bf16").time_s)
