"""Requests a careless or hostile client may send: the protocol answers stay right and
/metrics does not grow with what the client invents."""

from __future__ import annotations

import random
import string

import pytest
from flask.testing import FlaskClient


def _series(client: FlaskClient) -> set[str]:
    text = client.get("/metrics").get_data(as_text=True)
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}


def test_invented_methods_and_paths_do_not_grow_metrics(client: FlaskClient) -> None:
    for path in ("/mutate", "/validate", "/healthz", "/metrics", "/nowhere"):
        client.open(path, method="GET")
        client.open(path, method="POST", data=b"{}", content_type="application/json")
    before = _series(client)
    for seed in range(200):
        method = "".join(random.Random(seed).choices(string.ascii_uppercase, k=10))
        client.open("/mutate", method=method)
        client.open(f"/p{seed}/{method.lower()}", method=method)
    assert _series(client) - before == set()


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        pytest.param("GET", "/mutate", "OPTIONS, POST", id="get-mutate"),
        pytest.param("PUT", "/validate", "OPTIONS, POST", id="put-validate"),
        pytest.param("POST", "/healthz", "GET, HEAD, OPTIONS", id="post-healthz"),
    ],
)
def test_405_names_the_allowed_methods(
    client: FlaskClient, method: str, path: str, allowed: str
) -> None:
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert response.headers.get("Allow") == allowed
    assert response.json is not None and response.json["error"] == "method-not-allowed"
