"""Bundled device/cluster catalogue and the strict cluster schema's error messages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from apex_opt.errors import InputError
from apex_opt.io import validate
from apex_opt.registry import (cluster_names, data_dir, device_names, load_cluster, load_device)
from apex_opt.specs.cluster import ClusterSpec, DeviceSpec, LinkSpec

#: total GPUs and (pool name -> GPUs) of each cluster the project promises to bundle
EXPECTED_CLUSTERS: dict[str, dict[str, int]] = {
    "h100-sxm-1x8": {"h100": 8},
    "h100-sxm-2x8": {"h100": 16},
    "h100-sxm-4x8": {"h100": 32},
    "h100-sxm-16x8": {"h100": 128},
    "h200-1x8": {"h200": 8},
    "h200-2x8": {"h200": 16},
    "b200-2x8": {"b200": 16},
    "b300-1x8": {"b300": 8},
    "b300-2x8": {"b300": 16},
    "a100-80g-1x8": {"a100": 8},
    "b200-1x8": {"b200": 8},
    "mi300x-1x8": {"mi300x": 8},
    "l40s-1x8": {"l40s": 8},
    "mixed-h100-a100": {"h100": 8, "a100": 16},
    "gb200-nvl72": {"gb200": 72},
    "gb300-nvl72": {"gb300": 72},
}
EXPECTED_DEVICES = ["h100-sxm-80gb", "h100-pcie-80gb", "h200-sxm-141gb", "a100-sxm-80gb", "b200",
                    "mi300x", "l40s"]


# ----------------------------------------------------------------------------- bundled catalogue

def test_expected_names_are_bundled():
    assert set(EXPECTED_CLUSTERS) <= set(cluster_names())
    assert set(EXPECTED_DEVICES) <= set(device_names())


@pytest.mark.parametrize("name", device_names())
def test_bundled_device_loads_and_is_sane(name: str):
    dev = load_device(name)
    assert dev.name == name, "the file name must match the device's name"
    assert dev.source and dev.vendor
    assert 10 < dev.memory_gib < 300
    assert 0 < dev.idle_power_w < 0.25 * dev.power_limit_w
    bf16 = dev.peak_tflops["bf16"]
    # dense datasheet figures keep the hardware ratios: fp16 = bf16, fp8 = int8 = 2 x bf16,
    # fp4 = 2 x fp8 (a sparsity figure slipped in would break one of these)
    assert dev.peak_tflops.get("fp16", bf16) == pytest.approx(bf16, rel=0.01)
    for dt in ("fp8", "int8"):
        if dt in dev.peak_tflops:
            assert dev.peak_tflops[dt] == pytest.approx(2 * bf16, rel=0.02), dt
    if "fp4" in dev.peak_tflops:
        # Blackwell Ultra (B300, sm_103) raised only dense FP4, to 1.5x the B200's: 6 x bf16
        ratio = 6 if dev.compute_capability == "10.3" else 4
        assert dev.peak_tflops["fp4"] == pytest.approx(ratio * bf16, rel=0.01)
    # the comment header documents the source
    text = (data_dir("devices") / f"{name}.yaml").read_text(encoding="utf-8")
    assert text.startswith("#")


def test_h100_matches_the_measured_profile():
    dev = load_device("h100-sxm-80gb")
    measured = json.loads((data_dir("profiles", "h100-sxm-80gb") / "device.json").read_text())
    assert dev.memory_gib == pytest.approx(measured["mem_gib"], abs=0.01)
    assert dev.power_limit_w == measured["power_limit_w"]
    assert dev.profile == "h100-sxm-80gb"
    assert dev.profile in [f.name for f in data_dir("profiles").iterdir()]
    assert dev.peak_tflops["bf16"] == pytest.approx(989, abs=1)
    assert dev.peak_tflops["fp8"] == pytest.approx(1979, abs=1)
    assert dev.hbm_bandwidth_gbps == 3350


def test_dense_headline_numbers():
    assert "fp8" not in load_device("a100-sxm-80gb").peak_tflops
    assert load_device("a100-sxm-80gb").tflops("fp8") == 312  # falls back to bf16 compute
    b200 = load_device("b200")
    assert {"bf16", "fp8", "fp4"} <= set(b200.peak_tflops)
    assert b200.peak_tflops["bf16"] == 2250
    assert load_device("mi300x").vendor == "amd"
    assert load_device("l40s").peak_tflops["bf16"] == pytest.approx(362.05)
    assert load_device("h200-sxm-141gb").hbm_bandwidth_gbps == 4800
    assert load_device("h200-sxm-141gb").memory_gib > 1.7 * load_device("h100-sxm-80gb").memory_gib


@pytest.mark.parametrize("name", sorted(EXPECTED_CLUSTERS))
def test_bundled_cluster_loads_with_expected_pools(name: str):
    cluster = load_cluster(name)
    assert cluster.name == name
    assert {p.name: p.num_gpus for p in cluster.pools} == EXPECTED_CLUSTERS[name]
    assert cluster.num_gpus == sum(EXPECTED_CLUSTERS[name].values())
    for pool in cluster.pools:
        # 8-GPU HGX/DGX nodes; an NVL72 rack's hosts are 4-GPU compute trays
        assert pool.gpus_per_node == (4 if name.endswith("nvl72") else 8)
        assert pool.device.name in device_names()
        assert (pool.inter_node is not None) or pool.nodes == 1
    text = (data_dir("clusters") / f"{name}.yaml").read_text(encoding="utf-8")
    assert text.startswith("#")


@pytest.mark.parametrize("name", cluster_names())
def test_every_bundled_cluster_round_trips(name: str):
    cluster = load_cluster(name)
    again = validate(ClusterSpec, json.loads(json.dumps(cluster.model_dump(mode="json"))), "dump")
    assert again == cluster


def test_mixed_cluster_has_two_pools_of_different_devices():
    c = load_cluster("mixed-h100-a100")
    assert [p.name for p in c.pools] == ["h100", "a100"]
    assert c.pool("h100").device.name == "h100-sxm-80gb"
    assert c.pool("a100").device.name == "a100-sxm-80gb"
    assert c.pool("a100").nodes == 2 and c.pool("a100").inter_node.bandwidth_gbps == 25
    assert c.pool() is c.pools[0]
    with pytest.raises(KeyError):
        c.pool("v100")


def test_link_figures():
    assert load_cluster("h100-sxm-2x8").pools[0].intra_node.bandwidth_gbps == 450
    assert load_cluster("h100-sxm-2x8").pools[0].inter_node.bandwidth_gbps == 50
    # DGX H200 / B200: one 400G ConnectX-7 per GPU; DGX / HGX B300: one 800G ConnectX-8 per GPU
    for name, gbps in (("h200-2x8", 50), ("b200-2x8", 50), ("b300-2x8", 100)):
        one, two = load_cluster(name.replace("-2x8", "-1x8")).pools[0], load_cluster(name).pools[0]
        assert two.inter_node.bandwidth_gbps == gbps and two.nodes == 2
        assert two.intra_node == one.intra_node and two.device == one.device
    assert load_cluster("a100-80g-1x8").pools[0].intra_node.bandwidth_gbps == 300
    assert load_cluster("b200-1x8").pools[0].intra_node.bandwidth_gbps == 900
    l40s = load_cluster("l40s-1x8").pools[0].intra_node
    assert l40s.kind == "pcie" and l40s.bandwidth_gbps <= 32
    for name in cluster_names():
        for pool in load_cluster(name).pools:
            assert 0 < pool.intra_node.latency_us < 10
            if pool.inter_node is not None:
                assert pool.inter_node.latency_us >= pool.intra_node.latency_us


def test_full_mesh_group_bandwidth():
    xgmi = load_cluster("mi300x-1x8").pools[0].intra_node
    assert xgmi.kind == "xgmi"
    assert [xgmi.group_bandwidth_gbps(g) for g in (1, 2, 4, 8)] == [448, 64, 192, 448]
    nvs = load_cluster("h100-sxm-1x8").pools[0].intra_node
    assert nvs.group_bandwidth_gbps(2) == nvs.group_bandwidth_gbps(8) == 450


def test_bundled_name_wins_over_same_named_path(tmp_path, monkeypatch):
    (tmp_path / "h100-sxm-1x8").write_text("not: a cluster\n")
    monkeypatch.chdir(tmp_path)
    assert load_cluster("h100-sxm-1x8").num_gpus == 8


# ----------------------------------------------------------------------------- strict schema errors

GOOD = """\
name: test-cluster
pools:
  - name: h100
    device: h100-sxm-80gb
    nodes: 2
    gpus_per_node: 8
    intra_node: {kind: nvswitch, bandwidth_gbps: 450, latency_us: 1.0}
    inter_node: {kind: infiniband, bandwidth_gbps: 50, latency_us: 5.0}
"""


def _write(tmp_path: Path, text: str, name: str = "cluster.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _error(path: Path) -> str:
    with pytest.raises(InputError) as exc:
        load_cluster(str(path))
    assert exc.value.exit_code == 2
    msg = str(exc.value)
    assert str(path) in msg, msg
    assert "\n" not in msg
    return msg


def test_good_file_loads(tmp_path):
    c = load_cluster(str(_write(tmp_path, GOOD)))
    assert c.num_gpus == 16 and c.pools[0].device.name == "h100-sxm-80gb"


def test_inline_device_mapping(tmp_path):
    text = GOOD.replace("device: h100-sxm-80gb", "device: {name: toy, memory_gib: 24, "
                        "peak_tflops: {bf16: 100}, hbm_bandwidth_gbps: 900, power_limit_w: 300, "
                        "idle_power_w: 30}")
    c = load_cluster(str(_write(tmp_path, text)))
    assert c.pools[0].device.name == "toy" and c.pools[0].device.tflops("fp8") == 100


def test_unknown_field(tmp_path):
    msg = _error(_write(tmp_path, GOOD.replace("gpus_per_node: 8", "gpus_per_nod: 8")))
    assert "pools[0].gpus_per_nod" in msg and "unknown field" in msg
    assert "did you mean 'gpus_per_node'" in msg and "more error" not in msg


def test_exponent_floats_are_numbers(tmp_path):
    # PyYAML (YAML 1.1) reads 4.5e2 as a string; the loader reads it as YAML 1.2 does
    c = load_cluster(str(_write(tmp_path, GOOD.replace("bandwidth_gbps: 450", "bandwidth_gbps: 4.5e2"))))
    assert c.pools[0].intra_node.bandwidth_gbps == 450.0


def test_unknown_top_level_field(tmp_path):
    msg = _error(_write(tmp_path, GOOD + "colour: blue\n"))
    assert "'colour'" in msg and "'blue'" in msg


def test_missing_required_field(tmp_path):
    text = "\n".join(l for l in GOOD.splitlines() if "intra_node" not in l) + "\n"
    msg = _error(_write(tmp_path, text))
    assert "pools[0].intra_node" in msg and "missing" in msg


@pytest.mark.parametrize("bad, shown", [("-450", "-450"), ("0", "0"), (".nan", "nan"),
                                        (".inf", "inf")])
def test_bad_bandwidth_values(tmp_path, bad, shown):
    msg = _error(_write(tmp_path, GOOD.replace("bandwidth_gbps: 450", f"bandwidth_gbps: {bad}")))
    assert "pools[0].intra_node.bandwidth_gbps" in msg and f"(got {shown})" in msg


@pytest.mark.parametrize("field, bad", [("nodes", "0"), ("nodes", "-2"), ("gpus_per_node", "0"),
                                        ("nodes", "2.5"), ("gpus_per_node", "1000")])
def test_bad_counts(tmp_path, field, bad):
    old = "nodes: 2" if field == "nodes" else "gpus_per_node: 8"
    msg = _error(_write(tmp_path, GOOD.replace(old, f"{field}: {bad}")))
    assert f"pools[0].{field}" in msg and bad.lstrip("-") in msg


def test_negative_latency(tmp_path):
    msg = _error(_write(tmp_path, GOOD.replace("latency_us: 5.0", "latency_us: -5")))
    assert "pools[0].inter_node.latency_us" in msg and "-5" in msg


@pytest.mark.parametrize("bad", ['fast', '"450"', "true", "[450]"])
def test_wrong_type_for_a_number(tmp_path, bad):
    msg = _error(_write(tmp_path, GOOD.replace("bandwidth_gbps: 450", f"bandwidth_gbps: {bad}")))
    assert "pools[0].intra_node.bandwidth_gbps" in msg and "number" in msg


def test_unknown_link_kind(tmp_path):
    msg = _error(_write(tmp_path, GOOD.replace("kind: nvswitch", "kind: carrier-pigeon")))
    assert "pools[0].intra_node.kind" in msg and "carrier-pigeon" in msg


def test_unknown_device_name(tmp_path):
    msg = _error(_write(tmp_path, GOOD.replace("device: h100-sxm-80gb", "device: h100-sxm-81gb")))
    assert "pools[0].device" in msg and "'h100-sxm-81gb'" in msg and "h100-sxm-80gb" in msg


def test_bad_inline_device_value(tmp_path):
    text = GOOD.replace("device: h100-sxm-80gb", "device: {name: toy, memory_gib: -1, "
                        "peak_tflops: {bf16: 100}, hbm_bandwidth_gbps: 900, power_limit_w: 300, "
                        "idle_power_w: 30}")
    msg = _error(_write(tmp_path, text))
    assert "pools[0].device.memory_gib" in msg and "-1" in msg


def test_inline_device_with_sparsity_dtype_typo(tmp_path):
    text = GOOD.replace("device: h100-sxm-80gb", "device: {name: toy, memory_gib: 24, "
                        "peak_tflops: {bf16: 100, tf32: 50}, hbm_bandwidth_gbps: 900, "
                        "power_limit_w: 300, idle_power_w: 30}")
    msg = _error(_write(tmp_path, text))
    assert "pools[0].device.peak_tflops.tf32" in msg and "[key]" not in msg


def test_malformed_yaml(tmp_path):
    msg = _error(_write(tmp_path, GOOD.replace("{kind: nvswitch,", "{kind: nvswitch")
                        .replace("latency_us: 1.0}", "latency_us: 1.0")))
    assert "malformed YAML at line" in msg


def test_duplicate_yaml_key(tmp_path):
    msg = _error(_write(tmp_path, GOOD.replace("nodes: 2", "nodes: 2\n    nodes: 3")))
    assert "'nodes'" in msg and "twice" in msg


def test_missing_file(tmp_path):
    msg = _error(tmp_path / "nope.yaml")
    assert "not found" in msg


def test_empty_file(tmp_path):
    msg = _error(_write(tmp_path, "# only a comment\n"))
    assert "empty" in msg


def test_top_level_not_a_mapping(tmp_path):
    msg = _error(_write(tmp_path, "- name: x\n"))
    assert "mapping" in msg


def test_duplicate_pool_names(tmp_path):
    pool = GOOD[GOOD.index("  - name: h100"):]
    msg = _error(_write(tmp_path, GOOD + pool))
    assert "pools" in msg and "duplicate pool names" in msg and "'h100'" in msg


def test_no_pools(tmp_path):
    msg = _error(_write(tmp_path, "name: x\npools: []\n"))
    assert "field 'pools'" in msg


def test_multi_node_pool_without_network(tmp_path):
    text = "\n".join(l for l in GOOD.splitlines() if "inter_node" not in l) + "\n"
    msg = _error(_write(tmp_path, text))
    assert "pools[0].inter_node" in msg and "2 nodes" in msg


def test_peer_bandwidth_above_total(tmp_path):
    msg = _error(_write(tmp_path, GOOD.replace("latency_us: 1.0}", "latency_us: 1.0, "
                                               "peer_bandwidth_gbps: 500}")))
    assert "pools[0].intra_node.peer_bandwidth_gbps" in msg and "500" in msg


def test_unknown_bundled_cluster_name():
    with pytest.raises(InputError, match="unknown cluster name 'h100-sxm-3x8'.*h100-sxm-1x8"):
        load_cluster("h100-sxm-3x8")


# ----------------------------------------------------------------------------- device files

DEVICE = """\
name: toy
memory_gib: 24
peak_tflops: {bf16: 100}
hbm_bandwidth_gbps: 900
power_limit_w: 300
idle_power_w: 30
"""


def _device_error(path: Path) -> str:
    with pytest.raises(InputError) as exc:
        load_device(str(path))
    msg = str(exc.value)
    assert str(path) in msg, msg
    return msg


def test_device_file_loads(tmp_path):
    dev = load_device(str(_write(tmp_path, DEVICE, "toy.yaml")))
    assert isinstance(dev, DeviceSpec) and dev.memory_bytes == 24 * 1024 ** 3


def test_device_idle_above_limit(tmp_path):
    msg = _device_error(_write(tmp_path, DEVICE.replace("idle_power_w: 30", "idle_power_w: 400"),
                               "toy.yaml"))
    assert "field 'idle_power_w'" in msg and "400" in msg


def test_device_without_bf16(tmp_path):
    msg = _device_error(_write(tmp_path, DEVICE.replace("{bf16: 100}", "{fp8: 100}"), "toy.yaml"))
    assert "field 'peak_tflops'" in msg and "bf16" in msg


def test_device_absurd_memory(tmp_path):
    msg = _device_error(_write(tmp_path, DEVICE.replace("memory_gib: 24", "memory_gib: 1.0e6"),
                               "toy.yaml"))
    assert "field 'memory_gib'" in msg and "1000000.0" in msg


def test_device_missing_field(tmp_path):
    msg = _device_error(_write(tmp_path, DEVICE.replace("hbm_bandwidth_gbps: 900\n", ""),
                               "toy.yaml"))
    assert "field 'hbm_bandwidth_gbps'" in msg and "missing" in msg


def test_unknown_bundled_device_name():
    with pytest.raises(InputError, match="unknown device name 'tpu-v9'"):
        load_device("tpu-v9")


def test_linkspec_rejects_nan_in_code():
    with pytest.raises(ValueError):
        LinkSpec(kind="nvlink", bandwidth_gbps=math.nan, latency_us=1.0)


def test_nvl72_tensor_parallel_spans_trays_over_nvlink():
    """A GB200 NVL72 rack's 4-GPU trays share one NVLink fabric: TP may take whole trays (NCCL over
    multi-node NVLink, no vLLM custom all-reduce across hosts); across an InfiniBand network it
    stays refused."""
    from apex_opt.costmodel.collectives import collective_model_for
    from apex_opt.parallel import scope_problem, tp_degrees
    from apex_opt.specs.model import load_model

    pool = load_cluster("gb200-nvl72").pool("gb200")
    assert pool.tp_domain_gpus == 72 and pool.gpus_per_node == 4
    assert {8, 16, 32, 64} <= set(tp_degrees(load_model("deepseek-v3"), pool))
    assert scope_problem(pool, 8) is None
    assert "without taking whole 4-GPU nodes" in scope_problem(pool, 6)
    ib = load_cluster("h100-sxm-2x8").pool("h100")
    assert ib.tp_domain_gpus == 8 and "inside one node only" in scope_problem(ib, 16)
    # an all-reduce over two trays runs on the rack's one NVLink switch fabric, as inside an HGX
    # B200 node, not over a network
    big = 64 * 2 ** 20
    rack = collective_model_for(pool, 8)
    hgx = collective_model_for(load_cluster("b200-1x8").pool("b200"), 8)
    assert rack.all_reduce(big, 8) == pytest.approx(hgx.all_reduce(big, 8), rel=0.01)
    net = collective_model_for(load_cluster("b200-2x8").pool("b200"), 16)
    assert rack.all_reduce(big, 8) < 0.5 * net.all_reduce(big, 16)
