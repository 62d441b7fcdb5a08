"""`apex-opt models`, `apex-opt models show`, `apex-opt clusters`: what is bundled."""

from __future__ import annotations

import click

from ..registry import cluster_names, load_cluster, model_names
from ..report.render import console, table, to_json
from ..specs.model import load_model
from .common import json_option


#: Version of the `models --json` / `models show --json` / `clusters --json` documents.
SCHEMA_VERSION = 1


def _b(n: float) -> str:
    return f"{n / 1e9:,.2f} B" if n < 1e12 else f"{n / 1e12:,.3f} T"


@click.group("models", invoke_without_command=True)
@json_option
@click.pass_context
def models(ctx, as_json):
    """List the bundled models (HF configs) with their sizes.

    `--json` prints {"schema_version": 1, "models": [...]}.

    `apex-opt models show NAME|PATH` prints one model in detail; any HF config.json works as PATH.

    \b
    Examples:
      apex-opt models
      apex-opt models show llama-3.1-70b --json
      apex-opt models show ./my-model/config.json
    """
    if ctx.invoked_subcommand is not None:
        return
    specs = [load_model(n) for n in model_names()]
    if as_json:
        click.echo(to_json({"schema_version": SCHEMA_VERSION,
                            "models": [s.summary() for s in specs]}))
        return
    rows = []
    for s in specs:
        su = s.summary()
        rows.append([s.name, s.architecture, s.num_layers, s.attention,
                     s.moe.num_experts if s.moe else "-", _b(su["params_total"]),
                     _b(su["params_active"]), f"{su['kv_bytes_per_token']:,}"])
    console().print(table("bundled models", ["name", "architecture", "layers", "attention", "experts",
                                             "params", "active", "KV B/token (bf16)"], rows, right_from=2))


@models.command("show")
@click.argument("ref")
@json_option
def models_show(ref, as_json):
    """Show one model (bundled NAME or PATH to an HF config.json or its folder): layers,
    attention, experts, parameter counts, KV bytes per token.

    \b
    Example:
      apex-opt models show deepseek-v3
    """
    from .common import load_model_ref

    s = load_model_ref(ref, "REF")
    su = s.summary()
    if as_json:
        click.echo(to_json({"schema_version": SCHEMA_VERSION, **su}))
        return
    con = console()
    con.print(table(f"{s.name}", ["field", "value"], [[k, v] for k, v in su.items()], right_from=9))


@click.command("clusters")
@json_option
def clusters(as_json):
    """List the bundled clusters (device pools, GPUs, links).

    `--json` prints {"schema_version": 1, "clusters": [...]} (each cluster as its YAML reads).
    Your own cluster YAML works wherever a name does (--cluster my-cluster.yaml); `apex-opt
    schema cluster` prints its JSON Schema.

    \b
    Example:
      apex-opt clusters --json
    """
    specs = [load_cluster(n) for n in cluster_names()]
    if as_json:
        click.echo(to_json({"schema_version": SCHEMA_VERSION,
                            "clusters": [c.model_dump(mode="json") for c in specs]}))
        return
    rows = []
    for c in specs:
        for p in c.pools:
            rows.append([c.name, p.name, p.device.name, f"{p.nodes}x{p.gpus_per_node}",
                         f"{p.device.memory_gib:.0f}", f"{p.device.peak_tflops['bf16']:.0f}",
                         f"{p.device.peak_tflops.get('fp8', 0):.0f}" if 'fp8' in p.device.peak_tflops else "-",
                         f"{p.device.hbm_bandwidth_gbps:.0f}",
                         f"{p.intra_node.kind} {p.intra_node.bandwidth_gbps:.0f}",
                         f"{p.inter_node.kind} {p.inter_node.bandwidth_gbps:.0f}" if p.inter_node else "-"])
    console().print(table("bundled clusters", ["cluster", "pool", "device", "nodes x GPUs", "GiB",
                                               "bf16 TF/s", "fp8 TF/s", "HBM GB/s", "intra-node GB/s",
                                               "inter-node GB/s"], rows, right_from=3))


COMMANDS = [models, clusters]
