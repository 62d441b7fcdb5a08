"""Engine profiles as versioned data: loading, defaults by GPU, version pins, CLI listing and
--engine validation, and the V1 / SGLang scheduler mechanisms they select."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from packaging.specifiers import SpecifierSet

from apex_opt.cli import main
from apex_opt.errors import InputError
from apex_opt.registry import load_cluster
from apex_opt.sim.engine import EngineLimits, ReplicaEngine, RequestLog
from apex_opt.sim.router import run_cluster
from apex_opt.sim.simulator import engine_limits
from apex_opt.specs.engine import all_engines, engine_names, load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import ReplicaConfig


def test_bundled_profiles_and_one_default():
    names = set(engine_names())
    assert {"vllm", "vllm-0.6", "sglang", "sglang-0.4"} <= names
    defaults = [e.name for e in all_engines() if e.default]
    assert defaults == ["vllm"]
    assert load_engine().name == "vllm" and load_engine().scheduler == "vllm_v1"
    for e in all_engines():
        SpecifierSet(e.versions)  # PEP 440
        assert e.engine in ("vllm", "sglang")
        assert e.flag_vocabulary and e.launch_flags
        assert {f.split("=")[0] for f in e.launch_flags.values()} <= set(e.flag_vocabulary)


def test_version_pins_apply_overrides_and_reject_out_of_range():
    assert load_engine("vllm@0.15.1").async_scheduling
    assert not load_engine("vllm@0.12").async_scheduling       # opt-in before 0.14
    assert load_engine("vllm@0.10").cuda_graph_mode == "piecewise"
    assert load_engine("vllm@0.12").cuda_graph_mode == "full_and_piecewise"
    assert load_engine("vllm@0.12").label == "vllm@0.12"
    with pytest.raises(InputError, match="vllm-0.6@0.6"):
        load_engine("vllm@0.6")
    with pytest.raises(InputError, match="valid engines: .*sglang.*vllm"):
        load_engine("tgi")


def test_a_release_newer_than_every_profile_runs_on_the_newest_with_a_warning():
    import warnings

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        e = load_engine("vllm@0.24")
    assert e.name == "vllm" and e.version == "0.24"
    assert any("newer than every release" in str(x.message) for x in w)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert load_engine("sglang@0.6.1").name == "sglang"
    # older than a profile's range: still refused, naming the profile that covers it
    with pytest.raises(InputError, match="sglang-0.4@0.4.5"):
        load_engine("sglang@0.4.5")
    with pytest.raises(InputError, match="not 0.3"):
        load_engine("vllm@0.3")


def test_a_development_build_runs_on_the_newest_profile_with_a_warning():
    """vLLM nightly wheels / images and SGLang nightly-dev images (a real benchmark's version
    label) are newer than every release: the family's newest profile, at the first release past
    its range (so its overrides for that release apply), with a warning."""
    import warnings

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        e = load_engine("vllm@nightly-5b8c30d62b754b57")
        s = load_engine("sglang@nightly-dev")
        release = load_engine("vllm@0.20")
    assert (e.name, e.version) == ("vllm", "0.20") and s.name == "sglang"
    assert any("a development build" in str(x.message) for x in w)
    assert release.model_dump() == e.model_dump()
    with pytest.raises(InputError, match="use vllm@nightly"):
        load_engine("vllm-0.6@nightly")
    with pytest.raises(InputError, match="is not a version number"):
        load_engine("sglang@foo")


def test_defaults_by_gpu_memory():
    v1, sg = load_engine("vllm"), load_engine("sglang")
    h100 = load_cluster("h100-sxm-1x8").pools[0].device
    a100 = load_cluster("a100-80g-1x8").pools[0].device
    m = load_model("llama-3.1-8b")
    r = ReplicaConfig(tp=1).resolved(v1, m, h100)
    assert (r.max_num_batched_tokens, r.max_num_seqs, r.chunked_prefill, r.prefix_caching) == \
        (8192, 1024, True, True)
    r = ReplicaConfig(tp=1).resolved(v1, m, a100)  # A100 kept small
    assert (r.max_num_batched_tokens, r.max_num_seqs) == (2048, 256)
    r = ReplicaConfig(tp=1).resolved(sg, m, h100)
    assert r.max_num_batched_tokens == 8192
    # mem_fraction_static = (total - reserve) / total, reserve >= 10 GiB on big GPUs
    assert 0.8 < r.gpu_memory_utilization < 0.9
    explicit = ReplicaConfig(tp=1, gpu_memory_utilization=0.7).resolved(sg, 8192, h100,
                                                                       checkpoint_dtype="bf16")
    assert explicit.gpu_memory_utilization == 0.7
    v0 = ReplicaConfig(tp=1, max_model_len=8192).resolved(load_engine("vllm-0.6"), 8192, h100,
                                                          checkpoint_dtype="bf16")
    assert (v0.chunked_prefill, v0.max_num_batched_tokens, v0.max_num_seqs) == (False, 8192, 256)


def test_engine_limits_select_policy():
    m = load_model("llama-3.1-8b")
    h100 = load_cluster("h100-sxm-1x8").pools[0].device
    cfg = ReplicaConfig(tp=1, max_model_len=8192)
    assert engine_limits(m, cfg, 1000, load_engine("vllm"), h100).policy == "v1"
    assert engine_limits(m, cfg, 1000, load_engine("vllm-0.6"), h100).policy == "v0"
    sg = engine_limits(m, cfg, 1000, load_engine("sglang"), h100)
    assert sg.mode == "sglang" and sg.new_token_ratio is not None and sg.prefix_caching


def test_engines_cli_json_and_bad_engine_exit_2():
    runner = CliRunner()
    r = runner.invoke(main, ["engines", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert {"name", "engine", "versions", "default"} <= set(rows[0])
    assert [x["name"] for x in rows if x["default"]] == ["vllm"]
    table = runner.invoke(main, ["engines"])
    assert table.exit_code == 0 and "vllm-0.6" in table.output
    for cmd in (["check", "--model", "llama-3.1-8b"],
                ["estimate", "--model", "llama-3.1-8b", "--batch", "decode:1x128"],
                ["simulate", "--model", "llama-3.1-8b", "--tp", "1", "--rate", "1",
                 "--num-requests", "2", "--prompt-len", "10", "--output-len", "2"]):
        bad = runner.invoke(main, cmd + ["--engine", "nope"])
        assert bad.exit_code == 2, (cmd, bad.output)
        assert "nope" in bad.output and "vllm-0.6" in bad.output


def test_simulate_cli_engine_choice_changes_the_prediction():
    runner = CliRunner()
    base = ["simulate", "--model", "llama-3.1-8b", "--tp", "1", "--rate", "20",
            "--num-requests", "200", "--prompt-len", "512", "--output-len", "64",
            "--max-model-len", "4096", "--json"]
    out = {}
    for e in ("vllm", "vllm-0.6", "sglang"):
        r = runner.invoke(main, base + ["--engine", e])
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output)
        assert doc["engine"] == e
        out[e] = doc["metrics"]["tpot_ms"]["mean"]
    # V0's 250 us per sequence per step makes its steps much slower than V1's
    assert out["vllm-0.6"] > 1.5 * out["vllm"]


class _Cost:
    """time = 10 ms + 0.1 ms per token; no host part."""

    num_gpus = 1
    idle_power_w = 0.0

    def iteration(self, decode_ctx, prefill=(), *, with_breakdown=False, prefill_sampling=None):
        from types import SimpleNamespace

        t = 0.01 + 1e-4 * (len(decode_ctx) + sum(q for q, _ in prefill))
        return SimpleNamespace(time_s=t, stage_times_s=(t,), energy_j=0.0, busy_gpu_s=t,
                               flops=0.0, hbm_bytes=0.0, breakdown=None)


def _run(lim: EngineLimits, prompt, output, arrival, **kw):
    log = RequestLog(np.asarray(prompt, dtype=np.int64), np.asarray(output, dtype=np.int64))
    eng = ReplicaEngine(0, _Cost(), lim, log, debug=True, **kw)
    run_cluster([eng], np.asarray(arrival, dtype=float), "round_robin")
    return log, eng


def test_v1_allocates_per_chunk_and_preempts_when_blocks_run_out():
    """V1 allocates blocks per scheduled chunk, so two long prompts start side by side (and the
    newer is preempted when blocks run out) where V0 (whole prompt reserved at admission) makes
    the second wait for the first to finish."""
    kw = dict(num_blocks=200, block_size=16, max_num_seqs=8, max_num_batched_tokens=1024,
              max_model_len=4096, chunked_prefill=True, watermark_fraction=0.0)
    prompt, output, arrival = [2400, 2400], [4, 4], [0.0, 0.0]
    v1_log, v1 = _run(EngineLimits(policy="v1", **kw), prompt, output, arrival)
    v0_log, v0 = _run(EngineLimits(policy="v0", **kw), prompt, output, arrival)
    assert np.all(np.isfinite(v1_log.finish_s)) and np.all(np.isfinite(v0_log.finish_s))
    # V0 cannot hold both prompts' 150 blocks at once: the second waits for the first to finish
    assert v0_log.first_s[1] > v0_log.finish_s[0] - 1e-9
    # V1 starts the second one while the first is still prefilling (more blocks in use than
    # V0's single prompt), runs out of blocks and preempts the newer one (recompute)
    assert v1.stats.max_blocks_used > v0.stats.max_blocks_used
    assert v1.stats.preemptions >= 1 and v0.stats.preemptions == 0
    assert v1.stats.max_blocks_used <= 200


def test_async_scheduling_sees_arrivals_one_step_late():
    """With async scheduling, a request arriving during step N joins step N + 2."""
    kw = dict(num_blocks=10_000, block_size=16, max_num_seqs=8, max_num_batched_tokens=2048,
              max_model_len=4096, chunked_prefill=True, policy="v1")
    lim = EngineLimits(**kw)
    # request 0 decodes for a long time; request 1 arrives in the middle of a step
    prompt, output, arrival = [100, 100], [200, 2], [0.0, 0.0505]
    sync_log, _ = _run(lim, prompt, output, arrival)
    async_log, _ = _run(lim, prompt, output, arrival, lookahead=True)
    step = 0.01 + 1e-4  # a one-decode step
    ttft_sync = sync_log.first_s[1] - arrival[1]
    ttft_async = async_log.first_s[1] - arrival[1]
    assert ttft_async == pytest.approx(ttft_sync + step, abs=2e-4)


def test_sglang_new_token_ratio_reserves_decode_room():
    """SGLang admits a prefill only if the free KV covers its prompt plus the running requests'
    remaining output times the new-token ratio; with the ratio at 0 the same request fits."""
    kw = dict(num_blocks=3000, block_size=1, max_num_seqs=64, max_num_batched_tokens=8192,
              max_model_len=4096, chunked_prefill=True, policy="sglang",
              watermark_fraction=0.0)
    prompt, output, arrival = [1000, 1000], [2000, 10], [0.0, 0.001]
    with_ratio, _ = _run(EngineLimits(new_token_ratio=(0.7, 0.098, 0.001), **kw),
                         prompt, output, arrival)
    without, _ = _run(EngineLimits(**kw), prompt, output, arrival)
    # reserve 0.7 x 2000 = 1400 tokens for request 0: 3000 - 1001 - 1400 < 1000 + 7 -> waits
    assert with_ratio.first_s[1] > without.first_s[1] + 0.05


def test_sglang_joiner_counts_its_whole_output():
    """A request joining a prefill batch counts its whole remaining output (clipped at 4096),
    not the running requests' new-token ratio (SGLang PrefillAdder.add_one_req and
    _update_prefill_budget): two 1,000-token prompts with 600-token outputs arriving together in
    a 3,000-token pool -- at the ratio both would join one batch (1,000 free >= 0.7 x 600 x 2)
    but with whole outputs (1,000 < 600 x 2) the second waits for the next batch."""
    kw = dict(num_blocks=3000, block_size=1, max_num_seqs=64, max_num_batched_tokens=8192,
              max_model_len=4096, chunked_prefill=True, policy="sglang",
              watermark_fraction=0.0, new_token_ratio=(0.7, 0.098, 0.001))
    log, _ = _run(EngineLimits(**kw), [1000, 1000], [600, 600], [0.0, 0.0])
    assert log.first_s[1] > log.first_s[0] + 0.05
    assert np.all(np.isfinite(log.finish_s))
    small, _ = _run(EngineLimits(**kw), [1000, 1000], [400, 400], [0.0, 0.0])
    # with 400-token outputs both fit in one prefill batch (1,000 free >= 2 x 400)
    assert small.first_s[1] == pytest.approx(small.first_s[0])


def test_attention_dp_memory_routing_and_lockstep():
    """SGLang DP attention (DeepSeek MLA): attention weights replicated per rank, a KV pool per
    rank (more tokens in total), requests spread round robin over the ranks, one forward for all."""
    from apex_opt.memory import replica_memory

    sg = load_engine("sglang")
    m = load_model("deepseek-v3")
    dev = load_cluster("h200-1x8").pools[0].device
    one = replica_memory(m, dev, ReplicaConfig(tp=8, weight_dtype="fp8", max_model_len=16384), sg)
    dp8 = replica_memory(m, dev, ReplicaConfig(tp=8, weight_dtype="fp8", attention_dp=8,
                                               max_model_len=16384), sg)
    assert one.fits and dp8.fits
    w1 = one.stages[0].weights_by_component["attention"]
    # sharded projections are 8x larger per GPU (the MLA down-projections were replicated)
    assert 4 * w1 < dp8.stages[0].weights_by_component["attention"] <= 8 * w1
    assert dp8.gpu_memory_utilization < one.gpu_memory_utilization  # SGLang's DP reserve
    assert dp8.kv_tokens > 2 * one.kv_tokens
    with pytest.raises(ValueError, match="attention_dp"):
        ReplicaConfig(tp=8, attention_dp=3)
    # scheduler: 4 ranks, 8 requests -> 2 per rank; every step serves all ranks together
    lim = EngineLimits(num_blocks=4000, block_size=1, max_num_seqs=64, max_num_batched_tokens=8192,
                       max_model_len=4096, chunked_prefill=True, policy="sglang",
                       watermark_fraction=0.0, attention_dp=4)
    log, eng = _run(lim, [100] * 8, [20] * 8, [0.0] * 8)
    assert [ve.unfinished for ve in eng.ves] == [0, 0, 0, 0]
    assert np.all(np.isfinite(log.finish_s))
    # one prefill step for all 8 (two per rank) then 19 lockstep decode steps
    assert eng.stats.iterations == 20 and eng.stats.prefill_iterations == 1
    assert eng.stats.max_blocks_used <= 1000  # each rank holds its own quarter of the pool


def test_sglang_starts_with_a_kv_pool_shorter_than_the_context():
    """vLLM refuses to start when the KV cache cannot hold max_model_len tokens; SGLang starts
    (and rejects longer requests), e.g. Qwen3-32B bf16 on one H100 at its 40,960-token context."""
    from apex_opt.memory import replica_memory

    m = load_model("qwen3-32b")
    dev = load_cluster("h100-sxm-1x8").pools[0].device
    cfg = ReplicaConfig(tp=1)
    v = replica_memory(m, dev, cfg, load_engine("vllm"))
    s = replica_memory(m, dev, cfg, load_engine("sglang"))
    assert not v.fits and v.overflow_component == "kv_cache"
    assert s.fits and 0 < s.kv_tokens < m.max_position_embeddings


def test_engines_turn_their_host_overlap_off_under_pipeline_parallelism():
    """vLLM V1 disables its default async scheduling with pp > 1 (vllm/config/vllm.py) and SGLang
    its overlap scheduler (server_args _handle_pipeline_parallelism): a PP2 replica neither
    overlaps host work nor schedules a step ahead; the same shape at PP1 does both."""
    from apex_opt.sim.simulator import _build_replicas
    from apex_opt.specs.plan import Plan, ReplicaGroup

    model = load_model("llama-3.1-8b")
    cluster = load_cluster("h100-sxm-1x8")
    log = RequestLog(np.full(4, 100), np.full(4, 10))
    for name in ("vllm", "sglang"):
        eng = load_engine(name)
        assert eng.async_scheduling and not eng.overlap_with_pp
        for pp, on in ((1, True), (2, False)):
            plan = Plan(groups=(ReplicaGroup(tp=1, pp=pp),))
            (rep,), _ = _build_replicas(model, cluster, plan, log, None, eng, False, False, 1,
                                        False)
            assert (rep.async_output, rep.lookahead, rep.host_serial_s is not None) == (on, on, on)


def test_pipeline_micro_batches_share_the_running_cap():
    """vLLM V1 keeps one running list for every in-flight micro-batch (len(running) <
    max_num_seqs) and SGLang caps each micro-batch at max_running_requests // pp; vLLM 0.6 gives
    each virtual engine a Scheduler with the whole max_num_seqs."""
    from apex_opt.parallel import seqs_per_scheduler

    model = load_model("llama-3.1-8b")
    dev = load_cluster("h100-sxm-1x8").pools[0].device
    for name, per_ve in (("vllm", 128), ("sglang", 128), ("vllm-0.6", 256)):
        eng = load_engine(name)
        lim = engine_limits(model, ReplicaConfig(tp=1, pp=2, max_num_seqs=256), 1000, eng, dev)
        assert lim.max_num_seqs == per_ve == seqs_per_scheduler(256, 2, eng.pp_shares_max_num_seqs)
        assert lim.replica_max_num_seqs == 256  # what the steady-state energy window counts
        one = engine_limits(model, ReplicaConfig(tp=1, pp=1, max_num_seqs=256), 1000, eng, dev)
        assert one.max_num_seqs == 256
    assert seqs_per_scheduler(3, 4, load_engine("sglang").pp_shares_max_num_seqs) == 1


def test_sglang_retraction_keeps_headroom_and_reestimates_the_ratio():
    """A decode step short of KV retracts as SGLang's ScheduleBatch.retract_decode does: until 20
    tokens per remaining request are free (SGLANG_RETRACT_DECODE_STEPS), then the new-token ratio
    restarts from the survivors' progress, (decoded + 20 x n) / (max_new_tokens + 1)."""
    kw = dict(num_blocks=1200, block_size=1, max_num_seqs=64, max_num_batched_tokens=8192,
              max_model_len=4096, chunked_prefill=True, policy="sglang", watermark_fraction=0.0,
              new_token_ratio=(0.05, 0.05, 0.0), retract_decode_steps=20)
    n = 10
    prompt, output, arrival = [100] * n, [200] * n, [0.0] * n
    log = RequestLog(np.asarray(prompt, dtype=np.int64), np.asarray(output, dtype=np.int64))
    eng = ReplicaEngine(0, _Cost(), EngineLimits(**kw), log, debug=True)
    seen = []
    real = eng._preempt

    def spy(ve, k, need, flags):
        out = real(ve, k, need, flags)
        ids = ve.d_id.tolist()
        decoded = float(sum(int(x) for x in ve.d_len)) - sum(log.prompt[r] for r in ids)
        seen.append((eng._free(ve), len(ids), ve.ratio,
                     min(1.0, (decoded + 20 * len(ids)) / (sum(log.output[r] for r in ids) + 1))))
        return out

    eng._preempt = spy
    run_cluster([eng], np.asarray(arrival, dtype=float), "round_robin")
    assert np.all(np.isfinite(log.finish_s)) and eng.stats.preemptions >= 1
    assert seen
    for free, survivors, ratio, expected in seen:
        assert survivors == 1 or free >= 20 * survivors  # headroom for 20 more tokens each
        assert ratio == pytest.approx(expected)
    # the same run retracting only what each step needs preempts no more often
    log2 = RequestLog(np.asarray(prompt, dtype=np.int64), np.asarray(output, dtype=np.int64))
    eng2 = ReplicaEngine(0, _Cost(), EngineLimits(**{**kw, "retract_decode_steps": 0}), log2)
    run_cluster([eng2], np.asarray(arrival, dtype=float), "round_robin")
    assert eng2.stats.preemptions <= eng.stats.preemptions
