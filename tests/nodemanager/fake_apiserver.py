"""A small in-process Kubernetes API server over HTTP: just what the node manager uses.

GET /api/v1/pods (fieldSelector spec.nodeName and status.phase; `watch=true` streams events
from a resourceVersion, with 410 Gone for versions older than the last `compact()`),
GET/PATCH /api/v1/nodes/NAME (JSON merge patch). The real `kubernetes` client talks to it;
nothing is patched.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from gpushare.assignment import POD_GPU_ASSIGNMENT, Assignment, Share, format_assignment


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeApiServer:
    def __init__(self) -> None:
        self.pods: list[dict[str, Any]] = []
        self.nodes: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_with: int | None = None
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._pod_events = threading.Condition(self._lock)
        self._version = 1
        self._events: list[tuple[int, dict[str, Any] | None, dict[str, Any] | None, bytes]] = []
        self._compacted = 0
        self._watch_generation = 0
        self._gone_generation = 0
        self._stopping = False
        self.open_watches = 0
        self.watch_gate = threading.Event()
        """Cleared: new pod watches wait (up to 10 s) before they are answered."""
        self.watch_gate.set()
        handler = self._handler()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._pod_events.notify_all()
        self.watch_gate.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._version)

    def _record(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """Called with the lock held: a pod changed; watchers see the event."""
        self._version += 1
        if new is not None:
            new["metadata"]["resourceVersion"] = str(self._version)
            new = copy.deepcopy(new)
        elif old is not None:
            old["metadata"]["resourceVersion"] = str(self._version)  # the deletion's version
        self._events.append((self._version, old, new, b""))
        self._pod_events.notify_all()

    def send_raw_watch_line(self, line: bytes) -> None:
        """Send `line` as it is to every pod watch (a malformed event)."""
        with self._lock:
            self._version += 1
            self._events.append((self._version, None, None, line + b"\n"))
            self._pod_events.notify_all()

    def add_pod(self, pod: dict[str, Any]) -> None:
        with self._lock:
            self.pods.append(pod)
            self._record(None, pod)

    def set_phase(self, name: str, phase: str) -> None:
        with self._lock:
            for pod in self.pods:
                if pod["metadata"]["name"] == name:
                    old = copy.deepcopy(pod)
                    pod.setdefault("status", {})["phase"] = phase
                    self._record(old, pod)

    def annotate_pod(self, name: str, annotations: dict[str, str]) -> None:
        """Merge `annotations` into the pod's (as `kubectl annotate --overwrite` does)."""
        with self._lock:
            for pod in self.pods:
                if pod["metadata"]["name"] == name:
                    old = copy.deepcopy(pod)
                    pod["metadata"].setdefault("annotations", {}).update(annotations)
                    self._record(old, pod)

    def delete_pod(self, name: str) -> None:
        with self._lock:
            for pod in [pod for pod in self.pods if pod["metadata"]["name"] == name]:
                self.pods.remove(pod)
                self._record(copy.deepcopy(pod), None)

    def compact(self) -> None:
        """Forget the event history: watches from an older resourceVersion get 410 Gone."""
        with self._lock:
            self._compacted = self._version
            self._events.clear()

    def close_watches(self) -> None:
        """End every open pod watch, as a server timeout or a dropped connection does."""
        with self._lock:
            self._watch_generation += 1
            self._pod_events.notify_all()

    def expire_watches(self) -> None:
        """Compact, and end every open pod watch with an ERROR event 410 Gone."""
        with self._lock:
            self._compacted = self._version
            self._events.clear()
            self._gone_generation += 1
            self._pod_events.notify_all()

    def node_annotations(self, name: str) -> dict[str, str]:
        with self._lock:
            node = self.nodes.get(name, {})
            return dict(node.get("metadata", {}).get("annotations", {}))

    def _list_pods(self, query: dict[str, list[str]]) -> dict[str, Any]:
        selectors = _selectors(query)
        with self._lock:
            items = [copy.deepcopy(pod) for pod in self.pods if _selected(pod, selectors)]
            version = str(self._version)
        return {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    def _watch_pods(self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> None:
        """Stream the pod events after `resourceVersion` as JSON lines in HTTP/1.1 chunks, as
        the API server does, until timeoutSeconds or `close_watches()`."""
        selectors = _selectors(query)
        since = int((query.get("resourceVersion") or ["0"])[0] or 0)
        deadline = time.monotonic() + float((query.get("timeoutSeconds") or ["30"])[0])
        self.watch_gate.wait(10)
        handler.protocol_version = "HTTP/1.1"
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.send_header("Connection", "close")
        handler.end_headers()

        def send(data: bytes) -> None:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            handler.wfile.flush()

        with self._lock:
            generation, gone = self._watch_generation, self._gone_generation
            too_old = since < self._compacted
            self.open_watches += 1
        try:
            if too_old:
                send(_gone_event(since))
                return
            cursor = since
            gone_line = b""
            while True:
                with self._lock:
                    self._pod_events.wait_for(
                        lambda cursor=cursor: (
                            self._version > cursor
                            or self._stopping
                            or (self._watch_generation, self._gone_generation) != (generation, gone)
                        ),
                        timeout=max(0.0, deadline - time.monotonic()),
                    )
                    if self._gone_generation != gone:
                        gone_line = _gone_event(cursor)
                        break
                    if self._stopping or self._watch_generation != generation:
                        return
                    events = [event for event in self._events if event[0] > cursor]
                    cursor = max(cursor, self._version)
                if not events and time.monotonic() >= deadline:
                    return
                lines = [raw or _watch_event(old, new, selectors) for _, old, new, raw in events]
                data = b"".join(line for line in lines if line is not None)
                if data:
                    send(data)
            if gone_line:
                send(gone_line)
        except OSError:
            pass  # the client went away
        finally:
            with self._lock:
                self.open_watches -= 1
            with contextlib.suppress(OSError):  # the last chunk; the client may be gone
                handler.wfile.write(b"0\r\n\r\n")

    def _patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            for pod in self.pods:
                metadata = pod["metadata"]
                if (metadata["namespace"], metadata["name"]) == (namespace, name):
                    old = copy.deepcopy(pod)
                    _merge(pod, patch)
                    self._record(old, pod)
                    return copy.deepcopy(pod)
        return None

    def _patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            node = self.nodes.setdefault(
                name, {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name}}
            )
            _merge(node, patch)
            return copy.deepcopy(node)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _failing(self) -> bool:
                if fake.fail_with is None:
                    return False
                self._reply(fake.fail_with, {"kind": "Status", "message": "unavailable"})
                return True

            def do_GET(self) -> None:
                url = urlparse(self.path)
                fake.requests.append(("GET", url.path))
                if self._failing():
                    return
                query = parse_qs(url.query)
                if url.path == "/api/v1/pods" and query.get("watch") == ["true"]:
                    fake._watch_pods(self, query)
                elif url.path == "/api/v1/pods":
                    self._reply(200, fake._list_pods(query))
                elif url.path == "/api/v1/nodes" and query.get("watch") == ["true"]:
                    # a watch that sees no events and ends soon: the client lists again
                    fake._changed.wait(0.1)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif url.path == "/api/v1/nodes":
                    with fake._lock:
                        items = [copy.deepcopy(node) for node in fake.nodes.values()]
                    self._reply(
                        200,
                        {
                            "kind": "NodeList",
                            "apiVersion": "v1",
                            "metadata": {"resourceVersion": "1"},
                            "items": items,
                        },
                    )
                elif url.path.startswith("/api/v1/nodes/"):
                    name = url.path.rsplit("/", 1)[1]
                    node = fake.nodes.get(name)
                    if node is None:
                        self._reply(404, {"kind": "Status", "message": "not found"})
                    else:
                        self._reply(200, node)
                else:
                    self._reply(404, {"kind": "Status", "message": f"no route {url.path}"})

            def do_PATCH(self) -> None:
                url = urlparse(self.path)
                fake.requests.append(("PATCH", url.path))
                if self._failing():
                    return
                length = int(self.headers.get("Content-Length", "0"))
                patch = json.loads(self.rfile.read(length))
                kind = self.headers.get("Content-Type", "")
                if "merge-patch" not in kind:
                    self._reply(415, {"kind": "Status", "message": f"unsupported {kind}"})
                    return
                parts = url.path.split("/")
                if url.path.startswith("/api/v1/namespaces/") and parts[5:6] == ["pods"]:
                    found = fake._patch_pod(parts[4], parts[6], patch)
                    if found is None:
                        self._reply(404, {"kind": "Status", "message": "pod not found"})
                    else:
                        self._reply(200, found)
                    return
                if not url.path.startswith("/api/v1/nodes/"):
                    self._reply(404, {"kind": "Status", "message": "not found"})
                    return
                self._reply(200, fake._patch_node(url.path.rsplit("/", 1)[1], patch))

        return Handler


def _selectors(query: dict[str, list[str]]) -> dict[str, str]:
    selectors = {}
    for clause in ",".join(query.get("fieldSelector", [])).split(","):
        if "=" in clause:
            key, value = clause.split("=", 1)
            selectors[key] = value
    return selectors


def _selected(pod: dict[str, Any] | None, selectors: dict[str, str]) -> bool:
    if pod is None:
        return False
    fields = {
        "spec.nodeName": pod.get("spec", {}).get("nodeName", ""),
        "status.phase": pod.get("status", {}).get("phase", ""),
    }
    return all(fields.get(key) == value for key, value in selectors.items())


def _watch_event(
    old: dict[str, Any] | None, new: dict[str, Any] | None, selectors: dict[str, str]
) -> bytes | None:
    """The event a watch with `selectors` sees, as the API server sends it: a pod that stops
    matching the selector is DELETED for that watch, one that starts matching is ADDED."""
    was, now = _selected(old, selectors), _selected(new, selectors)
    if now:
        kind, item = ("MODIFIED" if was else "ADDED"), new
    elif was:
        kind, item = "DELETED", new or old
    else:
        return None
    return json.dumps({"type": kind, "object": item}).encode() + b"\n"


def _gone_event(version: int) -> bytes:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": f"too old resource version: {version}",
        "reason": "Expired",
        "code": 410,
    }
    return json.dumps({"type": "ERROR", "object": status}).encode() + b"\n"


def make_pod(
    name: str,
    containers: list[tuple[str, int, int]],
    *,
    node: str = "node-a",
    namespace: str = "team-a",
    created: str = "2026-01-01T00:00:00Z",
    annotations: dict[str, str] | None = None,
    init_containers: list[tuple[str, int, int]] | None = None,
    phase: str = "Pending",
    gpus: dict[str, list[str]] | str | None = "auto",
) -> dict[str, Any]:
    """A Pod bound to `node` whose containers ask (name, vcuda-core, vcuda-memory).

    `gpus` (container → GPU UUIDs) writes the assignment the extender would have written at
    bind: a shared container takes everything from its GPU, a whole-GPU one 100 cores of
    each and its memory split evenly. The default, "auto", puts shared containers on GPU 0
    and whole-GPU ones on GPUs 0.. of the simulated node; None writes no assignment."""

    def container(spec: tuple[str, int, int]) -> dict[str, Any]:
        cname, core, memory = spec
        limits = {}
        if core:
            limits["tencent.com/vcuda-core"] = str(core)
        if memory:
            limits["tencent.com/vcuda-memory"] = str(memory)
        return {"name": cname, "image": "cuda", "resources": {"limits": limits}}

    annotations = dict(annotations or {})
    every = [*(init_containers or []), *containers]
    if gpus == "auto":
        gpus = {
            cname: [simulated_uuid(i) for i in range(max(1, core // 100))]
            for cname, core, _ in every
            if core
        }
    if isinstance(gpus, dict):
        annotations[POD_GPU_ASSIGNMENT] = assignment_for(node, every, gpus)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "creationTimestamp": created,
            "annotations": annotations,
        },
        "spec": {
            "nodeName": node,
            "containers": [container(spec) for spec in containers],
            "initContainers": [container(spec) for spec in init_containers or []],
        },
        "status": {"phase": phase},
    }


def assignment_for(
    node: str, containers: list[tuple[str, int, int]], gpus: dict[str, list[str]]
) -> str:
    """The `gpushare.io/gpu-assignment` text giving each container the GPUs named in `gpus`."""
    placed: dict[str, tuple[Share, ...]] = {}
    for name, core, memory in containers:
        if name not in gpus:
            continue
        uuids = gpus[name]
        if len(uuids) == 1 and core < 100:
            placed[name] = (Share(uuids[0], core, memory),)
            continue
        base, extra = divmod(memory, len(uuids))
        placed[name] = tuple(
            Share(uuid, 100, base + (1 if position < extra else 0))
            for position, uuid in enumerate(uuids)
        )
    return format_assignment(Assignment(node=node, containers=placed))


def simulated_uuid(index: int) -> str:
    """UUID of GPU `index` of a simulated node (`SimulatedInventory`)."""
    return f"GPU-sim0000-0000-0000-0000-{index:012d}"
