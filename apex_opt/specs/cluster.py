"""Cluster specification: device types, pools of nodes, and the links between GPUs.

A cluster file (YAML, strict) looks like::

    name: h100-sxm-1x8
    pools:
      - name: h100
        device: h100-sxm-80gb          # a bundled device name, or an inline mapping (DeviceSpec)
        nodes: 1
        gpus_per_node: 8
        intra_node: {kind: nvswitch, bandwidth_gbps: 450, latency_us: 2.5}
        inter_node: {kind: infiniband, bandwidth_gbps: 50, latency_us: 5}

Units: memory in GiB (as the runtime reports it), TFLOP/s dense (no sparsity), GB/s = 1e9 B/s,
per direction and per GPU for links, watts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .common import NonNegFloat, PosFloat, StrictModel


class DeviceSpec(StrictModel):
    """One accelerator type, with dense datasheet numbers."""

    name: str = Field(description="Device identifier, e.g. 'h100-sxm-80gb'.")
    vendor: str = Field("nvidia", description="Vendor name (nvidia, amd, ...).")
    memory_gib: PosFloat = Field(description="Device memory in GiB as the runtime reports it.")
    peak_tflops: dict[Literal["bf16", "fp16", "fp8", "int8", "fp4"], PosFloat] = Field(
        description="Dense peak TFLOP/s per compute dtype (no structured-sparsity figures). "
                    "Must include bf16.")
    hbm_bandwidth_gbps: PosFloat = Field(description="Peak memory bandwidth in GB/s.")
    power_limit_w: PosFloat = Field(description="Board power limit (TDP) in watts.")
    idle_power_w: PosFloat = Field(description="Power drawn while idle, in watts.")
    profile: str | None = Field(None, description="Name of a bundled measured operator profile "
                                                  "(apex_opt/data/profiles/<name>), if any.")
    source: str | None = Field(None, description="Where the numbers come from (datasheet).")

    @field_validator("peak_tflops")
    @classmethod
    def _needs_bf16(cls, v: dict) -> dict:
        if "bf16" not in v:
            raise ValueError("peak_tflops must include 'bf16'")
        return v

    @model_validator(mode="after")
    def _sane(self) -> "DeviceSpec":
        if self.idle_power_w >= self.power_limit_w:
            raise ValueError(f"idle_power_w ({self.idle_power_w}) must be below power_limit_w "
                             f"({self.power_limit_w})")
        if self.memory_gib > 4096:
            raise ValueError(f"memory_gib {self.memory_gib} is absurd (> 4096 GiB per device)")
        return self

    def tflops(self, dtype: str) -> float:
        """Dense peak TFLOP/s for ``dtype``; falls back to bf16 when the device lacks that dtype
        (e.g. fp8 on A100 runs as weight-only fp8 with bf16 compute)."""
        return self.peak_tflops.get(dtype, self.peak_tflops["bf16"])

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 1024 ** 3)


class LinkSpec(StrictModel):
    """A class of interconnect between GPUs."""

    kind: Literal["nvlink", "nvswitch", "xgmi", "pcie", "infiniband", "ethernet", "roce"] = Field(
        description="Link technology.")
    bandwidth_gbps: PosFloat = Field(description="Unidirectional bandwidth per GPU in GB/s.")
    latency_us: NonNegFloat = Field(description="Per-hop / per-step latency in microseconds.")


class PoolSpec(StrictModel):
    """A homogeneous group of nodes: same device, same links."""

    name: str = Field(description="Pool name, unique within the cluster.")
    device: DeviceSpec = Field(description="The device type (bundled name or inline spec).")
    nodes: int = Field(ge=1, le=100_000, description="Number of nodes.")
    gpus_per_node: int = Field(ge=1, le=64, description="GPUs per node.")
    intra_node: LinkSpec = Field(description="Link between GPUs of one node.")
    inter_node: LinkSpec | None = Field(None, description="Network between nodes (per GPU). "
                                                          "Required when nodes > 1.")

    @model_validator(mode="after")
    def _net(self) -> "PoolSpec":
        if self.nodes > 1 and self.inter_node is None:
            raise ValueError(f"pool '{self.name}' has {self.nodes} nodes but no inter_node link")
        return self

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.gpus_per_node


class ClusterSpec(StrictModel):
    """A cluster: one or more pools of nodes (heterogeneous when pools use different devices)."""

    name: str = Field(description="Cluster name.")
    description: str | None = Field(None, description="Free text.")
    pools: list[PoolSpec] = Field(min_length=1, description="Device pools.")

    @field_validator("pools")
    @classmethod
    def _unique(cls, v: list[PoolSpec]) -> list[PoolSpec]:
        names = [p.name for p in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate pool names: {sorted(dup)}")
        return v

    @property
    def num_gpus(self) -> int:
        return sum(p.num_gpus for p in self.pools)

    def pool(self, name: str | None = None) -> PoolSpec:
        if name is None:
            return self.pools[0]
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)
