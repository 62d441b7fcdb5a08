"""The two heuristic baselines every answer is compared with (same simulator, same workload)."""

from __future__ import annotations

from ..solver.candidates import engine_defaults
from ..solver.model import SearchSpace
from ..specs.engine import EngineSpec
from .plans import PlanKey, plan_gpus

#: (name, description, candidate order) of the baselines.
BASELINES = (
    ("max-tp-dp", "largest TP inside a node (fewest pipeline stages that fit) + DP across the rest",
     lambda c: (-c.tp, c.pp)),
    ("min-tp-dp", "smallest TP x PP that fits + DP to fill", lambda c: (c.gpus, c.pp)),
)


def baseline_keys(space: SearchSpace, engine: EngineSpec) -> list[tuple[str, str, PlanKey | None, str | None]]:
    """The baselines as plan keys (None when no candidate fits): the engine's default
    (max_num_seqs, max_num_batched_tokens) on each pool's device; bf16 weights and KV unless not
    allowed; plain TP attention (no data-parallel attention)."""
    out = []
    mg = space.slo.constraints.max_gpus
    for name, desc, order in BASELINES:
        key: list[tuple[int, int]] = []
        for pool in space.cluster.pools:
            seqs, tokens = engine_defaults(engine, pool)
            used = plan_gpus(space, tuple(key))
            budget = pool.num_gpus if mg is None else min(pool.num_gpus, mg - used)
            cands = [(i, c) for i, c in enumerate(space.cands) if c.pool == pool.name
                     and c.max_num_seqs == seqs and c.max_num_batched_tokens == tokens
                     and c.gpus <= budget and c.sm_clock_mhz is None
                     and c.attention_dp == 1]
            if not cands:
                continue
            dt = [(i, c) for i, c in cands if c.weight_dtype == "bf16" and c.kv_dtype == "bf16"] or cands
            i, c = min(dt, key=lambda ic: (order(ic[1]), ic[1].weight_dtype != "bf16",
                                           ic[1].kv_dtype != "bf16", ic[1].ep))
            k = budget // c.gpus
            if k >= 1:
                key.append((i, k))
        out.append((name, desc, tuple(sorted(key)) or None,
                    None if key else "no replica shape with default engine limits fits"))
    return out
