"""An in-process stand-in for the timekeeper's `POST /api/v1/reports`, with the same rules.

Bearer tokens map to namespaces (401 without a known token, 403 for another namespace);
reports are idempotent on (podUid, sequence) (a resend gets the first answer, a different
body under a used sequence gets 409); an interval overlapping another of the same pod gets
422. `fail_with` makes it answer every report with that status (e.g. 503); `stop()` and
`start()` take it off the network and back on the same port.
"""

from __future__ import annotations

import json
import ssl
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


class FakeTimekeeper:
    def __init__(self, tokens: dict[str, str], *, tls: ssl.SSLContext | None = None) -> None:
        self.tokens = dict(tokens)
        self.tls = tls
        self.reports: dict[tuple[str, int], dict[str, Any]] = {}
        self.attempts = 0
        self.refusals: list[tuple[int, str]] = []
        self.fail_with: int | None = None
        self.stall = False
        """While True, requests are read and then left unanswered until `stop()`."""
        self.stalled = 0
        self._release = threading.Event()
        self.lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.port}"
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if fake.stall:
                    with fake.lock:
                        fake.stalled += 1
                    fake._release.wait(60)
                status, answer = fake.handle(self.path, self.headers.get("Authorization"), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def handle(self, path: str, authorization: str | None, body: bytes) -> tuple[int, Any]:
        with self.lock:
            self.attempts += 1
            if path != "/api/v1/reports":
                return 404, {"error": "not-found", "message": path}
            if self.fail_with is not None:
                return self.fail_with, {"error": "unavailable", "message": "fake outage"}
            token = (authorization or "").removeprefix("Bearer ")
            namespace = self.tokens.get(token)
            if namespace is None:
                return self._refuse(401, "unauthenticated", "unknown token")
            report = json.loads(body)
            if report["namespace"] != namespace:
                return self._refuse(403, "forbidden", f"token is for {namespace}")
            key = (report["podUid"], report["sequence"])
            if key in self.reports:
                if self.reports[key] != report:
                    return self._refuse(409, "conflict", f"sequence {key[1]} holds another report")
                return 200, {"podUid": key[0], "sequence": key[1]}
            start, end = _time(report["start"]), _time(report["end"])
            if end <= start:
                return self._refuse(422, "invalid", "end: must be after start")
            for (uid, sequence), other in self.reports.items():
                if uid == key[0] and _time(other["start"]) < end and _time(other["end"]) > start:
                    return self._refuse(422, "rejected", f"overlaps sequence {sequence}")
            self.reports[key] = report
            return 201, {"podUid": key[0], "sequence": key[1]}

    def _refuse(self, status: int, code: str, message: str) -> tuple[int, Any]:
        self.refusals.append((status, message))
        return status, {"error": code, "message": message}

    def held(self, pod_uid: str) -> list[dict[str, Any]]:
        """The stored reports of one pod, by sequence."""
        with self.lock:
            return [r for (uid, _), r in sorted(self.reports.items()) if uid == pod_uid]
