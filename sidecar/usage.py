"""Measured GPU use: the reader interface and the per-interval aggregate (pure logic).

A `UsageReader` returns one `UsageSample` per call: the pod's SM utilisation since the last
call and the GPU memory its processes use now, or None when it cannot see the pod's
processes. The agent samples a few times per interval; `UsageWindow` turns the samples into
an interval's average SM utilisation and peak memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sidecar.reports import Measured


@dataclass(frozen=True)
class UsageSample:
    """One reading of the pod's processes."""

    sm_utilization: float | None
    """Average SM utilisation since the previous reading, 0..1 (None: no samples)."""
    memory_used_bytes: int | None
    """GPU memory held by the pod's processes at the time of the reading."""


class UsageReader(Protocol):
    """What the agent needs from NVML; fakes implement the same two methods."""

    def sample(self) -> UsageSample | None:
        """A reading of the pod's processes, or None when they cannot be seen right now."""

    def close(self) -> None:
        """Release the library (NVML shutdown)."""


class AllocationOnly:
    """The reader used without NVML: nothing is measured, reports carry allocation only."""

    def sample(self) -> UsageSample | None:
        return None

    def close(self) -> None:
        return None


@dataclass
class UsageWindow:
    """Samples of the open interval: mean of the SM readings, peak of the memory readings."""

    sm_values: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None

    def add(self, sample: UsageSample | None) -> None:
        if sample is None:
            return
        if sample.sm_utilization is not None:
            self.sm_values.append(min(max(sample.sm_utilization, 0.0), 1.0))
        if sample.memory_used_bytes is not None:
            memory = max(0, sample.memory_used_bytes)
            self.peak_memory_bytes = (
                memory if self.peak_memory_bytes is None else max(self.peak_memory_bytes, memory)
            )

    def take(self) -> Measured:
        """The interval's figures; the window starts empty again."""
        sm = sum(self.sm_values) / len(self.sm_values) if self.sm_values else None
        measured = Measured(sm_utilization=sm, memory_used_bytes=self.peak_memory_bytes)
        self.sm_values = []
        self.peak_memory_bytes = None
        return measured
