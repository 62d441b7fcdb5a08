#!/usr/bin/env python
"""Benchmark `apex-opt solve`: wall time, plans feasible / simulated, peak memory, and whether the
shortlist's answer equals the `--exhaustive` answer.

Cases: llama-3.1-70b on h100-sxm-1x8 with the creation trace (../shared/validation; a synthetic
stand-in when absent), llama-3.1-405b on h100-sxm-4x8 and kimi-k2 on h100-sxm-16x8 with 1,000
synthetic requests, llama-3.1-70b on the heterogeneous mixed-h100-a100 cluster, and qwen2.5-32b on
a small heterogeneous cluster (4 H100 + 4 A100) whose plan space the exhaustive reference covers.

Prints a table and one final JSON line. Targets (2 cores): 70B <= 5 s, 405B <= 15 s, kimi <= 30 s,
peak memory <= 1 GiB, same optimum as exhaustive while simulating <= 20 % of the feasible plans.

    python scripts/bench_solve.py [--cases 70b,405b,kimi,hetero,hetero-small] [--exhaustive-limit 1000]

The exhaustive reference simulates every feasible plan (minutes per case); it is skipped above
--exhaustive-limit plans (the 271k-plan mixed-h100-a100 case, and kimi-k2 unless raised to 2000).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from apex_opt.registry import data_dir, load_cluster  # noqa: E402
from apex_opt.search import solve  # noqa: E402
from apex_opt.sim.workload import generate, load_trace  # noqa: E402
from apex_opt.specs.model import load_model  # noqa: E402
from apex_opt.specs.slo import load_slo  # noqa: E402
from apex_opt.specs.workload import WorkloadSpec  # noqa: E402

TRACE = REPO.parent / "shared" / "validation" / "apex-h100x8" / "traces" / \
    "vllm-llama_creation_05_validation_8TP.jsonl"
TARGET_S = {"70b": 5.0, "405b": 15.0, "kimi": 30.0, "hetero": 30.0, "hetero-small": 30.0}

#: A heterogeneous case small enough for the exhaustive reference (~840 feasible plans): one node
#: of 4 H100 and one of 4 A100, bf16 only, no pipeline parallelism.
SMALL_MIXED = """name: small-mixed
pools:
  - {name: h100, device: h100-sxm-80gb, nodes: 1, gpus_per_node: 4,
     intra_node: {kind: nvswitch, bandwidth_gbps: 450, latency_us: 1.0}}
  - {name: a100, device: a100-sxm-80gb, nodes: 1, gpus_per_node: 4,
     intra_node: {kind: nvswitch, bandwidth_gbps: 300, latency_us: 1.5}}
"""
SMALL_SLO = """ttft_ms: {target: 2000, percentile: 90}
tpot_ms: {target: 60, percentile: 90}
attainment: 0.9
objective: latency
constraints: {weight_dtypes: [bf16], kv_dtypes: [bf16], max_pp: 1}
"""


def _synthetic(n: int, rate: float, seed: int = 0):
    return generate(WorkloadSpec(
        name=f"bench-{n}", num_requests=n, seed=seed, arrival={"process": "poisson", "rate": rate},
        prompt_len={"dist": "lognormal", "mean": 1000, "cv": 0.8, "min": 16, "max": 8192},
        output_len={"dist": "lognormal", "mean": 250, "cv": 0.8, "min": 1, "max": 2048}))


def cases() -> dict:
    trace = load_trace(TRACE) if TRACE.is_file() else _synthetic(512, 0.5)
    return {
        "70b": ("llama-3.1-70b", "h100-sxm-1x8", trace, "creation trace" if TRACE.is_file()
                else "synthetic stand-in (trace absent)"),
        "405b": ("llama-3.1-405b", "h100-sxm-4x8", _synthetic(1000, 4.0), "1000 synthetic"),
        "kimi": ("kimi-k2", "h100-sxm-16x8", _synthetic(1000, 8.0), "1000 synthetic"),
        "hetero": ("llama-3.1-70b", "mixed-h100-a100", _synthetic(1000, 6.0), "1000 synthetic"),
        "hetero-small": ("qwen2.5-32b", "small-mixed", _synthetic(1000, 10.0),
                         "1000 synthetic, bf16, no PP"),
    }


def _peak_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


def _best(res) -> tuple[str, float | None]:
    p = res.plans[0]
    return p.label, p.objective_value


def run_case(name: str, spec, slo, exhaustive_limit: int, workers: int, tmp: Path) -> dict:
    model_name, cluster_name, requests, what = spec
    if name == "hetero-small":
        (tmp / "small-mixed.yaml").write_text(SMALL_MIXED)
        (tmp / "slo.yaml").write_text(SMALL_SLO)
        cluster_name, slo = str(tmp / "small-mixed.yaml"), load_slo(str(tmp / "slo.yaml"))
    model, cluster = load_model(model_name), load_cluster(cluster_name)
    t0 = time.perf_counter()
    res = solve(model, cluster, requests, slo, workers=workers)
    wall = time.perf_counter() - t0
    row = {"case": name, "model": model_name, "cluster": cluster_name, "workload": what,
           "wall_s": round(wall, 2), "target_s": TARGET_S[name],
           "plans_feasible": res.solver.plans_feasible, "plans_simulated": res.solver.plans_simulated,
           "simulated_fraction": round(res.solver.plans_simulated / max(1, res.solver.plans_feasible), 4),
           "best": _best(res)[0], "best_value": _best(res)[1], "peak_mib": round(_peak_mib(), 1),
           "same_as_exhaustive": None, "exhaustive_best": None, "exhaustive_wall_s": None}
    if res.solver.plans_feasible <= exhaustive_limit:
        t1 = time.perf_counter()
        ex = solve(model, cluster, requests, slo, exhaustive=True, workers=workers)
        row["exhaustive_wall_s"] = round(time.perf_counter() - t1, 1)
        row["exhaustive_best"], ex_val = _best(ex)
        v = row["best_value"]
        row["same_as_exhaustive"] = bool(row["best"] == row["exhaustive_best"] or (
            v is not None and ex_val is not None and abs(v - ex_val) <= 1e-9 * max(1.0, abs(ex_val))))
    row["peak_mib"] = round(_peak_mib(), 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="70b,405b,kimi,hetero,hetero-small")
    ap.add_argument("--exhaustive-limit", type=int, default=1000,
                    help="skip the exhaustive comparison when more plans than this are feasible")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    slo = load_slo(str(data_dir("examples") / "default-slo.yaml"))
    all_cases = cases()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-solve-"))
    for name in args.cases.split(","):
        rows.append(run_case(name, all_cases[name], slo, args.exhaustive_limit, args.workers, tmp))
        r = rows[-1]
        print(f"{r['case']:7s} {r['model']:15s} {r['cluster']:16s} wall {r['wall_s']:6.2f} s "
              f"(target {r['target_s']:.0f}) feasible {r['plans_feasible']:6d} simulated "
              f"{r['plans_simulated']:3d} ({r['simulated_fraction']:.1%}) peak {r['peak_mib']:.0f} MiB "
              f"best {r['best']} same-as-exhaustive {r['same_as_exhaustive']}", flush=True)
    print(json.dumps({"bench": "solve", "cases": rows}))


if __name__ == "__main__":
    main()
