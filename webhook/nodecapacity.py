"""Where the scheduler extender finds GPU capacity when kube-scheduler sends node names only.

With `nodeCacheCapable: true` the scheduler sends names, not Node objects (far smaller
requests in large clusters), so the extender keeps the `gpushare.io/gpu-capacity` annotation
of every node itself. `NodeCapacitySource` is the interface; `StaticNodeCapacity` holds a
fixed table; `KubernetesNodeCapacity` follows the Node objects through a watch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from gpushare.annotations import NODE_GPU_CAPACITY

log = logging.getLogger(__name__)


class NodeCapacitySource(Protocol):
    def capacity_annotation(self, node_name: str) -> str | None:
        """The node's `gpushare.io/gpu-capacity` annotation; None when it has none."""
        ...


class StaticNodeCapacity:
    """A fixed table of annotations by node name."""

    def __init__(self, annotations: Mapping[str, str]) -> None:
        self._annotations = dict(annotations)

    def capacity_annotation(self, node_name: str) -> str | None:
        return self._annotations.get(node_name)


class KubernetesNodeCapacity:
    """Annotations of all nodes, kept current by listing then watching Node objects."""

    def __init__(self, api_client: Any, *, retry_seconds: float = 5.0) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._retry = retry_seconds
        self._annotations: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-capacity", daemon=True)

    def start(self) -> KubernetesNodeCapacity:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def capacity_annotation(self, node_name: str) -> str | None:
        with self._lock:
            return self._annotations.get(node_name)

    def _run(self) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            try:
                listed: Any = self._core.list_node()
                with self._lock:
                    self._annotations = {
                        node.metadata.name: node.metadata.annotations[NODE_GPU_CAPACITY]
                        for node in listed.items
                        if NODE_GPU_CAPACITY in (node.metadata.annotations or {})
                    }
                stream = watch.Watch().stream(
                    self._core.list_node,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=300,
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    self._apply(event["type"], event["object"])
            except Exception as err:  # any API failure: relist after a pause
                log.warning("node capacity watch failed, relisting: %s", err)
                self._stop.wait(self._retry)

    def _apply(self, kind: str, node: Any) -> None:
        name = node.metadata.name
        text = (node.metadata.annotations or {}).get(NODE_GPU_CAPACITY)
        with self._lock:
            if kind == "DELETED" or text is None:
                self._annotations.pop(name, None)
            else:
                self._annotations[name] = text
