#!/usr/bin/env python
"""Benchmark `apex-opt solve` as a user runs it: the CLI in a subprocess (start-up, search,
simulation, baselines, launch commands and the tables it prints all included).

Cases (targets on 2 cores): llama-3.1-70b on h100-sxm-1x8 with the creation trace
(../shared/validation; a synthetic stand-in when absent) <= 5 s; llama-3.1-405b on h100-sxm-4x8
and kimi-k2 on h100-sxm-16x8 with 1,000 synthetic requests <= 15 s / <= 30 s; the 70B case with
--exhaustive <= 120 s; llama-3.1-70b on h100-sxm-1x8 with the bundled workload (500 requests at
3 req/s) and --objective throughput <= 20 s (a rate search per plan: every probe is a simulation
of the whole trace at another rate; 13 plans x 9 probes took 58 s before plans bounded below the
best one stopped searching; the 4 plans searched to the end -- the chosen one and the baselines
the answer is compared with -- take ~9 s of one core). Peak RSS of any process <= 1 GiB (the largest of any
child process so far: cases run in order). Reports wall time, CPU time (user + sys
of the CLI and its worker processes), peak RSS, what the search simulated and the machine's
1-minute load average when the case started (other work on the 2 cores stretches wall time, not
CPU time).

Python bytecode: a user's second and later runs import apex-opt from cached bytecode (Python
writes __pycache__ on first import). Where the environment forbids that (PYTHONDONTWRITEBYTECODE,
as on our CI machines) every run would recompile the package (~0.4 s), so by default the CLI runs
with the bytecode cache in a temporary PYTHONPYCACHEPREFIX, written by one untimed warm-up
(`apex-opt solve --help`, which imports every module solve uses); nothing is written into the
checkout. ``--cold`` keeps the environment as it is (the first run after an install).

    python scripts/bench_solve.py [--cases 70b,405b,kimi,70b-exhaustive,70b-throughput] [--tables] [--cold]

Prints a table and one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO.parent / "shared" / "validation" / "apex-h100x8" / "traces" / \
    "vllm-llama_creation_05_validation_8TP.jsonl"
SYNTH = """name: bench-{n}
num_requests: {n}
seed: 0
arrival: {{process: poisson, rate: {rate}}}
prompt_len: {{dist: lognormal, mean: 1000, cv: 0.8, min: 16, max: 8192}}
output_len: {{dist: lognormal, mean: 250, cv: 0.8, min: 1, max: 2048}}
"""
TARGET_S = {"70b": 5.0, "405b": 15.0, "kimi": 30.0, "70b-exhaustive": 120.0,
            "70b-throughput": 20.0}
RSS_TARGET_MIB = 1024.0


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("apex-opt")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "apex_opt.cli"]


def case_args(name: str, tmp: Path) -> tuple[list[str], str]:
    def synth(n: int, rate: float) -> list[str]:
        f = tmp / f"wl-{n}-{rate}.yaml"
        f.write_text(SYNTH.format(n=n, rate=rate))
        return ["--workload", str(f)]

    trace = (["--trace", str(TRACE)], "creation trace") if TRACE.is_file() else \
        (synth(512, 0.5), "synthetic stand-in (trace absent)")
    if name == "70b":
        return ["--model", "llama-3.1-70b", "--cluster", "h100-sxm-1x8", *trace[0]], trace[1]
    if name == "70b-exhaustive":
        return ["--model", "llama-3.1-70b", "--cluster", "h100-sxm-1x8", *trace[0],
                "--exhaustive"], trace[1]
    if name == "70b-throughput":
        return ["--model", "llama-3.1-70b", "--cluster", "h100-sxm-1x8", "--objective",
                "throughput"], "bundled workload (500 @ 3 req/s)"
    if name == "405b":
        return ["--model", "llama-3.1-405b", "--cluster", "h100-sxm-4x8", *synth(1000, 4.0)], \
            "1000 synthetic @ 4 req/s"
    if name == "kimi":
        return ["--model", "kimi-k2", "--cluster", "h100-sxm-16x8", *synth(1000, 8.0)], \
            "1000 synthetic @ 8 req/s"
    raise SystemExit(f"unknown case {name}")


def child_env(tmp: Path, cold: bool) -> dict:
    """The CLI's environment: as given (``cold``), or with a bytecode cache under ``tmp``
    warmed by one untimed import of everything `solve` uses."""
    env = {**os.environ, "COLUMNS": "160"}
    if cold:
        return env
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    subprocess.run(_cli() + ["solve", "--help"], capture_output=True, cwd=REPO, env=env, check=True)
    return env


def run_case(name: str, tmp: Path, as_json: bool, env: dict) -> dict:
    args, what = case_args(name, tmp)
    cmd = _cli() + ["solve", *args] + (["--json"] if as_json else [])
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row = {"case": name, "workload": what, "exit": proc.returncode, "wall_s": round(wall, 2),
           "cpu_s": round(cpu, 2), "target_s": TARGET_S[name], "load_avg_1m": round(load, 2),
           "peak_rss_mib": round(after.ru_maxrss / 1024.0, 1), "command": " ".join(cmd[1:])}
    if proc.returncode != 0:
        row["error"] = (proc.stderr or proc.stdout)[-400:]
        return row
    if as_json:
        d = json.loads(proc.stdout)
        s = d["solver"]
        row.update(plans_feasible=s["plans_feasible"], plans_simulated=s["plans_simulated"],
                   simulator_runs=s.get("simulator_runs"),
                   optimality_gap=s.get("optimality_gap"), best=d["plans"][0]["label"],
                   best_value=d["plans"][0]["objective_value"], solver_wall_s=s["wall_s"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "),
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="70b,405b,kimi,70b-exhaustive,70b-throughput",
                    help="comma-separated cases, e.g. --cases 70b,kimi (default: all five)")
    ap.add_argument("--tables", action="store_true",
                    help="time the table output instead of --json (no plan counts then)")
    ap.add_argument("--cold", action="store_true",
                    help="keep the environment's bytecode setting (under PYTHONDONTWRITEBYTECODE "
                         "every run recompiles the package, as a first run after install does)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-solve-"))
    env = child_env(tmp, a.cold)
    bytecode = "as the environment sets it" if a.cold else "cached (warm-up import, temporary PYTHONPYCACHEPREFIX)"
    print(f"bytecode: {bytecode}", flush=True)
    rows = []
    print(f"{'case':15s} {'wall s':>7s} {'cpu s':>7s} {'target':>7s} {'load':>5s} {'RSS MiB':>8s} "
          f"{'simulated':>12s} {'runs':>5s} {'gap':>5s}  best", flush=True)
    for name in a.cases.split(","):
        r = run_case(name, tmp, not a.tables, env)
        rows.append(r)
        sim = f"{r.get('plans_simulated', '-')}/{r.get('plans_feasible', '-')}"
        print(f"{name:15s} {r['wall_s']:7.2f} {r['cpu_s']:7.2f} {r['target_s']:7.0f} "
              f"{r['load_avg_1m']:5.1f} {r['peak_rss_mib']:8.0f} {sim:>12s} "
              f"{str(r.get('simulator_runs', '-')):>5s} {str(r.get('optimality_gap', '-')):>5s}  "
              f"{r.get('best', r.get('error', ''))}", flush=True)
    ok = all(r["exit"] == 0 and r["wall_s"] <= r["target_s"] and r["peak_rss_mib"] <= RSS_TARGET_MIB
             for r in rows)
    print(json.dumps({"bench": "solve", "cpus": os.cpu_count(), "all_within_targets": ok,
                      "bytecode": "cold" if a.cold else "cached", "cases": rows}))


if __name__ == "__main__":
    main()
