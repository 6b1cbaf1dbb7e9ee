"""Pods, AdmissionReviews, fake budget sources and the two-way check of mutated pods."""

from __future__ import annotations

import base64
import copy
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonpatch
import kubernetes_validate
from kubernetes.client import ApiClient, V1Pod

from webhook.admission import BudgetLookup
from webhook.app import create_app
from webhook.budget import BudgetStatus
from webhook.errors import TimekeeperUnavailable
from webhook.settings import Settings

CORE = "tencent.com/vcuda-core"
MEMORY = "tencent.com/vcuda-memory"
KUBERNETES_VERSION = kubernetes_validate.latest_version()


def container(name: str = "train", limits: Mapping[str, Any] | None = None, **extra: Any) -> dict:
    item: dict[str, Any] = {"name": name, "image": "registry.example/train:1"}
    resources: dict[str, Any] = {}
    if limits is not None:
        resources["limits"] = dict(limits)
    if "requests" in extra:
        resources["requests"] = extra.pop("requests")
    if resources:
        item["resources"] = resources
    item.update(extra)
    return item


def gpu(core: Any = 50, memory: Any = 8) -> dict[str, Any]:
    return {CORE: str(core), MEMORY: str(memory)}


def pod(
    *containers: dict,
    init: list[dict] | None = None,
    annotations: dict[str, str] | None = None,
    namespace: str = "team-a",
    **spec: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "job-1", "namespace": namespace}
    if annotations is not None:
        metadata["annotations"] = dict(annotations)
    body: dict[str, Any] = {"containers": list(containers) or [container(limits=gpu())]}
    if init is not None:
        body["initContainers"] = init
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": body}


def review(
    obj: Mapping[str, Any] | None,
    operation: str = "CREATE",
    namespace: str = "team-a",
    uid: str = "0d5c6b8e-4b1c-4a70-9a5e-3b3f0d9a1c11",
) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": operation,
            "namespace": namespace,
            "object": obj,
        },
    }


def status(
    state: str = "in-budget",
    when_exhausted: str = "deprioritize",
    namespace: str = "team-a",
    used: float = 1.0,
    budget: float | None = 10.0,
    period_end: str = "2026-12-01T00:00:00Z",
    refills_at: str | None = None,
) -> BudgetStatus:
    return BudgetStatus(namespace, state, when_exhausted, used, budget, period_end, refills_at)


@dataclass
class FakeBudgets:
    """BudgetSource that answers from a table, or fails like a dead timekeeper."""

    states: dict[str, BudgetStatus] = field(default_factory=dict)
    default: BudgetStatus | None = field(default_factory=status)
    down: bool = False
    stale: bool = False
    calls: list[str] = field(default_factory=list)

    def lookup(self, namespace: str) -> BudgetLookup:
        self.calls.append(namespace)
        if self.down:
            raise TimekeeperUnavailable("timekeeper unreachable: connection refused")
        found = self.states.get(namespace, self.default)
        if found is None:
            raise TimekeeperUnavailable("no state")
        return BudgetLookup(found, stale=self.stale)


def decode_patch(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    body = response["response"]
    if "patch" not in body:
        return []
    assert body["patchType"] == "JSONPatch"
    decoded: list[dict[str, Any]] = json.loads(base64.b64decode(body["patch"]))
    return decoded


def apply_and_check(original: Mapping[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply the patch with jsonpatch, then load the result as a V1Pod and schema-validate it."""
    patched: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(original), ops)
    model = ApiClient().deserialize(json.dumps(patched), "V1Pod", "application/json")
    assert isinstance(model, V1Pod)
    assert model.metadata is not None
    assert model.metadata.name == original["metadata"]["name"]
    kubernetes_validate.validate(patched, KUBERNETES_VERSION, strict=True)
    return patched


class _StatusHandler(BaseHTTPRequestHandler):
    server: FakeTimekeeper

    def do_GET(self) -> None:
        prefix = "/api/v1/namespaces/"
        namespace = self.path[len(prefix) :] if self.path.startswith(prefix) else None
        self.server.requests.append(self.path)
        required = self.server.required_token
        if required is not None and self.headers.get("Authorization") != f"Bearer {required}":
            self._send(401, {"error": "unauthenticated", "message": "a token is required"})
            return
        if self.server.hang is not None:
            self.server.hang.wait(10)
        found = self.server.statuses.get(namespace or "")
        if found is None:
            self._send(404, {"error": "not-found", "message": "no such namespace"})
            return
        self._send(200, found)

    def _send(self, code: int, body: Any) -> None:
        self.server.answered += 1
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeTimekeeper(ThreadingHTTPServer):
    """The timekeeper's `GET /api/v1/namespaces/{ns}` with the same wire format."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _StatusHandler)
        self.statuses: dict[str, Any] = {}
        self.requests: list[str] = []
        self.answered = 0
        """Answers sent (a hanging request is counted once it is answered)."""
        self.hang: threading.Event | None = None
        self.required_token: str | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a hanging answer is expected here

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def wire_status(state: str = "in-budget", when: str = "deprioritize", **extra: Any) -> dict:
    body = {
        "namespace": "team-a",
        "state": state,
        "budgetGpuHours": 10.0,
        "usedGpuHours": 4.5,
        "remainingGpuHours": 5.5,
        "periodStart": "2026-11-01T00:00:00Z",
        "periodEnd": "2026-12-01T00:00:00Z",
        "whenExhausted": when,
        "burnRateGpuHoursPerDay": 0.2,
        "projectedGpuHours": 6.0,
    }
    body.update(extra)
    return body


@contextmanager
def fake_timekeeper() -> Iterator[FakeTimekeeper]:
    server = FakeTimekeeper()
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        if server.hang is not None:
            server.hang.set()
        server.shutdown()
        server.server_close()


def admitted(subject: Mapping[str, Any], **settings: Any) -> dict[str, Any]:
    """The pod as /mutate (in-budget) leaves it: what /validate sees on CREATE."""
    app = create_app(
        Settings(timekeeper_url="http://timekeeper.gpushare-system.svc:8080", **settings),
        budgets=FakeBudgets(),
    )
    namespace = subject["metadata"].get("namespace", "team-a")
    answer = app.test_client().post("/mutate", json=review(subject, namespace=namespace)).json
    assert answer is not None and answer["response"]["allowed"], answer
    return apply_and_check(subject, decode_patch(answer))


def _fields_v1(value: Any) -> dict[str, Any]:
    """FieldsV1 of a value: maps by key (`f:`), lists of named items by name (`k:`)."""
    if isinstance(value, dict):
        return {f"f:{key}": _fields_v1(item) for key, item in value.items()}
    if isinstance(value, list) and all(isinstance(i, dict) and "name" in i for i in value):
        return {
            "k:" + json.dumps({"name": item["name"]}, separators=(",", ":")): _fields_v1(item)
            for item in value
        }
    return {}


def as_requested(subject: Mapping[str, Any], manager: str = "kubectl-create") -> dict[str, Any]:
    """The pod with the `metadata.managedFields` that the API server records for a CREATE
    before admission: every field the client sent, nothing that admission adds later."""
    recorded = copy.deepcopy(dict(subject))
    fields = {key: _fields_v1(recorded[key]) for key in ("spec",)}
    annotations = recorded["metadata"].get("annotations")
    if annotations:
        fields["metadata"] = {"f:annotations": _fields_v1(annotations)}
    recorded["metadata"]["managedFields"] = [
        {
            "manager": manager,
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2026-11-20T09:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {f"f:{key}": value for key, value in fields.items()},
        }
    ]
    return recorded
