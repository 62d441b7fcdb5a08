"""`apex-opt profile`: shape plan, output format, atomic writing, CLI.

Tests that run torch skip when it is absent (the `torch` fixture); the plan / format / error tests
need no torch and always run.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from apex_opt.commands.profile import command
from apex_opt.errors import InputError
from apex_opt.profiling import COLUMNS, MISSING_TORCH, full_plan, run_profile, summarize_profile
from apex_opt.profiling import runner as runner_mod
from apex_opt.profiling.output import POWER_TABLES, TIMING_TABLES
from apex_opt.profiling.power import _result
from apex_opt.profiling.shapes import AttnCase, AttnDims, attention_projections, gemm_shapes
from apex_opt.profiling.tables import attention_flops
from apex_opt.specs.cluster import DeviceSpec

H100 = Path(__file__).resolve().parents[1] / "apex_opt" / "data" / "profiles" / "h100-sxm-80gb"


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _header(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return next(csv.reader(fh))


# --- plan and format (no torch) ------------------------------------------------------------------

def test_columns_are_those_of_the_bundled_profile():
    for name, cols in COLUMNS.items():
        assert _header(H100 / name) == cols, name


def test_full_plan_reproduces_the_h100_case_sets():
    plan = full_plan()
    h100_nk = {(int(r["n"]), int(r["k"])) for r in _rows(H100 / "gemm.csv")}
    assert {(s.n, s.k) for s in plan.gemm_shapes} == h100_nk
    assert len(plan.gemm_shapes) == len(h100_nk) == 114
    assert plan.gemm_m == tuple(sorted({int(r["m"]) for r in _rows(H100 / "gemm.csv")}))

    keys = ("phase", "batch", "q_heads", "kv_heads", "head_dim", "q_len", "kv_len")

    def attn(rows):
        return {tuple(r[k] if k == "phase" else int(r[k]) for k in keys) for r in rows}

    mine = {tuple(getattr(c, k) for k in keys) for c in plan.attention}
    assert mine == attn(_rows(H100 / "attention.csv"))
    mine = {tuple(getattr(c, k) for k in keys) for c in plan.chunked}
    assert mine == attn(_rows(H100 / "attention_chunked.csv"))
    grouped = {(r["model"], int(r["experts"]), int(r["tokens_per_expert"]), int(r["k"]),
                int(r["n"])) for r in _rows(H100 / "grouped_gemm.csv")}
    assert {(c.model, c.experts, c.tokens_per_expert, c.k, c.n) for c in plan.grouped} == grouped
    elem = {(r["op"], int(r["tokens"]), int(r["hidden"])) for r in _rows(H100 / "elementwise.csv")}
    assert {(c.op, c.tokens, c.hidden) for c in plan.elementwise} == elem
    assert plan.copy_mib == tuple(int(r["mbytes"]) for r in _rows(H100 / "bandwidth.csv"))


def test_projection_shapes_come_from_model_dimensions():
    d = AttnDims("m", hidden=8192, heads=64, kv_heads=8, head_dim=128, intermediate=28672)
    tp8 = {s.tag.rsplit("/", 1)[1]: (s.n, s.k) for s in attention_projections(d, 8)}
    assert tp8 == {"qkv": (1280, 8192), "o": (8192, 1024), "gate_up": (7168, 8192),
                   "down": (8192, 3584)}
    # KV heads are replicated, not split below one per GPU.
    small = AttnDims("s", hidden=1024, heads=8, kv_heads=2, head_dim=64, intermediate=None)
    assert attention_projections(small, 4)[0].n == (2 + 2 * 1) * 64
    shapes = gemm_shapes()
    assert len({(s.n, s.k) for s in shapes}) == len(shapes)  # deduplicated
    assert {(s.n, s.k) for s in shapes if s.tag.startswith("deepseek-v3/tp1/")} == {
        (1536, 7168), (24576, 1536), (576, 7168), (32768, 512), (7168, 16384)}


def test_attention_flops_match_the_h100_tables():
    for name in ("attention.csv", "attention_chunked.csv"):
        for r in _rows(H100 / name)[:40]:
            if not r["tflops"]:
                continue
            c = AttnCase(r["phase"], *(int(r[k]) for k in ("batch", "q_heads", "kv_heads",
                                                           "head_dim", "q_len", "kv_len")))
            assert attention_flops(c) / float(r["ms"]) / 1e9 == pytest.approx(float(r["tflops"]),
                                                                              rel=1e-6)


def test_energy_counter_arithmetic():
    samples = [{"power_w": 290.0, "sm_mhz": 1980, "mem_mhz": 2619, "temp_c": 50},
               {"power_w": 310.0, "sm_mhz": 1900, "mem_mhz": 2619, "temp_c": 52}]
    res = _result(samples, dt=2.0, e0=1000.0, e1=1600.0, calls=400)
    assert res["watts"] == pytest.approx(300.0)
    assert res["ms_per_call"] == pytest.approx(5.0)
    assert res["joules_per_call"] == pytest.approx(1.5)
    assert res["power_w"] == pytest.approx(300.0) and res["sm_mhz"] == pytest.approx(1940)
    # No energy counter: the sampled power stands in.
    assert _result(samples, 2.0, None, None, 0)["watts"] == pytest.approx(300.0)


def test_summary_of_the_bundled_profile():
    s = summarize_profile(H100)
    assert s.rows["gemm.csv"] == 3900 and s.missing == []
    assert 700 < s.peak_tflops["bf16"] < s.peak_tflops["fp8"]
    assert 2500 < s.peak_copy_gbps < 3500
    with pytest.raises(InputError, match="not found"):
        summarize_profile(H100 / "nope")


def test_missing_torch_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(InputError, match=r"apex-opt\[profile\]") as exc:
        run_profile(tmp_path / "p", quick=True, device="cpu")
    assert str(exc.value) == MISSING_TORCH
    res = CliRunner().invoke(command, ["--out", str(tmp_path / "p"), "--quick"])
    assert isinstance(res.exception, InputError)
    assert not (tmp_path / "p").exists()


def test_cli_rejects_bad_reps(tmp_path):
    res = CliRunner().invoke(command, ["--out", str(tmp_path / "p"), "--reps", "0"])
    assert res.exit_code == 2 and "--reps" in res.output


def test_help_tells_a_newcomer_what_and_how_long():
    out = CliRunner().invoke(command, ["--help"]).output
    for needle in ("gemm.csv", "power_curve.csv", "H100", "minutes", "profile: <name>", "--quick"):
        assert needle in out


# --- running it (torch, CPU) ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_profile(torch, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "my-box"
    res = CliRunner().invoke(command, ["--out", str(out), "--quick", "--device", "cpu"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out, res.output


def test_quick_cpu_profile_writes_every_table(quick_profile):
    out, output = quick_profile
    for name in TIMING_TABLES:
        rows = _rows(out / name)
        assert _header(out / name) == _header(H100 / name), name
        assert rows, name
        assert all(float(r["ms"]) > 0 for r in rows), name
        assert f"{name}" in output
    for name in POWER_TABLES:  # no NVML on a CPU
        assert not (out / name).exists()
    gemm = _rows(out / "gemm.csv")
    assert {r["dtype"] for r in gemm} == {"bf16"}  # fp8 is skipped on the CPU
    for r in gemm:
        m, n, k, ms = int(r["m"]), int(r["n"]), int(r["k"]), float(r["ms"])
        assert float(r["tflops"]) == pytest.approx(2 * m * n * k / ms / 1e9)
        assert float(r["gbps"]) == pytest.approx(2 * (n * k + m * k + m * n) / ms / 1e6)
    decode = [r for r in _rows(out / "attention.csv") if r["phase"] == "decode"]
    assert decode and all(float(r["gbps"]) > 0 and r["tflops"] == "" for r in decode)
    prefill = [r for r in _rows(out / "attention.csv") if r["phase"] == "prefill"]
    assert prefill and all(float(r["tflops"]) > 0 and r["gbps"] == "" for r in prefill)
    assert {r["op"] for r in _rows(out / "elementwise.csv")} == {"rmsnorm", "silu_mul",
                                                                 "residual_add"}
    assert "peak bf16 GEMM" in output and "GB/s" in output


def test_quick_profile_describes_itself(quick_profile):
    out, _ = quick_profile
    info = json.loads((out / "device.json").read_text())
    h100 = json.loads((H100 / "device.json").read_text())
    assert set(h100) <= set(info)
    assert info["device"] == "cpu" and info["profile_run"]["quick"] is True
    readme = (out / "README.md").read_text()
    assert "profile: my-box" in readme and "apex_opt/data/profiles/my-box/" in readme
    assert "power_curve.csv and energy.csv were not written" in readme
    blocks = [b.split("```", 1)[0] for b in readme.split("```yaml\n")[1:]]
    datasheet, device = (yaml.safe_load(b) for b in blocks)
    assert set(datasheet["my-box"]) == {"peak_tflops", "hbm_bandwidth_gbps", "power_limit_w"}
    assert set(device) <= set(DeviceSpec.model_fields) and device["profile"] == "my-box"


def test_quick_profile_parses_with_the_cost_model_loader(quick_profile):
    from apex_opt.costmodel.profile import parse_table

    out, _ = quick_profile
    for name in TIMING_TABLES:
        cols = parse_table((out / name).read_text(), f"profiles/my-box/{name}")
        assert len(cols["ms"]) > 0 and (cols["ms"] > 0).all()
    s = summarize_profile(out)
    assert s.missing == list(POWER_TABLES) and s.peak_tflops["bf16"] > 0


def test_refuses_a_non_empty_directory_and_force_replaces_it(torch, tmp_path):
    out = tmp_path / "prof"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = CliRunner().invoke(command, ["--out", str(out), "--quick", "--device", "cpu"])
    assert isinstance(res.exception, InputError) and "--force" in str(res.exception)
    assert (out / "keep.txt").read_text() == "mine"
    res = CliRunner().invoke(command, ["--out", str(out), "--quick", "--device", "cpu",
                                       "--force", "--reps", "1"])
    assert res.exit_code == 0, repr(res.exception)
    assert not (out / "keep.txt").exists() and (out / "gemm.csv").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["prof"]  # no temp dirs left behind


def test_a_failed_run_leaves_nothing(torch, tmp_path, monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(runner_mod, "bandwidth_table", boom)
    with pytest.raises(RuntimeError, match="exploded"):
        run_profile(tmp_path / "p", quick=True, device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_cuda_request_without_cuda_is_an_input_error(torch, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match="CUDA is not available"):
        run_profile(tmp_path / "p", quick=True, device="cuda")
    with pytest.raises(InputError, match="expected 'cuda'"):
        run_profile(tmp_path / "p", quick=True, device="tpu")


class _FakeSensor:
    """Stands in for NVML: the energy counter grows at a constant 250 W."""

    def __init__(self):
        import time
        self._clock = time.perf_counter
        self._t0 = self._clock()

    def energy_j(self):
        return 1000.0 + 250.0 * (self._clock() - self._t0)

    def sample(self):
        return {"power_w": 251.0, "sm_mhz": 1500, "mem_mhz": 2600, "temp_c": 40}

    def static(self):
        return {"power_limit_w": 700.0, "max_sm_mhz": 1980, "max_mem_mhz": 2619, "driver": "x"}


def test_power_tables_from_the_energy_counter(torch, monkeypatch):
    """The power loops on the CPU with a fake sensor (CUDA events replaced by no-ops)."""
    from dataclasses import replace

    from apex_opt.profiling.kernels import Maker, detect_capabilities
    from apex_opt.profiling.power import power_tables
    from apex_opt.profiling.shapes import PowerCase, quick_plan
    from apex_opt.profiling.timing import Bench

    class _Event:
        def record(self):
            pass

        def synchronize(self):
            pass

    monkeypatch.setattr(torch.cuda, "Event", _Event)
    mk = Maker(Bench(torch, "cpu", reps=1, warmup=0))
    caps = detect_capabilities(mk)
    curve = (PowerCase("gemm_bf16_m4_n256_k256", "gemm", m=4, n=256, k=256),
             PowerCase("decode_attn_b2_L128_h4kv2", "decode_attn", batch=2, q_heads=4, kv_heads=2,
                       kv_len=128, head_dim=64),
             PowerCase("idle_after_0s", "idle"))
    energy = (PowerCase("gemm_fp8_m16_n256_k256", "gemm", dtype="fp8", m=16, n=256, k=256),
              PowerCase("d2d_copy_1MiB", "d2d_copy", nbytes=1024 ** 2))
    plan = replace(quick_plan(), power_curve=curve, energy=energy, power_curve_s=0.15,
                   energy_s=0.15)
    rows_c, rows_e = power_tables(mk, caps, plan, _FakeSensor(), lambda _m: None)
    assert [r["case"] for r in rows_c] == [c.case for c in curve]
    assert [r["case"] for r in rows_e] == ["d2d_copy_1MiB"]  # no fp8 on the CPU
    for r in rows_c + rows_e:
        assert set(r) <= set(COLUMNS["power_curve.csv"]) | set(COLUMNS["energy.csv"])
        assert r["watts"] == pytest.approx(250.0, rel=0.05)
    gemm = rows_c[0]
    assert gemm["intensity_flop_per_byte"] == pytest.approx(
        2 * 4 * 256 * 256 / (2 * (256 * 256 + 4 * 256 + 4 * 256)))
    assert gemm["joules_per_call"] == pytest.approx(gemm["watts"] * gemm["ms_per_call"] / 1e3)
    assert rows_c[1]["intensity_flop_per_byte"] == pytest.approx(4 * 4 / (2 * 2 * 2))
    assert rows_c[2]["ms_per_call"] is None and rows_c[2]["intensity_flop_per_byte"] is None
    assert rows_e[0]["calls"] > 0 and rows_e[0]["tflops"] is None


def test_l2_flush_reads_and_leaves_the_cache_clean(torch, monkeypatch):
    """The CUDA timer's flush is a read of its buffer, never a write: a written flush buffer
    leaves dirty L2 lines whose write-back the timed kernel would pay (the bundled H100 profile's
    artifact). Run on the CPU with CUDA events replaced by fixed-duration stand-ins."""
    from apex_opt.profiling.timing import Bench

    durations = iter([3.0, 1.0, 2.0])

    class _Event:
        def __init__(self, enable_timing=False):
            pass

        def record(self):
            pass

        def elapsed_time(self, end):
            return next(durations)

    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    bench = Bench(torch, "cpu", reps=3, warmup=0, flush_bytes=4096)
    # the buffer a CUDA Bench allocates (zeros there; sevens here, so that any write shows)
    bench._flush = torch.full((1024,), 7, dtype=torch.int32)
    reads = []
    real_sum = torch.Tensor.sum
    monkeypatch.setattr(torch.Tensor, "sum", lambda self, *a, **k: reads.append(self.numel())
                        or real_sum(self, *a, **k))
    calls = []
    assert bench._cuda_ms(lambda: calls.append(1), 3) == 2.0  # the median of the three
    assert len(calls) == 3 and reads == [1024] * 3  # one full read before every timed call
    assert int(bench._flush.min()) == 7 == int(bench._flush.max())  # never written
