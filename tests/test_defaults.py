"""One truth for defaults: a field left unset means the same thing to the Python API and to the
CLI (ReplicaConfig.resolved fills it in: the checkpoint's weight dtype, the engine's limits for the
GPU), and a configuration the real engine refuses to start with is refused by the simulator itself
(InputError, exit 2 through the CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import apex_opt
from apex_opt.cli import main
from apex_opt.errors import InputError
from apex_opt.sim.workload import generate
from apex_opt.specs.engine import load_engine
from apex_opt.specs.plan import Plan, ReplicaConfig, ReplicaGroup
from apex_opt.specs.workload import WorkloadSpec

_WORKLOAD = dict(num_requests=24, rate=4.0, prompt_len=300, output_len=24)


def _cli_json(*args: str) -> dict:
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _api_requests():
    w = _WORKLOAD
    spec = WorkloadSpec(name="cli", num_requests=w["num_requests"],
                        arrival={"process": "poisson", "rate": w["rate"]},
                        prompt_len=w["prompt_len"], output_len=w["output_len"], seed=0)
    return generate(spec, np.random.default_rng(0))


@pytest.mark.parametrize("model_name,cluster_name,tp,weight", [
    ("deepseek-v3", "h200-1x8", 8, "fp8"),     # an fp8 block checkpoint: served in fp8
    ("llama-3.1-8b", "h100-sxm-1x8", 1, "bf16"),
])
def test_api_and_cli_simulate_agree_when_defaults_are_left_unset(model_name, cluster_name, tp,
                                                                  weight):
    model, cluster = apex_opt.load_model(model_name), apex_opt.load_cluster(cluster_name)
    plan = Plan(groups=[ReplicaGroup(tp=tp)])  # weight dtype, chunked prefill, limits: unset
    api = json.loads(apex_opt.simulate(model, cluster, plan, _api_requests()).model_dump_json())
    w = _WORKLOAD
    cli = _cli_json("simulate", "--model", model_name, "--cluster", cluster_name, "--tp", str(tp),
                    "--rate", str(w["rate"]), "--num-requests", str(w["num_requests"]),
                    "--prompt-len", str(w["prompt_len"]), "--output-len", str(w["output_len"]),
                    "--json")
    assert api["metrics"] == cli["metrics"]
    assert api["replicas"] == cli["replicas"]
    assert api["energy"] == cli["energy"]
    assert api["plan"] == cli["plan"]
    # both planned the checkpoint's dtype (the replica label names non-bf16 weights)
    label = api["replicas"][0]["label"]
    assert (f"w{weight}" in label) == (weight != "bf16"), label
    assert api["metrics"]["num_completed"] == w["num_requests"]


def test_api_and_cli_check_and_estimate_default_to_the_checkpoint_dtype():
    model, cluster = apex_opt.load_model("deepseek-v3"), apex_opt.load_cluster("h200-1x8")
    api = json.loads(apex_opt.check(model, cluster, suggest=False).model_dump_json())
    cli = _cli_json("check", "--model", "deepseek-v3", "--cluster", "h200-1x8", "--json")
    assert api["feasible"] == cli["feasible"] and api["feasible"]
    assert {r["weight_dtype"] for r in api["feasible"]} == {"fp8"}
    assert api["options"] == cli["options"] and cli["options"]["weight_dtype"] == "fp8"
    batch = "decode:8x1024"
    est = apex_opt.estimate(model, cluster, ReplicaConfig(tp=8), apex_opt.parse_batch(batch))
    cli = _cli_json("estimate", "--model", "deepseek-v3", "--cluster", "h200-1x8", "--tp", "8",
                    "--batch", batch, "--json")
    assert json.loads(est.model_dump_json()) == cli
    assert cli["weight_dtype"] == "fp8"


def test_resolved_takes_the_checkpoint_dtype_and_keeps_an_explicit_one():
    engine = load_engine("vllm")
    ds, llama = apex_opt.load_model("deepseek-v3"), apex_opt.load_model("llama-3.1-8b")
    assert ReplicaConfig().weight_dtype is None
    assert ReplicaConfig(tp=8).resolved(engine, ds).weight_dtype == "fp8"
    assert ReplicaConfig(tp=1).resolved(engine, llama).weight_dtype == "bf16"
    assert ReplicaConfig(tp=8, weight_dtype="bf16").resolved(engine, ds).weight_dtype == "bf16"
    # only the maximum context known: the checkpoint dtype must come along
    assert ReplicaConfig().resolved(engine, 4096, checkpoint_dtype="int4").weight_dtype == "int4"
    with pytest.raises(ValueError, match="checkpoint"):
        ReplicaConfig().resolved(engine, 4096)
    # resolving twice changes nothing
    once = ReplicaConfig(tp=8).resolved(engine, ds)
    assert once.resolved(engine, ds) == once


def _tiny_requests():
    spec = WorkloadSpec(name="t", num_requests=4, arrival={"process": "poisson", "rate": 1.0},
                        prompt_len=16, output_len=4, seed=0)
    return generate(spec, np.random.default_rng(0))


@pytest.mark.parametrize("engine_name,group,needle", [
    ("vllm-0.6", dict(max_model_len=8192, max_num_batched_tokens=4096, chunked_prefill=False),
     "max_num_batched_tokens (4096) < max_model_len (8192)"),
    ("vllm", dict(max_model_len=8192, max_num_batched_tokens=4096, chunked_prefill=False),
     "max_num_batched_tokens (4096) < max_model_len (8192)"),
    ("vllm", dict(max_num_batched_tokens=128, max_num_seqs=256),
     "max_num_batched_tokens (128) < max_num_seqs (256)"),
])
def test_the_api_refuses_what_vllm_refuses(engine_name, group, needle):
    model, cluster = apex_opt.load_model("llama-3.1-8b"), apex_opt.load_cluster("h100-sxm-1x8")
    plan = Plan(groups=[ReplicaGroup(tp=1, **group)])
    with pytest.raises(InputError) as exc:
        apex_opt.simulate(model, cluster, plan, _tiny_requests(), engine=load_engine(engine_name))
    assert needle in str(exc.value) and "plan.groups[0]" in str(exc.value)


def test_the_same_limits_run_where_the_engine_accepts_them():
    """SGLang has no such check (it caps the prefill chunk itself): the plan runs there."""
    model, cluster = apex_opt.load_model("llama-3.1-8b"), apex_opt.load_cluster("h100-sxm-1x8")
    plan = Plan(groups=[ReplicaGroup(tp=1, max_model_len=8192, max_num_batched_tokens=4096,
                                     chunked_prefill=False)])
    res = apex_opt.simulate(model, cluster, plan, _tiny_requests(), engine=load_engine("sglang"))
    assert res.metrics.num_completed == 4


def test_the_cli_refusal_is_the_simulators_one_line_exit_2():
    r = CliRunner().invoke(main, ["simulate", "--model", "llama-3.1-8b", "--tp", "1",
                                  "--max-num-batched-tokens", "128", "--max-num-seqs", "256",
                                  "--rate", "1", "--num-requests", "4", "--prompt-len", "16",
                                  "--output-len", "4"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    err = [ln for ln in r.output.splitlines() if ln.startswith("apex-opt: error:")]
    assert len(err) == 1 and "max_num_batched_tokens (128) < max_num_seqs (256)" in err[0], r.output
