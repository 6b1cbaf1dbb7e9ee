"""Which pod is this? Pure matching of an Allocate call to the pending pods of this node.

kubelet's Allocate names devices, not pods. The node manager therefore lists the pods bound
to this node that are still Pending and not being deleted, takes every container (init
containers first, then regular ones, in spec order) that asks for vcuda resources, orders
them as kubelet admits them (pod creation time, then namespace/name, then container order)
and takes the first one whose request for the resource equals the number of devices and that
has not been served for that resource yet.

The limits handed to the container never depend on this match: the core and memory limits
are the device counts kubelet sends. Only the burst limit and the SM partition come from the
pod; when the pending candidates with the same request disagree on one, the smallest is used
(never more than any of them asked for). The owner is confirmed later through kubelet's
PodResources API.

The burst limit is the smaller of the pod's two ceilings, `tencent.com/vcuda-core-limit`
(percent) and `gpushare.io/quota-limit` (a fraction, rounded down to whole percent), raised to
the container's core request. `gpushare.io/quota-request` is not read here: the webhook admits
it only when the core request (the hard limit) already guarantees it. The SM partition
(`gpushare.io/sm-partition`) becomes CUDA_MPS_ACTIVE_THREAD_PERCENTAGE. Annotations are read
as the webhook accepts them (ASCII digits); anything else is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gpushare import quantities
from gpushare.annotations import CORE_SOFT_LIMIT, QUOTA_LIMIT, SM_PARTITION
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

    @property
    def key(self) -> tuple[str, str]:
        return (self.uid, self.container)

    def units(self, kind: Kind) -> int:
        return self.core if kind is Kind.CORE else self.memory


@dataclass(frozen=True)
class Match:
    """The chosen candidate (None when nothing matched), the burst limit and the SM partition
    (percent, None for all SMs) to hand out."""

    candidate: ContainerRequest | None
    soft_limit: int
    ambiguous: bool
    sm_partition: int | None = None


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


def pending_containers(pods: Iterable[Mapping[str, Any]]) -> list[ContainerRequest]:
    """Containers asking for vcuda resources in Pending pods (Kubernetes JSON), in kubelet's
    admission order."""
    found: list[ContainerRequest] = []
    for pod in pods:
        metadata = pod.get("metadata") or {}
        status = pod.get("status") or {}
        if status.get("phase", "Pending") != "Pending" or metadata.get("deletionTimestamp"):
            continue
        spec = pod.get("spec") or {}
        annotations = metadata.get("annotations") or {}
        containers = list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
        for position, container in enumerate(containers):
            limits = (container.get("resources") or {}).get("limits") or {}
            core = _int_quantity(limits.get(VCUDA_CORE, 0))
            memory = _int_quantity(limits.get(VCUDA_MEMORY, 0))
            if core <= 0 and memory <= 0:
                continue
            found.append(
                ContainerRequest(
                    namespace=str(metadata.get("namespace", "")),
                    pod=str(metadata.get("name", "")),
                    uid=str(metadata.get("uid", "")),
                    container=str(container.get("name", "")),
                    order=(
                        str(metadata.get("creationTimestamp", "")),
                        str(metadata.get("namespace", "")),
                        str(metadata.get("name", "")),
                        position,
                    ),
                    core=core,
                    memory=memory,
                    soft_limit=burst_limit(annotations, core),
                    sm_partition=_sm_partition(annotations),
                )
            )
    found.sort(key=lambda request: request.order)
    return found


def match(
    candidates: Sequence[ContainerRequest],
    kind: Kind,
    units: int,
    served: set[tuple[str, str, Kind]],
    core_limit: int,
) -> Match:
    """Pick the candidate for an allocation of `units` devices of `kind`.

    `served` holds (pod UID or `namespace/pod`, container, kind) already allocated;
    `core_limit` is the hard limit the devices give (the burst limit never goes below it).
    """
    same = [
        item
        for item in candidates
        if item.units(kind) == units
        and (item.uid, item.container, kind) not in served
        and (f"{item.namespace}/{item.pod}", item.container, kind) not in served
    ]
    if not same:
        return Match(candidate=None, soft_limit=core_limit, ambiguous=False)
    chosen = same[0]
    if kind is not Kind.CORE:
        return Match(candidate=chosen, soft_limit=core_limit, ambiguous=len(same) > 1)
    limits = {item.soft_limit or core_limit for item in same}
    partitions = {item.sm_partition or ALL_SMS for item in same}
    soft_limit = max(core_limit, min(limits))
    sm_partition = min(partitions)
    return Match(
        candidate=chosen,
        soft_limit=soft_limit,
        ambiguous=len(limits) > 1 or len(partitions) > 1,
        sm_partition=sm_partition if sm_partition < ALL_SMS else None,
    )
