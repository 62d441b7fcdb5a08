"""Typed loaders of bundled or user data: devices and clusters by name or path (models: 
:func:`apex_opt.specs.model.load_model`). The raw bundled files are located by
:mod:`apex_opt.bundled` (below the specs), re-exported here for callers.

Names resolve to bundled files; anything that looks like a path (has a suffix or a separator and
exists) is read from disk instead.
"""

from __future__ import annotations

from .bundled import (_looks_like_path, _read_bundled, cluster_names, data_dir,  # noqa: F401
                      device_names, load_model_config, model_names, profile_names)
from .io import load_data, validate
from .specs.cluster import ClusterSpec, DeviceSpec


def load_device(ref: str | dict, source: str = "<device>"):
    """Load a DeviceSpec from a bundled name, a YAML/JSON path, or an inline mapping."""
    if isinstance(ref, dict):
        return validate(DeviceSpec, ref, source)
    if ref not in device_names() and _looks_like_path(ref):
        return validate(DeviceSpec, load_data(ref), str(ref))
    data, src = _read_bundled("devices", ref, ".yaml", "device", device_names())
    return validate(DeviceSpec, data, src)


def load_cluster(ref: str):
    """Load a ClusterSpec from a bundled name or a YAML path. A pool's ``device`` may be a bundled
    device name (resolved by :class:`apex_opt.specs.cluster.PoolSpec`) or an inline mapping."""
    if ref not in cluster_names() and _looks_like_path(ref):
        data = load_data(ref)
        src = str(ref)
    else:
        data, src = _read_bundled("clusters", ref, ".yaml", "cluster", cluster_names())
    return validate(ClusterSpec, data, src)
