"""HTTP adapter: sends one report to the timekeeper and classifies the answer.

Standard library only (`http.client`): the sidecar runs in every GPU pod and stays small.
One connection per report; at one report per period there is nothing to gain from keeping
connections open, and nothing to go stale.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import urlsplit

from sidecar.reports import Report
from sidecar.tokens import TokenSource

if TYPE_CHECKING:
    import ssl

REPORTS_PATH: Final = "/api/v1/reports"
RETRYABLE_STATUSES: Final = frozenset({408, 425, 429})
_MAX_REASON_CHARS: Final = 300


@dataclass(frozen=True)
class Outcome:
    """How a delivery attempt ended."""

    kind: Literal["delivered", "retry", "rejected"]
    """delivered (2xx), retry (5xx, 408/425/429, no answer), rejected (other answers)."""
    status: int | None
    reason: str


def _reason(status: int, body: bytes) -> str:
    try:
        error = json.loads(body)
        if isinstance(error, dict) and "message" in error:
            text = f"{error.get('error', '')}: {error['message']}".strip(": ")
        else:
            text = body.decode("utf-8", errors="replace")
    except ValueError:
        text = body.decode("utf-8", errors="replace")
    text = " ".join(text.split())[:_MAX_REASON_CHARS]
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


class TimekeeperClient:
    """POSTs reports to `{base_url}/api/v1/reports` with the current bearer token."""

    def __init__(self, base_url: str, *, tokens: TokenSource, ca_file: str = "") -> None:
        parts = urlsplit(base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = parts.path.rstrip("/") + REPORTS_PATH
        self._tokens = tokens
        self._ca_file = ca_file
        self._ssl_context: ssl.SSLContext | None = None

    def _connection(self, timeout_seconds: float) -> http.client.HTTPConnection:
        if not self._https:
            return http.client.HTTPConnection(self._host, self._port, timeout=timeout_seconds)
        if self._ssl_context is None:
            import ssl  # only an https timekeeper pays for it

            self._ssl_context = ssl.create_default_context(cafile=self._ca_file or None)
        return http.client.HTTPSConnection(
            self._host,
            self._port,
            timeout=timeout_seconds,
            context=self._ssl_context,
        )

    def send(self, report: Report, *, timeout_seconds: float) -> Outcome:
        body = json.dumps(report, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Authorization": f"Bearer {self._tokens.token()}",
            "User-Agent": "gpushare-sidecar",
        }
        try:
            connection = self._connection(timeout_seconds)
        except OSError as err:  # ssl.SSLError: a CA bundle that stopped loading
            return Outcome("retry", None, f"no connection: {type(err).__name__}: {err}")
        try:
            connection.request("POST", self._path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read(64 * 1024)
            status = response.status
        except (OSError, http.client.HTTPException) as err:
            return Outcome("retry", None, f"no answer: {type(err).__name__}: {err}")
        except ValueError:
            # http.client refuses a header value with a line break or beyond Latin-1: a token
            # file caught mid-write or damaged. Not the interval's fault: read it again, retry.
            self._tokens.invalidate()
            return Outcome(
                "retry",
                None,
                "the bearer token cannot be sent in a header (a line break or "
                "a character beyond Latin-1); reading the token again",
            )
        finally:
            connection.close()
        if 200 <= status < 300:
            return Outcome("delivered", status, f"HTTP {status}")
        reason = _reason(status, answer)
        if status == 401:
            self._tokens.invalidate()
        if status >= 500 or status in RETRYABLE_STATUSES:
            return Outcome("retry", status, reason)
        return Outcome("rejected", status, reason)
