"""The CP-SAT shortlist: top-K plans by the analytic surrogate (no-good cuts), without twins."""

from __future__ import annotations

import dataclasses

from ..solver.model import PlanModel, SearchSpace
from ..solver.topk import top_k as run_top_k
from .plans import PlanKey, estimate

#: a max_num_seqs cap this many times the mean in-flight requests per replica never binds
SEQ_CAP_PEAK = 4.0


def shortlist(space: SearchSpace, objective: str, k: int, workers: int, seed: int,
              time_limit_s: float) -> tuple[list[PlanKey], str]:
    """Top-K plans of the CP-SAT model; for ``energy`` also the top-K latency plans, so that the
    latency-optimal plan is simulated too and the saving against it is measured."""
    res = run_top_k(PlanModel(space), 2 * k, workers=workers, seed=seed, time_limit_s=time_limit_s)
    keys = distinct(space, list(res.plans))[:k]
    if objective == "energy" and keys:
        lat = dataclasses.replace(space, objective="latency")
        more = run_top_k(PlanModel(lat), 2 * k, workers=workers, seed=seed, time_limit_s=time_limit_s)
        keys += [p for p in distinct(space, list(more.plans))[:k] if p not in keys]
    return keys, res.status


def distinct(space: SearchSpace, keys: list[PlanKey]) -> list[PlanKey]:
    """Drop plans that differ from an earlier one only in ``max_num_seqs`` caps that cannot bind
    at this load: by Little's law a replica holds ``rate x latency / replicas`` requests on
    average, and a cap at least ``SEQ_CAP_PEAK`` times that is (practically) never reached, so
    simulating both would show two identical rows instead of one more real alternative."""
    seen: set = set()
    out = []
    for key in keys:
        est = estimate(space, key)
        replicas = sum(n for _, n in key)
        inflight = space.stats.rate_req_s * est.latency_s / max(replicas, 1)
        shape = tuple(sorted(
            (space.cands[i].cost_key, space.cands[i].max_num_batched_tokens,
             0 if space.cands[i].max_num_seqs >= SEQ_CAP_PEAK * inflight else space.cands[i].max_num_seqs,
             n)
            for i, n in key))
        if shape in seen:
            continue
        seen.add(shape)
        out.append(key)
    return out
