"""Launch commands for a plan: every process to start, on which node, with which GPUs, ready to paste.

Pure functions, no I/O beyond reading the bundled HF-id table (and, for a local model folder,
whether it holds weights). A plan becomes a :class:`LaunchPlan`: a flat list of
:class:`Process` (node, pool, replicas, GPU ids, port, env, argv and the rendered command) plus
the endpoints a client or load balancer talks to and notes for the operator.
:attr:`LaunchPlan.script` is the whole thing as a shell script: each process preceded by a
``# node ... GPUs ...`` comment, long commands broken with ``\\`` continuations.

Flag spellings and the flags a release accepts come from the engine profile the plan was simulated
with (``launch_flags`` / ``flag_vocabulary`` in ``apex_opt/data/engines/*.yaml``);
:func:`unknown_flags` lists any printed flag outside that vocabulary (the tests require none).

* vLLM: an uneven pipeline split is ``VLLM_PP_LAYER_PARTITION``; replicas spanning nodes run on a
  Ray cluster (``ray start`` on every node, ``--distributed-executor-backend ray`` on the head).
  Releases with ``--data-parallel-size`` (V1) serve the replicas that share a node from ONE server
  that balances requests over them itself; older ones run one server per replica. When the plan
  was simulated with V1's internal balancer over all replicas (its default router), replicas of a
  group on several nodes are ONE deployment too: the head node's server (API endpoint, DP ranks
  0..local-1) and ``--headless`` servers on the other nodes (``--data-parallel-start-rank``,
  ``--data-parallel-address`` of the head); other routers keep one endpoint per node behind the
  external balancer the simulation assumed.
* SGLang: ``--dp-size`` likewise; multi-node replicas run one process per node with
  ``--nnodes/--node-rank/--dist-init-addr``; ``--chunked-prefill-size -1`` turns chunking off.

Replicas that fit in a node are packed onto it with disjoint ``CUDA_VISIBLE_DEVICES`` ranges and
distinct ports; larger replicas take whole nodes. Node addresses are unknown here and appear as
placeholders such as ``H100_NODE1_IP``; a checkpoint the tool cannot name (an AWQ copy for int4
weights) is a ``"${INT4_CHECKPOINT:?...}"`` reference the shell refuses to run without.
"""

from __future__ import annotations

import functools
import math
import re
import shlex
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import InputError
from ..io import parse_yaml
from ..parallel import (node_aligned, stage_blocks, stage_layer_ranges, valid_ep, valid_tp,
                        validate_plan)
from ..registry import data_dir
from ..specs.cluster import ClusterSpec, DeviceSpec
from ..specs.common import StrictModel
from ..specs.engine import EngineSpec, dp_router_for, load_engine
from ..specs.model import ModelSpec
from ..specs.plan import Plan, ReplicaConfig, ReplicaGroup

Family = Literal["vllm", "sglang"]

_HF_IDS_FILE = "hf_ids.yaml"
_HF_IDS_SOURCE = f"<bundled {_HF_IDS_FILE}>"
#: Port of the Ray head (GCS) of a multi-node vLLM replica, and of SGLang's torch.distributed init.
RAY_PORT = 6379
SGLANG_DIST_PORT = 50000
#: vLLM's default ``--data-parallel-rpc-port`` (ParallelConfig.data_parallel_rpc_port, vllm
#: config.py, 0.9+): the head's port the headless engines of a multi-node DP deployment dial.
VLLM_DP_RPC_PORT = 29550
#: Default GPUs per node when no cluster is given.
DEFAULT_GPUS_PER_NODE = 8
_SIXTEEN_BIT = frozenset({"bf16", "fp16"})
#: Weight dtypes an engine produces at load time from a 16-bit checkpoint (--quantization value).
_ONLINE_QUANT = {"fp8": "fp8"}
#: Indentation of continuation lines; commands longer than WRAP_AT characters are wrapped.
_INDENT = "    "
WRAP_AT = 100

#: Flag spellings used when an engine profile has no ``launch_flags`` (vLLM 0.6 / SGLang 0.4).
_DEFAULT_FLAGS: dict[str, dict[str, str]] = {
    "vllm": {
        "tensor_parallel": "--tensor-parallel-size", "pipeline_parallel": "--pipeline-parallel-size",
        "max_num_seqs": "--max-num-seqs", "max_num_batched_tokens": "--max-num-batched-tokens",
        "max_model_len": "--max-model-len", "gpu_memory_utilization": "--gpu-memory-utilization",
        "chunked_prefill_on": "--enable-chunked-prefill",
        "chunked_prefill_off": "--enable-chunked-prefill=False",
        "quantization": "--quantization", "kv_cache_dtype": "--kv-cache-dtype",
        "eager": "--enforce-eager", "custom_allreduce_off": "--disable-custom-all-reduce"},
    "sglang": {
        "tensor_parallel": "--tp-size", "pipeline_parallel": "--pp-size",
        "expert_parallel": "--ep-size", "max_num_seqs": "--max-running-requests",
        "max_num_batched_tokens": "--chunked-prefill-size", "max_model_len": "--context-length",
        "gpu_memory_utilization": "--mem-fraction-static", "quantization": "--quantization",
        "kv_cache_dtype": "--kv-cache-dtype", "eager": "--disable-cuda-graph",
        "custom_allreduce_off": "--disable-custom-all-reduce", "mixed_chunk": "--enable-mixed-chunk"},
}
#: Flags every release of the family has that the profiles' launch_flags do not name.
_FIXED_FLAGS = {"vllm": {"host": "--host", "port": "--port",
                         "trust_remote_code": "--trust-remote-code",
                         "executor": "--distributed-executor-backend"},
                "sglang": {"model": "--model-path", "host": "--host", "port": "--port",
                           "trust_remote_code": "--trust-remote-code", "nnodes": "--nnodes",
                           "node_rank": "--node-rank", "dist_init_addr": "--dist-init-addr",
                           "max_prefill_tokens": "--max-prefill-tokens"}}
_KV_FP8 = {"vllm": "fp8", "sglang": "fp8_e4m3"}
_PARTITION_ENV = {"vllm": "VLLM_PP_LAYER_PARTITION", "sglang": "SGLANG_PP_LAYER_PARTITION"}


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Launch(_Out):
    """One command: its argv, extra environment, and notes for the operator."""

    argv: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------------------------- rendering
#: ``${NAME:?message}``: a value the operator must supply; rendered in double quotes so the shell
#: expands it (and stops with the message when it is unset).
_REQUIRED_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}\"`$\\]*\}$")


def _quote(tok: str) -> str:
    return f'"{tok}"' if _REQUIRED_REF.match(tok) else shlex.quote(tok)


def _chunks(argv: list[str]) -> list[list[str]]:
    """argv split into the command head (up to the first flag) and one chunk per flag + values."""
    out: list[list[str]] = [[]]
    for tok in argv:
        if tok.startswith("--") and out[-1]:
            out.append([tok])
        else:
            out[-1].append(tok)
    return out


def render(launch: Launch, *, wrap: bool = True) -> str:
    """Shell text of a command: ``K=V ...`` assignments (sorted) then the quoted argv; with
    ``wrap`` each flag goes on its own ``\\``-continued line (pasteable as is)."""
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(launch.env.items())]
    line = " ".join(env + [_quote(t) for t in launch.argv])
    if not wrap or len(line) <= WRAP_AT:
        return line
    chunks = _chunks(launch.argv)
    lines = [" ".join(env + [_quote(t) for t in chunks[0]])]
    lines += [_INDENT + " ".join(_quote(t) for t in c) for c in chunks[1:]]
    return " \\\n".join(lines)


# ---------------------------------------------------------------------------------- model ids
class _HFEntry(StrictModel):
    repo: str = Field(min_length=3, pattern=r"^[\w.-]+/[\w.-]+$")
    trust_remote_code: bool = False
    int4: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$",
                             description="A published AWQ/GPTQ int4 copy of the repo.")
    fp8: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$",
                            description="A published fp8 copy of the repo.")
    fp4: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$",
                            description="A published NVFP4 (ModelOpt / compressed-tensors) copy.")


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


def _entry(model_ref: str, model: ModelSpec) -> _HFEntry | None:
    if _is_path_ref(model_ref):
        return None
    return _hf_table().get(model_ref) or _hf_table().get(model.name)


def hf_model_id(model_ref: str, model: ModelSpec, hf_id: str | None = None) -> str:
    """What to pass as the engine's model: ``hf_id`` when given, the HF repo of a bundled model
    name, or the ABSOLUTE local model folder of a path reference (a ``config.json`` path becomes
    its folder), so the command works from any directory."""
    if hf_id:
        return hf_id
    if _is_path_ref(model_ref):
        p = Path(model_ref).expanduser().resolve()
        return str(p.parent if p.suffix == ".json" else p)
    entry = _entry(model_ref, model)
    if entry is None:
        raise InputError(f"no Hugging Face repo known for model {model_ref!r}; pass --hf-id "
                         f"ORG/NAME (or the local model directory), or add it to "
                         f"apex_opt/data/{_HF_IDS_FILE}", source=_HF_IDS_SOURCE, field=model_ref)
    return entry.repo


def needs_trust_remote_code(model_ref: str, model: ModelSpec) -> bool:
    """True when the model's repo ships custom code the engine must be allowed to run."""
    entry = _entry(model_ref, model)
    return bool(entry and entry.trust_remote_code)


def _local_folder_notes(model_id: str, model_ref: str, hf_id: str | None) -> list[str]:
    if hf_id or not _is_path_ref(model_ref):
        return []
    folder = Path(model_id)
    if folder.is_dir() and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        return [f"{folder} holds a config but no weights (*.safetensors): pass --hf-id ORG/NAME "
                f"(the Hub repo of this model) or download the weights into it"]
    return []


# ---------------------------------------------------------------------------------- checkpoints
#: what a pre-quantised checkpoint of a weight dtype is (for the notes)
_CKPT_KIND = {"int4": "AWQ or GPTQ", "fp4": "NVFP4: ModelOpt quant_algo NVFP4 or compressed-tensors "
                                             "nvfp4-pack-quantized"}


def checkpoint_for(weight: str, checkpoint: str, model_id: str, entry: _HFEntry | None,
                   hf_id: str | None) -> tuple[str, str | None, list[str]]:
    """(model argument, ``--quantization`` value or None, notes) for serving ``weight``-dtype
    weights of a model whose published checkpoint is ``checkpoint``.

    fp8 from a 16-bit checkpoint is quantised online (``--quantization fp8``); int4 needs a
    pre-quantised AWQ / GPTQ checkpoint (the engine reads its ``quantization_config``), named
    from the bundled table or ``--hf-id`` when known, else a ``${INT4_CHECKPOINT:?...}``
    reference; a dtype the engine cannot produce from the checkpoint likewise needs a copy."""
    ckpt = "bf16" if checkpoint in _SIXTEEN_BIT else checkpoint
    if weight == ckpt:
        return model_id, None, []
    if weight in _ONLINE_QUANT and ckpt == "bf16":
        return model_id, _ONLINE_QUANT[weight], [
            f"{weight} weights: quantised online at load time from the {checkpoint} checkpoint "
            f"(--quantization {_ONLINE_QUANT[weight]}, dynamic scales); an {weight} checkpoint "
            f"given with --hf-id loads without it"]
    if hf_id:
        return hf_id, None, [f"{weight} weights: --hf-id {hf_id} must be an {weight} checkpoint "
                             f"({_CKPT_KIND.get(weight, weight)}); the engine reads "
                             f"its quantization_config"]
    known = (getattr(entry, weight, None) if entry is not None and weight in ("int4", "fp8", "fp4")
             else None)
    if known:
        return known, None, [f"{weight} weights: serving the pre-quantised checkpoint {known} "
                             f"(the engine reads its quantization_config)"]
    var = f"{weight.upper()}_CHECKPOINT"
    kind = {"int4": "an AWQ or GPTQ int4", "fp4": "an NVFP4 (ModelOpt or compressed-tensors)"}.get(
        weight, f"a {weight}")
    return (f"${{{var}:?set {var} to {kind} copy of {model_id}}}", None,
            [f"{weight} weights cannot be made from the {checkpoint} checkpoint at load time: set "
             f"{var} to {kind} checkpoint of {model_id} (Hub id or folder), or pass --hf-id"])


# ---------------------------------------------------------------------------------- engine
def _profile(engine: str | EngineSpec) -> EngineSpec:
    return engine if isinstance(engine, EngineSpec) else load_engine(engine)


def family_of(spec: EngineSpec) -> Family:
    fam = getattr(spec, "engine", None) or ("sglang" if spec.scheduler == "sglang" else "vllm")
    return "sglang" if fam == "sglang" else "vllm"


def _flags(spec: EngineSpec) -> dict[str, str]:
    fam = family_of(spec)
    own = dict(getattr(spec, "launch_flags", None) or {})
    base = {} if own else dict(_DEFAULT_FLAGS[fam])
    return {**base, **own, **_FIXED_FLAGS[fam]}


def vocabulary(spec: EngineSpec) -> frozenset[str]:
    """Flags the profile's release accepts (empty = the profile does not say)."""
    return frozenset(getattr(spec, "flag_vocabulary", ()) or ())


def _num(x: float) -> str:
    """Shortest round-trip spelling of a float flag value (0.9 -> '0.9')."""
    return repr(float(x))


def _partition(group: ReplicaConfig, model: ModelSpec | None) -> str | None:
    """The plan's stage split as the engine's *_PP_LAYER_PARTITION counts it: in the config's
    hidden layers (Nemotron-H: its mixer and MLP blocks), which must sum to num_hidden_layers."""
    if group.pp > 1 and group.layers_per_stage is not None:
        split = tuple(group.layers_per_stage)
        if model is not None and len(model.blocks_per_layer) == sum(split):
            split = stage_blocks(model, split)
        return ",".join(str(n) for n in split)
    return None


class _Ctx(BaseModel):
    """What every process of a plan shares."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: EngineSpec
    family: str
    flags: dict[str, str]
    model_arg: str
    quant: str | None
    max_model_len: int | None
    trust_remote_code: bool
    host: str | None
    #: the plan's data-parallel routing policy on this engine (specs.engine.dp_router_for)
    router: str = "round_robin"
    #: the model (for the stage split in its hidden layers); None from the argv API
    model: ModelSpec | None = None


class _DPNode(BaseModel):
    """One node's part of a vLLM data-parallel deployment spanning nodes (vLLM >= 0.9: the head
    runs the API server and DP ranks 0..local-1, each other node ``--headless`` engines only)."""

    model_config = ConfigDict(frozen=True)

    local: int
    start_rank: int
    address: str
    rpc_port: int

    @property
    def headless(self) -> bool:
        return self.start_rank > 0


def _dp_node_argv(f: dict[str, str], dp_node: _DPNode | None) -> list[str]:
    """This node's share of a vLLM data-parallel deployment over several nodes (none: [])."""
    if dp_node is None:
        return []
    argv = [f["data_parallel_local"], str(dp_node.local)]
    if dp_node.headless:
        argv += [f["data_parallel_start_rank"], str(dp_node.start_rank)]
    return argv + [f["data_parallel_address"], dp_node.address,
                   f["data_parallel_rpc_port"], str(dp_node.rpc_port)]


def _server_argv(ctx: _Ctx, cfg: ReplicaConfig, *, port: int | None, dp: int = 1,
                 nnodes: int = 1, node_rank: int = 0, dist_init_addr: str | None = None,
                 dp_node: _DPNode | None = None) -> Launch:
    """The engine's server command for one replica shape (``cfg`` already resolved); ``dp_node``:
    this node's share of a vLLM DP deployment over several nodes (``dp`` = all its replicas)."""
    f, fam = ctx.flags, ctx.family
    notes: list[str] = []
    env: dict[str, str] = {}
    headless = dp_node is not None and dp_node.headless
    if fam == "vllm":
        argv = ["vllm", "serve", ctx.model_arg] + ([f["headless"]] if headless else [])
    elif dp > 1 and ctx.router == "sglang_cache_aware":
        # sgl-router's launcher: the same server flags, N workers behind its cache-aware router
        # (SGLang's own --dp-size alone balances round robin)
        argv = ["python", "-m", "sglang_router.launch_server", f["model"], ctx.model_arg]
    else:
        argv = ["python", "-m", "sglang.launch_server", f["model"], ctx.model_arg]
    if ctx.trust_remote_code:
        argv.append(f["trust_remote_code"])
    if ctx.host is not None and not headless:
        argv += [f["host"], ctx.host]
    if not headless:  # a headless node serves no HTTP
        argv += [f["port"], str(port)]
    adp = getattr(cfg, "attention_dp", 1) or 1
    # vLLM's data-parallel attention is --data-parallel-size D engine cores of TP tp/D each, the
    # MoE spanning all of them (SGLang: --tp-size is the whole group, --dp-size splits attention)
    vllm_adp = adp > 1 and fam == "vllm" and ctx.spec.dp_attention and "data_parallel" in f
    argv += [f["tensor_parallel"], str(cfg.tp // adp if vllm_adp else cfg.tp)]
    if cfg.pp > 1 or fam == "vllm":
        argv += [f["pipeline_parallel"], str(cfg.pp)]
    if adp > 1:  # data-parallel attention inside the TP group (MoE models)
        if fam == "sglang" and "dp_attention" in f and "data_parallel" in f:
            argv += [f["dp_attention"], f["data_parallel"], str(adp)]
        elif vllm_adp:
            argv += [f["data_parallel"], str(adp)] + _dp_node_argv(f, dp_node)
        else:
            notes.append(f"{ctx.spec.label} has no data-parallel-attention flag for this shape: "
                         f"the plan's attention_dp={adp} runs as plain TP{cfg.tp}")
    elif dp > 1:
        argv += [f["data_parallel"], str(dp)] + _dp_node_argv(f, dp_node)
    if cfg.ep > 1:
        if "expert_parallel" not in f:
            notes.append(f"this {ctx.spec.label} release has no expert-parallel flag: experts are "
                         f"sharded over all {cfg.tp} TP ranks instead of ep={cfg.ep} groups")
        elif fam == "vllm":
            argv.append(f["expert_parallel"])
            if cfg.ep != cfg.tp:
                notes.append(f"vLLM spreads experts over all {cfg.tp} TP ranks (EP = TP); the "
                             f"plan's ep={cfg.ep} (experts sharded over {cfg.tp // cfg.ep} GPUs) "
                             f"has no vLLM flag (SGLang: --ep-size)")
        else:
            argv += [f["expert_parallel"], str(cfg.ep)]
    red = getattr(cfg, "redundant_experts", 0) or 0
    if red and ctx.spec.redundant_experts_argv:  # EPLB's redundant expert slots
        argv += [a.replace("{n}", str(red)) for a in ctx.spec.redundant_experts_argv]
    elif red:
        notes.append(f"{ctx.spec.label} cannot place redundant experts: the plan's "
                     f"redundant_experts={red} has no flag in this release")
    if getattr(cfg, "moe_a2a", False):
        if ctx.spec.moe_a2a:
            argv += list(ctx.spec.moe_a2a_argv)
            env.update(ctx.spec.moe_a2a_env)
        else:
            notes.append(f"{ctx.spec.label}: the plan's all-to-all MoE dispatch (DeepEP) is not "
                         f"modelled for this engine; it runs with the engine's default dispatch")
    if nnodes > 1:
        if fam == "vllm":
            argv += [f["executor"], "ray"]
        else:
            argv += [f["nnodes"], str(nnodes), f["node_rank"], str(node_rank),
                     f["dist_init_addr"], str(dist_init_addr)]
    seqs, tokens = cfg.max_num_seqs, cfg.max_num_batched_tokens
    if adp > 1 and fam == "sglang" and "dp_attention" in f:
        # the plan's limits are each attention-DP rank's (as simulated; vLLM's DP engine cores
        # each take them as given); SGLang's --max-running-requests and --chunked-prefill-size
        # are the whole server's, divided by --dp-size per rank (server_args.py
        # "chunked_prefill_size // dp_size" under enable_dp_attention; model_runner.py
        # "max_running_requests // dp_size")
        seqs = seqs * adp if seqs is not None else None
        tokens = tokens * adp if tokens is not None and cfg.chunked_prefill else tokens
        notes.append(f"SGLang divides --max-running-requests and --chunked-prefill-size by "
                     f"--dp-size {adp}: they are {adp}x the plan's per-rank limits")
    argv += [f["max_num_seqs"], str(seqs)]
    if fam == "vllm":
        argv += [f["max_num_batched_tokens"], str(tokens)]
        if "chunked_prefill_on" in f:  # V0: a switch; V1 always chunks
            argv.append(f["chunked_prefill_on"] if cfg.chunked_prefill else f["chunked_prefill_off"])
        elif not cfg.chunked_prefill:
            notes.append(f"{ctx.spec.label} always chunks prefills; the unchunked plan runs "
                         f"chunked with the same token budget")
        if tokens is not None and tokens < cfg.max_num_seqs:
            notes.append(f"vLLM rejects max_num_batched_tokens ({tokens}) < max_num_seqs "
                         f"({cfg.max_num_seqs})")
    elif cfg.chunked_prefill:
        argv += [f["max_num_batched_tokens"], str(tokens)]
    else:
        argv += [f["max_num_batched_tokens"], "-1", f["max_prefill_tokens"], str(tokens)]
    argv += [f["gpu_memory_utilization"], _num(cfg.gpu_memory_utilization)]
    if fam == "sglang":
        notes.append("--mem-fraction-static is SGLang's share of memory for weights + KV cache; "
                     "lower it if activations run out of memory")
    if ctx.max_model_len is not None:
        argv += [f["max_model_len"], str(ctx.max_model_len)]
    pc = getattr(cfg, "prefix_caching", None)
    if pc is not None and pc != getattr(ctx.spec, "prefix_caching", pc):  # only against the default
        key = "prefix_caching_on" if pc else "prefix_caching_off"
        if key in f:
            argv.append(f[key])
        else:
            notes.append(f"{ctx.spec.label} has no flag to turn prefix caching "
                         f"{'on' if pc else 'off'}; the plan assumed it {'on' if pc else 'off'}")
    if getattr(cfg, "mixed_chunk", None) and not getattr(ctx.spec, "mixed_chunk", False) \
            and "mixed_chunk" in f:
        argv.append(f["mixed_chunk"])
    mpt = getattr(cfg, "max_prefill_tokens", None)
    if mpt is not None and fam == "sglang" and cfg.chunked_prefill \
            and mpt != getattr(ctx.spec, "max_prefill_tokens", None):
        argv += [f["max_prefill_tokens"], str(mpt)]
    if ctx.quant is not None:
        argv += [f["quantization"], ctx.quant]
    if cfg.kv_dtype == "fp8":
        argv += [f["kv_cache_dtype"], _KV_FP8[fam]]
    if not cfg.custom_allreduce:
        argv.append(f["custom_allreduce_off"])
    if not cfg.cuda_graphs:
        argv.append(f["eager"])
    part = _partition(cfg, ctx.model)
    if part is not None:
        env[_PARTITION_ENV[fam]] = part
        if fam == "sglang":
            notes.append("uneven pipeline split via SGLANG_PP_LAYER_PARTITION (recent SGLang)")
    return Launch(argv=argv, env=env, notes=notes)


# ---------------------------------------------------------------------------------- argv API
def _argv_ctx(family: Family, model_id: str, model_max_len: int | None, checkpoint_dtype: str,
              weight: str, trust_remote_code: bool, host: str | None,
              engine: str | EngineSpec | None) -> tuple[_Ctx, list[str]]:
    spec = _profile(engine or family)
    model_arg, quant, qnotes = checkpoint_for(weight, checkpoint_dtype, model_id, None, None)
    return _Ctx(spec=spec, family=family, flags=_flags(spec), model_arg=model_arg, quant=quant,
                max_model_len=model_max_len, trust_remote_code=trust_remote_code,
                host=host), qnotes


def _resolve(group: ReplicaConfig, spec: EngineSpec, model_max: int | None,
              checkpoint_dtype: str, device: DeviceSpec | None = None) -> ReplicaConfig:
    return group.resolved(spec, model_max or group.max_model_len or 2048, device,
                          checkpoint_dtype=checkpoint_dtype)


def vllm_argv(model_id: str, group: ReplicaConfig, *, port: int = 8000, host: str | None = None,
              model_max_len: int | None = None, checkpoint_dtype: str = "bf16",
              trust_remote_code: bool = False, nnodes: int = 1,
              engine: str | EngineSpec | None = None) -> Launch:
    """``vllm serve`` for one replica of ``group`` (``engine``: the profile, default 'vllm')."""
    ctx, qnotes = _argv_ctx("vllm", model_id, group.max_model_len, checkpoint_dtype,
                            group.resolved_weight_dtype(checkpoint_dtype), trust_remote_code,
                            host, engine)
    cfg = _resolve(group, ctx.spec, model_max_len, checkpoint_dtype)
    out = _server_argv(ctx, cfg, port=port, nnodes=nnodes)
    return out.model_copy(update={"notes": qnotes + out.notes})


def sglang_argv(model_id: str, group: ReplicaConfig, *, port: int = 8000, host: str | None = None,
                model_max_len: int | None = None, checkpoint_dtype: str = "bf16",
                trust_remote_code: bool = False, nnodes: int = 1, node_rank: int = 0,
                dist_init_addr: str | None = None,
                engine: str | EngineSpec | None = None) -> Launch:
    """``python -m sglang.launch_server`` for one replica of ``group`` (one node of it when
    ``nnodes`` > 1: ``node_rank`` and ``dist_init_addr`` = head ``IP:PORT``)."""
    if nnodes > 1 and dist_init_addr is None:
        raise InputError("required when nnodes > 1 (head IP:PORT)", field="dist_init_addr",
                         value=dist_init_addr)
    ctx, qnotes = _argv_ctx("sglang", model_id, group.max_model_len, checkpoint_dtype,
                            group.resolved_weight_dtype(checkpoint_dtype), trust_remote_code,
                            host, engine)
    cfg = _resolve(group, ctx.spec, model_max_len, checkpoint_dtype)
    out = _server_argv(ctx, cfg, port=port, nnodes=nnodes, node_rank=node_rank,
                       dist_init_addr=dist_init_addr)
    return out.model_copy(update={"notes": qnotes + out.notes})


# ---------------------------------------------------------------------------------- plan output
class Process(_Out):
    """One process to start on one node (in list order)."""

    node: int = Field(description="Node index inside its pool (from 0).")
    node_addr: str = Field(description="Placeholder for the node's address, e.g. H100_NODE0_IP.")
    pool: str | None
    group: int = Field(description="Plan group index.")
    replicas: list[int] = Field(description="Replica indices (within the group) this process "
                                            "serves or belongs to.")
    role: Literal["gpu-settings", "server", "ray-head", "ray-worker", "server-rank"] = Field(
        description="gpu-settings: admin command locking the SM clock / power cap the plan "
                    "assumed (run before the engine); server: an HTTP endpoint; ray-head / "
                    "ray-worker: the Ray cluster of a multi-node vLLM replica; server-rank: a "
                    "non-head node without an HTTP endpoint (a rank of a multi-node SGLang "
                    "replica, or vLLM --headless data-parallel engines joining the head's API "
                    "server).")
    device_ids: list[int] = Field(description="GPU indices on the node this process drives.")
    cuda_visible_devices: str | None
    port: int | None = Field(description="HTTP port of a server (None for helper processes).")
    env: dict[str, str]
    argv: list[str]
    command: str = Field(description="The rendered shell command (with continuations).")
    label: str = Field(description="One-line description (the comment above the command).")


class Endpoint(_Out):
    """An HTTP endpoint requests go to."""

    node_addr: str
    port: int
    group: int
    replicas: int = Field(description="Data-parallel replicas behind this endpoint.")


class LaunchPlan(_Out):
    """Every process of a plan, the endpoints to route to, and notes."""

    engine: str = Field(description="Engine profile the commands are for, e.g. 'vllm@0.6.0'.")
    family: str
    model: str = Field(description="Model argument of the server commands.")
    max_model_len: int | None
    processes: list[Process]
    endpoints: list[Endpoint]
    notes: list[str] = Field(default_factory=list)
    script: str = Field(description="All commands as one pasteable shell script.")


class _Slot(BaseModel):
    """Placement of one replica: pool-local node indices and GPU indices on its node."""

    nodes: list[int]
    devices: list[int] | None  # None = whole nodes


class _PoolCursor:
    """Packs replicas onto the nodes of one pool, first fit in order."""

    def __init__(self, gpus_per_node: int):
        self.gpn = gpus_per_node
        self.next_gpu = 0

    def place(self, gpus: int) -> _Slot:
        node, local = divmod(self.next_gpu, self.gpn)
        if gpus <= self.gpn:
            if local + gpus > self.gpn:
                node, local = node + 1, 0
            self.next_gpu = node * self.gpn + local + gpus
            return _Slot(nodes=[node], devices=list(range(local, local + gpus)))
        if local:
            node += 1
        count = math.ceil(gpus / self.gpn)
        self.next_gpu = (node + count) * self.gpn
        return _Slot(nodes=list(range(node, node + count)), devices=None)

    @property
    def nodes_used(self) -> int:
        return math.ceil(self.next_gpu / self.gpn)


def _addr_prefix(pool: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", pool).upper() + "_" if pool else ""


def _node_addr(pool: str | None, node: int) -> str:
    """Placeholder for the address of node ``node`` of ``pool`` (e.g. ``H100_NODE1_IP``)."""
    return f"{_addr_prefix(pool)}NODE{node}_IP"


def _gpus_text(devices: list[int]) -> str:
    if devices and devices == list(range(devices[0], devices[-1] + 1)) and len(devices) > 1:
        return f"GPUs {devices[0]}-{devices[-1]}"
    return "GPU" + ("s " if len(devices) != 1 else " ") + ",".join(map(str, devices))


def _check_rules(model: ModelSpec, plan: Plan, cluster: ClusterSpec | None,
                 gpus_per_node: int | None) -> None:
    """The plan against the parallelism rules of :mod:`apex_opt.parallel` (the ones memory, the
    cost model and the search use): :func:`~apex_opt.parallel.validate_plan` on ``cluster``;
    without one, the rules that need no pool (TP vs the attention / KV heads, EP, the stage split)
    and TP inside a node of ``gpus_per_node`` GPUs."""
    for gi, g in enumerate(plan.groups):
        _pool_shape(g.pool, cluster, gpus_per_node, gi)  # an unknown pool, by its field
    if cluster is not None:
        problems = validate_plan(model, cluster, plan)
        if problems:
            raise InputError("; ".join(problems), source="plan", field="groups")
        return
    gpn = gpus_per_node or DEFAULT_GPUS_PER_NODE
    for gi, g in enumerate(plan.groups):
        if not valid_tp(model, g.tp) or g.tp > gpn:
            raise InputError(f"tensor parallelism must divide the {model.num_attention_heads} "
                             f"attention heads of {model.name} (and divide or be a multiple of "
                             f"its KV heads) and stay inside a {gpn}-GPU node", source="plan",
                             field=f"groups[{gi}].tp", value=g.tp)
        if not valid_ep(model, g.tp, g.ep, g.redundant_experts):
            raise InputError(f"expert parallelism must divide tp={g.tp} and the experts of "
                             f"{model.name}", source="plan", field=f"groups[{gi}].ep", value=g.ep)
        try:
            stage_layer_ranges(model, g)
        except ValueError as e:
            raise InputError(f"the pipeline stages must cover the model's {model.num_layers} "
                             f"layers ({e})", source="plan", field=f"groups[{gi}].layers_per_stage",
                             value=list(g.layers_per_stage or ())) from None


def serving_max_model_len(model: ModelSpec, plan: Plan, cluster: ClusterSpec | None,
                          spec: EngineSpec, requested: int | None = None) -> tuple[int, list[str]]:
    """``--max-model-len`` for the commands, and a note when it is below the model's own.

    ``requested`` (the user's ``--max-model-len``) wins. Otherwise the model's maximum when every
    group's KV cache holds one request of that length (vLLM refuses to start otherwise), else the
    largest length that fits; an unchunked group is also capped at its token budget (the engine
    refuses max_num_batched_tokens < max_model_len without chunked prefill)."""
    model_max = model.max_position_embeddings
    if requested is not None:
        if requested > model_max:
            raise InputError(f"exceeds the model's maximum context ({model_max})",
                             field="--max-model-len", value=requested)
        return requested, []
    from ..memory import replica_memory

    best, why = model_max, ""
    for i, g in enumerate(plan.groups):
        device = None
        if cluster is not None:
            try:
                device = cluster.pool(g.pool).device
            except KeyError:
                device = None
        length = model_max
        for _ in range(4):  # unchunked budgets grow with the length: settle on a fixed point
            cfg = g.replica().model_copy(update={"max_model_len": length})
            if device is None:
                cap = length
            else:
                mem = replica_memory(model, device, cfg, spec)
                cap = mem.kv_tokens if mem.fits or mem.kv_tokens > 0 else length
            r = cfg.resolved(spec, model, device)
            if not r.chunked_prefill and g.max_num_batched_tokens is not None:
                cap = min(cap, r.max_num_batched_tokens)
            if cap >= length:
                break
            length = max(16, cap)
        if length < best:
            best = length
            why = (f"the KV cache of {g.label()} holds {length:,} tokens" if device is not None
                   else f"the unchunked token budget of {g.label()} is {length:,}")
    notes = [] if best >= model_max else [
        f"--max-model-len {best}: {why}, below the model's own {model_max:,}; longer requests "
        f"are rejected (solve --max-model-len N plans for N)"]
    return best, notes


def launch_plan(model_ref: str, model: ModelSpec, plan: Plan, *,
                engine: str | EngineSpec = "vllm", cluster: ClusterSpec | None = None,
                gpus_per_node: int | None = None, base_port: int = 8000,
                host: str | None = None, hf_id: str | None = None,
                max_model_len: int | None = None) -> LaunchPlan:
    """Every process that starts ``plan`` with ``engine`` (an engine profile name such as 'vllm',
    'vllm-0.6', 'sglang@0.5.9', or a spec): replicas packed onto nodes in order (per pool),
    disjoint ``CUDA_VISIBLE_DEVICES``, ports ``base_port, base_port+1, ...`` per node.

    ``hf_id`` replaces the model argument (the Python API's ``model_ref`` may be a local
    config.json); ``max_model_len`` is the context the user needs (default: see
    :func:`serving_max_model_len`). GPUs per node come from ``cluster`` (per pool), else
    ``gpus_per_node`` (default 8). Raises :class:`InputError` when a group's pool is unknown, its
    stage split does not cover the model, or the plan needs more nodes than a pool has."""
    _check_rules(model, plan, cluster, gpus_per_node)
    spec = _profile(engine)
    fam = family_of(spec)
    model_id = hf_model_id(model_ref, model, hf_id)
    entry = _entry(model_ref, model) if not hf_id else None
    trust = needs_trust_remote_code(model_ref, model) if not hf_id else False
    length, notes = serving_max_model_len(model, plan, cluster, spec, max_model_len)
    notes = _local_folder_notes(model_id, model_ref, hf_id) + notes
    flags = _flags(spec)
    processes: list[Process] = []
    endpoints: list[Endpoint] = []
    cursors: dict[str | None, _PoolCursor] = {}
    ports: dict[tuple[str | None, int], int] = {}
    dp_deployments = 0  # vLLM DP deployments over several nodes: one RPC port each
    policy = dp_router_for(plan.router, spec).policy

    def next_port(pool: str | None, node: int) -> int:
        n = ports.get((pool, node), 0)
        ports[(pool, node)] = n + 1
        return base_port + n

    for gi, g in enumerate(plan.groups):
        pool_name, gpn, max_nodes, device = _pool_shape(g.pool, cluster, gpus_per_node, gi)
        cfg = g.replica().resolved(spec, model, device)  # unset weight dtype: the checkpoint's
        adp = getattr(cfg, "attention_dp", 1) or 1
        if (adp > 1 and g.max_num_batched_tokens is None and cfg.chunked_prefill
                and getattr(spec, "dp_attention_split_prefill_budget", False)):
            # the engine's DEFAULT chunk budget is the server's, each DP rank prefilling 1/adp of
            # it (as simulated, sim/simulator.py engine_limits); _server_argv passes adp x the
            # per-rank budget, which gives the server that default back
            cfg = cfg.model_copy(update={"max_num_batched_tokens":
                                         max(1, cfg.max_num_batched_tokens // adp)})
        model_arg, quant, qnotes = checkpoint_for(cfg.weight_dtype, model.checkpoint_dtype, model_id,
                                                  entry, hf_id)
        notes += [n for n in qnotes if n not in notes]
        ctx = _Ctx(spec=spec, family=fam, flags=flags, model_arg=model_arg, quant=quant,
                   max_model_len=length, trust_remote_code=trust, host=host, router=policy,
                   model=model)
        cur = cursors.setdefault(pool_name, _PoolCursor(gpn))
        slots = [cur.place(g.gpus) for _ in range(g.replicas)]
        if max_nodes is not None and cur.nodes_used > max_nodes:
            raise InputError(f"the plan needs {cur.nodes_used} nodes of pool {pool_name!r}, which "
                             f"has {max_nodes}", source="plan", field=f"groups[{gi}].replicas",
                             value=g.replicas)
        glabel = f"group {gi} {g.replicas}x{cfg.label()}"
        # one server per node for its replicas with the engine's own DP (not when --dp-size
        # already means data-parallel attention inside each replica)
        engine_dp = "data_parallel" in flags and (getattr(g, "attention_dp", 1) or 1) == 1
        # replicas inside one node: one server per replica, or one per node with the engine's DP
        by_node: dict[int, list[tuple[int, _Slot]]] = {}
        for r, slot in enumerate(slots):
            if slot.devices is not None:
                by_node.setdefault(slot.nodes[0], []).append((r, slot))
        if engine_dp and len(by_node) > 1 and _spans_nodes_as_one_server(ctx):
            procs, ep, dp_notes = _multi_node_dp(ctx, cfg, g, device, by_node, pool_name, gpn,
                                                 gi, glabel, next_port,
                                                 VLLM_DP_RPC_PORT + dp_deployments)
            dp_deployments += 1
            processes += procs
            endpoints.append(ep)
            notes += [n for n in dp_notes if n not in notes]
            by_node = {}
        for node, items in by_node.items():
            batches = [items] if engine_dp else [[it] for it in items]
            for batch in batches:
                reps = [r for r, _ in batch]
                devices = [d for _, s in batch for d in (s.devices or [])]
                port = next_port(pool_name, node)
                launch, cvd = _on_devices(_server_argv(ctx, cfg, port=port, dp=len(batch)),
                                          devices, gpn)
                env = launch.env
                notes += [n for n in launch.notes if n not in notes]
                addr = _node_addr(pool_name, node)
                processes += _gpu_settings(g, device, node, addr, pool_name, gi, reps, devices,
                                           glabel)
                what = (f"replicas {reps[0]}-{reps[-1]} (--{'data-parallel-size' if fam == 'vllm' else 'dp-size'} {len(reps)})"
                        if len(reps) > 1 else f"replica {reps[0]}")
                label = (f"node {node} of pool {pool_name or '-'} ({addr}) | {glabel} | {what} | "
                         f"{_gpus_text(devices)} | port {port}")
                processes.append(Process(node=node, node_addr=addr, pool=pool_name, group=gi,
                                         replicas=reps, role="server", device_ids=devices,
                                         cuda_visible_devices=cvd, port=port, env=env,
                                         argv=launch.argv, command=render(launch), label=label))
                endpoints.append(Endpoint(node_addr=addr, port=port, group=gi, replicas=len(reps)))
        for r, slot in enumerate(slots):
            if slot.devices is None:
                procs = _multi_node(ctx, cfg, slot, pool_name, gpn, gi, r, glabel, next_port,
                                    VLLM_DP_RPC_PORT + dp_deployments)
                dp_deployments += 1
                for n in slot.nodes:
                    processes += _gpu_settings(g, device, n, _node_addr(pool_name, n), pool_name,
                                               gi, [r], list(range(gpn)), glabel)
                processes += procs
                head = next(p for p in procs if p.role == "server")
                endpoints.append(Endpoint(node_addr=head.node_addr, port=head.port or base_port,
                                          group=gi, replicas=1))
        notes += [n for n in _group_notes(g, gpn, fam, pool_name,
                                          _vllm_dp_attention_over_nodes(ctx, cfg, gpn))
                  if n not in notes]
    notes += _routing_notes(plan, endpoints, fam, policy)
    return LaunchPlan(engine=getattr(spec, "label", spec.name), family=fam,
                      model=model_id, max_model_len=length, processes=processes,
                      endpoints=endpoints, notes=notes, script=_script(processes, notes))


def _on_devices(launch: Launch, devices: list[int], gpn: int) -> tuple[Launch, str | None]:
    """``launch`` restricted to ``devices`` of its node (``CUDA_VISIBLE_DEVICES``, unless they
    are all ``gpn`` GPUs of it), and that value."""
    if len(devices) >= gpn:
        return launch, None
    cvd = ",".join(map(str, devices))
    return launch.model_copy(update={"env": {**launch.env, "CUDA_VISIBLE_DEVICES": cvd}}), cvd


#: Flag keys of vLLM's data parallelism over several nodes behind one API server (vLLM >= 0.9).
_MULTI_NODE_DP_KEYS = frozenset({"data_parallel", "data_parallel_local", "data_parallel_address",
                                 "data_parallel_rpc_port", "data_parallel_start_rank", "headless"})


def _spans_nodes_as_one_server(ctx: _Ctx) -> bool:
    """True when replicas of a group on several nodes run as ONE vLLM data-parallel deployment:
    the plan was simulated with vLLM's internal balancer over all of them, and the release has
    the head / ``--headless`` flags."""
    return (ctx.family == "vllm" and ctx.router == "vllm_dp_lb"
            and _MULTI_NODE_DP_KEYS <= ctx.flags.keys())


def _multi_node_dp(ctx: _Ctx, cfg: ReplicaConfig, group: ReplicaGroup, device: DeviceSpec | None,
                   by_node: dict[int, list[tuple[int, _Slot]]], pool: str | None, gpn: int,
                   gi: int, glabel: str, next_port, rpc_port: int
                   ) -> tuple[list[Process], Endpoint, list[str]]:
    """One vLLM DP deployment over the replicas of a group on several nodes (each replica inside
    one node): the head node runs the API server with its local DP ranks, every other node
    ``--headless`` engines with its ranks (``--data-parallel-start-rank``); one endpoint, and
    the notes for the operator."""
    nodes = sorted(by_node)
    head, total = nodes[0], sum(len(v) for v in by_node.values())
    head_addr = _node_addr(pool, head)
    port = next_port(pool, head)
    out: list[Process] = []
    notes: list[str] = []
    start = 0
    for node in nodes:
        items = by_node[node]
        reps = [r for r, _ in items]
        devices = [d for _, s in items for d in (s.devices or [])]
        part = _DPNode(local=len(items), start_rank=start, address=head_addr, rpc_port=rpc_port)
        launch, cvd = _on_devices(_server_argv(ctx, cfg, port=None if part.headless else port,
                                               dp=total, dp_node=part), devices, gpn)
        env = launch.env
        notes += [n for n in launch.notes if n not in notes]
        addr = _node_addr(pool, node)
        ranks = f"{start}" if len(items) == 1 else f"{start}-{start + len(items) - 1}"
        what = (f"replica{'s' if len(reps) > 1 else ''} {','.join(map(str, reps))} = "
                f"data-parallel rank{'s' if len(reps) > 1 else ''} {ranks} of {total}, "
                + (f"headless (engines only; API server on {head_addr})" if part.headless
                   else f"API server for all {total}"))
        label = (f"node {node} of pool {pool or '-'} ({addr}) | {glabel} | {what} | "
                 f"{_gpus_text(devices)}" + ("" if part.headless else f" | port {port}"))
        out += _gpu_settings(group, device, node, addr, pool, gi, reps, devices, glabel)
        out.append(Process(node=node, node_addr=addr, pool=pool, group=gi, replicas=reps,
                           role="server-rank" if part.headless else "server",
                           device_ids=devices, cuda_visible_devices=cvd,
                           port=None if part.headless else port, env=env, argv=launch.argv,
                           command=render(launch), label=label))
        start += len(items)
    others = len(nodes) - 1
    notes += [f"{glabel}: one vLLM data-parallel deployment over {len(nodes)} nodes behind "
              f"one API server ({head_addr}:{port}); start the head and the --headless "
              f"server{'s' if others > 1 else ''} on the other node{'s' if others > 1 else ''}; "
              f"--data-parallel-rpc-port must be reachable from every node",
              _addr_note(pool)]
    return out, Endpoint(node_addr=head_addr, port=port, group=gi, replicas=total), notes


def _gpu_settings(group: ReplicaGroup, device: DeviceSpec | None, node: int, addr: str,
                  pool: str | None, gi: int, replicas: list[int], devices: list[int],
                  glabel: str) -> list[Process]:
    """The clock / power-cap admin commands of a group (helper "energy"'s gpu_settings)."""
    clk, cap = getattr(group, "sm_clock_mhz", None), getattr(group, "power_cap_w", None)
    if clk is None and cap is None:
        return []
    if device is None:
        raise InputError("a plan with sm_clock_mhz / power_cap_w needs the cluster (its device) "
                         "to print the GPU settings", field="cluster", value=None)
    from .gpu_settings import group_gpu_setting_commands

    out = []
    for cmd in group_gpu_setting_commands(device, group, devices, with_reset=False):
        argv = shlex.split(cmd)
        what = ", ".join(x for x in (f"SM clock {clk} MHz" if clk is not None else "",
                                     f"power cap {cap:g} W" if cap is not None else "") if x)
        label = (f"node {node} of pool {pool or '-'} ({addr}) | {glabel} | "
                 f"replica{'s' if len(replicas) > 1 else ''} {','.join(map(str, replicas))} | "
                 f"{_gpus_text(devices)} | GPU setting the plan assumed ({what}; needs root)")
        out.append(Process(node=node, node_addr=addr, pool=pool, group=gi, replicas=replicas,
                           role="gpu-settings", device_ids=devices, cuda_visible_devices=None,
                           port=None, env={}, argv=argv, command=cmd, label=label))
    return out


def _pool_shape(plan_pool: str | None, cluster: ClusterSpec | None, gpus_per_node: int | None,
                index: int) -> tuple[str | None, int, int | None, DeviceSpec | None]:
    """(pool name, GPUs per node, node count or None, device or None) for a group."""
    if cluster is None:
        return plan_pool, gpus_per_node or DEFAULT_GPUS_PER_NODE, None, None
    try:
        p = cluster.pool(plan_pool)
    except KeyError:
        raise InputError(f"pool not in cluster {cluster.name!r} (pools: "
                         f"{', '.join(x.name for x in cluster.pools)})", source="plan",
                         field=f"groups[{index}].pool", value=plan_pool) from None
    return p.name, gpus_per_node or p.gpus_per_node, p.nodes, p.device


def _multi_node(ctx: _Ctx, cfg: ReplicaConfig, slot: _Slot, pool: str | None, gpn: int, gi: int,
                replica: int, glabel: str, next_port, rpc_port: int = VLLM_DP_RPC_PORT) -> list[Process]:
    """The processes of one replica spanning whole nodes."""
    head = slot.nodes[0]
    head_addr = _node_addr(pool, head)
    nn = len(slot.nodes)
    port = next_port(pool, head)
    devices = list(range(gpn))
    out: list[Process] = []

    def add(node: int, launch: Launch, role: str, port_: int | None, what: str) -> None:
        addr = _node_addr(pool, node)
        label = (f"node {node} of pool {pool or '-'} ({addr}) | {glabel} | replica {replica} "
                 f"({what}) | {_gpus_text(devices)}" + (f" | port {port_}" if port_ else ""))
        out.append(Process(node=node, node_addr=addr, pool=pool, group=gi, replicas=[replica],
                           role=role, device_ids=devices, cuda_visible_devices=None, port=port_,
                           env=launch.env, argv=launch.argv, command=render(launch), label=label))

    adp = getattr(cfg, "attention_dp", 1) or 1
    if _vllm_dp_attention_over_nodes(ctx, cfg, gpn):
        # vLLM's data-parallel attention over several nodes: one DP deployment, the API server
        # and its local DP ranks on the head, --headless ranks on every other node (docs
        # serving/data_parallel_deployment.md), not one Ray-backed engine
        local = gpn // (cfg.tp // adp)
        for k, n in enumerate(slot.nodes):
            part = _DPNode(local=local, start_rank=k * local, address=head_addr, rpc_port=rpc_port)
            launch = _server_argv(ctx, cfg, port=None if part.headless else port, dp_node=part)
            ranks = f"{k * local}-{k * local + local - 1}" if local > 1 else f"{k * local}"
            add(n, launch, "server-rank" if part.headless else "server", None if part.headless else port,
                f"data-parallel attention ranks {ranks} of {adp}, " + (
                    f"headless (API server on {head_addr})" if part.headless else "API server"))
        return out
    server = _server_argv(ctx, cfg, port=port, nnodes=nn, node_rank=0,
                          dist_init_addr=f"{head_addr}:{SGLANG_DIST_PORT}")
    if ctx.family == "vllm":
        part_env = dict(server.env)  # Ray workers inherit the raylet's environment
        add(head, Launch(argv=["ray", "start", "--head", f"--port={RAY_PORT}"], env=part_env),
            "ray-head", None, f"Ray head, 1 of {nn} nodes")
        for k, n in enumerate(slot.nodes[1:], start=2):
            add(n, Launch(argv=["ray", "start", f"--address={head_addr}:{RAY_PORT}"],
                          env=part_env), "ray-worker", None, f"Ray worker, {k} of {nn} nodes")
        add(head, server, "server", port, "server on the Ray head, after every 'ray start'")
        return out
    for rank, n in enumerate(slot.nodes):
        launch = server if rank == 0 else _server_argv(
            ctx, cfg, port=port, nnodes=nn, node_rank=rank,
            dist_init_addr=f"{head_addr}:{SGLANG_DIST_PORT}")
        add(n, launch, "server" if rank == 0 else "server-rank",
            port if rank == 0 else None, f"node-rank {rank} of {nn}")
    return out


def _vllm_dp_attention_over_nodes(ctx: _Ctx, cfg: ReplicaConfig, gpn: int) -> bool:
    """A vLLM replica with data-parallel attention whose DP ranks (tp / attention_dp GPUs each)
    pack the nodes: launched as one DP deployment over them (head + --headless nodes)."""
    adp = getattr(cfg, "attention_dp", 1) or 1
    return (ctx.family == "vllm" and adp > 1 and bool(ctx.spec.dp_attention) and cfg.pp == 1
            and cfg.tp > gpn and gpn % (cfg.tp // adp) == 0
            and _MULTI_NODE_DP_KEYS <= ctx.flags.keys())


def _addr_note(pool: str | None) -> str:
    return (f"replace {_addr_prefix(pool)}NODE<n>_IP with the address of node <n> of the pool "
            f"(nodes numbered from 0)")


def _group_notes(group: ReplicaGroup, gpn: int, family: str, pool: str | None,
                 dp_ranks: bool = False) -> list[str]:
    notes: list[str] = []
    if group.gpus <= gpn:
        return notes
    nodes = math.ceil(group.gpus / gpn)
    if dp_ranks:
        notes.append(f"each replica of {group.label()} is one vLLM data-parallel deployment over "
                     f"{nodes} nodes: start the head (API server) and the --headless ranks on the "
                     f"other nodes; --data-parallel-rpc-port must be reachable from every node")
    elif family == "vllm":
        notes.append(f"each replica of {group.label()} spans {nodes} nodes: run the 'ray start' "
                     f"commands first (head first), then 'vllm serve' on the head node")
    else:
        notes.append(f"each replica of {group.label()} spans {nodes} nodes: run its command on "
                     f"every node (one --node-rank each)")
    notes.append(_addr_note(pool))
    # (tensor parallelism never spans nodes here: _check_rules refuses it, as the simulator does)
    if (gpn % group.tp if group.tp <= gpn else group.tp % gpn) or not node_aligned(group.gpus, gpn):
        notes.append(f"{group.tp}x{group.pp} GPUs do not fill whole {gpn}-GPU nodes: the engine "
                     f"places the stages; check no TP group straddles two nodes")
    return notes


def _routing_notes(plan: Plan, endpoints: list[Endpoint], family: str, policy: str) -> list[str]:
    """What balances requests over the plan's replicas, as the simulation assumed (``policy``:
    the plan's router resolved on the engine)."""
    replicas = sum(g.replicas for g in plan.groups)
    if replicas == 1:
        return []
    inside = [e for e in endpoints if e.replicas > 1]
    out = []
    if inside:
        if family == "vllm":
            out.append("--data-parallel-size: one server balances requests over its data-parallel "
                       "replicas itself (vLLM's internal load balancer: fewest waiting x 4 + running)"
                       + ("" if policy == "vllm_dp_lb" else
                          f"; the plan was simulated with routing '{policy}'"))
        elif policy == "sglang_cache_aware":
            out.append("sglang_router.launch_server --dp-size: sgl-router balances requests over "
                       "the data-parallel workers with its cache-aware policy (prefix affinity, "
                       "load-balance override), as simulated")
        else:
            out.append("--dp-size: SGLang balances requests over its data-parallel replicas round "
                       "robin" + ("" if policy == "round_robin" else
                                  f"; the plan was simulated with routing '{policy}'"))
    if len(endpoints) > 1:
        eps = ", ".join(f"{e.node_addr}:{e.port}" for e in endpoints)
        urls = " ".join(f"http://{e.node_addr}:{e.port}" for e in endpoints)
        if policy == "sglang_cache_aware":
            how = (f"run sgl-router in front of them: python -m sglang_router.launch_router "
                   f"--worker-urls {urls} (cache-aware by default, as simulated)")
        elif policy in ("least_outstanding", "vllm_dp_lb"):
            how = ("put a least-outstanding-requests load balancer in front of them (e.g. nginx "
                   f"least_conn; the plan was simulated with routing '{policy}')")
        else:
            how = ("put a round-robin load balancer in front of them (the plan was simulated with "
                   "routing 'round_robin')")
        out.append(f"{len(endpoints)} endpoints ({eps}): {how}")
    return out


def _script(processes: list[Process], notes: list[str]) -> str:
    """Notes as comments, then each process under its label comment, a blank line between."""
    head = "".join(f"# note: {n}\n" for n in notes)
    body = "\n\n".join(f"# {p.label}\n{p.command}" for p in processes)
    return head + ("\n" if head else "") + body


def unknown_flags(lp: LaunchPlan, spec: EngineSpec | str | None = None) -> list[str]:
    """Flags of the engine commands of ``lp`` that the profile's ``flag_vocabulary`` lacks
    (``--flag=value`` counts as ``--flag``; Ray's own commands are not checked). Empty when the
    profile has no vocabulary."""
    spec = _profile(spec or lp.engine)
    vocab = vocabulary(spec)
    if not vocab:
        return []
    bad: list[str] = []
    for p in lp.processes:
        if p.role in ("ray-head", "ray-worker", "gpu-settings"):
            continue
        for tok in p.argv:
            name = tok.split("=", 1)[0]
            if tok.startswith("--") and name not in vocab and name not in bad:
                bad.append(name)
    return bad


def launch_commands(model_ref: str, model: ModelSpec, plan: Plan, **kwargs) -> dict:
    """:func:`launch_plan` as plain JSON-ready data (same keyword arguments)."""
    return launch_plan(model_ref, model, plan, **kwargs).model_dump(mode="json")
