"""What a hostile or careless client can send changes nothing it should not: the size of
/metrics, the answers' protocol, the running totals (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
import string

import pytest
from flask.testing import FlaskClient

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
