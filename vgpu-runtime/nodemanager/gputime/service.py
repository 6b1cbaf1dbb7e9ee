"""Keeps the GPU time server in step with the node: one served container per shared core
allocation, each with the quota its pod's annotations and its namespace's budget give.

`sync()` compares what the server serves with what it should and corrects it: new
allocations get their socket, released ones lose it, changed quotas are set (and pushed to
the container's clients). It runs at once when the pod cache, the budget states or the
allocations change, and every quarter window regardless, so a quota change reaches the
scheduler within one window of the node manager seeing it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from gpushare.resources import CORE_UNITS_PER_GPU
from nodemanager.devices import Kind
from nodemanager.gputime.budgetstates import BudgetStates
from nodemanager.gputime.quotas import container_quota
from nodemanager.gputime.scheduler import ALL_SMS, Quota
from nodemanager.gputime.server import GpuTimeServer, ServerError
from nodemanager.ledger import Allocation

log = logging.getLogger(__name__)


class AllocationSource(Protocol):
    def allocations(self) -> list[Allocation]: ...


class PodLookup(Protocol):
    def pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The pod (Kubernetes JSON) when known."""
        ...


class GpuTimeService:
    """Drives a `GpuTimeServer` from the node manager's allocations. Thread-safe."""

    def __init__(
        self,
        server: GpuTimeServer,
        allocations: AllocationSource,
        *,
        pods: PodLookup | None = None,
        budgets: BudgetStates | None = None,
    ) -> None:
        self.server = server
        self._allocations = allocations
        self._pods = pods
        self.budgets = budgets
        self._interval = server.config.window_seconds / 4
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed: set[str] = set()
        self._annotations: dict[str, Mapping[str, str]] = {}
        """The last annotations seen of each allocation's pod, kept while the pod cache is out
        of sync, so that a quota never falls back to the defaults because of the API server."""

    def wake(self) -> None:
        """Something changed: sync now."""
        self._wake.set()

    def sync(self) -> None:
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        shared = [
            item
            for item in self._allocations.allocations()
            if item.kind is Kind.CORE
            and 0 < item.core_limit < CORE_UNITS_PER_GPU
            and item.state_dir
            and len(item.units_by_gpu) == 1
        ]
        if self.budgets is not None:
            self.budgets.watch({item.owner.namespace for item in shared if item.owner})
        wanted = {item.id: (item, self._quota(item)) for item in shared}
        served = self.server.containers()
        for allocation_id in set(served) - set(wanted):
            self.server.remove_container(allocation_id)
            self._failed.discard(allocation_id)
        for allocation_id in set(self._annotations) - set(wanted):
            del self._annotations[allocation_id]
        for allocation_id, (item, quota) in wanted.items():
            if allocation_id not in served:
                gpu = next(iter(item.units_by_gpu))
                try:
                    self.server.add_container(allocation_id, gpu, Path(item.state_dir), quota)
                except ServerError as err:
                    if allocation_id not in self._failed:
                        log.error("GPU time of allocation %s not scheduled: %s", item.id, err)
                        self._failed.add(allocation_id)
                    continue
                self._failed.discard(allocation_id)
            elif served[allocation_id][1] != quota and self.server.set_quota(allocation_id, quota):
                log.info(
                    "GPU time of %s: guarantee %.1f%%, cap %.1f%%%s",
                    item.owner.describe() if item.owner else f"allocation {item.id}",
                    quota.guarantee * 100,
                    quota.cap * 100,
                    " (throttled: budget exhausted)" if quota.throttled else "",
                )

    def _quota(self, item: Allocation) -> Quota:
        annotations = self._annotations.get(item.id)
        owner = item.owner
        if owner is not None and self._pods is not None:
            pod = self._pods.pod(owner.namespace, owner.pod)
            metadata = (pod or {}).get("metadata") or {}
            if pod is not None and (not owner.uid or metadata.get("uid") == owner.uid):
                found = metadata.get("annotations") or {}
                annotations = found if isinstance(found, dict) else {}
                self._annotations[item.id] = annotations
        throttle = None
        if owner is not None and self.budgets is not None:
            throttle = self.budgets.floor(owner.namespace)
        quota = container_quota(
            core_limit=item.core_limit,
            soft_limit=item.core_soft_limit,
            annotations=annotations,
            throttle_percent=throttle,
        )
        # the SMs it may use beside others holding a token (MPS); none: the GPU alone
        return replace(quota, sm_partition=min(max(item.sm_partition, 0), ALL_SMS) or ALL_SMS)

    def start(self) -> GpuTimeService:
        self.server.start()
        if self.budgets is not None:
            self.budgets.start()
        self._thread = threading.Thread(target=self._run, name="gputime-sync", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.budgets is not None:
            self.budgets.stop()
        self.server.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception:  # the sync must go on: the next one may succeed
                log.exception("GPU time sync failed")
            self._wake.wait(self._interval)
            self._wake.clear()
