"""CLI contract: exit codes (0 ok, 2 bad input, 3 infeasible), one-line errors, JSON documents."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from apex_opt.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


def one_line_error(r, code, *needles):
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output
    err = [ln for ln in r.output.splitlines() if ln.startswith("apex-opt: error:")]
    assert len(err) == 1, r.output
    for n in needles:
        assert n in err[0], err[0]


def test_models_json_has_required_fields():
    r = run("models", "--json")
    assert r.exit_code == 0
    doc = json.loads(r.output)
    assert doc["schema_version"] == 1
    docs = doc["models"]
    names = {d["name"] for d in docs}
    assert {"llama-3.1-70b", "deepseek-v3", "kimi-k2", "mixtral-8x22b"} <= names
    for d in docs:
        assert {"params_total", "params_active", "num_layers", "kv_bytes_per_token"} <= d.keys()


def test_models_show_name_and_path(tmp_path):
    r = run("models", "show", "llama-3.1-70b", "--json")
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d["schema_version"] == 1
    assert d["kv_bytes_per_token"] == 327680 and d["num_layers"] == 80
    from apex_opt.registry import data_dir
    cfg = tmp_path / "my-model"
    cfg.mkdir()
    (cfg / "config.json").write_text((data_dir("models") / "llama-3.1-8b.json").read_text())
    r = run("models", "show", str(cfg), "--json")
    assert r.exit_code == 0 and json.loads(r.output)["params_total"] == pytest.approx(8.03e9, rel=0.01)
    assert run("models").exit_code == 0


def test_clusters_lists_all():
    r = run("clusters", "--json")
    assert r.exit_code == 0
    doc = json.loads(r.output)
    assert doc["schema_version"] == 1
    names = {c["name"] for c in doc["clusters"]}
    assert {"h100-sxm-1x8", "mixed-h100-a100", "l40s-1x8", "mi300x-1x8"} <= names
    assert run("clusters").exit_code == 0


def test_check_feasible_and_infeasible_exit_codes():
    ok = run("check", "--model", "llama-3.1-405b", "--cluster", "h100-sxm-1x8", "--weight-dtype", "fp8", "--json")
    assert ok.exit_code == 0
    doc = json.loads(ok.output)
    assert doc["fits"] and doc["feasible"]
    bad = run("check", "--model", "llama-3.1-405b", "--cluster", "h100-sxm-1x8")
    assert bad.exit_code == 3
    assert "infeasible" in bad.output and "--weight-dtype fp8" in bad.output


def test_check_infeasible_json_is_still_a_document():
    r = run("check", "--model", "kimi-k2", "--cluster", "h100-sxm-1x8", "--json")
    assert r.exit_code == 3
    doc = json.loads(r.output[: r.output.rindex("}") + 1])
    assert doc["fits"] is False and doc["tightest"]["overflow_component"] == "experts"


def test_unknown_model_and_cluster_names():
    one_line_error(run("check", "--model", "llama-9", "--cluster", "h100-sxm-1x8"), 2, "llama-9", "llama-3.1-70b")
    one_line_error(run("check", "--cluster", "h100-sxm-99x8"), 2, "h100-sxm-99x8")


def test_missing_and_malformed_files(tmp_path):
    one_line_error(run("check", "--model", str(tmp_path / "nope.json")), 2, "nope.json", "not found")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"hidden_size\": 4096,")
    one_line_error(run("models", "show", str(bad)), 2, "bad.json", "malformed JSON")
    y = tmp_path / "c.yaml"
    y.write_text("name: x\npools: [\n")
    one_line_error(run("check", "--cluster", str(y)), 2, "c.yaml", "malformed YAML")


def test_unknown_field_and_impossible_values_in_cluster(tmp_path):
    base = ("name: x\npools:\n  - name: p\n    device: h100-sxm-80gb\n    nodes: 1\n"
            "    gpus_per_node: {g}\n    intra_node: {{kind: nvswitch, bandwidth_gbps: {bw}, latency_us: 1}}\n")
    f = tmp_path / "typo.yaml"
    f.write_text(base.format(g=8, bw=450) + "    colour: blue\n")
    one_line_error(run("check", "--cluster", str(f)), 2, "typo.yaml", "colour")
    f2 = tmp_path / "neg.yaml"
    f2.write_text(base.format(g=-8, bw=450))
    one_line_error(run("check", "--cluster", str(f2)), 2, "neg.yaml", "gpus_per_node", "-8")
    f3 = tmp_path / "nan.yaml"
    f3.write_text(base.format(g=8, bw=".nan"))
    one_line_error(run("check", "--cluster", str(f3)), 2, "nan.yaml", "bandwidth_gbps")


def test_impossible_model_config(tmp_path):
    f = tmp_path / "config.json"
    f.write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
                             "num_hidden_layers": 0, "num_attention_heads": 32, "vocab_size": 1000,
                             "intermediate_size": 1000, "max_position_embeddings": 4096}))
    one_line_error(run("models", "show", str(f)), 2, "config.json", "num_hidden_layers")


def test_help_texts():
    for cmd in (["--help"], ["check", "--help"], ["estimate", "--help"], ["models", "--help"]):
        r = run(*cmd)
        assert r.exit_code == 0 and "Usage" in r.output


def test_simulate_and_estimate_engine_choice():
    docs = {}
    for e in ("vllm", "sglang"):
        r = run("simulate", "--model", "llama-3.1-8b", "--cluster", "h100-sxm-1x8", "--tp", "1",
                "--rate", "2", "--num-requests", "40", "--prompt-len", "300", "--output-len", "20",
                "--engine", e, "--json")
        assert r.exit_code == 0, r.output
        docs[e] = json.loads(r.output)
        assert docs[e]["engine"].startswith(e)
        assert docs[e]["metrics"]["num_completed"] == 40
    # the two engine models differ (host overhead, batching): same workload, different latency
    assert docs["vllm"]["metrics"]["tpot_ms"]["mean"] != docs["sglang"]["metrics"]["tpot_ms"]["mean"]
    r = run("estimate", "--model", "llama-3.1-8b", "--tp", "1", "--engine", "sglang",
            "--batch", "decode:4x100", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["engine"] == "sglang"
    bad = run("simulate", "--tp", "8", "--engine", "trt", "--rate", "1", "--num-requests", "2",
              "--prompt-len", "5", "--output-len", "5")
    assert bad.exit_code == 2 and "Traceback" not in bad.output


@pytest.mark.parametrize("kind", ["slo", "workload", "cluster", "device", "plan"])
def test_schema_command_prints_json_schema(kind):
    r = run("schema", kind)
    assert r.exit_code == 0
    doc = json.loads(r.output)
    assert doc.get("type") == "object" and doc.get("properties")
    if kind in ("slo", "cluster"):
        assert doc.get("additionalProperties") is False  # strict files


@pytest.mark.parametrize("args,needle", [
    (["--tp", "3"], "attention heads"),
    (["--tp", "8", "--ep", "2"], "dense"),
    (["--cluster", "h100-sxm-2x8", "--tp", "16"], "one node"),
])
def test_invalid_parallel_shapes_are_bad_input(args, needle):
    for cmd in (["simulate", "--rate", "1", "--num-requests", "3", "--prompt-len", "10",
                 "--output-len", "3"], ["estimate", "--batch", "decode:1x10"]):
        r = run(*cmd, *args)
        one_line_error(r, 2, needle)


@pytest.mark.parametrize("args, needle", [
    (["solve", "--bogus"], "No such option '--bogus'"),
    (["simulate", "--tp", "x"], "'--tp'"),
    (["schema"], "Missing argument"),
    (["models", "show"], "Missing argument 'REF'"),
    (["solve", "--objective", "speed"], "'--objective'"),
])
def test_click_usage_errors_are_one_line_exit_2(args, needle):
    r = run(*args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    assert lines[0].startswith("apex-opt: error:") and needle in lines[0]
    assert "Usage:" not in r.output and "--help" in lines[0]


def test_help_still_exits_0():
    r = run("solve", "--help")
    assert r.exit_code == 0 and "Usage:" in r.output


def test_python_api_and_cli_give_identical_numbers():
    """One truth for defaults: a ReplicaGroup with only the shape set and `simulate` with the same
    flags resolve chunked prefill / token budget the same way (ReplicaConfig.resolved)."""
    import numpy as np

    from apex_opt import Plan, ReplicaGroup, load_cluster, load_model, simulate
    from apex_opt.sim.workload import generate
    from apex_opt.specs.workload import WorkloadSpec

    r = run("simulate", "--model", "llama-3.1-8b", "--tp", "1", "--max-model-len", "8192",
            "--rate", "4", "--num-requests", "40", "--prompt-len", "1500", "--output-len", "60",
            "--json")
    assert r.exit_code == 0, r.output
    cli = json.loads(r.output)
    spec = WorkloadSpec.model_validate({"name": "cli", "num_requests": 40, "prompt_len": 1500,
                                        "output_len": 60, "seed": 0,
                                        "arrival": {"process": "poisson", "rate": 4}})
    req = generate(spec, np.random.default_rng(0))
    api = simulate(load_model("llama-3.1-8b"), load_cluster("h100-sxm-1x8"),
                   Plan(groups=(ReplicaGroup(tp=1, max_model_len=8192),)), req)
    a = api.model_dump(mode="json")["metrics"]
    c = cli["metrics"]
    for k in ("ttft_ms", "tpot_ms", "e2e_s", "throughput_tokens_per_s", "energy_j",
              "num_completed", "preemptions"):
        assert a[k] == c[k], k
    g = api.plan.groups[0]
    assert g.chunked_prefill is None  # the plan itself keeps "engine default"
