"""What one data-parallel-attention step runs (vLLM V1 --data-parallel-size + EP, SGLang
--enable-dp-attention): the ranks step in lockstep, padded to the busiest rank, and every MoE
layer runs the engine's gather / scatter collectives."""

import numpy as np
import pytest

from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.registry import load_cluster
from apex_opt.specs.engine import EngineSpec, load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import ReplicaConfig

EMPTY = np.zeros(0, dtype=np.int64)


def _qwen(engine="vllm", adp=4, **kw):
    model, pool = load_model("qwen3-235b-a22b"), load_cluster("h200-1x8").pools[0]
    cfg = ReplicaConfig(tp=8, ep=8, weight_dtype="fp8", **kw).model_copy(update={"attention_dp": adp})
    eng = load_engine(engine) if isinstance(engine, str) else engine
    return IterationCostModel(model, pool, cfg, eng)


def test_every_rank_pads_to_the_busiest_ranks_graph_size():
    cm = _qwen()
    eng = cm.engine
    ranks = [(np.full(3, 2048), []), (np.full(1, 2048), []), (EMPTY, []), (np.full(2, 2048), [])]
    pad = eng.graph_batch_size(3, cm.graph_max_bs)
    assert pad is not None and pad > 3
    # coordinate_batch_across_dp: all four ranks (the idle one a dummy batch) run the busiest
    # rank's captured size; the experts see 4 x that many tokens
    tokens, samples, t_att, s_rank, graph, piecewise, seqs = cm._dp_step_shape(ranks, 0)
    assert (tokens, t_att, graph, seqs) == (4 * pad, pad, True, 3)
    # eager: no padding, the gather takes each rank's own count
    eager = _qwen(cuda_graphs=False)
    tokens, _, t_att, _, graph, piecewise, _ = eager._dp_step_shape(ranks, 0)
    assert (tokens, t_att, graph, piecewise) == (6, 3, False, False)


def test_the_busiest_rank_sets_the_lockstep_step():
    cm = _qwen(adp=2)
    ctx = np.full(64, 8192)
    balanced = cm.iteration(ctx, attention_ranks=[(ctx[:32], []), (ctx[32:], [])], with_breakdown=True)
    skewed = cm.iteration(ctx, attention_ranks=[(ctx, []), (EMPTY, [])], with_breakdown=True)
    # same 64 sequences; one rank holding all of them attends over twice the KV while the other
    # (a dummy batch padded to 64) waits: the step is the busiest rank's
    assert skewed.breakdown["attention"] > 1.5 * balanced.breakdown["attention"]
    assert skewed.time_s > 1.15 * balanced.time_s
    # without the ranks' batches the union is dealt round robin (SGLang's controller default)
    assert cm.iteration(ctx).time_s == pytest.approx(balanced.time_s)
    # the simulator hands the ranks' own batches over (sim/engine.py _step_lockstep)
    assert IterationCostModel.supports_attention_dp


def test_moe_layers_run_the_engines_collectives():
    vllm = load_engine("vllm")
    colls = vllm.dp_attention_collectives
    # V1 sequence-parallel MoE: the rank's shards are all-gathered in its TP group after combine
    assert tuple(colls[-1]) == ("all_gather", "attention_tp", "rank")
    shorter = vllm.model_copy(update={"dp_attention_collectives": colls[:-1]})
    ctx = np.full(64, 2048)
    full, cut = _qwen(vllm, adp=4), _qwen(shorter, adp=4)
    ranks = [(ctx[r::4], []) for r in range(4)]
    c_full = full.iteration(ctx, attention_ranks=ranks, with_breakdown=True).breakdown["communication"]
    c_cut = cut.iteration(ctx, attention_ranks=ranks, with_breakdown=True).breakdown["communication"]
    t_att = full.engine.graph_batch_size(16, full.graph_max_bs)
    one = full.attn_comm.all_gather(t_att * full.hidden * 2.0, full.attn_tp)
    n_moe = sum(m for _, m in full.stage_layers)
    assert c_full - c_cut == pytest.approx(n_moe * one, rel=1e-6)
    # attention-TP collectives vanish when each rank is one GPU (attention_dp = tp)
    assert _qwen(vllm, adp=8).attn_comm is None
    c8 = _qwen(vllm, adp=8).iteration(ctx).time_s
    assert c8 == pytest.approx(_qwen(shorter, adp=8).iteration(ctx).time_s)
    # SGLang reduce-scatters the un-reduced o_proj output instead of all-reducing it
    assert tuple(load_engine("sglang").dp_attention_collectives[0]) == (
        "reduce_scatter", "attention_tp", "rank")


def test_vllm_runs_dense_layers_and_the_lm_head_per_rank():
    model, pool = load_model("deepseek-v3"), load_cluster("h200-1x8").pools[0]
    cfg = ReplicaConfig(tp=8, weight_dtype="fp8").model_copy(update={"attention_dp": 2})
    vllm = load_engine("vllm")
    assert vllm.dp_attention_gathered_dense is False
    per_rank = IterationCostModel(model, pool, cfg, vllm)
    gathered = IterationCostModel(model, pool, cfg,
                                  vllm.model_copy(update={"dp_attention_gathered_dense": True}))
    # each DP rank is an engine core with TP = 4: its dense MLP and LM head are TP4 shards
    assert per_rank.vocab_shard == -(-model.vocab_size // 4)
    assert gathered.vocab_shard == -(-model.vocab_size // 8)
    assert per_rank.mlp_ops[0][1] == 2 * gathered.mlp_ops[0][1]
    ctx = np.full(32, 2048)
    a = per_rank.iteration(ctx, with_breakdown=True).breakdown
    b = gathered.iteration(ctx, with_breakdown=True).breakdown
    # decode is weight-bound: reading a twice larger LM-head / MLP shard for half the tokens is slower
    assert a["lm_head"] > 1.3 * b["lm_head"]
    assert a["mlp"] > 1.3 * b["mlp"]


def test_bad_dp_collective_is_refused():
    data = load_engine("vllm").model_dump()
    data["dp_attention_collectives"] = [["broadcast", "all", "rank"]]
    with pytest.raises(ValueError, match="dp_attention_collectives"):
        EngineSpec.model_validate(data)


def test_sglang_dp_attention_splits_the_prefill_budget_and_reserve():
    from apex_opt.sim.simulator import engine_limits

    model = load_model("deepseek-v3")
    dev = load_cluster("h200-1x8").pools[0].device
    base = ReplicaConfig(tp=8, weight_dtype="fp8")
    dpa = base.model_copy(update={"attention_dp": 8})
    sg = load_engine("sglang")
    one, eight = (engine_limits(model, c, 10000, sg, dev) for c in (base, dpa))
    # server_args _handle_data_parallelism: chunked_prefill_size //= dp_size, conservativeness x 0.3
    assert eight.max_num_batched_tokens == one.max_num_batched_tokens // 8
    assert eight.new_token_ratio[0] == pytest.approx(0.3 * one.new_token_ratio[0])
    assert eight.new_token_ratio[1] == pytest.approx(0.3 * one.new_token_ratio[1])
    # a plan's own budget is already each rank's (the SGLang launch passes 8 x it)
    own = dpa.model_copy(update={"max_num_batched_tokens": 4096})
    assert engine_limits(model, own, 10000, sg, dev).max_num_batched_tokens == 4096
    # vLLM: every DP rank is an engine core with the whole --max-num-batched-tokens
    v = load_engine("vllm")
    assert (engine_limits(model, dpa, 10000, v, dev).max_num_batched_tokens
            == engine_limits(model, base, 10000, v, dev).max_num_batched_tokens)


def test_sglang_pads_a_rank_to_a_multiple_of_its_attention_tp():
    # SGLang captures only batch sizes divisible by attn_tp under DP attention: with attn_tp 4
    # a busiest rank of 1 sequence runs the size-4 graph (vLLM: its size-1 graph)
    sg = _qwen("sglang", adp=2)
    assert sg.attn_tp == 4 and sg.engine.dp_attention_graph_bs_multiple
    ranks = [(np.full(1, 1024), []), (EMPTY, [])]
    assert sg._dp_step_shape(ranks, 0)[2] == 4
    assert _qwen("vllm", adp=2)._dp_step_shape(ranks, 0)[2] == 1


def test_simulated_sglang_dp_ranks_prefill_within_the_split_budget(monkeypatch):
    """simulate() schedules each attention-DP rank with the DEFAULT chunk budget divided by the
    ranks (a regression: the simulator once passed the resolved config, whose filled-in budget
    read as the plan's own, so every rank prefilled the whole budget)."""
    from apex_opt.sim.simulator import engine_limits, simulate
    from apex_opt.sim.workload import Requests
    from apex_opt.specs.plan import Plan, ReplicaGroup

    model, cluster, sg = load_model("deepseek-v3"), load_cluster("h200-1x8"), load_engine("sglang")
    per_rank = engine_limits(model, ReplicaConfig(tp=8, attention_dp=8), 10000, sg,
                             cluster.pools[0].device).max_num_batched_tokens
    seen: list[int] = []
    real = IterationCostModel.iteration

    def spy(self, decode_ctx, prefill, *a, **kw):
        for _, pf in kw.get("attention_ranks") or ():
            seen.append(sum(q for q, _ in pf))
        return real(self, decode_ctx, prefill, *a, **kw)

    monkeypatch.setattr(IterationCostModel, "iteration", spy)
    plan = Plan(groups=(ReplicaGroup(tp=8, attention_dp=8),))
    reqs = Requests(arrival_s=np.zeros(16), prompt_tokens=np.full(16, 3 * per_rank),
                    output_tokens=np.full(16, 4), concurrency=16)
    simulate(model, cluster, plan, reqs, engine=sg)
    assert per_rank < 8192 and max(seen) == per_rank
