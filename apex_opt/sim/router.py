"""Data-parallel replicas behind a router, driven by one global event loop.

Events are request arrivals (in trace order) and iteration ends of each replica's virtual engines,
kept in a heap keyed by ``(time, sequence number)`` so ties resolve deterministically. At equal
times arrivals are queued first, then idle engines are kicked, so requests arriving together are
batched together. Routers (``EngineSpec.dp_router`` says which one an engine's own DP deployment
uses; its parameters come from the engine profile, apex_opt/data/engines/*.yaml):

* ``round_robin`` -- request ``i`` goes to replica ``i mod R`` (SGLang's in-process
  ``--dp-size`` DataParallelController by default);
* ``least_outstanding`` -- the replica with the fewest unfinished requests at the arrival time
  (ties: the lowest index), counting only iterations that have ended by then (an external
  least-connections balancer in front of separate servers);
* ``vllm_dp_lb`` -- vLLM V1's internal DP load balancer (``DPLBAsyncMPClient``): the engine with
  the lowest ``waiting x waiting_weight + running`` in the DP coordinator's latest snapshot of the
  engines' queues (taken every ``stats_interval_s``: here the state at the first routing of each
  period), the chosen engine's waiting count bumped by one until the next snapshot; ties go to the
  lowest index (one API server scans from engine 0);
* ``sglang_cache_aware`` -- sgl-router's default policy (:class:`CacheAwareRouter`): an
  approximate radix tree of the prompts routed to each worker, prefix affinity when the load is
  balanced, the least-loaded worker when it is not.

The routers see the request's prompt (its prefix-block ids, ``RequestLog.prefix_blocks``), never
an engine's cache: a router may send a request to a replica that has meanwhile evicted its prefix.

:func:`run_closed_loop` drives a closed loop instead (``vllm bench serve --max-concurrency N``):
N clients start together; whenever a request finishes (or is dropped) its client sends the next
unsent request, in index order, so the next request goes to whichever client is free first. The
engines report finishes through ``RequestLog.done_sink``; a freed client is an event at the finish
time, so clients freed at the same instant send in finish order and the requests sent at one
instant are queued before the idle engines are kicked (they batch together, as in the open loop).
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np

from ..specs.engine import DP_ROUTER_POLICIES, DPRouterSpec, dp_router_for, load_engine
from .engine import ReplicaEngine, RequestLog

#: routing policies (a plan's router may also be 'engine': the engine profile's own)
ROUTERS: tuple[str, ...] = DP_ROUTER_POLICIES

_END, _KICK = 0, 1
_FREE = -1


def run_cluster(engines: Sequence[ReplicaEngine], arrival_s: np.ndarray,
                router: str | DPRouterSpec, *,
                progress: Callable[[int], None] | None = None) -> float:
    """Serve every request (index = position in ``arrival_s``, non-decreasing) on ``engines``;
    returns the time of the last event (the makespan end). ``router``: a policy name (parameters
    from the bundled engine profiles, see :func:`apex_opt.specs.engine.dp_router_for`) or a
    :class:`DPRouterSpec`. ``progress(n)`` is called with the number of requests routed so far,
    every few thousand events."""
    choose = make_router(engines, router)
    pend = [(t, i, i) for i, t in enumerate(arrival_s.tolist())]  # sorted: already a heap
    last, _ = _drive(engines, choose, pend, n=len(pend), seq=len(pend), closed=False,
                     delay_s=0.0, progress=progress)
    return last


def run_closed_loop(engines: Sequence[ReplicaEngine], n: int, concurrency: int,
                    router: str | DPRouterSpec, log: RequestLog, *, start_s: float = 0.0,
                    delay_s: float = 0.0, ramp_s: float = 0.0,
                    progress: Callable[[int], None] | None = None) -> tuple[float, np.ndarray]:
    """Serve requests ``0 .. n-1`` to ``concurrency`` closed-loop clients; client ``i`` sends its
    first request at ``start_s + i * ramp_s / clients`` (``ramp_s`` 0: all at ``start_s``). A
    request sent at ``t`` reaches the engine at ``t + delay_s`` (front-end latency). Returns (time
    of the last event, the time each request was sent: what its client measures latency from).

    Decode runs of an engine (``fast_forward``) never extend past a pending send; with several
    replicas also not past the next event of any engine (a finish not yet scheduled may free a
    client whose request the router sends to this replica)."""
    choose = make_router(engines, router)
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 (got {concurrency})")
    if not (ramp_s >= 0.0 and math.isfinite(ramp_s)):
        raise ValueError(f"ramp_s must be a finite number >= 0 (got {ramp_s})")
    k = min(concurrency, n)
    pend = [(start_s + i * ramp_s / k, i, _FREE) for i in range(k)]  # sorted: already a heap
    sink: list[tuple[int, float]] = []
    log.done_sink = sink
    try:
        return _drive(engines, choose, pend, n=n, seq=k, closed=True, delay_s=delay_s,
                      progress=progress, sink=sink, start_s=start_s)
    finally:
        log.done_sink = None


def make_router(engines: Sequence[ReplicaEngine],
                router: str | DPRouterSpec) -> Callable[[int, float], int]:
    """The routing decision ``choose(request id, time) -> replica index`` of ``router`` over
    ``engines`` (stateful: call it once per request, in arrival order)."""
    if not engines:
        raise ValueError("the router needs at least one replica")
    if isinstance(router, str):
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}; expected one of {ROUTERS}")
        router = dp_router_for(router, load_engine())
    r = len(engines)
    if r == 1:
        return lambda rid, t: 0
    policy = router.policy
    if policy == "round_robin":
        nxt = [0]

        def round_robin(rid: int, t: float) -> int:
            e = nxt[0]
            nxt[0] = (e + 1) % r
            return e
        return round_robin
    if policy == "least_outstanding":
        return lambda rid, t: min(range(r), key=lambda j: (engines[j].unfinished, j))
    if policy == "vllm_dp_lb":
        return VllmDPLoadBalancer(engines, router)
    return CacheAwareRouter(engines, router)


class VllmDPLoadBalancer:
    """vLLM V1's internal DP load balancer (vllm/v1/engine/core_client.py ``DPLBAsyncMPClient.
    get_core_engine_for_request``; counts from vllm/v1/engine/coordinator.py): see the module
    docstring."""

    def __init__(self, engines: Sequence[ReplicaEngine], spec: DPRouterSpec):
        self.engines = engines
        self.w = float(spec.waiting_weight)
        self.period = float(spec.stats_interval_s)
        self.epoch: int | None = None
        self.waiting = [0] * len(engines)
        self.running = [0] * len(engines)

    def snapshot(self) -> None:
        """The coordinator's counts: requests waiting / running in each engine's scheduler."""
        for j, eng in enumerate(self.engines):
            self.waiting[j] = sum(len(v.waiting) for v in eng.ves)
            self.running[j] = sum(v.running() for v in eng.ves)

    def __call__(self, rid: int, t: float) -> int:
        epoch = int(t // self.period)
        if epoch != self.epoch:
            self.epoch = epoch
            self.snapshot()
        w, wait, run = self.w, self.waiting, self.running
        best, best_score = 0, w * wait[0] + run[0]
        for j in range(1, len(wait)):
            s = w * wait[j] + run[j]
            if s < best_score:
                best, best_score = j, s
        wait[best] += 1  # local bump until the next snapshot (one API server: client_count 1)
        return best


class CacheAwareRouter:
    """sgl-router's ``cache_aware`` policy (sgl-router/src/policies/cache_aware.rs, tree.rs).

    One radix tree over the prompts of every request routed so far; each node (a prefix-block id
    under its parent, or a request's unique tail) records which workers ("tenants") had a request
    through it, and a worker's tree size is the tokens of the nodes it holds. Per request:

    * load = the router's in-flight requests per worker (here: the replica's unfinished ones); if
      ``max - min > balance_abs_threshold`` and ``max > min x balance_rel_threshold`` the
      least-loaded worker (lowest index on ties) gets it;
    * else the tree is matched along the prompt's prefix-block ids; the deepest matched node names
      a worker (sgl-router takes the first tenant of the node's map, whose order is a per-node
      hash: here a fixed hash of (node, worker)); if matched / prompt tokens > ``cache_threshold``
      that worker gets it, otherwise the worker with the smallest tree (lowest index on ties);
    * the prompt is inserted under the chosen worker.

    Every ``eviction_interval_s`` (from the first request) each worker's tree is cut to
    ``max_tree_size_chars / chars_per_token`` tokens, least recently used leaves first (a
    request touches its whole path, leaves before their ancestors, so the least recent node of a
    worker is always a leaf of its tree).
    """

    def __init__(self, engines: Sequence[ReplicaEngine], spec: DPRouterSpec):
        self.engines = engines
        self.r = len(engines)
        log = engines[0].log
        self.prompt = log.prompt
        self.blocks = log.prefix_blocks
        self.bt = log.prefix_block_tokens
        self.threshold = float(spec.cache_threshold)
        self.abs = int(spec.balance_abs_threshold)
        self.rel = float(spec.balance_rel_threshold)
        self.interval = float(spec.eviction_interval_s)
        self.max_tokens = spec.max_tree_size_chars / spec.chars_per_token
        self.next_evict: float | None = None
        self.child: dict[tuple[int, int], int] = {}   # (parent node, block id) -> node
        self.key: dict[int, tuple[int, int]] = {}
        self.length: dict[int, int] = {}               # node -> tokens
        self.tenants: dict[int, set[int]] = {}
        self.size = [0] * self.r                        # tokens of each worker's tree
        self.lru: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(self.r)]
        self._next = 1  # node 0 = the root
        self._tail = 0  # unique-tail nodes get negative block ids

    # ------------------------------------------------------------------ routing
    def __call__(self, rid: int, t: float) -> int:
        if self.next_evict is None:
            self.next_evict = t + self.interval
        while t >= self.next_evict:
            self.evict()
            self.next_evict += self.interval
        ids = self.blocks[rid] if self.blocks is not None else ()
        p = self.prompt[rid]
        child = self.child
        node, path = 0, []  # the longest cached chain of the prompt's prefix-block ids
        for uid in ids:
            c = child.get((node, uid))
            if c is None:
                break
            node = c
            path.append(c)
        loads = [eng.unfinished for eng in self.engines]
        hi, lo = max(loads), min(loads)
        if hi - lo > self.abs and hi > lo * self.rel:
            e = loads.index(lo)
        else:
            e = -1
            if path:
                tenant = min(self.tenants[node], key=lambda w: (_mix(node, w), w))
                self._touch(tenant, path, add=False)
                if min(len(path) * self.bt, p) / p > self.threshold:
                    e = tenant
            if e < 0:
                size = self.size
                e = size.index(min(size))
        self._insert(ids, p, e, path)
        return e

    def _insert(self, ids: tuple[int, ...], p: int, e: int, path: list[int]) -> None:
        """Add the prompt to worker ``e``'s tree (``path``: its chain already in the tree)."""
        tenants, length, bt = self.tenants, self.length, self.bt
        added = 0
        for c in path:
            ten = tenants[c]
            if e not in ten:
                ten.add(e)
                added += length[c]
        node, k, full, nid = (path[-1] if path else 0), len(path), list(path), len(ids)
        new = list(ids[k:])
        tail = p - min(len(ids) * bt, p)
        if tail > 0:  # tokens nobody else shares: a leaf of their own
            self._tail -= 1
            new.append(self._tail)
        for uid in new:
            c = self._next
            self._next += 1
            self.child[(node, uid)] = c
            self.key[c] = (node, uid)
            n = tail if k >= nid else (bt if (k + 1) * bt <= p else p - k * bt)
            length[c] = n
            tenants[c] = {e}
            added += n
            node = c
            full.append(c)
            k += 1
        self.size[e] += added
        self._touch(e, full, add=True)

    def _touch(self, e: int, path: list[int], add: bool) -> None:
        lru = self.lru[e]
        for node in reversed(path):  # leaves first: ancestors end up more recent
            if node in lru:
                lru.move_to_end(node)
            elif add:
                lru[node] = None

    # ------------------------------------------------------------------ eviction
    def evict(self) -> None:
        """Cut every worker's tree to the size limit, least recently used leaves first."""
        for e in range(self.r):
            lru = self.lru[e]
            while self.size[e] > self.max_tokens and lru:
                node, _ = lru.popitem(last=False)
                ten = self.tenants[node]
                ten.discard(e)
                self.size[e] -= self.length[node]
                if not ten:  # nobody holds it any more (its children went before it)
                    del self.child[self.key.pop(node)], self.tenants[node], self.length[node]

    @property
    def nodes(self) -> int:
        return len(self.tenants)


def _mix(node: int, worker: int) -> int:
    """A fixed 32-bit hash of (node, worker): the order of a node's tenants."""
    h = (node * 0x9E3779B1 + worker * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    return h ^ (h >> 12)


def _drive(engines: Sequence[ReplicaEngine], choose: Callable[[int, float], int], pend: list, *,
           n: int, seq: int, closed: bool, delay_s: float, progress: Callable[[int], None] | None,
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
            e = choose(rid, t)
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
            if eng.wake:  # idle engines of a shared KV pool that may admit again now
                for w in eng.wake:
                    push(heap, (t, seq, _KICK, e, w))
                    seq += 1
                eng.wake.clear()
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
