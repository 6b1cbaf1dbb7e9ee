"""The running node manager: wires inventory, Kubernetes, kubelet and metrics together."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from gpushare import logs
from nodemanager.gputime.budgetstates import BudgetStates, HttpFetch
from nodemanager.gputime.metrics import GpuTimeCollector
from nodemanager.gputime.mps import MpsDaemons, partitioned_gpus
from nodemanager.gputime.scheduler import SchedulerConfig
from nodemanager.gputime.server import SOCKET_NAME, GpuTimeServer
from nodemanager.gputime.service import GpuTimeService
from nodemanager.inventory import Inventory, SimulatedInventory
from nodemanager.kube import (
    KubeletPodResources,
    KubernetesApi,
    KubernetesError,
    NodePublisher,
    PodSource,
)
from nodemanager.ledger import CheckpointError
from nodemanager.manager import NodeManager, Paths
from nodemanager.metrics import ProcEnvironAttribution, registry_for
from nodemanager.nvml import InventoryError, NvmlInventory
from nodemanager.plugin import PluginRunner
from nodemanager.podwatch import PodWatch
from nodemanager.settings import Settings

log = logging.getLogger(__name__)


class Daemon:
    """Everything `gpushare nodemanager` runs, startable and stoppable in-process."""

    def __init__(
        self,
        settings: Settings,
        *,
        inventory: Inventory,
        kubernetes: KubernetesApi | None,
    ) -> None:
        self.settings = settings
        pod_source: PodSource | None = kubernetes
        publisher: NodePublisher | None = kubernetes
        self.gpu_time: GpuTimeService | None = None
        self.mps = MpsDaemons(settings.state_dir / "mps", binary=settings.mps_control)
        self.pod_watch = (
            None
            if kubernetes is None
            else PodWatch(kubernetes, settings.node_name, on_change=self._gpu_time_changed)
        )
        self.manager = NodeManager(
            node_name=settings.node_name,
            inventory=inventory,
            paths=Paths(
                hook_library_dir=settings.hook_library_dir,
                state_root=settings.state_dir,
                checkpoint=settings.checkpoint,
            ),
            policy=settings.policy,
            pod_source=pod_source,
            pod_cache=self.pod_watch,
            pod_resources=KubeletPodResources(str(settings.pod_resources_socket)),
            publisher=publisher,
            annotator=kubernetes,
            release_grace_seconds=settings.release_grace_seconds,
            scheduler_socket=SOCKET_NAME if settings.gpu_time else None,
            on_allocations_changed=self._allocations_changed,
            mps=self.mps,
        )
        if settings.gpu_time:
            budgets = None
            if settings.timekeeper_url is not None:
                fetch = HttpFetch(
                    settings.timekeeper_url, token_file=settings.timekeeper_token_file
                )
                budgets = BudgetStates(
                    fetch,
                    poll_seconds=settings.budget_poll_seconds,
                    on_change=self._gpu_time_changed,
                )
            server = GpuTimeServer(
                SchedulerConfig(
                    window_seconds=settings.gpu_time_window_seconds,
                    min_token_seconds=settings.gpu_time_min_token_seconds,
                    max_token_seconds=settings.gpu_time_max_token_seconds,
                )
            )
            self.gpu_time = GpuTimeService(
                server, self.manager, pods=self.pod_watch, budgets=budgets
            )
        self.runner = PluginRunner(self.manager, settings.device_plugin_dir)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics_port = 0

    def _allocations_changed(self) -> None:
        self.mps.wake()
        self._gpu_time_changed()

    def _gpu_time_changed(self) -> None:
        if self.gpu_time is not None:
            self.gpu_time.wake()

    def start(self) -> None:
        from prometheus_client import start_http_server

        registry = registry_for(self.manager, ProcEnvironAttribution())
        if self.gpu_time is not None:
            registry.register(
                GpuTimeCollector(self.settings.node_name, self.gpu_time.server, self.manager)
            )
        server, _ = start_http_server(
            self.settings.port, addr=self.settings.host, registry=registry
        )
        self._metrics_server = server
        self.metrics_port = server.server_port
        if self.pod_watch is not None:
            self.pod_watch.start()
        self.manager.check_health()
        self.manager.reconcile()
        self.mps.start(lambda: partitioned_gpus(self.manager.allocations()))
        if self.gpu_time is not None:
            self.gpu_time.start()
        self.runner.start()
        self._thread = threading.Thread(target=self._housekeeping, name="housekeeping")
        self._thread.daemon = True
        self._thread.start()
        log.info(
            "node manager of %s serving %d GPU(s); metrics on http://%s:%d/metrics",
            self.settings.node_name,
            len(self.manager.gpus),
            self.settings.host,
            self.metrics_port,
        )

    def _housekeeping(self) -> None:
        health_every = self.settings.health_interval_seconds
        reconcile_every = self.settings.reconcile_interval_seconds
        next_health = next_reconcile = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_health:
                self.manager.check_health()
                next_health = now + health_every
            if now >= next_reconcile:
                self.manager.reconcile()
                next_reconcile = now + reconcile_every
            self.manager.capacity_changed.clear()
            self.manager.publish()
            timeout = max(0.05, min(next_health, next_reconcile) - time.monotonic())
            self.manager.capacity_changed.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self.manager.capacity_changed.set()  # wake the housekeeping loop
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.runner.stop()
        self.mps.stop()
        if self.gpu_time is not None:
            self.gpu_time.stop()
        if self.pod_watch is not None:
            self.pod_watch.stop()
        self.manager.flush_checkpoint()
        self._metrics_server.shutdown()
        self.manager.inventory.close()

    def request_stop(self) -> None:
        """Make `wait()` return (safe from a signal handler)."""
        self._stop.set()

    def wait(self) -> None:
        self._stop.wait()


def build_inventory(settings: Settings) -> Inventory:
    if settings.simulate_gpus is not None:
        count, memory_bytes = settings.simulate_gpus
        return SimulatedInventory(count, memory_bytes)
    return NvmlInventory()


def run(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; the exit code of the command."""
    logs.configure(log_format=settings.log_format, level=settings.log_level)
    kubernetes = None
    if settings.kubernetes:
        try:
            kubernetes = KubernetesApi.from_environment(settings.kubeconfig)
        except KubernetesError as err:
            log.error("%s (use --no-kubernetes to run without the API server)", err)
            return 1
    try:
        inventory = build_inventory(settings)
        daemon = Daemon(settings, inventory=inventory, kubernetes=kubernetes)
    except CheckpointError as err:
        log.error(
            "cannot start the node manager: %s; move the file away to start without it"
            " (allocations still held are adopted from kubelet's PodResources)",
            err,
        )
        return 1
    except (InventoryError, OSError) as err:
        log.error("cannot start the node manager: %s", err)
        return 1

    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        daemon.request_stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    daemon.start()
    daemon.wait()
    daemon.stop()
    return 0
