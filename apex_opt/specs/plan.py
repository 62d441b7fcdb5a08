"""A serving plan: groups of identical data-parallel replicas, each a TP × PP (× EP) shape with its
quantisation and engine limits. The solver outputs it, the simulator runs it, the memory model
checks it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator
from typing_extensions import Self

from .common import KVDType, PlanRouter, StrictModel, WeightDType
from .model import ModelSpec, serving_weight_dtype

if TYPE_CHECKING:
    from .engine import EngineSpec


class ReplicaConfig(StrictModel):
    """One model replica: its parallel shape, dtypes and engine settings (vLLM flag names)."""

    pool: str | None = Field(None, description="Device pool of the cluster (None = the first).")
    tp: int = Field(1, ge=1, le=1024, description="Tensor-parallel degree.")
    pp: int = Field(1, ge=1, le=1024, description="Pipeline-parallel degree (stages).")
    ep: int = Field(1, ge=1, le=1024, description="Expert-parallel degree; divides tp. Experts are "
                                                  "spread over ep groups of tp/ep GPUs.")
    layers_per_stage: tuple[int, ...] | None = Field(
        None, description="Decoder layers of each pipeline stage (None = vLLM's default split).")
    weight_dtype: WeightDType | None = Field(
        None, description="Weight storage dtype (None = the checkpoint's own, from its "
                          "config.json quantization_config: fp8 for fp8 checkpoints such as "
                          "deepseek-v3, int4 for AWQ/GPTQ, else bf16).")
    kv_dtype: KVDType = Field("bf16", description="KV-cache dtype (unset: bf16, or the fp8 a "
                                                  "ModelOpt checkpoint declares where the engine "
                                                  "reads it, see resolved()).")
    max_num_seqs: int | None = Field(
        None, ge=1, le=65536,
        description="Max sequences per iteration (None = the engine's default for the device: "
                    "vLLM V1 1024 on >= 70 GiB GPUs other than A100, else 256; vLLM 0.6: 256; "
                    "SGLang: 2048).")
    max_num_batched_tokens: int | None = Field(
        None, ge=1, le=10_000_000,
        description="Token budget per iteration (None = the engine's default: its chunk budget "
                    "with chunked prefill -- vLLM 0.6: 512, SGLang: 8192 -- else "
                    "max(max_model_len, 2048)).")
    chunked_prefill: bool | None = Field(
        None, description="Chunked prefill (mixed decode+prefill batches); None = the engine's "
                          "default (vLLM 0.6: on only when max_model_len > 32768; SGLang: on).")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0,
                                          description="Fraction of device memory vLLM may use.")
    max_model_len: int | None = Field(None, ge=16, le=10_000_000,
                                      description="Max context (None = the model's maximum).")
    custom_allreduce: bool = Field(True, description="vLLM custom all-reduce (single node).")
    cuda_graphs: bool = Field(True, description="CUDA graphs for decode batches.")
    prefix_caching: bool | None = Field(
        None, description="Reuse the KV cache of shared prompt prefixes (None = the engine's "
                          "default: vLLM V1 and SGLang on, vLLM 0.6 off).")
    mixed_chunk: bool | None = Field(
        None, description="SGLang --enable-mixed-chunk: running decodes join each (chunked) "
                          "prefill batch, one token of its chunk budget each, instead of "
                          "stalling while it runs; None = the engine's default (off). SGLang "
                          "only: vLLM always mixes decodes into chunked-prefill steps.")
    max_prefill_tokens: int | None = Field(
        None, ge=1, le=10_000_000,
        description="SGLang --max-prefill-tokens: new prompt tokens one prefill batch may take "
                    "(None = the engine's default, SGLang 16384). The PrefillAdder stops adding "
                    "a request whose prompt does not fit what is left of it (the first one always "
                    "joins); the chunk budget (max_num_batched_tokens) still chunks. SGLang "
                    "only, with chunked prefill on.")
    attention_dp: int = Field(
        1, ge=1, le=1024,
        description="Data-parallel attention inside the TP group (SGLang --enable-dp-attention "
                    "--dp-size N, for MLA models such as DeepSeek): N attention ranks of tp/N "
                    "GPUs each, each with its own requests and KV cache; MoE/MLP still over all "
                    "tp GPUs. Divides tp; 1 = off.")
    redundant_experts: int = Field(
        0, ge=0, le=4096,
        description="Redundant expert slots for expert-parallel load balancing (EPLB; SGLang "
                    "--ep-num-redundant-experts N, vLLM --enable-eplb num_redundant_experts): the "
                    "MoE runs E + N physical experts, (E + N) / ep per EP rank, so an EP size "
                    "that does not divide the E experts can run (DeepSeek's 256 over 72 GPUs: "
                    "N = 32). Needs ep > 1; each rank stores its extra experts' weights.")
    moe_a2a: bool = Field(
        False,
        description="Dispatch each MoE layer's tokens to their experts' ranks with an all-to-all "
                    "(DeepEP: SGLang --moe-a2a-backend deepep, vLLM --all2all-backend "
                    "deepep_low_latency) instead of gathering every "
                    "attention rank's tokens on every GPU and reduce-scattering back. Needs "
                    "attention_dp > 1 and ep = tp; shared experts are then replicated per GPU.")
    sm_clock_mhz: int | None = Field(None, ge=1, le=10_000,
                                     description="Locked SM clock (nvidia-smi -lgc) in MHz; None = "
                                                 "driver default (boost, lowered by the power "
                                                 "limit under load).")
    power_cap_w: float | None = Field(None, gt=0, le=10_000,
                                      description="Board power limit (nvidia-smi -pl) in W; None = "
                                                  "the device's default limit (TDP).")

    @model_validator(mode="before")
    @classmethod
    def _kv_unset(cls, data: Any) -> Any:
        """kv_dtype None = unset (the engine's default for the checkpoint, see resolved())."""
        if isinstance(data, dict) and "kv_dtype" in data and data["kv_dtype"] is None:
            data = {k: v for k, v in data.items() if k != "kv_dtype"}
        return data

    @model_validator(mode="after")
    def _shape(self) -> "ReplicaConfig":
        if self.tp % self.ep:
            raise ValueError(f"ep ({self.ep}) must divide tp ({self.tp})")
        if self.tp % self.attention_dp:
            raise ValueError(f"attention_dp ({self.attention_dp}) must divide tp ({self.tp})")
        if self.attention_dp > 1 and self.pp > 1:
            raise ValueError("attention_dp > 1 needs pp = 1")
        if self.moe_a2a and (self.attention_dp == 1 or self.ep != self.tp):
            raise ValueError(f"moe_a2a needs data-parallel attention (attention_dp > 1) and "
                             f"expert parallelism over the whole TP group (ep = tp = {self.tp}); "
                             f"got attention_dp {self.attention_dp}, ep {self.ep}")
        if self.redundant_experts and self.ep == 1:
            raise ValueError(f"redundant_experts ({self.redundant_experts}) needs expert "
                             f"parallelism (ep > 1): they are extra expert slots on the EP ranks")
        if self.layers_per_stage is not None:
            if len(self.layers_per_stage) != self.pp:
                raise ValueError(f"layers_per_stage has {len(self.layers_per_stage)} entries, "
                                 f"expected pp={self.pp}")
            if any(n < 1 for n in self.layers_per_stage):
                raise ValueError("every pipeline stage needs at least one layer")
        return self

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    def resolved_max_model_len(self, model_max: int) -> int:
        return self.max_model_len if self.max_model_len is not None else model_max

    def resolved_weight_dtype(self, model: "ModelSpec | str") -> WeightDType:
        """``weight_dtype`` as set, else the one the checkpoint is served in; ``model`` is the
        ModelSpec or its checkpoint dtype (ModelSpec.checkpoint_dtype)."""
        if self.weight_dtype is not None:
            return self.weight_dtype
        ckpt = model.checkpoint_dtype if isinstance(model, ModelSpec) else model
        return serving_weight_dtype(ckpt)

    def resolved(self, engine: "EngineSpec", model: "ModelSpec | int", device=None, *,
                 checkpoint_dtype: str | None = None) -> Self:
        """This config with every default (a None field) filled in: the ONE place defaults
        resolve, so the Python API, the CLI, the memory model, the cost model, the simulator and
        the launch commands agree. ``model`` is the ModelSpec (its maximum context and checkpoint
        dtype), or only its maximum context -- then ``checkpoint_dtype`` must be given whenever
        ``weight_dtype`` is unset. ``device`` (a DeviceSpec) picks the engine's defaults by GPU
        memory (vLLM V1, SGLang); without it the engine's device-independent fallbacks apply."""
        if isinstance(model, ModelSpec):
            model_max, ckpt = model.max_position_embeddings, model.checkpoint_dtype
        else:
            model_max, ckpt = int(model), checkpoint_dtype
        if self.weight_dtype is None and ckpt is None:
            raise ValueError("weight_dtype is the checkpoint's here: pass the ModelSpec (or "
                             "checkpoint_dtype=) to resolve it")
        weight = self.resolved_weight_dtype(ckpt)
        max_len = self.resolved_max_model_len(model_max)
        chunked = (self.chunked_prefill if self.chunked_prefill is not None
                   else max_len > engine.chunked_prefill_above_len)
        dev_name = device.name if device is not None else ""
        dev_gib = float(device.memory_gib) if device is not None else 0.0
        tokens = self.max_num_batched_tokens
        if tokens is None:  # chunk budget (by GPU where the engine decides so), else
            # max(max_model_len, 2048) as vLLM 0.6's SchedulerConfig
            tokens = (engine.default_batched_tokens(dev_name, dev_gib) if chunked
                      else max(max_len, 2048))
        seqs = self.max_num_seqs
        if seqs is None:
            seqs = engine.default_max_num_seqs_for(dev_name, dev_gib)
        prefix = self.prefix_caching if self.prefix_caching is not None else engine.prefix_caching
        mixed = self.mixed_chunk if self.mixed_chunk is not None else engine.mixed_chunk
        update = {"weight_dtype": weight, "chunked_prefill": chunked, "max_model_len": max_len,
                  "max_num_batched_tokens": tokens, "max_num_seqs": seqs, "prefix_caching": prefix,
                  "mixed_chunk": mixed}
        if ("kv_dtype" not in self.model_fields_set and isinstance(model, ModelSpec)
                and model.checkpoint_kv_dtype and weight == model.default_weight_dtype
                and getattr(engine, "kv_dtype_from_checkpoint", False)):
            # --kv-cache-dtype auto of an engine that reads the checkpoint's declared KV dtype
            # (vLLM >= 0.14 / SGLang >= 0.5.3: the ModelOpt FP8 KV of nvidia/*-NVFP4, *-FP8)
            update["kv_dtype"] = model.checkpoint_kv_dtype
        if "gpu_memory_utilization" not in self.model_fields_set and device is not None:
            # SGLang picks mem_fraction_static itself (by GPU memory, chunk size, graph batch, TP)
            frac = engine.mem_fraction_static(
                dev_gib, self.tp, self.pp, tokens,
                engine.cuda_graph_max_bs(dev_name, dev_gib, self.tp) or 0, self.attention_dp)
            if frac is not None:
                update["gpu_memory_utilization"] = frac
        return self.model_copy(update=update)

    def resolved_batched_tokens(self, model_max: int, chunk_budget: int = 512) -> int:
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        if self.chunked_prefill is None:
            raise ValueError("chunked_prefill is the engine's default here: resolve the config "
                             "first (cfg.resolved(engine, model_max))")
        if self.chunked_prefill:
            return chunk_budget
        return max(self.resolved_max_model_len(model_max), 2048)

    def engine_refusal(self, engine: "EngineSpec") -> str | None:
        """Why the real engine would refuse to start with this (resolved) config, else None.

        vLLM's SchedulerConfig._verify_args (0.6 and V1) rejects a token budget below
        max_model_len without chunked prefill (a long prompt could never be scheduled) and a
        budget below max_num_seqs."""
        if engine.scheduler not in ("vllm", "vllm_v1"):
            return None
        tokens, max_len = self.max_num_batched_tokens, self.max_model_len
        if tokens is None or max_len is None or self.chunked_prefill is None:
            return None
        if not self.chunked_prefill and tokens < max_len:
            return (f"vLLM refuses max_num_batched_tokens ({tokens}) < max_model_len ({max_len}) "
                    f"without chunked prefill: raise --max-num-batched-tokens to {max_len}, lower "
                    f"--max-model-len, or use --chunked-prefill")
        if self.max_num_seqs is not None and tokens < self.max_num_seqs:
            return (f"vLLM refuses max_num_batched_tokens ({tokens}) < max_num_seqs "
                    f"({self.max_num_seqs}): raise --max-num-batched-tokens or lower "
                    f"--max-num-seqs")
        return None

    def label(self) -> str:
        parts = [f"TP{self.tp}"]
        if self.pp > 1:
            parts.append(f"PP{self.pp}")
        if self.ep > 1:
            parts.append(f"EP{self.ep}")
        if self.weight_dtype not in ("bf16", None):  # None: the checkpoint's (unresolved)
            parts.append(f"w{self.weight_dtype}")
        if self.kv_dtype != "bf16":
            parts.append(f"kv{self.kv_dtype}")
        if self.attention_dp > 1:
            parts.append(f"ADP{self.attention_dp}")
        if self.redundant_experts:
            parts.append(f"R{self.redundant_experts}")
        if self.moe_a2a:
            parts.append("A2A")
        if self.sm_clock_mhz is not None:
            parts.append(f"{self.sm_clock_mhz}MHz")
        if self.power_cap_w is not None:
            parts.append(f"{self.power_cap_w:g}W")
        return "-".join(parts)


class ReplicaGroup(ReplicaConfig):
    """`replicas` identical data-parallel copies of one replica shape."""

    replicas: int = Field(1, ge=1, le=100_000, description="Number of data-parallel replicas.")

    def replica(self) -> ReplicaConfig:
        # unset fields stay unset: engine defaults (e.g. SGLang's mem_fraction_static) still apply
        return ReplicaConfig(**self.model_dump(exclude={"replicas"}, exclude_unset=True))


class Plan(StrictModel):
    """A full deployment: one or more replica groups behind a router."""

    groups: tuple[ReplicaGroup, ...] = Field(min_length=1)
    router: PlanRouter = Field(
        "engine", description="How requests are spread over replicas: 'engine' = the engine "
                              "profile's own DP router (EngineSpec.dp_router), or a policy of "
                              "apex_opt/sim/router.py.")

    @property
    def gpus(self) -> int:
        return sum(g.replicas * g.gpus for g in self.groups)

    def label(self) -> str:
        return " + ".join(f"{g.replicas}x{g.label()}" + (f"@{g.pool}" if g.pool else "")
                          for g in self.groups)
