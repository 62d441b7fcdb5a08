"""CP-SAT model: top-K distinct plans, determinism, infeasibility explanation with verified fixes."""

from __future__ import annotations

import numpy as np
import pytest

from apex_opt.errors import InfeasibleError
from apex_opt.registry import load_cluster
from apex_opt.search import feasible_plans, solve
from apex_opt.solver.space import build_space as _space
from apex_opt.sim.workload import Requests
from apex_opt.solver.candidates import WorkloadStats
from apex_opt.solver.explain import conflicting_groups
from apex_opt.solver.model import PlanModel
from apex_opt.solver.topk import top_k
from apex_opt.specs.model import load_model
from apex_opt.specs.slo import SLOSpec

M, C = load_model("llama-3.1-8b"), load_cluster("h100-sxm-1x8")
RNG = np.random.default_rng(3)
REQ = Requests(np.cumsum(RNG.exponential(0.2, 120)), RNG.integers(100, 1200, 120),
               RNG.integers(10, 200, 120))
STATS = WorkloadStats.of(REQ)


def test_top_k_plans_are_distinct_feasible_and_ordered() -> None:
    space = _space(M, C, STATS, SLOSpec(), "latency")
    res = top_k(PlanModel(space), 5)
    assert res.status == "OPTIMAL" and len(res.plans) == 5
    assert len(set(res.plans)) == 5
    assert res.objective_values == sorted(res.objective_values)
    feas = set(feasible_plans(space))
    assert all(p in feas for p in res.plans)


def test_solver_is_deterministic() -> None:
    space = _space(M, C, STATS, SLOSpec(), "energy")
    a = top_k(PlanModel(space), 3).plans
    b = top_k(PlanModel(space), 3).plans
    assert a == b


def test_max_gpus_respected() -> None:
    space = _space(M, C, STATS, SLOSpec(constraints={"max_gpus": 2}), "latency")
    for plan in top_k(PlanModel(space), 4).plans:
        assert sum(space.cands[i].gpus * k for i, k in plan) <= 2


def test_conflicting_groups_name_the_slo() -> None:
    slo = SLOSpec(ttft_ms=1, constraints={"weight_dtypes": ["bf16"]})
    space = _space(M, C, STATS, slo, "latency", everything=True)
    assert "ttft_ms" in conflicting_groups(space)


@pytest.mark.slow
def test_infeasible_slo_explained_with_verified_fix() -> None:
    with pytest.raises(InfeasibleError) as ei:
        solve(M, C, REQ, SLOSpec(ttft_ms=1), executor="serial")
    d = ei.value.details
    assert "ttft_ms" in d["conflicting_groups"]
    fix = next(f for f in d["fixes"] if f["group"] == "ttft_ms")
    assert fix["verified"] and fix["value"] > 1
    # the fix really is feasible: solving with the relaxed target finds plans
    res = solve(M, C, REQ, SLOSpec(ttft_ms=max(fix["value"], 1000.0)), executor="serial", top_k=2)
    assert res.plans


@pytest.mark.slow
def test_memory_infeasible_names_memory_and_more_gpus() -> None:
    big = load_model("llama-3.1-405b")
    with pytest.raises(InfeasibleError) as ei:
        solve(big, load_cluster("h100-sxm-1x8"), REQ,
              SLOSpec(constraints={"weight_dtypes": ["bf16"]}), executor="serial")
    d = ei.value.details
    assert d["conflicting_groups"]
    assert any(f["verified"] for f in d["fixes"])
