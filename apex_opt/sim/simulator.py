"""Public entry point of the serving simulator: :func:`simulate` a plan on a cluster for requests.

Every replica of every plan group is a :class:`~apex_opt.sim.engine.ReplicaEngine` (scheduled as
the engine profile says: vLLM V1 by default, vLLM 0.6 or SGLang; its KV-block count from :func:`apex_opt.memory.replica_memory`, its iteration times from
:class:`apex_opt.costmodel.iteration.IterationCostModel`); a router spreads the requests over them
(:mod:`apex_opt.sim.router`). Energy = active energy of every iteration + idle power of each GPU for
the rest of the makespan (first arrival -> last event).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from ..costmodel.iteration import IterationCostModel
from ..errors import InfeasibleError, InputError
from ..memory import replica_memory
from ..parallel import (moe_a2a_problem, redundant_experts_problem, scope_problem,
                        seqs_per_scheduler, shape_problem)
from ..specs.cluster import ClusterSpec, PoolSpec
from ..specs.engine import DPRouterSpec, EngineSpec, dp_router_for, load_engine
from ..specs.model import ModelSpec
from ..specs.plan import Plan, ReplicaConfig
from ..specs.slo import SLOSpec
from .engine import (DROP_NONE, DROP_REASONS, EngineLimits, ReplicaEngine, RequestLog,
                     StreamFrontEnd)
from .metrics import (EnergyReport, EnergyTimeline, Metrics, Stats, compute_metrics,
                      energy_report, energy_window, open_loop_bounds, round_sig,
                      steady_state_bounds, tokens_in_window)
from .router import run_closed_loop, run_cluster
from .workload import Requests

#: Default cap on decode-only iterations costed as one run (see :func:`simulate`).
#: (decode cost is linear in context length, so longer runs stay exact while the batch -- hence
#: CUDA-graph padding -- is constant; 256 instead of 64 changes the Llama validation MAPE by
#: < 0.05 points and halves the events of light-load traces)
DEFAULT_FAST_FORWARD = 256


class ReplicaSummary(BaseModel):
    """What one replica did over the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    group: int = Field(description="Index of the plan group.")
    replica: int = Field(description="Global replica index.")
    label: str = Field(description="Replica shape, e.g. TP8.")
    pool: str
    gpus: int
    kv_blocks: int = Field(description="KV blocks of the replica (all virtual engines).")
    max_kv_blocks_used: int = Field(description="Most blocks one virtual engine held at once (the "
                                   "pipeline's whole pool when its engines share one).")
    requests: int
    dropped: int
    iterations: int
    prefill_iterations: int
    decode_iterations: int
    mixed_iterations: int
    preemptions: int
    recomputed_tokens: int = Field(description="Prompt + generated tokens prefilled again after "
                                               "preemptions.")
    prefix_hit_tokens: int = Field(0, description="Prompt tokens served from the prefix cache "
                                                  "instead of being prefilled.")
    busy_fraction: float = Field(description="GPU busy time / (GPUs x makespan).")
    energy_j: float = Field(description="Active + idle energy of the replica's GPUs.")


class StaggeredClients(BaseModel):
    """The same closed loop replayed with its clients out of step: client ``i`` of ``N`` sends its
    first request ``i x client_ramp_s / N`` after the first (``client_ramp_s`` = the lockstep
    run's mean E2E, so the first requests spread over one request's lifetime), instead of all at
    once. A closed loop of equal requests that starts together stays together (they finish in the
    same step and are sent again at once), so its TTFT includes prefilling the whole group; real
    load generators drift apart to a degree no client records. The two runs bound what client
    synchronisation alone does to TTFT."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_ramp_s: float = Field(description="Seconds over which the clients' first requests "
                                             "were spread (the lockstep run's mean E2E).")
    ttft_ms: Stats
    tpot_ms: Stats
    e2e_s: Stats
    throughput_tokens_per_s: float


class SimulationResult(BaseModel):
    """Outcome of :func:`simulate` (the ``--json`` of ``apex-opt simulate``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = 1
    model: str
    cluster: str
    engine: str = Field("vllm", description="Engine profile used (apex_opt/data/engines; "
                                            "NAME@VERSION when a release was pinned).")
    plan: Plan
    seed: int
    metrics: Metrics
    tpot_token_weighted_ms: float | None = Field(
        None, description="Mean inter-token latency over all tokens after the first of all "
                          "requests (what vLLM's time_per_output_token histogram averages); "
                          "metrics.tpot_ms is the per-request mean instead.")
    dropped_by_reason: dict[str, int] = Field(default_factory=dict)
    outputs_cut: int = Field(
        0, description="Requests served with a shorter output than they asked for: SGLang cuts "
                       "max_new_tokens where prompt + output would not fit its KV pool (engine "
                       "profile clip_output_to_kv_pool). Metrics count the tokens generated.")
    output_tokens_cut: int = Field(0, description="Output tokens those cuts took off.")
    replicas: list[ReplicaSummary]
    workload: dict
    energy: EnergyReport | None = Field(
        None, description="Power / energy / cost accounting: plan GPUs, host power of its nodes, "
                          "free GPUs apart; whole-run and steady-state windows (sim/metrics.py).")
    staggered_clients: StaggeredClients | None = Field(
        None, description="Closed loops started in lockstep, when asked for (simulate(..., "
                          "compare_staggered=True)): the same run with the clients' first "
                          "requests spread over one mean E2E. metrics stay the lockstep run's.")

    _timings: dict = PrivateAttr(default_factory=dict)

    def per_request(self) -> dict[str, np.ndarray]:
        """Per-request arrays of the run (not serialised): arrival_s, first_token_s, finish_s,
        output_tokens, prompt_tokens, dropped (reason code, 0 = served), preemptions, replica."""
        return self._timings


def _pool_of(cluster: ClusterSpec, name: str | None, field: str) -> PoolSpec:
    try:
        return cluster.pool(name)
    except KeyError:
        raise InputError(f"unknown pool {name!r}; cluster {cluster.name} has "
                         f"{', '.join(p.name for p in cluster.pools)}", field=field,
                         value=name) from None


def _check_gpu_counts(cluster: ClusterSpec, plan: Plan) -> None:
    used: dict[str, int] = {}
    for g in plan.groups:
        pool = _pool_of(cluster, g.pool, "plan.groups.pool")
        used[pool.name] = used.get(pool.name, 0) + g.replicas * g.gpus
    for pool in cluster.pools:
        if used.get(pool.name, 0) > pool.num_gpus:
            raise InfeasibleError(
                f"plan {plan.label()} needs {used[pool.name]} GPUs of pool {pool.name}, which "
                f"has {pool.num_gpus}",
                {"pool": pool.name, "needed": used[pool.name], "available": pool.num_gpus})


def engine_limits(model: ModelSpec, cfg: ReplicaConfig, num_blocks: int,
                  engine: EngineSpec, device=None) -> EngineLimits:
    """Resolved scheduler limits of one replica (engine defaults -- by ``device`` memory where
    the engine picks them so -- filled in)."""
    # DP attention: a plan's limits are each rank's (report/launch.py passes D x them to SGLang);
    # the engine's own default chunked-prefill budget is divided over the ranks (below)
    default_budget = cfg.max_num_batched_tokens is None
    cfg = cfg.resolved(engine, model, device)
    max_len = cfg.resolved_max_model_len(model.max_position_embeddings)
    policy = {"vllm": "v0", "vllm_v1": "v1", "sglang": "sglang"}[engine.scheduler]
    if cfg.mixed_chunk and engine.scheduler != "sglang":
        raise InputError(f"mixed_chunk is SGLang's --enable-mixed-chunk; {engine.label} already "
                         f"mixes decodes into its chunked-prefill steps: leave mixed_chunk unset "
                         f"(or use chunked_prefill)", field="mixed_chunk", value=True)
    if cfg.max_prefill_tokens is not None and engine.max_prefill_tokens is None:
        raise InputError(f"max_prefill_tokens is SGLang's --max-prefill-tokens; {engine.label} "
                         f"has no such cap (its token budget is max_num_batched_tokens)",
                         field="max_prefill_tokens", value=cfg.max_prefill_tokens)
    if cfg.max_prefill_tokens is not None and not cfg.chunked_prefill:
        raise InputError("with chunked prefill off, SGLang's prefill batch cap is "
                         "max_num_batched_tokens (launched as --max-prefill-tokens): set that "
                         "instead", field="max_prefill_tokens", value=cfg.max_prefill_tokens)
    if policy == "sglang" and not cfg.chunked_prefill:
        policy = "v0"  # SGLang with --chunked-prefill-size -1: whole-prompt prefill batches
    ntr = engine.new_token_ratio
    budget = cfg.resolved_batched_tokens(model.max_position_embeddings, engine.chunked_prefill_budget)
    ntr_init = None if ntr is None else ntr.init
    if cfg.attention_dp > 1:  # DP attention: the engine's per-rank scheduler settings
        if engine.dp_attention_split_prefill_budget and cfg.chunked_prefill and default_budget:
            budget = max(1, budget // cfg.attention_dp)
        if ntr is not None:
            ntr_init = min(1.0, ntr.init * engine.dp_attention_conservativeness)
    return EngineLimits(
        num_blocks=num_blocks, block_size=engine.block_size,
        max_num_seqs=seqs_per_scheduler(cfg.max_num_seqs, cfg.pp, engine.pp_shares_max_num_seqs),
        replica_max_num_seqs=cfg.max_num_seqs,
        max_num_batched_tokens=budget,
        max_model_len=max_len, chunked_prefill=cfg.chunked_prefill, pp=cfg.pp,
        context_exclusive=engine.context_limit_exclusive,
        clip_output_to_pool=engine.clip_output_to_kv_pool,
        shared_kv_pool=engine.pp_shares_kv_pool,
        watermark_fraction=engine.watermark_fraction, policy=policy,
        prefix_caching=bool(cfg.prefix_caching) and engine.prefix_cache != "none",
        mixed_chunk=bool(cfg.mixed_chunk) and policy == "sglang",
        long_prefill_token_threshold=engine.long_prefill_token_threshold,
        max_prefill_tokens=(0 if policy != "sglang" else
                            cfg.max_prefill_tokens or engine.max_prefill_tokens or 0),
        attention_dp=cfg.attention_dp,
        new_token_ratio=(None if ntr is None or policy != "sglang" else
                         (ntr_init, ntr_init * ntr.min_factor,
                          (ntr_init - ntr_init * ntr.min_factor) / ntr.decay_steps)),
        retract_decode_steps=0 if ntr is None or policy != "sglang" else ntr.retract_decode_steps)


def _build_replicas(model: ModelSpec, cluster: ClusterSpec, plan: Plan, log: RequestLog,
                    num_blocks_override: int | None, engine: EngineSpec, debug: bool,
                    breakdown: bool, fast_forward: int, async_output: bool,
                    sampler: str = "greedy") -> tuple[list[ReplicaEngine], list[tuple[int, str, str]]]:
    engines: list[ReplicaEngine] = []
    meta: list[tuple[int, str, str]] = []
    for gi, g in enumerate(plan.groups):
        pool = _pool_of(cluster, g.pool, f"plan.groups[{gi}].pool")
        # every default (checkpoint weight dtype, the engine's limits by GPU) filled in, once:
        # the same numbers whether the plan came from the Python API or the CLI
        cfg = g.replica().resolved(engine, model, pool.device)
        problem = (shape_problem(model, pool, cfg.tp, cfg.pp, cfg.ep, attention_dp=cfg.attention_dp,
                                 redundant_experts=cfg.redundant_experts)
                   or redundant_experts_problem(cfg.redundant_experts, engine)
                   or moe_a2a_problem(cfg.moe_a2a, engine))
        if problem:
            raise InputError(problem, field=f"plan.groups[{gi}]", value=cfg.label())
        problem = scope_problem(pool, cfg.tp)
        if problem:
            raise InfeasibleError(problem, {"group": gi, "problem": problem})
        refusal = cfg.engine_refusal(engine)  # what the real engine refuses to start with
        if refusal:
            raise InputError(refusal, field=f"plan.groups[{gi}].max_num_batched_tokens",
                             value=cfg.max_num_batched_tokens)
        mem = replica_memory(model, pool.device, cfg, engine)
        if num_blocks_override is None and not mem.fits:
            raise InfeasibleError(f"{model.name} {cfg.label()} on {pool.name}: {mem.problem}",
                                  {"group": gi, "problem": mem.problem,
                                   "overflow_component": mem.overflow_component,
                                   "overflow_bytes": mem.overflow_bytes})
        blocks = num_blocks_override if num_blocks_override is not None else mem.kv_blocks
        if blocks < max(cfg.pp, cfg.attention_dp):
            raise InfeasibleError(f"{cfg.label()}: {blocks} KV blocks cannot be split over "
                                  f"pp={cfg.pp} virtual engines / "
                                  f"attention_dp={cfg.attention_dp} ranks")
        if cfg.attention_dp > 1 and not engine.dp_attention:
            raise InputError(f"engine {engine.name} has no data-parallel attention (SGLang 0.4+: "
                             f"--enable-dp-attention; vLLM V1: --data-parallel-size with expert "
                             f"parallelism)", field=f"plan.groups[{gi}].attention_dp",
                             value=cfg.attention_dp)
        # the replica as given: engine_limits resolves it itself and must see which limits the
        # plan left to the engine (DP attention divides only the DEFAULT chunk budget)
        limits = engine_limits(model, g.replica(), blocks, engine, pool.device)
        if mem.block_size is not None:  # vLLM V1 hybrid: attention pages hold a layer's state
            limits = replace(limits, block_size=mem.block_size)
        if mem.seq_state_blocks or mem.max_state_seqs is not None:
            # hybrid models: bounded per-sequence state in the KV pool; a recurrent-state pool
            # of its own caps the running requests (memory.replica_memory)
            limits = replace(limits, seq_state_blocks=mem.seq_state_blocks,
                             max_num_seqs=min(limits.max_num_seqs,
                                              mem.max_state_seqs or limits.max_num_seqs))
        cost = IterationCostModel(model, pool, cfg, engine, sampler=sampler)
        # vLLM V1 async scheduling / SGLang overlap scheduler (the engine's own), or vLLM 0.6's
        # async output processing when asked for (CUDA graphs on); every engine turns them off
        # with pipeline parallelism unless its profile says otherwise (overlap_with_pp)
        pp_ok = cfg.pp == 1 or engine.overlap_with_pp
        asyn = engine.async_scheduling and pp_ok
        overlap = asyn or (async_output and cfg.cuda_graphs and pp_ok)
        serial = engine.host_serial_ms * 1e-3 if asyn else None
        for _ in range(g.replicas):
            engines.append(ReplicaEngine(len(engines), cost, limits, log, debug=debug,
                                         breakdown=breakdown, fast_forward=fast_forward,
                                         async_output=overlap, host_serial_s=serial,
                                         lookahead=asyn,
                                         frontend=stream_frontend(engine)))
            meta.append((gi, cfg.label(), pool.name))
    return engines, meta


def stream_frontend(engine: EngineSpec) -> StreamFrontEnd | None:
    """The streaming front end of one replica of ``engine`` (each server has its own), or None
    when the profile does not model it (``frontend_chunk_us`` 0)."""
    if engine.frontend_chunk_us <= 0 and engine.frontend_chunk_per_token_ns <= 0:
        return None
    return StreamFrontEnd(engine.frontend_chunk_us * 1e-6,
                          engine.frontend_chunk_per_token_ns * 1e-9, engine.stream_interval)


def _token_weighted_tpot_ms(first: np.ndarray, fin: np.ndarray, out: np.ndarray,
                            served: np.ndarray) -> float | None:
    multi = served & (out > 1)
    gaps = int((out[multi] - 1).sum())
    if not gaps:
        return None
    return round_sig(float((fin[multi] - first[multi]).sum()) / gaps * 1e3)


def simulate(model: ModelSpec, cluster: ClusterSpec, plan: Plan, requests: Requests, *,
             slo: SLOSpec | None = None, seed: int = 0, num_blocks_override: int | None = None,
             progress: bool | Callable[[int, int], None] = False, debug: bool = False,
             breakdown: bool = False, engine: EngineSpec | None = None,
             fast_forward: int = DEFAULT_FAST_FORWARD,
             async_output: bool = False, compare_staggered: bool = False) -> SimulationResult:
    """Simulate serving ``requests`` with ``plan`` on ``cluster``.

    ``num_blocks_override`` replaces every replica's KV-block count (tests, what-ifs; the memory
    fit check is skipped then). ``progress`` = True shows a progress bar on stderr, or pass a
    callable ``(routed, total)``. ``debug`` checks the KV-block invariants after every iteration;
    ``breakdown`` accumulates the time per operator class (slower). ``fast_forward`` is the most
    consecutive decode-only iterations (no arrival, finish or block shortage in between; with
    pp > 1 the virtual engines whose batches go on unchanged join one run through the stages)
    costed as one run, interpolating the iteration cost linearly in context length between its
    first and last step; 1 costs every iteration separately. ``async_output`` models vLLM 0.6's
    asynchronous output processing (host output work of one iteration overlaps the GPU work of
    the next; pp == 1 with CUDA graphs only) -- off by default because the bundled cost model's
    host time is calibrated as serial per-step time. ``compare_staggered``: a closed loop of
    two or more clients that all start at once is replayed a second time with their first
    requests spread over the first run's mean E2E (``staggered_clients``). The engine has no
    randomness: ``seed`` is recorded for reproducibility of the caller's workload sampling.
    Unset plan fields take their defaults from :meth:`ReplicaConfig.resolved` (the checkpoint's
    weight dtype, the engine's limits for the GPU), exactly as ``apex-opt simulate`` does.
    Raises :class:`InfeasibleError` when a replica does not fit in memory or the plan needs more
    GPUs than a pool has; :class:`InputError` for an unknown pool, no requests, or a
    configuration the real engine refuses to start with (:meth:`ReplicaConfig.engine_refusal`,
    e.g. vLLM's max_num_batched_tokens < max_model_len without chunked prefill).
    """
    if len(requests) == 0:
        raise InputError("no requests to simulate", source=requests.source)
    if num_blocks_override is not None and num_blocks_override < 1:
        raise InputError("must be >= 1", field="num_blocks_override", value=num_blocks_override)
    engine = engine or load_engine()
    _check_gpu_counts(cluster, plan)
    given = requests
    log = RequestLog(requests.prompt_tokens, requests.output_tokens,
                     getattr(requests, "prefix_blocks", None),
                     getattr(requests, "prefix_block_tokens", 512),
                     requests.declared_max_tokens() if hasattr(requests, "declared_max_tokens")
                     else None)
    engines, meta = _build_replicas(model, cluster, plan, log, num_blocks_override, engine, debug,
                                    breakdown, fast_forward, async_output,
                                    getattr(requests, "sampler", "greedy"))
    timelines = _attach_timelines(engines)
    n = len(requests)
    # the engine sees a request only after the server has received, parsed and tokenised it;
    # latencies are still measured from the client's arrival time
    at_engine = requests.arrival_s + engine.request_overhead_ms * 1e-3
    router = dp_router_for(plan.router, engine)  # 'engine': the profile's own DP router
    if requests.concurrency is not None:  # closed loop: latencies count from when each was sent
        end, sent = _run_closed(engines, requests, router, log,
                                engine.request_overhead_ms * 1e-3, progress)
        requests = requests.with_arrival_s(sent)
    else:
        end = _run(engines, at_engine, router, progress, n)
    if np.isfinite(log.finish_s).any():
        end = max(end, float(np.nanmax(log.finish_s)))
    start = float(requests.arrival_s[0])
    makespan = max(end - start, 1e-9)
    res = _result(model, cluster, plan, requests, slo, seed, log, engines, meta, makespan, engine,
                  timelines)
    if compare_staggered and given.concurrency is not None and given.client_ramp_s == 0 \
            and min(given.concurrency, n) > 1:
        ramp = res.metrics.e2e_s.mean
        if ramp is not None and ramp > 0:
            other = simulate(model, cluster, plan,
                             given.with_concurrency(given.concurrency, ramp_s=float(ramp)),
                             seed=seed, num_blocks_override=num_blocks_override, engine=engine,
                             fast_forward=fast_forward, async_output=async_output)
            om = other.metrics
            res = res.model_copy(update={"staggered_clients": StaggeredClients(
                client_ramp_s=round_sig(float(ramp)), ttft_ms=om.ttft_ms, tpot_ms=om.tpot_ms,
                e2e_s=om.e2e_s, throughput_tokens_per_s=om.throughput_tokens_per_s)})
    return res


def _attach_timelines(engines: list[ReplicaEngine]) -> list[EnergyTimeline]:
    """Record each replica's cumulative energy after every kick / complete (for the steady-state
    window of the energy report)."""
    out = []
    for eng in engines:
        tl = EnergyTimeline(eng.cost.num_gpus, eng.cost.idle_power_w)
        st = eng.stats
        for name in ("kick", "complete"):
            def wrapped(v, t, *a, _fn=getattr(eng, name), _tl=tl, _st=st, **k):
                r = _fn(v, t, *a, **k)
                # the iteration / fast-forwarded run ends at r: its energy is spread over [t, r]
                _tl.record(t, _st.energy_j, _st.busy_gpu_s, end=r)
                return r
            setattr(eng, name, wrapped)
        out.append(tl)
    return out


def _energy(cluster: ClusterSpec, plan: Plan, requests: Requests, log: RequestLog,
            engines: list[ReplicaEngine], timelines: list[EnergyTimeline], served: np.ndarray,
            energy_j: float, makespan: float) -> EnergyReport:
    start = float(requests.arrival_s[0])
    out = requests.output_tokens
    whole = energy_window("whole_run", start, start + makespan, energy_j, float(out[served].sum()))
    bounds = open_loop_bounds(requests.arrival_s, log.finish_s, served) \
        if requests.concurrency is None else None
    if bounds is None:
        # closed loop / batch: the window counts each replica's configured cap (a pipeline's
        # shared one once), or the clients when fewer
        conc = sum(e.lim.replica_max_num_seqs or e.lim.max_num_seqs for e in engines)
        if requests.concurrency is not None:
            conc = min(conc, int(requests.concurrency))
        bounds = steady_state_bounds(log.first_s, log.finish_s, served, conc)
    steady = None
    if bounds is not None:
        t0, t1 = bounds
        e = sum(tl.energy(t0, t1) for tl in timelines)
        steady = energy_window("steady_state", t0, t1, e,
                               tokens_in_window(log.first_s, log.finish_s, out, served, t0, t1))
    return energy_report(cluster, plan, whole, steady)


def _run_closed(engines: list[ReplicaEngine], requests: Requests, router: DPRouterSpec,
                log: RequestLog, delay_s: float, progress: bool | Callable[[int, int], None]):
    """Closed loop of ``requests.concurrency`` clients (see :func:`run_closed_loop`): returns
    (end time, the time each request was sent)."""
    n = len(requests)
    out: list = []

    def run(engines, _arrival, router, progress=None) -> float:
        out.extend(run_closed_loop(engines, n, requests.concurrency, router, log,
                                   start_s=float(requests.arrival_s[0]), delay_s=delay_s,
                                   ramp_s=requests.client_ramp_s, progress=progress))
        return out[0]

    _run(engines, requests.arrival_s, router, progress, n, runner=run)
    return out[0], out[1]


def _run(engines: list[ReplicaEngine], arrival_s: np.ndarray, router: DPRouterSpec,
         progress: bool | Callable[[int, int], None], n: int, runner=run_cluster) -> float:
    if callable(progress):
        return runner(engines, arrival_s, router, progress=lambda k: progress(k, n))
    if not progress:
        return runner(engines, arrival_s, router)
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("simulating", total=n)
        return runner(engines, arrival_s, router,
                      progress=lambda k: bar.update(task, completed=k))


def _result(model: ModelSpec, cluster: ClusterSpec, plan: Plan, requests: Requests,
            slo: SLOSpec | None, seed: int, log: RequestLog, engines: list[ReplicaEngine],
            meta: list[tuple[int, str, str]], makespan: float,
            engine: EngineSpec, timelines: list[EnergyTimeline] | None = None) -> SimulationResult:
    served = log.dropped == DROP_NONE
    cut = log.asked_output > 0
    asked = requests
    if cut.any():  # the engine cut some outputs: count the tokens it generated
        requests = requests.with_output_tokens(np.asarray(log.output, dtype=np.int64))
    summaries: list[ReplicaSummary] = []
    energy = flops = nbytes = peak_f = peak_b = 0.0
    bd_total: dict[str, float] = {}
    for eng, (gi, label, pool) in zip(engines, meta):
        st, cm = eng.stats, eng.cost
        idle_s = max(0.0, cm.num_gpus * makespan - st.busy_gpu_s)
        e = st.energy_j + cm.idle_power_w * idle_s
        energy += e
        flops += st.flops
        nbytes += st.hbm_bytes
        peak_f += cm.peak_flops
        peak_b += cm.peak_bytes_per_s
        for k, v in (eng.breakdown or {}).items():
            bd_total[k] = bd_total.get(k, 0.0) + v
        summaries.append(ReplicaSummary(
            group=gi, replica=eng.index, label=label, pool=pool, gpus=cm.num_gpus,
            kv_blocks=eng.lim.num_blocks, max_kv_blocks_used=st.max_blocks_used,
            requests=st.requests, dropped=st.dropped, iterations=st.iterations,
            prefill_iterations=st.prefill_iterations, decode_iterations=st.decode_iterations,
            mixed_iterations=st.mixed_iterations, preemptions=st.preemptions,
            prefix_hit_tokens=st.prefix_hit_tokens,
            recomputed_tokens=st.recomputed_tokens,
            busy_fraction=round_sig(min(1.0, st.busy_gpu_s / (cm.num_gpus * makespan))),
            energy_j=round_sig(e)))
    metrics = compute_metrics(
        requests.arrival_s, log.first_s, log.finish_s, requests.output_tokens,
        requests.prompt_tokens, ~served, makespan_s=makespan, energy_j=energy, slo=slo,
        breakdown=bd_total or None, flops=flops, bytes=nbytes, peak_flops=peak_f,
        peak_bytes_per_s=peak_b, preemptions=int(log.preemptions.sum()), cut_mask=cut)
    reasons = {DROP_REASONS[c]: int((log.dropped == c).sum()) for c in DROP_REASONS
               if (log.dropped == c).any()}
    res = SimulationResult(
        model=model.name, cluster=cluster.name, engine=engine.label, plan=plan, seed=seed,
        metrics=metrics,
        tpot_token_weighted_ms=_token_weighted_tpot_ms(log.first_s, log.finish_s,
                                                       requests.output_tokens, served),
        dropped_by_reason=reasons, outputs_cut=int(cut.sum()),
        output_tokens_cut=int((log.asked_output[cut] - requests.output_tokens[cut]).sum()),
        replicas=summaries,
        workload=asked.summary().model_dump(mode="json"),
        energy=(_energy(cluster, plan, requests, log, engines, timelines, served, energy, makespan)
                if timelines is not None else None))
    res._timings = {
        "arrival_s": requests.arrival_s, "first_token_s": log.first_s, "finish_s": log.finish_s,
        "prompt_tokens": requests.prompt_tokens, "output_tokens": requests.output_tokens,
        "dropped": log.dropped, "preemptions": log.preemptions, "replica": log.replica}
    return res


__all__ = ["ReplicaSummary", "SimulationResult", "simulate", "engine_limits"]
