"""Slow and idle clients cannot starve the webhook or the timekeeper (real processes).

Each test measures a baseline first, then opens 1,000 connections that never finish a request
(partial TLS handshakes, partial request heads, idle sockets) and measures again while they
are open. The bounds are relative to the baseline and generous, for a loaded 2-core machine:
what they catch is a server whose threads are all held by slow clients (answers then wait
for the clients' deadlines, seconds to minutes).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import wait_until
from tests.slowclients import Latencies, closed_by_server, measure, slow_sockets
from tests.webhook.builders import container, gpu, pod, review
from tests.webhook.serving import (
    Served,
    Timekeeper,
    serve_timekeeper,
    serve_uncached_fail_open_webhook,
)

pytestmark = pytest.mark.slow

SLOW_SOCKETS = 1000
SAMPLES = 15
API_SERVER_TIMEOUT_SECONDS = 5.0
"""What the API server waits for a webhook by default in our chart; nothing may come near."""

BUDGETS = """
defaults: {period: month, gpuHours: 100}
namespaces:
  interns: {gpuHours: 0, whenExhausted: deny}
"""
WEBHOOK_TOKEN = "webhook-token-0123456789abcdef01234567"


def _bound(baseline: Latencies) -> float:
    """The median allowed with slow clients open: ten times the baseline plus 250 ms."""
    return 10 * baseline.median + 0.25


def _check(baseline: Latencies, loaded: Latencies, what: str) -> None:
    assert loaded.worst < API_SERVER_TIMEOUT_SECONDS, (
        f"{what} with {SLOW_SOCKETS} slow clients: {loaded}; baseline {baseline}"
    )
    assert loaded.median < _bound(baseline), (
        f"{what} with {SLOW_SOCKETS} slow clients: {loaded}; baseline {baseline}"
    )


@pytest.fixture
def timekeeper(tmp_path: Path) -> Iterator[Timekeeper]:
    tokens = {"gpushare-system": WEBHOOK_TOKEN}
    with serve_timekeeper(
        tmp_path / "timekeeper", BUDGETS, tokens, "--read-requires-token"
    ) as server:
        yield server


@pytest.fixture
def webhook(tmp_path: Path, timekeeper: Timekeeper) -> Iterator[Served]:
    with serve_uncached_fail_open_webhook(tmp_path, timekeeper.url, WEBHOOK_TOKEN) as served:
        yield served


def _port(timekeeper: Timekeeper) -> int:
    return int(timekeeper.url.rsplit(":", 1)[1])


def _healthz_plain(timekeeper: Timekeeper) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", _port(timekeeper), timeout=10)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        assert response.status == 200, response.read()
        response.read()
    finally:
        connection.close()


def _healthz_tls(served: Served) -> None:
    connection = served.connect(timeout=10)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        assert response.status == 200
        response.read()
    finally:
        connection.close()


def _deny_review() -> dict:
    subject = pod(container("train", limits=gpu(50, 8)), namespace="interns")
    return review(subject, namespace="interns")


def _admission_denied(served: Served) -> None:
    """A GPU pod of the exhausted `deny` namespace is refused: the webhook learnt the state
    from the timekeeper (fail-open would have admitted it)."""
    status, body = served.post("/mutate", _deny_review())
    assert status == 200, body
    assert body["response"]["allowed"] is False, json.dumps(body)[:500]


def test_timekeeper_healthz_holds_with_1000_slow_clients(timekeeper: Timekeeper) -> None:
    baseline = measure(lambda: _healthz_plain(timekeeper), SAMPLES)
    kinds = {"idle": SLOW_SOCKETS // 2, "partial-head": SLOW_SOCKETS // 2}
    with slow_sockets(_port(timekeeper), kinds) as sockets:
        loaded = measure(lambda: _healthz_plain(timekeeper), SAMPLES)
        _check(baseline, loaded, "timekeeper /healthz")
        # Neither kind may stay forever: the request-head deadline (5 s) closes both.
        wait_until(
            lambda: closed_by_server(sockets) == len(sockets),
            timeout=30,
            what="the timekeeper to close every slow connection",
        )


def test_webhook_healthz_and_admission_hold_with_1000_slow_clients(
    webhook: Served, timekeeper: Timekeeper
) -> None:
    """1,000 slow clients at the webhook and 1,000 more at the timekeeper it asks: the
    exhausted `deny` namespace is still refused (a stalled budget lookup would have let the
    fail-open policy admit the pod), within the same bounds."""
    _admission_denied(webhook)
    baseline_health = measure(lambda: _healthz_tls(webhook), SAMPLES)
    baseline_admission = measure(lambda: _admission_denied(webhook), SAMPLES)
    kinds = {"partial-handshake": SLOW_SOCKETS // 2, "partial-head-tls": SLOW_SOCKETS // 2}
    at_timekeeper = {"idle": SLOW_SOCKETS // 2, "partial-head": SLOW_SOCKETS // 2}
    with (
        slow_sockets(webhook.port, kinds, webhook.context()) as at_webhook,
        slow_sockets(_port(timekeeper), at_timekeeper),
    ):
        health = measure(lambda: _healthz_tls(webhook), SAMPLES)
        admission = measure(lambda: _admission_denied(webhook), SAMPLES)
        _check(baseline_health, health, "webhook /healthz")
        _check(baseline_admission, admission, "webhook /mutate (budget from the timekeeper)")
        handshakes = at_webhook[: SLOW_SOCKETS // 2]
        # The TLS handshake deadline (5 s) closes every partial handshake.
        wait_until(
            lambda: closed_by_server(handshakes) == len(handshakes),
            timeout=30,
            what="the webhook to close every partial TLS handshake",
        )


def test_a_body_declared_past_the_limit_is_refused_before_it_is_read(
    timekeeper: Timekeeper,
) -> None:
    """The server buffers a body before the app runs, so its limit bounds what a connection
    holds; a declared length past it gets a JSON 413 at once, the body never sent."""
    connection = http.client.HTTPConnection("127.0.0.1", _port(timekeeper), timeout=10)
    try:
        connection.putrequest("POST", "/api/v1/reports")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(1 << 30))
        connection.endheaders()
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 413
    assert answer["error"] == "request-entity-too-large"
    assert str(1 << 30) in answer["message"]


def test_a_chunked_body_past_the_limit_is_refused(timekeeper: Timekeeper) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", _port(timekeeper), timeout=10)
    chunk = b"x" * 65536
    try:
        connection.request(
            "POST",
            "/api/v1/reports",
            body=iter([chunk] * 4),  # 256 KiB, no length given: sent chunked
            headers={"Content-Type": "application/json"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 413
    assert answer["error"] == "request-entity-too-large"
