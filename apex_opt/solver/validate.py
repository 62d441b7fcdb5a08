"""A solver-independent plan validator: checks a :class:`~apex_opt.specs.plan.Plan` against the
model, the cluster and the SLO file's constraints from first principles (no candidate tables, no
CP-SAT), so tests can hold the solver's output to it."""

from __future__ import annotations

from ..memory import replica_memory
from ..parallel import validate_plan
from ..specs.cluster import ClusterSpec
from ..specs.engine import EngineSpec
from ..specs.model import ModelSpec
from ..specs.plan import Plan
from ..specs.slo import SLOSpec


def plan_problems(model: ModelSpec, cluster: ClusterSpec, plan: Plan,
                  slo: SLOSpec | None = None, engine: EngineSpec | None = None) -> list[str]:
    """Everything wrong with ``plan`` (an empty list means it is valid); with ``engine`` also
    what that engine cannot run (data-parallel attention)."""
    out: list[str] = []
    pools = {p.name: p for p in cluster.pools}
    c = slo.constraints if slo is not None else None
    out += validate_plan(model, cluster, plan, engine)
    for gi, g in enumerate(plan.groups):
        where = f"group {gi} ({g.label()})"
        pool = pools.get(g.pool) if g.pool is not None else cluster.pools[0]
        if pool is None:
            continue
        if not any(o.startswith(where) for o in out):
            mem = replica_memory(model, pool.device, g.replica(), engine)
            if not mem.fits:
                out.append(f"{where}: does not fit in memory: {mem.problem}")
        if c is not None:
            wd = g.resolved_weight_dtype(model)  # unset: the checkpoint's
            if c.weight_dtypes is not None and wd not in c.weight_dtypes:
                out.append(f"{where}: weight dtype {wd} not allowed")
            if c.kv_dtypes is not None and g.kv_dtype not in c.kv_dtypes:
                out.append(f"{where}: KV dtype {g.kv_dtype} not allowed")
            if c.pools is not None and pool.name not in c.pools:
                out.append(f"{where}: pool {pool.name} not allowed")
            if c.max_tp is not None and g.tp > c.max_tp:
                out.append(f"{where}: TP {g.tp} > max_tp {c.max_tp}")
            if c.max_pp is not None and g.pp > c.max_pp:
                out.append(f"{where}: PP {g.pp} > max_pp {c.max_pp}")
    if c is not None and c.max_gpus is not None and plan.gpus > c.max_gpus:
        out.append(f"plan uses {plan.gpus} GPUs > max_gpus {c.max_gpus}")
    return out


def is_valid(model: ModelSpec, cluster: ClusterSpec, plan: Plan, slo: SLOSpec | None = None,
             engine: EngineSpec | None = None) -> bool:
    return not plan_problems(model, cluster, plan, slo, engine)
