"""Report parsing and validation (pure): every rule, with the message it gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.timekeeper.conftest import report_body
from timekeeper.errors import InvalidRequest, ReportRejected
from timekeeper.reports import Report, check_timing, parse_report, parse_rfc3339

NOW = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)


def test_valid_report_is_parsed() -> None:
    report = parse_report(report_body(smUtilization=0.5, memoryUsedBytes=1024))
    assert report == Report(
        pod_uid="7f1c1d3e-0000-4000-8000-000000000001",
        pod="train-0",
        namespace="team-a",
        sequence=1,
        start=datetime(2026, 11, 21, 5, 49, tzinfo=UTC),
        end=datetime(2026, 11, 21, 5, 50, tzinfo=UTC),
        vcuda_core=50,
        vcuda_memory=4,
        sm_utilization=0.5,
        memory_used_bytes=1024,
    )
    assert report.duration_microseconds == 60_000_000


def test_core_is_the_pods_total_over_its_containers() -> None:
    # Containers asking 50 and 100 make a pod total of 150: not a per-container value, but
    # a valid report (GPU-seconds = 150 / 100 x seconds).
    assert parse_report(report_body(vcudaCore=150)).vcuda_core == 150


def test_optional_fields_may_be_null() -> None:
    report = parse_report(report_body(smUtilization=None, memoryUsedBytes=None))
    assert (report.sm_utilization, report.memory_used_bytes) == (None, None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"podUid": ...}, "podUid: required field is missing", id="podUid-missing"),
        pytest.param({"podUid": None}, "podUid: required field is missing", id="podUid-null"),
        pytest.param({"podUid": ""}, "podUid: must be 1..128 letters", id="podUid-empty"),
        pytest.param({"podUid": "a b"}, "podUid: must be 1..128 letters", id="podUid-space"),
        pytest.param(
            {"podUid": 7}, "podUid: must be a string, not a number (got 7)", id="podUid-number"
        ),
        pytest.param(
            {"pod": "Train_0"}, "pod: must be a pod name (RFC 1123 subdomain", id="pod-invalid"
        ),
        pytest.param(
            {"namespace": "Team-A"}, "namespace: must be a namespace name", id="namespace-upper"
        ),
        pytest.param(
            {"namespace": ["team-a"]},
            "namespace: must be a string, not an array",
            id="namespace-array",
        ),
        pytest.param({"sequence": 0}, "sequence: must be an integer in 1..", id="sequence-0"),
        pytest.param(
            {"sequence": -3}, "sequence: must be an integer in 1..", id="sequence-negative"
        ),
        pytest.param(
            {"sequence": 1.5},
            "sequence: must be an integer, not a number (got 1.5)",
            id="sequence-float",
        ),
        pytest.param(
            {"sequence": True},
            "sequence: must be an integer, not a boolean (got true)",
            id="sequence-bool",
        ),
        pytest.param(
            {"sequence": 2**63}, "sequence: must be an integer in 1..", id="sequence-too-big"
        ),
        pytest.param(
            {"start": "2026-11-21 05:49"},
            "start: must be an RFC 3339 timestamp",
            id="start-no-seconds",
        ),
        pytest.param(
            {"start": "2026-11-21T05:49:00"},
            "start: must be an RFC 3339 timestamp",
            id="start-no-zone",
        ),
        pytest.param(
            {"start": "2026-02-30T05:49:00Z"},
            "start: is not a real date and time",
            id="start-feb-30",
        ),
        pytest.param(
            {"start": 1763704140}, "start: must be a string, not a number", id="start-epoch-number"
        ),
        pytest.param(
            {"end": "2026-11-21T05:49:00Z"},
            "end: must be after start (got start '2026-11-21T05:49:00Z', "
            "end '2026-11-21T05:49:00Z')",
            id="end-equals-start",
        ),
        pytest.param(
            {"end": "2026-11-21T05:00:00Z"}, "end: must be after start", id="end-before-start"
        ),
        pytest.param({"vcudaCore": 0}, "vcudaCore: must be an integer in 1..", id="core-0"),
        pytest.param(
            {"vcudaCore": 100_001},
            "vcudaCore: must be an integer in 1..100000 (got 100001)",
            id="core-above-1000-gpus",
        ),
        pytest.param(
            {"vcudaCore": "50"}, "vcudaCore: must be an integer, not a string", id="core-string"
        ),
        pytest.param(
            {"vcudaMemory": -1}, "vcudaMemory: must be an integer in 0..", id="memory-negative"
        ),
        pytest.param(
            {"smUtilization": 1.5},
            "smUtilization: must be a number in 0..1 (got 1.5)",
            id="sm-above-1",
        ),
        pytest.param(
            {"smUtilization": "high"},
            "smUtilization: must be a number, not a string",
            id="sm-string",
        ),
        pytest.param(
            {"memoryUsedBytes": 1.5},
            "memoryUsedBytes: must be an integer, not a number",
            id="memory-used-float",
        ),
        pytest.param(
            {"gpu": 1}, "gpu: unknown field (got 1); the fields are podUid", id="unknown-field"
        ),
    ],
)
def test_bad_field_is_named_with_value_and_rule(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        parse_report(report_body(**overrides))
    assert message in error.value.message


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidRequest) as error:
        parse_report(report_body(sequence=0, vcudaCore=0, pod=...))
    message = error.value.message
    assert "pod: required field is missing" in message
    assert "sequence: must be an integer in 1.." in message
    assert "vcudaCore: must be an integer in 1..100000" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2026-11-21T06:00:00Z", datetime(2026, 11, 21, 6, tzinfo=UTC), id="zulu"),
        pytest.param("2026-11-21t06:00:00z", datetime(2026, 11, 21, 6, tzinfo=UTC), id="lower"),
        pytest.param(
            "2026-11-21T07:30:00+01:30", datetime(2026, 11, 21, 6, tzinfo=UTC), id="offset"
        ),
        pytest.param(
            "2026-11-21T06:00:00.123456789Z",
            datetime(2026, 11, 21, 6, 0, 0, 123456, tzinfo=UTC),
            id="nanoseconds-cut",
        ),
        pytest.param(
            "2026-11-21 06:00:00.5-00:00",
            datetime(2026, 11, 21, 6, 0, 0, 500000, tzinfo=UTC),
            id="space-fraction",
        ),
        pytest.param("2028-02-29T00:00:00Z", datetime(2028, 2, 29, tzinfo=UTC), id="leap-day"),
    ],
)
def test_rfc3339_accepted(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2026-11-21", id="date-only"),
        pytest.param("20261121T060000Z", id="basic-format"),
        pytest.param("2026-11-21T06:00Z", id="no-seconds"),
        pytest.param("2027-02-29T00:00:00Z", id="not-a-leap-year"),
        pytest.param("2026-11-21T24:00:00Z", id="hour-24"),
        pytest.param(" 2026-11-21T06:00:00Z", id="leading-space"),
    ],
)
def test_rfc3339_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


@pytest.mark.parametrize(
    "text",
    [
        # These once overflowed on the conversion to UTC (500 instead of 400).
        pytest.param("0001-01-01T00:00:00+01:00", id="before-year-1-in-utc"),
        pytest.param("9999-12-31T23:59:59-01:00", id="after-year-9999-in-utc"),
        pytest.param("0001-01-01T00:00:00Z", id="year-1"),
        pytest.param("1969-12-31T23:59:59Z", id="before-the-epoch"),
        pytest.param("1970-01-01T00:30:00+01:00", id="before-the-epoch-by-offset"),
        pytest.param("9000-01-01T00:00:00Z", id="year-9000"),
    ],
)
def test_rfc3339_outside_the_supported_range(text: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_rfc3339(text)
    assert str(error.value) == (
        "must lie between 1970-01-01T00:00:00Z and 9000-01-01T00:00:00Z (a node clock that "
        "was never set, or a typo)"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1970-01-01T00:00:00Z", datetime(1970, 1, 1, tzinfo=UTC), id="the-epoch"),
        pytest.param(
            "8999-12-31T23:59:59.999999Z",
            datetime(8999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            id="last-instant",
        ),
    ],
)
def test_rfc3339_range_edges_accepted(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        pytest.param(NOW - timedelta(minutes=1), NOW, None, id="ends-now"),
        pytest.param(NOW, NOW + timedelta(seconds=60), None, id="skew-edge"),
        pytest.param(
            NOW,
            NOW + timedelta(seconds=61),
            "end: lies in the future beyond the 60 s clock-skew allowance "
            "(got 2026-11-21T06:01:01Z, server time 2026-11-21T06:00:00Z)",
            id="beyond-skew",
        ),
        pytest.param(NOW - timedelta(days=1), NOW, None, id="one-day"),
        pytest.param(
            NOW - timedelta(days=1, seconds=1),
            NOW,
            "end: one report may cover at most 86400 s (got 86401 s",
            id="longer-than-a-day",
        ),
        pytest.param(
            NOW - timedelta(days=400),
            NOW - timedelta(days=400) + timedelta(minutes=1),
            None,
            id="old-is-fine",
        ),
    ],
)
def test_timing_rules(start: datetime, end: datetime, message: str | None) -> None:
    report = parse_report(report_body(start=start.isoformat(), end=end.isoformat()))
    if message is None:
        check_timing(report, now=NOW, clock_skew_seconds=60, max_interval_seconds=86400)
        return
    with pytest.raises(ReportRejected) as error:
        check_timing(report, now=NOW, clock_skew_seconds=60, max_interval_seconds=86400)
    assert message in error.value.message
