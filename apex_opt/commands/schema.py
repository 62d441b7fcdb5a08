"""`apex-opt schema`: JSON Schemas of the files users write (SLO, workload, cluster, device, plan).

The schemas describe the files as written, not only the parsed models: a pool's ``device`` may be
a bundled device name (``h100-sxm-80gb``) or an inline device mapping, so the cluster schema
accepts both; tests/test_schema.py validates every bundled file against these schemas.
"""

from __future__ import annotations

import copy
import json

import click

from ..registry import device_names
from ..specs.cluster import ClusterSpec, DeviceSpec
from ..specs.plan import Plan
from ..specs.workload import json_schemas

_KINDS = ("slo", "workload", "cluster", "device", "plan")
#: JSON Schema dialect of the exported documents (pydantic emits draft 2020-12).
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _device_by_name_or_inline(schema: dict) -> dict:
    """PoolSpec.device: a bundled device name OR the inline DeviceSpec mapping."""
    out = copy.deepcopy(schema)
    pool = out.get("$defs", {}).get("PoolSpec")
    if pool is None or "device" not in pool.get("properties", {}):
        return out
    inline = pool["properties"]["device"]
    desc = inline.pop("description", None) or "The device type (bundled name or inline spec)."
    pool["properties"]["device"] = {
        "description": desc,
        "anyOf": [{"type": "string", "enum": list(device_names()),
                   "description": "A bundled device (see `apex-opt clusters`)."},
                  {k: v for k, v in inline.items() if k != "title"}]}
    return out


def schema_of(kind: str) -> dict:
    """JSON Schema of one user-facing file kind."""
    if kind in ("slo", "workload"):
        out = json_schemas()[kind]
    else:
        out = {"cluster": ClusterSpec, "device": DeviceSpec, "plan": Plan}[kind].model_json_schema()
    if kind == "cluster":
        out = _device_by_name_or_inline(out)
    return {"$schema": DIALECT, **out}


@click.command("schema")
@click.argument("kind", type=click.Choice(_KINDS))
def command(kind):
    """Print the JSON Schema of an input file kind, for editors and validators.

    A cluster's pool device may be a bundled device name or an inline device mapping.

    \b
    Example:
      apex-opt schema slo > slo.schema.json
      apex-opt schema cluster > cluster.schema.json   # then validate my-cluster.yaml with it
    All our YAML files are strict: unknown fields are errors (exit 2) naming the file and field.
    """
    click.echo(json.dumps(schema_of(kind), indent=2))
