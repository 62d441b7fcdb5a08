"""The search's answer on every objective against the exhaustive reference (small cases, slow),
the refinement's bound and GPU-count escalation on synthetic scores (fast), the cost objective's
input check, and fixes / load explanations checked by simulation (slow)."""

from __future__ import annotations

import dataclasses

import pytest

from apex_opt.errors import InfeasibleError, InputError
from apex_opt.io import parse_yaml, validate
from apex_opt.registry import load_cluster
from apex_opt.search import solve
from apex_opt.search.shortlist import Scored, SimScore, refine
from apex_opt.sim.workload import generate
from apex_opt.solver.candidates import WorkloadStats
from apex_opt.solver.objective import PlanEstimate
from apex_opt.solver.space import build_space
from apex_opt.specs.cluster import ClusterSpec
from apex_opt.specs.model import load_model
from apex_opt.specs.slo import SLOSpec
from apex_opt.specs.workload import WorkloadSpec

M = load_model("llama-3.1-8b")
PRICED = validate(ClusterSpec, parse_yaml("""name: priced-1x4
electricity_price_per_kwh: 0.12
pue: 1.3
pools:
  - {name: h100, device: h100-sxm-80gb, nodes: 1, gpus_per_node: 4, gpu_price_per_hour: 2.5,
     intra_node: {kind: nvswitch, bandwidth_gbps: 450, latency_us: 1.0}}
""", "<test>"), "<test>")
SMALL = {"max_pp": 1, "weight_dtypes": ["bf16"], "kv_dtypes": ["bf16"]}


def _req(n: int = 60, rate: float = 6.0, seed: int = 0):
    return generate(WorkloadSpec(num_requests=n, seed=seed, arrival={"process": "poisson", "rate": rate},
                                 prompt_len={"dist": "lognormal", "mean": 500, "cv": 0.6, "max": 4096},
                                 output_len={"dist": "lognormal", "mean": 80, "cv": 0.6, "max": 1024}))


# ---------------------------------------------------------------------------- fast: the loop

class _Space:
    """Just enough of a SearchSpace for :func:`refine`."""

    def __init__(self, objective: str):
        self.objective = objective
        self.cands = [type("C", (), {"pool": "p", "tp": t, "pp": 1, "ep": 1})() for t in (1, 2, 4, 8)]


def _scored(i: int, gpus: int, value: float, latency: float = 1.0, capacity: float = 1.0) -> Scored:
    est = PlanEstimate(capacity, 1.0, latency, 0.1, 0.01, 100.0, value, gpus, True)
    return Scored(((i, 1),), est, gpus, value, False)


def test_refine_stops_when_the_bound_says_nothing_better_remains() -> None:
    # same parallel shape (family): the measured ratio (1.0, less the 5 % margin) bounds the rest
    plans = [_scored(0, 1, 1.0), _scored(0, 1, 1.1), _scored(0, 1, 1.2), _scored(3, 8, 3.0)]
    calls = []

    def simulate(batch):
        calls.extend(batch)
        return [SimScore(True, s.value, s.value) for s in batch]

    r = refine(_Space("energy"), iter(plans), simulate, first=1, batch=1, budget=10)
    assert [s.value for s in r.plans] == [1.0] and len(calls) == 1
    assert r.gap == 0.0


def test_refine_widens_the_bound_for_an_unsimulated_family() -> None:
    # another shape family within the 25 % family margin is simulated, one beyond it is not
    plans = [_scored(0, 1, 1.0), _scored(1, 2, 1.2), _scored(2, 4, 1.5)]
    r = refine(_Space("energy"), iter(plans), lambda b: [SimScore(True, s.value, s.value) for s in b],
               first=1, batch=1, budget=10)
    assert [s.value for s in r.plans] == [1.0, 1.2]


def test_refine_keeps_simulating_while_a_better_plan_may_remain() -> None:
    # the surrogate ranks plan A first, but the simulation finds plan B (ranked second) better
    plans = [_scored(0, 1, 1.0), _scored(1, 2, 1.05), _scored(2, 4, 2.0)]
    sim = {1.0: 1.3, 1.05: 1.0, 2.0: 2.5}

    def simulate(batch):
        return [SimScore(True, sim[s.value], s.value) for s in batch]

    r = refine(_Space("energy"), iter(plans), simulate, first=1, batch=1, budget=10)
    vals = [sim[s.value] for s in r.plans]
    assert min(vals) == 1.0 and len(r.plans) >= 2


def test_gpus_objective_escalates_until_the_slo_is_met() -> None:
    plans = [_scored(0, 1, 1.0), _scored(1, 2, 2.0), _scored(2, 4, 4.0), _scored(3, 8, 8.0)]
    meets = {1: False, 2: False, 4: True, 8: True}

    def simulate(batch):
        return [SimScore(meets[s.gpus], float(s.gpus), 1.0) for s in batch]

    r = refine(_Space("gpus"), iter(plans), simulate, first=1, batch=1, budget=10)
    assert [s.gpus for s in r.plans] == [1, 2, 4]  # never the 8-GPU plan: 4 already meets it


def test_cost_needs_prices() -> None:
    with pytest.raises(InputError, match="gpu_price_per_hour"):
        solve(M, load_cluster("h100-sxm-1x8"), _req(), SLOSpec(tpot_ms=40), objective="cost",
              executor="serial")


# ---------------------------------------------------------------------------- slow: end to end

def _value(res):
    return res.plans[0].objective_value


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["latency", "energy", "gpus", "throughput", "cost"])
def test_each_objective_matches_the_exhaustive_reference(objective) -> None:
    slo = SLOSpec(ttft_ms={"target": 1000, "percentile": 90}, tpot_ms=40, constraints=SMALL)
    req = _req(120 if objective == "throughput" else 60)
    kw = dict(objective=objective, executor="serial", gpu_clocks=False)
    short = solve(M, PRICED, req, slo, **kw)
    ex = solve(M, PRICED, req, slo, exhaustive=True, **kw)
    assert short.plans[0].slo_met and ex.plans[0].slo_met
    a, b = _value(short), _value(ex)
    if objective == "throughput":
        assert a >= b * 0.98
    else:
        assert a <= b * 1.02
    assert short.solver.plans_simulated < ex.solver.plans_simulated


@pytest.mark.slow
def test_energy_searches_gpu_clocks_and_reports_the_saving() -> None:
    slo = SLOSpec(ttft_ms={"target": 1000, "percentile": 90}, tpot_ms=40, constraints=SMALL)
    r = solve(M, PRICED, _req(), slo, objective="energy", executor="serial")
    assert any(g.config.sm_clock_mhz for p in r.plans for g in p.groups)  # clocked plans were simulated
    e = r.energy_saving
    assert e is not None and e.saving_fraction >= 0 and e.chosen_e2e_s is not None
    chosen = r.plans[0]
    if any(g.config.sm_clock_mhz for g in chosen.groups):
        # the same plan at the default clock was simulated: what the clock alone saves
        assert e.default_clock_plan is not None and e.default_clock_plan != chosen.label
        assert e.default_clock_j_per_token >= e.chosen_j_per_token
        assert e.default_clock_e2e_s <= e.chosen_e2e_s * 1.001  # a locked clock is not faster


@pytest.mark.slow
def test_relaxation_fix_is_checked_by_simulation() -> None:
    slo = SLOSpec(ttft_ms={"target": 5, "percentile": 90}, tpot_ms=40, constraints=SMALL)
    with pytest.raises(InfeasibleError) as ei:
        solve(M, PRICED, _req(), slo, executor="serial")
    fixes = ei.value.details["fixes"]
    assert fixes and all(f["verified_by"] == "simulation" for f in fixes)
    fix = fixes[0]
    value = fix["value"]["ttft_ms"] if isinstance(fix["value"], dict) else fix["value"]
    # the printed relaxation holds in a fresh search
    res = solve(M, PRICED, _req(), slo.model_copy(update={"ttft_ms": slo.ttft_ms.model_copy(
        update={"target": value})}), executor="serial")
    assert res.plans[0].slo_met
    assert "ttft_ms" not in str(ei.value).split(";")[0] or "time-to-first-token" in str(ei.value)


@pytest.mark.slow
def test_overload_says_what_rate_is_sustained_and_how_many_gpus_it_needs() -> None:
    slo = SLOSpec(ttft_ms={"target": 1000, "percentile": 90}, tpot_ms=40,
                  constraints={"max_gpus": 1, **SMALL})
    with pytest.raises(InfeasibleError) as ei:
        solve(M, PRICED, _req(200, 80.0), slo, executor="serial")
    msg, d = str(ei.value), ei.value.details
    assert "sustains ~" in msg and "offered" in msg and "add" in msg, msg
    assert 0 < d["sustained_req_s"] < d["offered_req_s"]
    assert "max_gpus" not in msg.split(":")[0]  # plain words before the fixes


def test_throughput_measures_every_shape_family_before_trusting_a_bound() -> None:
    # the surrogate ranks family 0 far ahead, yet family 3 (ranked last) simulates best: a
    # maximised objective bounds no family by another family's ratio
    # (its steady-state capacity is the only bound); a family whose capacity cannot reach the
    # best simulated rate is left out
    plans = [_scored(0, 4, 150.0, capacity=160.0), _scored(0, 4, 149.0, capacity=160.0),
             _scored(1, 4, 120.0, capacity=130.0), _scored(3, 4, 90.0, capacity=95.0),
             _scored(2, 2, 60.0, capacity=70.0)]
    sim = {150.0: 67.0, 149.0: 66.0, 120.0: 80.0, 90.0: 83.0, 60.0: 50.0}
    r = refine(_Space("throughput"), iter(plans),
               lambda b: [SimScore(True, sim[s.value], 1.0) for s in b], first=1, batch=1, budget=10)
    assert max(sim[s.value] for s in r.plans) == 83.0
    assert {s.key[0][0] for s in r.plans} == {0, 1, 3}
    assert r.gap == 0.0


def test_a_second_plan_of_an_unmeasured_family_waits_for_the_first() -> None:
    # batch of 2: the twin of plan 0 (same family) is not simulated alongside it; plan 0's
    # simulation then bounds it out
    plans = [_scored(0, 1, 1.0), _scored(0, 1, 1.5), _scored(1, 2, 1.1)]
    batches = []

    def simulate(batch):
        batches.append([s.value for s in batch])
        return [SimScore(True, s.value, s.value) for s in batch]

    r = refine(_Space("energy"), iter(plans), simulate, first=1, batch=2, budget=10)
    assert 1.5 not in [s.value for s in r.plans]
    assert all(len(set(b)) == len(b) for b in batches)


def test_throughput_leaves_out_plans_with_room_for_another_replica() -> None:
    from apex_opt.search.plans import feasible_plans, plan_gpus
    from apex_opt.search.shortlist import dominated

    req = _req()
    slo = SLOSpec(tpot_ms=40, constraints={"max_gpus": 3, **SMALL}, objective="throughput")
    space = build_space(M, PRICED, WorkloadStats.of(req), slo, "throughput")
    keys = feasible_plans(space)
    kept = [k for k in keys if not dominated(space, k)]
    assert kept and len(kept) < len(keys)
    for k in kept:  # TP1 x3, TP2 x1 (a second TP2 replica would exceed max_gpus 3)
        (i, n), = k
        assert plan_gpus(space, k) + space.cands[i].gpus > 3


QWEN25_7B = {  # Qwen2.5-7B-Instruct's config.json: a model no bundled file describes
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
    "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "vocab_size": 152064}
A100_PCIE = validate(ClusterSpec, parse_yaml("""name: a100-pcie-1x4
pools:
  - {name: a100, device: a100-sxm-80gb, nodes: 1, gpus_per_node: 4,
     intra_node: {kind: pcie, bandwidth_gbps: 25, latency_us: 8.0}}
""", "<test>"), "<test>")


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["energy", "gpus"])
def test_a_user_nothing_was_tuned_on_gets_the_exhaustive_optimum(tmp_path, objective) -> None:
    # a config.json from disk, a hand-written PCIe cluster, bursty arrivals, p99 targets
    import json

    (tmp_path / "qwen2.5-7b").mkdir()
    (tmp_path / "qwen2.5-7b" / "config.json").write_text(json.dumps(QWEN25_7B))
    model = load_model(str(tmp_path / "qwen2.5-7b"))
    req = generate(WorkloadSpec(num_requests=60, seed=1,
                                arrival={"process": "gamma", "rate": 3.0, "cv": 2.0},
                                prompt_len={"dist": "lognormal", "mean": 1000, "cv": 0.6, "max": 4096},
                                output_len={"dist": "lognormal", "mean": 150, "cv": 0.6, "max": 1024}))
    slo = SLOSpec(ttft_ms={"target": 500, "percentile": 99}, tpot_ms={"target": 40, "percentile": 99},
                  constraints={"max_pp": 1, "kv_dtypes": ["bf16"]})
    kw = dict(objective=objective, executor="serial", gpu_clocks=False)
    short = solve(model, A100_PCIE, req, slo, **kw)
    ex = solve(model, A100_PCIE, req, slo, exhaustive=True, **kw)
    assert short.plans[0].slo_met and ex.plans[0].slo_met
    assert _value(short) <= _value(ex) * 1.02
    assert short.solver.plans_simulated <= max(4, 0.2 * ex.solver.plans_feasible) + 3


def test_throughput_surrogate_counts_the_drain_of_a_finite_trace() -> None:
    # what the rate search measures is completions over the makespan: N / (N / capacity + drain);
    # the drain (p99 output x unloaded per-token time) is shorter on one wide replica than on
    # several narrow ones, and vanishes against N / capacity on a long trace
    from apex_opt.search.plans import feasible_plans, plan_label
    from apex_opt.search.shortlist import drain_s, finite_rate, score

    slo = SLOSpec(tpot_ms=40, constraints={"max_gpus": 4, **SMALL}, objective="throughput")
    space = build_space(M, PRICED, WorkloadStats.of(_req()), slo, "throughput")
    by = {plan_label(space, k): k for k in feasible_plans(space)}
    tp4 = next(k for lab, k in by.items() if lab.startswith("1xTP4@"))
    tp1 = next(k for lab, k in by.items() if lab.startswith("4xTP1@"))
    assert drain_s(space, tp4) < drain_s(space, tp1)
    for k in (tp4, tp1):
        s = score(space, k)
        cap = s.est.capacity_at_slo_req_s
        assert 0 < s.value < cap
        n = space.stats.num_requests
        assert s.value == pytest.approx(n / (n / cap + drain_s(space, k)))
        long = dataclasses.replace(space, stats=dataclasses.replace(space.stats, num_requests=10 ** 9))
        assert finite_rate(long, k, s.est) == pytest.approx(cap, rel=1e-3)
