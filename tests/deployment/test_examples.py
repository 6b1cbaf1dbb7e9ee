"""deployment/examples: plain manifests validated against the Kubernetes schemas and the parts."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from extender.app import create_app
from extender.view import ClusterView
from gpushare import resources
from tests.deployment import chart
from timekeeper.budgets import parse_budgets
from webhook import certs
from webhook.validation import validate_pod

EXAMPLES = chart.ROOT / "deployment" / "examples"
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
EXTENDER_FIELDS = {
    "urlPrefix",
    "filterVerb",
    "preemptVerb",
    "prioritizeVerb",
    "weight",
    "bindVerb",
    "enableHTTPS",
    "tlsConfig",
    "httpTimeout",
    "nodeCacheCapable",
    "managedResources",
    "ignorable",
}


def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((EXAMPLES / name).read_text())
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize("name", ["gpu-pod.yaml", "budgets-configmap.yaml"])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifest_is_valid_kubernetes(name: str, version: str) -> None:
    kubernetes_validate.validate(load(name), version, strict=True)


def test_gpu_pod_is_accepted_by_the_webhook_rules() -> None:
    pod = load("gpu-pod.yaml")
    assert validate_pod(pod) == []
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert resources.VCUDA_CORE in limits and resources.VCUDA_MEMORY in limits


def test_budgets_configmap_holds_the_example_budgets() -> None:
    configmap = load("budgets-configmap.yaml")
    text = configmap["data"]["budgets.yaml"]
    policy = parse_budgets(text)
    example = yaml.safe_load((EXAMPLES / "budgets.yaml").read_text())
    assert yaml.safe_load(text) == example
    assert set(policy.namespaces) == set(example["namespaces"])
    assert configmap["metadata"]["namespace"] == certs.NAMESPACE
    assert re.search(
        rf"budgetsConfigMap: {configmap['metadata']['name']}\b",
        (EXAMPLES / "budgets-configmap.yaml").read_text(),
    )


def test_scheduler_configuration_reaches_the_extender() -> None:
    config = load("scheduler-config.yaml")
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config["kind"] == "KubeSchedulerConfiguration"
    (extender,) = config["extenders"]
    assert set(extender) <= EXTENDER_FIELDS
    port = chart.load_values()["extender"]["port"]
    assert extender["urlPrefix"] == f"http://gpushare-extender.gpushare-system.svc:{port}"
    assert isinstance(extender["weight"], int) and extender["weight"] > 0
    assert re.fullmatch(r"\d+(ms|s|m)", extender["httpTimeout"])
    assert extender["nodeCacheCapable"] is True
    assert extender["ignorable"] is False
    assert extender["managedResources"] == [
        {"name": resources.VCUDA_CORE, "ignoredByScheduler": False},
        {"name": resources.VCUDA_MEMORY, "ignoredByScheduler": False},
    ]
    app = create_app(view=ClusterView(), binder=None)  # type: ignore[arg-type]
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    for key in ("filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb"):
        assert f"/{extender[key]}" in rules


def test_the_chart_scheduler_configuration_matches_the_example() -> None:
    text = (chart.ROOT / "deployment/chart/templates/scheduler.yaml").read_text()
    example = load("scheduler-config.yaml")["extenders"][0]
    for key in ("filterVerb", "prioritizeVerb", "bindVerb", "preemptVerb", "weight"):
        assert f"        {key}: {example[key]}\n" in text
    assert "        nodeCacheCapable: true\n" in text
    assert "        ignorable: false\n" in text
