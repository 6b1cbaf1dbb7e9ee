"""Outages through the real kube-apiserver, with the chart's webhook configurations.

The timekeeper is unreachable from the start (a closed port): the webhook's failure policy
(`fail-open`) admits GPU pods as in-budget and says so in a warning `kubectl` prints. Then the
webhook itself is stopped: updates and deletions of the pods already admitted go through (the
Job controller removes its finalizer, `kubectl label`, `kubectl annotate`, `kubectl delete`),
while a new GPU pod, or a change of the sidecar's image, is refused by the API server
(`failurePolicy: Fail`), so nothing starts unaccounted. Which policy governs which request
is read from the chart as the real helm renders it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.admission import (
    CHART,
    SELECTOR_LABEL,
    chart_priority_classes,
    chart_webhook_configurations,
    gpu_pod,
    read_pod,
    registered,
    sidecars,
    wait_for_pods,
)
from tests.cluster.controlplane import ControlPlane
from tests.polling import wait_until
from tests.webhook.serving import generate_certs, serve_webhook

pytestmark = pytest.mark.slow


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_webhook_outage_never_blocks_existing_pods(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    kubectl = control_plane.kubectl
    run_id = uuid.uuid4().hex[:8]
    kubectl("label", "namespace", namespace, f"{SELECTOR_LABEL}={run_id}")
    generate_certs(tmp_path / "certs")
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "batch"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "batch"}},
                "spec": gpu_pod("unused")["spec"] | {"restartPolicy": "Never"},
            },
        },
    }

    def create(*objects: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return kubectl(
            "create", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects), check=False
        )

    with ExitStack() as outage, chart_priority_classes(control_plane):
        webhook = outage.enter_context(
            serve_webhook(tmp_path / "certs", f"http://127.0.0.1:{_closed_port()}")
        )
        configurations = chart_webhook_configurations(
            control_plane, run_id=run_id, port=webhook.port, ca_file=tmp_path / "certs/ca.crt"
        )
        with registered(control_plane, configurations):

            def admitting() -> bool:
                probe = kubectl(
                    "create",
                    "--dry-run=server",
                    "-n",
                    namespace,
                    "-o",
                    "json",
                    "-f",
                    "-",
                    input=json.dumps(gpu_pod("probe")),
                    check=False,
                )
                return probe.returncode == 0 and len(sidecars(json.loads(probe.stdout))) == 1

            wait_until(admitting, timeout=30, what="the webhook configurations to take effect")

            # The budget is unknown: the failure policy decides, and the user is told.
            admitted = create(gpu_pod("running"))
            assert admitted.returncode == 0, admitted.stderr
            (warning,) = [
                line for line in admitted.stderr.splitlines() if line.startswith("Warning:")
            ]
            assert warning.startswith(
                f'Warning: gpushare: the GPU budget of namespace "{namespace}" is unknown'
                " (timekeeper unreachable: [Errno 111] Connection refused"
            ), warning
            assert warning.endswith(
                "; admitted as in-budget by the webhook's failure policy fail-open"
            ), warning
            assert create(job).returncode == 0
            (job_pod,) = wait_for_pods(control_plane, namespace, "app=batch", 1)
            assert "batch.kubernetes.io/job-tracking" in job_pod["metadata"]["finalizers"]
            assert len(sidecars(job_pod)) == 1

            outage.close()  # the webhook is down from here on
            assert webhook.process.poll() is not None

            # Existing pods: labels, annotations, finalizers, deletion.
            kubectl("label", "-n", namespace, "pod/running", "checked=yes")
            kubectl("annotate", "-n", namespace, "pod/running", "note=still-works")
            name = job_pod["metadata"]["name"]
            kubectl(
                "patch",
                "-n",
                namespace,
                f"pod/{name}",
                "--subresource=status",
                "--type=merge",
                "-p",
                '{"status": {"phase": "Succeeded"}}',
            )

            def finalizer_removed() -> bool:
                pod = read_pod(control_plane, namespace, name)
                return not pod["metadata"].get("finalizers")

            wait_until(finalizer_removed, timeout=30, what="the Job controller's finalizer removal")
            pod = read_pod(control_plane, namespace, "running")
            assert pod["metadata"]["labels"] == {"checked": "yes"}
            assert pod["metadata"]["annotations"]["note"] == "still-works"
            kubectl("delete", "-n", namespace, "pod/running", "--wait=false")

            # New GPU pods (and a swapped sidecar image) cannot get past the webhook it needs.
            refused = create(gpu_pod("new"))
            assert refused.returncode != 0
            assert 'failed calling webhook "mutate.gpushare.io"' in refused.stderr
            plain = gpu_pod("plain")
            plain["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1"}}
            assert create(plain).returncode == 0
            swapped = kubectl(
                "set",
                "image",
                "-n",
                namespace,
                f"pod/{name}",
                "gpushare-sidecar=registry.example/x:1",
                check=False,
            )
            assert swapped.returncode != 0
            assert 'failed calling webhook "validate-update.gpushare.io"' in swapped.stderr

            def deleted() -> bool:
                result = kubectl(
                    "get", "-n", namespace, "pod/running", "--ignore-not-found", "-o", "name"
                )
                return result.stdout.strip() == ""

            wait_until(deleted, timeout=30, what="the deleted pod to go")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(
            [],
            {
                "mutate.gpushare.io": ("Fail", ["CREATE"], ["asks-for-gpu"]),
                "validate.gpushare.io": ("Fail", ["CREATE"], ["asks-for-gpu"]),
                "validate-update.gpushare.io": (
                    "Fail",
                    ["UPDATE"],
                    ["asks-for-gpu", "changes-what-gpushare-checks"],
                ),
            },
            id="defaults",
        ),
        pytest.param(
            ["--set", "webhook.matchGpuPodsOnly=false"],
            {
                "mutate.gpushare.io": ("Fail", ["CREATE"], []),
                "validate.gpushare.io": ("Fail", ["CREATE"], []),
                # Every update would be sent: it may not block them while the webhook is down.
                "validate-update.gpushare.io": ("Ignore", ["UPDATE"], []),
            },
            id="without-match-conditions",
        ),
    ],
)
def test_which_failure_policy_governs_what(
    helm: Callable[..., subprocess.CompletedProcess[str]],
    values: list[str],
    expected: dict[str, tuple[str, list[str], list[str]]],
) -> None:
    text = helm(
        "template",
        "gpushare",
        str(CHART),
        "--show-only",
        "templates/webhook-configurations.yaml",
        *values,
    ).stdout
    found = {
        webhook["name"]: (
            webhook["failurePolicy"],
            [op for rule in webhook["rules"] for op in rule["operations"]],
            [condition["name"] for condition in webhook.get("matchConditions", [])],
        )
        for item in yaml.safe_load_all(text)
        if item and item["kind"].endswith("WebhookConfiguration")
        for webhook in item["webhooks"]
    }
    assert found == expected
