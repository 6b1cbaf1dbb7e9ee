"""Quota annotations changed on a running pod (`kubectl annotate`): /validate checks the new
values on UPDATE with the rules of CREATE, and a valid change is admitted."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.webhook.builders import FakeBudgets, container, gpu, pod, review
from webhook.app import create_app
from webhook.settings import Settings


def _validate_update(annotations: dict[str, str]) -> dict[str, Any]:
    old = pod(container(limits=gpu(30, 8)), annotations={"gpushare.io/quota-request": "0.2"})
    new = copy.deepcopy(old)
    new["metadata"]["annotations"].update(annotations)
    body = review(new, operation="UPDATE")
    body["request"]["oldObject"] = old
    app = create_app(Settings(timekeeper_url="http://tk:8080"), budgets=FakeBudgets())
    response = app.test_client().post("/validate", json=body)
    assert response.status_code == 200
    answer: dict[str, Any] = response.json["response"]  # type: ignore[index]
    return answer


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        pytest.param({"gpushare.io/quota-limit": "0.8"}, None, id="new-limit"),
        pytest.param({"gpushare.io/quota-request": "0"}, None, id="best-effort"),
        pytest.param(
            {"gpushare.io/quota-limit": "1.5"},
            "pod rejected: annotation gpushare.io/quota-limit=1.5; it must be a fraction of GPU"
            " time with 0 <= quota-request <= quota-limit <= 1",
            id="limit-above-one",
        ),
        pytest.param(
            {"gpushare.io/quota-request": "0.5"},
            "pod rejected: annotation gpushare.io/quota-request=0.5 cannot be guaranteed:"
            ' container "train" asks tencent.com/vcuda-core=30 (0.3 of a GPU), and the'
            " guaranteed share is that allocation; lower gpushare.io/quota-request to at most"
            " 0.3 or raise tencent.com/vcuda-core to at least 50",
            id="request-above-allocation",
        ),
    ],
)
def test_quota_annotations_checked_on_update(
    annotations: dict[str, str], message: str | None
) -> None:
    answer = _validate_update(annotations)
    assert answer["allowed"] is (message is None)
    if message is not None:
        assert answer["status"]["message"] == message
