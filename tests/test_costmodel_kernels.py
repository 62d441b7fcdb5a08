"""Kernel paths engines really run: checkpoint dtype defaults, fp8 activation quant, Marlin,
fused MoE at small batch, MLA decode."""

from __future__ import annotations

import json

from click.testing import CliRunner

from apex_opt.cli import main
from apex_opt.specs.model import ModelSpec, load_model


def test_checkpoint_quantization_is_read_from_the_hf_config():
    ds = load_model("deepseek-v3")
    assert ds.checkpoint_dtype == "fp8" and ds.quant_scheme == "fp8_block"
    assert ds.default_weight_dtype == "fp8"
    llama = load_model("llama-3.1-8b")
    assert llama.default_weight_dtype == "bf16" and llama.quant_scheme == ""
    base = {"hidden_size": 4096, "num_hidden_layers": 2, "num_attention_heads": 32, "vocab_size": 1000,
            "max_position_embeddings": 4096, "intermediate_size": 14336}
    ct = dict(base, quantization_config={"quant_method": "compressed-tensors", "config_groups": {
        "group_0": {"weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}})
    spec = ModelSpec.from_hf_config(ct)
    assert (spec.checkpoint_dtype, spec.quant_scheme) == ("fp8", "fp8_channel")
    awq = ModelSpec.from_hf_config(dict(base, quantization_config={"quant_method": "awq", "bits": 4}))
    assert (awq.default_weight_dtype, awq.quant_scheme) == ("int4", "int4_group")
    mo = ModelSpec.from_hf_config(dict(base, quantization_config={"quant_method": "modelopt",
                                                                  "quant_algo": "FP8"}))
    assert (mo.default_weight_dtype, mo.quant_scheme) == ("fp8", "fp8_tensor")


def test_deepseek_v3_fits_one_h200_node_without_flags():
    res = CliRunner().invoke(main, ["check", "--model", "deepseek-v3", "--cluster", "h200-1x8", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["options"]["weight_dtype"] == "fp8"
    assert any(r["tp"] == 8 and r["pp"] == 1 for r in doc["feasible"])
    # an explicit --weight-dtype still wins: bf16 DeepSeek-V3 does not fit one node
    res = CliRunner().invoke(main, ["check", "--model", "deepseek-v3", "--cluster", "h200-1x8",
                                    "--weight-dtype", "bf16", "--json"])
    assert res.exit_code == 3
