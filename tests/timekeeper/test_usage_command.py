"""`gpushare usage` against URLs that are not a working timekeeper: one line, never a
traceback, exit 1 (unusable answer) or 2 (bad --url)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from gpushare.cli import main


class _Answers(BaseHTTPRequestHandler):
    """Answers every GET with the body named by the first path segment."""

    BODIES: ClassVar[dict[str, tuple[int, str, bytes]]] = {
        "html": (200, "text/html", b"<html>hello</html>"),
        "array": (200, "application/json", b"[1, 2]"),
        "other-json": (200, "application/json", b'{"namespaces": [{"name": "x"}]}'),
        "not-found": (404, "text/plain", b"nothing here"),
    }

    def do_GET(self) -> None:
        status, kind, body = self.BODIES[self.path.split("/")[1]]
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def answers_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("url", "namespace", "status", "message"),
    [
        pytest.param(
            "notaurl",
            None,
            2,
            "gpushare usage: --url: must be an http:// or https:// URL with a host, like "
            "http://127.0.0.1:8080 (got 'notaurl')",
            id="not-a-url",
        ),
        pytest.param(
            "ftp://tk",
            None,
            2,
            "gpushare usage: --url: must be an http:// or https:// URL with a host, like "
            "http://127.0.0.1:8080 (got 'ftp://tk')",
            id="ftp",
        ),
        pytest.param(
            "http://tk?x=1",
            None,
            2,
            "gpushare usage: --url: must be the timekeeper's base URL, without a query or "
            "fragment (got 'http://tk?x=1')",
            id="query",
        ),
        pytest.param(
            "token",
            None,
            2,
            "gpushare usage: --token: must be printable ASCII without spaces (a bearer token) "
            "(got a value of 12 characters)",
            id="token-with-a-line-break-never-printed",
        ),
        pytest.param(
            "{server}/html",
            None,
            1,
            "gpushare usage: {server}/html/api/v1/namespaces: the answer is not JSON; is this "
            "the timekeeper?",
            id="html-answer",
        ),
        pytest.param(
            "{server}/array",
            None,
            1,
            "gpushare usage: {server}/array: the answer is not the timekeeper's API "
            "(AttributeError: 'list' object has no attribute 'get'); is --url the "
            "timekeeper's base URL?",
            id="json-array",
        ),
        pytest.param(
            "{server}/other-json",
            None,
            1,
            "gpushare usage: {server}/other-json: the answer is not the timekeeper's API "
            "(KeyError: 'namespace'); is --url the timekeeper's base URL?",
            id="other-json",
        ),
        pytest.param(
            "{server}/other-json",
            "team-a",
            1,
            "gpushare usage: {server}/other-json: the answer is not the timekeeper's API "
            "(KeyError: 'namespace'); is --url the timekeeper's base URL?",
            id="other-json-one-namespace",
        ),
        pytest.param(
            "{server}/not-found",
            None,
            1,
            "gpushare usage: {server}/not-found/api/v1/namespaces: HTTP 404: Not Found",
            id="not-found",
        ),
        pytest.param(
            "http://127.0.0.1:{closed}",
            None,
            1,
            "gpushare usage: http://127.0.0.1:{closed}/api/v1/namespaces: cannot reach the "
            "timekeeper (<urlopen error [Errno 111] Connection refused>)",
            id="dead-url",
        ),
    ],
)
def test_usage_command_refuses_what_is_not_a_timekeeper(
    answers_url: str,
    capsys: pytest.CaptureFixture[str],
    url: str,
    namespace: str | None,
    status: int,
    message: str,
) -> None:
    closed = _closed_port()
    filled = url.format(server=answers_url, closed=closed)
    argv = ["usage", "--url", filled, *([namespace] if namespace else [])]
    if url == "token":
        argv = ["usage", "--url", answers_url, "--token", "secret\nvalue"]
    assert main(argv) == status
    captured = capsys.readouterr()
    assert captured.err.strip() == message.format(server=answers_url, closed=closed)
