"""Kernel-path facts per engine generation, from ``data/kernels.yaml`` (see its comments for sources).

``kernel_facts()`` returns the shared physics (activation-quant kernels, Marlin, fused MoE tiling,
MLA absorbed GEMMs); ``engine_kernels(name)`` the per-engine choices (falls back to the engine
family: ``vllm@0.10`` -> ``vllm``); ``eager_host(name)`` the host cost of issuing a model's ops in
eager mode, per component and op kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import InputError
from ..io import parse_yaml
from ..registry import data_dir

_SRC = "<bundled kernels.yaml>"


@dataclass(frozen=True)
class ActQuant:
    kernels: int
    bytes_per_elt: float


@dataclass(frozen=True)
class KernelFacts:
    act_quant: dict[str, ActQuant]
    scheme_act_quant: dict[str, str]
    marlin_compute_overhead: dict[str, float]
    moe_block_m_small: int
    moe_block_m_large: int
    moe_block_m_fp8_block: int
    #: block fp8's smaller tile at decode sizes and the largest token count that gets it
    moe_block_m_fp8_block_small: int
    moe_block_m_fp8_block_small_max_tokens: int
    moe_aux_kernels: int
    #: compute dtype -> "copy" (expert weights streamed at the copy bandwidth) or "gemm" (dense fit)
    moe_weight_stream: dict[str, str]
    mla_absorbed_bmm_kernels: int
    #: SM-seconds one paged decode-attention thread block (sequence x KV head) costs besides its
    #: stream (kernels.yaml attention_decode.cta_sm_us); divided by the device's SM count
    decode_cta_sm_s: float
    #: fp8 KV-cache decode (kernels.yaml attention_decode.fp8_kv): compute capabilities, factor on
    #: the streamed bytes, factor on the per-block cost
    decode_fp8_kv: tuple[tuple[str, ...], float, float]
    #: a prefill thread block's fixed cost over a decode block's (attention_decode.prefill_block_factor)
    prefill_block_factor: float
    #: compute capability -> decode_cta_sm_s where its decode kernels differ (Blackwell)
    decode_cta_sm_s_by_cc: dict[str, float] = field(default_factory=dict)
    #: compute capability -> (stream factor, block factor) of its fp8 KV decode, beyond decode_fp8_kv
    decode_fp8_kv_by_cc: dict[str, tuple[float, float]] = field(default_factory=dict)

    def decode_cta_s_for(self, compute_capability: str | None) -> float:
        """SM-seconds of one decode block on a GPU of this compute capability."""
        return self.decode_cta_sm_s_by_cc.get(str(compute_capability), self.decode_cta_sm_s)

    def decode_fp8_kv_for(self, compute_capability: str | None) -> tuple[float, float]:
        """(stream factor, block factor) of an fp8 KV decode on this compute capability."""
        cc = str(compute_capability)
        if cc in self.decode_fp8_kv_by_cc:
            return self.decode_fp8_kv_by_cc[cc]
        ccs, stream_f, block_f = self.decode_fp8_kv
        return (stream_f, block_f) if cc in ccs else (1.0, 1.0)
    #: engine family -> the NVFP4 MoE kernel it runs when not vLLM's (fused_moe.fp4_backend)
    moe_fp4_backend: dict[str, str] = field(default_factory=dict)
    #: MoE backend -> share of HBM bandwidth its weight stream reaches (fused_moe.backend_stream_eff)
    moe_backend_stream_eff: dict[str, float] = field(default_factory=dict)
    #: Triton fused_moe output-tile width (BLOCK_SIZE_N) the per-tile latency counts tiles of
    moe_tile_n: int = 64
    #: device name -> latency each output tile of a Triton fused_moe GEMM adds to the kernel, in
    #: seconds (fused_moe.tile_latency_ns, measured); devices without an entry: none
    moe_tile_latency_s: dict[str, float] = field(default_factory=dict)
    #: the same for FlashInfer's TRT-LLM-gen MoE kernels (fused_moe.trtllm_tile_latency_ns)
    moe_trtllm_tile_latency_s: dict[str, float] = field(default_factory=dict)
    #: architectures whose fp8 MoE SGLang runs with flashinfer_trtllm on SM100
    moe_sglang_sm100_trtllm_archs: tuple[str, ...] = ()
    #: engine family -> {compute dtype -> share of the dense-GEMM fit's compute rate the engine's
    #: Triton fused_moe reaches} (fused_moe.triton_compute_eff, measured); absent: 1
    moe_triton_compute_eff: dict[str, dict[str, float]] = field(default_factory=dict)
    #: compute capability -> the same, where the GPU generation differs (Blackwell)
    moe_triton_compute_eff_by_cc: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def moe_compute_eff(self, engine: str, key: str, compute_capability: str | None) -> float:
        """The engine's Triton fused_moe compute rate over the dense-GEMM fit on this GPU."""
        by_cc = self.moe_triton_compute_eff_by_cc.get(str(compute_capability), {})
        if key in by_cc.get(engine, {}):
            return by_cc[engine][key]
        return self.moe_triton_compute_eff.get(engine, {}).get(key, 1.0)


@lru_cache(maxsize=None)
def _raw() -> dict:
    data = parse_yaml((data_dir() / "kernels.yaml").read_text(encoding="utf-8"), _SRC)
    if not isinstance(data, dict) or "common" not in data or "engines" not in data:
        raise InputError("expected 'common' and 'engines' mappings", source=_SRC)
    return data


@lru_cache(maxsize=None)
def kernel_facts() -> KernelFacts:
    c = _raw()["common"]
    try:
        return KernelFacts(
            act_quant={k: ActQuant(int(v["kernels"]), float(v["bytes_per_elt"])) for k, v in c["act_quant"].items()},
            scheme_act_quant=dict(c["scheme_act_quant"]),
            marlin_compute_overhead={k: float(v) for k, v in c["marlin"]["compute_overhead"].items()},
            moe_block_m_small=int(c["fused_moe"]["block_m_small"]),
            moe_block_m_large=int(c["fused_moe"]["block_m_large"]),
            moe_block_m_fp8_block=int(c["fused_moe"]["block_m_fp8_block"]),
            moe_block_m_fp8_block_small=int(c["fused_moe"]["block_m_fp8_block_small"]),
            moe_block_m_fp8_block_small_max_tokens=int(
                c["fused_moe"]["block_m_fp8_block_small_max_tokens"]),
            moe_aux_kernels=int(c["fused_moe"]["aux_kernels"]),
            moe_weight_stream=_weight_stream(c["fused_moe"].get("weight_stream", {})),
            mla_absorbed_bmm_kernels=int(c["mla"]["absorbed_bmm_kernels"]),
            decode_cta_sm_s=float(c["attention_decode"]["cta_sm_us"]) * 1e-6,
            decode_fp8_kv=(tuple(str(x) for x in c["attention_decode"]["fp8_kv"]["compute_capability"]),
                           float(c["attention_decode"]["fp8_kv"]["stream_factor"]),
                           float(c["attention_decode"]["fp8_kv"]["block_factor"])),
            prefill_block_factor=float(c["attention_decode"]["prefill_block_factor"]),
            decode_cta_sm_s_by_cc={str(k): float(v) * 1e-6 for k, v in
                                   (c["attention_decode"].get("cta_sm_us_by_compute_capability")
                                    or {}).items()},
            decode_fp8_kv_by_cc={str(k): (float(v["stream_factor"]), float(v["block_factor"]))
                                 for k, v in (c["attention_decode"].get("fp8_kv_by_compute_capability")
                                              or {}).items()},
            moe_fp4_backend={str(k): str(v) for k, v in c["fused_moe"].get("fp4_backend", {}).items()},
            moe_backend_stream_eff={str(k): float(v) for k, v in
                                    c["fused_moe"].get("backend_stream_eff", {}).items()},
            moe_tile_n=int(c["fused_moe"].get("tile_n", 64)),
            moe_tile_latency_s={str(k): float(v) * 1e-9 for k, v in
                                (c["fused_moe"].get("tile_latency_ns") or {}).items()},
            moe_trtllm_tile_latency_s={str(k): float(v) * 1e-9 for k, v in
                                       (c["fused_moe"].get("trtllm_tile_latency_ns") or {}).items()},
            moe_sglang_sm100_trtllm_archs=tuple(
                str(a) for a in c["fused_moe"].get("sglang_sm100_trtllm_architectures") or ()),
            moe_triton_compute_eff={str(e): {str(k): float(v) for k, v in d.items()} for e, d in
                                    (c["fused_moe"].get("triton_compute_eff") or {}).items()},
            moe_triton_compute_eff_by_cc={
                str(cc): {str(e): {str(k): float(v) for k, v in d.items()} for e, d in per.items()}
                for cc, per in (c["fused_moe"].get("triton_compute_eff_by_compute_capability")
                                or {}).items()},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"malformed kernel facts ({exc})", source=_SRC, field="common") from None


def _weight_stream(raw) -> dict[str, str]:
    if not isinstance(raw, dict) or any(v not in ("copy", "gemm") for v in raw.values()):
        raise InputError("fused_moe.weight_stream maps a compute dtype to 'copy' or 'gemm'",
                         source=_SRC, field="common.fused_moe.weight_stream", value=raw)
    return {str(k): str(v) for k, v in raw.items()}


def engine_kernels(name: str) -> dict:
    """Per-engine kernel choices for an engine profile name (``vllm``, ``sglang-0.4``, ...)."""
    engines = _raw()["engines"]
    base = name.split("@", 1)[0]
    if base in engines:
        return dict(engines[base])
    family = "sglang" if base.startswith("sglang") else "vllm"
    return dict(engines[family])


def mxfp4_path(device, engine: str) -> str | None:
    """How an MXFP4 checkpoint's MoE experts run on ``device`` with ``engine`` (data/kernels.yaml
    common.mxfp4 and engines.*.mxfp4, with sources): ``"weight_only"`` (MXFP4 weights, bf16
    activations and compute: vLLM's Triton matmul_ogs / FlashInfer MXFP4xBF16 / Marlin, SGLang on
    Hopper), ``"w4a8"`` (MXFP8 activations on FP8-rate tensor cores: SGLang on Blackwell), None
    where the engine generation or the GPU runs no MXFP4 kernel."""
    from packaging.version import InvalidVersion, Version

    facts = _raw()["common"].get("mxfp4", {})
    paths = engine_kernels(engine).get("mxfp4") or {}
    if not paths or device.vendor not in facts.get("vendors", ()):
        return None
    cc = device.compute_capability
    major = ""
    if cc is not None and device.vendor == "nvidia":
        try:
            if Version(str(cc)) < Version(str(facts.get("min_cc", "8.0"))):
                return None
        except InvalidVersion:
            pass
        major = str(cc).split(".", 1)[0]
    path = paths.get(major, paths.get("default"))
    if path == "w4a8" and "fp8" not in device.peak_tflops:
        path = "weight_only"
    return path


def mxfp4_weight_stream_bps(device) -> float | None:
    """Measured weight-stream rate (bytes/s) of the weight-only MXFP4 expert kernel on ``device``
    (data/kernels.yaml common.mxfp4.weight_stream_tbps, Hopper), None where none is published."""
    v = (_raw()["common"].get("mxfp4", {}).get("weight_stream_tbps") or {}).get(device.name)
    return float(v) * 1e12 if v is not None else None


def mxfp4_unsupported_message(device, engine: str) -> str:
    """One line saying why an MXFP4 checkpoint cannot run on ``device`` with ``engine``."""
    if not (engine_kernels(engine).get("mxfp4") or {}):
        return (f"MXFP4 (fp4, quant_method mxfp4) checkpoints need an engine with an MXFP4 MoE "
                f"kernel; engine profile {engine} has none (vLLM >= 0.10.1 / SGLang >= 0.5; "
                f"data/kernels.yaml engines mxfp4): choose another --engine")
    return (f"MXFP4 (fp4, quant_method mxfp4) checkpoints cannot run on {device.name}: no MXFP4 MoE "
            f"kernel for it (compute capability >= 8.0 needed; data/kernels.yaml common.mxfp4)")


#: kinds of host work in eager mode (data/kernels.yaml common.eager_host_us)
EAGER_KINDS = ("aten", "custom_op", "py_custom_op", "py_custom_op_decorated", "triton",
               "collective", "module")


@dataclass(frozen=True)
class EagerHost:
    """Host (CPU) cost of issuing a model's work in eager mode, by component, for one engine
    generation: ``ops[component][kind]`` = how many of each kind the engine's model code issues
    per instance of the component (read from its source), ``cost_us[kind]`` = the host
    microseconds of one (published measurements, see data/kernels.yaml)."""

    engine: str
    #: the backend the server runs, and the engine's default (the reference layer's)
    attention_backend: str
    default_backend: str
    cost_us: dict[str, float]
    ops: dict[str, dict[str, float]]
    #: in-model host time per isolated-op microsecond: the engine's whole-layer eager cost (its
    #: ``eager_launch_us`` x the kernels of the reference dense layer) over the same layer priced
    #: op by op (:func:`eager_host`)
    scale: float = 1.0

    def us(self, component: str) -> float:
        """Host microseconds of one ``component`` in the engine (0 when it issues none)."""
        return self.scale * sum(n * self.cost_us[k] for k, n in self.ops.get(component, {}).items())

    def reference_layer_us(self) -> float:
        """The reference dense layer (see data/kernels.yaml eager_reference) priced op by op,
        before scaling: decode, TP > 1, the engine's default attention backend."""
        ref = _raw()["common"]["eager_reference"]
        b = self.default_backend
        unit = EagerHost(self.engine, self.attention_backend, b, self.cost_us, self.ops)
        return (unit.us("layer") + int(ref["gemms"]) * unit.us("gemm")
                + int(ref["collectives"]) * unit.us("allreduce") + unit.us("mlp")
                + sum(unit.us(f"attention.{b}.{p}") for p in ("base", "decode")))

    def has(self, component: str) -> bool:
        return component in self.ops

    def attention_us(self, decode: bool, prefill: bool) -> float:
        """One layer's attention: the backend's ops issued for any batch (``base``: the wrapper
        op, the KV-cache write) plus those of its decode and / or prefill path."""
        b = self.attention_backend
        return (self.us(f"attention.{b}.base") + (self.us(f"attention.{b}.decode") if decode else 0.0)
                + (self.us(f"attention.{b}.prefill") if prefill else 0.0))


def _kind_counts(raw, field: str) -> dict[str, float]:
    if not isinstance(raw, dict) or any(k not in EAGER_KINDS for k in raw):
        raise InputError(f"expected a mapping of eager op kinds ({', '.join(EAGER_KINDS)}) to "
                         "counts", source=_SRC, field=field, value=raw)
    try:
        return {str(k): float(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise InputError("eager op counts must be numbers", source=_SRC, field=field,
                         value=raw) from None


@lru_cache(maxsize=None)
def eager_host(name: str, attention_backend: str | None = None,
               layer_launch_us: float | None = None) -> EagerHost | None:
    """The eager host-cost model of engine profile ``name`` (family fallback as
    :func:`engine_kernels`), or None when its kernel facts list no ``eager_ops`` (the engine's
    flat ``eager_launch_us`` per kernel then applies). ``attention_backend`` overrides the
    engine's default backend. ``layer_launch_us`` (the engine's ``eager_launch_us``) anchors the
    absolute level: the reference dense layer costs its kernels x ``layer_launch_us`` in the
    engine, and every component scales with it by its ops' isolated costs (None = unscaled)."""
    ek = engine_kernels(name)
    raw = ek.get("eager_ops")
    if raw is None:
        return None
    where = f"engines.{name.split('@', 1)[0]}.eager_ops"
    common = _raw()["common"].get("eager_host_us")
    cost = _kind_counts(common, "common.eager_host_us")
    if "triton_launch_us" in ek:  # the Triton release this engine generation ships with
        cost["triton"] = float(ek["triton_launch_us"])
    if set(cost) != set(EAGER_KINDS):
        raise InputError(f"common.eager_host_us must price every kind ({', '.join(EAGER_KINDS)})",
                         source=_SRC, field="common.eager_host_us", value=common)
    if not isinstance(raw, dict):
        raise InputError("expected a mapping of components", source=_SRC, field=where, value=raw)
    ops: dict[str, dict[str, float]] = {}
    for comp, v in raw.items():
        if comp == "attention":
            if not isinstance(v, dict):
                raise InputError("expected backend -> {decode, prefill}", source=_SRC,
                                 field=f"{where}.attention", value=v)
            for backend, paths in v.items():
                if not isinstance(paths, dict) or not set(paths) <= {"base", "decode", "prefill"}:
                    raise InputError("expected {base, decode, prefill} op counts", source=_SRC,
                                     field=f"{where}.attention.{backend}", value=paths)
                for path in ("base", "decode", "prefill"):
                    ops[f"attention.{backend}.{path}"] = _kind_counts(
                        paths.get(path) or {}, f"{where}.attention.{backend}.{path}")
        else:
            ops[str(comp)] = _kind_counts(v, f"{where}.{comp}")
    default = str(ek.get("attention_backend", ""))
    backend = attention_backend or default
    backends = sorted({k.split(".")[1] for k in ops if k.startswith("attention.")})
    for b in (default, backend):
        if b not in backends:
            raise InputError(f"no eager attention ops for backend {b!r} of engine {name!r} "
                             f"(known: {', '.join(backends)})", field="attention_backend", value=b)
    host = EagerHost(name, backend, default, cost, ops)
    if layer_launch_us is None:
        return host
    ref = _raw()["common"].get("eager_reference")
    try:
        kernels = int(ref["kernels"])
    except (KeyError, TypeError, ValueError):
        raise InputError("expected eager_reference {kernels, gemms, collectives}", source=_SRC,
                         field="common.eager_reference", value=ref) from None
    unit = host.reference_layer_us()
    if unit <= 0:
        raise InputError("the reference layer issues no eager ops", source=_SRC,
                         field=where, value=raw)
    return EagerHost(name, backend, default, cost, ops, kernels * float(layer_launch_us) / unit)
