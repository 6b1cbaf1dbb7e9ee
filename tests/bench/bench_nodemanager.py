"""Node manager figures: the Allocate round trip.

- Allocate round trip: GetPreferredAllocation + Allocate over gRPC on a unix socket, as
  kubelet calls them, for one container (vcuda-core then vcuda-memory), on a node with 100
  running GPU containers; the node manager keeps the node's pods in memory by a list-then-watch
  of an in-process API server over HTTP (as the daemon does), and each pod is admitted once
  that watch has delivered it, as kubelet admits a pod once its own watch delivered it.
  Baseline side by side: an empty gRPC call (GetDevicePluginOptions) on the same channel.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nodemanager.api import deviceplugin_pb2 as dp
from nodemanager.inventory import SimulatedInventory
from nodemanager.kube import KubeletPodResources, KubernetesApi
from nodemanager.manager import NodeManager, Paths
from nodemanager.plugin import PluginRunner
from nodemanager.podwatch import PodWatch

from tests.nodemanager.fake_apiserver import FakeApiServer, make_pod, simulated_uuid
from tests.nodemanager.fake_kubelet import CORE, MEMORY, FakeKubelet
from tests.polling import wait_until

JSON = "application/json"

RUNNING = 100
ROUNDS = 300
NODES = 500


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def report(name: str, samples: list[float], baseline_name: str, baseline: list[float]) -> None:
    p50, p99 = percentiles(samples)
    b50, b99 = percentiles(baseline)
    print(f"{name}: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms ({len(samples)} samples)")
    print(f"  baseline {baseline_name}: p50 {b50 * 1e3:.2f} ms, p99 {b99 * 1e3:.2f} ms")
    print(f"  ratio p50 {p50 / b50:.1f}x, p99 {p99 / b99:.1f}x baseline")


def bench_allocate() -> None:
    root = Path(tempfile.mkdtemp(prefix="gs-bench-", dir="/tmp"))
    apiserver = FakeApiServer().start()
    kubelet = FakeKubelet(root / "dp", root / "pr.sock").start()
    kubernetes = KubernetesApi.for_url(apiserver.url)
    watch = PodWatch(kubernetes, "node-a").start()
    manager = NodeManager(
        node_name="node-a",
        inventory=SimulatedInventory(8, 80 << 30),
        paths=Paths(root / "lib", root / "state", root / "checkpoint.json"),
        pod_source=kubernetes,
        pod_cache=watch,
        pod_resources=KubeletPodResources(str(root / "pr.sock")),
        publisher=kubernetes,
    )
    runner = PluginRunner(manager, root / "dp", watch_interval_seconds=0.05)
    runner.start()
    try:
        wait_until(lambda: len(kubelet.health(MEMORY)) > 0 and len(kubelet.health(CORE)) > 0)
        for number in range(RUNNING):
            pod = make_pod(
                f"run{number}",
                [("c", 5, 8)],
                created=f"2026-01-01T00:{number:04d}Z",
                gpus={"c": [simulated_uuid(number % 8)]},
            )
            apiserver.add_pod(pod)
            kubelet.admit(pod)
            apiserver.set_phase(f"run{number}", "Running")
        stub = kubelet.stub(CORE)
        samples: list[float] = []
        baseline: list[float] = []
        kubelet.rpc_seconds.clear()
        listed_before = manager.pod_lists
        for number in range(ROUNDS):
            name = f"new{number}"
            pod = make_pod(
                name,
                [("c", 30, 16)],
                created=f"2026-01-02T00:{number:04d}Z",
                gpus={"c": [simulated_uuid(number % 8)]},
            )
            apiserver.add_pod(pod)
            wait_until(lambda: watch.resource_version == apiserver.resource_version)
            baseline.append(timed(lambda: stub.GetDevicePluginOptions(dp.Empty(), timeout=5)))
            samples.append(timed(lambda pod=pod: kubelet.admit(pod)))
            apiserver.set_phase(name, "Running")
            kubelet.remove_pod("team-a", name)
            for allocation in manager.allocations():
                if allocation.owner is not None and allocation.owner.pod == name:
                    manager.release(allocation.id)
        held = len(manager.allocations()) // 2
        report(
            f"Allocate round trip (GetPreferredAllocation + Allocate, one resource, "
            f"{held} running containers)",
            list(kubelet.rpc_seconds),
            "empty gRPC call",
            baseline,
        )
        listed = manager.pod_lists - listed_before
        print(f"  pending pods listed from the API server by Allocate: {listed} times")
        report(
            "whole container admission in the harness (both resources, kubelet side included)",
            samples,
            "empty gRPC call",
            baseline,
        )
    finally:
        runner.stop()
        watch.stop()
        kubelet.stop()
        apiserver.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    bench_allocate()


if __name__ == "__main__":
    main()
