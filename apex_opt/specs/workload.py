"""Synthetic workload specification (strict YAML).

A workload file describes a stream of requests (open loop, or a closed loop of clients)::

    name: chat-3rps
    num_requests: 500
    seed: 0
    arrival: {process: poisson, rate: 3.0}          # requests per second
    prompt_len: {dist: lognormal, mean: 1000, cv: 0.8, min: 16, max: 8192}
    output_len: {dist: lognormal, mean: 250, cv: 0.8, min: 1, max: 2048}

Arrival processes (inter-arrival gaps; the first request arrives at t = 0):

* ``poisson``  -- exponential gaps with mean ``1/rate``;
* ``gamma``    -- gamma gaps with mean ``1/rate`` and coefficient of variation ``cv``
  (``cv`` > 1 is burstier than Poisson, ``cv`` < 1 smoother, ``cv`` = 1 is Poisson);
* ``constant`` -- gaps of exactly ``1/rate``;
* ``closed_loop`` -- ``concurrency`` clients, each sending its next request as soon as its
  previous one finished (what ``vllm bench serve --max-concurrency N`` and most published
  concurrency sweeps do); all clients start at t = 0 unless ``ramp_s`` staggers their first
  requests evenly over that many seconds; no ``rate``::

      arrival: {process: closed_loop, concurrency: 64}
      arrival: {process: closed_loop, concurrency: 64, ramp_s: 30}

Shared prefixes (optional ``prefix``): every request belongs to one of ``groups`` groups (drawn
uniformly at random, or ``assignment: round_robin``) whose first ``shared_tokens`` prompt tokens
are identical, e.g. a per-tenant system prompt::

    prefix: {groups: 10, shared_tokens: 150}          # block_tokens: 16 by default

The shared part is expressed as ids of ``block_tokens``-token blocks (``Requests.prefix_blocks``),
so only whole blocks are shared: 150 shared tokens at 16-token blocks share 144 (vLLM's prefix
cache also hashes only full 16-token blocks); ``block_tokens: 1`` shares exactly. A prompt shorter
than ``shared_tokens`` shares its whole (block-rounded) length.

Length distributions (``prompt_len`` / ``output_len``), in tokens. A bare integer means a fixed
length. Samples are rounded to integers and clipped to ``[min, max]`` (``min`` defaults to 1):

* ``fixed``     -- always ``mean``;
* ``uniform``   -- integers uniform on ``[min, max]`` (both required);
* ``lognormal`` -- give exactly one of ``mean`` / ``median`` and exactly one of ``sigma`` (std of
  the log) / ``cv`` (std/mean of the distribution itself, ``sigma = sqrt(ln(1 + cv^2))``);
* ``normal``    -- ``mean`` and exactly one of ``sigma`` (std in tokens) / ``cv`` (= sigma/mean);
* ``zipf``      -- ``P(k) ~ k^-alpha`` on the integers ``[min, max]`` (``max`` required).

Clipping moves the realised mean slightly when the tails are cut; keep ``min``/``max`` wide when the
mean matters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from .common import NonNegFloat, PosFloat, StrictNumbersModel, absurd_above

#: Largest token count a length distribution may produce (sanity bound on user input).
MAX_TOKENS = 10_000_000
#: Largest number of requests a synthetic workload may ask for.
MAX_REQUESTS = 10_000_000


#: Most clients a closed loop may have.
MAX_CONCURRENCY = 1_000_000
#: Longest closed-loop client ramp (seconds, about 11.6 days).
MAX_RAMP_S = 1e6
#: Latest arrival time a workload or trace may have (seconds, about 317 years): room for Unix
#: epoch times, while float64 seconds still resolve microseconds (at 1e13 s the simulated
#: latencies lose digits, at 1e14 s they are 0).
MAX_ARRIVAL_S = 1e10


class ArrivalSpec(StrictNumbersModel):
    """How requests arrive over time: an open-loop process at ``rate``, or a closed loop of
    ``concurrency`` clients."""

    process: Literal["poisson", "gamma", "constant", "closed_loop"] = Field(
        "poisson", description="Inter-arrival process: poisson, gamma (bursty), constant, or "
                               "closed_loop (N clients, each sends its next request when its "
                               "previous one finished).")
    rate: Annotated[PosFloat | None, absurd_above(
        1e7, "arrival rate is absurd (> 1e7 requests per second)")] = Field(
        None, description="Mean arrival rate in requests per second (open-loop processes).")
    cv: Annotated[PosFloat | None, absurd_above(
        100, "coefficient of variation is absurd (> 100)")] = Field(
        None, description="Coefficient of variation of the inter-arrival gaps (gamma only; "
                          "1 = Poisson, > 1 = bursty).")
    concurrency: int | None = Field(None, ge=1, le=MAX_CONCURRENCY,
                                    description="Clients of a closed loop (closed_loop only).")
    ramp_s: NonNegFloat = Field(0.0, description="Closed loop only: client i (0-based) sends its "
                                                 "first request at i x ramp_s / concurrency "
                                                 "seconds [default 0: all at t = 0, as vllm bench "
                                                 "serve --max-concurrency starts them].")

    @model_validator(mode="after")
    def _cv_only_for_gamma(self) -> "ArrivalSpec":
        if self.process == "closed_loop":
            if self.concurrency is None:
                raise ValueError("process 'closed_loop' needs 'concurrency' (number of clients)")
            if self.rate is not None:
                raise ValueError("'rate' does not apply to process 'closed_loop' (the clients "
                                 "send as fast as requests finish)")
            if self.ramp_s > MAX_RAMP_S:
                raise ValueError(f"ramp_s {self.ramp_s} s is absurd (> {MAX_RAMP_S:.0f} s)")
        else:
            if self.ramp_s:
                raise ValueError(f"'ramp_s' only applies to process 'closed_loop', not "
                                 f"{self.process!r}")
            if self.rate is None:
                raise ValueError(f"process {self.process!r} needs 'rate' (requests per second)")
            if self.concurrency is not None:
                raise ValueError(f"'concurrency' only applies to process 'closed_loop', not "
                                 f"{self.process!r}")
        if self.process == "gamma" and self.cv is None:
            raise ValueError("process 'gamma' needs 'cv' (coefficient of variation of the gaps)")
        if self.process != "gamma" and self.cv is not None:
            raise ValueError(f"'cv' only applies to process 'gamma', not {self.process!r}")
        return self


TokenCount = Annotated[int, Field(ge=1, le=MAX_TOKENS)]


class LengthDist(StrictNumbersModel):
    """A distribution of token counts (see the module docstring for each ``dist``)."""

    dist: Literal["fixed", "uniform", "lognormal", "normal", "zipf"] = Field(
        description="Distribution family.")
    mean: PosFloat | None = Field(None, description="Mean in tokens (fixed: the value).")
    median: PosFloat | None = Field(None, description="Median in tokens (lognormal only, "
                                                      "instead of mean).")
    sigma: PosFloat | None = Field(None, description="lognormal: std of log(length); "
                                                     "normal: std in tokens.")
    cv: PosFloat | None = Field(None, description="Std/mean of the distribution "
                                                  "(instead of sigma).")
    alpha: PosFloat | None = Field(None, description="zipf exponent: P(k) ~ k^-alpha.")
    min: TokenCount = Field(1, description="Smallest length (samples are clipped up to it).")
    max: TokenCount | None = Field(None, description="Largest length (samples are clipped down "
                                                     "to it); required for uniform and zipf.")

    @model_validator(mode="after")
    def _consistent(self) -> "LengthDist":
        given = {k for k in ("mean", "median", "sigma", "cv", "alpha")
                 if getattr(self, k) is not None}
        allowed, needed = _DIST_PARAMS[self.dist]
        extra = given - allowed
        if extra:
            raise ValueError(f"dist {self.dist!r} does not take {sorted(extra)}")
        for group in needed:
            n = len(given & group)
            if n != 1:
                which = " or ".join(sorted(group))
                raise ValueError(f"dist {self.dist!r} needs exactly one of {which}")
        if self.dist in ("uniform", "zipf") and self.max is None:
            raise ValueError(f"dist {self.dist!r} needs 'max'")
        if self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) > max ({self.max})")
        hi = self.max if self.max is not None else MAX_TOKENS
        for k in ("mean", "median"):
            v = getattr(self, k)
            if v is not None and not (self.min <= v <= hi):
                raise ValueError(f"{k} {v} is outside [min, max] = [{self.min}, {hi}]")
        if self.dist == "fixed" and self.mean is not None and self.mean != int(self.mean):
            raise ValueError(f"fixed length must be an integer (got {self.mean})")
        if self.sigma is not None and self.dist == "lognormal" and self.sigma > 10:
            raise ValueError(f"lognormal sigma {self.sigma} is absurd (> 10)")
        if self.cv is not None and self.cv > 100:
            raise ValueError(f"cv {self.cv} is absurd (> 100)")
        return self

    @property
    def upper(self) -> int:
        """Upper clip bound (``max`` or :data:`MAX_TOKENS`)."""
        return self.max if self.max is not None else MAX_TOKENS


# dist -> (parameters it accepts, groups of which exactly one must be given)
_DIST_PARAMS: dict[str, tuple[set[str], list[set[str]]]] = {
    "fixed": ({"mean"}, [{"mean"}]),
    "uniform": (set(), []),
    "lognormal": ({"mean", "median", "sigma", "cv"}, [{"mean", "median"}, {"sigma", "cv"}]),
    "normal": ({"mean", "sigma", "cv"}, [{"mean"}, {"sigma", "cv"}]),
    "zipf": ({"alpha"}, [{"alpha"}]),
}


def _int_is_fixed(v: object) -> object:
    """Short form: a bare integer length means ``{dist: fixed, mean: N}``."""
    if isinstance(v, bool):
        raise ValueError("expected a token count or a distribution mapping, got a boolean")
    if isinstance(v, int):
        if not 1 <= v <= MAX_TOKENS:
            raise ValueError(f"token count must be in [1, {MAX_TOKENS}]")
        return {"dist": "fixed", "mean": v, "min": 1, "max": v}
    if isinstance(v, float):
        raise ValueError("token count must be an integer")
    return v


#: A length field: an integer (fixed length) or a distribution. Integers are turned into a
#: ``fixed`` LengthDist before validation (the JSON Schema documents both forms).
Length = Annotated[LengthDist, BeforeValidator(_int_is_fixed,
                                               json_schema_input_type=Union[int, LengthDist])]


class PrefixSpec(StrictNumbersModel):
    """Shared prompt prefixes: each request belongs to a group whose first ``shared_tokens``
    prompt tokens are identical (see the module docstring)."""

    groups: int = Field(ge=1, le=MAX_REQUESTS, description="Number of prefix groups.")
    shared_tokens: int = Field(ge=1, le=MAX_TOKENS, description="Identical leading prompt tokens "
                                                                "of every request of a group.")
    block_tokens: int = Field(16, ge=1, le=4096, description="Granularity of the prefix ids in "
                                                             "tokens (only whole blocks are "
                                                             "shared; 1 = exact).")
    assignment: Literal["random", "round_robin"] = Field(
        "random", description="How requests pick their group: uniformly at random, or request "
                              "i -> group i mod groups.")


class WorkloadSpec(StrictNumbersModel):
    """A synthetic workload (open loop, or a closed loop of clients)."""

    name: str | None = Field(None, description="Workload name.")
    description: str | None = Field(None, description="Free text.")
    num_requests: int = Field(ge=1, le=MAX_REQUESTS, description="Number of requests.")
    arrival: ArrivalSpec = Field(description="Arrival process.")
    prompt_len: Length = Field(description="Prompt length in tokens: an integer or a distribution.")
    output_len: Length = Field(description="Output length in tokens (>= 1): an integer or a "
                                           "distribution.")
    prefix: PrefixSpec | None = Field(None, description="Shared prompt prefixes (groups x "
                                                       "shared tokens); None = no sharing.")
    seed: int = Field(0, ge=0, le=2 ** 63 - 1, description="Random seed (used when the caller "
                                                           "passes no generator).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus-sampling top_p every request "
                                                          "sends (1.0 = no filter, e.g. greedy).")
    top_k: int = Field(0, ge=0, description="top_k every request sends (0 = no filter). A top-p "
                                            "or top-k filter costs sampler time on every engine "
                                            "step (vLLM's sort-based path).")
    max_tokens: int | Literal["none"] | None = Field(
        None, description="max_tokens every request sends: omitted = each request its own output "
                          "length (benchmark clients forcing exact lengths); N = every request "
                          "declares N and ends at its output length (EOS) or N (SGLang reserves "
                          "KV room for min(N, 4096) per request; vLLM refuses prompt + N above "
                          "max_model_len); 'none' = no limit sent (the engine's own).")

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _max_tokens_count_or_none(cls, v):
        if v is None or v == "none" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError("max_tokens is a token count >= 1, or 'none' when the clients send no "
                         "limit (omit it: each request declares its own output length)")

    @field_validator("arrival")
    @classmethod
    def _duration_sane(cls, v: ArrivalSpec, info: ValidationInfo) -> ArrivalSpec:
        n = info.data.get("num_requests")
        if v.rate is not None and isinstance(n, int) and (n - 1) / v.rate > MAX_ARRIVAL_S:
            raise ValueError(f"rate {v.rate:g} req/s spreads {n:,} requests over "
                             f"{(n - 1) / v.rate:.3g} s (> {MAX_ARRIVAL_S:.0e} s, about 317 "
                             f"years); the rate is in requests per second")
        return v

    @property
    def duration_s(self) -> float | None:
        """Expected time between the first and the last arrival (None for a closed loop: it
        depends on how fast the requests are served)."""
        if self.arrival.rate is None:
            return None
        return (self.num_requests - 1) / self.arrival.rate


def load_workload(path: str | Path) -> WorkloadSpec:
    """Load and validate a workload YAML/JSON file (raises InputError naming file/field/value)."""
    from ..io import load_model_file

    return load_model_file(WorkloadSpec, path)


def json_schemas() -> dict:
    """JSON Schemas of the user-facing workload and SLO files, keyed ``workload`` and ``slo``."""
    from .slo import SLOSpec

    return {"workload": WorkloadSpec.model_json_schema(), "slo": SLOSpec.model_json_schema()}


def lognormal_params(d: LengthDist) -> tuple[float, float]:
    """(mu, sigma) of log(length) for a lognormal LengthDist."""
    sigma = d.sigma if d.sigma is not None else math.sqrt(math.log1p(d.cv ** 2))
    if d.median is not None:
        return math.log(d.median), sigma
    return math.log(d.mean) - sigma ** 2 / 2, sigma
