"""One serving replica, iteration by iteration, scheduled like vLLM 0.6.0's V0 engine.

State per *virtual engine* (vLLM runs ``pp`` of them under pipeline parallelism, each with its own
scheduler and ``num_blocks // pp`` KV blocks; with ``pp == 1`` there is one):

* ``waiting`` -- FCFS deque of request ids (preempted requests go back to its front);
* the running queue in admission order: decoding sequences as numpy arrays (id, sequence length,
  tokens still to generate) followed by partially prefilled sequences (chunked prefill only);
* the number of KV blocks in use (paged KV: a sequence with ``n`` tokens in its KV cache holds
  ``ceil(n / block_size)`` blocks; a prefill allocates the blocks of its whole prompt up front).

Scheduling (one call per iteration):

* chunked prefill OFF (``_schedule_default``): admit waiting requests FCFS while the token budget
  (``max_num_batched_tokens``, whole prompts), the sequence budget (``max_num_seqs`` including the
  running ones) and the free blocks (keeping a watermark of 1 % of the blocks free) allow; if any
  was admitted the iteration is prefill-only, otherwise every running sequence decodes one token;
* chunked prefill ON (``_schedule_chunked_prefill``): running decodes first (1 token each), then
  the partially prefilled sequences continue, then waiting requests are admitted with chunks that
  fill what is left of the token budget -- one mixed batch;
* prefill-first (``_schedule_prefill_first``, SGLang): a prefill batch built like the chunked one
  but without decodes runs whenever it is non-empty; otherwise all running sequences decode;
* a decode that needs a new block when none is free preempts the *last* sequence of the running
  queue (recompute: its blocks are freed, it returns to the front of ``waiting`` and later
  prefills prompt + generated tokens again, keeping its generated tokens and first-token time).

A prefill that completes a prompt yields a token at the end of its iteration (the first token for a
fresh request); each decode yields one token. Requests that can never be served (prompt + output >
``max_model_len``, larger than the KV cache, or -- without chunked prefill -- larger than the token
budget) are dropped on arrival with a reason code, never lost.

Time: an iteration of a virtual engine starts when it is scheduled; the host part of
``IterationCost.time_s`` (``time_s − Σ stage_times_s``) runs first, then stage ``s`` runs when it
is free and stage ``s − 1`` has finished (micro-batches of different virtual engines overlap in the
pipeline). The next iteration of the same virtual engine is scheduled when this one leaves the last
stage. With ``pp == 1`` an iteration simply takes ``time_s``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

#: Reason codes of dropped requests (0 = served).
DROP_NONE = 0
DROP_MAX_MODEL_LEN = 1
DROP_KV_CAPACITY = 2
DROP_TOKEN_BUDGET = 3
DROP_REASONS = {
    DROP_MAX_MODEL_LEN: "prompt + output exceeds max_model_len",
    DROP_KV_CAPACITY: "prompt + output does not fit in the KV cache",
    DROP_TOKEN_BUDGET: "prompt + output exceeds max_num_batched_tokens (chunked prefill off)",
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
    watermark_fraction: float = WATERMARK_FRACTION
    #: SGLang-style batching: a (chunked) prefill batch runs whenever one can be formed and
    #: decodes wait for it; no mixed decode+prefill batches
    prefill_first: bool = False

    @property
    def blocks_per_virtual_engine(self) -> int:
        return self.num_blocks // self.pp

    @property
    def watermark_blocks(self) -> int:
        return int(self.watermark_fraction * self.blocks_per_virtual_engine)


class RequestLog:
    """Per-request state and outcome arrays shared by all replicas of one simulation.

    ``generated`` is exact for waiting and finished requests; for a decoding request the engine
    keeps the live count in its arrays (sequence length − prompt) and writes it back here when the
    request leaves them (preemption or finish).
    """

    def __init__(self, prompt: np.ndarray, output: np.ndarray):
        n = int(prompt.shape[0])
        self.prompt: list[int] = prompt.tolist()
        self.output: list[int] = output.tolist()
        self.generated: list[int] = [0] * n
        self.first_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.dropped = np.zeros(n, dtype=np.int8)
        self.preemptions = np.zeros(n, dtype=np.int32)
        self.replica = np.full(n, -1, dtype=np.int32)
        #: optional sink: when a list, the engine appends ``(request id, time s)`` whenever a
        #: request finishes or is dropped (the router's closed-loop clients drain it)
        self.done_sink: list[tuple[int, float]] | None = None


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
    # partially prefilled sequences (chunked prefill): [id, target tokens, tokens done]
    pre: list = field(default_factory=list)
    used_blocks: int = 0
    busy: bool = False
    kick_pending: bool = False
    unfinished: int = 0
    pending_done: int = 0

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
                 async_output: bool = False):
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
        #: vLLM 0.6 async output processing (overlaps host output work with the next GPU step);
        #: only with pp == 1 (vLLM disables it under pipeline parallelism)
        self.async_output = async_output and limits.pp == 1
        self.bs = limits.block_size
        self.nb = limits.blocks_per_virtual_engine
        self.wm = limits.watermark_blocks
        self.ves = [_VirtualEngine() for _ in range(limits.pp)]
        self.stage_free = [0.0] * limits.pp
        self.stats = ReplicaStats()
        #: seconds by operator class summed over iterations (only when ``breakdown``)
        self.breakdown: dict[str, float] | None = {} if breakdown else None

    # ------------------------------------------------------------------ outside interface
    @property
    def unfinished(self) -> int:
        """Requests assigned to this replica that have not finished yet."""
        return sum(v.unfinished for v in self.ves)

    def drop_reason(self, rid: int) -> int:
        """Why request ``rid`` could never be served by this replica (0 = it can be)."""
        p, o = self.log.prompt[rid], self.log.output[rid]
        lim = self.lim
        if p + o > lim.max_model_len:
            return DROP_MAX_MODEL_LEN
        # the longest KV state (last decode step holds p + o - 1 tokens) must fit in an empty cache
        if _cdiv(p + o - 1, self.bs) > self.nb - self.wm:
            return DROP_KV_CAPACITY
        if not lim.chunked_prefill and p + o - 1 > lim.max_num_batched_tokens:
            return DROP_TOKEN_BUDGET
        return DROP_NONE

    def submit(self, rid: int, t: float) -> int | None:
        """Request ``rid`` arrives at ``t``. Returns the index of the virtual engine it joined when
        that one is idle and must be kicked (:meth:`kick`) once every arrival at ``t`` is queued;
        else ``None``."""
        log = self.log
        log.replica[rid] = self.index
        self.stats.requests += 1
        reason = self.drop_reason(rid)
        if reason:
            log.dropped[rid] = reason
            self.stats.dropped += 1
            if log.done_sink is not None:
                log.done_sink.append((rid, t))
            return None
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
        return self._step(ve, t, horizon)

    def complete(self, v: int, t: float, horizon: float = float("inf")) -> float | None:
        """The iteration (or decode run) of virtual engine ``v`` ended at ``t``: commit it and
        start the next one."""
        ve = self.ves[v]
        ve.busy = False
        ve.unfinished -= ve.pending_done
        ve.pending_done = 0
        self.stats.last_event_s = max(self.stats.last_event_s, t)
        return self._step(ve, t, horizon)

    def idle(self, v: int) -> bool:
        return not self.ves[v].busy

    # ------------------------------------------------------------------ scheduling
    def _step(self, ve: _VirtualEngine, t: float, horizon: float = float("inf")) -> float | None:
        if self.lim.prefill_first:
            plan = self._schedule_prefill_first(ve)
        elif self.lim.chunked_prefill:
            plan = self._schedule_chunked(ve)
        else:
            plan = self._schedule_default(ve)
        if plan is None:
            return None
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
        if (not prefill and self.ff > 1 and self.lim.pp == 1 and bd is None
                and k == ve.d_id.shape[0] and not ve.pre):
            end = self._decode_run(ve, k, t, horizon, c)
        else:
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
            self._advance_decodes(ve, k, 1, end + lag)
            if prefill:
                self._advance_prefills(ve, prefill, end + lag)
        if self.debug:
            self._check(ve)
        ve.busy = True
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
        m = min(self.ff, int(ve.d_rem[:k].min()))
        free = self.nb - ve.used_blocks
        if m > 1 and self._extra_blocks(lens, m - 1) > free:
            lo, hi = 1, m - 1  # largest m with extra(m - 1) <= free: extra(0) == 0 fits
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self._extra_blocks(lens, mid - 1) <= free:
                    lo = mid
                else:
                    hi = mid - 1
            m = lo
        p0, lag0 = self._period(c0)
        vals0 = (p0, c0.energy_j, c0.busy_gpu_s, c0.flops, c0.hbm_bytes)
        lag = lag0
        run = m
        if m > 1:
            c1 = self.cost.iteration(lens + (m - 1), ())
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
        end = t + tot[0]
        st = self.stats
        st.iterations += m
        st.decode_iterations += m
        st.energy_j += tot[1]
        st.busy_gpu_s += tot[2]
        st.flops += tot[3]
        st.hbm_bytes += tot[4]
        if m > 1:
            ve.used_blocks += self._extra_blocks(lens, m - 1)
            if ve.used_blocks > st.max_blocks_used:
                st.max_blocks_used = ve.used_blocks
        self._advance_decodes(ve, k, m, end + lag)
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
        serial = min(host, float(getattr(c, "host_serial_s", 0.0)))
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
        free = self.nb - ve.used_blocks
        if ve.waiting:
            budget = self.lim.max_num_batched_tokens
            seqs = ve.running()
            tokens = 0
            prefill: list[tuple[int, int]] = []
            while ve.waiting:
                rid = ve.waiting[0]
                target = log.prompt[rid] + log.generated[rid]
                if tokens + target > budget or seqs + 1 > self.lim.max_num_seqs:
                    break
                need = self._admit_head(ve, target, free)
                if need is None:
                    break
                free -= need
                tokens += target
                seqs += 1
                prefill.append((target, 0))
            if prefill:
                return 0, prefill, len(prefill)
        k = int(ve.d_id.shape[0])
        if k == 0:
            return None
        k = self._reserve_decode_blocks(ve, k)
        if k == 0:
            return None
        return k, [], 0

    def _schedule_prefill_first(self, ve: _VirtualEngine):
        """SGLang: a prefill batch (the chunked request first, then FCFS admissions, the last one
        chunked to the token budget) runs whenever one can be formed, with no decodes in it;
        otherwise every running sequence decodes."""
        if ve.pre or ve.waiting:
            plan = self._schedule_chunked(ve, with_decodes=False)
            if plan is not None:
                return plan
        k = int(ve.d_id.shape[0])
        if k == 0:
            return None
        k = self._reserve_decode_blocks(ve, k)
        return (k, [], 0) if k else None

    def _schedule_chunked(self, ve: _VirtualEngine, with_decodes: bool = True):
        """vLLM ``_schedule_chunked_prefill``: decodes, running prefills, new prefills; mixed."""
        log, lim = self.log, self.lim
        budget = lim.max_num_batched_tokens
        k = min(int(ve.d_id.shape[0]), budget, lim.max_num_seqs) if with_decodes else 0
        if k:
            k = self._reserve_decode_blocks(ve, k)
        budget -= k
        prefill: list[tuple[int, int]] = []
        sampling = 0
        for entry in ve.pre:
            if budget <= 0:
                break
            chunk = min(entry[1] - entry[2], budget)
            prefill.append((chunk, entry[2]))
            budget -= chunk
            if entry[2] + chunk == entry[1]:
                sampling += 1
        seqs = ve.running()
        free = self.nb - ve.used_blocks
        while ve.waiting and budget > 0 and seqs < lim.max_num_seqs:
            rid = ve.waiting[0]
            target = log.prompt[rid] + log.generated[rid]
            need = self._admit_head(ve, target, free)
            if need is None:
                break
            free -= need
            seqs += 1
            chunk = min(target, budget)
            budget -= chunk
            prefill.append((chunk, 0))
            if chunk == target:
                sampling += 1
        if k == 0 and not prefill:
            return None
        return k, prefill, sampling

    def _admit_head(self, ve: _VirtualEngine, target: int, free: int) -> int | None:
        """Admit the head of ``waiting`` (prefilling ``target`` tokens) if the blocks of its whole
        prompt fit above the watermark: allocate them, queue it as prefilling, return the blocks
        taken; else ``None``."""
        need = _cdiv(target, self.bs)
        if free - need < self.wm:
            return None
        rid = ve.waiting.popleft()
        ve.used_blocks += need
        ve.pre.append([rid, target, 0])
        return need

    def _reserve_decode_blocks(self, ve: _VirtualEngine, k: int) -> int:
        """Blocks for the first ``k`` decodes' next token; preempt from the queue's end if short.
        Returns how many decodes run (a prefix of the decode arrays)."""
        need_flags = (ve.d_len[:k] - 1) % self.bs == 0
        need = int(np.count_nonzero(need_flags))
        free = self.nb - ve.used_blocks
        if need > free:
            k, need = self._preempt(ve, k, need, need_flags)
        ve.used_blocks += need
        return k

    def _preempt(self, ve: _VirtualEngine, k: int, need: int, flags: np.ndarray) -> tuple[int, int]:
        """Preempt (recompute) from the end of the running queue until ``need`` blocks are free."""
        log, st = self.log, self.stats
        victims: list[int] = []
        n = int(ve.d_id.shape[0])
        while need > self.nb - ve.used_blocks:
            if ve.pre:
                rid, target, _done = ve.pre.pop()
                ve.used_blocks -= _cdiv(target, self.bs)
            else:
                n -= 1
                rid = int(ve.d_id[n])
                length = int(ve.d_len[n])
                log.generated[rid] = length - log.prompt[rid]
                ve.used_blocks -= _cdiv(length - 1, self.bs)
                if n < k:
                    k = n
                    need -= int(flags[n])
            victims.append(rid)
            log.preemptions[rid] += 1
            st.preemptions += 1
        if n < ve.d_id.shape[0]:
            ve.d_id, ve.d_len, ve.d_rem = ve.d_id[:n], ve.d_len[:n], ve.d_rem[:n]
        ve.waiting.extendleft(victims)
        return k, need

    # ------------------------------------------------------------------ effects
    def _advance_decodes(self, ve: _VirtualEngine, k: int, steps: int, end: float) -> None:
        """The first ``k`` decodes ran ``steps`` iterations ending at ``end``."""
        if k == 0:
            return
        self.stats.decode_tokens += k * steps
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
        freed = -(-(ve.d_len[idx] - 1) // self.bs)
        ve.used_blocks -= int(freed.sum())
        ve.pending_done += int(idx.shape[0])
        keep = np.ones(ve.d_id.shape[0], dtype=bool)
        keep[idx] = False
        ve.d_id, ve.d_len, ve.d_rem = ve.d_id[keep], ve.d_len[keep], ve.d_rem[keep]

    def _advance_prefills(self, ve: _VirtualEngine, prefill: list[tuple[int, int]], end: float) -> None:
        log, st = self.log, self.stats
        new_id, new_len, new_rem = [], [], []
        remaining = []
        for i, entry in enumerate(ve.pre):
            if i >= len(prefill):
                remaining.append(entry)
                continue
            rid, target, done = entry
            chunk = prefill[i][0]
            done += chunk
            if log.generated[rid]:
                st.recomputed_tokens += chunk
            else:
                st.prefill_tokens += chunk
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
                ve.used_blocks -= _cdiv(target, self.bs)
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
        """Debug invariant: block accounting matches the running set and stays within capacity."""
        held = int((-(-(ve.d_len - 1) // self.bs)).sum()) + sum(_cdiv(e[1], self.bs) for e in ve.pre)
        assert held == ve.used_blocks, f"block accounting {ve.used_blocks} != held {held}"
        assert 0 <= ve.used_blocks <= self.nb, f"{ve.used_blocks} blocks used of {self.nb}"
        assert ve.running() <= self.lim.max_num_seqs
