"""Validation rules for GPU requests on Pods (pure logic, stdlib only).

Every container and initContainer is checked, values are read from `limits`, and every
broken rule is reported (not only the first), each naming the container or annotation, the
resource, the value and the rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from gpushare import annotations as keys
from gpushare import quantities
from gpushare.resources import (
    CORE_UNITS_PER_GPU,
    VCUDA_CORE,
    VCUDA_MEMORY,
    is_valid_core_units,
    memory_bytes,
)
from webhook.errors import BadReview

GPU_RESOURCES = (VCUDA_CORE, VCUDA_MEMORY)
ContainerKind = Literal["container", "initContainer"]

_FRACTION = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)$", re.ASCII)
_INTEGER = re.compile(r"^\d{1,6}$", re.ASCII)


@dataclass(frozen=True)
class ContainerRef:
    """Where a container sits in the pod spec."""

    kind: ContainerKind
    name: str
    restartable: bool
    """An initContainer with `restartPolicy: Always` (a native sidecar)."""

    def describe(self) -> str:
        return f'{self.kind} "{self.name}"'


@dataclass(frozen=True)
class GpuRequest:
    """The GPU resources one container holds (valid values only)."""

    container: ContainerRef
    core_units: int
    memory_units: int


@dataclass(frozen=True)
class RequestBounds:
    """The most GPU one pod may ask for in total: more than any node can hold is refused at
    admission, instead of a pod that stays Pending forever."""

    max_pod_core_units: int = 16 * CORE_UNITS_PER_GPU
    max_pod_memory_units: int = 16384
    """In vcuda-memory units (256 MiB): 16384 is 4 TiB."""

    def maximum(self, resource: str) -> int:
        return self.max_pod_core_units if resource == VCUDA_CORE else self.max_pod_memory_units


DEFAULT_BOUNDS = RequestBounds()


@dataclass(frozen=True)
class PodGpuTotals:
    """What the pod holds as a whole: Kubernetes' effective request of each resource."""

    core_units: int
    memory_units: int


def containers(pod: Mapping[str, Any]) -> Iterator[tuple[ContainerRef, Mapping[str, Any]]]:
    """Every initContainer then container of the pod, with where it sits.

    Raises BadReview when the spec is not shaped like a Pod's.
    """
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise BadReview("object.spec must be an object")
    if not isinstance(spec.get("volumes") or [], list):
        raise BadReview("object.spec.volumes must be a list")
    for kind, field in (("initContainer", "initContainers"), ("container", "containers")):
        items = spec.get(field)
        if items is None:
            continue
        if not isinstance(items, list):
            raise BadReview(f"object.spec.{field} must be a list")
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadReview(f"object.spec.{field}[{index}] must be an object")
            name = item.get("name")
            if not isinstance(name, str):
                raise BadReview(f"object.spec.{field}[{index}].name must be a string")
            restartable = kind == "initContainer" and item.get("restartPolicy") == "Always"
            yield ContainerRef(kind, name, restartable), item  # type: ignore[arg-type]


def _resource_map(container: Mapping[str, Any], ref: ContainerRef, field: str) -> Mapping[str, Any]:
    resources = container.get("resources")
    if resources is None:
        return {}
    if not isinstance(resources, dict):
        raise BadReview(f"{ref.describe()}: resources must be an object")
    values = resources.get(field)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise BadReview(f"{ref.describe()}: resources.{field} must be an object")
    return values


def _check_container(
    ref: ContainerRef,
    limits: Mapping[str, Any],
    requests: Mapping[str, Any],
    bounds: RequestBounds,
) -> tuple[list[str], dict[str, int]]:
    """The container's broken rules, and the GPU values that parsed."""
    problems: list[str] = []
    who = ref.describe()
    parsed: dict[str, int] = {}
    for name in GPU_RESOURCES:
        if name in limits:
            try:
                parsed[name] = quantities.parse_whole(limits[name])
            except quantities.QuantityError as err:
                problems.append(f"{who} asks {name}={_show(limits[name])}; {err}")
            else:
                if quantities.has_binary_suffix(limits[name]):
                    unit = "1 % of a GPU" if name == VCUDA_CORE else "256 MiB"
                    problems.append(
                        f"{who} asks {name}={_show(limits[name])}; it is a count of units"
                        f" ({unit} each), not bytes: write a plain number"
                    )
                    del parsed[name]
                elif parsed[name] > bounds.maximum(name):
                    problems.append(
                        f"{who} asks {name}={_show(limits[name])}; {_beyond(name, bounds)}"
                    )
                    del parsed[name]
        if name in requests:
            if name not in limits:
                problems.append(
                    f"{who} requests {name}={_show(requests[name])} without a limit; GPU resources"
                    " go in limits (requests, if given, must equal them)"
                )
            elif not _same_quantity(requests[name], limits[name]):
                problems.append(
                    f"{who} requests {name}={_show(requests[name])} but its limit is"
                    f" {_show(limits[name])}; requests must equal limits"
                )
    core = parsed.get(VCUDA_CORE)
    memory = parsed.get(VCUDA_MEMORY)
    if core is not None and not is_valid_core_units(core):
        if core > CORE_UNITS_PER_GPU:
            rule = f"above {CORE_UNITS_PER_GPU} it must be a multiple of {CORE_UNITS_PER_GPU}"
        else:
            rule = (
                f"it must be 1..{CORE_UNITS_PER_GPU - 1} (a share of one GPU)"
                f" or a positive multiple of {CORE_UNITS_PER_GPU} (whole GPUs)"
            )
        problems.append(f"{who} asks {VCUDA_CORE}={core}; {rule}")
    if memory is not None and memory < 1:
        problems.append(f"{who} asks {VCUDA_MEMORY}={memory}; it must be at least 1 (256 MiB)")
    if VCUDA_MEMORY in limits and VCUDA_CORE not in limits:
        problems.append(
            f"{who} asks {VCUDA_MEMORY}={_show(limits[VCUDA_MEMORY])} without {VCUDA_CORE};"
            " GPU memory comes with a core request"
        )
    if core is not None and 0 < core < CORE_UNITS_PER_GPU and VCUDA_MEMORY not in limits:
        problems.append(
            f"{who} asks {VCUDA_CORE}={core} without {VCUDA_MEMORY}; a shared GPU request"
            f" (1..{CORE_UNITS_PER_GPU - 1}) needs both"
        )
    return problems, parsed


def _beyond(resource: str, bounds: RequestBounds) -> str:
    maximum = bounds.maximum(resource)
    if resource == VCUDA_CORE:
        held = (
            f"{maximum // CORE_UNITS_PER_GPU} whole GPUs"
            if maximum >= CORE_UNITS_PER_GPU
            else "a share of one GPU"
        )
    else:
        held = _bytes_text(memory_bytes(maximum))
    return f"no node holds that much: a pod may ask at most {maximum} ({held}) in total"


def _bytes_text(size: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return (
                f"{Decimal(size) / scale:.4g} {unit}" if size % scale else f"{size // scale} {unit}"
            )
    return f"{size} bytes"


def _same_quantity(left: object, right: object) -> bool:
    try:
        return quantities.parse(left) == quantities.parse(right)
    except quantities.QuantityError:
        return False


def _show(value: object) -> str:
    # Quoted when spaces would hide in the message.
    plain = isinstance(value, str) and value != "" and not any(c.isspace() for c in value)
    text = value if plain and isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def pod_totals(requests: list[GpuRequest]) -> PodGpuTotals:
    """Kubernetes' effective pod request: max(largest init step, sum of long-running ones).

    Native sidecars (restartable initContainers) run beside everything started after them,
    so they add to each later init step and to the regular containers, as in the scheduler.
    """

    def effective(units: list[tuple[ContainerRef, int]]) -> int:
        running_sidecars = 0
        largest_init_step = 0
        regular = 0
        for ref, value in units:
            if ref.kind == "initContainer" and ref.restartable:
                running_sidecars += value
            elif ref.kind == "initContainer":
                largest_init_step = max(largest_init_step, running_sidecars + value)
            else:
                regular += value
        return max(largest_init_step, regular + running_sidecars)

    ordered = sorted(requests, key=lambda r: r.container.kind != "initContainer")
    return PodGpuTotals(
        core_units=effective([(r.container, r.core_units) for r in ordered]),
        memory_units=effective([(r.container, r.memory_units) for r in ordered]),
    )


def _annotation_problems(annotations: Mapping[str, Any], requests: list[GpuRequest]) -> list[str]:
    problems: list[str] = []
    soft = annotations.get(keys.CORE_SOFT_LIMIT)
    if soft is not None:
        cores = [r for r in requests if r.core_units > 0]
        largest = max(cores, key=lambda r: r.core_units, default=None)
        if not isinstance(soft, str) or not _INTEGER.fullmatch(soft):
            floor = largest.core_units if largest else 1
            problems.append(
                f"annotation {keys.CORE_SOFT_LIMIT}={_show(soft)}; it must be an integer"
                f" in [{floor}, {CORE_UNITS_PER_GPU}]"
            )
        elif largest is not None and largest.core_units > CORE_UNITS_PER_GPU:
            problems.append(
                f"annotation {keys.CORE_SOFT_LIMIT}={soft}; a burst limit applies to one GPU at"
                f" most, but {largest.container.describe()} asks"
                f" {VCUDA_CORE}={largest.core_units}"
            )
        elif largest is not None and not largest.core_units <= int(soft) <= CORE_UNITS_PER_GPU:
            problems.append(
                f"annotation {keys.CORE_SOFT_LIMIT}={soft}; it must be an integer in"
                f" [{largest.core_units}, {CORE_UNITS_PER_GPU}]"
                f" ({largest.container.describe()} asks {VCUDA_CORE}={largest.core_units})"
            )
    fractions: dict[str, Decimal] = {}
    for key in (keys.QUOTA_REQUEST, keys.QUOTA_LIMIT):
        value = annotations.get(key)
        if value is None:
            continue
        number = Decimal(value) if isinstance(value, str) and _FRACTION.fullmatch(value) else None
        if number is None or not 0 <= number <= 1:
            problems.append(
                f"annotation {key}={_show(value)}; it must be a fraction of GPU time"
                " with 0 <= quota-request <= quota-limit <= 1"
            )
        elif key == keys.QUOTA_LIMIT and number == 0:
            # a request of 0 is best effort (spare time only); a limit of 0 would never run
            problems.append(
                f"annotation {key}={_show(value)}; it must be above 0 (a fraction of GPU time"
                " with 0 <= quota-request <= quota-limit <= 1)"
            )
        else:
            fractions[key] = number
    if len(fractions) == 2 and fractions[keys.QUOTA_REQUEST] > fractions[keys.QUOTA_LIMIT]:
        problems.append(
            f"annotation {keys.QUOTA_REQUEST}={annotations[keys.QUOTA_REQUEST]} is above"
            f" {keys.QUOTA_LIMIT}={annotations[keys.QUOTA_LIMIT]}; it must be"
            " 0 <= quota-request <= quota-limit <= 1"
        )
    problems.extend(_quota_against_core(annotations, fractions, requests))
    sm = annotations.get(keys.SM_PARTITION)
    if sm is not None and not (
        isinstance(sm, str) and _INTEGER.fullmatch(sm) and 1 <= int(sm) <= 100
    ):
        problems.append(
            f"annotation {keys.SM_PARTITION}={_show(sm)}; it must be an integer percent"
            " of the GPU's SMs in 1..100"
        )
    return problems


def _quota_against_core(
    annotations: Mapping[str, Any], fractions: Mapping[str, Decimal], requests: list[GpuRequest]
) -> list[str]:
    """Quotas the runtime cannot keep: the hard limit of each container is its vcuda-core
    share of one GPU, so a guaranteed quota-request above it, or a quota-limit ceiling below
    it, would be a promise nobody enforces."""
    cores = [r for r in requests if r.core_units > 0]
    if not cores:
        return []
    problems: list[str] = []
    request = fractions.get(keys.QUOTA_REQUEST)
    smallest = min(cores, key=lambda r: r.core_units)
    if request is not None and request * CORE_UNITS_PER_GPU > smallest.core_units:
        needed = math.ceil(request * CORE_UNITS_PER_GPU)
        problems.append(
            f"annotation {keys.QUOTA_REQUEST}={annotations[keys.QUOTA_REQUEST]} cannot be"
            f" guaranteed: {smallest.container.describe()} asks"
            f" {VCUDA_CORE}={smallest.core_units} ({_held(smallest.core_units)}), and"
            f" the guaranteed share is that allocation; lower {keys.QUOTA_REQUEST} to at most"
            f" {_share(smallest.core_units)} or raise {VCUDA_CORE} to at least {needed}"
        )
    limit = fractions.get(keys.QUOTA_LIMIT)
    largest = max(cores, key=lambda r: r.core_units)
    if limit is not None and limit * CORE_UNITS_PER_GPU < min(
        largest.core_units, CORE_UNITS_PER_GPU
    ):
        problems.append(
            f"annotation {keys.QUOTA_LIMIT}={annotations[keys.QUOTA_LIMIT]} is below what"
            f" {largest.container.describe()} is allocated ({VCUDA_CORE}={largest.core_units},"
            f" {_held(largest.core_units)}), which it may always use; raise"
            f" {keys.QUOTA_LIMIT} to at least {_share(largest.core_units)}"
        )
    return problems


def _share(core_units: int) -> str:
    """The fraction of one GPU's time a core request holds on each of its GPUs."""
    share = Decimal(min(core_units, CORE_UNITS_PER_GPU)) / CORE_UNITS_PER_GPU
    return str(share.normalize())


def _held(core_units: int) -> str:
    if core_units > CORE_UNITS_PER_GPU:
        return "whole GPUs"
    if core_units == CORE_UNITS_PER_GPU:
        return "a whole GPU"
    return f"{_share(core_units)} of a GPU"


def pod_annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod's annotations (empty when absent); BadReview when they are not an object."""
    metadata = pod.get("metadata", {})
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise BadReview("object.metadata must be an object")
    annotations = metadata.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise BadReview("object.metadata.annotations must be an object")
    return annotations


@dataclass(frozen=True)
class PodReport:
    """What one pass over a pod found."""

    has_gpu: bool
    problems: list[str]
    """Every rule the pod breaks, as refusal reasons; empty when it may be admitted."""
    requests: list[GpuRequest]
    """The GPU resources of each container that asks for any (when there are no problems)."""


def inspect_pod(pod: Mapping[str, Any], bounds: RequestBounds = DEFAULT_BOUNDS) -> PodReport:
    """Check every rule in one pass; pods without GPU resources are not checked at all."""
    annotations = pod_annotations(pod)
    entries = [
        (ref, _resource_map(item, ref, "limits"), _resource_map(item, ref, "requests"))
        for ref, item in containers(pod)
    ]
    if not any(
        name in limits or name in requests
        for _ref, limits, requests in entries
        for name in GPU_RESOURCES
    ):
        return PodReport(False, [], [])
    problems: list[str] = []
    found: list[GpuRequest] = []
    for ref, limits, requests in entries:
        broken, parsed = _check_container(ref, limits, requests, bounds)
        problems.extend(broken)
        if VCUDA_CORE in limits or VCUDA_MEMORY in limits:
            found.append(GpuRequest(ref, parsed.get(VCUDA_CORE, 0), parsed.get(VCUDA_MEMORY, 0)))
    if not problems:
        totals = pod_totals(found)
        for name, total in ((VCUDA_CORE, totals.core_units), (VCUDA_MEMORY, totals.memory_units)):
            if total > bounds.maximum(name):
                problems.append(
                    f"the pod asks {name}={total} in total over its containers;"
                    f" {_beyond(name, bounds)}"
                )
    if problems:
        return PodReport(True, problems, [])
    return PodReport(True, _annotation_problems(annotations, found), found)


def validate_pod(pod: Mapping[str, Any], bounds: RequestBounds = DEFAULT_BOUNDS) -> list[str]:
    """Every rule the pod breaks, as refusal reasons; empty when it may be admitted."""
    return inspect_pod(pod, bounds).problems
