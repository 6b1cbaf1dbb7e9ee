"""Used against allocated GPU time: per pod and namespace, idle pods, per-pod share gauges."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from gpushare.charge import gpus_spanned, used_gpu_seconds
from tests.timekeeper.conftest import NOW, minute_report

RANGE = "from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z"


def post(client: FlaskClient, body: dict[str, Any]) -> None:
    response = client.post("/api/v1/reports", json=body)
    assert response.status_code == 200, response.get_json()


def measured(index: int, sm: float | None, **kwargs: Any) -> dict[str, Any]:
    body = minute_report(index, first=NOW - timedelta(hours=2), **kwargs)
    if sm is not None:
        body["smUtilization"] = sm
        body["memoryUsedBytes"] = 1 << 30
    return body


@pytest.mark.parametrize(
    ("core", "sm", "gpus", "used"),
    [
        pytest.param(30, 0.3, 1, 18.0, id="share-fully-used"),
        pytest.param(50, 0.05, 1, 3.0, id="share-mostly-idle"),
        pytest.param(30, 0.6, 1, 36.0, id="burst-above-the-share"),
        pytest.param(200, 0.5, 2, 60.0, id="two-gpus-half-busy"),
        pytest.param(150, 1.0, 2, 120.0, id="share-plus-whole-gpu"),
    ],
)
def test_used_gpu_seconds(core: int, sm: float, gpus: int, used: float) -> None:
    assert gpus_spanned(core) == gpus
    assert used_gpu_seconds(core, sm, 60.0) == pytest.approx(used)


def test_usage_shows_allocated_used_and_idle_per_pod_and_in_total(client: FlaskClient) -> None:
    # train-0: 50 % share, busy 10 % of a GPU for 2 minutes, then one unmeasured minute.
    post(client, measured(1, 0.1, pod="train-0", core=50))
    post(client, measured(2, 0.1, pod="train-0", core=50))
    post(client, measured(3, None, pod="train-0", core=50))
    # train-1: a whole GPU fully used for one minute.
    post(client, measured(1, 1.0, pod="train-1", core=100))
    answer = client.get(f"/api/v1/namespaces/team-a/usage?{RANGE}").get_json()
    rows = {row["pod"]: row for row in answer["rows"]}
    assert {
        name: (row["gpuHours"], row["measuredGpuHours"], row["usedGpuHours"], row["idleShare"])
        for name, row in rows.items()
    } == {
        "train-0": (round(90 / 3600, 6), round(60 / 3600, 6), round(12 / 3600, 6), 0.8),
        "train-1": (round(60 / 3600, 6), round(60 / 3600, 6), round(60 / 3600, 6), 0.0),
    }
    assert answer["usedGpuHours"] == round(72 / 3600, 6)
    assert answer["measuredGpuHours"] == round(120 / 3600, 6)
    assert answer["idleShare"] == 0.4


def test_unmeasured_use_has_no_used_figure(client: FlaskClient) -> None:
    post(client, measured(1, None))
    answer = client.get(f"/api/v1/namespaces/team-a/usage?{RANGE}").get_json()
    assert (answer["usedGpuHours"], answer["idleShare"]) == (None, None)
    assert (answer["rows"][0]["usedGpuHours"], answer["rows"][0]["idleShare"]) == (None, None)


def test_idle_lists_pods_below_the_threshold_across_namespaces(client: FlaskClient) -> None:
    post(client, measured(1, 0.02, pod="notebook", core=50))
    post(client, measured(1, 0.3, pod="busy", core=30))
    post(client, measured(1, 0.01, pod="idle-b", namespace="team-b", core=100))
    post(client, measured(1, None, pod="blind", core=10))
    old = minute_report(1, pod="old", namespace="team-b", first=NOW - timedelta(days=3))
    post(client, {**old, "smUtilization": 0.0})

    answer = client.get("/api/v1/idle").get_json()
    assert (answer["windowHours"], answer["threshold"]) == (24.0, 0.1)
    assert (answer["measuredPods"], answer["unmeasuredPods"]) == (3, 1)
    assert [(p["namespace"], p["pod"], p["usedShare"], p["idleShare"]) for p in answer["pods"]] == [
        ("team-b", "idle-b", 0.01, 0.99),
        ("team-a", "notebook", 0.04, 0.96),
    ]
    assert answer["pods"][1]["vcudaCore"] == 50

    wide = client.get("/api/v1/idle?window_hours=96&threshold=0.05&namespace=team-b").get_json()
    assert [p["pod"] for p in wide["pods"]] == ["old", "idle-b"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param(
            "window_hours=0",
            "window_hours: must be a number above 0 and at most 744 (got '0')",
            id="empty-window",
        ),
        pytest.param(
            "window_hours=lots",
            "window_hours: must be a number above 0 and at most 744 (got 'lots')",
            id="not-a-number",
        ),
        pytest.param(
            "threshold=1.5", "threshold: must be a number in 0..1 (got '1.5')", id="threshold"
        ),
        pytest.param("namespace=Team_A", "namespace: must be a namespace name", id="bad-namespace"),
    ],
)
def test_bad_idle_queries_are_400(client: FlaskClient, query: str, message: str) -> None:
    response = client.get(f"/api/v1/idle?{query}")
    assert response.status_code == 400
    assert response.get_json()["message"].startswith(message)


def test_metrics_show_promised_and_delivered_share_per_pod(client: FlaskClient) -> None:
    recent = NOW - timedelta(minutes=5)
    post(client, minute_report(1, pod="train-0", core=50, first=recent) | {"smUtilization": 0.2})
    post(client, minute_report(1, pod="blind", core=30, first=recent))
    post(client, minute_report(1, pod="gone", core=100, first=NOW - timedelta(hours=1)))
    text = client.get("/metrics").get_data(as_text=True)
    lines = set(text.splitlines())
    assert (
        'gpushare_timekeeper_pod_promised_gpu_share{namespace="team-a",pod="train-0"} 0.5' in lines
    )
    assert (
        'gpushare_timekeeper_pod_delivered_gpu_share{namespace="team-a",pod="train-0"} 0.2' in lines
    )
    assert 'gpushare_timekeeper_pod_promised_gpu_share{namespace="team-a",pod="blind"} 0.3' in lines
    assert 'pod="blind"' not in "\n".join(
        line for line in lines if line.startswith("gpushare_timekeeper_pod_delivered")
    )
    assert 'pod="gone"' not in text, "a pod with no report in the last 15 minutes drops out"


@pytest.mark.parametrize(
    ("core", "sm", "used_share"),
    [
        pytest.param(30, 0.15, 0.5, id="share-half-used"),
        pytest.param(100, 0.25, 0.25, id="one-gpu-quarter"),
        pytest.param(200, 0.5, 0.5, id="two-gpus-half-busy"),
        pytest.param(150, 0.6, 0.8, id="share-plus-gpu-spans-two"),
    ],
)
def test_the_database_sums_use_like_the_charge_model(
    client: FlaskClient, core: int, sm: float, used_share: float
) -> None:
    post(client, measured(1, sm, pod="p", core=core))
    (pod,) = client.get("/api/v1/idle?threshold=1").get_json()["pods"]
    expected_used = used_gpu_seconds(core, sm, 60.0) / 3600
    assert pod["usedGpuHours"] == round(expected_used, 6)
    assert pod["usedShare"] == used_share
