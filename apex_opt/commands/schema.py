"""`apex-opt schema`: JSON Schemas of the files users write (SLO, workload, cluster, device, plan)."""

from __future__ import annotations

import json

import click

from ..specs.cluster import ClusterSpec, DeviceSpec
from ..specs.plan import Plan
from ..specs.workload import json_schemas

_KINDS = ("slo", "workload", "cluster", "device", "plan")


def schema_of(kind: str) -> dict:
    """JSON Schema of one user-facing file kind."""
    if kind in ("slo", "workload"):
        return json_schemas()[kind]
    return {"cluster": ClusterSpec, "device": DeviceSpec, "plan": Plan}[kind].model_json_schema()


@click.command("schema")
@click.argument("kind", type=click.Choice(_KINDS))
def command(kind):
    """Print the JSON Schema of an input file kind, for editors and validators.

    \b
    Example:
      apex-opt schema slo > slo.schema.json
    All our YAML files are strict: unknown fields are errors (exit 2) naming the file and field.
    """
    click.echo(json.dumps(schema_of(kind), indent=2))
