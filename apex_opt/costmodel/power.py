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
