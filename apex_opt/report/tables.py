"""Tables that explain themselves: the solve renderer and the header lines simulate shares.

* Latency columns follow the SLO: a p99 TTFT target gives a "TTFT p99" column (percentiles the
  metrics carry: 50, 90, 99; another percentile shows the nearest one at or above it and says so).
* One line says how the SLO was judged: each percentile target holds when at least p % of ALL
  requests (dropped ones count as misses) meet it, and the attainment is the share of requests
  meeting every target at once.
* The header names the workload actually used (a bundled default says so), with its size, rate
  and lengths; dropped requests sit next to the latencies.

Pure formatting over the result models (``SolveResult``, ``SimulationResult``): no simulation.
"""

from __future__ import annotations

from typing import Any, Mapping

from .render import console, table

#: Percentiles the metrics carry (apex_opt.sim.metrics.Stats).
STAT_PERCENTILES = (50, 90, 99)
_DEFAULT_PCT = 90
_LAT = (("ttft_ms", "TTFT", "ms", ".0f"), ("tpot_ms", "TPOT", "ms", ".1f"),
        ("e2e_s", "E2E", "s", ".2f"))


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def stat_percentile(p: float) -> int:
    """The carried percentile shown for an SLO percentile ``p`` (the nearest at or above it)."""
    return next((s for s in STAT_PERCENTILES if s >= p - 1e-9), STAT_PERCENTILES[-1])


def latency_columns(slo: Mapping | Any | None) -> list[tuple[str, str, int, str, str]]:
    """(metric key, header, carried percentile, unit, format) per latency column: the SLO's
    percentile for a targeted metric, p90 otherwise."""
    out = []
    for key, name, unit, spec in _LAT:
        t = _get(slo, key)
        pct = stat_percentile(float(_get(t, "percentile"))) if t is not None else _DEFAULT_PCT
        out.append((key, f"{name} p{pct} {unit}", pct, unit, spec))
    return out


def slo_line(slo: Mapping | Any | None) -> str:
    """One line: what the SLO is and how it was judged."""
    targets = []
    for key, name, unit, _ in _LAT:
        t = _get(slo, key)
        if t is None:
            continue
        p = float(_get(t, "percentile"))
        shown = stat_percentile(p)
        extra = "" if shown == p else f" (column shows p{shown})"
        targets.append(f"{name} p{p:g} <= {float(_get(t, 'target')):g} {unit}{extra}")
    if not targets:
        return "SLO: no latency targets (only the objective and constraints apply)"
    att = float(_get(slo, "attainment") or 0.9)
    return (f"SLO: {', '.join(targets)}; met when each percentile holds over all requests "
            f"(dropped = miss) and >= {att:.0%} meet every target at once (attainment)")


def workload_line(w: Mapping | Any) -> str:
    """The workload actually used, e.g. ``workload: bundled example default-workload.yaml ...``."""
    src = str(_get(w, "source") or "?")
    if "examples" in src.replace("\\", "/") and src.endswith(".yaml"):
        src = f"bundled default {src.replace(chr(92), '/').rsplit('/', 1)[-1]}"
    n = _get(w, "num_requests")
    parts = [f"{n:,} requests" if isinstance(n, int) else "? requests"]
    rate, conc = _get(w, "rate_req_s"), _get(w, "concurrency")
    if conc:
        ramp = _get(w, "client_ramp_s")
        parts.append(f"closed loop of {conc} clients"
                     + (f" starting over {ramp:.3g} s" if ramp else ""))
    elif rate is not None:
        parts.append(f"{rate:.3g} req/s")
    pt, ot = _get(w, "prompt_tokens"), _get(w, "output_tokens")
    if pt is not None and _get(pt, "mean") is not None:
        parts.append(f"prompt mean {_get(pt, 'mean'):,.0f} / max {_get(pt, 'max'):,.0f} tokens")
    if ot is not None and _get(ot, "mean") is not None:
        parts.append(f"output mean {_get(ot, 'mean'):,.0f} / max {_get(ot, 'max'):,.0f} tokens")
    mt = _get(w, "max_tokens")
    if mt is not None:  # what the clients declare, when not each request's own output length
        parts.append("no max_tokens sent" if mt == "none" else f"max_tokens {mt:,} sent")
    reuse, total = _get(w, "prefix_reuse_tokens"), _get(w, "total_prompt_tokens")
    if reuse and total:  # what an unbounded prefix cache could reuse
        parts.append(f"{reuse / total * 100:.0f} % of prompt tokens are repeated prefixes")
    return f"workload: {src} ({', '.join(parts)})"


def _lat_cells(m: Any, cols) -> list[str]:
    cells = []
    for key, _h, pct, _u, spec in cols:
        cells.append(_fmt(_get(_get(m, key), f"p{pct}"), spec))
    return cells


def _dropped(m: Any) -> str:
    if m is None:
        return "-"
    n, d = _get(m, "num_requests"), _get(m, "num_dropped")
    return f"{d:,}" if not n else f"{d:,} ({d / n:.0%})" if d else "0"


# ---------------------------------------------------------------------------------- solve
def render_solve(res: Any) -> None:
    """Rich tables of a :class:`apex_opt.search.SolveResult` on stdout."""
    con = console()
    s = res.solver
    engine = getattr(s, "engine", None)
    con.print(f"{res.model} on {res.cluster} · objective {res.objective}"
              + (f" · engine {engine}" if engine else "")
              + f" · {s.plans_simulated} of {s.plans_feasible} feasible plans simulated "
              f"({s.candidates} replica candidates, CP-SAT {s.status}, {s.wall_s:.2f} s)")
    con.print(workload_line(res.workload))
    con.print(slo_line(res.slo))
    cols = latency_columns(res.slo)
    rows = []
    for p in res.plans:
        m = p.metrics
        rows.append([p.rank, p.label, p.gpus, *_lat_cells(m, cols), _dropped(m),
                     _fmt(m and m.throughput_tokens_per_s, ".0f"),
                     _fmt(m and m.energy_j_per_token, ".3f"),
                     _fmt(m and m.slo_attainment, ".3f"),
                     "?" if p.slo_met is None else "yes" if p.slo_met else "no",
                     # a rate search stopped once the plan could not win: below the bound
                     f"< {below / p.gpus:.3f}" if (below := getattr(p, "rate_below_req_s", None))
                     else _fmt(p.rate_per_gpu, ".3f") if res.objective == "throughput" else
                     _fmt(p.objective_value, ".4g")])
    last = "req/s/GPU" if res.objective == "throughput" else _unit(res.objective)
    n = 3 + len(cols)  # index of "dropped"
    con.print(table("ranked plans (simulated)",
                    ["#", "plan", "GPUs", *[c[1] for c in cols], "dropped", "tok/s", "J/token",
                     "attain.", "SLO met", last], rows, right_from=2, no_wrap=(0,),
                    # on a narrow terminal: tok/s goes first, then J/token, dropped, attain.
                    optional=(n + 3, n, n + 2, n + 1)))
    if res.chosen:
        c = res.chosen
        srows = [[g.label, st.stage, st.layers, f"{st.weights_gib:.1f}", f"{st.activations_gib:.2f}",
                  f"{st.kv_cache_gib:.1f}", f"{st.other_gib:.2f}", f"{g.kv_tokens:,}"]
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
    e = getattr(res, "energy_saving", None)
    if e and e.saving_fraction is not None:
        given = (f", mean E2E {e.chosen_e2e_s:.2f} s vs {e.latency_plan_e2e_s:.2f} s"
                 if e.chosen_e2e_s is not None and e.latency_plan_e2e_s is not None else "")
        con.print(f"energy: {e.chosen_j_per_token:.3f} J/token vs {e.latency_plan_j_per_token:.3f} "
                  f"for the latency-optimal plan ({e.latency_plan}): {e.saving_fraction:.1%} saved"
                  f"{given}", soft_wrap=True)
        if e.default_clock_j_per_token and e.chosen_j_per_token is not None:
            own = 1 - e.chosen_j_per_token / e.default_clock_j_per_token
            con.print(f"GPU setting alone: {e.chosen_j_per_token:.3f} vs "
                      f"{e.default_clock_j_per_token:.3f} J/token for the same plan at the default "
                      f"clock ({e.default_clock_plan}): {own:.1%} saved, mean E2E "
                      f"{e.chosen_e2e_s:.2f} s vs {e.default_clock_e2e_s:.2f} s", soft_wrap=True)
    for o in getattr(res, "also_simulated", ()) or ():
        m = o.metrics
        lat = ", ".join(f"{h.rsplit(' ', 1)[0]} {_fmt(_get(_get(m, k), f'p{pct}'), spec)} {u}"
                        for k, h, pct, u, spec in cols)
        con.print(f"chosen plan with {o.engine}: {lat}, {_fmt(m.energy_j_per_token, '.3f')} "
                  f"J/token, SLO {'met' if o.slo_met else 'NOT met'} (simulated)")
    if res.plans:
        for name, cmd in res.plans[0].launch.items():
            con.print(f"[bold]launch ({name})[/]")
            con.print(cmd, markup=False, soft_wrap=True)


def _unit(objective: str) -> str:
    return {"latency": "obj: E2E mean s", "energy": "obj: J/token", "gpus": "obj: GPUs",
            "cost": "obj: $/Mtok"}.get(objective, "objective")


def render_infeasible(doc: Mapping) -> None:
    """The closest simulated plans of an infeasible solve (tables; the error line follows)."""
    plans = doc.get("closest_plans") or []
    if not plans:
        return
    con = console()
    slo = doc.get("slo")
    cols = latency_columns(slo)
    # numbered by closeness (their `rank` field is 0: ranks number the plans that meet the SLO)
    rows = [[i, p.get("label"), p.get("gpus"), *_lat_cells(p.get("metrics"), cols),
             _dropped(p.get("metrics")), _fmt(_get(p.get("metrics"), "slo_attainment"), ".3f")]
            for i, p in enumerate(plans, 1)]
    con.print(table("closest simulated plans (none meets the SLO)",
                    ["#", "plan", "GPUs", *[c[1] for c in cols], "dropped", "SLO attain."], rows,
                    right_from=2))


# ---------------------------------------------------------------------------------- infeasible
#: Version of the infeasible `solve --json` document.
INFEASIBLE_SCHEMA_VERSION = 1


def infeasible_document(exc: Any, *, model: str, cluster: str, slo: Any, workload: Any) -> dict:
    """The machine-readable document of an infeasible solve: status, diagnosis (the one-line
    explanation), the conflicting constraint groups, the verified fixes and the closest simulated
    plans (when the search got as far as simulating)."""
    details = dict(getattr(exc, "details", {}) or {})
    dump = (lambda x: x.model_dump(mode="json") if hasattr(x, "model_dump") else x)
    closest = [dump(p) for p in details.pop("closest_plans", []) or []]
    return {"schema_version": INFEASIBLE_SCHEMA_VERSION, "status": "infeasible",
            "model": model, "cluster": cluster,
            "diagnosis": getattr(exc, "explanation", str(exc)),
            "stage": details.pop("stage", None) or ("simulation" if closest else "memory/constraints"),
            "conflicting_groups": details.pop("conflicting_groups", []),
            "fixes": details.pop("fixes", []), "closest_plans": closest,
            "slo": dump(slo), "workload": dump(workload), "details": details}
