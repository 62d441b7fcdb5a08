"""Energy accounting, node power for power budgets, $ per Mtok (sim/metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest

from apex_opt.registry import load_cluster
from apex_opt.sim.metrics import (EnergyTimeline, cost_per_mtok, energy_report, energy_window,
                                  free_gpu_idle_power_w, plan_host_power_w, plan_node_power_w,
                                  open_loop_bounds, plan_node_share, plan_nodes_by_pool, steady_state_bounds,
                                  tokens_in_window)
from apex_opt.specs.cluster import ClusterSpec
from apex_opt.specs.plan import Plan, ReplicaGroup


def _cluster(**extra) -> ClusterSpec:
    base = load_cluster("h100-sxm-2x8").model_dump()
    base["pools"][0]["device"] = "h100-sxm-80gb"
    for k in ("gpu_price_per_hour", "host_power_w"):
        if k in extra:
            base["pools"][0][k] = extra.pop(k)
    base.update(extra)
    return ClusterSpec.model_validate(base, strict=False)


def _plan(tp=4, replicas=3) -> Plan:
    return Plan(groups=(ReplicaGroup(tp=tp, replicas=replicas),))


def test_node_power_counts_the_plans_share_of_host_power():
    c = _cluster()
    p = _plan(tp=4, replicas=3)                      # 12 GPUs -> touches 2 nodes of 8, 1.5 nodes' worth
    assert plan_nodes_by_pool(c, p) == {c.pools[0].name: 2}
    assert plan_node_share(c, p) == pytest.approx(1.5)
    host = plan_host_power_w(c, p)
    assert host == pytest.approx(12 * 575)           # DGX H100: 4.6 kW non-GPU per 8-GPU node
    assert plan_node_power_w(c, p, 5000.0) == pytest.approx(5000.0 + host)
    assert free_gpu_idle_power_w(c, p) == pytest.approx(4 * 75)
    c2 = _cluster(host_power_w=1000.0)
    assert plan_host_power_w(c2, p) == pytest.approx(1500.0)
    one = _plan(tp=1, replicas=1)                    # 1 GPU of an 8-GPU node: 1/8 of the host
    assert plan_host_power_w(c2, one) == pytest.approx(125.0)
    assert plan_nodes_by_pool(c2, one) == {c.pools[0].name: 1}


def test_power_budget_uses_node_power():
    # a budget that the GPUs alone meet but the nodes do not
    c, p = _cluster(), _plan(tp=8, replicas=1)
    gpu_w = 8 * 600.0
    budget = 6000.0
    assert gpu_w <= budget < plan_node_power_w(c, p, gpu_w)


def test_cost_per_mtok_arithmetic():
    c = _cluster(gpu_price_per_hour=2.5, electricity_price_per_kwh=0.10, pue=1.3)
    p = _plan(tp=8, replicas=1)
    node_w = 10_000.0
    tps = 5000.0
    per_hour = 8 * 2.5 + 10.0 * 1.3 * 0.10               # GPU-hours + kWh x PUE x price
    assert cost_per_mtok(c, p, tps, node_w) == pytest.approx(per_hour / (tps * 3600) * 1e6)
    assert cost_per_mtok(_cluster(), p, tps, node_w) is None        # no GPU price
    free_energy = _cluster(gpu_price_per_hour=2.5)
    assert cost_per_mtok(free_energy, p, tps, node_w) == pytest.approx(20.0 / (tps * 3600) * 1e6)


def test_steady_state_window_and_tokens():
    # 4 requests, concurrency 2: window from the 2nd first token to the 2nd finish
    first = np.array([0.0, 1.0, 2.0, 3.0])
    fin = np.array([4.0, 5.0, 6.0, 7.0])
    out = np.array([5, 5, 5, 5])
    served = np.ones(4, dtype=bool)
    assert steady_state_bounds(first, fin, served, 2) == (1.0, 5.0)
    assert steady_state_bounds(first, fin, served, 4) is None
    # tokens at first + k for k = 0..4: in [1, 5]: req0 1,2,3,4 -> 4; req1 1..5 -> 5; req2 2..5 -> 4;
    # req3 3,4,5 -> 3
    assert tokens_in_window(first, fin, out, served, 1.0, 5.0) == 16


def test_open_loop_window_spans_the_arrivals():
    arr = np.array([0.0, 1.0, 2.0, 9.0])
    served = np.ones(4, dtype=bool)
    # arrivals go on after the first finish (3.0): first arrival -> last arrival
    assert open_loop_bounds(arr, np.array([3.0, 4.0, 6.0, 12.0]), served) == (0.0, 9.0)
    # every request arrived before anything finished: a batch, no open-loop window
    assert open_loop_bounds(arr, np.array([10.0, 11.0, 12.0, 13.0]), served) is None
    assert open_loop_bounds(np.zeros(4), np.arange(4.0) + 1, served) is None


def test_open_loop_energy_rates_do_not_depend_on_an_unreached_cap():
    """Two plans that differ only in a max_num_seqs the workload never reaches serve the same
    requests identically, so W, J/token and tok/s must agree (the closed-batch window that counts
    the cap used to move with it)."""
    from apex_opt.sim.simulator import simulate
    from apex_opt.sim.workload import Requests
    from apex_opt.specs.model import load_model

    rng = np.random.default_rng(0)
    n = 200
    arr = np.concatenate(([0.0], np.cumsum(rng.exponential(1 / 8.0, n - 1))))
    req = Requests(arrival_s=arr, prompt_tokens=rng.integers(100, 600, n),
                   output_tokens=rng.integers(20, 120, n), source="test")
    model, cluster = load_model("llama-3.2-1b"), load_cluster("h100-sxm-1x8")
    runs = [simulate(model, cluster, Plan(groups=(ReplicaGroup(tp=1, max_num_seqs=s),)), req)
            for s in (64, 256)]
    pa, pb = (r.per_request() for r in runs)
    assert np.array_equal(pa["finish_s"], pb["finish_s"])  # the cap is never reached
    a, b = (r.energy for r in runs)
    assert a.steady_state.start_s == 0.0 and a.steady_state.end_s == pytest.approx(arr[-1], rel=1e-5)
    assert (a.gpu_power_w, a.gpu_energy_j_per_token, a.steady_state.throughput_tokens_per_s) == \
        (b.gpu_power_w, b.gpu_energy_j_per_token, b.steady_state.throughput_tokens_per_s)


def test_timeline_energy_counts_gaps_at_awake_power():
    tl = EnergyTimeline(num_gpus=2, gap_power_w=100.0)
    tl.record(0.0, 10.0, 0.5)   # iteration started at 0: 10 J, 0.5 GPU-s busy
    tl.record(1.0, 30.0, 1.5)
    # window [0.5, 1.5]: iteration started at 1.0 (20 J, 1 GPU-s) + gaps 2*1 - 1 = 1 GPU-s at 100 W
    assert tl.energy(0.5, 1.5) == pytest.approx(20.0 + 100.0)


def test_timeline_spreads_a_run_over_its_duration():
    # a fast-forwarded run of decode steps charged at its start (0 s) but lasting until 10 s
    tl = EnergyTimeline(num_gpus=1, gap_power_w=100.0)
    tl.record(0.0, 7000.0, 10.0, end=10.0)          # 700 W for 10 s
    assert tl.energy(0.0, 10.0) == pytest.approx(7000.0)
    assert tl.energy(2.0, 4.0) == pytest.approx(1400.0)   # its share: 700 W, no gap
    assert tl.energy(8.0, 12.0) == pytest.approx(1400.0 + 2 * 100.0)  # 2 s of run + 2 s gap
    tl.record(10.0, 7500.0, 11.0, end=11.0)
    assert tl.energy(9.5, 10.5) == pytest.approx(350.0 + 250.0)


def test_report_rates_from_steady_state():
    c = _cluster(gpu_price_per_hour=2.0, electricity_price_per_kwh=0.2, pue=1.5)
    p = _plan(tp=8, replicas=1)
    whole = energy_window("whole_run", 0.0, 100.0, 300_000.0, 500_000.0)
    steady = energy_window("steady_state", 10.0, 90.0, 320_000.0, 480_000.0)
    r = energy_report(c, p, whole, steady)
    assert r.gpu_power_w == pytest.approx(4000.0)
    assert r.node_power_w == pytest.approx(4000.0 + 4600.0)
    assert r.kwh_per_day == pytest.approx(8.6 * 24)
    assert r.facility_kwh_per_day == pytest.approx(8.6 * 24 * 1.5)
    assert r.gpu_energy_j_per_token == pytest.approx(320_000 / 480_000)
    assert r.cost_per_mtok == pytest.approx((16.0 + 8.6 * 1.5 * 0.2) / (6000 * 3600) * 1e6)
    assert r.free_gpus == 8


def test_simulate_reports_energy_accounting():
    from apex_opt.sim.simulator import simulate
    from apex_opt.sim.workload import Requests
    from apex_opt.specs.model import load_model

    n = 64
    req = Requests(arrival_s=np.zeros(n), prompt_tokens=np.full(n, 100),
                   output_tokens=np.full(n, 40) + np.arange(n) % 7, source="test")
    plan = Plan(groups=(ReplicaGroup(tp=1, max_num_seqs=16),))
    res = simulate(load_model("llama-3.2-1b"), load_cluster("h100-sxm-1x8"), plan, req)
    e = res.energy
    assert e is not None and e.steady_state is not None
    assert e.plan_gpus == 1 and e.free_gpus == 7 and e.plan_nodes == 1
    assert e.plan_node_share == pytest.approx(0.125) and e.host_power_w == pytest.approx(575.0)
    assert e.whole_run.gpu_energy_j == pytest.approx(res.metrics.energy_j, rel=1e-5)
    assert 0 < e.steady_state.duration_s < e.whole_run.duration_s
    assert 75 < e.gpu_power_w <= 700
    assert e.node_power_w == pytest.approx(e.gpu_power_w + e.host_power_w, rel=1e-5)
    assert e.cost_per_mtok is None
