"""Usage reports: the wire format of `POST /api/v1/reports`, parsed and validated.

Pure logic (stdlib and the shared `gpushare` package). A report is one usage interval of one
pod: `podUid`, `pod`, `namespace`, `sequence` (1, 2, … per pod), `start`, `end` (RFC 3339),
`vcudaCore`, `vcudaMemory` (the pod's totals over its GPU containers), and optionally
`smUtilization` (0..1) and `memoryUsedBytes`.
Every problem names the field, the value and the rule; all are reported together.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from timekeeper.errors import InvalidRequest, ReportRejected, ReportTooEarly

MAX_SEQUENCE: Final = 2**63 - 1
MAX_POD_UID_LENGTH: Final = 128
MAX_VCUDA_CORE: Final = 100_000
"""A thousand whole GPUs held by one pod: far beyond any node, small enough to catch junk."""
MAX_VCUDA_MEMORY: Final = 1_000_000
EARLIEST_INSTANT: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_INSTANT: Final = datetime(9000, 1, 1, tzinfo=UTC)
"""Timestamps outside [EARLIEST_INSTANT, LATEST_INSTANT) are refused: before the epoch is a
node clock that was never set, and near the calendar's ends the period and day arithmetic
would leave the range a datetime can hold."""

_RFC3339_RE: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
)
_DNS1123_LABEL_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN_RE: Final = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
_POD_UID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

REQUIRED_FIELDS: Final = (
    "podUid",
    "pod",
    "namespace",
    "sequence",
    "start",
    "end",
    "vcudaCore",
    "vcudaMemory",
)
OPTIONAL_FIELDS: Final = ("smUtilization", "memoryUsedBytes")


@dataclass(frozen=True)
class Report:
    """One validated usage interval."""

    pod_uid: str
    pod: str
    namespace: str
    sequence: int
    start: datetime
    """Aware UTC, microsecond precision."""
    end: datetime
    vcuda_core: int
    vcuda_memory: int
    sm_utilization: float | None = None
    memory_used_bytes: int | None = None

    @property
    def duration_microseconds(self) -> int:
        return (self.end - self.start) // timedelta(microseconds=1)


def is_namespace_name(name: str) -> bool:
    """A Kubernetes namespace name: an RFC 1123 label of at most 63 characters."""
    return len(name) <= 63 and _DNS1123_LABEL_RE.fullmatch(name) is not None


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 timestamp with an explicit offset, as aware UTC (fractions past µs cut)."""
    match = _RFC3339_RE.fullmatch(text)
    if match is None:
        raise ValueError("must be an RFC 3339 timestamp with a zone, like 2026-11-21T06:00:00Z")
    day, clock, fraction, zone = match.groups()
    fraction = (fraction or "")[:7]  # the dot and at most six digits
    zone = "+00:00" if zone in ("Z", "z") else zone
    try:
        parsed = datetime.fromisoformat(f"{day}T{clock}{fraction}{zone}")
    except ValueError as err:
        raise ValueError(f"is not a real date and time ({err})") from err
    # Compare before converting: 0001-01-01T00:00:00+01:00 has no UTC datetime.
    if not EARLIEST_INSTANT <= parsed < LATEST_INSTANT:
        raise ValueError(
            "must lie between 1970-01-01T00:00:00Z and 9000-01-01T00:00:00Z (a node clock "
            "that was never set, or a typo)"
        )
    return parsed.astimezone(UTC)


def parse_report(body: Any) -> Report:
    """Check the types, ranges and shape of a report body; raise `InvalidRequest` listing
    every problem as `field: rule (got value)`."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"body: the report must be a JSON object (got {_json_type(body)})")
    problems: list[str] = []
    allowed = set(REQUIRED_FIELDS) | set(OPTIONAL_FIELDS)
    for name in sorted(set(body) - allowed):
        problems.append(
            f"{name}: unknown field (got {_show(body[name])}); the fields are "
            + ", ".join(REQUIRED_FIELDS + OPTIONAL_FIELDS)
        )
    for name in REQUIRED_FIELDS:
        if name not in body or body[name] is None:
            problems.append(f"{name}: required field is missing")

    def check(name: str, parse: Any) -> Any:
        if body.get(name) is None:
            return None
        try:
            return parse(body[name])
        except ValueError as err:
            problems.append(f"{name}: {err} (got {_show(body[name])})")
            return None

    pod_uid = check("podUid", _pod_uid)
    pod = check("pod", _pod_name)
    namespace = check("namespace", _namespace)
    sequence = check("sequence", _integer(1, MAX_SEQUENCE))
    start = check("start", _timestamp)
    end = check("end", _timestamp)
    vcuda_core = check("vcudaCore", _core)
    vcuda_memory = check("vcudaMemory", _integer(0, MAX_VCUDA_MEMORY))
    sm_utilization = check("smUtilization", _fraction)
    memory_used_bytes = check("memoryUsedBytes", _integer(0, 2**63 - 1))
    if start is not None and end is not None and end <= start:
        problems.append(
            f"end: must be after start (got start {body['start']!r}, end {body['end']!r})"
        )
    if problems:
        raise InvalidRequest("invalid report: " + "; ".join(problems))
    return Report(
        pod_uid=pod_uid,
        pod=pod,
        namespace=namespace,
        sequence=sequence,
        start=start,
        end=end,
        vcuda_core=vcuda_core,
        vcuda_memory=vcuda_memory,
        sm_utilization=sm_utilization,
        memory_used_bytes=memory_used_bytes,
    )


def check_timing(
    report: Report, *, now: datetime, clock_skew_seconds: float, max_interval_seconds: float
) -> None:
    """Rules that depend on the server's clock and settings; `ReportRejected` when broken."""
    latest = now + timedelta(seconds=clock_skew_seconds)
    if report.end > latest:
        raise ReportTooEarly(
            f"end: lies in the future beyond the {clock_skew_seconds:g} s clock-skew allowance "
            f"(got {_iso(report.end)}, server time {_iso(now)})"
        )
    seconds = (report.end - report.start).total_seconds()
    if seconds > max_interval_seconds:
        raise ReportRejected(
            f"end: one report may cover at most {max_interval_seconds:g} s "
            f"(got {seconds:g} s from {_iso(report.start)} to {_iso(report.end)})"
        )


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, bool | None) else str(value).lower()
    if value is None:
        text = "null"
    return text if len(text) <= 80 else text[:77] + "..."


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_json_type(value)}")
    return value


def _pod_uid(value: Any) -> str:
    text = _string(value)
    if not (0 < len(text) <= MAX_POD_UID_LENGTH) or not _POD_UID_RE.fullmatch(text):
        raise ValueError(
            f"must be 1..{MAX_POD_UID_LENGTH} letters, digits, '.', '_' or '-' (a pod's UID)"
        )
    return text


def _pod_name(value: Any) -> str:
    text = _string(value)
    if len(text) > 253 or not _DNS1123_SUBDOMAIN_RE.fullmatch(text):
        raise ValueError("must be a pod name (RFC 1123 subdomain, at most 253 characters)")
    return text


def _namespace(value: Any) -> str:
    text = _string(value)
    if not is_namespace_name(text):
        raise ValueError(
            "must be a namespace name (RFC 1123 label: at most 63 lower-case letters, digits "
            "and '-')"
        )
    return text


def _integer(minimum: int, maximum: int) -> Any:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, not {_json_type(value)}")
        if not minimum <= value <= maximum:
            raise ValueError(f"must be an integer in {minimum}..{maximum}")
        return value

    return parse


def _core(value: Any) -> int:
    # The pod's total over its GPU containers (the charge model sums them), so 50 + 100 =
    # 150 is a valid report; the per-container rule is the webhook's to enforce.
    return int(_integer(1, MAX_VCUDA_CORE)(value))


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, not {_json_type(value)}")
    if not math.isfinite(value) or not 0 <= value <= 1:
        raise ValueError("must be a number in 0..1")
    return float(value)


def _timestamp(value: Any) -> datetime:
    return parse_rfc3339(_string(value))


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"
