"""Parallelism rules, in one place: which TP × PP × EP shapes a model can run with on a device
pool, how TP shards the KV heads, how PP splits the layers into stages, how replicas align with
nodes, and :func:`validate_plan`, the one guard every plan passes (memory, the cost model, the
candidates of the search and the launch commands all use these rules).

Rules: TP stays inside one node (it all-reduces twice per layer) and divides the attention heads;
KV heads either split evenly over TP or are replicated (TP a multiple of the KV heads); EP divides
TP and the number of routed experts; PP spans nodes, at most one stage per layer (the default
split is the engine's own, ``EngineSpec.pp_layer_remainder``, counted in the config's hidden
layers; the stages' micro-batches may share the running-request cap, :func:`seqs_per_scheduler`);
a replica either packs evenly into one node or takes whole nodes. Data-parallel attention
(``attention_dp`` = D > 1: D attention ranks of tp/D GPUs, experts over all tp GPUs) needs a
mixture-of-experts model, an engine that runs it, pp = 1, D dividing tp and an attention TP of
tp/D that is itself valid (:func:`attention_dp_problem`).
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

from .specs.cluster import ClusterSpec, PoolSpec
from .specs.engine import EngineSpec
from .specs.model import ModelSpec
from .specs.plan import Plan, ReplicaConfig


@dataclass(frozen=True)
class Shape:
    pool: str
    tp: int
    pp: int
    ep: int
    #: EPLB redundant expert slots that let ``ep`` split the experts (ReplicaConfig field)
    redundant: int = 0

    @property
    def gpus(self) -> int:
        return self.tp * self.pp


def valid_tp(model: ModelSpec, tp: int) -> bool:
    if model.num_attention_heads % tp:
        return False
    if model.attention == "gqa":
        # every layer kind's KV heads (per-kind shapes: Gemma-4 global layers, MiMo-V2 sliding
        # layers; vLLM / SGLang assert kv % tp == 0 or tp % kv == 0 per layer)
        for kv in {model.num_kv_heads} | {s.num_kv_heads for _, s in model.attn_shapes}:
            if kv % tp and tp % kv:
                return False
    return True


def physical_experts(model: ModelSpec, redundant: int = 0) -> int:
    """Expert slots of each MoE layer: the routed experts plus ``redundant`` EPLB replicas."""
    assert model.moe is not None
    return model.moe.num_experts + redundant


def valid_ep(model: ModelSpec, tp: int, ep: int, redundant: int = 0) -> bool:
    """EP divides TP and the expert slots (the routed experts + ``redundant`` EPLB replicas,
    which need ep > 1)."""
    if tp % ep:
        return False
    if ep == 1:
        return redundant == 0
    return model.moe is not None and physical_experts(model, redundant) % ep == 0


def redundant_for(model: ModelSpec, ep: int) -> int:
    """The fewest redundant expert slots that let ``ep`` ranks split the experts evenly (0 when
    ep divides them; vLLM issue #30075 proposes this as its default)."""
    if model.moe is None or ep <= 1:
        return 0
    return -model.moe.num_experts % ep


def attention_dp_problem(model: ModelSpec, tp: int, pp: int, adp: int,
                         engine: EngineSpec | None = None) -> str | None:
    """Why data-parallel attention of size ``adp`` cannot run on a TP ``tp`` x PP ``pp`` replica
    of ``model`` (with ``engine``, an EngineSpec, when given), or None. SGLang
    (``--enable-dp-attention --dp-size D``, server_args.py asserts tp_size % dp_size == 0) and
    vLLM V1 (``--data-parallel-size D --tensor-parallel-size tp/D``, the MoE over all D x tp/D
    GPUs) run it for MoE models only: a dense model's MLP would be replicated per rank, which is
    plain data parallelism. apex-opt's simulator runs the ranks in lockstep in one stage (pp 1)."""
    if adp == 1:
        return None
    if adp < 1:
        return f"attention_dp={adp} must be >= 1"
    if model.moe is None:
        return (f"attention_dp={adp} needs a mixture-of-experts model; {model.name} is dense "
                f"(use replicas for data parallelism)")
    if tp % adp:
        return f"attention_dp={adp} must divide tp={tp}"
    if pp > 1:
        return f"attention_dp={adp} needs pp=1 (got pp={pp})"
    if not valid_tp(model, tp // adp):
        return (f"attention_dp={adp} leaves attention TP {tp // adp}, which does not split the "
                f"{model.num_attention_heads} attention heads / {model.num_kv_heads} KV heads of "
                f"{model.name}")
    if engine is not None and not getattr(engine, "dp_attention", False):
        return (f"attention_dp={adp}: engine {engine.name} has no data-parallel attention "
                f"(SGLang: --enable-dp-attention; vLLM V1: --data-parallel-size)")
    return None


def shared_expert_split(cfg: ReplicaConfig, engine: EngineSpec) -> tuple[int, str]:
    """How a MoE replica runs its shared experts: (the TP degree their weights are split over,
    whose tokens each GPU runs them on -- 'all' every rank's gathered tokens, 'rank' its DP
    rank's, 'local' its 1/attention-TP share of them).

    Plain TP and SGLang's gathered DP attention: over all tp GPUs on all tokens. vLLM's DP
    attention (each DP rank an engine core, EngineSpec.dp_attention_gathered_dense false): over
    the rank's attention TP on its own tokens -- replicated, on 1/attn_tp of them, under its
    sequence-parallel MoE (attention TP > 1 with EP: ParallelConfig.use_sequence_parallel_moe;
    DeepseekV2MLP disable_tp=is_sequence_parallel, "the weights are replicated"). All-to-all
    dispatch (moe_a2a): replicated on the GPU's own tokens in both engines (SGLang builds them with
    tp_size 1 under DeepEP)."""
    adp = getattr(cfg, "attention_dp", 1) or 1
    if adp == 1:
        return cfg.tp, "all"
    atp = cfg.tp // adp
    per_rank = not engine.dp_attention_gathered_dense
    if getattr(cfg, "moe_a2a", False) or (per_rank and atp > 1 and cfg.ep > 1):
        return 1, "local"
    if per_rank:
        return atp, "rank"
    return cfg.tp, "all"


def moe_a2a_problem(moe_a2a: bool, engine: EngineSpec | None = None) -> str | None:
    """Why the engine cannot dispatch MoE tokens by all-to-all (None: it can, or not asked)."""
    if moe_a2a and engine is not None and not engine.moe_a2a:
        return (f"moe_a2a: engine {engine.label} has no all-to-all MoE dispatch (DeepEP: SGLang "
                f"0.5 --moe-a2a-backend deepep, vLLM >= 0.9 VLLM_ALL2ALL_BACKEND / "
                f"--all2all-backend deepep_low_latency)")
    return None


def redundant_experts_problem(redundant: int, engine: EngineSpec | None = None) -> str | None:
    """Why the engine cannot place ``redundant`` EPLB expert slots (None: it can, or none asked)."""
    if redundant and engine is not None and not engine.redundant_experts_argv:
        return (f"redundant_experts={redundant}: engine {engine.label} cannot place redundant "
                f"experts (SGLang >= 0.4.6 --ep-num-redundant-experts; vLLM >= 0.9.2 --enable-eplb)")
    return None


def attention_dp_degrees(model: ModelSpec, tp: int, pp: int,
                         engine: EngineSpec | None = None) -> list[int]:
    """Every attention-DP size a TP ``tp`` x PP ``pp`` replica of ``model`` can use (1 first,
    when plain TP ``tp`` splits the heads)."""
    return [d for d in range(1, tp + 1)
            if tp % d == 0 and valid_tp(model, tp // d)
            and attention_dp_problem(model, tp, pp, d, engine) is None]


def tp_degrees(model: ModelSpec, pool: PoolSpec, engine: EngineSpec | None = None) -> list[int]:
    """TP degrees that pack a node evenly or, inside a multi-node NVLink domain
    (PoolSpec.tp_domain_gpus), take whole nodes. With an ``engine`` that runs data-parallel
    attention, also those only DP attention can run for a MoE model (TP72 on a GB200 NVL72:
    DeepSeek's 128 heads whole on each of 72 attention ranks)."""
    gpn = pool.gpus_per_node
    return [t for t in range(1, pool.tp_domain_gpus + 1)
            if (gpn % t == 0 if t <= gpn else t % gpn == 0)
            and (valid_tp(model, t) or (engine is not None and len(attention_dp_degrees(
                model, t, 1, engine)) > 0))]


def enumerate_shapes(model: ModelSpec, pool: PoolSpec, max_gpus: int | None = None,
                     max_pp: int = 64, engine: EngineSpec | None = None) -> list[Shape]:
    """All valid shapes of one replica on ``pool`` (at most ``max_gpus`` GPUs). With an
    ``engine``: also the TP degrees only its DP attention runs (pp 1) and, where it places
    redundant experts, EP over the whole TP group with the fewest slots that make it divide
    the experts (:func:`redundant_for`)."""
    limit = min(pool.num_gpus, max_gpus or pool.num_gpus)
    eplb = engine is not None and bool(engine.redundant_experts_argv)
    out = []
    for tp in tp_degrees(model, pool, engine):
        max_stages = min(max_pp, model.num_layers, limit // tp) if valid_tp(model, tp) else 1
        for pp in range(1, max_stages + 1):
            eps = [e for e in range(1, tp + 1) if valid_ep(model, tp, e)] if model.moe else [1]
            for ep in eps:
                out.append(Shape(pool.name, tp, pp, ep))
            if model.moe and eplb and tp > 1 and redundant_for(model, tp):
                out.append(Shape(pool.name, tp, pp, tp, redundant_for(model, tp)))
    return out


def shape_problem(model: ModelSpec, pool: PoolSpec, tp: int, pp: int, ep: int, *,
                  attention_dp: int = 1, redundant_experts: int = 0) -> str | None:
    """Why a TP/PP/EP shape cannot run ``model`` on ``pool`` (the engine would refuse it), or None.
    With data-parallel attention the heads split over the attention TP, tp / ``attention_dp``
    (SGLang --tp 72 --dp 72 runs DeepSeek's 128 heads whole on each GPU);
    ``redundant_experts``: EPLB slots added to the experts EP must divide."""
    atp = tp // attention_dp if attention_dp >= 1 and tp % attention_dp == 0 else tp
    what = f"tp={tp}" if atp == tp else f"the attention TP {atp} (tp={tp} / attention_dp={attention_dp})"
    if model.num_attention_heads % atp:
        return (f"{what} does not divide the {model.num_attention_heads} attention heads of "
                f"{model.name}; use one of {tp_degrees(model, pool) or [1]}")
    for kv in ({model.num_kv_heads} | {s.num_kv_heads for _, s in model.attn_shapes}
               if model.attention == "gqa" else ()):
        if kv % atp and atp % kv:
            return (f"{what} neither divides nor is a multiple of the {kv} KV heads of "
                    f"{model.name}")
    if ep > 1 and model.moe is None:
        return f"ep={ep} needs a mixture-of-experts model; {model.name} is dense"
    if redundant_experts and ep == 1:
        return f"redundant_experts={redundant_experts} needs expert parallelism (ep > 1)"
    if not valid_ep(model, tp, ep, redundant_experts):
        slots = (f"the {model.moe.num_experts} experts" if not redundant_experts else
                 f"the {physical_experts(model, redundant_experts)} expert slots "
                 f"({model.moe.num_experts} + {redundant_experts} redundant)")
        hint = ""
        if tp % ep == 0 and redundant_for(model, ep):
            hint = (f"; --redundant-experts {redundant_for(model, ep)} makes "
                    f"{physical_experts(model, redundant_for(model, ep))} slots (EPLB)")
        return f"ep={ep} must divide tp={tp} and {slots} of {model.name}{hint}"
    if pp > model.num_layers:
        return f"pp={pp} exceeds the {model.num_layers} layers of {model.name}"
    return None


def scope_problem(pool: PoolSpec, tp: int) -> str | None:
    """A shape the engines can run but apex-opt does not model (exit 3, not bad input): tensor
    parallelism across nodes joined by a network (vLLM / SGLang run it there, every layer's
    all-reduces on that link; the cost model keeps TP groups inside one node, or inside the
    multi-node NVLink domain of an NVL72 rack: PoolSpec.tp_domain_gpus)."""
    gpn = pool.gpus_per_node
    if tp > pool.tp_domain_gpus:
        return (f"tp={tp} exceeds the {gpn} GPUs of one node of pool "
                f"'{pool.name}': apex-opt models tensor parallelism inside one node only (the "
                f"engines can run it across nodes, all-reduces over the inter-node link); use "
                f"--pp across nodes, or tp <= {gpn}")
    if tp > gpn and tp % gpn:
        return (f"tp={tp} spans nodes of pool '{pool.name}' without taking whole {gpn}-GPU "
                f"nodes; use a multiple of {gpn}")
    return None


def kv_heads_per_rank(model: ModelSpec, tp: int) -> int:
    """KV heads each TP rank stores (replicated when TP exceeds the KV heads)."""
    return max(1, model.num_kv_heads // tp)


def engine_partition(n: int, pp: int, remainder: str = "before_last") -> list[int]:
    """How an engine's default pipeline split shares ``n`` hidden layers over ``pp`` stages:
    ``n // pp`` each and the remainder as ``EngineSpec.pp_layer_remainder`` says ('last': all on
    the last stage; 'before_last': one each on the stages before the last, from the
    second-to-last back; 'last_n': one each on the last ``remainder`` stages)."""
    if pp > n:
        raise ValueError(f"pp={pp} exceeds the model's {n} layers")
    base, rem = divmod(n, pp)
    parts = [base] * pp
    if remainder == "last":
        parts[-1] += rem
    elif remainder == "before_last":
        for i in range(2, rem + 2):
            parts[-i] += 1
    elif remainder == "last_n":
        for i in range(1, rem + 1):
            parts[-i] += 1
    else:
        raise ValueError(f"unknown pp_layer_remainder {remainder!r}")
    return parts


def default_layers_per_stage(model: ModelSpec | int, pp: int,
                             engine: EngineSpec | None = None) -> tuple[int, ...]:
    """The engine's default split of ``model``'s layers into ``pp`` stages (an int: that many
    one-block layers; no engine: vLLM V1's rule). The engine splits the config's hidden layers
    (``ModelSpec.layer_blocks``: Nemotron-H counts a mixer and its MLP as two); a modelled layer
    goes to the stage that holds its first block."""
    remainder = engine.pp_layer_remainder if engine is not None else "before_last"
    if isinstance(model, int):
        return tuple(engine_partition(model, pp, remainder))
    blocks = model.blocks_per_layer
    if pp > len(blocks):
        raise ValueError(f"pp={pp} exceeds the model's {len(blocks)} layers")
    ends = list(itertools.accumulate(engine_partition(sum(blocks), pp, remainder)))
    counts = [0] * pp
    for first in itertools.accumulate(blocks[:-1], initial=0):  # each layer's first block
        counts[bisect.bisect_right(ends, first)] += 1
    if min(counts) == 0:  # a stage of a lone trailing block: split the modelled layers instead
        return tuple(engine_partition(len(blocks), pp, remainder))
    return tuple(counts)


def _grouping_note(model: ModelSpec) -> str:
    """How the modelled layers relate to the config's hidden layers, where they differ."""
    blocks = model.blocks_per_layer
    if sum(blocks) == len(blocks):
        return ""
    return (f" (its {len(blocks)} modelled layers pair a mixer block with the MLP / MoE block "
            f"after it, out of the config's {sum(blocks)} hidden layers; the launch commands "
            f"spell the split in those {sum(blocks)})")


def stage_layer_ranges(model: ModelSpec, cfg: ReplicaConfig,
                       engine: EngineSpec | None = None) -> list[range]:
    """The layers of each pipeline stage of ``cfg``: its ``layers_per_stage``, else the engine's
    default split (:func:`default_layers_per_stage`)."""
    num_layers = model.num_layers
    split = cfg.layers_per_stage or default_layers_per_stage(model, cfg.pp, engine)
    if sum(split) != num_layers:
        raise ValueError(f"layers_per_stage {list(split)} sums to {sum(split)}, model has "
                         f"{num_layers} layers{_grouping_note(model)}")
    out, start = [], 0
    for n in split:
        out.append(range(start, start + n))
        start += n
    return out


def seqs_per_scheduler(max_num_seqs: int, pp: int, shared: bool) -> int:
    """Running requests one pipeline virtual engine may hold: the whole ``max_num_seqs`` where
    each has a scheduler of its own (vLLM 0.6), ``max_num_seqs // pp`` (at least 1) where the
    in-flight micro-batches share it (``shared``: ``EngineSpec.pp_shares_max_num_seqs``)."""
    if pp > 1 and shared:
        return max(1, max_num_seqs // pp)
    return max_num_seqs


def stage_blocks(model: ModelSpec, split: tuple[int, ...]) -> tuple[int, ...]:
    """``split`` (modelled layers per stage) in the config's hidden layers, as the engines'
    VLLM_PP_LAYER_PARTITION / SGLANG_PP_LAYER_PARTITION count them."""
    blocks = model.blocks_per_layer
    out, start = [], 0
    for n in split:
        out.append(sum(blocks[start:start + n]))
        start += n
    return tuple(out)


def node_aligned(gpus: int, gpus_per_node: int) -> bool:
    """A replica either packs evenly into one node or takes whole nodes."""
    if gpus <= gpus_per_node:
        return gpus_per_node % gpus == 0
    return gpus % gpus_per_node == 0


def validate_plan(model: ModelSpec, cluster: ClusterSpec, plan: Plan,
                  engine: EngineSpec | None = None) -> list[str]:
    """Every parallelism rule ``plan`` breaks on ``cluster`` (empty = valid): unknown pools, shapes
    the engine would refuse (:func:`shape_problem`), data-parallel attention that cannot run
    (:func:`attention_dp_problem`; the engine's support checked when ``engine`` is given), stage
    splits that do not cover the model, and pools asked for more GPUs than they have. Memory is
    checked by :mod:`apex_opt.memory`."""
    out: list[str] = []
    pools = {p.name: p for p in cluster.pools}
    used: dict[str, int] = {}
    for gi, g in enumerate(plan.groups):
        where = f"group {gi} ({g.label()})"
        pool = pools.get(g.pool) if g.pool is not None else cluster.pools[0]
        if pool is None:
            out.append(f"{where}: unknown pool {g.pool!r}")
            continue
        used[pool.name] = used.get(pool.name, 0) + g.replicas * g.gpus
        adp = getattr(g, "attention_dp", 1) or 1
        red = getattr(g, "redundant_experts", 0) or 0
        for problem in (shape_problem(model, pool, g.tp, g.pp, g.ep, attention_dp=adp,
                                      redundant_experts=red),
                        scope_problem(pool, g.tp),
                        attention_dp_problem(model, g.tp, g.pp, adp, engine),
                        redundant_experts_problem(red, engine),
                        moe_a2a_problem(bool(getattr(g, "moe_a2a", False)), engine)):
            if problem:
                out.append(f"{where}: {problem}")
        if g.layers_per_stage is not None and sum(g.layers_per_stage) != model.num_layers:
            out.append(f"{where}: layers_per_stage sums to {sum(g.layers_per_stage)}, "
                       f"model has {model.num_layers}{_grouping_note(model)}")
    for name, n in used.items():
        if n > pools[name].num_gpus:
            out.append(f"pool {name}: plan uses {n} GPUs, the pool has {pools[name].num_gpus}")
    return out
