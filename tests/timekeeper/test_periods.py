"""Budget periods as UTC windows: case tables for the calendar's awkward days, and properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timekeeper.budgets import Budget, Period
from timekeeper.periods import (
    BUCKET_SECONDS,
    bucket_floor,
    calendar_window,
    local_midnight,
    period_window,
)


def budget(period: str, timezone: str = "UTC") -> Budget:
    kind, _, days = period.partition(":")
    parsed = Period("rolling", int(days.rstrip("d"))) if kind == "rolling" else Period(kind)  # type: ignore[arg-type]
    return Budget(parsed, timezone, 10.0, 80.0, "deprioritize")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "timezone", "at", "start", "end"),
    [
        pytest.param(
            "month",
            "UTC",
            "2026-11-21T05:49:00",
            "2026-11-01T00:00:00",
            "2026-12-01T00:00:00",
            id="month-utc",
        ),
        pytest.param(
            "month",
            "UTC",
            "2026-12-31T23:59:59",
            "2026-12-01T00:00:00",
            "2027-01-01T00:00:00",
            id="month-december-rolls-into-new-year",
        ),
        pytest.param(
            "month",
            "UTC",
            "2028-02-29T12:00:00",
            "2028-02-01T00:00:00",
            "2028-03-01T00:00:00",
            id="month-leap-february",
        ),
        pytest.param(
            "month",
            "UTC",
            "2027-02-28T23:59:59",
            "2027-02-01T00:00:00",
            "2027-03-01T00:00:00",
            id="month-common-february",
        ),
        pytest.param(
            "month",
            "Europe/Berlin",
            "2026-10-31T23:30:00",
            "2026-10-31T23:00:00",
            "2026-11-30T23:00:00",
            id="month-berlin-local-midnight-is-23h-utc",
        ),
        pytest.param(
            "month",
            "Europe/Berlin",
            "2026-03-15T00:00:00",
            "2026-02-28T23:00:00",
            "2026-03-31T22:00:00",
            id="month-berlin-spanning-spring-forward",
        ),
        pytest.param(
            "day",
            "UTC",
            "2026-11-21T00:00:00",
            "2026-11-21T00:00:00",
            "2026-11-22T00:00:00",
            id="day-at-exact-start",
        ),
        pytest.param(
            "day",
            "America/New_York",
            "2026-03-08T12:00:00",
            "2026-03-08T05:00:00",
            "2026-03-09T04:00:00",
            id="day-new-york-spring-forward-23h",
        ),
        pytest.param(
            "day",
            "America/New_York",
            "2026-11-01T12:00:00",
            "2026-11-01T04:00:00",
            "2026-11-02T05:00:00",
            id="day-new-york-fall-back-25h",
        ),
        pytest.param(
            "day",
            "Europe/Berlin",
            "2026-03-29T01:30:00",
            "2026-03-28T23:00:00",
            "2026-03-29T22:00:00",
            id="day-berlin-spring-forward-23h",
        ),
        pytest.param(
            "day",
            "Australia/Lord_Howe",
            "2026-10-04T06:00:00",
            "2026-10-03T13:30:00",
            "2026-10-04T13:00:00",
            id="day-lord-howe-half-hour-dst-23h30",
        ),
        pytest.param(
            "day",
            "Asia/Kathmandu",
            "2026-11-21T05:49:00",
            "2026-11-20T18:15:00",
            "2026-11-21T18:15:00",
            id="day-kathmandu-plus-0545",
        ),
        pytest.param(
            "day",
            "America/Santiago",
            "2026-09-06T12:00:00",
            "2026-09-06T04:00:00",
            "2026-09-07T03:00:00",
            id="day-santiago-midnight-skipped",
        ),
        pytest.param(
            "day",
            "America/Havana",
            "2026-11-01T12:00:00",
            "2026-11-01T04:00:00",
            "2026-11-02T05:00:00",
            id="day-havana-midnight-happens-twice",
        ),
        pytest.param(
            "week",
            "UTC",
            "2026-11-21T05:49:00",
            "2026-11-16T00:00:00",
            "2026-11-23T00:00:00",
            id="week-iso-monday",
        ),
        pytest.param(
            "week",
            "UTC",
            "2026-11-23T00:00:00",
            "2026-11-23T00:00:00",
            "2026-11-30T00:00:00",
            id="week-at-monday-midnight",
        ),
        pytest.param(
            "week",
            "UTC",
            "2026-12-31T12:00:00",
            "2026-12-28T00:00:00",
            "2027-01-04T00:00:00",
            id="week-across-new-year",
        ),
        pytest.param(
            "week",
            "America/New_York",
            "2026-03-09T03:00:00",
            "2026-03-02T05:00:00",
            "2026-03-09T04:00:00",
            id="week-new-york-utc-monday-is-local-sunday",
        ),
        pytest.param(
            "rolling:7d",
            "UTC",
            "2026-11-21T05:49:00",
            "2026-11-14T06:00:00",
            "2026-11-21T06:00:00",
            id="rolling-ends-at-next-bucket",
        ),
        pytest.param(
            "rolling:30d",
            "Asia/Kathmandu",
            "2026-11-21T06:00:00",
            "2026-10-22T06:15:00",
            "2026-11-21T06:15:00",
            id="rolling-on-a-boundary-includes-that-bucket",
        ),
    ],
)
def test_windows(period: str, timezone: str, at: str, start: str, end: str) -> None:
    assert period_window(budget(period, timezone), utc(at)) == (utc(start), utc(end))


def test_window_of_a_non_utc_instant_is_the_same() -> None:
    at = datetime(2026, 11, 21, 6, 49, tzinfo=ZoneInfo("Europe/Berlin"))
    assert period_window(budget("day", "UTC"), at) == (
        utc("2026-11-21T00:00:00"),
        utc("2026-11-22T00:00:00"),
    )


def test_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        period_window(budget("day"), datetime(2026, 11, 21))


def test_windows_are_utc() -> None:
    start, end = period_window(budget("month", "Asia/Kathmandu"), utc("2026-11-21T00:00:00"))
    assert start.tzinfo is UTC
    assert end.tzinfo is UTC


def test_local_midnight_in_a_gap_is_the_transition() -> None:
    # Santiago skips 00:00-01:00 on 2026-09-06: the day starts at 01:00 local (04:00 UTC).
    assert local_midnight(date(2026, 9, 6), ZoneInfo("America/Santiago")) == utc(
        "2026-09-06T04:00:00"
    )


def test_bucket_floor() -> None:
    assert bucket_floor(utc("2026-11-21T05:49:59.999")) == utc("2026-11-21T05:45:00")
    assert bucket_floor(utc("2026-11-21T05:45:00")) == utc("2026-11-21T05:45:00")


# Properties -----------------------------------------------------------------------------

ZONES = (
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "America/Santiago",
    "America/Havana",
    "Pacific/Chatham",
    "America/St_Johns",
    "Asia/Kolkata",
)
CALENDAR = ("day", "week", "month")

instants = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 12, 31), timezones=st.just(UTC)
)
# Instants near the transitions and month ends that the calendar makes awkward.
awkward_instants = st.builds(
    lambda day, month, year, minutes: (
        datetime(year, month, 1, tzinfo=UTC) + timedelta(days=day, minutes=minutes)
    ),
    st.sampled_from([-1, 0, 6, 7, 13, 27, 28]),
    st.integers(1, 12),
    st.sampled_from([1999, 2000, 2024, 2026, 2027, 2028, 2038, 2100]),
    st.integers(-26 * 60, 26 * 60),
)


def offset_changes(zone_name: str, first_year: int, last_year: int) -> list[datetime]:
    """The UTC instants (to the minute) at which `zone_name`'s offset changes."""
    zone = ZoneInfo(zone_name)
    changes = []
    day = datetime(first_year, 1, 1, tzinfo=UTC)
    while day.year <= last_year:
        following = day + timedelta(days=1)
        if day.astimezone(zone).utcoffset() != following.astimezone(zone).utcoffset():
            low, high = day, following
            while high - low > timedelta(minutes=1):
                middle = low + (high - low) / 2
                if middle.astimezone(zone).utcoffset() == low.astimezone(zone).utcoffset():
                    low = middle
                else:
                    high = middle
            changes.append(high.replace(second=0, microsecond=0))
        day = following
    return changes


TRANSITIONS = sorted({t for zone in ZONES for t in offset_changes(zone, 2024, 2027)})
# Instants within two days of a DST change somewhere, so that windows that hold one are common.
near_transitions = st.builds(
    lambda transition, seconds: transition + timedelta(seconds=seconds),
    st.sampled_from(TRANSITIONS),
    st.integers(-2 * 86400, 2 * 86400),
)
any_instant = st.one_of(instants, awkward_instants, near_transitions)


def test_the_zones_under_test_do_change_offsets() -> None:
    assert len(TRANSITIONS) >= 4 * 2 * 5  # New York, Berlin, Lord Howe, Santiago, Havana...


calendar_budgets = st.builds(budget, st.sampled_from(CALENDAR), st.sampled_from(ZONES))
rolling_budgets = st.builds(
    lambda days, zone: budget(f"rolling:{days}d", zone),
    st.integers(1, 366),
    st.sampled_from(ZONES),
)


def on_bucket(instant: datetime) -> bool:
    return instant.timestamp() % BUCKET_SECONDS == 0


@settings(max_examples=400)
@given(calendar_budgets, any_instant)
def testcalendar_window_contains_at_and_neighbours_tile_time(b: Budget, at: datetime) -> None:
    start, end = period_window(b, at)
    assert start <= at < end
    # The window just before starts where nothing is left between them, and so does the next.
    previous_start, previous_end = period_window(b, start - timedelta(microseconds=1))
    assert previous_end == start
    assert previous_start < start
    next_start, next_end = period_window(b, end)
    assert next_start == end
    assert next_end > end
    # Every instant of the window maps to the same window.
    assert period_window(b, start) == (start, end)
    assert period_window(b, end - timedelta(microseconds=1)) == (start, end)


@settings(max_examples=400)
@given(calendar_budgets, any_instant)
def testcalendar_window_starts_on_the_first_local_day(b: Budget, at: datetime) -> None:
    zone = ZoneInfo(b.timezone)
    start, end = period_window(b, at)
    first = start.astimezone(zone)
    assert first.hour == 0 or first.date() != (start - timedelta(seconds=1)).astimezone(zone).date()
    if b.period.kind == "week":
        assert first.weekday() == 0
    if b.period.kind == "month":
        assert first.day == 1
    hours = (end - start).total_seconds() / 3600
    expected = {"day": (1, 1), "week": (7, 7), "month": (28, 31)}[b.period.kind]
    # Local days are 24 h give or take a DST shift of at most an hour.
    assert expected[0] * 24 - 1 <= hours <= expected[1] * 24 + 1


@settings(max_examples=400)
@given(calendar_budgets, any_instant)
def test_calendar_boundaries_are_whole_buckets(b: Budget, at: datetime) -> None:
    start, end = period_window(b, at)
    assert on_bucket(start)
    assert on_bucket(end)


@settings(max_examples=300)
@given(rolling_budgets, any_instant)
def test_rolling_window_is_n_days_of_whole_buckets_holding_at(b: Budget, at: datetime) -> None:
    start, end = period_window(b, at)
    assert start < at < end or start == at - timedelta(days=b.period.rolling_days or 0)
    assert start <= at < end
    assert end - start == timedelta(days=b.period.rolling_days or 0)
    assert on_bucket(start)
    assert on_bucket(end)
    assert end - at <= timedelta(seconds=BUCKET_SECONDS)


@settings(max_examples=200)
@given(rolling_budgets, any_instant, st.integers(0, 10 * 86400))
def test_rolling_window_slides_forward_only(b: Budget, at: datetime, seconds: int) -> None:
    later = at + timedelta(seconds=seconds)
    start, end = period_window(b, at)
    later_start, later_end = period_window(b, later)
    assert later_start >= start
    assert later_end >= end


@settings(max_examples=200)
@given(st.sampled_from(ZONES), st.integers(1990, 2100))
def test_months_of_a_year_tile_the_year(zone: str, year: int) -> None:
    b = budget("month", zone)
    local = ZoneInfo(zone)
    at = local_midnight(date(year, 1, 1), local)
    year_end = local_midnight(date(year + 1, 1, 1), local)
    months = 0
    while at < year_end:
        start, end = period_window(b, at)
        assert start == at
        at = end
        months += 1
    assert at == year_end
    assert months == 12


@settings(max_examples=100)
@given(st.sampled_from(ZONES), st.integers(1990, 2100))
def test_february_has_29_days_in_leap_years(zone: str, year: int) -> None:
    b = budget("month", zone)
    local = ZoneInfo(zone)
    start, end = period_window(b, local_midnight(date(year, 2, 15), local))
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    assert end.astimezone(local).date() - start.astimezone(local).date() == timedelta(
        days=29 if leap else 28
    )


@settings(max_examples=300)
@given(calendar_budgets, st.lists(any_instant, min_size=1, max_size=5))
def test_remembered_windows_are_the_computed_ones(b: Budget, instants: list[datetime]) -> None:
    zone = ZoneInfo(b.timezone)
    for at in instants:
        for instant in (at, at + timedelta(hours=1), at - timedelta(days=1)):
            assert period_window(b, instant) == calendar_window(b.period.kind, zone, instant)
