"""Options and loaders shared by several commands."""

from __future__ import annotations

import click

from ..registry import load_cluster
from ..specs.model import load_model

model_option = click.option(
    "--model", "model_ref", default="llama-3.1-70b", show_default=True,
    help="Bundled model name (see `apex-opt models`) or path to an HF config.json / its folder.")
cluster_option = click.option(
    "--cluster", "cluster_ref", default="h100-sxm-1x8", show_default=True,
    help="Bundled cluster name (see `apex-opt clusters`) or path to a cluster YAML.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
weight_dtype_option = click.option(
    "--weight-dtype", type=click.Choice(["bf16", "fp8", "int4"]), default=None,
    help="Weight storage dtype [default: the checkpoint's own, from its config.json "
         "quantization_config: fp8 for fp8 checkpoints such as deepseek-v3, else bf16].")

kv_dtype_option = click.option("--kv-dtype", type=click.Choice(["bf16", "fp8"]), default="bf16",
                               show_default=True, help="KV-cache dtype.")


def load_inputs(model_ref: str, cluster_ref: str):
    return load_model(model_ref), load_cluster(cluster_ref)
def _engine_help() -> str:
    try:
        from ..specs.engine import all_engines

        names = ", ".join(f"{e.name} ({e.engine} {e.versions})" for e in all_engines())
    except Exception:  # pragma: no cover - help must render even with broken data
        names = "see `apex-opt engines`"
    return ("Serving-engine profile to model [default: vllm, the V1 engine]: " + names +
            ". NAME@VERSION pins a release (e.g. vllm@0.12: no async scheduling). "
            "List them with `apex-opt engines`.")


engine_option = click.option(
    "--engine", "engine_name", default=None, metavar="NAME[@VERSION]", help=_engine_help())
