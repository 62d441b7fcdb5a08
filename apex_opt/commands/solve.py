"""`apex-opt solve`: find the best serving plan for a workload and SLO, and how to launch it."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from ..registry import data_dir
from ..report.render import console, table, to_json
from ..search import DEFAULT_TIME_LIMIT_S, DEFAULT_TOP_K, OBJECTIVES, SolveResult, solve
from .common import cluster_option, engine_option, json_option, load_inputs, model_option

DEFAULT_WORKLOAD = "default-workload.yaml"
DEFAULT_SLO = "default-slo.yaml"


def _load_requests(trace: str | None, workload: str | None):
    from ..sim.workload import generate, load_trace
    from ..specs.workload import load_workload

    if trace and workload:
        raise InputError("give either --trace or --workload, not both", field="--trace", value=trace)
    if trace:
        return load_trace(trace)
    path = workload or str(data_dir("examples") / DEFAULT_WORKLOAD)
    return generate(load_workload(path))


def _load_slo(path: str | None):
    from ..specs.slo import load_slo

    return load_slo(path or str(data_dir("examples") / DEFAULT_SLO))


def launch_family(engine_name: str) -> str:
    """The launch-command vocabulary of an engine profile (``sglang*`` -> sglang, else vllm)."""
    return "sglang" if engine_name.startswith("sglang") else "vllm"


def make_launcher(model_ref: str, model, cluster):
    """``launcher(plan, engine_name)`` for :func:`apex_opt.search.solve`: the shell commands that
    start every replica of the plan with that engine."""
    from ..report.launch import launch_plan

    def launcher(plan, engine_name: str) -> str:
        lp = launch_plan(model_ref, model, plan, engine=launch_family(engine_name), cluster=cluster)
        return "\n".join(nc.command for g in lp.groups for r in g.replicas for nc in r.commands)

    return launcher


def _fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def render_tables(res: SolveResult) -> None:
    """Rich tables of a :class:`SolveResult` on stdout."""
    con = console()
    s = res.solver
    con.print(f"{res.model} on {res.cluster} · objective {res.objective} · "
              f"{s.plans_simulated} of {s.plans_feasible} feasible plans simulated "
              f"({s.candidates} replica candidates, CP-SAT {s.status}, {s.wall_s:.2f} s)")
    rows = []
    for p in res.plans:
        m = p.metrics
        rows.append([p.rank, p.label, p.gpus, _fmt(m and m.ttft_ms.p90, ".0f"),
                     _fmt(m and m.tpot_ms.p90, ".1f"), _fmt(m and m.e2e_s.p90, ".2f"),
                     _fmt(m and m.throughput_tokens_per_s, ".0f"),
                     _fmt(m and m.energy_j_per_token, ".3f"),
                     _fmt(m and m.slo_attainment, ".3f"), "yes" if p.slo_met else "no",
                     _fmt(p.rate_per_gpu, ".3f") if res.objective == "throughput" else
                     _fmt(p.objective_value, ".4g")])
    last = "req/s/GPU" if res.objective == "throughput" else "objective"
    con.print(table("ranked plans (simulated)",
                    ["#", "plan", "GPUs", "TTFT p90 ms", "TPOT p90 ms", "E2E p90 s", "tok/s",
                     "J/token", "SLO attain.", "SLO met", last], rows, right_from=2))
    if res.chosen:
        c = res.chosen
        srows = [[g.label, st.stage, st.layers, f"{st.weights_gib:.1f}", f"{st.activations_gib:.2f}",
                  f"{st.kv_cache_gib:.1f}", f"{st.other_gib:.2f}", g.kv_tokens]
                 for g in c.groups for st in g.stages]
        con.print(table(f"chosen plan: {c.label} -- memory per device (GiB)",
                        ["group", "stage", "layers", "weights", "activations", "KV cache", "other",
                         "KV tokens"], srows, right_from=1))
        total = sum(c.time_breakdown_ms.values()) or 1.0
        con.print(table("time breakdown (all replicas, simulated)", ["component", "ms", "share"],
                        [[k, f"{v:.0f}", f"{v / total:.1%}"] for k, v in
                         sorted(c.time_breakdown_ms.items(), key=lambda kv: -kv[1])]))
    brows = []
    for b in res.baselines:
        p = b.plan
        brows.append([b.name, p.label if p else b.problem, p.gpus if p else "-",
                      _fmt(p and p.objective_value, ".4g"), "yes" if p and p.slo_met else "no",
                      f"{b.gain:.2f}x" if b.gain else "-"])
    con.print(table("baselines (same simulator)", ["baseline", "plan", "GPUs", "objective",
                                                   "SLO met", "chosen is better by"], brows))
    if res.energy_saving and res.energy_saving.saving_fraction is not None:
        e = res.energy_saving
        con.print(f"energy: {e.chosen_j_per_token:.3f} J/token vs {e.latency_plan_j_per_token:.3f} "
                  f"for the latency-optimal plan ({e.latency_plan}): {e.saving_fraction:.1%} saved")
    for o in res.also_simulated:
        m = o.metrics
        con.print(f"chosen plan with {o.engine}: TTFT p90 {_fmt(m.ttft_ms.p90, '.0f')} ms, TPOT p90 "
                  f"{_fmt(m.tpot_ms.p90, '.1f')} ms, {_fmt(m.energy_j_per_token, '.3f')} J/token, "
                  f"SLO {'met' if o.slo_met else 'NOT met'} (simulated)")
    if res.plans:
        for name, cmd in res.plans[0].launch.items():
            con.print(f"[bold]launch ({name})[/]")
            con.print(cmd, markup=False)


@click.command("solve")
@model_option
@cluster_option
@click.option("--trace", type=click.Path(dir_okay=False), default=None,
              help="Replay this request trace (APEX JSONL or Azure CSV).")
@click.option("--workload", type=click.Path(dir_okay=False), default=None,
              help="Synthetic workload YAML (rate, number of requests, length distributions) "
                   "[default: the bundled chat example, 500 requests at 3 req/s].")
@click.option("--slo", "slo_path", type=click.Path(dir_okay=False), default=None,
              help="SLO YAML: TTFT/TPOT/E2E targets, attainment, objective, constraints "
                   "[default: the bundled example, p90 TTFT <= 2 s, p90 TPOT <= 60 ms].")
@click.option("--objective", type=click.Choice(OBJECTIVES), default=None,
              help="What to optimise among SLO-meeting plans [default: the SLO file's].")
@click.option("--top-k", type=click.IntRange(1, 1000), default=DEFAULT_TOP_K, show_default=True,
              help="Plans the CP-SAT model shortlists for simulation.")
@click.option("--exhaustive", is_flag=True,
              help="Simulate every feasible plan instead of the shortlist (slow reference mode).")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="CP-SAT search workers (1 = deterministic) and, when > 1, simulation processes "
                   "(with 1 the simulation pool uses every core; results are identical either way).")
@click.option("--executor", type=click.Choice(["process", "ray", "serial"]), default="process",
              show_default=True, help="Where the shortlist is simulated (ray needs the 'ray' extra).")
@click.option("--time-limit", "time_limit", type=click.FloatRange(0.01, 3600), default=DEFAULT_TIME_LIMIT_S,
              show_default=True, help="CP-SAT deterministic time limit per solve (seconds).")
@click.option("--seed", type=int, default=0, show_default=True, help="CP-SAT random seed.")
@engine_option
@click.option("--also-launch", "also_launch", multiple=True, type=click.Choice(["vllm", "sglang"]),
              help="Also print the chosen plan's launch commands for this engine, with the plan "
                   "simulated on it too (repeatable).")
@json_option
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write the latency / throughput / energy Pareto plot of the simulated plans "
                   "(.png/.svg/.pdf; needs the 'plot' extra).")
def command(model_ref, cluster_ref, trace, workload, slo_path, objective, top_k, exhaustive,
            workers, executor, time_limit, seed, engine_name, also_launch, as_json, plot_path):
    """Find the best parallel plan (DP/PP/TP/EP, weight/KV dtypes, engine limits) for serving a
    model on a cluster, for a workload and SLO, and print how to launch it.

    \b
    How it works: a CP-SAT model picks the top-K plans by an analytic estimate (memory must fit,
    GPUs per pool, your constraints); each is simulated on your workload; the plans are ranked by
    the objective among those that meet the SLO, and compared with two simple baselines.

    \b
    Examples:
      apex-opt solve                       # the bundled example: llama-3.1-70b on 8x H100
      apex-opt solve --model llama-3.1-8b --cluster h100-sxm-1x8 --objective energy
      apex-opt solve --trace my_trace.jsonl --slo my_slo.yaml --json > plan.json

    Exit codes: 0 ok, 2 bad input, 3 no plan meets memory or the SLO (the message names the
    conflicting constraints and verified fixes).
    """
    model, cluster = load_inputs(model_ref, cluster_ref)
    requests = _load_requests(trace, workload)
    slo = _load_slo(slo_path)
    if plot_path:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("plots need the 'plot' extra: pip install 'apex-opt[plot]'",
                             field="--plot", value=plot_path) from None
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True, disable=as_json) as bar:
        task = bar.add_task("searching", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        res = solve(model, cluster, requests, slo, objective=objective, top_k=top_k,
                    exhaustive=exhaustive, workers=workers, executor=executor, seed=seed,
                    time_limit_s=time_limit, model_ref=model_ref, engine=engine_name,
                    also_launch=tuple(also_launch), launcher=make_launcher(model_ref, model, cluster),
                    progress=progress)
    if plot_path:
        from ..report.plot import pareto_plot

        points = [{"label": p.label, "slo_met": p.slo_met, **p.metrics.model_dump(mode="json")}
                  for p in res.plans if p.metrics is not None]
        pareto_plot(points, Path(plot_path), title=f"{res.model} on {res.cluster}")
    if as_json:
        click.echo(to_json(res))
        return
    render_tables(res)
