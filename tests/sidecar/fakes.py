"""Fakes of the agent's collaborators, implementing the same interfaces as the real ones."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sidecar.client import Outcome
from sidecar.reports import Report
from sidecar.usage import UsageSample


class FakeClock:
    """Wall and monotonic time that only move when told to."""

    def __init__(self, wall: datetime) -> None:
        self._wall = wall
        self._mono = 1000.0

    def wall(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += timedelta(seconds=seconds)


class FakeWaiter:
    """Waiting advances the fake clock; a stop signal arrives at a chosen monotonic time."""

    def __init__(self, clock: FakeClock, *, stop_at: float, hard_stop_at: float = 1e18) -> None:
        self.clock = clock
        self.stop_at = stop_at
        self.hard_stop_at = hard_stop_at

    @property
    def signals(self) -> int:
        now = self.clock.monotonic()
        return (now >= self.stop_at) + (now >= self.hard_stop_at)

    def wait(self, seconds: float) -> None:
        now = self.clock.monotonic()
        wake = min(now + seconds, *(t for t in (self.stop_at, self.hard_stop_at) if t > now))
        self.clock.advance(max(wake - now, 0.001))

    def seconds_since_stop(self) -> float:
        return max(0.0, self.clock.monotonic() - self.stop_at)

    def request(self) -> AbstractContextManager[None]:
        return nullcontext()


@dataclass
class FakeSender:
    """Answers by the monotonic time of the attempt; records every attempt."""

    clock: FakeClock
    answer: Callable[[float, Report], Outcome] = lambda now, report: Outcome(
        "delivered", 201, "HTTP 201"
    )
    seconds_per_request: float = 0.0
    attempts: list[tuple[float, int, str]] = field(default_factory=list)
    delivered: list[Report] = field(default_factory=list)

    def send(self, report: Report, *, timeout_seconds: float) -> Outcome:
        now = self.clock.monotonic()
        self.clock.advance(min(self.seconds_per_request, timeout_seconds))
        outcome = self.answer(now, report)
        self.attempts.append((now, report["sequence"], outcome.kind))
        if outcome.kind == "delivered":
            self.delivered.append(report)
        return outcome


@dataclass
class FakeReader:
    """A `UsageReader` that returns scripted samples in turn (then repeats the last)."""

    samples: list[UsageSample | None]
    closed: bool = False
    calls: int = 0

    def sample(self) -> UsageSample | None:
        sample = self.samples[min(self.calls, len(self.samples) - 1)]
        self.calls += 1
        return sample

    def close(self) -> None:
        self.closed = True
