"""Candidate enumeration: every returned candidate fits and respects the constraints."""

from __future__ import annotations

import numpy as np

from apex_opt.memory import replica_memory
from apex_opt.registry import load_cluster
from apex_opt.sim.workload import Requests
from apex_opt.solver.candidates import WorkloadStats, enumerate_candidates, node_aligned
from apex_opt.specs.model import load_model
from apex_opt.specs.slo import SLOSpec


def _stats(n: int = 100) -> WorkloadStats:
    rng = np.random.default_rng(1)
    return WorkloadStats.of(Requests(np.cumsum(rng.exponential(0.5, n)), rng.integers(50, 1500, n),
                                     rng.integers(5, 300, n)))


def test_candidates_fit_and_are_node_aligned() -> None:
    m, c = load_model("llama-3.1-70b"), load_cluster("h100-sxm-1x8")
    st = _stats()
    cands = enumerate_candidates(m, c, st, SLOSpec())
    assert cands
    for cand in cands[::7]:
        mem = replica_memory(m, c.pool(cand.pool).device, cand.config())
        assert mem.fits and mem.kv_tokens >= st.max_seq_len
        assert node_aligned(cand.gpus, 8)
    # bf16 70B needs >= 2 GPUs; an 8-GPU node holds no TP3
    assert all(x.gpus >= 2 for x in cands if x.weight_dtype == "bf16")
    assert all(x.tp in (1, 2, 4, 8) for x in cands)


def test_constraints_filter_candidates() -> None:
    m, c = load_model("llama-3.1-70b"), load_cluster("h100-sxm-1x8")
    slo = SLOSpec(constraints={"weight_dtypes": ["bf16"], "kv_dtypes": ["bf16"], "max_tp": 4})
    cands = enumerate_candidates(m, c, _stats(), slo)
    assert cands and all(x.weight_dtype == "bf16" and x.kv_dtype == "bf16" and x.tp <= 4
                         for x in cands)
    everything = enumerate_candidates(m, c, _stats(), slo, everything=True)
    assert any("weight_dtypes" in x.violates for x in everything)
    assert any("memory" in x.violates for x in everything)


def test_default_weight_dtypes_follow_the_checkpoint() -> None:
    # an fp8 checkpoint (deepseek-v3) is not dequantized to bf16 at load, an int4 / fp4 one is
    # served as stored; a bf16 one may also be quantized online to fp8
    from apex_opt.solver.candidates import default_weight_dtypes
    from apex_opt.specs.model import ModelSpec

    ds, llama = load_model("deepseek-v3"), load_model("llama-3.1-70b")
    assert default_weight_dtypes(llama) == ("bf16", "fp8")
    assert default_weight_dtypes(ds) == ("fp8",)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 1024,
           "num_hidden_layers": 4, "num_attention_heads": 8, "intermediate_size": 4096,
           "vocab_size": 32000, "max_position_embeddings": 4096,
           "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    assert default_weight_dtypes(ModelSpec.from_hf_config(cfg)) == ("int4",)
    c = load_cluster("h200-1x8")
    cands = enumerate_candidates(ds, c, _stats(), SLOSpec())
    assert cands and {x.weight_dtype for x in cands} == {"fp8"}
    # asking for bf16 explicitly still searches it (a bf16 copy of the weights)
    slo = SLOSpec(constraints={"weight_dtypes": ["bf16", "fp8"]})
    assert any(x.weight_dtype == "bf16" for x in enumerate_candidates(
        ds, load_cluster("h200-1x8"), _stats(), slo, everything=True))
