"""The solver-independent validator accepts good plans and rejects broken ones."""

from __future__ import annotations

from apex_opt.registry import load_cluster
from apex_opt.solver.validate import is_valid, plan_problems
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaGroup
from apex_opt.specs.slo import SLOSpec

M, C = load_model("llama-3.1-70b"), load_cluster("h100-sxm-1x8")


def test_accepts_a_good_plan() -> None:
    assert is_valid(M, C, Plan(groups=(ReplicaGroup(tp=4, replicas=2, max_model_len=8192),)))


def test_rejects_broken_plans() -> None:
    too_many = Plan(groups=(ReplicaGroup(tp=8, replicas=2, max_model_len=8192),))
    assert any("uses 16 GPUs" in p for p in plan_problems(M, C, too_many))
    bad_tp = Plan(groups=(ReplicaGroup(tp=3, max_model_len=8192),))
    assert plan_problems(M, C, bad_tp)
    oom = Plan(groups=(ReplicaGroup(tp=1, max_model_len=8192),))
    assert any("memory" in p for p in plan_problems(M, C, oom))
    layers = Plan(groups=(ReplicaGroup(tp=4, pp=2, layers_per_stage=(40, 39), max_model_len=8192),))
    assert any("layers_per_stage" in p for p in plan_problems(M, C, layers))
    slo = SLOSpec(constraints={"weight_dtypes": ["bf16"], "max_gpus": 4})
    fp8 = Plan(groups=(ReplicaGroup(tp=8, weight_dtype="fp8", max_model_len=8192),))
    probs = plan_problems(M, C, fp8, slo)
    assert any("weight dtype" in p for p in probs) and any("max_gpus" in p for p in probs)
