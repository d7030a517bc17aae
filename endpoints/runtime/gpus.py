"""GPUs on this host for replicas: which devices there are (the NVIDIA device nodes, or
``SERVING_GPU_DEVICES``), what a replica given some of them sees (``CUDA_VISIBLE_DEVICES``)
and which device nodes its sandbox binds (docs/deploy.md, "GPUs")."""

from __future__ import annotations

import os
import re
from pathlib import Path

DEVICES_ENV = "SERVING_GPU_DEVICES"
DEV = Path("/dev")
_DEVICE_NODE = re.compile(r"^nvidia(\d+)$")
# Every CUDA process opens these beside its own GPUs' nodes.
SHARED_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")


def local_devices() -> tuple[int, ...]:
    """The GPUs replicas on this host may be given: ``SERVING_GPU_DEVICES`` ("0,1") where
    set, else the indexes of the ``/dev/nvidia<N>`` device nodes."""
    listed = os.environ.get(DEVICES_ENV, "").strip()
    if listed:
        return parse_devices(listed)
    try:
        names = [p.name for p in DEV.iterdir()]
    except OSError:
        return ()
    return tuple(sorted(int(m[1]) for m in map(_DEVICE_NODE.match, names) if m))


def parse_devices(text: str) -> tuple[int, ...]:
    """ "0,1" as (0, 1); ValueError for anything but comma-separated device indexes."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not all(item.isdigit() for item in items):
        raise ValueError(f"{DEVICES_ENV} must list GPU indexes such as '0,1', not {text!r}")
    return tuple(sorted({int(item) for item in items}))


def visible_devices(devices: tuple[int, ...]) -> dict[str, str]:
    """The environment that shows a replica its GPUs and no other (none: no GPU at all).
    CUDA numbers GPUs in PCI bus order here, as ``nvidia-smi`` does, rather than fastest
    first (docs/deploy.md says what this assumes of the device nodes' numbers)."""
    return {
        "CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }


def device_nodes(devices: tuple[int, ...]) -> list[str]:
    """The device nodes a sandboxed replica given ``devices`` needs: its GPUs' and the
    shared ones, those that exist on this host (a fake device list has none)."""
    if not devices:
        return []
    names = [f"nvidia{d}" for d in devices] + list(SHARED_NODES)
    return [str(DEV / name) for name in names if (DEV / name).exists()]
