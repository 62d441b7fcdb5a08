"""`apex-opt check`: memory feasibility of every replica shape."""

from __future__ import annotations

import click

from ..check import CheckOptions, check
from ..errors import InfeasibleError, InputError
from ..report.render import console, gib, table, to_json
from ..specs.plan import ReplicaConfig
from .common import (FiniteFloatRange, check_max_model_len, cluster_option, command_line_errors,
                     engine_option, json_option, kv_dtype_option, load_engine_flag, load_inputs,
                     model_option, weight_dtype_option)


@click.command("check")
@model_option
@cluster_option
@weight_dtype_option
@kv_dtype_option
@click.option("--max-model-len", type=click.IntRange(16, 10_000_000), default=None,
              help="Max context per request [default: the model's maximum].")
@click.option("--gpu-memory-utilization", type=FiniteFloatRange(0.05, 1.0), default=None,
              help="Share of device memory the engine may use [default: the engine's: vLLM 0.9, "
                   "SGLang's mem_fraction_static by GPU memory].")
@click.option("--max-num-seqs", type=click.IntRange(1, 65536), default=None,
              help="Max sequences per iteration (sizes the sampler's profiling peak) [default: "
                   "the engine's for the GPU: vLLM V1 1024 on H100/H200, 256 elsewhere].")
@click.option("--max-num-batched-tokens", type=click.IntRange(1, 10_000_000), default=None,
              help="Token budget per iteration [default: 512 with chunked prefill].")
@click.option("--chunked-prefill/--no-chunked-prefill", default=None,
              help="Without chunked prefill the profiling pass runs max_model_len tokens "
                   "[default: the engine's own, as simulate: vLLM 0.6 only above 32K context, "
                   "vLLM V1 and SGLang always].")
@engine_option
@json_option
def command(model_ref, cluster_ref, weight_dtype, kv_dtype, max_model_len, gpu_memory_utilization,
            max_num_seqs, max_num_batched_tokens, chunked_prefill, engine_name, as_json):
    """List every replica shape (TP x PP x EP on one device pool) whose weights, activations and
    runtime buffers fit in GPU memory, with the KV cache left over (tokens and 16-token blocks,
    sized the way vLLM sizes it).

    Exit 0 when at least one shape fits. Otherwise exit 3 with the tightest shape, the component
    that overflows and by how much, and the smallest changes that make it fit (more GPUs, fp8/int4
    weights, fp8 KV cache, a shorter --max-model-len), each verified by re-running the check.

    \b
    Example:
      apex-opt check --model llama-3.1-405b --cluster h100-sxm-1x8 --weight-dtype fp8
    """
    model, cluster = load_inputs(model_ref, cluster_ref)
    # an unset --weight-dtype stays None: ReplicaConfig.resolved() takes the checkpoint's, as the
    # Python API's check() does
    engine = load_engine_flag(engine_name)  # unknown names: exit 2 listing the valid ones
    engine_name = engine.label
    check_max_model_len(model, max_model_len)
    # what vLLM refuses to start with (token budget below max_num_seqs / max_model_len), as simulate
    refusal = ReplicaConfig(max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                            max_num_batched_tokens=max_num_batched_tokens,
                            chunked_prefill=chunked_prefill,
                            weight_dtype=weight_dtype).resolved(
        engine, model, cluster.pools[0].device).engine_refusal(engine)
    if refusal is not None and (max_num_seqs is not None or max_num_batched_tokens is not None
                                or chunked_prefill is not None):
        raise InputError(refusal, source="<command line>", field="--max-num-batched-tokens",
                         value=max_num_batched_tokens)
    opts = CheckOptions(weight_dtype=weight_dtype, kv_dtype=kv_dtype, max_model_len=max_model_len,
                        gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=max_num_seqs,
                        max_num_batched_tokens=max_num_batched_tokens, chunked_prefill=chunked_prefill,
                        engine=engine_name)
    with command_line_errors():  # e.g. a --weight-dtype the engine cannot run on the GPU
        res = check(model, cluster, opts)
    if as_json:
        click.echo(to_json(res))
    else:
        con = console()
        if res.feasible:
            rows = []
            for r in res.feasible:
                w = max(s.weights_bytes for s in r.stages)
                a = max(s.activation_bytes for s in r.stages)
                o = max(s.runtime_overhead_bytes for s in r.stages)
                kv = min(s.kv_cache_bytes for s in r.stages)
                rows.append([r.pool, r.device, r.tp, r.pp, r.ep, r.gpus, gib(w), gib(a), gib(o),
                             gib(kv), f"{r.kv_tokens:,}", f"{r.kv_blocks:,}", r.max_concurrent_full_len])
            con.print(table(f"{model.name} on {cluster.name}: {len(res.feasible)} of "
                            f"{res.shapes_considered} shapes fit ({res.feasible[0].weight_dtype} "
                            f"weights, {res.feasible[0].kv_dtype} KV, "
                            f"max_model_len {res.feasible[0].max_model_len}, util "
                            f"{res.feasible[0].gpu_memory_utilization}, engine {engine_name})",
                            ["pool", "device", "TP", "PP", "EP", "GPUs", "weights GiB/GPU", "act GiB",
                             "buffers GiB", "KV GiB/GPU", "KV tokens", "blocks", "full-len seqs"],
                            rows, right_from=2))
        else:
            con.print(f"[bold red]infeasible[/]: {res.explanation}")
            if res.suggestions:
                con.print(table("changes that fit (each verified by re-running the check)",
                                ["change", "what", "shapes that fit", "smallest"],
                                [[s.change, s.detail, s.feasible_shapes, s.example]
                                 for s in res.suggestions], right_from=2))
    if not res.fits:
        raise InfeasibleError(res.explanation or "nothing fits")
