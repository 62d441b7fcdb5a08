"""Infeasibility explanations whose fixes are checked by the simulator before they are printed.

Two situations:

* no plan passes the hard constraints or the surrogate screens (:func:`apex_opt.solver.explain.explain`
  names the conflicting constraints and proposes fixes verified by re-solving the CP-SAT model);
  here every proposed fix is re-run through the search on the relaxed problem, and kept only when a
  simulated plan then meets the SLO -- with that plan and its simulated numbers shown;
* plans exist but none meets the SLO in simulation (:func:`explain_simulated`): when the closest
  plan is overloaded the message says which rate it sustains and how many GPUs the offered rate
  needs, both simulated; otherwise the failing targets are relaxed to the closest plan's simulated
  values and the relaxed SLO is simulated again.

Messages use plain words, never the solver's constraint-group names; nothing the user already
allows is suggested.
"""

from __future__ import annotations

import math
from typing import Callable

from ..errors import InfeasibleError
from ..sim.metrics import Metrics, round_sig
from ..sim.workload import Requests
from ..solver.candidates import WorkloadStats
from ..solver.explain import round_up, grown
from ..specs.cluster import ClusterSpec
from ..specs.plan import Plan
from ..specs.slo import SLOSpec
from .executor import SimContext, slo_met

#: What each constraint group means, in the words the messages use.
PLAIN = {
    "ttft_ms": "the time-to-first-token target", "tpot_ms": "the time-per-output-token target",
    "e2e_s": "the end-to-end latency target", "attainment": "the required SLO attainment",
    "memory": "GPU memory", "gpus_available": "the GPUs in the cluster",
    "load": "the offered request rate", "max_gpus": "your max_gpus limit",
    "weight_dtypes": "the weight dtypes you allow", "kv_dtypes": "the KV-cache dtypes you allow",
    "pools": "the pools you allow", "max_tp": "your max_tp limit", "max_pp": "your max_pp limit",
    "power_budget_w": "your power budget",
}
UNITS = {"ttft_ms": "ms", "tpot_ms": "ms", "e2e_s": "s"}
#: Largest factor of GPUs (replicas) tried when sizing a load fix.
MAX_SCALE = 16

#: ``resolve(cluster, slo, requests) -> best simulated PlanOut or None`` (a quick search of the
#: relaxed problem; None when it is infeasible too).
Resolve = Callable[[ClusterSpec, SLOSpec, Requests], object]


def plain(groups: list[str]) -> str:
    return ", ".join(PLAIN.get(g, g) for g in groups) or "no single constraint"


def _numbers(m: Metrics) -> str:
    parts = [f"TTFT p90 {m.ttft_ms.p90:.0f} ms" if m.ttft_ms.p90 is not None else None,
             f"TPOT p90 {m.tpot_ms.p90:.1f} ms" if m.tpot_ms.p90 is not None else None,
             f"attainment {m.slo_attainment:.2f}" if m.slo_attainment is not None else None]
    return ", ".join(p for p in parts if p)


def _relaxed(fix: dict, cluster: ClusterSpec, slo: SLOSpec) -> tuple[ClusterSpec, SLOSpec] | None:
    g, v = fix["group"], fix.get("value")
    c = slo.constraints
    if g in UNITS:
        t = getattr(slo, g)
        return cluster, slo.model_copy(update={g: t.model_copy(update={"target": v})})
    upd = {"weight_dtypes": {"weight_dtypes": None}, "kv_dtypes": {"kv_dtypes": None},
           "pools": {"pools": None}, "max_tp": {"max_tp": None}, "max_pp": {"max_pp": None},
           "max_gpus": {"max_gpus": None}, "power_budget_w": {"power_budget_w": None}}.get(g)
    if upd is not None:
        return cluster, slo.model_copy(update={"constraints": c.model_copy(update=upd)})
    if g in ("gpus_available", "load", "memory") and fix.get("factor"):
        return grown(cluster, int(fix["factor"])), slo
    return None


def verify_fixes(err: InfeasibleError, cluster: ClusterSpec, slo: SLOSpec, requests: Requests,
                 resolve: Resolve) -> InfeasibleError:
    """Re-run every fix of ``err`` through the search and the simulator; keep those under which
    a simulated plan meets the SLO, with its numbers."""
    d = dict(err.details)
    groups = d.get("conflicting_groups", [])
    kept = []
    for fix in d.get("fixes", []):
        relaxed = _relaxed(fix, cluster, slo)
        if relaxed is None:
            continue
        try:
            best = resolve(relaxed[0], relaxed[1], requests)
        except InfeasibleError:
            best = None
        g = fix["group"]
        if best is not None and not best.slo_met and g in UNITS and best.metrics is not None:
            # the surrogate's relaxation did not hold: relax to the closest plan's simulated value
            val = _percentile(best.metrics, g, getattr(slo, g).percentile)
            if val is not None:
                fix = {**fix, "value": round_up(val * 1.01),
                       "change": f"relax {g} from {getattr(slo, g).target:g} to "
                                 f"{round_up(val * 1.01):g} {UNITS[g]}"}
                relaxed = _relaxed(fix, cluster, slo)
                try:
                    best = resolve(relaxed[0], relaxed[1], requests)
                except InfeasibleError:
                    best = None
        if best is None or not best.slo_met or best.metrics is None:
            continue
        kept.append({**fix, "verified": True, "verified_by": "simulation",
                     "simulated_plan": best.label, "simulated": _numbers(best.metrics),
                     "change": f"{fix['change']} (simulated: {best.label} meets the SLO, "
                               f"{_numbers(best.metrics)})"})
    text = (f"no plan for {d.get('model')} on {d.get('cluster')} satisfies the request: "
            + (f"{plain(groups)} conflict" if len(groups) > 1 else
               f"{plain(groups)} cannot be met together with the rest of the request"))
    if kept:
        text += "; fixes checked by simulation: " + "; ".join(f["change"] for f in kept)
    else:
        text += "; no single change was found that a simulated plan meets"
    return InfeasibleError(text, {**d, "fixes": kept})


def _scaled(plan: Plan, factor: float) -> Plan:
    """``plan`` with every group's replicas multiplied by ``factor`` (rounded up)."""
    return plan.model_copy(update={"groups": tuple(
        g.model_copy(update={"replicas": max(g.replicas, math.ceil(g.replicas * factor - 1e-9))})
        for g in plan.groups)})


def _fits(cluster: ClusterSpec, plan: Plan) -> ClusterSpec:
    """``cluster`` grown (whole multiples of its nodes) until every pool holds ``plan``."""
    for f in range(1, MAX_SCALE * 4 + 1):
        c = cluster if f == 1 else grown(cluster, f)
        if all(sum(g.replicas * g.gpus for g in plan.groups if (g.pool or c.pools[0].name) == p.name)
               <= p.num_gpus for p in c.pools):
            return c
    return grown(cluster, MAX_SCALE * 4)


def explain_simulated(ctx: SimContext, ranked: list, plans: dict[str, Plan],
                      resolve: Resolve) -> InfeasibleError:
    """None of the simulated plans meets the SLO. ``ranked`` = the plans' outputs, closest first;
    ``plans`` = label -> Plan."""
    best = ranked[0]
    m = best.metrics
    plan = plans[best.label]
    offered = WorkloadStats.of(ctx.requests).rate_req_s
    fixes: list[dict] = []
    failed = _failed_targets(ctx.slo, m)
    # 1. is it the load? the highest rate the closest plan sustains within the SLO
    rm, factor = _sustained(ctx, plan)
    if factor > 0:
        sustains = offered * factor
        if factor > 0:
            fixes.append({"group": "load", "change": f"lower the rate to ~{round_sig(sustains, 2):g} "
                          f"req/s (simulated: {best.label} meets the SLO there, {_numbers(rm)})",
                          "value": round_sig(sustains), "verified": True,
                          "verified_by": "simulation"})
        gpu_fix = _more_gpus(ctx, plan, max(factor, 1 / MAX_SCALE))
        if gpu_fix is not None:
            fixes.insert(0, gpu_fix)
        add = f"add {gpu_fix['value'] - plan.gpus} GPUs" if gpu_fix else "add GPUs"
        head = (f"the closest plan, {best.label} ({plan.gpus} GPUs), sustains ~"
                f"{round_sig(sustains, 2):g} req/s within the SLO, offered {round_sig(offered, 3):g}: "
                f"{add} or lower the rate")
        text = head
    else:
        text = (f"none of the {len(ranked)} simulated plans meets the SLO; the closest, {best.label}, "
                f"misses {plain(failed)}")
        # 2. relax the failing targets to the closest plan's simulated values, simulated again
        upd = {}
        for name in failed:
            if name not in UNITS:
                continue
            t = getattr(ctx.slo, name)
            val = _percentile(m, name, t.percentile)
            if val is not None and val * 1.01 > t.target:
                upd[name] = t.model_copy(update={"target": round_up(val * 1.01)})
        if upd:
            slo2 = ctx.slo.model_copy(update=upd)
            try:
                b2 = resolve(ctx.cluster, slo2, ctx.requests)
            except InfeasibleError:
                b2 = None
            if b2 is not None and b2.slo_met:
                what = ", ".join(f"{k} to {v.target:g} {UNITS[k]}" for k, v in upd.items())
                fixes.append({"group": "+".join(upd), "change": f"relax {what} (simulated: "
                              f"{b2.label} meets it, {_numbers(b2.metrics)})",
                              "value": {k: v.target for k, v in upd.items()}, "verified": True,
                              "verified_by": "simulation"})
    if fixes:
        text += "; fixes checked by simulation: " + "; ".join(f["change"] for f in fixes)
    return InfeasibleError(text, {"conflicting_groups": failed or ["load"], "fixes": fixes,
                                  "closest_plan": best.label, "stage": "simulation",
                                  "closest_plans": list(ranked[:3]),  # solve --json document
                                  "offered_req_s": round_sig(offered),
                                  "sustained_req_s": round_sig(offered * factor)})


#: Lowest rate factor at which a plan counts as load-bound (below it, a target is simply out of
#: reach: even a nearly idle plan misses it).
LOAD_PROBE = 1 / 32


def _sustained(ctx: SimContext, plan: Plan) -> tuple[Metrics | None, float]:
    """(metrics, rate factor) at the highest rate the plan meets the SLO, below the offered one;
    factor 0 when even ``LOAD_PROBE`` x the rate misses it (not a load problem)."""
    m0 = ctx.simulate(plan, LOAD_PROBE)
    if not slo_met(m0):
        return None, 0.0
    lo, hi, best = LOAD_PROBE, 1.0, m0
    for _ in range(5):
        f = math.sqrt(lo * hi)
        m = ctx.simulate(plan, f)
        if slo_met(m):
            lo, best = f, m
        else:
            hi = f
        if hi / lo < 1.1:
            break
    return best, lo


def _more_gpus(ctx: SimContext, plan: Plan, factor: float) -> dict | None:
    """The closest plan with enough replicas for the offered rate (more GPUs), simulated."""
    scale = 1.0 / factor
    for _ in range(4):
        bigger = _scaled(plan, scale)
        cluster = _fits(ctx.cluster, bigger)
        c2 = SimContext(ctx.model, cluster, ctx.requests, ctx.slo, ctx.engine)
        mm = c2.simulate(bigger)
        if slo_met(mm):
            more = "" if cluster is ctx.cluster else f" on {cluster.num_gpus} GPUs"
            return {"group": "load", "change": f"add {bigger.gpus - plan.gpus} GPUs: {bigger.label()}"
                    f"{more} (simulated: meets the SLO, {_numbers(mm)})", "value": bigger.gpus,
                    "verified": True, "verified_by": "simulation"}
        scale *= 1.5
    return None


def _percentile(m: Metrics, name: str, pct: float) -> float | None:
    """The simulated value of target ``name`` at the first reported percentile >= ``pct``."""
    key = min((p for p in (50, 90, 99) if p >= pct), default=99)
    return getattr(getattr(m, name), f"p{key}", None)


def _failed_targets(slo: SLOSpec, m: Metrics | None) -> list[str]:
    out = []
    if m is None or not m.slo_target_fraction:
        return out
    for name, t in slo.targets().items():
        if m.slo_target_fraction.get(name, 0.0) * 100 < t.percentile:
            out.append(name)
    if not out and m.slo_attainment is not None and m.slo_attainment < slo.attainment:
        out.append("attainment")
    return out
