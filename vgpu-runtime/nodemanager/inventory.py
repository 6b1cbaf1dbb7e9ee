"""The node's GPUs: what they are, whether they are healthy, what runs on them.

`Inventory` is the interface; `SimulatedInventory` (here) serves nodes without GPUs (demos,
tests) and `nvml.NvmlInventory` reads real GPUs through NVML. Both behave the same way.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gpushare.resources import MEMORY_UNIT_BYTES


@dataclass(frozen=True)
class Gpu:
    """One physical GPU as the node manager sees it."""

    index: int
    uuid: str
    memory_bytes: int
    name: str = ""

    @property
    def memory_units(self) -> int:
        """Whole 256 MiB units of vcuda-memory this GPU offers."""
        return self.memory_bytes // MEMORY_UNIT_BYTES


@dataclass(frozen=True)
class ProcessSample:
    """A process using a GPU: memory it holds and its recent SM utilisation (if known)."""

    pid: int
    memory_used_bytes: int
    sm_percent: float | None = None


class Inventory(Protocol):
    """Source of GPUs, their health and their processes."""

    def gpus(self) -> Sequence[Gpu]:
        """All GPUs of the node, ordered by index (fixed for the life of the process)."""
        ...

    def is_healthy(self, gpu: Gpu) -> bool:
        """Run the GPU's health check; False when it fails."""
        ...

    def processes(self, gpu: Gpu) -> Sequence[ProcessSample]:
        """Processes on the GPU now; empty when the driver cannot tell."""
        ...

    def close(self) -> None:
        """Release the driver."""
        ...


_SIMULATE_RE = re.compile(r"^(?P<count>[0-9]+)x(?P<size>[0-9]+)(?P<unit>MiB|GiB|TiB)$")
_UNIT_BYTES = {"MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def parse_simulate_gpus(spec: str) -> tuple[int, int]:
    """`2x16GiB` → (2, 17179869184). Raises ValueError with the rule when malformed."""
    match = _SIMULATE_RE.match(spec.strip())
    if match is None:
        raise ValueError(
            f"expected COUNTxSIZE with SIZE in MiB, GiB or TiB, e.g. 2x16GiB (got {spec!r})"
        )
    count = int(match["count"])
    memory_bytes = int(match["size"]) * _UNIT_BYTES[match["unit"]]
    if not 1 <= count <= 64:
        raise ValueError(f"GPU count must be 1..64 (got {spec!r})")
    if memory_bytes < MEMORY_UNIT_BYTES:
        raise ValueError(f"GPU memory must be at least 256MiB (got {spec!r})")
    return count, memory_bytes


class SimulatedInventory:
    """GPUs that exist only in memory; health and processes can be set from outside."""

    def __init__(self, count: int, memory_bytes: int, *, seed: str = "sim") -> None:
        self._gpus = tuple(
            Gpu(
                index=index,
                uuid=f"GPU-{seed}0000-0000-0000-0000-{index:012d}",
                memory_bytes=memory_bytes,
                name="Simulated GPU",
            )
            for index in range(count)
        )
        self._lock = threading.Lock()
        self._unhealthy: set[int] = set()
        self._processes: dict[int, tuple[ProcessSample, ...]] = {}

    @classmethod
    def from_spec(cls, spec: str) -> SimulatedInventory:
        count, memory_bytes = parse_simulate_gpus(spec)
        return cls(count, memory_bytes)

    def gpus(self) -> Sequence[Gpu]:
        return self._gpus

    def is_healthy(self, gpu: Gpu) -> bool:
        with self._lock:
            return gpu.index not in self._unhealthy

    def processes(self, gpu: Gpu) -> Sequence[ProcessSample]:
        with self._lock:
            return self._processes.get(gpu.index, ())

    def close(self) -> None:
        pass

    def set_healthy(self, index: int, healthy: bool) -> None:
        """Make GPU `index` pass or fail its next health check."""
        with self._lock:
            if healthy:
                self._unhealthy.discard(index)
            else:
                self._unhealthy.add(index)

    def set_processes(self, index: int, samples: Sequence[ProcessSample]) -> None:
        """What `processes()` reports for GPU `index` from now on."""
        with self._lock:
            self._processes[index] = tuple(samples)
