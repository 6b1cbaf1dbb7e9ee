"""A GPU time scheduler process for the hook's tests and benchmark: the node manager's own
server and sync service (`nodemanager.gputime`), over containers described in a JSON file.

    python -m tests.hook.gputime_node CONFIG.json

The configuration names the containers (allocation ID, namespace, pod, state directory, core
and soft limit), a file of pod annotations (read at every sync, as the node manager reads its
pod cache: rewrite it to change a running pod's quota) and the timekeeper URL the budget
states are pulled from (as the node manager pulls them). Prints `ready` once every container's
socket is served; runs until its standard input closes or it is killed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nodemanager.devices import Kind
from nodemanager.gputime.budgetstates import BudgetStates, HttpFetch
from nodemanager.gputime.scheduler import SchedulerConfig
from nodemanager.gputime.server import GpuTimeServer
from nodemanager.gputime.service import GpuTimeService
from nodemanager.ledger import Allocation, Owner


class Allocations:
    def __init__(self, items: list[Allocation]) -> None:
        self._items = items

    def allocations(self) -> list[Allocation]:
        return self._items


class AnnotationsFile:
    """Pods whose annotations are read from a JSON file {pod name: {key: value}}."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            annotations = json.loads(self._path.read_text()).get(name, {})
        except (OSError, ValueError):
            return None
        return {"metadata": {"name": name, "namespace": namespace, "annotations": annotations}}


def main(config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    allocations = [
        Allocation(
            id=item["id"],
            kind=Kind.CORE,
            device_ids=(f"{item['id']}-core",),
            units_by_gpu={"gpu-0": item["core"]},
            created_at=0.0,
            owner=Owner(item["namespace"], item["pod"], "main"),
            state_dir=item["state_dir"],
            core_limit=item["core"],
            core_soft_limit=item.get("soft", item["core"]),
        )
        for item in config["containers"]
    ]
    server = GpuTimeServer(
        SchedulerConfig(
            window_seconds=config.get("window_seconds", 1.0),
            min_token_seconds=config.get("min_token_seconds", 0.01),
            max_token_seconds=config.get("max_token_seconds", 0.025),
        )
    )
    wake: list[GpuTimeService] = []  # the service, once built (as the node manager wires it)

    def changed() -> None:
        for service in wake:
            service.wake()

    budgets = None
    if config.get("timekeeper_url"):
        budgets = BudgetStates(
            HttpFetch(config["timekeeper_url"]),
            poll_seconds=config.get("budget_poll_seconds", 10.0),
            on_change=changed,
        )
    service = GpuTimeService(
        server,
        Allocations(allocations),
        pods=AnnotationsFile(Path(config["annotations_file"])),
        budgets=budgets,
    )
    wake.append(service)
    service.start()
    service.sync()
    print("ready", flush=True)
    try:
        sys.stdin.read()
    finally:
        service.stop()


if __name__ == "__main__":
    main(sys.argv[1])
