"""The sampler's top-p / top-k filter: a per-step GPU cost that depends on the engine release and
on what the requests ask for (vLLM's sort-based path vs FlashInfer / greedy)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from apex_opt.cli import main
from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.registry import load_cluster
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import ReplicaConfig
from apex_opt.specs.workload import WorkloadSpec
from apex_opt.errors import InputError
from apex_opt.io import validate
from apex_opt.sim.workload import Requests, generate

MODEL = load_model("llama-3.1-8b")
POOL = load_cluster("h100-sxm-1x8").pools[0]


def _step_ms(engine: str, sampler: str, batch: int, tp: int = 1) -> float:
    eng = load_engine(engine)
    cfg = ReplicaConfig(tp=tp).resolved(eng, MODEL, POOL.device)
    cm = IterationCostModel(MODEL, POOL, cfg, eng, sampler=sampler)
    return cm.iteration(np.full(batch, 1000, dtype=np.int64)).time_s * 1e3


def test_filter_costs_time_growing_with_the_batch_and_not_shrinking_with_tp():
    extra = [_step_ms("vllm", "top_p", b) - _step_ms("vllm", "greedy", b) for b in (64, 256, 512)]
    assert 0 < extra[0] < extra[1] < extra[2]
    # ~125-133 ps per logit on an H100 (vllm PR #33538): 512 x 128k logits ~ 8-9 ms
    assert 6.0 < extra[2] < 12.0
    # every TP rank samples over the whole vocabulary: TP does not divide the filter's cost
    extra_tp4 = _step_ms("vllm", "top_p", 512, tp=4) - _step_ms("vllm", "greedy", 512, tp=4)
    assert extra_tp4 == pytest.approx(extra[2], rel=0.05)


def test_filter_cost_follows_the_engine_release():
    greedy = _step_ms("vllm", "greedy", 256)
    # FlashInfer sampling was the default before vLLM 0.11.1: no extra cost
    assert _step_ms("vllm@0.11.0", "top_p", 256) == pytest.approx(greedy, rel=1e-9)
    # the Triton filter of 0.16+: top-k much cheaper than the sort, top-p a little
    sort_k = _step_ms("vllm@0.15.1", "top_k", 256) - greedy
    tri_k = _step_ms("vllm@0.16.0", "top_k", 256) - greedy
    tri_p = _step_ms("vllm@0.16.0", "top_p", 256) - greedy
    assert 0 < tri_k < 0.2 * sort_k
    assert 0.7 * sort_k < tri_p < sort_k
    # SGLang samples with FlashInfer's fused kernel
    sg = load_engine("sglang")
    assert sg.sampler_top_p_bytes_per_logit == 0.0


def test_requests_sampler_kind_and_validation():
    r = Requests(np.zeros(2), np.full(2, 10), np.full(2, 5))
    assert r.sampler == "greedy"
    assert r.with_sampling(top_p=0.9).sampler == "top_p"
    assert r.with_sampling(top_k=20).sampler == "top_k"
    assert r.with_sampling(top_p=0.9).subset(slice(0, 1)).top_p == 0.9
    with pytest.raises(ValueError, match="top_p"):
        r.with_sampling(top_p=0.0)
    spec = {"num_requests": 3, "arrival": {"process": "poisson", "rate": 1.0},
            "prompt_len": 10, "output_len": 5, "top_p": 0.95, "top_k": 20}
    assert generate(validate(WorkloadSpec, spec, "w.yaml")).sampler == "top_k"
    with pytest.raises(InputError, match="top_p"):
        validate(WorkloadSpec, {**spec, "top_p": 1.5}, "w.yaml")


def test_cli_sampling_flags_slow_the_simulated_decode():
    base = ["simulate", "--model", "llama-3.1-8b", "--tp", "1", "--concurrency", "256",
            "--max-num-seqs", "256", "--num-requests", "512", "--prompt-len", "100",
            "--output-len", "100", "--json"]
    import json
    out = [json.loads(CliRunner().invoke(main, base + extra).output)["metrics"]["tpot_ms"]["mean"]
           for extra in ([], ["--sampling-top-p", "0.95"])]
    assert out[1] > out[0] * 1.05
    bad = CliRunner().invoke(main, base + ["--sampling-top-k", "-1"])
    assert bad.exit_code == 2 and "--sampling-top-k" in bad.output


def test_surrogate_charges_the_same_sampler_filter():
    from dataclasses import replace

    from apex_opt.solver.candidates import WorkloadStats, enumerate_candidates
    from apex_opt.solver.objective import cost_curves

    cluster = load_cluster("h100-sxm-1x8")
    req = Requests(np.arange(50) * 0.1, np.full(50, 500), np.full(50, 200))
    greedy = WorkloadStats.of(req)
    top_p = WorkloadStats.of(req.with_sampling(top_p=0.95))
    assert (greedy.sampler, top_p.sampler) == ("greedy", "top_p")
    from apex_opt.specs.slo import SLOSpec

    cand = next(c for c in enumerate_candidates(MODEL, cluster, greedy, SLOSpec()) if c.tp == 1)
    a = cost_curves(MODEL, cluster, cand, greedy)
    b = cost_curves(MODEL, cluster, cand, top_p)
    # batch 512 decode step: the sort filter over 512 x 128k logits (~8-9 ms on an H100)
    assert 6e-3 < b.t_dec[-1] - a.t_dec[-1] < 12e-3
    assert b.t_dec[0] > a.t_dec[0]
    assert replace(top_p, sampler="greedy") == greedy
