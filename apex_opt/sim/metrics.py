"""Per-request timings -> aggregated serving metrics (the ``--json`` of ``apex-opt simulate``).

Definitions (all vectorised numpy):

* TTFT = first token - arrival (queueing included), in ms;
* TPOT per request = (finish - first token) / (output tokens - 1), in ms; requests with a single
  output token have no TPOT and are left out of its statistics;
* E2E = finish - arrival, in s;
* percentiles use numpy's ``linear`` method; statistics cover completed requests only;
* throughput = completed output tokens / makespan; goodput = requests meeting every SLO target /
  makespan; SLO attainment = fraction of *all* requests meeting every target (dropped requests,
  and requests whose output the engine cut short, never do; see :mod:`apex_opt.specs.slo` for
  how percentile targets are checked);
* MFU = FLOPs / (makespan * peak FLOP/s); MBU = bytes / (makespan * peak bytes/s). Both must come
  out <= 1; larger values mean the caller passed inconsistent numbers and raise ValueError.

Floats are rounded to 6 significant digits so that the JSON output is byte-identical across runs.
"""

from __future__ import annotations

import math
from typing import Annotated, Mapping

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict

from ..specs.slo import SLOSpec

#: Significant digits kept in every float of the output models.
SIG_DIGITS = 6
#: Relative slack before MFU/MBU above 1 are declared inconsistent (floating-point noise only).
_UTIL_SLACK = 1e-9


def round_sig(x: float, digits: int = SIG_DIGITS) -> float:
    """``x`` rounded to ``digits`` significant digits (non-finite values pass through)."""
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(f"{x:.{digits}g}")


def _round_opt(x: float | None) -> float | None:
    return None if x is None else round_sig(x)


R6 = Annotated[float, AfterValidator(round_sig)]
R6Opt = Annotated[float | None, AfterValidator(_round_opt)]


class _Out(BaseModel):
    """Output model base: strict fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Stats(_Out):
    """Summary statistics of one quantity over the requests that have it (None when none do)."""

    count: int
    mean: R6Opt = None
    p50: R6Opt = None
    p90: R6Opt = None
    p99: R6Opt = None
    max: R6Opt = None


def stats_of(values: np.ndarray) -> Stats:
    """Mean, p50/p90/p99 (numpy 'linear') and max of ``values`` (empty -> only ``count=0``)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return Stats(count=0)
    p50, p90, p99 = np.percentile(v, [50, 90, 99], method="linear")
    return Stats(count=int(v.size), mean=float(v.mean()), p50=float(p50), p90=float(p90),
                 p99=float(p99), max=float(v.max()))


class Metrics(_Out):
    """Aggregated serving metrics of one simulation."""

    num_requests: int
    num_completed: int
    num_dropped: int
    ttft_ms: Stats
    tpot_ms: Stats
    e2e_s: Stats
    throughput_tokens_per_s: R6
    throughput_total_tokens_per_s: R6
    requests_per_s: R6
    goodput_requests_per_s: R6Opt = None
    slo_attainment: R6Opt = None
    slo_met: bool | None = None
    slo_target_fraction: dict[str, R6] | None = None
    energy_j: R6Opt = None
    energy_j_per_token: R6Opt = None
    energy_j_per_request: R6Opt = None
    avg_power_w: R6Opt = None
    makespan_s: R6
    mfu: R6Opt = None
    mbu: R6Opt = None
    time_breakdown_ms: dict[str, R6] = {}
    preemptions: int = 0


def _validated_arrays(arrival_s, first_token_s, finish_s, output_tokens, prompt_tokens,
                      dropped_mask) -> tuple[np.ndarray, ...]:
    arr = np.asarray(arrival_s, dtype=np.float64)
    first = np.asarray(first_token_s, dtype=np.float64)
    fin = np.asarray(finish_s, dtype=np.float64)
    out = np.asarray(output_tokens, dtype=np.int64)
    pr = np.asarray(prompt_tokens, dtype=np.int64)
    n = arr.shape[0] if arr.ndim == 1 else -1
    drop = np.zeros(n, dtype=bool) if dropped_mask is None else np.asarray(dropped_mask, dtype=bool)
    if n < 0 or any(a.shape != (n,) for a in (first, fin, out, pr, drop)):
        raise ValueError("per-request arrays must be 1-D and of equal length")
    ok = ~drop
    if not np.all(np.isfinite(arr)):
        raise ValueError("arrival times must be finite")
    if not (np.all(np.isfinite(first[ok])) and np.all(np.isfinite(fin[ok]))):
        raise ValueError("completed requests need finite first-token and finish times")
    if np.any(first[ok] < arr[ok]) or np.any(fin[ok] < first[ok]):
        raise ValueError("need arrival <= first token <= finish for every completed request")
    if np.any(out < 1) or np.any(pr < 0):
        raise ValueError("output_tokens must be >= 1 and prompt_tokens >= 0")
    return arr, first, fin, out, pr, drop


def _utilisation(work: float | None, peak: float | None, makespan_s: float,
                 name: str) -> float | None:
    if work is None or peak is None:
        return None
    if not (math.isfinite(work) and work >= 0 and math.isfinite(peak) and peak > 0):
        raise ValueError(f"{name}: work must be finite >= 0 and peak finite > 0 "
                         f"(got {work}, {peak})")
    u = work / (makespan_s * peak)
    if u > 1 + _UTIL_SLACK:
        raise ValueError(f"{name} = {u:.4g} > 1: {work:.4g} over {makespan_s:.4g} s exceeds the "
                         f"peak {peak:.4g}/s; the caller's numbers are inconsistent")
    return u


def slo_request_mask(ttft_ms: np.ndarray, tpot_ms: np.ndarray, e2e_s: np.ndarray,
                     output_tokens: np.ndarray, dropped: np.ndarray,
                     slo: SLOSpec) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per-request SLO verdicts: (meets every target, {target name: meets that target}).

    Inputs are per request (values of dropped requests are ignored; ``tpot_ms`` of one-token
    requests is ignored and that target passes for them).
    """
    done = ~dropped
    per: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore"):
        if slo.ttft_ms is not None:
            per["ttft_ms"] = done & (ttft_ms <= slo.ttft_ms.target)
        if slo.tpot_ms is not None:
            per["tpot_ms"] = done & ((output_tokens <= 1) | (tpot_ms <= slo.tpot_ms.target))
        if slo.e2e_s is not None:
            per["e2e_s"] = done & (e2e_s <= slo.e2e_s.target)
    all_ok = done.copy()
    for m in per.values():
        all_ok &= m
    return all_ok, per


def compute_metrics(arrival_s, first_token_s, finish_s, output_tokens, prompt_tokens,
                    dropped_mask=None, *, makespan_s: float, energy_j: float | None = None,
                    slo: SLOSpec | None = None, breakdown: Mapping[str, float] | None = None,
                    flops: float | None = None, bytes: float | None = None,  # noqa: A002
                    peak_flops: float | None = None, peak_bytes_per_s: float | None = None,
                    preemptions: int = 0, cut_mask=None) -> Metrics:
    """Aggregate per-request timings (seconds, one entry per request) into :class:`Metrics`.

    ``dropped_mask`` marks requests that never completed (their times are ignored).
    ``cut_mask`` marks requests served with a shorter output than they asked for (the engine cut
    it to fit): their times count, but like drops they never meet the SLO.
    ``makespan_s`` is the simulated wall time the throughputs and power divide by. ``energy_j``
    is the total energy of all GPUs; ``breakdown`` the total time per component in **seconds**
    (reported in ms); ``flops``/``bytes`` the work done, ``peak_flops``/``peak_bytes_per_s`` the
    peak rates of all GPUs together.
    """
    if not (math.isfinite(makespan_s) and makespan_s > 0):
        raise ValueError(f"makespan_s must be a finite number > 0 (got {makespan_s})")
    arr, first, fin, out, pr, drop = _validated_arrays(arrival_s, first_token_s, finish_s,
                                                       output_tokens, prompt_tokens, dropped_mask)
    n = arr.shape[0]
    done = ~drop
    ttft_ms = (first - arr) * 1e3
    e2e_s = fin - arr
    multi = done & (out > 1)
    tpot_ms = np.full(n, np.nan)
    tpot_ms[multi] = (fin[multi] - first[multi]) / (out[multi] - 1) * 1e3
    n_done = int(done.sum())
    out_tokens = int(out[done].sum())
    total_tokens = out_tokens + int(pr[done].sum())

    slo_fields: dict = {}
    if slo is not None and slo.has_targets:
        missed = drop if cut_mask is None else drop | np.asarray(cut_mask, dtype=bool)
        all_ok, per = slo_request_mask(ttft_ms, tpot_ms, e2e_s, out, missed, slo)
        attain = float(all_ok.mean()) if n else 0.0
        fractions = {k: float(m.mean()) if n else 0.0 for k, m in per.items()}
        targets_hold = all(fractions[k] * 100 >= t.percentile * (1 - 1e-12)
                           for k, t in slo.targets().items())
        slo_fields = dict(goodput_requests_per_s=int(all_ok.sum()) / makespan_s,
                          slo_attainment=attain, slo_target_fraction=fractions,
                          slo_met=bool(targets_hold and attain >= slo.attainment))

    energy: dict = {}
    if energy_j is not None:
        if not (math.isfinite(energy_j) and energy_j >= 0):
            raise ValueError(f"energy_j must be finite >= 0 (got {energy_j})")
        energy = dict(energy_j=energy_j,
                      energy_j_per_token=energy_j / out_tokens if out_tokens else None,
                      energy_j_per_request=energy_j / n_done if n_done else None,
                      avg_power_w=energy_j / makespan_s)
    if preemptions < 0:
        raise ValueError(f"preemptions must be >= 0 (got {preemptions})")

    return Metrics(
        num_requests=n, num_completed=n_done, num_dropped=n - n_done,
        ttft_ms=stats_of(ttft_ms[done]), tpot_ms=stats_of(tpot_ms[multi]),
        e2e_s=stats_of(e2e_s[done]),
        throughput_tokens_per_s=out_tokens / makespan_s,
        throughput_total_tokens_per_s=total_tokens / makespan_s,
        requests_per_s=n_done / makespan_s, makespan_s=makespan_s,
        mfu=_utilisation(flops, peak_flops, makespan_s, "MFU"),
        mbu=_utilisation(bytes, peak_bytes_per_s, makespan_s, "MBU"),
        time_breakdown_ms={k: float(v) * 1e3 for k, v in sorted((breakdown or {}).items())},
        preemptions=int(preemptions), **slo_fields, **energy)


# ------------------------------------------------------------------------------------------------
# Energy accounting: what is counted, over which window, and what it costs
# ------------------------------------------------------------------------------------------------
#
# * plan GPUs: every GPU of every replica, from the first arrival to the last event; kernels at
#   the cost model's power, the gaps between kernels (host part of a step, an idle replica) at the
#   device's awake power (``active_idle_power_w``, clock-dependent, see costmodel/power.py);
# * host: the plan's share of the non-GPU power of the nodes it runs on (``PoolSpec.node_host_power_w``:
#   CPUs, memory, NICs, switches, fans, counted as constant) -- GPUs used / GPUs per node of it, so
#   a 1-GPU plan on an 8-GPU node is charged 1/8 of the node's host power, not all of it (the rest
#   belongs to whatever else runs on the node; ``plan_nodes`` still counts the nodes touched);
# * free GPUs: GPUs of the cluster the plan leaves unused, at the device's idle power -- reported
#   on their own, NOT in the plan's energy, J/token or $/Mtok;
# * facility: node energy x PUE (cluster ``pue``, default 1) for the electricity cost;
# * windows: ``whole_run`` = first arrival -> last event; ``steady_state``:
#   - open loop (a trace or a rate whose arrivals go on after the first request finished): from
#     the first arrival to the last, the span in which the workload's own rate drives the plan;
#     the drain after the last arrival is left out. It depends on the arrivals only, so two plans
#     that serve the same requests identically get the same window whatever their engine limits;
#   - closed loop or batch (all requests at once, or arrivals over before anything finishes):
#     from the time the first C requests have their first token to the time N - C requests have
#     finished (C = the plan's total max_num_seqs, or the clients when fewer; N = requests), i.e.
#     ramp-up and drain left out, as ML.ENERGY measures its closed batches; None when the run
#     never fills (N <= C).

HOURS_PER_DAY = 24.0
J_PER_KWH = 3.6e6


class EnergyWindow(_Out):
    """GPU energy and output tokens over one time window of the run."""

    window: str
    start_s: R6
    end_s: R6
    duration_s: R6
    output_tokens: R6
    gpu_energy_j: R6
    gpu_power_w: R6
    gpu_energy_j_per_token: R6Opt = None
    throughput_tokens_per_s: R6


class EnergyReport(_Out):
    """Power, energy and money of a plan (see the module comment for what is counted)."""

    plan_gpus: int
    #: nodes the plan touches (whole nodes)
    plan_nodes: int
    #: nodes' worth of hardware the plan occupies (GPUs used / GPUs per node); host power is
    #: charged for this share
    plan_node_share: R6 = 0.0
    free_gpus: int
    gpu_power_w: R6
    host_power_w: R6
    node_power_w: R6
    free_gpu_idle_power_w: R6
    gpu_energy_j_per_token: R6Opt = None
    node_energy_j_per_token: R6Opt = None
    kwh_per_day: R6 = 0.0
    facility_kwh_per_day: R6 = 0.0
    pue: R6 = 1.0
    gpu_cost_per_hour: R6Opt = None
    energy_cost_per_hour: R6Opt = None
    cost_per_mtok: R6Opt = None
    whole_run: EnergyWindow
    steady_state: EnergyWindow | None = None


def plan_gpus_by_pool(cluster, plan) -> dict[str, int]:
    """GPUs the plan uses in each pool (pool name -> count)."""
    used: dict[str, int] = {}
    for g in plan.groups:
        name = cluster.pool(g.pool).name
        used[name] = used.get(name, 0) + g.replicas * g.gpus
    return used


def plan_nodes_by_pool(cluster, plan) -> dict[str, int]:
    """Nodes the plan occupies in each pool (whole nodes: replicas packed onto nodes)."""
    return {name: -(-n // cluster.pool(name).gpus_per_node)
            for name, n in plan_gpus_by_pool(cluster, plan).items()}


def plan_node_share(cluster, plan) -> float:
    """Nodes' worth of hardware the plan occupies: sum over pools of GPUs used / GPUs per node
    (0.125 for one GPU of an 8-GPU node, 1.5 for 12 GPUs)."""
    return sum(n / cluster.pool(name).gpus_per_node
               for name, n in plan_gpus_by_pool(cluster, plan).items())


def plan_host_power_w(cluster, plan) -> float:
    """The plan's share of the non-GPU power (W) of the nodes it runs on: each node's host power
    x GPUs the plan uses there / GPUs per node."""
    return sum(cluster.pool(name).node_host_power_w * n / cluster.pool(name).gpus_per_node
               for name, n in plan_gpus_by_pool(cluster, plan).items())


def plan_node_power_w(cluster, plan, gpu_power_w: float) -> float:
    """Whole-node power (W): the plan's GPU power + the host power of its nodes. This is what an
    SLO ``power_budget_w`` is compared with."""
    return float(gpu_power_w) + plan_host_power_w(cluster, plan)


def free_gpu_idle_power_w(cluster, plan) -> float:
    """Idle power (W) of the cluster's GPUs the plan leaves unused."""
    used = plan_gpus_by_pool(cluster, plan)
    return sum((p.num_gpus - used.get(p.name, 0)) * p.device.idle_power_w for p in cluster.pools)


def plan_gpu_cost_per_hour(cluster, plan) -> float | None:
    """GPU-hour price of the plan per hour (None when a used pool has no price)."""
    total = 0.0
    for name, n in plan_gpus_by_pool(cluster, plan).items():
        price = cluster.pool(name).gpu_price_per_hour
        if price is None:
            return None
        total += price * n
    return total


def cost_per_mtok(cluster, plan, output_tokens_per_s: float, node_power_w: float) -> float | None:
    """Money per million output tokens: (GPU-hours x price + node energy x PUE x electricity
    price) / tokens. GPU prices are required; a missing electricity price counts energy as free.
    None without GPU prices or without throughput."""
    gpu = plan_gpu_cost_per_hour(cluster, plan)
    if gpu is None or not output_tokens_per_s > 0:
        return None
    pue = cluster.pue if cluster.pue is not None else 1.0
    kwh_price = cluster.electricity_price_per_kwh or 0.0
    per_hour = gpu + node_power_w / 1e3 * pue * kwh_price
    return per_hour / (output_tokens_per_s * 3600.0) * 1e6


def steady_state_bounds(first_s: np.ndarray, finish_s: np.ndarray, served: np.ndarray,
                        concurrency: int) -> tuple[float, float] | None:
    """(start, end) of the steady-state window (see the module comment) or None."""
    f = np.sort(first_s[served])
    e = np.sort(finish_s[served])
    n = f.shape[0]
    c = int(concurrency)
    if c < 1 or n - c < 1:
        return None
    t0, t1 = float(f[min(c, n) - 1]), float(e[n - c - 1])
    return (t0, t1) if t1 > t0 else None


def open_loop_bounds(arrival_s: np.ndarray, finish_s: np.ndarray,
                     served: np.ndarray) -> tuple[float, float] | None:
    """(first arrival, last arrival) of an open-loop run whose arrivals go on after its first
    request finished (see the module comment), else None (a batch: use
    :func:`steady_state_bounds`)."""
    if arrival_s.shape[0] < 2 or not served.any():
        return None
    t0, t1 = float(arrival_s.min()), float(arrival_s.max())
    return (t0, t1) if t1 > float(finish_s[served].min()) else None


def tokens_in_window(first_s: np.ndarray, finish_s: np.ndarray, output_tokens: np.ndarray,
                     served: np.ndarray, t0: float, t1: float) -> float:
    """Output tokens emitted in [t0, t1]: token k of a request at first + k (finish - first) /
    (n - 1) (evenly spaced between its first token and its finish)."""
    f, e, n = first_s[served], finish_s[served], output_tokens[served].astype(np.float64)
    gap = np.where(n > 1, (e - f) / np.maximum(n - 1, 1), np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(f >= t0, 0.0, np.ceil((t0 - f) / gap))
        hi = np.where(e <= t1, n - 1, np.floor((t1 - f) / gap))
    count = np.clip(hi, -1, n - 1) - np.clip(lo, 0, n) + 1
    return float(np.clip(count, 0, None).sum())


class EnergyTimeline:
    """Busy energy / busy GPU-seconds of one replica over time, for energy windows.

    The engine charges an iteration -- or a fast-forwarded run of many decode iterations -- when
    it starts it; :meth:`record` gets the replica's cumulative totals right after, and ``end``,
    the time that iteration / run finishes. The increment is spread evenly over [start, end]
    (a fast-forwarded run of 50 steps is not all energy at its first step), so a window that cuts
    through a run gets the share of it inside the window. Without ``end`` the increment counts at
    its start time only.
    """

    def __init__(self, num_gpus: int, gap_power_w: float):
        self.num_gpus = num_gpus
        self.gap_power_w = gap_power_w
        self._e = 0.0
        self._b = 0.0
        #: segments: start, end, energy (J), busy GPU-seconds
        self.t0: list[float] = []
        self.t1: list[float] = []
        self.de: list[float] = []
        self.db: list[float] = []

    def record(self, t: float, energy_j: float, busy_gpu_s: float, end: float | None = None) -> None:
        de, db = energy_j - self._e, busy_gpu_s - self._b
        if de == 0.0 and db == 0.0:
            return
        self._e, self._b = energy_j, busy_gpu_s
        self.t0.append(float(t))
        self.t1.append(float(end) if end is not None and end > t else float(t))
        self.de.append(de)
        self.db.append(db)

    def _inside(self, t0: float, t1: float) -> tuple[float, float]:
        """(energy, busy GPU-s) of the recorded segments that falls inside (t0, t1]."""
        if not self.t0:
            return 0.0, 0.0
        a, b = np.asarray(self.t0), np.asarray(self.t1)
        span = b - a
        point = span <= 0.0
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(point, ((a > t0) & (a <= t1)).astype(np.float64),
                            np.clip(np.minimum(b, t1) - np.maximum(a, t0), 0.0, None) / np.where(point, 1.0, span))
        return float(frac @ np.asarray(self.de)), float(frac @ np.asarray(self.db))

    def energy(self, t0: float, t1: float) -> float:
        """GPU energy of the replica in [t0, t1]: the share of each iteration / run inside it +
        the gaps between kernels at the awake power."""
        e, busy = self._inside(t0, t1)
        busy = min(busy, self.num_gpus * (t1 - t0))
        return e + self.gap_power_w * max(0.0, self.num_gpus * (t1 - t0) - busy)


def energy_window(name: str, t0: float, t1: float, energy_j: float, tokens: float) -> EnergyWindow:
    d = max(t1 - t0, 1e-12)
    return EnergyWindow(window=name, start_s=t0, end_s=t1, duration_s=d, output_tokens=tokens,
                        gpu_energy_j=energy_j, gpu_power_w=energy_j / d,
                        gpu_energy_j_per_token=energy_j / tokens if tokens else None,
                        throughput_tokens_per_s=tokens / d)


def energy_report(cluster, plan, whole: EnergyWindow, steady: EnergyWindow | None) -> EnergyReport:
    """Assemble :class:`EnergyReport`; rates (W, kWh/day, $/Mtok) from the steady-state window
    when there is one (what the plan draws while serving), else from the whole run."""
    base = steady if steady is not None else whole
    host = plan_host_power_w(cluster, plan)
    node = base.gpu_power_w + host
    pue = cluster.pue if cluster.pue is not None else 1.0
    tps = base.throughput_tokens_per_s
    gpu_cost = plan_gpu_cost_per_hour(cluster, plan)
    kwh_price = cluster.electricity_price_per_kwh
    return EnergyReport(
        plan_gpus=plan.gpus, plan_nodes=sum(plan_nodes_by_pool(cluster, plan).values()),
        plan_node_share=plan_node_share(cluster, plan),
        free_gpus=cluster.num_gpus - plan.gpus, gpu_power_w=base.gpu_power_w, host_power_w=host,
        node_power_w=node, free_gpu_idle_power_w=free_gpu_idle_power_w(cluster, plan),
        gpu_energy_j_per_token=base.gpu_power_w / tps if tps > 0 else None,
        node_energy_j_per_token=node / tps if tps > 0 else None,
        kwh_per_day=node * HOURS_PER_DAY / 1e3, facility_kwh_per_day=node * pue * HOURS_PER_DAY / 1e3,
        pue=pue, gpu_cost_per_hour=gpu_cost,
        energy_cost_per_hour=node / 1e3 * pue * kwh_price if kwh_price is not None else None,
        cost_per_mtok=cost_per_mtok(cluster, plan, tps, node), whole_run=whole, steady_state=steady)
