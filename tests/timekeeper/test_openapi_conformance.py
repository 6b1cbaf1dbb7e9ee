"""The served OpenAPI document and the server agree (schemathesis, in process, SQLite).

Schemathesis generates requests from `/openapi.json`, valid and invalid, and checks every
answer: never a 5xx, only documented status codes and content types, bodies that match their
schemas, invalid input refused, valid input accepted. Two rules join fields and cannot be
written in JSON Schema (a report's `end` after its `start`, a usage range's `to` after its
`from`); the document states them in words, and valid-data acceptance is not asked of those
two operations.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.timekeeper.conftest import MakeApp, report_body
from timekeeper.openapi import openapi_document

CROSS_FIELD_RULES = {"postReport", "getUsage"}
"""Operations whose valid input must also meet a rule between two fields."""

BUDGETS = """
defaults: {period: month, gpuHours: 10}
namespaces:
  interns: {gpuHours: 1, whenExhausted: deny}
"""


def test_server_answers_as_its_openapi_document_says(make_app: MakeApp, database_kind: str) -> None:
    if database_kind != "sqlite":
        pytest.skip("the document is the same on every database; SQLite is enough")
    api = schemathesis.openapi.from_wsgi("/openapi.json", make_app(budgets=BUDGETS))
    checked = []
    for result in api.get_all_operations():
        operation = result.ok()
        cross_field = operation.definition.raw.get("operationId") in CROSS_FIELD_RULES
        _fuzz(operation, excluded=[positive_data_acceptance] if cross_field else [])
        checked.append(operation.label)
    documented = [
        f"{method.upper()} {path}"
        for path, operations in openapi_document()["paths"].items()
        for method in operations
        if path != "/openapi.json"
    ]
    assert sorted(checked) == sorted(documented)  # all but /openapi.json itself


def _fuzz(operation: Any, *, excluded: list[Any]) -> None:
    strategies = [operation.as_strategy(mode) for mode in GenerationMode]

    @given(case=st.one_of(strategies))
    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    def answers_as_documented(case: Any) -> None:
        case.call_and_validate(excluded_checks=excluded)

    answers_as_documented()


def _report_schema() -> dict[str, Any]:
    document = openapi_document()
    return {**document["components"]["schemas"]["Report"], "$defs": {}}


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"podUid": ""}, id="empty-pod-uid"),
        pytest.param({"pod": ""}, id="empty-pod"),
        pytest.param({"pod": "Not_A_Pod"}, id="pod-not-a-dns-name"),
        pytest.param({"podUid": "-starts-with-dash"}, id="pod-uid-bad-first-character"),
        pytest.param({"namespace": ""}, id="empty-namespace"),
        pytest.param({"vcudaCore": 100_001}, id="core-above-the-maximum"),
        pytest.param({"vcudaMemory": 1_000_001}, id="memory-above-the-maximum"),
        pytest.param({"sequence": 2**63}, id="sequence-beyond-int64"),
    ],
)
def test_the_document_refuses_what_the_server_refuses(
    make_app: MakeApp, overrides: dict[str, Any]
) -> None:
    body = report_body(**overrides)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, _report_schema())
    response = make_app().test_client().post("/api/v1/reports", json=body)
    assert response.status_code == 400, response.get_json()


def test_a_valid_report_passes_the_document(make_app: MakeApp) -> None:
    jsonschema.validate(report_body(), _report_schema())
    assert make_app().test_client().post("/api/v1/reports", json=report_body()).status_code == 200
