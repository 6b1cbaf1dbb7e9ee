"""The NVML inventory against a stand-in with pynvml's functions (no GPU here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from nodemanager.inventory import ProcessSample
from nodemanager.nvml import InventoryError, NvmlInventory


class NVMLError(Exception):
    pass


@dataclass
class FakeNvml:
    """The pynvml functions NvmlInventory calls, over a table of GPUs."""

    gpus: list[dict[str, Any]]
    fail_init: bool = False
    NVMLError: type[Exception] = NVMLError
    shut_down: bool = field(default=False)

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: bytes | str) -> dict[str, Any]:
        gpu = next(gpu for gpu in self.gpus if gpu["uuid"] == uuid)
        if gpu.get("lost"):
            raise NVMLError("GPU is lost")
        return gpu

    def nvmlDeviceGetUUID(self, handle: dict[str, Any]) -> bytes:
        return str(handle["uuid"]).encode()  # older bindings return bytes

    def nvmlDeviceGetName(self, handle: dict[str, Any]) -> str:
        return "Fake H100"

    def nvmlDeviceGetMemoryInfo(self, handle: dict[str, Any]) -> Any:
        return SimpleNamespace(total=handle["memory"])

    def nvmlDeviceGetRetiredPagesPendingStatus(self, handle: dict[str, Any]) -> int:
        if "pending" not in handle:
            raise NVMLError("Not Supported")
        return int(handle["pending"])

    def nvmlDeviceGetComputeRunningProcesses(self, handle: dict[str, Any]) -> list[Any]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in handle["procs"]]

    def nvmlDeviceGetProcessUtilization(self, handle: dict[str, Any], since: int) -> list[Any]:
        if "sm" not in handle:
            raise NVMLError("Not Supported")
        return [SimpleNamespace(pid=pid, smUtil=sm) for pid, sm in handle["sm"].items()]


def gpu(uuid: str, **extra: Any) -> dict[str, Any]:
    return {"uuid": uuid, "memory": 80 << 30, "procs": [], **extra}


@pytest.mark.parametrize(
    ("spec", "healthy"),
    [
        pytest.param(gpu("GPU-a"), True, id="answers-no-page-retirement-support"),
        pytest.param(gpu("GPU-a", pending=0), True, id="no-pages-pending"),
        pytest.param(gpu("GPU-a", pending=1), False, id="pages-pending-reset"),
        pytest.param(gpu("GPU-a", lost=True), False, id="gpu-lost"),
    ],
)
def test_health(spec: dict[str, Any], healthy: bool) -> None:
    inventory = NvmlInventory(FakeNvml([spec]))
    (only,) = inventory.gpus()
    assert (only.index, only.uuid, only.memory_bytes, only.memory_units) == (
        0,
        "GPU-a",
        80 << 30,
        320,
    )
    assert inventory.is_healthy(only) is healthy


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(
            gpu("GPU-a", procs=[(10, 1 << 30), (11, None)], sm={10: 40}),
            [ProcessSample(10, 1 << 30, 40.0), ProcessSample(11, 0, None)],
            id="memory-and-sm",
        ),
        pytest.param(
            gpu("GPU-a", procs=[(10, 1 << 30)]),
            [ProcessSample(10, 1 << 30, None)],
            id="sm-not-supported",
        ),
        pytest.param(gpu("GPU-a", lost=True), [], id="gpu-lost-no-processes"),
    ],
)
def test_processes(spec: dict[str, Any], expected: list[ProcessSample]) -> None:
    inventory = NvmlInventory(FakeNvml([spec]))
    assert list(inventory.processes(inventory.gpus()[0])) == expected


def test_nvml_that_cannot_start_is_a_named_error() -> None:
    with pytest.raises(InventoryError) as info:
        NvmlInventory(FakeNvml([], fail_init=True))
    assert str(info.value) == "NVML is not usable on this node: Driver Not Loaded"


def test_close_shuts_nvml_down() -> None:
    fake = FakeNvml([gpu("GPU-a")])
    NvmlInventory(fake).close()
    assert fake.shut_down
