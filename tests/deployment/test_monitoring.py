"""The chart's monitoring: PrometheusRules checked by promtool (syntax and unit tests of the
alerts), and every metric a rule or a dashboard panel names is one the code exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from tests.deployment import chart

_METRIC = re.compile(r"\bgpushare_[a-z_]+\b")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which(name)
    if found is None:
        message = f"{name} is not installed"
        if _in_ci():
            pytest.fail(f"{message}; CI=true needs it", pytrace=False)
        pytest.skip(message)
    return found


def rendered(*sets: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [
            _tool("helm"),
            "template",
            "t",
            str(chart.CHART),
            "--namespace",
            "gpushare-system",
            *[arg for value in sets for arg in ("--set", value)],
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


ALL_ON = (
    "monitoring.serviceMonitors.enabled=true",
    "monitoring.prometheusRules.enabled=true",
    "monitoring.grafanaDashboard.enabled=true",
)


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return rendered(*ALL_ON)


def rule_groups(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (rule,) = [o for o in objects if o["kind"] == "PrometheusRule"]
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def dashboard(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (config,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "gpushare-dashboard"
    ]
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    parsed: dict[str, Any] = json.loads(config["data"]["gpushare.json"])
    return parsed


def test_everything_is_off_by_default() -> None:
    kinds = {o["kind"] for o in rendered()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert "gpushare-dashboard" not in {o["metadata"]["name"] for o in rendered()}


def test_each_part_has_its_own_switch(objects: list[dict[str, Any]]) -> None:
    assert sorted(o["kind"] for o in objects if o["apiVersion"].startswith("monitoring.")) == [
        "PodMonitor",
        "PrometheusRule",
        "ServiceMonitor",
        "ServiceMonitor",
    ]
    only_rules = rendered("monitoring.prometheusRules.enabled=true")
    assert [o["kind"] for o in only_rules if o["apiVersion"].startswith("monitoring.")] == [
        "PrometheusRule"
    ]


def test_alerts_cover_what_admins_need(objects: list[dict[str, Any]]) -> None:
    alerts = {rule["alert"] for group in rule_groups(objects) for rule in group["rules"]}
    assert alerts == {
        "GpushareBudgetWarning",
        "GpushareBudgetExhausted",
        "GpushareTimekeeperDown",
        "GpushareWebhookBadRequests",
        "GpushareWebhookTimekeeperErrors",
        "GpushareWebhookSlow",
        "GpushareSidecarSpoolGrowing",
        "GpushareGpuUnhealthy",
    }


def exported_metrics() -> set[str]:
    """Every sample name the code exposes: timekeeper and webhook from their real /metrics
    registries, the node manager from its collector's source."""
    from timekeeper.metrics import Metrics as TimekeeperMetrics
    from timekeeper.pod_metrics import PodShareCollector
    from webhook.metrics import Metrics as WebhookMetrics

    class NoPods:
        def pods(self, start: Any, end: Any) -> list[Any]:
            return []

    timekeeper = TimekeeperMetrics(
        lambda: [],
        collectors=[PodShareCollector(NoPods(), lambda: None)],  # type: ignore[arg-type]
    )
    texts = [
        generate_latest(timekeeper.registry).decode(),
        generate_latest(WebhookMetrics().registry).decode(),
    ]
    names: set[str] = set()
    for text in texts:
        for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
            if kind == "counter":
                names.add(name if name.endswith("_total") else name + "_total")
            elif kind == "histogram":
                names.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
            else:
                names.add(name)
    source = (chart.ROOT / "vgpu-runtime" / "nodemanager" / "metrics.py").read_text()
    names.update(re.findall(r'"(gpushare_[a-z_]+)"', source))
    return names


def test_every_metric_named_by_a_rule_or_panel_is_exported(objects: list[dict[str, Any]]) -> None:
    exported = exported_metrics()
    assert "gpushare_timekeeper_budget_state" in exported  # the scan found the families
    expressions = [rule["expr"] for group in rule_groups(objects) for rule in group["rules"]]
    expressions += [
        target["expr"] for panel in dashboard(objects)["panels"] for target in panel["targets"]
    ]
    named = {name for expr in expressions for name in _METRIC.findall(expr)}
    assert sorted(named - exported) == []
    assert len(named) >= 12


def test_promtool_accepts_the_rules(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups(objects)}))
    result = subprocess.run(
        [_tool("promtool"), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout + result.stderr


def test_alerts_fire_when_they_should(objects: list[dict[str, Any]], tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups(objects)}))
    shutil.copy(Path(__file__).with_name("alert_tests.yaml"), tmp_path / "tests.yaml")
    result = subprocess.run(
        [_tool("promtool"), "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_is_grafana_json(objects: list[dict[str, Any]]) -> None:
    board = dashboard(objects)
    assert board["uid"] == "gpushare-overview"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    assert all(panel["targets"] for panel in board["panels"])
