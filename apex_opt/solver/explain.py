"""Why no plan exists, and the nearest fixes -- each verified by re-solving.

The CP-SAT model is rebuilt over every candidate that fits in memory (all dtypes, pools, shapes)
with one assumption literal per constraint group (:mod:`.model`); solving it without an objective on
one worker and reading ``sufficient_assumptions_for_infeasibility()`` names a set of groups that
conflict. For each named group a relaxation is proposed (a looser SLO target, more GPUs, another
dtype, dropping a user limit) and kept only when the relaxed problem is feasible.
"""

from __future__ import annotations

import dataclasses
import math


from ..errors import InfeasibleError
from ..specs.cluster import ClusterSpec
from ..specs.model import ModelSpec
from ..specs.slo import SLOSpec
from .candidates import WorkloadStats
from .model import SCREEN_SLACK, PlanModel, SearchSpace
from .space import build_space

#: Largest growth factor of a pool tried when proposing more GPUs.
MAX_GROWTH = 16
_UNITS = {"ttft_ms": "ms", "tpot_ms": "ms", "e2e_s": "s"}


def _feasible(space: SearchSpace, relaxed: frozenset[str] = frozenset()) -> bool:
    pm = PlanModel(space, relaxed=relaxed, with_objective=False)
    s = pm.solver(workers=1, seed=0, time_limit_s=5.0)
    from ortools.sat.python import cp_model

    return s.solve(pm.m) in (cp_model.OPTIMAL, cp_model.FEASIBLE)


def conflicting_groups(space: SearchSpace) -> list[str]:
    """A sufficient set of conflicting constraint groups (empty when the model is feasible)."""
    pm = PlanModel(space, assumptions=True, with_objective=False)
    lits = pm.literals
    names = sorted(lits)
    pm.m.add_assumptions([lits[n] for n in names])
    s = pm.solver(workers=1, seed=0, time_limit_s=5.0)
    status = s.solve(pm.m)
    from ortools.sat.python import cp_model

    if status != cp_model.INFEASIBLE:
        return []
    core = set(s.sufficient_assumptions_for_infeasibility())
    found = [n for n in names if lits[n].index in core]
    return found or names


def _with_slo(space: SearchSpace, slo: SLOSpec) -> SearchSpace:
    return dataclasses.replace(space, slo=slo)


def _relaxed_target(space: SearchSpace, name: str) -> float | None:
    """Smallest target of ``name`` under which the problem becomes feasible (verified)."""
    floors = sorted({m.floors(space.slo)[name] for m in space.models
                     if math.isfinite(m.floors(space.slo)[name])})
    target = getattr(space.slo, name)
    for f in floors:
        new = round_up(f * SCREEN_SLACK * 1.0001)
        if new <= target.target:
            continue
        slo = space.slo.model_copy(update={name: target.model_copy(update={"target": new})})
        if _feasible(_with_slo(space, slo)):
            return new
    return None


def round_up(x: float) -> float:
    if x <= 0:
        return x
    mag = 10 ** math.floor(math.log10(x))
    step = mag / 10
    return round(math.ceil(x / step) * step, 6)


def grown(cluster: ClusterSpec, factor: int) -> ClusterSpec:
    """``cluster`` with ``factor`` times the nodes in every pool (a network added where a pool had
    one node)."""
    from ..specs.cluster import LinkSpec

    pools = []
    for p in cluster.pools:
        upd = {"nodes": p.nodes * factor}
        if p.inter_node is None:
            upd["inter_node"] = LinkSpec(kind="infiniband", bandwidth_gbps=50.0, latency_us=5.0)
        pools.append(p.model_copy(update=upd))
    return cluster.model_copy(update={"pools": pools, "name": f"{cluster.name}-x{factor}"})


def _fix(model: ModelSpec, cluster: ClusterSpec, stats: WorkloadStats, slo: SLOSpec, objective: str,
         space: SearchSpace, group: str) -> dict | None:
    """A verified fix for one conflicting group, or None."""
    c = slo.constraints
    if group in ("ttft_ms", "tpot_ms", "e2e_s"):
        new = _relaxed_target(space, group)
        if new is None:
            return None
        old = getattr(slo, group).target
        return {"group": group, "change": f"relax {group} from {old:g} to {new:g} {_UNITS[group]}",
                "value": new, "verified": True}
    if group in ("weight_dtypes", "kv_dtypes", "pools", "max_tp", "max_pp", "max_gpus",
                 "power_budget_w"):
        if _feasible(space, frozenset({group})):
            what = {"weight_dtypes": "allow more weight dtypes (e.g. fp8)",
                    "kv_dtypes": "allow an fp8 KV cache", "pools": "allow every pool",
                    "max_tp": "drop the max_tp limit", "max_pp": "drop the max_pp limit",
                    "max_gpus": f"raise max_gpus above {c.max_gpus}",
                    "power_budget_w": f"raise the power budget above {c.power_budget_w} W"}[group]
            return {"group": group, "change": what, "value": None, "verified": True}
        return None
    if group in ("gpus_available", "load", "memory"):
        for factor in (2, 4, 8, MAX_GROWTH):
            bigger = grown(cluster, factor)
            sp = build_space(model, bigger, stats, slo, objective, engine=space.engine)
            if sp.cands and _feasible(sp):
                return {"group": group, "change": f"more GPUs: {bigger.num_gpus} instead of "
                                                  f"{cluster.num_gpus} ({factor}x the nodes)",
                        "value": bigger.num_gpus, "factor": factor, "verified": True}
        return None
    return None


def explain(model: ModelSpec, cluster: ClusterSpec, stats: WorkloadStats, slo: SLOSpec,
            objective: str, space: SearchSpace | None, engine=None,
            attention_dp: int | None = None) -> InfeasibleError:
    """Build the :class:`InfeasibleError` for a search with no feasible plan (``attention_dp``:
    the search's data-parallel-attention restriction, None = every size)."""
    full = build_space(model, cluster, stats, slo, objective, everything=True, engine=engine,
                       attention_dp=attention_dp)
    if not full.cands:
        groups = ["memory"]
        fixes = [f for f in [_fix(model, cluster, stats, slo.model_copy(update={
            "constraints": slo.constraints.model_copy(update={"weight_dtypes": ["bf16", "fp8", "int4"],
                                                               "kv_dtypes": ["bf16", "fp8"]})}),
            objective, full, "memory")] if f]
    else:
        groups = conflicting_groups(full)
        fixes = []
        for g in groups:
            f = _fix(model, cluster, stats, slo, objective, full, g)
            if f:
                fixes.append(f)
    text = (f"no plan for {model.name} on {cluster.name} satisfies the constraints: conflicting "
            f"groups {', '.join(groups) or '(none found)'}")
    if fixes:
        text += "; nearest fixes (each verified by re-solving): " + "; ".join(f["change"] for f in fixes)
    return InfeasibleError(text, {"conflicting_groups": groups, "fixes": fixes,
                                  "model": model.name, "cluster": cluster.name})


def explain_simulated(slo: SLOSpec, ranked: list, objective: str) -> InfeasibleError:
    """No simulated plan met the SLO: name the targets that failed on the best plan and what they
    would have to be relaxed to (read from the simulated percentiles, so the fix is verified by
    the simulation itself)."""
    best = ranked[0]
    m = best.metrics
    fixes, failed = [], []
    if m is not None and m.slo_target_fraction:
        for name, t in slo.targets().items():
            frac = m.slo_target_fraction.get(name, 0.0)
            if frac * 100 < t.percentile:
                failed.append(name)
                stats = getattr(m, name)
                key = min((p for p in (50, 90, 99) if p >= t.percentile), default=99)
                val = getattr(stats, f"p{key}")
                if val is not None and t.percentile in (50, 90, 99):
                    fixes.append({"group": name, "change": f"relax {name} to {round_up(val * 1.01):g} "
                                                           f"{_UNITS[name]} (simulated p{key} of {best.label})",
                                  "value": round_up(val * 1.01), "verified": True})
        if not failed and m.slo_attainment is not None:
            failed.append("attainment")
            fixes.append({"group": "attainment", "change": f"lower attainment to "
                                                          f"{math.floor(m.slo_attainment * 100) / 100:g}",
                          "value": math.floor(m.slo_attainment * 100) / 100, "verified": True})
    text = (f"none of the {len(ranked)} simulated plans meets the SLO; the closest, {best.label}, "
            f"fails {', '.join(failed) or 'the SLO'}")
    if fixes:
        text += "; nearest fixes: " + "; ".join(f["change"] for f in fixes)
    text += "; or add GPUs"
    return InfeasibleError(text, {"conflicting_groups": failed, "fixes": fixes,
                                  "closest_plan": best.label, "stage": "simulation",
                                  "closest_plans": list(ranked[:3])})  # for solve --json
