"""The pods bound to this node, kept in memory by a list-then-watch of the API server.

Allocate asks "which pending pod is this?" (`pods.py`). Listing the node's pending pods over
HTTP on every call put an API server round trip on kubelet's admission path; this cache
answers from memory instead. It lists the node's pods once (field selector
`spec.nodeName=<node>`), then watches from the list's resourceVersion, applying every event.
A watch the server ends (its timeout) is resumed from the last resourceVersion seen; a watch
that is refused with 410 Gone (that version is no longer kept), a broken connection or an
event that cannot be read makes the cache *unsynced* until a new list succeeds (retried with
backoff). While unsynced, `pending_containers()` returns None and the node manager asks the
API server directly, as without the cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from nodemanager import pods
from nodemanager.kube import GoneError, KubernetesError, PodWatchSource, WatchStream

log = logging.getLogger(__name__)

PodKey = tuple[str, str]


def _key(pod: dict[str, Any]) -> PodKey:
    metadata = pod.get("metadata")
    if not isinstance(metadata, dict) or not metadata.get("name"):
        raise KubernetesError(f"a pod without metadata.name: {str(pod)[:200]}")
    return (str(metadata.get("namespace", "")), str(metadata["name"]))


def _version(item: dict[str, Any]) -> str:
    metadata = item.get("metadata")
    return str(metadata.get("resourceVersion") or "") if isinstance(metadata, dict) else ""


class PodWatch:
    """An informer-style cache of the pods bound to one node. Thread-safe."""

    def __init__(
        self,
        source: PodWatchSource,
        node_name: str,
        *,
        watch_timeout_seconds: int = 300,
        retry_seconds: float = 1.0,
        max_retry_seconds: float = 30.0,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._source = source
        self._on_change = on_change
        """Called (outside the lock) after every list and every pod event applied."""
        self._node = node_name
        self._watch_timeout = watch_timeout_seconds
        self._retry = retry_seconds
        self._max_retry = max_retry_seconds
        self._lock = threading.Lock()
        self._pods: dict[PodKey, dict[str, Any]] = {}
        self._version = ""
        self._synced = False
        self._pending: list[pods.ContainerRequest] | None = None
        self._stream: WatchStream | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.relists = 0
        """How many lists were made (the first one included); tests and logs read it."""

    # --- what the node manager reads ---------------------------------------------------------
    def pending_containers(self) -> list[pods.ContainerRequest] | None:
        """Containers of this node's pending pods asking for vcuda resources, in admission
        order (`pods.pending_containers`); None while the cache is not in sync."""
        with self._lock:
            if not self._synced:
                return None
            if self._pending is None:
                self._pending = pods.pending_containers(self._pods.values(), self._node)
            return self._pending

    @property
    def synced(self) -> bool:
        with self._lock:
            return self._synced

    @property
    def resource_version(self) -> str:
        """resourceVersion of the last list or event applied ("" before the first list)."""
        with self._lock:
            return self._version

    @property
    def running(self) -> bool:
        """Whether the list-and-watch thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def pod_names(self) -> set[PodKey]:
        with self._lock:
            return set(self._pods)

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A pod of this node as last seen (Kubernetes JSON); None when unknown or unsynced."""
        with self._lock:
            return self._pods.get((namespace, name)) if self._synced else None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> PodWatch:
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- list and watch ----------------------------------------------------------------------
    def _run(self) -> None:
        delay = self._retry
        while not self._stop.is_set():
            try:
                if not self.synced:
                    self._relist()
                started = time.monotonic()
                self._watch()
                delay = self._retry
                if time.monotonic() - started < self._retry:
                    # a server that ends watches at once: resume, but not in a tight loop
                    self._stop.wait(self._retry)
            except GoneError as err:
                log.info("pod cache of node %s: %s; listing again", self._node, err)
                self._unsync()
            except Exception as err:  # whatever failed, the cache must not claim to be in sync
                if self._stop.is_set():
                    break
                if not isinstance(err, KubernetesError):
                    log.exception("pod cache of node %s failed unexpectedly", self._node)
                log.warning(
                    "pod cache of node %s out of sync, Allocate asks the API server meanwhile: "
                    "%s (retrying in %.0f s)",
                    self._node,
                    err,
                    delay,
                )
                self._unsync()
                self._stop.wait(delay)
                delay = min(delay * 2, self._max_retry)
        self._unsync()  # stopped: callers ask the API server

    def _unsync(self) -> None:
        with self._lock:
            self._synced = False
            self._pending = None

    def _relist(self) -> None:
        items, version = self._source.list_node_pods(self._node)
        listed = {_key(pod): pod for pod in items}
        with self._lock:
            self._pods = listed
            self._version = version
            self._pending = None
            self._synced = True
            self.relists += 1
        self._on_change()
        log.debug("pod cache of node %s: %d pods at version %s", self._node, len(listed), version)

    def _watch(self) -> None:
        stream = self._source.watch_node_pods(
            self._node, self.resource_version, self._watch_timeout
        )
        with self._lock:
            self._stream = stream
        try:
            if self._stop.is_set():
                return
            for event in stream:
                self._apply(event)
        finally:
            with self._lock:
                self._stream = None
            stream.close()

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        item: dict[str, Any] = event["object"]
        if kind == "ERROR":
            code = item.get("code")
            message = f"watch error {code}: {item.get('message', '')}"
            if code == 410:
                raise GoneError(message)
            raise KubernetesError(message)
        version = _version(item)
        if kind == "BOOKMARK":
            if version:
                with self._lock:
                    self._version = version
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            raise KubernetesError(f"watch event of unknown type {kind!r}")
        key = _key(item)
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(key, None)
            else:
                self._pods[key] = item
            if version:
                self._version = version
            self._pending = None
        self._on_change()
