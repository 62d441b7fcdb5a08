"""Throughput search with bounds: a plan's rate search stops once the plan is bounded below a
rate another plan sustains; the refinement never takes such a plan as the best and uses its bound
only where it tightens a family's bound (resuming the search when it is too loose). The bound
logic must never discard the true optimum: the rate search against the old bisection, the
refinement on synthetic instances against the same refinement fed exact values, and a small
`solve` with and without the bounds (slow, ~5 s); the CLI-sized case is scripts/bench_solve.py's."""

from __future__ import annotations

import math
import random

import pytest

from apex_opt.search import pipeline, solve
from apex_opt.search.rates import (RATE_MIN_FACTOR, RATE_STEPS, RATE_TOLERANCE, SERVED_MARGIN,
                                   highest_rate, rate_search)
from apex_opt.search.shortlist import Scored, SimScore, refine
from apex_opt.solver.objective import PlanEstimate

# ------------------------------------------------------------------------- the rate search


def _old_bisection(sim, met, guess, steps=RATE_STEPS):
    """The rate search as it was before bounds (reference for the probe sequence)."""
    lo, hi = 0.0, None
    f = max(RATE_MIN_FACTOR, guess)
    best = last = None
    for _ in range(steps):
        last = sim(f)
        if met(last):
            lo, best = f, last
        else:
            hi = f
        if hi is None:
            f *= 2.0
        elif lo == 0.0:
            if f <= RATE_MIN_FACTOR:
                break
            f = max(RATE_MIN_FACTOR, f / 2.0)
        else:
            if hi / lo <= 1.0 + RATE_TOLERANCE:
                break
            f = math.sqrt(lo * hi)
    return (last, 0.0) if best is None else (best, lo)


class _Plan:
    """A synthetic plan: meets the SLO up to factor ``limit``; serves ``min(rate x f, cap)``
    (completions over the makespan saturate at its capacity). Metrics = (factor, served)."""

    def __init__(self, limit: float, cap: float, rate: float = 2.0):
        self.limit, self.cap, self.rate = limit, cap, rate
        self.calls: list[float] = []

    def sim(self, f):
        self.calls.append(f)
        return (f, min(self.rate * f * 0.97, self.cap))

    def met(self, m):
        return m[0] <= self.limit

    @staticmethod
    def served(m):
        return m[1]

    def value(self, m, f):
        return 0.0 if f <= 0 else min(self.rate * f, m[1])


CASES = [(limit, cap, guess) for limit in (0.01, 0.3, 1.0, 3.7, 9.9) for cap in (1.5, 8.0, 40.0)
         for guess in (0.05, 1.0, 5.0)]


@pytest.mark.parametrize("limit,cap,guess", CASES)
def test_without_a_bar_the_search_is_the_old_bisection(limit, cap, guess) -> None:
    p, q = _Plan(limit, cap), _Plan(limit, cap)
    assert rate_search(p.sim, p.met, guess).metrics == _old_bisection(q.sim, q.met, guess)[0]
    assert p.calls == q.calls
    assert highest_rate(p.sim, p.met, guess) == _old_bisection(q.sim, q.met, guess)


@pytest.mark.parametrize("limit,cap,guess", CASES)
def test_a_stopped_search_is_bounded_below_its_bar_and_resumes_to_the_full_answer(
        limit, cap, guess) -> None:
    full = _Plan(limit, cap)
    m, f = highest_rate(full.sim, full.met, guess)
    exact = full.value(m, f)
    for bar in (0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0):
        p = _Plan(limit, cap)
        r = rate_search(p.sim, p.met, guess, rate=p.rate, served=p.served, stop_at=bar)
        # the full probe sequence up to where it stopped, and at most one probe at its ceiling
        seq = list(p.calls)
        if r.ceiling is not None:
            seq.remove(r.ceiling)
            assert r.ceiling >= max(full.calls)
        assert seq == full.calls[:len(seq)]
        if r.below is None:
            assert (r.metrics, r.factor) == (m, f) and seq == [c for c in full.calls
                                                               if c != r.ceiling or c in seq]
            continue
        assert r.below <= bar and exact < r.below  # proven worse than the bar
        assert p.value(r.metrics, r.factor) <= exact  # what it was seen to sustain: a lower bound
        # resumed from its probes: the full answer, simulating only what comes after them
        q = _Plan(limit, cap)
        s = rate_search(q.sim, q.met, guess, replay=r.probes)
        assert (s.metrics, s.factor, s.below) == (m, f, None)
        assert q.calls == [c for c in full.calls[len(seq):] if c != r.ceiling]


def test_the_served_rate_bound_keeps_its_margin() -> None:
    # a plan that misses the SLO at factor 4 after serving 10 req/s there is bounded at
    # 10 x (1 + margin), not at 10
    p = _Plan(limit=3.0, cap=10.0, rate=5.0)
    r = rate_search(p.sim, p.met, 4.0, rate=p.rate, served=p.served, stop_at=100.0)
    assert r.below == pytest.approx(10.0 * (1 + SERVED_MARGIN))


# ------------------------------------------------------------------------- the refinement


class _Space:
    """Just enough of a SearchSpace for :func:`refine` (shape families = TP degrees)."""

    objective = "throughput"

    def __init__(self, n: int):
        self.cands = [type("C", (), {"pool": "p", "tp": t, "pp": 1, "ep": 1})() for t in range(n)]


def _scored(fam: int, surrogate: float, capacity: float, j: int) -> Scored:
    est = PlanEstimate(capacity, capacity, 1.0, 0.1, 0.01, 100.0, 1.0, 1, True)
    return Scored(((fam, j),), est, 1, surrogate, False)


def _instance(rng: random.Random):
    fams = rng.randint(2, 5)
    plans = []
    for j in range(rng.randint(4, 14)):
        fam = rng.randrange(fams)
        sv = rng.uniform(5.0, 20.0)
        plans.append((_scored(fam, sv, sv * rng.uniform(1.0, 2.5), j),
                      sv * rng.uniform(0.5, 1.3)))  # (plan, its true simulated rate)
    plans.sort(key=lambda pt: -pt[0].value)
    return _Space(fams), plans


def _run(space, plans, bounded: bool, rng: random.Random, batch: int):
    """Refine with exact scores, or with the pipeline's bounds: a plan whose true rate is below
    the best exact rate known when its batch starts comes back bounded (upper bound anywhere in
    (true, best], value a lower bound); ``tighten`` resumes it to a lower bar."""
    true = {s.key: t for s, t in plans}
    exact: dict = {}
    sims = []

    def bar():
        return max(exact.values()) if exact else None

    def bounded_score(s, b):
        t = true[s.key]
        if b is not None and t < b:
            return SimScore(True, t * rng.uniform(0.6, 1.0), None, upper=rng.uniform(t, b))
        exact[s.key] = t
        return SimScore(True, t, None)

    def simulate(chosen):
        sims.extend(s.key for s in chosen)
        b = bar() if bounded else None
        return [bounded_score(s, b) for s in chosen]

    def tighten(pairs):
        return [bounded_score(s, w) for s, w in pairs]

    r = refine(space, iter([s for s, _t in plans]), simulate, first=2, batch=batch, budget=40,
               tighten=tighten if bounded else None)
    best = max((s for s, x in zip(r.plans, r.sims) if x.exact and x.met), key=lambda s: true[s.key])
    return best.key, r, sims


@pytest.mark.parametrize("seed", range(60))
def test_bounds_never_discard_the_optimum_the_exact_search_finds(seed) -> None:
    rng = random.Random(seed)
    space, plans = _instance(rng)
    batch = 1 + seed % 2
    ref_best, ref, ref_sims = _run(space, plans, False, random.Random(seed), batch)
    best, r, sims = _run(space, plans, True, random.Random(seed), batch)
    assert best == ref_best
    assert len(sims) <= len(ref_sims)
    # a bounded plan is never taken as the best, and every bound is above the plan's true rate
    true = {s.key: t for s, t in plans}
    for s, x in zip(r.plans, r.sims):
        if not x.exact:
            assert x.upper > true[s.key] and true[s.key] < true[best]


# ------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_small_solve_finds_the_same_plan_and_rate_with_fewer_probes(monkeypatch) -> None:
    from apex_opt.io import parse_yaml, validate
    from apex_opt.search import executor
    from apex_opt.sim.workload import generate
    from apex_opt.specs.cluster import ClusterSpec
    from apex_opt.specs.model import load_model
    from apex_opt.specs.slo import SLOSpec
    from apex_opt.specs.workload import WorkloadSpec

    cluster = validate(ClusterSpec, parse_yaml("""name: t-1x4
pools:
  - {name: h100, device: h100-sxm-80gb, nodes: 1, gpus_per_node: 4,
     intra_node: {kind: nvswitch, bandwidth_gbps: 450, latency_us: 1.0}}
""", "<test>"), "<test>")
    req = generate(WorkloadSpec(num_requests=60, seed=0, arrival={"process": "poisson", "rate": 4.0},
                                prompt_len={"dist": "lognormal", "mean": 400, "cv": 0.6, "max": 2048},
                                output_len={"dist": "lognormal", "mean": 60, "cv": 0.6, "max": 512}))
    slo = SLOSpec(ttft_ms={"target": 120, "percentile": 90}, tpot_ms=30,
                  constraints={"max_pp": 1, "kv_dtypes": ["bf16"]})
    probes = []
    orig = executor.SimContext.simulate

    def counted(self, *a, **k):
        probes.append(1)
        return orig(self, *a, **k)

    monkeypatch.setattr(executor.SimContext, "simulate", counted)
    kw = dict(objective="throughput", executor="serial")
    with_bounds = solve(load_model("llama-3.1-8b"), cluster, req, slo, **kw)
    n_bounds = len(probes)
    monkeypatch.setattr(pipeline, "_incumbent", lambda *a: None)  # every search to its end
    probes.clear()
    exact = solve(load_model("llama-3.1-8b"), cluster, req, slo, **kw)
    a, b = with_bounds.plans[0], exact.plans[0]
    assert (a.label, a.objective_value, a.rate_req_s, a.metrics) == \
        (b.label, b.objective_value, b.rate_req_s, b.metrics)
    assert [x.model_dump() for x in with_bounds.baselines] == [x.model_dump() for x in exact.baselines]
    assert n_bounds < len(probes)
    for p in with_bounds.plans:  # bounded plans are below the chosen one, and say so
        if p.rate_below_req_s is not None:
            assert p.rate_below_req_s <= a.objective_value and p.rank > 1


def test_a_closed_loop_simulates_each_client_count_once() -> None:
    # a closed loop's rate factor scales its client count, rounded: factors that round to the same
    # count are one simulation (the search still sees every factor it asks for)
    from types import SimpleNamespace

    from apex_opt.search.executor import SimJob, run_job

    calls = []

    class Ctx:
        requests = SimpleNamespace(concurrency=3)

        def simulate(self, plan, f, breakdown=False, engine=None):
            n = max(1, round(3 * f))
            calls.append(n)
            return SimpleNamespace(slo_met=n <= 7, num_completed=10, requests_per_s=float(n))

    out = run_job(Ctx(), SimJob(plan=None, rate_search=True, rate_guess=1.0))
    assert len(calls) == len(set(calls)) == out.runs < RATE_STEPS
    assert out.rate_factor * 3 == pytest.approx(7, abs=0.5) and out.metrics.requests_per_s == 7.0
