"""Does a pod fit a node's GPUs? Pure logic of the scheduler extender (no Flask, no I/O).

kube-scheduler sees only node totals of tencent.com/vcuda-core and vcuda-memory, so two GPUs
each 60 % used look like 80 % free. The node manager publishes every GPU's free capacity in
the node annotation `gpushare.io/gpu-capacity`; here a pod's containers are fitted onto those
GPUs with the rules the node manager applies when kubelet allocates:

- a shared container (vcuda-core 1..99) needs one healthy GPU with room for both its cores
  and its memory; a whole-GPU container (n x 100) needs n entirely free healthy GPUs, its
  memory split evenly over them;
- the pod's regular containers must fit together (largest first, each onto the GPU the node's
  policy would choose); each init container must fit on its own (they run one at a time,
  before the others);
- prioritize scores a node 0..10 by how full its GPUs would be after placing the pod: fuller
  scores higher under `binpack`, emptier under `spread` (the policy the node publishes).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gpushare import quantities
from gpushare.annotations import NODE_GPU_CAPACITY, NODE_GPU_CAPACITY_VERSION
from gpushare.resources import CORE_UNITS_PER_GPU, VCUDA_CORE, VCUDA_MEMORY

MAX_SCORE = 10
"""MaxExtenderPriority of k8s.io/kube-scheduler/extender/v1."""


class CapacityError(ValueError):
    """The node's capacity annotation is missing or malformed."""


class DemandError(ValueError):
    """The pod's vcuda requests cannot be read."""


@dataclass(frozen=True)
class GpuFree:
    index: int
    core_total: int
    core_free: int
    memory_total: int
    memory_free: int
    healthy: bool


@dataclass(frozen=True)
class NodeGpus:
    policy: str
    gpus: tuple[GpuFree, ...]


@dataclass(frozen=True)
class ContainerDemand:
    name: str
    core: int
    memory: int


@dataclass(frozen=True)
class PodDemand:
    init: tuple[ContainerDemand, ...]
    regular: tuple[ContainerDemand, ...]

    @property
    def empty(self) -> bool:
        return not self.init and not self.regular


@dataclass(frozen=True)
class Fit:
    """Whether the pod fits, why not, and the GPUs as they would be after placing it."""

    fits: bool
    reason: str
    after: tuple[GpuFree, ...]


_GPU_FIELDS = ("index", "coreTotal", "coreFree", "memoryTotal", "memoryFree")


def parse_capacity(annotations: Mapping[str, str] | None) -> NodeGpus:
    """Read `gpushare.io/gpu-capacity` from a node's annotations."""
    if annotations is not None and not isinstance(annotations, Mapping):
        raise CapacityError(f"node metadata.annotations must be an object (got {annotations!r})")
    text = (annotations or {}).get(NODE_GPU_CAPACITY)
    if text is None:
        raise CapacityError(
            f"node has no {NODE_GPU_CAPACITY} annotation (no gpushare node manager runs there)"
        )
    if not isinstance(text, str):
        raise CapacityError(f"{NODE_GPU_CAPACITY} must be a JSON string (got {text!r})")
    return _parse_capacity_text(text)


@functools.lru_cache(maxsize=8192)
def _parse_capacity_text(text: str) -> NodeGpus:
    """Parsed once per distinct annotation: between two scheduling cycles most nodes'
    capacity is unchanged, and the scheduler sends every node on every call."""
    try:
        document = json.loads(text)
    except ValueError as err:
        raise CapacityError(f"{NODE_GPU_CAPACITY} is not JSON: {err}") from err
    if not isinstance(document, dict) or document.get("version") != NODE_GPU_CAPACITY_VERSION:
        version = document.get("version") if isinstance(document, dict) else None
        raise CapacityError(
            f"{NODE_GPU_CAPACITY}.version must be {NODE_GPU_CAPACITY_VERSION} (got {version!r})"
        )
    gpus = document.get("gpus")
    if not isinstance(gpus, list):
        raise CapacityError(f"{NODE_GPU_CAPACITY}.gpus must be a list (got {gpus!r})")
    parsed = []
    for position, gpu in enumerate(gpus):
        for name in _GPU_FIELDS:
            value = gpu.get(name) if isinstance(gpu, dict) else None
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CapacityError(
                    f"{NODE_GPU_CAPACITY}.gpus[{position}].{name} must be an integer >= 0 "
                    f"(got {value!r})"
                )
        parsed.append(
            GpuFree(
                index=gpu["index"],
                core_total=gpu["coreTotal"],
                core_free=gpu["coreFree"],
                memory_total=gpu["memoryTotal"],
                memory_free=gpu["memoryFree"],
                healthy=gpu.get("healthy", True) is True,
            )
        )
    policy = document.get("policy", "binpack")
    return NodeGpus(policy="spread" if policy == "spread" else "binpack", gpus=tuple(parsed))


def _units(limits: Mapping[str, Any], name: str, container: str) -> int:
    value = limits.get(name, 0)
    try:
        # The scheduler sends quantities in canonical form: 1000 arrives as "1k".
        return quantities.parse_whole(value)
    except quantities.QuantityError as err:
        raise DemandError(f'container "{container}" asks {name}={value!r}; {err}') from err


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DemandError(f"{where} must be an object (got {type(value).__name__})")
    return value


def pod_demand(pod: Mapping[str, Any]) -> PodDemand:
    """The vcuda requests of a pod (Kubernetes JSON), per container."""
    spec = _mapping(pod.get("spec"), "pod.spec")

    def demands(key: str) -> tuple[ContainerDemand, ...]:
        found = []
        containers = spec.get(key) or []
        if not isinstance(containers, list):
            raise DemandError(f"pod.spec.{key} must be a list")
        for position, container in enumerate(containers):
            where = f"pod.spec.{key}[{position}]"
            container = _mapping(container, where)
            name = str(container.get("name", ""))
            resources = _mapping(container.get("resources"), f"{where}.resources")
            limits = _mapping(
                resources.get("limits") or resources.get("requests"), f"{where}.resources.limits"
            )
            core = _units(limits, VCUDA_CORE, name)
            memory = _units(limits, VCUDA_MEMORY, name)
            if core or memory:
                found.append(ContainerDemand(name, core, memory))
        return tuple(found)

    return PodDemand(init=demands("initContainers"), regular=demands("containers"))


def _place(gpus: list[GpuFree], demand: ContainerDemand, policy: str) -> tuple[list[GpuFree], str]:
    """GPUs after placing one container, or an empty reason when it does not fit."""
    healthy = [gpu for gpu in gpus if gpu.healthy]
    if demand.core >= CORE_UNITS_PER_GPU:
        wanted = demand.core // CORE_UNITS_PER_GPU
        base, extra = divmod(demand.memory, wanted)
        parts = [base + (1 if position < extra else 0) for position in range(wanted)]
        free = [gpu for gpu in healthy if gpu.core_free == gpu.core_total]
        free.sort(key=lambda gpu: gpu.index if policy == "binpack" else -gpu.memory_free)
        chosen: dict[int, int] = {}
        for gpu in free:
            if len(chosen) < wanted and gpu.memory_free >= parts[len(chosen)]:
                chosen[gpu.index] = parts[len(chosen)]
        if len(chosen) < wanted:
            return gpus, f'container "{demand.name}" needs {wanted} entirely free GPU(s)'
        return [
            replace(gpu, core_free=0, memory_free=gpu.memory_free - chosen[gpu.index])
            if gpu.index in chosen
            else gpu
            for gpu in gpus
        ], ""
    fitting = [
        gpu for gpu in healthy if gpu.core_free >= demand.core and gpu.memory_free >= demand.memory
    ]
    if not fitting:
        return gpus, (
            f'container "{demand.name}" asks vcuda-core={demand.core} and '
            f"vcuda-memory={demand.memory}; no single GPU has room for both"
        )
    if policy == "binpack":
        best = min(fitting, key=lambda gpu: (gpu.core_free, gpu.memory_free, gpu.index))
    else:
        best = min(fitting, key=lambda gpu: (-gpu.core_free, -gpu.memory_free, gpu.index))
    return [
        replace(
            gpu,
            core_free=gpu.core_free - demand.core,
            memory_free=gpu.memory_free - demand.memory,
        )
        if gpu.index == best.index
        else gpu
        for gpu in gpus
    ], ""


def _largest_first(demand: ContainerDemand) -> tuple[int, int]:
    return (-demand.core, -demand.memory)


def fits(node: NodeGpus, demand: PodDemand) -> Fit:
    """Like `fit` without the GPUs after placement (`after` is the GPUs as they are): the
    filter's fast path for the common single-container pod."""
    containers = demand.init + demand.regular
    if len(containers) == 1 and containers[0].core < CORE_UNITS_PER_GPU:
        core, memory = containers[0].core, containers[0].memory
        for gpu in node.gpus:
            if gpu.healthy and gpu.core_free >= core and gpu.memory_free >= memory:
                return Fit(True, "", node.gpus)
    result = fit(node, demand)
    return Fit(result.fits, result.reason, node.gpus)


def fit(node: NodeGpus, demand: PodDemand) -> Fit:
    """Fit the pod onto the node's GPUs (see the module's rules)."""
    gpus = list(node.gpus)
    for container in demand.init:
        _, reason = _place(gpus, container, node.policy)
        if reason:
            return Fit(False, f"{reason}; {describe(node.gpus)}", node.gpus)
    for container in sorted(demand.regular, key=_largest_first):
        gpus, reason = _place(gpus, container, node.policy)
        if reason:
            return Fit(False, f"{reason}; {describe(node.gpus)}", node.gpus)
    return Fit(True, "", tuple(gpus))


def score(node: NodeGpus, after: Sequence[GpuFree]) -> int:
    """0..10: how full the node's GPUs are after placement (binpack) or how empty (spread)."""
    core_total = sum(gpu.core_total for gpu in after) or 1
    memory_total = sum(gpu.memory_total for gpu in after) or 1
    core_used = 1 - sum(gpu.core_free for gpu in after) / core_total
    memory_used = 1 - sum(gpu.memory_free for gpu in after) / memory_total
    fullness = (core_used + memory_used) / 2
    value = fullness if node.policy == "binpack" else 1 - fullness
    return max(0, min(MAX_SCORE, round(value * MAX_SCORE)))


def describe(gpus: Sequence[GpuFree]) -> str:
    parts = [
        f"GPU {gpu.index}: {gpu.core_free} cores and {gpu.memory_free} memory units free"
        + ("" if gpu.healthy else " (unhealthy)")
        for gpu in gpus
    ]
    return "; ".join(parts) if parts else "the node has no GPUs"
