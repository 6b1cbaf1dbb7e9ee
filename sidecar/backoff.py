"""Retry schedule for deliveries: exponential, capped, with jitter (pure logic).

The n-th consecutive failure waits a random time in [d/2, d], where
d = min(max, initial * 2**(n-1)). The random half spreads the retries of many sidecars that
lost the timekeeper at the same moment; the fixed half keeps a floor under the delay.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """The delay schedule; `delay_seconds` is pure given the random draw."""

    initial_seconds: float
    max_seconds: float

    def ceiling_seconds(self, failures: int) -> float:
        """Longest wait after `failures` consecutive failures (>= 1)."""
        exponent = min(max(failures, 1) - 1, 62)
        return min(self.max_seconds, self.initial_seconds * 2.0**exponent)

    def delay_seconds(self, failures: int, draw: float) -> float:
        """Wait after `failures` consecutive failures; `draw` is uniform in [0, 1)."""
        ceiling = self.ceiling_seconds(failures)
        return ceiling / 2 + ceiling / 2 * min(max(draw, 0.0), 1.0)
