"""The hot path of the ledger: storing one report and adding it to the running totals.

Written against the DBAPI driver directly (sqlite3, psycopg 3) with fixed SQL, because this
runs once per report from every GPU pod and SQLAlchemy's statement machinery costs more than
the database work. One transaction per report:

- PostgreSQL, three round trips: `BEGIN; SELECT pg_advisory_xact_lock(<pod>)` (reports of one
  pod, its namespace and UID, are serialised, so the overlap check cannot be overtaken), one
  statement that looks for the same sequence or an overlapping interval and, only when
  there is none, inserts the ledger row and upserts the buckets
  (data-modifying CTEs), then `COMMIT`.
- SQLite: `BEGIN IMMEDIATE` (the write lock up front, which serialises every writer), the
  same check, the insert, the bucket upserts, `COMMIT`. SQLite makes a writer that finds the
  file locked sleep and retry (1 ms, 2 ms, 5 ms, … up to 100 ms), which wastes most of the
  time under concurrent writers; so writers first queue on a lock that wakes the next one
  at once: a thread lock within the process and `flock` on `<database>-writer.lock` across
  processes. The writer does not checkpoint the WAL itself (that would put an fsync inside
  the queue): a background thread runs a PASSIVE checkpoint every half second after writes.

Totals are added with `INSERT … ON CONFLICT (namespace, bucket_start) DO UPDATE SET x = x +
excluded.x` (with the carry from the rest below an hour into the hours, `_CARRY`): atomic in
the database, so no update is ever lost between processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa

from timekeeper.buckets import MICROSECONDS_PER_HOUR, hours_and_rest, split_into_buckets
from timekeeper.errors import Unavailable
from timekeeper.reports import Report

logger = logging.getLogger(__name__)

_COLUMNS: Final = (
    "pod_uid, sequence, namespace, pod, start_at, end_at, vcuda_core, vcuda_memory, "
    "gpu_seconds, memory_byte_seconds, received_at"
)
_INSERT_COLUMNS: Final = (
    "pod_uid, sequence, namespace, pod, start_at, end_at, vcuda_core, vcuda_memory, "
    "gpu_seconds, memory_byte_seconds, sm_utilization, memory_used_bytes, received_at"
)
# The same sequence, or an overlapping interval of the pod: two index probes, so the cost
# does not grow with the number of reports a pod has sent. A pod is its namespace and UID:
# a caller of another namespace naming the same UID never meets this pod's reports. A pod's
# stored intervals never overlap (this check keeps it so), so ordered by start they are
# ordered by end too: the one starting last before the new end is the only one that can
# reach past the new start.
_MATCH: Final = (
    "SELECT {columns} FROM usage_reports "
    "WHERE namespace = {p}namespace{s} AND pod_uid = {p}pod_uid{s} "
    "AND sequence = {p}sequence{s} "
    "UNION ALL "
    "SELECT * FROM (SELECT {columns} FROM usage_reports "
    "WHERE namespace = {p}namespace{s} AND pod_uid = {p}pod_uid{s} AND start_at < {p}end{s} "
    "ORDER BY start_at DESC LIMIT 1) AS latest WHERE end_at > {p}start{s}"
)

_CARRY: Final = """
    core_hours = {table}core_hours + excluded.core_hours
        + ({table}core_microseconds + excluded.core_microseconds) / {hour},
    core_microseconds = ({table}core_microseconds + excluded.core_microseconds) {mod} {hour},
    memory_unit_hours = {table}memory_unit_hours + excluded.memory_unit_hours
        + ({table}memory_unit_microseconds + excluded.memory_unit_microseconds) / {hour},
    memory_unit_microseconds =
        ({table}memory_unit_microseconds + excluded.memory_unit_microseconds) {mod} {hour}"""
"""Adding a piece to a bucket: the rests are added and what passes an hour carries into the
hours (integer division on both databases; every right-hand side sees the old row). `mod` is
the remainder operator as the driver wants it written (psycopg: `%%`)."""

_PG_CARRY: Final = _CARRY.format(table="usage_buckets.", hour=MICROSECONDS_PER_HOUR, mod="%%")
_SQLITE_CARRY: Final = _CARRY.format(table="", hour=MICROSECONDS_PER_HOUR, mod="%")

_PG_RECORD: Final = f"""
WITH existing AS (
    {_MATCH.format(columns=_COLUMNS, p="%(", s=")s")}
), inserted AS (
    INSERT INTO usage_reports ({_INSERT_COLUMNS})
    SELECT %(pod_uid)s, %(sequence)s, %(namespace)s, %(pod)s, %(start)s, %(end)s,
           %(vcuda_core)s, %(vcuda_memory)s, %(gpu_seconds)s, %(memory_byte_seconds)s,
           %(sm_utilization)s, %(memory_used_bytes)s, %(received_at)s
    WHERE NOT EXISTS (SELECT 1 FROM existing)
    RETURNING id
), added AS (
    INSERT INTO usage_buckets (namespace, bucket_start, core_hours, core_microseconds,
                               memory_unit_hours, memory_unit_microseconds)
    SELECT %(namespace)s, piece.bucket_start, piece.core_hours, piece.core,
           piece.memory_hours, piece.memory
    FROM unnest(%(bucket_starts)s::timestamptz[], %(core_hours)s::bigint[], %(cores)s::bigint[],
                %(memory_hours)s::bigint[], %(memories)s::bigint[])
        AS piece(bucket_start, core_hours, core, memory_hours, memory)
    WHERE EXISTS (SELECT 1 FROM inserted)
    ON CONFLICT (namespace, bucket_start) DO UPDATE SET {_PG_CARRY}
    RETURNING 1
)
SELECT {_COLUMNS} FROM existing
"""

_SQLITE_FIND: Final = _MATCH.format(columns=_COLUMNS, p=":", s="")
_SQLITE_INSERT: Final = (
    f"INSERT INTO usage_reports ({_INSERT_COLUMNS}) VALUES (:pod_uid, :sequence, :namespace, "
    ":pod, :start, :end, :vcuda_core, :vcuda_memory, :gpu_seconds, :memory_byte_seconds, "
    ":sm_utilization, :memory_used_bytes, :received_at)"
)
_SQLITE_ADD: Final = (
    "INSERT INTO usage_buckets (namespace, bucket_start, core_hours, core_microseconds, "
    "memory_unit_hours, memory_unit_microseconds) VALUES (?, ?, ?, ?, ?, ?) "
    f"ON CONFLICT (namespace, bucket_start) DO UPDATE SET {_SQLITE_CARRY}"
)


@dataclass(frozen=True)
class StoredReport:
    """A ledger row as the writer reads it back (for resends and overlap messages)."""

    pod_uid: str
    sequence: int
    namespace: str
    pod: str
    start_at: datetime
    end_at: datetime
    vcuda_core: int
    vcuda_memory: int
    gpu_seconds: float
    memory_byte_seconds: float
    received_at: datetime


@dataclass(frozen=True)
class NewRow:
    """What to store for a report that is not in the ledger yet."""

    gpu_seconds: float
    memory_byte_seconds: float
    received_at: datetime


def sqlite_time(instant: datetime) -> str:
    """The text SQLAlchemy's SQLite DateTime stores: naive UTC with microseconds."""
    return instant.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_parse(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def pod_lock_key(namespace: str, pod_uid: str) -> int:
    """A signed 64-bit advisory-lock key for a pod (its namespace and UID)."""
    # "/" cannot be part of a namespace name, so no two pods share the text.
    key = f"{namespace}/{pod_uid}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class ReportWriter:
    """Stores reports on one engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"
        self._operational_errors: tuple[type[BaseException], ...] = (
            engine.dialect.loaded_dbapi.OperationalError,
            engine.dialect.loaded_dbapi.InterfaceError,
        )
        # raw_connection() hands on the driver's own error, not SQLAlchemy's wrapper.
        self._connect_errors: tuple[type[BaseException], ...] = (
            sa.exc.DBAPIError,
            *self._operational_errors,
        )
        self._thread_lock = threading.Lock()
        self._sqlite_connection: Any = None
        self._checkpointer: _Checkpointer | None = None
        self.writes_since_checkpoint = 0
        self._lock_path: str | None = None
        self._lock_fd: int | None = None
        database = engine.url.database
        if not self.postgres and database and database != ":memory:":
            self._lock_path = os.path.expanduser(database) + "-writer.lock"

    @contextlib.contextmanager
    def _sqlite_writer_turn(self) -> Iterator[None]:
        with self._thread_lock:
            if self._lock_path is None:
                yield
                return
            if self._lock_fd is None:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def write(self, report: Report, row: NewRow) -> list[StoredReport]:
        """Store `report` unless the ledger holds its sequence or an overlapping interval of
        its pod (same namespace and UID); returns those rows (empty: stored now)."""
        if not self.postgres:
            with self._sqlite_writer_turn():
                return self._write_sqlite_safely(report, row)
        try:
            connection = self.engine.raw_connection()
        except self._connect_errors as err:
            raise Unavailable(f"the database cannot take the report now: {err}") from err
        try:
            return self._write_postgres(connection, report, row)
        except self._operational_errors as err:
            connection.invalidate()
            raise Unavailable(f"the database cannot take the report now: {err}") from err
        finally:
            connection.close()

    def _write_sqlite_safely(self, report: Report, row: NewRow) -> list[StoredReport]:
        # Writers take turns (see `_sqlite_writer_turn`), so one connection per process,
        # kept out of the pool, serves them all.
        if self._sqlite_connection is None:
            try:
                connection = self.engine.raw_connection()
            except self._connect_errors as err:
                raise Unavailable(f"the database cannot take the report now: {err}") from err
            connection.detach()
            connection.execute("PRAGMA wal_autocheckpoint=0")
            self._sqlite_connection = connection
            if self._checkpointer is None:
                self._checkpointer = _Checkpointer(self)
                self._checkpointer.start()
        try:
            found = self._write_sqlite(self._sqlite_connection, report, row)
            self.writes_since_checkpoint += 1
            return found
        except self._operational_errors as err:
            self._sqlite_connection.close()
            self._sqlite_connection = None
            raise Unavailable(f"the database cannot take the report now: {err}") from err

    def _params(self, report: Report, row: NewRow) -> dict[str, Any]:
        return {
            "pod_uid": report.pod_uid,
            "sequence": report.sequence,
            "namespace": report.namespace,
            "pod": report.pod,
            "start": report.start,
            "end": report.end,
            "vcuda_core": report.vcuda_core,
            "vcuda_memory": report.vcuda_memory,
            "gpu_seconds": row.gpu_seconds,
            "memory_byte_seconds": row.memory_byte_seconds,
            "sm_utilization": report.sm_utilization,
            "memory_used_bytes": report.memory_used_bytes,
            "received_at": row.received_at,
        }

    def _write_postgres(self, connection: Any, report: Report, row: NewRow) -> list[StoredReport]:
        dbapi = connection.dbapi_connection
        dbapi.autocommit = True  # transactions are spelled out below, to save round trips
        cursor = dbapi.cursor()
        try:
            params = self._params(report, row)
            shares = split_into_buckets(report.start, report.end)
            params["bucket_starts"] = [share.bucket_start for share in shares]
            cores = [hours_and_rest(report.vcuda_core * share.microseconds) for share in shares]
            memories = [
                hours_and_rest(report.vcuda_memory * share.microseconds) for share in shares
            ]
            params["core_hours"] = [hours for hours, _ in cores]
            params["cores"] = [rest for _, rest in cores]
            params["memory_hours"] = [hours for hours, _ in memories]
            params["memories"] = [rest for _, rest in memories]
            lock_key = pod_lock_key(report.namespace, report.pod_uid)
            cursor.execute(f"BEGIN; SELECT pg_advisory_xact_lock({lock_key})")
            try:
                cursor.execute(_PG_RECORD, params)
                found = cursor.fetchall()
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT" if not found else "ROLLBACK")
            return [StoredReport(*values) for values in found]
        finally:
            cursor.close()
            dbapi.autocommit = False

    def _write_sqlite(self, connection: Any, report: Report, row: NewRow) -> list[StoredReport]:
        cursor = connection.cursor()
        try:
            params = self._params(report, row)
            for key in ("start", "end", "received_at"):
                params[key] = sqlite_time(params[key])
            cursor.execute("BEGIN IMMEDIATE")
            try:
                found = cursor.execute(_SQLITE_FIND, params).fetchall()
                if not found:
                    cursor.execute(_SQLITE_INSERT, params)
                    for share in split_into_buckets(report.start, report.end):
                        cursor.execute(
                            _SQLITE_ADD,
                            (
                                report.namespace,
                                sqlite_time(share.bucket_start),
                                *hours_and_rest(report.vcuda_core * share.microseconds),
                                *hours_and_rest(report.vcuda_memory * share.microseconds),
                            ),
                        )
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT" if not found else "ROLLBACK")
            return [_sqlite_row(values) for values in found]
        finally:
            cursor.close()


class _Checkpointer(threading.Thread):
    """Checkpoints the SQLite WAL in the background while its writer is alive."""

    INTERVAL_SECONDS: Final = 0.5

    def __init__(self, writer: ReportWriter) -> None:
        super().__init__(name="sqlite-checkpointer", daemon=True)
        self._writer = weakref.ref(writer)
        self._engine = writer.engine

    def run(self) -> None:
        connection: Any = None
        ticks = threading.Event()  # never set: a timer that cannot oversleep a stop
        while not ticks.wait(self.INTERVAL_SECONDS):
            writer = self._writer()
            if writer is None:
                break
            if writer.writes_since_checkpoint == 0:
                continue
            writer.writes_since_checkpoint = 0
            del writer
            try:
                if connection is None:
                    connection = self._engine.raw_connection()
                    connection.detach()
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as err:
                # Retried at the next tick; SQLite also checkpoints when the last connection
                # closes.
                logger.warning("WAL checkpoint failed, retrying: %s", err)
                if connection is not None:
                    connection.close()
                connection = None
        if connection is not None:
            connection.close()


def _sqlite_row(values: Sequence[Any]) -> StoredReport:
    (uid, sequence, namespace, pod, start, end, core, memory, gpu, memory_seconds, received) = (
        values
    )
    return StoredReport(
        uid,
        sequence,
        namespace,
        pod,
        _sqlite_parse(start),
        _sqlite_parse(end),
        core,
        memory,
        gpu,
        memory_seconds,
        _sqlite_parse(received),
    )
