"""Serving-engine behaviour constants (memory outside the KV budget, CUDA-graph sizes, ...).

Loaded from ``apex_opt/data/engines/<name>.yaml`` so that no engine constant lives in code.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field

from .common import NonNegFloat, StrictModel


class EngineSpec(StrictModel):
    """Constants of one serving engine version."""

    name: str = Field(description="Engine identifier, e.g. 'vllm-0.6'.")
    scheduler: Literal["vllm", "sglang"] = Field(
        "vllm", description="'vllm': V0 scheduler (chunked prefill = mixed decode+prefill batches, "
                            "decodes first). 'sglang': prefill-first (a prefill batch, chunked to the "
                            "token budget, runs whenever one can be formed; decodes wait), no mixing.")
    kv_sizing: Literal["profile_run", "static_fraction"] = Field(
        "profile_run", description="'profile_run': KV = total*util - weights - profiled activation "
                                   "peak - buffers (vLLM). 'static_fraction': weights + KV pool = "
                                   "total*util (SGLang mem_fraction_static); activations, CUDA "
                                   "graphs and context live in the rest.")
    watermark_fraction: NonNegFloat = Field(0.01, description="Share of KV blocks kept free when "
                                                               "admitting a prefill.")
    block_size: int = Field(16, ge=1, le=1024, description="KV-cache block size in tokens.")
    cuda_context_gib: NonNegFloat = Field(description="CUDA context + library workspaces per GPU "
                                                      "(outside the utilisation budget).")
    cuda_graph_gib: NonNegFloat = Field(description="CUDA-graph memory pools per GPU, allocated "
                                                    "after the KV cache is sized.")
    nccl_buffers_gib: NonNegFloat = Field(description="NCCL buffers per GPU of a multi-GPU replica.")
    custom_allreduce_buffers_gib: NonNegFloat = Field(description="Custom all-reduce IPC buffers.")
    allocator_slack: NonNegFloat = Field(description="Fractional slack on the activation peak.")
    cuda_graph_batch_sizes: tuple[int, ...] = Field(description="Captured decode batch sizes.")
    chunked_prefill_budget: int = Field(512, ge=1, description="Default max_num_batched_tokens "
                                                                "with chunked prefill.")
    chunked_prefill_above_len: int = Field(
        32768, ge=0, description="Chunked prefill is on by default when max_model_len exceeds "
                                 "this (vLLM 0.6: 32768; 0 = always on).")
    host_step_base_ms: NonNegFloat = Field(description="Fixed CPU time per engine step.")
    host_per_seq_us: NonNegFloat = Field(description="CPU time per sequence in a step "
                                                     "(sampling, detokenising, output processing).")
    host_multi_gpu_ms: NonNegFloat = Field(description="Extra CPU time per step to broadcast "
                                                       "step metadata to the workers (TP/PP > 1).")
    request_overhead_ms: NonNegFloat = Field(
        0.0, description="Per-request latency before the engine can schedule a new request "
                         "(HTTP handling, request parsing, tokenisation, hand-off to the engine "
                         "process) plus first-token output processing.")
    graph_launch_saving_us: NonNegFloat = Field(description="Launch latency per kernel that a CUDA-graph "
                                                            "replay removes from isolated-kernel timings.")
    eager_launch_us: NonNegFloat = Field(description="CPU launch cost per kernel in eager mode.")

    def graph_batch_size(self, n: int) -> int | None:
        """Captured CUDA-graph size a decode batch of ``n`` is padded to (None = runs eagerly)."""
        for s in self.cuda_graph_batch_sizes:
            if s >= n:
                return s
        return None


@lru_cache(maxsize=8)
def load_engine(name: str = "vllm") -> EngineSpec:
    from ..io import parse_yaml, validate
    from ..registry import data_dir

    f = data_dir("engines") / f"{name}.yaml"
    src = f"<bundled engine {name}>"
    return validate(EngineSpec, parse_yaml(f.read_text(encoding="utf-8"), src), src)
