"""What a hostile or careless client can send changes nothing it should not: the size of
/metrics, the answers' protocol, the running totals (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
import string

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from tests.timekeeper.conftest import MakeApp, report_body
from timekeeper import database
from timekeeper.buckets import from_hours_and_rest
from timekeeper.models import usage_buckets
from timekeeper.reports import MAX_VCUDA_MEMORY

ODD_METHODS = [
    "".join(random.Random(seed).choices(string.ascii_uppercase, k=12)) for seed in range(200)
]


def _series(client: FlaskClient) -> set[str]:
    """The names and labels of every sample in /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200
    lines = response.get_data(as_text=True).splitlines()
    return {line.rsplit(" ", 1)[0] for line in lines if line and not line.startswith("#")}


def test_invented_methods_and_paths_do_not_grow_metrics(client: FlaskClient) -> None:
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW"):
        for path in ("/healthz", "/api/v1/reports", "/api/v1/namespaces/team-a", "/nowhere"):
            client.open(path, method=method)
    client.get("/metrics")  # its own series appear after its first answer
    before = _series(client)
    for index, method in enumerate(ODD_METHODS):
        client.open("/api/v1/reports", method=method)
        client.open(f"/x{index}/{method.lower()}", method=method)
        client.open(f"/api/v1/namespaces/ns-{index}", method=method)
    after = _series(client)
    assert after - before == set(), f"{len(after - before)} new series in /metrics"
    text = client.get("/metrics").get_data(as_text=True)
    assert 'method="other"' in text
    assert ODD_METHODS[0] not in text


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        pytest.param("DELETE", "/api/v1/reports", {"POST"}, id="reports-delete"),
        pytest.param("GET", "/api/v1/reports", {"POST"}, id="reports-get"),
        pytest.param("POST", "/healthz", {"GET", "HEAD", "OPTIONS"}, id="healthz-post"),
        pytest.param(
            "PUT", "/api/v1/namespaces/team-a", {"GET", "HEAD", "OPTIONS"}, id="namespace-put"
        ),
    ],
)
def test_405_names_the_allowed_methods(
    client: FlaskClient, method: str, path: str, allowed: set[str]
) -> None:
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert response.get_json()["error"] == "method-not-allowed"
    assert "Allow" in response.headers, dict(response.headers)
    assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed


@pytest.mark.slow
def test_a_bucket_full_of_large_reports_stays_exact_and_writable(
    make_app: MakeApp, database_url: str
) -> None:
    """10,300 reports of the largest memory (1,000,000 units) for a whole 15-minute bucket add
    up to 9.27 x 10^18 unit-microseconds, past a 64-bit integer: every report is stored, the
    totals stay exact integers, and the namespace's status and the list still answer."""
    client = make_app().test_client()
    count = 10_300
    for index in range(count):
        body = report_body(
            podUid=f"big-{index}",
            pod=f"big-{index}",
            start="2026-11-21T05:30:00Z",
            end="2026-11-21T05:45:00Z",
            vcudaCore=100,
            vcudaMemory=MAX_VCUDA_MEMORY,
        )
        response = client.post("/api/v1/reports", json=body)
        assert response.status_code == 200, (index, response.get_json())
    engine = database.make_engine(database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                sa.select(
                    usage_buckets.c.core_hours,
                    usage_buckets.c.core_microseconds,
                    usage_buckets.c.memory_unit_hours,
                    usage_buckets.c.memory_unit_microseconds,
                ).where(usage_buckets.c.namespace == "team-a")
            ).one()
    finally:
        engine.dispose()
    assert all(isinstance(value, int) for value in row), row
    microseconds = 900 * 1_000_000
    assert from_hours_and_rest(row[2], row[3]) == count * MAX_VCUDA_MEMORY * microseconds
    assert from_hours_and_rest(row[2], row[3]) > 2**63
    assert from_hours_and_rest(row[0], row[1]) == count * 100 * microseconds
    status = client.get("/api/v1/namespaces/team-a")
    assert status.status_code == 200
    assert status.get_json()["usedGpuHours"] == pytest.approx(count * 0.25)
    assert client.get("/api/v1/namespaces").status_code == 200
