"""Closed-loop concurrency (vllm bench serve --max-concurrency N): N clients, each sending its next
request when its previous one finished."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from apex_opt.errors import InputError
from apex_opt.io import validate
from apex_opt.registry import load_cluster
from apex_opt.sim.simulator import simulate
from apex_opt.sim.workload import Requests, generate
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaGroup
from apex_opt.specs.workload import WorkloadSpec, load_workload

MODEL = "llama-3.1-8b"


def _validate_modern():
    """scripts/validate_modern.py as a module (it is a script, not part of the package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "validate_modern.py"
    spec = importlib.util.spec_from_file_location("validate_modern", path)
    vm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vm)
    return vm


def _max_in_flight(arrival: np.ndarray, finish: np.ndarray) -> int:
    """Most requests sent but not finished at any instant (a finish at t frees its slot before a
    send at the same t)."""
    ev = sorted([(t, 1) for t in arrival] + [(t, -1) for t in finish])
    cur = peak = 0
    for _, d in ev:
        cur += d
        peak = max(peak, cur)
    return peak


def _run(req: Requests, replicas: int = 1, **kw):
    plan = Plan(groups=(ReplicaGroup(tp=1, replicas=replicas, max_model_len=8192, **kw),))
    return simulate(load_model(MODEL), load_cluster("h100-sxm-1x8"), plan, req)


@pytest.mark.parametrize("replicas", [1, 2])
def test_never_more_than_n_in_flight(replicas):
    rng = np.random.default_rng(3)
    n, conc = 120, 8
    req = Requests(np.zeros(n), rng.integers(50, 1500, n), rng.integers(5, 120, n),
                   concurrency=conc)
    res = _run(req, replicas)
    pr = res.per_request()
    arr, fin = pr["arrival_s"], pr["finish_s"]
    assert res.metrics.num_completed == n
    assert np.isfinite(arr).all() and np.isfinite(fin).all()
    assert (fin > arr).all()
    assert _max_in_flight(arr, fin) == conc  # the bound holds and is reached
    # all clients start together; every later request is sent exactly when an earlier one finished
    assert (arr[:conc] == 0).all() and (arr[conc:] > 0).all()
    fin_set = set(fin.tolist())
    assert all(a in fin_set for a in arr[conc:].tolist())
    # requests go out in index order
    assert (np.diff(arr) >= 0).all()
    assert res.workload["concurrency"] == conc


def test_latency_counts_from_the_send_time_and_littles_law():
    n, conc = 160, 16
    req = Requests(np.zeros(n), np.full(n, 1024), np.full(n, 128), concurrency=conc)
    res = _run(req)
    m = res.metrics
    pr = res.per_request()
    ttft = (pr["first_token_s"] - pr["arrival_s"]) * 1e3
    assert m.ttft_ms.mean == pytest.approx(float(ttft.mean()), rel=1e-3)
    # queueing behind the other clients is in TTFT, but no request waits for a whole E2E
    assert m.ttft_ms.max < m.e2e_s.mean * 1e3
    # Little's law: clients = throughput x E2E (up to the ramp-down at the end)
    assert m.requests_per_s * m.e2e_s.mean == pytest.approx(conc, rel=0.15)


def test_more_clients_more_load():
    n = 96
    res = {c: _run(Requests(np.zeros(n), np.full(n, 512), np.full(n, 64), concurrency=c))
           for c in (1, 4, 32)}
    tput = [res[c].metrics.throughput_tokens_per_s for c in (1, 4, 32)]
    tpot = [res[c].metrics.tpot_ms.mean for c in (1, 4, 32)]
    assert tput[0] < tput[1] < tput[2]
    assert tpot[2] > max(tpot[:2])  # 32 sequences per step decode slower than 1 or 4
    # one client: strictly sequential requests, nothing ever queues
    pr = res[1].per_request()
    assert _max_in_flight(pr["arrival_s"], pr["finish_s"]) == 1
    np.testing.assert_allclose(pr["arrival_s"][1:], pr["finish_s"][:-1])


def test_dropped_request_frees_its_client():
    # request 1 cannot fit max_model_len: dropped at once, its client sends request 2 right away
    req = Requests(np.zeros(4), np.array([100, 9000, 100, 100]), np.array([20, 20, 20, 20]),
                   concurrency=2)
    res = _run(req)
    pr = res.per_request()
    assert res.metrics.num_dropped == 1 and res.metrics.num_completed == 3
    # sent when the engine rejected request 1 (after the front-end hop), long before request 0
    # finished
    assert 0.0 <= pr["arrival_s"][2] < 0.05 < pr["finish_s"][0]
    assert _max_in_flight(pr["arrival_s"][pr["dropped"] == 0],
                          pr["finish_s"][pr["dropped"] == 0]) <= 2


def test_concurrency_above_requests_sends_all_at_once():
    req = Requests(np.zeros(5), np.full(5, 200), np.full(5, 10), concurrency=50)
    pr = _run(req).per_request()
    assert (pr["arrival_s"] == 0).all()


def test_requests_concurrency_carried_and_split():
    r = Requests(np.zeros(10), np.full(10, 5), np.full(10, 5), concurrency=5)
    assert r.subset(slice(0, 3)).concurrency == 3
    parts = r.split_round_robin(2)
    assert [p.concurrency for p in parts] == [3, 2] and [len(p) for p in parts] == [5, 5]
    assert r.scaled_rate(2.0).concurrency == 10 and r.scaled_rate(0.01).concurrency == 1
    assert r.with_concurrency(None).concurrency is None
    assert r.summary().rate_req_s is None
    with pytest.raises(ValueError, match="concurrency"):
        Requests(np.zeros(1), np.array([1]), np.array([1]), concurrency=0)


def test_workload_yaml_closed_loop(tmp_path):
    p = tmp_path / "w.yaml"
    p.write_text("num_requests: 40\narrival: {process: closed_loop, concurrency: 4}\n"
                 "prompt_len: 300\noutput_len: {dist: uniform, min: 10, max: 50}\n")
    spec = load_workload(p)
    r = generate(spec)
    assert r.concurrency == 4 and (r.arrival_s == 0).all() and len(r) == 40
    assert spec.duration_s is None
    for bad, words in [({"process": "closed_loop"}, "needs 'concurrency'"),
                       ({"process": "closed_loop", "concurrency": 4, "rate": 2}, "rate"),
                       ({"process": "poisson", "rate": 2, "concurrency": 4}, "only applies"),
                       ({"process": "poisson"}, "needs 'rate'"),
                       ({"process": "closed_loop", "concurrency": 0}, "concurrency")]:
        with pytest.raises(InputError, match=words):
            validate(WorkloadSpec, {"num_requests": 5, "arrival": bad, "prompt_len": 5,
                                    "output_len": 5}, "w.yaml")


def test_cli_concurrency():
    from apex_opt.commands.simulate import command

    runner = CliRunner()
    base = ["--model", MODEL, "--tp", "1", "--num-requests", "40", "--prompt-len", "256",
            "--output-len", "32", "--max-model-len", "4096"]
    r = runner.invoke(command, base + ["--concurrency", "4", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["workload"]["concurrency"] == 4 and doc["metrics"]["num_completed"] == 40
    bad = runner.invoke(command, base + ["--concurrency", "4", "--rate", "3"])
    assert bad.exit_code == 2 and "--concurrency" in bad.output
    miss = runner.invoke(command, ["--model", MODEL, "--tp", "1", "--concurrency", "4",
                                   "--num-requests", "10"])
    assert miss.exit_code == 2 and "--prompt-len" in miss.output


@pytest.mark.parametrize("replicas, router", [(1, "least_outstanding"), (2, "round_robin"),
                                             (2, "least_outstanding")])
def test_decode_runs_never_skip_a_send(replicas, router):
    """Fast-forwarded decode runs stop before any send (the next request of a freed client may
    join the replica mid-run): the closed loop gives the same timeline as step-by-step."""
    rng = np.random.default_rng(5)
    n = 48
    req = Requests(np.zeros(n), rng.integers(100, 800, n), rng.integers(10, 90, n), concurrency=6)
    plan = Plan(groups=(ReplicaGroup(tp=1, replicas=replicas, max_model_len=8192),),
                router=router)
    model, cluster = load_model(MODEL), load_cluster("h100-sxm-1x8")
    fast = simulate(model, cluster, plan, req).per_request()
    slow = simulate(model, cluster, plan, req, fast_forward=1).per_request()
    # sends happen at finishes, so any skipped send would shift every later request
    np.testing.assert_allclose(fast["arrival_s"], slow["arrival_s"], rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(fast["first_token_s"], slow["first_token_s"], rtol=2e-3, atol=1e-3)


def test_closed_loop_json_is_deterministic(tmp_path):
    from apex_opt.cli import main

    w = tmp_path / "w.yaml"
    w.write_text("num_requests: 30\narrival: {process: closed_loop, concurrency: 5}\n"
                 "prompt_len: {dist: lognormal, mean: 400, cv: 0.5, max: 2000}\n"
                 "output_len: {dist: uniform, min: 5, max: 60}\n"
                 "prefix: {groups: 3, shared_tokens: 64}\n")
    args = ["simulate", "--model", MODEL, "--tp", "1", "--dp", "2", "--max-model-len", "4096",
            "--json", "--workload", str(w)]
    a, b = CliRunner().invoke(main, args), CliRunner().invoke(main, args)
    assert a.exit_code == 0, a.output
    assert a.output == b.output  # byte-identical: no RNG, ties broken by sequence numbers
    assert json.loads(a.output)["workload"]["concurrency"] == 5


def test_validate_modern_closed_loop_rows():
    """scripts/validate_modern.py replays a concurrency row as a closed loop with warm-up requests
    left out of the means, and an aiconfigurator MoE row on its moe_tp x moe_ep GPUs."""
    vm = _validate_modern()
    row = {"case_id": "x", "workload_kind": "concurrency", "concurrency": "4", "isl": "512",
           "osl": "32", "n_requests": "40", "rate_req_s": "", "trace": ""}
    req, warm = vm.row_requests(row, Path("."), warmup_factor=2)
    assert (len(req), warm, req.concurrency) == (48, 8, 4)
    res = simulate(load_model(MODEL), load_cluster("h100-sxm-1x8"),
                   Plan(groups=(ReplicaGroup(tp=1, max_model_len=4096),)), req)
    means = vm.measured_means(res, warm)
    pr = res.per_request()
    assert means["ttft_ms"] == pytest.approx(
        float((pr["first_token_s"] - pr["arrival_s"])[8:].mean() * 1e3))
    moe = {"tp": "1", "pp": "1", "dp": "1", "ep": "1", "weight_dtype": "fp8", "kv_dtype": "",
           "max_num_seqs": "", "max_num_batched_tokens": "", "gpu_memory_utilization": "",
           "max_model_len": "", "prefix_caching": "",
           "notes": "agg tp1 pp1 attn_dp1 moe_tp2 moe_ep1; image ?"}
    plan, note = vm.row_plan(moe, load_model("qwen3-235b-a22b"), None)
    assert plan.groups[0].tp == 2 and plan.groups[0].ep == 1 and "TP2" in note


def test_validate_modern_aic_generator_flags_only_fill_blank_vllm_closed_loop_limits():
    vm = _validate_modern()
    row = {"dataset": "aiconfigurator_silicon", "engine": "vllm", "workload_kind": "concurrency",
           "isl": "1024", "osl": "128", "tp": "2", "pp": "1", "dp": "1", "ep": "1",
           "weight_dtype": "bf16", "kv_dtype": "", "max_num_seqs": "", "max_num_batched_tokens": "",
           "gpu_memory_utilization": "", "max_model_len": "", "prefix_caching": "", "notes": ""}
    assert vm.aic_generator_limits(row) == {"max_num_seqs": 512, "max_num_batched_tokens": 3036,
                                            "max_model_len": 2652}
    plan, note = vm.row_plan(row, load_model("qwen3-32b"), None, "aic-generator")
    g = plan.groups[0]
    assert (g.max_num_seqs, g.max_num_batched_tokens, g.max_model_len) == (512, 3036, 2652)
    assert "aic-generator" in note
    default, _ = vm.row_plan(row, load_model("qwen3-32b"), None)
    assert default.groups[0].max_num_batched_tokens is None
    # a recorded limit wins; SGLang rows and traces keep the engine's defaults
    assert "max_num_seqs" not in vm.aic_generator_limits({**row, "max_num_seqs": "64"})
    assert vm.aic_generator_limits({**row, "engine": "sglang"}) == {}
    assert vm.aic_generator_limits({**row, "workload_kind": "trace"}) == {}


def test_cli_prompt_pool_repeats_prompts_into_the_prefix_cache():
    """--prompt-pool N: prompts drawn with replacement from N distinct ones (aiperf's synthetic
    dataset); repeats hit the prefix cache, lowering TTFT; the engine's caching switch still
    rules, and the flag is refused where the requests come from a file."""
    from apex_opt.commands.simulate import command

    runner = CliRunner()
    base = ["--model", MODEL, "--tp", "1", "--concurrency", "8", "--num-requests", "64",
            "--prompt-len", "1024", "--output-len", "16", "--max-model-len", "4096", "--json"]
    plain = json.loads(runner.invoke(command, base).output)
    r = runner.invoke(command, base + ["--prompt-pool", "8"])
    assert r.exit_code == 0, r.output
    pooled = json.loads(r.output)
    hits = sum(x["prefix_hit_tokens"] for x in pooled["replicas"])
    # 64 draws from 8 prompts: at most 8 first uses miss; a hit is whole 16-token blocks and
    # never the prompt's last token (vLLM recomputes it): <= 1008 of 1024 tokens per repeat
    assert 0 < hits <= (64 - 1) * 1008 and hits % 16 == 0
    assert pooled["workload"]["prefix_reuse_tokens"] > 0
    assert sum(x["prefix_hit_tokens"] for x in plain["replicas"]) == 0
    assert pooled["metrics"]["ttft_ms"]["mean"] < 0.7 * plain["metrics"]["ttft_ms"]["mean"]
    off = json.loads(runner.invoke(command, base + ["--prompt-pool", "8",
                                                    "--no-prefix-caching"]).output)
    assert sum(x["prefix_hit_tokens"] for x in off["replicas"]) == 0
    text = runner.invoke(command, base[:-1] + ["--prompt-pool", "8"])
    assert "prefix-cache hit tokens" in text.output and "repeated prefixes" in text.output
    bad = runner.invoke(command, ["--model", MODEL, "--tp", "1", "--trace", "t.jsonl",
                                  "--prompt-pool", "8"])
    assert bad.exit_code == 2 and "--prompt-pool" in bad.output


def test_validate_modern_prompt_pool_only_for_aiconfigurator_closed_loops():
    vm = _validate_modern()
    row = {"case_id": "x", "dataset": "aiconfigurator_silicon", "workload_kind": "concurrency",
           "concurrency": "4", "isl": "1024", "osl": "32", "n_requests": "200", "rate_req_s": "",
           "trace": ""}
    req, warm = vm.row_requests(row, Path("."), warmup_factor=2, prompt_pool=100)
    ids = {b for b in req.prefix_blocks}
    assert len(req.prefix_blocks) == 208 and 1 < len(ids) <= 100   # drawn with replacement
    assert all(len(b) == 1024 // 16 for b in req.prefix_blocks)     # the whole prompt is shared
    assert req.prefix_blocks == vm.row_requests(row, Path("."), 2, 100)[0].prefix_blocks
    assert vm.row_requests(row, Path("."), 2)[0].prefix_blocks is None
    other = {**row, "dataset": "inference_sim_training"}
    assert vm.row_requests(other, Path("."), 2, 100)[0].prefix_blocks is None


def test_validate_modern_replays_a_block_fp8_checkpoint_as_block_fp8():
    """A row whose checkpoint (model_hf) is a block-fp8 release replays with that layout (the
    kernel path follows it); the same architecture quantised online stays per-tensor."""
    vm = _validate_modern()
    row = {"model": "qwen3-235b-a22b", "model_hf": "Qwen/Qwen3-235B-A22B-FP8", "weight_dtype": "fp8"}
    m = vm.row_model(row, Path("."))
    assert (m.checkpoint_dtype, m.quant_scheme) == ("fp8", "fp8_block")
    online = vm.row_model({**row, "model_hf": "Qwen/Qwen3-235B-A22B"}, Path("."))
    assert online.quant_scheme == ""
    assert vm.row_model({**row, "weight_dtype": "bf16"}, Path(".")).quant_scheme == ""


def test_validate_modern_aic_generator_fp8_kv_for_quantised_checkpoints():
    vm = _validate_modern()
    row = {"dataset": "aiconfigurator_silicon", "engine": "sglang", "workload_kind": "concurrency",
           "model_hf": "deepseek-ai/DeepSeek-V3", "kv_dtype": "", "isl": "1024", "osl": "128"}
    assert vm.aic_generator_kv_dtype(row) == {"kv_dtype": "fp8"}
    assert vm.aic_generator_kv_dtype({**row, "model_hf": "Qwen/Qwen3-32B"}) == {}
    assert vm.aic_generator_kv_dtype({**row, "kv_dtype": "bf16"}) == {}       # recorded wins
    assert vm.aic_generator_kv_dtype({**row, "dataset": "inference_sim_training"}) == {}


def test_decode_concurrency_is_littles_law_on_the_decode_phase():
    """validate_modern's ADMISSION check: clients x (1 - TTFT / E2E) from a closed loop's means
    equals the time-averaged number of requests past their first token -- checked on a real
    replay, once with room for every client and once with a KV pool that holds only a few."""
    vm = _validate_modern()
    assert vm.decode_concurrency(16, 14621.3, 21.4663) == pytest.approx(16 * (1 - 14.6213 / 21.4663))
    assert vm.decode_concurrency(None, 1.0, 1.0) is None and vm.decode_concurrency(4, None, 1.0) is None
    n, conc = 400, 16
    req = Requests(np.zeros(n), np.full(n, 1024), np.full(n, 256), concurrency=conc)
    out = {}
    for label, util in (("roomy", 0.9), ("tight", 0.226)):  # tight: ~3,500 KV tokens
        plan = Plan(groups=(ReplicaGroup(tp=1, max_model_len=2048, gpu_memory_utilization=util),))
        res = simulate(load_model(MODEL), load_cluster("h100-sxm-1x8"), plan, req)
        pr = res.per_request()
        first, fin = pr["first_token_s"], pr["finish_s"]
        # time average over the whole run of #{first token <= t < finish}
        busy = float(np.sum(fin - first)) / float(fin.max())
        est = vm.decode_concurrency(conc, res.metrics.ttft_ms.mean, res.metrics.e2e_s.mean)
        assert est == pytest.approx(busy, rel=0.05)
        out[label] = est
    assert out["roomy"] > 0.8 * conc  # the rest is each request's own prefill wait
    assert out["tight"] < vm.ADMISSION_FLAG * out["roomy"]
