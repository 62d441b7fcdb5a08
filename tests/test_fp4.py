"""fp4 = NVIDIA NVFP4 weights (E2M1 + one FP8-E4M3 scale per 16 elements): checkpoint detection,
memory, the W4A4 cost on Blackwell, weight-only FP4 Marlin elsewhere, refusal where no engine runs
it, launch checkpoints and the CLI (see data/kernels.yaml common.fp4 for the sources)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from apex_opt.cli import main
from apex_opt.costmodel import DeviceCostModel, fp4_memory_efficiency, fp4_path
from apex_opt.costmodel.iteration import IterationCostModel
from apex_opt.errors import InputError
from apex_opt.memory import linear_weight_bytes_per_elem, replica_memory
from apex_opt.registry import load_cluster
from apex_opt.report.launch import launch_plan
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import ModelSpec, load_model
from apex_opt.specs.plan import Plan, ReplicaConfig, ReplicaGroup


@pytest.fixture(scope="module")
def b200():
    return load_cluster("b200-1x8")


@pytest.fixture(scope="module")
def h100():
    return load_cluster("h100-sxm-1x8")


@pytest.fixture(scope="module")
def llama8():
    return load_model("llama-3.1-8b")


# ------------------------------------------------------------------------------ memory
def test_fp4_bytes_per_param_include_block_scales(llama8, b200):
    assert linear_weight_bytes_per_elem("fp4") == pytest.approx(0.5 + 1 / 16)  # 0.5625
    assert linear_weight_bytes_per_elem("int4") < linear_weight_bytes_per_elem("fp4") < 1.0
    dev = b200.pools[0].device
    w = {wd: replica_memory(llama8, dev, ReplicaConfig(tp=1, weight_dtype=wd)).weights_per_gpu_max
         for wd in ("bf16", "fp8", "fp4")}
    # embeddings + LM head stay bf16 (ModelOpt NVFP4 excludes lm_head): the difference between
    # fp8 and fp4 is exactly the linear layers' 1 - 0.5625 bytes per parameter
    emb = 2 * llama8.vocab_size * llama8.hidden_size
    linear = llama8.params_total - emb
    assert w["fp8"] - w["fp4"] == pytest.approx(linear * (1.0 - 0.5625), rel=1e-3)
    assert w["fp4"] < 0.4 * w["bf16"]  # 8B: its 1 GiB bf16 embedding + head weigh in


# ------------------------------------------------------------------------------ checkpoints
def _cfg(q: dict) -> dict:
    base = load_model("llama-3.1-8b")
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": base.hidden_size, "num_hidden_layers": base.num_layers,
            "vocab_size": base.vocab_size, "num_attention_heads": base.num_attention_heads,
            "num_key_value_heads": base.num_kv_heads, "intermediate_size": base.intermediate_size,
            "max_position_embeddings": 131072, "torch_dtype": "bfloat16", "quantization_config": q}


@pytest.mark.parametrize("q, scheme", [
    # ModelOpt NVFP4 (config.json quantization_config, flat)
    ({"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
      "exclude_modules": ["lm_head"]}, "nvfp4"),
    # hf_quant_config.json shape (nested under "quantization")
    ({"quant_method": "modelopt", "quantization": {"quant_algo": "NVFP4",
                                                   "kv_cache_quant_algo": "FP8"}}, "nvfp4"),
    ({"quant_method": "modelopt", "quant_algo": "W4A16_NVFP4"}, "nvfp4_w4a16"),
    # compressed-tensors nvfp4-pack-quantized, W4A4 and weight-only
    ({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
      "config_groups": {"group_0": {
          "weights": {"type": "float", "num_bits": 4, "group_size": 16, "strategy": "tensor_group"},
          "input_activations": {"type": "float", "num_bits": 4, "group_size": 16}}}}, "nvfp4"),
    ({"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
      "config_groups": {"group_0": {
          "weights": {"type": "float", "num_bits": 4, "group_size": 16}}}}, "nvfp4_w4a16"),
])
def test_nvfp4_checkpoint_detection(q, scheme):
    m = ModelSpec.from_hf_config(_cfg(q), name="x")
    assert (m.checkpoint_dtype, m.quant_scheme, m.default_weight_dtype) == ("fp4", scheme, "fp4")


def test_modelopt_fp8_still_fp8():
    m = ModelSpec.from_hf_config(_cfg({"quant_method": "modelopt", "quant_algo": "FP8"}), name="x")
    assert m.checkpoint_dtype == "fp8"


MODELOPT = {"name": "modelopt", "version": "0.31.0"}


@pytest.mark.parametrize("algo, dtype, scheme, kv", [
    ("FP8", "fp8", "fp8_tensor", "fp8"),
    ("FP8_PER_CHANNEL_PER_TOKEN", "fp8", "fp8_channel", "fp8"),
    ("FP8_PB_WO", "fp8", "fp8_block", "fp8"),
    ("NVFP4", "fp4", "nvfp4", "fp8"),
])
def test_modelopt_export_without_quant_method_is_inferred_like_vllm(algo, dtype, scheme, kv):
    # producer modelopt + quantization.quant_algo and no quant_method: vLLM's
    # _normalize_quantization_config names the method, so the checkpoint serves quantised
    q = {"producer": MODELOPT, "quantization": {"quant_algo": algo, "kv_cache_quant_algo": "FP8"}}
    m = ModelSpec.from_hf_config(_cfg(q), name="x")
    assert (m.checkpoint_dtype, m.quant_scheme, m.checkpoint_kv_dtype) == (dtype, scheme, kv)
    # the same without the producer stays an unknown quantization
    with pytest.raises(InputError, match="quant_method"):
        ModelSpec.from_hf_config(_cfg({"quantization": {"quant_algo": algo}}), name="x")


def test_modelopt_export_vllm_cannot_read_is_refused_with_the_fix():
    # quant_algo flat, no quant_method (aiconfigurator's Qwen3-32B-FP8-Static-PerTensor config):
    # vLLM infers no method and would load fp8 weights as bf16 -- exit 2 naming the missing key
    flat = {"producer": MODELOPT, "quant_algo": "FP8", "kv_cache_scheme": "FP8",
            "ignore": ["lm_head"]}
    with pytest.raises(InputError) as e:
        ModelSpec.from_hf_config(_cfg(flat), name="x", source="cfg.json")
    msg = str(e.value)
    assert "quantization_config.quant_method" in msg and '"quant_method": "modelopt"' in msg
    # with the key the engines read, it is an fp8 checkpoint
    assert ModelSpec.from_hf_config(_cfg({**flat, "quant_method": "modelopt"}),
                                    name="x").checkpoint_dtype == "fp8"
    # a nested algorithm vLLM does not serve
    with pytest.raises(InputError, match="W4A8_AWQ"):
        ModelSpec.from_hf_config(_cfg({"producer": MODELOPT,
                                       "quantization": {"quant_algo": "W4A8_AWQ"}}), name="x")


# ------------------------------------------------------------------------------ GEMM cost
def test_w4a4_on_b200_faster_than_fp8(b200):
    dev = b200.pools[0].device
    assert fp4_path(dev) == "w4a4"
    d = DeviceCostModel(dev)
    # compute-bound prefill GEMM: fp4 tensor cores at 2x the fp8 peak
    t8 = d.gemm(8192, 8192, 8192, "fp8").time_s
    t4 = d.gemm(8192, 8192, 8192, "fp4", "fp4").time_s
    assert 0.45 < t4 / t8 < 0.65
    # decode (m=1): 0.5625 vs 1 byte per weight, but the measured FP4 GEMMs stream them at
    # ~0.44 of the B200's bandwidth (kernels.yaml fp4.decode_gemm_us, helion PR #3046) against
    # the fp8 fit's ~0.74: about the fp8 time, as measured (vLLM CUTLASS 8192x8192: 21.3 us,
    # FlashInfer cutlass: 18.9 us)
    assert 0.40 < fp4_memory_efficiency() < 0.48
    r8 = d.gemm(1, 8192, 28672, "fp8").time_s
    r4 = d.gemm(1, 8192, 28672, "fp4", "fp4").time_s
    assert 0.85 < r4 / r8 < 1.05
    for n, k, us in ((4096, 4096, 9.22), (8192, 8192, 21.27), (8192, 28672, 59.40)):
        assert 0.7 < DeviceCostModel(dev, sustained=False).gemm(1, n, k, "fp4", "fp4").time_s \
            / (us * 1e-6) < 1.15
    # at m = 1024 the fp4 tensor cores win again
    assert d.gemm(1024, 8192, 8192, "fp4", "fp4").time_s < 0.7 * d.gemm(1024, 8192, 8192, "fp8").time_s
    # MoE (Mixtral-8x7B shapes): weight-stream bound at 32 decode tokens -- unlike the dense FP4
    # GEMM, FlashInfer TRT-LLM-gen's FP4 MoE streams at copy speed (kernels.yaml fused_moe
    # weight_stream): AIConfigurator's B200 vLLM 0.19 table gives nvfp4 0.136 ms vs Triton fp8
    # 0.267 ms at 32 tokens (0.51) -- compute bound at 4096 prefill tokens (fp4 tensor cores)
    def moe(t, *dt):
        return d.fused_moe(t, 4096, 14336, 2, 8, 1, 1, *dt).time_s
    assert 0.45 < moe(32, "fp4", "fp4") / moe(32, "fp8", None) < 0.6
    assert 0.5 < moe(4096, "fp4", "fp4") / moe(4096, "fp8", None) < 0.7
    # the activation quant: one kernel, 2.5625 B per element
    q = d.act_quant("fp4_group16", 4096, 8192)
    assert q.time_s > 0


def test_weight_only_fp4_on_h100_like_marlin(h100):
    dev = h100.pools[0].device
    assert fp4_path(dev) == "weight_only"
    d = DeviceCostModel(dev)
    bf, fp4, int4 = (d.gemm(m, 8192, 8192, *a).time_s for m, a in
                     [(1, ("bf16", None)), (1, ("fp4", "fp4")), (1, ("bf16", "int4"))])
    assert fp4 < 0.5 * bf and fp4 == pytest.approx(int4, rel=0.1)  # fewer bytes at decode
    big = d.gemm(8192, 8192, 8192, "fp4", "fp4").time_s
    assert big >= d.gemm(8192, 8192, 8192, "bf16").time_s  # bf16 compute (+ dequant) at prefill


def test_fp4_refused_on_mi300x():
    dev = load_cluster("mi300x-1x8").pools[0].device
    assert fp4_path(dev) is None
    with pytest.raises(InputError, match="NVFP4"):
        DeviceCostModel(dev).gemm(16, 4096, 4096, "fp4", "fp4")


def test_engine_generations_without_the_path_refuse(b200, h100, llama8):
    cfg = ReplicaConfig(tp=1, weight_dtype="fp4")
    # SGLang 0.5.9 runs NVFP4 only on Blackwell (ModelOptFp4Config min capability 100)
    assert IterationCostModel(llama8, b200.pools[0], cfg, load_engine("sglang")).compute_dtype == "fp4"
    for eng in ("sglang", "vllm-0.6"):
        with pytest.raises(InputError, match="does not run"):
            IterationCostModel(llama8, h100.pools[0], cfg, load_engine(eng))


def test_replica_compute_dtype(b200, h100, llama8):
    cfg = ReplicaConfig(tp=1, weight_dtype="fp4")
    rb = IterationCostModel(llama8, b200.pools[0], cfg)
    rh = IterationCostModel(llama8, h100.pools[0], cfg)
    assert (rb.compute_dtype, rb.act_quant) == ("fp4", "fp4_group16")
    assert (rh.compute_dtype, rh.weight_dtype, rh.act_quant) == ("bf16", "fp4", None)
    a16 = ModelSpec.from_hf_config(_cfg({"quant_method": "modelopt", "quant_algo": "W4A16_NVFP4"}),
                                   name="a16")
    assert IterationCostModel(a16, b200.pools[0], ReplicaConfig(tp=1)).compute_dtype == "bf16"


# ------------------------------------------------------------------------------ launch
def test_launch_uses_published_nvfp4_checkpoint(b200, llama8):
    lp = launch_plan("llama-3.1-8b", llama8, Plan(groups=(ReplicaGroup(tp=1, weight_dtype="fp4"),)),
                     cluster=b200)
    assert "nvidia/Llama-3.1-8B-Instruct-FP4" in lp.processes[0].argv
    mix = load_model("mixtral-8x7b")
    lp = launch_plan("mixtral-8x7b", mix, Plan(groups=(ReplicaGroup(tp=2, weight_dtype="fp4"),)),
                     cluster=b200)
    assert any(a.startswith("${FP4_CHECKPOINT:?") for a in lp.processes[0].argv)


# ------------------------------------------------------------------------------ CLI
def test_cli_simulate_and_check_fp4():
    r = CliRunner().invoke(main, ["simulate", "--model", "llama-3.1-8b", "--cluster", "b200-1x8",
                                  "--tp", "1", "--weight-dtype", "fp4", "--concurrency", "4",
                                  "--num-requests", "12", "--prompt-len", "512",
                                  "--output-len", "32", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["model"] == "llama-3.1-8b"
    c = CliRunner().invoke(main, ["check", "--model", "llama-3.1-70b", "--cluster", "b200-1x8",
                                  "--weight-dtype", "fp4", "--json"])
    assert c.exit_code == 0, c.output
    res = json.loads(c.output)
    tp1 = next(s for s in res["feasible"] if s["tp"] == 1 and s["pp"] == 1)
    st = tp1["stages"][0]
    assert 38 < st["weights_bytes"] / 2**30 < 42  # 70B: ~36 GiB fp4 linears + 3.9 GiB bf16 emb/head
    assert st["weights_by_component"]["lm_head"] == 2 * 128256 * 8192  # lm_head stays bf16
    bad = CliRunner().invoke(main, ["check", "--model", "llama-3.1-8b", "--cluster", "mi300x-1x8",
                                    "--weight-dtype", "fp4"])
    assert bad.exit_code == 2 and "NVFP4" in bad.output


def test_modelopt_hf_quant_config_json_beside_config(tmp_path):
    # older ModelOpt NVFP4 exports describe the quantization only in hf_quant_config.json
    cfg = _cfg({})
    cfg.pop("quantization_config")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert load_model(str(tmp_path)).checkpoint_dtype == "bf16"
    (tmp_path / "hf_quant_config.json").write_text(json.dumps(
        {"producer": {"name": "modelopt", "version": "0.23.0"},
         "quantization": {"quant_algo": "NVFP4", "group_size": 16, "exclude_modules": ["lm_head"]}}))
    m = load_model(str(tmp_path))
    assert (m.checkpoint_dtype, m.quant_scheme) == ("fp4", "nvfp4")
