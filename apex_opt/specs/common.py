"""Shared pydantic base and dtype vocabulary."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base of our own file schemas: unknown fields are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def absurd_above(limit: float, message: str) -> AfterValidator:
    """A sanity bound for an ``Annotated`` number field: a value above ``limit`` (None passes) is a
    unit mistake or a typo, refused with ``message``."""
    def check(v: float | None) -> float | None:
        if v is not None and v > limit:
            raise ValueError(message)
        return v
    return AfterValidator(check)


class StrictNumbersModel(StrictModel):
    """StrictModel that also refuses type coercion: a quoted ``"80"`` or a boolean is not a number
    (``num_requests: true`` would be 1 request, ``attainment: true`` 1.0), a count must be an
    integer (``8.0`` is not one)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True)


def _finite_pos(v: float) -> float:
    if not math.isfinite(v) or v <= 0:
        raise ValueError("must be a finite number > 0")
    return v


def _finite_nonneg(v: float) -> float:
    if not math.isfinite(v) or v < 0:
        raise ValueError("must be a finite number >= 0")
    return v


PosFloat = Annotated[float, AfterValidator(_finite_pos)]
NonNegFloat = Annotated[float, AfterValidator(_finite_nonneg)]

#: fp4 = NVIDIA NVFP4 (E2M1 values, one FP8-E4M3 scale per 16 elements + an FP32 per-tensor
#: scale): a pre-quantised ModelOpt / compressed-tensors checkpoint, like int4 (AWQ/GPTQ)
WeightDType = Literal["bf16", "fp8", "int4", "fp4"]
KVDType = Literal["bf16", "fp8"]
ComputeDType = Literal["bf16", "fp16", "fp8", "int8", "fp4"]
#: request-routing policies over data-parallel replicas (apex_opt/sim/router.py implements them)
DPRouterPolicy = Literal["round_robin", "least_outstanding", "sglang_cache_aware", "vllm_dp_lb"]
#: a plan's router: a policy, or 'engine' = the engine profile's own (EngineSpec.dp_router)
PlanRouter = Literal["engine", "round_robin", "least_outstanding", "sglang_cache_aware",
                     "vllm_dp_lb"]

#: Bytes per element of each storage dtype.
DTYPE_BYTES: dict[str, float] = {"bf16": 2.0, "fp16": 2.0, "fp32": 4.0, "fp8": 1.0, "int8": 1.0,
                                 "int4": 0.5, "fp4": 0.5}
