#!/usr/bin/env python3
"""Cross-check on aiconfigurator's public silicon rows for models and GPUs ../shared lacks.

NVIDIA's aiconfigurator (github.com/ai-dynamo/aiconfigurator, Apache-2.0) publishes the end-to-end
TTFT / TPOT of its aggregated-serving benchmark database in
``aic-core/src/aiconfigurator_core/systems/silicon_sample.csv`` and the HF configs of those models in
``aic-core/src/aiconfigurator_core/model_configs/``. ../shared/validation/modern holds a slice of
it (H100/H200, five models); this script rebuilds the REST of the vLLM / SGLang ``agg`` rows
(MiniMax-M2.5, Qwen3.5-397B, Kimi-K2.5, gpt-oss-120b, GLM-5, DeepSeek-R1/V3, Llama-3.1 on
B200 / B300 / H100 / H200) in the validate_modern format under a scratch folder and replays them with
``scripts/validate_modern.py``. Nothing is copied into this repository: pass a checkout.

    python scripts/crosscheck_aic.py --aic ~/src/aiconfigurator [--rows REGEX] [--jobs 2]

Row conventions of that file, as read: ``batch_size`` is the concurrency per attention-DP rank
(the row id's ``c<N>`` is batch x attention_dp_size); ``tp_size`` x ``attention_dp_size`` GPUs;
``moe_tp_size`` / ``moe_ep_size`` the MoE split (validate_modern replays a MoE over more GPUs than
the attention as recorded in the notes). Rows whose ``tp_size`` is ``moe_tp x moe_ep`` with
``moe_tp = moe_ep`` (TP16 / TP64 on one node; ids ``tp4_ep4`` / ``tp8_ep8``) are read as TP = EP =
``moe_ep``, the shape their ids and duplicate rows show; vLLM rows with ``attention_dp_size =
tp_size`` and ``moe_ep = tp x dp`` (TP4 ADP4 EP16 on one 8-GPU node) likewise repeat TP = EP =
``tp_size`` rows at the id's concurrency and are read that way. SGLang rows whose TP cannot split
the attention heads (DeepSeek-R1 TP72 / moe_tp72 on GB200 NVL72) are read as DP attention over
all of them with the experts over EP = TP and the fewest redundant expert slots that divide them
(256 + 32 over 72), how SGLang runs DeepSeek on 72 GPUs. TTFT / TPOT statistic unstated; E2E = TTFT + TPOT x
(osl - 1). Engine limits are not recorded (the version's defaults apply). A diagnostic, like
validate_modern: never a target to tune constants to.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

SILICON = "aic-core/src/aiconfigurator_core/systems/silicon_sample.csv"
CONFIGS = "aic-core/src/aiconfigurator_core/model_configs"
#: aiconfigurator system -> bundled one-node cluster
CLUSTER = {"h100_sxm": "h100-sxm-1x8", "h200_sxm": "h200-1x8", "b200_sxm": "b200-1x8",
           "b300_sxm": "b300-1x8", "gb200": "gb200-nvl72", "gb300": "gb300-nvl72"}
#: (model_path, precision) -> the published checkpoint whose config the row ran (model_configs
#: file stem); the bf16 architecture with the row's weight dtype where no quantized config exists
CHECKPOINT = {
    "MiniMaxAI/MiniMax-M2.5": {"fp8": "MiniMaxAI--MiniMax-M2.5", "fp4": "nvidia--MiniMax-M2.5-NVFP4"},
    "Qwen/Qwen3.5-397B-A17B": {"fp8": "Qwen--Qwen3.5-397B-A17B", "bf16": "Qwen--Qwen3.5-397B-A17B",
                               "fp4": "nvidia--Qwen3.5-397B-A17B-NVFP4"},
    "moonshotai/Kimi-K2.5": {"int4": "moonshotai--Kimi-K2.5", "fp4": "nvidia--Kimi-K2.5-NVFP4"},
    "openai/gpt-oss-120b": {"fp4": "openai--gpt-oss-120b"},
    "zhipuai/GLM-5": {"fp8": "zai-org--GLM-5-FP8", "fp4": "nvidia--GLM-5-NVFP4"},
    "deepseek-ai/DeepSeek-R1": {"fp8": "deepseek-ai--DeepSeek-R1", "fp4": "nvidia--DeepSeek-V3.1-NVFP4"},
    "deepseek-ai/DeepSeek-V3": {"fp8": "deepseek-ai--DeepSeek-V3", "fp4": "nvidia--DeepSeek-V3.1-NVFP4"},
    "meta-llama/Llama-3.1-70B": {"fp8": "nvidia--Llama-3.1-70B-Instruct-FP8",
                                 "fp4": "meta-llama--Meta-Llama-3.1-70B"},
    "meta-llama/Llama-3.1-8B-Instruct": {"fp8": "meta-llama--Meta-Llama-3.1-8B"},
}
#: (model_path, system) pairs ../shared/validation/modern already holds
IN_SHARED = {("Qwen/Qwen3-32B", "h100_sxm"), ("Qwen/Qwen3-235B-A22B-FP8", "h200_sxm"),
             ("meta-llama/Llama-3.1-70B", "h200_sxm"), ("nvidia/Llama-3.1-8B-Instruct-FP8", "h200_sxm"),
             ("deepseek-ai/DeepSeek-V3", "h200_sxm")}
COLUMNS = ("case_id,dataset,quality,source,engine,engine_version,model_hf,model,gpu,cluster,num_gpus,"
           "tp,pp,dp,ep,weight_dtype,kv_dtype,precision_detail,kv_cache_dtype,max_num_seqs,"
           "max_num_batched_tokens,gpu_memory_utilization,max_model_len,chunked_prefill,cuda_graphs,"
           "prefix_caching,workload_kind,trace,rate_req_s,concurrency,isl,osl,n_requests,workload,"
           "ttft_mean_ms,ttft_p50_ms,ttft_p99_ms,tpot_mean_ms,itl_mean_ms,e2e_mean_s,"
           "throughput_tok_s,energy,notes").split(",")


def convert(aic: Path, out: Path) -> tuple[int, int]:
    """Write ``out``/validation/modern/{ground_truth.csv, models/} from the checkout ``aic``;
    returns (rows written, rows skipped)."""
    base = out / "validation" / "modern"
    (base / "models").mkdir(parents=True, exist_ok=True)
    rows, skipped = [], 0
    with open(aic / SILICON, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["mode"] != "agg" or r["backend"] not in ("vllm", "sglang"):
                continue
            if (r["model_path"], r["system"]) in IN_SHARED:
                continue
            prec = r["precision"] or "bf16"
            stem = CHECKPOINT.get(r["model_path"], {}).get(prec)
            if stem is None or r["system"] not in CLUSTER:
                skipped += 1
                continue
            dst = base / "models" / stem
            if not dst.exists():
                dst.mkdir()
                for suffix, name in (("_config.json", "config.json"),
                                     ("_hf_quant_config.json", "hf_quant_config.json")):
                    src = aic / CONFIGS / f"{stem}{suffix}"
                    if src.exists():
                        shutil.copy(src, dst / name)
            tp, dp = int(r["tp_size"] or 1), int(r["attention_dp_size"] or 1)
            ep, moe_tp = int(r["moe_ep_size"] or 1), int(r["moe_tp_size"] or 1)
            if dp == 1 and ep == moe_tp > 1 and tp == moe_tp * ep:
                # dump artefact: some SGLang rows store tp_size = moe_tp x moe_ep with moe_tp =
                # moe_ep (TP16 / TP64 on one 8-GPU node); their ids say "tp4_ep4" / "tp8_ep8" and
                # duplicate the measurements of rows recorded as TP4 EP4 (e.g. id ..._1451 and
                # qwen3_5_b200_sglang_fp8_agg_8192x1024_c64_cfg615): the run was TP = EP = moe_ep
                tp, moe_tp = ep, 1
            red = 0
            heads, experts = _heads_experts(dst / "config.json")
            if (r["backend"] == "sglang" and dp == 1 and ep == 1 and moe_tp == tp > 1 and heads
                    and heads % tp and experts):
                # recorded TP72 / moe_tp72 (DeepSeek-R1 on GB200 NVL72): no engine runs that as
                # plain TP (128 heads, 2048-wide experts do not split over 72); SGLang's 72-GPU
                # DeepSeek launches are DP attention (--tp 72 --dp 72 --enable-dp-attention) with
                # the experts over EP 72 and the redundant slots that make 256 divisible (32)
                dp, tp, ep, moe_tp = tp, 1, tp, 1
                red = -experts % ep
            isl, osl, c = int(r["isl"]), int(r["osl"]), int(r["batch_size"])
            m = re.search(r"_c(\d+)_", r["id"])
            if m and int(m.group(1)) == c * dp:  # batch_size is per attention-DP rank
                c *= dp
            if r["backend"] == "vllm" and dp == tp > 1 and moe_tp == 1 and ep == tp * dp:
                # dump artefact: vLLM rows with attention_dp_size = tp_size and moe_ep = tp x dp
                # (TP4 ADP4 EP16 on one 8-GPU node) repeat the TTFT/TPOT of rows recorded as
                # TP = EP = tp_size at the id's c<N> concurrency: the run was TP = EP = tp_size
                dp, ep = 1, tp
            ttft, tpot = float(r["silicon_ttft_ms"]), float(r["silicon_tpot_ms"])
            ver = r["backend_version"] if r["backend_version"][:1].isdigit() else ""
            # the measurement date: validate_modern replays a row without a version with the
            # release out that day (its RELEASES)
            when = re.search(r"measured=(\d{4}-\d{2}-\d{2})", r.get("silicon_data_source", ""))
            row = dict.fromkeys(COLUMNS, "")
            row.update(case_id=f"aic-{r['id']}", dataset="aiconfigurator_silicon", quality="approx",
                       source=f"ai-dynamo/aiconfigurator:{SILICON} (id={r['id']})",
                       engine=r["backend"], engine_version=ver, model_hf=r["model_path"],
                       model=f"models/{stem}/config.json", gpu=r["system"].split("_")[0],
                       cluster=CLUSTER[r["system"]], num_gpus=str(tp * dp), tp=str(tp),
                       pp=r["pp_size"] or "1", dp=str(dp), ep=str(ep), weight_dtype=prec,
                       precision_detail=f"{prec} (gemm {r['gemm_quant_mode']}, moe {r['moe_quant_mode']})",
                       workload_kind="concurrency", concurrency=str(c), isl=str(isl), osl=str(osl),
                       ttft_mean_ms=str(ttft), tpot_mean_ms=str(tpot),
                       e2e_mean_s=str((ttft + tpot * (osl - 1)) / 1e3),
                       notes=f"moe_tp{moe_tp} moe_ep{ep}" + (f"; redundant_experts {red}" if red else "")
                       + (f"; measured {when.group(1)}" if when else ""))
            rows.append(row)
    with open(base / "ground_truth.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return len(rows), skipped


def _heads_experts(config: Path) -> tuple[int, int]:
    """(attention heads, routed experts) of a copied config.json (0 where absent)."""
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0, 0
    cfg = cfg.get("text_config", cfg)
    experts = cfg.get("n_routed_experts") or cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    return int(cfg.get("num_attention_heads") or 0), int(experts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aic", required=True, help="a checkout of github.com/ai-dynamo/aiconfigurator")
    ap.add_argument("--out", default=None, help="folder for the converted rows (default: a temporary "
                                                "one, removed afterwards)")
    ap.add_argument("--rows", default=None, help="only rows whose case_id or group matches this regex")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (validate_modern's)")
    ap.add_argument("--max-tokens-sent", choices=("own", "none"), default=None,
                    help="validate_modern's --max-tokens-sent (a hypothesis)")
    ap.add_argument("--engine-flags", choices=("defaults", "aic-generator"), default=None,
                    help="validate_modern's --engine-flags: the version's defaults, or the limits "
                         "aiconfigurator's generator writes (a hypothesis)")
    ap.add_argument("--json-only", action="store_true", help="print only the final JSON line")
    args = ap.parse_args(argv)
    aic = Path(args.aic).expanduser()
    if not (aic / SILICON).is_file():
        print(f"crosscheck_aic: {aic / SILICON}: not found (pass --aic, a checkout of "
              f"github.com/ai-dynamo/aiconfigurator)", file=sys.stderr)
        return 2
    tmp = None
    out = Path(args.out) if args.out else Path(tmp := tempfile.mkdtemp(prefix="apex-aic-"))
    try:
        n, skipped = convert(aic, out)
        if not args.json_only:
            print(f"{n} rows converted ({skipped} of other models / systems skipped) into {out}")
        import validate_modern

        vargs = ["--shared", str(out)]
        for flag, val in (("--rows", args.rows), ("--jobs", args.jobs),
                          ("--max-tokens-sent", args.max_tokens_sent),
                          ("--engine-flags", args.engine_flags)):
            if val is not None:
                vargs += [flag, str(val)]
        if args.json_only:
            vargs.append("--json-only")
        return validate_modern.main(vargs)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
