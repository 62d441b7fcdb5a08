"""Per-operator latency and power of one GPU, plus collectives.

``DeviceCostModel(device)`` uses the device's measured profile when it names one (tables
interpolated, see ``gemm.py`` / ``attention.py`` / ``elementwise.py``) and otherwise the roofline
whose efficiencies were fitted on the bundled H100 profile (``roofline.py``), evaluated with the
device's datasheet peaks. Every method returns :class:`OpCost` (seconds, average watts of one GPU).
Calibrations are fitted once per profile (``functools.lru_cache``) and per-shape GEMM results are
memoised, so the simulator's inner loop only pays dictionary look-ups.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np

from ..errors import InputError
from ..specs.cluster import DeviceSpec
from . import attention as _attn
from . import elementwise as _ew
from .gemm import COMPUTE_DTYPES, GemmTable, GroupedCorrection, build_gemm_table, fit_grouped, table_dtype
from .power import PowerFit, SustainedDerate, fit_derate, fit_power, parse_cases, power_w
from .profile import REFERENCE_PROFILE, Profile, load_profile
from .roofline import ACT_BYTES, WEIGHT_BYTES, gemm_flops_bytes, matmul_scale, reference_facts

# collectives live in .collectives (it imports device_model from here; no import back: one
# direction between the package and its submodule)
__all__ = ["OpCost", "DeviceCostModel", "device_model", "Calibration", "calibration", "fp4_path",
           "fp4_engine_path", "fp4_memory_efficiency", "fp4_unsupported_message"]


class OpCost(NamedTuple):
    time_s: float
    power_w: float  # average power of one GPU while running it

    @property
    def energy_j(self) -> float:
        return self.time_s * self.power_w


@dataclass(frozen=True)
class Calibration:
    """Everything fitted on one profile."""

    profile: Profile
    gemm: dict[str, GemmTable]
    grouped: GroupedCorrection
    decode: _attn.DecodeFit
    prefill: _attn.PrefillFit
    stream: _attn.DecodeFit
    table_ops: dict[str, _ew.TableCurve]
    power: PowerFit
    derate: SustainedDerate


@lru_cache(maxsize=None)
def calibration(profile_name: str = REFERENCE_PROFILE) -> Calibration:
    """Fit all operator models on a bundled profile (once per process)."""
    prof = load_profile(profile_name)
    ds = prof.datasheet
    gemm = {dt: build_gemm_table(prof, dt) for dt in ("bf16", "fp8")
            if np.any(prof.table("gemm.csv")["dtype"] == dt)}
    grouped = fit_grouped(prof, gemm["bf16"])
    decode = _attn.fit_decode(_attn.decode_rows(prof), ds.hbm_bytes_per_s)
    prefill = _attn.fit_prefill(_attn.prefill_rows(prof), ds.peak_flops["bf16"])
    stream = _ew.fit_stream(*_ew.stream_rows(prof), ds.hbm_bytes_per_s)
    cases = [c for c in parse_cases(prof) if c.kind == "attention" or c.seconds is not None]
    utils, points = [], []
    for c in cases:
        peak = ds.peak_flops[c.dtype]
        if c.kind == "attention":  # its ms_per_call includes host gaps: use the fitted kernel time
            sec = float(decode.time(c.nbytes, ds.hbm_bytes_per_s))
        else:
            sec = c.seconds
        utils.append((c.nbytes / (sec * ds.hbm_bytes_per_s), c.flops / (sec * peak)))
        if c.kind == "gemm" and c.shape is not None:
            t_burst, share = gemm[c.dtype].time(*c.shape)
            points.append((t_burst, share, c.seconds / t_burst))
    power = fit_power(cases, utils, prof.idle_w, ds.power_limit_w)
    derate = fit_derate(points)
    return Calibration(profile=prof, gemm=gemm, grouped=grouped, decode=decode, prefill=prefill,
                       stream=stream, table_ops=_ew.table_curves(prof), power=power, derate=derate)


#: + checkpoint storage formats (roofline.weight_format): MXFP4, int4 of group 32 / 64
_WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4", "fp4", "mxfp4", "int4_g32", "int4_g64")


def fp4_path(device: DeviceSpec) -> str | None:
    """How NVFP4 (fp4) weights run on ``device`` (data/kernels.yaml common.fp4, with sources):
    ``"w4a4"`` where its peak_tflops lists fp4 (FP4 tensor cores: per-16 activation quant + FP4
    GEMM), ``"weight_only"`` on NVIDIA GPUs of compute capability >= 8.0 without them (FP4 Marlin,
    bf16 compute), None where no engine serves NVFP4 (e.g. AMD MI300X)."""
    if "fp4" in device.peak_tflops:
        return "w4a4"
    from .kernels import _raw

    facts = _raw()["common"].get("fp4", {})
    if device.vendor not in facts.get("weight_only_vendors", ()):
        return None
    cc = device.compute_capability
    if cc is None:
        return "weight_only"
    from packaging.version import Version

    return ("weight_only" if Version(str(cc)) >= Version(str(facts.get("weight_only_min_cc", "8.0")))
            else None)


@lru_cache(maxsize=None)
def fp4_memory_efficiency(profile_name: str = REFERENCE_PROFILE) -> float:
    """Memory efficiency (fraction of datasheet HBM bandwidth) of a W4A4 FP4 GEMM's weight
    stream: the median over the published B200 decode measurements of data/kernels.yaml
    common.fp4.decode_gemm_us, each read through the fp8 GEMM fit of ``profile_name`` (its
    launch latency and byte offset B_0): (bytes + B_0) / (bandwidth x (t - launch))."""
    from .kernels import _raw

    facts = _raw()["common"].get("fp4", {})
    rows = facts.get("decode_gemm_us") or []
    fit = calibration(profile_name).gemm["fp8"].fit
    try:
        bw = float(facts["decode_gemm_measured_gbps"]) * 1e9
        effs = []
        for n, k, us in rows:
            t = float(us) * 1e-6 - fit.launch_s
            nbytes = float(n) * float(k) * WEIGHT_BYTES["fp4"]
            if t > 0:
                effs.append((nbytes + fit.bytes_offset) / (bw * t))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed fp4 decode_gemm_us ({exc})", source="<bundled kernels.yaml>",
                         field="common.fp4") from None
    return float(np.median(effs)) if effs else fit.eff_memory


def fp4_engine_path(device: DeviceSpec, engine: str) -> str | None:
    """:func:`fp4_path` where the engine generation runs that path (data/kernels.yaml
    engines.<name>.nvfp4), else None."""
    from .kernels import engine_kernels

    path = fp4_path(device)
    return path if path is not None and path in engine_kernels(engine).get("nvfp4", ()) else None


def fp4_runs(model, device: DeviceSpec, engine: str) -> bool:
    """Whether ``model``'s fp4 weights run on ``device`` with ``engine``: an MXFP4 checkpoint
    served as published by its MoE kernels (kernels.mxfp4_path), otherwise NVFP4
    (:func:`fp4_engine_path`)."""
    if getattr(model, "quant_scheme", "") == "mxfp4" and model.default_weight_dtype == "fp4":
        from .kernels import mxfp4_path

        return mxfp4_path(device, engine) is not None
    return fp4_engine_path(device, engine) is not None


def fp4_unsupported_message(device: DeviceSpec, engine: str | None = None) -> str:
    """One line saying why fp4 weights cannot run on ``device`` (with ``engine``)."""
    path = fp4_path(device)
    if path is not None and engine is not None:
        what = ("W4A4 FP4 GEMMs (FP4 tensor cores)" if path == "w4a4"
                else "weight-only FP4 (Marlin) GEMMs")
        return (f"fp4 (NVFP4) weights on {device.name} need {what}, which engine profile {engine} "
                f"does not run (data/kernels.yaml engines nvfp4); choose another --engine or "
                f"--weight-dtype")
    return (f"fp4 (NVFP4) weights cannot run on {device.name}: it has no FP4 tensor cores and no "
            f"engine's weight-only FP4 (Marlin) kernel runs on it (vLLM's NVFP4 emulation on ROCm "
            f"dequantizes every weight per forward and is not modelled); choose another --weight-dtype")


class DeviceCostModel:
    """Latency and power of operators on one GPU of type ``device``.

    ``use_profile=False`` ignores the device's measured tables (roofline only; used to check the
    roofline against the tables). ``sustained=True`` applies the measured clock-throttling derate
    to compute-bound work (back-to-back serving); ``False`` gives the short-burst table numbers.
    """

    def __init__(self, device: DeviceSpec, *, use_profile: bool = True, sustained: bool = True):
        self.device = device
        self.sustained = sustained
        self.has_profile = bool(use_profile and device.profile)
        self.cal = calibration(device.profile if self.has_profile else REFERENCE_PROFILE)
        self.bw = device.hbm_bandwidth_gbps * 1e9
        # floor of a busy GPU's power: awake at its boost clock (the power fit's own baseline, the
        # profile's measured ~130 W on H100), not the settled idle of a long-idle card
        self.idle_power_w = float(device.active_idle_power_w or device.idle_power_w)
        self.power_limit_w = float(device.power_limit_w)
        self._gemm_cache: dict[tuple, OpCost] = {}
        self._fp4_fit_cache = None
        self._ew_cache: dict[tuple, OpCost] = {}
        # transfer to a device without its own profile: published per-device matmul and
        # attention-kernel efficiencies relative to the profiled device (data/device_transfer.yaml)
        ref = self.cal.profile.name
        self._mm_scale = {dt: 1.0 if self.has_profile else matmul_scale(device, dt, ref) for dt in ("bf16", "fp8")}
        # NVFP4 W4A4 runs on the fp8 GEMM fit (fitted on the reference's fp8 table): its scale is
        # the device's achievable fp4 matmul fraction over the reference's fp8 one; no device file
        # publishes an fp4 fraction (B200: ml-engineering's MAMF table has bf16/fp8 only), so the
        # device's fp8 fraction stands in for it
        self._mm_scale["fp4"] = self._mm_scale["fp8"]
        fp4_eff = (device.matmul_efficiency or {}).get("fp4")
        ref_fp8 = reference_facts(ref).get("matmul_efficiency", {}).get("fp8")
        if fp4_eff is not None and ref_fp8 is not None and not self.has_profile:
            self._mm_scale["fp4"] = float(fp4_eff) / float(ref_fp8)
        self._attn_scale = 1.0 if self.has_profile else _attn.attention_kernel_scale(device, ref)
        # HBM bandwidth of the profiled GPU: a streaming kernel's fitted time there splits into the
        # bytes at the fitted bandwidth and a latency part (launch, DRAM latency, ramp-up), which
        # another GPU of the same generation keeps as TIME rather than scaling with its bandwidth
        # (see _stream_time)
        self._ref_bw = float(self.cal.profile.datasheet.hbm_bytes_per_s)
        # paged decode attention: fixed cost of one thread block (sequence x KV head) spread over
        # the SMs (data/kernels.yaml attention_decode; none without a published SM count)
        from .kernels import kernel_facts
        kf = kernel_facts()
        sms = getattr(device, "sm_count", None)
        self._decode_cta_s = kf.decode_cta_s_for(device.compute_capability) / sms if sms else 0.0
        # fp8 KV cache: (factor on streamed bytes, factor on the block cost) where the engines'
        # kernel has a measured fp8 path (FA3 on Hopper), else plain byte halving
        self._fp8_kv_factors = kf.decode_fp8_kv_for(device.compute_capability)
        self._prefill_block_factor = kf.prefill_block_factor

    # -- power -----------------------------------------------------------------------------------
    def peak_flops(self, dtype: str) -> float:
        return self.device.tflops(dtype) * 1e12

    def power_at(self, u_mem: float, u_cmp: float, kind: str = "gemm") -> float:
        """Watts of one GPU at the given HBM / compute utilisation (fractions of datasheet peak)."""
        return power_w(self.cal.power, self.idle_power_w, self.power_limit_w, u_mem, u_cmp, kind)

    def _cost(self, t: float, flops: float, nbytes: float, dtype: str, kind: str) -> OpCost:
        if t <= 0:
            return OpCost(0.0, self.idle_power_w)
        return OpCost(t, self.power_at(nbytes / (t * self.bw), flops / (t * self.peak_flops(dtype)), kind))

    def _derate(self, t: float, share: float) -> float:
        return t * self.cal.derate.factor(t, share) if self.sustained else t

    # -- GEMM ------------------------------------------------------------------------------------
    def _resolve_dtypes(self, dtype: str, weight_dtype: str | None) -> tuple[str, str | None]:
        if dtype == "fp4" or weight_dtype == "fp4":
            if weight_dtype not in (None, "fp4") or dtype not in ("fp4", "bf16", "fp16"):
                raise InputError("fp4 (NVFP4) GEMMs take fp4 weights with fp4 or bf16 compute",
                                 field="weight_dtype", value=(dtype, weight_dtype))
            path = fp4_path(self.device)
            if path is None:
                raise InputError(fp4_unsupported_message(self.device), field="weight_dtype",
                                 value="fp4")
            if dtype == "fp4" and path == "w4a4":
                return "fp4", None       # W4A4: fp4 activations and weights, fp4 tensor cores
            return "bf16", "fp4"         # weight-only (FP4 Marlin): bf16 compute
        if dtype not in COMPUTE_DTYPES:
            raise InputError(f"unsupported GEMM compute dtype; use one of {', '.join(COMPUTE_DTYPES)}",
                             field="dtype", value=dtype)
        if weight_dtype is not None and weight_dtype not in _WEIGHT_DTYPES:
            raise InputError(f"unsupported weight dtype; use one of {', '.join(_WEIGHT_DTYPES)}",
                             field="weight_dtype", value=weight_dtype)
        if dtype == "fp8" and "fp8" not in self.device.peak_tflops:
            # no fp8 tensor cores (e.g. A100): fp8 checkpoints run as weight-only fp8, bf16 compute
            return "bf16", "fp8" if weight_dtype in (None, "fp8") else weight_dtype
        if weight_dtype is not None and WEIGHT_BYTES[weight_dtype] > WEIGHT_BYTES[table_dtype(dtype)]:
            raise InputError(f"weights ({weight_dtype}) wider than the compute dtype ({dtype})",
                             field="weight_dtype", value=weight_dtype)
        wd = None if weight_dtype in (None, dtype) or WEIGHT_BYTES[weight_dtype] == WEIGHT_BYTES[dtype] else weight_dtype
        return table_dtype(dtype), wd

    def _table(self, dtype: str) -> GemmTable:
        """The fitted GEMM table of a resolved compute dtype (fp4 W4A4: the fp8 fit, evaluated at
        the fp4 peak -- no fp4 GEMM is profiled)."""
        return self.cal.gemm["fp8" if dtype == "fp4" else dtype]

    def _fp4_fit(self):
        """The fp8 GEMM fit with the FP4 GEMM's measured memory efficiency (W4A4 weight stream,
        :func:`fp4_memory_efficiency`)."""
        fit = self._fp4_fit_cache
        if fit is None:
            base = self._table("fp4").fit
            fit = self._fp4_fit_cache = dataclasses.replace(
                base, eff_memory=fp4_memory_efficiency(self.cal.profile.name))
        return fit

    def _gemm_time(self, m: float, n: int, k: int, dtype: str, wd: str | None) -> tuple[float, float]:
        if dtype == "fp4":
            # NVFP4 W4A4 (cutlass_scaled_fp4_mm / FlashInfer FP4 GEMM): the fp8 GEMM roofline fit
            # (launch, efficiencies, knee) at the device's fp4 peak, with fp4 activation and weight
            # bytes incl. their block scales
            fit = self._fp4_fit()
            flops, nbytes = gemm_flops_bytes(m, n, k, "fp4")
            peak = self.peak_flops("fp4") * self._mm_scale["fp4"]
            return (float(fit.time(flops, nbytes, peak, self.bw)),
                    float(fit.compute_share(flops, nbytes, peak, self.bw)))
        table = self.cal.gemm[dtype]
        if self.has_profile:
            return table.time(m, n, k, wd)
        return table.roofline(m, n, k, wd, peak_flops=self.peak_flops(dtype) * self._mm_scale[dtype], bw=self.bw)

    def gemm(self, m: int, n: int, k: int, dtype: str = "bf16", weight_dtype: str | None = None) -> OpCost:
        """y[m,n] = x[m,k] W[n,k]^T (m = tokens)."""
        key = (m, n, k, dtype, weight_dtype)
        hit = self._gemm_cache.get(key)
        if hit is not None:
            return hit
        if not (m >= 0 and n > 0 and k > 0):
            raise InputError("GEMM needs m >= 0 and n, k > 0", field="m/n/k", value=(m, n, k))
        dt, wd = self._resolve_dtypes(dtype, weight_dtype)
        if m == 0:
            cost = OpCost(0.0, self.idle_power_w)
        else:
            t, share = self._gemm_time(float(m), n, k, dt, wd)
            t = self._derate(t, share)
            flops, nbytes = gemm_flops_bytes(m, n, k, dt, wd)
            cost = self._cost(t, float(flops), float(nbytes), dt, "gemm")
        self._gemm_cache[key] = cost
        return cost

    def grouped_gemm(self, experts: int, tokens_per_expert: float, n: int, k: int, dtype: str = "bf16",
                     weight_dtype: str | None = None, imbalance: float = 1.0) -> OpCost:
        """MoE experts of one GPU as one grouped GEMM. ``imbalance`` = max/mean tokens per expert
        group: the busiest expert group sets the pace, so the effective tokens per expert are
        ``tokens_per_expert * imbalance``."""
        key = ("grouped", experts, tokens_per_expert, n, k, dtype, weight_dtype, imbalance)
        hit = self._gemm_cache.get(key)
        if hit is not None:
            return hit
        if experts < 0 or tokens_per_expert < 0 or imbalance < 1.0 or not math.isfinite(tokens_per_expert):
            raise InputError("grouped GEMM needs experts >= 0, tokens >= 0, imbalance >= 1",
                             field="experts/tokens_per_expert/imbalance",
                             value=(experts, tokens_per_expert, imbalance))
        dt, wd = self._resolve_dtypes(dtype, weight_dtype)
        tokens = tokens_per_expert * imbalance
        if experts == 0 or tokens <= 0:
            cost = OpCost(0.0, self.idle_power_w)
        else:
            t1, share = self._gemm_time(tokens, n, k, dt, wd)
            launch = self._table(dt).fit.launch_s
            t = self.cal.grouped(tokens) * (experts * max(t1 - launch, 0.0) + launch)
            t = self._derate(t, share)
            flops, nbytes = gemm_flops_bytes(tokens, n, k, dt, wd)
            cost = self._cost(t, float(flops) * experts, float(nbytes) * experts, dt, "gemm")
        self._gemm_cache[key] = cost
        return cost

    def fused_moe(self, tokens: float, hidden: int, inter: int, topk: int, experts: int, tp: int = 1,
                  ep: int = 1, dtype: str = "bf16", weight_dtype: str | None = None, *,
                  balanced: bool = False, imbalance: float = 1.0, block_fp8: bool = False,
                  backend: str = "triton", gated: bool = True, shared: int = 0,
                  compute_eff: float = 1.0) -> OpCost:
        """One MoE layer's routed experts on one GPU as the Triton ``fused_moe`` runs them (vLLM,
        SGLang): two grouped GEMM kernels (w13: hidden -> 2*inter/tp, w2: inter/tp -> hidden), each
        ONE launch that streams the weights of every local expert that received a token, plus the
        aux kernels (router top-k, align, silu_and_mul, moe_sum; fp8 W8A8 adds the activation quant
        of both GEMM inputs). Tokens of each expert are padded to the kernel's BLOCK_SIZE_M.

        ``tokens``: tokens of the layer (all of them reach every EP rank). Active experts: with
        random routing the expected number of distinct experts hit; ``balanced=True``: tokens spread
        evenly (the kernel benchmarks' "balanced" distribution). ``imbalance`` scales the busiest EP
        rank's assignments.

        ``backend`` (block-fp8 W8A8 only, see :func:`fp8_block_moe_backend`):
        ``deep_gemm_contiguous`` = vLLM's DeepGEMM path with the padding rows computed (0.12; SM100
        in 0.13/0.14), ``deep_gemm_contiguous_skip`` = the same with the padding blocks' MMAs
        skipped but their tiles still loaded and stored (SM90, 0.13/0.14), see
        :meth:`_deep_gemm_moe`; ``flashinfer_cutlass`` / ``flashinfer_trtllm`` (vLLM 0.15+) stream
        only the hit experts' weights and are costed as ``triton``. For fp4 (NVFP4) a backend
        with a measured weight-stream rate (data/kernels.yaml fused_moe.backend_stream_eff, e.g.
        SGLang's ``flashinfer_cutedsl``) streams the hit experts at that share of HBM.

        ``gated=False``: non-gated experts (Nemotron-3's relu2: w13 is hidden -> inter/tp, one
        up projection; the activation reads and writes inter/tp per row).

        ``shared``: shared experts fused into the kernel as extra experts that every token selects
        (SGLang's shared-expert fusion, EngineSpec.moe_shared_expert_fusion; same shape as a
        routed expert; on every EP rank): always hit, ``tokens`` rows each (padded to
        BLOCK_SIZE_M), and their rows in the aux kernels. Not on the DeepGEMM paths (vLLM's, which
        never fuses)."""
        key = ("moe", tokens, hidden, inter, topk, experts, tp, ep, dtype, weight_dtype, balanced,
               imbalance, block_fp8, backend, gated, shared, compute_eff)
        hit = self._gemm_cache.get(key)
        if hit is not None:
            return hit
        if (tokens < 0 or topk < 1 or experts < topk or ep < 1 or tp < 1 or experts % ep or imbalance < 1.0
                or shared < 0):
            raise InputError("fused MoE needs tokens >= 0, 1 <= topk <= experts, EP dividing experts, "
                             "shared >= 0", field="tokens/topk/experts/ep/shared",
                             value=(tokens, topk, experts, ep, shared))
        if tokens == 0:
            return OpCost(0.0, self.idle_power_w)
        from .kernels import kernel_facts

        kf = kernel_facts()
        dt, wd = self._resolve_dtypes(dtype, weight_dtype)
        if backend not in MOE_BACKENDS:
            raise InputError(f"unknown fused-MoE backend; use one of {', '.join(MOE_BACKENDS)}",
                             field="backend", value=backend)
        if backend.startswith("deep_gemm") and dt == "fp8" and block_fp8 and wd is None and not shared:
            cost = self._deep_gemm_moe(tokens, hidden, inter, topk, experts, tp, ep, balanced,
                                       skip_padding=backend == "deep_gemm_contiguous_skip",
                                       gated=gated)
            self._gemm_cache[key] = cost
            return cost
        e_local = experts // ep
        inter_l = max(1, inter // tp)
        assign = tokens * topk / ep * (imbalance if ep > 1 else 1.0)
        active = _active_experts(tokens, topk, experts, e_local, assign, balanced)
        per_expert = assign / active
        if block_fp8 and dt == "fp8":  # 16-row tiles at decode sizes (kernels.yaml fused_moe)
            bm = (kf.moe_block_m_fp8_block_small if tokens <= kf.moe_block_m_fp8_block_small_max_tokens
                  else kf.moe_block_m_fp8_block)
        else:
            bm = kf.moe_block_m_small if tokens <= experts else kf.moe_block_m_large
        padded = active * math.ceil(per_expert / bm) * bm
        m_tiles = active * math.ceil(per_expert / bm)
        if shared:  # fused shared experts: every token's extra pick, always streamed
            s_blocks = shared * math.ceil(tokens / bm)
            padded += s_blocks * bm
            m_tiles += s_blocks
            active += shared
            assign += shared * tokens
        fit = self._fp4_fit() if dt == "fp4" else self._table(dt).fit
        peak, bw = self.peak_flops(dt) * self._mm_scale[dt], self.bw
        wb = WEIGHT_BYTES[wd or dt]
        ab = 1.0 if dt == "fp8" else (ACT_BYTES["fp4"] if dt == "fp4" else 2.0)
        marlin = wd is not None and dt == "bf16"
        if not marlin:  # the engine's Triton kernel against the dense-GEMM fit (kernels.yaml)
            peak *= compute_eff
        # expert weights streamed at the copy bandwidth (bf16, fp8, fp4) or the dense-GEMM fit's
        # (Marlin): data/kernels.yaml fused_moe.weight_stream; the fit sees the bytes it would need
        # to match
        copy = not marlin and kf.moe_weight_stream.get(dtype if dtype == "fp16" else dt) == "copy"
        stream = fit.eff_memory / self.cal.stream.eff if copy else 1.0
        eff = kf.moe_backend_stream_eff.get(backend)
        if eff is not None and dt == "fp4" and not marlin:  # an fp4 kernel's measured stream rate
            stream = fit.eff_memory / eff
        if marlin and wd == "mxfp4":
            # MXFP4 experts on Hopper (triton_kernels matmul_ogs): an SM-bound weight stream,
            # measured (data/kernels.yaml common.mxfp4.weight_stream_tbps): H200 streams no faster
            # than H100
            from .kernels import mxfp4_weight_stream_bps

            cap = mxfp4_weight_stream_bps(self.device)
            if cap is not None:
                bw = min(bw, cap / fit.eff_memory)
        # Triton fused_moe cost (every backend that reaches here but Marlin, TRT-LLM-gen and the
        # fp4 kernels): each output tile (a CTA: BLOCK_SIZE_M rows of one expert x BLOCK_SIZE_N columns) adds a
        # fixed latency, measured per GPU (data/kernels.yaml fused_moe.tile_latency_ns): small
        # expert shards (high TP) have many tiles per weight byte
        trtllm = wd is None and ((dt == "fp4" and eff is None)  # vLLM's NVFP4 MoE
                                 or (backend == "flashinfer_trtllm" and dt in ("bf16", "fp8")))
        triton = wd is None and dt in ("bf16", "fp16", "fp8") and not trtllm
        tile_s = kf.moe_tile_latency_s.get(self.device.name, 0.0) if triton else 0.0
        if trtllm:  # FlashInfer TRT-LLM-gen: its own measured tile latency
            tile_s = kf.moe_trtllm_tile_latency_s.get(self.device.name, 0.0)
        # expert parallelism in the Triton kernel (vLLM FusedMoE with an expert_map and no
        # all-to-all kernel): every rank gets all tokens; moe_align_block_size buckets all
        # tokens x topk slots by GLOBAL expert and maps the non-local experts' blocks to -1, for
        # which fused_moe_kernel only writes zeros into its [tokens, topk, N] output and returns
        # (no weight loads: no tile latency); the activation, the intermediate's quant, the align
        # and moe_sum cover all tokens x topk rows (vLLM fused_moe.py fused_experts_impl,
        # moe_align_block_size.py: expert_ids = expert_map[expert_ids])
        # (fused shared experts: on every rank, their rows in ``assign`` / the slots)
        rows = tokens * (topk + shared) if (triton and ep > 1) else assign
        nl_rows = tokens * topk - tokens * topk / ep if (triton and ep > 1) else 0.0
        w13 = (2 if gated else 1) * inter_l
        t_tot = fl_tot = by_tot = 0.0
        for n, k in ((w13, hidden), (hidden, inter_l)):
            flops = 2.0 * padded * n * k
            nbytes = active * n * k * wb + assign * k * ab + assign * n * 2.0
            if marlin:
                flops *= 1.0 + kf.marlin_compute_overhead.get(wd, 0.0)
            t = float(fit.time(flops, nbytes * stream, peak, bw))
            if tile_s:  # latency on the weight-stream side: hidden once the tiles are compute bound
                t = max(t, float(fit.time(0.0, nbytes * stream, peak, bw))
                        + tile_s * m_tiles * math.ceil(n / kf.moe_tile_n))
            if nl_rows > 0:  # the non-local blocks' zero rows (bf16 output), at copy speed
                t += self._stream_time(nl_rows * n * 2.0) - self._stream_time(0.0)
            t = self._derate(t, float(fit.compute_share(flops, nbytes * stream, peak, bw)))
            fl_tot += flops
            by_tot += nbytes
            t_tot += t
        aux = [self.elementwise("router_topk", int(math.ceil(tokens)), experts),
               self.elementwise("moe_align", int(math.ceil(rows)), 1),
               (self.elementwise("silu_and_mul", int(math.ceil(rows)), inter_l) if gated
                else self.stream(4.0 * math.ceil(rows) * inter_l)),
               self.elementwise("moe_sum", int(math.ceil(tokens)), (topk + shared) * hidden)]
        if dt == "fp8" and wd == "mxfp4":
            # MXFP4 x MXFP8 (SGLang flashinfer_mxfp4 on Blackwell): one mxfp8_quantize of x
            # (per-32 E8M0 scales, priced as the per-token-group fp8 quant); TRT-LLM-gen's fused
            # MoE quantizes the intermediate inside its activation step (data/kernels.yaml
            # common.mxfp4)
            aux.append(self.act_quant("fp8_block", int(math.ceil(tokens)), hidden))
        elif dt == "fp8":
            scheme = "fp8_block" if block_fp8 else "fp8_channel"
            aux += [self.act_quant(scheme, int(math.ceil(tokens)), hidden),
                    self.act_quant(scheme, int(math.ceil(rows)), inter_l)]
        elif dt == "fp4":
            # NVFP4 MoE on Blackwell (vLLM FlashInferCutlassMoEPrepareAndFinalize.prepare): one
            # per-16 fp4 quant of x; the intermediate's fp4 quant happens inside
            # flashinfer_cutlass_fused_moe's activation step (its SiLU kernel, counted above)
            aux.append(self.act_quant("fp4_group16", int(math.ceil(tokens)), hidden))
        t_aux = sum(c.time_s for c in aux)
        e_aux = sum(c.energy_j for c in aux)
        cost = self._cost(t_tot, fl_tot, by_tot, dt, "gemm")
        cost = OpCost(t_tot + t_aux, (cost.energy_j + e_aux) / (t_tot + t_aux))
        self._gemm_cache[key] = cost
        return cost

    def _deep_gemm_moe(self, tokens: float, hidden: int, inter: int, topk: int, experts: int,
                       tp: int, ep: int, balanced: bool, skip_padding: bool = False,
                       gated: bool = True) -> OpCost:
        """vLLM's DeepGEMM MoE (``fused_moe/deep_gemm_moe.py`` ``DeepGemmExperts.apply``): the
        tokens' top-k copies are scattered into a contiguous buffer in which every local expert's
        rows start on a multiple of the alignment (128 on SM90/SM100), sized for the worst case
        ``M_sum = round_up(M*topk + E_local*(align-1), align)`` because the per-expert counts are
        not on the host (``compute_aligned_M``). The rows no expert fills keep expert id 0
        (``deepgemm_moe_permute`` allocates ``m_indices`` with ``torch.zeros``; ``ep_scatter``
        writes ids only over each hit expert's rounded-up segment), and DeepGEMM skips only rows
        whose id is negative (``scheduler.cuh is_computation_valid``), so both grouped GEMMs run
        over all ``M_sum`` rows, like a dense fp8 GEMM of ``M_sum`` rows: at decode that is
        ~E_local*128 rows whatever the batch (flat in concurrency, proportional to the expert
        shard ``inter/tp``). The activation (silu_and_mul) and the per-token-group fp8 quant of
        the intermediate also cover all ``M_sum`` rows. The hit experts' weights still stream from
        HBM (expert 0's tiles of the padding rows stay in L2): each GEMM takes the longer of the
        dense ``M_sum``-row GEMM and that weight stream.

        ``skip_padding`` (vLLM 0.13+, padding ids -1, DeepGEMM's SM90 kernel): the hit experts'
        blocks (each expert's rows rounded up to the alignment) are computed, a GEMM of those rows
        that streams the hit experts' weights; every other block skips its MMAs but its TMA producer
        still loads the block's activation rows (fp8) and their per-128 scales, and its epilogue
        still stores the block's bf16 output rows: ``K + 4*K/128 + 2*N`` bytes of HBM traffic per
        padding row and GEMM, at the copy bandwidth (expert 0's weight tiles those blocks also load
        come from L2 and are not priced). See data/kernels.yaml fused_moe.deep_gemm."""
        facts = deep_gemm_moe_facts()
        align = facts["m_alignment"]
        e_local = experts // ep
        inter_l = max(1, inter // tp)
        m = int(math.ceil(tokens))
        m_sum = -(-(m * topk + e_local * (align - 1)) // align) * align
        assign = tokens * topk / ep
        active = _active_experts(tokens, topk, experts, e_local, assign, balanced)
        fit = self._table("fp8").fit
        peak, bw = self.peak_flops("fp8") * self._mm_scale["fp8"], self.bw
        sm90 = facts["sm90_compute"]
        if sm90 is not None and self.device.compute_capability not in sm90["compute_capability"]:
            sm90 = None

        def grouped(rows: float, n: int, k: int) -> OpCost:
            # the grouped GEMM over ``rows`` rows: the dense fp8 GEMM, no faster than DeepGEMM's
            # published SM90 rate at this K (data/kernels.yaml fused_moe.deep_gemm.sm90_compute)
            dense = self.gemm(rows, n, k, "fp8")
            if sm90 is None or rows <= 0:
                return dense
            flops = 2.0 * rows * n * k
            rate = (self.peak_flops("fp8") * sm90["peak_fraction"]
                    * k / (k + sm90["k_overhead"]))
            t = flops / rate
            if t <= dense.time_s:
                return dense
            return self._cost(t, flops, float(gemm_flops_bytes(rows, n, k, "fp8", None)[1]),
                              "fp8", "gemm")

        t_tot = e_tot = 0.0
        if skip_padding:
            per_expert = max(assign / active, 1.0)
            rows_valid = min(float(m_sum), active * math.ceil(per_expert / align) * align)
            rows_pad = m_sum - rows_valid
            copy_bw = bw * self.cal.stream.eff
            for n, k in (((2 if gated else 1) * inter_l, hidden), (hidden, inter_l)):
                # the hit experts' blocks: a dense fp8 GEMM of their rows, or their weight stream
                dense = grouped(rows_valid, n, k)
                wbytes = active * n * k
                t_valid = max(dense.time_s, float(fit.time(0.0, wbytes, peak, bw)))
                pad_bytes = rows_pad * (k + 4.0 * math.ceil(k / 128) + 2.0 * n)
                t = t_valid + pad_bytes / copy_bw
                t_tot += t
                e_tot += dense.energy_j
                if t > dense.time_s:
                    e_tot += self._cost(t - dense.time_s, 0.0, wbytes + pad_bytes, "fp8", "gemm").energy_j
        else:
            for n, k in (((2 if gated else 1) * inter_l, hidden), (hidden, inter_l)):
                dense = grouped(m_sum, n, k)
                wbytes = active * n * k
                t_w = float(fit.time(0.0, wbytes, peak, bw))
                t = max(dense.time_s, t_w)
                t_tot += t
                e_tot += (dense.energy_j if t == dense.time_s
                          else self._cost(t_w, 0.0, wbytes, "fp8", "gemm").energy_j)
        aux = [self.elementwise("router_topk", m, experts),
               self.act_quant("fp8_block", m, hidden),                    # prepare: quant of x
               self.elementwise("moe_align", int(math.ceil(assign)), 1),  # counts + ep_scatter ids
               self.stream(float(math.ceil(assign)) * hidden * 2.0),      # ep_scatter rows (fp8 r+w)
               (self.elementwise("silu_and_mul", m_sum, inter_l) if gated
                else self.stream(4.0 * m_sum * inter_l)),
               self.act_quant("fp8_block", m_sum, inter_l),
               self.elementwise("moe_sum", m, topk * hidden)]             # ep_gather + weighted sum
        t_aux = sum(c.time_s for c in aux)
        e_aux = sum(c.energy_j for c in aux)
        return OpCost(t_tot + t_aux, (e_tot + e_aux) / (t_tot + t_aux))

    def act_quant(self, scheme: str, tokens: int, hidden: int) -> OpCost:
        """Dynamic fp8 activation quantization before a W8A8 GEMM (``scheme``: fp8_tensor = two
        kernels, max-reduce then quant; fp8_channel = per-token, one kernel; fp8_block =
        per-token-group 128, one kernel) or NVFP4's before a W4A4 GEMM (fp4_group16: one
        scaled_fp4_quant kernel). See data/kernels.yaml."""
        from .kernels import kernel_facts

        q = kernel_facts().act_quant.get(scheme)
        if q is None:
            raise InputError("unknown activation-quant scheme", field="scheme", value=scheme)
        if tokens <= 0:
            return OpCost(0.0, self.idle_power_w)
        nbytes = q.bytes_per_elt * float(tokens) * hidden
        t = q.kernels * self._stream_time(nbytes / q.kernels)
        return self._cost(t, 0.0, nbytes, "bf16", "gemm")

    # -- attention -------------------------------------------------------------------------------
    def _decode_mem(self, nbytes: float) -> float:
        """Scalar fast path of :meth:`attention.DecodeFit.time` (inner loop of the simulator)."""
        f = self.cal.decode
        b = max(nbytes, 1.0)
        return f.launch_s + b / (self.bw * f.eff) * (1.0 + (f.bytes_half / b) ** f.power)

    def _decode_stream_s(self, nbytes: float) -> float:
        """Bytes at the fitted decode bandwidth (no launch or small-problem terms)."""
        return nbytes / (self.bw * self.cal.decode.eff)

    def _prefill_work(self, causal: float, cached: float) -> float:
        """Attention FLOPs at the fitted causal / cached efficiencies (no launch or tile terms)."""
        f = self.cal.prefill
        peak = self.peak_flops("bf16") * self._attn_scale
        return causal / (peak * f.eff_causal) + cached / (peak * f.eff_cached)

    def _prefill(self, causal: float, cached: float, tiles: float) -> float:
        """Scalar fast path of :meth:`attention.PrefillFit.time`."""
        f = self.cal.prefill
        work = self._prefill_work(causal, cached)
        mult = max(1.0 + (f.tiles_half / max(tiles, 1.0)) ** f.power,
                   max(f.eff_causal, f.eff_cached) / _attn.MAX_ATTN_EFF)
        return f.launch_s + work * mult

    def attention_decode(self, q_heads: int, kv_heads: int, head_dim: int, context_lens,
                         kv_dtype: str = "bf16") -> OpCost:
        """One query token per sequence against its own context length (per GPU heads)."""
        ctx = _attn.context_array(context_lens)
        total = float(ctx.sum())
        if total <= 0 or ctx.size == 0:
            return OpCost(0.0, self.idle_power_w)
        nbytes = total * kv_heads * head_dim * 2 * _attn.kv_bytes(kv_dtype)
        flops = 4.0 * q_heads * head_dim * total
        stream_f, block_f = self._fp8_kv_factors if kv_dtype == "fp8" else (1.0, 1.0)
        t = (max(self._decode_mem(nbytes * stream_f), self._prefill(0.0, flops, ctx.size * q_heads))
             + self._decode_blocks(ctx.size, kv_heads, nbytes * stream_f, block_f))
        return self._cost(t, flops, nbytes, "bf16", "attention")

    def _decode_blocks(self, seqs: int, kv_heads: float, nbytes: float, factor: float = 1.0) -> float:
        """Block cost of a decode: one thread block per (sequence, KV head)."""
        return self._block_cost(float(seqs) * kv_heads, nbytes, factor)

    def _block_cost(self, blocks: float, nbytes: float, factor: float = 1.0,
                    work_s: float | None = None) -> float:
        """Fixed cost of the paged attention kernel's thread blocks beyond their work: each block
        adds hypot(c, x) - x, c its fixed cost over the SMs (x ``factor``), x its share of the
        kernel's work -- ``work_s`` when given (prefill: the larger of its stream and its FLOPs),
        else its bytes at the fitted decode bandwidth (the mean block: the iteration memoises on
        sums)."""
        c = self._decode_cta_s * factor
        if c <= 0.0 or blocks <= 0.0:
            return 0.0
        x = (self._decode_stream_s(nbytes) if work_s is None else work_s) / blocks
        return blocks * (math.hypot(c, x) - x)

    def attention_prefill(self, q_heads: int, kv_heads: int, head_dim: int,
                          chunks: Sequence[tuple[int, int]], kv_dtype: str = "bf16") -> OpCost:
        """Causal attention of (new_tokens, cached_tokens_before) chunks (lower-right mask)."""
        causal, cached, tiles = _attn.chunk_work(chunks, q_heads, 4.0 * head_dim)
        if causal + cached <= 0:
            return OpCost(0.0, self.idle_power_w)
        arr = np.asarray(chunks, dtype=float).reshape(-1, 2)
        # bytes: the K/V of every attended token, plus the new tokens' Q read and O written (bf16;
        # with GQA they outweigh K/V q_heads / kv_heads times, which short prompts feel)
        nbytes = (float(arr.sum()) * kv_heads * head_dim * 2 * _attn.kv_bytes(kv_dtype)
                  + float(arr[:, 0].sum()) * q_heads * head_dim * 2 * 2.0)
        # the paged kernel packs a KV head's query heads into its 128-row tiles (FA3 pack_gqa,
        # always on with a page table): one block per (chunk, KV head, tile of q x group rows)
        group = max(float(q_heads) / max(float(kv_heads), 1e-9), 1.0)
        blocks = float(np.ceil(arr[:, 0] * group / _attn.Q_TILE).sum()) * kv_heads
        work = max(self._decode_stream_s(nbytes), self._prefill_work(causal, cached))
        t = (max(self._prefill(causal, cached, tiles), self._decode_mem(nbytes))
             + self._block_cost(blocks, nbytes, self._prefill_block_factor, work))
        return self._cost(t, causal + cached, nbytes, "bf16", "attention")

    def mla_decode(self, q_heads: int, kv_lora_rank: int, qk_rope_head_dim: int, context_lens,
                   kv_dtype: str = "bf16") -> OpCost:
        """MLA decode, absorbed form: reads the latent (kv_lora_rank + rope) once per token."""
        ctx = _attn.context_array(context_lens)
        total = float(ctx.sum())
        if total <= 0 or ctx.size == 0:
            return OpCost(0.0, self.idle_power_w)
        nbytes = total * (kv_lora_rank + qk_rope_head_dim) * _attn.kv_bytes(kv_dtype)
        flops = 2.0 * q_heads * total * (2 * kv_lora_rank + qk_rope_head_dim)
        t = max(self._decode_mem(nbytes), self._prefill(0.0, flops, ctx.size * q_heads))
        return self._cost(t, flops, nbytes, "bf16", "attention")

    def mla_prefill(self, q_heads: int, qk_nope_head_dim: int, qk_rope_head_dim: int, v_head_dim: int,
                    chunks: Sequence[tuple[int, int]], kv_dtype: str = "bf16") -> OpCost:
        """MLA prefill as multi-head attention with qk_head_dim = nope + rope and v_head_dim."""
        per_pair = 2.0 * (qk_nope_head_dim + qk_rope_head_dim + v_head_dim)
        causal, cached, tiles = _attn.chunk_work(chunks, q_heads, per_pair)
        if causal + cached <= 0:
            return OpCost(0.0, self.idle_power_w)
        arr = np.asarray(chunks, dtype=float).reshape(-1, 2)
        nbytes = float(arr.sum()) * q_heads * (qk_nope_head_dim + qk_rope_head_dim + v_head_dim) \
            * _attn.kv_bytes(kv_dtype)
        t = max(self._prefill(causal, cached, tiles), self._decode_mem(nbytes))
        return self._cost(t, causal + cached, nbytes, "bf16", "attention")

    # -- memory-bound ----------------------------------------------------------------------------
    def elementwise(self, op: str, tokens: int, hidden: int) -> OpCost:
        key = (op, tokens, hidden)
        hit = self._ew_cache.get(key)
        if hit is not None:
            return hit
        nbytes = _ew.op_bytes(op, tokens, hidden)
        if tokens == 0:
            cost = OpCost(0.0, self.idle_power_w)
        else:
            curve = self.cal.table_ops.get(op) if self.has_profile else None
            t = curve(float(tokens) * hidden) if curve is not None else self._stream_time(nbytes)
            cost = self._cost(t, 0.0, nbytes, "bf16", "gemm")
        self._ew_cache[key] = cost
        return cost

    def memcpy(self, nbytes: float) -> OpCost:
        """Device-to-device copy of ``nbytes`` (read + write)."""
        if not (nbytes >= 0 and math.isfinite(nbytes)):
            raise InputError("copy size must be a finite number >= 0", field="nbytes", value=nbytes)
        return self.stream(2.0 * nbytes)

    def stream(self, nbytes: float) -> OpCost:
        """A memory-bound kernel moving ``nbytes`` in total (reads + writes), timed by the
        fitted streaming bandwidth."""
        if nbytes == 0:
            return OpCost(0.0, self.idle_power_w)
        return self._cost(self._stream_time(nbytes), 0.0, nbytes, "bf16", "gemm")

    def _stream_time(self, nbytes: float) -> float:
        """Seconds of one streaming kernel moving ``nbytes``: the profiled GPU's fitted time with
        the pure-transfer part ``nbytes / (bandwidth x eff)`` re-priced at this GPU's bandwidth. The
        rest of the fit (a small kernel's floor: launch, DRAM latency, too few bytes in flight to
        fill the pipes) is latency, kept as time: the fit's size-dependent term would otherwise
        shrink by the bandwidth ratio (an H200 small kernel 30 % shorter than the same kernel on
        an H100, where measured tiny kernels take the same few microseconds on both)."""
        f = self.cal.stream
        t = float(f.time(nbytes, self._ref_bw))
        if self.bw != self._ref_bw:
            t += nbytes / f.eff * (1.0 / self.bw - 1.0 / self._ref_bw)
        return t


def _active_experts(tokens: float, topk: int, experts: int, e_local: int, assign: float,
                    balanced: bool) -> float:
    """Local experts that receive a token: ``assign`` token copies spread evenly
    (``balanced``), else the expected number of distinct experts hit by random top-k routing."""
    if balanced:
        return min(float(e_local), max(1.0, math.ceil(assign)))
    return max(1.0, e_local * (1.0 - (1.0 - topk / experts) ** tokens))


_MODELS: dict[str, DeviceCostModel] = {}


def device_model(device: DeviceSpec) -> DeviceCostModel:
    """Shared (memoised) :class:`DeviceCostModel` of a device (default options)."""
    key = device.model_dump_json()
    model = _MODELS.get(key)
    if model is None:
        model = _MODELS[key] = DeviceCostModel(device)
    return model



# MoE kernel paths the cost model knows: block-fp8 ones (data/kernels.yaml fused_moe.deep_gemm;
# the FlashInfer ones stream only the hit experts' weights and are costed as Triton's fused_moe)
# and engines' NVFP4 kernels with a measured weight-stream rate (fused_moe.fp4_backend).
MOE_BACKENDS = ("triton", "deep_gemm_contiguous", "deep_gemm_contiguous_skip", "flashinfer_cutlass",
                "flashinfer_trtllm", "flashinfer_cutedsl")


@lru_cache(maxsize=None)
def deep_gemm_moe_facts() -> dict:
    """``fused_moe.deep_gemm`` of data/kernels.yaml: the contiguous layout's row alignment and, per
    engine, the releases / GPUs / MoE TP sizes on which block-fp8 MoE runs DeepGEMM at every batch
    size (see the comments there)."""
    from .kernels import _raw

    raw = _raw()["common"]["fused_moe"].get("deep_gemm")
    try:
        align = int(raw["m_alignment"])
        sm90 = raw.get("sm90_compute")
        if sm90 is not None:
            sm90 = {"compute_capability": tuple(str(c) for c in sm90["compute_capability"]),
                    "peak_fraction": float(sm90["peak_fraction"]),
                    "k_overhead": float(sm90["k_overhead"])}
            if not (0.0 < sm90["peak_fraction"] <= 1.0 and sm90["k_overhead"] >= 0.0):
                raise ValueError(f"sm90_compute {sm90}")
        engines = {str(k): tuple(dict(r) for r in v) for k, v in raw.get("engines", {}).items()}
        for rules in engines.values():
            for r in rules:
                str(r["versions"]), int(r.get("max_moe_tp", 1 << 30))
                tuple(str(c) for c in r["compute_capability"])
                if r["backend"] not in MOE_BACKENDS or r.get("expert_parallel", True) not in (True, False):
                    raise ValueError(f"rule {r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed fused_moe.deep_gemm ({exc})", source="<bundled kernels.yaml>",
                         field="common.fused_moe.deep_gemm") from None
    return {"m_alignment": align, "engines": engines, "sm90_compute": sm90}


@lru_cache(maxsize=None)
def fp8_block_moe_backend(engine: str, version: str | None, compute_capability: str | None,
                          tp: int, ep: int = 1) -> str:
    """Kernel path of a block-fp8 (W8A8, 128x128 scales) MoE layer: the backend of the first rule of
    data/kernels.yaml fused_moe.deep_gemm that lists the engine release and GPU and admits the MoE
    TP size (``max_moe_tp``; vLLM's FusedMoEParallelConfig: the MoE's TP size is 1 under expert
    parallelism) and the use of EP (``expert_parallel``), else ``triton``."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    rules = deep_gemm_moe_facts()["engines"].get(engine.split("@", 1)[0], ())
    if not rules or version is None or compute_capability is None:
        return "triton"
    try:
        v = Version(version)
    except InvalidVersion:
        return "triton"
    moe_tp = 1 if ep > 1 else tp
    for r in rules:
        if (v in SpecifierSet(r["versions"]) and str(compute_capability) in r["compute_capability"]
                and moe_tp <= int(r.get("max_moe_tp", 1 << 30))
                and r.get("expert_parallel", ep > 1) == (ep > 1)):
            return str(r["backend"])
    return "triton"
