#!/usr/bin/env python
"""Simulator speed benchmark.

(a) the 1,024-request lmsys trace (../shared/validation/apex-h100x8, skipped when absent) on
    llama-3.1-70b TP 8 on h100-sxm-1x8 with the trace's engine settings -- target <= 0.5 s;
(b) a 100,000-request synthetic workload well above the replica's capacity (saturation: the
    scheduler runs full batches, queues grow, preemptions happen) -- target <= 30 s and peak
    memory <= 1 GiB.

Reports wall time, simulated iterations and µs per iteration (engine + cost model), peak RSS of
the process (resource.getrusage) and ends with one JSON line.

Both run the default engine model (vLLM V1: shared token budget, async scheduling, prefix cache).

Usage: PYTHONPATH=. python scripts/bench_simulate.py [--shared ../shared] [--requests 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apex_opt.registry import load_cluster  # noqa: E402
from apex_opt.report.render import console, table  # noqa: E402
from apex_opt.sim.simulator import simulate  # noqa: E402
from apex_opt.sim.workload import generate, load_trace  # noqa: E402
from apex_opt.specs.engine import load_engine  # noqa: E402
from apex_opt.specs.model import load_model  # noqa: E402
from apex_opt.specs.plan import Plan, ReplicaGroup  # noqa: E402
from apex_opt.specs.workload import WorkloadSpec  # noqa: E402

LMSYS = "validation/apex-h100x8/traces/vllm-llama_lmsys_05_validation_8TP.jsonl"


def _peak_rss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024


#: the engine model benchmarked: the default profile (vLLM V1)
ENGINE = "vllm"


def _run(name: str, model, cluster, plan: Plan, requests, target_s: float) -> dict:
    t0 = time.perf_counter()
    res = simulate(model, cluster, plan, requests, engine=load_engine(ENGINE))
    wall = time.perf_counter() - t0
    iters = sum(r.iterations for r in res.replicas)
    return {"case": name, "engine": res.engine, "requests": len(requests), "iterations": iters, "wall_s": round(wall, 3),
            "us_per_iteration": round(wall / max(iters, 1) * 1e6, 1), "target_s": target_s,
            "ok": wall <= target_s, "preemptions": res.metrics.preemptions,
            "throughput_tok_s": round(res.metrics.throughput_tokens_per_s, 1),
            "peak_rss_mib": round(_peak_rss_mib(), 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--requests", type=int, default=100_000)
    args = ap.parse_args(argv)
    model, cluster = load_model("llama-3.1-70b"), load_cluster("h100-sxm-1x8")
    out = []
    trace = Path(args.shared) / LMSYS
    if trace.is_file():
        plan = Plan(groups=(ReplicaGroup(tp=8, max_model_len=131072, gpu_memory_utilization=0.97,
                                         chunked_prefill=True, max_num_batched_tokens=512,
                                         max_num_seqs=256),))
        req = load_trace(trace)
        simulate(model, cluster, plan, req.subset(slice(0, 32)),
                 engine=load_engine(ENGINE))  # warm imports / caches
        out.append(_run("lmsys-1024 TP8", model, cluster, plan, req, 0.5))
    spec = WorkloadSpec(name="saturation", num_requests=args.requests,
                        arrival={"process": "poisson", "rate": 40.0},
                        prompt_len={"dist": "lognormal", "mean": 600, "cv": 1.0, "min": 16,
                                    "max": 8000},
                        output_len={"dist": "lognormal", "mean": 200, "cv": 1.0, "min": 1,
                                    "max": 4000},
                        seed=0)
    req = generate(spec, np.random.default_rng(0))
    plan = Plan(groups=(ReplicaGroup(tp=8, max_model_len=16384, gpu_memory_utilization=0.9),))
    out.append(_run(f"synthetic-{args.requests // 1000}k saturated TP8", model, cluster, plan, req,
                    30.0))
    mem_ok = _peak_rss_mib() <= 1024
    rows = [[r["case"], f"{r['requests']:,}", f"{r['iterations']:,}", f"{r['wall_s']:.3f}",
             f"{r['us_per_iteration']:.1f}", f"{r['target_s']:g}", "yes" if r["ok"] else "NO",
             f"{r['preemptions']:,}", f"{r['peak_rss_mib']:.0f}"] for r in out]
    console().print(table("simulator speed", ["case", "requests", "iterations", "wall s",
                                              "µs/iter", "target s", "ok", "preempt",
                                              "peak RSS MiB"], rows))
    print(json.dumps({"cases": out, "peak_rss_mib": round(_peak_rss_mib(), 1),
                      "memory_ok": mem_ok, "all_ok": mem_ok and all(r["ok"] for r in out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
