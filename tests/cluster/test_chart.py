"""The Helm chart rendered by the real helm and installed into the real kube-apiserver.

Generic on purpose: every object of every documented value set must be accepted by the API
server, whatever templates the chart grows. The chart's cluster-scoped objects have fixed
names (the webhook sets the PriorityClass names), so one release of it exists at a time: each
test here removes its release before it ends.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes_validate
import pytest
import yaml

from tests.cluster.controlplane import ControlPlane
from tests.polling import wait_until
from webhook import certs

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deployment" / "chart"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
EXAMPLES = ROOT / "deployment" / "examples"
OLDEST_KUBERNETES = "1.28.0"
GPU_RESOURCES = ("tencent.com/vcuda-core", "tencent.com/vcuda-memory")
# Kinds whose definitions come with another product (cert-manager): no API server here has them.
FOREIGN_GROUPS = ("cert-manager.io/",)
CONFIGURATION_KINDS = {"KubeSchedulerConfiguration"}
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "Job"}
CLUSTER_KINDS = {
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "PriorityClass",
}

Helm = Callable[..., subprocess.CompletedProcess[str]]


def documented_minimal_values() -> str:
    """The `my-values.yaml` that docs/deployment.md gives as the minimal one."""
    text = DEPLOYMENT_DOC.read_text()
    match = re.search(r"A minimal `my-values\.yaml`:\s*```yaml\n(.*?)```", text, re.DOTALL)
    assert match, "docs/deployment.md no longer shows a minimal my-values.yaml"
    return match.group(1)


# Value sets the docs describe (docs/deployment.md), as helm arguments. "{certs}" is a folder
# holding `gpushare certs generate`'s files, "{minimal}" the documented my-values.yaml.
VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "documented-minimal": ["-f", "{minimal}"],
    "own-ca": [
        "--set-file",
        "webhook.tls.caBundle={certs}/ca.b64",
        "--set-file",
        "webhook.tls.cert={certs}/tls.crt",
        "--set-file",
        "webhook.tls.key={certs}/tls.key",
    ],
    "cert-manager-self-signed": ["--set", "webhook.tls.certManager.enabled=true"],
    "cert-manager-issuer": [
        "--set",
        "webhook.tls.certManager.enabled=true",
        "--set",
        "webhook.tls.certManager.issuerRef.name=company-ca",
    ],
    "postgresql": [
        "--set",
        "timekeeper.database.url=postgresql+psycopg://gpushare:secret@db.example/gpushare",
        "--set",
        "timekeeper.replicas=3",
        "--set",
        "timekeeper.readRequiresToken=true",
    ],
    "postgresql-secret": [
        "--set",
        "timekeeper.database.existingSecret=gpushare-db",
        "--set",
        "timekeeper.database.sqlite.persistence.enabled=false",
    ],
    "static-tokens": [
        "--set",
        "timekeeper.auth.mode=tokens",
        "--set",
        "timekeeper.auth.tokensSecret=gpushare-tokens",
    ],
    "no-auth-own-budgets": [
        "--set",
        "timekeeper.auth.mode=none",
        "--set",
        "timekeeper.budgetsConfigMap=my-budgets",
    ],
    "classic-sidecar": ["--set", "sidecar.mode=classic"],
    "every-pod-default-scheduler": [
        "--set",
        "webhook.matchGpuPodsOnly=false",
        "--set",
        "scheduler.enabled=false",
        "--set",
        "webhook.schedulerName=",
        "--set",
        "extender.networkPolicy.enabled=false",
        "--set",
        "webhook.admissionFailurePolicy=Ignore",
        "--set",
        "webhook.failurePolicy=fail-closed",
    ],
    "simulated-gpus": [
        "--set",
        "nodemanager.simulateGpus=2x16GiB",
        "--set",
        "nodemanager.runtimeClassName=",
    ],
    "no-nodemanager": ["--set", "nodemanager.enabled=false"],
}


@pytest.fixture(scope="module")
def value_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("chart-values")
    bundle = certs.generate(folder)
    (folder / "ca.b64").write_text(bundle.ca_bundle)
    minimal = folder / "my-values.yaml"
    minimal.write_text(documented_minimal_values())
    return {"certs": str(folder), "minimal": str(minimal)}


def expand(args: list[str], files: dict[str, str]) -> list[str]:
    return [arg.format(**files) for arg in args]


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def render(helm: Helm, namespace: str, *args: str) -> list[dict[str, Any]]:
    result = helm("template", "gpushare", str(CHART), "--namespace", namespace, *args)
    return documents(result.stdout)


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels") or {}
    return labels


def selector_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Services and PodDisruptionBudgets that do not select the pods of exactly one workload.

    (The API server itself refuses a workload whose selector misses its own pod labels, but
    not a Service or budget that selects nothing or too much.)
    """
    workloads = [o for o in objects if o["kind"] in WORKLOAD_KINDS]
    problems = []
    for thing in objects:
        if thing["kind"] == "Service":
            selector = thing["spec"].get("selector") or {}
        elif thing["kind"] == "PodDisruptionBudget":
            selector = thing["spec"]["selector"].get("matchLabels") or {}
        else:
            continue
        selected = [
            w["metadata"]["name"]
            for w in workloads
            if selector and selector.items() <= pod_labels(w).items()
        ]
        if len(selected) != 1:
            problems.append(f"{thing['kind']} {thing['metadata']['name']} selects {selected}")
    return problems


def server_dry_run(
    control_plane: ControlPlane, namespace: str, objects: list[dict[str, Any]]
) -> subprocess.CompletedProcess[str]:
    """Each object validated, defaulted and admitted by the API server, none stored."""
    return control_plane.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--force-conflicts",
        "--field-manager=gpushare-chart-test",
        "--namespace",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump_all(objects),
    )


def test_helm_lint_passes_strict(helm: Helm, value_files: dict[str, str]) -> None:
    helm("lint", "--strict", str(CHART))
    helm("lint", "--strict", str(CHART), *expand(VALUE_SETS["own-ca"], value_files))


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_object_of_a_documented_value_set_is_accepted_by_the_api_server(
    value_set: str,
    helm: Helm,
    control_plane: ControlPlane,
    namespace: str,
    value_files: dict[str, str],
) -> None:
    objects = render(helm, namespace, *expand(VALUE_SETS[value_set], value_files))
    assert {"Deployment", "MutatingWebhookConfiguration", "PriorityClass"} <= kinds(objects)
    ours = [o for o in objects if not o["apiVersion"].startswith(FOREIGN_GROUPS)]
    # The CEL of the webhook configurations is compiled on the way.
    result = server_dry_run(control_plane, namespace, ours)
    accepted = [line for line in result.stdout.splitlines() if "(server dry run)" in line]
    assert len(accepted) == len(ours), result.stdout + result.stderr
    assert "Warning:" not in result.stderr  # deprecated fields and the like

    # The API server here is the newest; the oldest supported one's schema must fit too.
    problems = []
    for document in ours:
        try:
            kubernetes_validate.validate(document, OLDEST_KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{document['kind']} {document['metadata']['name']}: {err.message}")
    assert problems == []
    assert selector_problems(objects) == []


def test_example_manifests_are_accepted_by_the_api_server(
    control_plane: ControlPlane, namespace: str
) -> None:
    examples = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for document in documents(path.read_text()):
            # API objects only: not a budgets file, not a component's configuration file.
            if "kind" in document and document["kind"] not in CONFIGURATION_KINDS:
                document["metadata"].pop("namespace", None)  # into the test's namespace
                examples.append(document)
    assert {"Pod", "ConfigMap"} <= kinds(examples)
    result = server_dry_run(control_plane, namespace, examples)
    assert result.stdout.count("(server dry run)") == len(examples), result.stdout
    assert "Warning:" not in result.stderr


def test_native_sidecars_are_refused_below_kubernetes_1_29(helm: Helm) -> None:
    refused = helm("template", "gpushare", str(CHART), "--kube-version", "1.28.9", check=False)
    assert refused.returncode != 0
    assert "sidecar.mode=native needs Kubernetes 1.29 or newer" in refused.stderr
    assert "v1.28.9" in refused.stderr
    assert "sidecar.mode=classic" in refused.stderr
    # Managed clusters' versions carry a suffix.
    refused = helm(
        "template", "gpushare", str(CHART), "--kube-version", "1.28.3-eks-1", check=False
    )
    assert "sidecar.mode=native needs Kubernetes 1.29" in refused.stderr

    # The oldest supported Kubernetes renders with classic sidecars.
    classic = render(
        helm,
        "gpushare-system",
        "--kube-version",
        OLDEST_KUBERNETES,
        "--set",
        "sidecar.mode=classic",
    )
    assert "MutatingWebhookConfiguration" in kinds(classic)
    native = render(helm, "gpushare-system", "--kube-version", "1.29.0")
    assert "MutatingWebhookConfiguration" in kinds(native)


def test_unknown_sidecar_mode_and_too_old_kubernetes_are_refused(helm: Helm) -> None:
    unknown = helm("template", "gpushare", str(CHART), "--set", "sidecar.mode=sidecar", check=False)
    assert unknown.returncode != 0
    assert 'sidecar.mode must be native or classic (got "sidecar")' in unknown.stderr
    old = helm(
        "template",
        "gpushare",
        str(CHART),
        "--kube-version",
        "1.27.4",
        "--set",
        "sidecar.mode=classic",
        check=False,
    )
    assert old.returncode != 0
    assert "requires kubeVersion: >=1.28" in old.stderr, old.stderr
    assert "v1.27.4" in old.stderr


@pytest.fixture
def other_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace outside the release, labelled like the `namespace` fixture's."""
    name = f"chart-pods-{uuid.uuid4().hex[:6]}"
    with control_plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespace({"metadata": {"name": name, "labels": {"gpushare-test": name}}})
        try:
            core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
        except kubernetes.client.ApiException as err:
            if err.status != 409:
                raise
        try:
            yield name
        finally:
            core.delete_namespace(name)


def _pod(name: str, resources: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {"name": "main", "image": "registry.example/app:1", "resources": resources}
            ]
        },
    }


def _get(
    control_plane: ControlPlane, objects: list[dict[str, Any]]
) -> subprocess.CompletedProcess[str]:
    """`kubectl get` of these objects (ignoring those already gone), names only."""
    return control_plane.kubectl(
        "get", "--ignore-not-found", "-o", "name", "-f", "-", input=yaml.safe_dump_all(objects)
    )


def test_install_upgrade_and_uninstall_on_the_real_api_server(
    control_plane: ControlPlane, namespace: str, other_namespace: str
) -> None:
    release = "gpushare"
    control_plane.helm("install", release, str(CHART), "--namespace", namespace)
    uninstalled = False
    try:
        manifest = documents(
            control_plane.helm("get", "manifest", release, "--namespace", namespace).stdout
        )
        # Every object helm sent is there.
        present = _get(control_plane, manifest).stdout.split()
        assert len(present) == len(manifest), present
        assert {"PriorityClass", "ClusterRole", "ClusterRoleBinding"} <= kinds(manifest)
        assert {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"} <= kinds(manifest)

        with control_plane.api_client() as client:
            admission = kubernetes.client.AdmissionregistrationV1Api(client)
            core = kubernetes.client.CoreV1Api(client)
            mutating = admission.read_mutating_webhook_configuration("gpushare-webhook")
            validating = admission.read_validating_webhook_configuration("gpushare-webhook")
            secret = core.read_namespaced_secret("gpushare-webhook-tls", namespace)
            for webhook in [*mutating.webhooks, *validating.webhooks]:
                assert webhook.match_conditions, webhook.name
                assert webhook.client_config.service.namespace == namespace
                assert webhook.client_config.ca_bundle == secret.data["ca.crt"]

            # The API server compiles matchConditions: a broken expression is refused, so the
            # chart's were compiled when it accepted them.
            broken = admission.api_client.sanitize_for_serialization(validating)
            broken["metadata"] = {"name": f"gpushare-test-broken-{uuid.uuid4().hex[:6]}"}
            broken["webhooks"][0]["matchConditions"][0]["expression"] = "object.spec.nope("
            refused = control_plane.kubectl(
                "create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(broken), check=False
            )
            assert refused.returncode != 0
            assert "compilation failed" in refused.stderr, refused.stderr

            # The conditions select GPU pods only: with no webhook serving (failurePolicy Fail)
            # a GPU pod is refused by the API server's call, any other pod is admitted.
            plain = _pod("plain", {"requests": {"cpu": "100m"}})
            core.create_namespaced_pod(other_namespace, plain)
            gpu = _pod("gpu", {"limits": {GPU_RESOURCES[0]: "50"}})
            with pytest.raises(kubernetes.client.ApiException) as caught:
                core.create_namespaced_pod(other_namespace, gpu)
            assert "gpushare" in caught.value.body and "failed calling webhook" in caught.value.body

        # An upgrade keeps the generated certificate (Helm's lookup of the Secret).
        control_plane.helm(
            "upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values"
        )
        with control_plane.api_client() as client:
            core = kubernetes.client.CoreV1Api(client)
            admission = kubernetes.client.AdmissionregistrationV1Api(client)
            after = core.read_namespaced_secret("gpushare-webhook-tls", namespace)
            assert after.data == secret.data
            mutating = admission.read_mutating_webhook_configuration("gpushare-webhook")
            assert mutating.webhooks[0].client_config.ca_bundle == secret.data["ca.crt"]

        control_plane.helm("uninstall", release, "--namespace", namespace, "--wait")
        uninstalled = True
        kept = [
            o
            for o in manifest
            if (o["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") == "keep"
        ]
        assert [o["kind"] for o in kept] == ["PersistentVolumeClaim"]

        def nothing_left() -> bool:
            left = _get(control_plane, [o for o in manifest if o not in kept]).stdout.split()
            return left == []

        wait_until(nothing_left, timeout=30, what="the release's objects to be deleted")
        # Nothing cluster-wide of the release's is left, whatever its name.
        for kind in CLUSTER_KINDS:
            left = control_plane.kubectl(
                "get", kind, "-l", f"app.kubernetes.io/instance={release}", "-o", "name"
            ).stdout
            assert left.strip() == "", left
    finally:
        if not uninstalled:
            control_plane.helm("uninstall", release, "--namespace", namespace, check=False)
