"""SGLang --max-prefill-tokens: the PrefillAdder's cap on a prefill batch's new prompt tokens,
apart from the chunk budget (schedule_policy.py add_one_req / budget_state)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from apex_opt.cli import main as cli
from apex_opt.errors import InputError
from apex_opt.registry import load_cluster
from apex_opt.report.launch import launch_plan, unknown_flags
from apex_opt.sim.simulator import simulate
from apex_opt.sim.workload import Requests
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaGroup

MODEL = "llama-3.1-8b"


def _together(n: int, prompt: int, output: int = 32) -> Requests:
    return Requests(np.zeros(n), np.full(n, prompt), np.full(n, output), None, "together")


def _first_tokens(engine: str, req: Requests, **group) -> np.ndarray:
    plan = Plan(groups=(ReplicaGroup(tp=1, **group),))
    res = simulate(load_model(MODEL), load_cluster("h100-sxm-1x8"), plan, req,
                   engine=load_engine(engine))
    return np.round(res.per_request()["first_token_s"], 6)


def test_sglang_cap_stops_the_batch_at_the_first_prompt_that_does_not_fit():
    req = _together(4, 1024)
    # default (16384): all four 1,024-token prompts in one prefill batch
    assert len(set(_first_tokens("sglang", req))) == 1
    # 2,524 (aiconfigurator's isl + 1500): 1,024 joins, 1,024 < 1,500 left joins, 1,024 >= 476
    # left does not -> batches of two, each pair first-tokened together
    ft = _first_tokens("sglang", req, max_prefill_tokens=2524)
    vals, counts = np.unique(ft, return_counts=True)
    assert list(counts) == [2, 2] and vals[0] < vals[1]


def test_sglang_cap_below_one_prompt_still_admits_the_first():
    # the first request of a batch always joins, so a cap below the prompt runs one per batch
    ft = _first_tokens("sglang", _together(3, 1024), max_prefill_tokens=500)
    assert len(set(ft)) == 3 and np.all(np.isfinite(ft))


def test_sglang_cap_counts_uncached_tokens_and_leaves_the_chunk_budget_in_charge():
    # a cap larger than the chunk budget changes nothing: the chunk budget closes the batch first
    req = _together(6, 3000)
    assert np.array_equal(_first_tokens("sglang", req, max_num_batched_tokens=4096),
                          _first_tokens("sglang", req, max_num_batched_tokens=4096,
                                        max_prefill_tokens=100_000))


def test_vllm_and_unchunked_sglang_refuse_the_cap():
    with pytest.raises(InputError, match="no such cap"):
        _first_tokens("vllm", _together(2, 256), max_prefill_tokens=1000)
    with pytest.raises(InputError, match="chunked prefill off"):
        _first_tokens("sglang", _together(2, 256), max_prefill_tokens=1000,
                      chunked_prefill=False, max_model_len=4096)
    r = CliRunner().invoke(cli, ["simulate", "--model", MODEL, "--tp", "1", "--engine", "vllm",
                                 "--num-requests", "4", "--prompt-len", "64", "--output-len", "8",
                                 "--rate", "1", "--max-prefill-tokens", "1000"])
    assert r.exit_code == 2 and "max-prefill-tokens" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_launch_writes_the_cap_only_when_it_differs_from_sglang_default():
    model = load_model(MODEL)
    plan = Plan(groups=(ReplicaGroup(tp=1, max_prefill_tokens=2524),))
    argv = launch_plan(MODEL, model, plan, engine="sglang").processes[0].argv
    assert argv[argv.index("--max-prefill-tokens") + 1] == "2524"
    assert unknown_flags(launch_plan(MODEL, model, plan, engine="sglang")) == []
    plain = launch_plan(MODEL, model, Plan(groups=(ReplicaGroup(tp=1),)), engine="sglang")
    assert "--max-prefill-tokens" not in plain.processes[0].argv
