"""Plan search: candidates -> CP-SAT shortlist (top-K by no-good cuts) -> simulate -> rank.

:func:`solve` is the library entry point of ``apex-opt solve``. The CP-SAT model
(:mod:`apex_opt.solver.model`) ranks plans by an analytic surrogate; the shortlist is simulated on the
user's workload by :func:`apex_opt.sim.simulator.simulate` (a process pool by default, results in
submission order so the answer is deterministic) and ranked by the objective among the plans whose
simulated metrics meet the SLO. ``exhaustive=True`` simulates every feasible plan instead.
"""

from __future__ import annotations


import concurrent.futures as cf
import itertools
import math
import os
import time
from typing import Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field

from .errors import InfeasibleError, InputError
from .memory import GIB, replica_memory
from .sim.metrics import Metrics, round_sig
from .sim.simulator import simulate
from .sim.workload import Requests
from .solver.candidates import Candidate, WorkloadStats, enumerate_candidates
from .solver.model import PlanModel, SearchSpace
from .solver.objective import ReplicaModel, cost_curves, plan_estimate
from .solver.topk import top_k as run_top_k
from .specs.cluster import ClusterSpec
from .specs.engine import load_engine
from .specs.model import ModelSpec
from .specs.plan import Plan
from .specs.slo import SLOSpec

SCHEMA_VERSION = 1
OBJECTIVES = ("latency", "throughput", "energy", "gpus")
DEFAULT_TOP_K = 6
DEFAULT_TIME_LIMIT_S = 10.0
#: Rate search of the throughput objective: factor range and bisection steps.
RATE_STEPS = 7
RATE_MIN_FACTOR = 1 / 64

PlanKey = tuple[tuple[int, int], ...]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GroupOut(_Out):
    """One replica group of a plan."""

    pool: str
    device: str
    replicas: int
    tp: int
    pp: int
    ep: int
    weight_dtype: str
    kv_dtype: str
    layers_per_stage: list[int]
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    chunked_prefill: bool = True
    gpus_per_replica: int


class Surrogate(_Out):
    """The analytic estimates the CP-SAT model ranked the plan by."""

    capacity_req_s: float
    capacity_at_slo_req_s: float
    latency_s: float
    ttft_ms: float
    tpot_ms: float
    power_w: float
    energy_j_per_token: float


class LaunchOut(_Out):
    """Shell commands (one line per process) that start the plan."""

    vllm: str
    sglang: str


class PlanOut(_Out):
    """One ranked plan."""

    rank: int
    label: str
    groups: list[GroupOut]
    gpus: int
    metrics: Metrics | None = Field(description="Simulated metrics (same shape as `simulate --json`).")
    slo_met: bool | None
    objective_value: float | None = Field(description="Simulated value of the objective "
                                                      "(s, J/token, GPUs or req/s per GPU).")
    rate_req_s: float | None = Field(None, description="Request rate simulated (the highest rate "
                                                       "meeting the SLO for `throughput`).")
    rate_per_gpu: float | None = None
    surrogate: Surrogate
    launch: LaunchOut


class StageDetail(_Out):
    stage: int
    layers: int
    weights_gib: float
    activations_gib: float
    kv_cache_gib: float
    other_gib: float


class GroupDetail(_Out):
    label: str
    device: str
    kv_tokens: int
    stages: list[StageDetail]


class ChosenDetail(_Out):
    """The chosen plan in detail: per-stage layers, memory per device, time breakdown."""

    label: str
    groups: list[GroupDetail]
    time_breakdown_ms: dict[str, float]


class Baseline(_Out):
    name: str
    description: str
    plan: PlanOut | None
    problem: str | None = None
    gain: float | None = Field(None, description="How many times better the chosen plan is on "
                                                 "the objective (> 1 = better).")


class EnergySaving(_Out):
    latency_plan: str
    latency_plan_j_per_token: float | None
    chosen_j_per_token: float | None
    saving_fraction: float | None


class SolverInfo(_Out):
    status: str
    wall_s: float
    plans_feasible: int
    plans_simulated: int
    candidates: int
    shortlist: int
    objective: str
    exhaustive: bool
    workers: int
    executor: str
    seed: int


class SolveResult(_Out):
    """The output of ``apex-opt solve`` (``--json``)."""

    schema_version: int = SCHEMA_VERSION
    model: str
    cluster: str
    objective: str
    slo: dict
    workload: dict
    plans: list[PlanOut]
    chosen: ChosenDetail | None
    baselines: list[Baseline]
    energy_saving: EnergySaving | None = None
    solver: SolverInfo


# ---------------------------------------------------------------------------- simulation jobs

_JOB: dict = {}


def _init_job(model, cluster, requests, slo) -> None:
    _JOB.update(model=model, cluster=cluster, requests=requests, slo=slo)


def _met(m: Metrics) -> bool:
    return m.slo_met is not False and m.num_completed > 0


def _sim(plan: Plan, factor: float = 1.0, breakdown: bool = False) -> Metrics:
    req = _JOB["requests"] if factor == 1.0 else _JOB["requests"].scaled_rate(factor)
    return simulate(_JOB["model"], _JOB["cluster"], plan, req, slo=_JOB["slo"],
                    breakdown=breakdown).metrics


def _job(args: tuple[Plan, str, float]) -> tuple[Metrics, float]:
    """Simulate one plan; for ``throughput`` search the largest rate factor meeting the SLO."""
    plan, objective, guess = args
    if objective != "throughput":
        return _sim(plan), 1.0
    lo, hi = 0.0, None
    f = max(RATE_MIN_FACTOR, guess)
    best = None
    for _ in range(RATE_STEPS):
        m = _sim(plan, f)
        if _met(m):
            lo, best = f, m
        else:
            hi = f
        if hi is None:
            f *= 2.0
        elif lo == 0.0:
            if f <= RATE_MIN_FACTOR:
                break
            f = max(RATE_MIN_FACTOR, f / 2.0)
        else:
            f = math.sqrt(lo * hi)
    if best is None:
        return _sim(plan, f), 0.0
    return best, lo


def _run_jobs(jobs: list[tuple[Plan, str, float]], ctx: tuple, executor: str, workers: int,
              progress: Callable[[int, int], None] | None) -> list[tuple[Metrics, float]]:
    n = len(jobs)
    if executor == "ray":
        return _run_ray(jobs, ctx, progress)
    if executor == "serial" or n <= 1:
        _init_job(*ctx)
        out = []
        for i, j in enumerate(jobs):
            out.append(_job(j))
            if progress:
                progress(i + 1, n)
        return out
    procs = max(1, min(n, workers if workers > 1 else (os.cpu_count() or 1)))
    results: list = [None] * n
    with cf.ProcessPoolExecutor(max_workers=procs, initializer=_init_job, initargs=ctx) as ex:
        futs = {ex.submit(_job, j): i for i, j in enumerate(jobs)}
        done = 0
        for fut in cf.as_completed(futs):
            results[futs[fut]] = fut.result()
            done += 1
            if progress:
                progress(done, n)
    return results


def _run_ray(jobs, ctx, progress):
    try:
        import ray  # type: ignore
    except ImportError:
        raise InputError("the ray executor needs the 'ray' extra: pip install 'apex-opt[ray]'",
                         field="--executor", value="ray") from None
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)

    @ray.remote
    def remote(job, c):
        _init_job(*c)
        return _job(job)

    ref = ray.put(ctx)
    futs = [remote.remote(j, ref) for j in jobs]
    out = ray.get(futs)
    if progress:
        progress(len(jobs), len(jobs))
    return out


# ---------------------------------------------------------------------------- building blocks

def _space(model: ModelSpec, cluster: ClusterSpec, stats: WorkloadStats, slo: SLOSpec,
           objective: str, everything: bool = False) -> SearchSpace:
    engine = load_engine()
    cands = enumerate_candidates(model, cluster, stats, slo, engine=engine, everything=everything)
    if everything:
        cands = [c for c in cands if c.fits]
    curves: dict = {}
    models = []
    for c in cands:
        cv = curves.get(c.cost_key)
        if cv is None:
            cv = curves[c.cost_key] = cost_curves(model, cluster, c, stats, engine)
        models.append(ReplicaModel(c, cv, stats))
    return SearchSpace(cands, models, stats, slo, cluster, objective)


def _plan(space: SearchSpace, key: PlanKey) -> Plan:
    return Plan(groups=tuple(space.cands[i].group(k) for i, k in key))


def plan_label(space: SearchSpace, key: PlanKey) -> str:
    """Plan label with each group's engine limits, e.g. ``2xTP4@h100(seqs256,tok512)``."""
    return " + ".join(f"{k}x{space.cands[i].label()}" for i, k in key)


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
        gpus = sum(space.cands[i].gpus * k for i, k in key)
        if mg is not None and gpus > mg:
            continue
        if budget is not None:
            est = plan_estimate([(space.models[i], k) for i, k in key], space.stats, space.slo)
            if est.power_w > budget:
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


def _surrogate(space: SearchSpace, key: PlanKey) -> Surrogate:
    est = plan_estimate([(space.models[i], k) for i, k in key], space.stats, space.slo)
    f = lambda x: round_sig(x) if math.isfinite(x) else 1e300  # noqa: E731
    return Surrogate(capacity_req_s=f(est.capacity_req_s),
                     capacity_at_slo_req_s=f(est.capacity_at_slo_req_s), latency_s=f(est.latency_s),
                     ttft_ms=f(est.ttft_s * 1e3), tpot_ms=f(est.tpot_s * 1e3),
                     power_w=f(est.power_w), energy_j_per_token=f(est.energy_j_per_token))


def _launch(model_ref: str, model: ModelSpec, cluster: ClusterSpec, plan: Plan) -> LaunchOut:
    from .report.launch import launch_plan

    out = {}
    for engine in ("vllm", "sglang"):
        lp = launch_plan(model_ref, model, plan, engine=engine, cluster=cluster)
        out[engine] = "\n".join(nc.command for g in lp.groups for r in g.replicas for nc in r.commands)
    return LaunchOut(**out)


def _objective_value(objective: str, m: Metrics | None, gpus: int, rate: float | None) -> float | None:
    if m is None:
        return None
    if objective == "latency":
        return m.e2e_s.mean
    if objective == "energy":
        return m.energy_j_per_token
    if objective == "gpus":
        return float(gpus)
    return None if rate is None else rate / gpus


def _rank_key(objective: str, p: PlanOut) -> tuple:
    met = p.slo_met is not False
    v = p.objective_value
    inf = float("inf")
    if objective == "throughput":
        main = -(v or 0.0)
    else:
        main = v if v is not None else inf
    lat = p.metrics.e2e_s.mean if p.metrics and p.metrics.e2e_s.mean is not None else inf
    att = -(p.metrics.slo_attainment or 0.0) if p.metrics else 0.0
    return (not met, main if met else att, lat, p.gpus, p.label)


def _group_out(space: SearchSpace, i: int, k: int) -> GroupOut:
    c = space.cands[i]
    return GroupOut(pool=c.pool, device=c.device, replicas=k, tp=c.tp, pp=c.pp, ep=c.ep,
                    weight_dtype=c.weight_dtype, kv_dtype=c.kv_dtype,
                    layers_per_stage=list(c.layers_per_stage), max_num_seqs=c.max_num_seqs,
                    max_num_batched_tokens=c.max_num_batched_tokens, max_model_len=c.max_model_len,
                    gpus_per_replica=c.gpus)


def _plan_out(space, key, metrics, rate_factor, objective, model_ref, model) -> PlanOut:
    plan = _plan(space, key)
    gpus = plan.gpus
    rate = None
    if metrics is not None:
        # throughput: the rate the plan actually served at the highest SLO-meeting arrival rate
        # (a compressed finite trace ends in a drain, so the arrival rate would overstate it)
        rate = (min(space.stats.rate_req_s * rate_factor, metrics.requests_per_s)
                if objective == "throughput" else space.stats.rate_req_s)
        if objective == "throughput" and rate_factor <= 0:
            rate = 0.0
    return PlanOut(rank=0, label=plan_label(space, key), groups=[_group_out(space, i, k) for i, k in key],
                   gpus=gpus, metrics=metrics, slo_met=None if metrics is None else _met(metrics) and
                   (objective != "throughput" or rate_factor > 0),
                   objective_value=_objective_value(objective, metrics, gpus, rate),
                   rate_req_s=round_sig(rate) if rate is not None else None,
                   rate_per_gpu=round_sig(rate / gpus) if rate is not None else None,
                   surrogate=_surrogate(space, key),
                   launch=_launch(model_ref, model, space.cluster, plan))


def _chosen_detail(model: ModelSpec, space: SearchSpace, key: PlanKey, ctx: tuple) -> ChosenDetail:
    engine = load_engine()
    groups = []
    for i, k in key:
        c = space.cands[i]
        mem = replica_memory(model, space.cluster.pool(c.pool).device, c.config(), engine)
        stages = [StageDetail(stage=s.stage, layers=s.layers,
                              weights_gib=round_sig(s.weights_bytes / GIB),
                              activations_gib=round_sig(s.activation_bytes / GIB),
                              kv_cache_gib=round_sig(max(0, s.kv_cache_bytes) / GIB),
                              other_gib=round_sig((s.runtime_overhead_bytes + s.outside_budget_bytes) / GIB))
                  for s in mem.stages]
        groups.append(GroupDetail(label=f"{k}x{c.config().label()}", device=c.device,
                                  kv_tokens=mem.kv_tokens, stages=stages))
    _init_job(*ctx)
    m = _sim(_plan(space, key), breakdown=True)
    return ChosenDetail(label=plan_label(space, key), groups=groups,
                        time_breakdown_ms=dict(m.time_breakdown_ms))


def _baseline_keys(space: SearchSpace) -> list[tuple[str, str, PlanKey | None, str | None]]:
    """The two heuristic baselines as plan keys (None when no candidate fits)."""
    out = []
    specs = [("max-tp-dp", "largest TP inside a node (fewest pipeline stages that fit) + DP "
                           "across the rest", lambda c: (-c.tp, c.pp)),
             ("min-tp-dp", "smallest TP x PP that fits + DP to fill", lambda c: (c.gpus, c.pp))]
    mg = space.slo.constraints.max_gpus
    for name, desc, order in specs:
        key = []
        for pool in space.cluster.pools:
            cands = [(i, c) for i, c in enumerate(space.cands) if c.pool == pool.name
                     and c.max_num_seqs == 256 and c.max_num_batched_tokens == 512]
            if not cands:
                continue
            dt = [(i, c) for i, c in cands if c.weight_dtype == "bf16" and c.kv_dtype == "bf16"] or cands
            i, c = min(dt, key=lambda ic: (order(ic[1]), ic[1].weight_dtype != "bf16",
                                           ic[1].kv_dtype != "bf16", ic[1].ep))
            budget = pool.num_gpus if mg is None else min(pool.num_gpus, mg - sum(
                space.cands[j].gpus * kk for j, kk in key))
            k = budget // c.gpus
            if k >= 1:
                key.append((i, k))
        out.append((name, desc, tuple(sorted(key)) or None,
                    None if key else "no replica shape with default engine limits fits"))
    return out


def _gain(objective: str, chosen: PlanOut, base: PlanOut) -> float | None:
    a, b = chosen.objective_value, base.objective_value
    if a is None or b is None or not base.slo_met:
        return None
    if objective == "throughput":
        return round_sig(a / b) if b > 0 else None
    return round_sig(b / a) if a > 0 else None


# ---------------------------------------------------------------------------- public API

def workload_rate_check(requests: Requests) -> None:
    if len(requests) < 2:
        raise InputError("the workload needs at least 2 requests to define a rate",
                         source=requests.source, field="num_requests", value=len(requests))


def solve(model: ModelSpec, cluster: ClusterSpec, requests: Requests, slo: SLOSpec, *,
          objective: str | None = None, top_k: int = DEFAULT_TOP_K, exhaustive: bool = False,
          workers: int = 1, executor: str = "process", seed: int = 0,
          time_limit_s: float = DEFAULT_TIME_LIMIT_S, model_ref: str | None = None,
          progress: Callable[[str, int, int], None] | None = None) -> SolveResult:
    """Plan serving ``model`` on ``cluster`` for ``requests`` under ``slo``.

    Raises :class:`InfeasibleError` (with an explanation and verified fixes) when no plan can meet
    memory or the SLO, :class:`InputError` for bad arguments.
    """
    t0 = time.perf_counter()
    objective = objective or slo.objective
    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective; use one of {', '.join(OBJECTIVES)}",
                         field="objective", value=objective)
    if objective == "throughput" and not slo.has_targets:
        raise InputError("the throughput objective needs at least one SLO target (ttft_ms, "
                         "tpot_ms or e2e_s) to define an SLO-meeting rate", field="objective",
                         value=objective)
    if top_k < 1:
        raise InputError("must be >= 1", field="top_k", value=top_k)
    if executor not in ("process", "ray", "serial"):
        raise InputError("use process, ray or serial", field="executor", value=executor)
    workload_rate_check(requests)
    model_ref = model_ref or model.name
    stats = WorkloadStats.of(requests)
    space = _space(model, cluster, stats, slo, objective)
    if not space.cands:
        from .solver.explain import explain
        raise explain(model, cluster, stats, slo, objective, None)
    status = "EXHAUSTIVE"
    if exhaustive:
        shortlist = feasible_plans(space)
        n_feasible = len(shortlist)
    else:
        n_feasible = count_feasible(space)
        shortlist, status = _shortlist(space, objective, top_k, workers, seed, time_limit_s)
        if not shortlist:
            from .solver.explain import explain
            raise explain(model, cluster, stats, slo, objective, space)
    ctx = (model, cluster, requests, slo)
    jobs = [(_plan(space, key), objective, _rate_guess(space, key)) for key in shortlist]
    cb = (lambda d, n: progress("simulating", d, n)) if progress else None
    results = _run_jobs(jobs, ctx, executor, workers, cb)
    plans = [_plan_out(space, key, m, f, objective, model_ref, model)
             for key, (m, f) in zip(shortlist, results)]
    ranked = sorted(plans, key=lambda p: _rank_key(objective, p))
    ranked = [p.model_copy(update={"rank": r + 1}) for r, p in enumerate(ranked)]
    if not any(p.slo_met for p in ranked):
        from .solver.explain import explain_simulated
        raise explain_simulated(slo, ranked, objective)
    best_key = shortlist[plans.index(next(p for p in plans if p.label == ranked[0].label
                                          and p.groups == ranked[0].groups))]
    chosen = _chosen_detail(model, space, best_key, ctx)
    baselines = _baselines(space, ranked[0], objective, ctx, executor, workers, model_ref, model)
    saving = _energy_saving(ranked) if objective == "energy" else None
    info = SolverInfo(status=status, wall_s=round(time.perf_counter() - t0, 3),
                      plans_feasible=n_feasible, plans_simulated=len(shortlist),
                      candidates=len(space.cands), shortlist=len(shortlist), objective=objective,
                      exhaustive=exhaustive, workers=workers, executor=executor, seed=seed)
    return SolveResult(model=model.name, cluster=cluster.name, objective=objective,
                       slo=slo.model_dump(mode="json"),
                       workload=requests.summary().model_dump(mode="json"), plans=ranked,
                       chosen=chosen, baselines=baselines, energy_saving=saving, solver=info)


#: a max_num_seqs cap this many times the mean in-flight requests per replica never binds
SEQ_CAP_PEAK = 4.0


def _rate_guess(space: SearchSpace, key: PlanKey) -> float:
    est = plan_estimate([(space.models[i], k) for i, k in key], space.stats, space.slo)
    return max(RATE_MIN_FACTOR, est.capacity_at_slo_req_s / space.stats.rate_req_s * 0.8)


def _shortlist(space: SearchSpace, objective: str, k: int, workers: int, seed: int,
               time_limit_s: float) -> tuple[list[PlanKey], str]:
    """Top-K plans of the CP-SAT model; for ``energy`` also the top-K latency plans, so that the
    latency-optimal plan is simulated too and the saving against it is measured."""
    res = run_top_k(PlanModel(space), 2 * k, workers=workers, seed=seed, time_limit_s=time_limit_s)
    keys = _distinct(space, list(res.plans))[:k]
    if objective == "energy" and keys:
        lat = SearchSpace(space.cands, space.models, space.stats, space.slo, space.cluster, "latency")
        more = run_top_k(PlanModel(lat), 2 * k, workers=workers, seed=seed, time_limit_s=time_limit_s)
        keys += [p for p in _distinct(space, list(more.plans))[:k] if p not in keys]
    return keys, res.status


def _distinct(space: SearchSpace, keys: list[PlanKey]) -> list[PlanKey]:
    """Drop plans that differ from an earlier one only in ``max_num_seqs`` caps that cannot bind
    at this load: by Little's law a replica holds ``rate x latency / replicas`` requests on
    average, and a cap at least ``SEQ_CAP_PEAK`` times that is (practically) never reached, so
    simulating both would show two identical rows instead of one more real alternative."""
    seen: set = set()
    out = []
    for key in keys:
        est = _surrogate(space, key)
        replicas = sum(n for _, n in key)
        inflight = space.stats.rate_req_s * est.latency_s / max(replicas, 1)
        shape = tuple(sorted(
            (space.cands[i].cost_key, space.cands[i].max_num_batched_tokens,
             0 if space.cands[i].max_num_seqs >= SEQ_CAP_PEAK * inflight else space.cands[i].max_num_seqs,
             n)
            for i, n in key))
        if shape in seen:
            continue
        seen.add(shape)
        out.append(key)
    return out


def _baselines(space, chosen: PlanOut, objective, ctx, executor, workers, model_ref, model) -> list[Baseline]:
    specs = _baseline_keys(space)
    keys = [key for _n, _d, key, _p in specs if key is not None]
    jobs = [(_plan(space, key), objective, _rate_guess(space, key)) for key in keys]
    results = iter(_run_jobs(jobs, ctx, executor, workers, None)) if jobs else iter(())
    out = []
    for name, desc, key, problem in specs:
        if key is None:
            out.append(Baseline(name=name, description=desc, plan=None, problem=problem))
            continue
        m, f = next(results)
        p = _plan_out(space, key, m, f, objective, model_ref, model)
        out.append(Baseline(name=name, description=desc, plan=p, gain=_gain(objective, chosen, p)))
    return out


def _energy_saving(ranked: list[PlanOut]) -> EnergySaving | None:
    met = [p for p in ranked if p.slo_met and p.metrics is not None]
    if not met:
        return None
    lat = min(met, key=lambda p: (p.metrics.e2e_s.mean or math.inf, p.gpus, p.label))
    chosen = ranked[0]
    a, b = chosen.metrics.energy_j_per_token if chosen.metrics else None, lat.metrics.energy_j_per_token
    saving = round_sig(1 - a / b) if a is not None and b else None
    return EnergySaving(latency_plan=lat.label, latency_plan_j_per_token=b,
                        chosen_j_per_token=a, saving_fraction=saving)


def iter_labels(result: SolveResult) -> Iterable[str]:
    """Labels of the ranked plans (convenience for reports)."""
    return (p.label for p in result.plans)
