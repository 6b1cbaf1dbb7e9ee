"""Which namespaces are throttled: their budget states, pulled from the timekeeper.

The node manager asks `GET /api/v1/namespaces/{ns}` for each namespace with a shared GPU
container on this node, every poll interval (and at once when a new namespace appears). A
namespace is throttled while its status says `state: exhausted` with `whenExhausted:
throttle`; its floor is the status' `throttleToPercent`. Pulling means either side may
restart: a timekeeper that does not answer leaves the last state it gave in force (logged),
and a restarted node manager asks again before it throttles anything.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_THROTTLE_PERCENT = 10.0
MAX_STATUS_BYTES = 64 * 1024

Fetch = Callable[[str], Mapping[str, Any]]


class BudgetStateError(Exception):
    """The timekeeper could not be asked, or answered something that is not a status."""


def throttle_floor(status: Mapping[str, Any]) -> float | None:
    """The percent of its share a namespace's containers keep, or None when not throttled."""
    if status.get("state") != "exhausted" or status.get("whenExhausted") != "throttle":
        return None
    value = status.get("throttleToPercent", DEFAULT_THROTTLE_PERCENT)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
        raise BudgetStateError(f"throttleToPercent={value!r} is not a percent in (0, 100]")
    return float(value)


class HttpFetch:
    """GET a namespace status from the timekeeper (bounded size and time)."""

    def __init__(
        self, url: str, *, token_file: Path | None = None, timeout_seconds: float = 5.0
    ) -> None:
        self._base = url.rstrip("/")
        self._token_file = token_file
        self._timeout = timeout_seconds

    def __call__(self, namespace: str) -> Mapping[str, Any]:
        url = f"{self._base}/api/v1/namespaces/{urllib.parse.quote(namespace, safe='')}"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self._token_file is not None:
            try:
                token = self._token_file.read_text().strip()  # projected tokens rotate
            except OSError as err:
                raise BudgetStateError(f"cannot read {self._token_file}: {err}") from err
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                body = response.read(MAX_STATUS_BYTES + 1)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise BudgetStateError(f"GET {url}: {err}") from err
        if len(body) > MAX_STATUS_BYTES:
            raise BudgetStateError(f"GET {url}: answer larger than {MAX_STATUS_BYTES} bytes")
        try:
            status = json.loads(body)
        except ValueError as err:
            raise BudgetStateError(f"GET {url}: not JSON ({err})") from err
        if not isinstance(status, dict):
            raise BudgetStateError(f"GET {url}: not a JSON object")
        return status


class BudgetStates:
    """The throttle floors of the namespaces of interest, pulled in the background."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        poll_seconds: float = 10.0,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._fetch = fetch
        self._poll = poll_seconds
        self._on_change = on_change
        self._lock = threading.Lock()
        self._namespaces: set[str] = set()
        self._floors: dict[str, float | None] = {}
        self._failing: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def floor(self, namespace: str) -> float | None:
        """The namespace's throttle floor (percent), None when it is not throttled (or its
        state was never learnt)."""
        with self._lock:
            return self._floors.get(namespace)

    def throttled(self) -> dict[str, float]:
        with self._lock:
            return {name: floor for name, floor in self._floors.items() if floor is not None}

    def watch(self, namespaces: Iterable[str]) -> None:
        """The namespaces to ask for from now on; a new one is asked at once."""
        wanted = set(namespaces)
        with self._lock:
            new = wanted - self._namespaces
            self._namespaces = wanted
            for gone in set(self._floors) - wanted:
                del self._floors[gone]
        if new:
            self._wake.set()

    def poll_once(self) -> bool:
        """Ask for every namespace of interest; True when a floor changed."""
        with self._lock:
            namespaces = sorted(self._namespaces)
        changed = False
        for namespace in namespaces:
            try:
                floor = throttle_floor(self._fetch(namespace))
            except BudgetStateError as err:
                if namespace not in self._failing:
                    log.warning(
                        "budget state of namespace %s unknown, the last one stays in force: %s",
                        namespace,
                        err,
                    )
                    self._failing.add(namespace)
                continue
            self._failing.discard(namespace)
            with self._lock:
                if namespace not in self._namespaces:
                    continue
                previous = self._floors.get(namespace)
                self._floors[namespace] = floor
            if previous != floor:
                changed = True
                if floor is None:
                    log.info("namespace %s no longer throttled", namespace)
                else:
                    log.info("namespace %s throttled to %g%% of its shares", namespace, floor)
        if changed:
            self._on_change()
        return changed

    def start(self) -> BudgetStates:
        self._thread = threading.Thread(target=self._run, name="budget-states", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._wake.wait(self._poll)
            self._wake.clear()
