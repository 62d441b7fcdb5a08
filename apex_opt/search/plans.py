"""Plans as keys into a :class:`~apex_opt.solver.model.SearchSpace`: a plan is a sorted tuple of
(candidate index, replicas), at most one group per pool. Listing, labelling, surrogate
estimates and the output rows of plans."""

from __future__ import annotations

import itertools
import math

from ..sim.metrics import round_sig
from ..solver.model import SearchSpace
from ..solver.objective import PlanEstimate, plan_estimate
from ..specs.plan import Plan
from .results import GroupOut, Surrogate

PlanKey = tuple[tuple[int, int], ...]


def to_plan(space: SearchSpace, key: PlanKey) -> Plan:
    return Plan(groups=tuple(space.cands[i].group(k) for i, k in key))


def plan_label(space: SearchSpace, key: PlanKey) -> str:
    """Plan label with each group's engine limits, e.g. ``2xTP4@h100(seqs256,tok512)``."""
    return " + ".join(f"{k}x{space.cands[i].label()}" for i, k in key)


def plan_gpus(space: SearchSpace, key: PlanKey) -> int:
    return sum(space.cands[i].gpus * k for i, k in key)


def estimate(space: SearchSpace, key: PlanKey, rate: float | None = None) -> PlanEstimate:
    return plan_estimate([(space.models[i], k) for i, k in key], space.stats, space.slo, rate)


def feasible_plans(space: SearchSpace) -> list[PlanKey]:
    """Every plan meeting the hard constraints (memory, user constraints, GPUs per pool, max_gpus,
    power budget) -- the reference set of ``--exhaustive``. SLO screens are not applied."""
    mg = space.slo.constraints.max_gpus
    budget = space.slo.constraints.power_budget_w
    per_pool: dict[str, list] = {}
    for i, c in enumerate(space.cands):
        for k in range(1, c.max_replicas + 1):
            if mg is None or k * c.gpus <= mg:
                per_pool.setdefault(c.pool, []).append((i, k))
    pools = [p.name for p in space.cluster.pools if p.name in per_pool]
    out: list[PlanKey] = []
    for combo in itertools.product(*[[None] + per_pool[p] for p in pools]):
        key = tuple(sorted(x for x in combo if x is not None))
        if not key:
            continue
        if mg is not None and plan_gpus(space, key) > mg:
            continue
        if budget is not None and estimate(space, key).power_w > budget:
            continue
        out.append(key)
    return out


def count_feasible(space: SearchSpace) -> int:
    """Number of plans :func:`feasible_plans` returns, counted without listing them when only the
    per-pool GPU limits apply (one group per pool: the product of each pool's options)."""
    c = space.slo.constraints
    if c.max_gpus is not None or c.power_budget_w is not None:
        return len(feasible_plans(space))
    options: dict[str, int] = {}
    for cand in space.cands:
        options[cand.pool] = options.get(cand.pool, 0) + cand.max_replicas
    total = 1
    for n in options.values():
        total *= n + 1
    return total - 1


def surrogate_out(space: SearchSpace, key: PlanKey) -> Surrogate:
    est = estimate(space, key)
    f = lambda x: round_sig(x) if math.isfinite(x) else 1e300  # noqa: E731
    return Surrogate(capacity_req_s=f(est.capacity_req_s),
                     capacity_at_slo_req_s=f(est.capacity_at_slo_req_s), latency_s=f(est.latency_s),
                     ttft_ms=f(est.ttft_s * 1e3), tpot_ms=f(est.tpot_s * 1e3),
                     power_w=f(est.power_w), energy_j_per_token=f(est.energy_j_per_token))


def group_out(space: SearchSpace, i: int, k: int) -> GroupOut:
    c = space.cands[i]
    # the ReplicaConfig the simulator ran for this candidate
    return GroupOut(replicas=k, device=c.device, gpus_per_replica=c.gpus, config=c.config())
