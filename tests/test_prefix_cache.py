"""Prefix caching in the engine: block-hash (vLLM) and radix (SGLang) reuse, LRU eviction, and
the end-to-end effect -- a shared prefix lowers TTFT and KV use."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from apex_opt.registry import load_cluster
from apex_opt.sim.engine import EngineLimits, ReplicaEngine, RequestLog
from apex_opt.sim.prefix_cache import PrefixCache
from apex_opt.sim.router import run_cluster
from apex_opt.sim.simulator import simulate
from apex_opt.sim.workload import Requests
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaGroup


class _Cost:
    """Prefill-heavy cost: 5 ms + 0.05 ms per new token; cached tokens are free."""

    num_gpus = 1
    idle_power_w = 0.0

    def __init__(self):
        self.prefilled = 0

    def iteration(self, decode_ctx, prefill=(), *, with_breakdown=False, prefill_sampling=None):
        new = sum(q for q, _ in prefill)
        self.prefilled += new
        t = 0.005 + 5e-5 * (len(decode_ctx) + new)
        return SimpleNamespace(time_s=t, stage_times_s=(t,), energy_j=0.0, busy_gpu_s=t,
                               flops=0.0, hbm_bytes=0.0, breakdown=None)


def _run(policy, prompt, output, arrival, ids, *, blocks=10_000, bs=16, unit=512, cache=True):
    log = RequestLog(np.asarray(prompt, dtype=np.int64), np.asarray(output, dtype=np.int64),
                     ids, unit)
    lim = EngineLimits(num_blocks=blocks, block_size=bs, max_num_seqs=64,
                       max_num_batched_tokens=8192, max_model_len=32768, chunked_prefill=True,
                       watermark_fraction=0.0, policy=policy, prefix_caching=cache)
    cost = _Cost()
    eng = ReplicaEngine(0, cost, lim, log, debug=True)
    run_cluster([eng], np.asarray(arrival, dtype=float), "round_robin")
    return log, eng, cost


def test_block_hash_reuses_whole_blocks_and_recomputes_the_last_token():
    # two identical 1024-token prompts (2 units of 512), one after the other
    ids = [(1, 2), (1, 2)]
    log, eng, cost = _run("v1", [1024, 1024], [2, 2], [0.0, 1.0], ids)
    # the second prompt hits 63 of its 64 blocks: the last block (holding the last token) is
    # recomputed, as vLLM caps a hit at num_tokens - 1
    assert eng.stats.prefix_hit_tokens == 1008
    assert cost.prefilled == 1024 + 16


def test_radix_is_token_granular():
    ids = [(1, 2), (1, 2)]
    log, eng, cost = _run("sglang", [1000, 1000], [2, 2], [0.0, 1.0], ids, bs=1)
    assert eng.stats.prefix_hit_tokens == 999  # everything but the last token
    assert cost.prefilled == 1000 + 1


def test_only_the_shared_leading_units_hit():
    # same first unit, different second unit; the third request shares nothing
    ids = [(7, 8), (7, 9), (5, 6)]
    log, eng, cost = _run("v1", [1024] * 3, [2] * 3, [0.0, 1.0, 2.0], ids)
    assert eng.stats.prefix_hit_tokens == 512


def test_cache_off_or_no_ids_means_no_reuse():
    ids = [(1, 2), (1, 2)]
    _, eng, cost = _run("v1", [1024, 1024], [2, 2], [0.0, 1.0], ids, cache=False)
    assert eng.stats.prefix_hit_tokens == 0 and cost.prefilled == 2048
    _, eng, cost = _run("v1", [1024, 1024], [2, 2], [0.0, 1.0], None)
    assert eng.stats.prefix_hit_tokens == 0 and cost.prefilled == 2048


def test_free_cached_blocks_are_evicted_lru_when_needed():
    # 100 blocks of 16: each 1024-token prompt needs 64; after A finishes its 64 blocks stay
    # cached (free); B (different prefix) needs 64 -> A's tail is evicted; A again misses part
    ids = [(1, 2), (3, 4), (1, 2)]
    log, eng, cost = _run("v1", [1024] * 3, [2] * 3, [0.0, 1.0, 2.0], ids, blocks=100)
    assert np.all(np.isfinite(log.finish_s))
    assert eng.stats.evicted_blocks > 0
    # A's first unit survived (evicted deepest first), its second did not
    assert eng.stats.prefix_hit_tokens == 512


def test_prefix_cache_unit_eviction_drops_descendants():
    c = PrefixCache(16, 512)
    a = c.insert(0, 1, 32)
    b = c.insert(a, 2, 32)
    c.release([a, b])
    assert c.free_blocks == 64
    # evicting the parent (forced) also drops the unreachable child
    c.free.move_to_end(b)
    assert c.evict(1) == 64 and not c.nodes and c.free_blocks == 0


def test_shared_prefix_lowers_ttft_and_kv_use_end_to_end():
    """The same 60 requests of 4,000-token prompts at 4 req/s, once all sharing a 3,584-token
    prefix (7 units of 512) and once with unique prompts: sharing lowers TTFT and peak KV."""
    model, cluster = load_model("llama-3.1-8b"), load_cluster("h100-sxm-1x8")
    n = 60
    arrival = np.arange(n) * 0.25
    prompt = np.full(n, 4000)
    output = np.full(n, 200)
    shared = [tuple(range(7)) + (100 + i,) for i in range(n)]
    unique = [tuple(1000 * (i + 1) + k for k in range(8)) for i in range(n)]
    plan = Plan(groups=(ReplicaGroup(tp=1, max_model_len=8192),))
    res = {}
    for name, ids in (("shared", shared), ("unique", unique)):
        req = Requests(arrival, prompt, output, prefix_blocks=ids, prefix_block_tokens=512)
        res[name] = simulate(model, cluster, plan, req, engine=load_engine("vllm"))
    s, u = res["shared"], res["unique"]
    assert s.replicas[0].prefix_hit_tokens >= (n - 1) * 3584 * 0.99
    assert u.replicas[0].prefix_hit_tokens == 0
    assert s.metrics.ttft_ms.mean < 0.6 * u.metrics.ttft_ms.mean
    assert s.replicas[0].max_kv_blocks_used < 0.6 * u.replicas[0].max_kv_blocks_used
    # turning caching off removes the gain
    off = simulate(model, cluster, Plan(groups=(ReplicaGroup(tp=1, max_model_len=8192,
                                                             prefix_caching=False),)),
                   Requests(arrival, prompt, output, prefix_blocks=shared), engine=load_engine("vllm"))
    assert off.replicas[0].prefix_hit_tokens == 0
    assert off.metrics.ttft_ms.mean == pytest.approx(u.metrics.ttft_ms.mean, rel=0.05)
