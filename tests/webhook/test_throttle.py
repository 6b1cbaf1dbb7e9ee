"""A namespace exhausted with `whenExhausted: throttle`: new GPU pods are admitted at the
standard PriorityClass with a warning saying they run at the throttle floor; the status is
read from the timekeeper's wire format."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tests.webhook.builders import FakeBudgets, decode_patch, pod, review, status
from webhook.app import create_app
from webhook.budget import StatusFormatError, parse_status
from webhook.settings import Settings

TIMEKEEPER = "http://timekeeper.gpushare-system.svc:8080"


def _mutate(budgets: FakeBudgets) -> dict[str, Any]:
    app = create_app(Settings(timekeeper_url=TIMEKEEPER), budgets=budgets)
    response = app.test_client().post("/mutate", json=review(pod(), namespace="team-a"))
    assert response.status_code == 200
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body["response"]


def test_throttled_namespace_admits_at_the_floor_with_a_warning() -> None:
    exhausted = dataclasses.replace(
        status("exhausted", "throttle", used=10.5, refills_at="2026-12-01T00:00:00Z"),
        throttle_to_percent=20.0,
    )
    answer = _mutate(FakeBudgets(default=exhausted))
    assert answer["allowed"] is True
    assert answer["warnings"] == [
        'gpushare: namespace "team-a" has used 10.50 of its 10 GPU-hours budget (105%), so this'
        " pod runs throttled to 20% of its GPU share until the budget refills at"
        " 2026-12-01T00:00:00Z"
    ]
    ops = decode_patch({"response": answer})
    classes = [op["value"] for op in ops if op["path"] == "/spec/priorityClassName"]
    assert classes == ["gpushare-standard"]


def test_throttle_policy_in_budget_gets_no_warning() -> None:
    answer = _mutate(FakeBudgets(default=status("in-budget", "throttle")))
    assert answer["allowed"] is True
    assert not answer.get("warnings")


@pytest.mark.parametrize(
    ("wire", "floor"),
    [
        pytest.param({}, 10.0, id="default-floor"),
        pytest.param({"throttleToPercent": 25}, 25.0, id="own-floor"),
    ],
)
def test_status_with_throttle_is_read(wire: dict[str, Any], floor: float) -> None:
    body = {"state": "exhausted", "whenExhausted": "throttle", "usedGpuHours": 3.0, **wire}
    assert parse_status("team-a", body).throttle_to_percent == floor


def test_bad_floor_is_a_format_error() -> None:
    body = {"state": "exhausted", "whenExhausted": "throttle", "throttleToPercent": "low"}
    with pytest.raises(StatusFormatError, match="throttleToPercent='low' is not a number"):
        parse_status("team-a", body)
