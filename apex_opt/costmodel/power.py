"""GPU power per operator and the sustained-clock derate, fitted on ``power_curve.csv`` / ``energy.csv``.

Power of one GPU while it runs an operator::

    P = P_idle + (P_limit - P_idle) * A,   A = min(1, a_mem * u_mem ** g + a_cmp * u_cmp)

``u_mem`` = achieved HBM bytes/s over the datasheet bandwidth, ``u_cmp`` = achieved FLOP/s over the
datasheet peak of the compute dtype. Attention kernels (softmax on the CUDA cores on top of the
tensor cores) get their own memory coefficient ``a_attn``. ``a_*`` and ``g`` are fitted on the H100
power rows (bf16 GEMMs m = 1 ... 8192 against 28672x8192 and 8192x8192 weights, fp8 GEMM, the 2 GiB
device copy, decode attention at batch 1 ... 128) with the profile's measured idle (~130 W) and the
700 W cap. Other devices reuse the activity ``A`` with their own ``idle_power_w`` / ``power_limit_w``.
What this reproduces: weight-bound GEMMs ~450-475 W, the cap (~700 W) from m ~ 128 up, a copy
~520 W, decode attention ~180 W at batch 1 rising towards the cap at batch 128.

Communication: the profile has no power measurement of collectives. We estimate it with the same
memory-activity curve at the HBM traffic a collective generates (``COMM_HBM_BYTES_PER_LINK_BYTE``
bytes of HBM read/write per byte on the link: read the send buffer, write the receive buffer, read
it again to reduce), which lands at ~300-400 W on an H100 NVLink all-reduce -- below compute.

Sustained clocks: back-to-back compute-bound GEMMs hit the 700 W cap and the SM clock drops from
1.98 GHz to ~1.3 GHz. The long kernels of ``gemm.csv`` are already at that sustained speed, short
ones are not (they ran at burst clocks): comparing the 2.5 s back-to-back runs of ``energy.csv`` /
``power_curve.csv`` with the table gives ``t_sustained / t_table = 1 + d * exp(-t_table / tau)`` on
the compute-bound share of the kernel (``d``, ``tau`` fitted; ~+20 % at 0.2 ms, ~0 beyond ~1.5 ms).
A serving engine under load runs back-to-back, so the cost model applies it by default
(``DeviceCostModel(..., sustained=True)``).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import numpy as np

from .fitting import least_squares
from .profile import Profile

COMM_HBM_BYTES_PER_LINK_BYTE = 3.0

_GEMM = re.compile(r"gemm_(bf16|fp8)_m(\d+)_n(\d+)_k(\d+)$")
_DECODE = re.compile(r"decode_attn_b(\d+)_L(\d+)(?:_h(\d+)kv(\d+))?$")
_COPY = re.compile(r"d2d_copy_(\d+)GiB$")


@dataclass(frozen=True)
class PowerFit:
    """Activity model (dimensionless) fitted on a profile."""

    a_mem: float
    a_cmp: float
    a_attn: float
    gamma: float

    def activity(self, u_mem: float, u_cmp: float, kind: str = "gemm") -> float:
        a = self.a_attn if kind == "attention" else self.a_mem
        u_mem = min(max(u_mem, 0.0), 1.0)
        u_cmp = min(max(u_cmp, 0.0), 1.0)
        return min(1.0, a * u_mem ** self.gamma + self.a_cmp * u_cmp)


@dataclass(frozen=True)
class SustainedDerate:
    """t_sustained / t_burst = 1 + amp * compute_share * exp(-t_burst / tau)."""

    amp: float
    tau_s: float

    def factor(self, t_burst: float, compute_share: float) -> float:
        return 1.0 + self.amp * compute_share * float(np.exp(-t_burst / self.tau_s))


@dataclass(frozen=True)
class PowerCase:
    """One measured power row, reduced to what the fit needs."""

    case: str
    watts: float
    seconds: float | None
    kind: str  # gemm | attention | copy
    flops: float
    nbytes: float
    dtype: str
    shape: tuple[int, int, int] | None = None
    decode: tuple[int, int, int, int] | None = None


def parse_cases(profile: Profile) -> list[PowerCase]:
    """Power rows of ``power_curve.csv`` and ``energy.csv`` with FLOPs/bytes from the case names."""
    out = []
    for fname in ("power_curve.csv", "energy.csv"):
        tab = profile.table(fname)
        for case, w, ms in zip(tab["case"], tab["watts"], tab["ms_per_call"]):
            case = str(case)
            sec = float(ms) * 1e-3 if np.isfinite(ms) else None
            if (g := _GEMM.match(case)):
                dt, m, n, k = g.group(1), *map(int, g.group(2, 3, 4))
                wb = 2.0 if dt == "bf16" else 1.0
                out.append(PowerCase(case, float(w), sec, "gemm", 2.0 * m * n * k,
                                     (m * k + n * k) * wb + 2.0 * m * n, dt, shape=(m, n, k)))
            elif (d := _DECODE.match(case)):
                b, L = int(d.group(1)), int(d.group(2))
                qh, kvh = (int(d.group(3)), int(d.group(4))) if d.group(3) else (64, 8)
                nbytes = b * L * kvh * 128 * 2 * 2.0
                out.append(PowerCase(case, float(w), sec, "attention", 4.0 * b * L * qh * 128, nbytes,
                                     "bf16", decode=(b, L, qh, kvh)))
            elif (c := _COPY.match(case)):
                nb = int(c.group(1)) * 2.0 ** 30
                out.append(PowerCase(case, float(w), sec, "copy", 0.0, 2.0 * nb, "bf16"))
    return out


def fit_power(cases: list[PowerCase], utils: list[tuple[float, float]], idle_w: float,
              limit_w: float) -> PowerFit:
    """Fit :class:`PowerFit` on measured watts given each case's (u_mem, u_cmp)."""
    watts = np.array([c.watts for c in cases])
    kinds = [c.kind for c in cases]
    target = (watts - idle_w) / (limit_w - idle_w)

    def make(x):
        e = [float(v) for v in np.exp(x)]
        return PowerFit(a_mem=e[0], a_cmp=e[1], a_attn=e[2], gamma=e[3])

    def resid(x):
        f = make(x)
        return np.array([f.activity(um, uc, k) for (um, uc), k in zip(utils, kinds)]) - target

    return make(least_squares(resid, np.log([0.7, 1.5, 0.9, 1.0])))


def fit_derate(points: list[tuple[float, float, float]]) -> SustainedDerate:
    """Fit on (t_burst, compute_share, t_sustained / t_burst) points."""
    t = np.array([p[0] for p in points])
    cs = np.array([p[1] for p in points])
    r = np.array([p[2] for p in points])

    def make(x):
        e = [float(v) for v in np.exp(x)]
        return SustainedDerate(amp=e[0], tau_s=e[1])

    def resid(x):
        d = make(x)
        return np.log([d.factor(a, b) for a, b in zip(t, cs)]) - np.log(r)

    return make(least_squares(resid, np.log([0.3, 4e-4])))


def power_w(fit: PowerFit, idle_w: float, limit_w: float, u_mem: float, u_cmp: float,
            kind: str = "gemm") -> float:
    """Average watts of one GPU at the given utilisations."""
    return idle_w + (limit_w - idle_w) * fit.activity(u_mem, u_cmp, kind)


# ------------------------------------------------------------------------------------------------
# DVFS: SM clock and power cap
# ------------------------------------------------------------------------------------------------
#
# Energy of one engine iteration on one GPU, at SM clock ``f`` (the memory clock is fixed):
#
#     T(f) = T_host + T_other + T_cmp * f_max / f
#     E(f) = P_base(f) * T(f) + E_mem + E_cmp * v(f)^2
#     P_base(f) = P_idle + (P_awake - P_idle) * (f / f_max) * v(f)^2
#
# * ``T_cmp`` is the share of the GPU time bound by SM throughput (per operator
#   t * t_c / (t_c + t_m), its roofline compute time over compute + memory time), ``T_other`` the
#   memory-, link- and launch-bound rest, ``T_host`` the CPU part of the step (GPU awake, no kernel);
# * switching energy per FLOP scales with V^2 (CMOS, C V^2 per transition): ``E_cmp`` = FLOPs x the
#   energy per FLOP at max clock, which is the fitted ``a_cmp`` slope of the profile's power rows
#   ((P_limit - P_idle) * a_cmp / peak FLOP/s, ~0.97 pJ/FLOP bf16 on H100 SXM);
# * the energy of moving a byte through HBM does not depend on the SM clock (``E_mem``, from the
#   fitted memory-activity term at the iteration's average HBM utilisation);
# * an awake GPU with no kernel (``P_awake``, measured 130 W at 1980 MHz on H100 SXM vs 75 W idle
#   at 345 MHz) pays clock-tree and leakage power ~ f V^2 above the settled idle;
# * v(f) is the core voltage relative to the max-clock voltage. Where the device file has a
#   ``voltage_curve`` v is piecewise linear through its points and flat below the first one (the
#   voltage floor: below it a lower clock saves only the f in f V^2). A100 SXM: points derived from
#   a published clock sweep (a100-sxm-80gb.yaml); H100 / H200 / H100 PCIe: a line through our one
#   measured throttle point with the A100's knee transferred (h100-sxm-80gb.yaml). Without a curve:
#   flat at ``voltage_at_knee`` below ``voltage_knee_mhz``, linear up to 1 at ``sm_clock_max_mhz``.
#   Deriving v from a sweep: with a fixed amount of compute-bound work, E(f) - P_idle T(f) =
#   E_mem + (P_awake - P_idle) (f / f_max) T(f) v^2 + E_cmp v^2, and f T(f) is ~constant when
#   T ~ 1/f, so (E - P_idle T) at f over the same at the top clock is v(f)^2 / v(top)^2
#   (:func:`voltage_from_sweep`).
#
# A power cap C becomes a clock: the GPU's power controller lowers the SM clock until the average
# power over its window (longer than one iteration) is at most C, so the iteration runs at the
# largest f <= min(locked clock, f_max) with E(f) / T(f) <= C (P is increasing in f; bisection).
# The default limit (TDP) is a cap like any other, so the default clock f0 of an iteration comes
# from the same rule. The operator tables already contain the default throttling, so a setting is
# applied RELATIVE to the default: time x T_gpu(f1) / T_gpu(f0), busy energy x
# E_busy(f1) / E_busy(f0). The default (no clock, no cap) therefore reproduces the calibrated
# numbers exactly, and a setting changes them only through the physics above.


@dataclass(frozen=True)
class IterationWork:
    """What one GPU does in one iteration, split for the DVFS model (seconds, joules, FLOPs)."""

    t_host: float
    t_other: float
    t_cmp: float
    e_mem: float
    e_cmp: float


@dataclass(frozen=True)
class DvfsModel:
    """Clock / voltage / power behaviour of one device type (see the comment block above)."""

    f_min: float
    f_max: float
    f_knee: float
    v_knee: float
    p_idle: float
    p_awake: float
    p_limit: float
    p_cap_min: float
    curve: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        # the curve's abscissae once (voltage() runs ~1e5 times per simulation in the cap solves)
        object.__setattr__(self, "_xs", tuple(float(p[0]) for p in self.curve))
        object.__setattr__(self, "_ys", tuple(float(p[1]) for p in self.curve))

    def voltage(self, f: float) -> float:
        """Core voltage at SM clock ``f`` relative to the voltage at ``f_max``."""
        if self.curve:  # piecewise linear through the points, flat outside them (as np.interp)
            xs, ys = self._xs, self._ys
            x = min(f, self.f_max)
            if x <= xs[0]:
                return ys[0]
            if x >= xs[-1]:
                return ys[-1]
            i = bisect.bisect_right(xs, x)
            x0, x1 = xs[i - 1], xs[i]
            return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)
        if f <= self.f_knee:
            return self.v_knee
        if self.f_max <= self.f_knee:
            return 1.0
        return self.v_knee + (1.0 - self.v_knee) * (min(f, self.f_max) - self.f_knee) / (self.f_max - self.f_knee)

    def base_power(self, f: float) -> float:
        """Watts of an awake GPU running no kernel at SM clock ``f``."""
        v = self.voltage(f)
        return self.p_idle + (self.p_awake - self.p_idle) * (f / self.f_max) * v * v

    def gpu_time(self, w: IterationWork, f: float) -> float:
        return w.t_other + w.t_cmp * self.f_max / f

    def busy_energy(self, w: IterationWork, f: float) -> float:
        """Energy while kernels run (the host part excluded)."""
        v = self.voltage(f)
        return self.base_power(f) * self.gpu_time(w, f) + w.e_mem + w.e_cmp * v * v

    def power(self, w: IterationWork, f: float) -> float:
        """Average watts over the whole iteration window (host part at the awake power)."""
        t = w.t_host + self.gpu_time(w, f)
        if t <= 0:
            return self.base_power(f)
        return (self.busy_energy(w, f) + self.base_power(f) * w.t_host) / t

    def settle(self, w: IterationWork, clock_mhz: float | None, cap_w: float | None) -> float:
        """SM clock the GPU runs this iteration at: the locked clock (or f_max), lowered until the
        average power is at most the cap (default: the board limit)."""
        hi = min(self.f_max, float(clock_mhz)) if clock_mhz is not None else self.f_max
        cap = self.p_limit if cap_w is None else min(float(cap_w), self.p_limit)
        if self.power(w, hi) <= cap:
            return hi
        lo = self.f_min
        if self.power(w, lo) >= cap:
            return lo  # the cap cannot be met: the GPU sits at its lowest clock
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if self.power(w, mid) > cap:
                hi = mid
            else:
                lo = mid
        return lo

    def default_clock(self, w: IterationWork) -> float:
        """Clock that produced the DEFAULT (calibrated) times of ``w``: the largest f <= f_max
        at which doing ``w``'s FLOPs and bytes in ``w``'s times stays within the board limit."""
        t = w.t_host + w.t_other + w.t_cmp
        if t <= 0:
            return self.f_max
        # base_power() inlined with one voltage() per probe (the same arithmetic): this bisection
        # runs for every kernel the board limit holds back, ~1e5 times per simulation
        voltage, p_idle, d_awake, f_max = self.voltage, self.p_idle, self.p_awake - self.p_idle, self.f_max
        e_mem, e_cmp = w.e_mem, w.e_cmp

        def p(f: float) -> float:
            v = voltage(f)
            return ((p_idle + d_awake * (f / f_max) * v * v) * t + e_mem + e_cmp * v * v) / t

        if p(self.f_max) <= self.p_limit:
            return self.f_max
        lo, hi = self.f_min, self.f_max
        if p(lo) >= self.p_limit:
            return lo
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if p(mid) > self.p_limit:
                hi = mid
            else:
                lo = mid
        return lo

    def at_max_clock(self, w: IterationWork) -> IterationWork:
        """``w`` (default times, at :meth:`default_clock`) re-expressed at ``f_max``."""
        f0 = self.default_clock(w)
        return IterationWork(w.t_host, w.t_other, w.t_cmp * f0 / self.f_max, w.e_mem, w.e_cmp)

    def apply(self, w: IterationWork, clock_mhz: float | None, cap_w: float | None) -> tuple[float, float, float, float]:
        """(GPU-time factor, busy-energy factor, default clock f0, new clock f1) of a setting
        relative to the default (no locked clock, cap = board limit). ``w`` holds the default
        (calibrated) times."""
        f0 = self.default_clock(w)
        w = IterationWork(w.t_host, w.t_other, w.t_cmp * f0 / self.f_max, w.e_mem, w.e_cmp)
        f1 = self.settle(w, clock_mhz, cap_w)
        if f1 >= f0 and (clock_mhz is None or clock_mhz >= f0):
            return 1.0, 1.0, f0, f0
        t0, t1 = self.gpu_time(w, f0), self.gpu_time(w, f1)
        e0, e1 = self.busy_energy(w, f0), self.busy_energy(w, f1)
        return (t1 / t0 if t0 > 0 else 1.0), (e1 / e0 if e0 > 0 else 1.0), f0, f1


def dvfs_model(device, idle_w_fit: float | None = None) -> DvfsModel | None:
    """The device's :class:`DvfsModel`, or None when its file lacks the clock data."""
    d = device
    if d.sm_clock_max_mhz is None or d.sm_clock_min_mhz is None:
        return None
    knee = d.voltage_knee_mhz if d.voltage_knee_mhz is not None else d.sm_clock_min_mhz
    vk = d.voltage_at_knee if d.voltage_at_knee is not None else 1.0
    awake = d.active_idle_power_w if d.active_idle_power_w is not None else d.idle_power_w
    curve = tuple((float(f), float(v)) for f, v in (d.voltage_curve or ()))
    if curve:
        knee, vk = curve[0]
    return DvfsModel(f_min=float(d.sm_clock_min_mhz), f_max=float(d.sm_clock_max_mhz),
                     f_knee=float(knee), v_knee=float(vk), p_idle=float(d.idle_power_w),
                     p_awake=float(awake), p_limit=float(d.power_limit_w),
                     p_cap_min=float(d.power_cap_min_w if d.power_cap_min_w is not None else d.idle_power_w),
                     curve=curve)


def voltage_from_sweep(rows: list[tuple[float, float, float]], idle_w: float,
                       fit_below_mhz: float) -> list[tuple[float, float]]:
    """Relative core voltage from a clock sweep of one fixed piece of compute-bound work.

    ``rows``: (requested SM clock MHz, seconds, joules) per clock. The clock the GPU actually ran
    at comes from the times: T(f) = a + b / f is fitted on the rows below ``fit_below_mhz`` (where
    the requested clock holds) and f_eff = b / (T - a) for every row -- near the top a power or
    thermal limit holds the clock below the requested one. Returns (f_eff, v / v(top row)),
    ascending in clock, with v^2 = (E - idle T) / (E_top - idle T_top) (see the comment block
    above: the share of energy that does not scale with v^2 is taken as zero)."""
    rows = sorted(rows, key=lambda r: -r[0])
    f = np.array([r[0] for r in rows])
    t = np.array([r[1] for r in rows])
    e = np.array([r[2] for r in rows])
    m = f < fit_below_mhz
    if m.sum() < 2:
        raise ValueError("voltage_from_sweep needs >= 2 rows below fit_below_mhz")
    a, b = np.linalg.lstsq(np.vstack([np.ones(m.sum()), 1.0 / f[m]]).T, t[m], rcond=None)[0]
    f_eff = b / (t - a)
    dyn = e - idle_w * t
    v = np.sqrt(np.clip(dyn / dyn[0], 0.0, None))
    return sorted(zip((float(x) for x in f_eff), (float(x) for x in v)))


def check_gpu_settings(device, sm_clock_mhz: int | None, power_cap_w: float | None, *,
                       source: str | None = None, prefix: str = "",
                       names: tuple[str, str] = ("sm_clock_mhz", "power_cap_w")) -> None:
    """Raise InputError when a clock / cap is outside what ``device`` accepts (names the range).
    ``names`` are the field names to report (e.g. the CLI flags)."""
    from ..errors import InputError

    if sm_clock_mhz is None and power_cap_w is None:
        return
    if sm_clock_mhz is not None:
        if device.sm_clock_max_mhz is None or device.sm_clock_min_mhz is None:
            raise InputError(f"device {device.name} has no SM clock range in its file "
                             f"(sm_clock_min_mhz / sm_clock_max_mhz)", source=source,
                             field=f"{prefix}{names[0]}", value=sm_clock_mhz)
        lo, hi = device.sm_clock_min_mhz, device.sm_clock_max_mhz
        if not lo <= sm_clock_mhz <= hi:
            raise InputError(f"outside the {device.name} SM clock range {lo:g}-{hi:g} MHz",
                             source=source, field=f"{prefix}{names[0]}", value=sm_clock_mhz)
    if power_cap_w is not None:
        lo = device.power_cap_min_w if device.power_cap_min_w is not None else None
        hi = device.power_limit_w
        if lo is None:
            raise InputError(f"device {device.name} has no power-limit range in its file "
                             f"(power_cap_min_w)", source=source, field=f"{prefix}{names[1]}",
                             value=power_cap_w)
        if not lo <= power_cap_w <= hi:
            raise InputError(f"outside the {device.name} power-limit range {lo:g}-{hi:g} W",
                             source=source, field=f"{prefix}{names[1]}", value=power_cap_w)


#: memory-bound profile rows used for the energy per byte: FLOP utilisation below this
MEMORY_BOUND_U_CMP = 0.05


def memory_activity_per_utilisation(profile) -> float:
    """Activity per unit of HBM utilisation of memory-bound work, from the profile's measured
    power rows: median over the weight-streaming GEMMs (m <= 16) and the device copy of
    (W - awake) / (P_limit - awake) / u_mem, with each row's own back-to-back time. Power linear in
    bandwidth = a constant energy per byte moved (~128 pJ/B on H100 SXM: DRAM access plus the
    on-chip path), which is what a memory-bound kernel of any size pays per byte."""
    ds = profile.datasheet
    vals = []
    for c in parse_cases(profile):
        if c.kind == "attention" or c.seconds is None or c.seconds <= 0:
            continue
        u_mem = c.nbytes / (c.seconds * ds.hbm_bytes_per_s)
        u_cmp = c.flops / (c.seconds * ds.peak_flops[c.dtype])
        if u_cmp < MEMORY_BOUND_U_CMP and u_mem > 0.3:
            vals.append((c.watts - profile.idle_w) / (ds.power_limit_w - profile.idle_w) / u_mem)
    return float(np.median(vals)) if vals else float("nan")


def candidate_sm_clocks(device, lowest_fraction: float = 0.5, step_mhz: float = 150.0) -> list[int]:
    """SM clocks worth searching on ``device`` (MHz, descending; empty without clock data): the
    max boost clock, the base clock, then ``step_mhz`` steps down to ``lowest_fraction`` of max
    (below ~half clock the compute-bound slowdown outweighs the f V^2 saving on every workload
    the power model knows)."""
    if device.sm_clock_max_mhz is None or device.sm_clock_min_mhz is None:
        return []
    hi, lo = float(device.sm_clock_max_mhz), max(float(device.sm_clock_min_mhz), lowest_fraction * float(device.sm_clock_max_mhz))
    out = {int(round(hi))}
    if device.sm_clock_base_mhz is not None and lo <= device.sm_clock_base_mhz <= hi:
        out.add(int(round(device.sm_clock_base_mhz)))
    f = hi - step_mhz
    while f >= lo:
        out.add(int(round(f)))
        f -= step_mhz
    return sorted(out, reverse=True)


def candidate_power_caps(device, fractions: tuple[float, ...] = (0.85, 0.7, 0.55)) -> list[float]:
    """Power limits worth searching (W, descending; empty without a sourced cap range): fractions
    of the board limit, never below ``power_cap_min_w``."""
    if device.power_cap_min_w is None:
        return []
    caps = {round(max(device.power_cap_min_w, f * device.power_limit_w)) for f in fractions}
    return sorted((float(c) for c in caps if c < device.power_limit_w), reverse=True)
