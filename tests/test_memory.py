"""Memory model: sharding rules, vLLM-style KV sizing, and the constraints real vLLM runs imply."""

from __future__ import annotations

import csv

import pytest

from apex_opt.memory import (GIB, default_layers_per_stage, kv_bytes_per_token_per_layer,
                             replica_memory, weight_bytes_by_component)
from apex_opt.registry import load_cluster
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import ReplicaConfig
from apex_opt.specs.engine import load_engine


@pytest.fixture(scope="module")
def h100():
    return load_cluster("h100-sxm-1x8").pools[0].device


def test_weights_split_over_tp(h100):
    m = load_model("llama-3.1-70b")
    w1 = sum(weight_bytes_by_component(m, ReplicaConfig(tp=1), 0).values())
    w8 = sum(weight_bytes_by_component(m, ReplicaConfig(tp=8), 0).values())
    assert w1 == pytest.approx(m.params_total * 2, rel=1e-3)
    # everything but norms is sharded; 8 KV heads split exactly over TP 8
    assert w8 == pytest.approx(w1 / 8, rel=2e-3)


def test_kv_heads_replicated_beyond_kv_head_count():
    m = load_model("llama-3.1-70b")  # 8 KV heads
    assert kv_bytes_per_token_per_layer(m, 8, "bf16") == 2 * 1 * 128 * 2
    # TP 16 cannot split 8 heads further: each rank still holds one head
    assert kv_bytes_per_token_per_layer(m, 16, "bf16") == 2 * 1 * 128 * 2
    assert kv_bytes_per_token_per_layer(m, 8, "fp8") == 2 * 1 * 128 * 1


def test_mla_latent_not_split(h100):
    m = load_model("deepseek-v3")
    assert kv_bytes_per_token_per_layer(m, 8, "bf16") == (512 + 64) * 2
    assert kv_bytes_per_token_per_layer(m, 1, "bf16") == (512 + 64) * 2


def test_fp8_halves_linear_weights():
    m = load_model("llama-3.1-70b")
    b = weight_bytes_by_component(m, ReplicaConfig(tp=8), 0)
    f = weight_bytes_by_component(m, ReplicaConfig(tp=8, weight_dtype="fp8"), 0)
    assert f["mlp"] * 2 == b["mlp"]
    assert f["embedding"] == b["embedding"]  # embeddings stay bf16
    i4 = weight_bytes_by_component(m, ReplicaConfig(tp=8, weight_dtype="int4"), 0)
    assert b["mlp"] / 4 < i4["mlp"] < b["mlp"] / 3.5


def test_experts_divided_by_tp_regardless_of_ep():
    m = load_model("mixtral-8x7b")
    a = weight_bytes_by_component(m, ReplicaConfig(tp=8, ep=1), 0)["experts"]
    b = weight_bytes_by_component(m, ReplicaConfig(tp=8, ep=8), 0)["experts"]
    assert a == b
    total = m.moe.num_experts * sum(op.params for op in m.expert_linear_ops()) * m.num_layers * 2
    assert a * 8 == pytest.approx(total, rel=1e-6)


def test_pipeline_stages_embedding_first_lm_head_last(h100):
    m = load_model("llama-3.1-70b")
    cfg = ReplicaConfig(tp=4, pp=2)
    s0 = weight_bytes_by_component(m, cfg, 0)
    s1 = weight_bytes_by_component(m, cfg, 1)
    assert s0["embedding"] > 0 and s0["lm_head"] == 0
    assert s1["embedding"] == 0 and s1["lm_head"] > 0
    # each engine's own default split of the remainder (get_pp_indices of vLLM 0.6 / V1 / SGLang)
    assert default_layers_per_stage(80, 3, load_engine("vllm-0.6")) == (26, 26, 28)
    assert default_layers_per_stage(80, 3, load_engine("vllm")) == (27, 27, 26)
    assert default_layers_per_stage(80, 6, load_engine("vllm")) == (13, 13, 13, 14, 14, 13)
    assert default_layers_per_stage(80, 6, load_engine("sglang")) == (13, 13, 13, 13, 14, 14)
    v1 = replica_memory(m, h100, ReplicaConfig(tp=2, pp=3), load_engine("vllm"))
    v0 = replica_memory(m, h100, ReplicaConfig(tp=2, pp=3), load_engine("vllm-0.6"))
    assert [s.layers for s in v1.stages] == [27, 27, 26] and [s.layers for s in v0.stages] == [26, 26, 28]
    rep = replica_memory(m, h100, ReplicaConfig(tp=4, pp=2, layers_per_stage=(38, 42)))
    assert [s.layers for s in rep.stages] == [38, 42]
    assert rep.kv_blocks == min(s.kv_blocks for s in rep.stages)


def test_kv_capacity_arithmetic(h100):
    m = load_model("llama-3.1-70b")
    rep = replica_memory(m, h100, ReplicaConfig(tp=8, gpu_memory_utilization=0.9, max_model_len=8192))
    s = rep.stages[0]
    assert s.kv_cache_bytes == s.budget_bytes - s.weights_bytes - s.activation_bytes - s.runtime_overhead_bytes
    assert rep.kv_blocks == s.kv_cache_bytes // (16 * 80 * 2 * 128 * 2)
    assert rep.kv_tokens == rep.kv_blocks * 16
    # more utilisation -> more KV; fp8 KV -> twice the tokens (same bytes)
    rep2 = replica_memory(m, h100, ReplicaConfig(tp=8, gpu_memory_utilization=0.95, max_model_len=8192))
    assert rep2.kv_tokens > rep.kv_tokens
    rep3 = replica_memory(m, h100, ReplicaConfig(tp=8, gpu_memory_utilization=0.9, max_model_len=8192,
                                                 kv_dtype="fp8"))
    assert rep3.kv_tokens == pytest.approx(2 * rep.kv_tokens, abs=32)


def test_unchunked_profile_pass_costs_more_activation(h100):
    """vLLM 0.6: the profiling pass runs the token budget (512 chunked, max_model_len without)."""
    from apex_opt.specs.engine import load_engine
    v0 = load_engine("vllm-0.6")
    m = load_model("llama-3.1-70b")
    chunked = replica_memory(m, h100, ReplicaConfig(tp=2, max_model_len=24272, chunked_prefill=True),
                             v0)
    full = replica_memory(m, h100, ReplicaConfig(tp=2, max_model_len=24272, chunked_prefill=False),
                          v0)
    assert full.max_num_batched_tokens == 24272 and chunked.max_num_batched_tokens == 512
    assert full.stages[0].activation_bytes > 4 * chunked.stages[0].activation_bytes


def test_v1_profiles_its_device_default_budget(h100):
    """vLLM V1 (default engine) profiles its own default budget: 8192 tokens on an H100, more
    activation memory than V0's 512-token pass, so fewer KV blocks at the same utilisation."""
    from apex_opt.specs.engine import load_engine
    m = load_model("llama-3.1-8b")
    v1 = replica_memory(m, h100, ReplicaConfig(tp=1, max_model_len=8192))
    v0 = replica_memory(m, h100, ReplicaConfig(tp=1, max_model_len=8192, chunked_prefill=True),
                        load_engine("vllm-0.6"))
    assert v1.max_num_batched_tokens == 8192 and v0.max_num_batched_tokens == 512
    assert v1.stages[0].activation_bytes > v0.stages[0].activation_bytes
    assert v1.kv_blocks < v0.kv_blocks


def test_utilisation_margin_must_hold_context_and_graphs(h100):
    m = load_model("llama-3.1-8b")
    rep = replica_memory(m, h100, ReplicaConfig(tp=1, gpu_memory_utilization=1.0, max_model_len=8192))
    assert not rep.fits and rep.overflow_component == "cuda_context_and_graphs"


def test_real_vllm_runs_started(h100, validation_dir):
    """Every configuration in the ground truth started on real vLLM 0.6.0, so vLLM's own KV sizing
    found room for at least max_model_len tokens. Our model must agree (and TP 1 cannot hold 70B)."""
    from apex_opt.specs.engine import load_engine
    m = load_model("llama-3.1-70b")
    with open(validation_dir / "ground_truth.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["engine"] == "vllm" and "Llama" in r["model_hf"]]
    assert rows
    for r in rows:
        cfg = ReplicaConfig(tp=int(r["tp"]), max_model_len=int(r["max_model_len"]),
                            gpu_memory_utilization=float(r["gpu_memory_utilization"]),
                            chunked_prefill=r["chunked_prefill"] == "True",
                            max_num_batched_tokens=int(r["max_num_batched_tokens"]),
                            max_num_seqs=int(r["max_num_seqs"]),
                            custom_allreduce=r["custom_allreduce"] == "True")
        rep = replica_memory(m, h100, cfg, load_engine("vllm-0.6"))
        assert rep.fits, (r["case_id"], rep.problem)
        assert rep.kv_tokens >= int(r["max_model_len"])
    assert not replica_memory(m, h100, ReplicaConfig(tp=1, max_model_len=4096)).fits


def test_sglang_static_pool_sizing(h100):
    """SGLang sizes weights + KV as one static share of memory; activations live outside it."""
    from apex_opt.specs.engine import load_engine
    m = load_model("llama-3.1-70b")
    cfg = ReplicaConfig(tp=8, gpu_memory_utilization=0.85, max_model_len=8192)
    sg = replica_memory(m, h100, cfg, load_engine("sglang"))
    s = sg.stages[0]
    # the CUDA context is already taken when SGLang measures the free memory after loading
    ctx = int(load_engine("sglang").cuda_context_gib * 1024 ** 3)
    assert s.kv_cache_bytes == s.budget_bytes - s.weights_bytes - s.runtime_overhead_bytes - ctx
    assert sg.kv_tokens == sg.kv_blocks  # token-granular pool (page size 1)
    vl = replica_memory(m, h100, cfg)
    assert sg.stages[0].kv_cache_bytes > vl.stages[0].kv_cache_bytes
    # the activation peak must fit in the remaining 1 - fraction
    tight = replica_memory(m, h100, ReplicaConfig(tp=8, gpu_memory_utilization=0.99, max_model_len=8192),
                           load_engine("sglang"))
    assert not tight.fits and tight.overflow_component == "cuda_context_and_graphs"


def test_static_fraction_overflow_names_what_it_counts():
    # SGLang keeps activations outside mem_fraction_static: the message must not charge them
    pool = load_cluster("b200-1x8").pools[0]
    r = replica_memory(load_model("deepseek-v3"), pool.device, ReplicaConfig(tp=4), load_engine("sglang"))
    assert not r.fits and "activations" not in r.problem and "CUDA context" in r.problem
    v = replica_memory(load_model("llama-3.1-405b"), pool.device, ReplicaConfig(tp=1), load_engine("vllm"))
    assert not v.fits and "activations" in v.problem


def test_kv_shorter_than_context_names_the_length_that_fits(h100):
    """vLLM will not start when its KV cache holds fewer than max_model_len tokens; the message
    names the longest context the pool holds (vLLM's 'estimated maximum model length'), and that
    value, passed back as max_model_len, fits."""
    m = load_model("qwen3-32b")
    rep = replica_memory(m, h100, ReplicaConfig(tp=1, max_model_len=40960), load_engine("vllm"))
    assert not rep.fits and rep.overflow_component == "kv_cache"
    assert f"set max_model_len <= {rep.kv_tokens}" in rep.problem
    ok = replica_memory(m, h100, ReplicaConfig(tp=1, max_model_len=rep.kv_tokens), load_engine("vllm"))
    assert ok.fits
    over = replica_memory(m, h100, ReplicaConfig(tp=1, max_model_len=rep.kv_tokens + 16), load_engine("vllm"))
    assert not over.fits
