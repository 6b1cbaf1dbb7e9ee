"""`POST /api/v1/reports` as a bare WSGI handler in front of the Flask app.

Every GPU pod reports to this endpoint all the time, so it skips Flask's request machinery
(context, routing, hooks): it reads the body, authenticates, parses, records and answers
with the same JSON and the same errors as the rest of the API (`error_response`), and keeps
the same metrics. Every other request goes on to Flask.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from timekeeper.accounting import Accounting
from timekeeper.auth import Authenticator
from timekeeper.errors import InvalidRequest, TimekeeperError, TooLarge
from timekeeper.ledger import Receipt
from timekeeper.metrics import Metrics, method_label
from timekeeper.reports import parse_report
from timekeeper.states import rfc3339

logger = logging.getLogger(__name__)

PATH: Final = "/api/v1/reports"
MAX_BODY_BYTES: Final = 64 * 1024
STATUS_LINES: Final = {
    200: "200 OK",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    404: "404 Not Found",
    405: "405 Method Not Allowed",
    409: "409 Conflict",
    411: "411 Length Required",
    413: "413 Request Entity Too Large",
    503: "503 Service Unavailable",
    500: "500 Internal Server Error",
}

WsgiApp = Callable[[dict[str, Any], Any], Iterable[bytes]]


def error_response(err: TimekeeperError) -> tuple[int, dict[str, str], dict[str, str]]:
    """(status, body, headers) for an error of the timekeeper's exception tree."""
    from timekeeper.api import STATUS_CODES

    status = next((code for kind, code in STATUS_CODES.items() if isinstance(err, kind)), 500)
    headers = {"WWW-Authenticate": 'Bearer realm="gpushare"'} if status == 401 else {}
    return status, {"error": err.code, "message": err.message}, headers


def receipt_json(receipt: Receipt) -> dict[str, Any]:
    return {
        "podUid": receipt.pod_uid,
        "sequence": receipt.sequence,
        "namespace": receipt.namespace,
        "pod": receipt.pod,
        "start": rfc3339(receipt.start),
        "end": rfc3339(receipt.end),
        "gpuSeconds": receipt.gpu_seconds,
        "memoryByteSeconds": receipt.memory_byte_seconds,
        "receivedAt": rfc3339(receipt.received_at),
    }


class DuplicateKey(ValueError):
    """A JSON object names the same key twice (`{"sequence": 1, "sequence": 2}`)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body = dict(pairs)
    if len(body) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return body


class ReportEndpoint:
    """WSGI middleware: answers `POST /api/v1/reports`, hands everything else to `app`."""

    def __init__(
        self, app: WsgiApp, *, auth: Authenticator, accounting: Accounting, metrics: Metrics
    ) -> None:
        self.app = app
        self.auth = auth
        self.accounting = accounting
        self.metrics = metrics
        self._latency = metrics.latency.labels(PATH, "POST")
        self._counters: dict[int, Any] = {}
        self._outcomes = {
            name: metrics.reports.labels(name)
            for name in ("stored", "resent", "rejected", "refused")
        }

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return self.app(environ, start_response)
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "")
        headers: dict[str, str] = {}
        if method != "POST":
            status = 405
            body = {"error": "method-not-allowed", "message": f"{PATH} takes POST (got {method})"}
            headers = {"Allow": "POST"}
        else:
            status, body, headers = self._answer(environ)
        payload = json.dumps(body).encode("utf-8") + b"\n"
        response_headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            *headers.items(),
        ]
        start_response(STATUS_LINES.get(status, f"{status} Error"), response_headers)
        if method == "POST":
            self._latency.observe(time.perf_counter() - started)
            counter = self._counters.get(status)
            if counter is None:
                counter = self._counters[status] = self.metrics.requests.labels(
                    PATH, method, str(status)
                )
            counter.inc()
        else:
            label = method_label(method)
            self.metrics.latency.labels(PATH, label).observe(time.perf_counter() - started)
            self.metrics.requests.labels(PATH, label, str(status)).inc()
        return [payload]

    def _answer(self, environ: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers: dict[str, str] = {}
        try:
            receipt, stored = self._handle(environ)
            status, body = 200, receipt_json(receipt)
            self._outcomes["stored" if stored else "resent"].inc()
        except TimekeeperError as err:
            status, body, headers = error_response(err)
            self._outcomes["refused" if status >= 500 else "rejected"].inc()
            log = logger.warning if status >= 500 else logger.info
            log("POST %s -> %d %s: %s", PATH, status, err.code, err.message)
        except Exception:
            logger.exception("POST %s failed", PATH)
            status, body = 500, {"error": "internal", "message": "internal error, see the logs"}
            self._outcomes["refused"].inc()
        return status, body, headers

    def _handle(self, environ: dict[str, Any]) -> tuple[Receipt, bool]:
        identity = self.auth.identify_reporter(environ.get("HTTP_AUTHORIZATION"))
        content_type = environ.get("CONTENT_TYPE", "")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY_BYTES:
            raise TooLarge(f"body: at most {MAX_BODY_BYTES} bytes (got {length} bytes)")
        raw = environ["wsgi.input"].read(length) if length > 0 else b""
        if (
            not environ.get("CONTENT_LENGTH")
            and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        ):
            # No length up front: read one byte past the limit to know whether it is passed.
            raw = environ["wsgi.input"].read(MAX_BODY_BYTES + 1)
            length = len(raw)
            if length > MAX_BODY_BYTES:
                raise TooLarge(f"body: at most {MAX_BODY_BYTES} bytes (got more, chunked)")
        body = None
        if content_type.split(";")[0].strip().lower() == "application/json":
            try:
                body = json.loads(raw, object_pairs_hook=_unique_keys)
            except DuplicateKey as err:
                raise InvalidRequest(
                    f"body: {err.key}: given twice; a report names each field once "
                    "(plain JSON would silently keep the last)"
                ) from err
            except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
                body = None
        if body is None:
            raise InvalidRequest(
                "body: must be a JSON object with Content-Type: application/json "
                f"(got {content_type or 'no content type'}, {length} bytes)"
            )
        return self.accounting.record(identity, parse_report(body))
