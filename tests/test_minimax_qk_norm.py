"""MiniMax-M2's whole-layer q/k RMSNorm (config use_qk_norm with qk_norm_type 'per_layer'): its
weights span all heads and, with tensor parallelism, every layer all-reduces the per-token q and k
variances across the TP group once (vLLM minimax_m2.py MiniMaxText01RMSNormTP.forward_qk)."""

from __future__ import annotations

import numpy as np

from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.registry import load_cluster
from apex_opt.specs.model import ModelSpec
from apex_opt.specs.plan import ReplicaConfig

_CFG = {"architectures": ["MiniMaxM2ForCausalLM"], "model_type": "minimax_m2", "hidden_size": 3072,
        "num_hidden_layers": 4, "num_attention_heads": 48, "num_key_value_heads": 8,
        "head_dim": 128, "intermediate_size": 1536, "vocab_size": 200064,
        "max_position_embeddings": 196608, "num_local_experts": 32, "num_experts_per_tok": 8,
        "use_qk_norm": True, "qk_norm_type": "per_layer"}


def _model(**kw) -> ModelSpec:
    return ModelSpec.from_hf_config({**_CFG, **kw}, name="minimax-like")


def test_per_layer_qk_norm_is_read_and_its_weights_counted():
    m, plain = _model(), _model(use_qk_norm=False)
    assert m.qk_norm_tp and not plain.qk_norm_tp
    assert not _model(qk_norm_type="per_head").qk_norm_tp
    # q_norm over 48 x 128 and k_norm over 8 x 128 per layer
    assert m.params_total - plain.params_total == 4 * (48 + 8) * 128


def test_per_layer_qk_norm_all_reduces_once_per_layer_under_tp():
    pool = load_cluster("h200-1x8").pools[0]
    ctx = np.full(8, 1024)
    m, plain = _model(), _model(use_qk_norm=False)
    cfg = ReplicaConfig(tp=4)
    comm = IterationCostModel(m, pool, cfg).iteration(ctx, with_breakdown=True).breakdown
    comm0 = IterationCostModel(plain, pool, cfg).iteration(ctx, with_breakdown=True).breakdown
    extra = comm["communication"] - comm0["communication"]
    # one small in-graph all-reduce per layer: a few microseconds each, not nothing
    assert 4 * 2e-6 < extra < 4 * 40e-6
    # one GPU: no all-reduce, only the norm kernels
    one = IterationCostModel(m, pool, ReplicaConfig(tp=1)).iteration(ctx, with_breakdown=True)
    one0 = IterationCostModel(plain, pool, ReplicaConfig(tp=1)).iteration(ctx, with_breakdown=True)
    assert one.breakdown.get("communication", 0.0) == one0.breakdown.get("communication", 0.0)
    assert one.time_s > one0.time_s
