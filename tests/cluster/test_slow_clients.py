"""Slow clients at the webhook and at the timekeeper do not change admission through the real
API server: a GPU pod of an exhausted `deny` namespace is refused, in time, while 1,000
connections hang at each server, even with the webhook registered fail-open."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.rest import ApiException

from tests.cluster.controlplane import ControlPlane
from tests.polling import wait_until
from tests.slowclients import slow_sockets
from tests.webhook.serving import (
    Served,
    Timekeeper,
    serve_timekeeper,
    serve_uncached_fail_open_webhook,
)

SLOW_SOCKETS = 1000
API_SERVER_TIMEOUT_SECONDS = 5
WEBHOOK_TOKEN = "webhook-token-0123456789abcdef01234567"


@pytest.fixture
def timekeeper(tmp_path: Path, namespace: str) -> Iterator[Timekeeper]:
    budgets = f"namespaces:\n  {namespace}: {{gpuHours: 0, whenExhausted: deny}}\n"
    with serve_timekeeper(
        tmp_path / "timekeeper", budgets, {"gpushare-system": WEBHOOK_TOKEN}
    ) as server:
        yield server


@pytest.fixture
def webhook(tmp_path: Path, timekeeper: Timekeeper) -> Iterator[Served]:
    with serve_uncached_fail_open_webhook(tmp_path, timekeeper.url, WEBHOOK_TOKEN) as served:
        yield served


@pytest.fixture
def registered(control_plane: ControlPlane, namespace: str, webhook: Served) -> Iterator[None]:
    """The webhook registered with the API server for this test's namespace only, failing
    open at the API server too (the case where a stalled webhook would let pods through)."""
    name = f"gpushare-slow-{namespace}"
    body = {
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "mutate.gpushare.io",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{webhook.port}/mutate",
                    "caBundle": base64.b64encode(webhook.ca_file.read_bytes()).decode(),
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"gpushare-test": namespace}},
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": API_SERVER_TIMEOUT_SECONDS,
            }
        ],
    }
    with control_plane.api_client() as client:
        admission = kubernetes.client.AdmissionregistrationV1Api(client)
        admission.create_mutating_webhook_configuration(body)
        try:
            yield
        finally:
            admission.delete_mutating_webhook_configuration(name)


def _gpu_pod() -> dict[str, Any]:
    limits = {"tencent.com/vcuda-core": "50", "tencent.com/vcuda-memory": "8"}
    return {
        "metadata": {"generateName": "train-"},
        "spec": {
            "containers": [{"name": "train", "image": "busybox", "resources": {"limits": limits}}]
        },
    }


def _refusal(control_plane: ControlPlane, namespace: str) -> str:
    """Create (dry run) a GPU pod; the API server's refusal message, or '' when admitted."""
    with control_plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        try:
            core.create_namespaced_pod(namespace, _gpu_pod(), dry_run="All")
        except ApiException as err:
            return str(err.body)
    return ""


@pytest.mark.slow
@pytest.mark.usefixtures("registered")
def test_exhausted_deny_namespace_stays_refused_with_1000_slow_clients_at_each_server(
    control_plane: ControlPlane, namespace: str, webhook: Served, timekeeper: Timekeeper
) -> None:
    wait_until(
        lambda: "denied the request" in _refusal(control_plane, namespace),
        timeout=30,
        what="the API server to call the webhook, which refuses the pod",
    )
    timekeeper_port = int(timekeeper.url.rsplit(":", 1)[1])
    at_webhook = {"partial-handshake": SLOW_SOCKETS // 2, "partial-head-tls": SLOW_SOCKETS // 2}
    at_timekeeper = {"idle": SLOW_SOCKETS // 2, "partial-head": SLOW_SOCKETS // 2}
    with (
        slow_sockets(webhook.port, at_webhook, webhook.context()),
        slow_sockets(timekeeper_port, at_timekeeper),
    ):
        for _ in range(5):
            started = time.monotonic()
            refusal = _refusal(control_plane, namespace)
            took = time.monotonic() - started
            assert "denied the request" in refusal, f"admitted or failed open: {refusal!r}"
            assert "budget" in refusal, refusal
            assert took < API_SERVER_TIMEOUT_SECONDS, f"admission took {took:.1f} s"
