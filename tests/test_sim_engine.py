"""Engine + router semantics with a simple analytical iteration cost (fast, exact timelines)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apex_opt.sim.engine import (DROP_KV_CAPACITY, DROP_MAX_MODEL_LEN, EngineLimits, ReplicaEngine,
                                 RequestLog)
from apex_opt.sim.router import run_cluster


class Cost(NamedTuple):
    time_s: float
    stage_times_s: tuple
    energy_j: float
    busy_gpu_s: float
    flops: float
    hbm_bytes: float
    breakdown: dict | None


class LinearCost:
    """time = base + per_token × tokens + per_ctx × Σ decode context; split evenly over stages."""

    num_gpus = 1
    idle_power_w = 100.0

    def __init__(self, base=0.01, per_token=1e-4, per_ctx=0.0, pp=1, host=0.0):
        self.base, self.per_token, self.per_ctx, self.pp, self.host = base, per_token, per_ctx, pp, host
        self.calls: list[tuple[int, int]] = []

    def iteration(self, decode_ctx, prefill=(), *, with_breakdown=False, prefill_sampling=None):
        tokens = len(decode_ctx) + sum(q for q, _ in prefill)
        self.calls.append((len(decode_ctx), len(prefill)))
        gpu = self.base + self.per_token * tokens + self.per_ctx * float(np.sum(decode_ctx))
        return Cost(gpu + self.host, tuple([gpu / self.pp] * self.pp), gpu * 300, gpu, 0.0, 0.0,
                    None)


def _run(arrival, prompt, output, *, chunked=False, blocks=10_000, budget=None, pp=1, cost=None,
         replicas=1, router="round_robin", max_seqs=256, max_len=8192, ff=1):
    arrival = np.asarray(arrival, dtype=float)
    log = RequestLog(np.asarray(prompt, dtype=np.int64), np.asarray(output, dtype=np.int64))
    lim = EngineLimits(num_blocks=blocks, block_size=16, max_num_seqs=max_seqs,
                       max_num_batched_tokens=budget or (512 if chunked else max_len),
                       max_model_len=max_len, chunked_prefill=chunked, pp=pp)
    cost = cost or LinearCost(pp=pp)
    engines = [ReplicaEngine(i, cost, lim, log, debug=True, fast_forward=ff)
               for i in range(replicas)]
    end = run_cluster(engines, arrival, router)
    return log, engines, end


def test_single_request_exact_timeline():
    cost = LinearCost(base=0.1, per_token=0.0)
    log, (eng,), end = _run([0.0], [10], [3], cost=cost)
    assert log.first_s[0] == pytest.approx(0.1)
    assert log.finish_s[0] == pytest.approx(0.3)
    assert cost.calls == [(0, 1), (1, 0), (1, 0)]
    assert eng.stats.max_blocks_used == 1 and eng.ves[0].used_blocks == 0
    assert end == pytest.approx(0.3)


def test_one_token_output_finishes_at_prefill_end():
    log, _, _ = _run([0.0, 0.0], [100, 50], [1, 1])
    assert np.array_equal(log.first_s, log.finish_s)


def test_simultaneous_arrivals_share_one_prefill():
    cost = LinearCost(base=0.1, per_token=0.0)
    log, _, _ = _run([0.0, 0.0, 0.0], [10, 20, 30], [2, 2, 2], cost=cost)
    assert cost.calls[0] == (0, 3)
    assert np.allclose(log.first_s, 0.1) and np.allclose(log.finish_s, 0.2)


def test_unchunked_prefill_stalls_decodes_chunked_mixes():
    arrival, prompt, output = [0.0, 0.2], [16, 2000], [100, 1]
    slow, _, _ = _run(arrival, prompt, output, chunked=False)
    fast, engines, _ = _run(arrival, prompt, output, chunked=True)
    # unchunked: request 0 gets no token while the 2000-token prompt is prefilled (0.01 + 0.2 s)
    decode_only = 99 * (0.01 + 1e-4)
    assert slow.finish_s[0] - slow.first_s[0] >= decode_only + 0.2
    assert fast.finish_s[0] < slow.finish_s[0]
    st = engines[0].stats
    assert st.mixed_iterations >= 3  # 2000 tokens in 512-token chunks ride along with decodes


def test_chunked_prefill_spans_iterations_and_first_token_after_last_chunk():
    cost = LinearCost(base=0.1, per_token=0.0)
    log, (eng,), _ = _run([0.0], [1200], [2], chunked=True, cost=cost)
    # 512 + 512 + 176 tokens: three prefill iterations, then one decode
    assert log.first_s[0] == pytest.approx(0.3) and log.finish_s[0] == pytest.approx(0.4)
    assert cost.calls == [(0, 1)] * 3 + [(1, 0)]


def test_tiny_kv_preempts_and_pays_for_it():
    rng = np.random.default_rng(1)
    n = 40
    arrival = np.sort(rng.uniform(0, 0.5, n))
    prompt, output = rng.integers(50, 200, n), rng.integers(100, 300, n)
    big, (e_big,), end_big = _run(arrival, prompt, output, blocks=10_000)
    small, (e_small,), end_small = _run(arrival, prompt, output, blocks=60)
    assert e_big.stats.preemptions == 0
    assert e_small.stats.preemptions > 0 and small.preemptions.sum() == e_small.stats.preemptions
    assert e_small.stats.recomputed_tokens > 0
    assert e_small.stats.max_blocks_used <= 60
    assert np.all(np.isfinite(small.finish_s))
    assert np.nanmean(small.finish_s - arrival) > np.nanmean(big.finish_s - arrival)
    # a preempted request keeps its first-token time
    assert np.all(small.first_s <= small.finish_s)


def test_drops_are_reported_not_lost():
    log, (eng,), _ = _run([0.0, 0.1, 0.2], [100, 9000, 100], [10, 10, 20_000], max_len=8192)
    assert log.dropped.tolist() == [0, DROP_MAX_MODEL_LEN, DROP_MAX_MODEL_LEN]
    assert eng.stats.dropped == 2 and np.isfinite(log.finish_s[0])
    log, (eng,), _ = _run([0.0, 0.1], [100, 1000], [10, 10], blocks=20)
    assert log.dropped.tolist() == [0, DROP_KV_CAPACITY]


def test_pipeline_virtual_engines_overlap():
    rng = np.random.default_rng(0)
    n = 64
    arrival, prompt, output = np.zeros(n), rng.integers(20, 100, n), rng.integers(20, 60, n)
    cost1 = LinearCost(base=0.02, per_token=0.0)
    _, _, end1 = _run(arrival, prompt, output, cost=cost1, max_seqs=16)
    cost2 = LinearCost(base=0.02, per_token=0.0, pp=2)
    log2, (eng2,), end2 = _run(arrival, prompt, output, cost=cost2, max_seqs=16, pp=2)
    assert np.all(np.isfinite(log2.finish_s))
    # two virtual engines of 16 seqs each, stages of 0.01 s in a pipeline: well under the pp=1 time
    assert end2 < 0.75 * end1
    iters = eng2.stats.iterations
    assert end2 >= iters * 0.01 - 1e-9  # a stage never runs two micro-batches at once


@pytest.mark.parametrize("router", ["round_robin", "least_outstanding"])
def test_router_conserves_requests(router):
    rng = np.random.default_rng(3)
    n = 300
    arrival = np.cumsum(rng.exponential(0.01, n))
    prompt, output = rng.integers(10, 400, n), rng.integers(1, 80, n)
    log, engines, _ = _run(arrival, prompt, output, replicas=3, router=router, blocks=400)
    assert sum(e.stats.requests for e in engines) == n
    assert np.all(log.replica >= 0) and np.all(np.isfinite(log.finish_s))
    if router == "round_robin":
        assert np.array_equal(log.replica, np.arange(n) % 3)
    else:
        counts = np.bincount(log.replica, minlength=3)
        assert counts.min() > 0.2 * n
    assert all(e.unfinished == 0 for e in engines)


def _mean_ttft(rate_scale: float, chunked: bool) -> float:
    rng = np.random.default_rng(7)
    n = 120
    gaps = rng.exponential(0.05, n)
    arrival = np.cumsum(gaps) / rate_scale
    prompt, output = rng.integers(50, 600, n), rng.integers(5, 120, n)
    log, _, _ = _run(arrival, prompt, output, chunked=chunked, blocks=300,
                     cost=LinearCost(per_ctx=1e-7))
    return float(np.mean(log.first_s - arrival))


@pytest.mark.parametrize("chunked", [False, True])
def test_more_load_never_lowers_mean_ttft(chunked):
    ttfts = [_mean_ttft(s, chunked) for s in (0.5, 1.0, 2.0, 4.0, 8.0)]
    assert all(b >= a for a, b in zip(ttfts, ttfts[1:])), ttfts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 40), seed=st.integers(0, 10_000), chunked=st.booleans(),
       blocks=st.integers(8, 200), pp=st.sampled_from([1, 2]), budget=st.sampled_from([64, 512]),
       max_seqs=st.sampled_from([2, 8, 256]))
def test_property_every_request_accounted(n, seed, chunked, blocks, pp, budget, max_seqs):
    rng = np.random.default_rng(seed)
    arrival = np.sort(rng.uniform(0, 1.0, n))
    prompt, output = rng.integers(1, 300, n), rng.integers(1, 200, n)
    log, (eng,), _ = _run(arrival, prompt, output, chunked=chunked, blocks=blocks, pp=pp,
                          budget=budget if chunked else None, max_seqs=max_seqs, max_len=2048)
    served = log.dropped == 0
    assert np.all(np.isfinite(log.finish_s[served])) and np.all(np.isnan(log.finish_s[~served]))
    assert np.all(arrival[served] < log.first_s[served])
    assert np.all(log.first_s[served] <= log.finish_s[served])
    assert eng.stats.max_blocks_used <= blocks // pp
    assert eng.unfinished == 0 and all(v.used_blocks == 0 for v in eng.ves)
    gen = np.asarray(log.generated)
    assert np.array_equal(gen[served], np.asarray(output)[served])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), chunked=st.booleans(), blocks=st.sampled_from([40, 150, 5000]),
       replicas=st.sampled_from([1, 2]), ff=st.sampled_from([2, 7, 64]))
def test_property_decode_runs_match_stepping(seed, chunked, blocks, replicas, ff):
    """Decode-only runs are exact for a cost linear in context: same timings, same preemptions."""
    rng = np.random.default_rng(seed)
    n = 30
    arrival = np.sort(rng.uniform(0, 2.0, n))
    prompt, output = rng.integers(1, 300, n), rng.integers(1, 200, n)
    kw = dict(chunked=chunked, blocks=blocks, replicas=replicas, router="least_outstanding",
              max_len=2048)
    a, ea, _ = _run(arrival, prompt, output, cost=LinearCost(per_ctx=1e-6), ff=1, **kw)
    b, eb, _ = _run(arrival, prompt, output, cost=LinearCost(per_ctx=1e-6), ff=ff, **kw)
    assert np.array_equal(a.dropped, b.dropped) and np.array_equal(a.replica, b.replica)
    assert np.allclose(a.first_s, b.first_s, rtol=1e-9, equal_nan=True)
    assert np.allclose(a.finish_s, b.finish_s, rtol=1e-9, equal_nan=True)
    assert np.array_equal(a.preemptions, b.preemptions)
    for x, y in zip(ea, eb):
        assert x.stats.iterations == y.stats.iterations
        assert x.stats.energy_j == pytest.approx(y.stats.energy_j, rel=1e-9)
        assert x.stats.max_blocks_used == y.stats.max_blocks_used


def test_async_output_overlaps_host_with_next_step():
    """Async output processing: period = max(GPU, host); tokens appear time_s after the start."""
    prompt, output = [10], [4]
    log = RequestLog(np.asarray(prompt), np.asarray(output))
    lim = EngineLimits(num_blocks=100, block_size=16, max_num_seqs=8, max_num_batched_tokens=512,
                       max_model_len=1024, chunked_prefill=False)
    cost = LinearCost(base=0.1, per_token=0.0, host=0.04)
    eng = ReplicaEngine(0, cost, lim, log, async_output=True)
    run_cluster([eng], np.zeros(1), "round_robin")
    # periods of 0.1 s (host hidden); the last token is out 0.04 s after the last GPU step
    assert log.first_s[0] == pytest.approx(0.14)
    assert log.finish_s[0] == pytest.approx(0.44)
    log2, _, _ = _run([0.0], prompt, output, cost=LinearCost(base=0.1, per_token=0.0, host=0.04))
    assert log2.finish_s[0] == pytest.approx(0.56)  # serial host: 4 × 0.14 s


def test_prefill_first_sglang_chunks_without_mixing():
    """SGLang-style batching: a chunked prefill runs in prefill-only iterations; the running decode
    waits for every chunk (vLLM's chunked mode would carry it along in mixed batches)."""
    arrival, prompt, output = [0.0, 0.05], [16, 1200], [50, 1]
    log = RequestLog(np.asarray(prompt, dtype=np.int64), np.asarray(output, dtype=np.int64))
    lim = EngineLimits(num_blocks=10_000, block_size=1, max_num_seqs=256, max_num_batched_tokens=512,
                       max_model_len=8192, chunked_prefill=True, prefill_first=True,
                       watermark_fraction=0.0)
    cost = LinearCost(base=0.01, per_token=0.0)
    eng = ReplicaEngine(0, cost, lim, log, debug=True)
    run_cluster([eng], np.asarray(arrival), "round_robin")
    # no iteration mixes decodes with prefill chunks
    assert all(d == 0 or p == 0 for d, p in cost.calls)
    # the 1200-token prompt takes three prefill-only chunks (512 + 512 + 176)
    assert sum(1 for d, p in cost.calls if p and d == 0) == 4  # + the first request's own prefill
    assert eng.stats.mixed_iterations == 0
    mixed, (veng,), _ = _run(arrival, prompt, output, chunked=True, cost=LinearCost(base=0.01, per_token=0.0))
    assert veng.stats.mixed_iterations >= 3
    # request 0's decode stalls for the three chunks under prefill-first
    assert log.finish_s[0] > mixed.finish_s[0]


def test_sglang_mixed_chunk_carries_decodes_and_takes_their_tokens_from_the_chunk():
    """SGLang --enable-mixed-chunk: the running decode rides along in each prefill batch, and
    the chunk shrinks by one token per running request (PrefillAdder mixed_with_decode_tokens);
    without the flag the same decode stalls for every chunk."""
    arrival, prompt, output = [0.0, 0.05], [16, 1200], [50, 1]

    def run(mixed: bool):
        log = RequestLog(np.asarray(prompt, dtype=np.int64), np.asarray(output, dtype=np.int64))
        lim = EngineLimits(num_blocks=10_000, block_size=1, max_num_seqs=256,
                           max_num_batched_tokens=512, max_model_len=8192, chunked_prefill=True,
                           prefill_first=True, watermark_fraction=0.0, mixed_chunk=mixed)
        cost = LinearCost(base=0.01, per_token=0.0)
        eng = ReplicaEngine(0, cost, lim, log, debug=True)
        run_cluster([eng], np.asarray(arrival), "round_robin")
        return log, eng, cost

    log_off, eng_off, _ = run(False)
    log_on, eng_on, cost_on = run(True)
    assert eng_off.stats.mixed_iterations == 0
    # 1200 tokens at 512 - 1 per step with the one decode aboard: 511 + 511 + 178
    assert eng_on.stats.mixed_iterations == 3
    assert sum(1 for d, p in cost_on.calls if d and p) == 3
    assert log_on.finish_s[0] < log_off.finish_s[0]  # the decode never stalled
    assert log_on.first_s[1] == pytest.approx(log_off.first_s[1])  # same number of chunks
