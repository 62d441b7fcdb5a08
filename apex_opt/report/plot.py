"""Pareto plot of candidate plans: latency vs throughput and energy vs throughput.

:func:`pareto_front` is pure (no matplotlib). :func:`pareto_plot` imports matplotlib lazily (the
``plot`` extra), draws with the Agg canvas on a private ``Figure`` (no pyplot global state) and
writes byte-identical files for identical input (no timestamps, fixed SVG hash salt).

A point is a mapping with ``label``, ``slo_met`` and the metric keys; keys may be dotted paths
into nested mappings, so a :class:`apex_opt.sim.metrics.Metrics` dump plus a label works as-is
(``e2e_s.p90``, ``throughput_tokens_per_s``, ``energy_j_per_token``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from ..errors import InputError

Direction = Literal["min", "max"]

LATENCY_KEY = "e2e_s.p90"
THROUGHPUT_KEY = "throughput_tokens_per_s"
ENERGY_KEY = "energy_j_per_token"
_FORMATS = (".png", ".svg", ".pdf")
_AXIS_LABELS = {
    "e2e_s.p90": "E2E latency p90 (s)", "e2e_s.p50": "E2E latency p50 (s)",
    "e2e_s.p99": "E2E latency p99 (s)", "ttft_ms.p90": "TTFT p90 (ms)",
    "ttft_ms.p99": "TTFT p99 (ms)", "tpot_ms.p90": "TPOT p90 (ms)", "tpot_ms.p99": "TPOT p99 (ms)",
    "throughput_tokens_per_s": "output throughput (tokens/s)",
    "throughput_total_tokens_per_s": "total throughput (tokens/s)",
    "energy_j_per_token": "energy (J/token)",
}


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


def _panel(ax, points: Sequence[Mapping[str, Any]], x_key: str, y_key: str) -> int:
    """Scatter of ``y_key`` (minimised) against ``x_key`` (maximised), front as a step line.

    Returns how many points were drawn.
    """
    idx = [i for i, p in enumerate(points)
           if metric(p, x_key) is not None and metric(p, y_key) is not None]
    front = set(pareto_front(points, [(x_key, "max"), (y_key, "min")]))
    for i in idx:
        p = points[i]
        x, y = metric(p, x_key), metric(p, y_key)
        met = p.get("slo_met")
        color = "tab:green" if met else ("tab:red" if met is False else "tab:gray")
        ax.scatter([x], [y], s=60 if i in front else 25, c=color, marker="o" if met else "X",
                   edgecolors="black" if i in front else "none", linewidths=1.0, zorder=3)
        ax.annotate(str(p.get("label", i)), (x, y), textcoords="offset points", xytext=(4, 4),
                    fontsize=7, zorder=4)
    pts = sorted((metric(points[i], x_key), metric(points[i], y_key)) for i in front)
    if pts:
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="pre", color="tab:blue",
                linewidth=1.2, zorder=2, label="Pareto front")
        for color, marker, text in (("tab:green", "o", "SLO met"), ("tab:red", "X", "SLO missed")):
            ax.scatter([], [], c=color, marker=marker, s=25, label=text)
        ax.legend(loc="best", fontsize=7)
    ax.set_xlabel(_AXIS_LABELS.get(x_key, x_key))
    ax.set_ylabel(_AXIS_LABELS.get(y_key, y_key))
    ax.grid(True, linewidth=0.3)
    if not idx:
        ax.text(0.5, 0.5, f"no points with {y_key}", ha="center", va="center",
                transform=ax.transAxes)
    return len(idx)


def pareto_plot(points: list[dict], path: Path, *, title: str, latency_key: str = LATENCY_KEY,
                throughput_key: str = THROUGHPUT_KEY, energy_key: str = ENERGY_KEY) -> Path:
    """Write a two-panel figure (latency vs throughput, energy vs throughput) to ``path``.

    Green circles met the SLO, red crosses did not (gray: unknown); points on each panel's Pareto
    front (max throughput, min latency / energy) are outlined and joined by a step line. The format
    follows the suffix (.png, .svg, .pdf). Returns ``path``.
    """
    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise InputError(f"plot format must be one of {', '.join(_FORMATS)}", field="--plot",
                         value=str(path))
    if not points:
        raise InputError("nothing to plot: no candidate plans", field="--plot", value=str(path))
    matplotlib, Figure, FigureCanvasAgg = _import_matplotlib()
    with matplotlib.rc_context({"svg.hashsalt": "apex-opt", "svg.fonttype": "path"}):
        fig = Figure(figsize=(11, 4.5), dpi=120)
        FigureCanvasAgg(fig)
        ax_lat, ax_en = fig.subplots(1, 2)
        _panel(ax_lat, points, throughput_key, latency_key)
        _panel(ax_en, points, throughput_key, energy_key)
        ax_lat.set_title("latency vs throughput", fontsize=9)
        ax_en.set_title("energy vs throughput", fontsize=9)
        fig.suptitle(title)
        fig.tight_layout()
        meta = {".png": {"Software": None}, ".svg": {"Date": None},
                ".pdf": {"CreationDate": None, "ModDate": None}}[path.suffix.lower()]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, metadata=meta)
        except OSError as exc:
            raise InputError(f"cannot write plot ({exc.__class__.__name__}: {exc})",
                             source=str(path)) from None
    return path
