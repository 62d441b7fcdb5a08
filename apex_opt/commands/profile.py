"""`apex-opt profile`: measure a GPU (or, for a smoke test, the CPU) and write an operator profile."""

from __future__ import annotations

from pathlib import Path

import click

from .common import NonEmptyPath


def _echo_progress(msg: str) -> None:
    click.echo(f"  {msg}", err=True)


@click.command("profile")
@click.option("--out", "out_dir", required=True, type=NonEmptyPath(file_okay=False, path_type=Path),
              help="Directory to create (its name becomes the profile name).")
@click.option("--quick", is_flag=True,
              help="Toy sizes and 3 reps: a few seconds, even on a CPU. Checks the setup; the "
                   "numbers do not model the device. No power tables.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="Device to measure [default: cuda if available, else cpu].")
@click.option("--force", is_flag=True, help="Replace OUT if it exists and is not empty.")
@click.option("--reps", type=click.IntRange(1, 1000), default=None,
              help="Timed calls per case (the median is kept) [default: 10; 3 with --quick].")
def command(out_dir: Path, quick: bool, device: str | None, force: bool, reps: int | None) -> None:
    """Measure the operators an LLM serving engine runs and write a profile directory in the
    format of the bundled H100 one (apex_opt/data/profiles/h100-sxm-80gb), so that the cost
    model can use measured times for your GPU instead of datasheet rooflines.

    \b
    What it measures (medians of CUDA-event timings, L2 flushed before every call):
      gemm.csv              bf16 and fp8 (compute capability >= 8.9) GEMMs, m = 1..16384
                            tokens x 114 (n,k) projections of Llama-3, Qwen2.5, Mistral-Large,
                            Mixtral, Qwen3 and DeepSeek-V3 at TP 1/2/4/8 + a 3x3 grid
      grouped_gemm.csv      MoE expert GEMMs (torch._grouped_mm, else bmm)
      attention*.csv        prefill, decode and chunked-prefill attention (SDPA, GQA)
      elementwise.csv       rmsnorm, silu_mul, residual_add
      bandwidth.csv         device-to-device copy
      power_curve.csv, energy.csv   average watts and joules per call from the NVML energy
                            counter (needs `pip install nvidia-ml-py`; skipped without it)
    plus device.json (name, SMs, memory, power limit, clocks, driver, torch) and README.md.

    \b
    How long: about 3-5 minutes on an H100 (~1 min of kernel timing, ~1 min of power
    loops, the rest allocation and start-up); proportionally longer on slower GPUs, and
    cases that do not fit in memory are skipped. --quick: seconds.
    Needs torch: pip install 'apex-opt[profile]'. Run it on an otherwise idle GPU.

    \b
    Using the result: copy OUT to apex_opt/data/profiles/<name>/, add the device's datasheet
    peaks under <name> in apex_opt/data/profiles/datasheets.yaml, and set `profile: <name>`
    in a device YAML (OUT/README.md prints both snippets, ready to edit).

    \b
    Examples:
      apex-opt profile --out my-gpu                  # full profile of cuda:0
      apex-opt profile --out /tmp/smoke --quick --device cpu
    """
    from ..profiling import run_profile, summarize_profile
    from ..profiling.output import check_target
    from ..profiling.runner import import_torch

    import_torch()  # missing extra or a non-empty --out: the one error line, before any progress
    check_target(out_dir, force)
    if device is None:
        click.echo("profiling (device: cuda if available, else cpu) ...", err=True)
    else:
        click.echo(f"profiling on {device} ...", err=True)
    path = run_profile(out_dir, quick=quick, device=device, progress=_echo_progress, force=force,
                       reps=reps)
    summary = summarize_profile(path)
    click.echo(f"wrote {path} ({summary.device})")
    for name, n in summary.rows.items():
        click.echo(f"  {name:<22} {n:>6} rows")
    if summary.missing:
        click.echo(f"  not measured: {', '.join(summary.missing)} (see {path / 'README.md'})")
    for dtype, tf in summary.peak_tflops.items():
        click.echo(f"peak {dtype} GEMM: {tf:,.3g} TFLOP/s")
    if summary.peak_copy_gbps is not None:
        click.echo(f"peak copy bandwidth: {summary.peak_copy_gbps:,.4g} GB/s (read + write)")
    if summary.peak_decode_gbps is not None:
        click.echo(f"peak decode-attention KV read: {summary.peak_decode_gbps:,.4g} GB/s")
    name = path.absolute().name
    click.echo(f"use it: copy {path} to apex_opt/data/profiles/{name}/, add a datasheets.yaml "
               f"entry and set `profile: {name}` in a device YAML (see {path / 'README.md'})")

