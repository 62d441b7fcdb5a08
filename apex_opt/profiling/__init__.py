"""Measure a device and write an operator profile in the package format.

``run_profile(out_dir, quick=..., device=...)`` times GEMM (bf16, fp8), grouped GEMM, attention
(prefill, decode, chunked prefill), elementwise ops, device copy bandwidth and — with NVML — power
and energy, and writes the CSV tables, device.json and README.md of
apex_opt/data/profiles/h100-sxm-80gb. torch is imported only when a profile is run.
"""

from .output import COLUMNS, ProfileSummary, summarize_profile
from .runner import MISSING_TORCH, run_profile
from .shapes import ProfilePlan, full_plan, quick_plan

__all__ = ["COLUMNS", "MISSING_TORCH", "ProfilePlan", "ProfileSummary", "full_plan", "quick_plan",
           "run_profile", "summarize_profile"]
