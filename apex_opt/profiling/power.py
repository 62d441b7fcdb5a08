"""Power and energy via NVML (`pynvml`, shipped by the `nvidia-ml-py` package).

Each case runs back-to-back for a fixed wall time while at most two chunks of ~50 ms of work are in
flight; average watts = Δ(total energy counter) / Δt, with the instantaneous NVML power reading,
SM / memory clocks and temperature sampled while the GPU is busy (medians of the samples).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

from .kernels import Capabilities, Maker
from .shapes import PowerCase, ProfilePlan
from .timing import Bench

Progress = Callable[[str], None]


def load_nvml() -> tuple[Any | None, str]:
    """(pynvml module initialised, note) or (None, why not)."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None, "NVML not importable (pip install nvidia-ml-py): power_curve.csv and " \
                     "energy.csv were not measured"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 -- NVMLError has many subclasses
        return None, f"NVML init failed ({exc}): power_curve.csv and energy.csv were not measured"
    return pynvml, "NVML"


def nvml_handle(nvml: Any, torch: Any, device: str) -> Any:
    """NVML handle of the torch device (by UUID, else PCI bus id, else index)."""
    idx = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(idx)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except Exception:  # noqa: BLE001
            pass
    bus = getattr(props, "pci_bus_id", None)
    if bus is not None:
        dom, dev = getattr(props, "pci_domain_id", 0), getattr(props, "pci_device_id", 0)
        try:
            return nvml.nvmlDeviceGetHandleByPciBusId(f"{dom:08X}:{bus:02X}:{dev:02X}.0")
        except Exception:  # noqa: BLE001
            pass
    return nvml.nvmlDeviceGetHandleByIndex(idx)


@dataclass
class Sensor:
    """Readings of one GPU."""

    nvml: Any
    handle: Any

    def _q(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:  # noqa: BLE001 -- a reading this GPU does not support
            return None

    def energy_j(self) -> float | None:
        mj = self._q(lambda: self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        return None if mj is None else mj / 1e3

    def sample(self) -> dict[str, float | None]:
        n, h = self.nvml, self.handle
        mw = self._q(lambda: n.nvmlDeviceGetPowerUsage(h))
        return {"power_w": None if mw is None else mw / 1e3,
                "sm_mhz": self._q(lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
                "mem_mhz": self._q(lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)),
                "temp_c": self._q(lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))}

    def static(self) -> dict[str, Any]:
        """Limits and versions for device.json."""
        n, h = self.nvml, self.handle
        lim = self._q(lambda: n.nvmlDeviceGetEnforcedPowerLimit(h))
        drv = self._q(n.nvmlSystemGetDriverVersion)
        return {"power_limit_w": None if lim is None else lim / 1e3,
                "max_sm_mhz": self._q(lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_SM)),
                "max_mem_mhz": self._q(lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_MEM)),
                "driver": drv.decode() if isinstance(drv, bytes) else drv}


def _median(samples: list[dict], key: str) -> float | None:
    vals = [s[key] for s in samples if s.get(key) is not None]
    return float(statistics.median(vals)) if vals else None


def sustained(b: Bench, sensor: Sensor, fn: Callable[[], Any], seconds: float) -> dict[str, Any]:
    """Run ``fn`` back-to-back for ``seconds``: calls, ms per call, average and sampled watts."""
    t = b.torch
    per_call_ms = b.time_ms(fn, reps=3)
    chunk = max(1, int(50.0 / max(per_call_ms, 1e-3)))
    samples: list[dict] = []
    b.synchronize()
    e0, t0 = sensor.energy_j(), time.perf_counter()
    calls, prev = 0, None
    while time.perf_counter() - t0 < seconds:
        for _ in range(chunk):
            fn()
        ev = t.cuda.Event()
        ev.record()
        calls += chunk
        if prev is not None:
            prev.synchronize()  # keep at most two chunks queued so wall time tracks GPU time
            samples.append(sensor.sample())
        prev = ev
    b.synchronize()
    dt, e1 = time.perf_counter() - t0, sensor.energy_j()
    return _result(samples, dt, e0, e1, calls)


def idle(b: Bench, sensor: Sensor, seconds: float, rest_s: float) -> dict[str, Any]:
    b.synchronize()
    time.sleep(rest_s)
    samples: list[dict] = []
    e0, t0 = sensor.energy_j(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        time.sleep(0.1)
        samples.append(sensor.sample())
    return _result(samples, time.perf_counter() - t0, e0, sensor.energy_j(), 0)


def _result(samples: list[dict], dt: float, e0: float | None, e1: float | None,
            calls: int) -> dict[str, Any]:
    power_w = _median(samples, "power_w")
    watts = (e1 - e0) / dt if e0 is not None and e1 is not None and e1 > e0 else power_w
    ms_per_call = dt * 1e3 / calls if calls else None
    return {"watts": watts, "power_w": power_w, "sm_mhz": _median(samples, "sm_mhz"),
            "mem_mhz": _median(samples, "mem_mhz"), "temp_c": _median(samples, "temp_c"),
            "calls": calls or None, "ms_per_call": ms_per_call,
            "joules_per_call": watts * ms_per_call / 1e3 if watts and ms_per_call else None}


def case_kernel(mk: Maker, caps: Capabilities,
                c: PowerCase) -> tuple[Callable[[], Any] | None, float, float]:
    """(callable, FLOPs per call, bytes per call) of a power case; callable None when skipped."""
    t = mk.t
    if c.kind == "gemm":
        if c.dtype == "fp8" and not caps.fp8:
            return None, 0.0, 0.0
        rows = -(-c.m // 16) * 16 if c.dtype == "fp8" else c.m
        w, x = mk.randn(c.n, c.k), mk.randn(rows, c.k)
        flops = 2.0 * c.m * c.n * c.k
        if c.dtype == "fp8":
            fn = mk.scaled_mm(x.to(t.float8_e4m3fn), w.to(t.float8_e4m3fn))
            return fn, flops, float(c.n * c.k + rows * c.k + 2 * rows * c.n)
        return mk.mm(x, w), flops, float(2 * (c.n * c.k + c.m * c.k + c.m * c.n))
    if c.kind == "decode_attn":
        q = mk.randn(c.batch, c.q_heads, 1, c.head_dim)
        k = mk.randn(c.batch, c.kv_heads, c.kv_len, c.head_dim)
        v = mk.randn(c.batch, c.kv_heads, c.kv_len, c.head_dim)
        flops = 4.0 * c.batch * c.q_heads * c.kv_len * c.head_dim
        kv = 2.0 * 2 * c.batch * c.kv_heads * c.kv_len * c.head_dim
        return mk.attention(caps, q, k, v, causal=False), flops, kv
    if c.kind == "d2d_copy":
        return mk.copy(c.nbytes), 0.0, 2.0 * c.nbytes
    raise ValueError(f"unknown power case kind {c.kind!r}")


def _measure(mk: Maker, caps: Capabilities, sensor: Sensor, c: PowerCase,
             seconds: float) -> tuple[dict[str, Any], float, float] | None:
    """(readings, FLOPs per call, bytes per call) or None when the case cannot run here."""
    if c.kind == "idle":
        mk.b.release()
        return idle(mk.b, sensor, seconds, c.rest_s), 0.0, 0.0
    fn, flops, nbytes = case_kernel(mk, caps, c)
    if fn is None:
        return None
    res = sustained(mk.b, sensor, fn, seconds)
    del fn
    mk.b.release()
    return res, flops, nbytes


def power_tables(mk: Maker, caps: Capabilities, plan: ProfilePlan, sensor: Sensor,
                 say: Progress) -> tuple[list[dict], list[dict]]:
    """Rows of power_curve.csv and energy.csv."""
    curve: list[dict] = []
    say(f"power curve: {len(plan.power_curve)} cases x {plan.power_curve_s:g} s")
    for c in plan.power_curve:
        got = _measure(mk, caps, sensor, c, plan.power_curve_s)
        if got is None:
            continue
        res, flops, nbytes = got
        curve.append({"case": c.case, "intensity_flop_per_byte": flops / nbytes if nbytes else None,
                      **{k: res[k] for k in ("watts", "joules_per_call", "ms_per_call", "power_w",
                                             "sm_mhz", "mem_mhz", "temp_c")}})
    energy: list[dict] = []
    say(f"energy: {len(plan.energy)} cases x {plan.energy_s:g} s")
    for c in plan.energy:
        got = _measure(mk, caps, sensor, c, plan.energy_s)
        if got is None:
            continue
        res, flops, _ = got
        jpc = res["joules_per_call"]
        energy.append({"case": c.case, **res,
                       "tflops": flops / jpc / 1e12 if flops and jpc else None})
    return curve, energy
