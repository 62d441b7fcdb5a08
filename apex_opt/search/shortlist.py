"""Which plans get simulated: plans in surrogate order, without twins, refined until the
surrogate's bound says no unsimulated plan can beat the best simulated one.

Source of plans (:func:`ranked_plans`): when the plan space is small enough every feasible plan
is scored by the analytic surrogate and sorted; otherwise the CP-SAT model yields plans best-first
by no-good cuts. Either way plans that differ only in knobs that cannot change the outcome (a
``max_num_seqs`` cap that cannot bind at this load) are collapsed before simulation.

Refinement (:func:`refine`): simulate the first plans; after each batch compare the simulated
objective of every SLO-meeting plan with its surrogate value; the most optimistic ratio seen
(less a margin) turns the surrogate value of the next plan into a bound on what it could
simulate at. Stop when that bound cannot beat the best simulated plan (optimality gap 0) or the
simulation budget is spent (the gap is what the bound still allows).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterator

from ..solver.model import LOAD_SLACK, PlanModel, SearchSpace
from ..solver.objective import PlanEstimate
from .objectives import MAXIMISE
from .plans import PlanKey, count_feasible, estimate, feasible_plans, plan_gpus

#: a max_num_seqs cap this many times the mean in-flight requests per replica never binds
SEQ_CAP_PEAK = 4.0
#: Plan spaces up to this many plans are scored exhaustively by the surrogate (else CP-SAT).
ENUMERATE_LIMIT = 20_000
#: Most plans drawn from the CP-SAT model (one re-solve each) in one search.
MAX_CPSAT_PLANS = 200
#: Safety margin on the surrogate/simulation ratio when bounding unsimulated plans.
BOUND_MARGIN = 0.05
#: A plan whose surrogate mean latency exceeds a percentile target by this factor is simulated
#: only after every plan predicted to meet the SLO.
HOPELESS_FACTOR = 1.5
#: ``gpus``: plans simulated per GPU count before escalating to the next count.
PER_LEVEL = 4
#: Extra margin when a plan's shape family (TP x PP x EP x replicas per pool) has no simulated
#: SLO-meeting member yet: the surrogate's error differs most between families.
FAMILY_MARGIN = 0.25
#: ``throughput`` bounds no plan by another shape family's surrogate/simulation ratio: what the
#: rate search measures on a finite trace (steady-state capacity vs the drain of the longest
#: outputs) weighs differently per shape, so a family not simulated yet is bounded only by its
#: steady-state capacity: every family that could win gets one simulation within the budget.
UNBOUNDED_FAMILIES = frozenset({"throughput"})
#: The first batch is picked among this many times its size of the best plans.
DIVERSITY_POOL = 3


def family(space: SearchSpace, s: "Scored") -> tuple:
    """The parallel shape of a plan: (pool, TP, PP, EP, replicas) per group."""
    return tuple(sorted((space.cands[i].pool, space.cands[i].tp, space.cands[i].pp, space.cands[i].ep, k)
                        for i, k in s.key))


@dataclass(frozen=True)
class Scored:
    """A plan with its surrogate estimate and surrogate objective value (as the objective reads:
    seconds, J/token, GPUs or req/s)."""

    key: PlanKey
    est: PlanEstimate
    gpus: int
    value: float
    hopeless: bool
    #: the surrogate's SLO-meeting rate is below the workload's rate
    predicted_miss: bool = False


def _cost(space: SearchSpace, key: PlanKey, est: PlanEstimate) -> float:
    """Surrogate $ per million output tokens: GPU-hours at the pools' prices + GPU energy x PUE at
    the electricity price (host power left out), over the workload's output tokens."""
    cl = space.cluster
    price = sum(space.cands[i].gpus * k * (cl.pool(space.cands[i].pool).gpu_price_per_hour or 0.0)
                for i, k in key)
    energy = est.power_w / 1000.0 * (cl.pue or 1.0) * (cl.electricity_price_per_kwh or 0.0)
    tokens_h = space.stats.rate_req_s * space.stats.mean_output * 3600.0
    return (price + energy) / max(tokens_h, 1e-9) * 1e6


def surrogate_value(objective: str, est: PlanEstimate, gpus: int) -> float:
    if objective == "latency":
        return est.latency_s
    if objective == "energy":
        return est.energy_j_per_token
    if objective == "gpus":
        return float(gpus)
    return est.capacity_at_slo_req_s


def drain_s(space: SearchSpace, key: PlanKey) -> float:
    """Time the last requests of a finite trace still decode after the plan has taken in the
    rest: a long output (the workload's p99 length) needs that many decode steps, each at least
    one unloaded iteration of its replica (the slowest group's, where it may land)."""
    tail = space.stats.output_at(99.0)
    return max(space.models[i].state(0.0).tpot_s for i, _ in key) * tail


def finite_rate(space: SearchSpace, key: PlanKey, est: PlanEstimate) -> float:
    """Surrogate of what the throughput rate search measures on a finite trace of N requests:
    completions over the makespan, N / (N / capacity + drain). The steady-state capacity at the
    SLO alone ranks wide data-parallel plans first; the drain of the longest outputs, served at a
    replica's per-token latency, is what lets fewer, wider replicas finish a short trace first."""
    cap = est.capacity_at_slo_req_s
    n = space.stats.num_requests
    if not (cap > 0 and math.isfinite(cap)):
        return 0.0
    return n / (n / cap + drain_s(space, key))


def _hopeless(space: SearchSpace, est: PlanEstimate) -> bool:
    """The surrogate's mean latency misses a target by far (means sit below the p50+ percentiles
    the targets are written at), or the plan is overloaded."""
    if not est.stable and space.objective != "throughput":
        return True
    slo = space.slo
    for name, val in (("ttft_ms", est.ttft_s * 1e3), ("tpot_ms", est.tpot_s * 1e3),
                      ("e2e_s", est.latency_s)):
        t = getattr(slo, name)
        if t is not None and t.percentile >= 50 and val > HOPELESS_FACTOR * t.target:
            if space.objective == "throughput" and name != "tpot_ms":
                continue  # queueing at the workload's rate says nothing about the top rate
            return True
    return False


def score(space: SearchSpace, key: PlanKey) -> Scored:
    est = estimate(space, key)
    g = plan_gpus(space, key)
    if space.objective == "cost":
        v = _cost(space, key, est)
    elif space.objective == "throughput":
        v = finite_rate(space, key, est)
    else:
        v = surrogate_value(space.objective, est, g)
    return Scored(key, est, g, v, _hopeless(space, est),
                  est.capacity_at_slo_req_s < space.stats.rate_req_s)


def _order(objective: str, s: Scored) -> tuple:
    if objective == "gpus":
        return (s.gpus, s.est.latency_s)
    if objective in MAXIMISE:
        return (-s.value, s.gpus)
    return (s.value, s.est.latency_s)


def _shape(space: SearchSpace, s: Scored) -> tuple:
    """What determines a plan's simulated outcome: max_num_seqs caps that cannot bind at this load
    (by Little's law a replica holds ``rate x latency / replicas`` requests on average; a cap
    ``SEQ_CAP_PEAK`` times that is practically never reached; for ``throughput``, a cap of at
    least a replica's share of the whole trace) are left out."""
    replicas = max(1, sum(n for _, n in s.key))
    lat = s.est.latency_s if math.isfinite(s.est.latency_s) else math.inf
    if space.objective == "throughput":
        # the rate search compresses the arrivals until the SLO breaks: the whole trace may be in
        # flight at once, so only a cap of at least a replica's share of it cannot bind
        need = math.ceil(space.stats.num_requests / replicas)
    else:
        need = SEQ_CAP_PEAK * space.stats.rate_req_s * lat / replicas
    return tuple(sorted(
        (space.cands[i].cost_key, space.cands[i].max_num_batched_tokens,
         0 if space.cands[i].max_num_seqs >= need else space.cands[i].max_num_seqs, n)
        for i, n in s.key))


def distinct(space: SearchSpace, plans: Iterator[Scored]) -> Iterator[Scored]:
    seen: set = set()
    for s in plans:
        sh = _shape(space, s)
        if sh not in seen:
            seen.add(sh)
            yield s


def dominated(space: SearchSpace, key: PlanKey) -> bool:
    """``throughput``: one more replica of one of the plan's own groups still fits (the pool's GPUs,
    ``max_gpus``, the power budget). Identical replicas behind the router only add capacity and
    take load off the others, so the plan with the extra replica sustains at least the rate of this
    one -- the objective uses the GPUs the user gave, and a plan leaving such room is never the
    optimum."""
    c = space.slo.constraints
    gpus = plan_gpus(space, key)
    for j, (i, k) in enumerate(key):
        cand = space.cands[i]
        if k + 1 > cand.max_replicas:
            continue
        if c.max_gpus is not None and gpus + cand.gpus > c.max_gpus:
            continue
        more = key[:j] + ((i, k + 1),) + key[j + 1:]
        if c.power_budget_w is not None and estimate(space, more).power_w > c.power_budget_w:
            continue
        return True
    return False


def _cpsat_plans(space: SearchSpace, workers: int, seed: int, time_limit_s: float,
                 status: list) -> Iterator[Scored]:
    """Plans best-first from the CP-SAT model (one re-solve per plan, no-good cut each)."""
    from ortools.sat.python import cp_model

    pm = PlanModel(space)
    for _ in range(MAX_CPSAT_PLANS):
        solver = pm.solver(workers=workers, seed=seed, time_limit_s=time_limit_s)
        st = solver.solve(pm.m)
        if not status:
            status.append(solver.status_name(st))
        if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return
        key = pm.solution(solver)
        pm.add_nogood(key)
        yield score(space, key)


def ranked_plans(space: SearchSpace, workers: int = 1, seed: int = 0,
                 time_limit_s: float = 10.0) -> tuple[Iterator[Scored], list]:
    """Distinct plans in surrogate order (predicted-hopeless ones last) and a one-element status
    list ('ENUMERATED' or the first CP-SAT status, filled once the iterator starts)."""
    objective = space.objective
    status: list = []
    if count_feasible(space) <= ENUMERATE_LIMIT:
        status.append("ENUMERATED")
        screened = _screened(space)
        need = LOAD_SLACK * space.stats.rate_req_s
        scored = [score(space, k) for k in feasible_plans(space)
                  if all(i not in screened for i, _ in k)
                  and not (objective == "throughput" and dominated(space, k))]
        if objective != "throughput":
            scored = [s for s in scored if s.est.capacity_req_s >= need]
        scored.sort(key=lambda s: (s.hopeless, _order(objective, s)))
        return distinct(space, iter(scored)), status
    # CP-SAT order, with predicted-hopeless plans held back until the rest is exhausted
    def gen() -> Iterator[Scored]:
        held = []
        for s in distinct(space, _cpsat_plans(space, workers, seed, time_limit_s, status)):
            if objective == "throughput" and dominated(space, s.key):
                continue
            if s.hopeless:
                held.append(s)
            else:
                yield s
        yield from held
    return gen(), status


def _screened(space: SearchSpace) -> set[int]:
    """Candidates the CP-SAT model would forbid by its SLO screens (unloaded floors)."""
    return {i for i in range(len(space.cands)) if space.slo_violations(i)}


# ---------------------------------------------------------------------------- refinement

@dataclass
class SimScore:
    met: bool
    value: float | None     # simulated objective value
    latency: float | None   # simulated mean E2E latency (the gpus objective's tie-break)
    #: ``throughput``: the plan's rate search stopped once the plan was proven to sustain less
    #: than this (below a simulated plan's rate): ``value`` is then only what it was seen to
    #: sustain. None = ``value`` is exact.
    upper: float | None = None

    @property
    def exact(self) -> bool:
        return self.upper is None

    @property
    def counts(self) -> bool:
        """Met the SLO with an exact simulated value: a result the best and the family ratios
        may rest on."""
        return self.met and self.value is not None and self.exact


@dataclass
class Refined:
    plans: list[Scored]
    sims: list[SimScore]
    gap: float | None
    stopped: str


def refine(space: SearchSpace, plans: Iterator[Scored],
           simulate: Callable[[list[Scored]], list[SimScore]], *, first: int, batch: int,
           budget: int,
           tighten: Callable[[list[tuple[Scored, float]]], list[SimScore]] | None = None
           ) -> Refined:
    """Simulate plans from ``plans`` (surrogate order) until the bound says no better plan remains
    or ``budget`` simulations are spent.

    ``throughput``: a plan whose rate search stopped once it was bounded below the best is done
    (never the best); its bound stands in for its simulated value only where it tightens its
    family's bound (:func:`could_beat`). When that bound is still too loose to rule out the next
    plan of the family, ``tighten([(plan, rate)])`` resumes those searches until each is bounded
    below ``rate`` (or exact) -- a few more probes instead of a whole new rate search."""
    objective = space.objective
    maximise = objective in MAXIMISE
    done: list[Scored] = []
    sims: list[SimScore] = []
    it = iter(plans)
    nxt: list[Scored] = []

    def pull() -> Scored | None:
        if nxt:
            return nxt.pop(0)
        return next(it, None)

    def best() -> tuple[float | None, Scored | None]:
        # a bounded plan is below some exact one: never the best
        met = [(r.value, s) for s, r in zip(done, sims)
               if r.counts]
        if not met:
            return None, None
        if objective == "gpus":
            return min(met, key=lambda vs: (vs[1].gpus, vs[0]))[0], min(met, key=lambda vs: (vs[1].gpus, vs[0]))[1]
        v, s = (max if maximise else min)(met, key=lambda vs: vs[0])
        return v, s

    def ratio(fam: tuple | None = None) -> float | None:
        """Most optimistic simulated/surrogate ratio among SLO-meeting plans (of the shape family
        ``fam`` when one of it was simulated; else of all, with a wider margin)."""
        if fam is not None:
            own = [(s, r) for s, r in zip(done, sims) if family(space, s) == fam]
            if any(r.counts for _s, r in own):
                return _ratio(own)
            if objective in UNBOUNDED_FAMILIES:
                return None  # no bound for a shape family not yet measured
        r = _ratio(list(zip(done, sims)))
        if r is None:
            return None
        return r * (1 + FAMILY_MARGIN) if maximise else r * (1 - FAMILY_MARGIN)

    def _ratio(pairs) -> float | None:
        rs = []
        for s, r in pairs:
            # a bounded plan's ratio is below its bound's: it may only tighten a family's bound
            # (bounded_ratio), never loosen the exact members' most optimistic ratio
            if not r.counts:
                continue
            sv = s.est.latency_s if objective == "gpus" else s.value
            rv = r.latency if objective == "gpus" else r.value
            if sv > 0 and math.isfinite(sv) and rv > 0:
                rs.append(rv / sv)
        if not rs:
            return None
        return max(rs) * (1 + BOUND_MARGIN) if maximise else min(rs) * (1 - BOUND_MARGIN)

    def bounded_ratio(fam: tuple) -> float | None:
        """Most optimistic bound/surrogate ratio of the family's bounded plans (with the margin):
        each one's simulated/surrogate ratio is below it."""
        rs = [r.upper / s.value for s, r in zip(done, sims) if not r.exact
              and family(space, s) == fam and s.value > 0 and math.isfinite(s.value)]
        return max(rs) * (1 + BOUND_MARGIN) if rs else None

    def tighten_family(s: Scored) -> bool:
        """Resume the bounded searches of ``s``'s family (none of it exact and SLO-meeting) whose
        bounds let ``s`` through: each until it is bounded below the rate that would rule ``s``
        out. True when any was resumed."""
        bv, _ = best()
        fam = family(space, s)
        own = [j for j, d in enumerate(done) if family(space, d) == fam]
        if bv is None or not (s.value > 0 and math.isfinite(s.value)) or \
                any(sims[j].counts for j in own):
            return False
        todo = []
        for j in own:
            d, r = done[j], sims[j]
            if r.exact or not (d.value > 0 and math.isfinite(d.value)):
                continue
            want = bv * d.value / (s.value * (1 + BOUND_MARGIN))
            if r.upper > want:
                todo.append((j, want))
        if not todo:
            return False
        for (j, _w), r in zip(todo, tighten([(done[j], w) for j, w in todo])):
            sims[j] = r
        return True

    def confirmed_miss(s: Scored) -> bool:
        """The surrogate predicts ``s`` misses the SLO at the workload's rate and the simulation
        of its shape family agreed (a member it also predicted to miss missed; none met)."""
        if objective in MAXIMISE or not s.predicted_miss:
            return False
        fam = family(space, s)
        own = [(d, r) for d, r in zip(done, sims) if family(space, d) == fam]
        return any(d.predicted_miss and not r.met for d, r in own) and not any(r.met for _d, r in own)

    def could_beat(s: Scored) -> tuple[bool, float | None]:
        """(could it beat the best, relative gap it could still close)."""
        if confirmed_miss(s):
            return False, 0.0
        bv, bs = best()
        if bv is None:
            return True, None
        r = ratio(family(space, s))
        if objective == "gpus":
            if s.gpus > bs.gpus:
                return False, 0.0
            if s.gpus < bs.gpus:
                return True, None
            bound = s.est.latency_s * r if r else 0.0
            # best value here is the best plan's latency (tie-break within the GPU count)
            lat = _best_latency(done, sims, bs.gpus)
            return bound < lat, max(0.0, 1 - bound / lat) if math.isfinite(lat) else None
        if r:
            bound = s.value * r
        elif objective == "throughput":
            # no ratio for its family: the most a plan can complete is its steady-state capacity
            # at the largest batch its limits allow, whatever a finite trace's arrivals do;
            # members bounded below the best (their rate search stopped early) tighten it
            bound = s.est.capacity_req_s * (1 + BOUND_MARGIN)
            rb = bounded_ratio(family(space, s))
            if rb is not None:
                bound = min(bound, s.value * rb)
        else:
            bound = math.inf if maximise else 0.0
        if maximise:
            return bound > bv, max(0.0, bound / bv - 1) if bv > 0 else None
        return bound < bv, max(0.0, 1 - bound / bv) if bv > 0 else None

    level_tries: dict[int, int] = {}
    skipped: list[Scored] = []
    gap: float | None = 0.0
    stopped = "bound"
    if first > 1:
        # the first batch spans shape families, so that the ratios bounding the rest are measured
        # on more than one kind of plan
        head = []
        for _ in range(first * DIVERSITY_POOL):
            s = next(it, None)
            if s is None:
                break
            head.append(s)
        picked, fams = [], set()
        for s in head:
            if family(space, s) not in fams and len(picked) < first:
                picked.append(s)
                fams.add(family(space, s))
        for s in head:
            if s not in picked and len(picked) < first:
                picked.append(s)
        nxt.extend(picked + [s for s in head if s not in picked])
    while len(done) < budget:
        want = first if not done else batch
        chosen: list[Scored] = []
        while len(chosen) < want and len(done) + len(chosen) < budget:
            s = pull()
            if s is None:
                break
            ok, g = could_beat(s)
            if not ok:
                if objective in MAXIMISE or confirmed_miss(s):
                    skipped.append(s)  # bounds are per family: a later family may still beat it
                    continue
                if objective == "gpus" and s.gpus > (best()[1].gpus if best()[1] else 0):
                    nxt.insert(0, s)
                    break
                if not s.hopeless:
                    # surrogate order: nothing after this one can beat the best either
                    nxt.insert(0, s)
                    break
                continue
            if tighten is not None and tighten_family(s):
                ok, g = could_beat(s)
                if not ok:
                    skipped.append(s)
                    continue
            fam = family(space, s)
            if any(family(space, c) == fam for c in chosen) and \
                    not any(family(space, d) == fam for d in done):
                # a second plan of a shape family not measured yet waits for the first one's
                # simulation: the family's own ratio may then rule it out
                nxt.insert(0, s)
                break
            if objective == "gpus" and best()[1] is None:
                n = level_tries.get(s.gpus, 0)
                if n >= PER_LEVEL:
                    continue  # escalate: this GPU count had its tries
                level_tries[s.gpus] = n + 1
            chosen.append(s)
        if not chosen:
            break
        done += chosen
        sims += simulate(chosen)
    else:
        stopped = "budget"
    # the gap: what the next unsimulated plan could still gain by the bound (for a maximised
    # objective, whose bounds are per family, the largest over the plans passed over, too)
    s = pull()
    rest = skipped + ([s] if s is not None else [])
    if not rest:
        gap, stopped = 0.0, "exhausted" if stopped != "bound" else stopped
    else:
        gaps = []
        for r in rest:
            ok, g = could_beat(r)
            gaps.append(0.0 if not ok else g)
        gap = None if any(g is None for g in gaps) else max(gaps)
    return Refined(done, sims, gap, stopped)


def _best_latency(done: list[Scored], sims: list[SimScore], gpus: int) -> float:
    lats = [r.latency for s, r in zip(done, sims)
            if r.met and s.gpus == gpus and r.latency is not None]
    return min(lats) if lats else math.inf


def latency_space(space: SearchSpace) -> SearchSpace:
    return dataclasses.replace(space, objective="latency")
