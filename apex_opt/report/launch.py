"""Launch commands for a plan: the vLLM / SGLang command line of every replica, ready to paste.

Pure functions, no I/O beyond reading the bundled HF-id table. A command is a :class:`Launch`
(argv, extra environment, notes for the operator); :func:`render` turns it into one shell line.

Flag spellings follow vLLM >= 0.6 (``vllm serve``) and recent SGLang (``sglang.launch_server``):

* vLLM: ``--enable-chunked-prefill`` on, ``--enable-chunked-prefill=False`` off (0.6 parses the
  value with ``StoreBoolean``); an uneven pipeline split is the environment variable
  ``VLLM_PP_LAYER_PARTITION``; replicas spanning nodes run on a Ray cluster
  (``--distributed-executor-backend ray``).
* SGLang: ``--chunked-prefill-size -1`` turns chunking off; multi-node replicas run one process per
  node with ``--nnodes/--node-rank/--dist-init-addr``.

Data-parallel replicas are separate servers: replicas that fit in a node are packed onto it with
disjoint ``CUDA_VISIBLE_DEVICES`` ranges and distinct ports; larger replicas take whole nodes.
Node addresses are unknown here and appear as placeholders such as ``NODE1_IP``.
"""

from __future__ import annotations

import functools
import math
import re
import shlex
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from ..io import parse_yaml
from ..registry import data_dir
from ..specs.cluster import ClusterSpec
from ..specs.common import StrictModel
from ..specs.model import ModelSpec
from ..specs.plan import Plan, ReplicaGroup

Engine = Literal["vllm", "sglang"]

_HF_IDS_FILE = "hf_ids.yaml"
_HF_IDS_SOURCE = f"<bundled {_HF_IDS_FILE}>"
#: Port of the Ray head (GCS) of a multi-node vLLM replica, and of SGLang's torch.distributed init.
RAY_PORT = 6379
SGLANG_DIST_PORT = 50000
#: Default GPUs per node when no cluster is given.
DEFAULT_GPUS_PER_NODE = 8
#: Weight dtypes an engine can produce at load time from a 16-bit checkpoint.
_ONLINE_QUANT = {"fp8": "fp8"}
_SIXTEEN_BIT = frozenset({"bf16", "fp16"})


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Launch(_Out):
    """One process to start: its argv, extra environment, and notes for the operator."""

    argv: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


def render(launch: Launch) -> str:
    """One shell line: ``K=V ...`` assignments (sorted) followed by the shell-quoted argv."""
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(launch.env.items())]
    return " ".join(env + [shlex.join(launch.argv)])


# ---------------------------------------------------------------------------------- model ids
class _HFEntry(StrictModel):
    repo: str = Field(min_length=3, pattern=r"^[\w.-]+/[\w.-]+$")
    trust_remote_code: bool = False


@functools.lru_cache(maxsize=1)
def _hf_table() -> dict[str, _HFEntry]:
    text = (data_dir() / _HF_IDS_FILE).read_text(encoding="utf-8")
    raw = parse_yaml(text, _HF_IDS_SOURCE)
    if not isinstance(raw, dict):
        raise InputError("expected a mapping of model name -> {repo, trust_remote_code}",
                         source=_HF_IDS_SOURCE)
    out: dict[str, _HFEntry] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise InputError("expected a mapping {repo, trust_remote_code}", source=_HF_IDS_SOURCE,
                             field=str(name), value=entry)
        try:
            out[str(name)] = _HFEntry.model_validate(entry)
        except ValueError as exc:
            raise InputError(f"invalid entry ({exc.__class__.__name__})", source=_HF_IDS_SOURCE,
                             field=str(name), value=entry) from None
    return out


def _is_path_ref(model_ref: str) -> bool:
    return "/" in model_ref or "\\" in model_ref or model_ref.endswith(".json") or \
        Path(model_ref).exists()


def hf_model_id(model_ref: str, model: ModelSpec) -> str:
    """What to pass as the engine's model: the HF repo of a bundled model name, or the local
    model directory of a path reference (a ``config.json`` path becomes its folder)."""
    if _is_path_ref(model_ref):
        p = Path(model_ref)
        return str(p.parent if p.name == "config.json" or p.suffix == ".json" else p)
    table = _hf_table()
    name = model_ref if model_ref in table else model.name
    if name not in table:
        raise InputError(f"no Hugging Face repo known for model {model_ref!r}; pass the local "
                         f"model directory instead, or add it to apex_opt/data/{_HF_IDS_FILE}",
                         source=_HF_IDS_SOURCE, field=model_ref)
    return table[name].repo


def needs_trust_remote_code(model_ref: str, model: ModelSpec) -> bool:
    """True when the model's repo ships custom code the engine must be allowed to run."""
    if _is_path_ref(model_ref):
        return False
    entry = _hf_table().get(model_ref) or _hf_table().get(model.name)
    return bool(entry and entry.trust_remote_code)


# ---------------------------------------------------------------------------------- shared rules
def _num(x: float) -> str:
    """Shortest round-trip spelling of a float flag value (0.9 -> '0.9')."""
    return repr(float(x))


def _quantization(weight: str, checkpoint: str) -> tuple[str | None, list[str]]:
    """``--quantization`` value for storing ``weight`` from a ``checkpoint``, and notes."""
    ckpt = "bf16" if checkpoint in _SIXTEEN_BIT else checkpoint
    if weight == ckpt:
        return None, []  # the engine reads a quantised checkpoint's own quantization_config
    if weight in _ONLINE_QUANT and ckpt == "bf16":
        return _ONLINE_QUANT[weight], [f"{weight} weights are quantised at load time from the "
                                       f"{checkpoint} checkpoint (dynamic per-tensor scales)"]
    if weight == "int4":
        return "awq_marlin", ["int4 weights need a pre-quantised AWQ checkpoint: replace the model "
                              "with an AWQ repo or directory (for a GPTQ one use --quantization "
                              "gptq_marlin)"]
    return None, [f"{weight} weights cannot be produced from the {checkpoint} checkpoint at load "
                  f"time: pass a {weight} copy of the checkpoint as the model"]


def _batched_tokens(group: ReplicaGroup, model_max_len: int | None) -> int | None:
    """The per-iteration token budget the plan assumed (None = leave the engine's default)."""
    if group.max_num_batched_tokens is not None or group.chunked_prefill:
        return group.resolved_batched_tokens(model_max_len or 0)
    if group.max_model_len is None and model_max_len is None:
        return None
    return group.resolved_batched_tokens(model_max_len or 0)


def _partition(group: ReplicaGroup) -> str | None:
    if group.pp > 1 and group.layers_per_stage is not None:
        return ",".join(str(n) for n in group.layers_per_stage)
    return None

class _EngineFlags(NamedTuple):
    """How one engine spells the settings both launchers share."""

    kv_fp8: str          # value of --kv-cache-dtype for an fp8 KV cache
    eager: str           # flag that turns CUDA graphs off
    partition_env: str   # env var carrying an uneven pipeline split


_VLLM_FLAGS = _EngineFlags("fp8", "--enforce-eager", "VLLM_PP_LAYER_PARTITION")
_SGLANG_FLAGS = _EngineFlags("fp8_e4m3", "--disable-cuda-graph", "SGLANG_PP_LAYER_PARTITION")


def _add_dtype_and_runtime_flags(argv: list[str], env: dict[str, str], notes: list[str],
                                 group: ReplicaGroup, checkpoint_dtype: str,
                                 flags: _EngineFlags) -> bool:
    """Append the quantisation, KV dtype, custom all-reduce and CUDA-graph flags (same order for
    both engines) and set the uneven-split env var; returns whether the split was set."""
    quant, qnotes = _quantization(group.weight_dtype, checkpoint_dtype)
    notes += qnotes
    if quant is not None:
        argv += ["--quantization", quant]
    if group.kv_dtype == "fp8":
        argv += ["--kv-cache-dtype", flags.kv_fp8]
    if not group.custom_allreduce:
        argv.append("--disable-custom-all-reduce")
    if not group.cuda_graphs:
        argv.append(flags.eager)
    part = _partition(group)
    if part is not None:
        env[flags.partition_env] = part
    return part is not None



# ---------------------------------------------------------------------------------- vLLM
def vllm_argv(model_id: str, group: ReplicaGroup, *, port: int = 8000, host: str | None = None,
              model_max_len: int | None = None, checkpoint_dtype: str = "bf16",
              trust_remote_code: bool = False, nnodes: int = 1) -> Launch:
    """``vllm serve`` for one replica of ``group``.

    ``model_max_len`` (the model's maximum context) lets the token budget of a non-chunked replica
    be resolved as the plan did; ``nnodes`` > 1 selects the Ray executor.
    """
    argv = ["vllm", "serve", model_id]
    notes: list[str] = []
    env: dict[str, str] = {}
    if trust_remote_code:
        argv.append("--trust-remote-code")
    if host is not None:
        argv += ["--host", host]
    argv += ["--port", str(port), "--tensor-parallel-size", str(group.tp),
             "--pipeline-parallel-size", str(group.pp)]
    if group.ep > 1:
        argv.append("--enable-expert-parallel")
        notes.append("--enable-expert-parallel needs vLLM >= 0.8")
        if group.ep != group.tp:
            notes.append(f"vLLM spreads experts over all {group.tp} TP ranks (EP = TP); the plan's "
                         f"ep={group.ep} with experts sharded over {group.tp // group.ep} GPUs "
                         f"has no vLLM flag (SGLang: --ep-size)")
    if nnodes > 1:
        argv += ["--distributed-executor-backend", "ray"]
    argv += ["--max-num-seqs", str(group.max_num_seqs)]
    tokens = _batched_tokens(group, model_max_len)
    if tokens is not None:
        argv += ["--max-num-batched-tokens", str(tokens)]
        if tokens < group.max_num_seqs:
            notes.append(f"vLLM rejects max_num_batched_tokens ({tokens}) < max_num_seqs "
                         f"({group.max_num_seqs})")
    argv.append("--enable-chunked-prefill" if group.chunked_prefill
                else "--enable-chunked-prefill=False")
    argv += ["--gpu-memory-utilization", _num(group.gpu_memory_utilization)]
    if group.max_model_len is not None:
        argv += ["--max-model-len", str(group.max_model_len)]
    _add_dtype_and_runtime_flags(argv, env, notes, group, checkpoint_dtype, _VLLM_FLAGS)
    return Launch(argv=argv, env=env, notes=notes)


# ---------------------------------------------------------------------------------- SGLang
def sglang_argv(model_id: str, group: ReplicaGroup, *, port: int = 8000, host: str | None = None,
                model_max_len: int | None = None, checkpoint_dtype: str = "bf16",
                trust_remote_code: bool = False, nnodes: int = 1, node_rank: int = 0,
                dist_init_addr: str | None = None) -> Launch:
    """``python -m sglang.launch_server`` for one replica of ``group`` (one node of it when
    ``nnodes`` > 1: ``node_rank`` and ``dist_init_addr`` = head ``IP:PORT``)."""
    argv = ["python", "-m", "sglang.launch_server", "--model-path", model_id]
    notes: list[str] = []
    env: dict[str, str] = {}
    if trust_remote_code:
        argv.append("--trust-remote-code")
    if host is not None:
        argv += ["--host", host]
    argv += ["--port", str(port), "--tp", str(group.tp)]
    if group.pp > 1:
        argv += ["--pp-size", str(group.pp)]
    if group.ep > 1:
        argv += ["--ep-size", str(group.ep)]
    if nnodes > 1:
        if dist_init_addr is None:
            raise InputError("required when nnodes > 1 (head IP:PORT)", field="dist_init_addr",
                             value=dist_init_addr)
        argv += ["--nnodes", str(nnodes), "--node-rank", str(node_rank),
                 "--dist-init-addr", dist_init_addr]
    argv += ["--max-running-requests", str(group.max_num_seqs)]
    tokens = _batched_tokens(group, model_max_len)
    if group.chunked_prefill:
        argv += ["--chunked-prefill-size", str(tokens)]
    else:
        argv += ["--chunked-prefill-size", "-1"]
        if tokens is not None:
            argv += ["--max-prefill-tokens", str(tokens)]
    argv += ["--mem-fraction-static", _num(group.gpu_memory_utilization)]
    notes.append("--mem-fraction-static is SGLang's share of memory for weights + KV cache; "
                 "lower it if activations run out of memory")
    if group.max_model_len is not None:
        argv += ["--context-length", str(group.max_model_len)]
    if _add_dtype_and_runtime_flags(argv, env, notes, group, checkpoint_dtype, _SGLANG_FLAGS):
        notes.append("uneven pipeline split via SGLANG_PP_LAYER_PARTITION (recent SGLang)")
    return Launch(argv=argv, env=env, notes=notes)


# ---------------------------------------------------------------------------------- placement
class NodeCommand(_Out):
    """A command to run on one node of a pool (in list order)."""

    node: int
    launch: Launch
    command: str


class ReplicaLaunch(_Out):
    """Where one replica runs and how to start it."""

    replica: int
    nodes: list[int]
    cuda_visible_devices: str | None
    port: int
    commands: list[NodeCommand]


class GroupLaunch(_Out):
    group: int
    label: str
    pool: str | None
    replicas: list[ReplicaLaunch]
    notes: list[str] = Field(default_factory=list)


class LaunchPlan(_Out):
    """Every command of a plan, per group and replica."""

    engine: Engine
    model: str
    groups: list[GroupLaunch]
    notes: list[str] = Field(default_factory=list)


class _Slot(BaseModel):
    """Placement of one replica: pool-local node indices and GPU indices on its node."""

    nodes: list[int]
    devices: list[int] | None  # None = whole nodes
    port: int


class _PoolCursor:
    """Packs replicas onto the nodes of one pool, first fit in order."""

    def __init__(self, gpus_per_node: int, nodes: int | None, base_port: int):
        self.gpn, self.max_nodes, self.base_port = gpus_per_node, nodes, base_port
        self.next_gpu = 0
        self.ports: dict[int, int] = {}

    def place(self, gpus: int) -> _Slot:
        node, local = divmod(self.next_gpu, self.gpn)
        if gpus <= self.gpn:
            if local + gpus > self.gpn:
                node, local = node + 1, 0
            self.next_gpu = node * self.gpn + local + gpus
            return _Slot(nodes=[node], devices=list(range(local, local + gpus)),
                         port=self._port(node))
        if local:
            node += 1
        count = math.ceil(gpus / self.gpn)
        self.next_gpu = (node + count) * self.gpn
        return _Slot(nodes=list(range(node, node + count)), devices=None, port=self._port(node))

    def _port(self, node: int) -> int:
        n = self.ports.get(node, 0)
        self.ports[node] = n + 1
        return self.base_port + n

    @property
    def nodes_used(self) -> int:
        return math.ceil(self.next_gpu / self.gpn)


def _addr_prefix(pool: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", pool).upper() + "_" if pool else ""


def _node_addr(pool: str | None, node: int) -> str:
    """Placeholder for the address of node ``node`` of ``pool`` (e.g. ``H100_NODE1_IP``)."""
    return f"{_addr_prefix(pool)}NODE{node}_IP"


def _pool_shape(plan_pool: str | None, cluster: ClusterSpec | None, gpus_per_node: int | None,
                index: int) -> tuple[str | None, int, int | None]:
    """(pool name, GPUs per node, node count or None) for a group."""
    if cluster is None:
        return plan_pool, gpus_per_node or DEFAULT_GPUS_PER_NODE, None
    try:
        p = cluster.pool(plan_pool)
    except KeyError:
        raise InputError(f"pool not in cluster {cluster.name!r} (pools: "
                         f"{', '.join(x.name for x in cluster.pools)})", source="plan",
                         field=f"groups[{index}].pool", value=plan_pool) from None
    return p.name, gpus_per_node or p.gpus_per_node, p.nodes


class _Ctx(BaseModel):
    """What every replica command of a plan shares."""

    engine: Engine
    model_id: str
    model_max_len: int
    checkpoint_dtype: str
    trust_remote_code: bool
    host: str | None


def _serve(ctx: _Ctx, group: ReplicaGroup, port: int, nnodes: int = 1, node_rank: int = 0,
           dist_init_addr: str | None = None) -> Launch:
    common = dict(port=port, host=ctx.host, model_max_len=ctx.model_max_len,
                  checkpoint_dtype=ctx.checkpoint_dtype, trust_remote_code=ctx.trust_remote_code,
                  nnodes=nnodes)
    if ctx.engine == "vllm":
        return vllm_argv(ctx.model_id, group, **common)
    return sglang_argv(ctx.model_id, group, node_rank=node_rank, dist_init_addr=dist_init_addr,
                       **common)


def _with_env(launch: Launch, extra: dict[str, str]) -> Launch:
    return launch.model_copy(update={"env": {**launch.env, **extra}})


def _cmd(node: int, launch: Launch) -> NodeCommand:
    return NodeCommand(node=node, launch=launch, command=render(launch))


def _single_node(ctx: _Ctx, group: ReplicaGroup, slot: _Slot, gpn: int) -> list[NodeCommand]:
    """A replica inside one node; it sees only its GPUs unless it uses the whole node."""
    launch = _serve(ctx, group, slot.port)
    assert slot.devices is not None
    if len(slot.devices) < gpn:
        launch = _with_env(launch, {"CUDA_VISIBLE_DEVICES": ",".join(map(str, slot.devices))})
    return [_cmd(slot.nodes[0], launch)]


def _multi_node(ctx: _Ctx, group: ReplicaGroup, slot: _Slot, pool: str | None) -> list[NodeCommand]:
    head = slot.nodes[0]
    head_addr = _node_addr(pool, head)
    part_env = dict(_serve(ctx, group, slot.port).env)  # Ray workers inherit the raylet's env
    if ctx.engine == "vllm":
        cmds = [_cmd(head, Launch(argv=["ray", "start", "--head", f"--port={RAY_PORT}"],
                                  env=part_env))]
        cmds += [_cmd(n, Launch(argv=["ray", "start", f"--address={head_addr}:{RAY_PORT}"],
                                env=part_env)) for n in slot.nodes[1:]]
        cmds.append(_cmd(head, _serve(ctx, group, slot.port, nnodes=len(slot.nodes))))
        return cmds
    addr = f"{head_addr}:{SGLANG_DIST_PORT}"
    return [_cmd(n, _serve(ctx, group, slot.port, nnodes=len(slot.nodes), node_rank=r,
                           dist_init_addr=addr)) for r, n in enumerate(slot.nodes)]


def _group_notes(group: ReplicaGroup, gpn: int, engine: Engine, pool: str | None) -> list[str]:
    notes: list[str] = []
    if group.gpus <= gpn:
        return notes
    nodes = math.ceil(group.gpus / gpn)
    if engine == "vllm":
        notes.append(f"each replica spans {nodes} nodes: start Ray on them first (the 'ray start' "
                     f"commands, head first), then run 'vllm serve' on the head node")
    else:
        notes.append(f"each replica spans {nodes} nodes: run the command on every node "
                     f"(--nnodes {nodes}, one --node-rank each)")
    notes.append(f"replace {_addr_prefix(pool)}NODE<n>_IP with the address of node <n> of the pool "
                 f"(nodes numbered from 0)")
    if group.tp > gpn:
        notes.append(f"tensor parallelism ({group.tp}) spans nodes: its all-reduces cross the "
                     f"inter-node network")
    elif gpn % group.tp or group.gpus % gpn:
        notes.append(f"{group.tp}x{group.pp} GPUs do not fill whole {gpn}-GPU nodes: the engine "
                     f"places the stages; check no TP group straddles two nodes")
    return notes


def _check_layers(group: ReplicaGroup, model: ModelSpec, index: int) -> None:
    if group.layers_per_stage is not None and sum(group.layers_per_stage) != model.num_layers:
        raise InputError(f"layers per stage must sum to the model's {model.num_layers} layers",
                         source="plan", field=f"groups[{index}].layers_per_stage",
                         value=list(group.layers_per_stage))


def launch_plan(model_ref: str, model: ModelSpec, plan: Plan, *, engine: Engine = "vllm",
                cluster: ClusterSpec | None = None, gpus_per_node: int | None = None,
                base_port: int = 8000, host: str | None = None) -> LaunchPlan:
    """Commands for every replica of ``plan``: replicas packed onto nodes in order (per pool),
    disjoint ``CUDA_VISIBLE_DEVICES`` and ports ``base_port, base_port+1, ...`` per node.

    GPUs per node come from ``cluster`` (per pool), else ``gpus_per_node`` (default 8). Raises
    :class:`InputError` when a group's pool is unknown, its stage split does not cover the model, or
    the plan needs more nodes than a pool has.
    """
    if engine not in ("vllm", "sglang"):
        raise InputError("unknown engine; use 'vllm' or 'sglang'", field="engine", value=engine)
    ctx = _Ctx(engine=engine, model_id=hf_model_id(model_ref, model),
               model_max_len=model.max_position_embeddings, checkpoint_dtype=model.checkpoint_dtype,
               trust_remote_code=needs_trust_remote_code(model_ref, model), host=host)
    cursors: dict[str | None, _PoolCursor] = {}
    groups: list[GroupLaunch] = []
    for i, g in enumerate(plan.groups):
        _check_layers(g, model, i)
        pool, gpn, max_nodes = _pool_shape(g.pool, cluster, gpus_per_node, i)
        cur = cursors.setdefault(pool, _PoolCursor(gpn, max_nodes, base_port))
        replicas = [_replica(ctx, g, r, cur.place(g.gpus), gpn, pool) for r in range(g.replicas)]
        if max_nodes is not None and cur.nodes_used > max_nodes:
            raise InputError(f"the plan needs {cur.nodes_used} nodes of pool {pool!r}, which has "
                             f"{max_nodes}", source="plan", field=f"groups[{i}].replicas",
                             value=g.replicas)
        groups.append(GroupLaunch(group=i, label=f"{g.replicas}x{g.label()}", pool=pool,
                                  replicas=replicas, notes=_group_notes(g, gpn, engine, pool)))
    n = sum(g.replicas for g in plan.groups)
    notes = [] if n == 1 else [f"{n} replicas: put a load balancer in front of their endpoints "
                               f"(the plan assumed routing '{plan.router}')"]
    return LaunchPlan(engine=engine, model=ctx.model_id, groups=groups, notes=notes)


def _replica(ctx: _Ctx, group: ReplicaGroup, index: int, slot: _Slot, gpn: int,
             pool: str | None) -> ReplicaLaunch:
    if slot.devices is None:
        cmds = _multi_node(ctx, group, slot, pool)
        devices = None
    else:
        cmds = _single_node(ctx, group, slot, gpn)
        devices = cmds[0].launch.env.get("CUDA_VISIBLE_DEVICES")
    return ReplicaLaunch(replica=index, nodes=slot.nodes, cuda_visible_devices=devices,
                         port=slot.port, commands=cmds)


def launch_commands(model_ref: str, model: ModelSpec, plan: Plan, **kwargs) -> dict:
    """:func:`launch_plan` as plain JSON-ready data (same keyword arguments)."""
    return launch_plan(model_ref, model, plan, **kwargs).model_dump(mode="json")
