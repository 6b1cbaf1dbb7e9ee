"""Waiting for something in a test: poll with a deadline, never sleep a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_SECONDS = 0.01


def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float = 10.0,
    what: str = "",
    ignoring: tuple[type[BaseException], ...] = (),
) -> None:
    """Poll `condition` until it is true; fail the test after `timeout` seconds.

    Exceptions of the `ignoring` types count as "not yet" (a server still starting).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except ignoring:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(POLL_SECONDS)
