"""GEMM cost model: interpolation sanity, dtypes, weight-only quantization, roofline agreement."""

from __future__ import annotations

import numpy as np
import pytest

from apex_opt.costmodel import DeviceCostModel
from apex_opt.costmodel.gemm import build_gemm_table
from apex_opt.costmodel.profile import load_profile
from apex_opt.errors import InputError
from apex_opt.specs.cluster import DeviceSpec


def h100(profile: bool = True) -> DeviceSpec:
    return DeviceSpec(name="h100-sxm-80gb", memory_gib=79.2, peak_tflops={"bf16": 989.4, "fp8": 1978.9},
                      hbm_bandwidth_gbps=3350, power_limit_w=700, idle_power_w=75,
                      profile="h100-sxm-80gb" if profile else None)


def a100() -> DeviceSpec:
    return DeviceSpec(name="a100-sxm-80gb", memory_gib=79.2, peak_tflops={"bf16": 312.0, "int8": 624.0},
                      hbm_bandwidth_gbps=2039, power_limit_w=400, idle_power_w=60)


@pytest.fixture(scope="module")
def h() -> DeviceCostModel:
    return DeviceCostModel(h100(), sustained=False)


def test_reproduces_table_point(h):
    g = load_profile("h100-sxm-80gb").table("gemm.csv")
    i = int(np.flatnonzero((g["dtype"] == "bf16") & (g["m"] == 1024) & (g["n"] == 8192) & (g["k"] == 8192))[0])
    assert h.gemm(1024, 8192, 8192).time_s == pytest.approx(g["ms"][i] * 1e-3, rel=1e-6)


def test_monotone_in_m_and_log_interpolated(h):
    ms = [1, 3, 16, 100, 128, 300, 1000, 4096, 20000, 65536]
    ts = [h.gemm(m, 7000, 5000).time_s for m in ms]
    assert all(b >= a * 0.97 for a, b in zip(ts, ts[1:]))
    lo, mid, hi = h.gemm(512, 8192, 8192).time_s, h.gemm(724, 8192, 8192).time_s, h.gemm(1024, 8192, 8192).time_s
    assert lo < mid < hi
    # far beyond the table the time keeps scaling with the FLOPs
    assert h.gemm(65536, 8192, 8192).time_s == pytest.approx(4 * h.gemm(16384, 8192, 8192).time_s, rel=0.15)


def test_fp8_faster_for_large_m_and_halves_weight_bound_time(h):
    assert h.gemm(8192, 8192, 8192, "fp8").time_s < 0.7 * h.gemm(8192, 8192, 8192).time_s
    # memory-bound: fp8 weights are half the bytes
    r = h.gemm(1, 28672, 8192, "fp8").time_s / h.gemm(1, 28672, 8192).time_s
    assert 0.45 < r < 0.7


def test_weight_only_quantization(h):
    bf = h.gemm(1, 28672, 8192).time_s
    w8 = h.gemm(1, 28672, 8192, "bf16", "fp8").time_s
    w4 = h.gemm(1, 28672, 8192, "bf16", "int4").time_s
    assert w4 < w8 < bf
    assert w8 / bf == pytest.approx(0.5, abs=0.12)
    # compute-bound: bf16 speed plus a small dequantisation overhead
    big = h.gemm(8192, 28672, 8192).time_s
    assert big <= h.gemm(8192, 28672, 8192, "bf16", "int4").time_s <= 1.2 * big


def test_leave_one_shape_out_is_accurate():
    prof = load_profile("h100-sxm-80gb")
    shape = (14336, 8192)
    table = build_gemm_table(prof, "bf16", exclude=shape)
    g = prof.table("gemm.csv")
    sel = (g["dtype"] == "bf16") & (g["n"] == shape[0]) & (g["k"] == shape[1])
    errs = [abs(table.time(m, *shape, exclude=shape)[0] / (t * 1e-3) - 1) for m, t in zip(g["m"][sel], g["ms"][sel])]
    assert np.median(errs) < 0.10


def test_roofline_agrees_with_table_on_h100(h):
    roof = DeviceCostModel(h100(), use_profile=False, sustained=False)
    g = load_profile("h100-sxm-80gb").table("gemm.csv")
    errs = []
    for dtype in ("bf16", "fp8"):
        sel = np.flatnonzero(g["dtype"] == dtype)[::7]
        for i in sel:
            m, n, k = int(g["m"][i]), int(g["n"][i]), int(g["k"][i])
            errs.append(abs(roof.gemm(m, n, k, dtype).time_s / h.gemm(m, n, k, dtype).time_s - 1))
    assert np.median(errs) < 0.25 and np.percentile(errs, 90) < 0.25


def test_profileless_device_works():
    a = DeviceCostModel(a100())
    assert not a.has_profile
    t_a = a.gemm(4096, 8192, 8192).time_s
    t_h = DeviceCostModel(h100(False)).gemm(4096, 8192, 8192).time_s
    assert 2.5 < t_a / t_h < 4.0  # 989 vs 312 TFLOP/s
    # no fp8 tensor cores: fp8 runs as weight-only fp8 with bf16 compute
    assert a.gemm(1, 8192, 8192, "fp8").time_s < a.gemm(1, 8192, 8192).time_s
    assert a.gemm(8192, 8192, 8192, "fp8").time_s >= 0.95 * a.gemm(8192, 8192, 8192).time_s
    g = a.grouped_gemm(8, 64, 28672, 4096)
    assert g.time_s > 0 and 60 < g.power_w <= 400


def test_grouped_gemm_and_imbalance(h):
    base = h.grouped_gemm(8, 64, 28672, 4096)
    skew = h.grouped_gemm(8, 64, 28672, 4096, imbalance=4.0)
    assert skew.time_s >= base.time_s
    assert h.grouped_gemm(256, 16, 4096, 7168).time_s > h.grouped_gemm(32, 16, 4096, 7168).time_s
    # close to the measured grouped GEMM (mixtral 8 experts x 1024 tokens: 2.895 ms)
    assert h.grouped_gemm(8, 1024, 28672, 4096).time_s == pytest.approx(2.895e-3, rel=0.25)


def test_bad_input(h):
    with pytest.raises(InputError):
        h.gemm(1, 0, 4096)
    with pytest.raises(InputError):
        h.gemm(1, 4096, 4096, "int3")
    with pytest.raises(InputError):
        h.gemm(1, 4096, 4096, "fp8", "bf16")
    assert h.gemm(0, 4096, 4096).time_s == 0.0
