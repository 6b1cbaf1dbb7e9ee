"""Timekeeper benchmarks: report ingestion through gunicorn, and read latency at size.

Ingestion (2 gunicorn workers, gthread, the same configuration for every server, measured
side by side in one run, load from client processes over keep-alive connections):
- SQLite: `POST /api/v1/reports` against a no-op Flask endpoint (floor: the HTTP stack).
- PostgreSQL: `POST /api/v1/reports` against an endpoint doing one single-row INSERT and
  COMMIT on the same database (floor: the database's commit).
Reads, with 1,000 namespaces and 1,000,000 ledger rows (a month of continuous use each):
- `GET /api/v1/namespaces/{ns}` p50/p99 over the HTTP stack, beside `GET /healthz`.
- `GET /api/v1/namespaces/{ns}/usage` over the month, by pod and by day.
- `GET /api/v1/idle` over a day and a week, the usage pages and a `/metrics` scrape.

    python -m tests.bench timekeeper
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tests.timekeeper.servers import ServerProcess, start_server
from timekeeper import database

POSTGRES_ADMIN_URL = os.environ.get(
    "GPUSHARE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
CLIENT_PROCESSES = 4
REQUESTS_PER_CLIENT = 500
ROUNDS = 3
NAMESPACES = 1000
REPORTS_PER_NAMESPACE = 1000
WORKERS = [
    "--workers",
    os.environ.get("BENCH_WORKERS", "2"),
    "--threads",
    os.environ.get("BENCH_THREADS", "4"),
]


# --- baseline servers (same gunicorn configuration as `gpushare timekeeper`) ----------------


def _serve_baseline(kind: str, url: str) -> None:
    """Entry point of a baseline server subprocess: `noop` or `insert`."""
    from flask import Flask, jsonify, request

    from timekeeper.server import ServeOptions, TimekeeperServer
    from timekeeper.settings import Settings

    class Baseline(TimekeeperServer):
        def load(self) -> Any:
            app = Flask("baseline")
            engine = database.make_engine(url) if kind == "insert" else None

            @app.get("/readyz")
            def ready() -> Any:
                return jsonify(status="ready")

            @app.post("/api/v1/reports")
            def report() -> Any:
                body = request.get_json()
                if engine is not None:
                    with engine.begin() as connection:
                        connection.execute(
                            sa.text("INSERT INTO bench_rows (payload) VALUES (:payload)"),
                            {"payload": body["podUid"]},
                        )
                return jsonify(ok=True)

            return app

    Baseline(
        Settings(),
        ServeOptions(
            host="127.0.0.1",
            port=0,
            workers=int(os.environ.get("BENCH_WORKERS", "2")),
            threads=int(os.environ.get("BENCH_THREADS", "4")),
        ),
    ).run()


def start_baseline(kind: str, url: str, log_dir: Path) -> ServerProcess:
    import subprocess

    log_path = log_dir / f"baseline-{kind}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.bench_timekeeper", "serve", kind, url],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = ServerProcess(process, log_path)
    from tests.timekeeper.servers import LISTENING_RE

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = LISTENING_RE.search(server.log())
        if match:
            server.host, server.port = match.group(1), int(match.group(2))
            try:
                if server.request("GET", "/readyz", timeout=2)[0] == 200:
                    return server
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"baseline {kind} did not start:\n{server.log()}")


# --- load generator ----------------------------------------------------------------------------


def _bodies(client: int, count: int) -> list[bytes]:
    uid = f"bench-{uuid.uuid4().hex[:12]}-{client}"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=20)
    out = []
    for index in range(count):
        begin = start + timedelta(seconds=60 * index)
        out.append(
            json.dumps(
                {
                    "podUid": uid,
                    "pod": f"bench-{client}",
                    "namespace": f"bench-{client % 3}",
                    "sequence": index + 1,
                    "start": begin.isoformat(),
                    "end": (begin + timedelta(seconds=60)).isoformat(),
                    "vcudaCore": 50,
                    "vcudaMemory": 4,
                }
            ).encode()
        )
    return out


def _client(args: tuple[str, int, int, int]) -> tuple[int, int]:
    host, port, client, count = args
    bodies = _bodies(client, count)
    connection = http.client.HTTPConnection(host, port, timeout=30)
    ok = 0
    for body in bodies:
        connection.request(
            "POST", "/api/v1/reports", body=body, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        response.read()
        ok += response.status == 200
    connection.close()
    return ok, count


def ingest_rate(server: ServerProcess) -> float:
    """Requests/second of CLIENT_PROCESSES clients sending REQUESTS_PER_CLIENT reports each."""
    work = [(server.host, server.port, c, REQUESTS_PER_CLIENT) for c in range(CLIENT_PROCESSES)]
    with multiprocessing.get_context("fork").Pool(CLIENT_PROCESSES) as pool:
        started = time.perf_counter()
        results = pool.map(_client, work)
        elapsed = time.perf_counter() - started
    ok = sum(result[0] for result in results)
    total = sum(result[1] for result in results)
    if ok != total:
        raise RuntimeError(f"{total - ok} of {total} requests failed on {server.url}")
    return total / elapsed


# --- fixtures at size ---------------------------------------------------------------------------


def _fresh_postgres() -> str:
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"gpushare_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    admin.dispose()
    return url


def _drop_postgres(url: str) -> None:
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = sa.make_url(url).database
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _month_pattern(end: datetime) -> tuple[list[tuple[datetime, datetime]], dict[datetime, int]]:
    """One pod's contiguous reports over 30 days up to `end`, and µs per bucket."""
    from timekeeper.buckets import split_into_buckets

    length = timedelta(days=30) / REPORTS_PER_NAMESPACE
    first = end - timedelta(days=30)
    intervals = [
        (first + i * length, first + (i + 1) * length) for i in range(REPORTS_PER_NAMESPACE)
    ]
    per_bucket: dict[datetime, int] = {}
    for start, stop in intervals:
        for share in split_into_buckets(start, stop):
            per_bucket[share.bucket_start] = (
                per_bucket.get(share.bucket_start, 0) + share.microseconds
            )
    return intervals, per_bucket


def _rows(end: datetime) -> tuple[Any, Any]:
    intervals, per_bucket = _month_pattern(end)
    received = end

    def reports() -> Any:
        for n in range(NAMESPACES):
            core = 10 + n % 90
            for sequence, (start, stop) in enumerate(intervals, 1):
                seconds = (stop - start).total_seconds()
                yield (
                    f"uid-{n}",
                    sequence,
                    f"ns-{n:04d}",
                    f"pod-{n}",
                    start,
                    stop,
                    core,
                    4,
                    core / 100 * seconds,
                    4 * 268435456 * seconds,
                    None,
                    None,
                    received,
                )

    def buckets() -> Any:
        for n in range(NAMESPACES):
            core = 10 + n % 90
            for bucket, micro in per_bucket.items():
                yield (f"ns-{n:04d}", bucket, core * micro, 4 * micro)

    return reports, buckets


REPORT_COLUMNS = (
    "pod_uid, sequence, namespace, pod, start_at, end_at, vcuda_core, vcuda_memory, "
    "gpu_seconds, memory_byte_seconds, sm_utilization, memory_used_bytes, received_at"
)
BUCKET_COLUMNS = "namespace, bucket_start, core_microseconds, memory_unit_microseconds"


def load_postgres(url: str, end: datetime) -> None:
    import psycopg

    reports, buckets = _rows(end)
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as connection, connection.cursor() as cursor:
        with cursor.copy(f"COPY usage_reports ({REPORT_COLUMNS}) FROM STDIN") as copy:
            for row in reports():
                copy.write_row(row)
        with cursor.copy(f"COPY usage_buckets ({BUCKET_COLUMNS}) FROM STDIN") as copy:
            for row in buckets():
                copy.write_row(row)
        connection.commit()
        connection.autocommit = True
        cursor.execute("VACUUM ANALYZE")


def load_sqlite(path: Path, end: datetime) -> None:
    reports, buckets = _rows(end)

    def text(value: Any) -> Any:
        if isinstance(value, datetime):
            return (
                value.astimezone(UTC)
                .replace(tzinfo=None)
                .isoformat(sep=" ", timespec="microseconds")
            )
        return value

    connection = sqlite3.connect(path)
    connection.execute("PRAGMA synchronous=OFF")
    connection.executemany(
        f"INSERT INTO usage_reports ({REPORT_COLUMNS}) VALUES ({','.join('?' * 13)})",
        (tuple(text(v) for v in row) for row in reports()),
    )
    connection.executemany(
        f"INSERT INTO usage_buckets ({BUCKET_COLUMNS}) VALUES (?,?,?,?)",
        (tuple(text(v) for v in row) for row in buckets()),
    )
    connection.commit()
    connection.execute("ANALYZE")
    connection.close()


def latencies(server: ServerProcess, paths: list[str]) -> list[float]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    out = []
    for path in paths:
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        out.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}")
    connection.close()
    return out


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def read_figures(name: str, server: ServerProcess, end: datetime) -> None:
    rng = random.Random(7)
    names = [f"ns-{rng.randrange(NAMESPACES):04d}" for _ in range(1000)]
    latencies(server, [f"/api/v1/namespaces/{n}" for n in names[:100]])  # warm up
    health = latencies(server, ["/healthz"] * 1000)
    status = latencies(server, [f"/api/v1/namespaces/{n}" for n in names])
    start = (end - timedelta(days=30)).isoformat().replace("+00:00", "Z")
    stop = end.isoformat().replace("+00:00", "Z")
    usage_pod = latencies(
        server, [f"/api/v1/namespaces/{n}/usage?from={start}&to={stop}" for n in names[:20]]
    )
    usage_day = latencies(
        server,
        [
            f"/api/v1/namespaces/{n}/usage?from={start}&to={stop}&group_by=day&format=csv"
            for n in names[:20]
        ],
    )
    ms = 1000
    print(
        f"{name}: GET /api/v1/namespaces/{{ns}} p50 {statistics.median(status) * ms:.2f} ms, "
        f"p99 {percentile(status, 0.99) * ms:.2f} ms (target < 10 ms); "
        f"/healthz p99 {percentile(health, 0.99) * ms:.2f} ms; "
        f"ratio p99 status/healthz {percentile(status, 0.99) / percentile(health, 0.99):.2f}"
    )
    print(
        f"{name}: usage over a month by pod: median {statistics.median(usage_pod) * ms:.1f} ms, "
        f"max {max(usage_pod) * ms:.1f} ms; by day (CSV): median "
        f"{statistics.median(usage_day) * ms:.1f} ms, max {max(usage_day) * ms:.1f} ms "
        f"(target < 300 ms)"
    )
    idle_day = latencies(server, ["/api/v1/idle?window_hours=24"] * 5)
    idle_week = latencies(server, ["/api/v1/idle?window_hours=168"] * 3)
    list_page = latencies(server, ["/ui/"] * 5)
    namespace_page = latencies(server, [f"/ui/namespaces/{n}" for n in names[:20]])
    scrape = latencies(server, ["/metrics"] * 5)
    print(
        f"{name}: idle pods of every namespace over 24 h: median "
        f"{statistics.median(idle_day) * ms:.0f} ms, over 7 days: median "
        f"{statistics.median(idle_week) * ms:.0f} ms; page /ui/ median "
        f"{statistics.median(list_page) * ms:.0f} ms, a namespace's page median "
        f"{statistics.median(namespace_page) * ms:.0f} ms, max {max(namespace_page) * ms:.0f} ms; "
        f"/metrics (budgets and per-pod shares) median {statistics.median(scrape) * ms:.0f} ms "
        f"(beside /healthz p99 {percentile(health, 0.99) * ms:.2f} ms)"
    )


def main(parts: tuple[str, ...] = ("ingestion", "reads")) -> None:
    work = Path(tempfile.mkdtemp(prefix="gpushare-bench-"))
    postgres_urls: list[str] = []
    servers: list[ServerProcess] = []
    try:
        if "ingestion" in parts:
            ingestion(work, postgres_urls, servers)
        if "reads" in parts:
            reads(work, postgres_urls, servers)
    finally:
        for server in servers:
            server.stop()
        for url in postgres_urls:
            _drop_postgres(url)
        for path in work.iterdir():
            path.unlink()
        work.rmdir()


def ingestion(work: Path, postgres_urls: list[str], servers: list[ServerProcess]) -> None:
    """Report ingestion, side by side with its floors."""
    common = ["--allow-unauthenticated-reports", *WORKERS]
    sqlite_url = f"sqlite:///{work / 'ingest.db'}"
    pg_url = _fresh_postgres()
    floor_url = _fresh_postgres()
    postgres_urls += [pg_url, floor_url]
    engine = database.make_engine(floor_url)
    with engine.begin() as connection:
        connection.execute(
            sa.text("CREATE TABLE bench_rows (id bigserial PRIMARY KEY, payload text NOT NULL)")
        )
    engine.dispose()
    noop = start_baseline("noop", "", work)
    insert = start_baseline("insert", floor_url, work)
    tk_sqlite = start_server(
        ["--database-url", sqlite_url, *common], log_path=work / "tk-sqlite.log"
    )
    tk_pg = start_server(["--database-url", pg_url, *common], log_path=work / "tk-pg.log")
    servers += [noop, insert, tk_sqlite, tk_pg]
    rates: dict[str, list[float]] = {"noop": [], "sqlite": [], "insert": [], "pg": []}
    for _round in range(ROUNDS):
        # Each floor is measured right before what is compared with it, in every round: the
        # machine is shared, so only figures taken side by side are compared.
        rates["noop"].append(ingest_rate(noop))
        rates["sqlite"].append(ingest_rate(tk_sqlite))
        rates["insert"].append(ingest_rate(insert))
        rates["pg"].append(ingest_rate(tk_pg))
    sqlite_ratios = [t / n for t, n in zip(rates["sqlite"], rates["noop"], strict=True)]
    pg_ratios = [t / n for t, n in zip(rates["pg"], rates["insert"], strict=True)]
    print(
        f"ingestion: {CLIENT_PROCESSES} client processes x {REQUESTS_PER_CLIENT} reports over "
        f"keep-alive connections, {ROUNDS} rounds, gunicorn {' '.join(WORKERS)} (median):"
    )
    print(f"  no-op Flask endpoint          {statistics.median(rates['noop']):7.0f} req/s")
    print(
        f"  timekeeper on SQLite          {statistics.median(rates['sqlite']):7.0f} req/s = "
        f"{statistics.median(sqlite_ratios):.0%} of no-op (target >= 60%; rounds: "
        f"{', '.join(f'{r:.0%}' for r in sqlite_ratios)})"
    )
    print(f"  INSERT+COMMIT on PostgreSQL   {statistics.median(rates['insert']):7.0f} req/s")
    print(
        f"  timekeeper on PostgreSQL      {statistics.median(rates['pg']):7.0f} req/s = "
        f"{statistics.median(pg_ratios):.0%} of INSERT+COMMIT (target >= 60%; rounds: "
        f"{', '.join(f'{r:.0%}' for r in pg_ratios)})"
    )
    for server in servers:
        server.stop()
    servers.clear()


def reads(work: Path, postgres_urls: list[str], servers: list[ServerProcess]) -> None:
    """Read latency with 1,000 namespaces and 1,000,000 ledger rows."""
    common = ["--allow-unauthenticated-reports", *WORKERS]
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    read_pg = _fresh_postgres()
    postgres_urls.append(read_pg)
    database.upgrade(read_pg)
    started = time.perf_counter()
    load_postgres(read_pg, end)
    print(
        f"loaded {NAMESPACES * REPORTS_PER_NAMESPACE:,} ledger rows into PostgreSQL in "
        f"{time.perf_counter() - started:.0f} s"
    )
    server = start_server(
        ["--database-url", read_pg, *common, "--no-migrate"], log_path=work / "read-pg.log"
    )
    servers.append(server)
    read_figures("PostgreSQL", server, end)
    server.stop()
    servers.clear()

    read_sqlite = work / "read.db"
    database.upgrade(f"sqlite:///{read_sqlite}")
    started = time.perf_counter()
    load_sqlite(read_sqlite, end)
    print(
        f"loaded {NAMESPACES * REPORTS_PER_NAMESPACE:,} ledger rows into SQLite in "
        f"{time.perf_counter() - started:.0f} s"
    )
    server = start_server(
        ["--database-url", f"sqlite:///{read_sqlite}", *common, "--no-migrate"],
        log_path=work / "read-sqlite.log",
    )
    servers.append(server)
    read_figures("SQLite", server, end)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        _serve_baseline(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
    else:
        main()
