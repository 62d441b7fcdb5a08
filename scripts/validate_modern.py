#!/usr/bin/env python
"""Validate the simulator against real vLLM V1 / SGLang 0.5 runs (../shared/validation/modern).

Every row of ``ground_truth.csv`` is replayed with its own engine profile (``vllm`` / ``sglang`` at
the row's release, from apex_opt/data/engines; a blank release is the one out on the day the
notes say the row was measured, see RELEASES), model (bundled name or the row's config.json),
cluster, parallel shape, weight / KV dtype, engine limits (blank = the engine's default), prefix
caching (blank = the engine's default) and workload:

* ``concurrency`` rows: a closed loop of ``concurrency`` clients, each sending a request of ``isl``
  tokens forcing ``osl`` output tokens as soon as its previous one finished, ``n_requests`` measured
  (the README's max(10 x concurrency, 100)) after ``--warmup`` x concurrency warm-up requests that
  the means leave out. The README does not say whether the cold start (all clients arriving
  together) is in the source's averages; NVIDIA's sweep scripts run genai-perf with
  ``--request-count 10c --warmup-request-count 2c``, and the measured TTFTs at high concurrency
  are steady-state values (a cold-start wave of c prefills would dominate them), so the default
  leaves 2 requests per client out; ``--warmup 0`` replays the README literally;
* ``trace`` rows: the Mooncake-format trace replayed as is (arrivals, lengths and its hash_ids, so
  a prefix cache can reuse repeated prompts);
* ``poisson`` / ``constant`` rows (defined by the README, none in the set today): open loop at
  ``rate_req_s``.

Parallel shape: ``tp`` / ``pp`` / ``ep`` map to the replica's; ``dp`` is aiconfigurator's attention
data-parallel size. For a dense model that is plain data parallelism (``dp`` replicas behind the
router); for an MLA/MoE model under SGLang (DP-attention) the plan has no separate attention-DP
degree, so it is also replayed as ``dp`` replicas, which the table marks (every row of today's set
has dp = 1).

Compared means: TTFT, TPOT (per-request mean inter-token time; for the inference_sim rows the
README derives it as (E2E - TTFT) / (osl - 1), which equals that mean when every request generates
``osl`` tokens, as in the replay), E2E and, where given, output throughput. Prints a per-row table,
per-group (engine / model / GPU / weight dtype) MAPE and signed bias, and ONE JSON line last.
Nothing is fitted to these rows.

Usage: python scripts/validate_modern.py [--shared ../shared] [--rows REGEX] [--jobs N]
                                         [--json-only] [--out FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METRICS = ("ttft_ms", "tpot_ms", "e2e_s", "tput_tok_s")
LABELS = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "e2e_s": "E2E", "tput_tok_s": "tok/s"}
#: issue 8 "done when": per group, TPOT and E2E MAPE <= 8 %, TTFT <= 15 %
TARGETS = {"ttft_ms": 15.0, "tpot_ms": 8.0, "e2e_s": 8.0}
MEASURED = {"ttft_ms": "ttft_mean_ms", "tpot_ms": "tpot_mean_ms", "e2e_s": "e2e_mean_s",
            "tput_tok_s": "throughput_tok_s"}


def _f(s: str) -> float | None:
    s = (s or "").strip()
    return float(s) if s else None


def _i(s: str) -> int | None:
    x = _f(s)
    return None if x is None else int(round(x))


def _bool(s: str) -> bool | None:
    s = (s or "").strip().lower()
    if not s:
        return None
    return s.split()[0] in ("true", "1", "yes", "on")


def resolve_engine(engine: str, version: str):
    """(EngineSpec, note): the profile of ``engine`` whose version range holds ``version``; the
    engine's current profile when the version is blank or no profile claims it."""
    from apex_opt.errors import InputError
    from apex_opt.specs import engine as es

    version = (version or "").strip()
    note = ""
    if version:
        try:
            return es.load_engine(f"{engine}@{version}"), note
        except (InputError, ValueError, FileNotFoundError) as exc:
            all_engines = getattr(es, "all_engines", None)
            if all_engines is not None:
                try:
                    from packaging.specifiers import SpecifierSet
                    from packaging.version import Version

                    for e in all_engines():
                        if (getattr(e, "engine", None) == engine
                                and Version(version) in SpecifierSet(e.versions)):
                            return es.load_engine(f"{e.name}@{version}"), note
                except Exception:  # noqa: BLE001 -- fall through to the plain profile
                    pass
            note = f"no profile for {engine} {version} ({str(exc)[:60]}); "
    try:
        return es.load_engine(engine), note
    except (InputError, ValueError, FileNotFoundError) as exc:
        raise RuntimeError(f"no engine profile for {engine!r}: {exc}") from None


#: Release dates of the engine versions a row's measurement date can resolve to (GitHub releases of
#: vllm-project/vllm: v0.10.0 2025-07-24, v0.11.0 2025-10-02, v0.11.1 2025-11-18). A row whose
#: engine version is blank but whose notes say when it was measured ("measured 2025-10-29": every
#: aiconfigurator Llama-3.1-70B H200 row) is replayed with the newest release out on that day --
#: the version a run that day would install -- instead of today's profile. Only a provenance
#: fact; nothing about the rows' numbers enters it.
RELEASES = {"vllm": (("0.10.0", "2025-07-24"), ("0.11.0", "2025-10-02"), ("0.11.1", "2025-11-18"))}


def row_version(row: dict) -> tuple[str, str]:
    """(engine version to replay, note): the recorded one, else the newest release (RELEASES) out
    on the row's measurement date, else blank (the engine's current profile)."""
    version = (row.get("engine_version") or "").strip()
    if version:
        return version, ""
    m = re.search(r"measured (\d{4}-\d{2}-\d{2})", row.get("notes", ""))
    out = [v for v, day in RELEASES.get(row["engine"].strip(), ()) if m and day <= m.group(1)]
    if not out:
        return "", ""
    return out[-1], f"version not recorded: {out[-1]}, the release out when measured ({m.group(1)}); "


#: aiconfigurator's generator rule for aggregated vLLM workers (ai-dynamo/aiconfigurator
#: src/aiconfigurator/generator/rule_plugin/vllm.rule @11324a6): ``agg_decode max_batch_size =
#: 512 if max_batch_size < 512``, ``agg max_num_tokens = max_batch_size + isl + 1500``, ``agg
#: max_seq_len = isl + osl + 1500``, rendered as --max-num-seqs / --max-num-batched-tokens /
#: --max-model-len (backend_config_mapping.yaml). Whether the silicon rows ran with these is not
#: recorded: ``--engine-flags aic-generator`` replays them so, the default keeps the README's
#: "blank = the version's default".
AIC_VLLM_MAX_BATCH = 512
AIC_VLLM_EXTRA_TOKENS = 1500


def aic_generator_limits(row: dict) -> dict:
    """Engine limits aiconfigurator's generator writes for an aggregated vLLM closed-loop row
    whose limits the source left blank ({} for any other row)."""
    if not (row.get("dataset", "").startswith("aiconfigurator") and row["engine"].strip() == "vllm"
            and row["workload_kind"].strip() == "concurrency"):
        return {}
    isl, osl = _i(row["isl"]), _i(row["osl"])
    return _where_blank(row, {"max_num_seqs": AIC_VLLM_MAX_BATCH,
                              "max_num_batched_tokens": AIC_VLLM_MAX_BATCH + isl
                              + AIC_VLLM_EXTRA_TOKENS,
                              "max_model_len": isl + osl + AIC_VLLM_EXTRA_TOKENS})


def _where_blank(row: dict, limits: dict) -> dict:
    """``limits`` less the ones the row records a value for (a recorded limit is what ran)."""
    return {k: v for k, v in limits.items() if not (row.get(k) or "").strip()}


AIC_SGLANG_MAX_BATCH = 512


def aic_generator_sglang(row: dict) -> dict:
    """What aiconfigurator's generator writes into an aggregated SGLang launch
    (generator/rule_plugin/sglang.rule, rendered by backend_config_mapping.yaml), for a closed-loop
    row of its own: ``agg enable_mixed_chunk = true`` (--enable-mixed-chunk; its guard rails call
    it required for agg mode), ``agg_prefill_decode max_prefill_tokens = isl + 1500``
    (--max-prefill-tokens) and ``agg_decode max_batch_size = 512 if max_batch_size < 512 else 2 x``
    (--max-running-requests; max_batch_size is the concurrency per attention rank), each only
    where the row records no value. Not recorded per row: a hypothesis."""
    if not (row.get("dataset", "").startswith("aiconfigurator") and row["engine"].strip() == "sglang"
            and row["workload_kind"].strip() == "concurrency"):
        return {}
    per_rank = (_i(row["concurrency"]) or 1) // (_i(row["dp"]) or 1)
    return _where_blank(row, {"mixed_chunk": True,
                              "max_prefill_tokens": _i(row["isl"]) + AIC_VLLM_EXTRA_TOKENS,
                              "max_num_seqs": (AIC_SGLANG_MAX_BATCH
                                               if per_rank < AIC_SGLANG_MAX_BATCH
                                               else 2 * per_rank)})


def aic_generator_kv_dtype(row: dict) -> dict:
    """{'kv_dtype': 'fp8'} for an aiconfigurator row of a quantised checkpoint (a key of
    QUANTISED_CHECKPOINTS) whose KV dtype the source left blank, else {}: aiconfigurator's
    quantisation inference (aic-core sdk/models/helpers.py _infer_quant_modes_from_raw_config) gives
    an fp8 / fp8_block / nvfp4 checkpoint kvcache_quant_mode fp8, which its generator writes as
    --kv-cache-dtype fp8 (generator/config/backend_config_mapping.yaml kv_cache_dtype)."""
    if not (row.get("dataset", "").startswith("aiconfigurator")
            and (row.get("model_hf") or "").strip() in QUANTISED_CHECKPOINTS
            and not (row.get("kv_dtype") or "").strip()):
        return {}
    return {"kv_dtype": "fp8"}


def row_plan(row: dict, model, engine, engine_flags: str = "defaults") -> tuple:
    """(Plan, note) with the row's shape, dtypes and the limits it records (blank limits: the
    engine's defaults, or with ``engine_flags="aic-generator"`` those of aiconfigurator's
    generator for its vLLM rows)."""
    from apex_opt.specs.plan import Plan, ReplicaGroup

    tp = _i(row["tp"]) or 1
    pp = _i(row["pp"]) or 1
    dp = _i(row["dp"]) or 1
    ep = _i(row["ep"]) or 1  # blank / 0: no expert parallelism (vLLM default: experts TP-sharded)
    note = ""
    # aiconfigurator records the MoE split separately ("moe_tp2 moe_ep1"); some Qwen3-235B rows
    # say attention tp1 (num_gpus 1) with moe_tp2 or 4: the fp8 weights (~235 GB) cannot fit the
    # ONE 141 GiB H200 recorded, so the run cannot be replayed as recorded (simulate would refuse
    # it as infeasible). It used at least moe_tp x moe_ep GPUs: vLLM shards a MoE over dp x tp
    # ranks (fused_moe/config.py FusedMoEParallelConfig.make flattens DP into the MoE's TP), so
    # "attn tp1 moe_tp2" is --data-parallel-size 2 attention over a TP2 MoE; vLLM's attention-DP
    # is not in the plan, so replay on that many GPUs as TP (experts
    # TP-sharded / EP as recorded) and mark the row SHAPE (recorded_shape_problem) in the table
    # and the JSON; it stays in the group's MAPE.
    m = re.search(r"moe_tp(\d+) moe_ep(\d+)", row.get("notes", ""))
    if m:
        moe_gpus = int(m.group(1)) * int(m.group(2))
        if moe_gpus > tp * dp:
            note += f"attn tp{tp} moe_tp{m.group(1)} moe_ep{m.group(2)}: replayed as TP{moe_gpus}; "
            tp, ep = moe_gpus // dp, int(m.group(2))
    replicas = dp
    g: dict = {}
    if dp > 1 and getattr(model, "moe", None) is not None and getattr(engine, "dp_attention", False):
        # data-parallel attention of a MoE model (SGLang --enable-dp-attention --dp-size dp; vLLM
        # V1 --data-parallel-size dp): one replica of tp x dp GPUs whose attention runs on dp
        # ranks of tp GPUs, each with its own requests and KV cache, the MoE over all of them
        g["attention_dp"] = dp
        tp, replicas = tp * dp, 1
        note += f"attention-DP {dp} in one TP{tp} replica; "
    m = re.search(r"redundant_experts (\d+)", row.get("notes", ""))
    if m:  # EPLB's redundant expert slots (SGLang --ep-num-redundant-experts)
        g["redundant_experts"] = int(m.group(1))
        note += f"+{m.group(1)} redundant experts; "
    g.update({"tp": tp, "pp": pp, "ep": ep, "replicas": replicas,
              "weight_dtype": (row["weight_dtype"] or "bf16").strip()})
    kv = (row["kv_dtype"] or "").strip()
    if kv:
        g["kv_dtype"] = kv
    for k, conv in (("max_num_seqs", _i), ("max_num_batched_tokens", _i),
                    ("gpu_memory_utilization", _f), ("max_model_len", _i)):
        v = conv(row[k])
        if v is not None:
            g[k] = v
    if engine_flags == "aic-generator":
        aic = {**aic_generator_limits(row), **aic_generator_kv_dtype(row), **aic_generator_sglang(row)}
        if aic:
            g.update(aic)
            note += "aic-generator flags; "
    pc = _bool(row.get("prefix_caching", ""))
    if pc is not None:
        if "prefix_caching" in ReplicaGroup.model_fields:
            g["prefix_caching"] = pc
        else:
            note += "prefix_caching not modelled by this build; "
    return Plan(groups=(ReplicaGroup(**g),), router="round_robin"), note


def row_requests(row: dict, base: Path, warmup_factor: float = 0.0, prompt_pool: int = 0,
                 max_tokens_sent: str = "own"):
    """(Requests, number of leading warm-up requests to leave out of the means). ``prompt_pool``
    > 0: aiconfigurator's closed loops draw each prompt (warm-up included) at random from that
    many distinct prompts (see ``--prompt-pool``). ``max_tokens_sent="none"``: their requests
    declare no max_tokens (see ``--max-tokens-sent``)."""
    from apex_opt.sim.workload import Requests, load_trace, prefix_blocks
    from apex_opt.specs.workload import PrefixSpec

    kind = row["workload_kind"].strip()
    if kind == "trace":
        return load_trace(base / row["trace"]), 0
    isl, osl, n = _i(row["isl"]), _i(row["osl"]), _i(row["n_requests"])
    if kind == "concurrency":
        c = _i(row["concurrency"])
        n = n or max(10 * c, 100)
        w = int(round(warmup_factor * c))
        prompt = np.full(n + w, isl)
        blocks, bt = None, 16
        if prompt_pool and row.get("dataset", "").startswith("aiconfigurator"):
            # aiperf's --random-seed 100 in aiconfigurator's bench_run.sh; the draw sequence is
            # numpy's, not aiperf's Python random.choice: same distribution, not the same prompts
            blocks, bt = prefix_blocks(PrefixSpec(groups=prompt_pool, shared_tokens=isl),
                                       prompt, np.random.default_rng(100))
        aic = row.get("dataset", "").startswith("aiconfigurator")
        return Requests(np.zeros(n + w), prompt, np.full(n + w, osl), None,
                        f"closed-loop:{row['case_id']}", concurrency=c, prefix_blocks=blocks,
                        prefix_block_tokens=bt,
                        max_tokens="none" if aic and max_tokens_sent == "none" else None), w
    if kind in ("poisson", "constant"):
        rate = _f(row["rate_req_s"])
        if kind == "constant":
            arr = np.arange(n) / rate
        else:  # seeded per row: deterministic
            arr = np.concatenate(([0.0], np.cumsum(
                np.random.default_rng(0).exponential(1.0 / rate, n - 1))))
        return Requests(arr, np.full(n, isl), np.full(n, osl), None,
                        f"{kind}:{row['case_id']}"), 0
    raise ValueError(f"unknown workload_kind {kind!r}")


#: Quantised checkpoints of the rows (``model_hf``), which the README replays as "the bf16
#: architecture plus weight_dtype": (stored dtype, the scaling layout their own quantization
#: config declares, which picks the engine's kernel path: ModelSpec.quant_scheme).
#: Qwen/Qwen3-235B-A22B-FP8: {"quant_method": "fp8", "activation_scheme": "dynamic",
#: "weight_block_size": [128, 128]} (its model card: "fine-grained fp8 quantization with a block
#: size of 128"); nvidia/Llama-3.1-8B-Instruct-FP8: ModelOpt FP8, one scale per tensor;
#: deepseek-ai/DeepSeek-V3: block fp8 (the bundled config already carries it). A bf16 checkpoint
#: given weight_dtype fp8 is vLLM's online --quantization fp8 (per-tensor scales), the default.
QUANTISED_CHECKPOINTS = {"Qwen/Qwen3-235B-A22B-FP8": ("fp8", "fp8_block"),
                         "nvidia/Llama-3.1-8B-Instruct-FP8": ("fp8", "fp8_tensor"),
                         "deepseek-ai/DeepSeek-V3": ("fp8", "fp8_block")}


def row_model(row: dict, base: Path):
    """The row's model, with its checkpoint's quantisation layout where QUANTISED_CHECKPOINTS
    knows it."""
    model = _model(row["model"], base)
    q = QUANTISED_CHECKPOINTS.get((row.get("model_hf") or "").strip())
    if q and (row.get("weight_dtype") or "").strip() == q[0] and not model.quant_scheme:
        model = model.model_copy(update={"checkpoint_dtype": q[0], "quant_scheme": q[1]})
    return model


def _model(ref: str, base: Path):
    from apex_opt.specs.model import load_model

    ref = ref.strip()
    if ref.startswith("models/") or ref.endswith(".json"):
        return load_model(str(base / ref))
    return load_model(ref)


def measured_means(res, skip: int) -> dict:
    """Mean TTFT / TPOT / E2E of the served requests after the first ``skip`` (warm-up)."""
    pr = res.per_request()
    ok = pr["dropped"] == 0
    ok[:skip] = False
    arr, first, fin = pr["arrival_s"][ok], pr["first_token_s"][ok], pr["finish_s"][ok]
    out = pr["output_tokens"][ok]
    multi = out > 1
    return {"ttft_ms": float((first - arr).mean() * 1e3), "e2e_s": float((fin - arr).mean()),
            "tpot_ms": float(((fin - first)[multi] / (out[multi] - 1)).mean() * 1e3)
            if multi.any() else None}


def simulate_row(row: dict, base: Path, warmup_factor: float = 0.0,
                 engine_flags: str = "defaults", prompt_pool: int = 0,
                 bracket: bool = False, max_tokens_sent: str = "own") -> dict:
    """Replay one row; never raises (a failure is reported in the result). ``bracket``: a
    closed-loop row is replayed a second time with its clients' first requests staggered over
    the first replay's mean E2E (``ttft_staggered_ms``): the desynchronised end of the range
    whose lockstep end the first replay is."""
    from apex_opt.errors import InfeasibleError
    from apex_opt.registry import load_cluster
    from apex_opt.sim.simulator import simulate

    t0 = time.perf_counter()
    out = {"case": row["case_id"], "group": group_of(row), "kind": row["workload_kind"],
           "load": _load_label(row), "tp": row["tp"], "meas": {}, "pred": {}, "err_pct": {},
           "note": ""}
    for k, col in MEASURED.items():
        v = _f(row.get(col, ""))
        if v is not None:
            out["meas"][k] = v
    try:
        version, vnote = row_version(row)
        engine, note = resolve_engine(row["engine"].strip(), version)
        note = vnote + note
        model = row_model(row, base)
        cluster = load_cluster(row["cluster"].strip())
        plan, pnote = row_plan(row, model, engine, engine_flags)
        cluster, cnote = cluster_for_gpus(cluster, plan.gpus)
        pnote += cnote
        req, warm = row_requests(row, base, warmup_factor, prompt_pool, max_tokens_sent)
        out["compute_util"] = measured_compute_util(row, model, cluster)
        floor = measured_tpot_floor(row, model, cluster)
        floor_auto = measured_tpot_floor(row, model, cluster, kv_dtype=(
            row["kv_dtype"] or "").strip() or "bf16")  # vLLM/SGLang default KV: the model's dtype
        out["tpot_floor_ms"] = None if floor is None else floor * 1e3
        shape_problem = recorded_shape_problem(row, model, cluster)
        out["shape_unreplayable"] = shape_problem is not None
        try:
            res = simulate(model, cluster, plan, req, engine=engine)
        except InfeasibleError as exc:
            # the row ran, so the server started: with max_model_len not recorded and the
            # model's full context not fitting the KV cache (vLLM refuses to start then), the run
            # must have set a shorter one -- replay with the longest that fits (what vLLM's error
            # message suggests), never shorter than the row's own requests
            plan2 = (fitting_max_model_len(row, model, cluster, plan, engine, exc)
                     or fitting_memory_fraction(row, model, cluster, plan, engine, exc))
            if plan2 is None:
                raise
            plan, fit_note = plan2
            pnote += fit_note
            res = simulate(model, cluster, plan, req, engine=engine)
        m = res.metrics
        out["engine_profile"] = getattr(engine, "name", row["engine"])
        out["note"] = note + pnote
        out["n"] = len(req) - warm
        out["warmup"] = warm
        out["dropped"] = m.num_dropped
        out["preemptions"] = m.preemptions
        if m.num_completed == 0:
            raise RuntimeError(f"all {len(req)} requests dropped: {res.dropped_by_reason}")
        if warm:
            out["pred"] = measured_means(res, warm)
        else:
            out["pred"] = {"ttft_ms": m.ttft_ms.mean, "tpot_ms": m.tpot_ms.mean,
                           "e2e_s": m.e2e_s.mean, "tput_tok_s": m.throughput_tokens_per_s}
        out["err_pct"] = {k: (out["pred"][k] - v) / v * 100 for k, v in out["meas"].items()
                          if out["pred"].get(k) is not None and v}
        if bracket and req.concurrency is not None:
            out["clients"] = req.concurrency
            out["prompt_tokens"] = int(np.max(req.prompt_tokens))
            ramped = req.with_concurrency(req.concurrency, ramp_s=out["pred"]["e2e_s"])
            out["ttft_staggered_ms"] = measured_means(
                simulate(model, cluster, plan, ramped, engine=engine), warm)["ttft_ms"]
        if m.num_dropped:
            out["note"] += f"{m.num_dropped} dropped; "
        u = out["compute_util"]
        if u is not None and u > COMPUTE_BOUND_FLAG:
            out["note"] += (f"PHYSICS: measured means imply {u:.0%} of the GPUs' dense peak for "
                            f"prefill FLOPs alone (prompt reuse, or not means?); ")
        tpot_meas = out["meas"].get("tpot_ms")
        out["memory_bound"] = bool(tpot_meas is not None and floor is not None
                                   and tpot_meas < floor * 1e3)
        out["kv_fp8_implied"] = bool(not out["memory_bound"] and tpot_meas is not None
                                     and floor_auto is not None and tpot_meas < floor_auto * 1e3)
        if out["memory_bound"]:
            out["note"] += (f"PHYSICS: measured TPOT {tpot_meas:.2f} ms < HBM floor "
                            f"{floor * 1e3:.2f} ms (weights + fp8 KV + prefill share); ")
        elif out["kv_fp8_implied"]:
            out["note"] += (f"PHYSICS: measured TPOT {tpot_meas:.2f} ms < HBM floor with the "
                            f"default bf16 KV ({floor_auto * 1e3:.2f} ms): fp8 KV cache implied; ")
        if shape_problem:
            out["note"] += f"SHAPE: {shape_problem}; "
        if req.concurrency is not None:
            n_meas = decode_concurrency(req.concurrency, out["meas"].get("ttft_ms"), out["meas"].get("e2e_s"))
            n_pred = decode_concurrency(req.concurrency, out["pred"].get("ttft_ms"), out["pred"].get("e2e_s"))
            out["admission_limited"] = bool(n_meas is not None and n_pred
                                            and n_meas < ADMISSION_FLAG * n_pred)
            if out["admission_limited"]:
                out["note"] += (f"ADMISSION: measured means put {n_meas:.1f} of {req.concurrency} "
                                f"clients past their first token at once (clients x (1 - TTFT / "
                                f"E2E)), the replay {n_pred:.1f}: the run batched fewer requests "
                                f"(a smaller KV pool or a limiting flag); ")
    except Exception as exc:  # noqa: BLE001 -- reported as a failed row, never hidden
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
    out["wall_s"] = time.perf_counter() - t0
    return out


def cluster_for_gpus(cluster, gpus: int) -> tuple:
    """(cluster, note): the row's one-node cluster when its GPUs suffice, else the bundled
    multi-node cluster of the same GPU and node size (``h200-1x8`` -> ``h200-2x8``) with enough
    nodes, if there is one (the row ran on that many GPUs)."""
    import math

    from apex_opt.registry import cluster_names, load_cluster

    pool = cluster.pools[0]
    if gpus <= pool.num_gpus or len(cluster.pools) != 1:
        return cluster, ""
    m = re.fullmatch(r"(.+)-(\d+)x(\d+)", cluster.name)
    if not m or int(m.group(3)) != pool.gpus_per_node:
        return cluster, ""
    names = set(cluster_names())
    for nodes in range(math.ceil(gpus / pool.gpus_per_node), 65):
        name = f"{m.group(1)}-{nodes}x{m.group(3)}"
        if name in names:
            return load_cluster(name), f"{gpus} GPUs: replayed on {name}; "
    return cluster, ""


def fitting_max_model_len(row: dict, model, cluster, plan, engine, exc) -> tuple | None:
    """(plan with the longest max_model_len the KV cache holds, note) when ``exc`` is the KV cache
    not holding the model's default context and the row does not record max_model_len; else
    None."""
    from apex_opt.memory import replica_memory

    if (row.get("max_model_len") or "").strip() or exc.details.get("overflow_component") != "kv_cache":
        return None
    g = plan.groups[0]
    mem = replica_memory(model, cluster.pool(g.pool).device, g.replica(), engine)
    per_rank = mem.kv_tokens // max(1, g.attention_dp)
    need = (_i(row.get("isl", "")) or 0) + (_i(row.get("osl", "")) or 0)
    if per_rank < max(need, 16):
        return None
    new = plan.model_copy(update={"groups": (g.model_copy(update={"max_model_len": per_rank}),)})
    return new, f"max_model_len not recorded and {model.max_position_embeddings} does not fit: {per_rank}; "


#: the largest static memory fraction a replay assumes an unrecorded flag set (SGLang's own
#: docs suggest raising --mem-fraction-static up to ~0.9 when the weights do not leave room;
#: aiconfigurator's generator writes 0.9 when it sets one: generator/sflow.py)
MAX_STATIC_FRACTION = 0.95


def fitting_memory_fraction(row: dict, model, cluster, plan, engine, exc) -> tuple | None:
    """(plan with the smallest static memory fraction that holds the weights and the row's own
    concurrent requests, note) when ``exc`` is an SGLang server whose default
    mem_fraction_static cannot hold the weights and the row does not record the fraction (it
    ran, so it was set higher); else None. The smallest such fraction: a floor, never more KV
    than the run needed (at most MAX_STATIC_FRACTION)."""
    from apex_opt.memory import replica_memory

    if ((row.get("gpu_memory_utilization") or "").strip()
            or getattr(engine, "kv_sizing", "") != "static_fraction"
            or exc.details.get("overflow_component") in (None, "kv_cache", "cuda_context_and_graphs")):
        return None
    g = plan.groups[0]
    need = ((_i(row.get("isl", "")) or 0) + (_i(row.get("osl", "")) or 0)) * max(1, _i(row.get("concurrency", "")) or 1)
    dev = cluster.pool(g.pool).device
    for pct in range(50, int(MAX_STATIC_FRACTION * 100) + 1):  # below the default: cannot fit
        g2 = g.model_copy(update={"gpu_memory_utilization": pct / 100})
        try:
            mem = replica_memory(model, dev, g2.replica(), engine)
        except Exception:  # noqa: BLE001 -- not fitting yet
            continue
        if mem.fits and mem.kv_tokens >= need:
            new = plan.model_copy(update={"groups": (g2,)})
            return new, (f"memory fraction not recorded and the default does not hold the weights: "
                         f"{pct / 100:.2f}; ")
    return None


#: a closed loop whose measured means imply more than this share of the GPUs' dense datasheet
#: peak just for prefill FLOPs cannot have run without prompt reuse (or its statistic is not a mean)
COMPUTE_BOUND_FLAG = 0.7

#: closed-loop rows whose measured decode concurrency is below this share of the replay's are
#: flagged ADMISSION: the run held fewer requests in its batch at once than the modelled engine
#: admits (a smaller KV pool or a limiting flag), so its TTFT is queueing the replay does not see
ADMISSION_FLAG = 0.6


def decode_concurrency(clients: float | None, ttft_ms: float | None, e2e_s: float | None) -> float | None:
    """Requests decoding at once in a stationary closed loop of ``clients``, from its MEAN TTFT
    and E2E alone (Little's law on the decode phase: requests complete at clients / E2E per
    second and each spends E2E - TTFT past its first token): clients x (1 - TTFT / E2E).
    Independent of the simulator when fed measured means; the same formula on the replay's
    means gives the figure to compare."""
    if not clients or ttft_ms is None or not e2e_s:
        return None
    return float(clients) * max(0.0, 1.0 - ttft_ms / 1e3 / e2e_s)

#: bytes per stored element (weights, KV cache) for the floors below
_ELT_BYTES = {"fp8": 1.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5, "fp4": 0.5}


def measured_tpot_floor(row: dict, model, cluster, kv_dtype: str | None = None) -> float | None:
    """Lowest mean TPOT (seconds) the HBM of the row's GPUs allows for its MEASURED closed-loop
    means (datasheet bandwidth; independent of the simulator). Every decode step reads the active
    linear weights once (a MoE's top-k experts of ONE token: a lower bound for a batch) and the KV
    cache of the sequences decoding in it; decode attention runs in kernels of its own, so its KV
    reads cannot overlap the GEMMs, while the prefill FLOPs that share a step with the decodes can
    at best hide under the weight reads:  T >= KV / BW + max(W / BW, u x T),  u = the prefill share
    of the dense peak the means imply (measured_compute_util). Hence
    T >= max((KV + W) / BW, KV / (BW (1 - u))). Decoding clients = c x (E2E - TTFT) / E2E, mean
    context = isl + (osl - 1) / 2, weights and KV split over TP (per replica of c / dp clients; over
    the MoE's GPUs when the row records more of them than tp).
    ``kv_dtype``: the KV-cache dtype to assume; default the row's, else fp8 (the smallest an
    engine could have been launched with: a floor must hold whatever the unrecorded flag was)."""
    if row["workload_kind"] != "concurrency":
        return None
    c, isl, osl = _f(row["concurrency"]), _f(row["isl"]), _f(row["osl"])
    e2e, ttft = _f(row["e2e_mean_s"]), _f(row["ttft_mean_ms"])
    if not (c and isl and osl and e2e) or ttft is None:
        return None
    u = measured_compute_util(row, model, cluster) or 0.0
    if u >= 1.0:
        return float("inf")
    tp, dp = _i(row["tp"]) or 1, _i(row["dp"]) or 1
    m = re.search(r"moe_tp(\d+) moe_ep(\d+)", row.get("notes", ""))
    if m:  # weights spread over the MoE's GPUs when it records more than tp (SHAPE rows)
        tp = max(tp, int(m.group(1)) * int(m.group(2)) // dp)
    bw = cluster.pools[0].device.hbm_bandwidth_gbps * 1e9 * tp
    wdt = (row["weight_dtype"] or "bf16").strip()
    kvd = kv_dtype or (row["kv_dtype"] or "").strip() or "fp8"
    w = model.linear_flops_per_token() / 2.0 * _ELT_BYTES.get(wdt, 2.0)
    decoding = c / dp * max(0.0, e2e - ttft * 1e-3) / e2e
    kv = decoding * (isl + (osl - 1) / 2.0) * model.kv_bytes_per_token(_ELT_BYTES.get(kvd, 2.0))
    return max((kv + w) / bw, kv / (bw * (1.0 - u)))


def recorded_shape_problem(row: dict, model, cluster) -> str | None:
    """Why the row's recorded GPU count (num_gpus = tp x pp x dp) cannot hold the checkpoint's
    weights, or None. Such a run must have used more GPUs than recorded (aiconfigurator's
    'attn tp1 ... moe_tp2' rows of Qwen3-235B fp8), so it cannot be replayed as recorded."""
    gpus = _i(row.get("num_gpus", "")) or (_i(row["tp"]) or 1) * (_i(row["pp"]) or 1) * (_i(row["dp"]) or 1)
    dev = cluster.pools[0].device
    need = model.params_total * _ELT_BYTES.get((row["weight_dtype"] or "bf16").strip(), 2.0)
    have = gpus * dev.memory_gib * 1024 ** 3
    problems = []
    if need > have:
        problems.append(f"weights {need / 1e9:.0f} GB > {gpus} x {dev.memory_gib:g} GiB")
    m = re.search(r"moe_tp(\d+) moe_ep(\d+)", row.get("notes", ""))
    if m and int(m.group(1)) * int(m.group(2)) > gpus:
        problems.append(f"MoE over {int(m.group(1)) * int(m.group(2))} GPUs > {gpus} recorded")
    if not problems:
        return None
    return ", ".join(problems) + ": unreplayable as recorded"


def measured_compute_util(row: dict, model, cluster) -> float | None:
    """Share of the GPUs' dense peak (weight dtype, device datasheet) that the row's MEASURED
    closed-loop means imply for the prefill FLOPs alone: clients / E2E x prompt tokens x 2 x active
    parameters. Independent of the simulator: a physics check of the ground truth."""
    if row["workload_kind"] != "concurrency":
        return None
    c, isl, e2e = _f(row["concurrency"]), _f(row["isl"]), _f(row["e2e_mean_s"])
    gpus = _i(row["num_gpus"]) or 1
    if not (c and isl and e2e):
        return None
    dev = cluster.pools[0].device
    peak = dev.tflops(row["weight_dtype"].strip() or "bf16") * 1e12 * gpus
    return c / e2e * isl * 2.0 * model.params_active / peak


def group_of(row: dict) -> str:
    model = row["model"].strip()
    if model.startswith("models/"):
        model = model.split("/")[1]
    gpu = row["cluster"].split("-")[0]
    return f"{row['engine']}/{model}/{gpu}/{row['weight_dtype']}"


def _load_label(row: dict) -> str:
    if row["workload_kind"] == "concurrency":
        return f"c{row['concurrency']} {row['isl']}/{row['osl']}"
    if row["workload_kind"] == "trace":
        return f"{row['rate_req_s']} r/s trace"
    return f"{row['rate_req_s']} r/s {row['isl']}/{row['osl']}"


def _cost(row: dict) -> float:
    """Rough relative cost of a row (largest first balances the process pool)."""
    n = _f(row["n_requests"]) or 100
    return n * ((_f(row["osl"]) or 100) ** 0.5)


def summarise(results: list[dict]) -> dict:
    ok = [r for r in results if "error" not in r]
    groups: dict[str, dict] = {}
    for gname in sorted({r["group"] for r in results}):
        sel = [r for r in ok if r["group"] == gname]
        entry = {"rows": sum(r["group"] == gname for r in results), "replayed": len(sel),
                 "compute_bound_flagged": sum((r.get("compute_util") or 0.0) > COMPUTE_BOUND_FLAG
                                              for r in sel),
                 "memory_bound_flagged": sum(bool(r.get("memory_bound")) for r in sel),
                 "kv_fp8_implied": sum(bool(r.get("kv_fp8_implied")) for r in sel),
                 "shape_unreplayable": sum(bool(r.get("shape_unreplayable")) for r in sel),
                 "admission_limited": sum(bool(r.get("admission_limited")) for r in sel)}
        for k in METRICS:
            errs = [r["err_pct"][k] for r in sel if k in r["err_pct"]]
            if errs:
                entry[k] = {"mape": float(np.mean(np.abs(errs))), "bias": float(np.mean(errs))}
        groups[gname] = entry
    overall = {}
    for k in METRICS:
        errs = [r["err_pct"][k] for r in ok if k in r["err_pct"]]
        if errs:
            overall[k] = {"mape": float(np.mean(np.abs(errs))), "bias": float(np.mean(errs))}
    # a group meets its targets only when every row replays and each target's metric exists
    # (a group whose rows all failed used to read as met: all() of nothing)
    met = {g: v["replayed"] == v["rows"] and all(k in v for k in TARGETS)
           and all(v[k]["mape"] <= t for k, t in TARGETS.items())
           for g, v in groups.items()}
    return {"groups": groups, "overall": overall, "targets_met": met,
            "ttft_bracket": ttft_bracket(ok)}


def ttft_bracket(ok: list[dict]) -> dict:
    """Per group of closed-loop rows replayed with ``bracket``: the measured mean TTFT against
    the lockstep replay (clients all at t = 0) and the staggered one -- how many rows fall below,
    inside or above the range the two span, and each end's MAPE. ``position_by_clients``: per
    prompt length and client count (key ``"<prompt tokens>/c<clients>"``), the median of
    (measured - staggered) / (lockstep - staggered) over the rows whose two replays differ by more
    than 5 % of the measurement (0 = the measurement sits at the desynchronised end, 1 = at
    lockstep, > 1 above it) and how many rows that median has: what a model of how real clients
    drift apart has to reproduce."""
    out: dict[str, dict] = {}
    for r in ok:
        s, m = r.get("ttft_staggered_ms"), r["meas"].get("ttft_ms")
        if s is None or not m:
            continue
        lock = r["pred"]["ttft_ms"]
        lo, hi = min(lock, s), max(lock, s)
        e = out.setdefault(r["group"], {"rows": 0, "below": 0, "inside": 0, "above": 0,
                                        "_lock": [], "_stag": [], "_pos": {}})
        e["rows"] += 1
        e["below" if m < lo else "above" if m > hi else "inside"] += 1
        e["_lock"].append(abs(lock - m) / m * 100)
        e["_stag"].append(abs(s - m) / m * 100)
        if abs(lock - s) > 0.05 * m and r.get("clients"):
            key = (int(r.get("prompt_tokens") or 0), int(r["clients"]))
            e["_pos"].setdefault(key, []).append((m - s) / (lock - s))
    for e in out.values():
        e["mape_lockstep"] = round(float(np.mean(e.pop("_lock"))), 2)
        e["mape_staggered"] = round(float(np.mean(e.pop("_stag"))), 2)
        e["position_by_clients"] = {f"{p}/c{c}": [round(float(np.median(v)), 2), len(v)]
                                    for (p, c), v in sorted(e.pop("_pos").items())}
    return out


def render(results: list[dict], summ: dict, wall: float) -> str:
    lines: list[str] = []
    prev = ""
    hdr = (f"{'case':58} {'load':>18} {'TTFT ms':>9} {'meas':>9} {'err%':>7} {'TPOT ms':>8} "
           f"{'meas':>8} {'err%':>7} {'E2E s':>8} {'meas':>8} {'err%':>7} {'tok/s err%':>10}  note")
    lines.append("predicted vs measured (signed error = (pred - meas) / meas)")
    lines.append(hdr)
    for i, r in enumerate(sorted(results, key=lambda r: r["group"])):
        if i == 0 or r["group"] != prev:
            lines.append(f"-- {r['group']}")
            prev = r["group"]
        case = r["case"]
        case = case if len(case) <= 58 else case[:27] + "~" + case[-30:]
        if "error" in r:
            lines.append(f"{case:58} {r['load']:>18}  FAILED: {r['error']}")
            continue
        p, m, e = r["pred"], r["meas"], r["err_pct"]

        def cell(k: str, fmt: str) -> str:
            return (format(p[k], fmt), format(m[k], fmt) if k in m else "-",
                    f"{e[k]:+.1f}" if k in e else "-")

        t1, t2, t3 = cell("ttft_ms", ".1f"), cell("tpot_ms", ".2f"), cell("e2e_s", ".3f")
        tp = f"{e['tput_tok_s']:+.1f}" if "tput_tok_s" in e else "-"
        lines.append(f"{case:58} {r['load']:>18} {t1[0]:>9} {t1[1]:>9} {t1[2]:>7} {t2[0]:>8} "
                     f"{t2[1]:>8} {t2[2]:>7} {t3[0]:>8} {t3[1]:>8} {t3[2]:>7} {tp:>10}  "
                     f"{r['note']}")
    lines.append("")
    lines.append("per group: MAPE % (signed bias %)   [targets: TTFT <= 15, TPOT <= 8, E2E <= 8]")
    lines.append(f"{'group':48} {'rows':>5} {'TTFT':>16} {'TPOT':>16} {'E2E':>16} {'tok/s':>16}  met"
                 f"  flagged rows: compute/memory/fp8-KV/shape/admission")

    def mb(v: dict, k: str) -> str:
        return f"{v[k]['mape']:.1f} ({v[k]['bias']:+.1f})" if k in v else "-"

    for g, v in summ["groups"].items():
        rows = f"{v['replayed']}/{v['rows']}"
        lines.append(f"{g:48} {rows:>5} {mb(v, 'ttft_ms'):>16} {mb(v, 'tpot_ms'):>16} "
                     f"{mb(v, 'e2e_s'):>16} {mb(v, 'tput_tok_s'):>16}  "
                     f"{'yes' if summ['targets_met'][g] else 'NO ':<3}  {v['compute_bound_flagged']}/"
                     f"{v['memory_bound_flagged']}/{v['kv_fp8_implied']}/{v['shape_unreplayable']}/"
                     f"{v['admission_limited']}")
    o = summ["overall"]
    n_ok = sum("error" not in r for r in results)
    lines.append(f"{'overall':48} {f'{n_ok}/{len(results)}':>5} {mb(o, 'ttft_ms'):>16} "
                 f"{mb(o, 'tpot_ms'):>16} {mb(o, 'e2e_s'):>16} {mb(o, 'tput_tok_s'):>16}")
    if summ.get("ttft_bracket"):
        lines.append("")
        lines.append("closed-loop TTFT: lockstep replay (all clients at t=0) vs clients staggered "
                     "over one mean E2E; measured below / inside / above that range")
        lines.append(f"{'group':48} {'rows':>5} {'lockstep MAPE':>14} {'staggered MAPE':>15} "
                     f"{'below':>6} {'inside':>7} {'above':>6}")
        for g, v in summ["ttft_bracket"].items():
            lines.append(f"{g:48} {v['rows']:>5} {v['mape_lockstep']:>14.1f} "
                         f"{v['mape_staggered']:>15.1f} {v['below']:>6} {v['inside']:>7} "
                         f"{v['above']:>6}")
        lines.append("where the measured TTFT sits, median per prompt length and client count "
                     "(0 = staggered, 1 = lockstep; rows in brackets):")
        for g, v in summ["ttft_bracket"].items():
            by_len: dict[str, list[str]] = {}
            for key, (p, n) in v["position_by_clients"].items():
                plen, c = key.split("/")
                by_len.setdefault(plen, []).append(f"{c} {p:.2f} ({n})")
            for plen, cells in by_len.items():
                lines.append(f"  {g:46} {plen:>6} tok: " + "  ".join(cells))
    lines.append(f"{len(results)} rows in {wall:.1f} s wall")
    lines.append("closed-loop rows: the means leave out the warm-up requests sent first "
                 "(--warmup per client); trace rows: every request")
    return "\n".join(lines)


def _job(args: tuple[dict, str, float, str, int, bool, str]) -> dict:
    row, base, warmup, flags, pool, bracket, sent = args
    return simulate_row(row, Path(base), warmup, flags, pool, bracket, sent)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"), help="path of ../shared")
    ap.add_argument("--rows", default=None, help="only rows whose case_id (or group "
                                                 "engine/model/gpu/dtype) matches this regex")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="worker processes (default: min(2, CPUs))")
    ap.add_argument("--warmup", type=float, default=2.0,
                    help="closed-loop rows: warm-up requests per client sent before the measured "
                         "n_requests and left out of the means (default 2: genai-perf's "
                         "--warmup-request-count 2 x concurrency next to --request-count 10 x "
                         "concurrency in NVIDIA's sweep scripts; 0 = the README's literal replay "
                         "from a cold start with all clients arriving together, which is also "
                         "aiperf's: it drains its warm-up phase before the profiling phase)")
    ap.add_argument("--engine-flags", choices=("defaults", "aic-generator"), default="defaults",
                    help="blank engine limits of a row: the engine version's defaults (the data "
                         "README's rule), or for aiconfigurator's vLLM closed loops the limits its "
                         "generator writes (max_num_seqs 512, max_num_batched_tokens 512 + isl + "
                         "1500, max_model_len isl + osl + 1500; fp8 KV cache for a quantised "
                         "checkpoint; for its SGLang ones --enable-mixed-chunk, --max-prefill-tokens "
                         "isl + 1500, --max-running-requests 512): a hypothesis, "
                         "not recorded")
    ap.add_argument("--prompt-pool", type=int, default=0, metavar="N",
                    help="aiconfigurator's closed loops: draw each prompt at random from N "
                         "distinct prompts, as aiperf's synthetic dataset does "
                         "(--num-dataset-entries, default 100, sampled with replacement; "
                         "aiconfigurator's bench_run.sh leaves it at the default and its vLLM "
                         "launch keeps V1's prefix caching on): a hypothesis, not recorded. "
                         "0 (default) = every prompt distinct")
    ap.add_argument("--max-tokens-sent", choices=("own", "none"), default="own",
                    help="aiconfigurator's closed loops: the max_tokens each request declares. "
                         "own (default, the data README's replay) = its output length; none = "
                         "no limit reaches the engine, which then counts up to the context "
                         "length (clipped at 4,096) per request in SGLang's admission: a "
                         "hypothesis, not recorded -- their SGLang single-H100 rows batch the "
                         "same ~5,000 prompt tokens whatever the output length (ADMISSION), but "
                         "aiperf --osl sends max_completion_tokens and Dynamo passes it on")
    ap.add_argument("--ttft-bracket", action="store_true",
                    help="closed-loop rows: replay each a second time with the clients' first "
                         "requests staggered over the first replay's mean E2E (apex-opt simulate "
                         "--client-ramp) and report, per group, how many measured mean TTFTs fall "
                         "below / inside / above the range between the lockstep and the "
                         "staggered replay (a diagnostic; the scored numbers stay the lockstep "
                         "replay's)")
    ap.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    ap.add_argument("--out", default=None, help="also write the full output to this file")
    args = ap.parse_args(argv)
    base = Path(args.shared) / "validation" / "modern"
    gt = base / "ground_truth.csv"
    if not gt.is_file():
        print(f"validation data not found at {gt}; nothing to do", file=sys.stderr)
        print(json.dumps({"rows": 0, "skipped": "no data"}))
        return 0
    with gt.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if args.rows:
        rx = re.compile(args.rows)
        rows = [r for r in rows if rx.search(r["case_id"]) or rx.search(group_of(r))]
    t0 = time.perf_counter()
    order = sorted(range(len(rows)), key=lambda i: -_cost(rows[i]))
    if args.jobs > 1 and len(rows) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            done = list(pool.map(_job, [(rows[i], str(base), args.warmup, args.engine_flags,
                                         args.prompt_pool, args.ttft_bracket,
                                         args.max_tokens_sent) for i in order],
                                 chunksize=1))
    else:
        done = [_job((rows[i], str(base), args.warmup, args.engine_flags, args.prompt_pool,
                      args.ttft_bracket, args.max_tokens_sent)) for i in order]
    results: list[dict] = [None] * len(rows)  # type: ignore[list-item]
    for i, r in zip(order, done):
        results[i] = r
    wall = time.perf_counter() - t0
    summ = summarise(results)
    text = render(results, summ, wall)
    failed = [r["case"] for r in results if "error" in r]
    doc = {"rows": len(results), "warmup_per_client": args.warmup,
           "engine_flags": args.engine_flags, "prompt_pool": args.prompt_pool,
           "max_tokens_sent": args.max_tokens_sent, "replayed": len(results) - len(failed), "failed": failed[:20],
           "mape_pct": {k: round(v["mape"], 2) for k, v in summ["overall"].items()},
           "bias_pct": {k: round(v["bias"], 2) for k, v in summ["overall"].items()},
           "groups": {g: {k: {"mape": round(x["mape"], 2), "bias": round(x["bias"], 2)}
                          for k, x in v.items() if isinstance(x, dict)}
                      for g, v in summ["groups"].items()},
           "targets_met": summ["targets_met"],
           "compute_bound_flagged": {g: v["compute_bound_flagged"] for g, v in summ["groups"].items()
                                     if v["compute_bound_flagged"]},
           "memory_bound_flagged": {g: v["memory_bound_flagged"] for g, v in summ["groups"].items()
                                    if v["memory_bound_flagged"]},
           "kv_fp8_implied": {g: v["kv_fp8_implied"] for g, v in summ["groups"].items()
                              if v["kv_fp8_implied"]},
           "shape_unreplayable_as_recorded": {g: v["shape_unreplayable"]
                                              for g, v in summ["groups"].items()
                                              if v["shape_unreplayable"]},
           "admission_limited": {g: v["admission_limited"] for g, v in summ["groups"].items()
                                 if v["admission_limited"]},
           **({"ttft_bracket": summ["ttft_bracket"]} if args.ttft_bracket else {}),
           "slowest_rows_s": sorted(((round(r["wall_s"], 1), r["case"]) for r in results),
                                    reverse=True)[:3],
           "wall_s": round(wall, 2)}
    line = json.dumps(doc)
    if not args.json_only:
        print(text)
    print(line)
    if args.out:
        Path(args.out).write_text(text + "\n" + line + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
