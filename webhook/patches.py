"""JSONPatch (RFC 6902) operations that turn the user's pod into the admitted one (pure logic).

Annotations are merged key by key (never replaced as a whole); list insertions never touch
the user's own containers; every operation is one that `jsonpatch` applies to the pod as sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Operation = dict[str, Any]


def pointer(*parts: str) -> str:
    """A JSON pointer from raw path parts (escapes `~` and `/`, as in annotation keys)."""
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def annotation_ops(pod: Mapping[str, Any], wanted: Mapping[str, str]) -> list[Operation]:
    """Set each wanted annotation that is not already there with that value."""
    metadata = pod.get("metadata")
    current = metadata.get("annotations") if isinstance(metadata, dict) else None
    if not isinstance(metadata, dict):
        return [{"op": "add", "path": "/metadata", "value": {"annotations": dict(wanted)}}]
    if not current:
        return [{"op": "add", "path": "/metadata/annotations", "value": dict(wanted)}]
    return [
        {"op": "add", "path": pointer("metadata", "annotations", key), "value": value}
        for key, value in wanted.items()
        if current.get(key) != value
    ]


def priority_ops(spec: Mapping[str, Any], priority_class: str) -> list[Operation]:
    """Set the PriorityClass; drop the integer priority so the API server recomputes it.

    Nothing changes when the pod already names that class (its priority then already matches),
    which also keeps re-invocation free of changes.
    """
    if spec.get("priorityClassName") == priority_class:
        return []
    ops: list[Operation] = [
        {"op": "add", "path": "/spec/priorityClassName", "value": priority_class}
    ]
    for field in ("priority", "preemptionPolicy"):
        if field in spec:
            ops.append({"op": "remove", "path": pointer("spec", field)})
    return ops


def insert_ops(
    spec: Mapping[str, Any], field: str, items: list[dict[str, Any]], *, first: bool
) -> list[Operation]:
    """Insert items into a list of the spec (creating it when absent or null)."""
    if not items:
        return []
    if not spec.get(field):
        return [{"op": "add", "path": pointer("spec", field), "value": list(items)}]
    if first:
        return [
            {"op": "add", "path": pointer("spec", field, str(index)), "value": item}
            for index, item in enumerate(items)
        ]
    return [{"op": "add", "path": pointer("spec", field, "-"), "value": item} for item in items]


DEFAULT_SCHEDULER = "default-scheduler"


def scheduler_ops(spec: Mapping[str, Any], scheduler_name: str) -> list[Operation]:
    """Hand the pod to `scheduler_name` when it names no scheduler or the default one (the
    API server fills in the default before admission); a pod that chose another scheduler
    keeps it. An empty `scheduler_name` changes nothing."""
    if not scheduler_name or spec.get("schedulerName") not in (None, "", DEFAULT_SCHEDULER):
        return []
    return [{"op": "add", "path": "/spec/schedulerName", "value": scheduler_name}]
