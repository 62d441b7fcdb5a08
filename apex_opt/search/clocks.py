"""GPU clock as a plan knob of the ``energy`` (and ``cost``) objective.

Decode is memory-bound: a lower SM clock barely slows it while the dynamic power falls
super-linearly (the DVFS model of :mod:`apex_opt.costmodel.power`, device data in the device
files). After the search has found the best plans at the driver's default clock, each of the best
few is re-costed at a ladder of locked clocks (``nvidia-smi -lgc``) by the surrogate, and the
most promising settings are simulated; a clocked plan wins only when its simulation meets the SLO
with less energy. A power cap settles a loaded GPU at a clock on the same ladder, so the clock
ladder covers what caps can reach.
"""

from __future__ import annotations

import dataclasses

from ..solver.model import SearchSpace
from ..solver.objective import ReplicaModel, cost_curves
from ..specs.cluster import DeviceSpec
from ..specs.model import ModelSpec
from .plans import PlanKey
from .shortlist import score

#: Locked clocks tried, as fractions of the device's base clock (the boost clock is the default).
CLOCK_FRACTIONS = (1.0, 0.85, 0.7, 0.55, 0.45)
#: NVIDIA application clocks come in steps of this many MHz.
CLOCK_STEP_MHZ = 15
#: Clocked variants simulated for the best plan, the second best, ... (by simulated objective).
CLOCKS_SIMULATED = (2, 1)


def clock_options(dev: DeviceSpec) -> list[int]:
    """Locked SM clocks worth trying on ``dev`` (empty when the device has no sourced range)."""
    if dev.sm_clock_max_mhz is None or dev.sm_clock_min_mhz is None:
        return []
    base = dev.sm_clock_base_mhz or dev.sm_clock_max_mhz
    out = set()
    for f in CLOCK_FRACTIONS:
        c = int(base * f) // CLOCK_STEP_MHZ * CLOCK_STEP_MHZ
        if dev.sm_clock_min_mhz <= c <= dev.sm_clock_max_mhz:
            out.add(c)
    return sorted(out, reverse=True)


def clocked_key(model: ModelSpec, space: SearchSpace, key: PlanKey, clock: int,
                cache: dict) -> PlanKey | None:
    """``key`` with every group at ``clock`` (groups whose device cannot lock it stay as they
    are); the clocked candidates are appended to ``space`` (memoised in ``cache``)."""
    out = []
    changed = False
    for i, k in key:
        c = space.cands[i]
        dev = space.cluster.pool(c.pool).device
        if clock not in clock_options(dev):
            out.append((i, k))
            continue
        j = cache.get((i, clock))
        if j is None:
            cc = dataclasses.replace(c, index=len(space.cands), sm_clock_mhz=clock)
            cv = cost_curves(model, space.cluster, cc, space.stats, space.engine,
                             budgets=(cc.max_num_batched_tokens,))
            space.cands.append(cc)
            space.models.append(ReplicaModel(cc, cv, space.stats))
            j = cache[(i, clock)] = cc.index
        out.append((j, k))
        changed = True
    return tuple(sorted(out)) if changed else None


def clocked_variants(model: ModelSpec, space: SearchSpace, keys: list[PlanKey],
                     cache: dict) -> list[PlanKey]:
    """The most promising clocked variants of ``keys`` (best first) by the surrogate's J/token
    (those whose surrogate meets the SLO at the workload's rate), ``CLOCKS_SIMULATED`` of them
    per plan."""
    out = []
    for key, n in zip(keys, CLOCKS_SIMULATED):
        devs = {space.cluster.pool(space.cands[i].pool).device.name: space.cluster.pool(
            space.cands[i].pool).device for i, _ in key}
        clocks = sorted({c for d in devs.values() for c in clock_options(d)}, reverse=True)
        scored = []
        for clk in clocks:
            ck = clocked_key(model, space, key, clk, cache)
            if ck is None:
                continue
            s = score(space, ck)
            # a lower clock only slows a replica down: keep the settings at which the surrogate
            # still meets every target at the workload's rate (not merely "not hopeless")
            if not s.hopeless and s.est.capacity_at_slo_req_s >= space.stats.rate_req_s:
                scored.append((s.est.energy_j_per_token, clk, ck))
        scored.sort()
        out += [ck for _e, _c, ck in scored[:n]]
    return out
