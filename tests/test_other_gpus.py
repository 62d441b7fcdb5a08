"""Facts the simulator relies on for the bundled non-Hopper GPUs (A100, L40S, H100 PCIe, B200,
MI300X): device memory as PyTorch reports it (the base of vLLM's gpu_memory_utilization), the
engine defaults vLLM V1 / SGLang pick from that memory and the GPU's name, and the A100's fp8 path
(no fp8 tensor cores: weight-only fp8, bf16 compute)."""

from __future__ import annotations

import pytest

from apex_opt.costmodel import DeviceCostModel
from apex_opt.registry import load_cluster, load_device
from apex_opt.specs.engine import load_engine
from apex_opt.specs.model import load_model
from apex_opt.specs.plan import ReplicaConfig

# torch.cuda.get_device_properties().total_memory as published in CUDA out-of-memory messages
# ("GPU 0 has a total capacity of X GiB"); sources in each device file.
MEASURED_TOTAL_GIB = {"b200": 178.35, "b300": 267.69, "a100-sxm-80gb": 79.15, "l40s": 44.52}


@pytest.mark.parametrize("name,gib", sorted(MEASURED_TOTAL_GIB.items()))
def test_device_memory_is_the_measured_pytorch_total(name, gib):
    assert load_device(name).memory_gib == pytest.approx(gib, abs=0.005)


@pytest.mark.parametrize("cluster,tokens,seqs", [
    # vllm/engine/arg_utils.py get_batch_defaults: OpenAI server on a GPU with >= 70 GiB whose name
    # does not contain "a100": 8192 tokens / 1024 seqs, else 2048 / 256
    ("l40s-1x8", 2048, 256),      # 44.5 GiB
    ("a100-80g-1x8", 2048, 256),  # excluded by name (vLLM PR #17885)
    ("mi300x-1x8", 8192, 1024),
    ("b200-1x8", 8192, 1024),
    ("b300-1x8", 8192, 1024),
])
def test_vllm_v1_batch_defaults_by_gpu(cluster, tokens, seqs):
    dev = load_cluster(cluster).pools[0].device
    r = ReplicaConfig(tp=1).resolved(load_engine("vllm"), load_model("llama-3.1-8b"), dev)
    assert (r.max_num_batched_tokens, r.max_num_seqs) == (tokens, seqs)


def test_h100_pcie_cluster():
    pool = load_cluster("h100-pcie-1x8").pools[0]
    assert pool.device.name == "h100-pcie-80gb" and pool.gpus_per_node == 8
    # PCIe Gen5 x16: 63 GB/s raw per direction, less packet overhead; no NVSwitch
    assert pool.intra_node.kind == "pcie" and 40 <= pool.intra_node.bandwidth_gbps < 63
    # 79 GiB and not an A100: vLLM V1's large batch tier
    r = ReplicaConfig(tp=1).resolved(load_engine("vllm"), load_model("llama-3.1-8b"), pool.device)
    assert (r.max_num_batched_tokens, r.max_num_seqs) == (8192, 1024)


@pytest.mark.parametrize("cluster,chunk", [("l40s-1x8", 4096), ("a100-80g-1x8", 8192),
                                           ("mi300x-1x8", 16384), ("b200-1x8", 16384),
                                           ("b300-1x8", 16384)])
def test_sglang_chunked_prefill_by_gpu_memory(cluster, chunk):
    # sglang server_args: chunked_prefill_size by GPU memory (35-60 GiB 4096, 60-160 GiB 8192,
    # above 16384)
    dev = load_cluster(cluster).pools[0].device
    r = ReplicaConfig(tp=1).resolved(load_engine("sglang"), load_model("llama-3.1-8b"), dev)
    assert r.max_num_batched_tokens == chunk


def test_a100_fp8_is_weight_only_with_bf16_compute():
    a100 = DeviceCostModel(load_device("a100-sxm-80gb"))
    assert "fp8" not in a100.device.peak_tflops
    for m in (1, 64, 4096):
        fp8 = a100.gemm(m, 8192, 8192, "fp8").time_s
        w8a16 = a100.gemm(m, 8192, 8192, "bf16", weight_dtype="fp8").time_s
        assert fp8 == pytest.approx(w8a16)
    # decode (memory-bound): half the weight bytes -> faster than bf16; prefill (compute-bound):
    # bf16 tensor cores plus dequantisation -> not faster than bf16
    assert a100.gemm(1, 8192, 8192, "fp8").time_s < 0.75 * a100.gemm(1, 8192, 8192, "bf16").time_s
    assert a100.gemm(8192, 8192, 8192, "fp8").time_s >= a100.gemm(8192, 8192, 8192, "bf16").time_s


def test_mi300x_fp8_gemm_uses_its_own_published_efficiency():
    # AMD's Max-Achievable FLOPs (ROCm blog, Feb 2025): MI300X FP8 1,273 of 2,614.9 TFLOP/s. Without
    # an fp8 entry the fp8 GEMMs transferred as the H100's 70.9 % and ran 1.46x too fast.
    mi = DeviceCostModel(load_device("mi300x"))
    assert mi.device.matmul_efficiency["fp8"] == pytest.approx(1273 / 2614.9, abs=0.001)
    big = (8192, 8192, 8192)
    speedup = mi.gemm(*big, "bf16").time_s / mi.gemm(*big, "fp8").time_s
    # compute-bound fp8 over bf16: at most the datasheet 2x, here ~ (0.487 x 2614.9) / (0.511 x 1307.4)
    assert 1.6 < speedup < 2.0
    # the same ratio on the H100 profile (fp8 70.9 % vs bf16 80.3 % MAMF) stays below it
    h100 = DeviceCostModel(load_device("h100-sxm-80gb"))
    assert h100.gemm(*big, "bf16").time_s / h100.gemm(*big, "fp8").time_s < 2.0


def test_b300_is_a_b200_with_more_memory_and_fp4():
    # HGX B300 vs B200 datasheets: same dense FP8 / BF16 and 8 TB/s, 1.5x dense FP4, 288 GB HBM3e
    b2, b3 = load_device("b200"), load_device("b300")
    for dt in ("bf16", "fp8"):
        assert b3.peak_tflops[dt] == b2.peak_tflops[dt]
    assert b3.peak_tflops["fp4"] == pytest.approx(1.5 * b2.peak_tflops["fp4"])
    assert b3.hbm_bandwidth_gbps == b2.hbm_bandwidth_gbps
    assert b3.memory_gib > 1.45 * b2.memory_gib
    big = (8192, 8192, 8192)
    d2, d3 = DeviceCostModel(b2), DeviceCostModel(b3)
    assert d3.gemm(*big, "bf16").time_s == pytest.approx(d2.gemm(*big, "bf16").time_s, rel=0.01)
    assert d3.gemm(*big, "fp4").time_s < 0.8 * d2.gemm(*big, "fp4").time_s
