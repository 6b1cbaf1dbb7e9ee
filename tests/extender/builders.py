"""Pods, nodes and inventories as the extender receives them (Kubernetes JSON)."""

from __future__ import annotations

from typing import Any

from gpushare.assignment import (
    POD_GPU_ALLOCATED,
    POD_GPU_ASSIGNMENT,
    Assignment,
    Inventory,
    InventoryGpu,
    Share,
    format_assignment,
)

CORE = "tencent.com/vcuda-core"
MEMORY = "tencent.com/vcuda-memory"


def inventory(
    gpus: int = 2, memory: int = 64, policy: str = "binpack", node: str = "n"
) -> Inventory:
    return Inventory(
        policy=policy,
        gpus=tuple(InventoryGpu(index, f"{node}-gpu{index}", memory) for index in range(gpus)),
    )


def pod(
    name: str,
    *containers: tuple[str, Any, Any],
    init: tuple[tuple[str, Any, Any], ...] = (),
    priority: int | None = None,
    node: str = "",
    placed: dict[str, list[tuple[str, int, int]]] | None = None,
    allocated: bool = False,
    phase: str = "Pending",
) -> dict[str, Any]:
    """A pod whose containers ask (name, vcuda-core, vcuda-memory); `placed` records an
    assignment on `node` as the extender writes it at bind."""

    def spec(item: tuple[str, Any, Any]) -> dict[str, Any]:
        cname, core, memory = item
        limits = {}
        if core:
            limits[CORE] = str(core)
        if memory:
            limits[MEMORY] = str(memory)
        return {"name": cname, "resources": {"limits": limits}}

    annotations: dict[str, str] = {}
    if placed is not None:
        annotations[POD_GPU_ASSIGNMENT] = format_assignment(
            Assignment(
                node=node,
                containers={
                    cname: tuple(Share(*share) for share in shares)
                    for cname, shares in placed.items()
                },
            )
        )
    if allocated:
        annotations[POD_GPU_ALLOCATED] = node
    body: dict[str, Any] = {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": f"uid-{name}",
            "annotations": annotations,
        },
        "spec": {
            "containers": [spec(item) for item in containers],
            "initContainers": [spec(item) for item in init],
        },
        "status": {"phase": phase},
    }
    if node:
        body["spec"]["nodeName"] = node
    if priority is not None:
        body["spec"]["priority"] = priority
    return body
