"""Physics checks of scripts/validate_modern.py on synthetic rows (no validation data needed):
the HBM floor of a closed loop's measured mean TPOT and the recorded-shape check."""

import importlib.util
from pathlib import Path

import pytest

from apex_opt.registry import load_cluster
from apex_opt.specs.model import load_model

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "validate_modern.py"
_SPEC = importlib.util.spec_from_file_location("validate_modern_physics", _PATH)
vm = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(vm)


def _row(**kw) -> dict:
    row = {"workload_kind": "concurrency", "concurrency": "64", "isl": "1000", "osl": "1001",
           "e2e_mean_s": "10.0", "ttft_mean_ms": "0", "tpot_mean_ms": "10", "tp": "1", "pp": "1",
           "dp": "1", "num_gpus": "1", "weight_dtype": "fp8", "kv_dtype": "", "notes": ""}
    row.update(kw)
    return row


def test_tpot_floor_is_weights_plus_kv_over_bandwidth():
    m, cl = load_model("llama-3.1-8b"), load_cluster("h200-1x8")
    bw = cl.pools[0].device.hbm_bandwidth_gbps * 1e9
    # long outputs, short prompts: u ~ 0, so the floor is (W + KV) / BW
    row = _row(isl="10", osl="20001", e2e_mean_s="1000", concurrency="8")
    w = m.linear_flops_per_token() / 2.0  # fp8: 1 byte per weight
    kv = 8 * (10 + 10000) * m.kv_bytes_per_token(1.0)  # fp8 KV assumed when not recorded
    u = vm.measured_compute_util(row, m, cl)
    assert u < 1e-3
    floor = vm.measured_tpot_floor(row, m, cl)
    assert floor == pytest.approx(max((w + kv) / bw, kv / (bw * (1 - u))))
    # the engine default (bf16 KV) doubles the KV part; TP splits everything
    kv16 = vm.measured_tpot_floor(row, m, cl, kv_dtype="bf16")
    assert kv16 == pytest.approx(max((w + 2 * kv) / bw, 2 * kv / (bw * (1 - u))))
    assert vm.measured_tpot_floor(_row(isl="10", osl="20001", e2e_mean_s="1000", concurrency="8",
                                       tp="2", num_gpus="2"), m, cl) == pytest.approx(floor / 2, rel=1e-3)


def test_tpot_floor_grows_with_the_prefill_share_and_open_loop_has_none():
    m, cl = load_model("llama-3.1-8b"), load_cluster("h200-1x8")
    light = vm.measured_tpot_floor(_row(isl="100", e2e_mean_s="10"), m, cl)
    heavy = vm.measured_tpot_floor(_row(isl="8000", e2e_mean_s="10"), m, cl)
    assert heavy > light
    # prefill alone above the dense peak: no step time is fast enough
    assert vm.measured_tpot_floor(_row(isl="8000", e2e_mean_s="0.1", concurrency="512"), m, cl) \
        == float("inf")
    assert vm.measured_tpot_floor(_row(workload_kind="trace"), m, cl) is None


def test_recorded_shape_problem():
    cl = load_cluster("h200-1x8")
    big = load_model("qwen3-235b-a22b")
    one = _row(tp="1", num_gpus="1", notes="agg tp1 pp1 attn_dp1 moe_tp2 moe_ep1; image ?")
    msg = vm.recorded_shape_problem(one, big, cl)
    assert msg is not None and "235 GB > 1 x" in msg and "MoE over 2 GPUs > 1" in msg
    # fits on 2 GPUs, but the MoE was recorded over 4 of them
    two = _row(tp="2", num_gpus="2", notes="agg tp2 pp1 attn_dp1 moe_tp4 moe_ep1; image ?")
    assert vm.recorded_shape_problem(two, big, cl) == "MoE over 4 GPUs > 2 recorded: unreplayable as recorded"
    ok = _row(tp="4", num_gpus="4", notes="agg tp4 pp1 attn_dp1 moe_tp4 moe_ep1; image ?")
    assert vm.recorded_shape_problem(ok, big, cl) is None
    assert vm.recorded_shape_problem(_row(), load_model("llama-3.1-8b"), cl) is None


def test_tpot_floor_spreads_weights_over_the_moe_gpus_a_row_records():
    cl, big = load_cluster("h200-1x8"), load_model("qwen3-235b-a22b")
    one = vm.measured_tpot_floor(_row(tp="1", notes=""), big, cl)
    two = vm.measured_tpot_floor(_row(tp="1", notes="agg tp1 pp1 attn_dp1 moe_tp2 moe_ep1"), big, cl)
    assert two == pytest.approx(one / 2)


def test_unrecorded_sglang_memory_fraction_smallest_that_holds_the_weights():
    """DeepSeek-V3 fp8 on 4 B200 under SGLang: the default mem_fraction_static (~0.85) cannot hold
    the 157 GiB of weights per GPU, so a run that happened set it higher; the replay takes the
    smallest fraction that holds the weights and the row's own requests, and only for SGLang rows
    that leave the fraction unrecorded."""
    from apex_opt.errors import InfeasibleError
    from apex_opt.memory import replica_memory
    from apex_opt.specs.engine import load_engine
    from apex_opt.specs.plan import Plan, ReplicaGroup

    m, cl, eng = load_model("deepseek-v3"), load_cluster("b200-1x8"), load_engine("sglang")
    plan = Plan(groups=(ReplicaGroup(tp=4, weight_dtype="fp8"),), router="round_robin")
    dev = cl.pools[0].device
    mem = replica_memory(m, dev, plan.groups[0].replica(), eng)
    assert not mem.fits
    exc = InfeasibleError("weights do not fit", details={"overflow_component": mem.overflow_component})
    row = _row(isl="8192", osl="1024", concurrency="8", gpu_memory_utilization="")
    plan2, note = vm.fitting_memory_fraction(row, m, cl, plan, eng, exc)
    frac = plan2.groups[0].gpu_memory_utilization
    assert 0.85 < frac <= vm.MAX_STATIC_FRACTION and "memory fraction not recorded" in note
    fit = replica_memory(m, dev, plan2.groups[0].replica(), eng)
    assert fit.fits and fit.kv_tokens >= 8 * (8192 + 1024)
    lower = plan2.groups[0].model_copy(update={"gpu_memory_utilization": frac - 0.01})
    low = replica_memory(m, dev, lower.replica(), eng)
    assert not (low.fits and low.kv_tokens >= 8 * (8192 + 1024))
    # recorded fraction, or a vLLM engine: no guess
    assert vm.fitting_memory_fraction({**row, "gpu_memory_utilization": "0.8"}, m, cl, plan, eng, exc) is None
    assert vm.fitting_memory_fraction(row, m, cl, plan, load_engine("vllm"), exc) is None
