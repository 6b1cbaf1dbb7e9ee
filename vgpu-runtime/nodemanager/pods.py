"""Which pod is this? Pure matching of an Allocate call to the pods bound to this node.

kubelet's Allocate names devices, never the pod. The GPU of every container was decided when
the pod was bound and written on it (`gpushare.io/gpu-assignment`), so the node manager only
has to recognise the pod, and it never guesses by creation order:

- the candidates are the pods bound to this node, not finished nor being deleted, whose
  assignment names this node, and that are not marked allocated (`gpushare.io/gpu-allocated`);
- kubelet allocates a pod container by container (init containers first, then regular ones,
  in spec order), each resource of a container in any order. A candidate's *current*
  container is its first one with a resource not yet served; a call for `n` devices of a
  resource matches a candidate whose current container asks `n` of it;
- a candidate already partly served is the pod kubelet is admitting: it wins. Otherwise any
  matching candidate will do, because the extender never leaves two pods waiting on a node
  that the calls could confuse unless they got the same GPUs (`ambiguous` tells when they
  did not, which is logged).

The burst limit and the SM partition come from the pod's annotations (when several waiting
pods match a call, the smallest of theirs: never more than any of them asked). The burst
limit is the smaller of `tencent.com/vcuda-core-limit` (percent) and `gpushare.io/quota-limit`
(a fraction, rounded down to whole percent), raised to the container's core request;
`gpushare.io/sm-partition` becomes CUDA_MPS_ACTIVE_THREAD_PERCENTAGE. Annotations are read as
the webhook accepts them (ASCII digits); anything else is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gpushare import quantities
from gpushare.annotations import CORE_SOFT_LIMIT, QUOTA_LIMIT, SM_PARTITION
from gpushare.assignment import (
    POD_GPU_ALLOCATED,
    POD_GPU_ASSIGNMENT,
    AssignmentError,
    parse_assignment,
)
from gpushare.resources import CORE_UNITS_PER_GPU, VCUDA_CORE, VCUDA_MEMORY
from nodemanager.devices import Kind


@dataclass(frozen=True)
class ContainerRequest:
    """A container of a pending pod that asks for vcuda resources."""

    namespace: str
    pod: str
    uid: str
    container: str
    order: tuple[str, str, str, int]
    core: int
    memory: int
    soft_limit: int | None
    sm_partition: int | None = None
    core_by_gpu: dict[str, int] | None = None
    """GPU UUID → cores, from the pod's assignment (None: the pod has no valid one)."""
    memory_by_gpu: dict[str, int] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.uid, self.container)

    def units(self, kind: Kind) -> int:
        return self.core if kind is Kind.CORE else self.memory

    def gpus(self, kind: Kind) -> dict[str, int] | None:
        """Units of `kind` to take from each GPU, as assigned; None without an assignment."""
        return self.core_by_gpu if kind is Kind.CORE else self.memory_by_gpu


@dataclass(frozen=True)
class Match:
    """The chosen candidate (None when nothing matched), the burst limit and the SM partition
    (percent, None for all SMs) to hand out."""

    candidate: ContainerRequest | None
    soft_limit: int
    ambiguous: bool
    sm_partition: int | None = None
    last: bool = False
    """This allocation is the pod's last one: every container has both its resources then."""


def _int_quantity(value: Any) -> int:
    """A whole-number quantity as the API server writes it (canonical form turns 1000 into
    "1k"); anything that is no count of units (fractions, binary suffixes) counts as 0."""
    if quantities.has_binary_suffix(value):
        return 0
    try:
        return quantities.parse_whole(value)
    except quantities.QuantityError:
        return 0


ALL_SMS = 100
"""`gpushare.io/sm-partition` of a container that may use every SM (nothing to hand out)."""

_PERCENT = re.compile(r"[0-9]{1,3}")
_FRACTION = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def _percent(text: object) -> int | None:
    """An integer percent 0..100 written in ASCII digits, else None."""
    if not isinstance(text, str) or not _PERCENT.fullmatch(text) or int(text) > 100:
        return None
    return int(text)


def _fraction_percent(text: object) -> int | None:
    """A fraction 0 < f <= 1 as whole percent, rounded down (a ceiling never grows), else None."""
    if not isinstance(text, str) or not _FRACTION.fullmatch(text):
        return None
    value = Decimal(text)
    if not 0 < value <= 1:
        return None
    return int(value * 100)


def burst_limit(annotations: Mapping[str, str], core: int) -> int | None:
    """The pod's burst limit for this core request: the smaller of its ceilings
    (`tencent.com/vcuda-core-limit`, `gpushare.io/quota-limit`) never below `core`; None for
    whole GPUs and when the pod gives no valid ceiling."""
    if core <= 0 or core >= CORE_UNITS_PER_GPU:
        return None
    ceilings = [
        value
        for value in (
            _percent(annotations.get(CORE_SOFT_LIMIT)),
            _fraction_percent(annotations.get(QUOTA_LIMIT)),
        )
        if value is not None
    ]
    return max(core, min(ceilings)) if ceilings else None


def _sm_partition(annotations: Mapping[str, str]) -> int | None:
    """The pod's percent of SMs (1..99); None for all SMs (absent, 100 or invalid)."""
    value = _percent(annotations.get(SM_PARTITION))
    return value if value is not None and 1 <= value < ALL_SMS else None


def _assigned(
    annotations: Mapping[str, Any], node_name: str, container: str
) -> tuple[dict[str, int], dict[str, int]] | None:
    try:
        assignment = parse_assignment(annotations.get(POD_GPU_ASSIGNMENT))
    except AssignmentError:
        return None
    shares = assignment.containers.get(container)
    if assignment.node != node_name or shares is None:
        return None
    core = {share.uuid: share.core for share in shares if share.core}
    memory = {share.uuid: share.memory for share in shares if share.memory}
    return core, memory


def pending_containers(
    pods: Iterable[Mapping[str, Any]], node_name: str = ""
) -> list[ContainerRequest]:
    """Containers asking for vcuda resources in this node's pods still to be allocated
    (Kubernetes JSON), each pod's in kubelet's order; pods marked allocated are left out.
    `core_by_gpu`/`memory_by_gpu` are None where the pod has no assignment for `node_name`."""
    found: list[ContainerRequest] = []
    for pod in pods:
        metadata = pod.get("metadata") or {}
        status = pod.get("status") or {}
        if status.get("phase", "Pending") != "Pending" or metadata.get("deletionTimestamp"):
            continue
        spec = pod.get("spec") or {}
        annotations = metadata.get("annotations") or {}
        if POD_GPU_ALLOCATED in annotations:
            continue
        containers = list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
        for position, container in enumerate(containers):
            limits = (container.get("resources") or {}).get("limits") or {}
            core = _int_quantity(limits.get(VCUDA_CORE, 0))
            memory = _int_quantity(limits.get(VCUDA_MEMORY, 0))
            if core <= 0 and memory <= 0:
                continue
            name = str(container.get("name", ""))
            assigned = _assigned(annotations, node_name, name) if node_name else None
            found.append(
                ContainerRequest(
                    namespace=str(metadata.get("namespace", "")),
                    pod=str(metadata.get("name", "")),
                    uid=str(metadata.get("uid", "")),
                    container=name,
                    order=(
                        str(metadata.get("uid", "")),
                        str(metadata.get("namespace", "")),
                        str(metadata.get("name", "")),
                        position,
                    ),
                    core=core,
                    memory=memory,
                    soft_limit=burst_limit(annotations, core),
                    sm_partition=_sm_partition(annotations),
                    core_by_gpu=None if assigned is None else assigned[0],
                    memory_by_gpu=None if assigned is None else assigned[1],
                )
            )
    found.sort(key=lambda request: request.order)
    return found


def _is_served(item: ContainerRequest, kind: Kind, served: set[tuple[str, str, Kind]]) -> bool:
    return (item.uid, item.container, kind) in served or (
        f"{item.namespace}/{item.pod}",
        item.container,
        kind,
    ) in served


def match(
    candidates: Sequence[ContainerRequest],
    kind: Kind,
    units: int,
    served: set[tuple[str, str, Kind]],
    core_limit: int,
) -> Match:
    """Pick the container an allocation of `units` devices of `kind` is for (see the module).

    `served` holds (pod UID or `namespace/pod`, container, kind) already allocated;
    `core_limit` is the hard limit the devices give (the burst limit never goes below it).
    Only containers with an assignment are candidates."""
    by_pod: dict[str, list[ContainerRequest]] = {}
    for item in candidates:
        if item.gpus(Kind.CORE) is not None:
            by_pod.setdefault(item.uid, []).append(item)
    started: list[ContainerRequest] = []
    fresh: list[ContainerRequest] = []
    left: dict[str, int] = {}
    for containers in by_pod.values():
        wanted = [
            (item, each)
            for item in containers
            for each in Kind
            if item.units(each) > 0 and not _is_served(item, each, served)
        ]
        if not wanted:
            continue
        current = wanted[0][0]
        if current.units(kind) != units or _is_served(current, kind, served):
            continue
        left[current.uid] = len(wanted)
        in_progress = len(wanted) < sum(
            1 for item in containers for each in Kind if item.units(each) > 0
        )
        (started if in_progress else fresh).append(current)
    same = started or fresh
    if not same:
        return Match(candidate=None, soft_limit=core_limit, ambiguous=False)
    chosen = same[0]
    ambiguous = len({tuple(sorted((item.gpus(kind) or {}).items())) for item in same}) > 1
    last = left[chosen.uid] == 1
    if kind is not Kind.CORE:
        return Match(candidate=chosen, soft_limit=core_limit, ambiguous=ambiguous, last=last)
    # candidates the call cannot tell apart may disagree on the burst limit or the SM
    # partition: the smallest is handed out, never more than any of them asked
    soft_limit = max(core_limit, min(item.soft_limit or core_limit for item in same))
    partitions = [item.sm_partition or ALL_SMS for item in same]
    return Match(
        candidate=chosen,
        soft_limit=soft_limit,
        ambiguous=ambiguous,
        sm_partition=min(partitions) if min(partitions) < ALL_SMS else None,
        last=last,
    )
