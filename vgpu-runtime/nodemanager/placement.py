"""Per-GPU capacity as the node manager reports it (metrics), and the placement policy it
publishes with its inventory for the scheduler extender, which chooses every GPU."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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
