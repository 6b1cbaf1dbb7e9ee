"""Prometheus metrics of the GPU time scheduler: every served container's share, whether it
is throttled, its use over the last window and its connected clients (read at scrape time)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from nodemanager.gputime.server import GpuTimeServer
from nodemanager.gputime.service import AllocationSource


class GpuTimeCollector(Collector):
    def __init__(self, node_name: str, server: GpuTimeServer, allocations: AllocationSource):
        self._node = node_name
        self._server = server
        self._allocations = allocations

    def collect(self) -> Iterator[Metric]:
        labels = ["node", "namespace", "pod", "container", "allocation"]
        families = {
            name: GaugeMetricFamily(f"gpushare_container_gpu_time_{name}", text, labels=labels)
            for name, text in (
                ("guarantee_percent", "GPU time guaranteed to the container (percent)"),
                ("cap_percent", "GPU time the container never exceeds (percent)"),
                ("throttled", "1 while its namespace's exhausted budget holds it at the floor"),
                ("used_percent", "GPU time the container was charged over the last window"),
                ("clients", "processes of the container connected to the scheduler"),
            )
        }
        owners = {item.id: item.owner for item in self._allocations.allocations()}
        for allocation_id, (_gpu, quota) in self._server.containers().items():
            owner = owners.get(allocation_id)
            row = [
                self._node,
                owner.namespace if owner else "",
                owner.pod if owner else "",
                owner.container if owner else "",
                allocation_id,
            ]
            used = self._server.used(allocation_id)
            families["guarantee_percent"].add_metric(row, quota.guarantee * 100)
            families["cap_percent"].add_metric(row, quota.cap * 100)
            families["throttled"].add_metric(row, 1.0 if quota.throttled else 0.0)
            if used is not None:
                families["used_percent"].add_metric(row, used * 100)
            families["clients"].add_metric(row, self._server.session_count(allocation_id))
        yield from families.values()
