"""deployment/examples: plain manifests validated against the Kubernetes schemas and the parts."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gpushare import resources
from tests.deployment import chart
from timekeeper.budgets import parse_budgets
from webhook import certs
from webhook.app import create_app
from webhook.settings import Settings
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
TLS_FIELDS = {
    "insecure",
    "serverName",
    "certFile",
    "keyFile",
    "caFile",
    "certData",
    "keyData",
    "caData",
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
    assert set(extender["tlsConfig"]) <= TLS_FIELDS
    service_dns = certs.DEFAULT_DNS_NAMES[2]  # gpushare-webhook.gpushare-system.svc
    assert extender["urlPrefix"] == f"https://{service_dns}:443/scheduler"
    assert extender["enableHTTPS"] is True
    assert extender["tlsConfig"]["caData"] == "CA_BUNDLE"  # the documented placeholder
    assert isinstance(extender["weight"], int) and extender["weight"] > 0
    assert re.fullmatch(r"\d+(ms|s|m)", extender["httpTimeout"])
    assert extender["nodeCacheCapable"] is chart.load_values()["webhook"]["schedulerNodeCache"]
    assert extender["managedResources"] == [
        {"name": resources.VCUDA_CORE, "ignoredByScheduler": False},
        {"name": resources.VCUDA_MEMORY, "ignoredByScheduler": False},
    ]
    app = create_app(Settings(timekeeper_url="http://127.0.0.1:9"))
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    for verb in (extender["filterVerb"], extender["prioritizeVerb"]):
        assert f"/scheduler/{verb}" in rules


def test_ca_placeholder_is_the_only_thing_to_fill_in(tmp_path: Path) -> None:
    """With a real CA from `gpushare certs generate`, caData decodes to that certificate."""
    bundle = certs.generate(tmp_path, certs.DEFAULT_DNS_NAMES)
    text = (EXAMPLES / "scheduler-config.yaml").read_text().replace("CA_BUNDLE", bundle.ca_bundle)
    config = yaml.safe_load(text)
    ca_data = config["extenders"][0]["tlsConfig"]["caData"]
    assert base64.b64decode(ca_data) == Path(bundle.ca_cert).read_bytes()
