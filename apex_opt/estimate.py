"""`apex-opt estimate`: one engine iteration of a replica — latency, energy, per-operator breakdown."""

from __future__ import annotations

import re

import numpy as np
from pydantic import BaseModel, Field

from .costmodel.iteration import IterationCostModel
from .errors import InfeasibleError, InputError
from .memory import replica_memory
from .parallel import (attention_dp_problem, moe_a2a_problem, redundant_experts_problem,
                       scope_problem, shape_problem)
from .specs.cluster import ClusterSpec
from .specs.model import ModelSpec
from .specs.engine import EngineSpec, load_engine
from .specs.plan import ReplicaConfig

_ITEM = re.compile(r"^(decode|prefill):(\d+)x(\d+)(?:@(\d+))?$", re.ASCII)  # no full-width digits


class BatchSpec(BaseModel):
    """Work of one iteration: decode contexts and prefill chunks."""

    decode_ctx: list[int] = Field(default_factory=list, description="Context length of each decoding sequence")
    prefill: list[tuple[int, int]] = Field(default_factory=list,
                                           description="(chunk tokens, cached tokens before) per prefill")


def parse_batch(spec: str) -> BatchSpec:
    """Parse ``decode:16x1024,prefill:1x2048,prefill:1x512@1024``.

    ``decode:NxC`` = N sequences each at context C; ``prefill:NxT[@K]`` = N chunks of T new tokens
    each, after K already-cached tokens (default 0).
    """
    out = BatchSpec()
    if not spec or not spec.strip():
        raise InputError("empty batch spec; e.g. decode:16x1024,prefill:1x2048", field="--batch", value=spec)
    for item in spec.split(","):
        m = _ITEM.match(item.strip())
        if not m:
            raise InputError("expected decode:NxCONTEXT or prefill:NxTOKENS[@CACHED], comma-separated",
                             field="--batch", value=item)
        kind, n, length, cached = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4) or 0)
        if n < 1 or length < 1 or n > 100_000 or length > 10_000_000:
            raise InputError("counts and lengths must be in 1..100000 and 1..10000000",
                             field="--batch", value=item)
        if kind == "decode":
            if cached:
                raise InputError("'@cached' only applies to prefill", field="--batch", value=item)
            out.decode_ctx.extend([length] * n)
        else:
            out.prefill.extend([(length, cached)] * n)
    return out


class EstimateResult(BaseModel):
    """Output of `apex-opt estimate` (also its --json)."""

    schema_version: int = 1
    model: str
    cluster: str
    engine: str
    pool: str
    device: str
    tp: int
    pp: int
    ep: int
    attention_dp: int = Field(1, description="Data-parallel attention ranks (1 = off)")
    redundant_experts: int = Field(0, description="EPLB redundant expert slots")
    moe_a2a: bool = Field(False, description="All-to-all MoE dispatch (DeepEP)")
    weight_dtype: str
    kv_dtype: str
    batch: BatchSpec
    iteration_ms: float = Field(description="Latency of the iteration through all stages incl. host")
    stage_ms: list[float]
    energy_j: float = Field(description="Energy of all replica GPUs during the iteration (incl. idle)")
    energy_j_per_token: float
    avg_power_w: float
    tokens: int
    breakdown: dict[str, float] = Field(description="Operator class -> ms (summed over stages)")
    memory_fits: bool
    kv_tokens: int


def estimate(model: ModelSpec, cluster: ClusterSpec, cfg: ReplicaConfig, batch: BatchSpec,
             engine: EngineSpec | None = None) -> EstimateResult:
    """Cost of one iteration of ``batch`` on the replica ``cfg`` (engine: vLLM 0.6 by default)."""
    engine = engine or load_engine()
    try:
        pool = cluster.pool(cfg.pool)
    except KeyError:
        raise InputError(f"no such pool; pools: {[p.name for p in cluster.pools]}", field="--pool",
                         value=cfg.pool) from None
    # the first rule the replica breaks, named by the flag it is about (the CLI's spelling)
    for problem, field, value in (
            (shape_problem(model, pool, cfg.tp, cfg.pp, cfg.ep, attention_dp=cfg.attention_dp,
                           redundant_experts=cfg.redundant_experts),
             "--tp/--pp/--ep", f"{cfg.tp}/{cfg.pp}/{cfg.ep}"),
            (attention_dp_problem(model, cfg.tp, cfg.pp, cfg.attention_dp, engine),
             "--attention-dp", cfg.attention_dp),
            (redundant_experts_problem(cfg.redundant_experts, engine),
             "--redundant-experts", cfg.redundant_experts),
            (moe_a2a_problem(cfg.moe_a2a, engine), "--moe-a2a", cfg.moe_a2a)):
        if problem:
            raise InputError(problem, field=field, value=value)
    if cfg.gpus > pool.num_gpus:
        raise InfeasibleError(f"TP{cfg.tp} x PP{cfg.pp} needs {cfg.gpus} GPUs; pool '{pool.name}' has {pool.num_gpus}")
    if scope_problem(pool, cfg.tp):
        raise InfeasibleError(scope_problem(pool, cfg.tp))
    if "kv_dtype" not in cfg.model_fields_set:  # unset: the engine's for this checkpoint
        cfg = cfg.model_copy(update={"kv_dtype": cfg.resolved(engine, model, pool.device).kv_dtype})
    mem = replica_memory(model, pool.device, cfg, engine)
    cm = IterationCostModel(model, pool, cfg, engine)
    c = cm.iteration(np.array(batch.decode_ctx, dtype=np.int64), batch.prefill, with_breakdown=True)
    idle = max(0.0, cm.num_gpus * c.time_s - c.busy_gpu_s) * cm.idle_power_w
    energy = c.energy_j + idle
    tokens = len(batch.decode_ctx) + sum(q for q, _ in batch.prefill)
    r = lambda x: float(f"{x:.6g}")  # noqa: E731
    return EstimateResult(
        model=model.name, cluster=cluster.name, engine=engine.name, pool=pool.name, device=pool.device.name,
        tp=cfg.tp, pp=cfg.pp, ep=cfg.ep, attention_dp=cfg.attention_dp,
        redundant_experts=cfg.redundant_experts, moe_a2a=cfg.moe_a2a,
        weight_dtype=cfg.resolved_weight_dtype(model),
        kv_dtype=cfg.kv_dtype,
        batch=batch, iteration_ms=r(c.time_s * 1e3), stage_ms=[r(t * 1e3) for t in c.stage_times_s],
        energy_j=r(energy), energy_j_per_token=r(energy / max(tokens, 1)),
        avg_power_w=r(energy / c.time_s / cm.num_gpus) if c.time_s else 0.0, tokens=tokens,
        breakdown={k: r(v * 1e3) for k, v in sorted(c.breakdown.items(), key=lambda kv: -kv[1])},
        memory_fits=mem.fits, kv_tokens=mem.kv_tokens)
