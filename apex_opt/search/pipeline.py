"""``solve``: candidates -> shortlist -> simulate -> rank -> baselines and detail.

The CP-SAT model (:mod:`apex_opt.solver.model`) ranks plans by an analytic surrogate; the shortlist
is simulated on the user's workload (:mod:`.executor`; results in submission order so the answer
is deterministic) and ranked by the objective among the plans whose simulated metrics meet the
SLO. ``exhaustive=True`` simulates every feasible plan instead.

``throughput`` rate-searches every plan (:mod:`.rates`): outside the first plan and the baselines,
a search stops once its plan is bounded below the best rate simulated before its batch started
(the bound is reported, ``PlanOut.rate_below_req_s``), and the refinement resumes it from its
probes when its bound is too loose to rule out the next plan of its shape.
"""

from __future__ import annotations

import math
import time
from typing import Callable

from ..errors import InputError
from ..memory import GIB, replica_memory
from ..sim.metrics import Metrics, round_sig
from ..sim.simulator import engine_limits
from ..sim.workload import Requests
from ..solver.candidates import WorkloadStats
from ..solver.explain import explain
from ..solver.model import SearchSpace
from ..solver.space import build_space
from ..specs.cluster import ClusterSpec
from ..specs.engine import EngineSpec, load_engine
from ..specs.model import ModelSpec
from ..specs.plan import Plan
from ..specs.slo import SLOSpec
from .baselines import baseline_keys
from .fixes import explain_simulated, verify_fixes
from .executor import SimContext, SimJob, SimOutcome, make_executor, same_run, slo_met
from .objectives import OBJECTIVES, better, objective_value, rank_key
from .plans import (PlanKey, count_feasible, estimate, feasible_plans, group_out, plan_label,
                    surrogate_out, to_plan)
from .rates import RATE_MIN_FACTOR
from .results import (Baseline, ChosenDetail, EnergySaving, GroupDetail, OtherEngine, PlanOut,
                      SolveResult, SolverInfo, StageDetail)
from .clocks import clocked_variants
from .shortlist import SimScore, latency_space, ranked_plans, refine

DEFAULT_TOP_K = 4
#: Simulation budget of a search: this share of the feasible plans, rounded down, the report's
#: baselines included (the refinement gets the rest, at least top_k) ...
BUDGET_SHARE = 0.2
#: ... and at most this many simulations.
MAX_SIMS = 48
DEFAULT_TIME_LIMIT_S = 10.0
DEFAULT_ENGINE = "vllm"

#: ``launcher(plan, engine_name) -> shell commands``; the CLI passes the report layer's renderer.
Launcher = Callable[[Plan, str], str]


def workload_rate_check(requests: Requests) -> None:
    if len(requests) < 2:
        raise InputError("the workload needs at least 2 requests to define a rate",
                         source=requests.source, field="num_requests", value=len(requests))


def _check_args(slo: SLOSpec, objective: str, top_k: int) -> None:
    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective; use one of {', '.join(OBJECTIVES)}",
                         field="objective", value=objective)
    if objective == "throughput" and not slo.has_targets:
        raise InputError("the throughput objective needs at least one SLO target (ttft_ms, "
                         "tpot_ms or e2e_s) to define an SLO-meeting rate", field="objective",
                         value=objective)
    if top_k < 1:
        raise InputError("must be >= 1", field="top_k", value=top_k)


def _check_attention_dp(model: ModelSpec, engine: EngineSpec, attention_dp: int | None) -> None:
    """A data-parallel-attention size the model or the engine cannot run at all is bad input."""
    if attention_dp is None or attention_dp == 1:
        return
    if attention_dp < 1:
        raise InputError("must be >= 1 (1 = off)", field="attention_dp", value=attention_dp)
    if model.moe is None:
        raise InputError(f"data-parallel attention needs a mixture-of-experts model; {model.name} "
                         f"is dense (replicas already are data parallel)", field="attention_dp",
                         value=attention_dp)
    if not engine.dp_attention:
        raise InputError(f"engine {engine.name} has no data-parallel attention (SGLang: "
                         f"--enable-dp-attention; vLLM V1: --data-parallel-size)",
                         field="attention_dp", value=attention_dp)


def _check_prices(cluster: ClusterSpec) -> None:
    for i, p in enumerate(cluster.pools):
        if getattr(p, "gpu_price_per_hour", None) is None:
            raise InputError("the cost objective needs a GPU price for every pool of the cluster "
                             "(and electricity_price_per_kwh for the energy part)",
                             source=cluster.name, field=f"pools[{i}].gpu_price_per_hour", value=None)


def _rate_guess(space: SearchSpace, key: PlanKey) -> float:
    est = estimate(space, key)
    return max(RATE_MIN_FACTOR, est.capacity_at_slo_req_s / space.stats.rate_req_s * 0.8)


def _job(space: SearchSpace, key: PlanKey, objective: str, breakdown: bool = False,
         stop_at: float | None = None, replay: tuple = ()) -> SimJob:
    """``stop_at``: a rate (req/s) some simulated plan sustains; the rate search of ``key`` stops
    once ``key`` is bounded below it (it cannot win; :mod:`.rates`). ``replay``: the probes of
    its earlier stopped search, to resume it."""
    rs = objective == "throughput"
    return SimJob(to_plan(space, key), rate_search=rs,
                  rate_guess=_rate_guess(space, key) if rs else 1.0, breakdown=breakdown,
                  stop_at=stop_at if rs else None, rate_req_s=space.stats.rate_req_s,
                  replay=replay)


def _incumbent(space: SearchSpace, cache: dict, objective: str) -> float | None:
    """``throughput``: the highest rate an SLO-meeting plan was simulated to sustain exactly
    (a bounded plan sustains less than some such rate, so it never is the incumbent)."""
    if objective != "throughput":
        return None
    vals = [v for k, out in cache.items() if out is not None and out.below is None
            and (v := _met_value(space, k, out, objective)) is not None and v > 0]
    return max(vals) if vals else None


#: Objectives that search the GPU clock of the chosen plans.
CLOCKED_OBJECTIVES = frozenset({"energy", "cost"})


def _met_value(space: SearchSpace, key: PlanKey, out: SimOutcome, objective: str) -> float | None:
    po = _plan_out(space, key, out, objective, {})
    return po.objective_value if po.slo_met else None


def _launches(plan: Plan, launcher: Launcher | None, engines: tuple[str, ...]) -> dict[str, str]:
    return {e: launcher(plan, e) for e in engines} if launcher else {}


def _plan_out(space: SearchSpace, key: PlanKey, out: SimOutcome | None, objective: str,
              launch: dict[str, str]) -> PlanOut:
    plan = to_plan(space, key)
    gpus = plan.gpus
    metrics = out.metrics if out else None
    rate = None
    met = None
    if out is not None:
        if objective == "throughput":
            # the rate the plan served at the highest SLO-meeting arrival rate: a compressed
            # finite trace ends in a drain (and a short one fits in one batch), so the arrival
            # rate alone would overstate what the plan sustains
            rate = (0.0 if out.rate_factor <= 0 else
                    min(space.stats.rate_req_s * out.rate_factor, metrics.requests_per_s))
            met = slo_met(metrics) and out.rate_factor > 0
            if out.below is not None and not met:
                met = None  # stopped before any probe met the SLO: it may at a lower rate
        else:
            rate = space.stats.rate_req_s
            met = slo_met(metrics)
    return PlanOut(rank=0, label=plan_label(space, key), groups=[group_out(space, i, k) for i, k in key],
                   gpus=gpus, metrics=metrics, slo_met=met,
                   objective_value=objective_value(objective, metrics, gpus, rate,
                                                   out.cost_per_mtok if out else None),
                   rate_req_s=round_sig(rate) if rate is not None else None,
                   rate_per_gpu=round_sig(rate / gpus) if rate is not None else None,
                   rate_below_req_s=round_sig(out.below) if out and out.below is not None else None,
                   surrogate=surrogate_out(space, key), launch=launch)


class Twins:
    """Plans that simulate identically. Twins are one-group plans that differ only in
    ``max_num_seqs`` and ``max_num_batched_tokens`` (and so in KV blocks); a twin takes a
    simulated twin's outcome when everything that run asked of its scheduler limits holds under
    both plans' limits (:func:`~apex_opt.search.executor.same_run`): then no decision of the
    simulator could differ."""

    def __init__(self, model: ModelSpec, space: SearchSpace, engine: EngineSpec):
        self.model, self.space, self.engine = model, space, engine
        self._limits: dict[int, object] = {}
        self.done: dict[tuple, list[PlanKey]] = {}  # twin group -> its simulated plans

    def group(self, key: PlanKey) -> tuple | None:
        if len(key) != 1:
            return None
        (i, k), = key
        c = self.space.cands[i]
        return c.cost_key, c.max_model_len, k

    def limits(self, key: PlanKey):
        i = key[0][0]
        lim = self._limits.get(i)
        if lim is None:
            c = self.space.cands[i]
            lim = self._limits[i] = engine_limits(
                self.model, c.config(), c.kv_tokens // self.engine.block_size, self.engine,
                self.space.cluster.pool(c.pool).device)
        return lim

    def looseness(self, key: PlanKey) -> tuple:
        """Sort key: the twin to simulate first is the one whose limits the run most likely
        never reaches -- a token budget above the long prompts (p99), then the most KV blocks
        (a larger budget or more sequences cost activation memory), then the larger limits."""
        c = self.space.cands[key[0][0]]
        chunks = c.max_num_batched_tokens < self.space.stats.prompt_at(99.0)
        return chunks, -c.kv_tokens, -c.max_num_seqs, -c.max_num_batched_tokens, key

    def shared(self, key: PlanKey, cache: dict) -> SimOutcome | None:
        """A simulated twin's outcome that is ``key``'s too, else None."""
        g = self.group(key)
        for twin in self.done.get(g, ()) if g is not None else ():
            env = cache[twin].envelope
            if env is not None and same_run(env, self.limits(twin), self.limits(key)):
                return cache[twin]
        return None

    def simulated(self, key: PlanKey) -> None:
        g = self.group(key)
        if g is not None:
            self.done.setdefault(g, []).append(key)


def _chosen_detail(model: ModelSpec, space: SearchSpace, key: PlanKey, engine: EngineSpec,
                   metrics: Metrics) -> ChosenDetail:
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
    return ChosenDetail(label=plan_label(space, key), groups=groups,
                        time_breakdown_ms=dict(metrics.time_breakdown_ms))


def _baselines(space: SearchSpace, chosen: PlanOut, objective: str,
               specs: list, cache: dict) -> list[Baseline]:
    out = []
    for name, desc, key, problem in specs:
        if key is None:
            out.append(Baseline(name=name, description=desc, plan=None, problem=problem))
            continue
        p = _plan_out(space, key, cache[key], objective, {})
        gain = None
        if chosen.objective_value is not None and p.objective_value is not None and p.slo_met:
            g = better(objective, chosen.objective_value, p.objective_value)
            gain = round_sig(g) if math.isfinite(g) else None
        out.append(Baseline(name=name, description=desc, plan=p, gain=gain))
    return out


def _energy_saving(ranked: list[PlanOut]) -> EnergySaving | None:
    """Against the latency-optimal SLO-meeting plan at default clocks."""
    met = [p for p in ranked if p.slo_met and p.metrics is not None
           and all(g.config.sm_clock_mhz is None for g in p.groups)]
    if not met:
        return None
    lat = min(met, key=lambda p: (p.metrics.e2e_s.mean or math.inf, p.gpus, p.label))
    chosen = ranked[0]
    a, b = chosen.metrics.energy_j_per_token if chosen.metrics else None, lat.metrics.energy_j_per_token
    saving = round_sig(1 - a / b) if a is not None and b else None
    # the chosen plan's default-clock twin: same groups without the clock / cap (none when the
    # chosen plan sets neither: it is its own twin)
    def groups(p: PlanOut, **unset) -> list:
        return [(g.replicas, g.device, g.config.model_copy(update=unset)) for g in p.groups]
    key = groups(chosen, sm_clock_mhz=None, power_cap_w=None)
    twin = None if key == groups(chosen) else next((p for p in met if groups(p) == key), None)
    return EnergySaving(latency_plan=lat.label, latency_plan_j_per_token=b,
                        chosen_j_per_token=a, saving_fraction=saving,
                        latency_plan_e2e_s=lat.metrics.e2e_s.mean,
                        chosen_e2e_s=chosen.metrics.e2e_s.mean if chosen.metrics else None,
                        default_clock_plan=twin.label if twin else None,
                        default_clock_j_per_token=twin.metrics.energy_j_per_token if twin else None,
                        default_clock_e2e_s=twin.metrics.e2e_s.mean if twin else None)


def solve(model: ModelSpec, cluster: ClusterSpec, requests: Requests, slo: SLOSpec, *,
          objective: str | None = None, top_k: int = DEFAULT_TOP_K, exhaustive: bool = False,
          workers: int = 1, executor: str = "process", seed: int = 0,
          time_limit_s: float = DEFAULT_TIME_LIMIT_S, model_ref: str | None = None,
          engine: str | EngineSpec = DEFAULT_ENGINE, also_launch: tuple[str, ...] = (),
          launcher: Launcher | None = None, max_sims: int | None = None,
          progress: Callable[[str, int, int], None] | None = None,
          gpu_clocks: bool = True, attention_dp: int | None = None,
          _detail: bool = True, _verify: bool = True) -> SolveResult:
    """Plan serving ``model`` on ``cluster`` for ``requests`` under ``slo``, every plan simulated
    with ``engine`` (a bundled engine name or spec). ``launcher(plan, engine_name)`` renders launch
    commands (for ``engine`` and every engine of ``also_launch``, whose simulation of the chosen
    plan is reported too). With ``gpu_clocks`` the energy and cost objectives also try locked
    GPU clocks on their best plans (each setting simulated). ``attention_dp``: None searches
    data-parallel attention of every size the engine and each MoE shape allow (1 included); N
    only N (1 = off); N > 1 with a dense model or an engine without it is bad input.

    Raises :class:`InfeasibleError` (with an explanation and verified fixes) when no plan can meet
    memory or the SLO, :class:`InputError` for bad arguments.
    """
    t0 = time.perf_counter()
    objective = objective or slo.objective
    _check_args(slo, objective, top_k)
    workload_rate_check(requests)
    if objective == "cost":
        _check_prices(cluster)
    eng = engine if isinstance(engine, EngineSpec) else load_engine(engine)
    _check_attention_dp(model, eng, attention_dp)
    eng_key = engine if isinstance(engine, str) else eng.name
    other_keys = tuple(dict.fromkeys(e for e in also_launch if e != eng_key))
    others = tuple(load_engine(e) for e in other_keys)
    stats = WorkloadStats.of(requests)

    def resolve(cl: ClusterSpec, sl: SLOSpec, rq: Requests):
        """Best simulated plan of a relaxed problem (no details, no further explanations)."""
        r = solve(model, cl, rq, sl, objective=objective, top_k=2, workers=workers,
                  executor=executor, seed=seed, time_limit_s=time_limit_s, engine=eng,
                  max_sims=6, attention_dp=attention_dp, _detail=False, _verify=False)
        return r.plans[0]

    def infeasible(err):
        return verify_fixes(err, cluster, slo, requests, resolve) if _verify else err

    space = build_space(model, cluster, stats, slo, objective, engine=eng, attention_dp=attention_dp)
    if not space.cands:
        raise infeasible(explain(model, cluster, stats, slo, objective, None, engine=eng,
                                 attention_dp=attention_dp))
    ctx = SimContext(model, cluster, requests, slo, eng)
    cb = (lambda d, n: progress("simulating", d, n)) if progress else None
    cache: dict[PlanKey, SimOutcome] = {}
    clock_cache: dict = {}
    gap = None
    runs = [0]
    with make_executor(executor, ctx, workers) as ex:

        def sims(jobs: list[SimJob], cb=None) -> list[SimOutcome]:
            outs = ex.map(jobs, cb)
            runs[0] += sum(o.runs for o in outs)
            return outs

        twins = Twins(model, space, eng) if objective != "throughput" else None
        # the simulator collects the time breakdown inside fast-forwarded decode runs at little
        # cost, so the chosen plan's breakdown comes from its shortlist run; --exhaustive skips
        # it on its hundreds of runs (~15 % of their time) and runs the chosen plan once more
        later_breakdown = exhaustive and objective != "throughput"

        def simulate(todo: list[PlanKey], exact: frozenset = frozenset()) -> None:
            if todo:
                # longest first (an overloaded plan runs every iteration of its backlog), so the
                # workers finish together; outcomes stay keyed by plan
                order = sorted(todo, key=lambda k: (-estimate(space, k).latency_s, todo.index(k)))
                # the rate searches stop against the best rate known when the batch starts
                # (fixed for the batch: the answer does not depend on which worker is faster);
                # the plans of ``exact`` (the baselines, reported with their gain) run to the end
                bar = _incumbent(space, cache, objective)
                outs = sims([_job(space, k, objective, breakdown=not later_breakdown,
                                    stop_at=None if k in exact else bar)
                               for k in order], cb)
                cache.update(zip(order, outs))
                for k in todo:
                    if twins is not None:
                        twins.simulated(k)

        def run(keys: list[PlanKey], exact: frozenset = frozenset()) -> None:
            todo = [k for k in dict.fromkeys(keys) if k not in cache]
            if twins is None:
                return simulate(todo, exact)
            # one plan of each twin group first (the most KV blocks); its twins take its outcome
            # when the run fits their limits too (else they are simulated next)
            first: dict = {}
            later = []
            for k in sorted(todo, key=twins.looseness):
                out = twins.shared(k, cache)
                if out is not None:
                    cache[k] = out
                    continue
                g = twins.group(k)
                if g is None or g not in first:
                    first[g if g is not None else ("plan", k)] = k
                else:
                    later.append(k)
            simulate([k for k in todo if k in first.values()])
            rest = []
            for k in later:
                out = twins.shared(k, cache)
                if out is not None:
                    cache[k] = out
                else:
                    rest.append(k)
            simulate(rest)

        if exhaustive:
            keys = feasible_plans(space)
            n_feasible = len(keys)
            run(keys)  # twins share a simulation where it is provably theirs too (Twins)
            status, gap = "EXHAUSTIVE", 0.0
        else:
            n_feasible = count_feasible(space)
            source, st = ranked_plans(space, workers, seed, time_limit_s)
            procs = getattr(ex, "procs", 1)
            base_first = [k for _n, _d, k, _p in baseline_keys(space, eng) if k is not None] \
                if _detail else []
            # the share caps every simulation of the search, the report's baselines included
            budget = min(max(top_k, MAX_SIMS if max_sims is None else max_sims),
                         max(top_k, math.floor(BUDGET_SHARE * n_feasible) - len(set(base_first))))

            def sim_batch(batch) -> list[SimScore]:
                # the baselines ride along with the first batch (idle workers otherwise); under
                # throughput (baselines searched to the end either way) with the first plan only,
                # so that the rest of the batch is already searched against its rate
                head = batch[:1] if objective == "throughput" and base_first else batch
                run([s.key for s in head] + base_first, frozenset(base_first))
                base_first.clear()
                run([s.key for s in batch[len(head):]])
                return [score(s.key) for s in batch]

            def score(key: PlanKey) -> SimScore:
                po = _plan_out(space, key, cache[key], objective, {})
                return SimScore(bool(po.slo_met), po.objective_value,
                                po.metrics.e2e_s.mean if po.metrics else None,
                                upper=cache[key].below)

            def tighten(pairs) -> list[SimScore]:
                # resume stopped rate searches from their probes, to a lower stopping rate
                keys = [s.key for s, _w in pairs]
                outs = sims([_job(space, k, objective, breakdown=not later_breakdown,
                                    stop_at=w, replay=cache[k].probes)
                               for k, (_s, w) in zip(keys, pairs)], cb)
                cache.update(zip(keys, outs))
                return [score(k) for k in keys]

            ref = refine(space, source, sim_batch, first=top_k, batch=max(1, procs), budget=budget,
                         tighten=tighten if objective == "throughput" else None)
            keys = [s.key for s in ref.plans]
            gap = None if ref.gap is None else round_sig(ref.gap)
            status = st[0] if st else "UNKNOWN"
            if not keys:
                raise infeasible(explain(model, cluster, stats, slo, objective, space, engine=eng,
                                         attention_dp=attention_dp))
            if objective == "energy":
                # the latency-optimal plan, to measure the saving against
                lat_src, _ = ranked_plans(latency_space(space), workers, seed, time_limit_s)
                first = next(lat_src, None)
                if first is not None and first.key not in cache:
                    run([first.key])
                    keys.append(first.key)
        if objective in CLOCKED_OBJECTIVES and gpu_clocks:
            # GPU clock as a knob: clocked variants of the best SLO-meeting plans, simulated
            met = sorted((k for k in keys if cache[k] is not None and _met_value(
                space, k, cache[k], objective) is not None),
                key=lambda k: _met_value(space, k, cache[k], objective))
            variants = [v for v in clocked_variants(model, space, met, clock_cache) if v not in cache]
            run(variants)
            keys += variants
        base_specs = baseline_keys(space, eng)
        # simulated baselines compete too: the answer is the best plan simulated, whatever its source
        keys += [k for k in dict.fromkeys(k for _n, _d, k, _p in base_specs if k is not None)
                 if k in cache and k not in keys]
        plans = [_plan_out(space, key, cache[key], objective, {}) for key in keys]
        order = sorted(range(len(plans)), key=lambda j: rank_key(objective, plans[j]))
        if not plans[order[0]].slo_met and _verify:
            raise explain_simulated(ctx, [plans[j] for j in order],
                                    {plans[j].label: to_plan(space, keys[j]) for j in order}, resolve)
        best_key = keys[order[0]]
        best_plan = to_plan(space, best_key)
        names = (eng_key,) + other_keys
        ranked = [plans[j].model_copy(update={
            "rank": r + 1, "launch": _launches(to_plan(space, keys[j]), launcher, names[:1])})
            for r, j in enumerate(order)]
        ranked[0] = ranked[0].model_copy(update={"launch": _launches(best_plan, launcher, names)})
        if not _detail:
            return SolveResult(model=model.name, cluster=cluster.name, objective=objective,
                               slo=slo.model_dump(mode="json"), workload={}, plans=ranked,
                               chosen=None, baselines=[], solver=SolverInfo(
                                   status=status, wall_s=0.0, plans_feasible=n_feasible,
                                   plans_simulated=len(cache), candidates=len(space.cands),
                                   shortlist=len(keys), objective=objective, exhaustive=exhaustive,
                                   workers=workers, executor=executor, seed=seed, engine=eng_key,
                                   simulator_runs=runs[0]))
        # one batch for what is left: baselines and the other engines
        extra = [SimJob(best_plan, engine=o) for o in others]
        todo = [k for _n, _d, k, _p in base_specs if k is not None and k not in cache]
        todo = list(dict.fromkeys(todo))
        if twins is not None:
            for k in todo:
                out = twins.shared(k, cache)
                if out is not None:
                    cache[k] = out
            todo = [k for k in todo if k not in cache]
        if later_breakdown:
            extra.append(SimJob(best_plan, breakdown=True))
        outs = sims([_job(space, k, objective) for k in todo] + extra)
        cache.update(zip(todo, outs[:len(todo)]))
        rest = outs[len(todo):]
        bd = cache[best_key].metrics
        if later_breakdown:  # the same run with its breakdown: only that field differs
            bd = rest.pop().metrics
            ranked[0] = ranked[0].model_copy(update={"metrics": bd})
        chosen = _chosen_detail(model, space, best_key, eng, bd)
        baselines = _baselines(space, ranked[0], objective, base_specs, cache)
        also = [OtherEngine(engine=k, metrics=r.metrics, slo_met=slo_met(r.metrics),
                            launch=ranked[0].launch.get(k, "")) for k, r in zip(other_keys, rest)]
    saving = _energy_saving(ranked) if objective == "energy" else None
    info = SolverInfo(status=status, wall_s=round(time.perf_counter() - t0, 3),
                      plans_feasible=n_feasible, plans_simulated=len(cache),
                      candidates=len(space.cands), shortlist=len(keys), objective=objective,
                      exhaustive=exhaustive, workers=workers, executor=executor, seed=seed,
                      engine=eng_key, optimality_gap=gap, simulator_runs=runs[0])
    return SolveResult(model=model.name, cluster=cluster.name, objective=objective,
                       slo=slo.model_dump(mode="json"),
                       workload=requests.summary().model_dump(mode="json"), plans=ranked,
                       chosen=chosen, baselines=baselines, energy_saving=saving,
                       also_simulated=also, solver=info)
