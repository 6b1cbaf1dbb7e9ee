"""Budget periods as UTC time windows: calendar days, ISO weeks and months in a time zone, or a
rolling window of the last N days.

Pure logic (stdlib only). Calendar periods start at local midnight in the budget's time zone,
so a "day" is 23 or 25 hours long across a DST change. The ledger keeps running totals in
15-minute UTC buckets (`BUCKET_SECONDS`); every UTC offset in use today is a whole number of
15 minutes, so every calendar window in any zone is made of whole buckets, and rolling windows
are aligned to buckets by construction.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from timekeeper.budgets import Budget, Period

BUCKET_SECONDS: Final = 900
"""Width of the ledger's running-total buckets, aligned to the Unix epoch."""

_BUCKET: Final = timedelta(seconds=BUCKET_SECONDS)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def period_window(budget: Budget, at: datetime) -> tuple[datetime, datetime]:
    """The period containing the instant `at`, as aware UTC datetimes `[start, end)`.

    day / week (ISO, from Monday) / month: from local midnight at the period's first day to
    local midnight at the next period's first day, in `budget.timezone`.
    rolling:<N>d: the N days ending at the next bucket boundary after `at`; `end` is the
    moment the window next slides (the oldest bucket drops out, usage starts to refill).
    """
    return window(budget.period, budget.timezone, at)


def window(period: Period, timezone: str, at: datetime) -> tuple[datetime, datetime]:
    """`period_window` for a bare period and time zone."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"`at` must be timezone-aware (got {at.isoformat()})")
    at = at.astimezone(UTC)
    if period.kind == "rolling":
        if period.rolling_days is None:
            raise ValueError("a rolling period needs rolling_days")
        end = bucket_floor(at) + _BUCKET
        return end - timedelta(days=period.rolling_days), end

    key = (period.kind, timezone)
    cached = _last_window.get(key)
    if cached is not None and cached[0] <= at < cached[1]:
        return cached
    found = calendar_window(period.kind, _zone(timezone), at)
    if len(_last_window) >= _LAST_WINDOW_MAX:
        _last_window.clear()
    _last_window[key] = found
    return found


# The calendar window last found per (kind, zone): nearly every call asks about "now", so one
# entry each turns a time-zone computation into two comparisons. Reads and writes of a dict
# entry are atomic, so threads need no lock; a stale entry is only a cache miss.
_last_window: dict[tuple[str, str], tuple[datetime, datetime]] = {}
_LAST_WINDOW_MAX: Final = 1024


def calendar_window(kind: str, zone: ZoneInfo, at: datetime) -> tuple[datetime, datetime]:
    """The day, week or month in `zone` holding the UTC instant `at`, computed afresh."""
    first = _first_day(kind, at.astimezone(zone).date())
    start = local_midnight(first, zone)
    # Where local time runs backwards over midnight, the local date of `at` can name a period
    # that has not begun yet, or one that is already over; step to the one holding `at`.
    if start > at:
        first = _first_day(kind, first - timedelta(days=1))
        start = local_midnight(first, zone)
    following = _next_first_day(kind, first)
    end = local_midnight(following, zone)
    while end <= at:
        first, start = following, end
        following = _next_first_day(kind, first)
        end = local_midnight(following, zone)
    return start, end


def bucket_floor(at: datetime) -> datetime:
    """The start of the 15-minute UTC bucket holding `at`."""
    seconds = (at - _EPOCH) // timedelta(seconds=1)
    return _EPOCH + timedelta(seconds=seconds - seconds % BUCKET_SECONDS)


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) whose local date in `zone` is `day`.

    Usually 00:00 local. Where the clocks skip midnight (a DST gap at 00:00), the day starts
    at the transition; where midnight happens twice, at its first occurrence.
    """
    wall = datetime.combine(day, time(0))
    earlier = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    later = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    low, high = min(earlier, later), max(earlier, later)
    if _local_wall(low, zone) >= wall:
        return low
    # Midnight falls in a gap: the first instant at or after it in local time lies between
    # the two readings. Offsets change on whole seconds, so bisect on seconds.
    low_seconds, high_seconds = 0, int((high - low).total_seconds())
    while low_seconds < high_seconds:
        middle = (low_seconds + high_seconds) // 2
        if _local_wall(low + timedelta(seconds=middle), zone) >= wall:
            high_seconds = middle
        else:
            low_seconds = middle + 1
    return low + timedelta(seconds=low_seconds)


def _local_wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None, fold=0)


def _first_day(kind: str, day: date) -> date:
    if kind == "day":
        return day
    if kind == "week":
        return day - timedelta(days=day.weekday())
    if kind == "month":
        return day.replace(day=1)
    raise ValueError(f"unknown period kind {kind!r}")


def _next_first_day(kind: str, first: date) -> date:
    if kind == "day":
        return first + timedelta(days=1)
    if kind == "week":
        return first + timedelta(days=7)
    if first.month == 12:
        return date(first.year + 1, 1, 1)
    return date(first.year, first.month + 1, 1)


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)
