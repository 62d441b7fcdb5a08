"""The plot a user decides on: the objective against GPUs, and energy per token against the latency
percentile the SLO judges, for every simulated plan.

Each panel draws its Pareto front (fewer GPUs / better objective; lower latency / fewer joules) as
a step line; only the front's plans and the chosen plan are labelled, placed so that no label
overlaps another label or a point; the caption names the model, cluster, engine, workload and SLO.
Green circles met the SLO, red crosses did not; the chosen plan is a star.

:func:`pareto_front` is pure (no matplotlib). :func:`decision_plot` imports matplotlib lazily (the
``plot`` extra), draws with the Agg canvas on a private ``Figure`` (no pyplot global state) and
writes byte-identical files for identical input (no timestamps, fixed SVG hash salt).

A point is a mapping with ``label``, ``slo_met``, ``gpus``, ``objective_value``, ``chosen`` and
``metrics`` (a :class:`apex_opt.sim.metrics.Metrics` dump); metric keys are dotted paths
(``metrics.e2e_s.p90``, ``metrics.energy_j_per_token``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from ..errors import InputError

Direction = Literal["min", "max"]

ENERGY_KEY = "metrics.energy_j_per_token"
_FORMATS = (".png", ".svg", ".pdf")
#: Objective axis: (label, direction) per objective.
OBJECTIVE_AXES: dict[str, tuple[str, Direction]] = {
    "latency": ("mean end-to-end latency (s)", "min"),
    "energy": ("energy (J per output token)", "min"),
    "gpus": ("GPUs", "min"),
    "cost": ("cost per 1M output tokens", "min"),
    "throughput": ("SLO-meeting rate per GPU (req/s/GPU)", "max"),
}
_METRIC_NAMES = {"e2e_s": ("E2E latency", "s"), "ttft_ms": ("TTFT", "ms"),
                 "tpot_ms": ("TPOT", "ms")}
#: Label offsets tried around a point (points), nearest first.
_OFFSETS = [(dx * r, dy * r) for r in (1, 2, 3.2, 4.6, 6.5, 9) for dx, dy in
            ((7, 6), (7, -12), (-7, 6), (-7, -12), (0, 10), (0, -16), (12, -3), (-12, -3))]
#: Points closer than this (pixels) share one label ("A (+2 alike)").
_SAME_SPOT_PX = 4.0


def metric(point: Mapping[str, Any], key: str) -> float | None:
    """Value of ``key`` (a dotted path such as ``e2e_s.p90``) as a finite float, else None."""
    v: Any = point
    for part in key.split("."):
        if not isinstance(v, Mapping) or part not in v:
            return None
        v = v[part]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is no worse than ``b`` everywhere and better somewhere (values already 'minimise')."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points: Sequence[Mapping[str, Any]],
                 keys: Sequence[tuple[str, Direction]]) -> list[int]:
    """Indices (ascending) of the points no other point dominates on ``keys``.

    ``keys`` pairs a metric key with 'min' or 'max'. Points lacking a finite value for any key are
    never on the front; equal points are all kept.
    """
    if not keys:
        raise InputError("pareto_front needs at least one key", field="keys", value=list(keys))
    for k, d in keys:
        if d not in ("min", "max"):
            raise InputError("direction must be 'min' or 'max'", field=f"keys[{k}]", value=d)
    vecs: dict[int, list[float]] = {}
    for i, p in enumerate(points):
        vals = [metric(p, k) for k, _ in keys]
        if all(v is not None for v in vals):
            vecs[i] = [v if d == "min" else -v for v, (_, d) in zip(vals, keys)]  # type: ignore
    return [i for i, v in vecs.items()
            if not any(_dominates(w, v) for j, w in vecs.items() if j != i)]


def _import_matplotlib():
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError("--plot needs the 'plot' extra: pip install 'apex-opt[plot]'") from None
    return matplotlib, Figure, FigureCanvasAgg


def _label_points(ax, renderer, items: list[tuple[float, float, str]],
                  points: list[tuple[float, float]]) -> int:
    """Annotate ``items`` (x, y, text) so that no label overlaps another label, one of the
    ``points`` or the axes border: the first free offset of :data:`_OFFSETS` wins (a thin leader line when far).
    Labels of points at the same spot are merged. Returns how many labels found no free spot
    (those are left out rather than drawn over another)."""
    placed = []
    frame = ax.get_window_extent(renderer)
    pix = [tuple(ax.transData.transform(p)) for p in points]
    misses = 0
    merged: list[tuple[float, float, str, int]] = []
    for x, y, text in items:
        px, py = ax.transData.transform((x, y))
        for j, (mx, my, mt, n) in enumerate(merged):
            qx, qy = ax.transData.transform((mx, my))
            if abs(px - qx) <= _SAME_SPOT_PX and abs(py - qy) <= _SAME_SPOT_PX:
                merged[j] = (mx, my, mt, n + 1)
                break
        else:
            merged.append((x, y, text, 0))
    for x, y, text, more in merged:
        text = f"{text} (+{more} alike)" if more else text
        chosen = None
        for k, (dx, dy) in enumerate(_OFFSETS):
            far = k >= 16
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                            ha="left" if dx > 0 else "right" if dx < 0 else "center",
                            va="bottom" if dy >= 0 else "top", fontsize=7, zorder=5,
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                                  "alpha": 0.8},
                            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.45"} if far else None)
            bb = t.get_window_extent(renderer).padded(2)
            inside = (bb.x0 >= frame.x0 and bb.x1 <= frame.x1 and bb.y0 >= frame.y0
                      and bb.y1 <= frame.y1)
            clear = not any(bb.overlaps(o) for o in placed) and \
                not any(bb.contains(px, py) for px, py in pix)
            if inside and clear:
                chosen = bb
                break
            t.remove()
        if chosen is None:  # nowhere free: leave it out rather than overprint
            misses += 1
            continue
        placed.append(chosen)
    return misses


def short_label(label: str, single_pool: bool) -> str:
    """A plan label fit for a plot: ``2xTP4-wfp8@h100(seqs256,tok2048)`` ->
    ``2xTP4-wfp8 s256/t2048`` (the pool kept when the plan mixes pools)."""
    out = re.sub(r"\(seqs(\d+),tok(\d+)\)", r" s\1/t\2", label)
    if single_pool:
        out = re.sub(r"@[A-Za-z0-9_.-]+", "", out)
    return out


def _panel(ax, renderer, points: Sequence[Mapping[str, Any]], x_key: str, x_dir: Direction,
           y_key: str, y_dir: Direction, xlabel: str, ylabel: str) -> dict:
    """Scatter + Pareto step line + labels (front and chosen plan only) on one axes."""
    idx = [i for i, p in enumerate(points)
           if metric(p, x_key) is not None and metric(p, y_key) is not None]
    front = [i for i in pareto_front(points, [(x_key, x_dir), (y_key, y_dir)]) if i in idx]
    for i in idx:
        p = points[i]
        x, y = metric(p, x_key), metric(p, y_key)
        met = p.get("slo_met")
        color = "tab:green" if met else ("tab:red" if met is False else "tab:gray")
        if p.get("chosen"):
            ax.scatter([x], [y], s=190, c="gold", marker="*", edgecolors="black", linewidths=0.8,
                       zorder=4)
        else:
            ax.scatter([x], [y], s=46 if i in front else 22, c=color,
                       marker="o" if met else "X", edgecolors="black" if i in front else "none",
                       linewidths=0.8, zorder=3)
    pts = sorted((metric(points[i], x_key), metric(points[i], y_key)) for i in front)
    if len(pts) > 1:
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="tab:blue",
                linewidth=1.1, zorder=2)
    elif pts:
        ax.plot([pts[0][0]], [pts[0][1]], color="tab:blue", linewidth=1.1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, linewidth=0.3)
    ax.margins(x=0.18, y=0.18)
    if not idx:
        ax.text(0.5, 0.5, "no plan has these metrics", ha="center", va="center",
                transform=ax.transAxes)
        return {"points": 0, "front": 0, "labels": 0, "overlaps": 0}
    ax.autoscale_view()
    lo, hi = ax.get_xlim()
    ax.set_xlim(max(lo, 0.0) if min(metric(points[i], x_key) for i in idx) >= 0 else lo, hi)
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, 0.0) if min(metric(points[i], y_key) for i in idx) >= 0 else lo, hi)
    labelled = sorted(set(front) | {i for i in idx if points[i].get("chosen")},
                      key=lambda i: (not points[i].get("chosen"), i))  # the chosen plan first
    pools = {m for p in points for m in re.findall(r"@([A-Za-z0-9_.-]+)", str(p.get("label", "")))}
    items = [(metric(points[i], x_key), metric(points[i], y_key),
              short_label(str(points[i].get("label", i)), len(pools) <= 1)) for i in labelled]
    # labels may cover background points (under a translucent box), never a labelled one
    misses = _label_points(ax, renderer, items, [(x, y) for x, y, _t in items])
    return {"points": len(idx), "front": len(front), "labels": len(items), "overlaps": misses}


def _legend(fig) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color="tab:green", label="SLO met"),
               Line2D([], [], marker="X", ls="", color="tab:red", label="SLO missed"),
               Line2D([], [], marker="*", ls="", color="gold", markeredgecolor="black",
                      markersize=11, label="chosen plan"),
               Line2D([], [], color="tab:blue", label="Pareto front")]
    fig.legend(handles=handles, loc="upper right", ncol=4, fontsize=7.5, frameon=False)


def decision_plot(points: list[dict], path: Path, *, objective: str, latency_key: str,
                  caption: str, title: str) -> dict:
    """Write the two-panel decision figure to ``path`` (.png, .svg or .pdf).

    Left: ``objective_value`` against ``gpus``; right: J/token against ``latency_key`` (e.g.
    ``metrics.e2e_s.p90``, the percentile the SLO judges). Returns per-panel counts
    (points, front, labels, overlaps) -- ``overlaps`` is 0 when every label found a free spot."""
    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise InputError(f"plot format must be one of {', '.join(_FORMATS)}", field="--plot",
                         value=str(path))
    if not points:
        raise InputError("nothing to plot: no simulated plans", field="--plot", value=str(path))
    obj_label, obj_dir = OBJECTIVE_AXES.get(objective, (objective, "min"))
    metric_name = latency_key.split(".")[-2] if latency_key.count(".") >= 2 else latency_key
    lname, lunit = _METRIC_NAMES.get(metric_name, (metric_name, ""))
    pct = latency_key.rsplit(".", 1)[-1]
    matplotlib, Figure, FigureCanvasAgg = _import_matplotlib()
    with matplotlib.rc_context({"svg.hashsalt": "apex-opt", "svg.fonttype": "path"}):
        fig = Figure(figsize=(13, 6), dpi=120)
        canvas = FigureCanvasAgg(fig)
        ax_obj, ax_en = fig.subplots(1, 2)
        fig.subplots_adjust(left=0.07, right=0.98, top=0.86, bottom=0.21, wspace=0.22)
        renderer = canvas.get_renderer()
        stats = {
            "objective": _panel(ax_obj, renderer, points, "gpus", "min", "objective_value",
                                obj_dir, "GPUs", obj_label),
            "energy": _panel(ax_en, renderer, points, latency_key, "min", ENERGY_KEY, "min",
                             f"{lname} {pct} ({lunit})", "energy (J per output token)"),
        }
        ax_obj.xaxis.get_major_locator().set_params(integer=True)
        ax_obj.set_title(f"objective ({objective}) vs GPUs", fontsize=9)
        ax_en.set_title(f"energy vs {lname} {pct}", fontsize=9)
        fig.suptitle(title, fontsize=11, x=0.07, ha="left")
        _legend(fig)
        fig.text(0.07, 0.015, caption, fontsize=7.5, va="bottom", ha="left", wrap=True,
                 color="0.2")
        meta = {".png": {"Software": None}, ".svg": {"Date": None},
                ".pdf": {"CreationDate": None, "ModDate": None}}[path.suffix.lower()]
        # written next to the target and renamed over it: a failed write leaves no half file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(tmp, metadata=meta, format=path.suffix.lower()[1:])
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InputError(f"cannot write plot ({exc.__class__.__name__}: {exc})",
                             source=str(path)) from None
    return stats


def solve_plot(res: Any, path: Path) -> dict:
    """:func:`decision_plot` of a :class:`apex_opt.search.SolveResult`: every simulated plan,
    the chosen one starred, latency at the SLO's percentile, caption from the result."""
    from .tables import latency_columns, slo_line, workload_line

    cols = {k: pct for k, _h, pct, _u, _s in latency_columns(res.slo)}
    key = "e2e_s"
    for k in ("e2e_s", "ttft_ms", "tpot_ms"):
        if (res.slo or {}).get(k) is not None:
            key = k
            break
    pts = [{"label": p.label, "slo_met": p.slo_met, "gpus": p.gpus,
            "objective_value": p.objective_value, "chosen": p.rank == 1,
            "metrics": p.metrics.model_dump(mode="json") if p.metrics is not None else None}
           for p in res.plans]
    engine = getattr(res.solver, "engine", None)
    caption = "\n".join([f"{res.model} on {res.cluster}" + (f" · engine {engine}" if engine else "")
                         + f" · objective {res.objective} · {len(pts)} simulated plans (labels: "
                         f"Pareto front and chosen plan; '+n alike' = n more plans at that point; "
                         f"sN/tM = max_num_seqs / max_num_batched_tokens)",
                         workload_line(res.workload), slo_line(res.slo)])
    return decision_plot(pts, path, objective=res.objective,
                         latency_key=f"metrics.{key}.p{cols[key]}", caption=caption,
                         title=f"{res.model} on {res.cluster}: simulated plans")


