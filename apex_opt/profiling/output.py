"""Writing a profile directory: CSV tables, device.json, README.md — atomically.

The format is the one of apex_opt/data/profiles/h100-sxm-80gb. Files are written into a hidden
temporary directory next to the target and renamed into place only when every table is done, so
a failed or interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, Field

from ..errors import InputError

COLUMNS: dict[str, list[str]] = {
    "gemm.csv": ["dtype", "m", "n", "k", "tag", "ms", "tflops", "gbps", "m_padded"],
    "grouped_gemm.csv": ["model", "experts", "tokens_per_expert", "k", "n", "ms", "tflops"],
    "attention.csv": ["phase", "batch", "q_heads", "kv_heads", "head_dim", "q_len", "kv_len", "ms",
                      "tflops", "gbps"],
    "attention_chunked.csv": ["phase", "batch", "q_heads", "kv_heads", "head_dim", "q_len",
                              "kv_len", "ms", "tflops"],
    "elementwise.csv": ["op", "tokens", "hidden", "ms"],
    "bandwidth.csv": ["op", "mbytes", "ms", "gbps_rw"],
    "power_curve.csv": ["case", "intensity_flop_per_byte", "watts", "joules_per_call",
                        "ms_per_call", "power_w", "sm_mhz", "mem_mhz", "temp_c"],
    "energy.csv": ["case", "watts", "power_w", "sm_mhz", "mem_mhz", "temp_c", "joules_per_call",
                   "calls", "ms_per_call", "tflops"],
}
TIMING_TABLES = ("gemm.csv", "grouped_gemm.csv", "attention.csv", "attention_chunked.csv",
                 "elementwise.csv", "bandwidth.csv")
POWER_TABLES = ("power_curve.csv", "energy.csv")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"non-finite measurement {v!r}")
        return repr(v)
    return str(v)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` with the columns of ``path.name`` (missing keys -> empty cells)."""
    cols = COLUMNS[path.name]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            extra = set(r) - set(cols)
            if extra:
                raise ValueError(f"{path.name}: unexpected columns {sorted(extra)}")
            w.writerow([_cell(r.get(c)) for c in cols])


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def check_target(out_dir: Path, force: bool) -> None:
    """Refuse a file, or a non-empty directory unless ``force``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("exists and is not a directory", source=str(out_dir))
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise InputError("output directory is not empty; pass --force to replace it",
                         source=str(out_dir))


@contextlib.contextmanager
def staging_dir(out_dir: Path, force: bool) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``out_dir``, on error it is removed."""
    out_dir = Path(out_dir)
    check_target(out_dir, force)
    parent = out_dir.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the parent directory ({exc})", source=str(parent)) from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    try:
        yield tmp
        check_target(out_dir, force)  # someone may have written there meanwhile
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=tmp.parent))
    old.rmdir()
    out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except OSError:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --- reading a profile back (summary) ------------------------------------------------------------

class ProfileSummary(BaseModel):
    """What a profile directory holds: rows per table and the peaks measured."""

    path: str = Field(description="Profile directory.")
    device: str = Field(description="Device name from device.json.")
    rows: dict[str, int] = Field(description="Data rows per CSV file present.")
    peak_tflops: dict[str, float] = Field(description="Best GEMM TFLOP/s per dtype.")
    peak_copy_gbps: float | None = Field(description="Best device copy GB/s (read + write).")
    peak_decode_gbps: float | None = Field(description="Best decode-attention KV read GB/s.")
    missing: list[str] = Field(description="Tables of the format that are absent.")


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _max(rows: list[dict[str, str]], col: str, **where: str) -> float | None:
    vals = [float(r[col]) for r in rows
            if r.get(col) and all(r.get(k) == v for k, v in where.items())]
    return max(vals) if vals else None


def summarize_profile(path: str | Path) -> ProfileSummary:
    """Summarize a profile directory written by ``run_profile`` (or the bundled H100 one)."""
    p = Path(path)
    if not p.is_dir():
        raise InputError("profile directory not found", source=str(p))
    rows: dict[str, int] = {}
    data: dict[str, list[dict[str, str]]] = {}
    for name in COLUMNS:
        f = p / name
        if f.is_file():
            data[name] = _read_rows(f)
            rows[name] = len(data[name])
    gemm = data.get("gemm.csv", [])
    peaks = {d: v for d in ("bf16", "fp8") if (v := _max(gemm, "tflops", dtype=d)) is not None}
    device = "?"
    if (p / "device.json").is_file():
        try:
            device = str(json.loads((p / "device.json").read_text(encoding="utf-8")).get("name"))
        except (json.JSONDecodeError, AttributeError):
            raise InputError("malformed JSON", source=str(p / "device.json")) from None
    return ProfileSummary(path=str(p), device=device, rows=rows, peak_tflops=peaks,
                          peak_copy_gbps=_max(data.get("bandwidth.csv", []), "gbps_rw"),
                          peak_decode_gbps=_max(data.get("attention.csv", []), "gbps",
                                                phase="decode"),
                          missing=[n for n in COLUMNS if n not in rows])
