"""`apex-opt simulate`: serve a trace or a synthetic workload with one plan, iteration by iteration."""

from __future__ import annotations

import sys
from typing import get_args

import click
import numpy as np

from ..io import validate
from ..report.render import console, table, to_json
from ..sim.simulator import SimulationResult, simulate
from ..sim.workload import Requests, generate, load_trace
from ..specs.common import PlanRouter
from ..specs.plan import Plan
from ..specs.slo import load_slo
from ..specs.workload import WorkloadSpec, load_workload
from ..specs.engine import load_engine
from .common import (FiniteFloatRange, NonEmptyPath, apply_client_ramp, apply_sampling,
                     check_gpu_setting_flags, check_max_model_len, check_request_lengths,
                     cluster_option, command_line_errors, engine_option,
                     gpu_setting_options, json_option, kv_dtype_option, load_engine_flag,
                     load_inputs, model_option, moe_a2a_option, redundant_experts_option,
                     sampling_options,
                     sort_trace_option, warn_thin_percentiles, weight_dtype_option)

_SRC = "<command line>"


def _refuse_unused_synthetic_flags(from_file: bool, closed_loop: bool, arrival: str) -> None:
    """--arrival / --cv given on the command line where they change nothing (a --trace or
    --workload brings its own arrivals, --concurrency has none, --cv only shapes gamma gaps) are
    refused instead of silently ignored."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)

    for name, flag in (("arrival", "--arrival"), ("cv", "--cv")):
        if not given(name):
            continue
        if from_file:
            raise click.UsageError(f"{flag} only applies to the synthetic flags; --trace and "
                                   f"--workload bring their own arrival times")
        if closed_loop:
            raise click.UsageError(f"{flag} does not apply with --concurrency (a closed loop "
                                   f"sends each request when the previous one finished)")
    if given("cv") and arrival != "gamma":
        raise click.UsageError("--cv only applies to --arrival gamma")


def _requests(trace, workload, rate, num_requests, prompt_len, output_len, arrival, cv,
              seed, concurrency=None, sort_trace=False, prompt_pool=None) -> Requests:
    synthetic = [rate, num_requests, prompt_len, output_len]
    if prompt_pool is not None and (trace is not None or workload is not None):
        raise click.UsageError("--prompt-pool only applies to the synthetic flags; a --workload "
                               "file says it with 'prefix: {groups: N, shared_tokens: ...}', a "
                               "--trace with its hash_ids")
    given = sum(x is not None for x in (trace, workload)) + (any(v is not None for v in synthetic))
    if given != 1:
        raise click.UsageError("give exactly one of --trace FILE, --workload FILE.yaml, or "
                               "--rate/--num-requests/--prompt-len/--output-len (or "
                               "--concurrency/--num-requests/--prompt-len/--output-len)")
    if sort_trace and trace is None:
        raise click.UsageError("--sort-trace only applies to --trace")
    _refuse_unused_synthetic_flags(trace is not None or workload is not None,
                                   concurrency is not None, arrival)
    if trace is not None:
        req = load_trace(trace, sort=sort_trace)
        return req.with_concurrency(concurrency) if concurrency is not None else req
    if workload is not None:
        spec = load_workload(workload)
        req = generate(spec, np.random.default_rng(seed if seed is not None else spec.seed))
        return req.with_concurrency(concurrency) if concurrency is not None else req
    if concurrency is not None:  # closed loop: N clients, no arrival rate
        if rate is not None:
            raise click.UsageError("--rate and --concurrency exclude each other (a closed loop "
                                   "sends as fast as requests finish)")
        synthetic = synthetic[1:]
    if any(v is None for v in synthetic):
        raise click.UsageError("a synthetic workload needs all of --rate (or --concurrency), "
                               "--num-requests, --prompt-len and --output-len")
    if concurrency is not None:
        arr = {"process": "closed_loop", "concurrency": concurrency}
    else:
        arr = {"process": arrival, "rate": rate}
    if arrival == "gamma" and concurrency is None:
        arr["cv"] = cv
    fields = {"name": "cli", "num_requests": num_requests, "arrival": arr,
              "prompt_len": prompt_len, "output_len": output_len, "seed": seed or 0}
    if prompt_pool is not None:
        # N distinct prompts drawn with replacement (aiperf / genai-perf synthetic datasets):
        # two requests with the same draw send the same whole prompt
        fields["prefix"] = {"groups": prompt_pool, "shared_tokens": prompt_len}
    with command_line_errors({"arrival": "--rate", "arrival.rate": "--rate", "arrival.cv": "--cv",
                              "arrival.concurrency": "--concurrency",
                              "prefix.groups": "--prompt-pool"}, sources=(_SRC,)):
        spec = validate(WorkloadSpec, fields, _SRC)
    return generate(spec, np.random.default_rng(seed or 0))


def _plan(opts: dict) -> Plan:
    from ..errors import InputError

    for key, flag in (("ep", "--ep"), ("attention_dp", "--attention-dp")):
        if opts["tp"] % opts[key]:  # named by its flag, not as the plan's 'groups[0]'
            raise InputError(f"must divide --tp ({opts['tp']})", source=_SRC, field=flag,
                             value=opts[key])
    if opts["moe_a2a"] and (opts["attention_dp"] == 1 or opts["ep"] != opts["tp"]):
        raise InputError("all-to-all MoE dispatch needs --attention-dp > 1 and --ep equal to --tp",
                         source=_SRC, field="--moe-a2a", value=True)
    if opts["redundant_experts"] and opts["ep"] == 1:
        raise InputError("redundant expert slots need expert parallelism: set --ep > 1",
                         source=_SRC, field="--redundant-experts", value=opts["redundant_experts"])
    # unset settings (weight dtype, chunked prefill, token budget, ...) stay None:
    # ReplicaConfig.resolved() fills in the checkpoint's dtype and the engine's defaults inside
    # the simulator, the same way for this command and for the Python API
    group = {k: opts[k] for k in ("tp", "pp", "ep", "pool", "weight_dtype", "kv_dtype",
                                  "max_num_seqs", "max_num_batched_tokens",
                                  "gpu_memory_utilization", "max_model_len", "custom_allreduce",
                                  "cuda_graphs", "chunked_prefill", "sm_clock_mhz", "power_cap_w",
                                  "attention_dp", "redundant_experts", "moe_a2a")}
    group["replicas"] = opts["dp"]
    if group["gpu_memory_utilization"] is None:  # unset: the engine's own (SGLang: by GPU)
        del group["gpu_memory_utilization"]
    if opts.get("prefix_caching") is not None:  # None: the engine's own default
        group["prefix_caching"] = opts["prefix_caching"]
    if opts.get("mixed_chunk"):  # unset: the engine's own default (off)
        group["mixed_chunk"] = True
    if opts.get("max_prefill_tokens") is not None:  # unset: the engine's own (SGLang 16384)
        group["max_prefill_tokens"] = opts["max_prefill_tokens"]
    with command_line_errors({"groups[0].replicas": "--dp"}, sources=(_SRC,)):
        return validate(Plan, {"groups": [group], "router": opts["router"]}, _SRC)


def _render_energy(con, e) -> None:
    """What the energy numbers count (sim/metrics.py EnergyReport)."""
    win = e.steady_state or e.whole_run
    rows = [
        ["window", f"{win.window.replace('_', ' ')} {win.start_s:,.1f}-{win.end_s:,.1f} s"
                   + ("" if e.steady_state else " (run never fills its batch: no steady state)")],
        [f"GPU power, {e.plan_gpus} plan GPUs (W)", _fmt(e.gpu_power_w, 0)],
        [f"host power, {e.plan_node_share:.3g} of a node (W)", _fmt(e.host_power_w, 0)],
        ["node power = GPUs + host (W)", _fmt(e.node_power_w, 0)],
        ["GPU / node energy per output token (J)",
         f"{_fmt(e.gpu_energy_j_per_token, 4)} / {_fmt(e.node_energy_j_per_token, 4)}"],
        ["node energy per day at this rate (kWh)", _fmt(e.kwh_per_day, 1)
         + (f" (x PUE {e.pue:g} = {e.facility_kwh_per_day:,.1f})" if e.pue != 1 else "")],
        [f"not counted: {e.free_gpus} free GPUs idle (W)", _fmt(e.free_gpu_idle_power_w, 0)],
    ]
    if e.steady_state is not None:
        w = e.whole_run
        rows.append(["whole run: GPU W / J per token", f"{_fmt(w.gpu_power_w, 0)} / "
                                                        f"{_fmt(w.gpu_energy_j_per_token, 4)}"])
    if e.cost_per_mtok is not None:
        rows.append(["cost per 1M output tokens", _fmt(e.cost_per_mtok, 3)])
    con.print(table("energy accounting", ["what", "value"], rows))


def _render_staggered(con, res: SimulationResult) -> None:
    """Lockstep vs staggered clients of a closed loop (SimulationResult.staggered_clients)."""
    m, st = res.metrics, res.staggered_clients
    n = res.workload.get("concurrency")
    rows = [[f"all {n} at t=0 (the figures above)", _fmt(m.ttft_ms.mean, 1), _fmt(m.ttft_ms.p50, 1),
             _fmt(m.tpot_ms.mean, 2), _fmt(m.e2e_s.mean, 3), _fmt(m.throughput_tokens_per_s)],
            [f"spread over {st.client_ramp_s:,.3g} s (--client-ramp)", _fmt(st.ttft_ms.mean, 1),
             _fmt(st.ttft_ms.p50, 1), _fmt(st.tpot_ms.mean, 2), _fmt(st.e2e_s.mean, 3),
             _fmt(st.throughput_tokens_per_s)]]
    con.print(table("closed loop: clients' first requests", ["clients start", "TTFT mean",
                                                              "TTFT p50", "TPOT mean", "E2E mean",
                                                              "output tok/s"], rows))


def _fmt(x, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _render(res: SimulationResult, slo=None, workload=None) -> None:
    from ..report.tables import slo_line, workload_line

    con = console()
    m = res.metrics
    if workload is not None:  # the workload actually used, defaults included
        con.print(workload_line(workload))
    if slo is not None:  # how the SLO is judged
        con.print(slo_line(slo))
    rows = []
    for name, s, d in (("TTFT (ms)", m.ttft_ms, 1), ("TPOT (ms)", m.tpot_ms, 2),
                       ("E2E (s)", m.e2e_s, 3)):
        rows.append([name, _fmt(s.mean, d), _fmt(s.p50, d), _fmt(s.p90, d), _fmt(s.p99, d),
                     _fmt(s.max, d)])
    # replica labels are of the resolved configs (e.g. the checkpoint's fp8 weights)
    labels = {r.group: r.label for r in reversed(res.replicas)}
    shape = " + ".join(f"{g.replicas}x{labels.get(i, g.label())}" + (f"@{g.pool}" if g.pool else "")
                       for i, g in enumerate(res.plan.groups))
    router = res.plan.router
    if router == "engine" and sum(g.replicas for g in res.plan.groups) > 1:
        router = f"router {load_engine(res.engine).dp_router.policy}"
    con.print(f"{res.model} on {res.cluster}: {shape} ({router}) -- "
              f"{m.num_completed:,} requests completed, {m.num_dropped:,} dropped")
    con.print(table(None, ["latency", "mean", "p50", "p90", "p99", "max"], rows))
    if res.staggered_clients is not None:
        _render_staggered(con, res)
    summary = [
        ["requests completed / dropped", f"{m.num_completed:,} / {m.num_dropped:,}"],
        ["token-weighted TPOT (ms)", _fmt(res.tpot_token_weighted_ms, 2)],
        ["output tokens/s", _fmt(m.throughput_tokens_per_s)],
        ["requests/s", _fmt(m.requests_per_s, 3)],
        ["makespan (s)", _fmt(m.makespan_s, 2)],
        ["energy (kJ)", _fmt(None if m.energy_j is None else m.energy_j / 1e3, 2)],
        ["energy per output token (J)", _fmt(m.energy_j_per_token, 3)],
        ["average power (W)", _fmt(m.avg_power_w, 0)],
        ["MFU / MBU", f"{_fmt(m.mfu and m.mfu * 100)} % / {_fmt(m.mbu and m.mbu * 100)} %"],
        ["preemptions", f"{m.preemptions:,}"],
    ]
    hits = sum(r.prefix_hit_tokens for r in res.replicas)
    if hits or (workload is not None and workload.prefix_reuse_tokens):
        prompt = workload.total_prompt_tokens if workload is not None else 0
        share = f" ({hits / prompt * 100:.1f} % of prompt tokens)" if prompt else ""
        summary.append(["prefix-cache hit tokens", f"{hits:,}{share}"])
    if m.slo_attainment is not None:
        summary.append(["SLO attainment", f"{m.slo_attainment * 100:.1f} % "
                                          f"({'met' if m.slo_met else 'NOT met'})"])
        summary.append(["goodput (req/s)", _fmt(m.goodput_requests_per_s, 3)])
    for reason, count in res.dropped_by_reason.items():
        summary.append([f"dropped: {reason}", f"{count:,}"])
    if res.outputs_cut:
        summary.append(["outputs cut to fit the KV pool",
                        f"{res.outputs_cut:,} requests, {res.output_tokens_cut:,} tokens"])
    con.print(table(None, ["metric", "value"], summary))
    if res.energy is not None:
        _render_energy(con, res.energy)
    rep = [[r.replica, r.label, r.pool, r.requests, r.iterations, r.preemptions,
            f"{r.kv_blocks:,}", f"{r.max_kv_blocks_used:,}", f"{r.busy_fraction * 100:.0f} %"]
           for r in res.replicas[:32]]
    con.print(table("replicas" + (f" (first 32 of {len(res.replicas)})" if len(res.replicas) > 32
                                   else ""),
                    ["#", "shape", "pool", "requests", "iterations", "preempt", "KV blocks",
                     "max used", "GPU busy"], rep))


@click.command("simulate")
@model_option
@cluster_option
@click.option("--tp", type=click.IntRange(1, 1024), required=True, help="Tensor-parallel degree.")
@click.option("--pp", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Pipeline-parallel degree.")
@click.option("--dp", type=click.IntRange(1, 100_000), default=1, show_default=True,
              help="Data-parallel replicas.")
@click.option("--ep", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Expert-parallel degree (MoE; divides --tp).")
@click.option("--attention-dp", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Data-parallel attention ranks inside the TP group, for MoE models: each rank "
                   "has its own requests and KV cache and runs attention on tp/N GPUs, the experts "
                   "span all --tp GPUs (SGLang --enable-dp-attention --dp-size N; vLLM V1 "
                   "--data-parallel-size N --tensor-parallel-size tp/N), e.g. --tp 8 --attention-dp 8.")
@redundant_experts_option
@moe_a2a_option
@click.option("--pool", default=None, help="Device pool of the cluster [default: the first].")
@weight_dtype_option
@kv_dtype_option
@click.option("--trace", type=NonEmptyPath(dir_okay=False), default=None,
              help="Request trace: APEX JSONL (StartTimeOffset/ContextTokens/GeneratedTokens), "
                   "Mooncake JSONL (timestamp/input_length/output_length/hash_ids: shared "
                   "prefixes) or Azure CSV; the format is detected from the content.")
@sort_trace_option
@click.option("--concurrency", type=click.IntRange(1, 1_000_000), default=None,
              help="Closed loop: N clients, each sending its next request as soon as its previous "
                   "one finished (vllm bench serve --max-concurrency N); all start at t=0 (see "
                   "--client-ramp). Use "
                   "with --num-requests/--prompt-len/--output-len, or with --workload/--trace "
                   "for the lengths (their arrival times then only order the requests).")
@click.option("--client-ramp", "client_ramp", type=FiniteFloatRange(0, 1e6), default=None,
              metavar="SECONDS",
              help="Closed loop: stagger the clients' first requests evenly over this many "
                   "seconds (client i starts at i x SECONDS / N) instead of all at t=0, e.g. "
                   "about one request's latency to model clients already out of step "
                   "[default: 0, or the --workload file's ramp_s].")
@click.option("--compare-staggered/--no-compare-staggered", "compare_staggered", default=True,
              help="Closed loop started in lockstep (no --client-ramp): also replay it with the "
                   "clients' first requests spread over one mean E2E and show both. Equal "
                   "requests sent together stay in lockstep, so their TTFT includes prefilling "
                   "the whole group; real clients drift apart by an amount nothing records, and "
                   "the two runs show how much TTFT hangs on it [default: on].")
@click.option("--workload", type=NonEmptyPath(dir_okay=False), default=None,
              help="Synthetic workload YAML (arrival process + length distributions).")
@click.option("--rate", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Synthetic: requests per second.")
@click.option("--num-requests", type=click.IntRange(1, 10_000_000), default=None,
              help="Synthetic: number of requests.")
@click.option("--prompt-len", type=click.IntRange(1, 10_000_000), default=None,
              help="Synthetic: prompt tokens per request.")
@click.option("--output-len", type=click.IntRange(1, 10_000_000), default=None,
              help="Synthetic: output tokens per request.")
@click.option("--prompt-pool", type=click.IntRange(1, 10_000_000), default=None,
              help="Synthetic: draw each prompt at random (with replacement) from N distinct "
                   "prompts, as aiperf and genai-perf do with their synthetic dataset "
                   "(--num-dataset-entries, default 100): a repeated prompt can hit the prefix "
                   "cache [default: every prompt distinct].")
@click.option("--arrival", type=click.Choice(["poisson", "gamma", "constant"]), default="poisson",
              show_default=True, help="Synthetic: arrival process.")
@click.option("--cv", type=FiniteFloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Synthetic gamma arrivals: coefficient of variation of the gaps.")
@click.option("--seed", type=click.IntRange(0, 2 ** 63 - 1), default=None,
              help="Seed of the synthetic workload [default: 0, or the workload file's seed].")
@click.option("--slo", "slo_path", type=NonEmptyPath(dir_okay=False), default=None,
              help="SLO YAML: report attainment and goodput against its targets [default: "
                   "none, latency and throughput only].")
@click.option("--max-num-seqs", type=click.IntRange(1, 65536), default=None,
              help="Max sequences per iteration [default: the engine's for the GPU: vLLM V1 "
                   "1024 on H100/H200, 256 elsewhere; vLLM 0.6 256; SGLang 2048].")
@click.option("--max-num-batched-tokens", type=click.IntRange(1, 10_000_000), default=None,
              help="Token budget per iteration [default: the engine's with chunked prefill -- "
                   "vLLM V1 8192 on H100/H200 (2048 elsewhere), vLLM 0.6 512, SGLang 8192 -- "
                   "else max(max_model_len, 2048)].")
@click.option("--chunked-prefill/--no-chunked-prefill", default=None,
              help="Chunked prefill [default: the engine's own: vLLM V1 and SGLang always, "
                   "vLLM 0.6 when max_model_len > 32768].")
@click.option("--gpu-memory-utilization", type=FiniteFloatRange(0.05, 1.0), default=None,
              help="Share of device memory the engine may use [default: the engine's: vLLM 0.9, "
                   "SGLang's mem_fraction_static by GPU memory].")
@click.option("--max-model-len", type=click.IntRange(16, 10_000_000), default=None,
              help="Max context per request [default: the model's maximum].")
@click.option("--custom-allreduce/--no-custom-allreduce", default=True, show_default=True,
              help="vLLM's custom all-reduce kernel for TP within a node.")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="CUDA graphs for decode batches.")
@click.option("--prefix-caching/--no-prefix-caching", default=None,
              help="Reuse the KV cache of shared prompt prefixes (Mooncake hash_ids, workload "
                   "'prefix' groups) [default: the engine's own].")
@click.option("--mixed-chunk", "mixed_chunk", is_flag=True, default=None,
              help="SGLang --enable-mixed-chunk: running decodes join each prefill batch instead "
                   "of waiting for it [default: off, as SGLang]. SGLang engines only.")
@click.option("--max-prefill-tokens", "max_prefill_tokens", type=click.IntRange(1, 10_000_000),
              default=None,
              help="SGLang --max-prefill-tokens: new prompt tokens one prefill batch may take; a "
                   "request that does not fit what is left waits for the next batch (the first "
                   "always joins) [default: SGLang's 16384]. SGLang engines, chunked prefill.")
@click.option("--router", type=click.Choice(get_args(PlanRouter)),
              default="engine", show_default=True,
              help="How requests are spread over the --dp replicas: 'engine' = the engine's own "
                   "DP router (vllm: vllm_dp_lb, lowest 4 x waiting + running; sglang: "
                   "sglang_cache_aware, sgl-router's prefix-affinity tree; vllm-0.6: "
                   "least_outstanding), e.g. --dp 4 --router round_robin to compare.")
@gpu_setting_options
@sampling_options
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr [default: when stderr is a terminal].")
@engine_option
@json_option
def command(model_ref, cluster_ref, trace, workload, rate, num_requests, prompt_len, output_len,
            arrival, cv, seed, slo_path, progress, engine_name, as_json, concurrency, sort_trace,
            sampling_top_p, sampling_top_k, max_tokens, prompt_pool, client_ramp, compare_staggered,
            **opts):
    """Simulate serving a workload with ONE plan (DP x PP x TP replicas of the --engine: vLLM V1
    by default, see `apex-opt engines`) and report latency (TTFT / TPOT / E2E mean and percentiles), throughput and energy.

    The engine is simulated iteration by iteration: continuous batching, paged KV cache (its size
    from the memory model), chunked or unchunked prefill, preemption by recompute, CUDA-graph
    padding, pipeline micro-batches, and a router over data-parallel replicas. Iteration times and
    energy come from measured operator profiles.

    The requests come from exactly one of: --trace FILE, --workload FILE.yaml, or the synthetic
    flags --rate/--num-requests/--prompt-len/--output-len. --concurrency N replays them as a
    closed loop of N clients (with the synthetic flags it replaces --rate).

    \b
    Examples:
      apex-opt simulate --model llama-3.1-70b --cluster h100-sxm-1x8 --tp 8 \\
          --rate 2 --num-requests 500 --prompt-len 1000 --output-len 200
      apex-opt simulate --tp 4 --dp 2 --trace my_trace.jsonl --slo slo.yaml --json
      apex-opt simulate --model llama-3.1-8b --tp 1 --concurrency 16 \\
          --num-requests 200 --prompt-len 1024 --output-len 128 [--client-ramp 2]
      apex-opt simulate --model llama-3.1-8b --tp 1 --concurrency 256 --max-num-seqs 256 \\
          --num-requests 2000 --prompt-len 200 --output-len 400 --sm-clock-mhz 1410

    Exit codes: 2 bad input, 3 the plan does not fit (memory or GPU count).
    """
    model, cluster = load_inputs(model_ref, cluster_ref)
    if opts.get("pool") is not None and opts["pool"] not in [p.name for p in cluster.pools]:
        from ..errors import InputError

        raise InputError(f"unknown pool; cluster {cluster.name} has "
                         f"{', '.join(p.name for p in cluster.pools)}", source=_SRC, field="--pool",
                         value=opts["pool"])
    check_gpu_setting_flags(cluster, opts.get("pool"), opts.get("sm_clock_mhz"),
                            opts.get("power_cap_w"))
    engine = load_engine_flag(engine_name)
    plan = _plan(opts)
    # the simulator refuses (exit 2) what the real engine refuses to start with
    check_max_model_len(model, opts.get("max_model_len"))
    requests = _requests(trace, workload, rate, num_requests, prompt_len, output_len, arrival, cv,
                         seed, concurrency, sort_trace, prompt_pool)
    requests = apply_client_ramp(requests, client_ramp)
    requests = apply_sampling(requests, sampling_top_p, sampling_top_k, max_tokens)
    src, field = ((trace, "input + output tokens") if trace else
                  (workload, "prompt_len + output_len") if workload else
                  (_SRC, "--prompt-len + --output-len"))
    check_request_lengths(requests, model, opts.get("max_model_len"), source=src, field=field,
                          exclusive=engine.context_limit_exclusive)
    slo = load_slo(slo_path) if slo_path else None
    if slo is not None:
        warn_thin_percentiles(slo, requests, slo_path)
    show = progress if progress is not None else sys.stderr.isatty()
    with command_line_errors():  # the plan's flags the engine or the model refuses
        res = simulate(model, cluster, plan, requests, slo=slo, seed=seed or 0,
                       progress=bool(show), engine=engine, compare_staggered=compare_staggered)
    if as_json:
        click.echo(to_json(res))
    else:
        _render(res, slo, requests.summary())
