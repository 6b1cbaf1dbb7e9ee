"""Fixtures of the node manager tests: a simulated node, a fake kubelet, a fake API server."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nodemanager.daemon import Daemon
from nodemanager.inventory import SimulatedInventory
from nodemanager.kube import KubeletPodResources, KubernetesApi
from nodemanager.manager import NodeManager, Paths
from nodemanager.placement import Policy
from nodemanager.plugin import PluginRunner
from nodemanager.podwatch import PodWatch
from nodemanager.settings import Settings

from tests.nodemanager.fake_apiserver import FakeApiServer
from tests.nodemanager.fake_kubelet import CORE, MEMORY, FakeKubelet
from tests.polling import wait_until

GIB = 1 << 30
NODE = "node-a"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A private directory with a short path (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="gs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    yield server
    server.stop()


@dataclass
class Node:
    """A node under test: the manager, its device plugin runner and the fakes around it."""

    root: Path
    inventory: SimulatedInventory
    manager: NodeManager
    runner: PluginRunner
    kubelet: FakeKubelet
    apiserver: FakeApiServer
    watch: PodWatch | None = None

    def sync(self) -> None:
        """Wait until the pod cache has applied every change the API server made so far."""
        watch = self.watch
        assert watch is not None
        wait_until(
            lambda: watch.synced and watch.resource_version == self.apiserver.resource_version,
            what="pod cache in sync",
        )

    @property
    def paths(self) -> Paths:
        return self.manager.paths

    def uuid(self, index: int) -> str:
        return self.inventory.gpus()[index].uuid


NodeFactory = Callable[..., Node]


@pytest.fixture
def make_node(short_dir: Path, apiserver: FakeApiServer) -> Iterator[NodeFactory]:
    """Builds a running node (GPUs simulated) registered with a fake kubelet."""
    started: list[Node] = []

    def make(
        gpus: int = 2,
        memory_gib: int = 16,
        policy: Policy = Policy.BINPACK,
        grace: float = 60,
        pod_watch: bool = False,
    ) -> Node:
        plugin_dir = short_dir / "dp"
        kubelet = FakeKubelet(plugin_dir, short_dir / "pr.sock").start()
        inventory = SimulatedInventory(gpus, memory_gib * GIB)
        kubernetes = KubernetesApi.for_url(apiserver.url)
        watch = None
        if pod_watch:
            watch = PodWatch(kubernetes, NODE, retry_seconds=0.05, max_retry_seconds=0.2).start()
        manager = NodeManager(
            node_name=NODE,
            inventory=inventory,
            paths=Paths(
                hook_library_dir=short_dir / "lib",
                state_root=short_dir / "state",
                checkpoint=short_dir / "checkpoint.json",
            ),
            policy=policy,
            pod_source=kubernetes,
            pod_cache=watch,
            pod_resources=KubeletPodResources(str(short_dir / "pr.sock")),
            publisher=kubernetes,
            release_grace_seconds=grace,
        )
        runner = PluginRunner(manager, plugin_dir, watch_interval_seconds=0.02)
        runner.start()
        node = Node(short_dir, inventory, manager, runner, kubelet, apiserver, watch)
        started.append(node)
        wait_until(
            lambda: kubelet.registered(CORE) > 0 and kubelet.registered(MEMORY) > 0,
            what="both resources registered",
        )
        wait_until(
            lambda: bool(kubelet.health(CORE)) and bool(kubelet.health(MEMORY)),
            what="first ListAndWatch lists",
        )
        return node

    yield make
    for node in started:
        node.runner.stop()
        node.kubelet.stop()
        if node.watch is not None:
            node.watch.stop()


def simulated_daemon(short_dir: Path, apiserver: FakeApiServer) -> Daemon:
    """A node manager daemon of node `NODE` with two simulated 16 GiB GPUs, its kubelet
    sockets under `short_dir`, talking to `apiserver`; not started. Health checks and
    reconciliation are hourly, so the test decides what happens."""
    settings = Settings(
        node_name=NODE,
        device_plugin_dir=short_dir / "dp",
        pod_resources_socket=short_dir / "pr.sock",
        simulate_gpus=(2, 16 * GIB),
        host="127.0.0.1",
        port=0,
        hook_library_dir=short_dir / "lib",
        state_dir=short_dir / "state",
        checkpoint=short_dir / "checkpoint.json",
        health_interval_seconds=3600,
        reconcile_interval_seconds=3600,
    )
    return Daemon(
        settings,
        inventory=SimulatedInventory(2, 16 * GIB),
        kubernetes=KubernetesApi.for_url(apiserver.url),
    )
