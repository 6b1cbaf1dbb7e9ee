"""The chart's templates read as text, for what rendering alone cannot show: the parts' own
code agrees with them (names, probes, TLS, RBAC). Rendering and the API server's acceptance of
every object are checked with the real helm and kube-apiserver in tests/cluster/test_chart.py."""

from __future__ import annotations

import re

import pytest
import yaml

from gpushare import annotations as keys
from gpushare import resources
from tests.deployment import chart
from webhook import certs
from webhook import settings as webhook_settings


def template_text(name: str) -> str:
    return (chart.TEMPLATES / name).read_text()


def documents(text: str) -> list[str]:
    return [part for part in re.split(r"^---\s*$", text, flags=re.MULTILINE) if part.strip()]


def test_every_included_template_is_defined_in_helpers() -> None:
    defined = chart.defines(chart.HELPERS.read_text())
    used = {
        name: path.name
        for path in chart.template_files()
        for name in chart.includes(path.read_text())
    }
    assert sorted(set(used) - defined) == [], "included but not defined in _helpers.tpl"
    assert sorted(defined - set(used)) == [], "defined in _helpers.tpl but never included"


def test_named_templates_live_only_in_helpers() -> None:
    elsewhere = {
        path.name: sorted(chart.defines(path.read_text()))
        for path in chart.template_files()
        if path != chart.HELPERS and chart.defines(path.read_text())
    }
    assert elsewhere == {}


def test_webhook_service_matches_the_default_certificate_names() -> None:
    text = template_text("webhook.yaml")
    service = next(doc for doc in documents(text) if re.search(r"^kind: Service$", doc, re.M))
    assert "name: {{ $name }}" in service
    assert '{{- $name := include "gpushare.componentName" "webhook" -}}' in text
    assert f"gpushare-{'webhook'}" == certs.SERVICE
    assert "- {name: https, port: 443, targetPort: https, protocol: TCP}" in service
    namespace = "gpushare-system"
    assert namespace == certs.NAMESPACE
    expected = [
        certs.SERVICE,
        f"{certs.SERVICE}.{namespace}",
        f"{certs.SERVICE}.{namespace}.svc",
        f"{certs.SERVICE}.{namespace}.svc.cluster.local",
    ]
    assert list(certs.DEFAULT_DNS_NAMES) == expected
    helper = chart.HELPERS.read_text().split('define "gpushare.webhook.dnsNames"', 1)[1]
    helper = helper.split("{{- end -}}", 1)[0]
    assert (
        'list $service (printf "%s.%s" $service $ns) (printf "%s.%s.svc" $service $ns) '
        '(printf "%s.%s.svc.cluster.local" $service $ns)' in helper
    )


def test_webhook_configurations_call_the_service_on_the_served_paths() -> None:
    text = template_text("webhook-configurations.yaml")
    for path in ("/mutate", "/validate"):
        assert (
            f"service: {{name: {{{{ $name }}}}, namespace: {{{{ $ns }}}}, path: {path}, port: 443}}"
            in text
        )
    from webhook.app import create_app

    app = create_app(webhook_settings.Settings(timekeeper_url="http://127.0.0.1:9"))
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert {"/mutate", "/validate", "/healthz", "/readyz"} <= rules


def test_system_namespaces_match_the_webhook_default() -> None:
    values = chart.load_values()
    assert (*values["webhook"]["systemNamespaces"], certs.NAMESPACE) == (
        webhook_settings.DEFAULT_SYSTEM_NAMESPACES
    )
    helper = chart.HELPERS.read_text()
    assert "concat .Values.webhook.systemNamespaces (list .Release.Namespace)" in helper


def test_priority_classes_are_the_ones_the_webhook_sets() -> None:
    text = template_text("webhook-priorityclasses.yaml")
    names = re.findall(r"^  name: (\S+)$", text, re.MULTILINE)
    assert names == [keys.PRIORITY_CLASS_STANDARD, keys.PRIORITY_CLASS_OVERBUDGET]
    values = chart.load_values()["webhook"]["priorityClasses"]
    assert values["standard"]["value"] > 0 > values["overbudget"]["value"]
    assert "preemptionPolicy: Never" in documents(text)[1]


def test_match_conditions_name_the_gpu_resources() -> None:
    helper = chart.HELPERS.read_text().split('define "gpushare.webhook.matchConditions"', 1)[1]
    assert f"['{resources.VCUDA_CORE}', '{resources.VCUDA_MEMORY}']" in helper


@pytest.mark.parametrize(
    ("template", "port_name", "paths", "served_by"),
    [
        pytest.param("webhook.yaml", "https", ["/readyz", "/healthz"], "webhook", id="webhook"),
        pytest.param(
            "timekeeper-deployment.yaml",
            "http",
            ["/readyz", "/healthz"],
            "timekeeper",
            id="timekeeper",
        ),
    ],
)
def test_probes_use_a_declared_port_and_a_served_path(
    template: str, port_name: str, paths: list[str], served_by: str
) -> None:
    text = template_text(template)
    assert re.search(rf"name: {port_name}\b", text), f"no container port named {port_name}"
    probes = re.findall(r"httpGet: \{path: (\S+), port: (\w+)", text)
    assert sorted(probes) == sorted((path, port_name) for path in paths)
    source = "\n".join(p.read_text() for p in (chart.ROOT / served_by).glob("*.py"))
    for path in paths:
        assert f'"{path}"' in source, f"{served_by} has no route {path}"


def test_budgets_configmap_is_mounted_where_the_timekeeper_reads_it() -> None:
    values = chart.load_values()
    (timekeeper,) = [
        c
        for c in chart.containers(chart.TEMPLATES / "timekeeper-deployment.yaml", values)
        if c.name == "timekeeper"
    ]
    budgets = next(arg.split("=", 1)[1] for arg in timekeeper.args if arg.startswith("--budgets="))
    directory, _, filename = budgets.rpartition("/")
    assert timekeeper.mounts["budgets"] == directory
    configmap = template_text("timekeeper-configmap.yaml")
    assert f"  {filename}: |" in configmap
    deployment = template_text("timekeeper-deployment.yaml")
    assert "subPath:" not in deployment, "a subPath mount never sees ConfigMap updates"
    assert '(printf "%s-budgets" (include "gpushare.componentName" "timekeeper"))' in deployment
    assert 'name: {{ include "gpushare.componentName" "timekeeper" }}-budgets' in configmap
    from timekeeper.budgets import parse_budgets

    parse_budgets(yaml.safe_dump(values["timekeeper"]["budgets"]))


def expand_name(text: str) -> str:
    """`{{ $name }}` written out as the `$name := include …` of the same file says."""
    match = re.search(r"\{\{- \$name := (include \"[^\"]+\" \"\w+\") -\}\}", text)
    return text if match is None else text.replace("{{ $name }}", f"{{{{ {match.group(1)} }}}}")


def test_every_pod_names_a_service_account_the_chart_creates() -> None:
    created = set()
    named = set()
    for path in chart.template_files():
        text = expand_name(path.read_text())
        for document in documents(text):
            if re.search(r"^kind: ServiceAccount$", document, re.M):
                created.update(re.findall(r"^  name: (.+)$", document, re.M))
        named.update(re.findall(r"serviceAccountName: (.+)$", text, re.M))
    assert created == {
        f'{{{{ include "gpushare.componentName" "{part}" }}}}'
        for part in ("timekeeper", "webhook", "nodemanager", "extender", "scheduler", "quotas")
    }
    assert named == created


def test_cluster_role_bindings_bind_the_chart_service_accounts() -> None:
    for path in chart.template_files():
        for document in documents(path.read_text()):
            if not re.search(r"^kind: ClusterRoleBinding$", document, re.M):
                continue
            subjects = document.split("subjects:", 1)[1]
            assert "kind: ServiceAccount" in subjects
            assert "namespace: {{ .Release.Namespace }}" in subjects or (
                "namespace: {{ $ns }}" in subjects
            )


# Kubernetes client calls → (resource, verb); a call missing here fails the test below, so a
# new API call in a part's code is noticed together with the RBAC rule it needs.
_VERBS = {
    "list": "list",
    "read": "get",
    "patch": "patch",
    "create": "create",
    "delete": "delete",
    "replace": "update",
}


def api_calls(source: str) -> set[tuple[str, str]]:
    """(resource, verb) of every `self._core.<method>` in a part's Kubernetes adapter."""
    found = set()
    for method, called in re.findall(r"\._core\.(\w+)(\(?)", source):
        action, _, rest = method.partition("_")
        base = rest.replace("namespaced_", "").replace("_for_all_namespaces", "")
        subresources = {"pod_binding": "pods/binding", "pod_eviction": "pods/eviction"}
        # resource_quota → resourcequotas
        resource = subresources.get(base, base.replace("_", "") + "s")
        assert action in _VERBS, f"unknown Kubernetes client call {method}"
        # A list method handed to watch.Watch().stream (not called) is a watch.
        found.add((resource, _VERBS[action] if called else "watch"))
    return found


def granted(template: str) -> set[tuple[str, str]]:
    text = template_text(template)
    rules = re.findall(r'resources: \["([\w/]+)"\]\n\s+verbs: \[([^\]]*)\]', text)
    return {(resource, verb.strip(' "')) for resource, verbs in rules for verb in verbs.split(",")}


@pytest.mark.parametrize(
    ("sources", "template"),
    [
        pytest.param(
            ["vgpu-runtime/nodemanager/kube.py"], "nodemanager-rbac.yaml", id="nodemanager"
        ),
        pytest.param(["extender/kube.py"], "extender.yaml", id="extender"),
        pytest.param(["timekeeper/quota_sync.py"], "quotas.yaml", id="quotas"),
    ],
)
def test_cluster_roles_grant_what_the_code_calls(sources: list[str], template: str) -> None:
    calls = set().union(*(api_calls((chart.ROOT / s).read_text()) for s in sources))
    assert calls, "no Kubernetes API calls found: the adapter moved?"
    assert sorted(calls - granted(template)) == []


def test_only_these_adapters_call_the_kubernetes_api() -> None:
    callers = sorted(
        str(path.relative_to(chart.ROOT))
        for part in (
            "timekeeper",
            "webhook",
            "extender",
            "sidecar",
            "vgpu-runtime/nodemanager",
            "gpushare",
        )
        for path in (chart.ROOT / part).glob("*.py")
        if "._core." in path.read_text()
    )
    assert callers == [
        "extender/kube.py",
        "timekeeper/quota_sync.py",
        "vgpu-runtime/nodemanager/kube.py",
    ]
