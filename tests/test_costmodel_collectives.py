"""Collective model: scaling, hierarchy, custom all-reduce, and the NCCL reference (skips without ../shared)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from apex_opt.costmodel.collectives import CollectiveModel, collective_model_for
from apex_opt.errors import InputError
from apex_opt.specs.cluster import DeviceSpec, LinkSpec, PoolSpec

NVS = LinkSpec(kind="nvswitch", bandwidth_gbps=450, latency_us=2.5)
IB = LinkSpec(kind="infiniband", bandwidth_gbps=50, latency_us=5)
H100 = DeviceSpec(name="h100-sxm-80gb", memory_gib=79.2, peak_tflops={"bf16": 989.4, "fp8": 1978.9},
                  hbm_bandwidth_gbps=3350, power_limit_w=700, idle_power_w=75, profile="h100-sxm-80gb")
NCCL = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "nccl-collectives"


def test_scales_with_bytes_and_n():
    m = CollectiveModel(NVS)
    assert m.all_reduce(2 ** 26, 8) > m.all_reduce(2 ** 20, 8) > m.all_reduce(2 ** 10, 8)
    assert m.all_reduce(2 ** 26, 8) > m.all_reduce(2 ** 26, 2) * 0.9
    assert m.all_gather(2 ** 26, 8) < m.all_reduce(2 ** 26, 8)
    assert m.all_reduce(2 ** 20, 1) == 0.0
    assert m.send_recv(2 ** 26) > m.send_recv(2 ** 20) > 0


def test_custom_all_reduce_small_messages():
    m = CollectiveModel(NVS)
    small = 8192 * 2 * 16
    assert m.all_reduce(small, 8, custom=True) < m.all_reduce(small, 8)
    big = 64 * 2 ** 20  # beyond the custom limit -> NCCL
    assert m.all_reduce(big, 8, custom=True) == m.all_reduce(big, 8)


def test_hierarchical_pool():
    pool = PoolSpec(name="p", device=H100, nodes=4, gpus_per_node=8, intra_node=NVS, inter_node=IB)
    intra = collective_model_for(pool, 8)
    inter = collective_model_for(pool, 16)
    assert inter.all_reduce(2 ** 26, 16) > intra.all_reduce(2 ** 26, 8)
    assert inter.all_to_all(2 ** 26, 32) > intra.all_to_all(2 ** 26, 8)
    with pytest.raises(InputError):
        collective_model_for(pool, 64)
    assert 75 < intra.power_w() < 700


def _rows(gpu: str, name: str):
    with open(NCCL / gpu / f"{name}.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["num_nodes"] == "1":
                yield int(r["num_gpus_per_node"]), float(r["size(kb)"]) * 1024, float(r["time(us)"]) * 1e-6


@pytest.mark.parametrize("gpu", ["H100-SXM-80GB", "H200-SXM-141GB"])
def test_against_nccl_reference(gpu):
    if not NCCL.is_dir():
        pytest.skip("../shared/reference/nccl-collectives absent")
    m = CollectiveModel(NVS)
    errs = []
    for name, fn in (("all_reduce", m.all_reduce), ("all_gather", m.all_gather),
                     ("reduce_scatter", m.reduce_scatter), ("alltoall", m.all_to_all)):
        for n, b, t in _rows(gpu, name):
            if b >= 2 ** 20:
                errs.append(abs(fn(b, n) / t - 1))
    for n, b, t in _rows(gpu, "sendrecv"):
        if b >= 2 ** 20:
            errs.append(abs(m.send_recv(b) / t - 1))
    assert np.mean(errs) <= 0.15
