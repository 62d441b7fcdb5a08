"""Data-parallel replicas behind a router, driven by one global event loop.

Events are request arrivals (in trace order) and iteration ends of each replica's virtual engines,
kept in a heap keyed by ``(time, sequence number)`` so ties resolve deterministically. At equal
times arrivals are queued first, then idle engines are kicked, so requests arriving together are
batched together. Routers:

* ``round_robin`` -- request ``i`` goes to replica ``i mod R`` (every replica sees the same share);
* ``least_outstanding`` -- the replica with the fewest unfinished requests at the arrival time
  (ties: the lowest index), counting only iterations that have ended by then.

:func:`run_closed_loop` drives a closed loop instead (``vllm bench serve --max-concurrency N``):
N clients start together; whenever a request finishes (or is dropped) its client sends the next
unsent request, in index order, so the next request goes to whichever client is free first. The
engines report finishes through ``RequestLog.done_sink``; a freed client is an event at the finish
time, so clients freed at the same instant send in finish order and the requests sent at one
instant are queued before the idle engines are kicked (they batch together, as in the open loop).
"""

from __future__ import annotations

import heapq
from typing import Callable, Literal, Sequence

import numpy as np

from .engine import ReplicaEngine, RequestLog

RouterName = Literal["round_robin", "least_outstanding"]
ROUTERS: tuple[str, ...] = ("round_robin", "least_outstanding")

_END, _KICK = 0, 1
_FREE = -1


def run_cluster(engines: Sequence[ReplicaEngine], arrival_s: np.ndarray, router: str, *,
                progress: Callable[[int], None] | None = None) -> float:
    """Serve every request (index = position in ``arrival_s``, non-decreasing) on ``engines``;
    returns the time of the last event (the makespan end). ``progress(n)`` is called with the
    number of requests routed so far, every few thousand events."""
    _check(engines, router)
    pend = [(t, i, i) for i, t in enumerate(arrival_s.tolist())]  # sorted: already a heap
    last, _ = _drive(engines, router, pend, n=len(pend), seq=len(pend), closed=False,
                     delay_s=0.0, progress=progress)
    return last


def run_closed_loop(engines: Sequence[ReplicaEngine], n: int, concurrency: int, router: str,
                    log: RequestLog, *, start_s: float = 0.0, delay_s: float = 0.0,
                    progress: Callable[[int], None] | None = None) -> tuple[float, np.ndarray]:
    """Serve requests ``0 .. n-1`` to ``concurrency`` closed-loop clients that all start at
    ``start_s``. A request sent at ``t`` reaches the engine at ``t + delay_s`` (front-end
    latency). Returns (time of the last event, the time each request was sent: what its client
    measures latency from).

    Decode runs of an engine (``fast_forward``) never extend past a pending send; with several
    replicas also not past the next event of any engine (a finish not yet scheduled may free a
    client whose request the router sends to this replica)."""
    _check(engines, router)
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 (got {concurrency})")
    k = min(concurrency, n)
    pend = [(start_s, i, _FREE) for i in range(k)]
    sink: list[tuple[int, float]] = []
    log.done_sink = sink
    try:
        return _drive(engines, router, pend, n=n, seq=k, closed=True, delay_s=delay_s,
                      progress=progress, sink=sink, start_s=start_s)
    finally:
        log.done_sink = None


def _check(engines: Sequence[ReplicaEngine], router: str) -> None:
    if router not in ROUTERS:
        raise ValueError(f"unknown router {router!r}; expected one of {ROUTERS}")
    if not engines:
        raise ValueError("the router needs at least one replica")


def _drive(engines: Sequence[ReplicaEngine], router: str, pend: list, *, n: int, seq: int,
           closed: bool, delay_s: float, progress: Callable[[int], None] | None,
           sink: list | None = None, start_s: float = 0.0) -> tuple[float, np.ndarray]:
    """The one event loop of both drivers. ``pend`` is a heap of client-side events
    ``(time, seq, rid)``: a request reaching the engines (``rid`` >= 0) or, closed loop only, a
    client becoming free (``_FREE``: it sends the next unsent request, in index order, reaching
    the engines ``delay_s`` later). Engine events ``(time, seq, kind, replica, virtual engine)``
    are kick / iteration end. At equal times client events go first, so requests arriving
    together are queued before idle engines are kicked and batch together."""
    r = len(engines)
    sent = np.full(n, np.nan)
    heap: list[tuple[float, int, int, int, int]] = []
    push, pop = heapq.heappush, heapq.heappop
    inf = float("inf")
    nxt = 0            # closed loop: next request to send
    routed = 0
    rr = 0
    least = router == "least_outstanding" and r > 1
    watch_engines = closed and r > 1
    last = pend[0][0] if pend else start_s
    events = 0
    while True:
        if pend and (not heap or pend[0][0] <= heap[0][0]):
            t, _, rid = pop(pend)
            if rid == _FREE:  # a client is free: it sends the next request
                if nxt >= n:
                    continue
                rid = nxt
                nxt += 1
                sent[rid] = t
                if delay_s > 0:
                    push(pend, (t + delay_s, seq, rid))
                    seq += 1
                    continue
            if least:
                e = min(range(r), key=lambda j: (engines[j].unfinished, j))
            else:
                e = rr
                rr = (rr + 1) % r
            v = engines[e].submit(rid, t)
            routed += 1
            if v is not None:
                push(heap, (t, seq, _KICK, e, v))
                seq += 1
        elif heap:
            t, _, kind, e, v = pop(heap)
            eng = engines[e]
            # a decode run must not pass the next request arrival (or, with several replicas in
            # a closed loop, the next event of any engine: its finish may free a client)
            h = pend[0][0] if pend else inf
            if watch_engines and heap and heap[0][0] < h:
                h = heap[0][0]
            end = eng.kick(v, t, h) if kind == _KICK else eng.complete(v, t, h)
            if t > last:
                last = t
            if end is not None:
                push(heap, (end, seq, _END, e, v))
                seq += 1
        else:
            break
        if sink:
            for _, tf in sink:
                push(pend, (tf, seq, _FREE))
                seq += 1
            sink.clear()
        events += 1
        if progress is not None and not events & 4095:
            progress(routed)
    if progress is not None:
        progress(routed)
    return last, sent
