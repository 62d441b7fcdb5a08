"""Attention, element-wise and copy cost models."""

from __future__ import annotations

import numpy as np
import pytest

from apex_opt.costmodel import DeviceCostModel
from apex_opt.errors import InputError
from apex_opt.specs.cluster import DeviceSpec


@pytest.fixture(scope="module")
def h() -> DeviceCostModel:
    dev = DeviceSpec(name="h100-sxm-80gb", memory_gib=79.2, peak_tflops={"bf16": 989.4, "fp8": 1978.9},
                     hbm_bandwidth_gbps=3350, power_limit_w=700, idle_power_w=75, profile="h100-sxm-80gb")
    return DeviceCostModel(dev)


def test_decode_grows_with_context_and_uses_each_length(h):
    ts = [h.attention_decode(8, 1, 128, [L] * 16).time_s for L in (128, 1024, 8192, 65536)]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    # per-sequence lengths: one long + many short == the sum, not an average that hides the long one
    mixed = h.attention_decode(8, 1, 128, [100_000] + [100] * 15).time_s
    assert mixed > h.attention_decode(8, 1, 128, [6344] * 16).time_s * 0.99
    assert h.attention_decode(8, 1, 128, np.array([100_000, 100])).time_s > h.attention_decode(8, 1, 128, [100, 100]).time_s


def test_decode_matches_table_and_fp8_kv(h):
    # attention.csv: batch 64, 32 q / 8 kv heads, L = 8192 -> measured 0.707 ms (~3 TB/s)
    t = h.attention_decode(32, 8, 128, [8192] * 64).time_s
    assert t == pytest.approx(0.707e-3, rel=0.1)
    big = h.attention_decode(8, 1, 128, [131072] * 64, "bf16").time_s
    assert h.attention_decode(8, 1, 128, [131072] * 64, "fp8").time_s == pytest.approx(big / 2, rel=0.1)


def test_decode_power_rises_with_batch(h):
    p1 = h.attention_decode(64, 8, 128, [4096]).power_w
    p128 = h.attention_decode(64, 8, 128, [4096] * 128).power_w
    assert p1 < 400 < p128 <= 700


def test_prefill_causal_and_chunked(h):
    full = h.attention_prefill(32, 8, 128, [(4096, 0)]).time_s
    half = h.attention_prefill(32, 8, 128, [(2048, 0)]).time_s
    assert full > 2.5 * half  # quadratic
    chunk = h.attention_prefill(32, 8, 128, [(512, 16384)]).time_s
    assert chunk > h.attention_prefill(32, 8, 128, [(512, 0)]).time_s
    two = h.attention_prefill(32, 8, 128, [(1024, 0), (1024, 0)]).time_s
    assert two < 2 * h.attention_prefill(32, 8, 128, [(1024, 0)]).time_s


def test_mla(h):
    d = h.mla_decode(16, 512, 64, [4096] * 64)
    g = h.attention_decode(16, 16, 128, [4096] * 64)
    assert d.time_s < g.time_s  # latent is much smaller than full K/V of 16 heads
    p = h.mla_prefill(16, 128, 64, 128, [(4096, 0)])
    assert p.time_s > h.attention_prefill(16, 16, 128, [(4096, 0)]).time_s * 0.9


def test_elementwise_and_copy(h):
    assert h.elementwise("rmsnorm", 1, 8192).time_s == pytest.approx(25.6e-6, rel=0.05)  # table
    fused = h.elementwise("fused_add_rmsnorm", 1, 8192).time_s
    assert fused < 10e-6
    # the engines' one-kernel RMSNorm (no residual): a streaming kernel, not the unfused table op
    one = h.elementwise("rms_norm", 1, 1536).time_s
    assert one < 10e-6 and one <= fused
    assert h.elementwise("silu_and_mul", 8192, 28672).time_s > h.elementwise("silu_and_mul", 64, 28672).time_s
    c = h.memcpy(2 * 2 ** 30)
    assert c.time_s == pytest.approx(1.42e-3, rel=0.1)
    assert 450 < c.power_w < 600
    with pytest.raises(InputError):
        h.elementwise("nope", 1, 1)
    with pytest.raises(InputError):
        h.attention_decode(8, 1, 128, [-1])


def test_mla_norms_cost_one_kernel_each():
    """DeepSeek's q_a / kv_a layernorms run as the engines' fused RMSNorm kernel: on the profiled
    H100 each costs a few microseconds, not the ~25 us of the unfused PyTorch op in the table."""
    from apex_opt.costmodel.iteration import IterationCostModel
    from apex_opt.registry import load_cluster
    from apex_opt.specs.model import load_model
    from apex_opt.specs.plan import ReplicaConfig

    model = load_model("deepseek-v3")
    pool = load_cluster("h100-sxm-1x8").pools[0]
    cm = IterationCostModel(model, pool, ReplicaConfig(tp=8, weight_dtype="fp8"))
    c = cm.iteration(np.full(32, 2000), with_breakdown=True)
    per_layer_ew = c.breakdown["elementwise"] / model.num_layers
    # 2 fused add-norms, 2 MLA norms, rope, activation and MoE aux kernels at 32 tokens
    assert per_layer_ew < 45e-6

