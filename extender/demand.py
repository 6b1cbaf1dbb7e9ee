"""What a pod asks of the GPUs, read from its Kubernetes JSON (pure logic, bounded).

Every count is checked against its rule before anything proportional to it is built: a
vcuda-core of `1e999` is refused here with the rule, never turned into a list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpushare import quantities
from gpushare.assignment import MAX_CONTAINERS, MAX_GPUS_PER_NODE, MAX_MEMORY_UNITS_PER_GPU
from gpushare.resources import CORE_UNITS_PER_GPU, VCUDA_CORE, VCUDA_MEMORY

MAX_CORE_UNITS = MAX_GPUS_PER_NODE * CORE_UNITS_PER_GPU
MAX_MEMORY_UNITS = MAX_GPUS_PER_NODE * MAX_MEMORY_UNITS_PER_GPU


class DemandError(ValueError):
    """The pod's vcuda requests cannot be placed by any node; the message says why."""


@dataclass(frozen=True)
class ContainerDemand:
    name: str
    core: int
    memory: int
    init: bool = False

    @property
    def whole_gpus(self) -> int:
        """Whole GPUs asked for; 0 for a share of one GPU."""
        return self.core // CORE_UNITS_PER_GPU if self.core >= CORE_UNITS_PER_GPU else 0


@dataclass(frozen=True)
class PodDemand:
    containers: tuple[ContainerDemand, ...]
    """Containers asking vcuda resources, in the order kubelet allocates them: init
    containers first, then regular ones, each in spec order."""

    @property
    def empty(self) -> bool:
        return not self.containers

    @property
    def init(self) -> tuple[ContainerDemand, ...]:
        return tuple(item for item in self.containers if item.init)

    @property
    def regular(self) -> tuple[ContainerDemand, ...]:
        return tuple(item for item in self.containers if not item.init)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DemandError(f"{where} must be an object (got {type(value).__name__})")
    return value


def _units(limits: Mapping[str, Any], name: str, container: str, maximum: int) -> int:
    value = limits.get(name, 0)
    try:
        # The scheduler sends quantities in canonical form: 1000 arrives as "1k".
        units = quantities.parse_whole(value)
    except quantities.QuantityError as err:
        raise DemandError(f'container "{container}" asks {name}={value!r}; {err}') from err
    if units > maximum:
        raise DemandError(
            f'container "{container}" asks {name}={value!r}; at most {maximum} can be placed'
        )
    return units


def pod_demand(pod: Mapping[str, Any]) -> PodDemand:
    """The vcuda requests of a pod, per container; DemandError when no node could serve it."""
    spec = _mapping(pod.get("spec"), "Pod.spec")
    found: list[ContainerDemand] = []
    for key, init in (("initContainers", True), ("containers", False)):
        containers = spec.get(key) or []
        if not isinstance(containers, list):
            raise DemandError(f"Pod.spec.{key} must be a list")
        if len(containers) > MAX_CONTAINERS:
            raise DemandError(
                f"Pod.spec.{key} has {len(containers)} items; at most {MAX_CONTAINERS}"
            )
        for position, container in enumerate(containers):
            where = f"Pod.spec.{key}[{position}]"
            container = _mapping(container, where)
            name = container.get("name")
            if not isinstance(name, str) or not name:
                name = f"#{position}"
            resources = _mapping(container.get("resources"), f"{where}.resources")
            limits = _mapping(
                resources.get("limits") or resources.get("requests"), f"{where}.resources.limits"
            )
            core = _units(limits, VCUDA_CORE, name, MAX_CORE_UNITS)
            memory = _units(limits, VCUDA_MEMORY, name, MAX_MEMORY_UNITS)
            if not core and not memory:
                continue
            if not core:
                raise DemandError(
                    f'container "{name}" asks {VCUDA_MEMORY}={memory} without {VCUDA_CORE}'
                )
            if core > CORE_UNITS_PER_GPU and core % CORE_UNITS_PER_GPU:
                raise DemandError(
                    f'container "{name}" asks {VCUDA_CORE}={core}; above {CORE_UNITS_PER_GPU}'
                    f" it must be a multiple of {CORE_UNITS_PER_GPU}"
                )
            found.append(ContainerDemand(name, core, memory, init))
    return PodDemand(containers=tuple(found))
