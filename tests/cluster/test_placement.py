"""GPU placement through the real kube-scheduler: the extender chooses every GPU at bind and
records it on the pod; node managers hand kubelet exactly those GPUs.

Two hand-made Nodes, each with a node manager on two simulated 16 GiB GPUs and a kubelet
stand-in that calls GetPreferredAllocation and Allocate over real gRPC, admitting the pods
bound to its node in the reverse of their creation order. The extender runs as the real
`gpushare extender` command on 127.0.0.1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nodemanager.inventory import SimulatedInventory
from nodemanager.kube import KubernetesApi
from nodemanager.manager import NodeManager, Paths
from nodemanager.plugin import PluginRunner
from nodemanager.podwatch import PodWatch

from gpushare.assignment import POD_GPU_ALLOCATED, POD_GPU_ASSIGNMENT, parse_assignment
from tests.cluster.controlplane import ControlPlane, free_port
from tests.nodemanager.fake_kubelet import CORE, MEMORY, FakeKubelet
from tests.polling import wait_until

GIB = 1 << 30
MEMORY_UNITS_PER_GPU = 64  # 16 GiB in 256 MiB units


@dataclass
class KubeletNode:
    """A node manager and the kubelet stand-in in front of it."""

    name: str
    manager: NodeManager
    runner: PluginRunner
    watch: PodWatch
    kubelet: FakeKubelet
    admitted: dict[str, dict[str, dict[str, list[str]]]] = field(default_factory=dict)
    """Pod name → container → resource → device IDs kubelet got."""
    errors: list[str] = field(default_factory=list)


class Extender:
    """`gpushare extender` as a process; restartable."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.port = free_port()
        self._kubeconfig = kubeconfig
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        import urllib.request

        command = [
            sys.executable, "-m", "gpushare", "extender",
            "--kubeconfig", str(self._kubeconfig),
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        stream = self._log.open("a")
        self._process = subprocess.Popen(
            command, stdout=stream, stderr=subprocess.STDOUT, env=os.environ
        )

        def ready() -> bool:
            assert self._process is not None and self._process.poll() is None, self._log.read_text()
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as reply:
                return bool(reply.status == 200)

        wait_until(ready, timeout=30, what="the extender ready", ignoring=(OSError,))

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self._log.read_text().splitlines()[-lines:])

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=20)
            self._process = None


def scheduler_config(profile: str, extender_url: str) -> str:
    return f"""
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
podInitialBackoffSeconds: 1
podMaxBackoffSeconds: 2
profiles:
  - schedulerName: {profile}
extenders:
  - urlPrefix: {extender_url}
    filterVerb: filter
    prioritizeVerb: prioritize
    bindVerb: bind
    preemptVerb: preempt
    weight: 1
    nodeCacheCapable: true
    ignorable: false
    httpTimeout: 5s
    managedResources:
      - {{name: tencent.com/vcuda-core, ignoredByScheduler: false}}
      - {{name: tencent.com/vcuda-memory, ignoredByScheduler: false}}
"""


def gpu_pod(
    name: str, scheduler: str, core: int, memory: int, priority_class: str | None = None
) -> dict[str, Any]:
    extra = {} if priority_class is None else {"priorityClassName": priority_class}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            **extra,
            "schedulerName": scheduler,
            "containers": [
                {
                    "name": "train",
                    "image": "cuda",
                    "resources": {
                        "limits": {CORE: str(core), MEMORY: str(memory)},
                        "requests": {CORE: str(core), MEMORY: str(memory)},
                    },
                }
            ],
        },
    }


def _kubelet_loop(node: KubeletNode, core: Any, namespace: str, stop: threading.Event) -> None:
    """Admit the pods bound to the node, newest first, as kubelet's device manager would."""
    while not stop.wait(0.1):
        try:
            listed = core.list_namespaced_pod(
                namespace, field_selector=f"spec.nodeName={node.name}"
            )
        except Exception as err:  # the API server is shared: retry on the next round
            node.errors.append(f"list: {err}")
            continue
        for pod in listed.items:
            if pod.metadata.deletion_timestamp is not None:
                # what kubelet does for a deleted pod: stop it, free its devices, confirm
                node.kubelet.remove_pod(namespace, pod.metadata.name)
                try:
                    core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
                except Exception as err:
                    node.errors.append(f"delete {pod.metadata.name}: {err}")
        waiting = [
            pod
            for pod in listed.items
            if pod.metadata.name not in node.admitted and pod.metadata.deletion_timestamp is None
        ]
        waiting.sort(key=lambda pod: pod.metadata.creation_timestamp, reverse=True)
        for pod in waiting:
            body = core.api_client.sanitize_for_serialization(pod)
            order = (MEMORY, CORE) if len(node.admitted) % 2 else (CORE, MEMORY)
            try:
                granted = node.kubelet.admit(body, order=order)
            except Exception as err:
                node.errors.append(f"{pod.metadata.name}: {err}")
                node.admitted[pod.metadata.name] = {}
                continue
            node.admitted[pod.metadata.name] = {
                container: dict(result.devices) for container, result in granted.items()
            }


@pytest.fixture
def gpu_cluster(
    control_plane: ControlPlane,
    namespace: str,
    make_node: Callable[..., Any],
    tmp_path: Path,
) -> Iterator[tuple[list[KubeletNode], Extender, str]]:
    import kubernetes.client

    suffix = uuid.uuid4().hex[:6]
    nodes: list[KubeletNode] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []
    clients = []
    extender = Extender(control_plane.kubeconfig, tmp_path / "extender.log")
    scheduler = None
    try:
        for letter in "ab":
            name = f"gpu-{letter}-{suffix}"
            make_node(name, {CORE: 200, MEMORY: 2 * MEMORY_UNITS_PER_GPU})
            root = Path(f"/tmp/gs-{suffix}-{letter}")
            kubelet = FakeKubelet(root / "dp", root / "pr.sock").start()
            client = control_plane.api_client()
            clients.append(client)
            node_api = KubernetesApi(client)
            watch = PodWatch(node_api, name, retry_seconds=0.1, max_retry_seconds=1).start()
            manager = NodeManager(
                node_name=name,
                inventory=SimulatedInventory(2, 16 * GIB, seed=f"{letter}{suffix}"),
                paths=Paths(
                    hook_library_dir=root / "lib",
                    state_root=root / "state",
                    checkpoint=root / "checkpoint.json",
                ),
                pod_source=node_api,
                pod_cache=watch,
                publisher=node_api,
                annotator=node_api,
            )
            runner = PluginRunner(manager, root / "dp", watch_interval_seconds=0.05)
            runner.start()
            wait_until(lambda k=kubelet: k.registered(CORE) > 0 and k.registered(MEMORY) > 0)
            wait_until(lambda k=kubelet: bool(k.health(CORE)) and bool(k.health(MEMORY)))
            assert manager.publish()
            nodes.append(KubeletNode(name, manager, runner, watch, kubelet))
        extender.start()
        profile = f"gpushare-scheduler-{suffix}"
        scheduler = control_plane.start_scheduler(scheduler_config(profile, extender.url))
        reader = control_plane.api_client()
        clients.append(reader)
        kubernetes_core = kubernetes.client.CoreV1Api(reader)
        for node in nodes:
            thread = threading.Thread(
                target=_kubelet_loop, args=(node, kubernetes_core, namespace, stop), daemon=True
            )
            thread.start()
            threads.append(thread)
        yield nodes, extender, profile
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        if scheduler is not None:
            scheduler.stop()
        extender.stop()
        for node in nodes:
            node.runner.stop()
            node.kubelet.stop()
            node.watch.stop()
        for client in clients:
            client.close()


def _pods(control_plane: ControlPlane, namespace: str) -> dict[str, Any]:
    import kubernetes.client

    with control_plane.api_client() as client:
        listed = kubernetes.client.CoreV1Api(client).list_namespaced_pod(namespace)
        return {pod.metadata.name: pod for pod in listed.items}


def _create(control_plane: ControlPlane, namespace: str, pods: list[dict[str, Any]]) -> None:
    import kubernetes.client

    with control_plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        for pod in pods:
            core.create_namespaced_pod(namespace, pod)


@pytest.mark.slow
def test_pods_fill_the_gpus_exactly_on_the_gpus_recorded_at_bind(
    control_plane: ControlPlane,
    namespace: str,
    gpu_cluster: tuple[list[KubeletNode], Extender, str],
) -> None:
    nodes, extender, profile = gpu_cluster
    # Each GPU fits exactly one 60-core/24-unit pod and one 40-core/40-unit pod: two of the
    # same kind never share a GPU (cores or memory over), so every GPU must get the right mix.
    wide = [gpu_pod(f"wide-{n}", profile, 60, 24) for n in range(4)]
    tall = [gpu_pod(f"tall-{n}", profile, 40, 40) for n in range(4)]
    unfit = [
        gpu_pod("no-gpu-has-the-memory", profile, 30, 70),  # the node total has room
        gpu_pod("no-gpu-has-both", profile, 99, 65),
    ]
    fit_names = [pod["metadata"]["name"] for pod in wide + tall]
    # first half, then the extender restarts, then the rest: nothing assigned is forgotten
    _create(control_plane, namespace, [wide[0], wide[1], tall[0], tall[1], *unfit])

    def admitted(names: list[str]) -> bool:
        done = {name for node in nodes for name in node.admitted}
        return set(names) <= done

    wait_until(lambda: admitted(fit_names[:2] + fit_names[4:6]), timeout=120, what="first half")
    extender.stop()
    extender.start()
    _create(control_plane, namespace, [wide[2], wide[3], tall[2], tall[3]])
    wait_until(lambda: admitted(fit_names), timeout=180, what="every fitting pod allocated")

    pods = _pods(control_plane, namespace)
    errors = [error for node in nodes for error in node.errors]
    assert errors == []
    cores: dict[str, int] = {}
    memory: dict[str, int] = {}
    for node in nodes:
        for name, containers in node.admitted.items():
            pod = pods[name]
            assert pod.spec.node_name == node.name
            assignment = parse_assignment(pod.metadata.annotations[POD_GPU_ASSIGNMENT])
            assert assignment.node == node.name
            (share,) = assignment.containers["train"]
            devices = containers["train"]
            # cores and memory on one GPU: the one recorded at bind
            assert {device.rsplit("-", 2)[0] for device in devices[CORE]} == {share.uuid}
            assert {device.rsplit("-", 2)[0] for device in devices[MEMORY]} == {share.uuid}
            assert (len(devices[CORE]), len(devices[MEMORY])) == (share.core, share.memory)
            cores[share.uuid] = cores.get(share.uuid, 0) + share.core
            memory[share.uuid] = memory.get(share.uuid, 0) + share.memory
    assert len(cores) == 4
    assert all(value == 100 for value in cores.values()), cores
    assert all(value == MEMORY_UNITS_PER_GPU for value in memory.values()), memory
    for pod in unfit:
        found = pods[pod["metadata"]["name"]]
        assert found.spec.node_name is None  # never bound, so never failed on a node
        assert found.status.phase == "Pending"


@pytest.fixture
def priority_classes(control_plane: ControlPlane) -> Iterator[tuple[str, str]]:
    """An in-budget and an over-budget class, as the chart's, uniquely named for this test."""
    import kubernetes.client

    suffix = uuid.uuid4().hex[:6]
    standard, overbudget = f"gs-standard-{suffix}", f"gs-overbudget-{suffix}"
    with control_plane.api_client() as client:
        api = kubernetes.client.SchedulingV1Api(client)
        api.create_priority_class({"metadata": {"name": standard}, "value": 1000})
        api.create_priority_class(
            {"metadata": {"name": overbudget}, "value": -1000, "preemptionPolicy": "Never"}
        )
        try:
            yield standard, overbudget
        finally:
            api.delete_priority_class(standard)
            api.delete_priority_class(overbudget)


@pytest.mark.slow
def test_an_in_budget_pod_preempts_over_budget_pods_that_free_one_gpu(
    control_plane: ControlPlane,
    namespace: str,
    gpu_cluster: tuple[list[KubeletNode], Extender, str],
    priority_classes: tuple[str, str],
) -> None:
    nodes, _extender, profile = gpu_cluster
    standard, overbudget = priority_classes
    # One node left fragmented: GPU 0 holds 70 + 20 (over budget), GPU 1 40 + 20 + 20 (over
    # budget): 30 cores free in all, never 50 on one GPU. Removing any one over-budget pod
    # frees enough on the node as kube-scheduler counts, but no GPU gets 50 that way: only
    # both over-budget pods of GPU 1 make room. The other node is full of in-budget pods.
    layout = [
        ("keep-70", 70, standard),
        ("keep-40", 40, standard),
        ("low-a", 20, overbudget),
        ("low-b", 20, overbudget),
        ("low-c", 20, overbudget),
        ("whole-0", 100, standard),
        ("whole-1", 100, standard),
    ]
    for name, core, klass in layout:
        _create(control_plane, namespace, [gpu_pod(name, profile, core, 4, klass)])
        # placed one at a time, each once its node manager marked it allocated: the layout
        # is then binpack's alone
        wait_until(
            lambda name=name: (
                POD_GPU_ALLOCATED
                in (_pods(control_plane, namespace)[name].metadata.annotations or {})
            ),
            timeout=60,
            what=f"{name} allocated",
        )
    pods = _pods(control_plane, namespace)

    def gpu_of(name: str) -> tuple[str, str]:
        pod = pods[name]
        assignment = parse_assignment(pod.metadata.annotations[POD_GPU_ASSIGNMENT])
        return pod.spec.node_name, assignment.containers["train"][0].uuid

    fragmented = gpu_of("keep-70")[0]
    assert {gpu_of(name)[0] for name in ("keep-40", "low-a", "low-b", "low-c")} == {fragmented}
    assert gpu_of("low-b") == gpu_of("low-c") == gpu_of("keep-40") != gpu_of("low-a")

    _create(control_plane, namespace, [gpu_pod("urgent", profile, 50, 4, standard)])
    wait_until(
        lambda: any("urgent" in node.admitted for node in nodes),
        timeout=120,
        what="the in-budget pod allocated after preemption",
    )
    pods = _pods(control_plane, namespace)
    assert "low-b" not in pods and "low-c" not in pods  # the victims freed GPU 1
    assert {"keep-70", "keep-40", "low-a", "whole-0", "whole-1"} <= set(pods)
    assert gpu_of("urgent") == gpu_of("keep-40")
    errors = [error for node in nodes for error in node.errors]
    assert errors == []


@pytest.mark.slow
def test_an_in_budget_pod_preempts_where_free_room_is_only_fragmented(
    control_plane: ControlPlane,
    namespace: str,
    gpu_cluster: tuple[list[KubeletNode], Extender, str],
    priority_classes: tuple[str, str],
) -> None:
    nodes, _extender, profile = gpu_cluster
    standard, overbudget = priority_classes
    # One node: each GPU 50 in budget + 30 over budget, so 40 cores free in all, 20 per GPU.
    # kube-scheduler counts room for a 40-core pod there and never preempts; no GPU has it.
    layout = [  # in this order, binpack puts one 50 and one 30 on each GPU
        ("keep-0", 50, standard),
        ("low-0", 30, overbudget),
        ("keep-1", 50, standard),
        ("low-1", 30, overbudget),
        ("whole-0", 100, standard),
        ("whole-1", 100, standard),
    ]
    for name, core, klass in layout:
        _create(control_plane, namespace, [gpu_pod(name, profile, core, 4 + core // 20, klass)])
        wait_until(
            lambda name=name: (
                POD_GPU_ALLOCATED
                in (_pods(control_plane, namespace)[name].metadata.annotations or {})
            ),
            timeout=60,
            what=f"{name} allocated",
        )
    pods = _pods(control_plane, namespace)

    def gpu_of(name: str) -> tuple[str, str]:
        pod = pods[name]
        assignment = parse_assignment(pod.metadata.annotations[POD_GPU_ASSIGNMENT])
        return pod.spec.node_name, assignment.containers["train"][0].uuid

    assert gpu_of("keep-0") != gpu_of("keep-1")
    assert {gpu_of("low-0"), gpu_of("low-1")} == {gpu_of("keep-0"), gpu_of("keep-1")}

    _create(control_plane, namespace, [gpu_pod("urgent", profile, 40, 6, standard)])
    try:
        wait_until(
            lambda: any("urgent" in node.admitted for node in nodes),
            timeout=120,
            what="the in-budget pod allocated after preemption",
        )
    except AssertionError as err:
        state = {
            name: (pod.spec.node_name, pod.metadata.deletion_timestamp)
            for name, pod in _pods(control_plane, namespace).items()
        }
        raise AssertionError(
            f"{err}\npods: {state}\nextender log:\n{_extender.log_tail()}"
        ) from None
    pods = _pods(control_plane, namespace)
    gone = {"low-0", "low-1"} - set(pods)
    assert len(gone) == 1  # one victim: the over-budget pod of the GPU the new pod got
    survivor = ({"low-0", "low-1"} - gone).pop()
    assert {"keep-0", "keep-1", "whole-0", "whole-1", survivor} <= set(pods)
    assert gpu_of("urgent") != gpu_of(survivor)
    assert [error for node in nodes for error in node.errors] == []
