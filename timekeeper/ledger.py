"""The ledger adapter: append-only usage reports and the running totals.

Writes go through `report_writer` (the per-report hot path, on the DBAPI driver); reads are
SQLAlchemy Core. A status is the sum of a namespace's 15-minute buckets inside its period;
usage reports are computed from the ledger rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa

from gpushare.charge import gpu_seconds, memory_byte_seconds
from timekeeper.buckets import MICROSECONDS_PER_SECOND, from_hours_and_rest
from timekeeper.database import head_revision, schema_revision
from timekeeper.errors import Conflict, ReportRejected, Unavailable
from timekeeper.models import usage_buckets, usage_reports
from timekeeper.report_writer import NewRow, ReportWriter, StoredReport
from timekeeper.reports import Report

logger = logging.getLogger(__name__)

SECONDS_PER_HOUR: Final = 3600


def gpu_hours_from_core_microseconds(core_microseconds: int) -> float:
    """vcuda-core units x µs, as GPU-hours (the charge model of `gpushare.charge`)."""
    return gpu_seconds(core_microseconds, 1 / MICROSECONDS_PER_SECOND) / SECONDS_PER_HOUR


@dataclass(frozen=True)
class Receipt:
    """What the ledger holds for one (pod UID, sequence): the answer to a report."""

    pod_uid: str
    sequence: int
    namespace: str
    pod: str
    start: datetime
    end: datetime
    gpu_seconds: float
    memory_byte_seconds: float
    received_at: datetime


@dataclass(frozen=True)
class UsageRow:
    """One line of a usage report (a pod, or a day)."""

    key: str
    """The pod name, or the day (YYYY-MM-DD)."""
    pod_uid: str | None
    gpu_seconds: float
    memory_byte_seconds: float
    reports: int
    first_start: datetime
    last_end: datetime


class Ledger:
    """Reads and writes the ledger and the running totals on one engine."""

    def __init__(self, engine: sa.Engine, *, max_interval_seconds: float = 86400.0) -> None:
        self.engine = engine
        self.max_interval = timedelta(seconds=max_interval_seconds)
        self._writer = ReportWriter(engine)
        self._head = head_revision()

    # --- writing ---------------------------------------------------------------------------

    def record(self, report: Report, *, received_at: datetime) -> tuple[Receipt, bool]:
        """Store `report` once; a resend of the same (pod UID, sequence) gets the first answer.
        The flag is True when this call stored it, False for a resend.

        `Conflict`: that (pod UID, sequence) holds a different report. `ReportRejected`: the
        interval overlaps another of the same pod.
        """
        wall_seconds = report.duration_microseconds / MICROSECONDS_PER_SECOND
        row = NewRow(
            gpu_seconds=gpu_seconds(report.vcuda_core, wall_seconds),
            memory_byte_seconds=memory_byte_seconds(report.vcuda_memory, wall_seconds),
            received_at=received_at,
        )
        found = self._writer.write(report, row)
        for stored in found:
            if stored.sequence == report.sequence:
                return _receipt_for_resend(stored, report), False
        if found:
            other = found[0]
            raise ReportRejected(
                f"start/end: the interval {_iso(report.start)}..{_iso(report.end)} of sequence "
                f"{report.sequence} overlaps sequence {other.sequence} "
                f"({_iso(other.start_at)}..{_iso(other.end_at)}) of pod {report.pod_uid}"
            )
        receipt = Receipt(
            pod_uid=report.pod_uid,
            sequence=report.sequence,
            namespace=report.namespace,
            pod=report.pod,
            start=report.start,
            end=report.end,
            gpu_seconds=row.gpu_seconds,
            memory_byte_seconds=row.memory_byte_seconds,
            received_at=received_at,
        )
        return receipt, True

    # --- reading ---------------------------------------------------------------------------

    def used_core_microseconds(self, namespace: str, start: datetime, end: datetime) -> int:
        """The charge of `namespace` in the buckets that start within `[start, end)`."""
        buckets = usage_buckets
        with self._read() as connection:
            hours, rest = connection.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(buckets.c.core_hours), 0),
                    sa.func.coalesce(sa.func.sum(buckets.c.core_microseconds), 0),
                ).where(
                    buckets.c.namespace == namespace,
                    buckets.c.bucket_start >= start,
                    buckets.c.bucket_start < end,
                )
            ).one()
        return from_hours_and_rest(hours, rest)

    def used_by_bucket(self, namespace: str, start: datetime, end: datetime) -> dict[datetime, int]:
        """The charge of `namespace` in each bucket that starts within `[start, end)`."""
        buckets = usage_buckets
        with self._read() as connection:
            rows = connection.execute(
                sa.select(
                    buckets.c.bucket_start, buckets.c.core_hours, buckets.c.core_microseconds
                ).where(
                    buckets.c.namespace == namespace,
                    buckets.c.bucket_start >= start,
                    buckets.c.bucket_start < end,
                )
            ).all()
        return {
            row.bucket_start: from_hours_and_rest(row.core_hours, row.core_microseconds)
            for row in rows
        }

    def used_by_namespace(
        self, start: datetime, end: datetime, namespaces: Iterable[str] | None = None
    ) -> dict[str, int]:
        """Charge per namespace with any use in `[start, end)` (optionally only `namespaces`)."""
        buckets = usage_buckets
        query = (
            sa.select(
                buckets.c.namespace,
                sa.func.sum(buckets.c.core_hours),
                sa.func.sum(buckets.c.core_microseconds),
            )
            .where(buckets.c.bucket_start >= start, buckets.c.bucket_start < end)
            .group_by(buckets.c.namespace)
        )
        if namespaces is not None:
            query = query.where(buckets.c.namespace.in_(list(namespaces)))
        with self._read() as connection:
            return {
                name: from_hours_and_rest(hours, rest)
                for name, hours, rest in connection.execute(query).all()
            }

    def usage(
        self,
        namespace: str,
        start: datetime,
        end: datetime,
        *,
        group_by: str,
        day_zone: Any = UTC,
    ) -> list[UsageRow]:
        """Use of `namespace` within `[start, end)` from the ledger, grouped by pod or by day.

        Reports that straddle the range (or a day boundary) are charged in proportion to the
        time inside it.
        """
        table = usage_reports
        query = sa.select(
            table.c.pod,
            table.c.pod_uid,
            table.c.start_at,
            table.c.end_at,
            table.c.vcuda_core,
            table.c.vcuda_memory,
        ).where(
            table.c.namespace == namespace,
            table.c.start_at < end,
            table.c.start_at >= start - self.max_interval,
            table.c.end_at > start,
        )
        groups: dict[tuple[str, str | None], list[Any]] = {}
        with self._read() as connection:
            rows = connection.execute(query).all()
        for row in rows:
            piece_start, piece_end = max(row.start_at, start), min(row.end_at, end)
            if group_by == "pod":
                pieces = [((row.pod, row.pod_uid), piece_start, piece_end)]
            else:
                pieces = [
                    ((day, None), day_start, day_end)
                    for day, day_start, day_end in _days(piece_start, piece_end, day_zone)
                ]
            for key, begin, finish in pieces:
                seconds = (finish - begin).total_seconds()
                entry = groups.setdefault(key, [0.0, 0.0, 0, begin, finish])
                entry[0] += gpu_seconds(row.vcuda_core, seconds)
                entry[1] += memory_byte_seconds(row.vcuda_memory, seconds)
                entry[2] += 1
                entry[3] = min(entry[3], begin)
                entry[4] = max(entry[4], finish)
        return [
            UsageRow(key[0], key[1], entry[0], entry[1], entry[2], entry[3], entry[4])
            for key, entry in sorted(
                groups.items(), key=lambda item: (item[0][0], item[0][1] or "")
            )
        ]

    def check_ready(self) -> None:
        """`Unavailable` unless the database answers and its schema is this version's."""
        try:
            with self._read() as connection:
                revision = schema_revision(connection)
        except sa.exc.SQLAlchemyError as err:
            raise Unavailable(f"database unreachable: {type(err).__name__}") from err
        head = self._head
        if revision != head:
            raise Unavailable(
                f"database schema is at revision {revision or 'none'}, this version needs "
                f"{head}: run `gpushare db upgrade`"
            )

    def _read(self) -> sa.Connection:
        try:
            return self.engine.connect()
        except sa.exc.OperationalError as err:
            raise Unavailable(f"database unreachable: {err.orig}") from err


def _receipt_for_resend(row: StoredReport, report: Report) -> Receipt:
    stored = (
        row.namespace,
        row.pod,
        row.start_at,
        row.end_at,
        row.vcuda_core,
        row.vcuda_memory,
    )
    sent = (
        report.namespace,
        report.pod,
        report.start,
        report.end,
        report.vcuda_core,
        report.vcuda_memory,
    )
    if stored != sent:
        names = ("namespace", "pod", "start", "end", "vcudaCore", "vcudaMemory")
        differences = [
            f"{name} {_plain(old)} then {_plain(new)}"
            for name, old, new in zip(names, stored, sent, strict=True)
            if old != new
        ]
        raise Conflict(
            f"sequence: pod {report.pod_uid} already reported sequence {report.sequence} with "
            f"different content ({', '.join(differences)}); a resend must be identical"
        )
    return Receipt(
        pod_uid=row.pod_uid,
        sequence=row.sequence,
        namespace=row.namespace,
        pod=row.pod,
        start=row.start_at,
        end=row.end_at,
        gpu_seconds=row.gpu_seconds,
        memory_byte_seconds=row.memory_byte_seconds,
        received_at=row.received_at,
    )


def _days(start: datetime, end: datetime, zone: Any) -> list[tuple[str, datetime, datetime]]:
    pieces: list[tuple[str, datetime, datetime]] = []
    cursor = start
    while cursor < end:
        local = cursor.astimezone(zone)
        next_day = local.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        boundary = next_day.replace(tzinfo=None).replace(tzinfo=zone).astimezone(UTC)
        piece_end = min(end, boundary) if boundary > cursor else end
        pieces.append((local.date().isoformat(), cursor, piece_end))
        cursor = piece_end
    return pieces


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _plain(value: Any) -> str:
    return _iso(value) if isinstance(value, datetime) else repr(value)
