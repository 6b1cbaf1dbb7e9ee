"""The extender's view of the cluster: every node's GPUs and every GPU pod's share of them.

Fed by a watch of Nodes (their `gpushare.io/gpu-inventory`) and of Pods (requests,
priority, `gpushare.io/gpu-assignment`, phase), and by the extender's own decisions:

- **assumed**: a filter call chose a node and GPUs for the pod; the next filter calls count
  them at once, without waiting for a bind. An assumption the scheduler never binds (it
  picked another outcome) lapses after `assume_seconds`; a new filter of the same pod
  replaces it.
- **binding**: a bind call is writing the assignment and the Binding.
- **bound**: the pod carries its assignment and is bound to that node (from the watch, or
  right after a successful bind). This is all a restarted extender needs to rebuild.

A pod releases its share when it ends (Succeeded or Failed) or is deleted. Thread-safe: one
lock, no I/O under it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from extender import placement
from extender.demand import DemandError, PodDemand, pod_demand
from extender.placement import CallShape, Holder, NoFit, Usage
from gpushare.assignment import (
    POD_GPU_ALLOCATED,
    POD_GPU_ASSIGNMENT,
    Assignment,
    AssignmentError,
    Inventory,
    parse_assignment,
)
from gpushare.resources import CORE_UNITS_PER_GPU

log = logging.getLogger(__name__)

ASSUMED = "assumed"
BINDING = "binding"
BOUND = "bound"


@dataclass(frozen=True)
class PodInfo:
    """What the view keeps of a GPU pod seen through the watch."""

    uid: str
    namespace: str
    name: str
    demand: PodDemand
    priority: int
    node: str
    """spec.nodeName ("" while unscheduled)."""
    assignment: Assignment | None
    allocated: bool
    may_preempt: bool = False
    """spec.preemptionPolicy is not Never."""


@dataclass(frozen=True)
class Nomination:
    """Pods evicted so that a pod fits one GPU of `node`; the pod waits for them to end."""

    node: str
    victims: frozenset[str]
    assignment: Assignment
    expires: float


@dataclass
class Placed:
    """A pod's share of one node's GPUs, in one of the states of the module docstring."""

    uid: str
    node: str
    assignment: Assignment
    usage: Usage
    shapes: tuple[CallShape, ...]
    priority: int
    state: str
    allocated: bool = False
    expires: float | None = None


@dataclass(frozen=True)
class FilterResult:
    chosen: str | None
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)
    evict: tuple[tuple[str, str, str], ...] = ()
    """(namespace, name, UID) of pods to evict so that the pod fits one GPU (preemption)."""

    @property
    def waiting(self) -> bool:
        """No node passed and some failed only for a while (see `Waiting`)."""
        return self.chosen is None and any(isinstance(r, Waiting) for r in self.failed.values())


class Waiting(str):
    """A node's failure that clears by itself soon (another pod's allocation, victims
    ending): the scheduler is told to try the pod again rather than to wait for an event."""


class BindRefused(Exception):
    """The pod cannot be bound to that node now; the message says why."""


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def pod_info(pod: Mapping[str, Any]) -> PodInfo | None:
    """The view's record of a pod (Kubernetes JSON); None for a pod that asks no vcuda
    resource or asks what no node could serve."""
    metadata = pod.get("metadata")
    spec = pod.get("spec")
    if not isinstance(metadata, Mapping) or not isinstance(spec, Mapping):
        return None
    try:
        demand = pod_demand(pod)
    except DemandError:
        return None
    if demand.empty:
        return None
    annotations = metadata.get("annotations")
    annotations = annotations if isinstance(annotations, Mapping) else {}
    assignment = None
    if POD_GPU_ASSIGNMENT in annotations:
        try:
            assignment = parse_assignment(annotations[POD_GPU_ASSIGNMENT])
        except AssignmentError as err:
            log.warning(
                "pod %s/%s: ignoring its assignment: %s",
                metadata.get("namespace"),
                metadata.get("name"),
                err,
            )
    priority = spec.get("priority")
    return PodInfo(
        uid=_str(metadata.get("uid")),
        namespace=_str(metadata.get("namespace")),
        name=_str(metadata.get("name")),
        demand=demand,
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else 0,
        node=_str(spec.get("nodeName")),
        assignment=assignment,
        allocated=POD_GPU_ALLOCATED in annotations,
        may_preempt=spec.get("preemptionPolicy") != "Never",
    )


def _finished(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status")
    return isinstance(status, Mapping) and status.get("phase") in ("Succeeded", "Failed")


class ClusterView:
    """Nodes' GPUs and pods' shares; decisions of filter, bind and preempt. Thread-safe."""

    def __init__(
        self,
        *,
        assume_seconds: float = 30.0,
        preemption_seconds: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._assume_seconds = assume_seconds
        self._preemption_seconds = preemption_seconds
        self._nominations: dict[str, Nomination] = {}
        self._clock = clock
        self._lock = threading.Lock()
        self._inventories: dict[str, Inventory] = {}
        self._pods: dict[str, PodInfo] = {}
        self._placed: dict[str, Placed] = {}
        self._by_node: dict[str, dict[str, Placed]] = {}
        self._used: dict[str, dict[str, list[int]]] = {}

    # --- feeding from the API server ---------------------------------------------------------
    def set_node(self, name: str, inventory: Inventory | None) -> None:
        with self._lock:
            if inventory is None:
                self._inventories.pop(name, None)
            else:
                self._inventories[name] = inventory

    def replace_nodes(self, inventories: Mapping[str, Inventory]) -> None:
        with self._lock:
            self._inventories = dict(inventories)

    def apply_pod(self, pod: Mapping[str, Any]) -> None:
        """A pod as the watch delivers it (added or modified)."""
        info = pod_info(pod)
        metadata = pod.get("metadata")
        uid = _str(metadata.get("uid")) if isinstance(metadata, Mapping) else ""
        with self._lock:
            if info is None or _finished(pod):
                self._pods.pop(uid, None)
                self._nominations.pop(uid, None)
                self._drop(uid)
                return
            self._pods[uid] = info
            self._settle(info)

    def remove_pod(self, uid: str) -> None:
        with self._lock:
            self._pods.pop(uid, None)
            self._nominations.pop(uid, None)
            self._drop(uid)

    def replace_pods(self, pods: Sequence[Mapping[str, Any]]) -> None:
        """A fresh list: every pod's share rebuilt from its assignment; the extender's own
        assumptions and binds in flight are kept (the list may predate them)."""
        with self._lock:
            kept = {
                uid: item for uid, item in self._placed.items() if item.state in (ASSUMED, BINDING)
            }
            self._pods.clear()
            self._placed.clear()
            self._by_node.clear()
            self._used.clear()
            for item in kept.values():
                self._add(item)
        for pod in pods:
            self.apply_pod(pod)

    def _settle(self, info: PodInfo) -> None:
        """Bring the pod's share in line with what the API server says of it."""
        current = self._placed.get(info.uid)
        assignment = info.assignment
        if info.node and assignment is not None and assignment.node == info.node:
            if (
                current is not None
                and current.state == BOUND
                and current.assignment == assignment
                and current.allocated == info.allocated
            ):
                return
            self._drop(info.uid)
            self._add(self._placed_for(info, assignment, BOUND, info.allocated))
            return
        if info.node:
            # bound by other means, or to another node than its assignment: it holds no
            # GPU the node manager would hand out (Allocate refuses it)
            self._drop(info.uid)
        # not bound yet: an assumption or a bind in flight stands

    def _placed_for(
        self, info: PodInfo, assignment: Assignment, state: str, allocated: bool = False
    ) -> Placed:
        return Placed(
            uid=info.uid,
            node=assignment.node,
            assignment=assignment,
            usage=placement.usage(assignment, info.demand),
            shapes=placement.shapes(assignment, info.demand),
            priority=info.priority,
            state=state,
            allocated=allocated,
            expires=None if state == BOUND else self._clock() + self._assume_seconds,
        )

    def _add(self, item: Placed) -> None:
        self._placed[item.uid] = item
        self._by_node.setdefault(item.node, {})[item.uid] = item
        used = self._used.setdefault(item.node, {})
        for uuid, (core, memory) in item.usage.items():
            held = used.setdefault(uuid, [0, 0])
            held[0] += core
            held[1] += memory

    def _drop(self, uid: str) -> Placed | None:
        item = self._placed.pop(uid, None)
        if item is None:
            return None
        self._by_node.get(item.node, {}).pop(uid, None)
        used = self._used.get(item.node, {})
        for uuid, (core, memory) in item.usage.items():
            held = used.get(uuid)
            if held is not None:
                held[0] -= core
                held[1] -= memory
        return item

    def _prune(self) -> None:
        now = self._clock()
        lapsed = [
            uid
            for uid, item in self._placed.items()
            if item.state == ASSUMED and item.expires is not None and item.expires < now
        ]
        for uid in lapsed:
            self._drop(uid)

    # --- reading -----------------------------------------------------------------------------
    def placed(self, uid: str) -> Placed | None:
        with self._lock:
            item = self._placed.get(uid)
            return None if item is None else replace(item)

    def used(self, node: str) -> dict[str, tuple[int, int]]:
        with self._lock:
            return {uuid: (held[0], held[1]) for uuid, held in self._used.get(node, {}).items()}

    def counts(self) -> tuple[int, int]:
        """(nodes with an inventory, pods holding or assumed on GPUs)."""
        with self._lock:
            return len(self._inventories), len(self._placed)

    # --- deciding ----------------------------------------------------------------------------
    def _candidate(self, node: str, demand: PodDemand, uid: str) -> tuple[Assignment, int] | str:
        """The assignment the pod would get on `node` and the node's score, or why not."""
        inventory = self._inventories.get(node)
        if inventory is None:
            return "no gpushare node manager has published this node's GPUs"
        used = {uuid: (held[0], held[1]) for uuid, held in self._used.get(node, {}).items()}
        gpus = placement.free_gpus(inventory, used)
        waiting = [
            item
            for item in self._by_node.get(node, {}).values()
            if not item.allocated and item.uid != uid
        ]
        try:
            for assignment in placement.alternatives(node, gpus, demand, inventory.policy):
                shapes = placement.shapes(assignment, demand)
                blocking = next(
                    (item for item in waiting if placement.ambiguous(shapes, item.shapes)), None
                )
                if blocking is None:
                    taken = placement.usage(assignment, demand)
                    return assignment, placement.score(gpus, taken, inventory.policy)
            pod = self._pods.get(blocking.uid) if blocking is not None else None
            name = f"{pod.namespace}/{pod.name}" if pod is not None else "another pod"
            return Waiting(
                f"waiting for {name} to be allocated first: on the GPUs where this pod fits, "
                "the node manager could not tell the two pods apart"
            )
        except NoFit as err:
            return str(err)

    def _estimate(self, node: str, inventory: Inventory, demand: PodDemand) -> float:
        """How full (binpack) or empty (spread) the node would be with the pod on it, from
        node totals: no placement is made."""
        used = self._used.get(node, {})
        core_total = CORE_UNITS_PER_GPU * len(inventory.gpus) or 1
        memory_total = sum(gpu.memory for gpu in inventory.gpus) or 1
        core_used = sum(held[0] for held in used.values())
        memory_used = sum(held[1] for held in used.values())
        core_used += sum(item.core for item in demand.regular)
        memory_used += sum(item.memory for item in demand.regular)
        fullness = (core_used / core_total + memory_used / memory_total) / 2
        return fullness if inventory.policy == "binpack" else 1 - fullness

    def filter(self, pod: Mapping[str, Any], names: Sequence[str]) -> FilterResult:
        """Nodes where the pod fits; the best one is chosen and assumed at once. Nodes are
        tried best first (by the score they would get), so a filter costs one placement
        when the best node fits, and one per node only when none does."""
        try:
            demand = pod_demand(pod)
        except DemandError as err:
            reason = f"pod rejected: {err}"
            return FilterResult(chosen=None, unresolvable=dict.fromkeys(names, reason))
        info = pod_info(pod)
        if demand.empty or info is None:
            return FilterResult(chosen=None)
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        best: tuple[tuple[int, str], str, Assignment] | None = None
        with self._lock:
            self._prune()
            previous = self._placed.get(info.uid)
            if previous is not None and previous.state == ASSUMED:
                self._drop(info.uid)
            self._pods.setdefault(info.uid, info)
            ranked: list[tuple[float, str]] = []
            for name in names:
                inventory = self._inventories.get(name)
                if inventory is None:
                    unresolvable[name] = "no gpushare node manager has published this node's GPUs"
                    continue
                ranked.append((-self._estimate(name, inventory, demand), name))
            # the node that would score best is tried first; the first that fits is chosen,
            # and the nodes after it are left out of the answer (only one is returned)
            ranked.sort()
            for _, name in ranked:
                found = self._candidate(name, demand, info.uid)
                if isinstance(found, str):
                    failed[name] = found
                    continue
                best = ((0, name), name, found[0])
                break
            if best is None:
                evict = self._preempt_fragmented(info, [name for _, name in ranked], failed)
                return FilterResult(
                    chosen=None, failed=failed, unresolvable=unresolvable, evict=evict
                )
            self._nominations.pop(info.uid, None)
            self._add(self._placed_for(info, best[2], ASSUMED))
        return FilterResult(chosen=best[1], failed=failed, unresolvable=unresolvable)

    MAX_PREEMPTION_NODES = 50
    """Nodes examined for victims when a pod fits nowhere (the fullest first)."""

    def _preempt_fragmented(
        self, info: PodInfo, nodes: Sequence[str], failed: dict[str, str]
    ) -> tuple[tuple[str, str, str], ...]:
        """When the pod fits no node, the lower-priority pods to evict so that it fits one
        GPU; kube-scheduler does not preempt where node totals have room, so the extender
        does, and holds the room for the pod (an assumption) until the victims are gone."""
        if not info.may_preempt:
            return ()
        now = self._clock()
        for uid in [uid for uid, item in self._nominations.items() if item.expires < now]:
            del self._nominations[uid]
        nomination = self._nominations.get(info.uid)
        if nomination is not None:
            left = [uid for uid in nomination.victims if uid in self._placed]
            if left:
                self._hold(info, nomination)
                failed[nomination.node] = Waiting(
                    f"waiting for {len(left)} lower-priority pod(s) evicted to free a GPU"
                    " for this pod to end"
                )
                return ()
            del self._nominations[info.uid]
        best: tuple[tuple[int, int], str, tuple[str, ...], Assignment] | None = None
        for node in nodes[: self.MAX_PREEMPTION_NODES]:
            holders = [
                Holder(item.uid, item.priority, item.usage)
                for item in self._by_node.get(node, {}).values()
                if item.state == BOUND and item.uid != info.uid
            ]
            found = placement.preemption(
                node, self._inventories[node], holders, info.demand, info.priority
            )
            if not found or not found[0]:
                continue
            victims, assignment = found
            priorities = [self._placed[uid].priority for uid in victims]
            rank = (len(victims), max(priorities))
            if best is None or rank < best[0]:
                best = (rank, node, victims, assignment)
        if best is None:
            return ()
        _, node, victims, assignment = best
        nomination = Nomination(
            node, frozenset(victims), assignment, now + self._preemption_seconds
        )
        self._nominations[info.uid] = nomination
        self._hold(info, nomination)
        failed[node] = Waiting(
            f"evicting {len(victims)} lower-priority pod(s) to free a GPU for this pod"
        )
        chosen = [self._pods[uid] for uid in victims if uid in self._pods]
        return tuple((pod.namespace, pod.name, pod.uid) for pod in chosen)

    def _hold(self, info: PodInfo, nomination: Nomination) -> None:
        """Keep the room being freed for the pod: counted as its assumption meanwhile."""
        self._drop(info.uid)
        held = self._placed_for(info, nomination.assignment, ASSUMED)
        held.expires = nomination.expires
        self._add(held)

    def prioritize(self, pod: Mapping[str, Any], names: Sequence[str]) -> list[tuple[str, int]]:
        """The node the filter chose scores highest; the others by how they would fit."""
        info = pod_info(pod)
        if info is None:
            return [(name, 0) for name in names]
        with self._lock:
            chosen = self._placed.get(info.uid)
            scores = []
            for name in names:
                if chosen is not None and chosen.node == name:
                    scores.append((name, placement.MAX_SCORE))
                    continue
                found = self._candidate(name, info.demand, info.uid)
                scores.append((name, 0 if isinstance(found, str) else found[1]))
            return scores

    def reserve(self, namespace: str, name: str, uid: str, node: str) -> Assignment:
        """The assignment to write before binding `uid` to `node`, held as `binding` until
        `bound` or `release`; BindRefused when it cannot be had."""
        with self._lock:
            self._prune()
            item = self._placed.get(uid)
            if item is not None and item.node == node and item.state in (ASSUMED, BINDING):
                item.state = BINDING
                item.expires = None
                return item.assignment
            if item is not None and item.state == BOUND:
                raise BindRefused(f"pod {namespace}/{name} is already bound to {item.node}")
            info = self._pods.get(uid)
            if info is None:
                raise BindRefused(
                    f"pod {namespace}/{name} ({uid}) is not known yet; the scheduler retries it"
                )
            self._drop(uid)
            found = self._candidate(node, info.demand, uid)
            if isinstance(found, str):
                raise BindRefused(f"pod {namespace}/{name} cannot go to node {node}: {found}")
            placed = self._placed_for(info, found[0], BINDING)
            placed.expires = None
            self._add(placed)
            return found[0]

    def bound(self, uid: str) -> None:
        """The assignment is written and the Binding created."""
        with self._lock:
            item = self._placed.get(uid)
            if item is not None and item.state == BINDING:
                item.state = BOUND

    def release(self, uid: str) -> None:
        """A bind failed: its share is free again."""
        with self._lock:
            item = self._placed.get(uid)
            if item is not None and item.state != BOUND:
                self._drop(uid)

    def preempt(
        self, pod: Mapping[str, Any], proposed: Mapping[str, Sequence[str]]
    ) -> dict[str, tuple[str, ...]]:
        """For each node the scheduler proposes, the victims that free one GPU for the pod
        (lower priority only, fewest first); nodes where no such set exists are left out."""
        info = pod_info(pod)
        if info is None:
            return {}
        result: dict[str, tuple[str, ...]] = {}
        with self._lock:
            for node in proposed:
                inventory = self._inventories.get(node)
                if inventory is None:
                    continue
                holders = [
                    Holder(item.uid, item.priority, item.usage)
                    for item in self._by_node.get(node, {}).values()
                    if item.uid != info.uid
                ]
                victims = placement.victims_for(
                    node, inventory, holders, info.demand, info.priority
                )
                if victims:
                    result[node] = victims
        return result
