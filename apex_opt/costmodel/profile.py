"""Load a measured operator profile (a folder of CSV tables, see ``data/profiles/README.md``).

Tables are read once per profile name (``functools.lru_cache``) into plain numpy column arrays; no
pandas at run time. The datasheet of the device a profile was measured on (needed to turn measured
throughput into efficiencies) comes from ``data/profiles/datasheets.yaml``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..errors import InputError
from ..io import parse_yaml
from ..registry import data_dir

#: Profile every roofline fallback is calibrated on.
REFERENCE_PROFILE = "h100-sxm-80gb"

Table = dict[str, np.ndarray]

_REQUIRED = {
    "gemm.csv": ("dtype", "m", "n", "k", "ms"),
    "attention.csv": ("phase", "batch", "q_heads", "kv_heads", "head_dim", "q_len", "kv_len", "ms"),
    "attention_chunked.csv": ("batch", "q_heads", "kv_heads", "head_dim", "q_len", "kv_len", "ms"),
    "elementwise.csv": ("op", "tokens", "hidden", "ms"),
    "bandwidth.csv": ("op", "mbytes", "ms"),
    "grouped_gemm.csv": ("experts", "tokens_per_expert", "k", "n", "ms"),
    "power_curve.csv": ("case", "watts", "ms_per_call"),
    "energy.csv": ("case", "watts", "ms_per_call"),
}


@dataclass(frozen=True)
class Datasheet:
    """Dense peak numbers of the device a profile was measured on."""

    peak_flops: dict[str, float]  # FLOP/s per compute dtype
    hbm_bytes_per_s: float
    power_limit_w: float


@dataclass(frozen=True)
class Profile:
    """All tables of one profile, as column arrays (times converted to seconds in ``*_s``)."""

    name: str
    tables: dict[str, Table] = field(repr=False)
    datasheet: Datasheet
    idle_w: float

    def table(self, fname: str) -> Table:
        try:
            return self.tables[fname]
        except KeyError:
            raise InputError(f"profile {self.name!r} has no table {fname}") from None


def _column(values: list[str]) -> np.ndarray:
    try:
        return np.array([float(v) if v != "" else np.nan for v in values])
    except ValueError:
        return np.array(values, dtype=object)


def parse_table(text: str, source: str) -> Table:
    """Parse one CSV table into column arrays (numeric where every non-empty cell is a number)."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise InputError("empty table", source=source)
    header, body = rows[0], rows[1:]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise InputError(f"row {i + 2} has {len(r)} cells, header has {len(header)}", source=source)
    cols = {h: _column([r[j] for r in body]) for j, h in enumerate(header)}
    fname = source.rsplit("/", 1)[-1]
    for req in _REQUIRED.get(fname, ()):
        if req not in cols:
            raise InputError("missing column", source=source, field=req, value=header)
    if "ms" in cols:
        ms = cols["ms"]
        if ms.dtype == object or np.any(~np.isfinite(ms)) or np.any(ms <= 0):
            raise InputError("times must be positive numbers", source=source, field="ms",
                             value=ms[:3].tolist())
    return cols


@lru_cache(maxsize=None)
def _datasheets() -> dict:
    text = (data_dir("profiles") / "datasheets.yaml").read_text(encoding="utf-8")
    data = parse_yaml(text, "<bundled profiles/datasheets.yaml>")
    return data if isinstance(data, dict) else {}


def _datasheet(name: str) -> Datasheet:
    entry = _datasheets().get(name)
    if not isinstance(entry, dict):
        raise InputError("profile has no datasheet entry in profiles/datasheets.yaml",
                         field="profile", value=name)
    return Datasheet(peak_flops={k: float(v) * 1e12 for k, v in entry["peak_tflops"].items()},
                     hbm_bytes_per_s=float(entry["hbm_bandwidth_gbps"]) * 1e9,
                     power_limit_w=float(entry["power_limit_w"]))


@lru_cache(maxsize=None)
def load_profile(name: str) -> Profile:
    """Load (once) the bundled profile ``name``."""
    folder = data_dir("profiles", name)
    if not folder.is_dir():
        raise InputError("unknown profile", field="profile", value=name)
    tables = {}
    for f in folder.iterdir():
        if f.name.endswith(".csv"):
            tables[f.name] = parse_table(f.read_text(encoding="utf-8"), f"profiles/{name}/{f.name}")
    energy = tables.get("energy.csv")
    idle = float("nan")
    if energy is not None:
        idle_rows = [w for c, w in zip(energy["case"], energy["watts"]) if str(c).startswith("idle")]
        idle = float(np.mean(idle_rows)) if idle_rows else float("nan")
    return Profile(name=name, tables=tables, datasheet=_datasheet(name), idle_w=idle)
