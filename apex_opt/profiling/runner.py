"""`run_profile`: measure every table of a profile on one device and write the directory."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from .describe import RunInfo, device_info, render_readme
from .kernels import Capabilities, Maker, detect_capabilities
from .output import check_target, staging_dir, write_csv, write_json
from .power import Sensor, load_nvml, nvml_handle, power_tables
from .shapes import ProfilePlan, full_plan, quick_plan
from .tables import (Notes, attention_table, bandwidth_table, elementwise_table, gemm_table,
                     grouped_table)
from .timing import Bench

MISSING_TORCH = "the 'profile' extra is required: pip install 'apex-opt[profile]'"
DEFAULT_REPS = {True: 3, False: 10}
DEFAULT_WARMUP = {True: 1, False: 3}


def import_torch() -> Any:
    """torch, or InputError naming the extra to install."""
    try:
        return importlib.import_module("torch")
    except ImportError:
        raise InputError(MISSING_TORCH) from None


def resolve_device(torch: Any, device: str | None) -> str:
    """'cuda' / 'cuda:N' / 'cpu'; default cuda when available."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError("CUDA is not available to this torch build (use --device cpu, or "
                             "install a CUDA build of torch)", field="device", value=device)
        try:
            idx = torch.device(device).index or 0
        except RuntimeError:
            raise InputError("not a device torch understands", field="device", value=device) from None
        if idx >= torch.cuda.device_count():
            raise InputError(f"only {torch.cuda.device_count()} CUDA device(s) visible",
                             field="device", value=device)
        return device
    raise InputError("expected 'cuda', 'cuda:N' or 'cpu'", field="device", value=device)


def _spin_up(mk: Maker, seconds: float) -> None:
    """Run a large GEMM for a while so that clocks are up before the first timed case."""
    if not mk.b.cuda or seconds <= 0:
        return
    x, w = mk.randn(4096, 4096), mk.randn(4096, 4096)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            mk.t.mm(x, w)
        mk.b.synchronize()


def _sensor(torch: Any, device: str, quick: bool) -> tuple[Sensor | None, str]:
    if not device.startswith("cuda"):
        return None, "not a CUDA device (NVML measures NVIDIA GPUs only)"
    nvml, note = load_nvml()
    if nvml is None:
        return None, note
    try:
        sensor = Sensor(nvml, nvml_handle(nvml, torch, device))
    except Exception as exc:  # noqa: BLE001 -- NVMLError subclasses
        return None, f"no NVML handle for {device} ({exc})"
    if quick:
        return sensor, "skipped by --quick"
    if sensor.energy_j() is None:
        return sensor, ("NVML energy counter not supported: watts are medians of power samples "
                        "taken while busy")
    return sensor, "NVML energy counter (nvmlDeviceGetTotalEnergyConsumption)"


def _measure(mk: Maker, caps: Capabilities, plan: ProfilePlan, notes: Notes,
             say: Callable[[str], None]) -> dict[str, list[dict]]:
    return {
        "gemm.csv": gemm_table(mk, caps, plan, notes, say),
        "grouped_gemm.csv": grouped_table(mk, caps, plan, notes, say),
        "attention.csv": attention_table(mk, caps, plan.attention, "attention.csv", notes, say),
        "attention_chunked.csv": attention_table(mk, caps, plan.chunked, "attention_chunked.csv",
                                                 notes, say),
        "elementwise.csv": elementwise_table(mk, plan.elementwise, say),
        "bandwidth.csv": bandwidth_table(mk, plan.copy_mib, notes, say),
    }


def _peaks(tables: dict[str, list[dict]]) -> tuple[dict[str, float], float | None]:
    tf: dict[str, float] = {}
    for r in tables["gemm.csv"]:
        tf[r["dtype"]] = max(tf.get(r["dtype"], 0.0), r["tflops"])
    bw = [r["gbps_rw"] for r in tables["bandwidth.csv"]]
    return tf, (max(bw) if bw else None)


def run_profile(out_dir: Path, *, quick: bool, device: str | None = None,
                progress: Callable[[str], None] | None = None, force: bool = False,
                reps: int | None = None, plan: ProfilePlan | None = None) -> Path:
    """Measure the operator tables on ``device`` and write a profile directory at ``out_dir``.

    ``quick`` uses toy sizes and few repetitions (seconds, even on a CPU) and skips power.
    ``plan`` overrides the cases measured (tests, experiments). Refuses a non-empty ``out_dir``
    unless ``force``; writes atomically (nothing is left behind on failure). Returns ``out_dir``.
    """
    torch = import_torch()
    out_dir = Path(out_dir)
    dev = resolve_device(torch, device)
    check_target(out_dir, force)
    if reps is not None and reps < 1:
        raise InputError("must be >= 1", field="reps", value=reps)
    say = progress or (lambda _msg: None)
    plan = plan or (quick_plan() if quick else full_plan())
    reps = reps or DEFAULT_REPS[quick]
    t0 = time.perf_counter()
    bench = Bench(torch, dev, reps=reps, warmup=DEFAULT_WARMUP[quick])
    mk = Maker(bench)
    caps = detect_capabilities(mk)
    say(f"device {dev}: fp8 {'yes' if caps.fp8 else 'no'}, grouped GEMM {caps.grouped}, "
        f"GQA {caps.gqa}")
    sensor, power_note = _sensor(torch, dev, quick)
    with staging_dir(out_dir, force) as tmp:
        _spin_up(mk, 0.3 if quick else 2.0)
        notes = Notes()
        tables = _measure(mk, caps, plan, notes, say)
        power_measured = sensor is not None and not quick
        if power_measured:
            tables["power_curve.csv"], tables["energy.csv"] = power_tables(mk, caps, plan, sensor,
                                                                           say)
        for name, rows in tables.items():
            write_csv(tmp / name, rows)
        info = device_info(torch, dev, sensor)
        peaks, copy_bw = _peaks(tables)
        idle = next((r["watts"] for r in tables.get("energy.csv", []) if r["case"] == "idle"),
                    None)
        run = RunInfo(name=out_dir.absolute().name, device=dev, quick=quick, reps=reps,
                      warmup=bench.warmup, seconds=time.perf_counter() - t0, caps=caps,
                      power_note=power_note, power_measured=power_measured,
                      skipped=dict(notes.skipped), idle_w=idle, peak_tflops=peaks,
                      peak_copy_gbps=copy_bw)
        write_json(tmp / "device.json", {**info, "profile_run": run.as_json()})
        counts = {name: len(rows) for name, rows in tables.items()}
        (tmp / "README.md").write_text(render_readme(run, info, plan, counts), encoding="utf-8")
        say(f"wrote {len(tables)} tables in {time.perf_counter() - t0:.1f} s")
    return out_dir
