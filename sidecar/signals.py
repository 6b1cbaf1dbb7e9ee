"""Stop signals: SIGTERM and SIGINT wake the loop through a pipe instead of interrupting it.

The handlers only count; `signal.set_wakeup_fd` writes a byte to a pipe that `wait` selects
on, so a signal that arrives just before the wait still ends it at once.
"""

from __future__ import annotations

import os
import select
import signal
from types import FrameType


class SignalWaiter:
    """Counts SIGTERM/SIGINT; `wait` sleeps until a timeout or the next signal."""

    def __init__(self) -> None:
        self._signals = 0
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)

    def install(self) -> None:
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1

    @property
    def signals(self) -> int:
        return self._signals

    def wait(self, seconds: float) -> None:
        readable, _, _ = select.select([self._read_fd], [], [], max(0.0, seconds))
        if readable:
            try:
                while os.read(self._read_fd, 512):
                    pass
            except BlockingIOError:
                pass
