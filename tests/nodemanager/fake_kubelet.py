"""A stand-in for kubelet that speaks the real device plugin protocol over unix sockets.

It serves Registration on `<plugin dir>/kubelet.sock` and PodResources on its own socket,
follows ListAndWatch of every registered plugin, and admits pods as kubelet's device manager
does: per container and per resource, GetPreferredAllocation when there is a choice, then
Allocate, remembering which devices are taken. `restart()` behaves like a kubelet restart:
every socket in the plugin directory is deleted and `kubelet.sock` is created anew.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from nodemanager.api import deviceplugin_pb2 as dp
from nodemanager.api import deviceplugin_pb2_grpc as dp_grpc
from nodemanager.api import podresources_pb2 as pr
from nodemanager.api import podresources_pb2_grpc as pr_grpc

CORE = "tencent.com/vcuda-core"
MEMORY = "tencent.com/vcuda-memory"


@dataclass
class Granted:
    """What one container received: merged envs and mounts of both resources."""

    envs: dict[str, str] = field(default_factory=dict)
    mounts: list[tuple[str, str, bool]] = field(default_factory=list)
    devices: dict[str, list[str]] = field(default_factory=dict)


class _Registration(dp_grpc.RegistrationServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self._kubelet = kubelet

    def Register(self, request: dp.RegisterRequest, context: Any) -> dp.Empty:
        self._kubelet._on_register(request)
        return dp.Empty()


class _PodResources(pr_grpc.PodResourcesListerServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self._kubelet = kubelet

    def List(
        self, request: pr.ListPodResourcesRequest, context: Any
    ) -> pr.ListPodResourcesResponse:
        return pr.ListPodResourcesResponse(pod_resources=self._kubelet.pod_resources())


class FakeKubelet:
    def __init__(self, plugin_dir: Path, pod_resources_socket: Path) -> None:
        self.plugin_dir = plugin_dir
        self.pod_resources_socket = pod_resources_socket
        self._lock = threading.Lock()
        self.registrations: list[dp.RegisterRequest] = []
        self.devices: dict[str, dict[str, str]] = {}
        self.updates: dict[str, int] = {}
        self.allocated: dict[str, set[str]] = {CORE: set(), MEMORY: set()}
        self.pod_devices: dict[tuple[str, str, str], dict[str, list[str]]] = {}
        self._registration_server: grpc.Server | None = None
        self._pod_resources_server: grpc.Server | None = None
        self._channels: dict[str, grpc.Channel] = {}
        self._watchers: list[grpc.Channel] = []
        self.rpc_seconds: list[float] = []
        """Wall time of GetPreferredAllocation + Allocate, one entry per resource allocated."""

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> FakeKubelet:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self._serve_registration()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pr_grpc.add_PodResourcesListerServicer_to_server(_PodResources(self), server)
        server.add_insecure_port(f"unix://{self.pod_resources_socket}")
        server.start()
        self._pod_resources_server = server
        return self

    def _serve_registration(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        dp_grpc.add_RegistrationServicer_to_server(_Registration(self), server)
        server.add_insecure_port(f"unix://{self.plugin_dir / 'kubelet.sock'}")
        server.start()
        self._registration_server = server

    def restart(self) -> None:
        """Like a kubelet restart: sockets deleted, kubelet.sock recreated, plugins forgotten."""
        assert self._registration_server is not None
        self._registration_server.stop(grace=None).wait()
        self._close_channels()
        for socket in self.plugin_dir.glob("*.sock"):
            socket.unlink()
        with self._lock:
            self.devices.clear()
        self._serve_registration()

    def stop(self) -> None:
        self._close_channels()
        for server in (self._registration_server, self._pod_resources_server):
            if server is not None:
                server.stop(grace=None).wait()

    def _close_channels(self) -> None:
        for channel in [*self._channels.values(), *self._watchers]:
            channel.close()
        self._channels.clear()
        self._watchers.clear()

    # --- registration and ListAndWatch ---------------------------------------------------
    def _on_register(self, request: dp.RegisterRequest) -> None:
        with self._lock:
            self.registrations.append(request)
        channel = grpc.insecure_channel(f"unix://{self.plugin_dir / request.endpoint}")
        self._watchers.append(channel)
        stream = dp_grpc.DevicePluginStub(channel).ListAndWatch(dp.Empty())
        thread = threading.Thread(
            target=self._follow, args=(request.resource_name, stream), daemon=True
        )
        thread.start()

    def _follow(self, resource: str, stream: Any) -> None:
        try:
            for reply in stream:
                with self._lock:
                    self.devices[resource] = {device.ID: device.health for device in reply.devices}
                    self.updates[resource] = self.updates.get(resource, 0) + 1
        except grpc.RpcError:
            pass  # the plugin went away or the channel was closed

    def registered(self, resource: str) -> int:
        with self._lock:
            return sum(1 for item in self.registrations if item.resource_name == resource)

    def stub(self, resource: str) -> dp_grpc.DevicePluginStub:
        with self._lock:
            endpoint = next(
                item.endpoint
                for item in reversed(self.registrations)
                if item.resource_name == resource
            )
        if resource not in self._channels:
            self._channels[resource] = grpc.insecure_channel(f"unix://{self.plugin_dir / endpoint}")
        return dp_grpc.DevicePluginStub(self._channels[resource])

    def health(self, resource: str) -> dict[str, str]:
        with self._lock:
            return dict(self.devices.get(resource, {}))

    # --- admission -----------------------------------------------------------------------
    def admit(
        self, pod: dict[str, Any], order: Sequence[str] = (CORE, MEMORY)
    ) -> dict[str, Granted]:
        """Allocate every container of `pod` as kubelet would; raises grpc.RpcError on refusal."""
        metadata = pod["metadata"]
        spec = pod["spec"]
        granted: dict[str, Granted] = {}
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            limits = container.get("resources", {}).get("limits", {})
            result = Granted()
            for resource in order:
                needed = int(limits.get(resource, 0))
                if needed:
                    ids, reply = self.allocate(resource, needed)
                    result.devices[resource] = ids
                    result.envs.update(reply.envs)
                    result.mounts.extend(
                        (m.container_path, m.host_path, m.read_only) for m in reply.mounts
                    )
            if result.devices:
                key = (metadata["namespace"], metadata["name"], container["name"])
                with self._lock:
                    self.pod_devices[key] = result.devices
                granted[container["name"]] = result
        return granted

    def allocate(self, resource: str, needed: int) -> tuple[list[str], Any]:
        with self._lock:
            available = sorted(
                device
                for device, health in self.devices.get(resource, {}).items()
                if health == "Healthy" and device not in self.allocated[resource]
            )
        if len(available) < needed:
            raise AssertionError(f"kubelet: {needed} {resource} asked, {len(available)} free")
        stub = self.stub(resource)
        ids = available
        started = time.perf_counter()
        if len(available) > needed:
            reply = stub.GetPreferredAllocation(
                dp.PreferredAllocationRequest(
                    container_requests=[
                        dp.ContainerPreferredAllocationRequest(
                            available_deviceIDs=available, allocation_size=needed
                        )
                    ]
                ),
                timeout=5,
            )
            ids = list(reply.container_responses[0].deviceIDs)
        answer = stub.Allocate(
            dp.AllocateRequest(container_requests=[dp.ContainerAllocateRequest(devices_ids=ids)]),
            timeout=5,
        )
        elapsed = time.perf_counter() - started
        with self._lock:
            self.rpc_seconds.append(elapsed)
            self.allocated[resource].update(ids)
        return ids, answer.container_responses[0]

    def remove_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            for key in [key for key in self.pod_devices if key[:2] == (namespace, name)]:
                for resource, ids in self.pod_devices.pop(key).items():
                    self.allocated[resource].difference_update(ids)

    def pod_resources(self) -> list[pr.PodResources]:
        with self._lock:
            pods: dict[tuple[str, str], pr.PodResources] = {}
            for (namespace, name, container), devices in self.pod_devices.items():
                pod = pods.setdefault(
                    (namespace, name), pr.PodResources(name=name, namespace=namespace)
                )
                pod.containers.append(
                    pr.ContainerResources(
                        name=container,
                        devices=[
                            pr.ContainerDevices(resource_name=resource, device_ids=ids)
                            for resource, ids in devices.items()
                        ],
                    )
                )
            return list(pods.values())
