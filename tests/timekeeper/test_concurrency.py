"""Running totals stay exact under concurrent writers: many threads on one engine, and two
gunicorn servers (two workers each) on one database, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tests.timekeeper.servers import ServerProcess
from timekeeper import database
from timekeeper.buckets import from_hours_and_rest
from timekeeper.errors import ReportRejected
from timekeeper.ledger import Ledger
from timekeeper.models import usage_buckets, usage_reports
from timekeeper.reports import parse_report

BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


def odd_report(pod_index: int, index: int, *, namespace: str = "team-a") -> dict[str, Any]:
    """Reports of 7 min 13.5 s, so that most cross a bucket boundary at an odd point."""
    length = timedelta(minutes=7, seconds=13, milliseconds=500)
    start = BASE + index * length + timedelta(seconds=pod_index)
    return {
        "podUid": f"uid-{pod_index}",
        "pod": f"pod-{pod_index}",
        "namespace": namespace,
        "sequence": index + 1,
        "start": start.isoformat(),
        "end": (start + length).isoformat(),
        "vcudaCore": 1 + (pod_index * 7) % 99,
        "vcudaMemory": pod_index,
    }


def expected_core_microseconds(bodies: list[dict[str, Any]]) -> int:
    total = 0
    for body in bodies:
        report = parse_report(body)
        total += report.vcuda_core * report.duration_microseconds
    return total


def stored_totals(url: str) -> tuple[int, int, int]:
    """(ledger rows, distinct (pod, sequence), bucket core-microseconds) in the database."""
    engine = database.make_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(sa.func.count()).select_from(usage_reports))
            distinct = connection.execute(
                sa.select(sa.func.count()).select_from(
                    sa.select(usage_reports.c.pod_uid, usage_reports.c.sequence)
                    .distinct()
                    .subquery()
                )
            )
            hours, rest = connection.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(usage_buckets.c.core_hours), 0),
                    sa.func.coalesce(sa.func.sum(usage_buckets.c.core_microseconds), 0),
                )
            ).one()
            return rows.scalar_one(), distinct.scalar_one(), from_hours_and_rest(hours, rest)
    finally:
        engine.dispose()


def run_threads(count: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            work(index)
        except BaseException as err:  # surfaced below, so the test fails with it
            errors.append(err)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not [thread for thread in threads if thread.is_alive()]
    assert errors == []


def test_threads_writing_and_resending_keep_totals_exact(database_url: str) -> None:
    pods, per_pod = 8, 25
    bodies = {p: [odd_report(p, i) for i in range(per_pod)] for p in range(pods)}
    engine = database.make_engine(database_url, pool_size=pods, max_overflow=0)
    ledger = Ledger(engine)
    now = datetime.now(UTC)

    def work(pod: int) -> None:
        neighbour = (pod + 1) % pods
        for own, other in zip(bodies[pod], bodies[neighbour], strict=True):
            # Each report is sent by its owner and, at the same time, resent by a neighbour.
            ledger.record(parse_report(own), received_at=now)
            ledger.record(parse_report(other), received_at=now)

    try:
        run_threads(pods, work)
    finally:
        engine.dispose()
    everything = [body for pod_bodies in bodies.values() for body in pod_bodies]
    assert stored_totals(database_url) == (
        pods * per_pod,
        pods * per_pod,
        expected_core_microseconds(everything),
    )


def test_racing_overlapping_reports_of_one_pod_never_both_land(database_url: str) -> None:
    engine = database.make_engine(database_url, pool_size=2, max_overflow=0)
    ledger = Ledger(engine)
    now = datetime.now(UTC)
    minute = timedelta(minutes=1)

    def work(side: int) -> None:
        for k in range(30):
            start = BASE + k * 2 * minute + side * minute / 2
            body = {
                "podUid": "racer",
                "pod": "racer",
                "namespace": "team-a",
                "sequence": 2 * k + side + 1,
                "start": start.isoformat(),
                "end": (start + minute).isoformat(),
                "vcudaCore": 10,
                "vcudaMemory": 1,
            }
            with contextlib.suppress(ReportRejected):
                ledger.record(parse_report(body), received_at=now)

    try:
        run_threads(2, work)
        with engine.connect() as connection:
            intervals = connection.execute(
                sa.select(usage_reports.c.start_at, usage_reports.c.end_at).order_by(
                    usage_reports.c.start_at
                )
            ).all()
    finally:
        engine.dispose()
    assert len(intervals) >= 30
    for earlier, later in itertools.pairwise(intervals):
        assert earlier.end_at <= later.start_at


def _post_all(server: ServerProcess, bodies: list[dict[str, Any]]) -> None:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        for body in bodies:
            connection.request(
                "POST",
                "/api/v1/reports",
                body=json.dumps(body),
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            answer = response.read()
            assert response.status == 200, answer
    finally:
        connection.close()


def test_two_servers_on_one_database_keep_totals_exact(
    database_url: str, server_factory: Callable[..., ServerProcess]
) -> None:
    common = [
        "--database-url",
        database_url,
        "--allow-unauthenticated-reports",
        "--workers",
        "2",
        "--no-migrate",
    ]
    servers = [server_factory(*common, name="a"), server_factory(*common, name="b")]
    pods, per_pod = 8, 20
    bodies = {p: [odd_report(p, i) for i in range(per_pod)] for p in range(pods)}

    def work(pod: int) -> None:
        # The owner sends through one server; a resend of everything goes through the other.
        _post_all(servers[pod % 2], bodies[pod])
        _post_all(servers[(pod + 1) % 2], bodies[pod])

    run_threads(pods, work)
    everything = [body for pod_bodies in bodies.values() for body in pod_bodies]
    expected = expected_core_microseconds(everything)
    assert stored_totals(database_url) == (pods * per_pod, pods * per_pod, expected)
    status, answer = servers[0].request("GET", "/api/v1/namespaces/team-a")
    assert status == 200
    assert answer["usedGpuHours"] == round(expected / 1e8 / 3600, 6)
