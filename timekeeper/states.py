"""Budget states and the status of a namespace: what `GET /api/v1/namespaces/{ns}` answers.

Pure logic (stdlib only). The state depends only on the budget and the GPU-hours used in the
current period:

- `unlimited`: the budget has no GPU-hour limit;
- `exhausted`: used >= budget (so a budget of 0 is exhausted from the start);
- `warning`: used >= warnAtPercent % of the budget (never, when warnAtPercent is 100);
- `in-budget`: otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from timekeeper.budgets import Budget
from timekeeper.periods import BUCKET_SECONDS, period_window

IN_BUDGET: Final = "in-budget"
WARNING: Final = "warning"
EXHAUSTED: Final = "exhausted"
UNLIMITED: Final = "unlimited"

MIN_ELAPSED_SECONDS: Final = BUCKET_SECONDS
"""Burn rates are averaged over at least one bucket, so a period's first minutes do not
project absurd figures from a few seconds of use."""

_DAY_SECONDS: Final = 86400.0


@dataclass(frozen=True)
class BudgetStatus:
    """A namespace's budget and use in the current period."""

    namespace: str
    state: str
    """One of `gpushare.annotations.BUDGET_STATES`."""
    budget_gpu_hours: float | None
    """None when unlimited."""
    used_gpu_hours: float
    remaining_gpu_hours: float | None
    """Budget left, never negative; None when unlimited."""
    period_start: datetime
    period_end: datetime
    """Calendar periods: when the budget resets. Rolling: when the window next slides."""
    when_exhausted: str
    burn_rate_gpu_hours_per_day: float
    """Average use per day: over the period so far (calendar), over the window (rolling)."""
    projected_gpu_hours: float
    """Use at `period_end` if the burn rate holds."""
    refills_at: datetime | None = None
    """When an exhausted namespace stops being exhausted if it uses nothing more: the period's
    end for calendar periods, the moment enough use has slid out of a rolling window (see
    `refill_time`). None when not exhausted, or never (a budget of 0)."""
    period: str = ""
    """The period kind as the budgets file writes it: `day`, `week`, `month`, `rolling:<N>d`."""
    throttle_to_percent: float | None = None
    """With `whenExhausted: throttle`: the percent of its share each pod keeps when throttled."""
    throttled_pods: tuple[str, ...] = ()
    """Exhausted with `throttle`: the namespace's running GPU pods, held at the floor."""


def budget_state(budget: Budget, used_gpu_hours: float) -> str:
    """`in-budget`, `warning`, `exhausted` or `unlimited` for `used_gpu_hours` this period."""
    _check_used(used_gpu_hours)
    if budget.gpu_hours is None:
        return UNLIMITED
    if used_gpu_hours >= budget.gpu_hours:
        return EXHAUSTED
    if budget.warn_at_percent < 100 and used_gpu_hours * 100 >= (
        budget.gpu_hours * budget.warn_at_percent
    ):
        return WARNING
    return IN_BUDGET


def budget_status(
    namespace: str, budget: Budget, used_gpu_hours: float, at: datetime
) -> BudgetStatus:
    """The status of `namespace` at the instant `at`, given its use in the current period."""
    _check_used(used_gpu_hours)
    start, end = period_window(budget, at)
    at = at.astimezone(UTC)
    if budget.period.kind == "rolling":
        # The window always spans its full length, so the rate is the window's average, and
        # the use in the window when it next slides is, at that rate, what it is now.
        observed_seconds = (end - start).total_seconds()
        burn_per_day = used_gpu_hours / observed_seconds * _DAY_SECONDS
        projected = used_gpu_hours
    else:
        observed_seconds = max((at - start).total_seconds(), float(MIN_ELAPSED_SECONDS))
        burn_per_day = used_gpu_hours / observed_seconds * _DAY_SECONDS
        left_seconds = max((end - at).total_seconds(), 0.0)
        projected = used_gpu_hours + burn_per_day * left_seconds / _DAY_SECONDS
    remaining = None if budget.gpu_hours is None else max(budget.gpu_hours - used_gpu_hours, 0.0)
    state = budget_state(budget, used_gpu_hours)
    # A rolling window's refill depends on when the use happened, not only on how much: the
    # caller that holds the buckets fills it in with `refill_time`.
    refills = state == EXHAUSTED and budget.gpu_hours != 0 and budget.period.kind != "rolling"
    return BudgetStatus(
        namespace=namespace,
        state=state,
        budget_gpu_hours=budget.gpu_hours,
        used_gpu_hours=used_gpu_hours,
        remaining_gpu_hours=remaining,
        period_start=start,
        period_end=end,
        when_exhausted=budget.when_exhausted,
        burn_rate_gpu_hours_per_day=burn_per_day,
        projected_gpu_hours=projected,
        refills_at=end if refills else None,
        period=str(budget.period),
        throttle_to_percent=budget.throttle_to_percent
        if budget.when_exhausted == "throttle"
        else None,
    )


def refill_time(
    budget: Budget, at: datetime, bucket_gpu_hours: Mapping[datetime, float]
) -> datetime | None:
    """When a namespace exhausted at `at` stops being exhausted, if it uses nothing more.

    `bucket_gpu_hours` maps the start of each 15-minute UTC bucket to the GPU-hours charged
    in it; buckets outside the current window are ignored. Calendar periods refill all at
    once at the period's end. A rolling window refills as its oldest buckets fall out: a
    bucket starting at `s` stops counting at `s + N days`; the answer is the first such
    moment after which the rest is under the budget. None when the namespace is not
    exhausted, is unlimited, or never refills (a budget of 0).
    """
    if budget.gpu_hours is None or budget.gpu_hours == 0:
        return None
    start, end = period_window(budget, at)
    in_window = sorted((s, h) for s, h in bucket_gpu_hours.items() if start <= s < end)
    used = math.fsum(hours for _, hours in in_window)
    if budget_state(budget, used) != EXHAUSTED:
        return None
    if budget.period.kind != "rolling":
        return end
    # counted_after[i]: the use still counted once bucket i has dropped out.
    counted_after = [0.0] * len(in_window)
    for index in range(len(in_window) - 2, -1, -1):
        counted_after[index] = counted_after[index + 1] + in_window[index + 1][1]
    for (bucket_start, _), still_counted in zip(in_window, counted_after, strict=True):
        if budget_state(budget, still_counted) != EXHAUSTED:
            return bucket_start + (end - start)
    # Not reached: once the last bucket drops out nothing is counted, and 0 < gpu_hours.
    return in_window[-1][0] + (end - start)


def status_to_json(status: BudgetStatus) -> dict[str, object]:
    """The wire form (camelCase, RFC 3339 UTC times, null where unlimited); namespaces that
    throttle when exhausted also carry their floor and the pods throttled now."""
    wire: dict[str, object] = {
        "namespace": status.namespace,
        "state": status.state,
        "budgetGpuHours": _hours(status.budget_gpu_hours),
        "usedGpuHours": _hours(status.used_gpu_hours),
        "remainingGpuHours": _hours(status.remaining_gpu_hours),
        "periodStart": rfc3339(status.period_start),
        "periodEnd": rfc3339(status.period_end),
        "whenExhausted": status.when_exhausted,
        "burnRateGpuHoursPerDay": _hours(status.burn_rate_gpu_hours_per_day),
        "projectedGpuHours": _hours(status.projected_gpu_hours),
        "refillsAt": None if status.refills_at is None else rfc3339(status.refills_at),
        "period": status.period,
    }
    if status.when_exhausted == "throttle":
        wire["throttleToPercent"] = status.throttle_to_percent
        wire["throttledPods"] = list(status.throttled_pods)
    return wire


def rfc3339(instant: datetime) -> str:
    """`2026-11-01T00:00:00Z`: UTC, whole seconds unless the instant has a fraction."""
    utc = instant.astimezone(UTC)
    timespec = "microseconds" if utc.microsecond else "seconds"
    return utc.replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


def _hours(value: float | None) -> float | None:
    # Microsecond-of-an-hour precision is plenty; it keeps float noise off the wire.
    return None if value is None else round(value, 6)


def _check_used(used_gpu_hours: float) -> None:
    if not math.isfinite(used_gpu_hours) or used_gpu_hours < 0:
        raise ValueError(f"used GPU-hours must be a finite number >= 0 (got {used_gpu_hours})")
