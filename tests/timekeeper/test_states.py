"""Budget states and namespace status: case tables and the state machine's properties."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpushare.annotations import BUDGET_STATES
from timekeeper.budgets import Budget, Period
from timekeeper.periods import period_window
from timekeeper.states import (
    EXHAUSTED,
    IN_BUDGET,
    UNLIMITED,
    WARNING,
    BudgetStatus,
    budget_state,
    budget_status,
    refill_time,
    status_to_json,
)

MONTH = Period("month")


def budget(
    gpu_hours: float | None,
    warn: float = 80.0,
    period: Period = MONTH,
    when_exhausted: str = "deprioritize",
) -> Budget:
    return Budget(period, "UTC", gpu_hours, warn, when_exhausted)  # type: ignore[arg-type]


def test_state_names_are_the_shared_contract() -> None:
    assert (IN_BUDGET, WARNING, EXHAUSTED, UNLIMITED) == BUDGET_STATES


@pytest.mark.parametrize(
    ("gpu_hours", "warn", "used", "state"),
    [
        pytest.param(100.0, 80.0, 0.0, "in-budget", id="nothing-used"),
        pytest.param(100.0, 80.0, 79.999, "in-budget", id="just-below-warning"),
        pytest.param(100.0, 80.0, 80.0, "warning", id="warning-at-threshold"),
        pytest.param(100.0, 80.0, 99.999, "warning", id="just-below-budget"),
        pytest.param(100.0, 80.0, 100.0, "exhausted", id="exhausted-at-budget"),
        pytest.param(100.0, 80.0, 250.0, "exhausted", id="over-budget"),
        pytest.param(100.0, 100.0, 99.999, "in-budget", id="warn-100-never-warns"),
        pytest.param(100.0, 100.0, 100.0, "exhausted", id="warn-100-exhausts"),
        pytest.param(10.0, 0.5, 0.05, "warning", id="tiny-warning-threshold"),
        pytest.param(0.0, 80.0, 0.0, "exhausted", id="zero-budget-exhausted-from-start"),
        pytest.param(None, 80.0, 0.0, "unlimited", id="unlimited-nothing-used"),
        pytest.param(None, 80.0, 1e9, "unlimited", id="unlimited-lots-used"),
    ],
)
def test_budget_state(gpu_hours: float | None, warn: float, used: float, state: str) -> None:
    assert budget_state(budget(gpu_hours, warn), used) == state


@pytest.mark.parametrize(
    "used",
    [
        pytest.param(-0.1, id="negative"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="infinite"),
    ],
)
def test_used_hours_must_be_finite_and_not_negative(used: float) -> None:
    with pytest.raises(ValueError, match="used GPU-hours must be a finite number >= 0"):
        budget_state(budget(10.0), used)


AT = datetime(2026, 11, 11, 0, 0, tzinfo=UTC)  # 10 days into a 30-day month


@pytest.mark.parametrize(
    ("namespace", "b", "used", "at", "expected"),
    [
        pytest.param(
            "team-a",
            budget(500.0),
            100.0,
            AT,
            {
                "namespace": "team-a",
                "state": "in-budget",
                "budgetGpuHours": 500.0,
                "usedGpuHours": 100.0,
                "remainingGpuHours": 400.0,
                "periodStart": "2026-11-01T00:00:00Z",
                "periodEnd": "2026-12-01T00:00:00Z",
                "whenExhausted": "deprioritize",
                "burnRateGpuHoursPerDay": 10.0,
                "projectedGpuHours": 300.0,
                "refillsAt": None,
                "period": "month",
            },
            id="in-budget-projection-over-the-month",
        ),
        pytest.param(
            "interns",
            budget(10.0, when_exhausted="deny"),
            12.5,
            AT,
            {
                "namespace": "interns",
                "state": "exhausted",
                "budgetGpuHours": 10.0,
                "usedGpuHours": 12.5,
                "remainingGpuHours": 0.0,
                "periodStart": "2026-11-01T00:00:00Z",
                "periodEnd": "2026-12-01T00:00:00Z",
                "whenExhausted": "deny",
                "burnRateGpuHoursPerDay": 1.25,
                "projectedGpuHours": 37.5,
                "refillsAt": "2026-12-01T00:00:00Z",
                "period": "month",
            },
            id="exhausted-remaining-never-negative",
        ),
        pytest.param(
            "research",
            budget(None),
            1.0,
            AT,
            {
                "namespace": "research",
                "state": "unlimited",
                "budgetGpuHours": None,
                "usedGpuHours": 1.0,
                "remainingGpuHours": None,
                "periodStart": "2026-11-01T00:00:00Z",
                "periodEnd": "2026-12-01T00:00:00Z",
                "whenExhausted": "deprioritize",
                "burnRateGpuHoursPerDay": 0.1,
                "projectedGpuHours": 3.0,
                "refillsAt": None,
                "period": "month",
            },
            id="unlimited-nulls",
        ),
        pytest.param(
            "ml",
            budget(70.0, period=Period("rolling", 7)),
            35.0,
            datetime(2026, 11, 21, 5, 49, 30, tzinfo=UTC),
            {
                "namespace": "ml",
                "state": "in-budget",
                "budgetGpuHours": 70.0,
                "usedGpuHours": 35.0,
                "remainingGpuHours": 35.0,
                "periodStart": "2026-11-14T06:00:00Z",
                "periodEnd": "2026-11-21T06:00:00Z",
                "whenExhausted": "deprioritize",
                "burnRateGpuHoursPerDay": 5.0,
                "projectedGpuHours": 35.0,
                "refillsAt": None,
                "period": "rolling:7d",
            },
            id="rolling-rate-is-window-average",
        ),
        pytest.param(
            "team-a",
            budget(500.0),
            0.5,
            datetime(2026, 11, 1, 0, 1, tzinfo=UTC),
            {
                "namespace": "team-a",
                "state": "in-budget",
                "budgetGpuHours": 500.0,
                "usedGpuHours": 0.5,
                "remainingGpuHours": 499.5,
                "periodStart": "2026-11-01T00:00:00Z",
                "periodEnd": "2026-12-01T00:00:00Z",
                "whenExhausted": "deprioritize",
                "burnRateGpuHoursPerDay": 48.0,
                "projectedGpuHours": 1440.466667,
                "refillsAt": None,
                "period": "month",
            },
            id="first-minute-rate-averaged-over-one-bucket",
        ),
    ],
)
def test_status_json(
    namespace: str, b: Budget, used: float, at: datetime, expected: dict[str, object]
) -> None:
    wire = status_to_json(budget_status(namespace, b, used, at))
    assert wire == expected
    assert json.loads(json.dumps(wire)) == expected


def test_status_fields() -> None:
    status = budget_status("team-a", budget(500.0), 100.0, AT)
    assert status == BudgetStatus(
        namespace="team-a",
        state="in-budget",
        budget_gpu_hours=500.0,
        used_gpu_hours=100.0,
        remaining_gpu_hours=400.0,
        period_start=datetime(2026, 11, 1, tzinfo=UTC),
        period_end=datetime(2026, 12, 1, tzinfo=UTC),
        when_exhausted="deprioritize",
        burn_rate_gpu_hours_per_day=10.0,
        projected_gpu_hours=300.0,
        period="month",
    )


@pytest.mark.parametrize(
    ("b", "used", "refills_at"),
    [
        pytest.param(budget(10.0), 10.0, datetime(2026, 12, 1, tzinfo=UTC), id="calendar-at-end"),
        pytest.param(budget(10.0), 9.0, None, id="not-exhausted-none"),
        pytest.param(budget(0.0), 0.0, None, id="zero-budget-never"),
        pytest.param(budget(None), 1e6, None, id="unlimited-none"),
        pytest.param(
            budget(1.0, period=Period("rolling", 7)), 2.0, None, id="rolling-left-to-caller"
        ),
    ],
)
def test_refills_at(b: Budget, used: float, refills_at: datetime | None) -> None:
    assert budget_status("team-a", b, used, AT).refills_at == refills_at


def test_fractional_seconds_on_the_wire() -> None:
    status = budget_status("a", budget(1.0, period=Period("rolling", 1)), 0.0, AT)
    wire = status_to_json(
        BudgetStatus(**{**status.__dict__, "period_start": AT + timedelta(microseconds=5)})
    )
    assert wire["periodStart"] == "2026-11-11T00:00:00.000005Z"


# Properties -----------------------------------------------------------------------------

hours = st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False)
percents = st.floats(min_value=1e-6, max_value=100, allow_nan=False)
ORDER = {IN_BUDGET: 0, WARNING: 1, EXHAUSTED: 2}


@settings(max_examples=500)
@given(hours, percents, hours, hours)
def test_state_is_monotone_in_used_hours(
    gpu_hours: float, warn: float, used: float, more: float
) -> None:
    b = budget(gpu_hours, warn)
    before, after = budget_state(b, used), budget_state(b, used + more)
    assert ORDER[before] <= ORDER[after]


@settings(max_examples=300)
@given(hours, percents, hours)
def test_state_thresholds(gpu_hours: float, warn: float, used: float) -> None:
    state = budget_state(budget(gpu_hours, warn), used)
    assert (state == EXHAUSTED) == (used >= gpu_hours)
    if warn == 100:
        assert state != WARNING


@settings(max_examples=200)
@given(percents, hours)
def test_unlimited_is_always_unlimited(warn: float, used: float) -> None:
    assert budget_state(budget(None, warn), used) == UNLIMITED


@settings(max_examples=300)
@given(
    st.one_of(st.none(), hours),
    hours,
    st.sampled_from([Period("day"), Period("week"), Period("month"), Period("rolling", 30)]),
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
)
def test_status_invariants(
    gpu_hours: float | None, used: float, period: Period, at: datetime
) -> None:
    status = budget_status("a", budget(gpu_hours, period=period), used, at)
    assert status.state == budget_state(budget(gpu_hours), used)
    assert status.period_start <= at < status.period_end
    assert status.burn_rate_gpu_hours_per_day >= 0
    assert status.projected_gpu_hours >= used * (1 - 1e-9)
    if gpu_hours is None:
        assert status.remaining_gpu_hours is None
    else:
        assert status.remaining_gpu_hours is not None
        assert 0 <= status.remaining_gpu_hours <= gpu_hours


# Refill time ----------------------------------------------------------------------------

ROLLING_7 = Period("rolling", 7)
NOW = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)  # on a bucket boundary: window ends 06:15


def at_(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("b", "buckets", "expected"),
    [
        pytest.param(
            budget(10.0),
            {at_("2026-11-02T00:00"): 10.0},
            at_("2026-12-01T00:00"),
            id="calendar-refills-at-period-end",
        ),
        pytest.param(
            budget(10.0), {at_("2026-11-02T00:00"): 9.0}, None, id="calendar-not-exhausted"
        ),
        pytest.param(budget(None), {at_("2026-11-02T00:00"): 99.0}, None, id="unlimited"),
        pytest.param(budget(0.0), {}, None, id="zero-budget-never-refills"),
        pytest.param(
            budget(10.0, period=ROLLING_7),
            {
                at_("2026-11-15T08:00"): 4.0,
                at_("2026-11-16T00:00"): 4.0,
                at_("2026-11-20T00:00"): 4.0,
            },
            at_("2026-11-22T08:00"),
            id="rolling-oldest-bucket-enough",
        ),
        pytest.param(
            budget(10.0, period=ROLLING_7),
            {
                at_("2026-11-15T08:00"): 1.0,
                at_("2026-11-16T00:00"): 1.0,
                at_("2026-11-20T00:00"): 9.0,
            },
            at_("2026-11-23T00:00"),
            id="rolling-refills-once-enough-dropped-out",
        ),
        pytest.param(
            budget(10.0, period=ROLLING_7),
            {at_("2026-11-14T06:15"): 10.0, at_("2026-11-14T06:00"): 50.0},
            at_("2026-11-21T06:15"),
            id="rolling-bucket-outside-window-ignored",
        ),
    ],
)
def test_refill_time(b: Budget, buckets: dict[datetime, float], expected: datetime | None) -> None:
    assert refill_time(b, NOW, buckets) == expected


bucket_offsets = st.dictionaries(
    st.integers(0, 7 * 96 - 1), st.floats(0, 5, allow_nan=False), max_size=40
)


@settings(max_examples=300)
@given(bucket_offsets, st.floats(0.25, 50, allow_nan=False), st.integers(0, 899))
def test_rolling_refill_time_is_the_first_moment_out_of_exhaustion(
    offsets: dict[int, float], gpu_hours: float, seconds: int
) -> None:
    b = budget(gpu_hours, period=ROLLING_7)
    at = NOW + timedelta(seconds=seconds)
    start, _ = period_window(b, at)
    buckets = {start + timedelta(minutes=15 * k): hours for k, hours in offsets.items()}

    def used(t: datetime) -> float:
        window_start, window_end = period_window(b, t)
        return sum(h for s, h in buckets.items() if window_start <= s < window_end and s <= at)

    refill = refill_time(b, at, buckets)
    if budget_state(b, used(at)) != EXHAUSTED:
        assert refill is None
        return
    assert refill is not None
    assert refill > at
    assert budget_state(b, used(refill)) != EXHAUSTED
    assert budget_state(b, used(refill - timedelta(microseconds=1))) == EXHAUSTED
