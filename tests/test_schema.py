"""`apex-opt schema`: every bundled data file validates against the exported JSON Schemas (a pool
device given by name or inline), the schemas reject what the loaders reject, and the CLI prints
valid JSON."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from apex_opt.cli import main
from apex_opt.commands.schema import schema_of
from apex_opt.registry import data_dir

jsonschema = pytest.importorskip("jsonschema")


def _validator(kind: str):
    schema = schema_of(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(kind: str, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in _validator(kind).iter_errors(doc)]


@pytest.mark.parametrize("kind, folder", [("cluster", "clusters"), ("device", "devices")])
def test_every_bundled_file_validates(kind, folder):
    files = sorted(data_dir(folder).glob("*.yaml"))
    assert files
    for f in files:
        assert _errors(kind, yaml.safe_load(f.read_text())) == [], f.name


def test_bundled_examples_validate():
    ex = data_dir("examples")
    assert _errors("slo", yaml.safe_load((ex / "default-slo.yaml").read_text())) == []
    assert _errors("workload", yaml.safe_load((ex / "default-workload.yaml").read_text())) == []


def test_cluster_device_inline_or_by_name():
    dev = yaml.safe_load((data_dir("devices") / "h100-sxm-80gb.yaml").read_text())
    pool = {"name": "p", "nodes": 1, "gpus_per_node": 8,
            "intra_node": {"kind": "nvswitch", "bandwidth_gbps": 450, "latency_us": 1.0}}
    assert _errors("cluster", {"name": "c", "pools": [{**pool, "device": dev}]}) == []
    assert _errors("cluster", {"name": "c", "pools": [{**pool, "device": "h100-sxm-80gb"}]}) == []
    # what the loader rejects, the schema rejects too
    assert _errors("cluster", {"name": "c", "pools": [{**pool, "device": "no-such-gpu"}]})
    assert _errors("cluster", {"name": "c", "pools": [{**pool, "device": "h100-sxm-80gb",
                                                        "gpus": 8}]})


def test_slo_schema_rejects_typos():
    assert _errors("slo", {"ttft_msec": 200})
    assert _errors("slo", {"ttft_ms": {"target": 200, "percentile": 99}}) == []


@pytest.mark.parametrize("kind", ["slo", "workload", "cluster", "device", "plan"])
def test_cli_prints_json(kind):
    r = CliRunner().invoke(main, ["schema", kind])
    assert r.exit_code == 0
    assert json.loads(r.output)["$schema"].startswith("https://json-schema.org/")
