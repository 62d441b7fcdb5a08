"""vLLM < 0.6 (V0 engine profile ``vllm-0.6``): the OpenAI server in the engine's own process.

Before 0.5.4 (and in 0.5.4 with --disable-frontend-multiprocessing) the API server shares the
engine's event loop, so its per-sequence work after every step is serial with the engine: a
saturated server loses throughput, and the loss grows with the running batch.
"""

from __future__ import annotations

import numpy as np
import pytest

from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.registry import load_cluster
from apex_opt.sim.simulator import simulate
from apex_opt.sim.workload import Requests
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaConfig, ReplicaGroup


@pytest.fixture(scope="module")
def m8_node():
    """Llama-3.1-8B on one H100 SXM node."""
    return load_model("llama-3.1-8b"), load_cluster("h100-sxm-1x8")


def test_in_process_front_end_resolved_by_version():
    # PR #6883 moved the server into its own process in 0.5.4: older releases always ran it inside
    assert load_engine("vllm-0.6@0.5.3").frontend_in_process is True
    assert load_engine("vllm-0.6@0.5.0").frontend_in_process is True
    assert load_engine("vllm-0.6@0.5.4").frontend_in_process is False
    assert load_engine("vllm-0.6@0.6.0").frontend_in_process is False
    assert load_engine("vllm-0.6").frontend_in_process is False   # reference 0.6.0
    assert load_engine("vllm-0.6@0.5.3").frontend_per_token_us > 0
    # the V1 engine never runs the server in the engine core's process
    assert load_engine("vllm").frontend_in_process is False


def test_host_time_pays_the_front_end_per_sequence(m8_node):
    m8, node = m8_node
    cfg = ReplicaConfig(tp=1, max_model_len=4096, chunked_prefill=False)
    out_of = load_engine("vllm-0.6@0.5.4")
    inside = load_engine("vllm-0.6@0.5.3")
    pool = node.pools[0]
    a = IterationCostModel(m8, pool, cfg.resolved(out_of, m8, pool.device), out_of)
    b = IterationCostModel(m8, pool, cfg.resolved(inside, m8, pool.device), inside)
    per = inside.frontend_per_token_us * 1e-6
    for n in (1, 64, 512):
        assert b.host_time(n) - a.host_time(n) == pytest.approx(per * n)


def _closed_batch_tok_s(m8, node, engine, mns: int) -> float:
    n = 3 * mns
    rng = np.random.default_rng(0)
    req = Requests(arrival_s=np.zeros(n), prompt_tokens=rng.integers(100, 400, n),
                   output_tokens=rng.integers(40, 120, n))
    plan = Plan(groups=(ReplicaGroup(tp=1, max_num_seqs=mns, max_model_len=4096,
                                     chunked_prefill=False),), router="round_robin")
    res = simulate(m8, node, plan, req, engine=engine)
    win = res.energy.steady_state or res.energy.whole_run
    return win.throughput_tokens_per_s


def test_in_process_front_end_lowers_saturated_throughput_more_at_large_batch(m8_node):
    m8, node = m8_node
    out_of = load_engine("vllm-0.6@0.5.4")
    inside = out_of.model_copy(update={"frontend_in_process": True})
    loss = {}
    for mns in (16, 256):
        fast = _closed_batch_tok_s(m8, node, out_of, mns)
        slow = _closed_batch_tok_s(m8, node, inside, mns)
        assert slow < fast
        loss[mns] = 1 - slow / fast
    # the front end's work grows with the batch while the decode GEMMs stay weight-bound
    assert loss[256] > loss[16] + 0.05
