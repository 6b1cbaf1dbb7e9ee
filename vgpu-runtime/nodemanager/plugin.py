"""Device plugin gRPC servers (one per resource) and their registration with kubelet.

`DevicePluginService` translates gRPC into `NodeManager` calls and its errors into status
codes. `PluginRunner` serves both resources on unix sockets in kubelet's device plugin
directory, registers them, and watches kubelet's socket: when kubelet restarts it deletes
the plugin sockets and recreates `kubelet.sock`, so the runner serves again and re-registers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from nodemanager.api import deviceplugin_pb2 as api
from nodemanager.api import deviceplugin_pb2_grpc as api_grpc
from nodemanager.devices import Kind
from nodemanager.manager import DoesNotFitError, NodeError, NodeManager, RequestError

log = logging.getLogger(__name__)

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
MAX_WATCH_STREAMS = 4
"""Open ListAndWatch streams per resource: kubelet keeps one. Each holds a thread of the
server for as long as it is open, so more are refused (RESOURCE_EXHAUSTED) at once."""
CALL_THREADS = 4
"""Threads for the short calls (Allocate, GetPreferredAllocation, ...), which streams can
never take: the pool has MAX_WATCH_STREAMS + CALL_THREADS threads."""


def socket_name(kind: Kind) -> str:
    """File name of the plugin socket of `kind` in the device plugin directory."""
    return f"gpushare-vcuda-{'core' if kind is Kind.CORE else 'memory'}.sock"


class DevicePluginService(api_grpc.DevicePluginServicer):
    """The DevicePlugin service for one resource."""

    def __init__(self, manager: NodeManager, kind: Kind, stopping: threading.Event) -> None:
        self._manager = manager
        self._kind = kind
        self._stopping = stopping
        self._watch_slots = threading.BoundedSemaphore(MAX_WATCH_STREAMS)

    def GetDevicePluginOptions(self, request: api.Empty, context: Any) -> api.DevicePluginOptions:
        return api.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    def ListAndWatch(self, request: api.Empty, context: Any) -> Iterator[api.ListAndWatchResponse]:
        if not self._watch_slots.acquire(blocking=False):
            log.warning("ListAndWatch refused: %d streams are open already", MAX_WATCH_STREAMS)
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"at most {MAX_WATCH_STREAMS} ListAndWatch streams at once (kubelet needs one)",
            )
        release = self._slot_release()
        # The slot is free as soon as the stream ends: when the peer cancels, at once, not
        # when the loop below next wakes.
        if not context.add_callback(release):
            release()
        try:
            yield from self._watch(context)
        finally:
            release()

    def _slot_release(self) -> Callable[[], None]:
        """Gives one watch slot back, once however often it is called."""
        lock = threading.Lock()
        held = [True]

        def release() -> None:
            with lock:
                if held[0]:
                    held[0] = False
                    self._watch_slots.release()

        return release

    def _watch(self, context: Any) -> Iterator[api.ListAndWatchResponse]:
        manager = self._manager
        sent = -1
        while context.is_active() and not self._stopping.is_set():
            version = self._wait_for_change(sent)
            if version == sent or self._stopping.is_set():
                continue
            sent = version
            yield api.ListAndWatchResponse(
                devices=[
                    api.Device(ID=device, health=HEALTHY if healthy else UNHEALTHY)
                    for device, healthy in manager.devices(self._kind)
                ]
            )

    def _wait_for_change(self, sent: int) -> int:
        """The device version once it differs from `sent` (or after a second)."""
        manager = self._manager
        with manager.changed:
            manager.changed.wait_for(
                lambda: manager.device_version != sent or self._stopping.is_set(), timeout=1.0
            )
            return manager.device_version

    def GetPreferredAllocation(
        self, request: api.PreferredAllocationRequest, context: Any
    ) -> api.PreferredAllocationResponse:
        responses = []
        for container in request.container_requests:
            try:
                chosen = self._manager.preferred(
                    self._kind,
                    list(container.available_deviceIDs),
                    list(container.must_include_deviceIDs),
                    container.allocation_size,
                )
            except (RequestError, DoesNotFitError, NodeError) as err:
                _abort(context, err, "GetPreferredAllocation")
            responses.append(api.ContainerPreferredAllocationResponse(deviceIDs=chosen))
        return api.PreferredAllocationResponse(container_responses=responses)

    def Allocate(self, request: api.AllocateRequest, context: Any) -> api.AllocateResponse:
        responses = []
        done: list[str] = []
        for container in request.container_requests:
            try:
                grant = self._manager.allocate(self._kind, list(container.devices_ids))
            except (RequestError, DoesNotFitError, NodeError) as err:
                for allocation_id in done:
                    self._manager.release(allocation_id)
                _abort(context, err, "Allocate")
            done.append(grant.allocation_id)
            responses.append(
                api.ContainerAllocateResponse(
                    envs=grant.envs,
                    mounts=[
                        api.Mount(
                            container_path=mount.container_path,
                            host_path=mount.host_path,
                            read_only=mount.read_only,
                        )
                        for mount in grant.mounts
                    ],
                )
            )
        return api.AllocateResponse(container_responses=responses)

    def PreStartContainer(
        self, request: api.PreStartContainerRequest, context: Any
    ) -> api.PreStartContainerResponse:
        return api.PreStartContainerResponse()


def _abort(context: Any, err: Exception, method: str) -> Any:
    code = grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(err, DoesNotFitError):
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
    elif isinstance(err, NodeError):
        code = grpc.StatusCode.FAILED_PRECONDITION
    log.warning("%s refused: %s", method, err)
    context.abort(code, str(err))


class PluginRunner:
    """Serves both resources, registers them with kubelet and re-registers after restarts."""

    def __init__(
        self,
        manager: NodeManager,
        plugin_dir: Path,
        *,
        watch_interval_seconds: float = 1.0,
        register_timeout_seconds: float = 5.0,
    ) -> None:
        self._manager = manager
        self._dir = plugin_dir
        self._interval = watch_interval_seconds
        self._register_timeout = register_timeout_seconds
        self._servers: list[tuple[grpc.Server, threading.Event]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kubelet_identity: tuple[int, int] | None = None
        self.registrations = 0
        """How many times both resources were registered (tests and metrics read it)."""

    @property
    def kubelet_socket(self) -> Path:
        return self._dir / KUBELET_SOCKET

    def start(self) -> None:
        """Serve and register in the background; returns at once."""
        self._thread = threading.Thread(target=self._run, name="device-plugin", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._stop_servers()

    def _run(self) -> None:
        while not self._stop.is_set():
            identity = _identity(self.kubelet_socket)
            sockets_present = all((self._dir / socket_name(kind)).exists() for kind in Kind)
            stale = identity != self._kubelet_identity or not sockets_present
            if identity is not None and stale and self._serve_and_register():
                self._kubelet_identity = identity
            self._stop.wait(self._interval)

    def _serve_and_register(self) -> bool:
        self._stop_servers()
        for kind in Kind:
            self._servers.append(self._serve(kind))
        try:
            for kind in Kind:
                self._register(kind)
        except grpc.RpcError as err:
            log.warning("registration with kubelet failed, will retry: %s", err)
            return False
        self.registrations += 1
        log.info("registered %s with kubelet", ", ".join(kind.resource_name for kind in Kind))
        return True

    def _serve(self, kind: Kind) -> tuple[grpc.Server, threading.Event]:
        path = self._dir / socket_name(kind)
        path.unlink(missing_ok=True)
        stopping = threading.Event()
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=MAX_WATCH_STREAMS + CALL_THREADS, thread_name_prefix=kind
            )
        )
        api_grpc.add_DevicePluginServicer_to_server(
            DevicePluginService(self._manager, kind, stopping), server
        )
        server.add_insecure_port(f"unix://{path}")
        server.start()
        return server, stopping

    def _register(self, kind: Kind) -> None:
        with grpc.insecure_channel(f"unix://{self.kubelet_socket}") as channel:
            api_grpc.RegistrationStub(channel).Register(
                api.RegisterRequest(
                    version=API_VERSION,
                    endpoint=socket_name(kind),
                    resource_name=kind.resource_name,
                    options=api.DevicePluginOptions(get_preferred_allocation_available=True),
                ),
                timeout=self._register_timeout,
            )

    def _stop_servers(self) -> None:
        for server, stopping in self._servers:
            stopping.set()
            with self._manager.changed:
                self._manager.changed.notify_all()
            server.stop(grace=1).wait(5)
        self._servers.clear()


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, change time) of the socket; a restarted kubelet recreates it, changing both."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_ctime_ns)
