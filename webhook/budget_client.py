"""Timekeeper HTTP client with a per-namespace cache (adapter).

Admission must never wait long on the timekeeper, and must not slow down while it is down:

- a fresh entry (younger than the TTL) is answered from memory;
- an older entry still within the stale window is answered at once, and refreshed in the
  background (one refresh per namespace at a time);
- a namespace without a usable entry waits for one lookup, bounded by the timeout as a whole
  (connect, send, read), not per socket operation, and cut short as soon as any lookup
  finds the timekeeper unreachable;
- after a failed lookup, further lookups skip the timekeeper for `retry_seconds` (the
  namespace's own failure, or a transport failure for every namespace), so a dead
  timekeeper costs one timeout per retry window, not one per admission.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from webhook.admission import BudgetLookup
from webhook.budget import BudgetStatus, StatusFormatError, parse_status
from webhook.errors import TimekeeperUnavailable
from webhook.metrics import Metrics

log = logging.getLogger(__name__)

Fetch = Callable[[str], BudgetStatus]


@dataclass(frozen=True)
class _Entry:
    status: BudgetStatus
    fetched_at: float


class _TransportError(TimekeeperUnavailable):
    """The timekeeper could not be reached or answered with a server error."""


def http_fetcher(base_url: str, timeout_seconds: float, token_file: str = "") -> Fetch:
    """GET {base_url}/api/v1/namespaces/{ns} and decode the status.

    With `token_file`, its content is sent as a bearer token, read for every request: a
    projected ServiceAccount token is rotated by the kubelet, and lookups are rare.
    """
    parts = urlsplit(base_url.rstrip("/"))
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    host = parts.hostname or ""
    port = parts.port
    prefix = parts.path

    def fetch(namespace: str) -> BudgetStatus:
        headers = {"Accept": "application/json"}
        if token_file:
            try:
                headers["Authorization"] = f"Bearer {Path(token_file).read_text().strip()}"
            except OSError as err:
                raise TimekeeperUnavailable(f"cannot read the token file: {err}") from err
        connection = connection_class(host, port, timeout=timeout_seconds)
        try:
            connection.request(
                "GET", f"{prefix}/api/v1/namespaces/{quote(namespace, safe='')}", headers=headers
            )
            response = connection.getresponse()
            body = response.read(1024 * 1024)
        except (OSError, http.client.HTTPException) as err:
            raise _TransportError(f"timekeeper unreachable: {err or type(err).__name__}") from err
        finally:
            connection.close()
        if response.status >= 500:
            raise _TransportError(f"timekeeper answered HTTP {response.status}")
        if response.status != 200:
            raise TimekeeperUnavailable(
                f'timekeeper answered HTTP {response.status} for namespace "{namespace}"'
            )
        try:
            return parse_status(namespace, json.loads(body))
        except (ValueError, StatusFormatError) as err:
            raise TimekeeperUnavailable(f"timekeeper sent a bad namespace status: {err}") from err

    return fetch


class TimekeeperBudgets:
    """BudgetSource backed by the timekeeper, cached per namespace."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        timeout_seconds: float,
        ttl_seconds: float,
        stale_seconds: float,
        retry_seconds: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_workers: int = 4,
    ) -> None:
        self._fetch = fetch
        self._timeout_seconds = timeout_seconds
        self._ttl_seconds = ttl_seconds
        self._stale_seconds = stale_seconds
        self._retry_seconds = retry_seconds
        self._metrics = metrics or Metrics()
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._outages = 0
        self._entries: dict[str, _Entry] = {}
        self._failed_at: dict[str, tuple[float, str]] = {}
        self._down_since: tuple[float, str] | None = None
        self._inflight: dict[str, Future[BudgetStatus]] = {}
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="timekeeper")

    def lookup(self, namespace: str) -> BudgetLookup:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(namespace)
            age = None if entry is None else now - entry.fetched_at
            if entry is not None and age is not None and age < self._ttl_seconds:
                self._metrics.budget_cache.labels("fresh").inc()
                return BudgetLookup(entry.status)
            skip_reason = self._skip_reason(namespace, now)
            usable_seconds = self._ttl_seconds + self._stale_seconds
            if entry is not None and age is not None and age < usable_seconds:
                self._metrics.budget_cache.labels("stale").inc()
                if skip_reason is None:
                    self._start_locked(namespace)
                # Flagged stale only while the timekeeper is failing; an ordinary background
                # revalidation is not worth a warning to the user.
                return BudgetLookup(entry.status, stale=skip_reason is not None)
            if skip_reason is not None:
                self._metrics.budget_cache.labels("skipped").inc()
                raise TimekeeperUnavailable(
                    f"{skip_reason} (asked again after {self._retry_seconds:g}s)"
                )
            self._metrics.budget_cache.labels("miss").inc()
            future = self._start_locked(namespace)
            self._wait_locked(future)
        return BudgetLookup(future.result())

    def _wait_locked(self, future: Future[BudgetStatus]) -> None:
        """Wait for the lookup, at most the timeout, and no longer than the timekeeper is
        known to be up: when another lookup finds it unreachable meanwhile, stop waiting."""
        deadline = time.monotonic() + self._timeout_seconds
        outages = self._outages
        while not future.done():
            if self._outages != outages and self._down_since is not None:
                raise TimekeeperUnavailable(self._down_since[1])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._metrics.timekeeper_errors.labels("timeout").inc()
                raise TimekeeperUnavailable(
                    f"timekeeper did not answer within {self._timeout_seconds:g}s"
                )
            self._changed.wait(remaining)

    def _skip_reason(self, namespace: str, now: float) -> str | None:
        for failure in (self._down_since, self._failed_at.get(namespace)):
            if failure is not None and now - failure[0] < self._retry_seconds:
                return failure[1]
        return None

    def _start_locked(self, namespace: str) -> Future[BudgetStatus]:
        future = self._inflight.get(namespace)
        if future is None:
            future = self._pool.submit(self._refresh, namespace)
            self._inflight[namespace] = future
        return future

    def _refresh(self, namespace: str) -> BudgetStatus:
        with self._lock:
            # Queued behind lookups that found the timekeeper down: do not pile on.
            skip_reason = self._skip_reason(namespace, self._clock())
            if skip_reason is not None:
                self._inflight.pop(namespace, None)
                self._changed.notify_all()
                raise TimekeeperUnavailable(skip_reason)
        try:
            status = self._fetch(namespace)
        except TimekeeperUnavailable as err:
            failed_at = self._clock()
            transport = isinstance(err, _TransportError)
            self._metrics.timekeeper_errors.labels("unreachable" if transport else "answer").inc()
            log.warning("budget lookup for namespace %s failed: %s", namespace, err)
            with self._lock:
                self._inflight.pop(namespace, None)
                self._failed_at[namespace] = (failed_at, str(err))
                if transport:
                    self._down_since = (failed_at, str(err))
                    self._outages += 1
                self._changed.notify_all()
            raise
        except Exception as err:
            with self._lock:
                self._inflight.pop(namespace, None)
                self._changed.notify_all()
            log.exception("budget lookup for namespace %s crashed", namespace)
            raise TimekeeperUnavailable(f"budget lookup failed: {err}") from err
        with self._lock:
            self._inflight.pop(namespace, None)
            self._entries[namespace] = _Entry(status, self._clock())
            self._failed_at.pop(namespace, None)
            self._down_since = None
            self._changed.notify_all()
        return status


def timekeeper_budgets(
    base_url: str,
    *,
    timeout_seconds: float,
    ttl_seconds: float,
    stale_seconds: float,
    retry_seconds: float,
    token_file: str = "",
    metrics: Metrics | None = None,
) -> TimekeeperBudgets:
    """The production BudgetSource: HTTP to the timekeeper, cached."""
    return TimekeeperBudgets(
        http_fetcher(base_url, timeout_seconds, token_file),
        timeout_seconds=timeout_seconds,
        ttl_seconds=ttl_seconds,
        stale_seconds=stale_seconds,
        retry_seconds=retry_seconds,
        metrics=metrics,
    )
