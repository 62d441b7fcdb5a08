"""Result models of ``apex-opt solve`` (its ``--json`` contract)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..sim.metrics import Metrics
from ..specs.plan import ReplicaConfig

#: 3: a plan group composes the simulated ``ReplicaConfig`` (``groups[i].config``) instead of
#: repeating its fields next to ``replicas``
SCHEMA_VERSION = 3


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GroupOut(_Out):
    """One replica group of a plan: ``replicas`` copies of ``config`` (the replica configuration
    the simulator ran -- what ``simulate --plan`` takes per group) on ``device``."""

    replicas: int
    device: str
    gpus_per_replica: int
    config: ReplicaConfig

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        """Also accept schema 2's flat layout (the replica fields next to ``replicas``)."""
        if isinstance(data, dict) and "config" not in data:
            fields = set(ReplicaConfig.model_fields)
            data = {**{k: v for k, v in data.items() if k not in fields},
                    "config": {k: v for k, v in data.items() if k in fields}}
        return data


class Surrogate(_Out):
    """The analytic estimates the CP-SAT model ranked the plan by."""

    capacity_req_s: float
    capacity_at_slo_req_s: float
    latency_s: float
    ttft_ms: float
    tpot_ms: float
    power_w: float
    energy_j_per_token: float


class PlanOut(_Out):
    """One ranked plan."""

    rank: int
    label: str
    groups: list[GroupOut]
    gpus: int
    metrics: Metrics | None = Field(description="Simulated metrics (same shape as `simulate --json`).")
    slo_met: bool | None
    objective_value: float | None = Field(description="Simulated value of the objective "
                                                      "(s, J/token, GPUs or req/s).")
    rate_req_s: float | None = Field(None, description="Request rate simulated (for `throughput`: "
                                                       "the highest rate the plan sustains within "
                                                       "the SLO).")
    rate_per_gpu: float | None = None
    rate_below_req_s: float | None = Field(None, description="`throughput`: set when the plan's "
                                           "rate search stopped early, once it proved the plan "
                                           "sustains less than this rate (req/s), below a rate "
                                           "another plan sustains; `rate_req_s` is then the rate it "
                                           "was seen to sustain (a lower bound; 0 and `slo_met` "
                                           "null when no rate it tried met the SLO).")
    surrogate: Surrogate
    launch: dict[str, str] = Field(default_factory=dict, description="Shell commands (one line per "
                                   "process) that start the plan, per engine.")


class StageDetail(_Out):
    stage: int
    layers: int
    weights_gib: float
    activations_gib: float
    kv_cache_gib: float
    other_gib: float


class GroupDetail(_Out):
    label: str
    device: str
    kv_tokens: int
    stages: list[StageDetail]


class ChosenDetail(_Out):
    """The chosen plan in detail: per-stage layers, memory per device, time breakdown."""

    label: str
    groups: list[GroupDetail]
    time_breakdown_ms: dict[str, float]


class Baseline(_Out):
    name: str
    description: str
    plan: PlanOut | None
    problem: str | None = None
    gain: float | None = Field(None, description="How many times better the chosen plan is on "
                                                 "the objective (> 1 = better).")


class EnergySaving(_Out):
    """The chosen plan against the latency-optimal plan at default clocks (both simulated)."""

    latency_plan: str
    latency_plan_j_per_token: float | None
    chosen_j_per_token: float | None
    saving_fraction: float | None
    latency_plan_e2e_s: float | None = None
    chosen_e2e_s: float | None = Field(None, description="Mean E2E latency of the chosen plan: "
                                                         "the latency given up for the saving.")
    default_clock_plan: str | None = Field(None, description="The chosen plan at the driver's "
                                           "default clock and power limit, when it was simulated "
                                           "(the chosen plan sets a clock or cap): what the GPU "
                                           "setting alone saves.")
    default_clock_j_per_token: float | None = None
    default_clock_e2e_s: float | None = None


class OtherEngine(_Out):
    """The chosen plan simulated with another engine (``--also-launch``)."""

    engine: str
    metrics: Metrics
    slo_met: bool
    launch: str


class SolverInfo(_Out):
    status: str
    wall_s: float
    plans_feasible: int
    plans_simulated: int
    candidates: int
    shortlist: int
    objective: str
    exhaustive: bool
    workers: int
    executor: str
    seed: int
    engine: str = Field("vllm", description="Engine profile every plan was simulated with.")
    simulator_runs: int | None = Field(
        None, description="Simulations of the whole workload the answer took (a `throughput` "
                          "plan's rate search runs one per arrival rate it tries).")
    optimality_gap: float | None = Field(
        None, description="Largest relative improvement over the chosen plan that an unsimulated "
                          "plan could still offer by the surrogate's bound (0 = none; None = "
                          "not bounded).")


class SolveResult(_Out):
    """The output of ``apex-opt solve`` (``--json``)."""

    schema_version: int = SCHEMA_VERSION
    model: str
    cluster: str
    objective: str
    slo: dict
    workload: dict
    plans: list[PlanOut]
    chosen: ChosenDetail | None
    baselines: list[Baseline]
    energy_saving: EnergySaving | None = None
    also_simulated: list[OtherEngine] = Field(default_factory=list)
    solver: SolverInfo
