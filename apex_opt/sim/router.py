"""Data-parallel replicas behind a router, driven by one global event loop.

Events are request arrivals (in trace order) and iteration ends of each replica's virtual engines,
kept in a heap keyed by ``(time, sequence number)`` so ties resolve deterministically. At equal
times arrivals are queued first, then idle engines are kicked, so requests arriving together are
batched together. Routers:

* ``round_robin`` -- request ``i`` goes to replica ``i mod R`` (every replica sees the same share);
* ``least_outstanding`` -- the replica with the fewest unfinished requests at the arrival time
  (ties: the lowest index), counting only iterations that have ended by then.
"""

from __future__ import annotations

import heapq
from typing import Callable, Literal, Sequence

import numpy as np

from .engine import ReplicaEngine

RouterName = Literal["round_robin", "least_outstanding"]
ROUTERS: tuple[str, ...] = ("round_robin", "least_outstanding")

_END, _KICK = 0, 1


def run_cluster(engines: Sequence[ReplicaEngine], arrival_s: np.ndarray, router: str, *,
                progress: Callable[[int], None] | None = None) -> float:
    """Serve every request (index = position in ``arrival_s``) on ``engines``; returns the time of
    the last event (the makespan end). ``progress(n)`` is called with the number of arrivals
    routed so far, every few thousand events."""
    if router not in ROUTERS:
        raise ValueError(f"unknown router {router!r}; expected one of {ROUTERS}")
    if not engines:
        raise ValueError("run_cluster needs at least one replica")
    arrivals = arrival_s.tolist()
    n, r = len(arrivals), len(engines)
    heap: list[tuple[float, int, int, int, int]] = []
    seq = 0
    i = 0
    last = arrivals[0] if n else 0.0
    least = router == "least_outstanding" and r > 1
    push, pop = heapq.heappush, heapq.heappop
    inf = float("inf")
    events = 0
    while True:
        if i < n and (not heap or arrivals[i] <= heap[0][0]):
            t = arrivals[i]
            if least:
                e = min(range(r), key=lambda j: (engines[j].unfinished, j))
            else:
                e = i % r
            v = engines[e].submit(i, t)
            if v is not None:
                push(heap, (t, seq, _KICK, e, v))
                seq += 1
            i += 1
        elif heap:
            t, _, kind, e, v = pop(heap)
            eng = engines[e]
            horizon = arrivals[i] if i < n else inf
            end = eng.kick(v, t, horizon) if kind == _KICK else eng.complete(v, t, horizon)
            if t > last:
                last = t
            if end is not None:
                push(heap, (end, seq, _END, e, v))
                seq += 1
        else:
            break
        events += 1
        if progress is not None and not events & 4095:
            progress(i)
    if progress is not None:
        progress(i)
    return last
