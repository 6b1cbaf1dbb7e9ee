"""Usage intervals and the clock rules that cut them (pure logic).

Timestamps are wall-clock UTC (the timekeeper charges calendar periods), durations come from
the monotonic clock. While the two agree within `CLOCK_STEP_TOLERANCE_SECONDS`, an interval
ends at the wall-clock time and the next one starts there, so intervals are contiguous.

When the wall clock was stepped (NTP, a repaired RTC):
- forward: the closing interval keeps its monotonic length and the next one starts at the
  new wall-clock time; the timeline shows a gap of the step's size, no second is charged
  twice and none is lost;
- backward: intervals of a pod must not overlap and must not end in the future, so the
  closing interval ends at the (earlier) wall-clock time if that is still after its start,
  and otherwise stays open until the wall clock passes its start. At most the step's size
  goes uncharged; nothing is charged twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

CLOCK_STEP_TOLERANCE_SECONDS: Final = 2.0


@dataclass(frozen=True)
class Boundary:
    """Where a closing interval ends and the next one starts."""

    end: datetime
    next_start: datetime
    clock_step_seconds: float | None
    """How far the wall clock moved beyond the monotonic clock, when it did (else None)."""


def close_at(
    open_start: datetime,
    *,
    wall_now: datetime,
    elapsed_seconds: float,
    tolerance_seconds: float = CLOCK_STEP_TOLERANCE_SECONDS,
) -> Boundary:
    """Cut the open interval that began at `open_start`, `elapsed_seconds` (monotonic) ago.

    `end <= open_start` means there is nothing to close yet (the clock went back).
    """
    expected_end = open_start + timedelta(seconds=max(0.0, elapsed_seconds))
    step = (wall_now - expected_end).total_seconds()
    if abs(step) <= tolerance_seconds:
        end = max(wall_now, open_start)
        return Boundary(end=end, next_start=end, clock_step_seconds=None)
    if step > 0:
        return Boundary(end=expected_end, next_start=wall_now, clock_step_seconds=step)
    end = max(wall_now, open_start)
    return Boundary(end=end, next_start=end, clock_step_seconds=step)


@dataclass(frozen=True)
class Resume:
    """Where the first interval of a (re)started sidecar begins, and why."""

    start: datetime
    continued: bool
    """True when it continues the interval a previous run of this sidecar left open."""
    gap_seconds: float
    """Time between the previous run's open start and now (0 on a first start)."""


def resume_from(
    saved_open_start: datetime | None, *, wall_now: datetime, window_seconds: float
) -> Resume:
    """A restart inside the pod continues from the interval the previous run left open.

    The pod held its GPU while the sidecar was down (only the sidecar restarted), so that
    time is charged. A saved start older than the window (e.g. the node was down) is not
    trusted: the first interval then starts now. A saved start in the future means the clock
    went back; it is kept, so that no interval overlaps an earlier one, and nothing is
    charged until the wall clock passes it.
    """
    if saved_open_start is None:
        return Resume(start=wall_now, continued=False, gap_seconds=0.0)
    gap = (wall_now - saved_open_start).total_seconds()
    if gap <= window_seconds:
        return Resume(start=saved_open_start, continued=True, gap_seconds=max(0.0, gap))
    return Resume(start=wall_now, continued=False, gap_seconds=gap)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a `Z`, e.g. 2026-11-21T06:00:00.000000Z."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """The inverse of `format_time` (any RFC 3339 offset is accepted); ValueError if bad."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC offset")
    return moment.astimezone(UTC)


def from_epoch(seconds: float) -> datetime:
    """A UTC datetime from `time.time()` seconds."""
    return datetime.fromtimestamp(seconds, tz=UTC)
