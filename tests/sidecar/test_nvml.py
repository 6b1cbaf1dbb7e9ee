"""The pynvml-backed reader against a fake NVML module with the same functions and errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sidecar.nvml import NvmlReader, cgroup_matcher, open_reader
from sidecar.usage import AllocationOnly, UsageSample

UID = "0b3c8a4e-6f0d-4d9e-9b1a-2f6c1e8d7a55"
OURS, OURS_TOO, OTHER_POD = 4101, 4102, 5200


class NVMLError(Exception):
    pass


@dataclass
class FakeNvml:
    """Two GPUs; per-device running processes and utilisation samples, like pynvml returns."""

    processes: dict[str, list[Any]]
    samples: dict[str, list[Any]]
    shut_down: bool = False
    NVMLError: type[Exception] = NVMLError

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[Any]:
        return self.processes.get(handle, [])

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: str) -> list[Any]:
        raise NVMLError("Not Supported")

    def nvmlDeviceGetProcessUtilization(self, handle: str, last_seen: int) -> list[Any]:
        found = [s for s in self.samples.get(handle, []) if s.timeStamp > last_seen]
        if not found:
            raise NVMLError("Not Found")
        return found

    def nvmlShutdown(self) -> None:
        self.shut_down = True


def proc(pid: int, memory: int | None) -> Any:
    return SimpleNamespace(pid=pid, usedGpuMemory=memory)


def util(pid: int, at: int, sm: int) -> Any:
    return SimpleNamespace(pid=pid, timeStamp=at, smUtil=sm, memUtil=0)


def is_ours(pid: int) -> bool:
    return pid in (OURS, OURS_TOO)


@pytest.mark.parametrize(
    ("processes", "samples", "expected"),
    [
        pytest.param(
            {"gpu0": [proc(OURS, 2 << 30), proc(OTHER_POD, 8 << 30)]},
            {"gpu0": [util(OURS, 1, 30), util(OTHER_POD, 1, 50), util(OURS, 2, 50)]},
            UsageSample(sm_utilization=0.4, memory_used_bytes=2 << 30),
            id="other-pod-on-the-shared-gpu-ignored",
        ),
        pytest.param(
            {"gpu0": [proc(OURS, 1 << 30)], "gpu1": [proc(OURS_TOO, 3 << 30)]},
            {"gpu0": [util(OURS, 7, 20)], "gpu1": [util(OURS_TOO, 7, 60)]},
            UsageSample(sm_utilization=0.4, memory_used_bytes=4 << 30),
            id="two-gpus-memory-summed-sm-averaged",
        ),
        pytest.param(
            {"gpu0": [proc(OURS, None)]},
            {},
            UsageSample(sm_utilization=None, memory_used_bytes=0),
            id="memory-not-reported-no-samples",
        ),
        pytest.param(
            {"gpu0": [proc(OTHER_POD, 8 << 30)]},
            {"gpu0": [util(OTHER_POD, 1, 90)]},
            None,
            id="no-process-of-this-pod-nothing-measured",
        ),
    ],
)
def test_the_reader_counts_only_the_pods_processes(
    processes: dict[str, list[Any]], samples: dict[str, list[Any]], expected: UsageSample | None
) -> None:
    nvml = FakeNvml(processes, samples)
    reader = NvmlReader(nvml, handles=["gpu0", "gpu1"], is_pod_process=is_ours)
    assert reader.sample() == expected
    reader.close()
    assert nvml.shut_down


def test_utilisation_samples_are_read_once() -> None:
    nvml = FakeNvml({"gpu0": [proc(OURS, 100)]}, {"gpu0": [util(OURS, 1, 80)]})
    reader = NvmlReader(nvml, handles=["gpu0"], is_pod_process=is_ours)
    assert reader.sample() == UsageSample(0.8, 100)
    assert reader.sample() == UsageSample(None, 100)
    nvml.samples["gpu0"].append(util(OURS, 2, 10))
    assert reader.sample() == UsageSample(0.1, 100)


@pytest.mark.parametrize(
    ("cgroup", "ours"),
    [
        pytest.param(f"0::/kubepods/burstable/pod{UID}/0123abcd\n", True, id="cgroupfs-driver"),
        pytest.param(
            "0::/kubepods.slice/kubepods-besteffort.slice/"
            f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice/cri-containerd-1.scope\n",
            True,
            id="systemd-driver",
        ),
        pytest.param(
            "0::/kubepods/burstable/pod11111111-2222-3333-4444-555555555555/x\n",
            False,
            id="another-pod",
        ),
        pytest.param("0::/\n", False, id="cgroup-namespace-hides-the-path"),
    ],
)
def test_cgroup_attribution(tmp_path: Path, cgroup: str, ours: bool) -> None:
    (tmp_path / "4101").mkdir()
    (tmp_path / "4101" / "cgroup").write_text(cgroup)
    matcher = cgroup_matcher(str(tmp_path), UID)
    assert matcher(4101) is ours
    assert matcher(9999) is False, "a process that cannot be seen is not the pod's"


class NvmlMissing:
    """What pynvml does on a machine without the NVIDIA driver."""

    def __call__(self) -> Any:
        raise NVMLError("NVML Shared Library Not Found")


@dataclass
class NvmlWithDevices(FakeNvml):
    count: int = 2

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"


@pytest.mark.parametrize(
    ("mode", "load", "message"),
    [
        pytest.param(
            "auto",
            NvmlMissing(),
            "NVML is not available (NVML Shared Library Not Found): reports carry allocation only",
            id="no-driver",
        ),
        pytest.param(
            "auto",
            lambda: NvmlWithDevices({}, {}, count=0),
            "NVML sees no GPU: reports carry allocation only",
            id="no-device-visible",
        ),
        pytest.param(
            "off",
            NvmlMissing(),
            "measured use is off (GPUSHARE_NVML=off): reports carry allocation only",
            id="switched-off",
        ),
    ],
)
def test_without_nvml_the_sidecar_reports_allocation_only_and_says_so_once(
    caplog: pytest.LogCaptureFixture, mode: str, load: Any, message: str
) -> None:
    caplog.set_level("INFO")
    reader = open_reader(mode=mode, proc_root="/proc", pod_uid=UID, load=load)
    assert isinstance(reader, AllocationOnly)
    assert reader.sample() is None
    assert [r.getMessage() for r in caplog.records] == [message]


def test_with_nvml_every_visible_gpu_is_read(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    nvml = NvmlWithDevices({}, {})
    reader = open_reader(mode="auto", proc_root="/proc", pod_uid=UID, load=lambda: nvml)
    assert isinstance(reader, NvmlReader)
    assert [r.getMessage() for r in caplog.records] == [
        "NVML sees 2 GPU(s); measured use counts processes whose cgroup under /proc names this pod"
    ]
