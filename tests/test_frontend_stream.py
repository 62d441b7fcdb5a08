"""The streaming front end (sim/engine.py StreamFrontEnd): one server process writes every
request's streamed chunks (SGLang TokenizerManager, vLLM V1 API server); the engine never waits
for it, so the clients see tokens at ``max(emitted, front end free) + service`` and a closed-loop
client sends its next request only when its last chunk is out."""

from __future__ import annotations

import numpy as np
import pytest

from apex_opt.registry import load_cluster
from apex_opt.sim.engine import StreamFrontEnd
from apex_opt.sim.simulator import simulate, stream_frontend
from apex_opt.sim.workload import Requests
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaGroup


def test_idle_front_end_adds_half_a_batch():
    fe = StreamFrontEnd(50e-6)
    # 100 chunks handed over at t = 1 s: written at 1.00005, ..., 1.005 s (mean 1.002525 s)
    assert fe.emit(1.0, 1.0, 100) == pytest.approx(1.005 - 0.5 * 0.005 * (1 - 1 / 100))
    assert fe.free == pytest.approx(1.005)


def test_chunks_queue_first_in_first_out():
    fe = StreamFrontEnd(50e-6)
    fe.emit(1.0, 1.0, 100)  # busy until 1.005
    # 10 chunks handed over at 1.001 wait for the first batch: done at 1.0055
    assert fe.emit(1.001, 1.001, 10) == pytest.approx(1.0055 - 0.5 * 0.0005 * 0.9)
    assert fe.free == pytest.approx(1.0055)


def test_run_paced_by_the_slower_of_engine_and_front_end():
    # 10 steps of 100 chunks (5 ms of front-end work each) emitted 1 ms apart: the front end
    # paces them (50 ms), not the engine (9 ms)
    fe = StreamFrontEnd(50e-6)
    fe.emit(0.0, 0.009, 100, steps=10)
    assert fe.free == pytest.approx(0.050)
    # 10 ms apart: the engine paces them, the last batch is written 5 ms after it is out
    fe = StreamFrontEnd(50e-6)
    fe.emit(0.0, 0.090, 100, steps=10)
    assert fe.free == pytest.approx(0.095)


def test_stream_interval_and_output_length_scale_the_service():
    a, b = StreamFrontEnd(50e-6, interval=10), StreamFrontEnd(50e-6)
    a.emit(0.0, 0.0, 100)
    b.emit(0.0, 0.0, 100)
    assert a.free == pytest.approx(b.free / 10)
    # non-incremental streaming: each chunk copies the output so far (here 1,000 tokens x 4 ns)
    c = StreamFrontEnd(50e-6, per_token_s=4e-9)
    c.emit(0.0, 0.0, 100, generated=1000)
    assert c.free == pytest.approx(100 * (50e-6 + 4e-6))


def test_profiles_say_whether_it_is_modelled():
    eng = load_engine("sglang")
    assert eng.frontend_chunk_us > 0 and eng.stream_interval == 1
    assert stream_frontend(eng) is not None
    off = eng.model_copy(update={"frontend_chunk_us": 0.0, "frontend_chunk_per_token_ns": 0.0})
    assert stream_frontend(off) is None


def _sim(engine, concurrency: int | None = 256, n: int = 768, rate: float | None = None):
    out = np.full(n, 200)
    arrival = np.zeros(n) if rate is None else np.arange(n) / rate
    req = Requests(arrival, np.full(n, 128), out, concurrency=concurrency)
    plan = Plan(groups=(ReplicaGroup(tp=1, max_model_len=4096),))
    return simulate(load_model("llama-3.1-8b"), load_cluster("h100-sxm-1x8"), plan, req,
                    engine=engine)


def _engine(chunk_us: float, interval: int = 1):
    return load_engine("sglang").model_copy(update={
        "frontend_chunk_us": chunk_us, "frontend_chunk_per_token_ns": 0.0,
        "stream_interval": interval})


def test_closed_loop_client_tpot_is_capped_by_the_front_end():
    base = _sim(_engine(0.0)).metrics.tpot_ms.mean
    # 200 us per chunk x 256 streams = 51 ms per round of chunks: far above the GPU step
    assert base < 0.6 * 256 * 0.2
    slow = _sim(_engine(200.0))
    assert slow.metrics.tpot_ms.mean == pytest.approx(256 * 0.2, rel=0.1)
    # the token rate the clients see cannot beat one chunk per service time
    served = slow.per_request()["output_tokens"].sum()
    assert served / slow.metrics.makespan_s <= 1 / 200e-6 * 1.02
    # --stream-interval 10: a tenth of the chunks, the GPU paces the clients again
    batched = _sim(_engine(200.0, interval=10)).metrics.tpot_ms.mean
    assert batched == pytest.approx(base, rel=0.15)


def test_engine_never_waits_for_the_front_end():
    # open loop: the same iterations run whatever the front end costs; only the times the
    # clients see move, later
    fast, slow = _sim(_engine(0.0), None, 256, 20.0), _sim(_engine(200.0), None, 256, 20.0)
    assert fast.replicas[0].iterations == slow.replicas[0].iterations
    f, s = fast.per_request(), slow.per_request()
    assert (s["finish_s"] >= f["finish_s"] - 1e-12).all()
    assert (s["first_token_s"] >= f["first_token_s"] - 1e-12).all()
    assert s["finish_s"].mean() > f["finish_s"].mean()


@pytest.mark.parametrize("chunk_s", [50e-6, 1e-3])  # idle front end, and one that falls behind
def test_runs_handed_over_out_of_time_order_queue_like_single_steps(chunk_s):
    # pipeline parallelism: two virtual engines' 10-step decode runs (10 requests each, steps
    # 10 ms apart, interleaved 5 ms) are handed over run by run, not step by step
    a = StreamFrontEnd(chunk_s)
    a.emit(0.010, 0.100, 10, steps=10)
    run = a.emit(0.015, 0.105, 10, steps=10)
    b = StreamFrontEnd(chunk_s)
    for j in range(10):
        b.emit(0.010 + 0.01 * j, 0.010 + 0.01 * j, 10)
        step = b.emit(0.015 + 0.01 * j, 0.015 + 0.01 * j, 10)
    assert run == pytest.approx(step, abs=2 * 10 * chunk_s)
    assert a.free == pytest.approx(b.free, abs=2 * 10 * chunk_s)


def test_profiles_reproduce_their_published_front_end_rates():
    # SGLang PR #22548: default streaming paced at 21,752 output tok/s (outputs uniform up to
    # 1,024 tokens: a chunk-weighted mean of ~341 generated tokens); vLLM PR #27869: 34,079 tok/s
    sg = load_engine("sglang")
    per = sg.frontend_chunk_us * 1e-6 + sg.frontend_chunk_per_token_ns * 1e-9 * 341
    assert 1 / per == pytest.approx(21_752, rel=0.01)
    assert 1 / (load_engine("vllm").frontend_chunk_us * 1e-6) == pytest.approx(34_079, rel=0.01)
