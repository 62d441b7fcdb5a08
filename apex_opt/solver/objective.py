"""Analytic surrogates of a replica and of a plan (steady state), and their integer scaling for CP-SAT.

A replica under pipeline parallelism runs ``pp`` virtual engines (vLLM), each with its own scheduler,
``1/pp`` of the KV blocks and ``1/pp`` of the requests. In steady state at ``lam`` requests/s per
virtual engine, with mean prompt ``P`` and mean output ``D`` tokens, an iteration of period ``tau``
carries ``b = lam·D·tau`` decoding sequences (Little's law) and ``p = lam·P·tau`` prefill tokens, and

    tau = max(T_dec(b) + p·t_tok,  pp · (S_dec(b) + p·s_tok))

where ``T_dec`` / ``S_dec`` are the iteration / slowest-stage times of a decode batch of ``b`` at the
mean context (from :class:`~apex_opt.costmodel.iteration.IterationCostModel`) and ``t_tok`` /
``s_tok`` the marginal cost of one prefill token in a chunk of ``max_num_batched_tokens``. The least
fixed point exists while ``b <= max_num_seqs``, the KV cache holds ``b`` sequences of mean length and
``b + p`` fits in the token budget; the largest such ``lam`` is the replica's capacity (at the SLO
when ``tau`` must also stay within the TPOT target). Latency at load: TPOT = ``tau``, TTFT = prefill
service ``ceil(P / (budget - b))·tau`` plus an M/M/1-style wait ``rho/(1-rho)`` times that service,
E2E = TTFT + (D - 1)·TPOT. Power = active energy per period + idle power of the idle GPU share.

Data-parallel attention (``attention_dp`` = R > 1, pp = 1) also splits a replica into R schedulers,
each with ``1/R`` of the requests and KV blocks and its own engine limits, but they step together:
one iteration of period ``tau`` carries every rank's ``b`` decodes and ``p`` prefill tokens. The
curves are the cost model's iteration over R equal rank batches (the ``attention_ranks`` the
simulator passes), indexed by the per-rank batch, so the same fixed point holds per rank with
``tau = T_dec(b) + F(p)``; capacity is R times a rank's. Prefill is bursty: a rank prefills a
chunk of the token budget ``B`` in a fraction ``q = p/B`` of the steps, and a lockstep step runs
the attention side of its busiest rank, so one prefilling rank costs the step about as much as
R would on that side. With ``k ~ Binomial(R, q)`` ranks prefilling and the step's prefill cost
linear in k between one rank (``T_1``) and all (``T_R``), ``F(p) = P(k>=1)·T_1 + (E[k] -
P(k>=1))·(T_R - T_1)/(R-1)`` (= ``p·t_tok`` without DP attention).

A plan spreads its load over groups in proportion to their capacity (what a least-outstanding router
converges to), so every replica runs at the same utilisation.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass

import numpy as np

from ..costmodel import DeviceCostModel
from ..costmodel.iteration import IterationCostModel
from ..parallel import seqs_per_scheduler
from ..specs.cluster import ClusterSpec
from ..specs.engine import EngineSpec, load_engine
from ..specs.model import ModelSpec
from ..specs.slo import SLOSpec
from .candidates import Candidate, WorkloadStats

#: Decode batch sizes at which the iteration cost is evaluated (interpolated in between).
BATCH_GRID = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Latency charged to an overloaded replica, per unit of utilisation (s).
OVERLOAD_LATENCY_S = 3600.0
#: Utilisation above which a replica counts as saturated.
MAX_UTILISATION = 0.98


@dataclass(frozen=True)
class CostCurves:
    """Iteration costs of one replica configuration (shared by its engine-limit variants)."""

    b: tuple[float, ...]
    t_dec: tuple[float, ...]
    s_dec: tuple[float, ...]
    e_dec: tuple[float, ...]
    busy_dec: tuple[float, ...]
    tok: dict            # budget -> (t_tok, s_tok, e_tok, busy_tok, host_s)
    pp: int
    gpus: int
    idle_w: float
    #: front-end latency of every request before the engine sees it (HTTP, tokenisation, IPC)
    overhead_s: float = 0.0
    #: data-parallel attention ranks stepping together (1 = off); b and the prefill tokens of
    #: the curves are per rank, the times / energies those of the whole lockstep iteration
    ranks: int = 1
    #: DP attention: budget -> (time, stage time, energy, busy GPU s) of a step in which ONE rank
    #: prefills a chunk of the budget and the others idle (host time excluded)
    tok_one: dict | None = None
    #: a pipeline's virtual engines share max_num_seqs (EngineSpec.pp_shares_max_num_seqs; the
    #: cap of one is parallel.seqs_per_scheduler)
    pp_shares_seqs: bool = False

    @property
    def schedulers(self) -> int:
        """Independent schedulers, each with its share of the requests and KV blocks: the
        pipeline's virtual engines or the attention-DP ranks."""
        return max(self.pp, self.ranks)


def _interp(xs: tuple[float, ...], ys: tuple[float, ...], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    i = bisect_left(xs, x)
    if i >= len(xs):
        # beyond the grid: extrapolate linearly from the last segment
        x0, x1, y0, y1 = xs[-2], xs[-1], ys[-2], ys[-1]
    else:
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def cost_curves(model: ModelSpec, cluster: ClusterSpec, cand: Candidate, stats: WorkloadStats,
                engine: EngineSpec | None = None, budgets: tuple[int, ...] = (512, 2048),
                shared: dict | None = None) -> CostCurves:
    """Evaluate the iteration cost model of ``cand``'s configuration on the decode grid and on one
    prefill chunk per token budget. ``shared`` (one dict per model and engine, e.g. per search
    space) lets the candidates share the device's kernel costs and, between KV dtypes of one
    shape, the token-count-only work (same numbers, computed once)."""
    engine = engine or load_engine()
    pool = cluster.pool(cand.pool)
    ranks = max(1, getattr(cand, "attention_dp", 1))
    kw = {}
    if shared is not None:
        devs = shared.setdefault("device", {})
        dev = devs.get(pool.name)
        if dev is None:
            dev = devs[pool.name] = DeviceCostModel(pool.device)
        tok_key = (cand.pool, cand.tp, cand.pp, cand.ep, cand.weight_dtype, cand.layers_per_stage,
                   cand.sm_clock_mhz, ranks)
        kw = {"device_model": dev, "token_cache": shared.setdefault("tokens", {}).setdefault(tok_key, {})}
    # the same sampler filter the simulator charges these requests (one workload per space, so
    # the shared token-work cache stays consistent)
    cm = IterationCostModel(model, pool, cand.config(), engine, sampler=stats.sampler, **kw)
    ctx = max(1, int(round(stats.mean_prompt + stats.mean_output / 2)))
    empty = np.zeros(0, dtype=np.int64)
    # attention-DP ranks: one lockstep iteration over ``ranks`` equal rank batches, called as the
    # simulator calls it (sim/engine.py _step_lockstep: the union batch, and the per-rank
    # batches as ``attention_ranks`` where the cost model takes them)
    by_rank = ranks > 1 and getattr(cm, "supports_attention_dp", False)

    def step(b: int, chunk: tuple[int, int] | None):
        dec = np.full(b, ctx, dtype=np.int64)
        pf = [chunk] if chunk is not None else []
        if ranks == 1:
            return cm.iteration(dec, pf)
        per_rank = {"attention_ranks": [(dec, pf)] * ranks} if by_rank else {}
        return cm.iteration(np.concatenate([dec] * ranks), pf * ranks,
                            prefill_sampling=len(pf) * ranks, **per_rank)

    rows = []
    for b in BATCH_GRID:
        c = step(b, None)
        rows.append((c.time_s, max(c.stage_times_s), c.energy_j, c.busy_gpu_s))
    tok, one = {}, {}
    cached = max(0, int(stats.mean_prompt / 2))
    for budget in budgets:
        c = step(0, (budget, cached))
        host = cm.host_time(ranks)
        tok[budget] = ((c.time_s - host) / budget, max(c.stage_times_s) / budget,
                       c.energy_j / budget, c.busy_gpu_s / budget, host)
        if ranks > 1:  # one rank prefills, the others idle through the lockstep step
            chunk = [(budget, cached)]
            per_rank = ({"attention_ranks": [(empty, chunk)] + [(empty, [])] * (ranks - 1)}
                        if by_rank else {})
            c = cm.iteration(empty, chunk, **per_rank)
            h1 = cm.host_time(1)
            one[budget] = (c.time_s - h1, max(c.stage_times_s), c.energy_j, c.busy_gpu_s)
    cols = list(zip(*rows))
    return CostCurves(tuple(float(b) for b in BATCH_GRID), *(tuple(col) for col in cols), tok,
                      cand.pp, cand.gpus, pool.device.idle_power_w,
                      float(getattr(engine, "request_overhead_ms", 0.0)) * 1e-3, ranks,
                      one or None,
                      engine.pp_shares_max_num_seqs)


@dataclass(frozen=True)
class ReplicaState:
    """Steady state of one replica at a given request rate."""

    rate: float
    stable: bool
    utilisation: float
    tau_s: float
    batch: float
    ttft_s: float
    tpot_s: float
    e2e_s: float
    power_w: float


class ReplicaModel:
    """Steady-state surrogate of one candidate (see the module docstring)."""

    def __init__(self, cand: Candidate, curves: CostCurves, stats: WorkloadStats):
        self.cand, self.cv, self.st = cand, curves, stats
        self.tok = curves.tok[cand.max_num_batched_tokens]
        self.one = curves.tok_one[cand.max_num_batched_tokens] if curves.tok_one else None
        self.kv_seqs = cand.kv_tokens / curves.schedulers / max(1.0, stats.mean_prompt + stats.mean_output / 2)
        self.max_b = min(seqs_per_scheduler(cand.max_num_seqs, cand.pp, curves.pp_shares_seqs),
                         self.kv_seqs)
        self._cap: dict[float | None, float] = {}
        self._slo_rate: dict[int, tuple] = {}

    def _prefill(self, p: float, j: int) -> float:
        """Prefill cost per step of ``p`` prefill tokens per scheduler: ``j`` = 0 time, 1 stage
        time, 2 energy, 3 busy GPU s (the module docstring's F(p))."""
        per_tok = self.tok[j]
        if self.one is None or p <= 0:
            return p * per_tok
        budget, r = self.cand.max_num_batched_tokens, self.cv.ranks
        q = min(1.0, p / budget)
        p_any = 1.0 - (1.0 - q) ** r
        all_r, one = budget * per_tok, self.one[j]
        return p_any * one + (r * q - p_any) * (all_r - one) / (r - 1)

    def _period(self, b: float, p: float) -> float:
        cv = self.cv
        if self.one is None:  # the hot path of the capacity searches: linear prefill
            t = _interp(cv.b, cv.t_dec, max(b, 1.0)) + p * self.tok[0]
            s = _interp(cv.b, cv.s_dec, max(b, 1.0)) + p * self.tok[1]
        else:
            t = _interp(cv.b, cv.t_dec, max(b, 1.0)) + self._prefill(p, 0)
            s = _interp(cv.b, cv.s_dec, max(b, 1.0)) + self._prefill(p, 1)
        return max(t, cv.pp * s)

    def _fixed_point(self, lam_v: float, tpot_cap: float | None) -> tuple[float, float] | None:
        """(tau, b) at ``lam_v`` req/s per virtual engine, or None when no stable state exists."""
        D, P = self.st.mean_output, self.st.mean_prompt
        budget = self.cand.max_num_batched_tokens

        def step(tau: float) -> float | None:
            b, p = lam_v * D * tau, lam_v * P * tau
            if b > self.max_b or b + p > budget:
                return None
            new = self._period(b, p)
            if tpot_cap is not None and new > tpot_cap:
                return None
            return new

        def close(a: float, b: float) -> bool:
            return abs(b - a) <= 1e-7 * a

        tau = self._period(1.0, 0.0)
        f_tau = step(tau)
        evals = 1  # f_tau's step (the 200-step bound counts every step evaluated)
        while evals <= 200:
            if f_tau is None:
                return None
            if close(tau, f_tau):
                return f_tau, lam_v * D * f_tau
            t2 = step(f_tau)
            evals += 1
            if t2 is None:
                return None
            if close(f_tau, t2):
                return t2, lam_v * D * t2
            # Aitken's extrapolation while the iteration contracts (0 < ratio < 1): exact on one
            # linear piece of the period curve; a guess outside the stable region is not taken.
            # The guess's own step is kept as the next iterate (not evaluated twice).
            d1, d2 = f_tau - tau, t2 - f_tau
            tau, f_tau = t2, None
            if 0.0 < d2 / d1 < 1.0:
                guess = t2 + d2 * d2 / (d1 - d2)
                g = step(guess) if guess > 0 else None
                evals += 1
                if g is not None:
                    tau, f_tau = guess, g
            if f_tau is None:
                f_tau = step(tau)
            evals += 1
        return None

    def capacity(self, tpot_cap_s: float | None = None) -> float:
        """Largest stable request rate (req/s) of the replica (with TPOT <= ``tpot_cap_s``)."""
        if tpot_cap_s in self._cap:
            return self._cap[tpot_cap_s]
        sched = self.cv.schedulers
        if self._fixed_point(1e-9, tpot_cap_s) is None:
            self._cap[tpot_cap_s] = 0.0
            return 0.0
        hi = 1.0
        while self._fixed_point(hi, tpot_cap_s) is not None and hi < 1e6:
            hi *= 2.0
        lo = hi / 2.0 if hi > 1.0 else 1e-9
        if hi == 1.0:
            lo = 1e-9
        for _ in range(40):
            mid = math.sqrt(lo * hi) if lo > 1e-9 else (lo + hi) / 2
            if self._fixed_point(mid, tpot_cap_s) is None:
                hi = mid
            else:
                lo = mid
            if hi - lo <= 1e-4 * hi:
                break
        cap = lo * sched
        self._cap[tpot_cap_s] = cap
        return cap

    def state(self, rate: float, prompt: float | None = None, output: float | None = None) -> ReplicaState:
        """Steady state at ``rate`` req/s for this replica; TTFT / E2E for a request of ``prompt`` /
        ``output`` tokens (default the means)."""
        P = self.st.mean_prompt if prompt is None else prompt
        D = self.st.mean_output if output is None else output
        cap = self.capacity()
        cv = self.cv
        budget = self.cand.max_num_batched_tokens
        rho = rate / cap if cap > 0 else math.inf
        fp = self._fixed_point(rate / cv.schedulers, None) if rho < MAX_UTILISATION else None
        if fp is None:
            over = OVERLOAD_LATENCY_S * max(rho, 1.0)
            return ReplicaState(rate, False, rho, math.inf, self.max_b, over, over, over,
                                cv.gpus * 1e4)
        tau, b = fp
        chunks = math.ceil(P / max(1.0, budget - b))
        service = chunks * tau
        wait = service * rho / (1.0 - rho)
        ttft = service + wait + cv.overhead_s
        e2e = ttft + max(0.0, D - 1.0) * tau
        p = rate / cv.schedulers * self.st.mean_prompt * tau  # prefill tokens per scheduler
        energy = _interp(cv.b, cv.e_dec, max(b, 1.0)) + self._prefill(p, 2)
        busy = _interp(cv.b, cv.busy_dec, max(b, 1.0)) + self._prefill(p, 3)
        # pp virtual engines each run an iteration per period; attention-DP ranks share one
        busy_frac = min(1.0, cv.pp * busy / (cv.gpus * tau))
        power = cv.pp * energy / tau * (1.0 if rate > 0 else 0.0) \
            + cv.idle_w * cv.gpus * (1.0 - (busy_frac if rate > 0 else 0.0))
        return ReplicaState(rate, True, rho, tau, b, ttft, tau, e2e, power)

    def rate_at_slo(self, slo: SLOSpec) -> float:
        """Highest request rate (req/s) of this replica at which the surrogate meets every target
        at its percentile: TPOT = the period; TTFT = the prefill service of the percentile prompt
        + the queueing wait at its percentile (an M/M/1 wait is exponential: the p-quantile is
        ln(1/(1-p)) times its mean) + the front-end latency; E2E likewise plus the decode."""
        key = id(slo)
        hit = self._slo_rate.get(key)
        if hit is not None and hit[0] is slo:
            return hit[1]
        tpot = slo.tpot_ms.target / 1e3 if slo.tpot_ms is not None else None
        hi = self.capacity(tpot) * MAX_UTILISATION
        if hi <= 0 or not self._meets(slo, hi * 1e-6):
            r = 0.0
        else:
            lo = hi * 1e-6
            if self._meets(slo, hi):
                lo = hi
            for _ in range(30):
                if hi - lo <= 1e-3 * hi:
                    break
                mid = math.sqrt(lo * hi)
                if self._meets(slo, mid):
                    lo = mid
                else:
                    hi = mid
            r = lo
        self._slo_rate[key] = (slo, r)
        return r

    def _meets(self, slo: SLOSpec, rate: float) -> bool:
        for name, t in slo.targets().items():
            q = -math.log(max(1e-9, 1.0 - min(t.percentile, 99.9) / 100.0))
            s = self.state(rate, prompt=self.st.prompt_at(t.percentile),
                           output=self.st.output_at(t.percentile) if name == "e2e_s" else None)
            if not s.stable:
                return False
            wait = s.utilisation / max(1e-9, 1.0 - s.utilisation)  # wait / service
            if name == "tpot_ms":
                val = s.tpot_s * 1e3
            else:
                service = s.ttft_s - self.cv.overhead_s
                service /= (1.0 + wait)
                extra = service * wait * (q - 1.0)
                val = (s.ttft_s + extra) * 1e3 if name == "ttft_ms" else s.e2e_s + extra
            if val > t.target:
                return False
        return True

    def floors(self, slo: SLOSpec) -> dict[str, float]:
        """Unloaded latency of the SLO-percentile request (lower bounds used to screen)."""
        out = {}
        pct = {k: t.percentile for k, t in slo.targets().items()}
        s0 = self.state(0.0, prompt=self.st.prompt_at(pct.get("ttft_ms", 50.0)))
        out["ttft_ms"] = s0.ttft_s * 1e3 if s0.stable else math.inf
        out["tpot_ms"] = s0.tpot_s * 1e3 if s0.stable else math.inf
        pe = pct.get("e2e_s", 50.0)
        s1 = self.state(0.0, prompt=self.st.prompt_at(pe), output=self.st.output_at(pe))
        out["e2e_s"] = s1.e2e_s if s1.stable else math.inf
        return out


@dataclass(frozen=True)
class PlanEstimate:
    """Surrogate metrics of a whole plan at the workload's rate."""

    capacity_req_s: float
    capacity_at_slo_req_s: float
    latency_s: float
    ttft_s: float
    tpot_s: float
    power_w: float
    energy_j_per_token: float
    gpus: int
    stable: bool


def plan_estimate(groups: list[tuple[ReplicaModel, int]], stats: WorkloadStats,
                  slo: SLOSpec, rate: float | None = None) -> PlanEstimate:
    """Surrogate of a plan: load split in proportion to capacity, request-weighted latency."""
    lam = stats.rate_req_s if rate is None else rate
    tpot_cap = slo.tpot_ms.target / 1e3 if slo.tpot_ms is not None else None
    caps = [m.capacity() * k for m, k in groups]
    cap_slo = sum(m.rate_at_slo(slo) * k for m, k in groups) if slo.has_targets else \
        sum(m.capacity(tpot_cap) * k for m, k in groups)
    total = sum(caps)
    lat = ttft = tpot = power = 0.0
    stable = total > 0
    for (m, k), c in zip(groups, caps):
        share = c / total if total > 0 else 1.0 / len(groups)
        s = m.state(lam * share / k)
        stable &= s.stable
        lat += share * s.e2e_s
        ttft += share * s.ttft_s
        tpot += share * s.tpot_s
        power += k * s.power_w
    gpus = sum(m.cand.gpus * k for m, k in groups)
    jpt = power / max(lam * stats.mean_output, 1e-12)
    return PlanEstimate(total, cap_slo, lat, ttft, tpot, power, jpt, gpus, stable)


# ---------------------------------------------------------------------------- integer scaling

def to_us(seconds: float, cap: int = 10 ** 12) -> int:
    """Seconds -> integer microseconds (clamped to ``cap``; inf -> cap)."""
    if not math.isfinite(seconds):
        return cap
    return int(min(cap, max(0, round(seconds * 1e6))))


def to_milli(x: float, cap: int = 10 ** 12) -> int:
    """A rate / power / energy -> integer thousandths (mreq/s, mW, mJ), clamped."""
    if not math.isfinite(x):
        return cap
    return int(min(cap, max(0, round(x * 1e3))))
