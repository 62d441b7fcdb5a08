"""Bad input found by an audit of every command: each case is exactly one `apex-opt: error:` line
on stderr naming the file (or <command line>), the field and the value, exit 2, no traceback and
no file written. Small and fast: llama-3.2-1b, a handful of requests, solve stopped before its
search."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from apex_opt.cli import main

SIM = ["simulate", "--model", "llama-3.2-1b", "--tp", "1"]
SYNTH = ["--rate", "5", "--num-requests", "4", "--prompt-len", "100", "--output-len", "10"]
SOLVE = ["solve", "--model", "llama-3.2-1b", "--time-limit", "1"]
LLAMA_1B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
            "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
            "max_position_embeddings": 131072, "tie_word_embeddings": True,
            "torch_dtype": "bfloat16"}
CLUSTER = ("name: lab\npools:\n  - name: h100\n    device: {device}\n    nodes: 1\n"
           "    gpus_per_node: 8\n    intra_node: {{kind: nvswitch, bandwidth_gbps: 450, "
           "latency_us: {latency}}}\n")
DEVICE = ("{{name: d, memory_gib: 80, peak_tflops: {{bf16: {tflops}}}, hbm_bandwidth_gbps: {hbm}, "
          "power_limit_w: 700, idle_power_w: 80{extra}}}")
WORKLOAD = "num_requests: {n}\narrival: {{process: poisson, rate: {rate}}}\nprompt_len: 100\n" \
           "output_len: 10\n"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return p


def one_error(r, *needles):
    """The rule: exit 2, exactly one stderr line, `apex-opt: error: ...`, every needle in it."""
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    lines = r.stderr.splitlines()
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("apex-opt: error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ------------------------------------------------------------------ nan / inf in float flags
@pytest.mark.parametrize("args, flag", [
    (SIM + ["--concurrency", 2, "--num-requests", 4, "--prompt-len", 10, "--output-len", 5,
            "--client-ramp", "nan"], "--client-ramp"),
    (SIM + SYNTH + ["--sampling-top-p", "nan"], "--sampling-top-p"),
    (SIM + SYNTH + ["--gpu-memory-utilization", "nan"], "--gpu-memory-utilization"),
    (SIM + ["--rate", "inf", "--num-requests", 4, "--prompt-len", 10, "--output-len", 5],
     "--rate"),
    (["check", "--model", "llama-3.2-1b", "--gpu-memory-utilization", "nan"],
     "--gpu-memory-utilization"),
    (SOLVE + ["--time-limit", "nan"], "--time-limit"),
])
def test_nan_or_inf_in_a_float_flag_is_one_line(args, flag):
    one_error(run(*args), flag, "not a finite number")


# ---------------------------------------------------------------------------------- traces
def _trace(tmp_path, name, rows):
    return write(tmp_path, name, "\n".join(json.dumps(r) for r in rows) + "\n")


@pytest.mark.parametrize("row, field", [
    ({"timestamp": 0, "input_length": 1e30, "output_length": 10}, "input_length"),
    ({"timestamp": 0, "input_length": 100, "output_length": 10 ** 20}, "output_length"),
    ({"StartTimeOffset": 0, "ContextTokens": 2 ** 40, "GeneratedTokens": 1}, "ContextTokens"),
])
def test_trace_token_count_beyond_int32_is_one_line(tmp_path, row, field):
    f = _trace(tmp_path, "t.jsonl", [row])
    one_error(run(*SIM, "--trace", f), "t.jsonl, line 1", f"field '{field}'", "absurd")


def test_csv_token_count_beyond_int32_is_one_line(tmp_path):
    f = write(tmp_path, "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n0,1" + "0" * 20 + ",5\n")
    one_error(run(*SIM, "--trace", f), "t.csv, line 2", "field 'ContextTokens'", "absurd")


@pytest.mark.parametrize("rows, field", [
    ([{"timestamp": 1e300, "input_length": 100, "output_length": 10}], "timestamp"),
    ([{"timestamp": 1e16, "input_length": 100, "output_length": 10}] * 2, "timestamp"),
    ([{"StartTimeOffset": 0, "ContextTokens": 100, "GeneratedTokens": 10},
      {"StartTimeOffset": 1e22, "ContextTokens": 100, "GeneratedTokens": 10}], "StartTimeOffset"),
])
def test_trace_arrival_time_beyond_317_years_is_one_line(tmp_path, rows, field):
    f = _trace(tmp_path, "t.jsonl", rows)
    one_error(run(*SIM, "--trace", f), f"field '{field}'", "absurd")


@pytest.mark.parametrize("t", ["1e12", "1e300"])
def test_csv_arrival_time_beyond_317_years_is_one_line(tmp_path, t):
    f = write(tmp_path, "t.csv", f"TIMESTAMP,ContextTokens,GeneratedTokens\n0,100,5\n{t},100,5\n")
    one_error(run(*SIM, "--trace", f), "t.csv, line 3", "field 'TIMESTAMP'", "absurd", t)


def test_unix_epoch_trace_times_still_load(tmp_path):
    f = _trace(tmp_path, "t.jsonl", [
        {"StartTimeOffset": 1_700_000_000_000_000_000, "ContextTokens": 100, "GeneratedTokens": 5},
        {"StartTimeOffset": 1_700_000_001_000_000_000, "ContextTokens": 100, "GeneratedTokens": 5}])
    assert run(*SIM, "--trace", f).exit_code == 0


def test_trace_key_given_twice_is_one_line(tmp_path):
    f = write(tmp_path, "t.jsonl", '{"StartTimeOffset": 0, "ContextTokens": 100, '
                                   '"GeneratedTokens": 10, "StartTimeOffset": 5}\n')
    one_error(run(*SIM, "--trace", f), "t.jsonl, line 1", "field 'StartTimeOffset'", "twice")


def test_csv_column_given_twice_is_one_line(tmp_path):
    f = write(tmp_path, "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens,timestamp\n0,100,5,9\n")
    one_error(run(*SIM, "--trace", f), "t.csv", "field 'header'", "TIMESTAMP twice")


# -------------------------------------------------------------------------- workload / SLO
@pytest.mark.parametrize("text, field", [
    (WORKLOAD.format(n="true", rate=3), "num_requests"),
    (WORKLOAD.format(n="'20'", rate=3), "num_requests"),
    (WORKLOAD.format(n=20, rate="true"), "arrival.rate"),
    (WORKLOAD.format(n=20, rate="'3'"), "arrival.rate"),
])
def test_workload_boolean_or_quoted_number_is_one_line(tmp_path, text, field):
    f = write(tmp_path, "w.yaml", text)
    one_error(run(*SIM, "--workload", f), "w.yaml", f"field '{field}'")


def test_workload_rate_spreading_beyond_317_years_is_one_line(tmp_path):
    f = write(tmp_path, "w.yaml", WORKLOAD.format(n=20, rate="1e-12"))
    one_error(run(*SIM, "--workload", f), "w.yaml", "field 'arrival'", "requests per second")
    one_error(run(*SIM, "--rate", "1e-12", "--num-requests", 20, "--prompt-len", 10,
                  "--output-len", 5), "<command line>", "field '--rate'", "1e-12")


@pytest.mark.parametrize("text, field", [
    ("attainment: true\n", "attainment"),
    ("ttft_ms: {target: 2000, percentile: '99'}\n", "ttft_ms.percentile"),
    ("ttft_ms: {target: 2000, percentile: true}\n", "ttft_ms.percentile"),  # not "p1, p100?"
    ("constraints: {max_gpus: true}\n", "constraints.max_gpus"),
])
def test_slo_boolean_or_quoted_number_is_one_line(tmp_path, text, field):
    f = write(tmp_path, "slo.yaml", text)
    one_error(run(*SIM, *SYNTH, "--slo", f), "slo.yaml", f"field '{field}'", "should be a valid")


def test_slo_percentile_100_is_one_line(tmp_path):
    f = write(tmp_path, "slo.yaml", "ttft_ms: {target: 2000, percentile: 100}\n")
    one_error(run(*SIM, *SYNTH, "--slo", f), "slo.yaml", "field 'ttft_ms.percentile'",
              "slowest single request", "(got 100)")


def test_slo_percentile_999_still_loads(tmp_path):
    f = write(tmp_path, "slo.yaml", "ttft_ms: {target: 2000, percentile: 99.9}\n")
    assert run(*SIM, *SYNTH, "--slo", f).exit_code == 0


# ------------------------------------------------------------------------------ JSON files
def test_json_key_given_twice_is_one_line(tmp_path):
    f = write(tmp_path, "w.json", '{"num_requests": 5, "arrival": {"process": "poisson", '
                                  '"rate": 3}, "prompt_len": 100, "output_len": 10, '
                                  '"num_requests": 7}')
    one_error(run(*SIM, "--workload", f), "w.json", "field 'num_requests'", "twice")
    cfg = json.dumps(LLAMA_1B)[:-1] + ', "hidden_size": 4096}'
    f = write(tmp_path, "config.json", cfg)
    one_error(run("models", "show", f), "config.json", "field 'hidden_size'", "twice")


def test_empty_json_file_says_it_is_empty(tmp_path):
    f = write(tmp_path, "config.json", "\n")
    one_error(run("models", "show", f), "config.json", "file is empty")


# ---------------------------------------------------------------------------------- cluster
@pytest.mark.parametrize("device, latency, field", [
    (DEVICE.format(tflops="1e12", hbm=3000, extra=""), 1, "pools[0].device.peak_tflops"),
    (DEVICE.format(tflops=900, hbm="3e9", extra=""), 1, "pools[0].device.hbm_bandwidth_gbps"),
    ("h100-sxm-80gb", "1e9", "pools[0].intra_node.latency_us"),
])
def test_cluster_absurd_numbers_are_one_line(tmp_path, device, latency, field):
    f = write(tmp_path, "c.yaml", CLUSTER.format(device=device, latency=latency))
    one_error(run("check", "--model", "llama-3.2-1b", "--cluster", f), "c.yaml",
              f"field '{field}'", "absurd")


def test_cluster_unknown_device_profile_names_the_file(tmp_path):
    f = write(tmp_path, "c.yaml", CLUSTER.format(
        device=DEVICE.format(tflops=900, hbm=3000, extra=", profile: nonexist"), latency=1))
    for cmd in (["check"], ["estimate", "--batch", "decode:8x100"]):
        one_error(run(*cmd, "--model", "llama-3.2-1b", "--cluster", f), "c.yaml",
                  "field 'pools[0].device.profile'", "'nonexist'")


# ---------------------------------------------------------------------------- model configs
@pytest.mark.parametrize("extra, field, needle", [
    ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}},
     "quantization_config.quant_method", "'bitsandbytes'"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 3}}, "quantization_config.bits",
     "(got 3)"),
    ({"quantization_config": {"bits": 4}}, "quantization_config.quant_method", "missing"),
    ({"quantization_config": "fp8"}, "quantization_config", "mapping"),
    ({"torch_dtype": "banana"}, "torch_dtype", "'banana'"),
])
def test_model_checkpoint_format_it_cannot_size_is_one_line(tmp_path, extra, field, needle):
    f = write(tmp_path, "config.json", json.dumps({**LLAMA_1B, **extra}))
    one_error(run("check", "--model", f), "config.json", f"field '{field}'", needle)


def test_model_checkpoint_formats_it_sizes_still_load(tmp_path):
    for q in ({"quant_method": "awq", "bits": 4}, {"quant_method": "fp8"}, None):
        f = write(tmp_path, "config.json", json.dumps({**LLAMA_1B, "quantization_config": q}))
        assert run("models", "show", f).exit_code == 0, q


# -------------------------------------------------------------------- command-line values
@pytest.mark.parametrize("args, flag", [
    (["check", "--model", ""], "--model"),
    (["check", "--cluster", " "], "--cluster"),
    (["models", "show", ""], "REF"),
    (["check", "--model", "no-such-model"], "--model"),
    (["check", "--cluster", "no-such-cluster"], "--cluster"),
    (["models", "show", "no-such-model"], "REF"),
])
def test_empty_or_unknown_model_and_cluster_name_the_flag(args, flag):
    one_error(run(*args), "<command line>", f"field '{flag}'")


@pytest.mark.parametrize("args, flag", [
    (SIM + SYNTH + ["--slo", ""], "--slo"),
    (SIM + ["--trace", ""], "--trace"),
    (SOLVE + ["--workload", ""], "--workload"),
    (SOLVE + ["--slo", ""], "--slo"),
    (SOLVE + ["--plot", ""], "--plot"),
])
def test_empty_path_flags_are_refused_not_ignored(args, flag):
    one_error(run(*args), flag, "empty path")


@pytest.mark.parametrize("cmd", [["check"], ["estimate", "--batch", "decode:1x10"],
                                 SIM[:1] + ["--tp", "1"] + SYNTH, SOLVE[:1]])
def test_unknown_engine_names_the_command_line_and_flag(cmd):
    one_error(run(*cmd, "--model", "llama-3.2-1b", "--engine", "nope"),
              "<command line>: field '--engine'", "'nope'")


@pytest.mark.parametrize("args, flag", [
    (["--batch", "decode:0x1"], "--batch"),
    (["--batch", "decode:\uff18x100"], "--batch"),  # full-width digit
    (["--batch", "decode:8x200000"], "--batch"),
    (["--batch", "decode:8x100", "--pool", "nope"], "--pool"),
    (["--batch", "decode:8x100", "--tp", "3"], "--tp/--pp/--ep"),
])
def test_estimate_flag_errors_name_the_command_line(args, flag):
    one_error(run("estimate", "--model", "llama-3.2-1b", *args), f"<command line>: field '{flag}'")


@pytest.mark.parametrize("args, flag", [
    (["--mixed-chunk"], "--mixed-chunk"),
    (["--max-num-batched-tokens", "10"], "--max-num-batched-tokens"),
    (["--tp", "2", "--attention-dp", "2"], "--attention-dp"),
])
def test_simulate_plan_flag_errors_name_the_flag(args, flag):
    one_error(run(*SIM, *SYNTH, *args), f"<command line>: field '{flag}'")


def test_simulate_seed_beyond_int64_is_a_flag_error():
    one_error(run(*SIM, *SYNTH, "--seed", 10 ** 22), "--seed")


def test_solve_error_during_the_search_is_the_only_stderr_line():
    # used to be preceded by an empty line the progress bar left on a non-terminal stderr
    one_error(run(*SOLVE, "--attention-dp", "3"), "<command line>: field '--attention-dp'")


def test_solve_flag_errors_name_the_command_line():
    one_error(run(*SOLVE, "--hf-id", " "), "<command line>: field '--hf-id'")
    one_error(run(*SOLVE, "--attention-dp", "x"), "<command line>: field '--attention-dp'")


def test_solve_plot_format_is_refused_before_the_search(tmp_path):
    out = tmp_path / "plans.gif"
    one_error(run(*SOLVE, "--plot", out), "<command line>: field '--plot'", ".png")
    assert not out.exists()


def test_solve_errors_name_the_files_not_their_labels(tmp_path):
    w = write(tmp_path, "one.yaml", WORKLOAD.format(n=1, rate=3))
    one_error(run(*SOLVE, "--workload", w), "one.yaml: field 'num_requests'")
    c = write(tmp_path, "lab.yaml", CLUSTER.format(device="h100-sxm-80gb", latency=1))
    one_error(run(*SOLVE, "--cluster", c, "--objective", "cost"),
              "lab.yaml: field 'pools[0].gpu_price_per_hour'")
    s = write(tmp_path, "slo.yaml", "objective: throughput\n")
    one_error(run(*SOLVE, "--slo", s), "slo.yaml: field 'objective'")
    s2 = write(tmp_path, "slo2.yaml", "attainment: 0.9\n")
    one_error(run(*SOLVE, "--slo", s2, "--objective", "throughput"),
              "<command line>: field '--objective'")
