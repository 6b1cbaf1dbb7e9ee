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

from gpushare.charge import gpu_seconds, memory_byte_seconds, used_gpu_seconds
from gpushare.resources import CORE_UNITS_PER_GPU, MEMORY_UNIT_BYTES
from timekeeper.buckets import MICROSECONDS_PER_SECOND
from timekeeper.database import head_revision, schema_revision
from timekeeper.errors import Conflict, ReportRejected, Unavailable
from timekeeper.models import UtcDateTime, usage_buckets, usage_reports
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
    used_gpu_seconds: float = 0.0
    """GPU time really used, over the intervals that carried a measurement."""
    measured_gpu_seconds: float = 0.0
    """The allocated GPU time of the intervals that carried a measurement."""
    namespace: str = ""
    vcuda_core: int = 0
    """The pod's latest allocation (pod rows only)."""
    delivery_delay_seconds: float = 0.0
    """How long after its end the pod's latest report arrived (pod rows only)."""

    @property
    def idle_share(self) -> float | None:
        """Share of the measured allocation left unused (0..1); None when nothing measured."""
        if self.measured_gpu_seconds <= 0:
            return None
        return max(0.0, 1.0 - self.used_gpu_seconds / self.measured_gpu_seconds)

    @property
    def delivered_share(self) -> float | None:
        """Used over allocated GPU time where measured (1: got all it was promised)."""
        if self.measured_gpu_seconds <= 0:
            return None
        return self.used_gpu_seconds / self.measured_gpu_seconds


class Ledger:
    """Reads and writes the ledger and the running totals on one engine."""

    def __init__(self, engine: sa.Engine, *, max_interval_seconds: float = 86400.0) -> None:
        self.engine = engine
        self.max_interval = timedelta(seconds=max_interval_seconds)
        self._writer = ReportWriter(engine)
        self._head = head_revision()

    # --- writing ---------------------------------------------------------------------------

    def record(self, report: Report, *, received_at: datetime) -> tuple[Receipt, bool]:
        """Store `report` once; a resend of the same (namespace, pod UID, sequence) gets the
        first answer. The flag is True when this call stored it, False for a resend.

        `Conflict`: that key holds a different report. `ReportRejected`: the interval
        overlaps another of the same pod (namespace and UID).
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
                f"({_iso(other.start_at)}..{_iso(other.end_at)}) of pod {report.pod_uid} in "
                f"namespace {report.namespace}"
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
            total = connection.execute(
                sa.select(sa.func.coalesce(sa.func.sum(buckets.c.core_microseconds), 0)).where(
                    buckets.c.namespace == namespace,
                    buckets.c.bucket_start >= start,
                    buckets.c.bucket_start < end,
                )
            ).scalar_one()
        return int(total)

    def used_by_bucket(self, namespace: str, start: datetime, end: datetime) -> dict[datetime, int]:
        """The charge of `namespace` in each bucket that starts within `[start, end)`."""
        buckets = usage_buckets
        with self._read() as connection:
            rows = connection.execute(
                sa.select(buckets.c.bucket_start, buckets.c.core_microseconds).where(
                    buckets.c.namespace == namespace,
                    buckets.c.bucket_start >= start,
                    buckets.c.bucket_start < end,
                )
            ).all()
        return {row.bucket_start: int(row.core_microseconds) for row in rows}

    def pods_reporting_since(self, namespace: str, since: datetime) -> list[str]:
        """Names of the pods of `namespace` with a report ending at or after `since`."""
        reports = usage_reports
        with self._read() as connection:
            rows = connection.execute(
                sa.select(reports.c.pod)
                .where(reports.c.namespace == namespace, reports.c.end_at >= since)
                .distinct()
                .order_by(reports.c.pod)
            ).all()
        return [row.pod for row in rows]

    def used_by_namespace(
        self, start: datetime, end: datetime, namespaces: Iterable[str] | None = None
    ) -> dict[str, int]:
        """Charge per namespace with any use in `[start, end)` (optionally only `namespaces`)."""
        buckets = usage_buckets
        query = (
            sa.select(buckets.c.namespace, sa.func.sum(buckets.c.core_microseconds))
            .where(buckets.c.bucket_start >= start, buckets.c.bucket_start < end)
            .group_by(buckets.c.namespace)
        )
        if namespaces is not None:
            query = query.where(buckets.c.namespace.in_(list(namespaces)))
        with self._read() as connection:
            return {name: int(total) for name, total in connection.execute(query).all()}

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
        return self._grouped(start, end, group_by=group_by, day_zone=day_zone, namespace=namespace)

    def pods(
        self, start: datetime, end: datetime, *, namespace: str | None = None
    ) -> list[UsageRow]:
        """Use per pod within `[start, end)`, of every namespace (or only `namespace`).

        Summed in the database (one pass; only each pod's totals reach Python), so the
        idle-pods query and the per-pod gauges cost one scan of the window's reports.
        """
        table = usage_reports
        window_start = sa.bindparam("window_start", start, UtcDateTime)
        window_end = sa.bindparam("window_end", end, UtcDateTime)
        seconds: Any
        if self.engine.dialect.name == "postgresql":
            begin = sa.func.greatest(table.c.start_at, window_start)
            finish = sa.func.least(table.c.end_at, window_end)
            seconds = sa.func.extract("epoch", finish - begin)
        else:
            begin = sa.func.max(table.c.start_at, window_start)
            finish = sa.func.min(table.c.end_at, window_end)
            seconds = (sa.func.julianday(finish) - sa.func.julianday(begin)) * 86400.0
        gpus = sa.case(
            (table.c.vcuda_core < CORE_UNITS_PER_GPU, 1),
            else_=(table.c.vcuda_core + CORE_UNITS_PER_GPU - 1) // CORE_UNITS_PER_GPU,
        )
        core_seconds = table.c.vcuda_core * seconds
        conditions = [
            table.c.start_at < end,
            table.c.start_at >= start - self.max_interval,
            table.c.end_at > start,
        ]
        if namespace is not None:
            conditions.append(table.c.namespace == namespace)
        totals = (
            sa.select(
                table.c.namespace,
                table.c.pod,
                table.c.pod_uid,
                sa.func.sum(core_seconds).label("core_seconds"),
                sa.func.sum(table.c.vcuda_memory * seconds).label("memory_unit_seconds"),
                sa.func.sum(
                    sa.case((table.c.sm_utilization.is_not(None), core_seconds), else_=0.0)
                ).label("measured_core_seconds"),
                sa.func.sum(sa.func.coalesce(table.c.sm_utilization, 0.0) * gpus * seconds).label(
                    "used_seconds"
                ),
                sa.func.count().label("reports"),
                sa.func.min(table.c.start_at).label("first_start"),
                sa.func.max(table.c.end_at).label("last_end"),
                sa.func.max(table.c.start_at).label("latest_start"),
            )
            .where(*conditions)
            .group_by(table.c.namespace, table.c.pod, table.c.pod_uid)
            .subquery()
        )
        latest = usage_reports.alias("latest")
        query = (
            sa.select(
                totals,
                latest.c.vcuda_core.label("latest_core"),
                latest.c.end_at.label("latest_end"),
                latest.c.received_at.label("latest_received"),
            )
            .join(
                latest,
                sa.and_(
                    latest.c.pod_uid == totals.c.pod_uid,
                    latest.c.start_at == totals.c.latest_start,
                ),
            )
            .order_by(totals.c.namespace, totals.c.pod, totals.c.pod_uid)
        )
        with self._read() as connection:
            rows = connection.execute(query).all()
        return [
            UsageRow(
                key=row.pod,
                pod_uid=row.pod_uid,
                gpu_seconds=float(row.core_seconds or 0.0) / CORE_UNITS_PER_GPU,
                memory_byte_seconds=float(row.memory_unit_seconds or 0.0) * MEMORY_UNIT_BYTES,
                reports=int(row.reports),
                first_start=max(_utc(row.first_start), start),
                last_end=min(_utc(row.last_end), end),
                used_gpu_seconds=float(row.used_seconds or 0.0),
                measured_gpu_seconds=float(row.measured_core_seconds or 0.0) / CORE_UNITS_PER_GPU,
                namespace=row.namespace,
                vcuda_core=int(row.latest_core),
                delivery_delay_seconds=max(
                    0.0, (_utc(row.latest_received) - _utc(row.latest_end)).total_seconds()
                ),
            )
            for row in rows
        ]

    def _grouped(
        self,
        start: datetime,
        end: datetime,
        *,
        group_by: str,
        day_zone: Any,
        namespace: str | None,
    ) -> list[UsageRow]:
        table = usage_reports
        query = sa.select(
            table.c.namespace,
            table.c.pod,
            table.c.pod_uid,
            table.c.start_at,
            table.c.end_at,
            table.c.vcuda_core,
            table.c.vcuda_memory,
            table.c.sm_utilization,
            table.c.received_at,
        ).where(
            table.c.start_at < end,
            table.c.start_at >= start - self.max_interval,
            table.c.end_at > start,
        )
        if namespace is not None:
            query = query.where(table.c.namespace == namespace)
        groups: dict[tuple[str, str, str | None], _Group] = {}
        with self._read() as connection:
            rows = connection.execute(query).all()
        for row in rows:
            piece_start, piece_end = max(row.start_at, start), min(row.end_at, end)
            if group_by == "pod":
                pieces = [((row.namespace, row.pod, row.pod_uid), piece_start, piece_end)]
            else:
                pieces = [
                    ((row.namespace, day, None), day_start, day_end)
                    for day, day_start, day_end in _days(piece_start, piece_end, day_zone)
                ]
            for key, begin, finish in pieces:
                seconds = (finish - begin).total_seconds()
                group = groups.get(key)
                if group is None:
                    group = groups[key] = _Group(begin, finish)
                group.add(row, begin, finish, seconds)
        return [
            group.row(namespace_name, key, uid)
            for (namespace_name, key, uid), group in sorted(
                groups.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or "")
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


class _Group:
    """Running sums of one usage row."""

    def __init__(self, first_start: datetime, last_end: datetime) -> None:
        self.gpu_seconds = 0.0
        self.memory_byte_seconds = 0.0
        self.used_gpu_seconds = 0.0
        self.measured_gpu_seconds = 0.0
        self.reports = 0
        self.first_start = first_start
        self.last_end = last_end
        self.latest_start: datetime | None = None
        self.vcuda_core = 0
        self.delivery_delay_seconds = 0.0

    def add(self, row: Any, begin: datetime, finish: datetime, seconds: float) -> None:
        charge = gpu_seconds(row.vcuda_core, seconds)
        self.gpu_seconds += charge
        self.memory_byte_seconds += memory_byte_seconds(row.vcuda_memory, seconds)
        if row.sm_utilization is not None:
            self.used_gpu_seconds += used_gpu_seconds(row.vcuda_core, row.sm_utilization, seconds)
            self.measured_gpu_seconds += charge
        self.reports += 1
        self.first_start = min(self.first_start, begin)
        self.last_end = max(self.last_end, finish)
        if self.latest_start is None or row.start_at > self.latest_start:
            self.latest_start = row.start_at
            self.vcuda_core = row.vcuda_core
            self.delivery_delay_seconds = max(0.0, (row.received_at - row.end_at).total_seconds())

    def row(self, namespace: str, key: str, pod_uid: str | None) -> UsageRow:
        return UsageRow(
            key=key,
            pod_uid=pod_uid,
            gpu_seconds=self.gpu_seconds,
            memory_byte_seconds=self.memory_byte_seconds,
            reports=self.reports,
            first_start=self.first_start,
            last_end=self.last_end,
            used_gpu_seconds=self.used_gpu_seconds,
            measured_gpu_seconds=self.measured_gpu_seconds,
            namespace=namespace,
            vcuda_core=self.vcuda_core,
            delivery_delay_seconds=self.delivery_delay_seconds,
        )


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
            f"sequence: pod {report.pod_uid} of namespace {report.namespace} already reported "
            f"sequence {report.sequence} with "
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


def _utc(value: Any) -> datetime:
    """An aggregate's datetime: SQLite hands back text, PostgreSQL an aware datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _plain(value: Any) -> str:
    return _iso(value) if isinstance(value, datetime) else repr(value)
