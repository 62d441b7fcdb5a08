#!/usr/bin/env python
"""Validate power, energy per token and throughput against measured vLLM runs on H100
(../shared/validation/energy/energy_runs.csv: ML.ENERGY benchmark v3 with vLLM 0.11.1 and
leaderboard v2 with vLLM 0.5.4; GPU energy from NVML).

Each row is replayed the way it was run: a closed batch (all requests submitted at t = 0, the
engine capped at the row's ``max_num_seqs``), the engine's settings (v3: ``vllm@0.11.1`` -- V1 with
chunked prefill, max-num-batched-tokens 8192, max-model-len from the notes and the configs'
``async-scheduling: true``; v2: ``vllm-0.6@0.5.4``, our V0 engine model, chunked prefill off,
max-model-len 4096, gpu-memory-utilization 0.95 and the API server in the engine's process --
``--disable-frontend-multiprocessing``, see ``EngineSpec.frontend_in_process``), the requests' sampling filter (top_p 0.95 on every request of both
benchmarks except v2's greedy code task, top_k from the checkpoint's generation_config on v3 -- vLLM >= 0.11.1 runs a
sort-based top-k/top-p filter on the GPU every step, see ``EngineSpec.sampler_top_p_bytes_per_logit``),
the row's TP / PP and dtype, and the
steady-state window of :class:`apex_opt.sim.metrics.EnergyReport` (from when max_num_seqs requests
have their first token until N - max_num_seqs have finished -- ML.ENERGY's own window).

Workload assumptions (documented, task-based, the same for every row of a task -- nothing is fitted
per row):

* output lengths: exponentially distributed (seed 0) and cut at the task's max_tokens, which every
  request sends (a request ends there). The exponential's scale is chosen so that the cut lengths
  average the row's measured mean output length (notes), which already includes those cuts; that
  also takes out the draws' own sampling error (the 198 GPQA draws at seed 0 averaged 11-13 %
  above the mean). vLLM refuses a request whose prompt + max_tokens exceeds max_model_len (0.11:
  "'max_tokens' or 'max_completion_tokens' is too large", entrypoints/openai/serving_engine.py);
  no replayed prompt + max_tokens exceeds its row's max_model_len, so none is refused;
* input lengths are not published. Per task: LMArena chat 350 tokens -- ML.ENERGY turns every turn
  of a conversation into a request whose prompt is the whole history so far (user prompts AND
  earlier responses; ml-energy/benchmark mlenergy/llm/datasets.py), and LMSYS-Chat-1M averages
  69.5 tokens per prompt, 214.5 per response, 2.0 turns per conversation (Zheng et al. 2023,
  table 1): with geometric turn counts of that mean the average request carries
  (284 E[T(T+1)/2] - 214.5 E[T]) / E[T] ~ 350 tokens; ShareGPT chat (v2) 250 tokens (first-turn
  ShareGPT prompts); GPQA 300 tokens (question + four options + instruction, as the benchmark
  renders it); EvalPlus code (v2) 150 tokens (HumanEval+/MBPP+ function stubs); lognormal with
  sigma 0.5 around that mean, seed 1;
* requests: v3 = unique prompts x repeats from the row's text; v2 = ShareGPT 500 x 2 (chat) and
  EvalPlus 164 x 10 (code), at least 3 x max_num_seqs so a steady state exists.

Models not bundled are built from their published Hugging Face config numbers (below).

Prints a per-row table (measured, predicted, error %), MAPE per group (source x model) and overall
for GPU power (sum over GPUs), J per output token and output tokens/s, then ONE JSON line.

Usage: python scripts/validate_energy.py [--shared ../shared] [--rows REGEX] [--source mlev3]
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
from apex_opt.sim.workload import Requests  # noqa: E402
from apex_opt.specs.engine import load_engine  # noqa: E402
from apex_opt.specs.model import ModelSpec, load_model  # noqa: E402
from apex_opt.specs.plan import Plan, ReplicaGroup  # noqa: E402

METRICS = ("power_w", "j_per_tok", "tok_s")
TARGET_MAPE = 10.0


def _llama(hidden, layers, heads, kv, inter, vocab, max_pos, head_dim=None, model_type="llama",
           tie=False):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": model_type, "hidden_size": hidden,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
           "intermediate_size": inter, "vocab_size": vocab, "max_position_embeddings": max_pos,
           "tie_word_embeddings": tie, "torch_dtype": "bfloat16"}
    if head_dim:
        cfg["head_dim"] = head_dim
    return cfg


def _starcoder2(hidden, layers, heads, kv, inter, tie):
    return {"architectures": ["Starcoder2ForCausalLM"], "model_type": "starcoder2",
            "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "intermediate_size": inter, "vocab_size": 49152,
            "max_position_embeddings": 16384, "sliding_window": 4096, "use_bias": True,
            "hidden_act": "gelu_pytorch_tanh", "tie_word_embeddings": tie, "torch_dtype": "bfloat16"}


#: Published config.json numbers of the models the package does not bundle (HF model cards).
#: Gemma 2 / Gemma 3 carry their sliding windows (4,096 / 1,024 tokens) as their config.json
#: does; the loader derives the layer layout (every other layer / five of six) as transformers does.
PUBLISHED = {
    "Qwen/Qwen3-8B": _llama(4096, 36, 32, 8, 12288, 151936, 40960, 128, "qwen3"),
    "Qwen/Qwen3-14B": _llama(5120, 40, 40, 8, 17408, 151936, 40960, 128, "qwen3"),
    "google/gemma-3-12b-it": {**_llama(3840, 48, 16, 8, 15360, 262208, 131072, 256, "gemma3_text", True),
                              "sliding_window": 1024, "sliding_window_pattern": 6},
    "google/gemma-3-27b-it": {**_llama(5376, 62, 32, 16, 21504, 262208, 131072, 128, "gemma3_text", True),
                              "sliding_window": 1024, "sliding_window_pattern": 6},
    "mistralai/Mistral-7B-Instruct-v0.3": _llama(4096, 32, 32, 8, 14336, 32768, 32768, 128, "mistral"),
    "mistralai/Mistral-Nemo-Instruct-2407": _llama(5120, 40, 32, 8, 14336, 131072, 131072, 128, "mistral"),
    "codellama/CodeLlama-7b-hf": _llama(4096, 32, 32, 32, 11008, 32016, 16384),
    "codellama/CodeLlama-13b-hf": _llama(5120, 40, 40, 40, 13824, 32016, 16384),
    "codellama/CodeLlama-34b-hf": _llama(8192, 48, 64, 8, 22016, 32000, 16384),
    "codellama/CodeLlama-70b-hf": _llama(8192, 80, 64, 8, 28672, 32016, 4096),
    "google/gemma-2-2b-it": {**_llama(2304, 26, 8, 4, 9216, 256000, 8192, 256, "gemma2", True),
                             "sliding_window": 4096},
    "google/gemma-2-9b-it": {**_llama(3584, 42, 16, 8, 14336, 256000, 8192, 256, "gemma2", True),
                             "sliding_window": 4096},
    "google/gemma-2-27b-it": {**_llama(4608, 46, 32, 16, 36864, 256000, 8192, 128, "gemma2", True),
                              "sliding_window": 4096},
    "microsoft/Phi-3-mini-4k-instruct": _llama(3072, 32, 32, 32, 8192, 32064, 4096, None, "phi3"),
    "microsoft/Phi-3-medium-4k-instruct": _llama(5120, 40, 40, 10, 17920, 32064, 4096, None, "phi3"),
    "google/codegemma-7b": _llama(3072, 28, 16, 16, 24576, 256000, 8192, 256, "gemma", True),
    "google/codegemma-1.1-2b": _llama(2048, 18, 8, 1, 16384, 256000, 8192, 256, "gemma", True),
    # StarCoder2 (arXiv 2402.19173; Starcoder2ForCausalLM: ungated gelu MLP c_fc -> c_proj, biases,
    # GQA, a 4,096-token window longer than these code prompts): 3.03 / 7.17 / 15.96 B parameters,
    # i.e. the 3B and 7B tie the LM head (Starcoder2Config's default) and the 15B does not
    "bigcode/starcoder2-3b": _starcoder2(3072, 30, 24, 2, 12288, tie=True),
    "bigcode/starcoder2-7b": _starcoder2(4608, 32, 36, 4, 18432, tie=True),
    "bigcode/starcoder2-15b": _starcoder2(6144, 40, 48, 4, 24576, tie=False),
    # Phi-3-small (Phi3SmallForCausalLM, 7.39 B): gated gegelu MLP of ff_intermediate_size, GQA 32/8,
    # tied embeddings; block-sparse attention on every other layer, planned dense (the chat
    # contexts here, ~250 + ~300 tokens, sit inside its 16 local blocks of 64 tokens anyway)
    "microsoft/Phi-3-small-8k-instruct": {
        "architectures": ["Phi3SmallForCausalLM"], "model_type": "phi3small", "hidden_size": 4096,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "ff_intermediate_size": 14336, "vocab_size": 100352, "max_position_embeddings": 8192,
        "blocksparse_block_size": 64, "blocksparse_num_local_blocks": 16, "blocksparse_vert_stride": 8,
        "dense_attention_every_n_layers": 2, "tie_word_embeddings": True, "torch_dtype": "bfloat16"},
}
BUNDLED = {
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Llama-3.1-70B-Instruct": "llama-3.1-70b",
    "meta-llama/Meta-Llama-3.1-70B-Instruct": "llama-3.1-70b",
    "meta-llama/Llama-3.3-70B-Instruct": "llama-3.1-70b",  # same architecture as 3.1 70B
    "meta-llama/Llama-3.1-405B-Instruct-FP8": "llama-3.1-405b",
    "meta-llama/Meta-Llama-3.1-405B-Instruct": "llama-3.1-405b",
    "Qwen/Qwen3-32B": "qwen3-32b",
    "mistralai/Mistral-Large-Instruct-2407": "mistral-large-2407",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b",
    "mistralai/Mixtral-8x22B-Instruct-v0.1": "mixtral-8x22b",
}
#: mean prompt tokens per task (see the module docstring)
INPUT_LEN = {"lm-arena-chat": 350, "gpqa": 300, "chat": 250, "code": 150}
MAX_TOKENS = {"lm-arena-chat": 4096, "gpqa": 32768, "chat": 1024, "code": 512}
#: top_p every request sends. v3: ml-energy/benchmark mlenergy/llm/benchmark.py (Args.top_p = 0.95,
#: temperature = 0.8, sent as the request's extra_body); v2 chat: benchmark/llm_text_generation/chat/
#: scripts/benchmark_client.py (payload temperature 0.8, top_p 0.95); v2 code: greedy
#: (benchmark/llm_text_generation/code/scripts/benchmark_client.py, temperature 0.0, "greedy
#: decoding following EvalPlus") -- no filter.
TOP_P = {"lm-arena-chat": 0.95, "gpqa": 0.95, "chat": 0.95, "code": 1.0}
#: top_k the v3 requests get from the model's generation_config.json (vLLM >= 0.11 serves with
#: --generation-config auto: fields the request leaves unset take the checkpoint's defaults; v3
#: sends no top_k). Qwen3-8B/14B/32B: top_k 20, Gemma 3 12B/27B it: top_k 64; Llama 3.1/3.3: none.
#: vLLM 0.5.4 (v2) had no generation-config defaults.
GEN_CONFIG_TOP_K = {"Qwen/Qwen3-8B": 20, "Qwen/Qwen3-14B": 20, "Qwen/Qwen3-32B": 20,
                    "google/gemma-3-12b-it": 64, "google/gemma-3-27b-it": 64}


def model_for(hf: str) -> ModelSpec | None:
    if hf in BUNDLED:
        return load_model(BUNDLED[hf])
    if hf in PUBLISHED:
        return ModelSpec.from_hf_config(PUBLISHED[hf], name=hf.split("/")[-1].lower(), source=hf)
    return None


def _num(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def row_setup(row: dict) -> dict:
    """Everything the replay needs, parsed from the row."""
    v3 = row["case_id"].startswith("mlev3")
    task = row["workload"].split(":")[0].strip()
    mns = int(row["batch_or_concurrency"].split("=")[1])
    out_mean = _num(r"avg_output_len=([\d.]+)", row["workload"])
    if v3:
        m = re.search(r"(\d+) unique prompts x (\d+) repeats", row["workload"])
        n = int(m.group(1)) * int(m.group(2))
    else:
        n = 500 * 2 if task == "chat" else 164 * 10
    n = max(n, 3 * mns)
    pp = int(_num(r"-pp(\d+)", row["case_id"]) or 1)
    return dict(v3=v3, task=task, mns=mns, out_mean=out_mean, n=n, tp=int(row["tp"]), pp=pp,
                fp8="fp8" in row["weight_dtype"].lower(),
                max_model_len=int(_num(r"max-model-len: (\d+)", row["notes"]) or 0) or None,
                top_k=GEN_CONFIG_TOP_K.get(row["model_hf"], 0) if v3 else 0)


def requests_for(s: dict) -> Requests:
    n = s["n"]
    rng_out = np.random.default_rng(0)
    rng_in = np.random.default_rng(1)
    mu = INPUT_LEN[s["task"]]
    sigma = 0.5
    prompt = np.clip(np.rint(rng_in.lognormal(np.log(mu) - sigma ** 2 / 2, sigma, n)), 8, 8192).astype(np.int64)
    out = cut_exponential(rng_out.standard_exponential(n), s["out_mean"], MAX_TOKENS[s["task"]])
    return Requests(arrival_s=np.zeros(n), prompt_tokens=prompt, output_tokens=out,
                    source=f"closed batch {s['task']}", top_p=TOP_P[s["task"]], top_k=s["top_k"])


def cut_exponential(draws: np.ndarray, mean: float, max_tokens: int) -> np.ndarray:
    """Output lengths ``scale x draws`` (standard exponential draws) cut at ``max_tokens``, with
    the scale that makes the cut lengths average ``mean`` (bisection: the cut mean grows with the
    scale; it also takes out the draws' own sampling error). The scale stays ``mean`` when the cut
    cannot reach it."""
    cap = float(max_tokens)

    def lengths(scale: float) -> np.ndarray:
        return np.clip(np.rint(scale * draws), 1, cap)

    lo, hi = 0.0, float(mean)
    while lengths(hi).mean() < mean and hi < 64 * mean:
        hi *= 2.0
    if lengths(hi).mean() < mean:  # the cuts cannot average the mean: keep the scale
        return lengths(float(mean)).astype(np.int64)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if lengths(mid).mean() < mean else (lo, mid)
    return lengths(hi).astype(np.int64)


def simulate_row(row: dict) -> dict | None:
    model = model_for(row["model_hf"])
    if model is None:
        return None
    s = row_setup(row)
    gpus = s["tp"] * s["pp"]
    cluster = load_cluster("h100-sxm-1x8" if gpus <= 8 else "h100-sxm-2x8")
    if s["v3"]:
        # vLLM 0.11.1 as ML.ENERGY ran it: the release's own defaults, plus the
        # `async-scheduling: true` of every v3 config (ml-energy/benchmark configs/vllm/.../
        # monolithic.config.yaml), which 0.11 leaves off by default
        engine = load_engine("vllm@0.11.1").model_copy(update={"async_scheduling": True})
        g = ReplicaGroup(tp=s["tp"], pp=s["pp"], replicas=1, max_num_seqs=s["mns"],
                         max_num_batched_tokens=8192, chunked_prefill=True,
                         max_model_len=s["max_model_len"],
                         weight_dtype="fp8" if s["fp8"] else "bf16")
    else:
        # the v2 server flags (ml-energy/leaderboard-v2 benchmark/llm_text_generation/chat/scripts/
        # benchmark_one_datapoint.py): --enable-chunked-prefill False --max-model-len 4096
        # --gpu-memory-utilization 0.95 --disable-frontend-multiprocessing (the API server runs
        # in the engine's process)
        engine = load_engine("vllm-0.6@0.5.4").model_copy(update={"frontend_in_process": True})
        g = ReplicaGroup(tp=s["tp"], pp=s["pp"], replicas=1, max_num_seqs=s["mns"],
                         chunked_prefill=False, max_model_len=4096, gpu_memory_utilization=0.95,
                         weight_dtype="fp8" if s["fp8"] else "bf16")
    plan = Plan(groups=(g,), router="round_robin")
    t = time.perf_counter()
    res = simulate(model, cluster, plan, requests_for(s), engine=engine)
    win = res.energy.steady_state or res.energy.whole_run
    pred = {"power_w": win.gpu_power_w, "j_per_tok": win.gpu_energy_j_per_token,
            "tok_s": win.throughput_tokens_per_s}
    meas = {"power_w": float(row["avg_power_w"]), "j_per_tok": float(row["energy_j_per_token"]),
            "tok_s": float(row["throughput_tok_s"])}
    err = {k: (pred[k] - meas[k]) / meas[k] * 100 if pred[k] else float("nan") for k in METRICS}
    src = "mlev3" if s["v3"] else "mlev2"
    return {"case": row["case_id"], "source": src, "group": f"{src} {row['model_hf'].split('/')[-1]} tp{s['tp']}"
            + (f"pp{s['pp']}" if s["pp"] > 1 else "") + (" " + s["task"] if s["task"] == "gpqa" else ""),
            "mns": s["mns"], "gpus": gpus, "pred": pred, "meas": meas, "err_pct": err,
            "window": win.window, "sim_s": time.perf_counter() - t,
            # diagnostic (not scored): mean engine step = running batch / output tok/s, measured
            # (vLLM's num_requests_running from the notes) vs simulated (same window)
            "step_ms": (_measured_step_ms(row), _simulated_step_ms(res, win))}


def _measured_step_ms(row: dict) -> float | None:
    """Mean engine step of the measured run: average running batch / output tokens per second."""
    run = _num(r"avg running batch[^=]*=([\d.]+)", row["notes"])
    tps = float(row["throughput_tok_s"])
    return run / tps * 1e3 if run and tps > 0 else None


def _simulated_step_ms(res, win) -> float | None:
    """Mean engine step of the simulation over the same window: time-averaged number of requests
    between their first token and their finish, over output tokens per second."""
    t = res.per_request()
    if not t or not win.throughput_tokens_per_s:
        return None
    served = t["dropped"] == 0
    f, e = t["first_token_s"][served], t["finish_s"][served]
    overlap = np.clip(np.minimum(e, win.end_s) - np.maximum(f, win.start_s), 0.0, None)
    running = float(overlap.sum()) / win.duration_s
    return running / win.throughput_tokens_per_s * 1e3


def _step_excess(rows: list[dict]) -> str:
    """Diagnostic: measured minus simulated mean engine step (ms) of the group's row with the
    smallest max_num_seqs -- there the fixed per-step part dominates the step (host work per step,
    what the ML.ENERGY v2 multi-GPU rows miss: ~5 / 30 / 70 ms at TP 2 / 4 / 8)."""
    r = min(rows, key=lambda x: x["mns"])
    meas, sim = r["step_ms"]
    return "-" if meas is None or sim is None else f"{meas - sim:+.1f}"


def _mape(rows: list[dict], k: str) -> float:
    v = [abs(r["err_pct"][k]) for r in rows if np.isfinite(r["err_pct"][k])]
    return float(np.mean(v)) if v else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--rows", default=None, help="regex on case_id")
    ap.add_argument("--source", choices=["mlev2", "mlev3"], default=None)
    ap.add_argument("--json-only", action="store_true")
    a = ap.parse_args()
    path = Path(a.shared) / "validation" / "energy" / "energy_runs.csv"
    if not path.exists():
        print(f"no {path}: nothing to validate", file=sys.stderr)
        return 1
    rows = list(csv.DictReader(path.open()))
    if a.rows:
        rows = [r for r in rows if re.search(a.rows, r["case_id"])]
    if a.source:
        rows = [r for r in rows if r["case_id"].startswith(a.source)]
    t0 = time.perf_counter()
    done, skipped = [], []
    failed: list[str] = []
    for r in rows:
        try:
            out = simulate_row(r)
        except Exception as exc:  # noqa: BLE001 -- one broken row must not hide the others
            failed.append(f"{r['case_id']}: {str(exc).splitlines()[0][:160]}")
            continue
        (done if out is not None else skipped).append(out or r["model_hf"])
    con = console()
    if not a.json_only:
        body = []
        for r in done:
            p, m, e = r["pred"], r["meas"], r["err_pct"]
            body.append([r["case"][:58], r["mns"],
                         f"{m['power_w']:.0f}", f"{p['power_w']:.0f}", f"{e['power_w']:+.1f}",
                         f"{m['j_per_tok']:.3f}", f"{p['j_per_tok']:.3f}", f"{e['j_per_tok']:+.1f}",
                         f"{m['tok_s']:.0f}", f"{p['tok_s']:.0f}", f"{e['tok_s']:+.1f}",
                         "/".join("-" if x is None else f"{x:.1f}" for x in r["step_ms"])])
        con.print(table("per row (power = sum over GPUs, steady-state window)",
                        ["case", "mns", "W meas", "W sim", "err %", "J/tok meas", "J/tok sim", "err %",
                         "tok/s meas", "tok/s sim", "err %", "step ms meas/sim"], body))
        groups: dict[str, list] = {}
        for r in done:
            groups.setdefault(r["group"], []).append(r)
        gt = [[g, len(v)] + [f"{_mape(v, k):.1f}" for k in METRICS] + [_step_excess(v)]
              for g, v in groups.items()]
        for src in ("mlev3", "mlev2"):
            v = [r for r in done if r["source"] == src]
            if v:
                gt.append([f"ALL {src}", len(v)] + [f"{_mape(v, k):.1f}" for k in METRICS] + [""])
        con.print(table("MAPE % per group (step excess: measured - simulated mean step at the "
                        "group's smallest max_num_seqs, ms)",
                        ["group", "rows", "power", "J/token", "tok/s", "step excess"], gt))
        if skipped:
            con.print(f"skipped (no architecture numbers): {', '.join(sorted(set(skipped)))}")
        for f in failed:
            con.print(f"FAILED {f}")
    summary = {"validation": "energy", "rows": len(done), "skipped_rows": len(skipped),
               "failed_rows": len(failed),
               "target_mape_pct": TARGET_MAPE, "wall_s": round(time.perf_counter() - t0, 1)}
    for src in ("mlev3", "mlev2"):
        v = [r for r in done if r["source"] == src]
        if v:
            summary[src] = {"rows": len(v), **{f"mape_{k}_pct": round(_mape(v, k), 2) for k in METRICS}}
    summary["all"] = {f"mape_{k}_pct": round(_mape(done, k), 2) for k in METRICS}
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
