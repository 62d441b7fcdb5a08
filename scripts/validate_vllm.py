#!/usr/bin/env python
"""Validate the simulator against real vLLM 0.6.0 runs (../shared/validation/apex-h100x8).

For every row of ``ground_truth.csv`` one replica is simulated with the row's own engine settings
(tp, max_model_len, gpu_memory_utilization, chunked_prefill, max_num_batched_tokens, max_num_seqs,
custom_allreduce, cuda_graphs) on the row's own trace (ContextTokens / GeneratedTokens replayed at
StartTimeOffset). Compared means:

* TTFT -- per-request mean of (first token - arrival);
* TPOT -- vLLM's ``time_per_output_token`` histogram observes every inter-token gap, so its mean is
  the *token-weighted* mean gap: sum(finish - first) / sum(tokens - 1) over all requests;
* E2E  -- per-request mean of (finish - arrival).

Prints a per-row table with signed / absolute relative errors, MAPE per metric per plan and overall,
whether the predicted best plan per dataset (lowest mean E2E, then TPOT) matches the measured one,
and finally one JSON line with the MAPEs. Nothing is fitted: every number comes from the cost model.

Usage: PYTHONPATH=. python scripts/validate_vllm.py [--shared ../shared] [--rows REGEX] [--json-only]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apex_opt.registry import load_cluster  # noqa: E402
from apex_opt.report.render import console, table  # noqa: E402
from apex_opt.sim.simulator import simulate  # noqa: E402
from apex_opt.sim.workload import load_trace  # noqa: E402
from apex_opt.specs.model import load_model  # noqa: E402
from apex_opt.specs.plan import Plan, ReplicaGroup  # noqa: E402

METRICS = ("ttft_ms", "tpot_ms", "e2e_s")
TARGETS = {"ttft_ms": 20.0, "tpot_ms": 8.0, "e2e_s": 8.0}


def _bool(s: str) -> bool:
    return s.strip().lower() in ("true", "1", "yes")


def row_plan(row: dict) -> Plan:
    """One replica with the row's engine settings."""
    g = ReplicaGroup(
        tp=int(row["tp"]), replicas=1, max_model_len=int(row["max_model_len"]),
        gpu_memory_utilization=float(row["gpu_memory_utilization"]),
        chunked_prefill=_bool(row["chunked_prefill"]),
        max_num_batched_tokens=int(row["max_num_batched_tokens"]),
        max_num_seqs=int(row["max_num_seqs"]), custom_allreduce=_bool(row["custom_allreduce"]),
        cuda_graphs=_bool(row["cuda_graphs"]))
    return Plan(groups=(g,), router="round_robin")


def simulate_row(row: dict, base: Path, model, cluster) -> dict:
    req = load_trace(base / row["trace"])
    res = simulate(model, cluster, row_plan(row), req)
    pred = {"ttft_ms": res.metrics.ttft_ms.mean, "tpot_ms": res.tpot_token_weighted_ms,
            "e2e_s": res.metrics.e2e_s.mean}
    meas = {"ttft_ms": float(row["ttft_mean_ms"]), "tpot_ms": float(row["tpot_mean_ms"]),
            "e2e_s": float(row["e2e_mean_s"])}
    err = {k: (pred[k] - meas[k]) / meas[k] * 100 for k in METRICS}
    return {"case": row["case_id"], "dataset": row["dataset"], "plan": row["plan"],
            "n": len(req), "pred": pred, "meas": meas, "err_pct": err,
            "dropped": res.metrics.num_dropped, "preemptions": res.metrics.preemptions,
            "tpot_per_request_ms": res.metrics.tpot_ms.mean}


def _mape(rows: list[dict], k: str) -> float:
    return float(np.mean([abs(r["err_pct"][k]) for r in rows]))


def _plan_means(rows: list[dict], which: str) -> dict[str, tuple[float, float]]:
    """Request-weighted mean E2E and TPOT of each plan (DP replicas pooled)."""
    out: dict[str, tuple[float, float]] = {}
    for plan in sorted({r["plan"] for r in rows}):
        sel = [r for r in rows if r["plan"] == plan]
        w = np.array([r["n"] for r in sel], dtype=float)
        e2e = float(np.average([r[which]["e2e_s"] for r in sel], weights=w))
        tpot = float(np.average([r[which]["tpot_ms"] for r in sel], weights=w))
        out[plan] = (e2e, tpot)
    return out


def best_plans(results: list[dict]) -> dict[str, dict]:
    out = {}
    for ds in sorted({r["dataset"] for r in results}):
        rows = [r for r in results if r["dataset"] == ds]
        pm, mm = _plan_means(rows, "pred"), _plan_means(rows, "meas")
        pb, mb = min(pm, key=lambda p: pm[p]), min(mm, key=lambda p: mm[p])
        out[ds] = {"predicted": pb, "measured": mb, "match": pb == mb,
                   "pred_e2e_s": {p: round(v[0], 3) for p, v in pm.items()},
                   "meas_e2e_s": {p: round(v[0], 3) for p, v in mm.items()}}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"), help="path of ../shared")
    ap.add_argument("--rows", default=None, help="only rows whose case_id matches this regex")
    ap.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    args = ap.parse_args(argv)
    base = Path(args.shared) / "validation" / "apex-h100x8"
    gt = base / "ground_truth.csv"
    if not gt.is_file():
        print(f"validation data not found at {gt}; nothing to do", file=sys.stderr)
        return 0
    with gt.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["engine"] == "vllm"]
    if args.rows:
        rows = [r for r in rows if re.search(args.rows, r["case_id"])]
    model, cluster = load_model("llama-3.1-70b"), load_cluster("h100-sxm-1x8")
    t0 = time.perf_counter()
    results = [simulate_row(r, base, model, cluster) for r in rows]
    wall = time.perf_counter() - t0

    by_plan = {p: {k: _mape([r for r in results if r["plan"] == p], k) for k in METRICS}
               for p in sorted({r["plan"] for r in results})}
    overall = {k: _mape(results, k) for k in METRICS}
    best = best_plans(results)
    if not args.json_only:
        con = console()
        trows = []
        for r in results:
            p, m, e = r["pred"], r["meas"], r["err_pct"]
            trows.append([r["case"].replace("vllm-llama_", ""), r["n"],
                          f"{p['ttft_ms']:.1f}", f"{m['ttft_ms']:.1f}", f"{e['ttft_ms']:+.1f}",
                          f"{p['tpot_ms']:.2f}", f"{m['tpot_ms']:.2f}", f"{e['tpot_ms']:+.1f}",
                          f"{p['e2e_s']:.3f}", f"{m['e2e_s']:.3f}", f"{e['e2e_s']:+.1f}"])
        con.print(table("predicted vs measured (errors in %)",
                        ["case", "n", "TTFT ms", "meas", "err", "TPOT ms", "meas", "err",
                         "E2E s", "meas", "err"], trows))
        prow = [[p, f"{v['ttft_ms']:.1f}", f"{v['tpot_ms']:.1f}", f"{v['e2e_s']:.1f}"]
                for p, v in by_plan.items()]
        prow.append(["overall", *(f"{overall[k]:.1f}" for k in METRICS)])
        prow.append(["target", *(f"<= {TARGETS[k]:.0f}" for k in METRICS)])
        con.print(table("MAPE (%)", ["plan", "TTFT", "TPOT", "E2E"], prow))
        brow = [[ds, b["predicted"], b["measured"], "yes" if b["match"] else "NO"]
                for ds, b in best.items()]
        con.print(table("best plan per dataset (lowest mean E2E)",
                        ["dataset", "predicted", "measured", "match"], brow))
        con.print(f"{len(results)} rows simulated in {wall:.1f} s")
    print(json.dumps({"rows": len(results), "mape_pct": {k: round(v, 2) for k, v in overall.items()},
                      "mape_by_plan_pct": {p: {k: round(x, 2) for k, x in v.items()}
                                           for p, v in by_plan.items()},
                      "best_plan_match": {ds: b["match"] for ds, b in best.items()},
                      "targets_met": {k: overall[k] <= TARGETS[k] for k in METRICS},
                      "wall_s": round(wall, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
