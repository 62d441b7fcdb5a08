"""--exhaustive shares one simulation between twins (plans that differ only in max_num_seqs /
max_num_batched_tokens) only when the run's limit envelope holds under both plans' limits: then
the twin's own simulation gives exactly the same metrics."""

from __future__ import annotations

import dataclasses

import numpy as np

from apex_opt.registry import load_cluster
from apex_opt.search.executor import SimContext, SimJob, limit_envelope, run_job, same_run
from apex_opt.search.pipeline import Twins
from apex_opt.search.plans import feasible_plans, to_plan
from apex_opt.sim.workload import Requests
from apex_opt.solver.candidates import WorkloadStats
from apex_opt.solver.space import build_space
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.slo import SLOSpec


def _space(n=40, rate=3.0, seed=1):
    rng = np.random.default_rng(seed)
    req = Requests(np.cumsum(rng.exponential(1 / rate, n)), rng.integers(100, 3000, n),
                   rng.integers(20, 400, n))
    model, cluster, eng = load_model("llama-3.1-8b"), load_cluster("h100-sxm-1x8"), load_engine()
    slo = SLOSpec.model_validate({"ttft_ms": 2000, "tpot_ms": 60,
                                  "constraints": {"max_gpus": 2, "max_pp": 1}})
    space = build_space(model, cluster, WorkloadStats.of(req), slo, "latency", engine=eng)
    return model, cluster, eng, req, slo, space


def test_shared_twins_simulate_identically():
    model, cluster, eng, req, slo, space = _space()
    ctx = SimContext(model, cluster, req, slo, eng)
    tw = Twins(model, space, eng)
    groups: dict = {}
    for key in feasible_plans(space):
        groups.setdefault(tw.group(key), []).append(key)
    groups = [sorted(g, key=tw.looseness) for g in groups.values() if len(g) > 1][:3]
    assert groups
    shared = 0
    for g in groups:
        outs = [run_job(ctx, SimJob(to_plan(space, key))) for key in g]
        env = outs[0].envelope
        assert env is not None and env.seqs >= 1 and env.tokens >= env.seqs and env.blocks >= 1
        cache = {g[0]: outs[0]}
        tw.simulated(g[0])
        for key, out in zip(g[1:], outs[1:]):
            if same_run(env, tw.limits(g[0]), tw.limits(key)):
                shared += 1
                assert out.metrics == outs[0].metrics
                assert tw.shared(key, cache) is outs[0]
            else:
                assert tw.shared(key, cache) is None
    assert shared >= 1


def test_envelope_refuses_a_binding_cap():
    model, cluster, eng, req, slo, space = _space(n=60, rate=4.0)
    ctx = SimContext(model, cluster, req, slo, eng)
    key = max(feasible_plans(space), key=lambda k: (
        space.cands[k[0][0]].max_num_batched_tokens, space.cands[k[0][0]].max_num_seqs, -k[0][1]))
    plan = to_plan(space, key)
    res = ctx.run(plan)
    env = limit_envelope(ctx, plan, res)
    assert env is not None and env.seqs > 4
    lim = Twins(model, space, eng).limits(key)
    assert same_run(env, lim)
    assert not same_run(env, dataclasses.replace(lim, max_num_seqs=env.seqs - 1))
    assert not same_run(env, dataclasses.replace(lim, max_num_batched_tokens=env.tokens - 1))
    blocks = (env.blocks - 1 + lim.watermark_blocks) * lim.schedulers
    assert not same_run(env, dataclasses.replace(lim, num_blocks=blocks))
    # a cap the run hit: that twin is simulated, not shared (and does differ)
    tight = to_plan(space, key).model_copy(update={"groups": (plan.groups[0].model_copy(
        update={"max_num_seqs": max(1, env.seqs // 3)}),)})
    assert ctx.simulate(tight).e2e_s.mean != res.metrics.e2e_s.mean


def test_exhaustive_shares_twins_and_reports_the_chosen_breakdown():
    """--exhaustive: every feasible plan has an outcome (twins share provably identical runs),
    and the chosen plan carries the time breakdown of its own run."""
    from apex_opt.search.pipeline import solve

    model, cluster, eng, req, slo, space = _space(n=30, rate=2.0)
    slo = SLOSpec.model_validate({"ttft_ms": 2000, "tpot_ms": 60,
                                  "constraints": {"max_gpus": 1, "max_pp": 1}})
    res = solve(model, cluster, req, slo, exhaustive=True, executor="serial", engine=eng)
    assert res.solver.plans_simulated == res.solver.plans_feasible == len(res.plans)
    best = res.plans[0]
    assert res.chosen.time_breakdown_ms and best.metrics.time_breakdown_ms == \
        res.chosen.time_breakdown_ms
