from __future__ import annotations

import json

import pytest

from sidecar.intervals import parse_time
from sidecar.reports import (
    BadRecord,
    Measured,
    PodIdentity,
    Report,
    SpoolRecord,
    build_report,
    decode_record,
    encode_record,
    merge_reports,
)

POD = PodIdentity("0b3c8a4e-6f0d-4d9e-9b1a-2f6c1e8d7a55", "train-0", "team-a", 50, 15)


def report(sequence: int, start: str, end: str, **measured: float | int) -> Report:
    return build_report(
        POD,
        sequence=sequence,
        start=parse_time(f"2026-11-21T{start}Z"),
        end=parse_time(f"2026-11-21T{end}Z"),
        measured=Measured(**measured),  # type: ignore[arg-type]
    )


def test_build_report_is_the_wire_format() -> None:
    assert report(7, "06:00:00", "06:00:15", sm_utilization=1.7, memory_used_bytes=-3) == {
        "podUid": "0b3c8a4e-6f0d-4d9e-9b1a-2f6c1e8d7a55",
        "pod": "train-0",
        "namespace": "team-a",
        "sequence": 7,
        "start": "2026-11-21T06:00:00.000000Z",
        "end": "2026-11-21T06:00:15.000000Z",
        "vcudaCore": 50,
        "vcudaMemory": 15,
        "smUtilization": 1.0,
        "memoryUsedBytes": 0,
    }


@pytest.mark.parametrize(
    ("older", "newer", "expected_end", "extra"),
    [
        pytest.param(
            report(3, "06:00:00", "06:00:15"),
            report(4, "06:00:15", "06:00:30"),
            "06:00:30",
            {},
            id="contiguous-allocation-only",
        ),
        pytest.param(
            report(3, "06:00:00", "06:00:10", sm_utilization=0.9, memory_used_bytes=100),
            report(4, "06:00:10", "06:00:40", sm_utilization=0.1, memory_used_bytes=300),
            "06:00:40",
            {"smUtilization": 0.3, "memoryUsedBytes": 300},
            id="time-weighted-sm-peak-memory",
        ),
        pytest.param(
            report(3, "06:00:00", "06:00:15", sm_utilization=0.5),
            report(4, "07:00:00", "07:00:15"),
            "06:00:30",
            {"smUtilization": 0.5},
            id="gap-between-keeps-exact-length",
        ),
    ],
)
def test_merge_keeps_the_older_sequence_and_the_total_length(
    older: Report, newer: Report, expected_end: str, extra: dict[str, object]
) -> None:
    merged = merge_reports(older, newer)
    assert merged == {
        **{k: v for k, v in older.items() if k not in ("smUtilization", "memoryUsedBytes")},
        "end": f"2026-11-21T{expected_end}.000000Z",
        **extra,
    }


def test_a_record_round_trips() -> None:
    record = SpoolRecord(report=report(1, "06:00:00", "06:00:15"), absorbed=(2,))
    assert decode_record(encode_record(record)) == record


def _tampered(change: str) -> bytes:
    content = json.loads(encode_record(SpoolRecord(report=report(1, "06:00:00", "06:00:15"))))
    if change == "end":
        content["report"]["end"] = "2026-11-21T07:00:00Z"
    elif change == "sequence-type":
        content["report"]["sequence"] = "1"
    elif change == "format":
        content["format"] = 2
    elif change == "absorbed":
        content["absorbed"] = ["x"]
    elif change == "time":
        content["report"]["start"] = "yesterday"
    return json.dumps(content).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"{trunc", "not JSON", id="torn-json"),
        pytest.param(_tampered("end"), "checksum does not match", id="edited-end"),
        pytest.param(
            _tampered("sequence-type"), "'sequence' is missing or not a int", id="sequence-string"
        ),
        pytest.param(_tampered("format"), "not a format-1 spool record", id="unknown-format"),
        pytest.param(_tampered("absorbed"), "'absorbed' is not a list", id="absorbed-bad"),
        pytest.param(_tampered("time"), "report time is not RFC 3339", id="start-not-a-time"),
    ],
)
def test_a_damaged_record_is_recognised(data: bytes, reason: str) -> None:
    with pytest.raises(BadRecord, match=reason):
        decode_record(data)
