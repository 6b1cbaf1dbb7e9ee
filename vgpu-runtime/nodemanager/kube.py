"""Adapters to the Kubernetes API and to kubelet's PodResources API.

`PodSource`, `NodePublisher` and `PodAnnotator` are what the node manager needs from the API
server; `KubernetesApi` implements them with the `kubernetes` client (raw JSON, no model
deserialisation: it is on the Allocate path). `PodResourcesSource` is what it needs from
kubelet; `KubeletPodResources` implements it over gRPC on kubelet's unix socket.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class KubernetesError(Exception):
    """The API server or kubelet could not be asked."""


class PodSource(Protocol):
    def pending_pods(self, node_name: str) -> list[dict[str, Any]]:
        """Pods bound to `node_name` whose phase is Pending (Kubernetes JSON)."""
        ...


class PodWatchSource(Protocol):
    """What the node's pod cache needs: a list, then a watch from the list's version."""

    def list_node_pods(self, node_name: str) -> tuple[list[dict[str, Any]], str]:
        """Every pod bound to `node_name` (Kubernetes JSON) and the list's resourceVersion."""
        ...

    def watch_node_pods(
        self, node_name: str, resource_version: str, timeout_seconds: int
    ) -> WatchStream:
        """Watch events (`{"type": ..., "object": ...}`) of the pods bound to `node_name`
        after `resource_version`, until the server ends the watch or `close()` is called."""
        ...


class WatchStream(Protocol):
    def __iter__(self) -> Iterator[dict[str, Any]]: ...

    def close(self) -> None: ...


class GoneError(KubernetesError):
    """The API server no longer has the requested resourceVersion (HTTP 410): list again."""


class NodePublisher(Protocol):
    def annotate_node(self, node_name: str, annotations: Mapping[str, str]) -> None:
        """Merge `annotations` into the node's annotations."""
        ...


class PodAnnotator(Protocol):
    def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """Merge `annotations` into the pod's annotations."""
        ...


@dataclass(frozen=True)
class ContainerDevices:
    """What kubelet's PodResources reports for one container and one resource."""

    namespace: str
    pod: str
    container: str
    resource_name: str
    device_ids: tuple[str, ...]


class PodResourcesSource(Protocol):
    def list_devices(self) -> Sequence[ContainerDevices]:
        """Devices held by the containers of every active pod of this node."""
        ...


class KubernetesApi:
    """`PodSource` and `NodePublisher` over the Kubernetes API."""

    def __init__(self, api_client: Any, *, timeout_seconds: float = 5.0) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._timeout = timeout_seconds

    @classmethod
    def from_environment(cls, kubeconfig: str | None) -> KubernetesApi:
        """In-cluster configuration, or the given kubeconfig file."""
        from kubernetes import client, config

        try:
            if kubeconfig:
                api_client = config.new_client_from_config(config_file=kubeconfig)
            else:
                config.load_incluster_config()
                api_client = client.ApiClient()
        except config.ConfigException as err:
            raise KubernetesError(f"no Kubernetes API configuration: {err}") from err
        return cls(api_client)

    @classmethod
    def for_url(cls, url: str) -> KubernetesApi:
        """A client for an API server at `url` without authentication (local use, tests)."""
        from kubernetes import client

        configuration = client.Configuration(host=url)
        return cls(client.ApiClient(configuration))

    def pending_pods(self, node_name: str) -> list[dict[str, Any]]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response: Any = self._core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node_name},status.phase=Pending",
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            items: list[dict[str, Any]] = json.loads(response.data)["items"] or []
        except (ApiException, HTTPError, ValueError, KeyError) as err:
            raise KubernetesError(f"cannot list pending pods of node {node_name}: {err}") from err
        return items

    def list_node_pods(self, node_name: str) -> tuple[list[dict[str, Any]], str]:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response: Any = self._core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node_name}",
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            document = json.loads(response.data)
            items: list[dict[str, Any]] = document["items"] or []
            version = str((document.get("metadata") or {}).get("resourceVersion") or "")
        except (ApiException, HTTPError, ValueError, KeyError, AttributeError) as err:
            raise KubernetesError(f"cannot list the pods of node {node_name}: {err}") from err
        if not version:
            raise KubernetesError(f"the pod list of node {node_name} has no resourceVersion")
        return items, version

    def watch_node_pods(
        self, node_name: str, resource_version: str, timeout_seconds: int
    ) -> WatchStream:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            response: Any = self._core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={node_name}",
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                watch=True,
                _preload_content=False,
                # a silent connection is noticed within a minute of the server's own timeout
                _request_timeout=(self._timeout, timeout_seconds + 60),
            )
        except ApiException as err:
            if err.status == 410:
                raise GoneError(f"watch of the pods of node {node_name}: {err.reason}") from err
            raise KubernetesError(f"cannot watch the pods of node {node_name}: {err}") from err
        except HTTPError as err:
            raise KubernetesError(f"cannot watch the pods of node {node_name}: {err}") from err
        return _JsonLines(response, f"watch of the pods of node {node_name}")

    def annotate_node(self, node_name: str, annotations: Mapping[str, str]) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self._core.patch_node(
                node_name,
                {"metadata": {"annotations": dict(annotations)}},
                _content_type="application/merge-patch+json",
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        except (ApiException, HTTPError) as err:
            raise KubernetesError(f"cannot annotate node {node_name}: {err}") from err

    def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self._core.patch_namespaced_pod(
                name,
                namespace,
                {"metadata": {"annotations": dict(annotations)}},
                _content_type="application/merge-patch+json",
                _preload_content=False,
                _request_timeout=self._timeout,
            )
        except (ApiException, HTTPError) as err:
            raise KubernetesError(f"cannot annotate pod {namespace}/{name}: {err}") from err


class _JsonLines:
    """The events of a watch response: one JSON object per line, decoded as they arrive."""

    def __init__(self, response: Any, what: str) -> None:
        self._response = response
        self._what = what
        self._reading = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from urllib3.exceptions import HTTPError

        buffer = b""
        self._reading = True
        try:
            for chunk in self._response.stream(amt=None, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield _event(line, self._what)
        except (HTTPError, OSError, ValueError) as err:
            raise KubernetesError(f"{self._what} broke off: {err}") from err
        finally:
            self._reading = False
            self._release()
        if buffer.strip():
            yield _event(buffer, self._what)

    def close(self) -> None:
        """End the stream, also from another thread: a read blocked on it sees its end (the
        reading thread then releases the connection)."""
        with contextlib.suppress(ValueError, RuntimeError, OSError):
            self._response.shutdown()  # fails when already closed or released
        if not self._reading:
            self._release()

    def _release(self) -> None:
        self._response.close()
        self._response.release_conn()


def _event(line: bytes, what: str) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError as err:
        raise KubernetesError(f"{what}: an event is not JSON: {err}") from err
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise KubernetesError(f"{what}: an event without an object: {line[:200]!r}")
    return event


class KubeletPodResources:
    """`PodResourcesSource` over kubelet's PodResources v1 gRPC API on a unix socket."""

    def __init__(self, socket_path: str, *, timeout_seconds: float = 5.0) -> None:
        self._target = f"unix://{socket_path}"
        self._timeout = timeout_seconds

    def list_devices(self) -> Sequence[ContainerDevices]:
        import grpc

        from nodemanager.api import podresources_pb2, podresources_pb2_grpc

        try:
            with grpc.insecure_channel(self._target) as channel:
                stub = podresources_pb2_grpc.PodResourcesListerStub(channel)
                reply = stub.List(podresources_pb2.ListPodResourcesRequest(), timeout=self._timeout)
        except grpc.RpcError as err:
            # One line with the status, not the multi-line repr of the gRPC error.
            code = err.code() if isinstance(err, grpc.Call) else None
            details = err.details() if isinstance(err, grpc.Call) else str(err)
            raise KubernetesError(
                f"kubelet PodResources List on {self._target} failed:"
                f" {code.name if code is not None else 'error'}: {details}"
            ) from err
        return [
            ContainerDevices(
                namespace=pod.namespace,
                pod=pod.name,
                container=container.name,
                resource_name=devices.resource_name,
                device_ids=tuple(devices.device_ids),
            )
            for pod in reply.pod_resources
            for container in pod.containers
            for devices in container.devices
        ]
