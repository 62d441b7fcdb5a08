"""device.json and README.md of a measured profile."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import dataclass
from typing import Any

from .kernels import Capabilities
from .shapes import ProfilePlan


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _ram_gib() -> float | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024 ** 3
    except (ValueError, OSError, AttributeError):
        return None


def device_info(torch: Any, device: str, sensor: Any | None) -> dict[str, Any]:
    """device.json content: the keys of the bundled H100 one (null when unknown) plus a few more."""
    info: dict[str, Any] = {"device": device.split(":")[0], "torch": torch.__version__}
    if device.startswith("cuda"):
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        info.update(name=props.name, sms=props.multi_processor_count,
                    mem_gib=props.total_memory / 1024 ** 3)
        info["compute_capability"] = f"{props.major}.{props.minor}"
        info["cuda"] = torch.version.cuda
    else:
        info.update(name=_cpu_name(), sms=None, mem_gib=_ram_gib())
        info["cpu_threads"] = torch.get_num_threads()
    sample = sensor.sample() if sensor is not None else {}
    static = sensor.static() if sensor is not None else {}
    for key in ("power_w", "sm_mhz", "mem_mhz", "temp_c"):
        info[key] = sample.get(key)
    for key in ("power_limit_w", "max_sm_mhz", "max_mem_mhz", "driver"):
        info[key] = static.get(key)
    return info


@dataclass(frozen=True)
class RunInfo:
    """How a profile was measured (for README.md and device.json)."""

    name: str
    device: str
    quick: bool
    reps: int
    warmup: int
    seconds: float
    caps: Capabilities
    power_note: str
    power_measured: bool
    skipped: dict[str, int]
    idle_w: float | None
    peak_tflops: dict[str, float]
    peak_copy_gbps: float | None

    def as_json(self) -> dict[str, Any]:
        return {"tool": "apex-opt profile", "quick": self.quick, "reps": self.reps,
                "warmup": self.warmup, "seconds": round(self.seconds, 1),
                "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "timer": _timer(self.device), "fp8": self.caps.fp8,
                "grouped_gemm": self.caps.grouped, "gqa": self.caps.gqa,
                "chunked_mask": self.caps.lower_right, "power": self.power_note,
                "skipped": self.skipped}


def _timer(device: str) -> str:
    if device.startswith("cuda"):
        return ("CUDA events, median of reps after warm-up, L2 flushed before every call "
                "(256 MiB buffer read: clean lines, no write-back inside the timed call)")
    return "time.perf_counter, median of reps after warm-up (no cache flush on the CPU)"


def _fmt(v: float | None, unit: str) -> str:
    return "n/a" if v is None else f"{v:,.1f} {unit}"


def render_readme(run: RunInfo, info: dict[str, Any], plan: ProfilePlan,
                  rows: dict[str, int]) -> str:
    """README.md of the output directory: what was measured, how, and how to use it."""
    parts = [str(info.get("name"))]
    if info.get("sms"):
        parts.append(f"{info['sms']} SMs")
    if info.get("mem_gib"):
        parts.append(f"{info['mem_gib']:.1f} GiB")
    if info.get("power_limit_w"):
        parts.append(f"power limit {info['power_limit_w']:g} W")
    if info.get("max_sm_mhz"):
        parts.append(f"max SM clock {info['max_sm_mhz']} MHz")
    if info.get("driver"):
        parts.append(f"driver {info['driver']}")
    parts.append(f"PyTorch {info.get('torch')}")
    quick = (" with `--quick` (toy sizes: a smoke test of the pipeline, not a model of this "
             "device)") if run.quick else ""
    head = [f"# {info.get('name')} — measured operator profile ({run.name})", "",
            f"Measured by `apex-opt profile`{quick} on `{run.device}`: {', '.join(parts)}. "
            "Default clocks (nothing pinned).", "",
            f"Timing: {_timer(run.device)}; {run.reps} reps, {run.warmup} warm-up calls. "
            f"Times in milliseconds. Took {run.seconds:.0f} s. `device.json` has the device state "
            "and the settings of this run.", ""]
    return "\n".join(head + _table_section(run, plan, rows) + _notes(run) + _usage(run, info)) + "\n"


def _table_section(run: RunInfo, plan: ProfilePlan, rows: dict[str, int]) -> list[str]:
    c = run.caps
    ms = plan.gemm_m
    fp8 = ("fp8 = e4m3 weights and activations via `torch._scaled_mm` (per-tensor scales) with "
           "bf16 output; m is padded up to a multiple of 16 (`m_padded`)." if c.fp8
           else f"No fp8 rows ({c.fp8_note}).")
    grouped = ("one `torch._grouped_mm` call" if c.grouped == "torch._grouped_mm"
               else "one `torch.bmm` over [experts, tokens, k] (torch._grouped_mm unavailable "
                    "here; equal tokens per expert make it the same product)")
    gqa = ("`enable_gqa=True`" if c.gqa == "enable_gqa"
           else "K/V repeated to the query heads before timing (no native GQA in this torch)")
    mask = ("`torch.nn.attention.bias.causal_lower_right`" if c.lower_right == "causal_lower_right"
            else "an explicit boolean mask")
    lines = [
        "| file | rows | columns | notes |", "|---|---|---|---|",
        f"| `gemm.csv` | {rows.get('gemm.csv', 0)} | dtype (bf16{', fp8' if c.fp8 else ''}), m, n, "
        f"k, tag, ms, tflops, gbps, m_padded | y[m,n] = x[m,k] · W[n,k]ᵀ, m = {ms[0]} … {ms[-1]} "
        f"tokens; {len(plan.gemm_shapes)} unique (n,k) = projections (qkv, o, gate_up, down, "
        f"experts, MLA) of {', '.join(plan.models)} at TP {'/'.join(map(str, plan.tp_degrees))} "
        f"plus the {len(plan.grid)}×{len(plan.grid)} grid n, k ∈ {{{', '.join(map(str, plan.grid))}}}; "
        f"`tag` says which. {fp8} |",
        f"| `grouped_gemm.csv` | {rows.get('grouped_gemm.csv', 0)} | model, experts, "
        f"tokens_per_expert, k, n, ms, tflops | MoE expert gate/up projection over all local "
        f"experts as {grouped}, bf16, equal tokens per expert |",
        f"| `attention.csv` | {rows.get('attention.csv', 0)} | phase, batch, q_heads, kv_heads, "
        f"head_dim, q_len, kv_len, ms, tflops, gbps | `scaled_dot_product_attention`, GQA via "
        f"{gqa}, bf16. prefill = causal over q_len = kv_len (≤ {plan.prefill_token_cap} tokens "
        f"per call); decode = one query per sequence against kv_len cached tokens (K+V ≤ "
        f"{plan.decode_kv_cap_bytes / 1024 ** 3:g} GiB), gbps = K+V bytes read. Heads per GPU. |",
        f"| `attention_chunked.csv` | {rows.get('attention_chunked.csv', 0)} | phase, batch, "
        f"q_heads, kv_heads, head_dim, q_len, kv_len, ms, tflops | chunked prefill: q_len new "
        f"tokens against kv_len (cached + new) with a lower-right causal mask ({mask}) |",
        f"| `elementwise.csv` | {rows.get('elementwise.csv', 0)} | op, tokens, hidden, ms | "
        "rmsnorm (fp32 accumulate, unfused torch ops), silu_mul (SwiGLU gate over [tokens, "
        "2·hidden]), residual_add |",
        f"| `bandwidth.csv` | {rows.get('bandwidth.csv', 0)} | op, mbytes, ms, gbps_rw | "
        "device-to-device copy of mbytes MiB; gbps_rw counts bytes read + written |",
    ]
    if run.power_measured:
        lines += [
            f"| `power_curve.csv` | {rows.get('power_curve.csv', 0)} | "
            "case, intensity_flop_per_byte, watts, joules_per_call, ms_per_call, power_w, "
            "sm_mhz, mem_mhz, temp_c | "
            f"average power of back-to-back bf16 GEMMs (growing m against a 28672×8192 weight) "
            f"and decode attention at growing batch, {plan.power_curve_s:g} s each; watts from "
            f"the NVML energy counter, power_w / clocks / temp = medians of NVML samples while "
            f"busy; last row idle after rest |",
            f"| `energy.csv` | {rows.get('energy.csv', 0)} | case, watts, power_w, sm_mhz, "
            f"mem_mhz, temp_c, joules_per_call, calls, ms_per_call, tflops | each case run "
            f"back-to-back for {plan.energy_s:g} s, read from the NVML energy counter; tflops = "
            f"TFLOP per joule for GEMMs |"]
    return lines + [""]


def _notes(run: RunInfo) -> list[str]:
    out = ["## Notes", ""]
    if not run.power_measured:
        out.append(f"- power_curve.csv and energy.csv were not written: {run.power_note}. The cost "
                   "model then falls back to its datasheet power model (device YAML "
                   "`power_limit_w`, `idle_power_w`).")
    if run.skipped:
        out.append("- Cases skipped because they did not fit in memory: "
                   + ", ".join(f"{k}: {v}" for k, v in sorted(run.skipped.items())) + ".")
    peaks = ", ".join(f"{d} {v:,.1f} TFLOP/s" for d, v in run.peak_tflops.items()) or "n/a"
    out.append(f"- Peak measured: GEMM {peaks}; device copy {_fmt(run.peak_copy_gbps, 'GB/s')} "
               "(read + write).")
    return out + [""]


def _usage(run: RunInfo, info: dict[str, Any]) -> list[str]:
    """How to plug the profile into a DeviceSpec."""
    bf16 = run.peak_tflops.get("bf16")
    fp8 = run.peak_tflops.get("fp8")
    peaks = f"bf16: {bf16:.4g}" if bf16 else "bf16: <datasheet>"
    if fp8:
        peaks += f", fp8: {fp8:.4g}"
    mem = info.get("mem_gib")
    bw = f"{run.peak_copy_gbps:.4g}" if run.peak_copy_gbps else "<datasheet>"
    limit = info.get("power_limit_w")
    idle = run.idle_w
    return [
        "## Using this profile", "",
        f"1. Copy this directory to `apex_opt/data/profiles/{run.name}/`.",
        "2. Add the device's datasheet (dense) peaks to `apex_opt/data/profiles/datasheets.yaml`; "
        "the cost model divides measured throughput by them. Values below are this run's "
        "measured bests as placeholders — replace them with the datasheet figures:", "",
        "```yaml",
        f"{run.name}:",
        f"  peak_tflops: {{{peaks}}}",
        f"  hbm_bandwidth_gbps: {bw}",
        f"  power_limit_w: {limit:g}" if limit else "  power_limit_w: <W>",
        "```", "",
        f"3. Reference it from a device YAML (`apex_opt/data/devices/{run.name}.yaml`, or inline "
        "under a pool's `device:` in a cluster file):", "",
        "```yaml",
        f"name: {run.name}",
        "vendor: nvidia",
        f"memory_gib: {mem:.1f}" if mem else "memory_gib: <GiB>",
        f"peak_tflops: {{{peaks}}}   # datasheet dense peaks",
        f"hbm_bandwidth_gbps: {bw}   # datasheet; measured copy rate (read + write) here",
        f"power_limit_w: {limit:g}" if limit else "power_limit_w: <W>",
        f"idle_power_w: {idle:.0f}   # measured (energy.csv)" if idle else "idle_power_w: <W>",
        f"profile: {run.name}",
        "source: apex-opt profile",
        "```", "",
        "4. Check it with `apex-opt check --cluster <your cluster.yaml>`.",
    ]
