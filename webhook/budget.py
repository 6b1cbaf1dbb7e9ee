"""Budget state of a namespace and the priority it earns (pure logic, stdlib only).

The timekeeper's namespace status is decoded here (its wire format is a contract), and the
admission decision follows the design: in-budget, warning and unlimited run at the standard
PriorityClass; exhausted namespaces run over-budget (preemptible), are refused, or (with
`throttle`) are admitted at the standard PriorityClass with a warning that the pod runs at the
throttle floor, as their policy says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpushare import annotations as keys

WHEN_EXHAUSTED = ("deprioritize", "deny", "throttle")


class StatusFormatError(ValueError):
    """The timekeeper answered with JSON that is not a namespace status."""


@dataclass(frozen=True)
class BudgetStatus:
    """What the webhook needs from `GET /api/v1/namespaces/{ns}`."""

    namespace: str
    state: str
    when_exhausted: str
    used_gpu_hours: float
    budget_gpu_hours: float | None
    period_end: str | None
    refills_at: str | None = None
    """When an exhausted namespace stops being exhausted (null from older timekeepers)."""
    throttle_to_percent: float | None = None
    """With `throttle`: the percent of its share a pod keeps while the namespace is exhausted."""


@dataclass(frozen=True)
class PriorityDecision:
    """Either a PriorityClass for the pod or a refusal."""

    priority_class: str | None
    denial: str | None = None


def parse_status(namespace: str, body: object) -> BudgetStatus:
    """Decode the timekeeper's namespace status; StatusFormatError names the bad field."""
    if not isinstance(body, Mapping):
        raise StatusFormatError("the namespace status is not a JSON object")
    state = body.get("state")
    if state not in keys.BUDGET_STATES:
        raise StatusFormatError(f"state={state!r} is not one of {', '.join(keys.BUDGET_STATES)}")
    when = body.get("whenExhausted", "deprioritize")
    if when not in WHEN_EXHAUSTED:
        raise StatusFormatError(f"whenExhausted={when!r} is not one of {', '.join(WHEN_EXHAUSTED)}")
    used = _number(body, "usedGpuHours", default=0.0)
    budget = None if body.get("budgetGpuHours") is None else _number(body, "budgetGpuHours")
    period_end = _time(body, "periodEnd")
    refills_at = _time(body, "refillsAt")
    floor = None
    if when == "throttle":
        floor = _number(body, "throttleToPercent", default=10.0)
    return BudgetStatus(namespace, state, when, used, budget, period_end, refills_at, floor)


def _time(body: Mapping[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise StatusFormatError(f"{field}={value!r} is not an RFC 3339 string")
    return value


def _number(body: Mapping[str, Any], field: str, default: float | None = None) -> float:
    value = body.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StatusFormatError(f"{field}={value!r} is not a number")
    return float(value)


def _refill(status: BudgetStatus) -> str:
    # A rolling window refills as old use slides out, sooner than its end: prefer refillsAt.
    return status.refills_at or status.period_end or "the next budget period"


def _used(status: BudgetStatus) -> str:
    hours = status.budget_gpu_hours
    if hours is None:
        return f"{status.used_gpu_hours:.2f} GPU-hours of an unlimited budget"
    percent = f" ({status.used_gpu_hours / hours * 100:.0f}%)" if hours > 0 else ""
    return f"{status.used_gpu_hours:.2f} of its {hours:g} GPU-hours budget{percent}"


def warnings_for(status: BudgetStatus, decision: PriorityDecision) -> list[str]:
    """What the user is told (admission warnings, printed by kubectl) about the budget."""
    if decision.priority_class == keys.PRIORITY_CLASS_OVERBUDGET:
        return [
            f'gpushare: namespace "{status.namespace}" has used {_used(status)}, so this pod'
            f" runs at PriorityClass {keys.PRIORITY_CLASS_OVERBUDGET}: preemptible (in-budget"
            f" GPU pods may evict it) until the budget refills at {_refill(status)}"
        ]
    if status.state == "exhausted" and status.when_exhausted == "throttle":
        return [
            f'gpushare: namespace "{status.namespace}" has used {_used(status)}, so this pod'
            f" runs throttled to {status.throttle_to_percent:g}% of its GPU share until the"
            f" budget refills at {_refill(status)}"
        ]
    if status.state == "warning":
        return [
            f'gpushare: namespace "{status.namespace}" has used {_used(status)}; it refills'
            f" at {_refill(status)}"
        ]
    return []


def decide_priority(status: BudgetStatus) -> PriorityDecision:
    """The PriorityClass a new GPU pod gets, or why it is refused."""
    if status.state != "exhausted":
        return PriorityDecision(keys.PRIORITY_CLASS_STANDARD)
    if status.when_exhausted == "deprioritize":
        return PriorityDecision(keys.PRIORITY_CLASS_OVERBUDGET)
    if status.when_exhausted == "throttle":
        return PriorityDecision(keys.PRIORITY_CLASS_STANDARD)  # held at the floor on the node
    hours = status.budget_gpu_hours
    budget = "an unlimited" if hours is None else f"its {hours:g}"
    refill = _refill(status)
    return PriorityDecision(
        None,
        denial=(
            f'pod rejected: namespace "{status.namespace}" has used'
            f" {status.used_gpu_hours:.2f} of {budget} GPU-hours budget and refuses new GPU"
            f" pods when it is exhausted; the budget refills at {refill}"
        ),
    )
