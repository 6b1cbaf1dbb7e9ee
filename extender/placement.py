"""Which GPU(s) of a node each container gets: pure logic of the extender (no I/O).

Rules (the node manager hands out exactly what is decided here):

- a shared container (vcuda-core 1..99) takes its cores and its memory from one healthy GPU
  with room for both; a whole-GPU container (n x 100) takes n healthy GPUs with no core in
  use, its memory split evenly over them (larger parts first);
- regular containers are placed together, largest first; `binpack` takes the GPU left
  fullest (fewest free cores, then least free memory, then lowest index), `spread` the one
  left emptiest;
- a shared init container goes on the GPU of the pod's first regular GPU container (kubelet
  hands a regular container the devices an init container freed first), and needs room
  there as it runs alone: a pod holds, per GPU, the larger of its init containers' and the
  sum of its regular containers' units;
- two pods bound to a node and not yet allocated must never look alike to the node manager
  unless they got the same GPUs (see `ambiguous`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from extender.demand import ContainerDemand, PodDemand
from gpushare.assignment import Assignment, Inventory, Share
from gpushare.resources import CORE_UNITS_PER_GPU

MAX_SCORE = 10
"""MaxExtenderPriority of the scheduler's extender API."""


@dataclass(frozen=True)
class GpuFree:
    index: int
    uuid: str
    core_free: int
    memory_free: int
    memory_total: int
    healthy: bool = True


Usage = dict[str, tuple[int, int]]
"""GPU UUID → (cores, memory units) held."""


class NoFit(Exception):
    """The pod does not fit the node; the message says why."""


def free_gpus(inventory: Inventory, used: Mapping[str, tuple[int, int]]) -> list[GpuFree]:
    return [
        GpuFree(
            index=gpu.index,
            uuid=gpu.uuid,
            core_free=max(0, CORE_UNITS_PER_GPU - used.get(gpu.uuid, (0, 0))[0]),
            memory_free=max(0, gpu.memory - used.get(gpu.uuid, (0, 0))[1]),
            memory_total=gpu.memory,
            healthy=gpu.healthy,
        )
        for gpu in inventory.gpus
    ]


def split_memory(memory: int, gpus: int) -> list[int]:
    base, extra = divmod(memory, gpus)
    return [base + (1 if position < extra else 0) for position in range(gpus)]


def _take(gpus: list[GpuFree], shares: Iterable[Share]) -> list[GpuFree]:
    taken = {share.uuid: share for share in shares}
    return [
        replace(
            gpu,
            core_free=gpu.core_free - taken[gpu.uuid].core,
            memory_free=gpu.memory_free - taken[gpu.uuid].memory,
        )
        if gpu.uuid in taken
        else gpu
        for gpu in gpus
    ]


def _choose(
    gpus: Sequence[GpuFree], demand: ContainerDemand, policy: str, pinned: str | None = None
) -> tuple[Share, ...]:
    healthy = [gpu for gpu in gpus if gpu.healthy]
    wanted = demand.whole_gpus
    if wanted:
        free = [gpu for gpu in healthy if gpu.core_free == CORE_UNITS_PER_GPU]
        free.sort(key=lambda gpu: gpu.index if policy == "binpack" else -gpu.memory_free)
        parts = split_memory(demand.memory, wanted)
        chosen: list[GpuFree] = []
        for gpu in free:
            if len(chosen) < wanted and gpu.memory_free >= parts[len(chosen)]:
                chosen.append(gpu)
        if len(chosen) < wanted:
            raise NoFit(
                f'container "{demand.name}" needs {wanted} GPU(s) with no core in use; '
                f"{describe(gpus)}"
            )
        chosen.sort(key=lambda gpu: gpu.index)
        return tuple(
            Share(gpu.uuid, CORE_UNITS_PER_GPU, part)
            for gpu, part in zip(chosen, parts, strict=True)
        )
    fitting = [
        gpu
        for gpu in healthy
        if gpu.core_free >= demand.core
        and gpu.memory_free >= demand.memory
        and (pinned is None or gpu.uuid == pinned)
    ]
    if not fitting:
        raise NoFit(
            f'container "{demand.name}" asks vcuda-core={demand.core} and '
            f"vcuda-memory={demand.memory}; no single GPU has room for both; {describe(gpus)}"
        )
    return (Share(_preferred(fitting, policy)[0].uuid, demand.core, demand.memory),)


def _preferred(fitting: Sequence[GpuFree], policy: str) -> list[GpuFree]:
    if policy == "binpack":
        return sorted(fitting, key=lambda gpu: (gpu.core_free, gpu.memory_free, gpu.index))
    return sorted(fitting, key=lambda gpu: (-gpu.core_free, -gpu.memory_free, gpu.index))


def place(
    node: str,
    gpus: Sequence[GpuFree],
    demand: PodDemand,
    policy: str,
    pinned: Mapping[str, str] | None = None,
) -> Assignment:
    """Choose the GPU(s) of every container; NoFit with the reason when the node cannot.

    `pinned` forces the GPU of named shared containers (used to try alternatives)."""
    pinned = pinned or {}
    before = list(gpus)
    after = list(gpus)
    containers: dict[str, tuple[Share, ...]] = {}
    for container in sorted(demand.regular, key=lambda item: (-item.core, -item.memory)):
        shares = _choose(after, container, policy, pinned.get(container.name))
        after = _take(after, shares)
        containers[container.name] = shares
    anchor = containers[demand.regular[0].name][0].uuid if demand.regular else None
    for container in demand.init:
        # runs alone, before the regular containers: room before the pod is what counts
        target = anchor if not container.whole_gpus else None
        try:
            containers[container.name] = _choose(before, container, policy, target)
        except NoFit as err:
            if target is None:
                raise
            raise NoFit(
                f'init container "{container.name}" must run on the GPU of the first regular '
                f"container, which has no room for it; {err}"
            ) from err
    ordered = {item.name: containers[item.name] for item in demand.containers}
    return Assignment(node=node, containers=ordered)


def usage(assignment: Assignment, demand: PodDemand) -> Usage:
    """Units a pod holds per GPU: the larger of any init container's and the regular sum."""
    init_names = {item.name for item in demand.init}
    regular: dict[str, list[int]] = {}
    init: dict[str, list[int]] = {}
    for name, shares in assignment.containers.items():
        for share in shares:
            if name in init_names:
                held = init.setdefault(share.uuid, [0, 0])
                held[0] = max(held[0], share.core)
                held[1] = max(held[1], share.memory)
            else:
                held = regular.setdefault(share.uuid, [0, 0])
                held[0] += share.core
                held[1] += share.memory
    result: Usage = {}
    for uuid in set(regular) | set(init):
        r = regular.get(uuid, [0, 0])
        i = init.get(uuid, [0, 0])
        result[uuid] = (max(r[0], i[0]), max(r[1], i[1]))
    return result


def alternatives(
    node: str, gpus: Sequence[GpuFree], demand: PodDemand, policy: str
) -> Iterable[Assignment]:
    """The preferred assignment, then the same with the first container (in kubelet's order)
    pinned to each other GPU that fits it, in preference order."""
    first = place(node, gpus, demand, policy)
    yield first
    lead = demand.containers[0]
    if lead.whole_gpus or lead.init:
        return
    chosen = first.containers[lead.name][0].uuid
    fitting = [
        gpu
        for gpu in gpus
        if gpu.healthy
        and gpu.uuid != chosen
        and gpu.core_free >= lead.core
        and gpu.memory_free >= lead.memory
    ]
    for gpu in _preferred(fitting, policy):
        try:
            yield place(node, gpus, demand, policy, {lead.name: gpu.uuid})
        except NoFit:
            continue


CallShape = tuple[int, int, frozenset[str]]
"""One container as the node manager sees kubelet allocate it: (cores, memory, its GPUs)."""


def shapes(assignment: Assignment, demand: PodDemand) -> tuple[CallShape, ...]:
    return tuple(
        (
            item.core,
            item.memory,
            frozenset(share.uuid for share in assignment.containers.get(item.name, ())),
        )
        for item in demand.containers
    )


def ambiguous(one: Sequence[CallShape], other: Sequence[CallShape]) -> bool:
    """Whether the node manager could take one pod's Allocate calls for the other's on a
    different GPU. kubelet allocates container by container, each resource in any order,
    and names only the number of devices: containers at the same position that share a
    core or a memory size can be told apart only after the first call, so they must have
    the same GPUs; when both sizes are equal the next containers are compared too."""
    for (core_a, memory_a, gpus_a), (core_b, memory_b, gpus_b) in zip(one, other, strict=False):
        same_core = core_a == core_b and core_a > 0
        same_memory = memory_a == memory_b and memory_a > 0
        if not (same_core or same_memory):
            return False
        if gpus_a != gpus_b:
            return True
        if not (core_a == core_b and memory_a == memory_b):
            return False
    return False


def score(gpus: Sequence[GpuFree], taken: Usage, policy: str) -> int:
    """0..10: how full the node's GPUs are after placement (binpack) or how empty (spread)."""
    core_total = CORE_UNITS_PER_GPU * len(gpus) or 1
    memory_total = sum(gpu.memory_total for gpu in gpus) or 1
    core_free = sum(gpu.core_free for gpu in gpus) - sum(core for core, _ in taken.values())
    memory_free = sum(gpu.memory_free for gpu in gpus) - sum(mem for _, mem in taken.values())
    fullness = ((1 - core_free / core_total) + (1 - memory_free / memory_total)) / 2
    value = fullness if policy == "binpack" else 1 - fullness
    return max(0, min(MAX_SCORE, round(value * MAX_SCORE)))


def describe(gpus: Sequence[GpuFree]) -> str:
    parts = [
        f"GPU {gpu.index}: {gpu.core_free} cores and {gpu.memory_free} memory units free"
        + ("" if gpu.healthy else " (unhealthy)")
        for gpu in gpus
    ]
    return "; ".join(parts) if parts else "the node has no GPUs"


@dataclass(frozen=True)
class Holder:
    """A pod holding GPUs on a node, as preemption sees it."""

    uid: str
    priority: int
    usage: Mapping[str, tuple[int, int]]


def victims_for(
    node: str,
    inventory: Inventory,
    holders: Sequence[Holder],
    demand: PodDemand,
    priority: int,
) -> tuple[str, ...] | None:
    """The fewest lower-priority pods whose removal frees room for `demand` on one GPU
    (lowest priority first, then the largest holder); None when no such set exists."""
    found = preemption(node, inventory, holders, demand, priority)
    return None if found is None else found[0]


def preemption(
    node: str,
    inventory: Inventory,
    holders: Sequence[Holder],
    demand: PodDemand,
    priority: int,
) -> tuple[tuple[str, ...], Assignment] | None:
    """`victims_for`, with the assignment the pod gets once the victims are gone."""
    best: tuple[tuple[int, int], tuple[str, ...], Assignment] | None = None
    for gpu in inventory.gpus:
        on_gpu = [
            holder for holder in holders if holder.priority < priority and gpu.uuid in holder.usage
        ]
        on_gpu.sort(key=lambda holder: (holder.priority, -holder.usage[gpu.uuid][0]))
        removed: list[Holder] = []
        for candidate in [None, *on_gpu]:
            if candidate is not None:
                removed.append(candidate)
            gone = {holder.uid for holder in removed}
            used: dict[str, tuple[int, int]] = {}
            for holder in holders:
                if holder.uid in gone:
                    continue
                for uuid, (core, memory) in holder.usage.items():
                    was = used.get(uuid, (0, 0))
                    used[uuid] = (was[0] + core, was[1] + memory)
            try:
                assignment = place(node, free_gpus(inventory, used), demand, inventory.policy)
            except NoFit:
                continue
            if not removed:
                return (), assignment
            rank = (len(removed), max(holder.priority for holder in removed))
            if best is None or rank < best[0]:
                best = (rank, tuple(holder.uid for holder in removed), assignment)
            break
    return None if best is None else (best[1], best[2])
