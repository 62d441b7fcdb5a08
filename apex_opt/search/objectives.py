"""What each objective optimises, measured on a simulation, and how plans are ranked.

* ``latency``: mean end-to-end latency (s) at the workload's rate -- lower is better;
* ``energy``: GPU energy per output token (J/token) at the workload's rate, counting the idle
  power of every GPU the plan allocates (busy or not) -- lower is better;
* ``gpus``: GPUs the plan allocates -- fewer is better (ties: lower latency);
* ``throughput``: the highest request rate (req/s) the plan sustains within the SLO on the
  user's cluster -- higher is better (ties: fewer GPUs);
* ``cost``: $ per million output tokens at the workload's rate: the GPU-hours of the GPUs the
  plan allocates at the cluster's ``gpu_price_per_hour`` plus the energy of its nodes (GPUs +
  host, x PUE) at ``electricity_price_per_kwh`` -- lower is better.

Only plans whose simulation meets the SLO compete; the rest rank after them by attainment.
"""

from __future__ import annotations

import math

from ..sim.metrics import Metrics
from .results import PlanOut

OBJECTIVES = ("latency", "throughput", "energy", "gpus", "cost")
#: Objectives where a larger value is better.
MAXIMISE = frozenset({"throughput"})


def objective_value(objective: str, m: Metrics | None, gpus: int, rate: float | None,
                    cost: float | None = None) -> float | None:
    if m is None:
        return None
    if objective == "cost":
        return cost
    if objective == "latency":
        return m.e2e_s.mean
    if objective == "energy":
        return m.energy_j_per_token
    if objective == "gpus":
        return float(gpus)
    return rate


def rank_key(objective: str, p: PlanOut) -> tuple:
    met = p.slo_met is not False
    v = p.objective_value
    inf = float("inf")
    if objective in MAXIMISE:
        main = -(v or 0.0)
    else:
        main = v if v is not None else inf
    lat = p.metrics.e2e_s.mean if p.metrics and p.metrics.e2e_s.mean is not None else inf
    att = -(p.metrics.slo_attainment or 0.0) if p.metrics else 0.0
    return (not met, main if met else att, lat, p.gpus, p.label)


def better(objective: str, a: float, b: float) -> float:
    """How many times ``a`` is better than ``b`` (> 1 = better)."""
    if objective in MAXIMISE:
        return a / b if b > 0 else math.inf
    return b / a if a > 0 else math.inf
