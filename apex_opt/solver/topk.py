"""Top-K distinct plans: solve, record the plan, add a no-good cut excluding exactly it, re-solve.

(Enumerating solutions of one solve with an objective only returns improving solutions, so each
of the K plans is an optimum of its own re-solve.)
"""

from __future__ import annotations

from dataclasses import dataclass


from .model import PlanModel


@dataclass(frozen=True)
class TopKResult:
    """Plans found (each a tuple of (candidate index, replicas)), best first, and the status of the
    first solve."""

    plans: list[tuple[tuple[int, int], ...]]
    status: str
    objective_values: list[float]


def top_k(model: PlanModel, k: int, *, workers: int = 1, seed: int = 0,
          time_limit_s: float = 10.0) -> TopKResult:
    """The ``k`` best distinct plans of ``model`` (fewer when fewer exist)."""
    from ortools.sat.python import cp_model

    plans, values, first = [], [], None
    for _ in range(k):
        solver = model.solver(workers=workers, seed=seed, time_limit_s=time_limit_s)
        status = solver.solve(model.m)
        if first is None:
            first = solver.status_name(status)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            break
        sol = model.solution(solver)
        plans.append(sol)
        values.append(solver.objective_value)
        model.add_nogood(sol)
    return TopKResult(plans, first or "UNKNOWN", values)
