"""NVML adapter: the pynvml-backed `UsageReader`.

NVML reports every process on a GPU by host PID, including other pods' processes on a shared
GPU. A process counts as this pod's only when `<proc_root>/<pid>/cgroup` names the pod's UID
(kubelet's cgroup paths contain `pod<uid>`, or `pod<uid with '_'>` with the systemd driver).
That needs a procfs of the host PID namespace at `proc_root`; where it is not there, no
process is attributed and the interval carries allocation only. Another pod's use is never
reported as this pod's.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from sidecar.usage import AllocationOnly, UsageReader, UsageSample

log = logging.getLogger(__name__)


def cgroup_matcher(proc_root: str, pod_uid: str) -> Callable[[int], bool]:
    """`pid -> bool`: whether the host process `pid` runs in this pod's cgroup."""
    needles = (f"pod{pod_uid}", f"pod{pod_uid.replace('-', '_')}")

    def is_pod_process(pid: int) -> bool:
        try:
            with open(os.path.join(proc_root, str(pid), "cgroup"), encoding="utf-8") as cgroup:
                text = cgroup.read()
        except OSError:
            return False
        return any(needle in text for needle in needles)

    return is_pod_process


class NvmlReader:
    """Reads the pod's SM utilisation and GPU memory from NVML (module injected for tests)."""

    def __init__(
        self, nvml: Any, *, handles: Sequence[Any], is_pod_process: Callable[[int], bool]
    ) -> None:
        self._nvml = nvml
        self._handles = list(handles)
        self._is_pod_process = is_pod_process
        self._last_timestamps = [0 for _ in self._handles]

    def _processes(self, handle: Any) -> list[Any]:
        found: list[Any] = []
        for name in (
            "nvmlDeviceGetComputeRunningProcesses",
            "nvmlDeviceGetGraphicsRunningProcesses",
        ):
            try:
                found.extend(getattr(self._nvml, name)(handle))
            except self._nvml.NVMLError:
                continue
        return found

    def _utilization(self, index: int, handle: Any) -> list[float]:
        """Per-timestamp sums of the pod's SM utilisation (percent) since the last call."""
        try:
            samples = self._nvml.nvmlDeviceGetProcessUtilization(
                handle, self._last_timestamps[index]
            )
        except self._nvml.NVMLError:
            return []
        by_time: dict[int, float] = {}
        for sample in samples:
            self._last_timestamps[index] = max(self._last_timestamps[index], sample.timeStamp)
            if self._is_pod_process(sample.pid):
                by_time[sample.timeStamp] = by_time.get(sample.timeStamp, 0.0) + sample.smUtil
        return list(by_time.values())

    def sample(self) -> UsageSample | None:
        memory_bytes = 0
        seen = False
        sm_percents: list[float] = []
        for index, handle in enumerate(self._handles):
            for process in self._processes(handle):
                if self._is_pod_process(process.pid):
                    seen = True
                    memory_bytes += int(process.usedGpuMemory or 0)
            sm_percents.extend(self._utilization(index, handle))
        if not seen and not sm_percents:
            return None
        sm = sum(sm_percents) / len(sm_percents) / 100.0 if sm_percents else None
        return UsageSample(sm_utilization=sm, memory_used_bytes=memory_bytes if seen else None)

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def _load_pynvml() -> Any:
    import pynvml  # a ctypes binding, loaded only when measuring

    pynvml.nvmlInit()
    return pynvml


def open_reader(
    *, mode: str, proc_root: str, pod_uid: str, load: Callable[[], Any] = _load_pynvml
) -> UsageReader:
    """The NVML reader when NVML works here; otherwise allocation only, said once in the log."""
    if mode == "off":
        log.info("measured use is off (GPUSHARE_NVML=off): reports carry allocation only")
        return AllocationOnly()
    try:
        nvml = load()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    except Exception as err:  # any failure here means "no NVML", never a crash
        log.info("NVML is not available (%s): reports carry allocation only", err)
        return AllocationOnly()
    if not handles:
        log.info("NVML sees no GPU: reports carry allocation only")
        return AllocationOnly()
    log.info(
        "NVML sees %d GPU(s); measured use counts processes whose cgroup under %s names this pod",
        len(handles),
        proc_root,
    )
    return NvmlReader(nvml, handles=handles, is_pod_process=cgroup_matcher(proc_root, pod_uid))
