"""solve searches data-parallel attention (ReplicaConfig.attention_dp) as a plan dimension: only
for MoE models on engines that run it, single-stage shapes whose TP it divides; the surrogate
prices the ranks' own KV caches and schedulers; the validator, the CLI flag and the launch
commands agree."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from apex_opt.errors import InputError
from apex_opt.registry import load_cluster
from apex_opt.sim.workload import Requests
from apex_opt.solver.candidates import WorkloadStats, enumerate_candidates
from apex_opt.solver.space import build_space
from apex_opt.solver.validate import plan_problems
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaGroup
from apex_opt.specs.slo import SLOSpec

#: decode-heavy requests (512-token prompts, 2,048-token outputs): the throughput case DP attention
#: is run for (MLA's KV is not sharded by TP, so TP8 replicates it on every GPU and holds 1/8 of
#: the sequences DP attention does)
SLO = SLOSpec.model_validate({"ttft_ms": {"target": 5000, "percentile": 90},
                              "tpot_ms": {"target": 100, "percentile": 90},
                              "objective": "throughput"})


def _requests(n: int = 64, rate: float = 8.0, prompt: int = 512, output: int = 2048) -> Requests:
    rng = np.random.default_rng(3)
    return Requests(np.cumsum(rng.exponential(1.0 / rate, n)),
                    rng.integers(prompt // 2, prompt * 3 // 2, n),
                    rng.integers(output // 2, output * 3 // 2, n))


@pytest.fixture(scope="module")
def ds():
    return load_model("deepseek-v3")


@pytest.fixture(scope="module")
def h200():
    return load_cluster("h200-1x8")


def test_candidates_search_attention_dp_for_moe_on_engines_that_run_it(ds, h200):
    st = WorkloadStats.of(_requests())
    cands = enumerate_candidates(ds, h200, st, SLO, engine=load_engine("vllm"))
    adp = [c for c in cands if c.attention_dp > 1]
    assert {c.attention_dp for c in adp} == {2, 4, 8}
    assert all(c.pp == 1 and c.tp % c.attention_dp == 0 for c in adp)
    # the plain-TP shapes are still there, and the label / plan carry the size
    assert any(c.attention_dp == 1 and c.tp == 8 and c.pp == 1 for c in cands)
    one = adp[0]
    assert f"ADP{one.attention_dp}" in one.label() and one.config().attention_dp == one.attention_dp
    assert one.cost_key != next(c for c in cands if c.attention_dp == 1 and c.tp == one.tp
                                and c.pp == 1 and c.ep == one.ep and c.kv_dtype == one.kv_dtype
                                and c.weight_dtype == one.weight_dtype).cost_key
    # restricted: off, or exactly 8
    assert all(c.attention_dp == 1 for c in enumerate_candidates(
        ds, h200, st, SLO, engine=load_engine("vllm"), attention_dp=1))
    only8 = enumerate_candidates(ds, h200, st, SLO, engine=load_engine("vllm"), attention_dp=8)
    assert only8 and all(c.attention_dp == 8 and c.tp == 8 for c in only8)
    # an engine without DP attention (vLLM 0.6) never gets it
    assert all(c.attention_dp == 1 for c in enumerate_candidates(
        ds, h200, st, SLO, engine=load_engine("vllm-0.6")))


def test_dense_model_never_gets_attention_dp(h200):
    m = load_model("llama-3.1-70b")
    st = WorkloadStats.of(_requests())
    for eng in ("vllm", "sglang"):
        cands = enumerate_candidates(m, h200, st, SLO, engine=load_engine(eng))
        assert cands and all(c.attention_dp == 1 for c in cands)
    with pytest.raises(InputError, match="dense"):
        from apex_opt.search import solve
        solve(m, h200, _requests(), SLO, attention_dp=2)


def test_surrogate_prices_the_ranks_kv_and_lockstep_iteration(ds, h200):
    """Per-rank KV (1/R of the replica's blocks per scheduler) and capacity R x a rank's; at this
    decode-heavy load DP attention beats plain TP8 in the surrogate (TP8 holds every sequence's
    MLA latent on all 8 GPUs), as the simulator finds (see test_solve_shortlists...)."""
    st = WorkloadStats.of(_requests())
    space = build_space(ds, h200, st, SLO, "throughput", engine=load_engine("vllm"))
    best: dict[int, float] = {}
    for c, m in zip(space.cands, space.models):
        if c.tp == 8 and c.pp == 1 and c.ep == 8 and c.kv_dtype == "bf16":
            assert m.cv.ranks == c.attention_dp and m.cv.schedulers == c.attention_dp
            assert m.kv_seqs == pytest.approx(
                c.kv_tokens / c.attention_dp / (st.mean_prompt + st.mean_output / 2))
            best[c.attention_dp] = max(best.get(c.attention_dp, 0.0), m.rate_at_slo(SLO))
    assert set(best) == {1, 2, 4, 8}
    assert max(best[d] for d in (2, 4, 8)) > 1.1 * best[1]


def test_shortlist_leads_with_attention_dp_under_throughput(ds, h200):
    """The surrogate order of the throughput search (what the shortlist simulates first) has
    DP-attention plans among its first top-k (4) at this load, and the highest surrogate rate at
    the SLO is a DP-attention plan's; with --attention-dp off none."""
    from apex_opt.search.shortlist import ranked_plans

    st = WorkloadStats.of(_requests(1000))  # a trace long enough that the drain does not decide
    space = build_space(ds, h200, st, SLO, "throughput", engine=load_engine("vllm"))
    src, _status = ranked_plans(space)
    first = [next(src).key for _ in range(4)]
    assert any(space.cands[i].attention_dp > 1 for key in first for i, _k in key)
    top = max(range(len(space.cands)), key=lambda i: space.models[i].rate_at_slo(SLO))
    assert space.cands[top].attention_dp > 1
    off = build_space(ds, h200, st, SLO, "throughput", engine=load_engine("vllm"), attention_dp=1)
    src, _status = ranked_plans(off)
    assert all(off.cands[i].attention_dp == 1 for key in [next(src).key] for i, _k in key)


def test_solve_simulates_and_launches_an_attention_dp_plan(ds, h200):
    """End to end with --attention-dp 4 (one simulated plan, no baselines): the chosen plan is
    simulated with 4 attention ranks, valid for the solver-independent validator, and launched
    as vLLM's DP engine cores of TP tp/4 and SGLang's --enable-dp-attention --dp-size 4."""
    from apex_opt.commands.solve import make_launcher
    from apex_opt.report.launch import launch_plan
    from apex_opt.search import solve

    res = solve(ds, h200, _requests(16, output=256), SLO, objective="latency", top_k=1, max_sims=1,
                executor="serial", launcher=make_launcher("deepseek-v3", ds, h200),
                attention_dp=4, _detail=False, _verify=False)
    best = res.plans[0]
    g = best.groups[0].config
    assert all(x.config.attention_dp == 4 for p in res.plans for x in p.groups)
    assert "ADP4" in best.label
    assert best.metrics is not None and best.metrics.requests_per_s > 0
    plan = Plan(groups=tuple(ReplicaGroup(replicas=x.replicas, **x.config.model_dump())
                             for x in best.groups))
    assert plan_problems(ds, h200, plan, engine=load_engine("vllm")) == []
    d, tp = g.attention_dp, g.tp
    vllm = best.launch["vllm"]
    assert f"--data-parallel-size {d}" in vllm and f"--tensor-parallel-size {tp // d}" in vllm
    sgl = launch_plan("deepseek-v3", ds, plan, engine="sglang", cluster=h200)
    argv = sgl.processes[0].argv
    assert "--enable-dp-attention" in argv
    assert argv[argv.index("--dp-size") + 1] == str(d) and argv[argv.index("--tp-size") + 1] == str(tp)
    # SGLang divides --max-running-requests and --chunked-prefill-size by --dp-size: the plan's
    # limits are each rank's (as simulated), so the server gets D times them
    assert argv[argv.index("--max-running-requests") + 1] == str(g.max_num_seqs * d)
    assert argv[argv.index("--chunked-prefill-size") + 1] == str(g.max_num_batched_tokens * d)


def test_validator_rejects_invalid_attention_dp(ds, h200):
    vllm, v06 = load_engine("vllm"), load_engine("vllm-0.6")
    ok = Plan(groups=(ReplicaGroup(replicas=1, tp=8, ep=8, weight_dtype="fp8", attention_dp=8),))
    assert plan_problems(ds, h200, ok, engine=vllm) == []
    assert any("no data-parallel attention" in p for p in plan_problems(ds, h200, ok, engine=v06))
    llama = load_model("llama-3.1-8b")
    dense = Plan(groups=(ReplicaGroup(replicas=1, tp=2, attention_dp=2),))
    assert any("dense" in p for p in plan_problems(llama, h200, dense))
    # shapes the pydantic plan refuses (built around it) are still caught from first principles
    bad = ReplicaGroup.model_construct(**{**ok.groups[0].model_dump(), "tp": 8, "pp": 2,
                                          "attention_dp": 2})
    assert any("pp=1" in p for p in plan_problems(ds, h200, Plan.model_construct(groups=(bad,))))
    bad = ReplicaGroup.model_construct(**{**ok.groups[0].model_dump(), "attention_dp": 3})
    assert any("divide" in p for p in plan_problems(ds, h200, Plan.model_construct(groups=(bad,))))


def test_cli_attention_dp_flag(tmp_path):
    from apex_opt.cli import main
    from apex_opt.commands.solve import parse_attention_dp

    assert parse_attention_dp("auto") is None and parse_attention_dp("off") == 1
    assert parse_attention_dp("4") == 4
    for bad in ("0", "two", "-1"):
        with pytest.raises(InputError):
            parse_attention_dp(bad)
    r = CliRunner().invoke(main, ["solve", "--model", "llama-3.1-8b", "--cluster", "h100-sxm-1x8",
                                  "--attention-dp", "x"])
    assert r.exit_code == 2 and "--attention-dp" in r.output
    r = CliRunner().invoke(main, ["solve", "--model", "llama-3.1-8b", "--cluster", "h100-sxm-1x8",
                                  "--attention-dp", "2"])
    assert r.exit_code == 2 and "dense" in r.output
