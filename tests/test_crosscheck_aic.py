"""scripts/crosscheck_aic.py: aiconfigurator's silicon rows in validate_modern's format (a tiny
synthetic checkout here; the real one is the user's)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import crosscheck_aic as cc  # noqa: E402

_HEAD = ("id,silicon_data_source,backend,backend_version,model_path,system,precision,mode,isl,osl,"
         "gemm_quant_mode,moe_quant_mode,batch_size,tp_size,pp_size,attention_dp_size,moe_tp_size,"
         "moe_ep_size,silicon_ttft_ms,silicon_tpot_ms")


def _checkout(tmp: Path, lines: list[str]) -> Path:
    sil = tmp / cc.SILICON
    sil.parent.mkdir(parents=True)
    sil.write_text("\n".join([_HEAD] + lines) + "\n")
    cfgs = tmp / cc.CONFIGS
    cfgs.mkdir(parents=True)
    (cfgs / "MiniMaxAI--MiniMax-M2.5_config.json").write_text(json.dumps({"model_type": "x"}))
    return tmp


def test_rows_convert_with_aiconfigurators_conventions(tmp_path):
    aic = _checkout(tmp_path / "aic", [
        # attention-DP row: batch_size is per DP rank, the id's c is batch x dp
        "mm_b200_sglang_fp8_agg_1024x1024_c32_cfg1,s,sglang,0.5.9,MiniMaxAI/MiniMax-M2.5,b200_sxm,fp8,"
        "agg,1024,1024,fp8,fp8,16,2,1,2,1,4,100.0,10.0",
        # nightly version -> blank; plain TP row
        "mm_h200_vllm_fp8_agg_1024x128_c8_cfg2,s,vllm,nightly-abc,MiniMaxAI/MiniMax-M2.5,h200_sxm,fp8,"
        "agg,1024,128,fp8,fp8,8,4,1,1,4,1,50.0,5.0",
        # already in ../shared: left out; disagg and TRT-LLM rows: left out
        "q_h100,s,vllm,0.12.0,Qwen/Qwen3-32B,h100_sxm,,agg,1024,128,,,8,2,1,1,0,0,1,1",
        "d,s,vllm,0.19.0,MiniMaxAI/MiniMax-M2.5,b200_sxm,fp8,disagg,1024,128,fp8,fp8,8,4,1,1,4,1,1,1",
        "t,s,trtllm,1.0,MiniMaxAI/MiniMax-M2.5,b200_sxm,fp8,agg,1024,128,fp8,fp8,8,4,1,1,4,1,1,1",
        # a GPU without a bundled cluster: skipped and counted
        "g,s,sglang,0.5.9,MiniMaxAI/MiniMax-M2.5,a100_sxm,fp8,agg,1024,128,fp8,fp8,8,4,1,1,4,1,1,1",
    ])
    n, skipped = cc.convert(aic, tmp_path / "out")
    assert (n, skipped) == (2, 1)
    base = tmp_path / "out" / "validation" / "modern"
    rows = {r["case_id"]: r for r in csv.DictReader(open(base / "ground_truth.csv"))}
    a = rows["aic-mm_b200_sglang_fp8_agg_1024x1024_c32_cfg1"]
    assert (a["concurrency"], a["tp"], a["dp"], a["num_gpus"], a["cluster"]) == ("32", "2", "2", "4", "b200-1x8")
    assert a["notes"] == "moe_tp1 moe_ep4" and a["engine_version"] == "0.5.9"
    assert float(a["e2e_mean_s"]) == (100.0 + 10.0 * 1023) / 1e3
    b = rows["aic-mm_h200_vllm_fp8_agg_1024x128_c8_cfg2"]
    assert b["engine_version"] == "" and b["concurrency"] == "8"
    assert (base / "models" / "MiniMaxAI--MiniMax-M2.5" / "config.json").is_file()
    header = open(base / "ground_truth.csv").readline().strip().split(",")
    assert header == list(cc.COLUMNS) and "ttft_mean_ms" in header and "notes" in header


def test_single_node_tp16_dump_rows_read_as_tp_equal_ep(tmp_path):
    """Rows storing tp_size = moe_tp x moe_ep with moe_tp = moe_ep (TP16 on one 8-GPU node, id
    'tp4_ep4') replay as TP4 EP4; so do vLLM rows storing attention_dp = tp with moe_ep = tp x dp
    (EP16 on one 8-GPU node, id 'tp4_ep4'), at the id's concurrency."""
    aic = _checkout(tmp_path / "aic", [
        "x_sglang_fp8_agg_1024x1024_c8_tp4_ep4_1,s,sglang,0.5.9,MiniMaxAI/MiniMax-M2.5,b200_sxm,fp8,"
        "agg,1024,1024,fp8,fp8,8,16,1,1,4,4,100.0,10.0",
        "y_vllm_fp8_agg_1024x1024_c64_tp4_ep4_2,s,vllm,0.19.0,MiniMaxAI/MiniMax-M2.5,b200_sxm,fp8,"
        "agg,1024,1024,fp8,fp8,16,4,1,4,1,16,100.0,10.0",
    ])
    cc.convert(aic, tmp_path / "out")
    rows = {r["case_id"]: r for r in csv.DictReader(
        open(tmp_path / "out" / "validation" / "modern" / "ground_truth.csv"))}
    x = rows["aic-x_sglang_fp8_agg_1024x1024_c8_tp4_ep4_1"]
    assert (x["tp"], x["ep"], x["dp"], x["num_gpus"], x["notes"]) == ("4", "4", "1", "4", "moe_tp1 moe_ep4")
    y = rows["aic-y_vllm_fp8_agg_1024x1024_c64_tp4_ep4_2"]
    assert (y["tp"], y["dp"], y["ep"], y["num_gpus"], y["concurrency"]) == ("4", "1", "4", "4", "64")
    assert y["notes"] == "moe_tp1 moe_ep4"


def test_a_missing_checkout_is_one_line_exit_2(tmp_path, capsys):
    assert cc.main(["--aic", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "silicon_sample.csv: not found" in err[0]


def test_sglang_tp72_rows_read_as_dp_attention_with_redundant_experts(tmp_path):
    """SGLang DeepSeek-R1 rows recorded as TP72 / moe_tp72 on GB200 NVL72 (no engine splits 128
    heads or 2048-wide experts over 72 GPUs) replay as DP attention 72 with EP 72 and the 32
    redundant expert slots that make 256 experts divisible; validate_modern reads them back."""
    aic = _checkout(tmp_path / "aic", [
        "r_gb200_sglang_fp8_agg_1024x1024_c4608_tp72_ep1_45,s,sglang,,deepseek-ai/DeepSeek-R1,gb200,"
        "fp8,agg,1024,1024,fp8,fp8_block,4608,72,1,1,72,1,3556.0,31.85",
    ])
    stem = cc.CHECKPOINT["deepseek-ai/DeepSeek-R1"]["fp8"]
    (aic / cc.CONFIGS / f"{stem}_config.json").write_text(json.dumps(
        {"model_type": "deepseek_v3", "num_attention_heads": 128, "n_routed_experts": 256}))
    cc.convert(aic, tmp_path / "out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "validation" / "modern" / "ground_truth.csv")))
    r = rows[0]
    assert (r["tp"], r["dp"], r["ep"], r["num_gpus"], r["concurrency"], r["cluster"]) == (
        "1", "72", "72", "72", "4608", "gb200-nvl72")
    assert r["notes"] == "moe_tp1 moe_ep72; redundant_experts 32"
    import validate_modern as vm
    from apex_opt.specs.engine import load_engine
    from apex_opt.specs.model import load_model
    plan, note = vm.row_plan(r, load_model("deepseek-v3"), load_engine("sglang"))
    g = plan.groups[0]
    assert (g.tp, g.ep, g.attention_dp, g.redundant_experts, g.replicas) == (72, 72, 72, 32, 1)
    assert "+32 redundant experts" in note
