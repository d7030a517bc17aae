"""GPU memory and utilisation for ``/metrics``: read at scrape time through NVML (the
``pynvml`` module of the nvidia-ml-py package) where it is importable and finds a driver
on the host answering the scrape; nothing at all otherwise (docs/observability.md)."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    # The share of the last sample period a kernel ran (NVML's "gpu" utilisation), 0-1.
    utilization: float


def _nvml() -> Any | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


def readings() -> list[GpuReading]:
    """One reading per GPU NVML sees; [] without NVML, a driver or a GPU."""
    nvml = _nvml()
    if nvml is None:
        return []
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        log.debug("NVML is not usable here: %s", exc)
        return []
    try:
        return [_reading(nvml, index) for index in range(nvml.nvmlDeviceGetCount())]
    except nvml.NVMLError as exc:
        log.warning("reading the GPUs through NVML failed: %s", exc)
        return []
    finally:
        nvml.nvmlShutdown()


def _reading(nvml: Any, index: int) -> GpuReading:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    name = nvml.nvmlDeviceGetName(handle)
    return GpuReading(
        index=index,
        # Older nvidia-ml-py versions answer bytes.
        name=name.decode() if isinstance(name, bytes) else str(name),
        memory_used_bytes=int(memory.used),
        memory_total_bytes=int(memory.total),
        utilization=nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100,
    )
