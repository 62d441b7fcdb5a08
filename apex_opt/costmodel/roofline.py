"""Roofline with efficiencies fitted on the measured H100 tables.

Every operator time in this package has the form

    t = t_launch + smoothmax(FLOPs / (P_peak * eff_c), (bytes + B_0) / (BW_peak * eff_m))
    smoothmax(a, b) = (a**p + b**p) ** (1/p)

``P_peak`` and ``BW_peak`` are the datasheet peaks of the device that runs the operator (dense
TFLOP/s of the compute dtype, HBM GB/s). The efficiencies ``eff_c`` / ``eff_m`` (fractions of the
datasheet peak), the launch latency ``t_launch``, the byte offset ``B_0`` (small transfers do not
reach full bandwidth: effective bandwidth = BW*eff_m * B/(B+B_0)) and the smoothness ``p`` (how
sharply the roofline knee bends) are least-squares fits in log-time on the measured H100 tables
(``gemm.csv`` per compute dtype), normalised by the H100 datasheet peaks in
``data/profiles/datasheets.yaml``. Fitted values on the bundled H100 profile (see
``scripts/validate_costmodel.py``, which prints them):

* bf16 GEMM: t_launch ~ 6 us, eff_c ~ 0.72 (~715 TFLOP/s), eff_m ~ 0.76 (~2.5 TB/s), B_0 ~ 7 MB, p ~ 4
* fp8 GEMM:  t_launch ~ 6 us, eff_c ~ 0.65 (~1280 TFLOP/s), eff_m ~ 0.74, B_0 ~ 5 MB, p ~ 4

Attention uses its own fits (``attention.py``), same idea. On a device with a measured profile the
tables are used directly (this roofline is only the shape-to-shape interpolant); on any other device
this fitted roofline *is* the model, evaluated with that device's peaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..specs.model import WEIGHT_ELEMENT_BYTES, weight_format  # noqa: F401 (re-exported)
from .fitting import least_squares

def dequant_overhead(weight_dtype: str) -> float:
    """bf16 compute with weight-only quantized weights (Marlin: fp8 on GPUs without fp8 cores,
    AWQ/GPTQ int4): extra compute time for in-register dequantisation in the compute-bound regime
    (``data/kernels.yaml`` marlin.compute_overhead, with its source)."""
    from .kernels import kernel_facts

    return kernel_facts().marlin_compute_overhead.get(weight_dtype, 0.0)
#: Bytes per weight element including group scales (specs/model.py WEIGHT_ELEMENT_BYTES: int4
#: group 128, NVFP4, and the checkpoint formats of weight_format: MXFP4, int4 of group 32 / 64).
WEIGHT_BYTES = WEIGHT_ELEMENT_BYTES
#: Bytes per activation element for a compute dtype (fp8 GEMMs read fp8 activations; NVFP4 W4A4
#: GEMMs read fp4 activations with their FP8 block scales, from vLLM's scaled_fp4_quant).
ACT_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 0.5 + 1.0 / 16}
#: fp8 cuBLAS/cutlass GEMMs pad the token dimension to a multiple of 16 (fp4: taken as fp8's,
#: no published minimum tile for the CUTLASS / FlashInfer FP4 GEMMs).
MIN_M = {"bf16": 1, "fp16": 1, "fp8": 16, "fp4": 16}


@dataclass(frozen=True)
class RooflineFit:
    """Fitted roofline parameters (efficiencies relative to the datasheet peaks)."""

    launch_s: float
    eff_compute: float
    eff_memory: float
    bytes_offset: float
    smooth_p: float

    def parts(self, flops, nbytes, peak_flops: float, bw: float):
        """(compute time, memory time) in seconds, without launch latency."""
        tc = flops / (peak_flops * self.eff_compute)
        tm = (nbytes + self.bytes_offset) / (bw * self.eff_memory)
        return tc, tm

    def time(self, flops, nbytes, peak_flops: float, bw: float):
        """Modelled time in seconds (vectorised over ``flops``/``nbytes``)."""
        tc, tm = self.parts(flops, nbytes, peak_flops, bw)
        p = self.smooth_p
        return self.launch_s + (tc ** p + tm ** p) ** (1.0 / p)

    def compute_share(self, flops, nbytes, peak_flops: float, bw: float):
        """Fraction in [0, 1] of the operator that is compute-bound (tc^p / (tc^p + tm^p))."""
        tc, tm = self.parts(flops, nbytes, peak_flops, bw)
        p = self.smooth_p
        return tc ** p / (tc ** p + tm ** p)


def gemm_flops_bytes(m, n, k, dtype: str, weight_dtype: str | None = None):
    """FLOPs and HBM bytes of y[m,n] = x[m,k] W[n,k]^T (bf16 output)."""
    m = np.maximum(np.asarray(m, dtype=float), MIN_M.get(dtype, 1))
    n = np.asarray(n, dtype=float)
    k = np.asarray(k, dtype=float)
    wb = WEIGHT_BYTES[weight_dtype or dtype]
    ab = ACT_BYTES[dtype]
    flops = 2.0 * m * n * k
    nbytes = m * k * ab + n * k * wb + 2.0 * m * n
    return flops, nbytes


def fit_roofline(flops: np.ndarray, nbytes: np.ndarray, seconds: np.ndarray, peak_flops: float,
                 bw: float) -> RooflineFit:
    """Least-squares fit (relative error in log-time) of a :class:`RooflineFit`."""
    lt = np.log(seconds)

    def make(x: np.ndarray) -> RooflineFit:
        e = [float(v) for v in np.exp(x)]
        return RooflineFit(launch_s=e[0], eff_compute=e[1], eff_memory=e[2], bytes_offset=e[3],
                           smooth_p=1.0 + e[4])

    def resid(x: np.ndarray) -> np.ndarray:
        return np.log(make(x).time(flops, nbytes, peak_flops, bw)) - lt

    x = least_squares(resid, np.log([6e-6, 0.7, 0.8, 1e7, 3.0]))
    return make(x)


@lru_cache(maxsize=None)
def transfer_facts() -> dict:
    """``data/device_transfer.yaml``: the reference devices' published efficiencies and the
    attention kernel per compute capability (see that file for sources)."""
    from ..errors import InputError
    from ..io import parse_yaml
    from ..registry import data_dir

    src = "<bundled device_transfer.yaml>"
    data = parse_yaml((data_dir() / "device_transfer.yaml").read_text(encoding="utf-8"), src)
    if not isinstance(data, dict) or not isinstance(data.get("reference_profiles"), dict) \
            or not isinstance(data.get("attention_kernels"), dict):
        raise InputError("expected 'reference_profiles' and 'attention_kernels' mappings", source=src)
    return data


def reference_facts(profile: str) -> dict:
    """Published facts of the device a bundled profile was measured on ({} when not listed)."""
    ref = transfer_facts()["reference_profiles"].get(profile)
    return ref if isinstance(ref, dict) else {}


def matmul_scale(device, dtype: str, profile: str) -> float:
    """Factor on the GEMM compute efficiency fitted on ``profile`` for ``device``: the device's
    published maximum achievable matmul fraction over the reference device's (1 when either is
    unknown)."""
    dev = (device.matmul_efficiency or {}).get(dtype)
    ref = reference_facts(profile).get("matmul_efficiency", {}).get(dtype)
    if dev is None or ref is None:
        return 1.0
    return float(dev) / float(ref)
