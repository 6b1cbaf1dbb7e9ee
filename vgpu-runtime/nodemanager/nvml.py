"""`Inventory` backed by NVML (pynvml from the nvidia-ml-py package) on a node with GPUs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from nodemanager.inventory import Gpu, ProcessSample

log = logging.getLogger(__name__)


class InventoryError(Exception):
    """NVML could not be initialised or the GPUs could not be read."""


class NvmlInventory:
    """Reads GPUs, health and per-process usage through NVML."""

    def __init__(self, nvml: Any = None) -> None:
        """`nvml` is the pynvml module (tests pass an object with the same functions)."""
        if nvml is None:
            import pynvml

            nvml = pynvml
        self._nvml: Any = nvml
        try:
            nvml.nvmlInit()
            gpus = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                name = _text(nvml.nvmlDeviceGetName(handle))
                gpus.append(Gpu(index=index, uuid=uuid, memory_bytes=int(memory.total), name=name))
        except nvml.NVMLError as err:
            raise InventoryError(f"NVML is not usable on this node: {err}") from err
        self._gpus = tuple(gpus)

    def gpus(self) -> Sequence[Gpu]:
        return self._gpus

    def is_healthy(self, gpu: Gpu) -> bool:
        """Healthy when the GPU answers by UUID and reports no pending page retirement."""
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
            nvml.nvmlDeviceGetMemoryInfo(handle)
        except nvml.NVMLError as err:
            log.warning("GPU %s (%s) failed its health check: %s", gpu.index, gpu.uuid, err)
            return False
        try:
            pending = nvml.nvmlDeviceGetRetiredPagesPendingStatus(handle)
        except nvml.NVMLError:
            return True  # not supported on this GPU: nothing more to check
        if pending:
            log.warning("GPU %s (%s) has retired pages pending a reset", gpu.index, gpu.uuid)
            return False
        return True

    def processes(self, gpu: Gpu) -> Sequence[ProcessSample]:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
            running = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except nvml.NVMLError as err:
            log.debug("cannot list processes of GPU %s: %s", gpu.index, err)
            return ()
        sm_by_pid: dict[int, float] = {}
        try:
            for sample in nvml.nvmlDeviceGetProcessUtilization(handle, 0):
                sm_by_pid[int(sample.pid)] = float(sample.smUtil)
        except nvml.NVMLError:
            pass  # not supported (e.g. under MIG): SM share stays unknown
        return tuple(
            ProcessSample(
                pid=int(proc.pid),
                memory_used_bytes=int(proc.usedGpuMemory or 0),
                sm_percent=sm_by_pid.get(int(proc.pid)),
            )
            for proc in running
        )

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
