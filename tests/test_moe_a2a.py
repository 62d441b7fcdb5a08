"""All-to-all MoE dispatch (ReplicaConfig.moe_a2a: SGLang --moe-a2a-backend deepep, vLLM
--all2all-backend deepep_low_latency) under
data-parallel attention: each rank keeps its tokens, sends each once to every EP rank holding one
of its experts and gets them back, instead of gathering every rank's tokens on every GPU."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from apex_opt.cli import main
from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.memory import weight_bytes_by_component
from apex_opt.parallel import validate_plan
from apex_opt.registry import load_cluster
from apex_opt.report.launch import launch_plan, unknown_flags
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaConfig, ReplicaGroup


@pytest.fixture(scope="module")
def ds():
    return load_model("deepseek-v3")


def _model(ds, a2a: bool, tp=8, adp=8, cluster="h200-1x8", **kw) -> IterationCostModel:
    pool = load_cluster(cluster).pools[0]
    sg = load_engine("sglang")
    cfg = ReplicaConfig(tp=tp, ep=tp, attention_dp=adp, moe_a2a=a2a, gpu_memory_utilization=0.8,
                        **kw).resolved(sg, ds, pool.device)
    return IterationCostModel(ds, pool, cfg, sg)


def _decode(m: IterationCostModel, per_rank: int):
    ranks = [(np.full(per_rank, 1024), []) for _ in range(m.attn_dp)]
    return m.iteration(np.full(per_rank * m.attn_dp, 1024), [], with_breakdown=True,
                       attention_ranks=ranks)


def test_dispatch_sends_each_token_once_per_destination_rank(ds, monkeypatch):
    m = _model(ds, True)
    seen = []
    real = type(m.tp_comm).all_to_all

    def spy(self, nbytes, n):
        seen.append((nbytes, n))
        return real(self, nbytes, n)

    monkeypatch.setattr(type(m.tp_comm), "all_to_all", spy)
    m._token_cache.clear()
    _decode(m, 16)
    dest = 8 * (1 - (7 / 8) ** 8)  # expected distinct EP ranks of a token's 8 experts
    h = ds.moe_hidden_size
    # one dispatch (fp8 + a 4-byte scale per 128 values) and one combine (bf16) per MoE stage role
    assert seen[0] == (pytest.approx(16 * dest * h * (1 + 4 / 128)), 8)
    assert seen[1] == (pytest.approx(16 * dest * h * 2), 8)


def test_a2a_moves_far_fewer_bytes_than_gathering_at_wide_ep(ds):
    gather = _model(ds, False, tp=72, adp=72, cluster="gb200-nvl72", redundant_experts=32)
    a2a = _model(ds, True, tp=72, adp=72, cluster="gb200-nvl72", redundant_experts=32)
    g, a = _decode(gather, 64), _decode(a2a, 64)
    assert a.breakdown["communication"] < 0.5 * g.breakdown["communication"]
    # each GPU runs its experts on the copies sent to it, not on all 4,608 tokens' rows
    assert a.breakdown["moe_experts"] < g.breakdown["moe_experts"]
    assert a.time_s < g.time_s
    # the router runs on the rank's own tokens
    assert a.breakdown["moe_router"] < g.breakdown["moe_router"] / 2


def test_shared_experts_are_whole_on_every_gpu(ds):
    sg = load_engine("sglang")
    base = ReplicaConfig(tp=8, ep=8, attention_dp=8, weight_dtype="fp8")
    a2a = base.model_copy(update={"moe_a2a": True})
    sb, sa = (weight_bytes_by_component(ds, c, 0, sg)["shared_experts"] for c in (base, a2a))
    assert sa == pytest.approx(8 * sb, rel=0.01)
    assert _model(ds, True).shared_ops[0][1:] == (2 * ds.moe.expert_intermediate_size
                                                  * ds.moe.num_shared_experts, ds.hidden_size)


def test_rules_engines_and_launch(ds):
    with pytest.raises(ValueError, match="moe_a2a needs"):
        ReplicaConfig(tp=8, ep=8, moe_a2a=True)
    with pytest.raises(ValueError, match="moe_a2a needs"):
        ReplicaConfig(tp=8, ep=4, attention_dp=8, moe_a2a=True)
    cluster = load_cluster("h200-1x8")
    plan = Plan(groups=(ReplicaGroup(tp=8, ep=8, attention_dp=8, moe_a2a=True),))
    assert validate_plan(ds, cluster, plan, load_engine("sglang")) == []
    assert validate_plan(ds, cluster, plan, load_engine("vllm")) == []
    for name in ("vllm-0.6", "sglang-0.4"):
        assert any("moe_a2a" in p for p in validate_plan(ds, cluster, plan, load_engine(name)))
    lp = launch_plan("deepseek-v3", ds, plan, engine="sglang", cluster=cluster)
    argv = lp.processes[0].argv
    assert argv[argv.index("--moe-a2a-backend") + 1] == "deepep" and unknown_flags(lp) == []
    assert "A2A" in plan.groups[0].label()
    # vLLM: --all2all-backend from 0.11.1 (PR #26732), the environment variable before
    v = launch_plan("deepseek-v3", ds, plan, engine="vllm", cluster=cluster).processes[0]
    assert v.argv[v.argv.index("--all2all-backend") + 1] == "deepep_low_latency"
    old = launch_plan("deepseek-v3", ds, plan, engine="vllm@0.10.1", cluster=cluster).processes[0]
    assert "--all2all-backend" not in old.argv
    assert old.env["VLLM_ALL2ALL_BACKEND"] == "deepep_low_latency"
    assert "VLLM_ALL2ALL_BACKEND=deepep_low_latency" in old.command


def test_cli():
    ok = CliRunner().invoke(main, ["estimate", "--model", "deepseek-v3", "--cluster", "h200-1x8",
                                   "--tp", "8", "--ep", "8", "--attention-dp", "8", "--moe-a2a",
                                   "--engine", "sglang", "--batch", "decode:64x1024"])
    assert ok.exit_code == 0, ok.output
    assert "all-to-all MoE" in ok.output
    js = CliRunner().invoke(main, ["estimate", "--model", "deepseek-v3", "--cluster", "h200-1x8",
                                   "--tp", "8", "--ep", "8", "--attention-dp", "8", "--moe-a2a",
                                   "--redundant-experts", "8", "--engine", "sglang",
                                   "--batch", "decode:64x1024", "--json"])
    import json
    d = json.loads(js.output)
    assert (d["attention_dp"], d["redundant_experts"], d["moe_a2a"]) == (8, 8, True)
    r = CliRunner().invoke(main, ["estimate", "--model", "deepseek-v3", "--cluster", "h200-1x8",
                                  "--tp", "8", "--ep", "8", "--moe-a2a", "--batch", "decode:8x100"])
    assert r.exit_code == 2 and "field '--moe-a2a'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["simulate", "--model", "deepseek-v3", "--cluster", "h200-1x8",
                                  "--tp", "8", "--ep", "8", "--moe-a2a", "--engine", "sglang",
                                  "--concurrency", "2", "--num-requests", "2"])
    assert r.exit_code == 2 and "--moe-a2a" in r.output


def test_the_search_offers_a2a_only_where_sglang_can_run_it(ds):
    from apex_opt.sim.workload import Requests
    from apex_opt.solver.candidates import WorkloadStats, enumerate_candidates
    from apex_opt.specs.slo import SLOSpec

    st = WorkloadStats.of(Requests(np.arange(32) * 0.1, np.full(32, 512), np.full(32, 512)))
    slo = SLOSpec.model_validate({"ttft_ms": {"target": 5000, "percentile": 90}})
    h200 = load_cluster("h200-1x8")
    sg = enumerate_candidates(ds, h200, st, slo, engine=load_engine("sglang"))
    a2a = [c for c in sg if c.moe_a2a]
    assert a2a and all(c.attention_dp > 1 and c.ep == c.tp for c in a2a)
    twin = next(c for c in sg if not c.moe_a2a and c.cost_key[:-1] == a2a[0].cost_key[:-1])
    assert twin.cost_key != a2a[0].cost_key and a2a[0].config().moe_a2a
    assert not any(c.moe_a2a for c in enumerate_candidates(ds, h200, st, slo,
                                                           engine=load_engine("sglang-0.4")))


def test_where_each_engine_runs_the_shared_experts(ds):
    """SGLang gathers the ranks' tokens and splits the shared experts over all tp GPUs; each vLLM
    DP rank is an engine core running them on its own tokens over its attention TP, replicated
    under its sequence-parallel MoE (attention TP > 1 with EP) and under all-to-all dispatch."""
    from apex_opt.parallel import shared_expert_split

    sg, v = load_engine("sglang"), load_engine("vllm")
    cfg = ReplicaConfig(tp=8, ep=8, attention_dp=2)
    assert shared_expert_split(cfg, sg) == (8, "all")
    assert shared_expert_split(cfg, v) == (1, "local")  # attn TP 4 + EP: sequence parallel
    assert shared_expert_split(cfg.model_copy(update={"ep": 1}), v) == (4, "rank")
    assert shared_expert_split(ReplicaConfig(tp=8, ep=8, attention_dp=8), v) == (1, "rank")
    assert shared_expert_split(ReplicaConfig(tp=8, ep=8), v) == (8, "all")
    a2a = ReplicaConfig(tp=8, ep=8, attention_dp=2, moe_a2a=True)
    assert shared_expert_split(a2a, sg) == shared_expert_split(a2a, v) == (1, "local")
    # the same FLOPs either way, but vLLM's GPUs hold (and stream) whole shared experts
    mv, ms = (weight_bytes_by_component(ds, cfg, 0, e)["shared_experts"] for e in (v, sg))
    assert mv == pytest.approx(8 * ms, rel=0.01)
