"""Admin commands that apply a plan group's GPU clock / power-cap setting (``sm_clock_mhz``,
``power_cap_w`` of :class:`~apex_opt.specs.plan.ReplicaConfig`).

NVIDIA: ``nvidia-smi -i <ids> -lgc <clk>,<clk>`` locks the SM clock (undo: ``-rgc``) and
``nvidia-smi -i <ids> -pl <W>`` sets the board power limit (undo: ``-pl`` with the default limit);
both need root and persist until reboot or reset. AMD: ``rocm-smi -d <ids> --setperfdeterminism
<clk>`` (SCLK ceiling) and ``--setpoweroverdrive <W>``.
"""

from __future__ import annotations

from typing import Sequence


def _ids(gpu_ids: Sequence[int]) -> str:
    return ",".join(str(int(i)) for i in gpu_ids)


def gpu_setting_commands(device, gpu_ids: Sequence[int], sm_clock_mhz: int | None,
                         power_cap_w: float | None, *, sudo: bool = True,
                         with_reset: bool = False) -> list[str]:
    """Shell commands that apply (and with ``with_reset`` afterwards undo, as ``# undo:`` lines)
    the clock / cap on the GPUs ``gpu_ids`` of a node with ``device`` (a DeviceSpec). Empty when
    both settings are None (driver defaults)."""
    if sm_clock_mhz is None and power_cap_w is None:
        return []
    pre = "sudo " if sudo else ""
    ids = _ids(gpu_ids)
    out: list[str] = []
    undo: list[str] = []
    if getattr(device, "vendor", "nvidia") == "amd":
        dev = " ".join(str(int(i)) for i in gpu_ids)
        if sm_clock_mhz is not None:
            out.append(f"{pre}rocm-smi -d {dev} --setperfdeterminism {int(sm_clock_mhz)}")
            undo.append(f"{pre}rocm-smi -d {dev} --resetperfdeterminism")
        if power_cap_w is not None:
            out.append(f"{pre}rocm-smi -d {dev} --setpoweroverdrive {power_cap_w:g}")
            undo.append(f"{pre}rocm-smi -d {dev} --resetpoweroverdrive")
    else:
        if sm_clock_mhz is not None:
            clk = int(sm_clock_mhz)
            out.append(f"{pre}nvidia-smi -i {ids} -lgc {clk},{clk}")
            undo.append(f"{pre}nvidia-smi -i {ids} -rgc")
        if power_cap_w is not None:
            out.append(f"{pre}nvidia-smi -i {ids} -pl {power_cap_w:g}")
            undo.append(f"{pre}nvidia-smi -i {ids} -pl {device.power_limit_w:g}")
    if with_reset:
        out.extend(f"# undo: {u}" for u in undo)
    return out


def group_gpu_setting_commands(device, group, gpu_ids: Sequence[int], **kw) -> list[str]:
    """:func:`gpu_setting_commands` for a plan group (a ReplicaGroup / ReplicaConfig)."""
    return gpu_setting_commands(device, gpu_ids, group.sm_clock_mhz, group.power_cap_w, **kw)


__all__ = ["gpu_setting_commands", "group_gpu_setting_commands"]
