"""Rate search of the ``throughput`` objective: the highest arrival rate (as a factor of the
workload's own rate; the trace's arrival times are compressed or stretched, lengths kept) at
which a plan still meets the SLO.

The search is a deterministic sequence of probes (doubling / halving from a guess until the SLO
breaks, then geometric bisection). Its answer for a plan is what the plan served at the highest
SLO-meeting factor ``lo``: ``min(rate x lo, completions / makespan)``. Once some probe at factor
``hi`` missed the SLO, every later probe lies below ``hi``, so the answer is below two bounds:

* ``rate x hi`` -- proven: the answer's factor is below ``hi``;
* what the plan served at ``hi`` (x ``1 + SERVED_MARGIN``) -- on the assumption that serving a
  trace faster does not complete it in less time (the served rate does not fall as the offered
  rate rises), the same monotonicity the bisection itself assumes of the SLO.

No probe of the sequence exceeds its ceiling, the guess doubled ``steps - 1`` times (a plan that
meets the SLO all the way up ends there: a short trace compressed that far arrives as one burst).
So before any probe missed, one probe at the ceiling bounds the answer the same way: below what
the plan served there (x ``1 + SERVED_MARGIN``). A search with ``stop_at`` makes that probe after
its first SLO-meeting one; when the sequence reaches the ceiling itself the probe is reused.

:func:`rate_search` stops a plan's search as soon as the smaller of the two is at most a rate
another plan is known to sustain (``stop_at``): the plan cannot win, and the interval
``[served at lo, bound)`` is returned instead of a point (:class:`RateResult`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

M = TypeVar("M")

#: Bisection steps (simulations) per plan, and the lowest factor tried.
RATE_STEPS = 9
RATE_MIN_FACTOR = 1 / 64
#: Stop bisecting once the bracket is this tight (relative).
RATE_TOLERANCE = 0.01
#: Slack on "a plan serves no more at a lower rate than at a higher one": measured on every probe
#: pair (SLO-meeting lower rate, any higher rate) of the full searches of the bundled 70B 1x8 case
#: and bench_search's throughput cases (88 plans, ~2,800 pairs), the lower rate served at most
#: 1.9 % more; this is ~2.5x that. (Not for two SLO-missing rates: deep overload can serve less.)
SERVED_MARGIN = 0.05


@dataclass
class RateResult(Generic[M]):
    """Outcome of one plan's rate search.

    ``metrics`` / ``factor``: the highest SLO-meeting probe (factor 0.0 and the last probe's
    metrics when none met). ``below``: None when the search ran to its end (the answer is exact);
    else the search stopped early and the plan's answer is below this rate (req/s)."""

    metrics: M
    factor: float
    below: float | None = None
    #: (factor, metrics) of every probe, in order: a search resumed with them as ``replay``
    #: simulates only what comes after
    probes: tuple = ()
    #: the factor of the ceiling probe when one was made (its entry in ``probes`` is the first
    #: with this factor)
    ceiling: float | None = None


class RateSearch:
    """The probe sequence as a state machine: :meth:`next` gives the next factor (None when
    done), :meth:`observe` takes its outcome. The sequence depends only on the guess and the
    outcomes, so a search stopped early made exactly the probes the full search starts with."""

    def __init__(self, guess: float, steps: int = RATE_STEPS):
        self.steps = steps
        self.lo, self.hi = 0.0, None
        self.f: float | None = max(RATE_MIN_FACTOR, guess)
        self.best = self.last = self.hi_metrics = self.top_metrics = None
        self.n = 0
        # the highest factor the sequence can reach (doubled as the sequence doubles: bit-equal)
        self.ceiling = self.f
        for _ in range(steps - 1):
            self.ceiling *= 2.0

    def next(self) -> float | None:
        return self.f if self.n < self.steps else None

    def observe(self, m, met: bool) -> None:
        f = self.f
        self.n += 1
        self.last = m
        if met:
            self.lo, self.best = f, m
        else:
            self.hi, self.hi_metrics = f, m
        if self.hi is None:
            self.f = f * 2.0
        elif self.lo == 0.0:
            self.f = None if f <= RATE_MIN_FACTOR else max(RATE_MIN_FACTOR, f / 2.0)
        else:
            self.f = None if self.hi / self.lo <= 1.0 + RATE_TOLERANCE else math.sqrt(self.lo * self.hi)

    def top(self, m) -> None:
        """The outcome of a probe at the ceiling (outside the sequence)."""
        self.top_metrics = m

    def upper(self, rate: float, served: Callable[[M], float]) -> float:
        """A rate (req/s) the answer stays below: ``rate x hi`` and, on the served-rate
        assumption, what the plan served at ``hi`` or at the ceiling (inf before any probe
        missed the SLO or the ceiling was probed)."""
        u = math.inf
        if self.hi is not None:
            u = min(rate * self.hi, served(self.hi_metrics) * (1.0 + SERVED_MARGIN))
        if self.top_metrics is not None:
            u = min(u, served(self.top_metrics) * (1.0 + SERVED_MARGIN))
        return u


def rate_search(sim: Callable[[float], M], met: Callable[[M], bool], guess: float, *,
                steps: int = RATE_STEPS, rate: float = 1.0,
                served: Callable[[M], float] | None = None,
                stop_at: float | None = None, replay: tuple = ()) -> RateResult[M]:
    """Run the probe sequence of :class:`RateSearch`. With ``stop_at`` (req/s; ``rate`` = the
    workload's req/s at factor 1, ``served(metrics)`` = completions / makespan) stop as soon as
    the answer is bounded below ``stop_at``: then ``below`` carries that bound. ``replay``: the
    ``probes`` of an earlier (stopped) search of the same plan and guess, taken instead of
    simulating them again (the sequence is the same up to where it stopped)."""
    s = RateSearch(guess, steps)
    below = ceiling = None
    done = dict(replay)
    probes = []

    def probe(f: float):
        if f not in done:
            done[f] = sim(f)
        probes.append((f, done[f]))
        return done[f]

    bounded = stop_at is not None and served is not None
    while (f := s.next()) is not None:
        m = probe(f)
        s.observe(m, met(m))
        if bounded and ceiling is None and s.hi is None and s.next() not in (None, s.ceiling):
            ceiling = s.ceiling  # met so far: bound the answer from the top
            s.top(probe(ceiling))
        if bounded:
            u = s.upper(rate, served)
            if u <= stop_at:
                below = u
                break
    keep = tuple(probes) if below is not None else ()
    if s.best is None:
        return RateResult(s.last, 0.0, below, keep, ceiling)
    return RateResult(s.best, s.lo, below, keep, ceiling)


def highest_rate(sim: Callable[[float], M], met: Callable[[M], bool], guess: float,
                 steps: int = RATE_STEPS) -> tuple[M, float]:
    """(metrics, factor) at the highest rate factor meeting the SLO found in ``steps``
    simulations, starting at ``guess`` (doubling / halving until bracketed, then geometric
    bisection). Factor 0.0 (with the metrics at the lowest factor tried) when none met it."""
    r = rate_search(sim, met, guess, steps=steps)
    return r.metrics, r.factor
