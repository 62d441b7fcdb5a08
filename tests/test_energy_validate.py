"""scripts/validate_energy.py replays measured ML.ENERGY rows (skips without ../shared)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("validate_energy", REPO / "scripts" / "validate_energy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def energy_rows(shared_dir: Path) -> dict[str, dict]:
    path = shared_dir / "validation" / "energy" / "energy_runs.csv"
    if not path.is_file():
        pytest.skip("../shared/validation/energy is absent")
    return {r["case_id"]: r for r in csv.DictReader(path.open())}


def test_row_setup_reads_the_run(energy_rows):
    v = _script()
    s = v.row_setup(energy_rows["mlev3-lm-arena-chat-Llama-3.1-8B-Instruct-H100-g1-tp1-ep1-mns8"])
    assert s["v3"] and s["task"] == "lm-arena-chat" and s["mns"] == 8 and s["tp"] == 1
    assert s["n"] == 1024 and s["out_mean"] == pytest.approx(388.7)
    assert s["max_model_len"] == 20480
    s2 = v.row_setup(energy_rows["mlev2-chat-Meta-Llama-3.1-405B-Instruct-H100-tp8-pp2-mns128"])
    assert not s2["v3"] and s2["pp"] == 2 and s2["tp"] == 8


@pytest.mark.slow
def test_replay_small_batch_row_within_bounds(energy_rows):
    v = _script()
    out = v.simulate_row(energy_rows["mlev3-lm-arena-chat-Llama-3.1-8B-Instruct-H100-g1-tp1-ep1-mns8"])
    assert out["window"] == "steady_state"
    # measured 486 W, 0.455 J/token, 1070 tok/s; the replay must land in the right regime
    assert abs(out["err_pct"]["tok_s"]) < 15
    assert abs(out["err_pct"]["power_w"]) < 25
    assert abs(out["err_pct"]["j_per_tok"]) < 25


def test_unknown_architecture_is_skipped(energy_rows):
    v = _script()
    # a model the script has no config numbers for
    row = dict(next(iter(energy_rows.values())), model_hf="example/not-a-published-model")
    assert v.simulate_row(row) is None
    # StarCoder2 replays with its ungated MLP (3.03 B parameters, arXiv 2402.19173)
    m = v.model_for("bigcode/starcoder2-3b")
    assert not m.mlp_gated and abs(m.params_total / 3.03e9 - 1) < 0.005


def test_replay_sends_the_benchmarks_sampling_parameters(energy_rows):
    v = _script()
    llama = v.row_setup(energy_rows["mlev3-lm-arena-chat-Llama-3.1-8B-Instruct-H100-g1-tp1-ep1-mns8"])
    qwen = v.row_setup(energy_rows["mlev3-lm-arena-chat-Qwen3-8B-H100-g1-tp1-ep1-mns8"])
    code = v.row_setup(energy_rows["mlev2-code-CodeLlama-7b-hf-H100-tp1-pp1-mns128"])
    assert v.requests_for(llama).sampler == "top_p"          # top_p 0.95, no top_k in Llama's config
    r = v.requests_for(qwen)
    assert (r.top_p, r.top_k, r.sampler) == (0.95, 20, "top_k")  # Qwen3 generation_config top_k 20
    assert v.requests_for(code).sampler == "greedy"           # v2 code task: temperature 0


@pytest.mark.slow
def test_large_batch_replay_pays_the_sort_sampler(energy_rows):
    # measured 9,010 tok/s at max_num_seqs 256; without the top-p sort the replay was +27 % fast
    v = _script()
    out = v.simulate_row(energy_rows["mlev3-lm-arena-chat-Llama-3.1-8B-Instruct-H100-g1-tp1-ep1-mns256"])
    assert abs(out["err_pct"]["tok_s"]) < 12
    assert abs(out["err_pct"]["power_w"]) < 10


def test_v2_rows_replay_vllm_054_with_the_front_end_in_process(energy_rows, monkeypatch):
    # ML.ENERGY v2 launched vLLM 0.5.4 with --disable-frontend-multiprocessing (and
    # --gpu-memory-utilization 0.95): the replay must run that engine, not 0.5.4's default
    v = _script()
    seen = {}

    class _Stop(Exception):
        pass

    def fake_simulate(model, cluster, plan, requests, *, engine):
        seen.update(engine=engine, group=plan.groups[0])
        raise _Stop

    monkeypatch.setattr(v, "simulate", fake_simulate)
    with pytest.raises(_Stop):
        v.simulate_row(energy_rows["mlev2-chat-Meta-Llama-3.1-8B-Instruct-H100-tp1-pp1-mns64"])
    e, g = seen["engine"], seen["group"]
    assert e.name == "vllm-0.6" and e.version == "0.5.4"
    assert e.frontend_in_process and e.frontend_per_token_us > 0
    assert g.chunked_prefill is False and g.max_model_len == 4096
    assert g.gpu_memory_utilization == 0.95
    with pytest.raises(_Stop):
        v.simulate_row(energy_rows["mlev3-lm-arena-chat-Llama-3.1-8B-Instruct-H100-g1-tp1-ep1-mns8"])
    assert not seen["engine"].frontend_in_process      # V1: the server is its own process


def test_output_lengths_are_cut_at_max_tokens_and_keep_the_measured_mean():
    # every request sends the task's max_tokens, so its output ends there; the cut lengths still
    # average the row's measured mean (which includes the cuts)
    import numpy as np

    v = _script()
    draws = np.random.default_rng(0).standard_exponential(2000)
    out = v.cut_exponential(draws, 7854.2, 16384)
    assert out.max() == 16384 and (out == 16384).sum() > 100  # cut, not dropped
    assert out.mean() == pytest.approx(7854.2, abs=0.5)
    assert out.min() >= 1
    short = v.cut_exponential(draws, 620.0, 4096)
    assert short.mean() == pytest.approx(620.0, abs=0.5) and short.max() == 4096
    # a mean the cut cannot reach keeps the plain scale (every length at the cap or below)
    assert v.cut_exponential(draws, 5000.0, 1024).max() == 1024


def test_no_replayed_request_is_one_vllm_would_refuse(energy_rows):
    # vLLM refuses prompt + max_tokens > max_model_len ("'max_tokens' ... is too large"); the
    # replay must not send such a request, and the GPQA lengths keep the measured mean
    v = _script()
    for cid, row in energy_rows.items():
        s = v.row_setup(row)
        limit = s["max_model_len"] or (4096 if not s["v3"] else None)
        if limit is None:
            continue
        r = v.requests_for(s)
        assert (r.prompt_tokens + v.MAX_TOKENS[s["task"]]).max() <= limit, cid
    s = v.row_setup(energy_rows["mlev3-gpqa-Qwen3-8B-H100-g1-tp1-ep1-mns8"])
    assert v.requests_for(s).output_tokens.mean() == pytest.approx(s["out_mean"], abs=0.5)
