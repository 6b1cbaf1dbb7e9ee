"""Scheduler extender figures, each against a baseline measured side by side in the same run.

- Filter and bind latency: `POST /filter` (100 node names) then `POST /bind` for a new pod,
  with 1,000 GPU pods on 100 nodes (4 GPUs each) in the extender's view, through Flask's test
  client (in-process: no network) with a binder that records instead of calling the API
  server. Baseline: a no-op Flask POST of the same body.
- Scheduling throughput through the real kube-scheduler (needs KUBEBUILDER_ASSETS, see
  docs/testing.md): 200 GPU pods onto 100 Nodes by a scheduler whose profile calls the
  `gpushare extender` command, against the same kube-scheduler binary placing 200 CPU-only
  pods without an extender, on the same control plane and Nodes, one after the other.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, Response

from extender.app import create_app
from extender.view import ClusterView
from gpushare.assignment import (
    NODE_GPU_INVENTORY,
    POD_GPU_ASSIGNMENT,
    Assignment,
    Inventory,
    InventoryGpu,
    Share,
    format_assignment,
    format_inventory,
)
from tests.polling import wait_until

NODES = 100
GPUS = 4
PODS = 1000
ROUNDS = 300
SCHEDULED = 200


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def report(name: str, samples: list[float], baseline: list[float]) -> None:
    p50, p99 = percentiles(samples)
    b50, b99 = percentiles(baseline)
    print(f"{name}: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms ({len(samples)} samples)")
    print(f"  baseline no-op Flask POST: p50 {b50 * 1e3:.2f} ms, p99 {b99 * 1e3:.2f} ms")
    print(f"  ratio p50 {p50 / b50:.1f}x, p99 {p99 / b99:.1f}x baseline")


def gpu_pod(name: str, core: int, memory: int, **spec: Any) -> dict[str, Any]:
    limits = {"tencent.com/vcuda-core": str(core), "tencent.com/vcuda-memory": str(memory)}
    return {
        "metadata": {"name": name, "namespace": "bench", "uid": f"uid-{name}", "annotations": {}},
        "spec": {"containers": [{"name": "c", "resources": {"limits": limits}}], **spec},
        "status": {"phase": "Pending"},
    }


class RecordingBinder:
    def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]
    ) -> None:
        pass


def bench_latency() -> None:
    view = ClusterView()
    names = [f"node-{n:03d}" for n in range(NODES)]
    view.replace_nodes(
        {
            name: Inventory(
                "binpack", tuple(InventoryGpu(i, f"{name}-gpu{i}", 320) for i in range(GPUS))
            )
            for name in names
        }
    )
    running = []
    for number in range(PODS):
        node = names[number % NODES]
        gpu = f"{node}-gpu{(number // NODES) % GPUS}"
        pod = gpu_pod(f"run-{number}", 20, 8, nodeName=node)
        assignment = Assignment(node=node, containers={"c": (Share(gpu, 20, 8),)})
        pod["metadata"]["annotations"] = {
            POD_GPU_ASSIGNMENT: format_assignment(assignment),
            "gpushare.io/gpu-allocated": node,
        }
        running.append(pod)
    view.replace_pods(running)
    client = create_app(view=view, binder=RecordingBinder()).test_client()
    noop = Flask("noop")

    @noop.post("/noop")
    def answer() -> Response:
        return Response(b"{}", mimetype="application/json")

    baseline_client = noop.test_client()
    filters: list[float] = []
    binds: list[float] = []
    baseline: list[float] = []
    for number in range(ROUNDS):
        pod = gpu_pod(f"new-{number}", 10, 4)
        view.apply_pod(pod)
        body = {"Pod": pod, "NodeNames": names}
        baseline.append(timed(lambda body=body: baseline_client.post("/noop", json=body)))
        chosen: list[str] = []

        def do_filter(body: dict[str, Any] = body, chosen: list[str] = chosen) -> None:
            reply = client.post("/filter", json=body).json
            assert reply is not None
            chosen.extend(reply["NodeNames"])

        filters.append(timed(do_filter))
        (node,) = chosen
        args = {
            "PodName": f"new-{number}",
            "PodNamespace": "bench",
            "PodUID": f"uid-new-{number}",
            "Node": node,
        }
        binds.append(timed(lambda args=args: client.post("/bind", json=args)))
        view.remove_pod(f"uid-new-{number}")  # the view stays at 1,000 pods
    where = f"{PODS} GPU pods on {NODES} nodes x {GPUS} GPUs in view"
    report(f"extender filter ({NODES} node names, {where})", filters, baseline)
    report(f"extender bind ({where})", binds, baseline)


def bench_throughput() -> None:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        print("scheduling throughput: skipped (KUBEBUILDER_ASSETS is not set)")
        return
    import kubernetes.client

    from tests.cluster.controlplane import ControlPlane, find_assets, free_port

    plane = ControlPlane.start(find_assets())
    workdir = Path(tempfile.mkdtemp(prefix="gs-bench-extender-"))
    extender = None
    try:
        with plane.api_client() as client:
            core = kubernetes.client.CoreV1Api(client)
            core.create_namespace({"metadata": {"name": "bench"}})
            core.create_namespaced_service_account("bench", {"metadata": {"name": "default"}})
            inventory = format_inventory(
                Inventory("binpack", tuple(InventoryGpu(i, f"GPU-{i}", 64) for i in range(2)))
            )
            for number in range(NODES):
                name = f"bench-node-{number:03d}"
                plane.make_node(
                    name, {"tencent.com/vcuda-core": 200, "tencent.com/vcuda-memory": 128}
                )
                core.patch_node(
                    name, {"metadata": {"annotations": {NODE_GPU_INVENTORY: inventory}}}
                )
            port = free_port()
            log = (workdir / "extender.log").open("w")
            extender = subprocess.Popen(
                [sys.executable, "-m", "gpushare", "extender", "--kubeconfig",
                 str(plane.kubeconfig), "--host", "127.0.0.1", "--port", str(port),
                 "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, env=os.environ,
            )  # fmt: skip

            def ready() -> bool:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    return bool(r.status == 200)

            wait_until(ready, timeout=30, what="extender ready", ignoring=(OSError,))
            plain = plane.start_scheduler()
            gpu = plane.start_scheduler(
                f"""
profiles: [{{schedulerName: gpushare-scheduler}}]
extenders:
  - urlPrefix: http://127.0.0.1:{port}
    filterVerb: filter
    bindVerb: bind
    preemptVerb: preempt
    weight: 1
    nodeCacheCapable: true
    managedResources:
      - {{name: tencent.com/vcuda-core, ignoredByScheduler: false}}
      - {{name: tencent.com/vcuda-memory, ignoredByScheduler: false}}
"""
            )
            cpu_rate = _schedule(core, "cpu", "default-scheduler", {"cpu": "10m"})
            gpu_rate = _schedule(
                core,
                "gpu",
                "gpushare-scheduler",
                {"tencent.com/vcuda-core": "10", "tencent.com/vcuda-memory": "4"},
            )
            plain.stop()
            gpu.stop()
        print(f"scheduling {SCHEDULED} pods onto {NODES} nodes through the real kube-scheduler:")
        print(f"  GPU pods, gpushare extender (filter + bind): {gpu_rate:.0f} pods/s")
        print(f"  baseline CPU-only pods, no extender: {cpu_rate:.0f} pods/s")
        print(f"  ratio {gpu_rate / cpu_rate:.2f} of the baseline")
    finally:
        if extender is not None:
            extender.terminate()
            extender.wait(timeout=20)
        plane.stop()


def _schedule(core: Any, prefix: str, scheduler: str, limits: dict[str, str]) -> float:
    """Pods per second from the first create to the last one bound."""
    started = time.perf_counter()
    for number in range(SCHEDULED):
        core.create_namespaced_pod(
            "bench",
            {
                "metadata": {"name": f"{prefix}-{number}"},
                "spec": {
                    "schedulerName": scheduler,
                    "containers": [{"name": "c", "image": "x", "resources": {"limits": limits}}],
                },
            },
        )

    def bound() -> bool:
        listed = core.list_namespaced_pod("bench")
        done = [
            pod for pod in listed.items
            if pod.metadata.name.startswith(f"{prefix}-") and pod.spec.node_name
        ]  # fmt: skip
        return len(done) == SCHEDULED

    wait_until(bound, timeout=300, what=f"{SCHEDULED} {prefix} pods bound")
    return SCHEDULED / (time.perf_counter() - started)


def main() -> None:
    bench_latency()
    bench_throughput()


if __name__ == "__main__":
    main()
