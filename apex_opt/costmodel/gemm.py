"""GEMM latency: measured table interpolation + fitted-roofline fallback.

On a device with a measured profile, ``t(m, n, k)`` is the fitted roofline (``roofline.py``)
multiplied by a measured correction ``exp(r(m; n, k))``, where ``r = log(t_measured / t_roofline)``:

* for an (n, k) shape in the table, ``r`` is that shape's residual row, interpolated
  piecewise-linearly in log(m) (so the table is reproduced exactly at measured points);
* for an unseen shape, ``r`` is the inverse-distance-weighted mean of the residual rows of the
  ``K_NEAREST`` closest measured shapes in (log2 n, log2 k) space;
* beyond the measured m range the residual is held at the nearest end (the roofline carries the
  scaling).

Weight-only quantization (bf16 compute, fp8/int4 weights) multiplies the bf16 table time by the
roofline ratio t_roofline(quantized weight bytes, + dequant overhead) / t_roofline(bf16), so the
memory-bound regime reads fewer bytes while the compute-bound regime keeps bf16 speed.

Grouped (MoE) GEMMs: ``E`` experts with ``T`` tokens each run as one kernel: time =
c(T) * (E * (t_gemm(T) - t_launch) + t_launch), where c(T) (interpolated in log T) is the measured
ratio on ``grouped_gemm.csv`` (median over its models).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .fitting import interp_log
from .profile import Profile
from .roofline import RooflineFit, dequant_overhead, fit_roofline, gemm_flops_bytes

K_NEAREST = 4
#: Regulariser of the inverse-distance weights (in squared log2 units).
_IDW_EPS = 0.05

COMPUTE_DTYPES = ("bf16", "fp16", "fp8")


def table_dtype(dtype: str) -> str:
    """The measured table used for a compute dtype (fp16 runs like bf16)."""
    return "bf16" if dtype == "fp16" else dtype


@dataclass
class GemmTable:
    """Measured GEMM times of one compute dtype, as residuals over a fitted roofline."""

    dtype: str
    fit: RooflineFit
    peak_flops: float
    bw: float
    shapes: np.ndarray  # (S, 2) log2(n), log2(k)
    shape_index: dict[tuple[int, int], int]
    log_m: np.ndarray  # (M,)
    resid: np.ndarray  # (S, M) log(t_meas / t_fit)

    def roofline(self, m: float, n: float, k: float, weight_dtype: str | None = None,
                 peak_flops: float | None = None, bw: float | None = None) -> tuple[float, float]:
        """(time, compute share) of the fitted roofline for this shape."""
        pf = peak_flops or self.peak_flops
        b = bw or self.bw
        wd = weight_dtype if weight_dtype and weight_dtype != self.dtype else None
        flops, nbytes = gemm_flops_bytes(m, n, k, self.dtype, wd)
        if wd is not None:
            flops = flops * (1.0 + dequant_overhead(wd))
        return float(self.fit.time(flops, nbytes, pf, b)), float(self.fit.compute_share(flops, nbytes, pf, b))

    def correction(self, m: float, n: int, k: int, exclude: tuple[int, int] | None = None) -> float:
        """Log-residual at (m, n, k): exact row when measured, else IDW over nearest shapes."""
        idx = self.shape_index.get((int(n), int(k)))
        if idx is not None and exclude != (int(n), int(k)):
            row = self.resid[idx]
        else:
            q = np.log2([float(n), float(k)])
            d2 = np.sum((self.shapes - q) ** 2, axis=1)
            if exclude is not None and exclude in self.shape_index:
                d2[self.shape_index[exclude]] = np.inf
            near = np.argsort(d2)[:K_NEAREST]
            w = 1.0 / (d2[near] + _IDW_EPS)
            row = (w[:, None] * self.resid[near]).sum(axis=0) / w.sum()
        return float(np.interp(np.log(max(m, 1.0)), self.log_m, row))

    def time(self, m: float, n: int, k: int, weight_dtype: str | None = None,
             exclude: tuple[int, int] | None = None) -> tuple[float, float]:
        """(seconds, compute share) on the profiled device. With a weight-only ``weight_dtype``
        this equals t_measured(bf16) x roofline(quantized) / roofline(bf16)."""
        t_fit, share = self.roofline(m, n, k, weight_dtype)
        return t_fit * float(np.exp(self.correction(m, n, k, exclude))), share


def build_gemm_table(profile: Profile, dtype: str, exclude: tuple[int, int] | None = None) -> GemmTable:
    """Fit the roofline on ``gemm.csv`` rows of ``dtype`` (optionally without one (n, k) shape,
    for honest leave-one-shape-out validation) and store per-shape residuals."""
    g = profile.table("gemm.csv")
    sel = g["dtype"] == dtype
    if not np.any(sel):
        raise InputError(f"profile {profile.name!r} has no {dtype} GEMMs", field="dtype", value=dtype)
    m, n, k, t = (g[c][sel].astype(float) for c in ("m", "n", "k", "ms"))
    t = t * 1e-3
    peak = profile.datasheet.peak_flops[dtype]
    bw = profile.datasheet.hbm_bytes_per_s
    flops, nbytes = gemm_flops_bytes(m, n, k, dtype)
    fit_sel = np.ones(len(t), dtype=bool)
    if exclude is not None:
        fit_sel = ~((n == exclude[0]) & (k == exclude[1]))
    fit = fit_roofline(flops[fit_sel], nbytes[fit_sel], t[fit_sel], peak, bw)
    resid_all = np.log(t / fit.time(flops, nbytes, peak, bw))
    ms = np.unique(m)
    keys = sorted({(int(a), int(b)) for a, b in zip(n, k)})
    index = {key: i for i, key in enumerate(keys)}
    resid = np.zeros((len(keys), len(ms)))
    for key, i in index.items():
        rows = (n == key[0]) & (k == key[1])
        resid[i] = np.interp(np.log(ms), np.log(m[rows]), resid_all[rows])
    return GemmTable(dtype=dtype, fit=fit, peak_flops=peak, bw=bw,
                     shapes=np.log2(np.array(keys, dtype=float)), shape_index=index,
                     log_m=np.log(ms), resid=resid)


@dataclass(frozen=True)
class GroupedCorrection:
    """Measured grouped-GEMM / (experts x dense GEMM) ratio as a function of tokens per expert."""

    tokens: np.ndarray
    ratio: np.ndarray

    def __call__(self, tokens_per_expert: float) -> float:
        return float(np.exp(interp_log(max(tokens_per_expert, 1.0), self.tokens, np.log(self.ratio))))


def grouped_dense_equivalent(table: GemmTable, experts: int, tokens: float, n: int, k: int,
                             weight_dtype: str | None = None) -> tuple[float, float]:
    """E x (dense GEMM time - launch) + one launch, and the compute share."""
    t, share = table.time(tokens, n, k, weight_dtype)
    launch = table.fit.launch_s
    return experts * max(t - launch, 0.0) + launch, share


def fit_grouped(profile: Profile, table: GemmTable) -> GroupedCorrection:
    """Ratio measured/dense-equivalent on ``grouped_gemm.csv`` (median per tokens-per-expert)."""
    g = profile.table("grouped_gemm.csv")
    ratios: dict[float, list[float]] = {}
    for e, tpe, k, n, ms in zip(g["experts"], g["tokens_per_expert"], g["k"], g["n"], g["ms"]):
        pred, _ = grouped_dense_equivalent(table, int(e), float(tpe), int(n), int(k))
        ratios.setdefault(float(tpe), []).append(ms * 1e-3 / pred)
    tokens = np.array(sorted(ratios))
    return GroupedCorrection(tokens=tokens, ratio=np.array([np.median(ratios[t]) for t in tokens]))
