"""`apex-opt estimate`: one iteration's latency and energy."""

from __future__ import annotations

import click

from ..estimate import estimate, parse_batch
from ..report.render import console, table, to_json
from ..specs.plan import ReplicaConfig
from .common import (CLI_SOURCE, check_gpu_setting_flags, cluster_option, command_line_errors,
                     engine_option, gpu_setting_options, json_option, kv_dtype_option,
                     load_engine_flag, load_inputs, model_option, moe_a2a_option,
                     redundant_experts_option, weight_dtype_option)


@click.command("estimate")
@model_option
@cluster_option
@click.option("--tp", type=click.IntRange(1, 1024), default=1, show_default=True, help="Tensor-parallel degree.")
@click.option("--pp", type=click.IntRange(1, 1024), default=1, show_default=True, help="Pipeline stages.")
@click.option("--ep", type=click.IntRange(1, 1024), default=1, show_default=True, help="Expert-parallel degree (divides TP).")
@click.option("--attention-dp", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Data-parallel attention ranks inside the TP group (MoE models; SGLang "
                   "--enable-dp-attention --dp-size N): each rank attends over 1/N of the batch "
                   "on tp/N GPUs, the experts span all --tp GPUs.")
@redundant_experts_option
@moe_a2a_option
@click.option("--pool", default=None, help="Device pool of the cluster [default: the first].")
@weight_dtype_option
@kv_dtype_option
@click.option("--batch", "batch_spec", required=True,
              help="Work of the iteration: decode:NxCTX (N sequences at context CTX) and "
                   "prefill:NxTOKENS[@CACHED], comma-separated.")
@click.option("--custom-allreduce/--no-custom-allreduce", default=True, show_default=True,
              help="vLLM's custom all-reduce kernel for TP inside one node.")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="Replay decode-only batches from CUDA graphs (padded batch sizes).")
@gpu_setting_options
@engine_option
@json_option
def command(model_ref, cluster_ref, tp, pp, ep, attention_dp, redundant_experts, moe_a2a, pool,
            weight_dtype, kv_dtype, batch_spec,
            custom_allreduce, cuda_graphs, engine_name, as_json, sm_clock_mhz=None,
            power_cap_w=None):
    """Latency and energy of ONE engine iteration of a replica, with a per-operator breakdown.

    \b
    Examples:
      apex-opt estimate --model llama-3.1-70b --cluster h100-sxm-1x8 --tp 8 --batch decode:1x256
      apex-opt estimate --model llama-3.1-70b --tp 4 --batch decode:16x1024,prefill:1x2048
      apex-opt estimate --model deepseek-v3 --cluster h200-1x8 --tp 8 --weight-dtype fp8 --batch prefill:1x4096
      apex-opt estimate --model llama-3.1-8b --tp 1 --batch decode:256x1000 --power-cap-w 400

    Times come from the device's measured operator tables when it has a profile, else from the
    roofline fitted on the H100 tables; collectives from the cluster's link classes.
    """
    model, cluster = load_inputs(model_ref, cluster_ref)
    # an unset --weight-dtype stays None: the checkpoint's, resolved in ReplicaConfig as for the API
    from ..errors import InputError
    check_gpu_setting_flags(cluster, pool, sm_clock_mhz, power_cap_w)
    try:
        cfg = ReplicaConfig(pool=pool, tp=tp, pp=pp, ep=ep, attention_dp=attention_dp,
                            redundant_experts=redundant_experts, moe_a2a=moe_a2a,
                            weight_dtype=weight_dtype, kv_dtype=kv_dtype,
                            custom_allreduce=custom_allreduce, cuda_graphs=cuda_graphs,
                            sm_clock_mhz=sm_clock_mhz, power_cap_w=power_cap_w)
    except ValueError as exc:  # pydantic's ValidationError: its first message, not its URL line
        errs = getattr(exc, "errors", lambda: [])()
        msg = errs[0]["msg"].removeprefix("Value error, ") if errs else str(exc).splitlines()[0]
        field, value = "--tp/--pp/--ep", f"{tp}/{pp}/{ep}"
        if "moe_a2a" in msg:
            field, value = "--moe-a2a", True
        elif "redundant_experts" in msg:
            field, value = "--redundant-experts", redundant_experts
        elif "attention_dp" in msg:
            field, value = "--attention-dp", attention_dp
        raise InputError(msg, source=CLI_SOURCE, field=field, value=value) from None
    with command_line_errors():
        batch = parse_batch(batch_spec)
    longest = max([*batch.decode_ctx, *(t + k for t, k in batch.prefill)], default=0)
    if longest > model.max_position_embeddings:  # no engine serves a sequence this long
        raise InputError(f"a sequence of {longest:,} tokens exceeds the maximum context of "
                         f"{model.name} ({model.max_position_embeddings:,}, "
                         f"max_position_embeddings)", source=CLI_SOURCE, field="--batch",
                         value=batch_spec)
    engine = load_engine_flag(engine_name)
    with command_line_errors():  # --pool, --tp/--pp/--ep, --weight-dtype the replica refuses
        res = estimate(model, cluster, cfg, batch, engine=engine)
    if as_json:
        click.echo(to_json(res))
        return
    con = console()
    extra = (f" ADP{res.attention_dp}" if res.attention_dp > 1 else "") + \
        (f" +{res.redundant_experts} redundant experts" if res.redundant_experts else "") + \
        (" all-to-all MoE" if res.moe_a2a else "")
    con.print(f"{model.name} on {res.tp * res.pp} x {res.device} (TP{res.tp} PP{res.pp} EP{res.ep}{extra}, "
              f"{res.weight_dtype} weights, {res.kv_dtype} KV), batch {batch_spec}")
    con.print(f"iteration {res.iteration_ms:.3f} ms · energy {res.energy_j:.3f} J "
              f"({res.energy_j_per_token:.4f} J/token, {res.avg_power_w:.0f} W/GPU avg)")
    con.print(table("breakdown", ["operator class", "ms"],
                    [[k, f"{v:.3f}"] for k, v in res.breakdown.items()]))
    if not res.memory_fits:
        con.print("[yellow]warning[/]: this shape does not fit in memory (see `apex-opt check`)")
