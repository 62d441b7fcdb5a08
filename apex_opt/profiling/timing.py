"""Kernel timers: CUDA events with an L2 flush between calls, or perf_counter on the CPU.

Both return the median of ``reps`` calls in milliseconds after ``warmup`` untimed calls.

The flush READS a 256 MiB buffer (a sum over it), so the L2 holds only clean lines when the timed
call starts: the previous call's dirty outputs are written back during the flush, not inside the
timed window. A flush that WRITES the buffer (``triton.testing.do_bench``'s ``cache.zero_()``, which
the bundled H100 profile was measured with) leaves the L2 full of dirty lines, and the timed
kernel then pays their write-back as it evicts them: ~7 us on a memory-bound H100 GEMM (see
``scripts/validate_costmodel.py``, "profiler L2-flush write-back"), time that serving, whose
weight lines are clean, never pays.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

L2_FLUSH_BYTES = 256 * 1024 ** 2


@dataclass
class Bench:
    """Where and how to time: the torch module, the device, repetitions and memory headroom."""

    torch: Any
    device: str
    reps: int
    warmup: int
    flush_bytes: int = L2_FLUSH_BYTES
    mem_fraction: float = 0.85  # share of free memory one case may allocate
    _flush: Any = field(default=None, init=False, repr=False)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def __post_init__(self) -> None:
        if self.reps < 1 or self.warmup < 0:
            raise ValueError("reps must be >= 1 and warmup >= 0")
        if self.cuda:
            self._flush = self.torch.zeros(self.flush_bytes // 4, dtype=self.torch.int32,
                                           device=self.device)

    def time_ms(self, fn: Callable[[], object], reps: int | None = None) -> float:
        """Median milliseconds of ``fn()`` (warm-up first; on CUDA the L2 is flushed before each
        timed call by reading a 256 MiB buffer, which leaves it clean)."""
        reps = reps or self.reps
        for _ in range(self.warmup):
            fn()
        return self._cuda_ms(fn, reps) if self.cuda else self._cpu_ms(fn, reps)

    def _cuda_ms(self, fn: Callable[[], object], reps: int) -> float:
        cuda = self.torch.cuda
        starts = [cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [cuda.Event(enable_timing=True) for _ in range(reps)]
        cuda.synchronize()
        for start, end in zip(starts, ends):
            self._flush.sum()  # a read: evicts (and writes back) what fn() left, stays clean
            start.record()
            fn()
            end.record()
        cuda.synchronize()
        return float(statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)))

    @staticmethod
    def _cpu_ms(fn: Callable[[], object], reps: int) -> float:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return float(statistics.median(times))

    def synchronize(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def free_bytes(self) -> int:
        """Memory one case may still allocate (device memory on CUDA, RAM on the CPU)."""
        if self.cuda:
            free, _total = self.torch.cuda.mem_get_info()
            return int(free * self.mem_fraction)
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 4 * 1024 ** 3
        return int(avail * 0.5)

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.free_bytes()

    def release(self) -> None:
        """Return cached blocks so the next case sees the real free memory."""
        if self.cuda:
            self.torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error from torch (CUDA or host)."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
