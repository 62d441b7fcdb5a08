"""Kernel-path facts per engine generation, from ``data/kernels.yaml`` (see its comments for sources).

``kernel_facts()`` returns the shared physics (activation-quant kernels, Marlin, fused MoE tiling,
MLA absorbed GEMMs, eager launch cost per kernel kind); ``engine_kernels(name)`` the per-engine
choices (falls back to the engine family: ``vllm@0.10`` -> ``vllm``).
"""

from __future__ import annotations

from dataclasses import dataclass
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
    moe_aux_kernels: int
    #: compute dtype -> "copy" (expert weights streamed at the copy bandwidth) or "gemm" (dense fit)
    moe_weight_stream: dict[str, str]
    mla_absorbed_bmm_kernels: int
    eager_launch_us: dict[str, float]


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
            moe_aux_kernels=int(c["fused_moe"]["aux_kernels"]),
            moe_weight_stream=_weight_stream(c["fused_moe"].get("weight_stream", {})),
            mla_absorbed_bmm_kernels=int(c["mla"]["absorbed_bmm_kernels"]),
            eager_launch_us={k: float(v) for k, v in c["eager_launch_us"].items()},
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
