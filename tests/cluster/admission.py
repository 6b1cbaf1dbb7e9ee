"""The gpushare webhook registered with the real API server, as the chart registers it.

The chart's own webhook configurations and PriorityClasses are rendered by the real helm and
changed only where a test must: each configuration gets a unique name, calls the webhook
served here (`clientConfig.url` on 127.0.0.1 with the test CA instead of the in-cluster
Service) and selects only the namespaces labelled for it. Rules, operations, failure
policies, match conditions and the reinvocation policy stay the chart's.

`ContainerEditor` is another mutating webhook, like a service mesh or a secret injector: it
adds an environment variable, a volume and its mount to every container of every pod it sees.
"""

from __future__ import annotations

import base64
import copy
import json
import ssl
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.controlplane import ControlPlane
from tests.polling import wait_until
from tests.webhook.serving import Served

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deployment" / "chart"
SIDECAR = "gpushare-sidecar"
CORE = "tencent.com/vcuda-core"
MEMORY = "tencent.com/vcuda-memory"
SELECTOR_LABEL = "gpushare-test-admission"
"""Namespaces a test's webhook configurations select carry this label (value: the run id)."""


def render(control_plane: ControlPlane, template: str, *values: str) -> list[dict[str, Any]]:
    """One chart template's objects, rendered by the real helm (`helm template`)."""
    text = control_plane.helm(
        "template",
        "gpushare",
        str(CHART),
        "--namespace",
        "gpushare-system",
        "--show-only",
        f"templates/{template}",
        *values,
    ).stdout
    return [item for item in yaml.safe_load_all(text) if item]


def chart_webhook_configurations(
    control_plane: ControlPlane, *, run_id: str, port: int, ca_file: Path
) -> list[dict[str, Any]]:
    """The chart's Mutating/ValidatingWebhookConfiguration, pointed at 127.0.0.1:`port`."""
    ca_bundle = base64.b64encode(ca_file.read_bytes()).decode()
    objects = []
    for item in render(control_plane, "webhook-configurations.yaml"):
        if not item["kind"].endswith("WebhookConfiguration"):
            continue  # the TLS Secret: the webhook here serves its own certificate
        role = "mutate" if item["kind"].startswith("Mutating") else "validate"
        # Unique, and unlabelled: the chart's release labels belong to its own release.
        item["metadata"] = {"name": f"gpushare-test-{role}-{run_id}"}
        for webhook in item["webhooks"]:
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {
                "url": f"https://127.0.0.1:{port}{path}",
                "caBundle": ca_bundle,
            }
            webhook["namespaceSelector"] = {"matchLabels": {SELECTOR_LABEL: run_id}}
        objects.append(item)
    return objects


@contextmanager
def registered(control_plane: ControlPlane, objects: list[dict[str, Any]]) -> Iterator[None]:
    """Create cluster-wide objects; delete them when the block ends."""
    control_plane.kubectl("create", "-f", "-", input=yaml.safe_dump_all(objects))
    try:
        yield
    finally:
        control_plane.kubectl(
            "delete",
            "--ignore-not-found",
            "--wait=false",
            "-f",
            "-",
            input=yaml.safe_dump_all(objects),
        )


@contextmanager
def chart_priority_classes(control_plane: ControlPlane) -> Iterator[dict[str, int]]:
    """The chart's PriorityClasses, named as the chart names them (the webhook sets those
    names); their values by name."""
    objects = render(control_plane, "webhook-priorityclasses.yaml")
    for item in objects:
        item["metadata"].pop("labels", None)
    with registered(control_plane, objects):
        yield {item["metadata"]["name"]: item["value"] for item in objects}


@contextmanager
def labelled_namespace(
    control_plane: ControlPlane, stem: str, labels: Mapping[str, str]
) -> Iterator[str]:
    """A namespace of this test run (with its default ServiceAccount), deleted afterwards."""
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    with control_plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespace(
            {"metadata": {"name": name, "labels": {"gpushare-test": name, **labels}}}
        )
        try:
            core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
        except ApiException as err:
            if err.status != 409:
                raise
        try:
            yield name
        finally:
            core.delete_namespace(name)
            core.delete_collection_namespaced_pod(name, grace_period_seconds=0)


def gpu_pod(name: str, core: str = "50", memory: str = "8", **container: Any) -> dict[str, Any]:
    """A Pod with one GPU container, as a user writes it."""
    limits = {CORE: core} | ({MEMORY: memory} if memory else {})
    main: dict[str, Any] = {
        "name": "train",
        "image": "registry.example/train:1",
        "resources": {"limits": limits},
        **container,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": {"team": "vision"}},
        "spec": {"containers": [main]},
    }


def sidecars(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [
        item
        for item in [*(spec.get("initContainers") or []), *spec["containers"]]
        if item["name"] == SIDECAR
    ]


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    return {
        entry["name"]: entry.get("value", entry.get("valueFrom"))
        for entry in container.get("env") or []
    }


def read_pod(control_plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    """The stored Pod as plain JSON (camelCase, as kubectl shows it)."""
    text = control_plane.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout
    pod: dict[str, Any] = json.loads(text)
    return pod


def pods_of(control_plane: ControlPlane, namespace: str, selector: str) -> list[dict[str, Any]]:
    text = control_plane.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    items: list[dict[str, Any]] = json.loads(text.stdout)["items"]
    return items


def admissions_answered(webhook: Served, endpoint: str = "mutate") -> float:
    """How many admission requests the served webhook has allowed on an endpoint (/metrics)."""
    connection = webhook.connect()
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gpushare_webhook_requests_total" and sample.labels == {
                "endpoint": endpoint,
                "outcome": "allowed",
            }:
                return float(sample.value)
    return 0.0


def events_of(control_plane: ControlPlane, namespace: str) -> str:
    """The namespace's events (a controller's FailedCreate says why a pod was refused)."""
    return control_plane.kubectl("get", "events", "-n", namespace).stdout


def wait_for_pods(
    control_plane: ControlPlane, namespace: str, selector: str, count: int
) -> list[dict[str, Any]]:
    """Wait until a controller has made `count` pods; on timeout, show the events."""
    found: list[list[dict[str, Any]]] = [[]]

    def made() -> bool:
        found[0] = pods_of(control_plane, namespace, selector)
        return len(found[0]) >= count

    try:
        wait_until(made, timeout=30, what=f"{count} pods of {selector} in {namespace}")
    except AssertionError as err:
        raise AssertionError(f"{err}\n{events_of(control_plane, namespace)}") from None
    return found[0]


# -- another mutating webhook that edits every container ---------------------------------------

MESH_ENV = {"name": "MESH_ENDPOINT", "value": "127.0.0.1:15001"}
MESH_VOLUME = {"name": "mesh-certs", "emptyDir": {}}
MESH_MOUNT = {"name": "mesh-certs", "mountPath": "/etc/mesh", "readOnly": True}


def mesh_patch(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Add the mesh's environment and mount to every container that lacks them, and its
    volume (idempotent, as a webhook with `reinvocationPolicy: IfNeeded` must be)."""
    ops: list[dict[str, Any]] = []
    spec = pod["spec"]
    for field in ("initContainers", "containers"):
        for index, item in enumerate(spec.get(field) or []):
            path = f"/spec/{field}/{index}"
            if MESH_ENV not in (item.get("env") or []):
                if item.get("env"):
                    ops.append({"op": "add", "path": f"{path}/env/-", "value": MESH_ENV})
                else:
                    ops.append({"op": "add", "path": f"{path}/env", "value": [MESH_ENV]})
            if not any(m.get("name") == "mesh-certs" for m in item.get("volumeMounts") or []):
                if item.get("volumeMounts"):
                    ops.append({"op": "add", "path": f"{path}/volumeMounts/-", "value": MESH_MOUNT})
                else:
                    ops.append({"op": "add", "path": f"{path}/volumeMounts", "value": [MESH_MOUNT]})
    volumes = spec.get("volumes") or []
    if not any(v.get("name") == "mesh-certs" for v in volumes):
        if volumes:
            ops.append({"op": "add", "path": "/spec/volumes/-", "value": MESH_VOLUME})
        else:
            ops.append({"op": "add", "path": "/spec/volumes", "value": [MESH_VOLUME]})
    return ops


class _MeshHandler(BaseHTTPRequestHandler):
    server: ContainerEditor

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        self.server.calls += 1
        ops = mesh_patch(request["object"])
        response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        if ops:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
        body = json.dumps(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ContainerEditor(ThreadingHTTPServer):
    """The mesh-like webhook, served over TLS on 127.0.0.1 from a thread."""

    daemon_threads = True

    def __init__(self, cert_dir: Path) -> None:
        super().__init__(("127.0.0.1", 0), _MeshHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert_dir / "tls.crt"), str(cert_dir / "tls.key"))
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.calls = 0

    @property
    def port(self) -> int:
        port: int = self.server_address[1]
        return port


@contextmanager
def container_editor(
    control_plane: ControlPlane, cert_dir: Path, namespace: str
) -> Iterator[ContainerEditor]:
    """Serve the mesh-like webhook and register it (after gpushare's, by name) for one
    namespace, with `reinvocationPolicy: IfNeeded`."""
    server = ContainerEditor(cert_dir)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        # Configurations are called in name order: this one runs after gpushare-test-mutate-…
        "metadata": {"name": f"gpushare-test-zz-mesh-{uuid.uuid4().hex[:6]}"},
        "webhooks": [
            {
                "name": "mesh.example.com",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{server.port}/mutate",
                    "caBundle": base64.b64encode((cert_dir / "ca.crt").read_bytes()).decode(),
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "failurePolicy": "Fail",
                "reinvocationPolicy": "IfNeeded",
                "namespaceSelector": {"matchLabels": {"gpushare-test": namespace}},
            }
        ],
    }
    try:
        with registered(control_plane, [copy.deepcopy(configuration)]):
            yield server
    finally:
        server.shutdown()
        server.server_close()
