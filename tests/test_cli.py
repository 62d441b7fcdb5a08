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
    for e in ("vllm-0.6", "sglang"):
        r = run("simulate", "--model", "llama-3.1-8b", "--cluster", "h100-sxm-1x8", "--tp", "1",
                "--rate", "2", "--num-requests", "40", "--prompt-len", "300", "--output-len", "20",
                "--engine", e, "--json")
        assert r.exit_code == 0, r.output
        docs[e] = json.loads(r.output)
        assert docs[e]["engine"].startswith(e)
        assert docs[e]["metrics"]["num_completed"] == 40
    # V0's serial host loop vs SGLang's overlapped one: same workload, different latency
    assert docs["vllm-0.6"]["metrics"]["tpot_ms"]["mean"] != docs["sglang"]["metrics"]["tpot_ms"]["mean"]
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
])
def test_invalid_parallel_shapes_are_bad_input(args, needle):
    for cmd in (["simulate", "--rate", "1", "--num-requests", "3", "--prompt-len", "10",
                 "--output-len", "3"], ["estimate", "--batch", "decode:1x10"]):
        r = run(*cmd, *args)
        one_line_error(r, 2, needle)


def test_tensor_parallel_across_nodes_is_unmodelled_not_bad_input():
    """vLLM / SGLang can run TP across nodes; apex-opt does not model it: exit 3 with the fix."""
    for cmd in (["simulate", "--rate", "1", "--num-requests", "3", "--prompt-len", "10",
                 "--output-len", "3"], ["estimate", "--batch", "decode:1x10"]):
        r = run(*cmd, "--cluster", "h100-sxm-2x8", "--tp", "16")
        assert r.exit_code == 3, r.output
        assert "inside one node only" in r.output and "--pp across nodes" in r.output
        assert "Traceback" not in r.output


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


# ------------------------------------------------------------------------- solve output (issue 10)
_WL = ("num_requests: 40\nseed: 1\narrival: {process: poisson, rate: 2}\nprompt_len: 300\n"
       "output_len: 50\n")
_SLO_P99 = ("ttft_ms: {target: 500, percentile: 99}\ntpot_ms: 40\n"
            "constraints: {max_gpus: 2, weight_dtypes: [bf16, int4], kv_dtypes: [bf16], max_pp: 1}\n")


@pytest.fixture(scope="module")
def solved(tmp_path_factory):
    d = tmp_path_factory.mktemp("solve")
    (d / "wl.yaml").write_text(_WL)
    (d / "slo.yaml").write_text(_SLO_P99)
    r = run("solve", "--model", "llama-3.1-8b", "--workload", str(d / "wl.yaml"), "--slo",
            str(d / "slo.yaml"), "--executor", "serial", "--max-model-len", "16384", "--hf-id",
            "my-org/llama-8b-awq", "--json")
    assert r.exit_code == 0, r.output
    # p99 over 40 requests is their slowest: a warning on stderr, the document alone on stdout
    assert "p99 is its slowest request" in r.stderr
    return json.loads(r.stdout)


def test_solve_json_has_structured_launch_data(solved):
    lp = solved["launch_plans"]["vllm"]
    assert lp["script"] == solved["plans"][0]["launch"]["vllm"]
    server = next(p for p in lp["processes"] if p["role"] == "server")
    assert {"node", "pool", "device_ids", "port", "env", "argv", "command"} <= set(server)
    argv = server["argv"]
    assert argv[2] == "my-org/llama-8b-awq"                 # --hf-id is the model argument
    assert argv[argv.index("--max-model-len") + 1] == "16384"  # the user's --max-model-len
    assert all(g["config"]["max_model_len"] == 16384 for p in solved["plans"] for g in p["groups"])
    assert solved["slo"]["constraints"]["max_model_len"] == 16384


def test_solve_tables_follow_the_slo(solved, capsys):
    from apex_opt.report.tables import render_solve
    from apex_opt.search.results import SolveResult

    doc = {k: v for k, v in solved.items() if k != "launch_plans"}
    render_solve(SolveResult.model_validate(doc))
    out = capsys.readouterr().out
    assert "TTFT p99 ms" in out and "TPOT p90 ms" in out and "TTFT p90" not in out
    assert "dropped" in out
    assert "SLO: TTFT p99 <= 500 ms, TPOT p90 <= 40 ms; met when each percentile holds" in out
    assert "attainment" in out
    assert "workload: " in out and "40 requests" in out
    assert "# node 0 of pool h100" in out and " \\\n    --port" in out


def test_workload_header_names_the_bundled_default():
    from apex_opt.report.tables import workload_line

    line = workload_line({"source": "/x/apex_opt/data/examples/default-workload.yaml",
                          "num_requests": 500, "rate_req_s": 2.9,
                          "prompt_tokens": {"mean": 1064.0, "max": 8192.0},
                          "output_tokens": {"mean": 253.0, "max": 1272.0}})
    assert line.startswith("workload: bundled default default-workload.yaml (500 requests, 2.9 req/s")


@pytest.mark.slow  # an end-to-end infeasible solve with verified fixes (~10 s on 2 cores)
def test_infeasible_solve_json_is_still_a_document(tmp_path):
    (tmp_path / "wl.yaml").write_text(_WL)
    (tmp_path / "slo.yaml").write_text("constraints: {weight_dtypes: [bf16]}\n")
    r = run("solve", "--model", "llama-3.1-405b", "--workload", str(tmp_path / "wl.yaml"),
            "--slo", str(tmp_path / "slo.yaml"), "--json")
    assert r.exit_code == 3
    doc = json.loads(r.output[r.output.index("{"):])
    assert doc["status"] == "infeasible" and doc["schema_version"] == 1
    assert "weight_dtypes" in doc["conflicting_groups"]
    assert doc["fixes"] and doc["diagnosis"].startswith("no plan for llama-3.1-405b")
    assert {"closest_plans", "slo", "workload"} <= set(doc)


def test_infeasible_document_carries_the_closest_simulated_plans(solved):
    from apex_opt.errors import InfeasibleError
    from apex_opt.report.tables import infeasible_document
    from apex_opt.search.results import PlanOut

    plans = [PlanOut.model_validate(p) for p in solved["plans"][:2]]
    exc = InfeasibleError("none of the simulated plans meets the SLO",
                          {"conflicting_groups": ["tpot_ms"], "fixes": [], "stage": "simulation",
                           "closest_plans": plans})
    doc = infeasible_document(exc, model="m", cluster="c", slo={"tpot_ms": None}, workload={})
    json.dumps(doc)
    assert [p["label"] for p in doc["closest_plans"]] == [p.label for p in plans]
    assert doc["stage"] == "simulation" and doc["closest_plans"][0]["metrics"]


def test_closest_plans_table_numbers_its_rows(solved, capsys):
    # closest plans carry rank 0 (ranks number the plans that meet the SLO): the table numbers them
    from apex_opt.report.tables import render_infeasible

    plans = [dict(p, rank=0) for p in solved["plans"][:2]]
    render_infeasible({"closest_plans": plans, "slo": None})
    rows = [ln for ln in capsys.readouterr().out.splitlines() if plans[0]["label"][:12] in ln
            or plans[1]["label"][:12] in ln]
    assert [ln.split("│")[1].strip() for ln in rows] == ["1", "2"]


def test_solve_max_model_len_beyond_the_model_is_exit_2():
    r = run("solve", "--model", "llama-3.2-1b", "--max-model-len", "999999")
    assert r.exit_code == 2 and "--max-model-len" in r.output


def test_simulate_refuses_what_vllm_refuses():
    r = run("simulate", "--model", "llama-3.1-8b", "--tp", "1", "--engine", "vllm-0.6",
            "--max-model-len", "8192", "--max-num-batched-tokens", "4096", "--no-chunked-prefill",
            "--rate", "1", "--num-requests", "4", "--prompt-len", "16", "--output-len", "4")
    assert r.exit_code == 2
    assert "max_num_batched_tokens (4096) < max_model_len (8192)" in r.output


def test_simulate_header_names_workload_slo_and_dropped(tmp_path):
    (tmp_path / "slo.yaml").write_text("ttft_ms: {target: 200, percentile: 99}\n")
    r = run("simulate", "--model", "llama-3.2-1b", "--tp", "1", "--rate", "2", "--num-requests",
            "10", "--prompt-len", "64", "--output-len", "8", "--slo", str(tmp_path / "slo.yaml"))
    assert r.exit_code == 0, r.output
    assert "workload: synthetic:cli (10 requests" in r.output
    assert "SLO: TTFT p99 <= 200 ms" in r.output
    assert "10 requests completed, 0 dropped" in r.output


def test_help_texts_show_the_new_flags_with_examples():
    r = run("solve", "--help")
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    for needle in ("--max-model-len", "--hf-id", "Example: --max-model-len 32768",
                   "--hf-id my-org/my-model", "--plot plans.png", "launch_plans"):
        assert needle in text, needle
    r = run("schema", "--help")
    assert "apex-opt schema cluster" in r.output and "bundled device name" in r.output


# ---------------------------------------------------------------- --help for newcomers (audit)
def _all_commands():
    from apex_opt.cli import main

    out = []
    for name, cmd in sorted(main.commands.items()):
        out.append([name])
        for sub in sorted(getattr(cmd, "commands", {}) or {}):
            out.append([name, sub])
    return out


def _examples(help_text: str) -> list[str]:
    """The `apex-opt ...` example commands of a help text, continuation lines joined."""
    cmds, cur = [], None
    for ln in help_text.splitlines():
        s = ln.strip()
        if cur is not None:
            cur += " " + s
        elif s.startswith("apex-opt ") and not s.startswith("apex-opt: "):
            cur = s
        else:
            continue
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
            continue
        cmds.append(cur.split("  #")[0].strip())
        cur = None
    return cmds


@pytest.mark.parametrize("path", _all_commands(), ids=lambda p: " ".join(p))
def test_every_command_help_has_a_purpose_and_an_example(path):
    import re

    r = run(*path, "--help")
    assert r.exit_code == 0, r.output
    body = r.output.split("Options:")[0]
    assert len(body.splitlines()) >= 3  # usage line + a purpose paragraph
    assert _examples(r.output), f"`apex-opt {' '.join(path)} --help` shows no example"
    # a lost line-continuation backslash in a docstring glues two example lines together with a
    # run of spaces (solve showed '--hf-id my-org/my-model           --cluster ...')
    for ex in _examples(r.output):
        assert not re.search(r"\S {4,}--", ex), ex


@pytest.mark.parametrize("path", [["models"], ["models", "show"], ["clusters"], ["engines"],
                                  ["schema"]], ids=lambda p: " ".join(p))
def test_cheap_help_examples_work_when_pasted(path):
    import shlex

    r = run(*path, "--help")
    exs = [e for e in _examples(r.output) if e.split()[1:1 + len(path)] == path]
    assert exs
    for ex in exs:
        if "my-" in ex:  # stands for the user's own file
            continue
        argv = shlex.split(ex.split(">")[0])[1:]  # `... > file`: the redirection is the shell's
        res = run(*argv)
        assert res.exit_code == 0, (ex, res.output[-400:])


def test_profile_error_is_the_only_line(tmp_path, monkeypatch):
    # before: "profiling on cpu ..." then the error: two lines for one mistake
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    r = run("profile", "--out", str(tmp_path / "p"), "--quick", "--device", "cpu")
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "apex-opt[profile]" in lines[0], r.output
    assert not (tmp_path / "p").exists()


def test_mixed_chunk_is_an_sglang_flag():
    base = ("simulate", "--model", "llama-3.1-8b", "--tp", "1", "--rate", "2", "--num-requests",
            "20", "--prompt-len", "256", "--output-len", "16")
    one_line_error(run(*base, "--mixed-chunk"), 2, "mixed_chunk", "vllm")
    r = run(*base, "--engine", "sglang", "--mixed-chunk", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["metrics"]["num_completed"] == 20
