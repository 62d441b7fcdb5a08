"""Rate search of the ``throughput`` objective: the highest arrival rate (as a factor of the
workload's own rate; the trace's arrival times are compressed or stretched, lengths kept) at
which a plan still meets the SLO."""

from __future__ import annotations

import math
from typing import Callable, TypeVar

M = TypeVar("M")

#: Bisection steps (simulations) per plan, and the lowest factor tried.
RATE_STEPS = 9
RATE_MIN_FACTOR = 1 / 64
#: Stop bisecting once the bracket is this tight (relative).
RATE_TOLERANCE = 0.01


def highest_rate(sim: Callable[[float], M], met: Callable[[M], bool], guess: float,
                 steps: int = RATE_STEPS) -> tuple[M, float]:
    """(metrics, factor) at the highest rate factor meeting the SLO found in ``steps``
    simulations, starting at ``guess`` (doubling / halving until bracketed, then geometric
    bisection). Factor 0.0 (with the metrics at the lowest factor tried) when none met it."""
    lo, hi = 0.0, None
    f = max(RATE_MIN_FACTOR, guess)
    best = last = None
    for _ in range(steps):
        last = sim(f)
        if met(last):
            lo, best = f, last
        else:
            hi = f
        if hi is None:
            f *= 2.0
        elif lo == 0.0:
            if f <= RATE_MIN_FACTOR:
                break
            f = max(RATE_MIN_FACTOR, f / 2.0)
        else:
            if hi / lo <= 1.0 + RATE_TOLERANCE:
                break
            f = math.sqrt(lo * hi)
    if best is None:
        return last, 0.0
    return best, lo
