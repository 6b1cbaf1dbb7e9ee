"""A small in-process Kubernetes API server over HTTP: just what the node manager uses.

GET /api/v1/pods (fieldSelector spec.nodeName and status.phase), GET/PATCH /api/v1/nodes/NAME
(JSON merge patch). The real `kubernetes` client talks to it; nothing is patched.
"""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


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
        self._server.shutdown()
        self._server.server_close()

    def add_pod(self, pod: dict[str, Any]) -> None:
        with self._lock:
            self.pods.append(pod)

    def set_phase(self, name: str, phase: str) -> None:
        with self._lock:
            for pod in self.pods:
                if pod["metadata"]["name"] == name:
                    pod.setdefault("status", {})["phase"] = phase

    def node_annotations(self, name: str) -> dict[str, str]:
        with self._lock:
            node = self.nodes.get(name, {})
            return dict(node.get("metadata", {}).get("annotations", {}))

    def _list_pods(self, query: dict[str, list[str]]) -> dict[str, Any]:
        selectors = {}
        for clause in ",".join(query.get("fieldSelector", [])).split(","):
            if "=" in clause:
                key, value = clause.split("=", 1)
                selectors[key] = value
        items = []
        with self._lock:
            for pod in self.pods:
                fields = {
                    "spec.nodeName": pod.get("spec", {}).get("nodeName", ""),
                    "status.phase": pod.get("status", {}).get("phase", ""),
                }
                if all(fields.get(key) == value for key, value in selectors.items()):
                    items.append(copy.deepcopy(pod))
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

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
                if url.path == "/api/v1/pods":
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
                if not url.path.startswith("/api/v1/nodes/") or "merge-patch" not in kind:
                    self._reply(415, {"kind": "Status", "message": f"unsupported {kind}"})
                    return
                self._reply(200, fake._patch_node(url.path.rsplit("/", 1)[1], patch))

        return Handler


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
) -> dict[str, Any]:
    """A Pod bound to `node` whose containers ask (name, vcuda-core, vcuda-memory)."""

    def container(spec: tuple[str, int, int]) -> dict[str, Any]:
        cname, core, memory = spec
        limits = {}
        if core:
            limits["tencent.com/vcuda-core"] = str(core)
        if memory:
            limits["tencent.com/vcuda-memory"] = str(memory)
        return {"name": cname, "image": "cuda", "resources": {"limits": limits}}

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "creationTimestamp": created,
            "annotations": annotations or {},
        },
        "spec": {
            "nodeName": node,
            "containers": [container(spec) for spec in containers],
            "initContainers": [container(spec) for spec in init_containers or []],
        },
        "status": {"phase": phase},
    }
