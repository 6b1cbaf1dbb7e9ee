"""Which GPU serves a container: pure logic over per-GPU free capacity (no I/O).

A shared request (vcuda-core 1..99) takes all its cores and memory from one GPU that has room
for both. A whole-GPU request (n x 100) takes n GPUs that are entirely free of cores, and its
memory (if any) split evenly over them. Among the GPUs that fit, `binpack` takes the one left
fullest (fewest free cores after placement, then least free memory, then lowest index) and
`spread` the one left emptiest (most free cores, then most free memory, then lowest index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from gpushare.resources import CORE_UNITS_PER_GPU


class Policy(StrEnum):
    BINPACK = "binpack"
    SPREAD = "spread"


@dataclass(frozen=True)
class GpuCapacity:
    """Free and total capacity of one GPU, in vcuda units."""

    index: int
    uuid: str
    core_total: int
    core_free: int
    memory_total: int
    memory_free: int
    healthy: bool = True


@dataclass(frozen=True)
class Demand:
    """What one container asks for, in vcuda units (memory 0 when not asked)."""

    core: int
    memory: int

    @property
    def whole_gpus(self) -> int:
        """Number of whole GPUs asked for; 0 for a shared request."""
        return self.core // CORE_UNITS_PER_GPU if self.core >= CORE_UNITS_PER_GPU else 0

    def describe(self) -> str:
        return f"vcuda-core={self.core} and vcuda-memory={self.memory}"


@dataclass(frozen=True)
class Placement:
    """The GPUs chosen and how many units of each resource each one gives."""

    core_by_gpu: dict[str, int]
    memory_by_gpu: dict[str, int]

    @property
    def gpu_uuids(self) -> tuple[str, ...]:
        return tuple(self.core_by_gpu or self.memory_by_gpu)


class NoFitError(Exception):
    """No GPU (or set of GPUs) of this node has room for the demand."""


def split_memory(memory: int, gpus: int) -> list[int]:
    """Memory units of a whole-GPU request split as evenly as possible, larger parts first."""
    base, extra = divmod(memory, gpus)
    return [base + (1 if position < extra else 0) for position in range(gpus)]


def choose(capacities: Sequence[GpuCapacity], demand: Demand, policy: Policy) -> Placement:
    """Choose the GPUs for `demand`; raises NoFitError naming what each GPU has free."""
    healthy = [gpu for gpu in capacities if gpu.healthy]
    wanted = demand.whole_gpus
    if wanted:
        free = [gpu for gpu in healthy if gpu.core_free == gpu.core_total]
        free.sort(key=lambda gpu: gpu.index if policy is Policy.BINPACK else -gpu.memory_free)
        parts = split_memory(demand.memory, wanted)
        chosen: list[GpuCapacity] = []
        for gpu in free:
            if len(chosen) < wanted and gpu.memory_free >= parts[len(chosen)]:
                chosen.append(gpu)
        if len(chosen) < wanted:
            raise NoFitError(
                f"{demand.describe()} needs {wanted} entirely free GPU(s); "
                f"{_describe_free(capacities)}"
            )
        chosen.sort(key=lambda gpu: gpu.index)
        return Placement(
            core_by_gpu={gpu.uuid: CORE_UNITS_PER_GPU for gpu in chosen},
            memory_by_gpu={gpu.uuid: part for gpu, part in zip(chosen, parts, strict=True) if part},
        )
    fitting = [
        gpu for gpu in healthy if gpu.core_free >= demand.core and gpu.memory_free >= demand.memory
    ]
    if not fitting:
        raise NoFitError(
            f"no single GPU has room for {demand.describe()}; {_describe_free(capacities)}"
        )
    if policy is Policy.BINPACK:
        best = min(fitting, key=lambda gpu: (gpu.core_free, gpu.memory_free, gpu.index))
    else:
        best = min(fitting, key=lambda gpu: (-gpu.core_free, -gpu.memory_free, gpu.index))
    return Placement(
        core_by_gpu={best.uuid: demand.core} if demand.core else {},
        memory_by_gpu={best.uuid: demand.memory} if demand.memory else {},
    )


def _describe_free(capacities: Sequence[GpuCapacity]) -> str:
    parts = [
        f"GPU {gpu.index}: {gpu.core_free} cores and {gpu.memory_free} memory units free"
        + ("" if gpu.healthy else " (unhealthy)")
        for gpu in capacities
    ]
    return "; ".join(parts) if parts else "the node has no GPUs"
