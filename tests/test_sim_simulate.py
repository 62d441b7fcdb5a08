"""`simulate()` with the real cost and memory models, and the `apex-opt simulate` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from apex_opt.errors import InfeasibleError, InputError
from apex_opt.registry import load_cluster
from apex_opt.report.render import to_json
from apex_opt.specs.engine import load_engine
from apex_opt.sim.simulator import simulate
from apex_opt.sim.workload import Requests, load_trace
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaGroup


@pytest.fixture(scope="module")
def m8():
    return load_model("llama-3.1-8b")


@pytest.fixture(scope="module")
def node():
    return load_cluster("h100-sxm-1x8")


def _requests(n=200, rate=20.0, seed=0, prompt=(50, 1500), output=(1, 300)) -> Requests:
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1 / rate, n))
    return Requests(arrival, rng.integers(*prompt, n), rng.integers(*output, n))


def _plan(**kw) -> Plan:
    router = kw.pop("router", "least_outstanding")
    return Plan(groups=(ReplicaGroup(**kw),), router=router)


def test_simulate_basic_and_deterministic(m8, node):
    req = _requests()
    plan = _plan(tp=1, max_model_len=8192, chunked_prefill=False)
    a = simulate(m8, node, plan, req, seed=3)
    b = simulate(m8, node, plan, req, seed=3)
    assert to_json(a) == to_json(b)
    m = a.metrics
    assert m.num_completed == 200 and m.num_dropped == 0
    assert m.ttft_ms.mean / 1e3 <= m.e2e_s.mean
    assert m.energy_j > 0 and m.throughput_tokens_per_s > 0
    t = a.per_request()
    assert np.all(t["first_token_s"] <= t["finish_s"])
    # token-weighted TPOT from per-request timings
    out = t["output_tokens"]
    multi = out > 1
    expect = (t["finish_s"] - t["first_token_s"])[multi].sum() / (out[multi] - 1).sum() * 1e3
    assert a.tpot_token_weighted_ms == pytest.approx(expect, rel=1e-5)
    r = a.replicas[0]
    assert r.requests == 200 and 0 < r.busy_fraction <= 1
    assert r.max_kv_blocks_used <= r.kv_blocks


def test_dp_routers_conserve_requests(m8, node):
    req = _requests(n=300, rate=60.0)
    for router in ("round_robin", "least_outstanding"):
        res = simulate(m8, node, _plan(tp=2, replicas=3, router=router, max_model_len=8192), req)
        assert sum(r.requests for r in res.replicas) == 300
        assert res.metrics.num_completed == 300
        rep = res.per_request()["replica"]
        assert set(np.unique(rep)) == {0, 1, 2}


def test_heterogeneous_groups(m8, node):
    plan = Plan(groups=(ReplicaGroup(tp=1, replicas=2, max_model_len=8192),
                        ReplicaGroup(tp=2, replicas=1, max_model_len=8192, chunked_prefill=False)))
    res = simulate(m8, node, plan, _requests(n=150, rate=40.0))
    assert [r.label for r in res.replicas] == ["TP1", "TP1", "TP2"]
    assert res.metrics.num_completed == 150


def test_pipeline_parallel_runs(m8, node):
    req = _requests(n=150, rate=30.0)
    res = simulate(m8, node, _plan(tp=1, pp=2, max_model_len=8192), req, debug=True)
    assert res.metrics.num_completed == 150
    assert res.replicas[0].iterations > 0


def test_pipeline_kv_pool_shared_on_v1_split_on_vllm06(m8, node):
    """vLLM V1 / SGLang allocate every micro-batch's blocks from ONE pool (a request may use all
    of it); vLLM 0.6 gives each virtual engine num_gpu_blocks // pp."""
    # 400 blocks x 16 tokens: the 4,000-token request needs 250 blocks, more than 400 // 2
    req = Requests(np.array([0.0, 0.05]), np.array([3000, 200]), np.array([1000, 50]))
    plan = _plan(tp=1, pp=2, max_model_len=8192)
    v1 = simulate(m8, node, plan, req, num_blocks_override=400, debug=True)
    assert v1.metrics.num_completed == 2 and v1.metrics.num_dropped == 0
    assert v1.replicas[0].max_kv_blocks_used > 200
    v0 = simulate(m8, node, plan, req, num_blocks_override=400, engine=load_engine("vllm-0.6"))
    assert v0.metrics.num_dropped == 1
    assert v0.dropped_by_reason == {"prompt + output does not fit in the KV cache": 1}


def test_pipeline_shared_pool_under_pressure_serves_everything(m8, node):
    """Micro-batches competing for one small pool: preemption and the wake-up of an engine whose
    waiting requests another engine's blocks held back keep every request moving (debug checks
    the pool's accounting over both engines after every step)."""
    req = _requests(n=120, rate=60.0, prompt=(200, 900), output=(50, 300))
    plan = _plan(tp=1, pp=2, max_model_len=4096)
    res = simulate(m8, node, plan, req, num_blocks_override=160, debug=True)
    assert res.metrics.num_completed == 120
    assert res.metrics.preemptions > 0
    assert res.replicas[0].max_kv_blocks_used <= 160


def test_sglang_cuts_outputs_longer_than_its_kv_pool_where_vllm_drops_them(m8, node):
    """SGLang's scheduler cuts max_new_tokens at min(context, pool) - 1 - prompt - 1 and aborts
    prompts above min(context, pool) - 6; vLLM 0.6 (no startup check on a forced pool) drops
    a request its KV cache cannot hold."""
    sg = load_engine("sglang")
    assert sg.context_limit_exclusive and sg.clip_output_to_kv_pool
    assert not load_engine("vllm").clip_output_to_kv_pool
    pool = 4000  # SGLang pages are 1 token
    req = Requests(np.array([0.0, 0.1, 0.2]), np.array([1000, 3000, 3996]),
                   np.array([200, 2000, 10]))
    plan = _plan(tp=1, max_model_len=8192)
    res = simulate(m8, node, plan, req, num_blocks_override=pool, engine=sg)
    t = res._timings
    assert res.dropped_by_reason == {"prompt does not fit in the KV pool (SGLang aborts it)": 1}
    assert list(t["dropped"]) == [0, 0, 4]  # prompt 3,996 > 4,000 - 1 - 5
    # the 3,000 + 2,000 request runs with 4,000 - 1 - 3,000 - 1 = 998 output tokens
    assert list(t["output_tokens"][:2]) == [200, 998]
    assert res.outputs_cut == 1 and res.output_tokens_cut == 1002
    assert res.metrics.num_completed == 2
    assert res.workload["total_output_tokens"] == 200 + 2000 + 10  # what was asked for
    v0 = simulate(m8, node, plan, req, num_blocks_override=pool // 16,
                  engine=load_engine("vllm-0.6"))
    assert v0.outputs_cut == 0 and v0.metrics.num_dropped == 2
    # a request served short did not get what it asked for: like a drop, it misses the SLO
    from apex_opt.specs.slo import SLOSpec

    loose = SLOSpec.model_validate({"e2e_s": {"target": 1e6, "percentile": 50}})
    met = simulate(m8, node, plan, req, num_blocks_override=pool, engine=sg, slo=loose)
    assert met.metrics.slo_attainment == pytest.approx(1 / 3)


def test_sglang_refuses_a_request_that_reaches_the_context_length(m8, node):
    """SGLang's tokenizer manager refuses prompt + max_new_tokens >= context_len; vLLM only
    a total above max_model_len."""
    req = Requests(np.array([0.0, 0.1]), np.array([1000, 1000]), np.array([3096, 100]))
    plan = _plan(tp=1, max_model_len=4096)
    sg = simulate(m8, node, plan, req, engine=load_engine("sglang"))
    assert sg.dropped_by_reason == {"prompt + output exceeds max_model_len": 1}
    vl = simulate(m8, node, plan, req, engine=load_engine("vllm"))
    assert vl.metrics.num_dropped == 0 and vl.metrics.num_completed == 2


def test_tiny_kv_preempts(m8, node):
    req = _requests(n=80, rate=200.0, prompt=(200, 600), output=(100, 400))
    plan = _plan(tp=1, max_model_len=2048, chunked_prefill=False)
    big = simulate(m8, node, plan, req)
    tiny = simulate(m8, node, plan, req, num_blocks_override=200, debug=True)
    assert big.metrics.preemptions == 0
    assert tiny.metrics.preemptions > 0 and tiny.replicas[0].recomputed_tokens > 0
    assert tiny.replicas[0].max_kv_blocks_used <= 200
    assert tiny.metrics.e2e_s.mean > big.metrics.e2e_s.mean


def test_drops_are_reported(m8, node):
    req = Requests(np.array([0.0, 0.1]), np.array([100, 3000]), np.array([10, 2000]))
    res = simulate(m8, node, _plan(tp=1, max_model_len=4096), req)
    assert res.metrics.num_dropped == 1 and res.metrics.num_completed == 1
    assert res.dropped_by_reason == {"prompt + output exceeds max_model_len": 1}


def test_infeasible_memory_and_gpu_count(node):
    big = load_model("llama-3.1-405b")
    with pytest.raises(InfeasibleError, match="exceed"):
        simulate(big, node, _plan(tp=1, max_model_len=8192), _requests(n=5))
    with pytest.raises(InfeasibleError, match="GPUs"):
        simulate(big, node, _plan(tp=8, replicas=2, max_model_len=8192), _requests(n=5))


def test_unknown_pool_is_input_error(m8, node):
    with pytest.raises(InputError, match="pool"):
        simulate(m8, node, _plan(tp=1, pool="nope"), _requests(n=5))


def test_cli_json_and_errors():
    from apex_opt.commands.simulate import command

    runner = CliRunner()
    args = ["--model", "llama-3.1-8b", "--tp", "1", "--rate", "5", "--num-requests", "50",
            "--prompt-len", "300", "--output-len", "50", "--max-model-len", "4096", "--json"]
    r1 = runner.invoke(command, args)
    assert r1.exit_code == 0, r1.output
    doc = json.loads(r1.output)
    assert doc["metrics"]["num_completed"] == 50
    assert {"mean", "p50", "p90", "p99"} <= set(doc["metrics"]["ttft_ms"])
    # unset engine settings stay unset in the plan: the engine (vLLM V1 by default) fills them
    assert doc["engine"] == "vllm" and doc["plan"]["groups"][0]["chunked_prefill"] is None
    assert runner.invoke(command, args).output == r1.output
    table = runner.invoke(command, args[:-1])
    assert table.exit_code == 0 and "TTFT" in table.output
    both = runner.invoke(command, args + ["--trace", "x.jsonl"])
    assert both.exit_code == 2
    bad = runner.invoke(command, ["--model", "llama-3.1-405b", "--tp", "1", "--rate", "1",
                                  "--num-requests", "5", "--prompt-len", "10", "--output-len", "5"])
    assert isinstance(bad.exception, InfeasibleError)


def test_cli_sglang_length_limits():
    """`simulate --engine sglang` shows the outputs SGLang cuts to fit its KV pool (text and
    JSON), and warns about requests whose prompt + output reaches the context length (SGLang
    refuses those; vLLM takes a total equal to max_model_len)."""
    from apex_opt.commands.simulate import command

    runner = CliRunner()
    base = ["--model", "qwen3-32b", "--tp", "1", "--engine", "sglang", "--concurrency", "1",
            "--num-requests", "2", "--prompt-len", "8000", "--output-len", "16000"]
    text = runner.invoke(command, base)
    assert text.exit_code == 0, text.output
    assert "outputs cut to fit the KV pool" in text.output
    doc = json.loads(runner.invoke(command, base + ["--json"]).output)
    assert doc["outputs_cut"] == 2 and doc["output_tokens_cut"] > 0
    assert doc["metrics"]["num_completed"] == 2
    edge = ["--model", "llama-3.1-8b", "--tp", "1", "--rate", "5", "--num-requests", "4",
            "--prompt-len", "1000", "--output-len", "3096", "--max-model-len", "4096"]
    sg = runner.invoke(command, edge + ["--engine", "sglang", "--json"])
    assert isinstance(sg.exception, InputError)
    assert "reach or exceed max_model_len 4,096" in str(sg.exception)
    vl = runner.invoke(command, edge + ["--json"])
    assert vl.exit_code == 0 and json.loads(vl.output)["metrics"]["num_completed"] == 4


def test_validation_row_lmsys_8tp(validation_dir):
    """One real vLLM run replayed: the simulator lands in the right range (regression guard)."""
    model, node = load_model("llama-3.1-70b"), load_cluster("h100-sxm-1x8")
    req = load_trace(validation_dir / "traces" / "vllm-llama_lmsys_05_validation_8TP.jsonl")
    plan = _plan(tp=8, max_model_len=131072, gpu_memory_utilization=0.97, chunked_prefill=True,
                 max_num_batched_tokens=512)
    res = simulate(model, node, plan, req, engine=load_engine("vllm-0.6"))  # a vLLM 0.6.0 run
    assert res.metrics.num_completed == 1024
    # measured: TTFT 37.97 ms, token-weighted TPOT 14.32 ms, E2E 1.160 s
    assert res.tpot_token_weighted_ms == pytest.approx(14.32, rel=0.3)
    assert res.metrics.e2e_s.mean == pytest.approx(1.160, rel=0.3)


def test_breakdown_collected_inside_fast_forwarded_decode_runs(m8, node):
    """breakdown=True keeps decode fast-forward (solve takes the chosen plan's breakdown from its
    shortlist run): same metrics as without it, and the breakdown sums to the replica's step time
    (GPU + host) over the run, against a step-by-step reference."""
    req = _requests(n=120, rate=8.0, seed=5, output=(100, 400))
    plan = _plan(tp=1, max_model_len=8192)
    plain = simulate(m8, node, plan, req)
    fast = simulate(m8, node, plan, req, breakdown=True)
    slow = simulate(m8, node, plan, req, breakdown=True, fast_forward=1)
    strip = {"time_breakdown_ms"}
    assert fast.metrics.model_dump(exclude=strip) == plain.metrics.model_dump(exclude=strip)
    bf, bs = fast.metrics.time_breakdown_ms, slow.metrics.time_breakdown_ms
    assert bf and bs and set(bf) == set(bs)
    total_f, total_s = sum(bf.values()), sum(bs.values())
    assert total_f == pytest.approx(total_s, rel=0.01)
    for key, v in bs.items():
        assert bf[key] == pytest.approx(v, rel=0.03, abs=1.0), key
