"""Replica candidates: every (pool, TP, PP, EP, attention DP, weight dtype, KV dtype, engine limits) a
plan group may use, with its memory verdict (:func:`apex_opt.memory.replica_memory`) and the constraint groups
it violates.

A candidate's ``max_model_len`` is the workload's longest request (prompt + output) rounded up to a
multiple of 256 tokens, so the memory check demands a KV cache of at least one such request: the
"minimum KV budget for the workload's context lengths". Pipeline stages get the uneven split of
:func:`apex_opt.solver.stages.split_layers`.

Data-parallel attention (``attention_dp`` D > 1) is searched for mixture-of-experts models on
engines that run it (EngineSpec.dp_attention), on every single-stage shape whose TP D divides
(:func:`apex_opt.parallel.attention_dp_degrees`); a candidate's engine limits (max_num_seqs,
max_num_batched_tokens) are those of each attention-DP rank, as the simulator applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..costmodel import fp4_runs
from ..memory import linear_weight_bytes_per_elem, replica_memory
from ..parallel import attention_dp_degrees, enumerate_shapes, node_aligned
from ..sim.workload import Requests
from ..specs.cluster import ClusterSpec, PoolSpec
from ..specs.engine import EngineSpec, load_engine
from ..specs.model import ModelSpec
from ..specs.plan import ReplicaConfig, ReplicaGroup
from ..specs.slo import SLOSpec
from .stages import split_layers



def engine_defaults(engine: EngineSpec, pool: PoolSpec) -> tuple[int, int]:
    """The engine's own (max_num_seqs, max_num_batched_tokens) on the pool's device."""
    dev = pool.device
    gib = dev.memory_bytes / 2 ** 30
    return (engine.default_max_num_seqs_for(dev.name, gib),
            engine.default_batched_tokens(dev.name, gib))


def engine_limits(engine: EngineSpec, pool: PoolSpec) -> tuple[tuple[int, int], ...]:
    """Engine limits searched on a pool: (max_num_seqs, max_num_batched_tokens) pairs, the
    engine's device default scaled by the factors of its data file
    (``search_max_num_seqs_factors`` x ``search_batched_tokens_factors``)."""
    seqs, tokens = engine_defaults(engine, pool)
    ss = sorted({max(1, int(round(seqs * f))) for f in engine.search_max_num_seqs_factors})
    ts = sorted({max(16, int(round(tokens * f))) for f in engine.search_batched_tokens_factors})
    return tuple((s, t) for t in ts for s in ss)


#: Weight / KV dtypes searched when the SLO file does not restrict them: what the engines can serve
#: the model's own checkpoint as (default_weight_dtypes). int4 and fp4 (NVFP4) need a
#: pre-quantised checkpoint, so for a bf16 checkpoint they are only searched when the SLO file lists
#: them; fp4 only on pools whose GPU an engine runs it on (costmodel.fp4_path).
DEFAULT_WEIGHT_DTYPES = ("bf16", "fp8")
#: a checkpoint stored in the key dtype is served as (vLLM / SGLang load what config.json's
#: quantization_config declares: an fp8, int4 or fp4 checkpoint is never dequantized to bf16 at
#: load; a bf16 one is also quantized online to fp8, --quantization fp8)
CHECKPOINT_WEIGHT_DTYPES = {"bf16": ("bf16", "fp8"), "fp8": ("fp8",), "int4": ("int4",),
                            "fp4": ("fp4",)}


def default_weight_dtypes(model: ModelSpec) -> tuple[str, ...]:
    """Weight dtypes searched for ``model`` when the SLO file does not list any: its checkpoint's
    serving dtype and what an engine makes of it at load (see CHECKPOINT_WEIGHT_DTYPES)."""
    return CHECKPOINT_WEIGHT_DTYPES.get(model.default_weight_dtype, DEFAULT_WEIGHT_DTYPES)


ALL_WEIGHT_DTYPES = ("bf16", "fp8", "int4", "fp4")
DEFAULT_KV_DTYPES = ("bf16", "fp8")
ALL_KV_DTYPES = ("bf16", "fp8")
#: Granularity of the workload-derived max_model_len.
MODEL_LEN_STEP = 256
#: Deepest pipeline searched (deeper pipelines only add bubbles and per-stage overheads).
MAX_PP = 16


def searched_shape(model: ModelSpec, pool: PoolSpec, shape) -> bool:
    """Shapes the search considers: node-aligned, at most MAX_PP stages, and EP either off or over
    the whole TP group (vLLM ``--enable-expert-parallel``, SGLang ``--ep-size`` = TP)."""
    if shape.pp > MAX_PP or not node_aligned(shape.gpus, pool.gpus_per_node):
        return False
    return shape.ep in (1, shape.tp)


@dataclass(frozen=True)
class WorkloadStats:
    """What the analytic surrogates need from a workload."""

    num_requests: int
    rate_req_s: float
    mean_prompt: float
    mean_output: float
    #: the longest context a request needs accepted (Requests.max_request_len: prompt + its
    #: declared max_tokens when larger than its output)
    max_seq_len: int
    prompt_quantiles: tuple[float, ...]   # at the percentiles of PERCENTILES
    output_quantiles: tuple[float, ...]
    #: the sampler path of the requests (Requests.sampler: greedy / top_p / top_k)
    sampler: str = "greedy"

    PERCENTILES = (50.0, 90.0, 95.0, 99.0)

    def prompt_at(self, pct: float) -> float:
        return float(np.interp(pct, self.PERCENTILES, self.prompt_quantiles))

    def output_at(self, pct: float) -> float:
        return float(np.interp(pct, self.PERCENTILES, self.output_quantiles))

    @classmethod
    def of(cls, req: Requests) -> "WorkloadStats":
        n = len(req)
        dur = req.duration_s
        rate = (n - 1) / dur if n > 1 and dur > 0 else float(n)
        pq = tuple(float(x) for x in np.percentile(req.prompt_tokens, cls.PERCENTILES))
        oq = tuple(float(x) for x in np.percentile(req.output_tokens, cls.PERCENTILES))
        return cls(n, float(rate), float(req.prompt_tokens.mean()), float(req.output_tokens.mean()),
                   getattr(req, "max_request_len", req.max_seq_len), pq, oq,
                   getattr(req, "sampler", "greedy"))


@dataclass(frozen=True)
class Candidate:
    """One replica configuration a plan group may use."""

    index: int
    pool: str
    device: str
    tp: int
    pp: int
    ep: int
    weight_dtype: str
    kv_dtype: str
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    layers_per_stage: tuple[int, ...]
    fits: bool
    memory_problem: str | None
    kv_tokens: int
    weights_bytes_max: int
    max_replicas: int
    violates: frozenset[str] = field(default_factory=frozenset)
    #: locked SM clock (MHz) of the replica's GPUs; None = the driver's default
    sm_clock_mhz: int | None = None
    #: data-parallel attention ranks inside the TP group (1 = off)
    attention_dp: int = 1
    #: EPLB redundant expert slots (ReplicaConfig.redundant_experts)
    redundant_experts: int = 0
    #: all-to-all MoE dispatch (ReplicaConfig.moe_a2a, DeepEP)
    moe_a2a: bool = False

    @property
    def gpus(self) -> int:
        return self.tp * self.pp

    @property
    def cost_key(self) -> tuple:
        """Candidates sharing this key share an iteration cost model."""
        return (self.pool, self.tp, self.pp, self.ep, self.weight_dtype, self.kv_dtype,
                self.layers_per_stage, self.sm_clock_mhz, self.attention_dp,
                self.redundant_experts, self.moe_a2a)

    def config(self) -> ReplicaConfig:
        return ReplicaConfig(pool=self.pool, tp=self.tp, pp=self.pp, ep=self.ep,
                             attention_dp=self.attention_dp,
                             redundant_experts=self.redundant_experts, moe_a2a=self.moe_a2a,
                             layers_per_stage=self.layers_per_stage if self.pp > 1 else None,
                             weight_dtype=self.weight_dtype, kv_dtype=self.kv_dtype,
                             max_num_seqs=self.max_num_seqs,
                             max_num_batched_tokens=self.max_num_batched_tokens,
                             chunked_prefill=True, max_model_len=self.max_model_len,
                             sm_clock_mhz=self.sm_clock_mhz)

    def group(self, replicas: int) -> ReplicaGroup:
        return ReplicaGroup(replicas=replicas, **self.config().model_dump())

    def label(self) -> str:
        return (f"{self.config().label()}@{self.pool}"
                f"(seqs{self.max_num_seqs},tok{self.max_num_batched_tokens})")


def workload_max_model_len(model: ModelSpec, stats: WorkloadStats) -> int:
    """The workload's longest request rounded up to MODEL_LEN_STEP, capped at the model's limit."""
    need = max(stats.max_seq_len, 1)
    return int(min(model.max_position_embeddings, math.ceil(need / MODEL_LEN_STEP) * MODEL_LEN_STEP))


def _total_linear_bytes(model: ModelSpec, weight_dtype: str) -> float:
    """Lower bound on the weight bytes of the whole model in ``weight_dtype`` (linear layers only)."""
    emb = model.embedding_params + model.lm_head_params
    return (model.params_total - emb) * linear_weight_bytes_per_elem(weight_dtype)


def _violations(slo: SLOSpec, pool: PoolSpec, tp: int, pp: int, wd: str, kv: str,
                fits: bool, default_wds: tuple[str, ...] = DEFAULT_WEIGHT_DTYPES) -> frozenset[str]:
    c = slo.constraints
    out = set()
    if not fits:
        out.add("memory")
    if wd not in (c.weight_dtypes or default_wds):
        out.add("weight_dtypes")
    if kv not in (c.kv_dtypes or DEFAULT_KV_DTYPES):
        out.add("kv_dtypes")
    if c.pools is not None and pool.name not in c.pools:
        out.add("pools")
    if c.max_tp is not None and tp > c.max_tp:
        out.add("max_tp")
    if c.max_pp is not None and pp > c.max_pp:
        out.add("max_pp")
    return frozenset(out)


def enumerate_candidates(model: ModelSpec, cluster: ClusterSpec, stats: WorkloadStats,
                         slo: SLOSpec, *, engine: EngineSpec | None = None,
                         everything: bool = False,
                         limits: tuple[tuple[int, int], ...] | None = None,
                         attention_dp: int | None = None) -> list[Candidate]:
    """Candidates of every pool. Normally only those violating no constraint group are returned;
    ``everything=True`` returns all of them (dtypes outside the defaults included) with their
    ``violates`` sets, for the infeasibility explanation. Shapes whose linear weights alone exceed
    the pool's device memory skip the detailed memory check (they cannot fit). ``attention_dp``:
    None searches every attention-DP size each shape can run (1 included); N only N (1 = off;
    shapes that cannot run N are left out)."""
    engine = engine or load_engine()
    # the user's required context (solve --max-model-len / SLO constraint) wins over the workload's
    max_len = getattr(slo.constraints, "max_model_len", None) or workload_max_model_len(model, stats)
    c = slo.constraints
    default_wds = default_weight_dtypes(model)
    wds = ALL_WEIGHT_DTYPES if everything else tuple(c.weight_dtypes or default_wds)
    kvs = ALL_KV_DTYPES if everything else tuple(c.kv_dtypes or DEFAULT_KV_DTYPES)
    out: list[Candidate] = []
    for pool in cluster.pools:
        if not everything and c.pools is not None and pool.name not in c.pools:
            continue
        cap = pool.device.memory_bytes
        pool_limits = limits or engine_limits(engine, pool)
        for shape in enumerate_shapes(model, pool, engine=engine):
            if not searched_shape(model, pool, shape):
                continue
            if not everything and ((c.max_tp and shape.tp > c.max_tp)
                                   or (c.max_pp and shape.pp > c.max_pp)):
                continue
            adps = attention_dp_degrees(model, shape.tp, shape.pp, engine)
            if attention_dp is not None:
                adps = [d for d in adps if d == attention_dp]
                if not adps:
                    continue
            for wd in wds:
                if wd == "fp4" and not fp4_runs(model, pool.device, engine.name):
                    continue  # NVFP4 / an MXFP4 checkpoint's kernels: not on this GPU / engine
                hopeless = _total_linear_bytes(model, wd) / shape.gpus > cap
                if hopeless and not everything:
                    continue
                split = split_layers(model, shape.pp, linear_weight_bytes_per_elem(wd))
                for adp in adps:
                    # DeepEP dispatch where the engine runs it: DP attention, EP over all of TP
                    a2as = ((False, True) if adp > 1 and shape.ep == shape.tp
                            and engine.moe_a2a else (False,))
                    for a2a in a2as:
                        for kv in kvs:
                            for seqs, tokens in pool_limits:
                                cand = _candidate(model, pool, shape, wd, kv, seqs, tokens, max_len,
                                                  split, hopeless, engine, slo, len(out), adp, a2a)
                                if everything or not cand.violates:
                                    out.append(cand)
    return [Candidate(**{**cand.__dict__, "index": i}) for i, cand in enumerate(out)]


def _candidate(model: ModelSpec, pool: PoolSpec, shape, wd: str, kv: str, seqs: int, tokens: int,
               max_len: int, split: tuple[int, ...], hopeless: bool, engine: EngineSpec,
               slo: SLOSpec, index: int, attention_dp: int = 1, moe_a2a: bool = False) -> Candidate:
    max_rep = pool.num_gpus // shape.gpus
    if hopeless:
        fits, problem, kv_tokens, wmax = False, "linear weights alone exceed device memory", 0, 0
    else:
        cfg = ReplicaConfig(pool=pool.name, tp=shape.tp, pp=shape.pp, ep=shape.ep,
                            layers_per_stage=split if shape.pp > 1 else None, weight_dtype=wd,
                            kv_dtype=kv, max_num_seqs=seqs, max_num_batched_tokens=tokens,
                            chunked_prefill=True, max_model_len=max_len, attention_dp=attention_dp,
                            redundant_experts=shape.redundant, moe_a2a=moe_a2a)
        mem = replica_memory(model, pool.device, cfg, engine)
        fits, problem, kv_tokens, wmax = mem.fits, mem.problem, mem.kv_tokens, mem.weights_per_gpu_max
    return Candidate(index=index, pool=pool.name, device=pool.device.name, tp=shape.tp,
                     pp=shape.pp, ep=shape.ep, weight_dtype=wd, kv_dtype=kv, max_num_seqs=seqs,
                     max_num_batched_tokens=tokens, max_model_len=max_len,
                     layers_per_stage=split, fits=fits, memory_problem=problem,
                     kv_tokens=kv_tokens, weights_bytes_max=wmax, max_replicas=max_rep,
                     attention_dp=attention_dp, redundant_experts=shape.redundant, moe_a2a=moe_a2a,
                     violates=_violations(slo, pool, shape.tp, shape.pp, wd, kv, fits,
                                          default_weight_dtypes(model)))
