"""Stop signals: SIGTERM and SIGINT wake the loop through a pipe instead of interrupting it.

The handlers only count; `signal.set_wakeup_fd` writes a byte to a pipe that `wait` selects
on, so a signal that arrives just before the wait still ends it at once.

A request to the timekeeper is the one place that blocks for long (up to the HTTP timeout).
Inside `request()`, a stop signal arms a timer for the end of the stop deadline, counted
from the first signal; when it fires while the request still waits, the request ends with
`Interrupted` (its interval stays spooled). So a stop never overruns its deadline by a
request's timeout.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Interrupted(Exception):
    """The stop deadline passed while a request was waiting for the timekeeper."""


class SignalWaiter:
    """Counts SIGTERM/SIGINT; `wait` sleeps until a timeout or the next signal."""

    def __init__(self) -> None:
        self._signals = 0
        self._stopped_at: float | None = None
        self._stop_deadline_seconds: float | None = None
        self._in_request = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def install(self) -> None:
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGALRM, self._on_alarm)

    def set_stop_deadline(self, seconds: float) -> None:
        """How long after the first stop signal a request may still wait."""
        self._stop_deadline_seconds = seconds

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        if self._in_request:
            self._arm()

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self._in_request:
            raise Interrupted("the stop deadline passed before the timekeeper answered")

    def _arm(self) -> None:
        if self._stopped_at is None or self._stop_deadline_seconds is None:
            return
        remaining = self._stopped_at + self._stop_deadline_seconds - time.monotonic()
        if self._signals > 1 or remaining <= 0:
            raise Interrupted("stopped before the timekeeper answered")
        signal.setitimer(signal.ITIMER_REAL, remaining)

    @property
    def signals(self) -> int:
        return self._signals

    def seconds_since_stop(self) -> float:
        """Seconds since the first stop signal (0 before one)."""
        return 0.0 if self._stopped_at is None else time.monotonic() - self._stopped_at

    @contextmanager
    def request(self) -> Iterator[None]:
        """A blocking request, ended with `Interrupted` at the stop deadline (see module)."""
        self._in_request = True
        try:
            self._arm()
            yield
        finally:
            self._in_request = False
            signal.setitimer(signal.ITIMER_REAL, 0)

    def wait(self, seconds: float) -> None:
        readable, _, _ = select.select([self._read_fd], [], [], max(0.0, seconds))
        if readable:
            try:
                while os.read(self._read_fd, 512):
                    pass
            except BlockingIOError:
                pass
