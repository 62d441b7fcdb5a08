"""One serving replica, iteration by iteration, scheduled like vLLM (V0 or V1) or SGLang.

State per *virtual engine* (vLLM runs ``pp`` of them under pipeline parallelism, each with its own
scheduler; vLLM 0.6 gives each ``num_blocks // pp`` KV blocks, vLLM V1 and SGLang let them all
allocate from one pool of ``num_blocks`` -- ``EngineLimits.shared_kv_pool`` -- and an idle one
is woken when another frees blocks; with ``pp == 1`` there is one):

* ``waiting`` -- FCFS deque of request ids (preempted requests go back to its front);
* the running queue in admission order: decoding sequences as numpy arrays (id, sequence length,
  tokens still to generate) followed by partially prefilled sequences ``[id, target, done, alloc]``
  (tokens to prefill, tokens in the KV cache, tokens with KV blocks allocated);
* the number of KV blocks in use (paged KV: a sequence with ``n`` tokens in its KV cache holds
  ``ceil(n / block_size)`` blocks), and optionally a :class:`~apex_opt.sim.prefix_cache.PrefixCache`
  whose referenced blocks count once however many requests share them.

Scheduling policies (``EngineLimits.policy``), one call per iteration:

* ``v0`` (vLLM 0.6), chunked prefill OFF (``_schedule_default``): admit waiting requests FCFS
  while the token budget (whole prompts), ``max_num_seqs`` and the free blocks (keeping a 1 %
  watermark) allow; if any was admitted the iteration is prefill-only, else every running
  sequence decodes one token. Chunked prefill ON: running decodes first (1 token each), then the
  partially prefilled sequences continue, then waiting requests are admitted with chunks that fill
  what is left of the token budget -- one mixed batch; a prompt's blocks are allocated whole at
  admission.
* ``v1`` (vLLM V1, ``vllm/v1/core/sched/scheduler.py``): the same single token budget over
  running requests first (decodes, then partial prefills), then waiting requests (the last one
  chunked; at most ``long_prefill_token_threshold`` tokens per request and step when set), but
  blocks are allocated per scheduled chunk, there is no watermark, a running request that cannot
  get its blocks preempts from the end of the running queue, and no waiting request is admitted
  in a step that preempted.
* ``sglang`` (prefill-first, ``_schedule_prefill_first``): a prefill batch (the chunked request
  first, then FCFS admissions, the last one chunked to the budget) runs whenever one can be
  formed, with no decodes in it; admission keeps room for the running requests' remaining output
  times the new-token ratio (decaying per decode step from ``init`` to ``min``, reset by a
  preemption); otherwise all running sequences decode.

With a prefix cache, admission first looks up the longest cached prefix of the request's prompt
(``RequestLog.prefix_blocks``), references it and prefills only the rest; units of the prompt are
cached as soon as its prefill has computed them; finished or preempted requests release their
prefix (it stays cached, evictable least-recently-used when free blocks are needed).

A decode that needs a new block when none is free preempts the *last* sequence of the running
queue (recompute: its blocks are freed, it returns to the front of ``waiting`` and later prefills
prompt + generated tokens again, keeping its generated tokens and first-token time).

A prefill that completes a prompt yields a token at the end of its iteration (the first token for a
fresh request); each decode yields one token. Requests that can never be served (prompt + output >
``max_model_len`` -- or >= with ``context_exclusive`` --, larger than the KV cache, or -- without
chunked prefill -- larger than the token budget) are dropped on arrival with a reason code, never
lost. With ``clip_output_to_pool`` (SGLang) a request longer than the KV pool is not dropped: its
output is cut to fit on arrival (``RequestLog.asked_output`` keeps what it asked for).
``RequestLog.done_sink`` (when set) receives ``(request id, time)`` for every finish or drop
(closed-loop clients).

Time: an iteration of a virtual engine starts when it is scheduled; the host part of
``IterationCost.time_s`` (``time_s − Σ stage_times_s``) runs first, then stage ``s`` runs when it
is free and stage ``s − 1`` has finished (micro-batches of different virtual engines overlap in the
pipeline). The next iteration of the same virtual engine is scheduled when this one leaves the last
stage. With ``pp == 1`` an iteration simply takes ``time_s``, or -- with async scheduling (vLLM V1
``--async-scheduling``, SGLang's overlap scheduler) -- ``max(GPU, host) + serial host`` (the host
work of the next step overlaps this step's GPU work).
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol, Sequence

import numpy as np

from .prefix_cache import PrefixCache

#: Reason codes of dropped requests (0 = served).
DROP_NONE = 0
DROP_MAX_MODEL_LEN = 1
DROP_KV_CAPACITY = 2
DROP_TOKEN_BUDGET = 3
DROP_PROMPT_KV = 4
DROP_REASONS = {
    DROP_MAX_MODEL_LEN: "prompt + output exceeds max_model_len",
    DROP_KV_CAPACITY: "prompt + output does not fit in the KV cache",
    DROP_TOKEN_BUDGET: "prompt + output exceeds max_num_batched_tokens (chunked prefill off)",
    DROP_PROMPT_KV: "prompt does not fit in the KV pool (SGLang aborts it)",
}

#: vLLM keeps this fraction of KV blocks free when admitting a new prefill.
WATERMARK_FRACTION = 0.01


class CostModel(Protocol):
    """What the engine needs from :class:`apex_opt.costmodel.iteration.IterationCostModel`."""

    num_gpus: int
    idle_power_w: float

    def iteration(self, decode_ctx: np.ndarray, prefill: Sequence[tuple[int, int]] = (), *,
                  with_breakdown: bool = False, prefill_sampling: int | None = None): ...


@dataclass(frozen=True)
class EngineLimits:
    """Scheduler limits of one replica (vLLM flag semantics, already resolved)."""

    num_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    chunked_prefill: bool
    pp: int = 1
    #: the pipeline's virtual engines allocate from one pool of ``num_blocks`` (vLLM V1, SGLang)
    #: instead of ``num_blocks // pp`` each (vLLM 0.6)
    shared_kv_pool: bool = False
    #: the replica's configured max_num_seqs when the pipeline's virtual engines share it (each
    #: then runs at most ``max_num_seqs`` = its share); 0 = ``max_num_seqs`` itself
    replica_max_num_seqs: int = 0
    watermark_fraction: float = WATERMARK_FRACTION
    #: SGLang-style batching: a (chunked) prefill batch runs whenever one can be formed and
    #: decodes wait for it; no mixed decode+prefill batches (same as ``policy="sglang"``)
    prefill_first: bool = False
    #: requests need prompt + output below max_model_len (SGLang), not up to it (vLLM)
    context_exclusive: bool = False
    #: a request longer than the KV pool runs with its output cut to fit (SGLang's scheduler);
    #: else it counts as dropped
    clip_output_to_pool: bool = False
    #: scheduler policy (see the module docstring)
    policy: Literal["v0", "v1", "sglang"] = "v0"
    #: prefix caching on (needs ``RequestLog.prefix_blocks`` to find anything to share)
    prefix_caching: bool = False
    #: SGLang --enable-mixed-chunk: the running decodes join every prefill batch (one token of
    #: its budget each) instead of waiting for it
    mixed_chunk: bool = False
    #: vLLM V1: at most this many prefill tokens per request and step (0 = no limit)
    long_prefill_token_threshold: int = 0
    #: SGLang --max-prefill-tokens: a prefill batch's cap on new prompt tokens, apart from the
    #: chunk budget (0 = none)
    max_prefill_tokens: int = 0
    #: SGLang decode-room reserve: (init ratio, min ratio, decay per decode step); None = off
    new_token_ratio: tuple[float, float, float] | None = None
    #: SGLang: tokens kept free per remaining request when a decode step retracts
    #: (ScheduleBatch.retract_decode); 0 = retract only what the step needs
    retract_decode_steps: int = 0
    #: SGLang clips each request's remaining output at this for the reserve
    #: (CLIP_MAX_NEW_TOKENS_ESTIMATION in schedule_policy.py)
    new_token_clip: int = 4096
    #: SGLang data-parallel attention: this many attention ranks, each with its own scheduler,
    #: requests (routed round robin) and 1/attention_dp of the KV blocks, stepping together
    #: (the MoE/MLP layers run over all ranks' tokens); needs pp == 1
    attention_dp: int = 1
    #: KV blocks every running sequence holds besides its tokens' (hybrid models: sliding-window
    #: layers' window, recurrent state kept in the KV pool -- memory.stage_kv_layout), taken at
    #: admission and given back when it finishes or is preempted
    seq_state_blocks: int = 0

    @property
    def mode(self) -> str:
        return "sglang" if self.prefill_first else self.policy

    @property
    def pool_shared(self) -> bool:
        """The virtual engines allocate from one pool (a pipeline with ``shared_kv_pool``;
        attention-DP ranks always own their share)."""
        return self.shared_kv_pool and self.pp > 1

    @property
    def blocks_per_virtual_engine(self) -> int:
        """KV blocks one virtual engine may allocate (the whole pool when shared)."""
        return self.num_blocks if self.pool_shared else self.num_blocks // self.schedulers

    @property
    def schedulers(self) -> int:
        """Independent schedulers of the replica: PP virtual engines or attention-DP ranks."""
        return max(self.pp, self.attention_dp)

    @property
    def watermark_blocks(self) -> int:
        return int(self.watermark_fraction * self.blocks_per_virtual_engine)


class RequestLog:
    """Per-request state and outcome arrays shared by all replicas of one simulation.

    ``generated`` is exact for waiting and finished requests; for a decoding request the engine
    keeps the live count in its arrays (sequence length − prompt) and writes it back here when the
    request leaves them (preemption or finish).
    """

    def __init__(self, prompt: np.ndarray, output: np.ndarray,
                 prefix_blocks: list[tuple[int, ...]] | None = None, prefix_block_tokens: int = 512,
                 max_new: np.ndarray | None = None):
        n = int(prompt.shape[0])
        #: per request, ids of its prompt's consecutive prefix units (None = no sharing known)
        self.prefix_blocks = prefix_blocks
        self.prefix_block_tokens = int(prefix_block_tokens)
        self.prompt: list[int] = prompt.tolist()
        self.output: list[int] = output.tolist()
        self.generated: list[int] = [0] * n
        self.first_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.dropped = np.zeros(n, dtype=np.int8)
        self.preemptions = np.zeros(n, dtype=np.int32)
        #: the output length a request asked for where the engine cut it (0 = not cut)
        self.asked_output = np.zeros(n, dtype=np.int64)
        #: per request, the max_tokens it declared (``Requests.declared_max_tokens``: its output
        #: length unless the clients send a larger limit; -1 = none sent, the engine's own)
        self.max_new: list[int] = (output.tolist() if max_new is None
                                   else np.asarray(max_new, dtype=np.int64).tolist())
        #: declared limit - output, once the engine has applied its own cuts on arrival: the
        #: extra output room SGLang's admission keeps for a request that ends (EOS) before it
        self.extra = np.zeros(n, dtype=np.float64)
        self.replica = np.full(n, -1, dtype=np.int32)
        #: when each request reached its engine's waiting queue
        self.queued_s: list[float] = [0.0] * n
        #: optional sink: when a list, the engine appends ``(request id, time s)`` whenever a
        #: request finishes or is dropped (the router's closed-loop clients drain it)
        self.done_sink: list[tuple[int, float]] | None = None


class StreamFrontEnd:
    """The one server process that streams every request's tokens of a replica to its client.

    SGLang: the TokenizerManager (HTTP server + OpenAI adapter, one asyncio process) receives each
    step's decoded text from the detokenizer and writes one SSE chunk per request and
    ``stream_interval`` tokens; vLLM V1: the API server process (AsyncLLM output handler,
    incremental detokenisation, OpenAI chunk serialisation). The engine never waits for it, so
    its chunks queue first in, first out: a step whose chunks are out at ``e`` is seen by the
    clients at ``max(e, front end free) + service`` -- a client-visible token rate capped at
    ``1 / service`` however fast the GPUs are, and (closed loop) a client sends its next request
    only when its last chunk is written. Service per chunk: ``chunk_s + per_token_s x tokens the
    request has generated so far`` (non-incremental streaming copies the whole output each time).
    """

    __slots__ = ("chunk_s", "per_token_s", "interval", "free", "_latest", "_recent")

    def __init__(self, chunk_s: float, per_token_s: float = 0.0, interval: int = 1):
        self.chunk_s = float(chunk_s)
        self.per_token_s = float(per_token_s)
        self.interval = max(1, int(interval))
        #: when the front end has written everything handed to it so far
        self.free = float("-inf")
        self._latest = float("-inf")  # latest emission time handed over so far
        #: recent hand-overs (first, last, work, done): pipeline-parallel virtual engines plan
        #: their decode runs out of time order, and a run must queue only behind earlier work
        self._recent: deque = deque(maxlen=64)

    def emit(self, first: float, last: float, n: float, steps: int = 1,
             generated: float = 0.0) -> float:
        """``steps`` engine steps, each handing over the tokens of ``n`` requests that have
        generated ``generated`` tokens on average at the first of them, are out at ``first`` ..
        ``last`` (evenly spaced). Returns when the clients see the last step's tokens (the mean
        over its batch)."""
        if n <= 0 or steps <= 0:
            return last
        chunks = n / self.interval
        # one step's service; the run's mean and its last step (the output grows by one per step)
        per_run = chunks * (self.chunk_s + self.per_token_s * (generated + (steps - 1) / 2))
        per_last = chunks * (self.chunk_s + self.per_token_s * (generated + steps - 1))
        work = per_run * steps
        if first >= self._latest:  # in time order: FIFO behind everything handed over
            start = first if first > self.free else self.free
            # evenly spaced batches: the backlog is worst at the first or the last step
            done = max(start + work, last + per_last)
            self.free = done
            self._latest = last
        else:  # out of order: behind the work handed over for earlier times only
            base, overlap = float("-inf"), 0.0
            for f, la, w, d in reversed(self._recent):
                if la <= first:
                    base = d if d > base else base
                elif f < last:  # its work inside [first, last]
                    span = la - f
                    overlap += w * (min(la, last) - max(f, first)) / span if span > 0 else w
            start = first if first > base else base
            done = max(start + work + overlap, last + per_last)
            if done > self.free:
                self.free = done
        self._recent.append((first, last, work, done))
        return done - 0.5 * per_last * (1.0 - 1.0 / max(chunks, 1.0))


@dataclass
class ReplicaStats:
    """Totals of one replica over the run."""

    requests: int = 0
    dropped: int = 0
    iterations: int = 0
    prefill_iterations: int = 0
    decode_iterations: int = 0
    mixed_iterations: int = 0
    preemptions: int = 0
    prefill_tokens: int = 0
    recomputed_tokens: int = 0
    decode_tokens: int = 0
    energy_j: float = 0.0
    busy_gpu_s: float = 0.0
    flops: float = 0.0
    hbm_bytes: float = 0.0
    max_blocks_used: int = 0
    last_event_s: float = 0.0
    prefix_hit_tokens: int = 0
    evicted_blocks: int = 0


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class _VirtualEngine:
    """Scheduler state of one virtual engine (see the module docstring)."""

    waiting: deque = field(default_factory=deque)
    d_id: np.ndarray = field(default_factory=lambda: _EMPTY)
    d_len: np.ndarray = field(default_factory=lambda: _EMPTY)
    d_rem: np.ndarray = field(default_factory=lambda: _EMPTY)
    # partially prefilled sequences: [id, target tokens, tokens done, tokens allocated]
    pre: list = field(default_factory=list)
    #: [blocks in use] of the pool this engine allocates from (one list shared by the virtual
    #: engines of a pipeline with a shared pool)
    pool: list = field(default_factory=lambda: [0])
    #: shared pool: blocks taken for this engine's planned decode run before it starts
    booked: int = 0
    busy: bool = False
    kick_pending: bool = False
    unfinished: int = 0
    pending_done: int = 0
    cache: PrefixCache | None = None
    # per request with a prefix: its chain of cache nodes and the blocks it uses from them
    chain: dict = field(default_factory=dict)
    hit: dict = field(default_factory=dict)
    # requests whose units can no longer be inserted (a duplicate was cached first)
    no_insert: set = field(default_factory=set)
    ratio: float = 0.0
    # start of the step now running / last run (async scheduling visibility cutoff)
    last_start: float = float("-inf")
    cutoff: float = float("inf")
    # pp > 1: end of the iteration (or run) in flight, the order its end event was queued in,
    # and a decode run planned for this engine by another's pipeline run (_pipeline_run)
    ends_at: float = float("inf")
    order: int = 0
    planned: tuple | None = None

    @property
    def used_blocks(self) -> int:
        """KV blocks in use in this engine's pool (all sharing engines' when shared)."""
        return self.pool[0]

    @used_blocks.setter
    def used_blocks(self, n: int) -> None:
        self.pool[0] = n

    def running(self) -> int:
        return int(self.d_id.shape[0]) + len(self.pre)


class ReplicaEngine:
    """One replica: ``pp`` virtual engines sharing a ``pp``-stage pipeline.

    Driven by an outside event loop (:mod:`apex_opt.sim.router`): :meth:`submit` a request at its
    arrival time (it says which idle virtual engine to :meth:`kick` once all arrivals of that
    instant are queued), and :meth:`complete` an iteration at the time this engine said it would
    end. ``kick`` and ``complete`` return the end time of the iteration they started, or ``None``
    when the virtual engine has nothing to run.
    """

    def __init__(self, index: int, cost: CostModel, limits: EngineLimits, log: RequestLog, *,
                 debug: bool = False, breakdown: bool = False, fast_forward: int = 1,
                 async_output: bool = False, host_serial_s: float | None = None,
                 lookahead: bool = False, frontend: StreamFrontEnd | None = None):
        if limits.blocks_per_virtual_engine < 1:
            raise ValueError(f"replica {index}: no KV blocks per virtual engine "
                             f"({limits.num_blocks} blocks over pp={limits.pp})")
        self.index = index
        self.cost = cost
        self.lim = limits
        self.log = log
        self.debug = debug
        #: most decode-only iterations evaluated as one run (1 = every iteration separately)
        self.ff = max(1, int(fast_forward))
        #: host work overlapping the next GPU step (vLLM V1 async scheduling, SGLang's overlap
        #: scheduler, vLLM 0.6 async output processing); the simulator passes it off under
        #: pipeline parallelism where the engine turns it off (EngineSpec.overlap_with_pp), and
        #: the pipeline timing path (_timing) has no overlap of its own
        self.async_output = async_output and limits.pp == 1
        #: host time per step that cannot overlap the GPU under async scheduling (None = the
        #: cost's own ``host_serial_s`` if it has one, else 0)
        self.host_serial_s = host_serial_s
        #: async scheduling schedules step N+1 when step N starts: requests arriving during step
        #: N join step N+2 at the earliest
        self.lookahead = lookahead
        #: the streaming front end the clients see the tokens through (None = tokens are seen
        #: when the engine emits them)
        self.fe = frontend
        self._out = np.asarray(log.output, dtype=np.float64) if frontend is not None else None
        self.bs = limits.block_size
        self.nb = limits.blocks_per_virtual_engine
        self.wm = limits.watermark_blocks
        self.state_blocks = int(limits.seq_state_blocks)
        self.ves = [_VirtualEngine() for _ in range(limits.schedulers)]
        #: one pool (and one prefix cache) for every virtual engine of the pipeline
        self.shared_pool = limits.pool_shared
        #: idle virtual engines to kick at the current time (the event loop drains it after each
        #: kick / complete): with a shared pool, waiting requests another engine's blocks held
        #: back may fit once that engine's iteration freed some
        self.wake: list[int] = []
        if self.shared_pool:
            for ve in self.ves[1:]:
                ve.pool = self.ves[0].pool
        #: attention-DP ranks step together (one forward over every rank's batch)
        self.lockstep = limits.attention_dp > 1
        self._rr = 0
        self.mode = limits.mode
        self.use_cache = bool(limits.prefix_caching and log.prefix_blocks is not None)
        for i, ve in enumerate(self.ves):
            if self.use_cache:
                ve.cache = self.ves[0].cache if self.shared_pool and i else \
                    PrefixCache(self.bs, log.prefix_block_tokens)
            if limits.new_token_ratio is not None:
                ve.ratio = limits.new_token_ratio[0]
        self.stage_free = [0.0] * limits.pp
        self._order = 0  # pp > 1: end events returned so far (their queueing order)
        self.stats = ReplicaStats()
        #: seconds by operator class summed over iterations (only when ``breakdown``)
        self.breakdown: dict[str, float] | None = {} if breakdown else None

    # ------------------------------------------------------------------ outside interface
    @property
    def unfinished(self) -> int:
        """Requests assigned to this replica that have not finished yet."""
        return sum(v.unfinished for v in self.ves)

    def drop_reason(self, rid: int) -> int:
        """Why request ``rid`` could never be served by this replica (0 = it can be). The engine
        checks the prompt plus the max_tokens the request declared against the context length
        (vLLM refuses prompt + max_tokens > max_model_len; SGLang prompt + max_new_tokens >=
        context_len); a request that declared none gets the rest of the context and needs only
        its prompt to fit."""
        p, o = self.log.prompt[rid], self.log.output[rid]
        lim = self.lim
        limit = self._declared_limit(rid)
        if p + max(1, limit) > self._context_room:
            return DROP_MAX_MODEL_LEN
        o = min(o, limit)  # no limit sent: the engine stops the output at the context length
        if lim.clip_output_to_pool:
            if p > self.max_request_tokens - 5:
                return DROP_PROMPT_KV  # SGLang aborts a prompt above max_req_input_len
            o = self._output_after_cut(p, o)
        # the longest KV state (last decode step holds p + o - 1 tokens) must fit in an empty cache
        if self._seq_blocks(p + o - 1) > self.nb - self.wm:
            return DROP_KV_CAPACITY
        if not lim.chunked_prefill and p + o - 1 > lim.max_num_batched_tokens:
            return DROP_TOKEN_BUDGET
        return DROP_NONE

    @property
    def max_request_tokens(self) -> int:
        """SGLang's max_req_len: min(context length, KV pool tokens of one scheduler) - 1."""
        return min(self.lim.max_model_len, (self.nb - self.wm) * self.bs) - 1

    @property
    def _context_room(self) -> int:
        """Most prompt + output tokens a request may hold (SGLang refuses a total equal to the
        context length)."""
        return self.lim.max_model_len - int(self.lim.context_exclusive)

    def _declared_limit(self, rid: int) -> int:
        """The max_tokens request ``rid`` runs with before any KV-pool cut: the one it declared
        (at least its output), or the rest of the context when it sent none."""
        d = self.log.max_new[rid]
        if d < 0:
            return self._context_room - self.log.prompt[rid]
        return max(d, self.log.output[rid])

    def _output_after_cut(self, p: int, o: int) -> int:
        """SGLang's scheduler cuts max_new_tokens at max_req_len - prompt - 1."""
        return min(o, self.max_request_tokens - p - 1)

    def _clip_output(self, rid: int) -> None:
        """Apply the engine's output limits to a request :meth:`drop_reason` admitted: one that
        declared no max_tokens stops at the context length, and SGLang cuts max_new_tokens at
        max_req_len - prompt - 1 (:meth:`_output_after_cut`), so one longer than the KV pool runs
        with a shorter output (recorded in ``log.asked_output``). Then the room the declared
        limit keeps above the output (``log.extra``)."""
        log, lim = self.log, self.lim
        p, o = log.prompt[rid], log.output[rid]
        limit = self._declared_limit(rid)
        if lim.clip_output_to_pool:
            limit = self._output_after_cut(p, limit)
        cut = min(o, limit)
        if cut < o:
            log.output[rid] = cut
            log.asked_output[rid] = o
            if self._out is not None:
                self._out[rid] = cut
        log.extra[rid] = float(limit - cut)

    def submit(self, rid: int, t: float) -> int | None:
        """Request ``rid`` arrives at ``t``. Returns the index of the virtual engine it joined when
        that one is idle and must be kicked (:meth:`kick`) once every arrival at ``t`` is queued;
        else ``None``."""
        log = self.log
        log.replica[rid] = self.index
        log.queued_s[rid] = t
        self.stats.requests += 1
        reason = self.drop_reason(rid)
        if not reason:
            self._clip_output(rid)
        if reason:
            log.dropped[rid] = reason
            self.stats.dropped += 1
            if log.done_sink is not None:
                log.done_sink.append((rid, t))
            return None
        if self.lockstep:  # SGLang's DP controller: round robin over the attention ranks
            ve = self.ves[self._rr]
            self._rr = (self._rr + 1) % len(self.ves)
            ve.waiting.append(rid)
            ve.unfinished += 1
            v, ve = 0, self.ves[0]  # rank 0 carries the replica's busy / kick state
        else:
            v = min(range(len(self.ves)), key=lambda i: self.ves[i].unfinished)
            ve = self.ves[v]
            ve.waiting.append(rid)
            ve.unfinished += 1
        if ve.busy or ve.kick_pending:
            return None
        ve.kick_pending = True
        return v

    def kick(self, v: int, t: float, horizon: float = float("inf")) -> float | None:
        """Start an iteration on idle virtual engine ``v`` at ``t`` if it has work. ``horizon`` is
        the next arrival time (decode runs never start an iteration at or after it)."""
        ve = self.ves[v]
        ve.kick_pending = False
        if ve.busy:
            return None
        ve.cutoff = t  # an idle engine schedules what just arrived at once
        if self.lockstep:
            for r in self.ves:
                r.cutoff = t
            return self._step_lockstep(t)
        return self._step(ve, t, horizon)

    def complete(self, v: int, t: float, horizon: float = float("inf")) -> float | None:
        """The iteration (or decode run) of virtual engine ``v`` ended at ``t``: commit it and
        start the next one."""
        ve = self.ves[v]
        ve.busy = False
        ve.unfinished -= ve.pending_done
        ve.pending_done = 0
        self.stats.last_event_s = max(self.stats.last_event_s, t)
        # async scheduling: the step starting now was scheduled when the previous one started,
        # so it only sees requests that had arrived by then
        if self.lockstep:
            for r in self.ves:
                r.unfinished -= r.pending_done
                r.pending_done = 0
                r.cutoff = r.last_start if self.lookahead else t
            return self._step_lockstep(t)
        ve.cutoff = ve.last_start if self.lookahead else t
        if self.shared_pool:
            for w, u in enumerate(self.ves):
                if u is not ve and not u.busy and not u.kick_pending and u.waiting:
                    u.kick_pending = True
                    self.wake.append(w)
        return self._step(ve, t, horizon)

    def idle(self, v: int) -> bool:
        return not self.ves[v].busy

    # ------------------------------------------------------------------ scheduling
    def _schedule(self, ve: _VirtualEngine):
        if self.mode == "sglang":
            return self._schedule_prefill_first(ve)
        if self.mode == "v1" or self.lim.chunked_prefill:
            return self._schedule_chunked(ve)
        return self._schedule_default(ve)

    def _step_lockstep(self, t: float) -> float | None:
        """Attention-DP ranks: every rank schedules its own batch; one forward runs them all
        (MoE/MLP over all ranks' tokens; attention per rank -- the cost model takes the ranks'
        batches as ``attention_ranks`` when it supports it, else the union batch)."""
        plans = []
        for ve in self.ves:
            plan = self._schedule(ve)
            if plan is None and ve.waiting and ve.cutoff < t:
                ve.cutoff = t
                plan = self._schedule(ve)
            plans.append(plan)
        if all(p is None for p in plans):
            return None
        ctxs, prefill, sampling, ranks = [], [], 0, []
        for ve, plan in zip(self.ves, plans):
            if plan is None:
                ranks.append((_EMPTY, []))
                continue
            k, pf, smp = plan
            ctxs.append(ve.d_len[:k])
            prefill.extend(pf)
            sampling += smp
            ranks.append((ve.d_len[:k], pf))
        ctx = np.concatenate(ctxs) if ctxs else _EMPTY
        bd = self.breakdown
        kw = {"attention_ranks": ranks} if getattr(self.cost, "supports_attention_dp", False) else {}
        c = self.cost.iteration(ctx, prefill, prefill_sampling=sampling,
                                with_breakdown=bd is not None, **kw)
        if bd is not None and c.breakdown:
            for key, val in c.breakdown.items():
                bd[key] = bd.get(key, 0.0) + val
        period, lag = self._period(c)
        end = t + period
        st = self.stats
        st.iterations += 1
        st.energy_j += c.energy_j
        st.busy_gpu_s += c.busy_gpu_s
        st.flops += c.flops
        st.hbm_bytes += c.hbm_bytes
        n_dec = int(ctx.shape[0])
        if prefill and n_dec:
            st.mixed_iterations += 1
        elif prefill:
            st.prefill_iterations += 1
        else:
            st.decode_iterations += 1
        for ve, plan in zip(self.ves, plans):
            if ve.used_blocks > st.max_blocks_used:
                st.max_blocks_used = ve.used_blocks
            ve.last_start = t
            if plan is None:
                continue
            k, pf, _ = plan
            self._advance_decodes(ve, k, 1, end + lag, decay=not pf)
            if pf:
                self._advance_prefills(ve, pf, end + lag)
            if self.debug:
                self._check(ve)
        self.ves[0].busy = True
        return end

    def _step(self, ve: _VirtualEngine, t: float, horizon: float = float("inf")) -> float | None:
        if ve.planned is not None:  # its part of a pipeline decode run starts now
            return self._start_planned(ve, t)
        plan = self._schedule(ve)
        if plan is None and ve.waiting and ve.cutoff < t:
            ve.cutoff = t  # nothing was scheduled ahead: the engine loop schedules them now
            plan = self._schedule(ve)
        if plan is None:
            if self.lim.new_token_ratio is not None and not ve.d_id.shape[0] and not ve.pre:
                ve.ratio = self.lim.new_token_ratio[0]  # SGLang: an idle scheduler resets it
            return None
        ve.last_start = t
        k, prefill, sampling = plan
        st = self.stats
        if ve.used_blocks > st.max_blocks_used:  # peak: blocks are freed only after the step
            st.max_blocks_used = ve.used_blocks
        ctx = ve.d_len[:k]
        bd = self.breakdown
        c = self.cost.iteration(ctx, prefill, prefill_sampling=sampling, with_breakdown=bd is not None)
        if bd is not None and c.breakdown:
            for key, val in c.breakdown.items():
                bd[key] = bd.get(key, 0.0) + val
        hidden = bool(ve.waiting) and self.log.queued_s[ve.waiting[-1]] > ve.cutoff
        run = not prefill and self.ff > 1 and k == ve.d_id.shape[0] and not ve.pre and not hidden
        end = None
        if run and self.lim.pp == 1:
            end = self._decode_run(ve, k, t, horizon, c)
        elif run:
            end = self._pipeline_run(ve, k, t, horizon, c)  # None: one step is all it could run
        if end is None:
            period, lag = self._period(c)
            end = t + period if self.lim.pp == 1 else self._timing(t, c.time_s, c.stage_times_s)
            st.iterations += 1
            st.energy_j += c.energy_j
            st.busy_gpu_s += c.busy_gpu_s
            st.flops += c.flops
            st.hbm_bytes += c.hbm_bytes
            if prefill and k:
                st.mixed_iterations += 1
            elif prefill:
                st.prefill_iterations += 1
            else:
                st.decode_iterations += 1
            self._advance_decodes(ve, k, 1, end + lag, decay=not prefill)
            if prefill:
                self._advance_prefills(ve, prefill, end + lag)
        if self.debug:
            self._check(ve)
        ve.busy = True
        if self.lim.pp > 1:
            ve.ends_at, ve.order = end, self._order
            self._order += 1
        return end

    def _extra_blocks(self, lens: np.ndarray, j: int) -> int:
        """Blocks the decodes need for steps 1..j of a run beyond those held after step 0."""
        bs = self.bs
        return int((-(-(lens + j) // bs) - (-(-lens // bs))).sum())

    def _decode_run(self, ve: _VirtualEngine, k: int, t: float, horizon: float, c0) -> float:
        """Up to ``ff`` consecutive decode-only iterations as one event.

        Nothing can change the batch inside the run: it stops at the first finish, before blocks
        run out, and before an arrival (no iteration of the run starts at or after ``horizon``, the
        next arrival time). Step ``j`` costs the linear interpolation in context length between
        step 0 and the run's last step (two cost-model calls; exact when the cost is linear in
        the context, and the batch size -- hence CUDA-graph padding -- is constant).
        """
        lens = ve.d_len[:k]
        m = self._fit_run(ve, lens, True)  # largest m with extra(m - 1) <= free blocks
        p0, lag0 = self._period(c0)
        vals0 = (p0, c0.energy_j, c0.busy_gpu_s, c0.flops, c0.hbm_bytes)
        lag = lag0
        run = m
        bd = self.breakdown
        if m > 1:
            c1 = self.cost.iteration(lens + (m - 1), (), with_breakdown=bd is not None)
            p1, lag1 = self._period(c1)
            vals1 = (p1, c1.energy_j, c1.busy_gpu_s, c1.flops, c1.hbm_bytes)
            slopes = [(b - a) / (m - 1) for a, b in zip(vals0, vals1)]
            if horizon != float("inf"):
                j = np.arange(m, dtype=np.float64)
                starts = t + j * vals0[0] + slopes[0] * j * (j - 1) / 2
                m = max(1, int(np.count_nonzero(starts < horizon)))
            lag = lag0 + (lag1 - lag0) * (m - 1) / (run - 1)
        else:
            slopes = [0.0] * 5
        tri = m * (m - 1) / 2
        tot = [a * m + sl * tri for a, sl in zip(vals0, slopes)]
        if bd is not None and m > 1 and c0.breakdown and c1.breakdown:
            # steps 1..m-1 of the run (step 0 was added by _step), interpolated like the times
            b0, b1 = c0.breakdown, c1.breakdown
            for key in list(b0) + [x for x in b1 if x not in b0]:
                v0, v1 = b0.get(key, 0.0), b1.get(key, 0.0)
                bd[key] = bd.get(key, 0.0) + v0 * (m - 1) + (v1 - v0) / (run - 1) * tri
        end = t + tot[0]
        ve.last_start = end - (vals0[0] + slopes[0] * (m - 1))
        st = self._count_decode_run(m, tot[1:])
        if m > 1:
            ve.used_blocks += self._extra_blocks(lens, m - 1)
            self._evict_if_needed(ve)
            if ve.used_blocks > st.max_blocks_used:
                st.max_blocks_used = ve.used_blocks
        self._advance_decodes(ve, k, m, end + lag, first=t + vals0[0] + lag0)
        return end

    def _fit_run(self, ve: _VirtualEngine, lens: np.ndarray, started: bool,
                 free: int | None = None) -> int:
        """Longest decode run of ``ve``'s decodes ``lens`` (at most ``ff`` steps, ending with the
        first finish) whose KV blocks fit in ``free`` (default: the pool's free blocks);
        ``started``: the first step's blocks are reserved."""
        m = min(self.ff, int(ve.d_rem[:lens.shape[0]].min()))
        if m <= 1 and started:
            return m
        if free is None:
            free = self._free(ve)
        # each decode needs its next KV block at run step f (1..bs when its step-0 block is
        # already held, else 0..bs-1), its later ones bs steps apart: a round of needs per bs
        # steps, in the same order, so the run ends before the (free+1)-th need
        f = (1 - lens) % self.bs
        if started:
            f[f == 0] = self.bs
        n = int(lens.shape[0])
        q, r = divmod(free, n)
        return min(m, int(np.partition(f, r)[r]) + q * self.bs)

    def _pipeline_run(self, ve: _VirtualEngine, k: int, t: float, horizon: float,
                      c0) -> float | None:
        """pp > 1: decode-only iterations of the pipeline's virtual engines, one event per engine.

        The virtual engines share the stages, so a run of one is only exact together with the
        others': with ``ve`` starting a decode-only step of all its decodes at ``t``, every other
        engine busy with decodes that will go on unchanged (nothing waiting or prefilling, the
        blocks of its next steps free) joins from the end of its current iteration. Their steps
        are replayed through the stages in the order the event loop would start them (an engine's
        step when its previous one ends; stage s when it is free and stage s-1 has finished),
        each engine's step costs interpolated linearly in context length between its first and
        last step (as :meth:`_decode_run`). An engine's run ends with its first finish, before its
        blocks run out and after at most ``ff`` steps; no step starts at or after ``horizon`` (the
        next arrival), the end of a busy engine that cannot join, or the end of the first run to
        stop (that engine schedules afresh then). The others start their runs when their current
        iteration ends (:meth:`_start_planned`). With a cost linear in the context the timeline is
        the step-by-step one up to float rounding. Returns None when ``ve`` could run only this
        step (the caller steps as usual).
        """
        bd = self.breakdown
        lim = self.lim
        # ve's second step starts when its first has left the pipeline (after time_s at least)
        soon = t + c0.time_s
        stop = horizon
        chunked = self.mode != "sglang" and (self.mode == "v1" or lim.chunked_prefill)
        joining = []
        for u in self.ves:
            if u is ve or not u.busy and not u.kick_pending:
                continue  # an idle engine starts on an arrival only, at or after horizon
            if u.kick_pending or u.planned is not None:
                return None  # it starts now (or is in a run already)
            n = int(u.d_id.shape[0])
            if not u.pre and not u.waiting:
                if n == 0:
                    continue  # it goes idle when its iteration ends
                if u.ends_at > t and n <= lim.max_num_seqs and \
                        (not chunked or n <= lim.max_num_batched_tokens):
                    joining.append(u)
                    continue
            stop = min(stop, u.ends_at)
        if stop <= soon:
            return None
        # a shared pool: the runs' blocks come out of the same free blocks, handed out in turn
        left = self._free(ve) if self.shared_pool else None
        m_v = self._fit_run(ve, ve.d_len[:k], True, left)
        if m_v <= 1:
            return None
        if left is not None:
            left -= self._extra_blocks(ve.d_len[:k], m_v - 1)
        members = [(ve, ve.d_len[:k], m_v, t, -1)]
        for u in joining:
            m = self._fit_run(u, u.d_len, False, left)
            if m >= 1 and left is not None:
                left -= self._extra_blocks(u.d_len - 1, m)
            if m >= 1:
                members.append((u, u.d_len, m, u.ends_at, u.order))
            else:
                stop = min(stop, u.ends_at)
        if stop <= soon:
            return None
        vals: list = [None] * len(members)

        def flat(c) -> tuple:
            return (max(0.0, c.time_s - sum(c.stage_times_s)), *c.stage_times_s, c.energy_j,
                    c.busy_gpu_s, c.flops, c.hbm_bytes)

        def step_vals(i: int, j: int):
            """(host, stages..., energy, busy, flops, bytes) of step 0 and their slope per step
            (the last step is costed only once a run reaches its second step)."""
            u, lens, m, _s, _o = members[i]
            if j == 0:
                a = c0 if i == 0 else self.cost.iteration(lens, (), prefill_sampling=0,
                                                          with_breakdown=bd is not None)
                return flat(a), None, a, a
            va, _sl, a, _b = vals[i]
            b = self.cost.iteration(lens + (m - 1), (), prefill_sampling=0,
                                    with_breakdown=bd is not None)
            return va, tuple((y - x) / (m - 1) for x, y in zip(va, flat(b))), a, b

        pp = lim.pp
        zero = (0.0,) * (pp + 5)
        sf = self.stage_free
        heap = [(s0, o, i) for i, (_u, _l, _m, s0, o) in enumerate(members)]
        heapq.heapify(heap)
        cnt = [0] * len(members)
        first_last = [[0.0, 0.0] for _ in members]  # (start, end) of each run's last step
        seq = self._order
        first = True
        while heap:
            s_, _o, i = heap[0]
            if s_ >= stop and not first:
                break
            heapq.heappop(heap)
            first = False
            j = cnt[i]
            if vals[i] is None or (j == 1 and vals[i][1] is None):
                vals[i] = step_vals(i, j)
            va, sl = vals[i][0], vals[i][1] or zero
            ready = s_ + va[0] + sl[0] * j
            for q in range(pp):
                dt = va[1 + q] + sl[1 + q] * j
                st = ready if ready > sf[q] else sf[q]
                ready = st + dt
                sf[q] = ready
            cnt[i] = j + 1
            first_last[i][0], first_last[i][1] = s_, ready
            if j + 1 == members[i][2]:
                if ready < stop:
                    stop = ready
            else:
                heapq.heappush(heap, (ready, seq, i))
                seq += 1
        end_v = t
        for i, (u, lens, m, _s, _o) in enumerate(members):
            n = cnt[i]
            if n == 0:
                continue
            va, sl, a, b = vals[i]
            sl = sl or zero
            tri = n * (n - 1) / 2
            tot = tuple(x * n + y * tri for x, y in zip(va[1 + pp:], sl[1 + pp:]))
            add: dict[str, float] = {}
            if bd is not None and a.breakdown is not None:
                ba, bb = a.breakdown, b.breakdown or {}
                skip = 1 if i == 0 else 0  # ve's first step was added by _step
                for key in list(ba) + [x for x in bb if x not in ba]:
                    v0, v1 = ba.get(key, 0.0), bb.get(key, 0.0)
                    add[key] = v0 * (n - skip) + (v1 - v0) / max(1, m - 1) * tri
            blocks = self._extra_blocks(lens, n - 1) if i == 0 else self._extra_blocks(lens - 1, n)
            plan = (n, first_last[i][0], first_last[i][1], tot, add, blocks)
            if i == 0:
                end_v = self._take_run(u, plan)
            else:
                if self.shared_pool and blocks:
                    # book a later run's blocks now: the pool's other engines must not take them
                    # before it starts
                    u.used_blocks += blocks
                    u.booked = blocks
                    plan = plan[:5] + (0,)
                    if u.used_blocks > self.stats.max_blocks_used:
                        self.stats.max_blocks_used = u.used_blocks
                u.planned = plan
        return end_v

    def _start_planned(self, ve: _VirtualEngine, t: float) -> float:
        """``ve``'s iteration ended at ``t``: its part of a pipeline decode run starts now."""
        plan, ve.planned = ve.planned, None
        ve.booked = 0  # the run's blocks are held by its sequences from now on
        end = self._take_run(ve, plan)
        if self.debug:
            self._check(ve)
        ve.busy = True
        ve.ends_at, ve.order = end, self._order
        self._order += 1
        return end

    def _count_decode_run(self, n: int, tot) -> ReplicaStats:
        """Add ``n`` decode iterations with (energy, busy GPU s, FLOPs, bytes) totals ``tot`` to
        the stats; returns them."""
        st = self.stats
        st.iterations += n
        st.decode_iterations += n
        st.energy_j += tot[0]
        st.busy_gpu_s += tot[1]
        st.flops += tot[2]
        st.hbm_bytes += tot[3]
        return st

    def _take_run(self, ve: _VirtualEngine, plan: tuple) -> float:
        """Commit a decode run of all of ``ve``'s decodes: (steps, start and end of the last,
        (energy, busy GPU s, FLOPs, bytes) totals, breakdown to add, blocks to allocate)."""
        n, last_start, end, tot, add, blocks = plan
        st = self._count_decode_run(n, tot)
        bd = self.breakdown
        if bd is not None:
            for key, val in add.items():
                bd[key] = bd.get(key, 0.0) + val
        if blocks:
            ve.used_blocks += blocks
            self._evict_if_needed(ve)
        if ve.used_blocks > st.max_blocks_used:
            st.max_blocks_used = ve.used_blocks
        ve.last_start = last_start
        self._advance_decodes(ve, int(ve.d_id.shape[0]), n, end,
                              first=end - (n - 1) * (end - last_start))
        return end

    def _period(self, c) -> tuple[float, float]:
        """(time until the next iteration can start, extra delay until this one's tokens are out).

        With vLLM 0.6's asynchronous output processing (on when pp == 1 and CUDA graphs are on)
        the output processing of iteration N (detokenise, stop checks, stats) runs on the CPU
        while the GPU executes iteration N + 1: the engine's period is
        ``serial host + max(GPU, output processing)`` and the tokens of N appear after their own
        processing, ``time_s`` after N started. ``host_serial_s`` of the cost (scheduling and
        input preparation, which cannot overlap) is used when the cost model provides it; else
        the whole host part of ``time_s`` is treated as overlappable output processing.
        """
        if not self.async_output:
            return c.time_s, 0.0
        gpu = sum(c.stage_times_s)
        host = max(0.0, c.time_s - gpu)
        serial = min(host, self.host_serial_s if self.host_serial_s is not None
                     else float(getattr(c, "host_serial_s", 0.0)))
        period = serial + max(gpu, host - serial)
        return period, c.time_s - period

    def _timing(self, t: float, time_s: float, stages: Sequence[float]) -> float:
        if self.lim.pp == 1:
            return t + time_s
        host = max(0.0, time_s - sum(stages))
        ready = t + host
        sf = self.stage_free
        for s, dt in enumerate(stages):
            start = ready if ready > sf[s] else sf[s]
            ready = start + dt
            sf[s] = ready
        return ready

    def _schedule_default(self, ve: _VirtualEngine):
        """vLLM ``_schedule_default`` without chunking: prefill-only or decode-only iterations."""
        log = self.log
        if ve.waiting:
            budget = self.lim.max_num_batched_tokens
            seqs = ve.running()
            tokens = 0
            prefill: list[tuple[int, int]] = []
            while ve.waiting:
                rid = ve.waiting[0]
                if log.queued_s[rid] > ve.cutoff:
                    break
                target = log.prompt[rid] + log.generated[rid]
                if tokens + target > budget or seqs + 1 > self.lim.max_num_seqs:
                    break
                adm = self._admit_head(ve, target, target, whole=True)
                if adm is None:
                    break
                chunk, cached = adm
                tokens += target
                seqs += 1
                prefill.append((chunk, cached))
            if prefill:
                return 0, prefill, len(prefill)
        return self._decode_only(ve)

    def _decode_only(self, ve: _VirtualEngine):
        k = int(ve.d_id.shape[0])
        if k == 0:
            return None
        k = self._reserve_decode_blocks(ve, k)
        return (k, [], 0) if k else None

    def _schedule_prefill_first(self, ve: _VirtualEngine):
        """SGLang: a prefill batch (the chunked request first, then FCFS admissions, the last one
        chunked to the token budget) runs whenever one can be formed, with no decodes in it;
        otherwise every running sequence decodes. With --enable-mixed-chunk the running decodes
        join the prefill batch instead (scheduler get_new_batch_prefill mix_with_running; the
        PrefillAdder's chunk budget is chunked_prefill_size less one token per running
        request): one token budget as vLLM's, but formed prefill-first."""
        if ve.pre or ve.waiting:
            plan = self._schedule_chunked(ve, with_decodes=self.lim.mixed_chunk)
            if plan is not None:
                return plan  # with mixed_chunk and no prefill formed: (k, [], 0), a decode step
        return self._decode_only(ve)

    def _chunk_cap(self, n: int, budget: int) -> int:
        cap = min(n, budget)
        th = self.lim.long_prefill_token_threshold
        return min(cap, th) if th > 0 else cap

    def _schedule_chunked(self, ve: _VirtualEngine, with_decodes: bool = True):
        """One token budget: running decodes, running (partial) prefills, then new prefills.

        vLLM 0.6 ``_schedule_chunked_prefill`` and V1 ``Scheduler.schedule`` (V1: blocks per
        chunk, preemption when a running prefill cannot grow, no admission after a preemption);
        with ``with_decodes=False`` the prefill batch of SGLang's prefill-first policy."""
        log, lim = self.log, self.lim
        v1 = self.mode == "v1"
        budget = lim.max_num_batched_tokens
        preempted_before = self.stats.preemptions
        k = min(int(ve.d_id.shape[0]), budget, lim.max_num_seqs) if with_decodes else 0
        if k:
            k = self._reserve_decode_blocks(ve, k)
        budget -= k
        prefill: list[tuple[int, int]] = []
        sampling = 0
        i = 0
        while i < len(ve.pre):
            entry = ve.pre[i]
            if budget <= 0:
                break
            chunk = self._chunk_cap(entry[1] - entry[2], budget)
            if v1 and entry[2] + chunk > entry[3]:
                grow = _cdiv(entry[2] + chunk, self.bs) - _cdiv(entry[3], self.bs)
                if grow > self._free(ve):
                    k = self._preempt_for(ve, k, grow, i)
                    if i >= len(ve.pre):  # this prefill itself was preempted
                        break
                ve.used_blocks += grow
                entry[3] = entry[2] + chunk
                self._evict_if_needed(ve)
            prefill.append((chunk, entry[2]))
            budget -= chunk
            if entry[2] + chunk == entry[1]:
                sampling += 1
            i += 1
        seqs = ve.running()
        reserve = self._decode_reserve(ve) if self.mode == "sglang" else 0.0
        admit = not (v1 and self.stats.preemptions > preempted_before)
        # SGLang --max-prefill-tokens (PrefillAdder.rem_input_tokens): less the mixed-in decodes'
        # tokens and the running chunked prefill's; a joiner whose new tokens are >= what is left
        # stops the batch once it holds a request, and the batch closes at 0
        cap = lim.max_prefill_tokens if self.mode == "sglang" else 0
        rem_input = cap - k - sum(c for c, _ in prefill) if cap else 0
        while admit and ve.waiting and budget > 0 and seqs < lim.max_num_seqs \
                and len(prefill) == len(ve.pre) and (not cap or rem_input > 0):
            rid = ve.waiting[0]
            if log.queued_s[rid] > ve.cutoff:  # not yet seen by the (one step ahead) scheduler
                break
            target = log.prompt[rid] + log.generated[rid]
            adm = self._admit_head(ve, target, budget, whole=not v1, reserve=reserve,
                                   max_input=rem_input if cap and prefill else None)
            if adm is None:
                break
            chunk, cached = adm
            seqs += 1
            budget -= chunk
            rem_input -= chunk
            prefill.append((chunk, cached))
            if cached + chunk == target:
                sampling += 1
            if self.mode == "sglang" and self.lim.new_token_ratio is not None:
                reserve += self._new_tokens(rid) / self.bs
        if k == 0 and not prefill:
            return None
        return k, prefill, sampling

    # ------------------------------------------------------------------ KV blocks
    def _seq_blocks(self, tokens: int) -> int:
        """KV blocks a sequence holding ``tokens`` tokens takes: its tokens' blocks plus the
        model's bounded per-sequence state (hybrid models: ``state_blocks``)."""
        return _cdiv(tokens, self.bs) + self.state_blocks

    def _free(self, ve: _VirtualEngine) -> int:
        """Blocks an allocation may take now (free cached prefix blocks are evictable)."""
        return self.nb - ve.used_blocks

    def _evict_if_needed(self, ve: _VirtualEngine) -> None:
        c = ve.cache
        if c is not None and ve.used_blocks + c.free_blocks > self.nb:
            self.stats.evicted_blocks += c.evict(ve.used_blocks + c.free_blocks - self.nb)

    def _new_tokens(self, rid: int) -> float:
        """SGLang's PrefillAdder.add_one_req: a request joining a prefill batch counts its whole
        remaining output (clipped at CLIP_MAX_NEW_TOKENS), not the new-token ratio of the running
        ones, both in its own admission test and in the budget the next joiner sees
        (_update_prefill_budget adds extend_input_len + max_new_tokens)."""
        left = self.log.output[rid] + self.log.extra[rid] - self.log.generated[rid]
        return float(min(left, self.lim.new_token_clip))

    def _decode_reserve(self, ve: _VirtualEngine) -> float:
        """SGLang: room kept for the running requests' future tokens (new-token ratio)."""
        if self.lim.new_token_ratio is None:
            return 0.0
        clip = self.lim.new_token_clip
        extra = self.log.extra
        left = float(np.minimum(ve.d_rem + extra[ve.d_id], clip).sum()) if ve.d_id.shape[0] else 0.0
        for e in ve.pre:
            left += min(self.log.output[e[0]] + extra[e[0]] - self.log.generated[e[0]], clip)
        return ve.ratio * left / self.bs

    def _admit_head(self, ve: _VirtualEngine, target: int, budget: int, *, whole: bool,
                    reserve: float = 0.0, max_input: int | None = None) -> tuple[int, int] | None:
        """Admit the head of ``waiting`` (``target`` tokens to prefill) if its blocks fit: look up
        its cached prefix, allocate the blocks of the whole prompt (``whole``: vLLM 0.6, SGLang)
        or of this step's chunk (vLLM V1) above the watermark / decode reserve, queue it as
        prefilling. ``max_input``: SGLang's remaining --max-prefill-tokens, which the uncached
        prompt tokens must stay below. Returns (chunk tokens this step, cached tokens before it)
        or ``None``."""
        rid = ve.waiting[0]
        chain: list[int] = []
        hit = 0
        cache = ve.cache
        if cache is not None:
            ids = self.log.prefix_blocks[rid]
            if ids:
                chain, hit = cache.match(ids, self.log.prompt[rid], target)
                if hit == 0:
                    chain = []
        cached = hit * self.bs
        if max_input is not None and target - cached >= max_input:
            return None  # SGLang PrefillAdder.add_one_req: AddReqResult.OTHER
        chunk = self._chunk_cap(target - cached, budget)
        alloc = target if whole else cached + chunk
        need = self._seq_blocks(alloc) - hit
        revive = sum(cache.blocks[n] for n in chain if cache.refs[n] == 0) if chain else 0
        free = self._free(ve) - revive - need
        if free < self.wm:
            return None
        if self.mode == "sglang" and self.lim.new_token_ratio is not None \
                and free < reserve + self._new_tokens(rid) / self.bs:
            return None  # SGLang PrefillAdder: no room for its and the running outputs
        ve.waiting.popleft()
        if chain:
            cache.ref(chain)
            ve.chain[rid] = chain
            ve.hit[rid] = hit
            self.stats.prefix_hit_tokens += cached
        elif cache is not None:
            ve.chain[rid] = []
            ve.hit[rid] = 0
        ve.used_blocks += revive + need
        ve.pre.append([rid, target, cached, alloc])
        self._evict_if_needed(ve)
        return chunk, cached

    def _cache_progress(self, ve: _VirtualEngine, rid: int, done: int) -> None:
        """Insert the prompt units of ``rid`` its prefill has computed (``done`` tokens)."""
        cache = ve.cache
        ids = self.log.prefix_blocks[rid]
        if not ids or rid in ve.no_insert:
            return
        chain = ve.chain.setdefault(rid, [])
        hit = ve.hit.get(rid, 0)
        if hit != sum(cache.blocks[n] for n in chain):  # capped full-prompt hit: nothing new
            return
        prompt = self.log.prompt[rid]
        unit = cache.unit
        k = len(chain)
        while k < len(ids) and min((k + 1) * unit, prompt) <= done:
            b = cache.unit_blocks(k, prompt)
            node = cache.insert(chain[-1] if chain else 0, ids[k], b)
            if node is None:
                ve.no_insert.add(rid)
                break
            chain.append(node)
            hit += b
            k += 1
        ve.hit[rid] = hit

    def _release(self, ve: _VirtualEngine, rid: int) -> int:
        """Drop ``rid``'s prefix references; returns (blocks it used from the cache, blocks that
        became free cached) as one number to subtract from ``used_blocks`` besides its private
        blocks: the private part is ``ceil(len / bs) - hit``."""
        chain = ve.chain.pop(rid, None)
        ve.no_insert.discard(rid)
        hit = ve.hit.pop(rid, 0)
        if not chain:
            return hit
        freed = ve.cache.release(chain)
        return hit - freed  # used -= private (= blocks - hit) + freed  <=> blocks - (hit - freed)

    def _reserve_decode_blocks(self, ve: _VirtualEngine, k: int) -> int:
        """Blocks for the first ``k`` decodes' next token; preempt from the queue's end if short.
        Returns how many decodes run (a prefix of the decode arrays)."""
        need_flags = (ve.d_len[:k] - 1) % self.bs == 0
        need = int(np.count_nonzero(need_flags))
        free = self._free(ve)
        if need > free:
            k, need = self._preempt(ve, k, need, need_flags)
        ve.used_blocks += need
        self._evict_if_needed(ve)
        return k

    def _preempt_one(self, ve: _VirtualEngine) -> tuple[int, bool]:
        """Preempt the last request of the running queue: (its id, was it a decode)."""
        log = self.log
        if ve.pre:
            rid, _target, _done, alloc = ve.pre.pop()
            ve.used_blocks -= self._seq_blocks(alloc) - self._release(ve, rid)
            dec = False
        else:
            n = int(ve.d_id.shape[0]) - 1
            rid = int(ve.d_id[n])
            length = int(ve.d_len[n])
            log.generated[rid] = length - log.prompt[rid]
            ve.used_blocks -= self._seq_blocks(length - 1) - self._release(ve, rid)
            ve.d_id, ve.d_len, ve.d_rem = ve.d_id[:n], ve.d_len[:n], ve.d_rem[:n]
            dec = True
        log.preemptions[rid] += 1
        self.stats.preemptions += 1
        return rid, dec

    def _preempt(self, ve: _VirtualEngine, k: int, need: int, flags: np.ndarray) -> tuple[int, int]:
        """Preempt (recompute) from the end of the running queue until ``need`` blocks are free.
        SGLang (retract_decode): until ``retract_decode_steps`` tokens per remaining decode are
        free too (at least one request goes, at least one stays), then its new-token ratio
        restarts from the survivors' progress: (decoded + steps x n) / (max_new_tokens + 1)."""
        victims: list[int] = []
        steps = self.lim.retract_decode_steps
        while need > self._free(ve) or (steps and int(ve.d_id.shape[0]) > 1
                                        and self._free(ve) * self.bs < steps * int(ve.d_id.shape[0])):
            n_before = int(ve.d_id.shape[0])
            rid, dec = self._preempt_one(ve)
            if dec:
                n = n_before - 1
                if n < k:
                    k = n
                    need -= int(flags[n])
            victims.append(rid)
        ve.waiting.extendleft(victims)
        if self.lim.new_token_ratio is not None and victims:
            log, n = self.log, int(ve.d_id.shape[0])
            ids = ve.d_id.tolist()
            decoded = float(ve.d_len.sum()) - sum(log.prompt[r] for r in ids)
            max_new = sum(log.output[r] + log.extra[r] for r in ids)
            ve.ratio = min(1.0, (decoded + steps * n) / (max_new + 1.0))
        return k, need

    def _preempt_for(self, ve: _VirtualEngine, k: int, grow: int, i: int) -> int:
        """V1: running prefill ``i`` needs ``grow`` blocks: preempt from the end of the running
        queue (the partial prefills admitted after it, then itself -- the decodes were admitted
        before it) until they fit or it was preempted. Returns the scheduled decodes."""
        victims: list[int] = []
        while grow > self._free(ve) and len(ve.pre) > i:
            rid, _ = self._preempt_one(ve)
            victims.append(rid)
        ve.waiting.extendleft(victims)
        return k

    # ------------------------------------------------------------------ effects
    def _advance_decodes(self, ve: _VirtualEngine, k: int, steps: int, end: float,
                         first: float | None = None, decay: bool = True) -> None:
        """The first ``k`` decodes ran ``steps`` iterations ending at ``end`` (the first of them
        at ``first``; default ``end``). ``decay``: SGLang's new-token ratio decays (decode-only
        steps: update_running_batch; not the decodes of a mixed-chunk prefill batch)."""
        if k == 0:
            return
        self.stats.decode_tokens += k * steps
        if self.fe is not None:  # the clients see these tokens when the front end wrote them
            gen = 0.0
            if self.fe.per_token_s:
                gen = float(self._out[ve.d_id[:k]].mean() - ve.d_rem[:k].mean())
            end = self.fe.emit(end if first is None else first, end, k, steps, gen)
        if self.lim.new_token_ratio is not None and decay:
            lo, dec = self.lim.new_token_ratio[1], self.lim.new_token_ratio[2]
            ve.ratio = max(lo, ve.ratio - dec * steps)
        if k == ve.d_id.shape[0]:
            ve.d_len = ve.d_len + steps
            ve.d_rem = ve.d_rem - steps
        else:
            ve.d_len = ve.d_len.copy()
            ve.d_rem = ve.d_rem.copy()
            ve.d_len[:k] += steps
            ve.d_rem[:k] -= steps
        done = ve.d_rem[:k] == 0
        if not done.any():
            return
        idx = np.flatnonzero(done)
        fin_ids = ve.d_id[idx]
        self.log.finish_s[fin_ids] = end
        if self.log.done_sink is not None:
            self.log.done_sink.extend((r, end) for r in fin_ids.tolist())
        gen, out = self.log.generated, self.log.output
        for r in fin_ids.tolist():
            gen[r] = out[r]
        freed = int((-(-(ve.d_len[idx] - 1) // self.bs)).sum()) + self.state_blocks * int(idx.shape[0])
        if ve.chain:
            for r in fin_ids.tolist():
                freed -= self._release(ve, r)
        ve.used_blocks -= freed
        ve.pending_done += int(idx.shape[0])
        keep = np.ones(ve.d_id.shape[0], dtype=bool)
        keep[idx] = False
        ve.d_id, ve.d_len, ve.d_rem = ve.d_id[keep], ve.d_len[keep], ve.d_rem[keep]

    def _advance_prefills(self, ve: _VirtualEngine, prefill: list[tuple[int, int]], end: float) -> None:
        log, st = self.log, self.stats
        if self.fe is not None:  # completed prompts stream their first token through it
            done = sum(1 for i, e in enumerate(ve.pre[:len(prefill)])
                       if e[2] + prefill[i][0] >= e[1])
            if done:
                end = self.fe.emit(end, end, done, 1, 0.0)
        new_id, new_len, new_rem = [], [], []
        remaining = []
        for i, entry in enumerate(ve.pre):
            if i >= len(prefill):
                remaining.append(entry)
                continue
            rid, target, done, alloc = entry
            chunk = prefill[i][0]
            done += chunk
            if log.generated[rid]:
                st.recomputed_tokens += chunk
            else:
                st.prefill_tokens += chunk
            if ve.cache is not None:
                self._cache_progress(ve, rid, min(done, log.prompt[rid]))
            if done < target:
                entry[2] = done
                remaining.append(entry)
                continue
            if np.isnan(log.first_s[rid]):
                log.first_s[rid] = end
            gen = log.generated[rid] + 1
            log.generated[rid] = gen
            rem = log.output[rid] - gen
            if rem <= 0:
                log.finish_s[rid] = end
                if log.done_sink is not None:
                    log.done_sink.append((rid, end))
                ve.used_blocks -= self._seq_blocks(target) - self._release(ve, rid)
                ve.pending_done += 1
            else:
                new_id.append(rid)
                new_len.append(target + 1)
                new_rem.append(rem)
        ve.pre = remaining
        if new_id:
            ve.d_id = np.concatenate((ve.d_id, np.asarray(new_id, dtype=np.int64)))
            ve.d_len = np.concatenate((ve.d_len, np.asarray(new_len, dtype=np.int64)))
            ve.d_rem = np.concatenate((ve.d_rem, np.asarray(new_rem, dtype=np.int64)))

    def _check(self, ve: _VirtualEngine) -> None:
        """Debug invariant: block accounting matches the running set and stays within capacity
        (with a shared pool: every sharing engine's running set and booked run blocks)."""
        held = 0
        for u in (self.ves if self.shared_pool else (ve,)):
            hit = u.hit
            held += sum(_cdiv(int(n) - 1, self.bs) - hit.get(int(r), 0)
                        for r, n in zip(u.d_id.tolist(), u.d_len.tolist()))
            held += sum(_cdiv(e[3], self.bs) - hit.get(e[0], 0) for e in u.pre)
            held += self.state_blocks * u.running() + u.booked
        if ve.cache is not None:
            c = ve.cache
            held += sum(c.blocks[n] for n, r in c.refs.items() if r > 0)
            assert c.free_blocks == sum(c.blocks[n] for n in c.free), "free cached blocks"
            assert ve.used_blocks + c.free_blocks <= self.nb, "cache over capacity"
        assert held == ve.used_blocks, f"block accounting {ve.used_blocks} != held {held}"
        assert 0 <= ve.used_blocks <= self.nb, f"{ve.used_blocks} blocks used of {self.nb}"
        assert ve.running() <= self.lim.max_num_seqs
