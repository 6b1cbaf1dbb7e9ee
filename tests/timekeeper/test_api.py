"""The REST API in process (Flask test client) on SQLite and PostgreSQL, clock fixed at NOW."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from tests.timekeeper.conftest import NOW, MakeApp, minute_report, report_body
from timekeeper import database, report_endpoint
from timekeeper.openapi import openapi_document
from timekeeper.reports import parse_rfc3339
from timekeeper.states import rfc3339

BUDGETS = """
defaults:
  period: month
  gpuHours: 10
  warnAtPercent: 50
namespaces:
  interns: {gpuHours: 1, whenExhausted: deny}
  research: {gpuHours: unlimited}
"""


def post(client: FlaskClient, body: Any) -> tuple[int, Any]:
    response = client.post("/api/v1/reports", json=body)
    return response.status_code, response.get_json()


def test_report_is_stored_and_charged(client: FlaskClient) -> None:
    status, answer = post(client, report_body())
    assert status == 200
    assert answer == {
        "podUid": "7f1c1d3e-0000-4000-8000-000000000001",
        "sequence": 1,
        "namespace": "team-a",
        "pod": "train-0",
        "start": "2026-11-21T05:49:00Z",
        "end": "2026-11-21T05:50:00Z",
        "gpuSeconds": 30.0,  # 50 % of a GPU for 60 s
        "memoryByteSeconds": 4 * 268435456 * 60.0,
        "receivedAt": "2026-11-21T06:00:00Z",
    }


def test_resend_gets_the_same_answer_and_is_charged_once(client: FlaskClient) -> None:
    first = post(client, report_body())
    second = post(client, report_body())
    assert second == first
    status = client.get("/api/v1/namespaces/team-a").get_json()
    assert status["usedGpuHours"] == round(30.0 / 3600, 6)


def test_resend_with_other_content_is_a_conflict(client: FlaskClient) -> None:
    post(client, report_body())
    status, answer = post(client, report_body(vcudaCore=60))
    assert status == 409
    assert answer["error"] == "conflict"
    assert "vcudaCore 50 then 60" in answer["message"]


@pytest.mark.parametrize(
    ("start", "end", "overlaps"),
    [
        pytest.param("2026-11-21T05:49:30Z", "2026-11-21T05:50:30Z", True, id="tail-overlap"),
        pytest.param("2026-11-21T05:48:30Z", "2026-11-21T05:49:30Z", True, id="head-overlap"),
        pytest.param("2026-11-21T05:49:10Z", "2026-11-21T05:49:20Z", True, id="inside"),
        pytest.param("2026-11-21T05:40:00Z", "2026-11-21T05:55:00Z", True, id="around"),
        pytest.param("2026-11-21T05:50:00Z", "2026-11-21T05:51:00Z", False, id="touching-after"),
        pytest.param("2026-11-21T05:48:00Z", "2026-11-21T05:49:00Z", False, id="touching-before"),
    ],
)
def test_overlapping_interval_of_the_same_pod_is_rejected(
    client: FlaskClient, start: str, end: str, overlaps: bool
) -> None:
    post(client, report_body())
    status, answer = post(client, report_body(sequence=2, start=start, end=end))
    if overlaps:
        assert status == 400
        assert answer["error"] == "rejected"
        assert "overlaps sequence 1" in answer["message"]
    else:
        assert status == 200, answer


def test_other_pods_may_overlap(client: FlaskClient) -> None:
    post(client, report_body())
    status, _ = post(client, report_body(podUid="other-uid", pod="train-1"))
    assert status == 200


@pytest.mark.parametrize(
    ("end", "status"),
    [
        pytest.param("2026-11-21T06:01:00Z", 200, id="inside-60s-skew"),
        pytest.param("2026-11-21T06:01:00.000001Z", 400, id="beyond-skew"),
        pytest.param("2026-11-22T00:00:00Z", 400, id="tomorrow"),
    ],
)
def test_future_end_beyond_clock_skew(client: FlaskClient, end: str, status: int) -> None:
    code, answer = post(client, report_body(start="2026-11-21T05:59:00Z", end=end))
    assert code == status, answer
    if status == 400:
        # Its own code: the sidecar keeps the report and retries until the clocks agree.
        assert answer["error"] == "too-early"
        assert "clock-skew allowance" in answer["message"]


def test_interval_longer_than_the_maximum_is_rejected(client: FlaskClient) -> None:
    code, answer = post(client, report_body(start="2026-11-19T05:00:00Z"))
    assert code == 400
    assert "at most 86400 s" in answer["message"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param([1, 2], "body: the report must be a JSON object (got an array)", id="array"),
        pytest.param(
            report_body(sequence="1"),
            "sequence: must be an integer, not a string",
            id="sequence-string",
        ),
        pytest.param(report_body(vcudaCore=0), "vcudaCore: must be an integer in 1..", id="core-0"),
        pytest.param(
            report_body(end="2026-11-21T05:48:00Z"),
            "end: must be after start",
            id="end-before-start",
        ),
        pytest.param(report_body(start=...), "start: required field is missing", id="no-start"),
        pytest.param(
            report_body(start="yesterday"), "start: must be an RFC 3339 timestamp", id="bad-time"
        ),
        pytest.param(report_body(vcudaCores=50), "vcudaCores: unknown field", id="typo-field"),
    ],
)
def test_bad_reports_get_400_naming_the_field(
    client: FlaskClient, body: Any, fragment: str
) -> None:
    status, answer = post(client, body)
    assert status == 400
    assert answer["error"] == "invalid"
    assert fragment in answer["message"]


_VALID = (
    '"podUid": "u-1", "pod": "p", "namespace": "team-a", "start": "2026-11-21T05:49:00Z", '
    '"end": "2026-11-21T05:50:00Z", "vcudaCore": 50, "vcudaMemory": 4'
)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            '{"sequence": 1, "sequence": 2, ' + _VALID + "}",
            "body: sequence: given twice; a report names each field once (plain JSON would "
            "silently keep the last)",
            id="duplicate-key",
        ),
        pytest.param(
            '{"sequence": NaN, ' + _VALID + "}",
            "invalid report: sequence: must be an integer, not a number (got nan)",
            id="sequence-nan",
        ),
        pytest.param(
            '{"sequence": 1e400, ' + _VALID + "}",
            "invalid report: sequence: must be an integer, not a number (got inf)",
            id="sequence-overflowing-float",
        ),
        pytest.param(
            '{"sequence": 9223372036854775808, ' + _VALID + "}",
            "invalid report: sequence: must be an integer in 1..9223372036854775807 "
            "(got 9223372036854775808)",
            id="sequence-beyond-int64",
        ),
        pytest.param(
            '{"sequence": 1, "smUtilization": Infinity, ' + _VALID + "}",
            "invalid report: smUtilization: must be a number in 0..1 (got inf)",
            id="utilization-infinity",
        ),
        pytest.param(
            '{"sequence": 1, '
            + _VALID.replace("2026-11-21T05:49:00Z", "0001-01-01T00:00:00+01:00")
            + "}",
            "invalid report: start: must lie between 1970-01-01T00:00:00Z and "
            "9000-01-01T00:00:00Z (a node clock that was never set, or a typo) "
            "(got '0001-01-01T00:00:00+01:00')",
            id="start-before-year-1-in-utc",
        ),
    ],
)
def test_bad_raw_report_bodies_are_400(client: FlaskClient, raw: str, message: str) -> None:
    response = client.post("/api/v1/reports", data=raw, content_type="application/json")
    assert (response.status_code, response.get_json()) == (
        400,
        {"error": "invalid", "message": message},
    )


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        pytest.param(json.dumps(report_body()).encode(), 200, None, id="chunked-report"),
        pytest.param(b"{" + b" " * 70_000 + b"}", 413, "request-entity-too-large", id="too-big"),
    ],
)
def test_a_chunked_body_is_read(
    client: FlaskClient, body: bytes, status: int, error: str | None
) -> None:
    # gunicorn hands a chunked body over without CONTENT_LENGTH; it was taken as empty.
    from werkzeug.test import EnvironBuilder

    environ = EnvironBuilder(
        path="/api/v1/reports",
        method="POST",
        data=body,
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    ).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = io.BytesIO(body)
    answers: list[str] = []
    payload = b"".join(
        client.application.wsgi_app(environ, lambda line, headers: answers.append(line))
    )
    assert int(answers[0].split()[0]) == status
    assert json.loads(payload).get("error") == error


def test_absurdly_nested_json_is_400(client: FlaskClient) -> None:
    nested = "[" * 30_000 + "]" * 30_000
    response = client.post("/api/v1/reports", data=nested, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["message"].startswith("body: must be a JSON object")


def test_non_json_body_is_400(client: FlaskClient) -> None:
    response = client.post("/api/v1/reports", data="podUid=1", content_type="text/plain")
    assert response.status_code == 400
    assert response.get_json()["message"].startswith("body: must be a JSON object")


def test_namespace_status_follows_the_budget(make_app: MakeApp) -> None:
    client = make_app(budgets=BUDGETS).test_client()
    # interns: 1 GPU-hour, deny. 100 % of a GPU for 50 minutes: 0.833 h, warning (>= 50 %).
    for index in range(1, 51):
        assert post(client, minute_report(index, namespace="interns", core=100))[0] == 200
    status = client.get("/api/v1/namespaces/interns").get_json()
    assert status == {
        "namespace": "interns",
        "state": "warning",
        "budgetGpuHours": 1.0,
        "usedGpuHours": round(50 / 60, 6),
        "remainingGpuHours": round(10 / 60, 6),
        "periodStart": "2026-11-01T00:00:00Z",
        "periodEnd": "2026-12-01T00:00:00Z",
        "whenExhausted": "deny",
        "burnRateGpuHoursPerDay": status["burnRateGpuHoursPerDay"],
        "projectedGpuHours": status["projectedGpuHours"],
        "refillsAt": None,
        "period": "month",
    }
    assert status["burnRateGpuHoursPerDay"] == pytest.approx(50 / 60 / 20.25, abs=1e-6)
    for index in range(51, 61):
        post(client, minute_report(index, namespace="interns", core=100))
    status = client.get("/api/v1/namespaces/interns").get_json()
    assert (status["state"], status["refillsAt"]) == ("exhausted", "2026-12-01T00:00:00Z")


def test_exhausted_rolling_window_refills_when_enough_use_slides_out(make_app: MakeApp) -> None:
    budgets = "namespaces:\n  ci: {period: 'rolling:7d', gpuHours: 1, whenExhausted: deny}\n"
    client = make_app(budgets=budgets).test_client()
    # Two days ago 40 minutes of a whole GPU (buckets of 15, 15 and 10 minutes), an hour ago
    # 45 more: 85 minutes of a 60-minute budget. Use slides out a bucket at a time, 7 days
    # after the bucket began: once the first two older buckets are out, 55 minutes remain.
    older = NOW - timedelta(days=2)
    newer = NOW - timedelta(hours=1)
    for sequence, (start, minutes) in enumerate([(older, 40), (newer, 45)], start=1):
        body = report_body(
            namespace="ci",
            sequence=sequence,
            vcudaCore=100,
            start=rfc3339(start),
            end=rfc3339(start + timedelta(minutes=minutes)),
        )
        assert post(client, body)[0] == 200
    status = client.get("/api/v1/namespaces/ci").get_json()
    assert status["state"] == "exhausted"
    assert status["refillsAt"] == rfc3339(older + timedelta(days=7, minutes=15))
    listed = client.get("/api/v1/namespaces").get_json()["namespaces"]
    assert [entry["refillsAt"] for entry in listed if entry["namespace"] == "ci"] == [
        status["refillsAt"]
    ]


@pytest.mark.parametrize(
    ("budget", "now", "start", "end", "used_gpu_hours", "period_start"),
    [
        pytest.param(
            "{period: day, timezone: Europe/Berlin}",
            "2026-11-21T06:00:00Z",
            "2026-11-20T22:50:00Z",
            "2026-11-20T23:10:00Z",
            round(10 / 60, 6),
            "2026-11-20T23:00:00Z",
            id="day-berlin-10-of-20-minutes-inside",
        ),
        pytest.param(
            "{period: month, timezone: America/New_York}",
            "2026-11-01T12:00:00Z",  # the day the clocks go back
            "2026-11-01T03:55:00Z",
            "2026-11-01T04:05:00Z",
            round(5 / 60, 6),
            "2026-11-01T04:00:00Z",
            id="month-new-york-on-the-dst-change",
        ),
        pytest.param(
            "{period: week, timezone: Asia/Kathmandu}",
            "2026-11-23T06:00:00Z",  # a Monday
            "2026-11-22T18:00:00Z",
            "2026-11-22T18:30:00Z",
            0.25,
            "2026-11-22T18:15:00Z",
            id="week-kathmandu-offset-0545",
        ),
        pytest.param(
            "{period: 'rolling:1d'}",
            "2026-11-21T06:00:00Z",
            "2026-11-20T06:00:00Z",
            "2026-11-20T06:30:00Z",
            0.25,
            "2026-11-20T06:15:00Z",
            id="rolling-day-oldest-bucket-slid-out",
        ),
    ],
)
def test_a_report_straddling_the_period_start_counts_only_inside(
    make_app: MakeApp,
    budget: str,
    now: str,
    start: str,
    end: str,
    used_gpu_hours: float,
    period_start: str,
) -> None:
    instant = parse_rfc3339(now)
    client = make_app(
        budgets=f"defaults: {{gpuHours: 10}}\nnamespaces:\n  team-a: {budget}\n",
        clock=lambda: instant,
    ).test_client()
    status, answer = post(client, report_body(start=start, end=end, vcudaCore=100))
    assert status == 200, answer
    state = client.get("/api/v1/namespaces/team-a").get_json()
    usage = client.get("/api/v1/namespaces/team-a/usage").get_json()
    assert (state["periodStart"], state["usedGpuHours"], usage["totalGpuHours"]) == (
        period_start,
        used_gpu_hours,
        used_gpu_hours,
    )


def test_a_resend_after_the_policy_changed_gets_the_first_answer(make_app: MakeApp) -> None:
    first_app = make_app(budgets=BUDGETS).test_client()
    first = post(first_app, report_body(namespace="interns", vcudaCore=100))
    assert first[0] == 200
    second_app = make_app(budgets=BUDGETS.replace("gpuHours: 1,", "gpuHours: 5,")).test_client()
    assert post(second_app, report_body(namespace="interns", vcudaCore=100)) == first
    status = second_app.get("/api/v1/namespaces/interns").get_json()
    assert (status["budgetGpuHours"], status["usedGpuHours"]) == (5.0, round(60 / 3600, 6))


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/api/v1/namespaces/interns", id="one-namespace"),
        pytest.param("/api/v1/namespaces", id="every-namespace"),
    ],
)
def test_status_reads_the_running_totals_never_the_ledger(make_app: MakeApp, path: str) -> None:
    app = make_app(budgets=BUDGETS)
    client = app.test_client()
    for index in range(1, 6):
        assert post(client, minute_report(index, namespace="interns", core=100))[0] == 200
    statements: list[str] = []
    engine = app.extensions["gpushare"]["engine"]

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        answer = client.get(path).get_json()
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    statuses = answer.get("namespaces", [answer])
    interns = next(status for status in statuses if status["namespace"] == "interns")
    assert interns["usedGpuHours"] == round(5 * 60 / 3600, 6)
    assert any("usage_buckets" in statement for statement in statements), statements
    assert not any("usage_reports" in statement for statement in statements), statements


def test_sqlite_database_runs_in_wal_mode(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tk.db'}"
    database.upgrade(url)
    engine = database.make_engine(url)
    try:
        with engine.connect() as connection:
            mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
    finally:
        engine.dispose()
    assert mode == "wal"


def test_reports_before_the_period_do_not_count(make_app: MakeApp) -> None:
    client = make_app(budgets=BUDGETS).test_client()
    old = report_body(start="2026-10-31T23:59:00Z", end="2026-11-01T00:01:00Z", vcudaCore=100)
    assert post(client, old)[0] == 200
    status = client.get("/api/v1/namespaces/team-a").get_json()
    assert status["usedGpuHours"] == round(60 / 3600, 6)  # only the minute in November


def test_any_valid_namespace_answers_with_the_defaults(make_app: MakeApp) -> None:
    client = make_app(budgets=BUDGETS).test_client()
    status = client.get("/api/v1/namespaces/never-seen").get_json()
    assert (status["state"], status["budgetGpuHours"], status["usedGpuHours"]) == (
        "in-budget",
        10.0,
        0.0,
    )


@pytest.mark.parametrize(
    "name", [pytest.param("Team_A", id="upper-underscore"), pytest.param("a" * 64, id="too-long")]
)
def test_invalid_namespace_name_is_400(client: FlaskClient, name: str) -> None:
    response = client.get(f"/api/v1/namespaces/{name}")
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid"


def test_list_has_budget_entries_and_namespaces_with_use(make_app: MakeApp) -> None:
    client = make_app(budgets=BUDGETS).test_client()
    post(client, report_body(namespace="team-b"))
    post(
        client,
        report_body(
            podUid="old",
            start="2026-10-01T00:00:00Z",
            end="2026-10-01T00:01:00Z",
            namespace="team-old",
        ),
    )
    listing = client.get("/api/v1/namespaces").get_json()["namespaces"]
    assert [item["namespace"] for item in listing] == ["interns", "research", "team-b"]
    assert listing[1]["state"] == "unlimited"


def test_usage_by_pod_json_and_csv(client: FlaskClient) -> None:
    for index in range(1, 4):
        post(client, minute_report(index, pod="train-0", core=50))
    for index in range(1, 3):
        post(client, minute_report(index, pod="train-1", core=100))
    answer = client.get(
        "/api/v1/namespaces/team-a/usage?from=2026-01-01T00:00:00Z&to=2026-12-01T00:00:00Z"
    ).get_json()
    assert answer["groupBy"] == "pod"
    assert [(row["pod"], row["gpuSeconds"], row["reports"]) for row in answer["rows"]] == [
        ("train-0", 90.0, 3),
        ("train-1", 120.0, 2),
    ]
    assert answer["totalGpuHours"] == round(210 / 3600, 6)
    text = client.get(
        "/api/v1/namespaces/team-a/usage?from=2026-01-01T00:00:00Z&to=2026-12-01T00:00:00Z"
        "&format=csv"
    ).get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [
        "pod",
        "podUid",
        "gpuHours",
        "gpuSeconds",
        "memoryByteSeconds",
        "reports",
        "firstStart",
        "lastEnd",
        "usedGpuHours",
        "measuredGpuHours",
        "idleShare",
    ]
    assert [(row[0], row[3], row[5]) for row in rows[1:]] == [
        ("train-0", "90.0", "3"),
        ("train-1", "120.0", "2"),
    ]


def test_usage_by_day_splits_intervals_at_midnight(client: FlaskClient) -> None:
    body = report_body(start="2026-11-19T23:30:00Z", end="2026-11-20T00:30:00Z", vcudaCore=100)
    post(client, body)
    answer = client.get(
        "/api/v1/namespaces/team-a/usage?group_by=day&from=2026-11-19T00:00:00Z"
        "&to=2026-11-21T00:00:00Z&timezone=UTC"
    ).get_json()
    assert [(row["day"], row["gpuSeconds"]) for row in answer["rows"]] == [
        ("2026-11-19", 1800.0),
        ("2026-11-20", 1800.0),
    ]


def test_usage_range_is_clipped(client: FlaskClient) -> None:
    post(
        client, report_body(start="2026-11-21T05:00:00Z", end="2026-11-21T05:40:00Z", vcudaCore=100)
    )
    answer = client.get(
        "/api/v1/namespaces/team-a/usage?from=2026-11-21T05:30:00Z&to=2026-11-21T06:00:00Z"
    ).get_json()
    assert answer["rows"][0]["gpuSeconds"] == 600.0


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        pytest.param(
            "group_by=node", "group_by: must be one of pod, day (got 'node')", id="group-by"
        ),
        pytest.param("format=xml", "format: must be one of json, csv", id="format"),
        pytest.param("from=last-week", "from: must be an RFC 3339", id="from"),
        pytest.param(
            "from=2026-11-01T00:00:00+01:00",
            "from: must be an RFC 3339 timestamp with a zone, like 2026-11-21T06:00:00Z (got "
            "'2026-11-01T00:00:00 01:00'); write the '+' of an offset as %2B in a URL",
            id="unescaped-plus-of-an-offset",
        ),
        pytest.param(
            "from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z",
            "to: must be after from",
            id="reversed",
        ),
        pytest.param("timezone=Mars/Olympus", "timezone: unknown time zone", id="zone"),
        pytest.param(
            "timezone=localtime",
            "timezone: unknown time zone; use an IANA name such as UTC or Europe/Berlin "
            "(got 'localtime')",
            id="zone-of-the-host",
        ),
        pytest.param(
            "from=0001-01-01T00:00:00%2B01:00",
            "from: must lie between 1970-01-01T00:00:00Z and 9000-01-01T00:00:00Z",
            id="from-before-year-1-in-utc",
        ),
        pytest.param(
            "from=0001-01-01T00:00:00Z&to=0001-01-02T00:00:00Z&group_by=day",
            "from: must lie between 1970-01-01T00:00:00Z and 9000-01-01T00:00:00Z",
            id="year-1",
        ),
        pytest.param(
            "from=2016-11-21T00:00:00Z&to=2026-11-21T00:00:00Z",
            "to: the range may span at most 400 days (got 3652 days)",
            id="ten-years",
        ),
    ],
)
def test_bad_usage_queries_are_400(client: FlaskClient, query: str, fragment: str) -> None:
    response = client.get(f"/api/v1/namespaces/team-a/usage?{query}")
    assert response.status_code == 400
    assert fragment in response.get_json()["message"]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        pytest.param("GET", "/api/v1/nothing", 404, "not-found", id="unknown-path"),
        pytest.param("DELETE", "/api/v1/reports", 405, "method-not-allowed", id="wrong-method"),
    ],
)
def test_http_errors_are_json(
    client: FlaskClient, method: str, path: str, status: int, code: str
) -> None:
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.get_json()["error"] == code


def test_body_too_large_is_413(client: FlaskClient) -> None:
    response = client.post("/api/v1/reports", json={"podUid": "x" * 100_000})
    assert response.status_code == 413
    assert response.get_json()["error"] == "request-entity-too-large"


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


def test_readyz_fails_when_the_schema_is_behind(make_app: MakeApp, database_url: str) -> None:
    client = make_app().test_client()
    database.downgrade(database_url, "base")
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "run `gpushare db upgrade`" in response.get_json()["message"]


@pytest.mark.postgres
def test_readyz_fails_when_the_database_is_gone(
    make_app: MakeApp, postgres_admin_engine: sa.Engine
) -> None:
    from timekeeper.api import create_app
    from timekeeper.auth import Authenticator
    from timekeeper.policy_source import PolicySource
    from timekeeper.settings import Settings

    # A server that listens nowhere: the database is not reachable at all.
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"
    app = create_app(
        Settings(database_url=url),
        policy_source=PolicySource(None),
        authenticator=Authenticator(allow_anonymous_reports=True),
        clock=lambda: NOW,
    )
    client = app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["error"] == "unavailable"
    assert client.get("/healthz").status_code == 200
    reads = client.get("/api/v1/namespaces/team-a")
    assert reads.status_code == 503
    assert reads.get_json()["error"] == "unavailable"


def test_metrics_show_budgets_and_requests(make_app: MakeApp) -> None:
    client = make_app(budgets=BUDGETS).test_client()
    for index in range(1, 31):
        post(client, minute_report(index, namespace="interns", core=100))
    post(client, minute_report(1, namespace="interns", core=100))  # a resend
    post(client, report_body(sequence=0))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'gpushare_timekeeper_budget_gpu_hours{namespace="interns"} 1.0' in text
    assert 'gpushare_timekeeper_used_gpu_hours{namespace="interns"} 0.5' in text
    assert 'gpushare_timekeeper_remaining_gpu_hours{namespace="interns"} 0.5' in text
    assert 'gpushare_timekeeper_budget_state{namespace="interns",state="warning"} 1.0' in text
    assert 'gpushare_timekeeper_used_gpu_hours{namespace="research"} 0.0' in text
    assert 'gpushare_timekeeper_budget_gpu_hours{namespace="research"}' not in text
    assert (
        'gpushare_timekeeper_http_requests_total{method="POST",route="/api/v1/reports",'
        'status="200"} 31.0' in text
    )
    assert 'gpushare_timekeeper_reports_total{outcome="stored"} 30.0' in text
    assert 'gpushare_timekeeper_reports_total{outcome="resent"} 1.0' in text
    assert 'gpushare_timekeeper_reports_total{outcome="rejected"} 1.0' in text
    assert (
        'gpushare_timekeeper_http_request_duration_seconds_count{method="POST",'
        'route="/api/v1/reports"} 32.0' in text
    )


@pytest.mark.parametrize(
    "bad_content",
    [
        pytest.param(b"defaults: {gpuHours: ten}\n", id="invalid-value"),
        pytest.param(b"\xff\xfe not text", id="not-utf8"),
        pytest.param(b"defaults: [", id="not-yaml"),
        pytest.param(None, id="file-removed"),
    ],
)
def test_a_budgets_file_turning_bad_while_serving_keeps_the_last_good_policy(
    make_app: MakeApp, tmp_path: Path, bad_content: bytes | None
) -> None:
    client = make_app(budgets=BUDGETS, budgets_check_seconds=0).test_client()
    budgets = tmp_path / "budgets-0.yaml"
    assert post(client, minute_report(1, namespace="interns", core=100))[0] == 200

    def seen() -> tuple[Any, ...]:
        status = client.get("/api/v1/namespaces/interns").get_json()
        text = client.get("/metrics").get_data(as_text=True)
        rejected = re.search(r"^gpushare_timekeeper_budgets_file_rejected (\S+)$", text, re.M)
        return (
            status["budgetGpuHours"],
            status["whenExhausted"],
            client.get("/readyz").status_code,
            rejected.group(1) if rejected else None,
        )

    assert seen() == (1.0, "deny", 200, "0.0")
    if bad_content is None:
        budgets.unlink()
    else:
        budgets.write_bytes(bad_content)
    assert seen() == (1.0, "deny", 200, "1.0"), "the last good policy stays, the refusal shows"
    assert post(client, minute_report(2, namespace="interns", core=100))[0] == 200
    budgets.write_text(BUDGETS.replace("gpuHours: 1,", "gpuHours: 2,"))
    assert seen() == (2.0, "deny", 200, "0.0"), "a good file is taken and clears the refusal"


def test_openapi_document_is_valid_and_covers_every_route(client: FlaskClient) -> None:
    from openapi_spec_validator import validate

    document = client.get("/openapi.json").get_json()
    assert document == openapi_document()
    validate(document)
    routes = {
        rule.rule.replace("<namespace>", "{namespace}")
        for rule in client.application.url_map.iter_rules()
        if rule.endpoint != "static"
    }
    routes.add(report_endpoint.PATH)  # served in front of Flask (report_endpoint.py)
    assert routes == set(document["paths"])


@pytest.mark.postgres
def test_readyz_fails_when_the_database_is_dropped_under_it(
    postgres_url: str, postgres_admin_engine: sa.Engine
) -> None:
    from timekeeper.api import create_app
    from timekeeper.auth import Authenticator
    from timekeeper.policy_source import PolicySource
    from timekeeper.settings import Settings

    database.upgrade(postgres_url)
    app = create_app(
        Settings(database_url=postgres_url),
        policy_source=PolicySource(None),
        authenticator=Authenticator(allow_anonymous_reports=True),
        clock=lambda: NOW,
    )
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    assert post(client, report_body())[0] == 200
    name = sa.make_url(postgres_url).database
    with postgres_admin_engine.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    for _ in range(2):  # the pooled connection breaks first, then new ones cannot connect
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.get_json()["error"] == "unavailable"
        status, answer = post(
            client,
            report_body(sequence=2, start="2026-11-21T05:50:00Z", end="2026-11-21T05:51:00Z"),
        )
        assert (status, answer["error"]) == (503, "unavailable")
    app.extensions["gpushare"]["engine"].dispose()


def test_throttled_namespace_status_names_its_running_pods(make_app: MakeApp) -> None:
    """Exhausted with `throttle`: the status gives the floor and the pods that reported in
    the last 5 minutes (running, held at the floor); an old pod is not among them."""
    budgets = (
        "namespaces:\n"
        "  lab: {gpuHours: 0.5, whenExhausted: throttle, throttleToPercent: 20}\n"
        "  other: {gpuHours: 5, whenExhausted: throttle}\n"
    )
    client = make_app(budgets=budgets).test_client()
    recent = NOW - timedelta(minutes=2)
    reports = [
        ("old-pod", NOW - timedelta(days=1), timedelta(minutes=40)),
        ("train", recent - timedelta(minutes=1), timedelta(minutes=1)),
        ("serve", recent - timedelta(minutes=1), timedelta(minutes=1)),
    ]
    for pod, start, length in reports:
        body = report_body(
            namespace="lab",
            pod=pod,
            podUid=f"uid-{pod}",
            vcudaCore=100,
            start=rfc3339(start),
            end=rfc3339(start + length),
        )
        assert post(client, body)[0] == 200
    status = client.get("/api/v1/namespaces/lab").get_json()
    assert status["state"] == "exhausted"
    assert status["whenExhausted"] == "throttle"
    assert status["throttleToPercent"] == 20
    assert status["throttledPods"] == ["serve", "train"]
    other = client.get("/api/v1/namespaces/other").get_json()
    assert (other["state"], other["throttleToPercent"], other["throttledPods"]) == (
        "in-budget",
        10,
        [],
    )
    deny = client.get("/api/v1/namespaces/someone-else").get_json()
    assert "throttledPods" not in deny and "throttleToPercent" not in deny
