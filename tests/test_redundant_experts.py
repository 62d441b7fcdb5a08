"""EPLB redundant expert slots (ReplicaConfig.redundant_experts): E + N experts split over the EP
ranks, so an EP size that does not divide the experts can run (DeepSeek's 256 over 72 GPUs)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from apex_opt.cli import main
from apex_opt.memory import replica_memory, weight_bytes_by_component
from apex_opt.parallel import redundant_for, shape_problem, valid_ep, validate_plan
from apex_opt.registry import load_cluster
from apex_opt.report.launch import launch_plan, unknown_flags
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaConfig, ReplicaGroup


@pytest.fixture(scope="module")
def ds():
    return load_model("deepseek-v3")


def test_ep_must_divide_the_expert_slots(ds):
    assert not valid_ep(ds, 72, 72) and redundant_for(ds, 72) == 32
    assert valid_ep(ds, 72, 72, 32) and not valid_ep(ds, 72, 72, 31)
    assert redundant_for(ds, 64) == 0 and redundant_for(ds, 8) == 0
    assert not valid_ep(ds, 8, 1, 8)  # redundant slots need expert parallelism
    with pytest.raises(ValueError, match="needs expert parallelism"):
        ReplicaConfig(tp=8, redundant_experts=8)


def test_the_heads_split_over_the_attention_tp_under_dp_attention(ds):
    pool = load_cluster("gb200-nvl72").pools[0]
    # 128 heads over TP72: no; DP attention 72 leaves each rank all 128 heads
    assert "attention heads" in shape_problem(ds, pool, 72, 1, 72, redundant_experts=32)
    assert shape_problem(ds, pool, 72, 1, 72, attention_dp=72, redundant_experts=32) is None
    msg = shape_problem(ds, pool, 72, 1, 72, attention_dp=72)
    assert "256 experts" in msg and "--redundant-experts 32" in msg
    # attention_dp 36 leaves attention TP 2: still splits 128 heads
    assert shape_problem(ds, pool, 72, 1, 72, attention_dp=36, redundant_experts=32) is None
    assert "attention TP 9" in shape_problem(ds, pool, 72, 1, 72, attention_dp=8,
                                             redundant_experts=32)


def test_engines_without_eplb_refuse_redundant_experts(ds):
    cluster = load_cluster("h200-1x8")
    plan = Plan(groups=(ReplicaGroup(tp=8, ep=8, redundant_experts=8),))
    assert validate_plan(ds, cluster, plan, load_engine("sglang")) == []
    assert validate_plan(ds, cluster, plan, load_engine("vllm")) == []
    for name in ("vllm-0.6", "sglang-0.4", "vllm@0.9.1"):
        problems = validate_plan(ds, cluster, plan, load_engine(name))
        assert len(problems) == 1 and "cannot place redundant experts" in problems[0]


def test_each_gpu_stores_its_share_of_the_redundant_experts(ds):
    dev = load_cluster("h200-1x8").pools[0].device
    base = ReplicaConfig(tp=8, ep=8, weight_dtype="fp8")
    red = base.model_copy(update={"redundant_experts": 16})
    a, b = (weight_bytes_by_component(ds, c, 0)["experts"] for c in (base, red))
    assert b == pytest.approx(a * (256 + 16) / 256)
    ma, mb = (replica_memory(ds, dev, c, load_engine("sglang")) for c in (base, red))
    assert mb.weights_per_gpu_max > ma.weights_per_gpu_max and mb.kv_tokens < ma.kv_tokens


@pytest.mark.parametrize("engine,expect", [
    ("sglang", ["--ep-num-redundant-experts", "8"]),
    ("vllm", ["--enable-eplb", "--eplb-config", '{"num_redundant_experts": 8}']),
    ("vllm@0.10.1", ["--enable-eplb", "--num-redundant-experts", "8"]),
])
def test_launch_places_the_redundant_experts(ds, engine, expect):
    plan = Plan(groups=(ReplicaGroup(tp=8, ep=8, redundant_experts=8, weight_dtype="fp8"),))
    lp = launch_plan("deepseek-v3", ds, plan, engine=engine, cluster=load_cluster("h200-1x8"))
    argv = lp.processes[0].argv
    i = argv.index(expect[0])
    assert argv[i:i + len(expect)] == expect
    assert unknown_flags(lp) == []


def test_a_release_without_eplb_says_so_in_the_launch_notes(ds):
    plan = Plan(groups=(ReplicaGroup(tp=8, ep=8, redundant_experts=8, weight_dtype="fp8"),))
    lp = launch_plan("deepseek-v3", ds, plan, engine="sglang-0.4", cluster=load_cluster("h200-1x8"))
    assert not any("redundant" in a for a in lp.processes[0].argv)
    assert any("cannot place redundant experts" in n for n in lp.notes)


def test_cli_estimate_and_simulate():
    r = CliRunner().invoke(main, ["estimate", "--model", "deepseek-v3", "--cluster", "gb200-nvl72",
                                  "--tp", "72", "--ep", "72", "--attention-dp", "72",
                                  "--batch", "decode:144x1024"])
    assert r.exit_code == 2 and "--redundant-experts 32" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["estimate", "--model", "deepseek-v3", "--cluster", "gb200-nvl72",
                                  "--tp", "72", "--ep", "72", "--attention-dp", "72",
                                  "--redundant-experts", "32", "--batch", "decode:144x1024"])
    assert r.exit_code == 0, r.output
    assert "ADP72 +32 redundant experts" in r.output
    r = CliRunner().invoke(main, ["simulate", "--model", "deepseek-v3", "--cluster", "h200-1x8",
                                  "--tp", "8", "--redundant-experts", "8", "--concurrency", "2",
                                  "--num-requests", "2"])
    assert r.exit_code == 2 and "--redundant-experts" in r.output and "--ep > 1" in r.output


def test_the_search_offers_dp_attention_only_tp_with_redundant_slots(ds):
    """On a GB200 NVL72 the search reaches TP72: only under DP attention (128 heads) and with EP
    over all 72 GPUs only with 32 redundant slots, on engines that run both; never as plain TP72."""
    import numpy as np

    from apex_opt.sim.workload import Requests
    from apex_opt.solver.candidates import WorkloadStats, enumerate_candidates
    from apex_opt.solver.validate import plan_problems
    from apex_opt.specs.slo import SLOSpec

    nvl = load_cluster("gb200-nvl72")
    st = WorkloadStats.of(Requests(np.arange(32) * 0.1, np.full(32, 1024), np.full(32, 512)))
    slo = SLOSpec.model_validate({"ttft_ms": {"target": 5000, "percentile": 90}})
    # vLLM V1 (--data-parallel-size 72 --enable-eplb; SGLang's default mem_fraction_static
    # reserves cuda_graph_max_bs x dp_size x 4.5 MiB under DP attention: no room at dp 72)
    cands = [c for c in enumerate_candidates(ds, nvl, st, slo, engine=load_engine("vllm"),
                                             attention_dp=72) if c.tp == 72]
    assert cands and all(c.pp == 1 and c.attention_dp == 72 for c in cands)
    assert {(c.ep, c.redundant_experts) for c in cands} <= {(1, 0), (2, 0), (4, 0), (8, 0),
                                                            (72, 32)}
    full = next(c for c in cands if c.ep == 72)
    assert "R32" in full.label() and full.config().redundant_experts == 32
    assert plan_problems(ds, nvl, Plan(groups=(full.group(1),)), engine=load_engine("vllm")) == []
    plain = enumerate_candidates(ds, nvl, st, slo, engine=load_engine("vllm"), attention_dp=1)
    assert plain and not any(c.tp == 72 or c.redundant_experts for c in plain)
    # vLLM 0.9.1 runs DP attention but places no redundant experts
    old = enumerate_candidates(ds, nvl, st, slo, engine=load_engine("vllm@0.9.1"), attention_dp=72)
    assert any(c.tp == 72 for c in old)
    assert not any(c.redundant_experts for c in old)


def test_a_72_gpu_dp_attention_plan_launches_as_each_engine_runs_it(ds):
    """SGLang: one multi-node server (--nnodes 18), its default chunk budget passed as the
    server's (each of 72 ranks prefills 1/72, as simulated); vLLM: one DP deployment, the API
    server + 4 DP ranks on the head and --headless ranks elsewhere -- not one Ray engine."""
    from apex_opt.sim.simulator import engine_limits

    nvl = load_cluster("gb200-nvl72")
    plan = Plan(groups=(ReplicaGroup(tp=72, ep=72, attention_dp=72, redundant_experts=32,
                                     gpu_memory_utilization=0.8),))
    sg = launch_plan("deepseek-v3", ds, plan, engine="sglang", cluster=nvl)
    assert len(sg.processes) == 18 and unknown_flags(sg) == []
    argv = sg.processes[0].argv
    chunk = int(argv[argv.index("--chunked-prefill-size") + 1])
    per_rank = engine_limits(ds, plan.groups[0].replica(), 10_000, load_engine("sglang"),
                             nvl.pools[0].device).max_num_batched_tokens
    assert chunk // 72 == per_rank and chunk < 20_000
    assert not any("straddles" in n for n in sg.notes)
    v = launch_plan("deepseek-v3", ds, plan, engine="vllm", cluster=nvl)
    assert [p.role for p in v.processes] == ["server"] + ["server-rank"] * 17
    assert not any(p.argv[0] == "ray" for p in v.processes) and unknown_flags(v) == []
    head, second = v.processes[0].argv, v.processes[1].argv
    assert head[head.index("--data-parallel-size") + 1] == "72"
    assert head[head.index("--data-parallel-size-local") + 1] == "4"
    assert "--headless" in second and second[second.index("--data-parallel-start-rank") + 1] == "4"
    assert len(v.endpoints) == 1 and v.endpoints[0].port == v.processes[0].port
