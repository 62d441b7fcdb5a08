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
