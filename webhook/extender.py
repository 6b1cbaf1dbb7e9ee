"""Scheduler extender (filter and prioritize) served beside the admission endpoints.

Wire format of k8s.io/kube-scheduler/extender/v1: `POST /scheduler/filter` takes ExtenderArgs
(`pod`, and `nodes` as a NodeList or `nodenames`) and returns ExtenderFilterResult (`nodes` or
`nodenames`, `failedNodes`, `failedAndUnresolvableNodes`, `error`); `POST /scheduler/prioritize`
takes ExtenderArgs and returns a HostPriorityList (`[{"host", "score"}]`, 0..10).

GPU capacity comes from each node's `gpushare.io/gpu-capacity` annotation: read from the Node
objects in the request (`nodeCacheCapable: false`), or, when the scheduler sends names only
(`nodeCacheCapable: true`), from the `NodeCapacitySource` installed on the app with
`install_node_capacity`. The logic lives in `webhook.placement`; this module only parses and
serialises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from gpushare.annotations import NODE_GPU_CAPACITY
from webhook import placement
from webhook.nodecapacity import NodeCapacitySource

blueprint = Blueprint("extender", __name__, url_prefix="/scheduler")

_SOURCE_KEY = "gpushare_node_capacity"


def install_node_capacity(app: Flask, source: NodeCapacitySource) -> None:
    """Let the extender answer `nodeCacheCapable: true` requests from `source`."""
    app.extensions[_SOURCE_KEY] = source


class _BadArgs(ValueError):
    pass


@dataclass(frozen=True)
class _Args:
    nodes: dict[str, Any] | None
    """The NodeList sent (nodeCacheCapable: false), else None."""
    names: list[str]
    annotations: list[dict[str, str] | None]
    demand: placement.PodDemand


def _args() -> _Args:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise _BadArgs("the body must be a JSON ExtenderArgs object")
    pod = body.get("pod")
    if not isinstance(pod, dict):
        raise _BadArgs("ExtenderArgs.pod must be a Pod object")
    try:
        demand = placement.pod_demand(pod)
    except placement.DemandError as err:
        raise _BadArgs(f"pod rejected: {err}") from err
    nodes = body.get("nodes")
    if isinstance(nodes, dict):
        items = nodes.get("items") or []
        if not isinstance(items, list):
            raise _BadArgs("ExtenderArgs.nodes.items must be a list")
        metadata = [_metadata(item, position) for position, item in enumerate(items)]
        return _Args(
            nodes=nodes,
            names=[str(meta.get("name", "")) for meta in metadata],
            annotations=[meta.get("annotations") for meta in metadata],
            demand=demand,
        )
    names = body.get("nodenames")
    if not isinstance(names, list):
        raise _BadArgs("ExtenderArgs needs nodes (a NodeList) or nodenames (a list)")
    for position, name in enumerate(names):
        if not isinstance(name, str):
            raise _BadArgs(f"ExtenderArgs.nodenames[{position}] must be a string (got {name!r})")
    source: NodeCapacitySource | None = current_app.extensions.get(_SOURCE_KEY)
    if source is None:
        raise _BadArgs(
            "ExtenderArgs has node names only, and this server keeps no node capacity cache: "
            "configure the extender with nodeCacheCapable: false"
        )
    annotations: list[dict[str, str] | None] = []
    for name in names:
        text = source.capacity_annotation(str(name))
        annotations.append(None if text is None else {NODE_GPU_CAPACITY: text})
    return _Args(
        nodes=None, names=[str(name) for name in names], annotations=annotations, demand=demand
    )


def _metadata(item: Any, position: int) -> dict[str, Any]:
    """A Node's metadata; _BadArgs when the item is not shaped like a Node."""
    where = f"ExtenderArgs.nodes.items[{position}]"
    if not isinstance(item, dict):
        raise _BadArgs(f"{where} must be a Node object")
    metadata = item.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise _BadArgs(f"{where}.metadata must be an object")
    return metadata


@blueprint.post("/filter")
def filter_nodes() -> Response:
    try:
        args = _args()
    except _BadArgs as err:
        return jsonify({"error": str(err)})
    passing: list[int] = []
    failed: dict[str, str] = {}
    unresolvable: dict[str, str] = {}
    for position, (name, node_annotations) in enumerate(
        zip(args.names, args.annotations, strict=True)
    ):
        if args.demand.empty:
            passing.append(position)
            continue
        try:
            gpus = placement.parse_capacity(node_annotations)
        except placement.CapacityError as err:
            unresolvable[name] = str(err)
            continue
        result = placement.fits(gpus, args.demand)
        if result.fits:
            passing.append(position)
        else:
            failed[name] = result.reason
    answer: dict[str, Any] = {"failedNodes": failed, "failedAndUnresolvableNodes": unresolvable}
    if args.nodes is not None:
        items = args.nodes.get("items") or []
        answer["nodes"] = {**args.nodes, "items": [items[position] for position in passing]}
    else:
        answer["nodenames"] = [args.names[position] for position in passing]
    return _json(answer)


def _json(body: Any) -> Response:
    """Plain `json.dumps`: the echoed NodeList can be megabytes, and jsonify sorts keys."""
    return Response(json.dumps(body, separators=(",", ":")), mimetype="application/json")


@blueprint.post("/prioritize")
def prioritize_nodes() -> Response | tuple[Response, int]:
    try:
        args = _args()
    except _BadArgs as err:
        return jsonify({"error": "bad-request", "message": str(err)}), 400
    priorities = []
    for name, node_annotations in zip(args.names, args.annotations, strict=True):
        value = 0
        if not args.demand.empty:
            try:
                gpus = placement.parse_capacity(node_annotations)
            except placement.CapacityError:
                gpus = None
            if gpus is not None:
                result = placement.fit(gpus, args.demand)
                value = placement.score(gpus, result.after) if result.fits else 0
        priorities.append({"host": name, "score": value})
    return _json(priorities)
