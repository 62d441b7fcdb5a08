"""vLLM V0 (0.5.x-0.7) multi-GPU per-step host cost is one broadcast per step, not one per rank.

vLLM 0.5.4's MultiprocessingGPUExecutor keeps the workers in start_worker_execution_loop while
requests run; each step the driver pickles the step metadata once into the TP group's shared-memory
ring and issues a handful of NCCL broadcasts (LocalOrDistributedWorkerBase.execute_model ->
broadcast_tensor_dict). So the host cost of a multi-GPU step must not grow with the TP size, and
the 0.5.4 version override (front end in process) must not change it. These tests fail if someone
turns the ML.ENERGY v2 TP excess (not found in vLLM's source) into a per-rank constant.
"""

from __future__ import annotations

import numpy as np
import pytest

from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.registry import load_cluster
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import ReplicaConfig


def _host(engine: str, tp: int, pp: int = 1, seqs: int = 64) -> float:
    cluster = load_cluster("h100-sxm-1x8")
    model = load_model("llama-3.1-70b")
    eng = load_engine(engine)
    cfg = ReplicaConfig(tp=tp, pp=pp)
    m = IterationCostModel(model, cluster.pools[0], cfg, eng)
    return m.host_time(seqs)


@pytest.mark.parametrize("engine", ["vllm-0.6@0.5.3", "vllm-0.6@0.5.4", "vllm-0.6@0.6.0"])
def test_multi_gpu_host_cost_is_paid_once_per_step(engine):
    e = load_engine(engine)
    one = _host(engine, 1)
    for tp in (2, 4, 8):
        assert _host(engine, tp) == pytest.approx(one + e.host_multi_gpu_ms * 1e-3)
    # pipeline stages (Ray across nodes in 0.5.4) broadcast to their TP group the same way
    assert _host(engine, 4, pp=2) == pytest.approx(_host(engine, 8))


def test_in_process_front_end_keeps_the_broadcast_cost_and_adds_only_per_sequence_work():
    # before 0.5.4 (version override) the API server shares the engine's process; ML.ENERGY v2 ran
    # 0.5.4 with --disable-frontend-multiprocessing, the same thing
    old, new = load_engine("vllm-0.6@0.5.3"), load_engine("vllm-0.6@0.6.0")
    assert old.host_multi_gpu_ms == new.host_multi_gpu_ms <= 1.0   # PR #5399/#5755: ~1 ms bound
    assert old.frontend_in_process and not new.frontend_in_process
    seqs = 64
    diff = _host("vllm-0.6@0.5.3", 8, seqs=seqs) - _host("vllm-0.6@0.6.0", 8, seqs=seqs)
    assert diff == pytest.approx(old.frontend_per_token_us * 1e-6 * seqs)


def test_step_time_grows_with_tp_only_through_gpu_work():
    # the same decode batch: a TP8 step is no slower on the host than a TP2 step
    cluster = load_cluster("h100-sxm-1x8")
    model = load_model("llama-3.1-70b")
    eng = load_engine("vllm-0.6@0.5.4")
    ctx = np.full(64, 600, dtype=np.int64)
    out = {}
    for tp in (2, 8):
        m = IterationCostModel(model, cluster.pools[0], ReplicaConfig(tp=tp), eng)
        c = m.iteration(ctx, (), with_breakdown=True)
        out[tp] = c.breakdown["host"]
    assert out[2] == pytest.approx(out[8])


def test_decode_graph_capture_sizes_follow_the_release():
    # vLLM 0.5.x captured decode graphs up to batch 256 (model_runner._BATCH_SIZES_TO_CAPTURE,
    # range(1, 33)); 0.6.0-0.7.x capture [1, 2, 4] + 8 * (1..1024) up to max_num_seqs
    old, new, v07 = (load_engine(f"vllm-0.6@{v}") for v in ("0.5.4", "0.6.0", "0.7.3"))
    assert old.graph_batch_size(256) == 256 and old.graph_batch_size(257) is None
    assert new.graph_batch_size(257) == 264 and new.graph_batch_size(8192) == 8192
    assert v07.cuda_graph_batch_sizes == new.cuda_graph_batch_sizes
    # a 300-sequence decode step: eager (host launch cost) on 0.5.4, one graph replay on 0.6.0
    cluster = load_cluster("h100-sxm-1x8")
    model = load_model("llama-3.1-8b")
    ctx = np.full(300, 500, dtype=np.int64)
    bd = {}
    for name, eng in (("0.5.4", old), ("0.6.0", new)):
        m = IterationCostModel(model, cluster.pools[0], ReplicaConfig(tp=1, max_num_seqs=512), eng)
        bd[name] = m.iteration(ctx, (), with_breakdown=True).breakdown
    assert "cuda_graph_saving" in bd["0.6.0"] and "cuda_graph_saving" not in bd["0.5.4"]
