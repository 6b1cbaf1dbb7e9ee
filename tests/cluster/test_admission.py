"""Admission through the real kube-apiserver: the gpushare webhook served for real (gunicorn
over TLS), registered with the chart's own webhook configurations and PriorityClasses, its
budget states from a real timekeeper process.

The timekeeper's budgets file puts one namespace in each state: `warning` (a real usage
report past its warning line), `exhausted` with `deprioritize`, `exhausted` with `deny`;
every other namespace is in budget by the defaults. Pods are created the way users and
controllers create them: `kubectl create` (its stderr shows admission warnings), a
Deployment and a Job (the controller manager makes their pods).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpushare import __version__
from gpushare.resources import USAGE_DIR
from tests.cluster.admission import (
    CORE,
    MEMORY,
    SELECTOR_LABEL,
    admissions_answered,
    chart_priority_classes,
    chart_webhook_configurations,
    container_editor,
    env_of,
    gpu_pod,
    labelled_namespace,
    read_pod,
    registered,
    sidecars,
    wait_for_pods,
)
from tests.cluster.controlplane import ControlPlane
from tests.polling import wait_until
from tests.webhook.serving import Served, generate_certs, serve_timekeeper, serve_webhook

pytestmark = pytest.mark.slow

IMAGE = f"ghcr.io/gpushare/gpushare:{__version__}"
WARN_TOKEN = "warn-token-0123456789abcdef0123456789ab"


@dataclass(frozen=True)
class Admission:
    """The webhook as the API server calls it, and the namespaces of each budget state."""

    control_plane: ControlPlane
    run_id: str
    cert_dir: Path
    webhook: Served
    priorities: dict[str, int]
    warning: str
    overbudget: str
    denied: str

    def label(self, namespace: str) -> None:
        """Let the webhook configurations of this run select the namespace."""
        self.control_plane.kubectl(
            "label", "namespace", namespace, f"{SELECTOR_LABEL}={self.run_id}"
        )

    def create(
        self, namespace: str, *objects: dict[str, Any], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl create` of the objects in the namespace; the CompletedProcess."""
        return self.control_plane.kubectl(
            "create", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects), check=check
        )


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _next_month() -> str:
    start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return _rfc3339((start + timedelta(days=32)).replace(day=1))


def _admitting(control_plane: ControlPlane, namespace: str) -> bool:
    """Whether the registered webhook already mutates pods there (a server-side dry run)."""
    result = control_plane.kubectl(
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
    return result.returncode == 0 and len(sidecars(json.loads(result.stdout))) == 1


@pytest.fixture(scope="module")
def admission(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Admission]:
    # A letter first: an id of digits with one "e" (such as "12e45678") is a number to the
    # API server's YAML reader, and a label value must be a string.
    run_id = f"r{uuid.uuid4().hex[:7]}"
    labels = {SELECTOR_LABEL: run_id}
    work = tmp_path_factory.mktemp("admission")
    generate_certs(work / "certs")
    cert_dir = work / "certs"
    with (
        labelled_namespace(control_plane, "budget-warning", labels) as warning,
        labelled_namespace(control_plane, "budget-overbudget", labels) as overbudget,
        labelled_namespace(control_plane, "budget-denied", labels) as denied,
    ):
        budgets = (
            "defaults: {period: month, gpuHours: 100, whenExhausted: deprioritize}\n"
            "namespaces:\n"
            f"  {warning}: {{gpuHours: 1, warnAtPercent: 10}}\n"
            f"  {overbudget}: {{gpuHours: 0}}\n"
            f"  {denied}: {{gpuHours: 0, whenExhausted: deny}}\n"
        )
        with serve_timekeeper(work / "timekeeper", budgets, {warning: WARN_TOKEN}) as timekeeper:
            end = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
            report = {
                "podUid": str(uuid.uuid4()),
                "pod": "earlier-training",
                "namespace": warning,
                "sequence": 1,
                "start": _rfc3339(end - timedelta(minutes=30)),
                "end": _rfc3339(end),
                "vcudaCore": 50,
                "vcudaMemory": 4,
            }
            # 0.25 GPU-hours of a 1 GPU-hour budget: past the 10 % warning line.
            assert timekeeper.post_json("/api/v1/reports", report, WARN_TOKEN) in (200, 201)
            with (
                serve_webhook(cert_dir, timekeeper.url) as webhook,
                chart_priority_classes(control_plane) as priorities,
                registered(
                    control_plane,
                    chart_webhook_configurations(
                        control_plane,
                        run_id=run_id,
                        port=webhook.port,
                        ca_file=cert_dir / "ca.crt",
                    ),
                ),
            ):
                wait_until(
                    lambda: _admitting(control_plane, warning),
                    timeout=30,
                    what="the webhook configurations to take effect",
                )
                yield Admission(
                    control_plane,
                    run_id,
                    cert_dir,
                    webhook,
                    priorities,
                    warning,
                    overbudget,
                    denied,
                )


def assert_usage_folder(pod: dict[str, Any], sidecar: dict[str, Any]) -> None:
    """The pod's usage folder, as stored: read-write in every container holding GPU time,
    read-only in the sidecar, which is told where it is; an emptyDir."""
    mount = {"name": "gpushare-usage", "mountPath": USAGE_DIR}
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "gpushare-usage"]
    assert volume["emptyDir"] == {"sizeLimit": "1Mi"}
    assert {**mount, "readOnly": True} in sidecar["volumeMounts"]
    assert env_of(sidecar)["GPUSHARE_USAGE_DIR"] == USAGE_DIR
    gpu = [
        item
        for item in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]
        if "tencent.com/vcuda-core" in item.get("resources", {}).get("limits", {})
    ]
    assert gpu
    for item in gpu:
        at_path = [m for m in item["volumeMounts"] if m["mountPath"] == USAGE_DIR]
        assert at_path == [mount], item["volumeMounts"]


def assert_admitted(
    admission: Admission, pod: dict[str, Any], priority_class: str = "gpushare-standard"
) -> dict[str, Any]:
    """Exactly one sidecar, gpushare's, able to report; the class resolved by the API server."""
    found = sidecars(pod)
    assert len(found) == 1, [c["name"] for c in found]
    (sidecar,) = found
    assert sidecar["image"] == IMAGE
    assert sidecar["command"] == ["gpushare", "sidecar"]
    assert sidecar.get("restartPolicy") == "Always"
    assert sidecar in pod["spec"].get("initContainers", [])
    env = env_of(sidecar)
    assert env["GPUSHARE_POD_UID"] == {
        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}
    }
    assert env["GPUSHARE_TOKEN_FILE"] == "/var/run/secrets/gpushare.io/serviceaccount/token"
    (token,) = [v for v in pod["spec"]["volumes"] if v["name"] == "gpushare-token"]
    assert token["projected"]["sources"] == [
        {
            "serviceAccountToken": {
                "audience": "gpushare-timekeeper",
                "expirationSeconds": 3600,
                "path": "token",
            }
        }
    ]
    assert_usage_folder(pod, sidecar)
    assert pod["spec"]["priorityClassName"] == priority_class
    # Removed by the webhook, recomputed by the API server's Priority plugin from the class.
    assert pod["spec"]["priority"] == admission.priorities[priority_class]
    expected_policy = "Never" if priority_class == "gpushare-overbudget" else "PreemptLowerPriority"
    assert pod["spec"]["preemptionPolicy"] == expected_policy
    return sidecar


def test_bare_pod_with_the_default_service_account(admission: Admission, namespace: str) -> None:
    admission.label(namespace)
    before = [admissions_answered(admission.webhook, path) for path in ("mutate", "validate")]
    admission.create(namespace, gpu_pod("bare"))
    after = [admissions_answered(admission.webhook, path) for path in ("mutate", "validate")]
    # /mutate called again after the ServiceAccount plugin changed the pod, and allowing it
    # again; /validate once, on the final pod, finding the sidecar gpushare's own.
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1]
    pod = read_pod(admission.control_plane, namespace, "bare")
    sidecar = assert_admitted(admission, pod)
    assert env_of(sidecar)["GPUSHARE_VCUDA_CORE"] == "50"
    assert env_of(sidecar)["GPUSHARE_VCUDA_MEMORY"] == "8"
    # The ServiceAccount plugin mounted its token into every container, the sidecar too: the
    # case that made every GPU pod fail before.
    assert pod["spec"]["serviceAccountName"] == "default"
    api_mounts = [
        m
        for item in [sidecar, *pod["spec"]["containers"]]
        for m in item["volumeMounts"]
        if m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    ]
    assert len(api_mounts) == 2
    # Annotations merged with the user's.
    assert pod["metadata"]["annotations"] == {
        "team": "vision",
        "gpushare.io/budget-state": "in-budget",
        "gpushare.io/sidecar-injected": "native",
    }


def test_pods_made_by_a_deployment_and_a_job(admission: Admission, namespace: str) -> None:
    admission.label(namespace)
    template = {"metadata": {"labels": {"app": "trainer"}}, "spec": gpu_pod("unused")["spec"]}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "trainer"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "trainer"}},
            "template": template,
        },
    }
    job_spec = gpu_pod("unused", core="100", memory="")["spec"] | {"restartPolicy": "Never"}
    job_template = {"metadata": {"labels": {"app": "batch"}}, "spec": job_spec}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "batch"},
        "spec": {"backoffLimit": 0, "template": job_template},
    }
    admission.create(namespace, deployment, job)
    for pod in wait_for_pods(admission.control_plane, namespace, "app=trainer", 2):
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        assert_admitted(admission, pod)
    (pod,) = wait_for_pods(admission.control_plane, namespace, "app=batch", 1)
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Job"
    assert "batch.kubernetes.io/job-tracking" in pod["metadata"]["finalizers"]
    assert env_of(assert_admitted(admission, pod))["GPUSHARE_VCUDA_CORE"] == "100"


def test_namespace_with_a_limit_range(admission: Admission, namespace: str) -> None:
    admission.label(namespace)
    limit_range = {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {"name": "defaults"},
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "default": {"cpu": "500m", "memory": "256Mi", "ephemeral-storage": "1Gi"},
                    "defaultRequest": {
                        "cpu": "50m",
                        "memory": "64Mi",
                        "ephemeral-storage": "256Mi",
                    },
                }
            ]
        },
    }
    admission.create(namespace, limit_range)
    admission.create(namespace, gpu_pod("limited"))
    pod = read_pod(admission.control_plane, namespace, "limited")
    sidecar = assert_admitted(admission, pod)
    # LimitRange filled in what the sidecar leaves out, after gpushare injected it.
    assert sidecar["resources"]["limits"]["ephemeral-storage"] == "1Gi"
    assert sidecar["resources"]["limits"]["cpu"] == "100m"
    assert "gpushare-sidecar" in pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"]


def test_another_webhook_edits_every_container_after_gpushare(
    admission: Admission, namespace: str
) -> None:
    admission.label(namespace)
    with container_editor(admission.control_plane, admission.cert_dir, namespace) as mesh:

        def meshed() -> bool:
            probe = admission.control_plane.kubectl(
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
            return probe.returncode == 0 and "MESH_ENDPOINT" in probe.stdout

        wait_until(meshed, timeout=30, what="the mesh-like webhook to take effect")
        before = mesh.calls, admissions_answered(admission.webhook)
        admission.create(namespace, gpu_pod("meshed"))
        # gpushare, the mesh, the API server's own plugins again (the token mount into the
        # new sidecar), then each webhook once more, since the pod changed after its call.
        assert mesh.calls - before[0] == 2
        assert admissions_answered(admission.webhook) - before[1] == 2
        pod = read_pod(admission.control_plane, namespace, "meshed")
    sidecar = assert_admitted(admission, pod)
    assert env_of(sidecar)["MESH_ENDPOINT"] == "127.0.0.1:15001"
    assert "/etc/mesh" in [m["mountPath"] for m in sidecar["volumeMounts"]]


@pytest.mark.parametrize(
    ("state", "priority_class", "warning"),
    [
        pytest.param(
            "warning",
            "gpushare-standard",
            'gpushare: namespace "{ns}" has used 0.25 of its 1 GPU-hours budget (25%); it'
            " refills at {refill}",
            id="warning-percent-and-refill",
        ),
        pytest.param(
            "overbudget",
            "gpushare-overbudget",
            'gpushare: namespace "{ns}" has used 0.00 of its 0 GPU-hours budget, so this pod'
            " runs at PriorityClass gpushare-overbudget: preemptible (in-budget GPU pods may"
            " evict it) until the budget refills at {refill}",
            id="deprioritized-why-and-refill",
        ),
    ],
)
def test_users_are_told_by_kubectl(
    admission: Admission, state: str, priority_class: str, warning: str
) -> None:
    namespace = getattr(admission, state)
    name = f"told-{uuid.uuid4().hex[:6]}"
    result = admission.create(namespace, gpu_pod(name))
    expected = warning.format(ns=namespace, refill=_next_month())
    # Once, though the webhook was called twice (re-invocation): the API server keeps one of
    # each distinct warning.
    assert result.stderr.splitlines() == [f"Warning: {expected}"], result.stderr
    pod = read_pod(admission.control_plane, namespace, name)
    assert_admitted(admission, pod, priority_class)
    assert pod["metadata"]["annotations"]["gpushare.io/budget-state"] == (
        "warning" if state == "warning" else "exhausted"
    )


def test_exhausted_deny_is_refused_with_the_figures(admission: Admission) -> None:
    result = admission.create(admission.denied, gpu_pod("refused"), check=False)
    assert result.returncode != 0
    assert (
        f'admission webhook "mutate.gpushare.io" denied the request: pod rejected: namespace'
        f' "{admission.denied}" has used 0.00 of its 0 GPU-hours budget and refuses new GPU'
        f" pods when it is exhausted; the budget refills at {_next_month()}"
    ) in result.stderr


@pytest.mark.parametrize(
    ("container", "message"),
    [
        pytest.param(
            {"env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]},
            'container "train" sets NVIDIA_VISIBLE_DEVICES; on GPU pods the node sets'
            " NVIDIA_VISIBLE_DEVICES, LD_PRELOAD, CUDA_MPS_*, GPUSHARE_* (they carry the GPU"
            " isolation), so the pod spec may not",
            id="visible-devices",
        ),
        pytest.param(
            {"env": [{"name": "LD_PRELOAD", "value": ""}]},
            'container "train" sets LD_PRELOAD; on GPU pods',
            id="preload",
        ),
        pytest.param(
            {"env": [{"name": "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "value": "100"}]},
            'container "train" sets CUDA_MPS_ACTIVE_THREAD_PERCENTAGE; on GPU pods',
            id="mps",
        ),
        pytest.param(
            {"env": [{"name": "GPUSHARE_MEMORY_LIMIT", "value": "80Gi"}]},
            'container "train" sets GPUSHARE_MEMORY_LIMIT; on GPU pods',
            id="gpushare-limit",
        ),
        pytest.param(
            {"envFrom": [{"configMapRef": {"name": "settings"}}]},
            'container "train" takes envFrom configMap "settings" without a prefix; on a GPU pod'
            " its keys could set NVIDIA_VISIBLE_DEVICES, LD_PRELOAD, CUDA_MPS_*, GPUSHARE_*,"
            " which the node sets and admission cannot read: give it a prefix such as APP_",
            id="env-from-without-prefix",
        ),
        pytest.param(
            {"envFrom": [{"secretRef": {"name": "s"}, "prefix": "NVIDIA_"}]},
            'container "train" takes envFrom secret "s" with prefix \'NVIDIA_\', which can form',
            id="env-from-dangerous-prefix",
        ),
    ],
)
def test_isolation_cannot_be_switched_off_from_the_pod_spec(
    admission: Admission, namespace: str, container: dict[str, Any], message: str
) -> None:
    admission.label(namespace)
    result = admission.create(namespace, gpu_pod("escape", **container), check=False)
    assert result.returncode != 0
    assert f"denied the request: pod rejected: {message}" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("core", "memory", "message"),
    [
        pytest.param(
            "1e999",
            "8",
            'container "train" asks tencent.com/vcuda-core=1e999; no node holds that much: a'
            " pod may ask at most 1600 (16 whole GPUs) in total",
            id="core-1e999",
        ),
        pytest.param(
            "100",
            "100000000000000000000",
            'container "train" asks tencent.com/vcuda-memory=100E; no node holds that much: a'
            " pod may ask at most 16384 (4 TiB) in total",
            id="memory-10-to-the-20",
        ),
        pytest.param(
            "100000",
            "",
            'container "train" asks tencent.com/vcuda-core=100k; no node holds that much: a pod'
            " may ask at most 1600 (16 whole GPUs) in total",
            id="a-thousand-whole-gpus",
        ),
    ],
)
def test_absurd_requests_are_refused_at_admission(
    admission: Admission, namespace: str, core: str, memory: str, message: str
) -> None:
    admission.label(namespace)
    result = admission.create(namespace, gpu_pod("absurd", core=core, memory=memory), check=False)
    assert result.returncode != 0
    assert f"pod rejected: {message}" in result.stderr, result.stderr


def test_a_copy_of_an_admitted_pod_cannot_bring_its_own_sidecar(
    admission: Admission, namespace: str
) -> None:
    """The sidecar written by the user is told apart from the injected one by what the API
    server recorded of the request (managedFields), even when it is identical."""
    admission.label(namespace)
    admission.create(namespace, gpu_pod("original"))
    copy = read_pod(admission.control_plane, namespace, "original")
    copy["metadata"] = {"name": "copy", "annotations": copy["metadata"]["annotations"]}
    copy.pop("status", None)
    result = admission.create(namespace, copy, check=False)
    assert result.returncode != 0
    assert (
        'pod rejected: container "gpushare-sidecar" is reserved for the gpushare accounting'
        " sidecar, which gpushare injects itself; remove it from the pod (a copy of an admitted"
        " pod must leave it out)"
    ) in result.stderr, result.stderr


def test_updates_reach_the_webhook_only_when_they_change_what_it_checks(
    admission: Admission, namespace: str
) -> None:
    admission.label(namespace)
    admission.create(namespace, gpu_pod("running"))
    kubectl = admission.control_plane.kubectl
    swapped = kubectl(
        "set",
        "image",
        "-n",
        namespace,
        "pod/running",
        "gpushare-sidecar=registry.example/x:1",
        check=False,
    )
    assert swapped.returncode != 0
    assert 'container "gpushare-sidecar" may not change its image' in swapped.stderr
    refused = kubectl(
        "annotate", "-n", namespace, "pod/running", "gpushare.io/sm-partition=0", check=False
    )
    assert "annotation gpushare.io/sm-partition=0; it must be an integer percent" in (
        refused.stderr
    )
    kubectl("annotate", "-n", namespace, "pod/running", "gpushare.io/sm-partition=50")
    pod = read_pod(admission.control_plane, namespace, "running")
    assert pod["metadata"]["annotations"]["gpushare.io/sm-partition"] == "50"
    assert CORE in pod["spec"]["containers"][0]["resources"]["limits"]
    assert MEMORY in pod["spec"]["containers"][0]["resources"]["limits"]
