"""The CP-SAT model of plan selection.

Decision variables: a Boolean ``x[c, k]`` per candidate ``c`` (:mod:`.candidates`) and replica count
``k`` (1 .. what its pool holds). A plan uses at most one candidate per pool (heterogeneous clusters
mix pools) and at least one replica overall. Everything is linear with integer coefficients (GPUs,
mreq/s, mW, µs, see :mod:`.objective`).

Constraint groups (each can be switched by one literal -- the assumptions of :mod:`.explain`):

* per-candidate groups forbid every candidate that violates them: ``memory``, ``weight_dtypes``,
  ``kv_dtypes``, ``pools``, ``max_tp``, ``max_pp``, and the SLO screens ``ttft_ms`` / ``tpot_ms`` /
  ``e2e_s`` (the candidate's unloaded latency floor, times ``SCREEN_SLACK``, exceeds the target);
* ``gpus_available``: per pool, replicas x GPUs <= the pool's GPUs;
* ``max_gpus``: all GPUs <= the SLO file's ``max_gpus``;
* ``power_budget_w``: idle power of the chosen replicas + the workload's dynamic power <= budget;
* ``load``: total capacity >= ``LOAD_SLACK`` x the workload's request rate.

Objectives (minimised): ``latency`` -- on a one-pool search the exact surrogate E2E of each
``x[c, k]`` (µs); with several pools, log(max unloaded latency) + log(1/(1 - rate/capacity)) by
tangent cuts; ``energy`` -- surrogate plan power (mW, idle + dynamic), ties by latency; ``gpus`` --
GPUs, ties by latency; ``throughput`` -- maximise the plan's capacity at the TPOT target (the
highest rate it can sustain within the SLO), ties by fewer GPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


from ..specs.cluster import ClusterSpec
from ..specs.engine import EngineSpec
from ..specs.slo import SLOSpec
from .candidates import Candidate, WorkloadStats
from .objective import ReplicaModel, plan_estimate, to_milli, to_us

#: A candidate is screened out by an SLO target only when its unloaded floor x this exceeds it.
SCREEN_SLACK = 0.8
#: A plan must offer at least this fraction of the workload's rate as capacity.
LOAD_SLACK = 0.5
#: Groups applied per candidate.
CANDIDATE_GROUPS = ("memory", "weight_dtypes", "kv_dtypes", "pools", "max_tp", "max_pp",
                    "ttft_ms", "tpot_ms", "e2e_s")
PLAN_GROUPS = ("gpus_available", "max_gpus", "power_budget_w", "load")
#: Scale of log objectives (units per e-fold).
LOG_SCALE = 10_000
LATENCY_CAP_US = 10 ** 10
#: Extra precision of the tangent cuts of the queueing term.
TANGENT_SCALE = 10_000


@dataclass
class SearchSpace:
    """What the CP-SAT model is built from."""

    cands: list[Candidate]
    models: list[ReplicaModel]
    stats: WorkloadStats
    slo: SLOSpec
    cluster: ClusterSpec
    objective: str
    engine: EngineSpec | None = None

    def slo_violations(self, i: int) -> set[str]:
        """SLO screens candidate ``i`` fails."""
        out = set()
        floors = self.models[i].floors(self.slo)
        for name, t in self.slo.targets().items():
            if floors[name] * SCREEN_SLACK > t.target:
                out.add(name)
        return out


def candidate_groups(space: SearchSpace) -> list[set[str]]:
    """All per-candidate groups each candidate violates."""
    return [set(c.violates) | space.slo_violations(i) for i, c in enumerate(space.cands)]


class PlanModel:
    """CP-SAT model over ``space``. ``active`` = groups enforced unconditionally; with
    ``assumptions=True`` every group gets a literal instead (see :attr:`literals`)."""

    def __init__(self, space: SearchSpace, *, assumptions: bool = False,
                 relaxed: frozenset[str] = frozenset(), with_objective: bool = True):
        from ortools.sat.python import cp_model  # lazy: ortools (and the pandas it loads) costs
                                                 # ~1 s of start-up that small searches skip
        self.space = space
        self.m = cp_model.CpModel()
        self.literals: dict[str, "cp_model.IntVar"] = {}
        self.relaxed = relaxed
        self.assumptions = assumptions
        self.x: dict[tuple[int, int], "cp_model.IntVar"] = {}
        self.viol = candidate_groups(space)
        self._build_vars()
        self._build_groups()
        if with_objective:
            self._build_objective()

    # ------------------------------------------------------------------ structure
    def _limit(self, c: Candidate) -> int:
        pool = self.space.cluster.pool(c.pool)
        k = pool.num_gpus // c.gpus
        mg = self.space.slo.constraints.max_gpus
        if mg is not None and "max_gpus" not in self.relaxed and not self.assumptions:
            k = min(k, mg // c.gpus)
        return k

    def _build_vars(self) -> None:
        m, sp = self.m, self.space
        by_pool: dict[str, list] = {}
        for i, c in enumerate(sp.cands):
            if not self.assumptions and (self.viol[i] - self.relaxed):
                continue
            for k in range(1, self._limit(c) + 1):
                v = m.new_bool_var(f"x_{i}_{k}")
                self.x[(i, k)] = v
                by_pool.setdefault(c.pool, []).append(v)
        self.pool_used: dict[str, "cp_model.IntVar"] = {}
        for p in sp.cluster.pools:
            u = m.new_bool_var(f"pool_{p.name}")
            vs = by_pool.get(p.name, [])
            m.add(sum(vs) == u) if vs else m.add(u == 0)
            self.pool_used[p.name] = u
        m.add(sum(self.pool_used.values()) >= 1)

    def _enforce(self, name: str, ct) -> None:
        if self.assumptions:
            lit = self.literals.get(name)
            if lit is None:
                lit = self.literals[name] = self.m.new_bool_var(f"A_{name}")
            ct.only_enforce_if(lit)

    def _gpus(self, filt=None):
        return sum(k * self.space.cands[i].gpus * v for (i, k), v in self.x.items()
                   if filt is None or filt(self.space.cands[i]))

    def _build_groups(self) -> None:
        m, sp = self.m, self.space
        if self.assumptions:
            for g in CANDIDATE_GROUPS:
                vs = [v for (i, _k), v in self.x.items() if g in self.viol[i]]
                if vs:
                    self._enforce(g, m.add(sum(vs) == 0))
        if "gpus_available" not in self.relaxed:
            for p in sp.cluster.pools:
                expr = self._gpus(lambda c, n=p.name: c.pool == n)
                if not isinstance(expr, int):
                    self._enforce("gpus_available", m.add(expr <= p.num_gpus))
        mg = sp.slo.constraints.max_gpus
        if mg is not None and "max_gpus" not in self.relaxed and self.x:
            self._enforce("max_gpus", m.add(self._gpus() <= mg))
        budget = sp.slo.constraints.power_budget_w
        if budget is not None and "power_budget_w" not in self.relaxed and self.x:
            self._enforce("power_budget_w", m.add(self._power_expr() <= to_milli(budget)))
        if "load" not in self.relaxed and self.x:
            need = to_milli(LOAD_SLACK * sp.stats.rate_req_s)
            self._enforce("load", m.add(self._capacity_expr() >= need))

    def _capacity_expr(self, tpot: bool = False):
        sp = self.space
        cap = sp.slo.tpot_ms.target / 1e3 if (tpot and sp.slo.tpot_ms) else None
        return sum(to_milli(k * sp.models[i].capacity(cap)) * v for (i, k), v in self.x.items())

    def _power_expr(self):
        """Idle power of every chosen replica + the largest dynamic power of one group carrying
        the whole workload (an upper bound on the dynamic part of any split)."""
        sp = self.space
        idle = sum(k * to_milli(sp.models[i].cv.idle_w * sp.cands[i].gpus) * v
                   for (i, k), v in self.x.items())
        dyn = self.m.new_int_var(0, 10 ** 13, "dyn_power")
        for (i, k), v in self.x.items():
            s = sp.models[i].state(sp.stats.rate_req_s / k)
            d = k * (s.power_w - sp.models[i].cv.idle_w * sp.cands[i].gpus)
            self.m.add(dyn >= to_milli(max(0.0, d))).only_enforce_if(v)
        return idle + dyn

    # ------------------------------------------------------------------ objectives
    def single_value(self, i: int, k: int) -> tuple[float, float]:
        """(latency s, power W) of candidate ``i`` x ``k`` replicas carrying the whole workload."""
        sp = self.space
        est = plan_estimate([(sp.models[i], k)], sp.stats, sp.slo)
        return est.latency_s, est.power_w

    def _latency_expr(self):
        sp = self.space
        pools = {sp.cands[i].pool for (i, _k) in self.x}
        if len(pools) <= 1:
            return sum(to_us(self.single_value(i, k)[0], LATENCY_CAP_US) * v
                       for (i, k), v in self.x.items()), LATENCY_CAP_US
        # several pools: log(max unloaded latency) + log 1/(1 - rate/C), tangents in C
        m = self.m
        zlog = m.new_int_var(0, 100 * LOG_SCALE, "zlog")
        for (i, k), v in self.x.items():
            l0 = sp.models[i].state(0.0).e2e_s
            m.add(zlog >= int(LOG_SCALE * math.log(max(l0, 1e-6) * 1e6))).only_enforce_if(v)
        cap = m.new_int_var(0, 10 ** 12, "capacity")
        m.add(cap == self._capacity_expr())
        lam = to_milli(sp.stats.rate_req_s)
        hlog = m.new_int_var(-10 ** 12, 10 ** 12, "hlog")
        for mult in (1.05, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0, 20.0):
            c0 = mult * lam
            f0 = -math.log(1.0 - lam / c0)
            slope = -lam / (c0 * (c0 - lam))
            # TANGENT_SCALE * hlog >= TANGENT_SCALE * LOG_SCALE * (f0 + slope * (cap - c0))
            a = TANGENT_SCALE * LOG_SCALE * (f0 - slope * c0)
            m.add(TANGENT_SCALE * hlog >= int(round(a))
                  + int(round(TANGENT_SCALE * LOG_SCALE * slope)) * cap)
        return zlog + hlog, 200 * LOG_SCALE

    def _build_objective(self) -> None:
        sp, m = self.space, self.m
        if not self.x:
            return
        obj = sp.objective
        if obj == "throughput":
            # the highest SLO-meeting rate of the whole plan (TPOT-capped capacity), ties: fewer GPUs
            slo_rate = sum(to_milli(k * sp.models[i].rate_at_slo(sp.slo)) * v
                           for (i, k), v in self.x.items())
            m.maximize(slo_rate * 4096 - self._gpus())
            return
        lat, lat_cap = self._latency_expr()
        if obj == "latency":
            m.minimize(lat)
        elif obj == "gpus":
            m.minimize(self._gpus() * (lat_cap + 1) + lat)
        elif obj in ("energy", "cost"):
            pools = {sp.cands[i].pool for (i, _k) in self.x}
            if len(pools) <= 1:
                power = sum(to_milli(self.single_value(i, k)[1]) * v for (i, k), v in self.x.items())
            else:
                power = self._power_expr()
            if obj == "energy":
                m.minimize(power * 1024 + lat)
                return
            # cost per hour in milli-units: GPU-hours at the pool price + energy (W -> kWh) x price
            cl = sp.cluster
            kwh = (cl.electricity_price_per_kwh or 0.0) * (cl.pue or 1.0) / 1000.0
            gpu_cost = sum(to_milli(k * sp.cands[i].gpus * (cl.pool(sp.cands[i].pool).gpu_price_per_hour
                                                            or 0.0) * 1000) * v
                           for (i, k), v in self.x.items())
            m.minimize(gpu_cost + power * int(round(kwh * 1e6)) + lat)
        else:
            raise ValueError(f"unknown objective {obj!r}")

    # ------------------------------------------------------------------ solving
    def solver(self, *, workers: int = 1, seed: int = 0, time_limit_s: float = 10.0) -> cp_model.CpSolver:
        from ortools.sat.python import cp_model

        s = cp_model.CpSolver()
        s.parameters.num_workers = max(1, workers)
        s.parameters.random_seed = seed
        s.parameters.max_deterministic_time = time_limit_s
        s.parameters.max_time_in_seconds = time_limit_s * 10
        return s

    def solution(self, s: cp_model.CpSolver) -> tuple[tuple[int, int], ...]:
        return tuple(sorted(key for key, v in self.x.items() if s.value(v)))

    def add_nogood(self, sol: tuple[tuple[int, int], ...]) -> None:
        """Exclude exactly this plan: some chosen x off, or some other pool used."""
        chosen_pools = {self.space.cands[i].pool for i, _k in sol}
        lits = [self.x[key].Not() for key in sol]
        lits += [u for p, u in self.pool_used.items() if p not in chosen_pools]
        self.m.add_bool_or(lits)
