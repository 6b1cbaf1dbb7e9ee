"""Adapters to the Kubernetes API: the watches that feed the view, and the binder.

`ClusterWatch` lists then watches Nodes and Pods (raw JSON, no model decoding) and applies
every event to a `ClusterView`; a watch that ends is resumed from its last resourceVersion,
one refused with 410 Gone or broken is listed again (retried with backoff). `ready` is True
once both lists have been applied. `KubernetesBinder` creates the Binding, which carries the
assignment annotation onto the pod in the same write.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import orjson

from extender.view import ClusterView
from gpushare.assignment import NODE_GPU_INVENTORY, AssignmentError, Inventory, parse_inventory

log = logging.getLogger(__name__)


class KubernetesError(Exception):
    """The API server could not be asked, or refused."""


class Binder(Protocol):
    def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]
    ) -> None:
        """Bind the pod to `node` with `annotations` merged into it; KubernetesError if not."""
        ...

    def evict(self, namespace: str, name: str, uid: str) -> None:
        """Evict the pod (Eviction API: PodDisruptionBudgets apply); KubernetesError if not."""
        ...


def node_inventory(node: dict[str, Any]) -> Inventory | None:
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(NODE_GPU_INVENTORY)
    if text is None:
        return None
    try:
        return parse_inventory(text)
    except AssignmentError as err:
        log.warning("node %s: ignoring its GPU inventory: %s", node["metadata"].get("name"), err)
        return None


class KubernetesBinder:
    """Binds with one call: the API server copies a Binding's annotations onto the pod as it
    sets spec.nodeName, so the assignment and the binding land together or not at all."""

    def __init__(self, api_client: Any, *, timeout_seconds: float = 10.0) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._timeout = timeout_seconds

    def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]
    ) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        body: Any = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid,
                "annotations": annotations,
            },
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        try:
            self._core.create_namespaced_pod_binding(
                name, namespace, body, _preload_content=False, _request_timeout=self._timeout
            )
        except (ApiException, HTTPError) as err:
            raise KubernetesError(
                f"cannot bind pod {namespace}/{name} to {node}: {_reason(err)}"
            ) from err

    def evict(self, namespace: str, name: str, uid: str) -> None:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        body: Any = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
            "deleteOptions": {"preconditions": {"uid": uid}},
        }
        try:
            self._core.create_namespaced_pod_eviction(
                name, namespace, body, _preload_content=False, _request_timeout=self._timeout
            )
        except (ApiException, HTTPError) as err:
            raise KubernetesError(f"cannot evict pod {namespace}/{name}: {_reason(err)}") from err


def _reason(err: Exception) -> str:
    status = getattr(err, "status", None)
    body = getattr(err, "body", None)
    if status is not None:
        message = ""
        with contextlib.suppress(ValueError, TypeError):
            message = json.loads(body or "{}").get("message", "")
        return f"HTTP {status} {message}".strip()
    return str(err)


class _Gone(Exception):
    pass


class ClusterWatch:
    """Keeps a ClusterView in step with the cluster's Nodes and Pods."""

    def __init__(
        self,
        api_client: Any,
        view: ClusterView,
        *,
        watch_timeout_seconds: int = 300,
        retry_seconds: float = 1.0,
        max_retry_seconds: float = 30.0,
    ) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._view = view
        self._watch_timeout = watch_timeout_seconds
        self._retry = retry_seconds
        self._max_retry = max_retry_seconds
        self._stop = threading.Event()
        self._synced = {"nodes": threading.Event(), "pods": threading.Event()}
        self._threads: list[threading.Thread] = []
        self._responses: set[Any] = set()
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return all(event.is_set() for event in self._synced.values())

    def wait_ready(self, timeout_seconds: float) -> bool:
        return all(event.wait(timeout_seconds) for event in self._synced.values())

    def start(self) -> ClusterWatch:
        for kind, lister, apply in (
            ("nodes", self._core.list_node, self._apply_node),
            ("pods", self._core.list_pod_for_all_namespaces, self._apply_pod),
        ):
            thread = threading.Thread(
                target=self._run, args=(kind, lister, apply), name=f"watch-{kind}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            responses = list(self._responses)
        for response in responses:
            with contextlib.suppress(Exception):
                response.shutdown()
        for thread in self._threads:
            thread.join(timeout=10)

    def _apply_node(self, kind: str, node: dict[str, Any]) -> None:
        name = node["metadata"]["name"]
        self._view.set_node(name, None if kind == "DELETED" else node_inventory(node))

    def _apply_pod(self, kind: str, pod: dict[str, Any]) -> None:
        if kind == "DELETED":
            self._view.remove_pod(str(pod["metadata"].get("uid", "")))
        else:
            self._view.apply_pod(pod)

    def _relist(self, kind: str, lister: Callable[..., Any]) -> str:
        response = lister(_preload_content=False, _request_timeout=60)
        document = orjson.loads(response.data)
        items = document.get("items") or []
        if kind == "nodes":
            inventories = {}
            for node in items:
                inventory = node_inventory(node)
                if inventory is not None:
                    inventories[node["metadata"]["name"]] = inventory
            self._view.replace_nodes(inventories)
        else:
            self._view.replace_pods(items)
        self._synced[kind].set()
        return str((document.get("metadata") or {}).get("resourceVersion") or "")

    def _run(
        self, kind: str, lister: Callable[..., Any], apply: Callable[[str, dict[str, Any]], None]
    ) -> None:
        delay = self._retry
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._relist(kind, lister)
                version = self._watch(lister, version, apply)
                delay = self._retry
            except _Gone:
                version = ""
            except Exception as err:  # any failure: list again after a pause
                if self._stop.is_set():
                    return
                log.warning("watch of %s failed, listing again in %.0f s: %s", kind, delay, err)
                version = ""
                self._stop.wait(delay)
                delay = min(delay * 2, self._max_retry)

    def _watch(
        self, lister: Callable[..., Any], version: str, apply: Callable[[str, dict[str, Any]], None]
    ) -> str:
        from kubernetes.client.exceptions import ApiException

        try:
            response = lister(
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout,
                _preload_content=False,
                _request_timeout=(10, self._watch_timeout + 60),
            )
        except ApiException as err:
            if err.status == 410:
                raise _Gone() from err
            raise
        with self._lock:
            self._responses.add(response)
        try:
            for event in _events(response):
                if self._stop.is_set():
                    break
                kind = event.get("type")
                item = event.get("object") or {}
                if kind == "ERROR":
                    if item.get("code") == 410:
                        raise _Gone()
                    raise KubernetesError(f"watch error: {item.get('message', '')}")
                new_version = (item.get("metadata") or {}).get("resourceVersion")
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    apply(kind, item)
                if new_version:
                    version = str(new_version)
        finally:
            with self._lock:
                self._responses.discard(response)
            with contextlib.suppress(Exception):
                response.release_conn()
        return version


def _events(response: Any) -> Iterator[dict[str, Any]]:
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=True):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield orjson.loads(line)
    if buffer.strip():
        yield orjson.loads(buffer)
