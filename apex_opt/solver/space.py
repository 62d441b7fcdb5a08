"""Build the :class:`~apex_opt.solver.model.SearchSpace` of a problem: the replica candidates and
their steady-state surrogates (one iteration-cost curve per distinct replica configuration)."""

from __future__ import annotations

from ..specs.cluster import ClusterSpec
from ..specs.engine import EngineSpec, load_engine
from ..specs.model import ModelSpec
from ..specs.slo import SLOSpec
from .candidates import WorkloadStats, enumerate_candidates
from .model import SearchSpace
from .objective import ReplicaModel, cost_curves


def build_space(model: ModelSpec, cluster: ClusterSpec, stats: WorkloadStats, slo: SLOSpec,
                objective: str, everything: bool = False,
                engine: EngineSpec | None = None, attention_dp: int | None = None) -> SearchSpace:
    """Candidates of every pool with their surrogates. ``everything=True`` keeps candidates that
    violate a user constraint (the infeasibility explanation relaxes them one group at a time)
    but drops those that cannot fit in memory. ``attention_dp``: None searches every
    data-parallel-attention size, N only N (1 = off)."""
    engine = engine or load_engine()
    cands = enumerate_candidates(model, cluster, stats, slo, engine=engine, everything=everything,
                                 attention_dp=attention_dp)
    if everything:
        cands = [c for c in cands if c.fits]
    budgets: dict = {}
    for c in cands:
        budgets.setdefault(c.cost_key, set()).add(c.max_num_batched_tokens)
    curves: dict = {}
    shared: dict = {}  # kernel costs and token work shared between the candidates' cost models
    models = []
    for c in cands:
        cv = curves.get(c.cost_key)
        if cv is None:
            cv = curves[c.cost_key] = cost_curves(model, cluster, c, stats, engine,
                                                  budgets=tuple(sorted(budgets[c.cost_key])),
                                                  shared=shared)
        models.append(ReplicaModel(c, cv, stats))
    return SearchSpace(cands, models, stats, slo, cluster, objective, engine)
