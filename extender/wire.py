"""The scheduler extender's wire format (k8s.io/kube-scheduler/extender/v1), parsed and bounded.

The Go types carry no JSON tags, so kube-scheduler writes the Go field names (`Pod`, `Nodes`,
`NodeNames`, `PodName`, `NodeNameToMetaVictims`, …) and reads answers the way Go's decoder
does: exact name first, else any spelling that matches ignoring case. Requests are read the
same way here, and answers use the Go names.

Every request is bounded before it is decoded or walked: its size (`max_body_bytes`), its
nesting (the decoder refuses deep documents, a 400 and never a crash) and every list in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

MAX_NODES = 20_000
MAX_VICTIMS_PER_NODE = 5_000


class WireError(ValueError):
    """A request that is not a valid extender message; the message names the field."""


def decode(body: bytes, max_body_bytes: int) -> dict[str, Any]:
    if len(body) > max_body_bytes:
        raise WireError(f"the body has {len(body)} bytes; the limit is {max_body_bytes}")
    try:
        document = orjson.loads(body)
    except (orjson.JSONDecodeError, RecursionError) as err:
        raise WireError(f"the body is not JSON the extender accepts: {err}") from err
    if not isinstance(document, dict):
        raise WireError("the body must be a JSON object")
    return document


def field(document: Mapping[str, Any], name: str) -> Any:
    """`document[name]` matched as Go's JSON decoder matches untagged fields."""
    if name in document:
        return document[name]
    folded = name.casefold()
    for key, value in document.items():
        if isinstance(key, str) and key.casefold() == folded:
            return value
    return None


@dataclass(frozen=True)
class ExtenderArgs:
    pod: dict[str, Any]
    names: list[str]
    node_items: list[Any] | None
    """The NodeList items when the scheduler sent Node objects (nodeCacheCapable: false)."""


def _pod(document: Mapping[str, Any], what: str) -> dict[str, Any]:
    pod = field(document, "Pod")
    if not isinstance(pod, dict):
        raise WireError(f"{what}.Pod must be a Pod object")
    return pod


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list):
        raise WireError(f"{where} must be a list of node names")
    if len(value) > MAX_NODES:
        raise WireError(f"{where} has {len(value)} nodes; the limit is {MAX_NODES}")
    for position, name in enumerate(value):
        if not isinstance(name, str):
            raise WireError(f"{where}[{position}] must be a string (got {name!r:.60})")
    return value


def extender_args(document: Mapping[str, Any]) -> ExtenderArgs:
    pod = _pod(document, "ExtenderArgs")
    nodes = field(document, "Nodes")
    if isinstance(nodes, dict):
        items = field(nodes, "Items") or []
        if not isinstance(items, list) or len(items) > MAX_NODES:
            raise WireError(f"ExtenderArgs.Nodes.items must be a list of at most {MAX_NODES}")
        names = []
        for position, item in enumerate(items):
            metadata = field(item, "metadata") if isinstance(item, dict) else None
            name = field(metadata, "name") if isinstance(metadata, dict) else None
            if not isinstance(name, str):
                raise WireError(f"ExtenderArgs.Nodes.items[{position}] must be a Node with a name")
            names.append(name)
        return ExtenderArgs(pod=pod, names=names, node_items=items)
    names_value = field(document, "NodeNames")
    if names_value is None:
        raise WireError("ExtenderArgs needs NodeNames (a list) or Nodes (a NodeList)")
    return ExtenderArgs(
        pod=pod, names=_names(names_value, "ExtenderArgs.NodeNames"), node_items=None
    )


def filter_result(
    args: ExtenderArgs,
    passing: Sequence[str],
    failed: Mapping[str, str],
    unresolvable: Mapping[str, str],
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "FailedNodes": dict(failed),
        "FailedAndUnresolvableNodes": dict(unresolvable),
        "Error": "",
    }
    if args.node_items is not None:
        wanted = set(passing)
        items = [
            item for item, name in zip(args.node_items, args.names, strict=True) if name in wanted
        ]
        answer["Nodes"] = {"items": items}
    else:
        answer["NodeNames"] = list(passing)
    return answer


@dataclass(frozen=True)
class BindingArgs:
    name: str
    namespace: str
    uid: str
    node: str


def binding_args(document: Mapping[str, Any]) -> BindingArgs:
    values = {}
    for key in ("PodName", "PodNamespace", "PodUID", "Node"):
        value = field(document, key)
        if not isinstance(value, str) or not value or len(value) > 253:
            raise WireError(
                f"ExtenderBindingArgs.{key} must be a non-empty name (got {value!r:.60})"
            )
        values[key] = value
    return BindingArgs(values["PodName"], values["PodNamespace"], values["PodUID"], values["Node"])


@dataclass(frozen=True)
class PreemptionArgs:
    pod: dict[str, Any]
    victims: dict[str, list[str]]
    """Node → UIDs of the victims the scheduler proposes there."""


def _uid_of(item: Any, where: str, meta: bool) -> str:
    if not isinstance(item, dict):
        raise WireError(f"{where} must be an object")
    if meta:
        uid = field(item, "UID")
    else:
        metadata = field(item, "metadata")
        uid = field(metadata, "uid") if isinstance(metadata, dict) else None
    if not isinstance(uid, str) or not uid:
        raise WireError(f"{where} must name a pod UID")
    return uid


def preemption_args(document: Mapping[str, Any]) -> PreemptionArgs:
    pod = _pod(document, "ExtenderPreemptionArgs")
    meta = field(document, "NodeNameToMetaVictims")
    full = field(document, "NodeNameToVictims")
    source, name, is_meta = (meta, "NodeNameToMetaVictims", True)
    if source is None:
        source, name, is_meta = (full, "NodeNameToVictims", False)
    if source is None:
        source = {}
    if not isinstance(source, dict) or len(source) > MAX_NODES:
        raise WireError(f"ExtenderPreemptionArgs.{name} must be an object of at most {MAX_NODES}")
    victims: dict[str, list[str]] = {}
    for node, entry in source.items():
        where = f"ExtenderPreemptionArgs.{name}[{node!r:.60}]"
        pods = field(entry, "Pods") if isinstance(entry, dict) else None
        if entry is not None and not isinstance(entry, dict):
            raise WireError(f"{where} must be an object")
        pods = pods or []
        if not isinstance(pods, list) or len(pods) > MAX_VICTIMS_PER_NODE:
            raise WireError(f"{where}.Pods must be a list of at most {MAX_VICTIMS_PER_NODE}")
        victims[node] = [
            _uid_of(item, f"{where}.Pods[{position}]", is_meta)
            for position, item in enumerate(pods)
        ]
    return PreemptionArgs(pod=pod, victims=victims)


def preemption_result(victims: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    return {
        "NodeNameToMetaVictims": {
            node: {"Pods": [{"UID": uid} for uid in uids], "NumPDBViolations": 0}
            for node, uids in victims.items()
        }
    }
