"""`apex-opt solve`: find the best serving plan for a workload and SLO, and how to launch it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import InfeasibleError, InputError
from ..registry import data_dir
from ..report.render import to_json
from ..search import DEFAULT_TIME_LIMIT_S, DEFAULT_TOP_K, OBJECTIVES, SolveResult, solve
from .common import (CLI_SOURCE, FiniteFloatRange, NonEmptyPath, apply_client_ramp,
                     apply_sampling, check_max_model_len, check_request_lengths, cluster_option,
                     engine_option, flag_for, json_option, load_engine_flag, load_inputs,
                     model_option, sampling_options, sort_trace_option, warn_thin_percentiles)

DEFAULT_WORKLOAD = "default-workload.yaml"
DEFAULT_SLO = "default-slo.yaml"


def _load_requests(trace: str | None, workload: str | None, sort_trace: bool = False,
                   concurrency: int | None = None):
    from ..sim.workload import generate, load_trace
    from ..specs.workload import load_workload

    if trace and workload:
        raise InputError("give either --trace or --workload, not both", source=CLI_SOURCE,
                         field="--trace", value=trace)
    if sort_trace and not trace:
        raise InputError("--sort-trace only applies to --trace", source=CLI_SOURCE,
                         field="--sort-trace", value=True)
    if trace:
        req = load_trace(trace, sort=sort_trace)
    else:
        req = generate(load_workload(workload or str(data_dir("examples") / DEFAULT_WORKLOAD)))
    return req.with_concurrency(concurrency) if concurrency is not None else req


def _load_slo(path: str | None):
    from ..specs.slo import load_slo

    return load_slo(path or str(data_dir("examples") / DEFAULT_SLO))


def make_launcher(model_ref: str, model, cluster, *, hf_id: str | None = None,
                  max_model_len: int | None = None, keep: dict | None = None):
    """``launcher(plan, engine_name)`` for :func:`apex_opt.search.solve`: the shell script that
    starts every process of the plan with that engine (``keep`` collects the structured
    :class:`~apex_opt.report.launch.LaunchPlan` per (plan label, engine) for ``--json``)."""
    from ..report.launch import launch_plan

    def launcher(plan, engine_name: str) -> str:
        lp = launch_plan(model_ref, model, plan, engine=engine_name, cluster=cluster, hf_id=hf_id,
                         max_model_len=max_model_len)
        if keep is not None:
            keep[(plan.label(), engine_name)] = lp
        return lp.script

    return launcher


def parse_attention_dp(value: str) -> int | None:
    """``--attention-dp``: auto -> None (every size the engine and each MoE shape allow), off ->
    1, N -> N."""
    v = value.strip().lower()
    if v == "auto":
        return None
    if v == "off":
        return 1
    if v.isdigit() and int(v) >= 1:
        return int(v)
    raise InputError("use auto, off or a size N >= 1 (e.g. --attention-dp 8)",
                     source=CLI_SOURCE, field="--attention-dp", value=value)


def _check_plot_path(plot_path: str) -> None:
    """--plot: a format the plot is written in, into a folder that exists or can be made and is
    writable, with the 'plot' extra installed -- checked before the search, not after it."""
    import importlib.util
    import os

    from ..report.plot import _FORMATS

    path = Path(plot_path)
    if path.suffix.lower() not in _FORMATS:
        raise InputError(f"the plot format is taken from the suffix: use one of "
                         f"{', '.join(_FORMATS)}", source=CLI_SOURCE, field="--plot",
                         value=plot_path)
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError("cannot write the plot: the file is not writable", source=CLI_SOURCE,
                         field="--plot", value=plot_path)
    anc = next(a for a in path.absolute().parents if a.exists())
    if not anc.is_dir():
        raise InputError(f"cannot write the plot: {anc} is a file, not a folder",
                         source=CLI_SOURCE, field="--plot", value=plot_path)
    if not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the plot: folder {anc} is not writable",
                         source=CLI_SOURCE, field="--plot", value=plot_path)
    if importlib.util.find_spec("matplotlib") is None:
        raise InputError("plots need the 'plot' extra: pip install 'apex-opt[plot]'",
                         source=CLI_SOURCE, field="--plot", value=plot_path)


def _where_the_user_wrote_it(exc: InputError, files: dict[str, str],
                             set_in: dict[str, str]) -> InputError:
    """``exc`` naming what the user wrote: a file the library knows by a label (the cluster's
    name, the workload's ``synthetic:<name>``: ``files[label]``) by its path; an error without a
    source, about a value of the command line, by its flag -- or, for a field the user may set
    in a file (``set_in[field]``), by that file."""
    if exc.source is None:
        source = set_in.get(str(exc.field), CLI_SOURCE)
        field = flag_for(exc.field, {}) if source == CLI_SOURCE else exc.field
        return InputError(exc.reason, source=source, field=field, value=exc.value)
    if files.get(exc.source, exc.source) != exc.source:
        return InputError(exc.reason, source=files[exc.source], field=exc.field, value=exc.value)
    return exc


def _fmt(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def render_tables(res: SolveResult) -> None:
    """Rich tables of a :class:`SolveResult` on stdout (apex_opt/report/tables.py)."""
    from ..report.tables import render_solve

    render_solve(res)


@click.command("solve")
@model_option
@cluster_option
@click.option("--trace", type=NonEmptyPath(dir_okay=False), default=None,
              help="Replay this request trace (APEX JSONL, Mooncake JSONL with hash_ids, or "
                   "Azure CSV; detected from the content).")
@sort_trace_option
@click.option("--concurrency", type=click.IntRange(1, 1_000_000), default=None,
              help="Serve the workload's requests as a closed loop of N clients (each sends its "
                   "next request when its previous one finished) instead of at their arrival "
                   "times.")
@click.option("--client-ramp", "client_ramp", type=FiniteFloatRange(0, 1e6), default=None,
              metavar="SECONDS",
              help="Closed loop: stagger the clients' first requests evenly over this many "
                   "seconds instead of all at t=0 [default: 0, or the --workload file's ramp_s].")
@click.option("--workload", type=NonEmptyPath(dir_okay=False), default=None,
              help="Synthetic workload YAML (rate, number of requests, length distributions) "
                   "[default: the bundled chat example, 500 requests at 3 req/s].")
@sampling_options
@click.option("--slo", "slo_path", type=NonEmptyPath(dir_okay=False), default=None,
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
@click.option("--time-limit", "time_limit", type=FiniteFloatRange(0.01, 3600), default=DEFAULT_TIME_LIMIT_S,
              show_default=True, help="CP-SAT deterministic time limit per solve (seconds).")
@click.option("--seed", type=int, default=0, show_default=True, help="CP-SAT random seed.")
@engine_option
@click.option("--also-launch", "also_launch", multiple=True, type=click.Choice(["vllm", "sglang"]),
              help="Also print the chosen plan's launch commands for this engine, with the plan "
                   "simulated on it too (repeatable).")
@click.option("--max-model-len", "max_model_len", type=click.IntRange(16, 10_000_000),
              default=None,
              help="Longest request (prompt + output tokens) the deployment must accept; every "
                   "plan's KV cache must hold one such request and the launch commands use it "
                   "[default: the model's maximum when it fits, else the largest that fits, with "
                   "a note]. Example: --max-model-len 32768.")
@click.option("--hf-id", "hf_id", default=None, metavar="ORG/NAME|DIR",
              help="Model argument of the launch commands (Hub repo or local weights folder), for "
                   "--model given as a local config.json [default: a bundled model's Hub repo, "
                   "e.g. meta-llama/Llama-3.1-70B-Instruct; for a config.json path, its folder]. "
                   "Example: --hf-id hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4.")
@click.option("--attention-dp", "attention_dp", default="auto", show_default=True,
              metavar="auto|off|N",
              help="Data-parallel attention for mixture-of-experts models (SGLang "
                   "--enable-dp-attention, vLLM V1 --data-parallel-size with the MoE over the "
                   "whole TP group): auto searches every size that divides TP on engines that run "
                   "it; off keeps attention tensor-parallel; N searches only N attention ranks "
                   "per replica. The search also tries all-to-all MoE dispatch (DeepEP, label "
                   "A2A) for DP-attention shapes whose EP spans the TP group, TP degrees only DP "
                   "attention can run (TP72 on a GB200 NVL72), and EPLB redundant expert slots "
                   "(label R<N>) where EP over the whole TP group does not divide the experts, "
                   "on engines that run them. Example: --attention-dp 8.")
@json_option
@click.option("--plot", "plot_path", type=NonEmptyPath(dir_okay=False), default=None,
              help="Write the decision plot of the simulated plans: objective vs GPUs and "
                   "J/token vs the SLO's latency percentile, Pareto fronts, the chosen plan "
                   "starred (.png/.svg/.pdf; needs the 'plot' extra). Example: --plot plans.png")
def command(model_ref, cluster_ref, trace, sort_trace, concurrency, client_ramp, workload, slo_path, objective, top_k, exhaustive,
            workers, executor, time_limit, seed, engine_name, also_launch, max_model_len, hf_id,
            attention_dp, as_json, plot_path, sampling_top_p, sampling_top_k, max_tokens):
    """Find the best parallel plan (DP/PP/TP/EP, attention DP, weight/KV dtypes, engine limits)
    for serving a model on a cluster, for a workload and SLO, and print how to launch it.

    \b
    How it works: a CP-SAT model picks the top-K plans by an analytic estimate (memory must fit,
    GPUs per pool, your constraints); each is simulated on your workload; the plans are ranked by
    the objective among those that meet the SLO, and compared with two simple baselines.

    \b
    Examples:
      apex-opt solve                       # the bundled example: llama-3.1-70b on 8x H100
      apex-opt solve --model llama-3.1-8b --cluster h100-sxm-1x8 --objective energy
      apex-opt solve --trace my_trace.jsonl --slo my_slo.yaml --json > plan.json
      apex-opt solve --model ./my-model/config.json --hf-id my-org/my-model \\
          --cluster my-cluster.yaml --trace azure.csv --max-model-len 32768 --plot plans.png

    The launch commands are a shell script: one labelled block per process (node, pool,
    replicas, GPUs, port), to paste on the node it names; `--json` adds `launch_plans` with
    each process's node, GPU ids, port, env and argv.

    Exit codes: 0 ok, 2 bad input, 3 no plan meets memory or the SLO (the message names the
    conflicting constraints and verified fixes; with --json the document has status,
    diagnosis, fixes and the closest simulated plans).
    """
    if hf_id is not None and not hf_id.strip():
        raise InputError("empty model id for the launch commands; give ORG/NAME or a weights "
                         "folder, or leave --hf-id out", source=CLI_SOURCE, field="--hf-id",
                         value=hf_id)
    adp = parse_attention_dp(attention_dp)
    model, cluster = load_inputs(model_ref, cluster_ref)
    requests = _load_requests(trace, workload, sort_trace, concurrency)
    requests = apply_client_ramp(requests, client_ramp)
    requests = apply_sampling(requests, sampling_top_p, sampling_top_k, max_tokens)
    slo = _load_slo(slo_path)
    warn_thin_percentiles(slo, requests, slo_path or DEFAULT_SLO)
    names = [p.name for p in cluster.pools]
    unknown = [p for p in (slo.constraints.pools or []) if p not in names]
    if unknown:  # a misspelt pool is bad input, not an infeasible request
        raise InputError(f"unknown pool {unknown[0]!r}; cluster {cluster.name} has "
                         f"{', '.join(names)}", source=slo_path or DEFAULT_SLO,
                         field="constraints.pools", value=unknown[0])
    if exhaustive and click.get_current_context().get_parameter_source("top_k") != \
            click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--top-k sets the shortlist; --exhaustive simulates every feasible "
                               "plan instead: give one of them")
    check_max_model_len(model, max_model_len)
    if max_model_len is not None:  # the CLI flag overrides the SLO file's constraint
        slo = slo.model_copy(update={"constraints": slo.constraints.model_copy(
            update={"max_model_len": max_model_len})})
    check_request_lengths(requests, model, slo.constraints.max_model_len,
                          source=trace or workload or DEFAULT_WORKLOAD,
                          field="input + output tokens" if trace else "prompt_len + output_len",
                          exclusive=load_engine_flag(engine_name).context_limit_exclusive)
    if plot_path:  # refuse an unwritable path now, not after the whole search
        _check_plot_path(plot_path)
    from rich.console import Console
    from rich.progress import Progress

    # off unless stderr is a terminal: elsewhere rich leaves an empty line on stderr, which
    # would stand before the one error line of a bad input found during the search
    with Progress(console=Console(stderr=True), transient=True,
                  disable=as_json or not sys.stderr.isatty()) as bar:
        task = bar.add_task("searching", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        kept: dict = {}
        launcher = make_launcher(model_ref, model, cluster, hf_id=hf_id, keep=kept,
                                 max_model_len=slo.constraints.max_model_len)
        try:
            res = solve(model, cluster, requests, slo, objective=objective, top_k=top_k,
                        exhaustive=exhaustive, workers=workers, executor=executor, seed=seed,
                        time_limit_s=time_limit, model_ref=model_ref, engine=engine_name,
                        also_launch=tuple(also_launch), launcher=launcher, progress=progress,
                        attention_dp=adp)
        except InputError as exc:
            files = {cluster.name: cluster_ref,
                     requests.source: trace or workload or DEFAULT_WORKLOAD}
            # the objective comes from --objective, else from the SLO file
            set_in = {"objective": CLI_SOURCE if objective is not None else
                      slo_path or DEFAULT_SLO}
            raise _where_the_user_wrote_it(exc, files, set_in) from None
        except InfeasibleError as exc:
            from ..report.tables import infeasible_document, render_infeasible

            doc = infeasible_document(exc, model=model.name, cluster=cluster.name, slo=slo,
                                      workload=requests.summary())
            if as_json:  # still one machine-readable document, and exit 3
                click.echo(to_json(doc))
                sys.exit(exc.exit_code)
            render_infeasible(doc)
            raise
    if plot_path:  # objective vs GPUs and J/token vs the SLO's latency percentile
        from ..report.plot import solve_plot

        solve_plot(res, Path(plot_path))
    if as_json:
        doc = res.model_dump(mode="json")
        if res.plans:  # structured launch data (per process) of the chosen plan, per engine
            chosen = res.plans[0].launch
            doc["launch_plans"] = {e: lp.model_dump(mode="json") for (_label, e), lp in
                                   kept.items() if chosen.get(e) == lp.script}
        click.echo(to_json(doc))
        return
    render_tables(res)
