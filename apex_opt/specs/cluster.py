"""Cluster specification: device types, pools of nodes, and the links between GPUs.

A cluster file (YAML, strict) looks like::

    name: h100-sxm-1x8
    pools:
      - name: h100
        device: h100-sxm-80gb          # a bundled device name, or an inline mapping (DeviceSpec)
        nodes: 1
        gpus_per_node: 8
        intra_node: {kind: nvswitch, bandwidth_gbps: 450, latency_us: 2.0}
        inter_node: {kind: infiniband, bandwidth_gbps: 50, latency_us: 6}

Units: memory in GiB (as the runtime reports it), TFLOP/s dense (no sparsity), GB/s = 1e9 B/s,
per direction and per GPU for links, watts.

The schema is strict: unknown fields are errors, numbers must be numbers (a quoted ``"80"`` or a
boolean is rejected), counts must be integers, and every rate/size must be finite and > 0.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from .common import ComputeDType, NonNegFloat, PosFloat, StrictNumbersModel, absurd_above

#: Largest per-device memory we accept as sane (GiB).
MAX_DEVICE_GIB = 4096.0
#: Largest dense peak per dtype we accept as sane (TFLOP/s; B300 FP4 is ~15,000).
MAX_DEVICE_TFLOPS = 1e5
#: Largest memory or link bandwidth we accept as sane (GB/s; B300 HBM is 8,000).
MAX_BANDWIDTH_GBPS = 1e5
#: Largest board power we accept as sane (W; B300 is 1,100).
MAX_DEVICE_POWER_W = 1e4
#: Largest per-step link latency we accept as sane (us; NCCL steps take 1-10 us).
MAX_LINK_LATENCY_US = 1e5


def _at_most(limit: float, unit: str) -> AfterValidator:
    """A sanity bound on a number given in ``unit`` (a larger one is a unit mistake)."""
    return absurd_above(limit, f"is absurd (> {limit:g} {unit}; the unit is {unit})")


#: StrictModel that also refuses type coercion (``"80"`` or ``true`` for a number)
_StrictNumbers = StrictNumbersModel


class DeviceSpec(_StrictNumbers):
    """One accelerator type, with dense datasheet numbers."""

    name: str = Field(min_length=1, description="Device identifier, e.g. 'h100-sxm-80gb'.")
    vendor: str = Field("nvidia", min_length=1, description="Vendor name (nvidia, amd, ...).")
    memory_gib: PosFloat = Field(description="Device memory in GiB as the runtime reports it.")
    peak_tflops: dict[ComputeDType, PosFloat] = Field(
        description="Dense peak TFLOP/s per compute dtype (no structured-sparsity figures). "
                    "Must include bf16.")
    hbm_bandwidth_gbps: Annotated[PosFloat, _at_most(MAX_BANDWIDTH_GBPS, "GB/s")] = Field(
        description="Peak memory bandwidth in GB/s.")
    power_limit_w: Annotated[PosFloat, _at_most(MAX_DEVICE_POWER_W, "W")] = Field(
        description="Board power limit (TDP) in watts.")
    idle_power_w: PosFloat = Field(description="Power drawn while idle, in watts.")
    profile: str | None = Field(None, description="Name of a bundled measured operator profile "
                                                  "(apex_opt/data/profiles/<name>), if any.")
    # --- DVFS and facility power (optional; see apex_opt/costmodel/power.py) -------------------
    sm_clock_min_mhz: PosFloat | None = Field(None, description="Lowest settable SM clock (MHz), "
                                              "as `nvidia-smi -q -d SUPPORTED_CLOCKS` lists.")
    sm_clock_base_mhz: PosFloat | None = Field(None, description="Base (guaranteed) SM clock, MHz.")
    sm_clock_max_mhz: PosFloat | None = Field(None, description="Max boost SM clock, MHz: the "
                                              "clock an unconstrained busy GPU runs at.")
    mem_clock_mhz: PosFloat | None = Field(None, description="Memory clock, MHz (not changed by "
                                           "the SM clock knob).")
    power_cap_min_w: PosFloat | None = Field(None, description="Lowest settable power limit "
                                             "(`nvidia-smi -q -d POWER`: Min Power Limit), W.")
    voltage_knee_mhz: PosFloat | None = Field(None, description="SM clock below which the core "
                                              "voltage stays at its floor (V-f curve knee), MHz.")
    voltage_at_knee: PosFloat | None = Field(None, description="Core voltage at and below the knee "
                                             "as a fraction of the voltage at max clock (0-1]; "
                                             "linear in between.")
    voltage_curve: list[list[PosFloat]] | None = Field(
        None, description="Measured V-f curve as [[SM clock MHz, core voltage / voltage at "
                          "sm_clock_max_mhz], ...], clocks ascending, the last point at "
                          "sm_clock_max_mhz with 1.0; flat below the first point, linear between "
                          "points. Overrides voltage_knee_mhz / voltage_at_knee.")
    active_idle_power_w: PosFloat | None = Field(None, description="Power of a GPU that is awake "
                                                 "at its boost clock but runs no kernel (gaps "
                                                 "between engine steps), W.")
    host_power_per_gpu_w: NonNegFloat | None = Field(None, description="Non-GPU node power "
                                                     "(CPUs, memory, NICs, switches, fans) per GPU "
                                                     "slot of a typical server, W.")
    compute_capability: str | None = Field(
        None, pattern=r"^(\d+\.\d+|gfx\d+[a-z]?)$",
        description="CUDA compute capability ('8.0' A100, '8.9' L40S, '9.0' H100/H200, '10.0' "
                    "B200) or AMD gfx target ('gfx942'): picks the attention kernel generation the "
                    "engines run (data/device_transfer.yaml). Unset: as the profiled H100.")
    sm_count: int | None = Field(
        None, ge=1, description="Streaming multiprocessors (NVIDIA) on the card, from its "
                                "datasheet / architecture whitepaper: the paged decode-attention "
                                "kernel's per-thread-block overhead is spread over them "
                                "(data/kernels.yaml attention_decode). Unset: no such term.")
    matmul_efficiency: dict[ComputeDType, PosFloat] | None = Field(
        None, description="Published maximum achievable matmul throughput as a fraction of the "
                          "dense peak per dtype (e.g. MAMF / theory). The GEMM roofline fitted on "
                          "the H100 profile is scaled by this over the H100's own figure. Unset: "
                          "as the H100.")
    source: str | None = Field(None, description="Where the numbers come from (datasheet).")

    @field_validator("matmul_efficiency")
    @classmethod
    def _efficiency_fraction(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and any(x > 1.0 for x in v.values()):
            raise ValueError(f"matmul_efficiency values are fractions of the dense peak, <= 1 (got {v})")
        return v

    @field_validator("peak_tflops")
    @classmethod
    def _needs_bf16(cls, v: dict) -> dict:
        if "bf16" not in v:
            raise ValueError("peak_tflops must include 'bf16'")
        return v

    @field_validator("memory_gib")
    @classmethod
    def _memory_sane(cls, v: float) -> float:
        if v > MAX_DEVICE_GIB:
            raise ValueError(f"memory_gib {v} is absurd (> {MAX_DEVICE_GIB:g} GiB per device)")
        return v

    @field_validator("peak_tflops")
    @classmethod
    def _tflops_sane(cls, v: dict[str, float]) -> dict[str, float]:
        for dt, x in v.items():
            if x > MAX_DEVICE_TFLOPS:
                raise ValueError(f"peak_tflops {dt} {x:g} is absurd (> {MAX_DEVICE_TFLOPS:g} "
                                 f"TFLOP/s per device; the unit is TFLOP/s)")
        return v

    @field_validator("idle_power_w")
    @classmethod
    def _idle_below_limit(cls, v: float, info: ValidationInfo) -> float:
        limit = info.data.get("power_limit_w")
        if limit is not None and v >= limit:
            raise ValueError(f"idle_power_w ({v}) must be below power_limit_w ({limit})")
        return v

    @model_validator(mode="after")
    def _dvfs_consistent(self) -> "DeviceSpec":
        lo, base, hi = self.sm_clock_min_mhz, self.sm_clock_base_mhz, self.sm_clock_max_mhz
        known = [c for c in (lo, base, hi) if c is not None]
        if known != sorted(known):
            raise ValueError(f"need sm_clock_min_mhz <= sm_clock_base_mhz <= sm_clock_max_mhz "
                             f"(got {lo}, {base}, {hi})")
        if self.voltage_at_knee is not None and self.voltage_at_knee > 1:
            raise ValueError(f"voltage_at_knee ({self.voltage_at_knee}) is a fraction of the "
                             f"max-clock voltage and must be <= 1")
        if self.voltage_curve is not None:
            if any(len(p) != 2 for p in self.voltage_curve):
                raise ValueError(f"voltage_curve points are [MHz, relative voltage] pairs "
                                 f"(got {self.voltage_curve})")
            fs = [p[0] for p in self.voltage_curve]
            vs = [p[1] for p in self.voltage_curve]
            if len(fs) < 2 or any(b <= a for a, b in zip(fs, fs[1:])) or any(
                    b < a for a, b in zip(vs, vs[1:])):
                raise ValueError(f"voltage_curve needs >= 2 points with ascending clocks and "
                                 f"non-decreasing voltage (got {self.voltage_curve})")
            if hi is None or abs(fs[-1] - hi) > 1e-6 or abs(vs[-1] - 1.0) > 1e-9:
                raise ValueError(f"voltage_curve must end at [sm_clock_max_mhz, 1.0] "
                                 f"(got {self.voltage_curve[-1]}, max clock {hi})")
        if self.power_cap_min_w is not None and self.power_cap_min_w > self.power_limit_w:
            raise ValueError(f"power_cap_min_w ({self.power_cap_min_w}) exceeds power_limit_w "
                             f"({self.power_limit_w})")
        return self

    def tflops(self, dtype: str) -> float:
        """Dense peak TFLOP/s for ``dtype``; falls back to bf16 when the device lacks that dtype
        (e.g. fp8 on A100 runs as weight-only fp8 with bf16 compute)."""
        return self.peak_tflops.get(dtype, self.peak_tflops["bf16"])

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 1024 ** 3)


class LinkSpec(_StrictNumbers):
    """A class of interconnect between GPUs."""

    kind: Literal["nvlink", "nvswitch", "xgmi", "pcie", "infiniband", "ethernet", "roce"] = Field(
        description="Link technology.")
    bandwidth_gbps: Annotated[PosFloat, _at_most(MAX_BANDWIDTH_GBPS, "GB/s")] = Field(
        description="Unidirectional bandwidth per GPU in GB/s "
                                                 "(aggregate over all of the GPU's links).")
    latency_us: Annotated[NonNegFloat, _at_most(MAX_LINK_LATENCY_US, "us")] = Field(
        description="Per-hop / per-step latency in microseconds.")
    peer_bandwidth_gbps: PosFloat | None = Field(
        None, description="Only for a full mesh of direct point-to-point links (e.g. AMD xGMI): "
                          "unidirectional bandwidth of ONE peer link in GB/s. A group of g GPUs "
                          "then reaches min(bandwidth_gbps, (g-1) x peer_bandwidth_gbps). Leave "
                          "unset for switched fabrics (NVSwitch, PCIe switch, network).")
    p2p: bool = Field(True, description="Only for kind 'pcie': false when the GPUs cannot reach "
                                        "each other's memory (P2P off: IOMMU/ACS, consumer cards, "
                                        "some cloud VMs); NCCL then stages every transfer through "
                                        "host memory (SHM transport) and vLLM's custom all-reduce "
                                        "is off. Needs host_bandwidth_gbps.")
    host_bandwidth_gbps: PosFloat | None = Field(
        None, description="With p2p: false: the host-memory bandwidth (GB/s, whole node) that the "
                          "staged copies share; each byte a GPU sends is written to and read back "
                          "from host memory, so n GPUs each get at most host_bandwidth / (2 n).")
    p2p_group_size: int | None = Field(
        None, ge=2, le=64,
        description="With p2p: false: GPUs that still reach each other P2P in groups of this "
                    "size (e.g. 2 behind one PCIe switch); a collective within one group runs at "
                    "the link rate (and vLLM's custom all-reduce works for 2), larger ones stage "
                    "through host memory.")
    nvls: bool | None = Field(None, description="Only for kind 'nvswitch': NVLink SHARP (all-reduce "
                                                "reduced inside the switch; 3rd-generation NVSwitch, "
                                                "H100/H200/B200 HGX). Unset: on when the device's "
                                                "compute_capability is >= 9.0 or unknown.")

    @model_validator(mode="after")
    def _host_path(self) -> "LinkSpec":
        if not self.p2p and self.kind != "pcie":
            raise ValueError(f"p2p: false only applies to kind 'pcie' (got kind '{self.kind}')")
        if not self.p2p and self.host_bandwidth_gbps is None:
            raise ValueError("p2p: false needs host_bandwidth_gbps (host-memory bandwidth of the node)")
        if self.p2p_group_size is not None and self.p2p:
            raise ValueError("p2p_group_size only applies with p2p: false (P2P within groups only)")
        if self.nvls is not None and self.kind != "nvswitch":
            raise ValueError(f"nvls only applies to kind 'nvswitch' (got kind '{self.kind}')")
        return self

    @field_validator("peer_bandwidth_gbps")
    @classmethod
    def _peer_below_total(cls, v: float | None, info: ValidationInfo) -> float | None:
        total = info.data.get("bandwidth_gbps")
        if v is not None and total is not None and v > total:
            raise ValueError(f"peer_bandwidth_gbps ({v}) cannot exceed bandwidth_gbps ({total})")
        return v

    def peer_to_peer(self, group_size: int) -> bool:
        """Whether ``group_size`` GPUs on this link reach each other's memory directly (P2P):
        always, unless ``p2p`` is false, and then only within a ``p2p_group_size`` group."""
        return self.p2p or (self.p2p_group_size is not None and group_size <= self.p2p_group_size)

    def group_bandwidth_gbps(self, group_size: int) -> float:
        """Unidirectional per-GPU bandwidth (GB/s) available to a collective over ``group_size``
        GPUs on this link: the full ``bandwidth_gbps`` on a switched fabric; on a full mesh only
        the ``group_size - 1`` links to the other members carry traffic."""
        if group_size < 2:
            return self.bandwidth_gbps
        if self.peer_bandwidth_gbps is None:
            return self.bandwidth_gbps
        return min(self.bandwidth_gbps, (group_size - 1) * self.peer_bandwidth_gbps)


def _resolve_device(v: Any) -> Any:
    """A bundled device name becomes its DeviceSpec; mappings and specs pass through."""
    if not isinstance(v, str):
        return v
    from ..bundled import _read_bundled, device_names
    from ..errors import InputError
    from ..io import validate

    known = device_names()
    if v not in known:
        raise ValueError(f"unknown device name {v!r}; bundled: {', '.join(known)} "
                         f"(or give the device inline as a mapping)")
    try:
        data, src = _read_bundled("devices", v, ".yaml", "device", known)
        return validate(DeviceSpec, data, src)
    except InputError as exc:  # a broken bundled file: surface its own message
        raise ValueError(str(exc)) from None


class PoolSpec(_StrictNumbers):
    """A homogeneous group of nodes: same device, same links."""

    name: str = Field(min_length=1, description="Pool name, unique within the cluster.")
    device: DeviceSpec = Field(description="The device type (bundled name or inline spec).")
    nodes: int = Field(ge=1, le=100_000, description="Number of nodes.")
    gpus_per_node: int = Field(ge=1, le=64, description="GPUs per node.")
    intra_node: LinkSpec = Field(description="Link between GPUs of one node.")
    inter_node: LinkSpec | None = Field(None, description="Network between nodes (per GPU). "
                                                          "Required when nodes > 1.")
    gpu_price_per_hour: NonNegFloat | None = Field(None, description="Price of one GPU of this "
                                                   "pool per hour (any currency, e.g. $), "
                                                   "for the cost objective and $/Mtok.")
    host_power_w: NonNegFloat | None = Field(None, description="Non-GPU power of one node, W "
                                             "(default: the device's host_power_per_gpu_w x "
                                             "gpus_per_node).")

    @field_validator("device", mode="before")
    @classmethod
    def _device_by_name(cls, v: Any) -> Any:
        return _resolve_device(v)

    @field_validator("inter_node")
    @classmethod
    def _net(cls, v: LinkSpec | None, info: ValidationInfo) -> LinkSpec | None:
        nodes = info.data.get("nodes")
        if v is None and isinstance(nodes, int) and nodes > 1:
            raise ValueError(f"pool '{info.data.get('name', '?')}' has {nodes} nodes but no "
                             f"inter_node link")
        return v

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def tp_domain_gpus(self) -> int:
        """GPUs one tensor-parallel group may span: one node, or every GPU of the pool when its
        nodes are joined by NVLink (``inter_node.kind == 'nvlink'``: a GB200 / GB300 NVL72 rack,
        whose 4-GPU trays share one NVLink switch fabric, so TP runs across trays at NVLink
        bandwidth as NCCL's multi-node NVLink does)."""
        if self.inter_node is not None and self.inter_node.kind == "nvlink":
            return self.num_gpus
        return self.gpus_per_node

    @property
    def node_host_power_w(self) -> float:
        """Non-GPU power of one node (W): ``host_power_w`` or the device's per-GPU host share."""
        if self.host_power_w is not None:
            return float(self.host_power_w)
        return float(self.device.host_power_per_gpu_w or 0.0) * self.gpus_per_node


class ClusterSpec(_StrictNumbers):
    """A cluster: one or more pools of nodes (heterogeneous when pools use different devices)."""

    name: str = Field(min_length=1, description="Cluster name.")
    description: str | None = Field(None, description="Free text.")
    pools: list[PoolSpec] = Field(min_length=1, description="Device pools.")
    electricity_price_per_kwh: NonNegFloat | None = Field(
        None, description="Electricity price per kWh (same currency as gpu_price_per_hour).")
    pue: float | None = Field(None, ge=1.0, le=5.0, description="Facility power usage "
                                                             "effectiveness (>= 1): facility "
                                                             "energy / IT energy.")

    @field_validator("pools")
    @classmethod
    def _unique(cls, v: list[PoolSpec]) -> list[PoolSpec]:
        names = [p.name for p in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate pool names: {', '.join(repr(n) for n in dup)}")
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


#: Per-GPU network bandwidth above this (GB/s) looks like Gbit/s written as GB/s: the fastest NIC
#: per GPU shipping, ConnectX-8 / Quantum-X800 XDR InfiniBand, is 800 Gbit/s = 100 GB/s (NVIDIA
#: product brief); 400 Gbit/s NDR, the common H100 fabric, is 50 GB/s.
NETWORK_GBPS_MAX = 100.0
#: GPU-to-GPU fabrics below this (GB/s per GPU) look like TB/s written as GB/s: NVLink 1 (P100)
#: already gave 20 GB/s per link per direction, AMD xGMI (MI300X) 64 GB/s per peer link.
FABRIC_GBPS_MIN = 10.0
_NETWORK_KINDS = ("infiniband", "ethernet", "roce")
_FABRIC_KINDS = ("nvlink", "nvswitch", "xgmi")


#: HBM bandwidth below this (GB/s) looks like TB/s written as GB/s: the slowest datacenter
#: inference GPU, NVIDIA L4, has 300 GB/s (datasheet). (memory_gib is checked by DeviceSpec.)
DEVICE_HBM_GBPS_MIN = 100.0


def unit_warnings(cluster: ClusterSpec) -> list[str]:
    """Link and memory bandwidths whose size suggests the wrong unit (empty when all look
    plausible)."""
    out = []
    for i, p in enumerate(cluster.pools):
        dev = p.device
        if dev.hbm_bandwidth_gbps < DEVICE_HBM_GBPS_MIN:
            out.append(f"pools[{i}].device.hbm_bandwidth_gbps: {dev.hbm_bandwidth_gbps:g} GB/s is "
                       f"below any datacenter GPU ({DEVICE_HBM_GBPS_MIN:g}); the unit is GB/s "
                       f"(did you write TB/s?)")
        for name in ("intra_node", "inter_node"):
            link = getattr(p, name)
            if link is None:
                continue
            where = f"pools[{i}].{name}.bandwidth_gbps"
            bw = link.bandwidth_gbps
            if link.kind in _NETWORK_KINDS and bw > NETWORK_GBPS_MAX:
                out.append(f"{where}: {bw:g} GB/s per GPU over {link.kind} is above the fastest "
                           f"NIC ({NETWORK_GBPS_MAX:g} GB/s = 800 Gbit/s); the unit is GB/s "
                           f"(did you write Gbit/s? {bw:g} Gbit/s = {bw / 8:g} GB/s)")
            if link.kind in _FABRIC_KINDS and bw < FABRIC_GBPS_MIN:
                out.append(f"{where}: {bw:g} GB/s per GPU over {link.kind} is below any "
                           f"{link.kind} generation ({FABRIC_GBPS_MIN:g} GB/s); the unit is GB/s "
                           f"(did you write TB/s?)")
    return out
