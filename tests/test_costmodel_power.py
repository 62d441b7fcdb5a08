"""Power and energy of operators."""

from __future__ import annotations

import pytest

from apex_opt.costmodel import DeviceCostModel
from apex_opt.costmodel.profile import load_profile
from apex_opt.specs.cluster import DeviceSpec


def dev(profile: str | None = "h100-sxm-80gb") -> DeviceSpec:
    return DeviceSpec(name="h100-sxm-80gb", memory_gib=79.2, peak_tflops={"bf16": 989.4, "fp8": 1978.9},
                      hbm_bandwidth_gbps=3350, power_limit_w=700, idle_power_w=75, profile=profile)


def _measured_j_per_tflop(dtype: str) -> float:
    e = load_profile("h100-sxm-80gb").table("energy.csv")
    return [1.0 / float(t) for c, t in zip(e["case"], e["tflops"]) if c == f"gemm_{dtype}_m8192_n8192_k8192"][0]


@pytest.mark.parametrize("dtype", ["bf16", "fp8"])
def test_energy_per_tflop(dtype):
    c = DeviceCostModel(dev()).gemm(8192, 8192, 8192, dtype)
    j = c.energy_j / (2 * 8192 ** 3 / 1e12)
    assert j == pytest.approx(_measured_j_per_tflop(dtype), rel=0.2)


def test_power_levels():
    h = DeviceCostModel(dev())
    assert h.gemm(8192, 8192, 8192).power_w == pytest.approx(700, rel=0.03)  # compute-bound at the cap
    weight_bound = h.gemm(1, 28672, 8192).power_w
    assert 380 < weight_bound < 560
    assert h.gemm(32, 28672, 8192).power_w > h.gemm(4, 28672, 8192).power_w
    assert h.idle_power_w == 75


def test_sustained_derate():
    burst = DeviceCostModel(dev(), sustained=False)
    sus = DeviceCostModel(dev())
    short = sus.gemm(1024, 8192, 8192).time_s / burst.gemm(1024, 8192, 8192).time_s
    long = sus.gemm(8192, 28672, 8192).time_s / burst.gemm(8192, 28672, 8192).time_s
    assert short > 1.05 and long < 1.02
    assert sus.gemm(1, 8192, 8192).time_s == pytest.approx(burst.gemm(1, 8192, 8192).time_s, rel=0.01)


def test_other_device_power_scales_with_its_limits():
    a100 = DeviceSpec(name="a100", memory_gib=79.2, peak_tflops={"bf16": 312.0}, hbm_bandwidth_gbps=2039,
                      power_limit_w=400, idle_power_w=50)
    m = DeviceCostModel(a100)
    assert m.gemm(8192, 8192, 8192).power_w == pytest.approx(400, rel=0.03)
    assert 50 < m.memcpy(2 ** 30).power_w < 400
