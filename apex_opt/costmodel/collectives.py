"""Collective communication time (NCCL ring/tree algorithms, vLLM custom all-reduce).

For a collective over ``n`` GPUs moving a message of ``S`` bytes (the full buffer, as nccl-tests
report it)::

    t = link.latency + alpha + steps(n) * step + f(n) * S / (link.bandwidth * eff) + kappa * sqrt(f(n) * S)

with the ring bus factors ``f``: all-reduce ``2(n-1)/n``, all-gather / reduce-scatter / all-to-all
``(n-1)/n``, send/recv 1, and ``steps`` = 2(n-1), n-1, n-1, n-1, 1. ``alpha`` (software base
latency), ``step`` (per ring step), ``eff`` (achieved fraction of the link bandwidth) and ``kappa``
(pipeline fill: NCCL's mid-size messages, 1-16 MiB, run below the large-message bandwidth) are per
link kind and per collective, read from ``data/links.yaml``. They were fitted (log-time least
squares, messages >= 1 MiB) on NCCL measurements of one 8x H100-SXM NVSwitch node by
``scripts/validate_costmodel.py --calibrate`` and are checked against the H100 and H200 tables (the
H200 ones are held out) -- see ``links.yaml`` for the per-kind sources.

Device and topology transfer (``link_bandwidth_gbps``, ``has_nvls``): a full mesh (AMD xGMI,
``peer_bandwidth_gbps``) gives a group of n only its n-1 peer links; PCIe without P2P
(``p2p: false``) stages through host memory and shares ``host_bandwidth_gbps`` over 2n copies; an
NVSwitch without NVLink SHARP (A100's 2nd-generation switch, ``nvls``) runs all-reduce as a ring
(reduce-scatter + all-gather efficiencies), while the calibrated H100 all-reduce includes the
in-switch reduction; another NVLink generation's bandwidth is scaled by NCCL's usable per-link
bandwidth over the signalling rate relative to the H100's (``nvlink_scale``).

Hierarchical groups (more GPUs than one node): all-reduce = intra-node reduce-scatter + inter-node
all-reduce of the 1/g shard + intra-node all-gather; all-gather / reduce-scatter likewise; all-to-all
is bound by the fraction ``1 - g/n`` of the data that leaves the node over the network.

vLLM custom all-reduce (``custom=True``): one kernel over peer memory (NVLink, xGMI, or two PCIe GPUs
with P2P), for one node and messages strictly below ``CUSTOM_AR_MAX_BYTES`` (vLLM 0.6: ``inp_size <
max_size``, so a full 512-token bf16 batch of an 8192-wide model -- exactly 8 MiB -- goes to NCCL);
one-shot (each GPU reads all peers' buffers: (n-1) S bytes) below 512 KiB for n <= 4 / 256 KiB for
n <= 8 (and always for n = 2), two-shot (reduce-scatter + all-gather through peer memory: 2(n-1)/n S)
above, like vLLM 0.6 (csrc/custom_all_reduce.cuh: the one-shot kernel is one start / end barrier
around one pass of peer loads; the two-shot kernel adds a barrier between its reduce-scatter and
all-gather passes, so a second round of NVLink flag and load latency). vLLM >= 0.11 on Hopper with
torch symmetric memory (VLLM_ALLREDUCE_USE_SYMM_MEM, default on) caps the custom kernel at 256 KiB
for 8 GPUs (all_reduce_utils.py CUSTOM_ALL_REDUCE_MAX_SIZES["9.0"]) and hands larger messages to
the symmetric-memory all-reduce, which the two-shot cost form below also describes (measured, see
links.yaml). Its time inside a CUDA graph is ``floor + moved / (bandwidth x p2p_efficiency)`` with
per-link-kind constants (links.yaml ``custom_all_reduce``: one_shot_us, two_shot_us,
p2p_efficiency, measured on an H100 node's vLLM graph-replay timings); like every kernel time here
it is returned with the CPU launch latency that a CUDA graph removes (``CPU_LAUNCH_S``; the
iteration model subtracts the engine's graph_launch_saving_us per kernel), ``graph=True`` returns
the in-graph time. A link kind without constants uses the launch floor plus two link latencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from ..errors import InputError
from ..io import parse_yaml
from ..registry import data_dir
from ..specs.cluster import DeviceSpec, LinkSpec, PoolSpec
from .power import COMM_HBM_BYTES_PER_LINK_BYTE

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
CUSTOM_AR_MAX_BYTES = 8 * 2 ** 20
#: A kernel launch (the smallest measured single kernel on H100, ``residual_add`` of one token).
KERNEL_LAUNCH_S = 4.5e-6
#: Of which the CPU launch latency a CUDA graph removes (engines/*.yaml graph_launch_saving_us: the
#: operator tables time each kernel alone with CUDA events, ~2.5 us of launch on top of the GPU time)
CPU_LAUNCH_S = 2.5e-6


def bus_factor(coll: str, n: int) -> float:
    if coll == "all_reduce":
        return 2.0 * (n - 1) / n
    if coll in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    return 1.0


def ring_steps(coll: str, n: int) -> int:
    if coll == "all_reduce":
        return 2 * (n - 1)
    if coll == "send_recv":
        return 1
    return n - 1


@dataclass(frozen=True)
class CollectiveParams:
    """Calibrated constants of one collective on one link kind."""

    alpha_s: float
    step_s: float
    efficiency: float
    kappa: float  # s / sqrt(byte)

    def time(self, coll: str, nbytes: float, n: int, link: LinkSpec, bw_gbps: float | None = None) -> float:
        """``bw_gbps``: per-GPU bandwidth available to this group (default: the link's)."""
        if n <= 1 or nbytes <= 0:
            return 0.0
        f = bus_factor(coll, n)
        bw = (link.bandwidth_gbps if bw_gbps is None else bw_gbps) * 1e9 * self.efficiency
        return (link.latency_us * 1e-6 + self.alpha_s + ring_steps(coll, n) * self.step_s
                + f * nbytes / bw + self.kappa * math.sqrt(f * nbytes))


@lru_cache(maxsize=None)
def link_table() -> dict[str, dict[str, CollectiveParams]]:
    """Per link kind, per collective constants from ``data/links.yaml``."""
    src = "<bundled links.yaml>"
    data = parse_yaml((data_dir() / "links.yaml").read_text(encoding="utf-8"), src)
    kinds = data.get("kinds") if isinstance(data, dict) else None
    if not isinstance(kinds, dict):
        raise InputError("expected a 'kinds' mapping", source=src, field="kinds")
    out: dict[str, dict[str, CollectiveParams]] = {}
    for kind, entry in kinds.items():
        if isinstance(entry, dict) and "same_as" in entry:
            continue
        colls = entry.get("collectives", {}) if isinstance(entry, dict) else {}
        params = {}
        for coll in COLLECTIVES:
            c = colls.get(coll)
            if not isinstance(c, dict):
                raise InputError("missing collective", source=src, field=f"kinds.{kind}.collectives.{coll}")
            params[coll] = CollectiveParams(alpha_s=float(c["alpha_us"]) * 1e-6, step_s=float(c["step_us"]) * 1e-6,
                                            efficiency=float(c["efficiency"]), kappa=float(c["kappa"]))
        out[kind] = params
    for kind, entry in kinds.items():
        if isinstance(entry, dict) and "same_as" in entry:
            out[kind] = out[entry["same_as"]]
    return out


@dataclass(frozen=True)
class CustomARParams:
    """vLLM custom all-reduce on one link kind: in-graph times of a tiny one-shot / two-shot kernel
    and the fraction of the link bandwidth its peer loads reach (links.yaml ``custom_all_reduce``)."""

    one_shot_s: float
    two_shot_s: float
    p2p_efficiency: float


@lru_cache(maxsize=None)
def custom_ar_table() -> dict[str, CustomARParams | None]:
    """Per link kind, the custom all-reduce constants (None: not measured, latency formula). A
    ``same_as`` kind inherits them unless its entry sets ``custom_all_reduce`` itself."""
    src = "<bundled links.yaml>"
    kinds = parse_yaml((data_dir() / "links.yaml").read_text(encoding="utf-8"), src)["kinds"]

    def parse(kind: str, c) -> CustomARParams | None:
        if c is None:
            return None
        try:
            return CustomARParams(one_shot_s=float(c["one_shot_us"]) * 1e-6,
                                  two_shot_s=float(c["two_shot_us"]) * 1e-6,
                                  p2p_efficiency=float(c["p2p_efficiency"]))
        except (KeyError, TypeError, ValueError):
            raise InputError("expected one_shot_us, two_shot_us and p2p_efficiency", source=src,
                             field=f"kinds.{kind}.custom_all_reduce") from None

    out: dict[str, CustomARParams | None] = {}
    for kind, entry in kinds.items():
        entry = entry if isinstance(entry, dict) else {}
        if "custom_all_reduce" in entry or "same_as" not in entry:
            out[kind] = parse(kind, entry.get("custom_all_reduce"))
    for kind, entry in kinds.items():
        if kind not in out:
            out[kind] = out.get(entry["same_as"])
    return out


def params_for(kind: str) -> dict[str, CollectiveParams]:
    table = link_table()
    if kind not in table:
        raise InputError(f"no collective constants for link kind; known: {', '.join(sorted(table))}",
                         field="kind", value=kind)
    return table[kind]


def link_bandwidth_gbps(link: LinkSpec, n: int) -> float:
    """Per-GPU unidirectional bandwidth (GB/s) a collective over ``n`` GPUs gets on ``link``.

    * full mesh (xGMI, ``peer_bandwidth_gbps``): only the n-1 links to the members carry traffic;
    * PCIe without P2P (``p2p: false``): NCCL's SHM transport stages every transfer in host
      memory -- each byte a GPU sends is written there and read back, and all n GPUs send at
      once -- so each gets at most ``host_bandwidth_gbps / (2 n)`` (and never more than its
      link). On PCIe systems the collective bandwidth is set by what the CPU and memory deliver
      (NCCL maintainer, github.com/NVIDIA/nccl/issues/1639). With ``p2p_group_size`` a group of
      at most that many GPUs (one PCIe switch) still runs P2P at the link rate.
    """
    bw = link.group_bandwidth_gbps(n)
    if link.kind == "pcie" and not link.peer_to_peer(n) and link.host_bandwidth_gbps is not None \
            and n >= 2:
        bw = min(bw, link.host_bandwidth_gbps / (2.0 * n))
    return bw


def nvlink_scale(link: LinkSpec, device: DeviceSpec | None, profile: str = "h100-sxm-80gb") -> float:
    """Factor on NVLink/NVSwitch bandwidth for a device of another NVLink generation than the
    calibration's H100: NCCL's own usable per-link bandwidth over the link's signalling rate,
    relative to the H100's (``data/device_transfer.yaml`` nvlink_per_link, from NCCL topo.h).
    1 for other link kinds or an unlisted compute capability."""
    from .roofline import reference_facts, transfer_facts

    if link.kind not in ("nvlink", "nvswitch") or device is None:
        return 1.0
    table = transfer_facts().get("nvlink_per_link") or {}
    dev, ref = table.get(device.compute_capability), table.get(reference_facts(profile).get("compute_capability"))
    if not dev or not ref:
        return 1.0
    return (float(dev["nccl_gbps"]) / float(dev["raw_gbps"])) / (float(ref["nccl_gbps"]) / float(ref["raw_gbps"]))


def has_nvls(link: LinkSpec, device: DeviceSpec | None) -> bool:
    """NVLink SHARP (in-switch all-reduce) on this NVSwitch link: the link's ``nvls`` when set,
    else from the device: 3rd-generation NVSwitch systems (Hopper, compute capability 9.0) and
    later have it, A100's 2nd-generation NVSwitch does not (NVIDIA NVLink/NVSwitch documentation;
    NCCL 2.17 release notes: NVLS for NVLink4/NVSwitch3). Unknown device: as calibrated (yes)."""
    if link.kind != "nvswitch":
        return False
    if link.nvls is not None:
        return link.nvls
    cc = device.compute_capability if device is not None else None
    if cc is None or not cc[0].isdigit():
        return True
    return float(cc) >= 9.0


def without_nvls(params: dict[str, CollectiveParams]) -> dict[str, CollectiveParams]:
    """All-reduce constants of an NVSwitch without NVLink SHARP: NCCL's ring all-reduce is a
    reduce-scatter followed by an all-gather, each moving (n-1)/n of the buffer, so its bandwidth
    term uses the harmonic mean of their calibrated efficiencies (the calibrated all-reduce
    efficiency of an H100 node includes the in-switch reduction). Latency terms unchanged."""
    ar, rs, ag = params["all_reduce"], params["reduce_scatter"], params["all_gather"]
    ring = 2.0 / (1.0 / rs.efficiency + 1.0 / ag.efficiency)
    if ring >= ar.efficiency:
        return params
    return {**params, "all_reduce": CollectiveParams(alpha_s=ar.alpha_s, step_s=ar.step_s,
                                                     efficiency=ring, kappa=ar.kappa)}


class CollectiveModel:
    """Collective times (seconds) over one link class, optionally hierarchical over nodes."""

    def __init__(self, link: LinkSpec, device: DeviceSpec | None = None, *,
                 inter_link: LinkSpec | None = None, gpus_per_node: int | None = None):
        self.link = link
        self.device = device
        self.params = params_for(link.kind)
        if link.kind == "nvswitch" and not has_nvls(link, device):
            self.params = without_nvls(self.params)
        self._intra_scale = nvlink_scale(link, device)
        self.inter_link = inter_link
        self.inter_params = params_for(inter_link.kind) if inter_link is not None else None
        self.gpus_per_node = gpus_per_node

    # -- helpers ---------------------------------------------------------------------------
    def _check(self, nbytes: float, n: int) -> None:
        if not (nbytes >= 0 and math.isfinite(nbytes)):
            raise InputError("message size must be a finite number >= 0", field="nbytes", value=nbytes)
        if n < 1:
            raise InputError("group size must be >= 1", field="n", value=n)

    def _intra_bw(self, n: int) -> float:
        """Per-GPU bandwidth (GB/s) of a group of ``n`` inside one node."""
        return link_bandwidth_gbps(self.link, n) * self._intra_scale

    def _flat(self, coll: str, nbytes: float, n: int) -> float:
        return self.params[coll].time(coll, nbytes, n, self.link, self._intra_bw(n))

    def _split(self, n: int) -> tuple[int, int] | None:
        """(GPUs per node g, nodes) when the group spans nodes, else None."""
        g = self.gpus_per_node
        if self.inter_link is None or g is None or n <= g:
            return None
        return g, math.ceil(n / g)

    def _inter(self, coll: str, nbytes: float, nodes: int) -> float:
        assert self.inter_params is not None and self.inter_link is not None
        return self.inter_params[coll].time(coll, nbytes, nodes, self.inter_link,
                                            link_bandwidth_gbps(self.inter_link, nodes))

    # -- collectives ---------------------------------------------------------------------------
    def all_reduce(self, nbytes: float, n: int, custom: bool = False, graph: bool = False) -> float:
        """``graph``: the vLLM custom all-reduce's time inside a CUDA graph (without the CPU launch
        latency ``CPU_LAUNCH_S``); NCCL times are nccl-tests' back-to-back times either way."""
        self._check(nbytes, n)
        if n <= 1 or nbytes <= 0:
            return 0.0
        split = self._split(n)
        if split is None:
            if custom and nbytes < CUSTOM_AR_MAX_BYTES and self._custom_possible(n):
                t = self._custom_all_reduce(nbytes, n)
                return min(t - CPU_LAUNCH_S if graph else t, self._flat("all_reduce", nbytes, n))
            return self._flat("all_reduce", nbytes, n)
        g, nodes = split
        return (self._flat("reduce_scatter", nbytes, g) + self._inter("all_reduce", nbytes / g, nodes)
                + self._flat("all_gather", nbytes, g))

    def _custom_possible(self, n: int) -> bool:
        """vLLM's custom all-reduce runs on fully connected GPUs (NVLink/NVSwitch, xGMI) and, on
        PCIe-only GPUs, for exactly two of them with working P2P (vLLM custom_all_reduce.py: "not
        supported on more than two PCIe-only GPUs"; disabled when the P2P test fails)."""
        if self.link.kind in ("nvlink", "nvswitch", "xgmi"):
            return True
        return self.link.kind == "pcie" and n == 2 and self.link.peer_to_peer(n)

    def _custom_all_reduce(self, nbytes: float, n: int) -> float:
        """CPU launch + in-graph time: the one-shot / two-shot floor (launch inside the graph,
        barriers, peer-load latency) + the bytes each GPU loads from its peers over the link."""
        one_shot = n == 2 or (n <= 4 and nbytes < 512 * 1024) or (n <= 8 and nbytes < 256 * 1024)
        moved = (n - 1) * nbytes if one_shot else 2.0 * (n - 1) / n * nbytes
        c = custom_ar_table().get(self.link.kind)
        if c is None:  # not measured: a kernel's floor plus two barriers of one link latency each
            floor = KERNEL_LAUNCH_S - CPU_LAUNCH_S + 2.0 * self.link.latency_us * 1e-6
            return CPU_LAUNCH_S + floor + moved / (self._intra_bw(n) * 1e9 * self.params["all_reduce"].efficiency)
        floor = c.one_shot_s if one_shot else c.two_shot_s
        return CPU_LAUNCH_S + floor + moved / (self._intra_bw(n) * 1e9 * c.p2p_efficiency)

    def all_gather(self, nbytes_total: float, n: int) -> float:
        self._check(nbytes_total, n)
        split = self._split(n)
        if split is None:
            return self._flat("all_gather", nbytes_total, n)
        g, nodes = split
        return self._inter("all_gather", nbytes_total / g, nodes) + self._flat("all_gather", nbytes_total, g)

    def reduce_scatter(self, nbytes_total: float, n: int) -> float:
        self._check(nbytes_total, n)
        split = self._split(n)
        if split is None:
            return self._flat("reduce_scatter", nbytes_total, n)
        g, nodes = split
        return self._flat("reduce_scatter", nbytes_total, g) + self._inter("reduce_scatter", nbytes_total / g, nodes)

    def all_to_all(self, nbytes_total: float, n: int) -> float:
        self._check(nbytes_total, n)
        split = self._split(n)
        if split is None:
            return self._flat("all_to_all", nbytes_total, n)
        g, nodes = split
        intra = self._flat("all_to_all", nbytes_total * g / n, g)
        inter = self._inter("all_to_all", nbytes_total * (1.0 - g / n) * nodes / (nodes - 1), nodes)
        return max(intra, inter)

    def send_recv(self, nbytes: float, inter_node: bool = False) -> float:
        self._check(nbytes, 2)
        if nbytes <= 0:
            return 0.0
        if inter_node and self.inter_link is not None:
            return self._inter("send_recv", nbytes, 2)
        return self._flat("send_recv", nbytes, 2)

    def power_w(self, device: DeviceSpec | None = None) -> float:
        """Average GPU power while communicating (see ``power.py``): the measured memory-activity
        curve at the HBM traffic the link generates."""
        from . import device_model  # local import: avoids a cycle

        dev = device or self.device
        if dev is None:
            raise InputError("CollectiveModel.power_w needs a device", field="device", value=None)
        link_bps = self.link.bandwidth_gbps * 1e9 * self.params["all_reduce"].efficiency
        u_mem = COMM_HBM_BYTES_PER_LINK_BYTE * link_bps / (dev.hbm_bandwidth_gbps * 1e9)
        return device_model(dev).power_at(u_mem, 0.0, "gemm")


def collective_model_for(pool: PoolSpec, n_gpus: int) -> CollectiveModel:
    """Intra-node link when the group fits in one node -- or in the pool's multi-node NVLink
    domain (PoolSpec.tp_domain_gpus: an NVL72 rack's trays hang off one NVLink switch fabric,
    which NCCL drives as one NVLS domain) -- else hierarchical intra + inter-node."""
    if n_gpus < 1:
        raise InputError("group size must be >= 1", field="n_gpus", value=n_gpus)
    if n_gpus <= pool.tp_domain_gpus or pool.inter_node is None:
        if n_gpus > pool.num_gpus:
            raise InputError(f"group of {n_gpus} GPUs exceeds pool '{pool.name}' ({pool.num_gpus} GPUs)",
                             field="n_gpus", value=n_gpus)
        return CollectiveModel(pool.intra_node, pool.device)
    if n_gpus > pool.num_gpus:
        raise InputError(f"group of {n_gpus} GPUs exceeds pool '{pool.name}' ({pool.num_gpus} GPUs)",
                         field="n_gpus", value=n_gpus)
    return CollectiveModel(pool.intra_node, pool.device, inter_link=pool.inter_node,
                           gpus_per_node=pool.gpus_per_node)


def fit_collective(coll: str, nbytes, n, seconds, link: LinkSpec) -> CollectiveParams:
    """Least-squares fit (log time) of one collective's constants on measured (bytes, n, seconds)."""
    import numpy as np

    from .fitting import least_squares

    nbytes, n, seconds = (np.asarray(a, dtype=float) for a in (nbytes, n, seconds))
    lt = np.log(seconds)

    def make(x):
        e = [float(v) for v in np.exp(x)]
        return CollectiveParams(alpha_s=e[0], step_s=e[1], efficiency=e[2], kappa=e[3])

    def resid(x):
        p = make(x)
        return np.log([p.time(coll, b, int(k), link) for b, k in zip(nbytes, n)]) - lt

    return make(least_squares(resid, np.log([5e-6, 5e-7, 0.8, 1e-9])))
