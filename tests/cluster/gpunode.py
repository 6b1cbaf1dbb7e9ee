"""A GPU node for the real-control-plane tests: the node manager (`Daemon`, GPUs simulated)
talking to the real API server, with a stand-in kubelet that speaks the device plugin API,
and the validating webhook registered for one test namespace."""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodemanager.daemon import Daemon
from nodemanager.inventory import SimulatedInventory
from nodemanager.kube import KubernetesApi
from nodemanager.settings import Settings

from gpushare.assignment import POD_GPU_ASSIGNMENT
from tests.cluster.conftest import NAMESPACE_LABEL
from tests.cluster.controlplane import ControlPlane
from tests.nodemanager.fake_apiserver import assignment_for, simulated_uuid
from tests.nodemanager.fake_kubelet import FakeKubelet
from tests.polling import wait_until
from tests.webhook.serving import generate_certs, serve_webhook

GIB = 1 << 30


@dataclass
class GpuNode:
    name: str
    daemon: Daemon
    kubelet: FakeKubelet

    def allocation_of(self, namespace: str, pod: str) -> str | None:
        for allocation in self.daemon.manager.allocations():
            owner = allocation.owner
            mine = owner is not None and (owner.namespace, owner.pod) == (namespace, pod)
            if mine and allocation.state_dir:
                return allocation.id
        return None


@contextmanager
def gpu_node(control_plane: ControlPlane, **settings: Any) -> Iterator[GpuNode]:
    """A Node object and its node manager (two simulated 16 GiB GPUs); removed afterwards."""
    name = f"gpu-{uuid.uuid4().hex[:8]}"
    control_plane.make_node(name, {"tencent.com/vcuda-core": 200, "tencent.com/vcuda-memory": 128})
    root = Path(tempfile.mkdtemp(prefix="gn-", dir="/tmp"))  # short: unix socket paths
    kubelet = FakeKubelet(root / "dp", root / "pr.sock").start()
    daemon = Daemon(
        Settings(
            node_name=name,
            device_plugin_dir=root / "dp",
            pod_resources_socket=root / "pr.sock",
            simulate_gpus=(2, 16 * GIB),
            host="127.0.0.1",
            port=0,
            hook_library_dir=root / "lib",
            state_dir=root / "state",
            checkpoint=root / "checkpoint.json",
            kubeconfig=str(control_plane.kubeconfig),
            health_interval_seconds=3600,
            reconcile_interval_seconds=3600,
            **settings,
        ),
        inventory=SimulatedInventory(2, 16 * GIB),
        kubernetes=KubernetesApi.from_environment(str(control_plane.kubeconfig)),
    )
    daemon.start()
    try:
        wait_until(
            lambda: len(kubelet.health("tencent.com/vcuda-memory")) == 128,
            what="the node manager's devices listed to kubelet",
        )
        yield GpuNode(name, daemon, kubelet)
    finally:
        daemon.stop()
        kubelet.stop()
        with control_plane.api_client() as client:
            import kubernetes.client

            kubernetes.client.CoreV1Api(client).delete_node(name)
        shutil.rmtree(root, ignore_errors=True)


def gpu_pod(
    name: str, namespace: str, node: str, core: int, memory: int, annotations: dict[str, str]
) -> dict[str, Any]:
    """A Pod bound to `node` asking a share of one GPU, with the GPU assignment the
    extender writes at bind (GPU 0 of the simulated node), so no scheduler is needed."""
    limits = {"tencent.com/vcuda-core": str(core), "tencent.com/vcuda-memory": str(memory)}
    assignment = assignment_for(node, [("main", core, memory)], {"main": [simulated_uuid(0)]})
    annotations = {**annotations, POD_GPU_ASSIGNMENT: assignment}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "main", "image": "cuda", "resources": {"limits": limits}}],
        },
    }


def start_pod(control_plane: ControlPlane, node: GpuNode, pod: dict[str, Any]) -> str:
    """Create the pod on the API server, let the stand-in kubelet admit it (Allocate), and
    return its allocation ID once the node manager has matched it to the pod."""
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(pod))
    metadata = pod["metadata"]

    def seen() -> bool:
        watch = node.daemon.pod_watch
        return watch is not None and watch.pod(metadata["namespace"], metadata["name"]) is not None

    wait_until(seen, what="the pod in the node manager's pod cache")
    node.kubelet.admit(pod)
    found: list[str] = []

    def allocated() -> bool:
        allocation = node.allocation_of(metadata["namespace"], metadata["name"])
        if allocation is not None:
            found.append(allocation)
        return allocation is not None

    wait_until(allocated, what="the pod's allocation")
    return found[0]


@contextmanager
def validating_webhook(
    control_plane: ControlPlane, namespace: str, workdir: Path
) -> Iterator[None]:
    """`gpushare webhook` served on loopback, registered as a ValidatingWebhookConfiguration
    of pod UPDATEs in `namespace` only (by its test label); deleted afterwards.

    CREATE is not routed to it: on CREATE the webhook requires the accounting sidecar that
    its mutating side injects (with the chart's PriorityClasses), which these tests of
    running pods do not install."""
    ca_bundle = generate_certs(workdir / "certs")
    name = f"gpushare-test-{namespace}"[:253]
    with serve_webhook(workdir / "certs", "http://127.0.0.1:9") as served:
        configuration = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "validate.gpushare.io",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{served.port}/validate",
                        "caBundle": ca_bundle,
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["UPDATE"],
                            "resources": ["pods"],
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: namespace}},
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 10,
                }
            ],
        }
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(configuration))
        try:
            yield
        finally:
            control_plane.kubectl(
                "delete", "validatingwebhookconfiguration", name, "--ignore-not-found"
            )
