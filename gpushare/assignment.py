"""The two documents placement is built on, written by one part and read by another.

- `gpushare.io/gpu-inventory` (Node annotation): the node's GPUs, written once by the node
  manager at start (and again only when a GPU's health changes), read by the extender.
- `gpushare.io/gpu-assignment` (Pod annotation): the GPU(s) of each container, written by the
  extender at bind (before the Binding), read by the node manager at Allocate.

Both are JSON; cores are vcuda-core units (1 % of a GPU), memory is vcuda-memory units
(256 MiB). Parsing is strict and bounded: a malformed document is an `AssignmentError` naming
the field, never a crash, and no list grows past its limit before it is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gpushare.annotations import DOMAIN

NODE_GPU_INVENTORY: Final = f"{DOMAIN}/gpu-inventory"
"""Node annotation: `{"version": 1, "policy": "binpack", "gpus": [{"index": 0,
"uuid": "GPU-…", "memory": 64, "healthy": true}]}` (memory in vcuda-memory units)."""

POD_GPU_ASSIGNMENT: Final = f"{DOMAIN}/gpu-assignment"
"""Pod annotation: `{"version": 1, "node": "n1", "containers": {"train": [{"uuid": "GPU-…",
"core": 40, "memory": 10}]}}`: for each container asking vcuda resources, the GPU(s) it gets
and the units taken from each one."""

POD_GPU_ALLOCATED: Final = f"{DOMAIN}/gpu-allocated"
"""Pod annotation set by the node manager once kubelet has allocated every container of the
pod (value: the node name). Until then the extender keeps pods it could not tell apart off
the node's GPUs (see docs/extender.md)."""

VERSION: Final = 1
MAX_GPUS_PER_NODE: Final = 64
MAX_CONTAINERS: Final = 64
MAX_MEMORY_UNITS_PER_GPU: Final = 1 << 20
"""256 TiB: far above any GPU, low enough to keep sums exact and small."""
_MAX_TEXT: Final = 64 * 1024


class AssignmentError(ValueError):
    """A placement document that cannot be read; the message names the field."""


@dataclass(frozen=True)
class InventoryGpu:
    index: int
    uuid: str
    memory: int
    """vcuda-memory units this GPU offers."""
    healthy: bool = True


@dataclass(frozen=True)
class Inventory:
    policy: str
    gpus: tuple[InventoryGpu, ...]


@dataclass(frozen=True)
class Share:
    """What one container takes from one GPU."""

    uuid: str
    core: int
    memory: int


@dataclass(frozen=True)
class Assignment:
    node: str
    containers: Mapping[str, tuple[Share, ...]]
    """Container name → its shares, one per GPU (several only for whole-GPU requests)."""


def _load(text: object, what: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise AssignmentError(f"{what} must be a JSON string (got {type(text).__name__})")
    if len(text) > _MAX_TEXT:
        raise AssignmentError(f"{what} is {len(text)} characters; the limit is {_MAX_TEXT}")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise AssignmentError(f"{what} is not JSON: {err}") from err
    if not isinstance(document, dict):
        raise AssignmentError(f"{what} must be a JSON object")
    if document.get("version") != VERSION:
        raise AssignmentError(f"{what}.version must be {VERSION} (got {document.get('version')!r})")
    return document


def _int(value: object, where: str, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise AssignmentError(f"{where} must be an integer 0..{maximum} (got {value!r})")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 253:
        raise AssignmentError(f"{where} must be a non-empty string of at most 253 characters")
    return value


def parse_inventory(text: object) -> Inventory:
    document = _load(text, NODE_GPU_INVENTORY)
    gpus = document.get("gpus")
    if not isinstance(gpus, list) or len(gpus) > MAX_GPUS_PER_NODE:
        raise AssignmentError(
            f"{NODE_GPU_INVENTORY}.gpus must be a list of at most {MAX_GPUS_PER_NODE} GPUs"
        )
    parsed = []
    for position, gpu in enumerate(gpus):
        where = f"{NODE_GPU_INVENTORY}.gpus[{position}]"
        if not isinstance(gpu, dict):
            raise AssignmentError(f"{where} must be an object")
        parsed.append(
            InventoryGpu(
                index=_int(gpu.get("index"), f"{where}.index", MAX_GPUS_PER_NODE * 16),
                uuid=_str(gpu.get("uuid"), f"{where}.uuid"),
                memory=_int(gpu.get("memory"), f"{where}.memory", MAX_MEMORY_UNITS_PER_GPU),
                healthy=gpu.get("healthy", True) is True,
            )
        )
    if len({gpu.uuid for gpu in parsed}) != len(parsed):
        raise AssignmentError(f"{NODE_GPU_INVENTORY}.gpus lists a UUID twice")
    policy = document.get("policy", "binpack")
    return Inventory(policy="spread" if policy == "spread" else "binpack", gpus=tuple(parsed))


def format_inventory(inventory: Inventory) -> str:
    return json.dumps(
        {
            "version": VERSION,
            "policy": inventory.policy,
            "gpus": [
                {"index": gpu.index, "uuid": gpu.uuid, "memory": gpu.memory, "healthy": gpu.healthy}
                for gpu in inventory.gpus
            ],
        },
        separators=(",", ":"),
    )


def parse_assignment(text: object) -> Assignment:
    document = _load(text, POD_GPU_ASSIGNMENT)
    node = _str(document.get("node"), f"{POD_GPU_ASSIGNMENT}.node")
    containers = document.get("containers")
    if not isinstance(containers, dict) or len(containers) > MAX_CONTAINERS:
        raise AssignmentError(
            f"{POD_GPU_ASSIGNMENT}.containers must be an object of at most {MAX_CONTAINERS}"
            " containers"
        )
    parsed: dict[str, tuple[Share, ...]] = {}
    for name, shares in containers.items():
        where = f"{POD_GPU_ASSIGNMENT}.containers[{name!r}]"
        if not isinstance(shares, list) or not 0 < len(shares) <= MAX_GPUS_PER_NODE:
            raise AssignmentError(f"{where} must be a list of 1..{MAX_GPUS_PER_NODE} GPUs")
        items = []
        for position, share in enumerate(shares):
            at = f"{where}[{position}]"
            if not isinstance(share, dict):
                raise AssignmentError(f"{at} must be an object")
            items.append(
                Share(
                    uuid=_str(share.get("uuid"), f"{at}.uuid"),
                    core=_int(share.get("core"), f"{at}.core", 100),
                    memory=_int(share.get("memory"), f"{at}.memory", MAX_MEMORY_UNITS_PER_GPU),
                )
            )
        parsed[name] = tuple(items)
    return Assignment(node=node, containers=parsed)


def format_assignment(assignment: Assignment) -> str:
    return json.dumps(
        {
            "version": VERSION,
            "node": assignment.node,
            "containers": {
                name: [
                    {"uuid": share.uuid, "core": share.core, "memory": share.memory}
                    for share in shares
                ]
                for name, shares in assignment.containers.items()
            },
        },
        separators=(",", ":"),
    )
