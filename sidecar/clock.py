"""The system clocks: wall-clock UTC for timestamps, monotonic for durations."""

from __future__ import annotations

import time
from datetime import datetime

from sidecar.intervals import from_epoch


class SystemClock:
    def wall(self) -> datetime:
        return from_epoch(time.time())

    def monotonic(self) -> float:
        return time.monotonic()
