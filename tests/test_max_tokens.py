"""The max_tokens a request declares, apart from the output it generates: what SGLang's admission
reserves KV room for, and what vLLM checks against max_model_len."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from apex_opt.cli import main
from apex_opt.registry import load_cluster
from apex_opt.sim.simulator import simulate
from apex_opt.sim.workload import Requests
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaGroup


def _closed(n: int = 96, conc: int = 16, prompt: int = 1024, out: int = 256, **kw) -> Requests:
    return Requests(np.zeros(n), np.full(n, prompt), np.full(n, out), concurrency=conc, **kw)


def test_requests_declared_limits():
    r = _closed(4, 2, out=300)
    assert r.max_tokens is None and r.declared_max_tokens().tolist() == [300] * 4
    assert r.max_request_len == r.max_seq_len == 1324
    big = r.with_max_tokens(4096)
    assert big.declared_max_tokens().tolist() == [4096] * 4
    assert big.output_tokens.tolist() == [300] * 4  # still ends at its output length (EOS)
    assert big.max_request_len == 1024 + 4096 and big.max_seq_len == 1324
    assert r.with_max_tokens("none").declared_max_tokens().tolist() == [-1] * 4
    # the engine stops a request at the max_tokens it sent
    assert r.with_max_tokens(100).output_tokens.tolist() == [100] * 4
    assert r.with_max_tokens(100).summary().max_tokens == 100
    for bad in (0, -3, 2.5, "lots", True):
        with pytest.raises(ValueError, match="max_tokens"):
            r.with_max_tokens(bad)


def _sglang_tp1(req: Requests):
    # Qwen3-32B on one H100 under SGLang 0.5: an ~18k-token KV pool, so what each request
    # reserves decides how many run at once
    return simulate(load_model("qwen3-32b"), load_cluster("h100-sxm-1x8"),
                    Plan(groups=(ReplicaGroup(tp=1),)), req, engine=load_engine("sglang@0.5.8"))


def test_sglang_admission_reserves_the_declared_limit():
    own = _sglang_tp1(_closed())
    chat = _sglang_tp1(_closed(max_tokens=4096))
    none = _sglang_tp1(_closed(max_tokens="none"))
    for res in (own, chat, none):
        assert res.metrics.num_completed == 96
        assert int(res.per_request()["output_tokens"].sum()) == 96 * 256  # same tokens generated
    # a 4,096-token declared limit (clipped at CLIP_MAX_NEW_TOKENS 4096 either way) leaves room
    # for fewer requests at once: they queue for their first token and decode in smaller batches
    assert chat.metrics.ttft_ms.mean > 2.0 * own.metrics.ttft_ms.mean
    assert chat.metrics.tpot_ms.mean < own.metrics.tpot_ms.mean
    assert chat.metrics.throughput_tokens_per_s < own.metrics.throughput_tokens_per_s
    # no limit sent = the rest of the context, clipped at the same 4,096 in the reserve
    assert none.metrics.ttft_ms.mean == pytest.approx(chat.metrics.ttft_ms.mean, rel=0.05)


def test_vllm_v1_schedules_the_same_but_checks_the_declared_limit():
    m, cl = load_model("llama-3.1-8b"), load_cluster("h100-sxm-1x8")
    plan = Plan(groups=(ReplicaGroup(tp=1, max_model_len=2048),))
    own = simulate(m, cl, plan, _closed())
    chat = simulate(m, cl, plan, _closed(max_tokens=1000))
    # V1 reserves nothing for future tokens: the same schedule, step for step
    assert chat.metrics.ttft_ms.mean == own.metrics.ttft_ms.mean
    assert chat.metrics.e2e_s.mean == own.metrics.e2e_s.mean
    # prompt + max_tokens above max_model_len: refused (a 400 from the server), counted dropped
    over = simulate(m, cl, plan, _closed(max_tokens=1500))
    assert over.metrics.num_dropped == 96 and over.metrics.num_completed == 0
    # no limit sent: vLLM fills in max_model_len - prompt and stops the output there
    long = _closed(out=1500, max_tokens="none")
    res = simulate(m, cl, plan, long)
    assert res.metrics.num_completed == 96 and res.metrics.num_dropped == 0
    assert res.per_request()["output_tokens"].max() == 2048 - 1024
    assert simulate(m, cl, plan, _closed(out=1500)).metrics.num_dropped == 96


def test_cli_max_tokens(tmp_path):
    runner = CliRunner()
    base = ["simulate", "--model", "llama-3.1-8b", "--tp", "1", "--concurrency", "4",
            "--num-requests", "8", "--prompt-len", "512", "--output-len", "64"]
    r = runner.invoke(main, base + ["--max-tokens", "4096", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["workload"]["max_tokens"] == 4096
    r = runner.invoke(main, base + ["--max-tokens", "none"])
    assert r.exit_code == 0, r.output
    assert "no max_tokens sent" in r.output
    r = runner.invoke(main, base + ["--max-tokens", "0"])
    assert r.exit_code == 2 and "max_tokens must be >= 1" in r.output
    r = runner.invoke(main, base + ["--max-model-len", "2048", "--max-tokens", "2000"])
    assert r.exit_code == 2
    assert "prompt + max_tokens (2,000) exceed max_model_len 2,048" in r.output
    assert "Traceback" not in r.output
    wl = tmp_path / "wl.yaml"
    wl.write_text("num_requests: 8\narrival: {process: closed_loop, concurrency: 4}\n"
                  "prompt_len: 512\noutput_len: 64\nmax_tokens: 1024\n")
    r = runner.invoke(main, ["simulate", "--model", "llama-3.1-8b", "--tp", "1", "--workload",
                             str(wl), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["workload"]["max_tokens"] == 1024
    wl.write_text("num_requests: 8\narrival: {process: closed_loop, concurrency: 4}\n"
                  "prompt_len: 512\noutput_len: 64\nmax_tokens: lots\n")
    r = runner.invoke(main, ["simulate", "--model", "llama-3.1-8b", "--tp", "1", "--workload",
                             str(wl)])
    assert r.exit_code == 2 and "field 'max_tokens'" in r.output and "Traceback" not in r.output
    assert "token count >= 1, or 'none'" in r.output and "(got 'lots')" in r.output
