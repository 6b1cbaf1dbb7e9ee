"""Scheduler extender (filter and prioritize) served beside the admission endpoints.

Wire format of k8s.io/kube-scheduler/extender/v1: `POST /scheduler/filter` takes ExtenderArgs
(`pod`, `nodes` as a NodeList) and returns ExtenderFilterResult (`nodes`, `failedNodes`,
`failedAndUnresolvableNodes`, `error`); `POST /scheduler/prioritize` takes ExtenderArgs and
returns a HostPriorityList (`[{"host", "score"}]`, 0..10). The scheduler must send whole Node
objects (`nodeCacheCapable: false`): GPU capacity is read from their annotations. The logic
lives in `webhook.placement`; this module only parses and serialises.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from webhook import placement

blueprint = Blueprint("extender", __name__, url_prefix="/scheduler")


class _BadArgs(ValueError):
    pass


def _args() -> tuple[dict[str, Any], list[dict[str, Any]], placement.PodDemand]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise _BadArgs("the body must be a JSON ExtenderArgs object")
    pod = body.get("pod")
    if not isinstance(pod, dict):
        raise _BadArgs("ExtenderArgs.pod must be a Pod object")
    nodes = body.get("nodes")
    if not isinstance(nodes, dict):
        if body.get("nodenames") is not None:
            raise _BadArgs(
                "ExtenderArgs.nodes is missing: configure the extender with "
                "nodeCacheCapable: false (GPU capacity is read from the Node objects)"
            )
        raise _BadArgs("ExtenderArgs.nodes must be a NodeList object")
    items = nodes.get("items") or []
    if not isinstance(items, list):
        raise _BadArgs("ExtenderArgs.nodes.items must be a list")
    try:
        demand = placement.pod_demand(pod)
    except placement.DemandError as err:
        raise _BadArgs(f"pod rejected: {err}") from err
    return nodes, items, demand


def _name(node: dict[str, Any]) -> str:
    return str((node.get("metadata") or {}).get("name", ""))


@blueprint.post("/filter")
def filter_nodes() -> Response:
    try:
        nodes, items, demand = _args()
    except _BadArgs as err:
        return jsonify({"error": str(err)})
    if demand.empty:
        return jsonify({"nodes": nodes, "failedNodes": {}})
    passing = []
    failed: dict[str, str] = {}
    unresolvable: dict[str, str] = {}
    for node in items:
        annotations = (node.get("metadata") or {}).get("annotations")
        try:
            gpus = placement.parse_capacity(annotations)
        except placement.CapacityError as err:
            unresolvable[_name(node)] = str(err)
            continue
        result = placement.fit(gpus, demand)
        if result.fits:
            passing.append(node)
        else:
            failed[_name(node)] = result.reason
    return jsonify(
        {
            "nodes": {**nodes, "items": passing},
            "failedNodes": failed,
            "failedAndUnresolvableNodes": unresolvable,
        }
    )


@blueprint.post("/prioritize")
def prioritize_nodes() -> Response | tuple[Response, int]:
    try:
        _, items, demand = _args()
    except _BadArgs as err:
        return jsonify({"error": "bad-request", "message": str(err)}), 400
    priorities = []
    for node in items:
        value = 0
        if not demand.empty:
            try:
                gpus = placement.parse_capacity((node.get("metadata") or {}).get("annotations"))
            except placement.CapacityError:
                gpus = None
            if gpus is not None:
                result = placement.fit(gpus, demand)
                value = placement.score(gpus, result.after) if result.fits else 0
        priorities.append({"host": _name(node), "score": value})
    return jsonify(priorities)
