"""`apex-opt engines`: the bundled serving-engine profiles (versioned engine models)."""

from __future__ import annotations

import json

import click

from ..report.render import console, table
from ..specs.engine import all_engines


def engine_rows() -> list[dict]:
    """One object per bundled engine profile (what ``--json`` prints)."""
    out = []
    for e in all_engines():
        out.append({
            "name": e.name, "engine": e.engine, "versions": e.versions,
            "reference_version": e.reference_version, "default": e.default,
            "description": e.description, "scheduler": e.scheduler,
            "prefix_caching": e.prefix_caching, "prefix_cache": e.prefix_cache,
            "cuda_graph_mode": e.cuda_graph_mode, "async_scheduling": e.async_scheduling,
            "kv_sizing": e.kv_sizing,
            "batch_defaults": [t.model_dump(mode="json", exclude_none=True)
                               for t in e.batch_defaults],
            "launch_flags": dict(e.launch_flags),
            "flag_vocabulary": list(e.flag_vocabulary),
            "version_overrides": [dict(o) for o in e.version_overrides],
        })
    return out


@click.command("engines")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def command(as_json: bool) -> None:
    """List the serving-engine models apex-opt can simulate (pick one with --engine NAME on
    check / estimate / simulate / solve; NAME@VERSION pins a release, e.g. vllm@0.12).

    \b
    Example:
      apex-opt engines
      apex-opt simulate --engine sglang --model llama-3.1-8b --tp 1 --rate 5 \\
          --num-requests 200 --prompt-len 1000 --output-len 200
    """
    rows = engine_rows()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    console().print(table(
        "serving-engine profiles (--engine NAME, or NAME@VERSION)",
        ["name", "engine", "versions", "default", "scheduler", "prefix cache", "CUDA graphs",
         "async sched.", "description"],
        [[r["name"], r["engine"], r["versions"], "yes" if r["default"] else "",
          r["scheduler"], f"{r['prefix_cache']} ({'on' if r['prefix_caching'] else 'off'})",
          r["cuda_graph_mode"], "yes" if r["async_scheduling"] else "no", r["description"]]
         for r in rows], right_from=99))
