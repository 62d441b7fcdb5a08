"""End-to-end plan search: objectives, JSON contract, determinism, energy vs latency, CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from apex_opt.registry import load_cluster
from apex_opt.search import solve
from apex_opt.sim.workload import generate
from apex_opt.solver.validate import plan_problems
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import Plan, ReplicaGroup
from apex_opt.specs.slo import SLOSpec
from apex_opt.specs.workload import WorkloadSpec

M, C = load_model("llama-3.1-8b"), load_cluster("h100-sxm-1x8")
REQ = generate(WorkloadSpec(num_requests=150, seed=0, arrival={"process": "poisson", "rate": 8.0},
                            prompt_len={"dist": "lognormal", "mean": 600, "cv": 0.6, "max": 4096},
                            output_len={"dist": "lognormal", "mean": 120, "cv": 0.6, "max": 1024}))
SLO = SLOSpec(ttft_ms={"target": 1000, "percentile": 90}, tpot_ms=40, constraints={"max_gpus": 4})


@pytest.fixture(scope="module")
def results() -> dict:  # used only by slow tests (four end-to-end solves)
    from apex_opt.commands.solve import make_launcher

    launcher = make_launcher("llama-3.1-8b", M, C)
    return {obj: solve(M, C, REQ, SLO, objective=obj, top_k=4, executor="serial", launcher=launcher,
                       also_launch=("sglang",) if obj == "latency" else ())
            for obj in ("latency", "energy", "gpus", "throughput")}


def _plan(p) -> Plan:
    # each group composes the ReplicaConfig the simulator ran: a plan file is one step away
    return Plan(groups=tuple(ReplicaGroup(replicas=g.replicas, **g.config.model_dump())
                             for g in p.groups))


@pytest.mark.parametrize("obj", ["latency", "energy", "gpus", "throughput"])
@pytest.mark.slow
def test_each_objective_returns_valid_slo_meeting_plans(results, obj) -> None:
    r = results[obj]
    assert r.objective == obj and r.plans and r.plans[0].slo_met
    assert r.solver.plans_simulated <= r.solver.plans_feasible
    for p in r.plans:
        assert not plan_problems(M, C, _plan(p), SLO), p.label
        assert p.gpus <= 4
    met = [p for p in r.plans if p.slo_met]
    vals = [p.objective_value for p in met]
    assert vals == (sorted(vals, reverse=True) if obj == "throughput" else sorted(vals))


@pytest.mark.slow
def test_gpus_objective_uses_fewest(results) -> None:
    assert results["gpus"].plans[0].gpus <= min(p.gpus for p in results["latency"].plans if p.slo_met)


@pytest.mark.slow
def test_energy_plan_no_worse_than_latency_plan(results) -> None:
    e, lat = results["energy"], results["latency"]
    ej = e.plans[0].metrics.energy_j_per_token
    assert ej <= lat.plans[0].metrics.energy_j_per_token
    assert e.energy_saving is not None and e.energy_saving.saving_fraction >= 0
    assert e.energy_saving.chosen_j_per_token == ej


@pytest.mark.slow
def test_json_contract(results) -> None:
    d = json.loads(results["latency"].model_dump_json())
    assert d["schema_version"] == 3
    assert {"status", "wall_s", "plans_feasible", "plans_simulated"} <= set(d["solver"])
    p = d["plans"][0]
    assert {"groups", "gpus", "metrics", "slo_met", "launch"} <= set(p)
    assert {"replicas", "device", "gpus_per_replica", "config"} <= set(p["groups"][0])
    assert {"pool", "tp", "pp", "ep", "weight_dtype", "kv_dtype", "layers_per_stage",
            "max_num_seqs", "max_num_batched_tokens"} <= set(p["groups"][0]["config"])
    assert {"ttft_ms", "tpot_ms", "e2e_s", "energy_j_per_token"} <= set(p["metrics"])
    assert p["launch"]["vllm"].startswith("vllm serve") or "vllm serve" in p["launch"]["vllm"]
    assert "sglang" in p["launch"]["sglang"]
    assert set(d["plans"][1]["launch"]) == {"vllm"}  # other engines only for the chosen plan
    assert d["also_simulated"][0]["engine"] == "sglang" and d["also_simulated"][0]["metrics"]
    assert f"--tensor-parallel-size {p['groups'][0]['config']['tp']}" in p["launch"]["vllm"]
    assert [b["name"] for b in d["baselines"]] == ["max-tp-dp", "min-tp-dp"]
    assert d["chosen"]["groups"][0]["stages"]


@pytest.mark.slow
def test_deterministic(results) -> None:
    from apex_opt.commands.solve import make_launcher

    again = solve(M, C, REQ, SLO, objective="latency", top_k=4, executor="process", workers=2,
                  launcher=make_launcher("llama-3.1-8b", M, C), also_launch=("sglang",))
    a = json.loads(results["latency"].model_dump_json())
    b = json.loads(again.model_dump_json())
    for d in (a, b):
        for k in ("wall_s", "workers", "executor"):
            d["solver"].pop(k)
    assert a == b


@pytest.mark.slow
def test_chosen_beats_or_ties_baselines(results) -> None:
    r = results["latency"]
    for b in r.baselines:
        if b.gain is not None:
            assert b.gain >= 0.999


@pytest.mark.slow
def test_cli_json_and_infeasible(tmp_path) -> None:
    from apex_opt.cli import main

    slo = tmp_path / "slo.yaml"
    slo.write_text("ttft_ms: 1\ntpot_ms: 40\n")
    wl = tmp_path / "wl.yaml"
    wl.write_text("num_requests: 60\nseed: 1\narrival: {process: poisson, rate: 4}\n"
                  "prompt_len: 300\noutput_len: 50\n")
    runner = CliRunner()
    bad = runner.invoke(main, ["solve", "--model", "llama-3.1-8b", "--workload", str(wl),
                               "--slo", str(slo), "--executor", "serial"])
    assert bad.exit_code == 3, bad.output
    assert "ttft_ms" in bad.output and "relax ttft_ms" in bad.output
    slo.write_text("ttft_ms: 2000\ntpot_ms: 60\nconstraints: {max_gpus: 2}\n")
    ok = runner.invoke(main, ["solve", "--model", "llama-3.1-8b", "--workload", str(wl),
                              "--slo", str(slo), "--json", "--top-k", "2", "--executor", "serial"])
    assert ok.exit_code == 0, ok.output
    d = json.loads(ok.output)
    assert d["plans"][0]["gpus"] <= 2 and d["solver"]["plans_simulated"] >= 1
    ray = runner.invoke(main, ["solve", "--model", "llama-3.1-8b", "--workload", str(wl),
                               "--slo", str(slo), "--executor", "ray"])
    try:
        import ray as _ray  # noqa: F401
    except ImportError:
        assert ray.exit_code == 2 and "ray" in ray.output
