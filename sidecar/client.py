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
RETRYABLE_ERRORS: Final = frozenset({"too-early"})
"""Error codes of 4xx answers that time cures: `too-early` is a report ending past the
timekeeper's clock-skew allowance (this node's clock is ahead); it is accepted once the
timekeeper's clock catches up, so giving it up would lose the pod's time."""
_MAX_REASON_CHARS: Final = 300


@dataclass(frozen=True)
class Outcome:
    """How a delivery attempt ended."""

    kind: Literal["delivered", "retry", "unauthorized", "rejected"]
    """delivered (2xx with the receipt), retry (5xx, 408/425/429, a `too-early` 400, no
    answer, a 2xx without the receipt), unauthorized (401/403: retried for a grace period,
    since a rotated token or fixed keys cure it), rejected (other answers)."""
    status: int | None
    reason: str


def _error_code(body: bytes) -> str | None:
    try:
        error = json.loads(body)
    except ValueError:
        return None
    code = error.get("error") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


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


def _is_receipt(answer: bytes, report: Report) -> bool:
    """The timekeeper answers a stored report with its receipt: the same podUid and sequence."""
    try:
        receipt = json.loads(answer)
    except ValueError:
        return False
    return (
        isinstance(receipt, dict)
        and receipt.get("podUid") == report["podUid"]
        and receipt.get("sequence") == report["sequence"]
    )


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
            if _is_receipt(answer, report):
                return Outcome("delivered", status, f"HTTP {status}")
            # A proxy or another service that answers 2xx to anything must not make the
            # sidecar drop intervals the timekeeper never stored: keep it, retry.
            return Outcome(
                "retry",
                status,
                f"HTTP {status} without the timekeeper's receipt for sequence "
                f"{report['sequence']} (is GPUSHARE_TIMEKEEPER_URL the timekeeper?)",
            )
        reason = _reason(status, answer)
        if status == 401:
            self._tokens.invalidate()
        if status >= 500 or status in RETRYABLE_STATUSES or _error_code(answer) in RETRYABLE_ERRORS:
            return Outcome("retry", status, reason)
        if status in (401, 403):
            return Outcome("unauthorized", status, reason)
        return Outcome("rejected", status, reason)
