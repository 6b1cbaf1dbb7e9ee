"""Concurrent caps on the real API server: `gpushare quotas sync` against kube-apiserver,
whose ResourceQuota admission plugin refuses pods over the quota it keeps."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.rest import ApiException

from tests.cluster.conftest import NAMESPACE_LABEL
from tests.cluster.controlplane import ControlPlane
from tests.polling import wait_until

CORE = "requests.tencent.com/vcuda-core"
MEMORY = "requests.tencent.com/vcuda-memory"


def gpu_pod(name: str, core: int, memory: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "train",
                    "image": "registry.example/train:1",
                    "resources": {
                        "limits": {
                            "tencent.com/vcuda-core": str(core),
                            "tencent.com/vcuda-memory": str(memory),
                        }
                    },
                }
            ]
        },
    }


@pytest.fixture
def other_namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"quota-foreign-{uuid.uuid4().hex[:6]}"
    with control_plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespace({"metadata": {"name": name, "labels": {NAMESPACE_LABEL: name}}})
        try:
            yield name
        finally:
            core.delete_namespace(name)


def sync(control_plane: ControlPlane, budgets: Path, selector: str) -> str:
    """One round of the real command line; its summary line."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpushare",
            "quotas",
            "sync",
            "--once",
            f"--budgets={budgets}",
            f"--kubeconfig={control_plane.kubeconfig}",
            f"--namespace-selector={selector}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def owner_view(quota: Any) -> tuple[Any, ...]:
    """What an owner sets (status changes as the quota controller counts use)."""
    meta = quota.metadata
    return (meta.uid, meta.labels, meta.annotations, dict(quota.spec.hard))


def quota_status_is(core: Any, namespace: str, hard: dict[str, str]) -> bool:
    """The quota controller has counted the quota (admission needs status.hard)."""
    quota = core.read_namespaced_resource_quota("gpushare-gpu", namespace)
    return dict(quota.status.hard or {}) == hard if quota.status else False


def test_budgets_caps_become_quotas_the_api_server_enforces(
    control_plane: ControlPlane, namespace: str, other_namespace: str, tmp_path: Path
) -> None:
    selector = f"{NAMESPACE_LABEL} in ({namespace},{other_namespace})"
    budgets = tmp_path / "budgets.yaml"
    with control_plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        # Someone else's quotas: one of another name, one of gpushare's name without its label.
        core.create_namespaced_resource_quota(
            namespace, {"metadata": {"name": "team-pods"}, "spec": {"hard": {"pods": "50"}}}
        )
        core.create_namespaced_resource_quota(
            other_namespace,
            {"metadata": {"name": "gpushare-gpu"}, "spec": {"hard": {CORE: "7"}}},
        )
        foreign_before = {
            (ns, name): owner_view(core.read_namespaced_resource_quota(name, ns))
            for ns, name in ((namespace, "team-pods"), (other_namespace, "gpushare-gpu"))
        }

        budgets.write_text(
            "defaults: {gpuHours: 100}\n"
            f"namespaces:\n  {namespace}: {{maxVcudaCore: 200, maxVcudaMemory: 40}}\n"
            f"  {other_namespace}: {{maxVcudaCore: 100}}\n"
        )
        summary = sync(control_plane, budgets, selector)
        assert summary == "quotas: 1 created, 0 updated, 0 removed, 1 left alone (not gpushare's)"

        wait_until(
            lambda: quota_status_is(core, namespace, {CORE: "200", MEMORY: "40"}),
            timeout=30,
            what="the quota controller to count the new quota",
        )
        core.create_namespaced_pod(namespace, gpu_pod("first", 100, 10))
        wait_until(
            lambda: (
                core.read_namespaced_resource_quota("gpushare-gpu", namespace).status.used
                == {CORE: "100", MEMORY: "10"}
            ),
            timeout=30,
            what="the quota to count the first pod",
        )
        # What an admin sees: `kubectl describe quota` (use against the cap, from status).
        described = control_plane.kubectl("describe", "quota", "gpushare-gpu", "-n", namespace)
        lines = [line.split() for line in described.stdout.splitlines()]
        assert [CORE, "100", "200"] in lines, described.stdout
        assert [MEMORY, "10", "40"] in lines, described.stdout
        with pytest.raises(ApiException) as refused:
            core.create_namespaced_pod(namespace, gpu_pod("second", 150, 10))
        assert refused.value.status == 403
        assert "exceeded quota: gpushare-gpu" in refused.value.body
        assert "requests.tencent.com/vcuda-core=150" in refused.value.body

        # A file edit: the core cap grows, the memory cap goes.
        budgets.write_text(f"namespaces:\n  {namespace}: {{maxVcudaCore: 400}}\n")
        summary = sync(control_plane, budgets, selector)
        assert summary == "quotas: 0 created, 1 updated, 0 removed, 0 left alone (not gpushare's)"
        quota = core.read_namespaced_resource_quota("gpushare-gpu", namespace)
        assert dict(quota.spec.hard) == {CORE: "400"}
        wait_until(
            lambda: quota_status_is(core, namespace, {CORE: "400"}),
            timeout=30,
            what="the quota controller to count the changed quota",
        )
        core.create_namespaced_pod(namespace, gpu_pod("second", 150, 10))

        # No cap left: the quota goes; the others' quotas were never touched.
        budgets.write_text(f"namespaces:\n  {namespace}: {{gpuHours: 5}}\n")
        summary = sync(control_plane, budgets, selector)
        assert summary == "quotas: 0 created, 0 updated, 1 removed, 0 left alone (not gpushare's)"
        names = [q.metadata.name for q in core.list_namespaced_resource_quota(namespace).items]
        assert names == ["team-pods"]
        foreign_after = {
            (ns, name): owner_view(core.read_namespaced_resource_quota(name, ns))
            for ns, name in foreign_before
        }
        assert foreign_after == foreign_before
        kept = core.read_namespaced_resource_quota("gpushare-gpu", other_namespace)
        assert dict(kept.spec.hard) == {CORE: "7"}


def chart_cluster_role() -> dict[str, Any]:
    """The quota controller's ClusterRole as the real helm renders it from the chart."""
    import yaml

    from tests.cluster.controlplane import find_tool

    root = Path(__file__).resolve().parents[2]
    rendered = subprocess.run(
        [
            find_tool("helm"),
            "template",
            "t",
            str(root / "deployment" / "chart"),
            "--namespace",
            "gpushare-system",
            "--show-only",
            "templates/quotas.yaml",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    (role,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ClusterRole"]
    return dict(role)


def test_the_charts_rbac_is_enough_for_the_controller(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """`gpushare quotas sync` as a ServiceAccount holding only the chart's ClusterRole."""
    unique = f"gpushare-quotas-test-{uuid.uuid4().hex[:6]}"
    role = chart_cluster_role()
    role["metadata"] = {"name": unique}
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(f"namespaces:\n  {namespace}: {{maxVcudaCore: 300}}\n")
    with control_plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        rbac = kubernetes.client.RbacAuthorizationV1Api(client)
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "quotas"}})
        token = core.create_namespaced_service_account_token(
            "quotas", namespace, {"spec": {"expirationSeconds": 600}}
        ).status.token
        kubeconfig = control_plane.kubeconfig_for(
            f"system:serviceaccount:{namespace}:quotas", token
        )
        command = [
            sys.executable,
            "-m",
            "gpushare",
            "quotas",
            "sync",
            "--once",
            f"--budgets={budgets}",
            f"--kubeconfig={kubeconfig}",
            f"--namespace-selector={NAMESPACE_LABEL}={namespace}",
        ]

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

        refused = run()
        assert refused.returncode == 1
        assert "HTTP 403" in refused.stderr, "without the role the API server must refuse"

        rbac.create_cluster_role(role)
        try:
            rbac.create_cluster_role_binding(
                {
                    "metadata": {"name": unique},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": unique,
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": "quotas", "namespace": namespace}
                    ],
                }
            )
            try:

                def synced() -> bool:
                    done = run()
                    return done.returncode == 0 and "1 created" in done.stdout

                wait_until(synced, timeout=30, what="the binding to take effect")
                quota = core.read_namespaced_resource_quota("gpushare-gpu", namespace)
                assert dict(quota.spec.hard) == {CORE: "300"}
                budgets.write_text(f"namespaces:\n  {namespace}: {{maxVcudaCore: 200}}\n")
                assert run().stdout.strip().startswith("quotas: 0 created, 1 updated")
                budgets.write_text(f"namespaces:\n  {namespace}: {{}}\n")
                assert run().stdout.strip().startswith("quotas: 0 created, 0 updated, 1 removed")
            finally:
                rbac.delete_cluster_role_binding(unique)
        finally:
            rbac.delete_cluster_role(unique)


def test_a_bad_selector_is_refused_with_the_api_servers_reason(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    budgets = tmp_path / "budgets.yaml"
    # No cap on the defaults: whatever the selector did, no other test's namespace is touched.
    budgets.write_text("namespaces:\n  no-such-namespace-here: {maxVcudaCore: 100}\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpushare",
            "quotas",
            "sync",
            "--once",
            f"--budgets={budgets}",
            f"--kubeconfig={control_plane.kubeconfig}",
            "--namespace-selector=not a selector!",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("gpushare quotas sync: list namespaces: HTTP 400 Bad Request: ")
    assert "unable to parse requirement" in done.stderr
