"""The report a sidecar sends and the spool record that holds it (pure logic).

A report is the wire JSON of `POST /api/v1/reports` (docs/timekeeper.md). A spool
record wraps one report with a format number, the sequences it absorbed when the spool was
compacted, and a checksum, so a damaged file is recognised instead of being sent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NotRequired, TypedDict

from sidecar.intervals import format_time, parse_time

RECORD_FORMAT: Final = 1


class Report(TypedDict):
    """Wire JSON of one usage interval."""

    podUid: str
    pod: str
    namespace: str
    sequence: int
    start: str
    end: str
    vcudaCore: int
    vcudaMemory: int
    smUtilization: NotRequired[float]
    memoryUsedBytes: NotRequired[int]


@dataclass(frozen=True)
class PodIdentity:
    """Who the reports are about and what the pod was allocated."""

    pod_uid: str
    pod_name: str
    namespace: str
    vcuda_core: int
    vcuda_memory: int


@dataclass(frozen=True)
class Measured:
    """Measured use over one interval; None where nothing could be measured."""

    sm_utilization: float | None = None
    """Average SM utilisation of the pod's processes, 0..1."""
    memory_used_bytes: int | None = None
    """Peak GPU memory used by the pod's processes."""


@dataclass(frozen=True)
class SpoolRecord:
    """The content of one spool file."""

    report: Report
    absorbed: tuple[int, ...] = ()
    """Sequences whose intervals this one took over (their files are to be removed)."""


class BadRecord(ValueError):
    """A spool record that cannot be trusted (bad JSON, fields or checksum)."""


def build_report(
    pod: PodIdentity, *, sequence: int, start: datetime, end: datetime, measured: Measured
) -> Report:
    """The report of one closed interval."""
    report: Report = {
        "podUid": pod.pod_uid,
        "pod": pod.pod_name,
        "namespace": pod.namespace,
        "sequence": sequence,
        "start": format_time(start),
        "end": format_time(end),
        "vcudaCore": pod.vcuda_core,
        "vcudaMemory": pod.vcuda_memory,
    }
    if measured.sm_utilization is not None:
        report["smUtilization"] = round(min(max(measured.sm_utilization, 0.0), 1.0), 4)
    if measured.memory_used_bytes is not None:
        report["memoryUsedBytes"] = max(0, int(measured.memory_used_bytes))
    return report


def duration_seconds(report: Report) -> float:
    """Wall-clock length of a report's interval."""
    return (parse_time(report["end"]) - parse_time(report["start"])).total_seconds()


def merge_reports(older: Report, newer: Report) -> Report:
    """`older` grown by `newer`'s length, keeping `older`'s sequence number.

    Used only on intervals that were never sent, so the sequence is still unbound outside
    this pod. The merged interval ends at older.end + newer's length (not newer.end), so the
    charge is exactly the sum even if a clock step separated the two. SM utilisation is
    averaged by time, memory is the peak of both.
    """
    older_seconds = max(0.0, duration_seconds(older))
    newer_seconds = max(0.0, duration_seconds(newer))
    merged: Report = {**older}
    merged["end"] = format_time(
        parse_time(older["end"]) + (parse_time(newer["end"]) - parse_time(newer["start"]))
    )
    merged.pop("smUtilization", None)
    merged.pop("memoryUsedBytes", None)
    weighted = [
        (report["smUtilization"], seconds)
        for report, seconds in ((older, older_seconds), (newer, newer_seconds))
        if "smUtilization" in report
    ]
    if weighted:
        total = sum(seconds for _, seconds in weighted)
        average = (
            sum(value * seconds for value, seconds in weighted) / total
            if total > 0
            else sum(value for value, _ in weighted) / len(weighted)
        )
        merged["smUtilization"] = round(average, 4)
    memories = [r["memoryUsedBytes"] for r in (older, newer) if "memoryUsedBytes" in r]
    if memories:
        merged["memoryUsedBytes"] = max(memories)
    return merged


def _checksum(report: Report, absorbed: tuple[int, ...]) -> str:
    canonical = json.dumps([report, list(absorbed)], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def encode_record(record: SpoolRecord) -> bytes:
    """The bytes of one spool file."""
    content = {
        "format": RECORD_FORMAT,
        "checksum": _checksum(record.report, record.absorbed),
        "report": record.report,
        "absorbed": list(record.absorbed),
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode() + b"\n"


_REQUIRED: Final = {
    "podUid": str,
    "pod": str,
    "namespace": str,
    "sequence": int,
    "start": str,
    "end": str,
    "vcudaCore": int,
    "vcudaMemory": int,
}


def decode_record(data: bytes) -> SpoolRecord:
    """The record in a spool file; `BadRecord` says why it cannot be trusted."""
    try:
        content: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRecord(f"not JSON: {err}") from err
    if not isinstance(content, dict) or content.get("format") != RECORD_FORMAT:
        raise BadRecord(f"not a format-{RECORD_FORMAT} spool record")
    report = content.get("report")
    if not isinstance(report, dict):
        raise BadRecord("record has no report object")
    for key, kind in _REQUIRED.items():
        if not isinstance(report.get(key), kind) or isinstance(report.get(key), bool):
            raise BadRecord(f"report field {key!r} is missing or not a {kind.__name__}")
    absorbed = content.get("absorbed", [])
    if not isinstance(absorbed, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in absorbed
    ):
        raise BadRecord("'absorbed' is not a list of sequence numbers")
    try:
        parse_time(report["start"])
        parse_time(report["end"])
    except ValueError as err:
        raise BadRecord(f"report time is not RFC 3339: {err}") from err
    record = SpoolRecord(report=report, absorbed=tuple(absorbed))  # type: ignore[arg-type]
    if content.get("checksum") != _checksum(record.report, record.absorbed):
        raise BadRecord("checksum does not match the report")
    return record
