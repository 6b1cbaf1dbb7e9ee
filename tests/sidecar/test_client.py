"""How the HTTP adapter classifies the timekeeper's answers (real HTTP on loopback)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from sidecar.client import Outcome, TimekeeperClient
from sidecar.intervals import parse_time
from sidecar.reports import Measured, PodIdentity, build_report
from sidecar.tokens import StaticToken
from tests.sidecar.fake_timekeeper import FakeTimekeeper
from tests.sidecar.timekeeper_process import free_port

TOKEN = "token-team-a"
REPORT = build_report(
    PodIdentity("0b3c8a4e-6f0d-4d9e-9b1a-2f6c1e8d7a55", "train-0", "team-a", 50, 15),
    sequence=1,
    start=parse_time("2026-11-21T06:00:00Z"),
    end=parse_time("2026-11-21T06:00:15Z"),
    measured=Measured(),
)


@pytest.fixture
def fake() -> Iterator[FakeTimekeeper]:
    timekeeper = FakeTimekeeper({TOKEN: "team-a"})
    timekeeper.start()
    yield timekeeper
    timekeeper.stop()


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(None, Outcome("delivered", 201, "HTTP 201"), id="201-delivered"),
        pytest.param(500, Outcome("retry", 500, "HTTP 500: unavailable: fake outage"), id="500"),
        pytest.param(503, Outcome("retry", 503, "HTTP 503: unavailable: fake outage"), id="503"),
        pytest.param(408, Outcome("retry", 408, "HTTP 408: unavailable: fake outage"), id="408"),
        pytest.param(429, Outcome("retry", 429, "HTTP 429: unavailable: fake outage"), id="429"),
        pytest.param(
            400, Outcome("rejected", 400, "HTTP 400: unavailable: fake outage"), id="400-refused"
        ),
        pytest.param(
            409, Outcome("rejected", 409, "HTTP 409: unavailable: fake outage"), id="409-refused"
        ),
    ],
)
def test_answers_are_classified(
    fake: FakeTimekeeper, status: int | None, expected: Outcome
) -> None:
    fake.fail_with = status
    client = TimekeeperClient(fake.url, tokens=StaticToken(TOKEN))
    assert client.send(REPORT, timeout_seconds=5) == expected


def test_a_resend_of_a_delivered_interval_is_acknowledged_again(fake: FakeTimekeeper) -> None:
    client = TimekeeperClient(fake.url, tokens=StaticToken(TOKEN))
    assert client.send(REPORT, timeout_seconds=5).kind == "delivered"
    assert client.send(REPORT, timeout_seconds=5) == Outcome("delivered", 200, "HTTP 200")
    assert len(fake.held(REPORT["podUid"])) == 1


def test_a_path_prefix_in_the_url_is_kept(fake: FakeTimekeeper) -> None:
    client = TimekeeperClient(f"{fake.url}/prefix", tokens=StaticToken(TOKEN))
    assert client.send(REPORT, timeout_seconds=5) == Outcome(
        "rejected", 404, "HTTP 404: not-found: /prefix/api/v1/reports"
    )


def test_nobody_listening_is_retried() -> None:
    client = TimekeeperClient(f"http://127.0.0.1:{free_port()}", tokens=StaticToken(TOKEN))
    outcome = client.send(REPORT, timeout_seconds=2)
    assert (outcome.kind, outcome.status) == ("retry", None)
    assert outcome.reason.startswith("no answer: ConnectionRefusedError")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("header.payload\nsignature", id="line-break"),
        pytest.param("token-\u2603", id="beyond-latin-1"),
    ],
)
def test_a_token_that_cannot_be_sent_is_retried_not_a_crash(
    fake: FakeTimekeeper, token: str
) -> None:
    client = TimekeeperClient(fake.url, tokens=StaticToken(token))
    assert client.send(REPORT, timeout_seconds=5) == Outcome(
        "retry",
        None,
        "the bearer token cannot be sent in a header (a line break or a character beyond "
        "Latin-1); reading the token again",
    )


class _Anything(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the status and body the test sets."""

    answer: ClassVar[tuple[int, bytes]] = (200, b"")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, body = self.answer
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(200, b"<html>welcome</html>", id="html-page"),
        pytest.param(204, b"", id="no-content"),
        pytest.param(200, b'{"ok": true}', id="other-json"),
        pytest.param(
            200,
            b'{"podUid": "0b3c8a4e-6f0d-4d9e-9b1a-2f6c1e8d7a55", "sequence": 2}',
            id="receipt-of-another-sequence",
        ),
        pytest.param(201, b'{"podUid": "another-pod", "sequence": 1}', id="receipt-of-another-pod"),
    ],
)
def test_a_2xx_without_the_receipt_is_retried_not_taken_as_delivered(
    status: int, body: bytes
) -> None:
    # A proxy or a wrong service answering 2xx must not make the sidecar drop the interval.
    handler = type("Handler", (_Anything,), {"answer": (status, body)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = TimekeeperClient(
            f"http://127.0.0.1:{server.server_address[1]}", tokens=StaticToken(TOKEN)
        )
        assert client.send(REPORT, timeout_seconds=5) == Outcome(
            "retry",
            status,
            f"HTTP {status} without the timekeeper's receipt for sequence 1 (is "
            "GPUSHARE_TIMEKEEPER_URL the timekeeper?)",
        )
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        pytest.param(
            400,
            b'{"error": "too-early", "message": "end: lies in the future beyond the 60 s '
            b'clock-skew allowance"}',
            "retry",
            id="too-early-node-clock-ahead-is-retried",
        ),
        pytest.param(
            400,
            b'{"error": "rejected", "message": "start/end: overlaps sequence 9"}',
            "rejected",
            id="overlap-is-given-up",
        ),
        pytest.param(400, b'{"error": 7}', "rejected", id="odd-error-code"),
        pytest.param(400, b"[]", "rejected", id="not-an-object"),
    ],
)
def test_4xx_answers_that_time_cures_are_retried(status: int, body: bytes, kind: str) -> None:
    handler = type("Handler", (_Anything,), {"answer": (status, body)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = TimekeeperClient(
            f"http://127.0.0.1:{server.server_address[1]}", tokens=StaticToken(TOKEN)
        )
        outcome = client.send(REPORT, timeout_seconds=5)
    finally:
        server.shutdown()
        server.server_close()
    assert (outcome.kind, outcome.status) == (kind, status)
