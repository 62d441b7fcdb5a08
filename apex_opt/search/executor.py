"""Where plans are simulated: in this process, a process pool, or Ray.

An executor is built around one :class:`SimContext` (model, cluster, workload, SLO, engine) and
maps :class:`SimJob` s to :class:`SimOutcome` s in submission order, so the answer never depends
on which worker finished first. No module-global state: every job carries its context (pickled
once per job for the process pool, put once in the object store for Ray).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError
from ..sim.metrics import Metrics
from ..sim.simulator import simulate
from ..sim.workload import Requests
from ..specs.cluster import ClusterSpec
from ..specs.engine import EngineSpec
from ..specs.model import ModelSpec
from ..specs.plan import Plan
from ..specs.slo import SLOSpec
from .rates import rate_search

EXECUTORS = ("process", "ray", "serial")


@dataclass(frozen=True)
class SimContext:
    """Everything a simulation job needs besides the plan."""

    model: ModelSpec
    cluster: ClusterSpec
    requests: Requests
    slo: SLOSpec
    engine: EngineSpec

    def simulate(self, plan: Plan, factor: float = 1.0, breakdown: bool = False,
                 engine: EngineSpec | None = None) -> Metrics:
        """Metrics of ``plan`` on the workload with its arrival rate scaled by ``factor``."""
        return self.run(plan, factor, breakdown, engine).metrics

    def run(self, plan: Plan, factor: float = 1.0, breakdown: bool = False,
            engine: EngineSpec | None = None):
        """The full :class:`~apex_opt.sim.simulator.SimulationResult`."""
        req = self.requests if factor == 1.0 else self.requests.scaled_rate(factor)
        return simulate(self.model, self.cluster, plan, req, slo=self.slo, breakdown=breakdown,
                        engine=engine or self.engine)


@dataclass(frozen=True)
class SimJob:
    """Simulate ``plan``; with ``rate_search`` find the highest rate factor meeting the SLO
    (starting the search at ``rate_guess``), stopping early once the plan is bounded below
    ``stop_at`` req/s (a rate another plan sustains; ``rate_req_s`` = the workload's rate at
    factor 1; :func:`~apex_opt.search.rates.rate_search`)."""

    plan: Plan
    rate_search: bool = False
    rate_guess: float = 1.0
    breakdown: bool = False
    engine: EngineSpec | None = None
    stop_at: float | None = None
    rate_req_s: float = 1.0
    #: the probes of an earlier stopped search of this plan (resumed without re-simulating them)
    replay: tuple = ()


@dataclass(frozen=True)
class SimOutcome:
    metrics: Metrics
    #: rate factor of ``metrics`` (1.0 unless rate-searched; 0.0 = no rate met the SLO)
    rate_factor: float = 1.0
    #: $ per million output tokens (GPU-hours + node energy; None without prices)
    cost_per_mtok: float | None = None
    #: what the run demanded of its scheduler limits (:func:`limit_envelope`; None = not known)
    envelope: "Envelope | None" = None
    #: rate search stopped early: the plan sustains less than this (req/s; None = exact) ...
    below: float | None = None
    #: ... and its probes ((factor, metrics) in order), to resume it from
    probes: tuple = ()
    #: simulator runs this outcome took (a rate search: the probes it simulated)
    runs: int = 1


@dataclass(frozen=True)
class Envelope:
    """Upper bounds, over the whole run and every scheduler of the plan's one group, on what any
    scheduling decision saw: sequences in the system, tokens a step could schedule (decodes + the
    prompts still being prefilled) and KV blocks of the requests in the system. A plan that differs
    only in ``max_num_seqs`` / ``max_num_batched_tokens`` (hence KV blocks) makes every decision
    the same way -- simulates identically -- when its limits and the simulated plan's both hold
    these (:func:`same_run`)."""

    seqs: int
    tokens: int
    blocks: int


def _peak(times: np.ndarray, deltas: np.ndarray) -> int:
    """Largest value of the step function sum(deltas at times <= t) over t."""
    if times.size == 0:
        return 0
    order = np.argsort(times, kind="stable")
    t, cs = times[order], np.cumsum(deltas[order])
    last = np.ones(t.size, dtype=bool)
    last[:-1] = t[1:] != t[:-1]  # all events of an instant applied before it is read
    return int(cs[last].max())


def limit_envelope(ctx: SimContext, plan: Plan, res) -> Envelope | None:
    """The :class:`Envelope` of a finished simulation, from its per-request times (request ``i``
    is in its replica from its arrival to its finish, prefilling until its first token) and, for
    the KV blocks, also from the most blocks a virtual engine held plus the largest request's (any
    block check asked for at most that; a decode run cut short by blocks would have taken the
    last free one, so a peak below the capacity also means none was cut); None when
    the bounds do not decide the run alone: several groups, preemptions or drops, a prefix cache,
    SGLang's admission reserve, data-parallel attention or prefill that is not chunked."""
    eng = ctx.engine
    if len(plan.groups) != 1 or eng.scheduler == "sglang":
        return None
    g = plan.groups[0]
    if g.chunked_prefill is not True or getattr(g, "attention_dp", 1) != 1 \
            or getattr(ctx.requests, "prefix_blocks", None) is not None:
        return None
    r = res.per_request()
    if r["dropped"].any() or r["preemptions"].any():
        return None
    arr, first, fin = r["arrival_s"], r["first_token_s"], r["finish_s"]
    prompt = r["prompt_tokens"].astype(np.int64)
    blocks = -(-(prompt + r["output_tokens"].astype(np.int64)) // eng.block_size)
    one = np.ones_like(prompt)
    seqs = tokens = kv = 0
    for rep in np.unique(r["replica"]):
        m = r["replica"] == rep
        a, f, e = arr[m], first[m], fin[m]
        seqs = max(seqs, _peak(np.concatenate((a, e)), np.concatenate((one[m], -one[m]))))
        tokens = max(tokens, _peak(np.concatenate((a, f, e)),
                                   np.concatenate((prompt[m], 1 - prompt[m], -one[m]))))
        kv = max(kv, _peak(np.concatenate((a, e)), np.concatenate((blocks[m], -blocks[m]))))
    held = max(s.max_kv_blocks_used for s in res.replicas)
    if held < min(s.kv_blocks for s in res.replicas) // max(g.pp, 1):
        kv = min(kv, held + int(blocks.max()))
    return Envelope(seqs, tokens, kv)


def same_run(env: Envelope, *limits) -> bool:
    """Every :class:`~apex_opt.sim.engine.EngineLimits` of ``limits`` holds ``env``: no
    ``max_num_seqs`` cap, token budget or KV-block check can bind, so runs under them are one."""
    return all(env.seqs <= lim.max_num_seqs and env.tokens <= lim.max_num_batched_tokens
               and env.blocks <= lim.blocks_per_virtual_engine - lim.watermark_blocks
               for lim in limits)


def slo_met(m: Metrics) -> bool:
    return m.slo_met is not False and m.num_completed > 0


def run_job(ctx: SimContext, job: SimJob) -> SimOutcome:
    if not job.rate_search:
        res = ctx.run(job.plan, breakdown=job.breakdown, engine=job.engine)
        energy = getattr(res, "energy", None)
        env = limit_envelope(ctx, job.plan, res) if job.engine is None else None
        return SimOutcome(res.metrics, 1.0, getattr(energy, "cost_per_mtok", None), env)
    runs = []

    def sim(f: float) -> Metrics:
        runs.append(f)
        return ctx.simulate(job.plan, f, breakdown=job.breakdown, engine=job.engine)
    conc = ctx.requests.concurrency
    if conc is not None:
        # a closed loop scales its client count, rounded (Requests.scaled_rate): factors that
        # round to the same count are the same simulation
        clients: dict[int, Metrics] = {}

        def sim(f: float, _sim=sim) -> Metrics:  # noqa: F811
            n = max(1, round(conc * f))
            if n not in clients:
                clients[n] = _sim(f)
            return clients[n]
    r = rate_search(sim, slo_met, job.rate_guess, rate=job.rate_req_s,
                    served=_served, stop_at=job.stop_at, replay=job.replay)
    return SimOutcome(r.metrics, r.factor, below=r.below, probes=r.probes, runs=len(runs))


def _served(m: Metrics) -> float:
    return m.requests_per_s


Progress = Callable[[int, int], None] | None


class Executor:
    """Serial executor (and the interface of the others)."""

    name = "serial"

    def __init__(self, ctx: SimContext):
        self.ctx = ctx
        self.done = 0

    def map(self, jobs: Sequence[SimJob], progress: Progress = None) -> list[SimOutcome]:
        out = []
        for j in jobs:
            out.append(run_job(self.ctx, j))
            self._tick(progress)
        return out

    def _tick(self, progress: Progress, n: int = 1) -> None:
        self.done += n
        if progress:
            progress(self.done, 0)

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProcessExecutor(Executor):
    """A process pool kept open across batches (the refinement loop submits several)."""

    name = "process"

    def __init__(self, ctx: SimContext, workers: int):
        super().__init__(ctx)
        self.procs = max(1, workers if workers > 1 else (os.cpu_count() or 1))
        self._pool: cf.ProcessPoolExecutor | None = None

    def map(self, jobs: Sequence[SimJob], progress: Progress = None) -> list[SimOutcome]:
        if len(jobs) <= 1 and self._pool is None:
            return super().map(jobs, progress)
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(max_workers=self.procs)
        fn = functools.partial(run_job, self.ctx)
        futs = {self._pool.submit(fn, j): i for i, j in enumerate(jobs)}
        results: list = [None] * len(jobs)
        for fut in cf.as_completed(futs):
            results[futs[fut]] = fut.result()
            self._tick(progress)
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, ctx: SimContext):
        super().__init__(ctx)
        try:
            import ray  # type: ignore
        except ImportError:
            raise InputError("the ray executor needs the 'ray' extra: pip install 'apex-opt[ray]'",
                             field="--executor", value="ray") from None
        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, log_to_driver=False)
        self._ray = ray
        self._ref = ray.put(ctx)
        self._remote = ray.remote(run_job)

    def map(self, jobs: Sequence[SimJob], progress: Progress = None) -> list[SimOutcome]:
        out = self._ray.get([self._remote.remote(self._ref, j) for j in jobs])
        self._tick(progress, len(jobs))
        return out


def make_executor(kind: str, ctx: SimContext, workers: int) -> Executor:
    if kind not in EXECUTORS:
        raise InputError("use process, ray or serial", field="executor", value=kind)
    if kind == "ray":
        return RayExecutor(ctx)
    if kind == "process":
        return ProcessExecutor(ctx, workers)
    return Executor(ctx)
