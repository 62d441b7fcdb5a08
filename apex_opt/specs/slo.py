"""Service-level objectives and search constraints (strict YAML).

An SLO file looks like::

    ttft_ms: {target: 2000, percentile: 90}   # time to first token, ms (queueing included)
    tpot_ms: 60                               # short form: a number = p90 target
    e2e_s: {target: 30, percentile: 99}       # end-to-end latency, seconds
    attainment: 0.9                           # fraction of requests that must meet ALL targets
    objective: latency                        # latency | throughput | energy | gpus | cost
    constraints: {max_gpus: 8, weight_dtypes: [bf16, fp8], kv_dtypes: [bf16]}

Semantics (used by :func:`apex_opt.sim.metrics.compute_metrics`):

* A request *meets the SLO* when it completed and each given target holds for it: TTFT <= ttft_ms,
  TPOT <= tpot_ms (requests with a single output token have no TPOT and pass that target),
  E2E <= e2e_s. Dropped requests never meet it.
* ``slo_attainment`` is the fraction of all requests that meet the SLO.
* A percentile target ``{target: T, percentile: p}`` holds when at least ``p`` % of all requests
  (dropped ones count as missing it) meet ``T`` on that metric -- i.e. the p-th percentile is <= T.
* The SLO is *met* when every percentile target holds and ``slo_attainment >= attainment``.

Every target is optional; an SLO with no targets only carries the objective and constraints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BeforeValidator, Field, field_validator

from .common import KVDType, PosFloat, StrictNumbersModel, WeightDType

#: Percentile used when a target is given as a bare number.
DEFAULT_PERCENTILE = 90.0


class Target(StrictNumbersModel):
    """A latency target at a percentile; a bare number means ``{target: N, percentile: 90}``."""

    target: PosFloat = Field(description="Upper bound, in the unit of the field (ms or s).")
    percentile: float = Field(DEFAULT_PERCENTILE, gt=0, lt=100,
                              description="Percentile of requests that must meet it (0 < p < 100; "
                                          "usually 50, 90, 95 or 99).")

    @field_validator("percentile", mode="before")
    @classmethod
    def _not_the_maximum(cls, v: object) -> object:
        # p100 is the slowest request: no percentile, one outlier (or drop) decides it
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == 100:
            raise ValueError("p100 is the slowest single request, not a percentile (one outlier "
                             "decides it): use e.g. 99 or 99.9")
        return v

    @field_validator("percentile")
    @classmethod
    def _not_a_fraction(cls, v: float) -> float:
        # 0.99 is a fraction written where a percentile is expected: p0.99 is never an SLO
        if v <= 1:
            raise ValueError(f"percentiles are on a 0-100 scale: did you mean {v * 100:g}?")
        return v


def _short_target(v: object) -> object:
    """Short form: a bare number ``N`` means ``{target: N, percentile: 90}``."""
    if isinstance(v, bool):
        raise ValueError("expected a number or {target, percentile}, got a boolean")
    if isinstance(v, str):  # '2s', '200ms': the unit is in the field name, not the value
        raise ValueError("expected a bare number in the unit of the field name (ttft_ms, tpot_ms: "
                         "milliseconds; e2e_s: seconds) or {target, percentile}, not text")
    if isinstance(v, (int, float)):
        return {"target": v, "percentile": DEFAULT_PERCENTILE}
    return v


#: A target field: a number (p90 target) or ``{target, percentile}``.
TargetField = Annotated[Target | None, BeforeValidator(
    _short_target, json_schema_input_type=Union[float, Target, None])]


class Constraints(StrictNumbersModel):
    """Hard limits on the plans the solver may propose (all optional)."""

    max_gpus: int | None = Field(None, ge=1, le=1_000_000,
                                 description="Use at most this many GPUs.")
    weight_dtypes: list[WeightDType] | None = Field(None, min_length=1,
                                                    description="Allowed weight dtypes.")
    kv_dtypes: list[KVDType] | None = Field(None, min_length=1,
                                            description="Allowed KV-cache dtypes.")
    pools: list[str] | None = Field(None, min_length=1, description="Only use these cluster pools.")
    power_budget_w: PosFloat | None = Field(None, description="Average power budget in watts.")
    max_tp: int | None = Field(None, ge=1, le=1024, description="Largest tensor-parallel degree.")
    max_pp: int | None = Field(None, ge=1, le=1024, description="Largest pipeline-parallel degree.")
    max_model_len: int | None = Field(
        None, ge=16, le=10_000_000,
        description="Longest request (prompt + output tokens) the deployment must accept: every "
                    "replica's KV cache must hold one, and launch commands use it as "
                    "--max-model-len (default: the workload's longest request for the search, the "
                    "model's maximum where it fits for the commands).")

    @field_validator("weight_dtypes", "kv_dtypes", "pools")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"duplicate entries in {v}")
        return v


class SLOSpec(StrictNumbersModel):
    """Latency targets, the required attainment, the objective and plan constraints."""

    name: str | None = Field(None, description="SLO name.")
    description: str | None = Field(None, description="Free text.")
    ttft_ms: TargetField = Field(None, description="Time to first token (arrival -> first "
                                                     "token, queueing included), milliseconds.")
    tpot_ms: TargetField = Field(None, description="Time per output token after the first "
                                                     "(per request: (finish - first) / "
                                                     "(tokens - 1)), milliseconds.")
    e2e_s: TargetField = Field(None, description="End-to-end latency (arrival -> last token), "
                                                   "seconds.")
    attainment: float = Field(0.9, gt=0, le=1, description="Fraction of requests that must meet "
                                                           "all targets at once.")

    @field_validator("attainment", mode="before")
    @classmethod
    def _fraction(cls, v: object) -> object:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 1 < v <= 100:
            # 95 reads as a percentage; 1.5 is no plausible percentage (1.5 % of requests)
            hint = f"did you mean {v / 100:g}?" if v >= 50 else "e.g. 0.9 for 90 % of requests"
            raise ValueError(f"attainment is a fraction (0-1): {hint}")
        return v
    objective: Literal["latency", "throughput", "energy", "gpus", "cost"] = Field(
        "latency", description="What the search optimises among plans that meet the SLO.")
    constraints: Constraints = Field(default_factory=Constraints,
                                     description="Hard limits on plans.")

    def targets(self) -> dict[str, Target]:
        """The given targets keyed by field name (``ttft_ms``, ``tpot_ms``, ``e2e_s``)."""
        out = {}
        for k in ("ttft_ms", "tpot_ms", "e2e_s"):
            t = getattr(self, k)
            if t is not None:
                out[k] = t
        return out

    @property
    def has_targets(self) -> bool:
        return bool(self.targets())


#: Targets below these look like a unit slip (seconds written as ms, ...): a prefill of even one
#: token plus the HTTP round trip takes milliseconds, and no GPU decodes a token in < 0.5 ms.
UNIT_WARN_BELOW = {"ttft_ms": 1.0, "tpot_ms": 0.5}
#: an end-to-end target above an hour is almost certainly milliseconds written as seconds
UNIT_WARN_ABOVE = {"e2e_s": 3600.0}


def unit_warnings(slo: SLOSpec) -> list[str]:
    """Targets whose size suggests the wrong unit (empty when all look plausible)."""
    out = []
    for k, t in slo.targets().items():
        unit = "ms" if k.endswith("_ms") else "s"
        if k in UNIT_WARN_BELOW and t.target < UNIT_WARN_BELOW[k]:
            out.append(f"{k}: {t.target:g} {unit} is below {UNIT_WARN_BELOW[k]:g} {unit}; the "
                       f"unit is milliseconds (did you write seconds?)")
        if k in UNIT_WARN_ABOVE and t.target > UNIT_WARN_ABOVE[k]:
            out.append(f"{k}: {t.target:g} s is over an hour; the unit is seconds (did you write "
                       f"milliseconds?)")
    return out


def load_slo(path: str | Path) -> SLOSpec:
    """Load and validate an SLO YAML/JSON file (raises InputError naming file/field/value; warns
    with :class:`apex_opt.errors.ApexWarning` about targets whose unit looks wrong)."""
    from ..errors import warn
    from ..io import load_model_file

    slo = load_model_file(SLOSpec, path)
    for w in unit_warnings(slo):
        warn(f"{path}: {w}")
    return slo
