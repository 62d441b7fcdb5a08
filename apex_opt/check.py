"""`apex-opt check`: which replica shapes fit in memory, and, when none does, why and what to change.

Every suggested fix is verified by re-running the check with that change applied.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from .memory import GIB, MemoryReport, replica_memory
from .parallel import enumerate_shapes
from .specs.cluster import ClusterSpec, PoolSpec
from .specs.engine import load_engine
from .specs.model import ModelSpec
from .specs.plan import ReplicaConfig


class CheckOptions(BaseModel):
    """The knobs `check` varies or holds fixed."""

    weight_dtype: str | None = None  # None: the checkpoint's (ReplicaConfig.resolved)
    kv_dtype: str | None = None  # None: bf16, or the checkpoint's where the engine reads it
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None  # None: the engine's (vLLM 0.9, SGLang by GPU)
    max_num_seqs: int | None = None  # None: the engine's default for the device
    max_num_batched_tokens: int | None = None
    chunked_prefill: bool | None = None  # None = the engine's default (ReplicaConfig.resolved)
    engine: str = "vllm"


class Suggestion(BaseModel):
    """A change that makes the model fit, verified by re-running the check."""

    change: str
    detail: str
    feasible_shapes: int
    example: str


class CheckResult(BaseModel):
    """Output of `apex-opt check` (also its --json)."""

    schema_version: int = 1
    model: str
    cluster: str
    options: CheckOptions
    shapes_considered: int
    feasible: list[MemoryReport]
    fits: bool
    tightest: MemoryReport | None = Field(None, description="Closest infeasible shape, when none fits")
    explanation: str | None = None
    suggestions: list[Suggestion] = []


def _cfg(shape, opts: CheckOptions) -> ReplicaConfig:
    # an unset utilisation stays unset: the engine's own default applies (SGLang: by GPU memory)
    util = ({} if opts.gpu_memory_utilization is None
            else {"gpu_memory_utilization": opts.gpu_memory_utilization})
    return ReplicaConfig(pool=shape.pool, tp=shape.tp, pp=shape.pp, ep=shape.ep,
                         weight_dtype=opts.weight_dtype, kv_dtype=opts.kv_dtype,
                         max_model_len=opts.max_model_len, max_num_seqs=opts.max_num_seqs,
                         max_num_batched_tokens=opts.max_num_batched_tokens,
                         chunked_prefill=opts.chunked_prefill, **util)


def _reports(model: ModelSpec, cluster: ClusterSpec, opts: CheckOptions) -> list[MemoryReport]:
    engine = load_engine(opts.engine)
    out = []
    for pool in cluster.pools:
        if opts.weight_dtype == "fp4":
            from .costmodel import fp4_runs
            if not fp4_runs(model, pool.device, engine.name):  # engine can't run the fp4 here
                continue
        for shape in enumerate_shapes(model, pool):
            out.append(replica_memory(model, pool.device, _cfg(shape, opts), engine))
    return out


def _with_nodes(cluster: ClusterSpec, pool: PoolSpec, nodes: int) -> ClusterSpec:
    pools = [p.model_copy(update={"nodes": nodes}) if p.name == pool.name else p for p in cluster.pools]
    if nodes > 1 and pool.inter_node is None:
        from .specs.cluster import LinkSpec
        net = LinkSpec(kind="infiniband", bandwidth_gbps=50, latency_us=5)
        pools = [p.model_copy(update={"inter_node": net}) if p.name == pool.name else p for p in pools]
    return cluster.model_copy(update={"pools": pools})


def _best(reports: list[MemoryReport]) -> MemoryReport:
    return min(reports, key=lambda r: (r.gpus, -r.kv_tokens))


def _suggestions(model: ModelSpec, cluster: ClusterSpec, opts: CheckOptions) -> list[Suggestion]:
    out: list[Suggestion] = []

    def tried(change: str, detail: str, o: CheckOptions, c: ClusterSpec = cluster) -> bool:
        fits = [r for r in _reports(model, c, o) if r.fits]
        if fits:
            b = _best(fits)
            out.append(Suggestion(change=change, detail=detail, feasible_shapes=len(fits),
                                  example=f"{b.gpus} GPU(s) of {b.device}: TP{b.tp} PP{b.pp}"
                                          + (f" EP{b.ep}" if b.ep > 1 else "")
                                          + f", {b.kv_tokens} KV tokens"))
            return True
        return False

    order = ["bf16", "fp8", "int4"]
    # fp4 (NVFP4, 0.5625 B/param) is not suggested; from fp4 the next smaller is int4
    start = order.index(opts.weight_dtype) + 1 if opts.weight_dtype in order else order.index("int4")
    for wd in order[start:]:
        if tried(f"--weight-dtype {wd}", f"store weights in {wd}",
                 opts.model_copy(update={"weight_dtype": wd})):
            break
    if opts.kv_dtype in (None, "bf16"):
        tried("--kv-dtype fp8", "store the KV cache in fp8 (halves KV bytes per token)",
              opts.model_copy(update={"kv_dtype": "fp8"}))
    # more GPUs of the same type: grow each pool's node count until something fits
    for pool in cluster.pools:
        for nodes in range(pool.nodes + 1, max(pool.nodes * 16, 16) + 1):
            c = _with_nodes(cluster, pool, nodes)
            if tried(f"{nodes} nodes of {pool.device.name} in pool '{pool.name}'",
                     f"{nodes * pool.gpus_per_node} GPUs instead of {pool.num_gpus} "
                     f"(pipeline stages across nodes)", opts, c):
                break
    # shorter context: the longest max_model_len that fits (binary search on powers of two steps)
    max_len = opts.max_model_len or model.max_position_embeddings
    lo, hi, best = 256, max_len - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if any(r.fits for r in _reports(model, cluster, opts.model_copy(update={"max_model_len": mid}))):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    if best is not None:
        best = best // 256 * 256 or best
        tried(f"--max-model-len {best}", f"limit the context to {best} tokens (from {max_len})",
              opts.model_copy(update={"max_model_len": best}))
    return out


def check(model: ModelSpec, cluster: ClusterSpec, opts: CheckOptions | None = None,
          *, suggest: bool = True) -> CheckResult:
    """Every shape that fits, with its memory; when none fits, the tightest shape and verified fixes."""
    opts = opts or CheckOptions()
    # an unset weight dtype is the checkpoint's (one rule: ReplicaConfig), echoed in the result
    opts = opts.model_copy(update={"weight_dtype": ReplicaConfig(
        weight_dtype=opts.weight_dtype).resolved_weight_dtype(model)})
    if opts.weight_dtype == "fp4":  # NVFP4 / MXFP4: refused where no engine runs it
        from .costmodel import fp4_runs, fp4_unsupported_message
        from .costmodel.kernels import mxfp4_unsupported_message
        from .errors import InputError

        name = load_engine(opts.engine).name
        bad = [p.device for p in cluster.pools if not fp4_runs(model, p.device, name)]
        if bad and len(bad) == len(cluster.pools):
            mx = model.quant_scheme == "mxfp4" and model.default_weight_dtype == "fp4"
            raise InputError((mxfp4_unsupported_message if mx else fp4_unsupported_message)(
                bad[0], name), field="weight_dtype", value="fp4")
    reports = _reports(model, cluster, opts)
    feasible = [r for r in reports if r.fits]
    feasible.sort(key=lambda r: (r.pool or "", r.gpus, r.tp, r.pp, r.ep))
    res = CheckResult(model=model.name, cluster=cluster.name, options=opts,
                      shapes_considered=len(reports), feasible=feasible, fits=bool(feasible))
    if feasible or not reports:
        if not reports:
            res.explanation = "no valid TP/PP/EP shape exists for this model on this cluster"
        return res
    tight = min(reports, key=lambda r: (r.overflow_bytes, -r.gpus))
    res.tightest = tight
    res.explanation = (f"no replica shape fits: on the tightest, TP{tight.tp} PP{tight.pp}"
                       + (f" EP{tight.ep}" if tight.ep > 1 else "")
                       + f" on {tight.gpus} x {tight.device}, {tight.problem}"
                       + ("" if "short by" in (tight.problem or "")
                          else f"; short by {tight.overflow_bytes / GIB:.1f} GiB per GPU"))
    if suggest:
        res.suggestions = _suggestions(model, cluster, opts)
    return res
