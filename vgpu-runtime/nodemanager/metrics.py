"""Prometheus metrics of the node, computed from the node manager's state at scrape time.

Per GPU: cores and memory allocated and in total, health. Per container: its core share and
memory limit, and — where NVML can see the container's processes — the memory they use and
their SM utilisation. Processes are tied to containers through the `GPUSHARE_ALLOCATION_ID`
variable in their environment (`/proc/<pid>/environ`, which needs the host PID namespace).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpushare.resources import CORE_UNITS_PER_GPU, MEMORY_UNIT_BYTES
from nodemanager.devices import Kind
from nodemanager.ledger import Allocation
from nodemanager.manager import NodeManager

ALLOCATION_ENV = b"GPUSHARE_ALLOCATION_ID="


class ProcessAttribution(Protocol):
    def allocation_of(self, pid: int) -> str | None:
        """The allocation ID a process runs under, or None when unknown."""
        ...


class ProcEnvironAttribution:
    """Reads `GPUSHARE_ALLOCATION_ID` from `/proc/<pid>/environ`."""

    def __init__(self, proc_root: str = "/proc") -> None:
        self._root = proc_root

    def allocation_of(self, pid: int) -> str | None:
        try:
            with open(os.path.join(self._root, str(pid), "environ"), "rb") as stream:
                environ = stream.read()
        except OSError:
            return None
        for entry in environ.split(b"\0"):
            if entry.startswith(ALLOCATION_ENV):
                return entry[len(ALLOCATION_ENV) :].decode(errors="replace")
        return None


@dataclass(frozen=True)
class _Container:
    labels: list[str]
    core: Allocation
    memory_limit_bytes: int | None


class NodeCollector(Collector):
    """Collects the node manager's metrics on every scrape."""

    def __init__(self, manager: NodeManager, attribution: ProcessAttribution) -> None:
        self._manager = manager
        self._attribution = attribution

    def collect(self) -> Iterator[Metric]:
        manager = self._manager
        gpu_labels = ["node", "gpu", "uuid"]
        cores_allocated = GaugeMetricFamily(
            "gpushare_gpu_cores_allocated", "vcuda-core units allocated", labels=gpu_labels
        )
        cores_total = GaugeMetricFamily(
            "gpushare_gpu_cores_total", "vcuda-core units offered", labels=gpu_labels
        )
        memory_allocated = GaugeMetricFamily(
            "gpushare_gpu_memory_allocated_bytes", "GPU memory allocated", labels=gpu_labels
        )
        memory_total = GaugeMetricFamily(
            "gpushare_gpu_memory_total_bytes", "GPU memory offered", labels=gpu_labels
        )
        healthy = GaugeMetricFamily(
            "gpushare_gpu_healthy", "1 when the GPU passes its health check", labels=gpu_labels
        )
        for gpu in manager.capacities():
            labels = [manager.node_name, str(gpu.index), gpu.uuid]
            cores_allocated.add_metric(labels, gpu.core_total - gpu.core_free)
            cores_total.add_metric(labels, gpu.core_total)
            memory_allocated.add_metric(
                labels, (gpu.memory_total - gpu.memory_free) * MEMORY_UNIT_BYTES
            )
            memory_total.add_metric(labels, gpu.memory_total * MEMORY_UNIT_BYTES)
            healthy.add_metric(labels, 1.0 if gpu.healthy else 0.0)
        yield from (cores_allocated, cores_total, memory_allocated, memory_total, healthy)
        yield from self._containers()

    def _containers(self) -> Iterator[Metric]:
        manager = self._manager
        labels = ["node", "namespace", "pod", "container", "allocation", "gpu"]
        share = GaugeMetricFamily(
            "gpushare_container_core_share_percent",
            "vcuda-core share of the container (percent of its GPU)",
            labels=labels,
        )
        limit = GaugeMetricFamily(
            "gpushare_container_memory_limit_bytes",
            "GPU memory limit of the container",
            labels=labels,
        )
        used = GaugeMetricFamily(
            "gpushare_container_memory_used_bytes",
            "GPU memory used by the container's processes (as NVML reports them)",
            labels=labels,
        )
        sm = GaugeMetricFamily(
            "gpushare_container_sm_utilization_percent",
            "SM utilisation of the container's processes over NVML's last sample window",
            labels=labels,
        )
        containers = _containers(manager)
        usage: dict[tuple[str, str], tuple[int, float | None]] = {}
        gpu_index = {gpu.uuid: gpu.index for gpu in manager.gpus}
        for gpu in manager.gpus:
            for sample in manager.inventory.processes(gpu):
                allocation_id = self._attribution.allocation_of(sample.pid)
                if allocation_id is None or allocation_id not in containers:
                    continue
                key = (allocation_id, gpu.uuid)
                memory, util = usage.get(key, (0, None))
                if sample.sm_percent is not None:
                    util = (util or 0.0) + sample.sm_percent
                usage[key] = (memory + sample.memory_used_bytes, util)
        for allocation_id, container in containers.items():
            for uuid in container.core.units_by_gpu:
                row = [*container.labels, allocation_id, str(gpu_index.get(uuid, -1))]
                share.add_metric(row, min(container.core.core_limit, CORE_UNITS_PER_GPU))
                if container.memory_limit_bytes is not None:
                    limit.add_metric(row, container.memory_limit_bytes)
                if (allocation_id, uuid) in usage:
                    memory, util = usage[(allocation_id, uuid)]
                    used.add_metric(row, memory)
                    if util is not None:
                        sm.add_metric(row, util)
        yield from (share, limit, used, sm)


def _containers(manager: NodeManager) -> dict[str, _Container]:
    """Core allocations by ID, with the container's labels and memory limit (per GPU)."""
    allocations = manager.allocations()
    memory_by_owner: dict[tuple[str, str, str], int] = {}
    for item in allocations:
        if item.kind is Kind.MEMORY and item.owner is not None:
            key = (item.owner.namespace, item.owner.pod, item.owner.container)
            memory_by_owner[key] = min(item.units_by_gpu.values()) * MEMORY_UNIT_BYTES
    result = {}
    for item in allocations:
        if item.kind is not Kind.CORE:
            continue
        owner = item.owner
        labels = [manager.node_name, "", "", ""]
        memory = None
        if owner is not None:
            labels = [manager.node_name, owner.namespace, owner.pod, owner.container]
            memory = memory_by_owner.get((owner.namespace, owner.pod, owner.container))
        result[item.id] = _Container(labels=labels, core=item, memory_limit_bytes=memory)
    return result


def registry_for(manager: NodeManager, attribution: ProcessAttribution) -> CollectorRegistry:
    """A registry holding only the node manager's metrics."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(manager, attribution))
    return registry
