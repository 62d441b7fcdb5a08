"""Pipeline-parallel decode fast-forward (engine._pipeline_run): the virtual engines' decode runs
replayed through the shared stages give the step-by-step timeline."""

from __future__ import annotations

import numpy as np
import pytest

from apex_opt.sim.engine import EngineLimits, ReplicaEngine, RequestLog
from apex_opt.sim.router import run_cluster
from tests.test_sim_engine import LinearCost


def _run(pp, ff, *, n=40, seed=0, chunked=True, blocks=20_000, rate=20.0, host=0.002,
         per_ctx=2e-7, stage_skew=False, policy="v1"):
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / rate, n))
    prompt, output = rng.integers(20, 600, n), rng.integers(1, 200, n)
    log = RequestLog(prompt.astype(np.int64), output.astype(np.int64))
    lim = EngineLimits(num_blocks=blocks, block_size=16, max_num_seqs=64,
                       max_num_batched_tokens=512, max_model_len=8192, chunked_prefill=chunked,
                       pp=pp, policy=policy)
    cost = LinearCost(base=0.004, per_token=2e-5, per_ctx=per_ctx, pp=pp, host=host)
    if stage_skew:  # unequal stages: the last one is the bottleneck
        base = cost.iteration

        def skewed(decode_ctx, prefill=(), **kw):
            c = base(decode_ctx, prefill, **kw)
            st = tuple(x * (1.0 + 0.5 * (q == pp - 1)) for q, x in enumerate(c.stage_times_s))
            return c._replace(stage_times_s=st, time_s=c.time_s - sum(c.stage_times_s) + sum(st))

        cost.iteration = skewed
    eng = ReplicaEngine(0, cost, lim, log, debug=True, fast_forward=ff)
    end = run_cluster([eng], arrival, "round_robin")
    return log, eng, end, cost


@pytest.mark.parametrize("pp, kw", [(2, {}), (4, {}), (2, {"stage_skew": True}),
                                    (3, {"chunked": False, "policy": "v0"}),
                                    (2, {"blocks": 90}), (2, {"policy": "sglang"}),
                                    (4, {"rate": 200.0, "host": 0.0})])
def test_pipeline_fast_forward_equals_step_by_step(pp, kw):
    slow_log, slow, slow_end, slow_cost = _run(pp, 1, **kw)
    fast_log, fast, fast_end, fast_cost = _run(pp, 256, **kw)
    # the same timeline up to float rounding (the cost is linear in the context)
    np.testing.assert_allclose(fast_log.first_s, slow_log.first_s, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast_log.finish_s, slow_log.finish_s, rtol=1e-9, atol=1e-12)
    assert fast_end == pytest.approx(slow_end, rel=1e-9)
    a, b = fast.stats, slow.stats
    for f in ("iterations", "decode_iterations", "prefill_iterations", "mixed_iterations",
              "preemptions", "decode_tokens", "prefill_tokens", "max_blocks_used", "requests"):
        assert getattr(a, f) == getattr(b, f), f
    for f in ("energy_j", "busy_gpu_s"):
        assert getattr(a, f) == pytest.approx(getattr(b, f), rel=1e-9), f
    assert fast.stage_free == pytest.approx(slow.stage_free, rel=1e-9)
    # and it is a fast-forward: never more cost evaluations, far fewer unless blocks are short
    assert len(fast_cost.calls) <= len(slow_cost.calls)
    if kw.get("blocks", 20_000) > 1000 and kw.get("rate", 20.0) <= 20.0:
        assert len(fast_cost.calls) < len(slow_cost.calls) / 2


def test_pipeline_fast_forward_preempts_like_step_by_step():
    slow_log, slow, *_ = _run(2, 1, blocks=60, rate=50.0)
    fast_log, fast, *_ = _run(2, 256, blocks=60, rate=50.0)
    assert slow.stats.preemptions > 0
    assert fast.stats.preemptions == slow.stats.preemptions
    np.testing.assert_allclose(fast_log.finish_s, slow_log.finish_s, rtol=1e-9)


def test_pipeline_fast_forward_real_cost_model():
    """The bundled cost model is only nearly linear in the context, so a run's interpolated
    costs differ from step-by-step by a second-order term: same metrics within 0.2 %, far fewer
    engine events (what makes solve's PP plans fast)."""
    from apex_opt.registry import load_cluster
    from apex_opt.sim.simulator import simulate
    from apex_opt.sim.workload import Requests
    from apex_opt.specs.model import load_model
    from apex_opt.specs.plan import Plan, ReplicaGroup

    rng = np.random.default_rng(3)
    n = 60
    req = Requests(np.cumsum(rng.exponential(1 / 6.0, n)), rng.integers(50, 1500, n),
                   rng.integers(1, 200, n))
    plan = Plan(groups=(ReplicaGroup(tp=1, pp=2, replicas=2, max_model_len=8192),))
    model, cluster = load_model("llama-3.1-8b"), load_cluster("h100-sxm-1x8")
    fast = simulate(model, cluster, plan, req, breakdown=True)
    slow = simulate(model, cluster, plan, req, breakdown=True, fast_forward=1)
    f, s = fast.per_request(), slow.per_request()
    np.testing.assert_allclose(f["first_token_s"], s["first_token_s"], rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(f["finish_s"], s["finish_s"], rtol=2e-3, atol=1e-3)
    fm, sm = fast.metrics, slow.metrics
    assert fm.num_completed == sm.num_completed == n
    assert fm.energy_j_per_token == pytest.approx(sm.energy_j_per_token, rel=2e-3)
    assert fm.e2e_s.mean == pytest.approx(sm.e2e_s.mean, rel=2e-3)
    assert sum(fm.time_breakdown_ms.values()) == pytest.approx(sum(sm.time_breakdown_ms.values()),
                                                               rel=2e-3)
    assert [r.iterations for r in fast.replicas] == [r.iterations for r in slow.replicas]


def test_fit_run_closed_form_matches_block_by_block():
    """The longest decode run whose KV blocks fit (closed form over each decode's block-need
    steps) equals the largest run length found by counting blocks step by step."""
    from apex_opt.sim.engine import _VirtualEngine

    rng = np.random.default_rng(0)
    log = RequestLog(np.array([10]), np.array([10]))
    for _ in range(600):
        bs = int(rng.choice([1, 2, 16]))
        n = int(rng.integers(1, 12))
        lim = EngineLimits(num_blocks=10 ** 6, block_size=bs, max_num_seqs=64,
                           max_num_batched_tokens=512, max_model_len=10 ** 6, chunked_prefill=True)
        eng = ReplicaEngine(0, LinearCost(), lim, log, fast_forward=int(rng.choice([2, 7, 256])))
        ve = _VirtualEngine()
        ve.d_len, ve.d_rem = rng.integers(1, 300, n), rng.integers(1, 400, n)
        ve.d_id = np.arange(n)
        ve.used_blocks = eng.nb - int(rng.integers(0, int(rng.choice([2, 30])) * n))
        started = bool(rng.integers(0, 2))
        m = min(eng.ff, int(ve.d_rem.min()))
        base, off = (ve.d_len, 1) if started else (ve.d_len - 1, 0)
        ref = max(r for r in range(m + 1)
                  if (eng._extra_blocks(base, r - off) if r > off else 0) <= eng._free(ve))
        assert eng._fit_run(ve, ve.d_len, started) == ref
