"""`check` verdicts on the acceptance cases, explanations, and verified suggestions."""

from __future__ import annotations

import pytest

from apex_opt.check import CheckOptions, check
from apex_opt.registry import load_cluster
from apex_opt.specs.model import load_model


@pytest.fixture(scope="module")
def node():
    return load_cluster("h100-sxm-1x8")


def test_405b_bf16_on_one_node_is_infeasible_and_suggests_fp8_or_more_gpus(node):
    res = check(load_model("llama-3.1-405b"), node, CheckOptions())
    assert not res.fits and not res.feasible
    assert res.tightest is not None and res.tightest.gpus == 8
    assert "exceed" in res.explanation and "GiB" in res.explanation
    changes = [s.change for s in res.suggestions]
    assert "--weight-dtype fp8" in changes
    assert any("nodes" in c for c in changes)
    for s in res.suggestions:  # every suggestion was verified by re-running the check
        assert s.feasible_shapes > 0


def test_405b_fp8_fits_on_one_node(node):
    res = check(load_model("llama-3.1-405b"), node, CheckOptions(weight_dtype="fp8"))
    assert res.fits
    assert any(r.tp == 8 and r.pp == 1 for r in res.feasible)


def test_kimi_k2_on_one_node_is_infeasible(node):
    res = check(load_model("kimi-k2"), node, CheckOptions())
    assert not res.fits
    assert res.tightest.overflow_component == "experts"
    assert any("nodes" in s.change for s in res.suggestions)


def test_70b_fits_at_tp_2_4_8_not_tp1(node):
    res = check(load_model("llama-3.1-70b"), node, CheckOptions(max_model_len=8192))
    single_stage = {r.tp for r in res.feasible if r.pp == 1}
    assert {2, 4, 8} <= single_stage
    assert 1 not in single_stage


def test_shorter_context_suggestion_is_verified(tmp_path):
    # 70B on two H100s at the full 128K context: the KV cache cannot hold one full-length sequence
    f = tmp_path / "two.yaml"
    f.write_text("name: two\npools:\n  - name: h100\n    device: h100-sxm-80gb\n    nodes: 1\n"
                 "    gpus_per_node: 2\n    intra_node: {kind: nvswitch, bandwidth_gbps: 450, latency_us: 1}\n")
    two = load_cluster(str(f))
    model = load_model("llama-3.1-70b")
    res = check(model, two, CheckOptions())
    assert not res.fits
    assert res.tightest.overflow_component == "kv_cache"
    ctx = [s for s in res.suggestions if s.change.startswith("--max-model-len")]
    assert ctx, res.suggestions
    n = int(ctx[0].change.split()[-1])
    assert 4096 <= n < 131072
    assert check(model, two, CheckOptions(max_model_len=n), suggest=False).fits
    assert not check(model, two, CheckOptions(max_model_len=2 * n), suggest=False).fits


def test_mixed_cluster_reports_both_pools():
    res = check(load_model("llama-3.1-70b"), load_cluster("mixed-h100-a100"), CheckOptions(max_model_len=8192))
    assert {r.pool for r in res.feasible} == {p.name for p in load_cluster("mixed-h100-a100").pools}


def test_moe_shapes_include_expert_parallel(node):
    res = check(load_model("mixtral-8x7b"), node, CheckOptions(max_model_len=8192))
    assert any(r.ep > 1 for r in res.feasible)
    assert all(r.tp % r.ep == 0 for r in res.feasible)
