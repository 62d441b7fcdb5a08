"""Eager-mode host cost: per-kind op costs x per-engine op inventories (data/kernels.yaml)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from apex_opt.costmodel import kernels
from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.errors import InputError
from apex_opt.registry import load_cluster
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import ReplicaConfig

DECODE = np.full(4, 2000, dtype=np.int64)


@pytest.fixture(scope="module")
def pool():
    return load_cluster("h100-sxm-1x8").pools[0]


def _model(pool, name="mixtral-8x22b", engine="sglang-0.4", backend="triton", **cfg):
    eng = load_engine(engine)
    if backend is not None:
        eng = eng.model_copy(update={"attention_backend": backend})
    return IterationCostModel(load_model(name), pool, ReplicaConfig(**{"tp": 8, **cfg}), eng)


@pytest.fixture
def patched_raw(monkeypatch):
    """Replace the bundled kernels.yaml by an edited copy for one test (caches cleared)."""
    raw = copy.deepcopy(kernels._raw())

    def apply():
        monkeypatch.setattr(kernels, "_raw", lambda: raw)
        kernels.eager_host.cache_clear()

    yield raw, apply
    kernels.eager_host.cache_clear()


def test_reference_layer_is_anchored_to_the_engine_figure():
    # the reference dense layer (decode, TP > 1) costs its 11 counted kernels x eager_launch_us
    e = kernels.eager_host("sglang-0.4", None, 30.0)
    assert e.scale * e.reference_layer_us() == pytest.approx(11 * 30.0)
    assert e.scale > 1.0  # in-model ops cost more than their isolated measurements


def test_triton_heavy_moe_layer_costs_more_host_than_a_dense_layer(pool):
    # Mixtral's MoE layer issues 3 linear GEMMs + the fused_moe path (2 Triton expert kernels and
    # its routing ops); a dense layer with 4 GEMMs issues only silu_and_mul besides them
    m = _model(pool, cuda_graphs=False)
    e = m.eager
    gemm = e.us("gemm")
    dense_layer = m._eager_layer_us + m._eager_dense_us
    moe_layer = m._eager_layer_us + m._eager_moe_us
    assert len(m.attn_ops) + len(m.mlp_ops) == 4 and len(m.attn_ops) + 1 == 3
    assert moe_layer - gemm > dense_layer  # even one GEMM fewer, the MoE layer costs more
    # SGLang's EP-MoE path launches 9 Triton kernels per layer instead of 2: dearer still
    ep = _model(pool, cuda_graphs=False, ep=8)
    assert ep._eager_moe_us > m._eager_moe_us + 5 * e.cost_us["triton"]


def test_ep_moe_decode_step_is_slower_than_tp_when_host_bound(pool):
    tp = _model(pool, cuda_graphs=False).iteration(DECODE, with_breakdown=True)
    ep = _model(pool, cuda_graphs=False, ep=8).iteration(DECODE, with_breakdown=True)
    assert ep.breakdown.get("launch_overhead", 0.0) > 0.0
    assert ep.time_s > tp.time_s


def test_eager_step_never_faster_than_the_graphed_one(pool):
    for name, engine in (("mixtral-8x22b", "sglang-0.4"), ("llama-3.1-70b", "vllm-0.6"),
                         ("llama-3.1-70b", "sglang-0.4")):
        backend = "triton" if engine.startswith("sglang") else None
        for n in (1, 8, 64):
            dec = np.full(n, 1500, dtype=np.int64)
            eager = _model(pool, name, engine, backend, tp=4, cuda_graphs=False).iteration(dec)
            graph = _model(pool, name, engine, backend, tp=4, cuda_graphs=True).iteration(dec)
            assert eager.time_s >= graph.time_s, (name, engine, n)


def test_triton_figure_changes_the_eager_step_not_the_graphed_one(pool, patched_raw):
    before_eager = _model(pool, cuda_graphs=False).iteration(DECODE).time_s
    before_graph = _model(pool, cuda_graphs=True).iteration(DECODE).time_s
    raw, apply = patched_raw
    raw["engines"]["sglang-0.4"]["triton_launch_us"] = 36.0
    apply()
    after_eager = _model(pool, cuda_graphs=False).iteration(DECODE).time_s
    after_graph = _model(pool, cuda_graphs=True).iteration(DECODE).time_s
    # 4 Triton launches per layer (2 attention, 2 fused_moe), 56 layers, scaled in-model
    e = kernels.eager_host("sglang-0.4", "triton", 30.0)
    assert after_eager - before_eager == pytest.approx(56 * 4 * 18.0 * e.scale * 1e-6, rel=0.02)
    assert after_graph == before_graph


def test_attention_backend_picks_its_ops(pool):
    triton = _model(pool, backend="triton", cuda_graphs=False)
    flashinfer = _model(pool, backend="flashinfer", cuda_graphs=False)
    # decode: the triton backend's two kernels (split-KV + reduce) vs flashinfer's one op
    assert triton.eager.attention_us(True, False) > flashinfer.eager.attention_us(True, False)
    assert _model(pool, backend=None, cuda_graphs=False).eager.attention_backend == "flashinfer"


def test_engines_without_inventory_use_the_flat_fallback(pool):
    m = _model(pool, "llama-3.1-70b", "vllm-0.6", None, cuda_graphs=False)
    assert m.eager is None
    base = m.iteration(DECODE).time_s
    eng = load_engine("vllm-0.6").model_copy(update={"eager_launch_us": 60.0})
    dear = IterationCostModel(load_model("llama-3.1-70b"), pool, ReplicaConfig(tp=8, cuda_graphs=False),
                              eng).iteration(DECODE).time_s
    assert dear > base


def test_unknown_backend_is_an_input_error():
    with pytest.raises(InputError, match="no eager attention ops for backend 'fa9'"):
        kernels.eager_host("sglang-0.4", "fa9", 30.0)


def test_bad_kind_in_data_is_an_input_error(patched_raw):
    raw, apply = patched_raw
    raw["engines"]["sglang-0.4"]["eager_ops"]["moe"] = {"cuda_magic": 2}
    apply()
    with pytest.raises(InputError, match="eager op kinds"):
        kernels.eager_host("sglang-0.4", None, 30.0)


@pytest.mark.parametrize("backend, published_ms", [("triton", 9.28 - 7.06), ("flashinfer", 8.23 - 7.35)])
def test_sglang_eager_cost_matches_a_published_dense_measurement(pool, backend, published_ms):
    # SGLang PR #1401 (sgl-project/sglang, 2024-09; torch 2.4 / Triton 3.0, H100):
    # `bench_latency --model meta-llama/Meta-Llama-3-8B --batch-size 1 --input 128`, median decode
    # step with and without --disable-cuda-graph: triton 7.06 / 9.28 ms, flashinfer 7.35 / 8.23 ms.
    # The eager step's extra time is the CPU issue cost the GPU waits for; ours within 30 %.
    # (The same PR's DeepSeek-Coder-V2-Lite, MoE + MLA, "4x faster" with graphs: ~18.7 ms extra,
    # where we give ~12 ms -- MoE/MLA eager layers are under-costed, see the stop 22 note.)
    dec = np.full(1, 136, dtype=np.int64)
    graph = _model(pool, "llama-3.1-8b", backend=backend, tp=1).iteration(dec).time_s
    eager = _model(pool, "llama-3.1-8b", backend=backend, tp=1, cuda_graphs=False).iteration(dec).time_s
    assert (eager - graph) * 1e3 == pytest.approx(published_ms, rel=0.3)
