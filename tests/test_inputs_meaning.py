"""Inputs are checked for meaning, not only type: percentiles written as fractions, targets in the
wrong unit, misspelt SLO keys, vision-language and state-space model configs."""

from __future__ import annotations

import json
import warnings

import pytest
from click.testing import CliRunner

from apex_opt.cli import main
from apex_opt.errors import ApexWarning, InputError
from apex_opt.specs.model import load_model
from apex_opt.specs.slo import load_slo


def run(*args):
    return CliRunner().invoke(main, list(args))


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------------------- SLO
@pytest.mark.parametrize("p, hint", [(0.99, "did you mean 99?"), (0.9, "did you mean 90?"),
                                     (0.5, "did you mean 50?")])
def test_percentile_written_as_a_fraction(tmp_path, p, hint):
    f = write(tmp_path, "slo.yaml", f"ttft_ms: {{target: 2000, percentile: {p}}}\n")
    with pytest.raises(InputError) as e:
        load_slo(f)
    msg = str(e.value)
    assert hint in msg and "ttft_ms.percentile" in msg and "slo.yaml" in msg


def test_real_percentiles_still_load(tmp_path):
    f = write(tmp_path, "slo.yaml", "ttft_ms: {target: 2000, percentile: 99}\ntpot_ms: 50\n")
    slo = load_slo(f)
    assert slo.ttft_ms.percentile == 99 and slo.tpot_ms.percentile == 90


def test_attainment_written_as_a_percentage(tmp_path):
    f = write(tmp_path, "slo.yaml", "attainment: 95\n")
    with pytest.raises(InputError, match=r"did you mean 0.95\?"):
        load_slo(f)


@pytest.mark.parametrize("text, needle", [
    ("ttft_msec: 200\n", "did you mean 'ttft_ms'?"),
    ("tpot: 50\n", "did you mean 'tpot_ms'?"),
    ("constraints: {max_gpu: 4}\n", "did you mean 'max_gpus'?"),
    ("ttft_ms: {target: 200, percentil: 99}\n", "did you mean 'percentile'?"),
])
def test_slo_typos_get_did_you_mean(tmp_path, text, needle):
    f = write(tmp_path, "slo.yaml", text)
    with pytest.raises(InputError) as e:
        load_slo(f)
    assert needle in str(e.value)


def test_typo_far_from_any_field_has_no_suggestion(tmp_path):
    f = write(tmp_path, "slo.yaml", "banana: 1\n")
    with pytest.raises(InputError) as e:
        load_slo(f)
    assert "unknown field" in str(e.value) and "did you mean" not in str(e.value)


@pytest.mark.parametrize("text, field", [("ttft_ms: 0.5\n", "ttft_ms"), ("tpot_ms: 0.04\n", "tpot_ms"),
                                         ("e2e_s: 30000\n", "e2e_s")])
def test_implausible_units_warn(tmp_path, text, field):
    f = write(tmp_path, "slo.yaml", text)
    with pytest.warns(ApexWarning, match=field):
        load_slo(f)


def test_plausible_targets_do_not_warn(tmp_path):
    f = write(tmp_path, "slo.yaml", "ttft_ms: 200\ntpot_ms: 20\ne2e_s: 30\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ApexWarning)
        load_slo(f)


def test_cli_prints_the_unit_warning_as_one_line(tmp_path):
    f = write(tmp_path, "slo.yaml", "ttft_ms: 0.2\n")
    r = run("simulate", "--model", "llama-3.2-1b", "--tp", "1", "--rate", "1", "--num-requests", "4",
            "--prompt-len", "16", "--output-len", "4", "--slo", str(f), "--json")
    assert r.exit_code == 0, r.output
    warn_lines = [ln for ln in r.output.splitlines() if ln.startswith("apex-opt: warning:")]
    assert len(warn_lines) == 1 and "ttft_ms: 0.2 ms" in warn_lines[0]


def test_cli_percentile_fraction_is_exit_2(tmp_path):
    f = write(tmp_path, "slo.yaml", "tpot_ms: {target: 50, percentile: 0.99}\n")
    r = run("solve", "--slo", str(f))
    assert r.exit_code == 2
    assert "did you mean 99?" in r.output and "Traceback" not in r.output


# -------------------------------------------------------------------------------------- models
_LLAVA = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
          "image_token_index": 32000,
          "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024,
                            "num_hidden_layers": 24, "num_attention_heads": 16},
          "text_config": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
                          "num_attention_heads": 32, "num_key_value_heads": 32,
                          "intermediate_size": 11008, "vocab_size": 32064,
                          "max_position_embeddings": 4096}}
_QWEN2_VL = {"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
             "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
             "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
             "max_position_embeddings": 32768, "image_token_id": 151655,
             "vision_config": {"depth": 32, "embed_dim": 1280}}


@pytest.mark.parametrize("cfg, layers, kv_heads", [(_LLAVA, 32, 32), (_QWEN2_VL, 28, 4)])
def test_vision_language_plans_its_language_model_with_a_warning(tmp_path, cfg, layers, kv_heads):
    f = write(tmp_path, "config.json", json.dumps(cfg))
    with pytest.warns(ApexWarning) as rec:
        m = load_model(f)
    msg = str(rec[0].message)
    assert cfg["architectures"][0] in msg and "vision tower" in msg and "image tokens" in msg
    assert "vision_config" in msg
    assert m.num_layers == layers and m.num_kv_heads == kv_heads


def test_text_only_models_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ApexWarning)
        load_model("llama-3.1-8b")


@pytest.mark.parametrize("cfg, arch", [
    ({"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": 2560,
      "num_hidden_layers": 64, "vocab_size": 50280, "state_size": 16}, "MambaForCausalLM"),
    ({"architectures": ["JambaForCausalLM"], "model_type": "jamba", "hidden_size": 4096,
      "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
      "intermediate_size": 14336, "vocab_size": 65536, "max_position_embeddings": 262144,
      "attn_layer_period": 8, "num_experts": 16, "num_experts_per_tok": 2}, "JambaForCausalLM"),
    ({"architectures": ["MyHybridLM"], "model_type": "custom", "hidden_size": 1024,
      "num_hidden_layers": 4, "num_attention_heads": 8, "intermediate_size": 4096,
      "vocab_size": 1000, "max_position_embeddings": 4096,
      "layer_types": ["linear_attention", "full_attention", "linear_attention", "full_attention"]},
     "MyHybridLM"),
])
def test_ssm_and_hybrid_are_one_line_exit_2(tmp_path, cfg, arch):
    f = write(tmp_path, "config.json", json.dumps(cfg))
    r = run("models", "show", str(f))
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("apex-opt: error:")
    assert f"architecture {arch} is not supported" in lines[0]


def test_sliding_window_layer_types_are_still_attention(tmp_path):
    cfg = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 1152,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
           "head_dim": 256, "intermediate_size": 6912, "vocab_size": 262144,
           "max_position_embeddings": 32768, "layer_types": ["sliding_attention", "full_attention"]}
    f = write(tmp_path, "config.json", json.dumps(cfg))
    assert load_model(f).num_layers == 2


# ------------------------------------------------- non-decoder architectures (audit, one line each)
@pytest.mark.parametrize("cfg, kind", [
    ({"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": 512,
      "num_layers": 6, "num_heads": 8, "vocab_size": 32128, "d_ff": 2048,
      "is_encoder_decoder": True}, "encoder-decoder"),
    ({"architectures": ["MyTranslator"], "model_type": "custom", "hidden_size": 512,
      "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 2048,
      "vocab_size": 1000, "max_position_embeddings": 1024, "is_encoder_decoder": True},
     "encoder-decoder"),
    ({"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 768,
      "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
      "vocab_size": 30522, "max_position_embeddings": 512}, "encoder-only"),
    ({"architectures": ["ViTForImageClassification"], "model_type": "vit", "hidden_size": 768,
      "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
      "image_size": 224}, "vision-only"),
])
def test_non_decoder_architectures_are_one_line_exit_2(tmp_path, cfg, kind):
    f = write(tmp_path, "config.json", json.dumps(cfg))
    r = run("models", "show", str(f))
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("apex-opt: error:"), r.output
    # names the file, the field and the architecture, and says why (not "hidden_size missing")
    assert "config.json" in lines[0] and "field 'architectures'" in lines[0]
    assert cfg["architectures"][0] in lines[0] and f"{kind} model" in lines[0]


# ------------------------------------------ request lengths vs the context the engine accepts
_SIM = ("simulate", "--model", "llama-3.2-1b", "--tp", "1", "--no-progress")


def test_synthetic_prompt_beyond_the_model_context_is_exit_2():
    # llama-3.2-1b: max_position_embeddings 131072; before: exit 0 with "0 completed, 20 dropped"
    r = run(*_SIM, "--rate", "5", "--num-requests", "4", "--prompt-len", "200000",
            "--output-len", "10", "--json")
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--prompt-len + --output-len" in lines[0]
    assert "131,072" in lines[0] and "200010" in lines[0]


def test_prompt_beyond_max_model_len_flag_is_exit_2():
    r = run(*_SIM, "--rate", "5", "--num-requests", "4", "--prompt-len", "100",
            "--output-len", "10", "--max-model-len", "50")
    assert r.exit_code == 2 and "max_model_len 50" in r.output and "(got 110)" in r.output


def test_simulate_max_model_len_beyond_the_model_is_exit_2():
    # solve already refused it; simulate ran with a context vLLM refuses to start with
    r = run(*_SIM, "--rate", "5", "--num-requests", "4", "--prompt-len", "100",
            "--output-len", "10", "--max-model-len", "999999")
    assert r.exit_code == 2 and "'--max-model-len'" in r.output and "999999" in r.output


def _mooncake(tmp_path, lengths):
    lines = [json.dumps({"timestamp": 10 * i, "input_length": p, "output_length": 10,
                         "hash_ids": [i]}) for i, p in enumerate(lengths)]
    return write(tmp_path, "trace.jsonl", "\n".join(lines) + "\n")


def test_trace_with_every_request_too_long_is_exit_2(tmp_path):
    f = _mooncake(tmp_path, [999_999_999, 500_000])
    r = run(*_SIM, "--trace", str(f))
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "trace.jsonl" in lines[0] and "input + output tokens" in lines[0]


def test_trace_with_some_requests_too_long_warns_and_runs(tmp_path):
    f = _mooncake(tmp_path, [100, 500_000, 120])
    r = run(*_SIM, "--trace", str(f), "--json")
    assert r.exit_code == 0, r.output
    warn = [ln for ln in r.output.splitlines() if ln.startswith("apex-opt: warning:")]
    assert len(warn) == 1 and "1 of 3 requests" in warn[0] and "dropped" in warn[0]


def test_solve_workload_longer_than_the_context_is_exit_2_not_infeasible(tmp_path):
    # before: exit 3 "the offered request rate conflict" after a full search
    f = write(tmp_path, "w.yaml", "name: w\nnum_requests: 10\narrival: {process: poisson, rate: 1}\n"
                                  "prompt_len: 999999\noutput_len: 10\n")
    r = run("solve", "--model", "llama-3.2-1b", "--workload", str(f))
    assert r.exit_code == 2 and "w.yaml" in r.output and "prompt_len + output_len" in r.output


# ------------------------------------------------------------------------------- engines, SLO
def test_engine_with_an_empty_version_is_exit_2():
    # before: 'vllm@' silently meant 'vllm'
    r = run(*_SIM, "--rate", "5", "--num-requests", "4", "--prompt-len", "100",
            "--output-len", "10", "--engine", "vllm@")
    assert r.exit_code == 2 and "no version after '@'" in r.output and "'vllm@'" in r.output


@pytest.mark.parametrize("value, hint", [(1.5, "e.g. 0.9"), (95, "did you mean 0.95?")])
def test_attainment_hint_only_suggests_a_plausible_percentage(tmp_path, value, hint):
    # before: attainment 1.5 -> "did you mean 0.015?" (1.5 % of requests is no SLO)
    f = write(tmp_path, "slo.yaml", f"attainment: {value}\n")
    with pytest.raises(InputError) as e:
        load_slo(f)
    assert hint in str(e.value) and "0.015" not in str(e.value)


# ------------------------------------- flags that would be silently ignored or refused by vLLM
_SYN = ("--num-requests", "4", "--prompt-len", "100", "--output-len", "10")


@pytest.mark.parametrize("extra, needle", [
    (("--concurrency", "4", "--arrival", "gamma"), "--arrival does not apply with --concurrency"),
    (("--rate", "5", "--cv", "3"), "--cv only applies to --arrival gamma"),
])
def test_simulate_refuses_synthetic_flags_that_change_nothing(extra, needle):
    r = run(*_SIM, *_SYN, *extra)
    assert r.exit_code == 2 and needle in r.output


def test_simulate_refuses_arrival_flags_with_a_trace(tmp_path):
    f = _mooncake(tmp_path, [100, 120])
    r = run(*_SIM, "--trace", str(f), "--arrival", "constant")
    assert r.exit_code == 2 and "--trace and --workload bring their own arrival" in r.output


def test_simulate_gamma_with_cv_still_runs():
    r = run(*_SIM, *_SYN, "--rate", "5", "--arrival", "gamma", "--cv", "3", "--json")
    assert r.exit_code == 0, r.output


def test_check_max_model_len_beyond_the_model_is_exit_2():
    r = run("check", "--model", "llama-3.2-1b", "--max-model-len", "999999")
    assert r.exit_code == 2 and "'--max-model-len'" in r.output


def test_check_refuses_a_token_budget_vllm_refuses():
    # before: exit 0 and a table of 'fitting' shapes vLLM would not start
    r = run("check", "--model", "llama-3.2-1b", "--max-num-batched-tokens", "5",
            "--max-num-seqs", "100")
    assert r.exit_code == 2 and "max_num_batched_tokens (5) < max_num_seqs (100)" in r.output
    assert run("check", "--model", "llama-3.2-1b", "--max-num-batched-tokens", "512",
               "--max-num-seqs", "256", "--json").exit_code == 0


@pytest.mark.parametrize("batch, longest", [("decode:4x999999", "999,999"),
                                            ("prefill:1x131000@100", "131,100")])
def test_estimate_sequence_beyond_the_model_context_is_exit_2(batch, longest):
    r = run("estimate", "--model", "llama-3.2-1b", "--batch", batch)
    assert r.exit_code == 2 and "'--batch'" in r.output and longest in r.output
    assert run("estimate", "--model", "llama-3.2-1b", "--batch", "decode:4x131072",
               "--json").exit_code == 0


def test_solve_empty_hf_id_is_exit_2():
    r = run("solve", "--model", "llama-3.2-1b", "--hf-id", " ")
    assert r.exit_code == 2 and "'--hf-id'" in r.output


# -------------------------------------------------------------- cluster units, --plot (audit)
_POOL = ("name: c\npools:\n  - name: h100\n    device: h100-sxm-80gb\n    nodes: {nodes}\n"
         "    gpus_per_node: 8\n    intra_node: {{kind: nvswitch, bandwidth_gbps: {intra}, "
         "latency_us: 1.0}}\n")


@pytest.mark.parametrize("text, needle", [
    (_POOL.format(nodes=2, intra=450) + "    inter_node: {kind: infiniband, bandwidth_gbps: 400, "
                                        "latency_us: 5.0}\n", "did you write Gbit/s? 400 Gbit/s = 50 GB/s"),
    (_POOL.format(nodes=1, intra=0.45), "did you write TB/s?"),
])
def test_cluster_link_bandwidth_in_a_doubtful_unit_warns_one_line(tmp_path, text, needle):
    f = write(tmp_path, "lab.yaml", text)
    r = run("check", "--model", "llama-3.2-1b", "--cluster", str(f), "--json")
    assert r.exit_code == 0, r.output
    warn = [ln for ln in r.output.splitlines() if ln.startswith("apex-opt: warning:")]
    assert len(warn) == 1 and "lab.yaml" in warn[0] and needle in warn[0]


def test_bundled_clusters_have_plausible_units():
    from apex_opt.registry import cluster_names, load_cluster
    from apex_opt.specs.cluster import unit_warnings

    assert all(unit_warnings(load_cluster(n)) == [] for n in cluster_names())


def test_solve_plot_into_a_file_is_refused_before_the_search(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = run("solve", "--model", "llama-3.2-1b", "--plot", str(tmp_path / "afile" / "p.png"),
            "--time-limit", "0.01", "--top-k", "1")
    assert r.exit_code == 2 and "is a file, not a folder" in r.output
    assert "llama-3.2-1b on" not in r.output  # nothing was searched or printed


@pytest.mark.parametrize("text", ["ttft_ms: 2s\n", "e2e_s: '30 s'\n", "tpot_ms: 50ms\n"])
def test_slo_target_with_a_unit_in_the_value_names_the_unit(tmp_path, text):
    # before: "Input should be a valid dictionary or instance of Target"
    f = write(tmp_path, "slo.yaml", text)
    with pytest.raises(InputError) as e:
        load_slo(f)
    assert "unit of the field name" in str(e.value) and "slo.yaml" in str(e.value)


def test_simulate_unknown_pool_names_the_flag():
    # before: field 'plan.groups.pool' (an internal path the user never wrote)
    r = run(*_SIM, *_SYN, "--rate", "5", "--pool", "nope")
    assert r.exit_code == 2 and "field '--pool'" in r.output and "has h100" in r.output


def test_percentile_the_workload_cannot_measure_warns(tmp_path):
    f = write(tmp_path, "slo.yaml", "ttft_ms: {target: 2000, percentile: 99.99}\n")
    r = run(*_SIM, *_SYN, "--rate", "5", "--slo", str(f), "--json")
    assert r.exit_code == 0, r.output
    warn = [ln for ln in r.output.splitlines() if ln.startswith("apex-opt: warning:")]
    assert len(warn) == 1 and "10,000 requests" in warn[0] and "has 4" in warn[0]
    g = write(tmp_path, "ok.yaml", "ttft_ms: {target: 2000, percentile: 90}\n")
    r = run(*_SIM, *_SYN, "--rate", "5", "--slo", str(g), "--json")
    assert r.exit_code == 0 and "apex-opt: warning:" not in r.output


def test_solve_exhaustive_with_top_k_is_a_conflict():
    r = run("solve", "--model", "llama-3.2-1b", "--exhaustive", "--top-k", "3")
    assert r.exit_code == 2 and "--exhaustive" in r.output and "--top-k" in r.output


@pytest.mark.parametrize("flag", ["--ep", "--attention-dp"])
def test_simulate_degree_not_dividing_tp_names_the_flag(flag):
    # before: "field 'groups[0]': ... (+1 more error)"
    r = run(*_SIM, *_SYN, "--rate", "5", flag, "2")
    assert r.exit_code == 2 and f"field '{flag}'" in r.output and "must divide --tp (1)" in r.output
    assert "more error" not in r.output


def test_inline_device_in_a_doubtful_unit_warns(tmp_path):
    text = ("name: c\npools:\n  - name: g\n    nodes: 1\n    gpus_per_node: 8\n"
            "    intra_node: {kind: nvswitch, bandwidth_gbps: 450, latency_us: 1.0}\n"
            "    device: {name: mygpu, memory_gib: 80, peak_tflops: {bf16: 989}, "
            "hbm_bandwidth_gbps: 3.35, power_limit_w: 700, idle_power_w: 70}\n")
    f = write(tmp_path, "lab.yaml", text)
    r = run("check", "--model", "llama-3.2-1b", "--cluster", str(f), "--json")
    warn = [ln for ln in r.output.splitlines() if ln.startswith("apex-opt: warning:")]
    assert len(warn) == 1, r.output
    assert "hbm_bandwidth_gbps: 3.35 GB/s" in warn[0] and "did you write TB/s?" in warn[0]


def test_estimate_ep_not_dividing_tp_is_a_readable_line():
    # before: "field '--ep':     For further information visit https://errors.pydantic.dev/..."
    r = run("estimate", "--model", "mixtral-8x7b", "--tp", "4", "--ep", "3", "--batch", "decode:1x100")
    assert r.exit_code == 2 and "pydantic.dev" not in r.output
    assert "ep (3) must divide tp (4)" in r.output and "--tp/--pp/--ep" in r.output


def test_solve_constraint_on_an_unknown_pool_is_exit_2(tmp_path):
    # before: exit 3 "the pools you allow conflict" after a full search
    f = write(tmp_path, "slo.yaml", "constraints: {pools: [h10]}\n")
    r = run("solve", "--model", "llama-3.2-1b", "--slo", str(f))
    assert r.exit_code == 2 and "slo.yaml" in r.output and "constraints.pools" in r.output
    assert "has h100" in r.output


@pytest.mark.parametrize("name, hint", [("vLLM", "did you mean 'vllm'?"),
                                        ("SGLang", "did you mean 'sglang'?")])
def test_engine_name_in_its_brand_spelling_gets_a_hint(name, hint):
    r = run("estimate", "--model", "llama-3.2-1b", "--batch", "decode:1x10", "--engine", name)
    assert r.exit_code == 2 and hint in r.output


def test_unrelated_engine_name_has_no_hint():
    r = run("estimate", "--model", "llama-3.2-1b", "--batch", "decode:1x10", "--engine", "foo")
    assert r.exit_code == 2 and "did you mean" not in r.output


def test_a_parent_containers_consequence_is_not_counted_as_another_error():
    """A failed plan group also leaves `groups` too short: one mistake, reported once; two
    independent mistakes still say "+1 more"."""
    from apex_opt.io import validate
    from apex_opt.specs.plan import Plan
    with pytest.raises(InputError) as one:
        validate(Plan, {"groups": [{"tp": 1, "ep": 2}]}, "plan.yaml")
    assert "more error" not in str(one.value) and "ep (2) must divide tp (1)" in str(one.value)
    with pytest.raises(InputError) as two:
        validate(Plan, {"groups": [{"tp": "a", "pp": "b"}]}, "plan.yaml")
    assert "(+1 more error)" in str(two.value)
