"""The timekeeper's use cases: record a report, answer a namespace's status, list them.

Ties the pure budget logic (`budgets`, `periods`, `states`) to the ledger adapter. Status is
the sum of the running-total buckets inside the namespace's current period window, never a
scan of the ledger (except, for a namespace exhausted with `throttle`, the names of its pods
that reported in the last `RUNNING_POD_SECONDS`: the pods held at the floor).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from timekeeper.auth import Identity, authorize_report
from timekeeper.budgets import Budget, BudgetPolicy
from timekeeper.errors import InvalidRequest
from timekeeper.ledger import Ledger, Receipt, gpu_hours_from_core_microseconds
from timekeeper.periods import period_window
from timekeeper.policy_source import PolicySource
from timekeeper.reports import Report, check_timing, is_namespace_name
from timekeeper.states import EXHAUSTED, BudgetStatus, budget_status, refill_time

RUNNING_POD_SECONDS: Final = 300.0
"""A pod that reported within this long is running (sidecars report every 15 s by default)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class Accounting:
    """Budgets (from the policy source) against use (from the ledger)."""

    def __init__(
        self,
        ledger: Ledger,
        policy_source: PolicySource,
        *,
        clock_skew_seconds: float = 60.0,
        max_interval_seconds: float = 86400.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.ledger = ledger
        self.policy_source = policy_source
        self.clock_skew_seconds = clock_skew_seconds
        self.max_interval_seconds = max_interval_seconds
        self.clock = clock

    def record(self, identity: Identity, report: Report) -> tuple[Receipt, bool]:
        """Authorise, check against the clock, and store a report (idempotently); the flag
        is False when it was a resend of a stored report."""
        authorize_report(identity, report)
        now = self.clock()
        check_timing(
            report,
            now=now,
            clock_skew_seconds=self.clock_skew_seconds,
            max_interval_seconds=self.max_interval_seconds,
        )
        return self.ledger.record(report, received_at=now)

    def status(self, namespace: str) -> BudgetStatus:
        """Budget, use and state of `namespace` now; any valid name answers (defaults apply)."""
        if not is_namespace_name(namespace):
            raise InvalidRequest(
                f"namespace: must be a namespace name (RFC 1123 label: at most 63 lower-case "
                f"letters, digits and '-') (got {namespace!r})"
            )
        at = self.clock()
        budget = self.policy_source.current().budget_for(namespace)
        start, end = period_window(budget, at)
        used = self.ledger.used_core_microseconds(namespace, start, end)
        return self._status(namespace, budget, used, at)

    def statuses(self) -> list[BudgetStatus]:
        """Every namespace that has its own budget entry or any use in its current period."""
        at = self.clock()
        policy: BudgetPolicy = self.policy_source.current()
        start, end = period_window(policy.defaults, at)
        used = {
            name: total
            for name, total in self.ledger.used_by_namespace(start, end).items()
            if name not in policy.namespaces
        }
        for name, budget in policy.namespaces.items():
            start, end = period_window(budget, at)
            used[name] = self.ledger.used_core_microseconds(name, start, end)
        return [
            self._status(name, policy.budget_for(name), used[name], at) for name in sorted(used)
        ]

    def _status(
        self, namespace: str, budget: Budget, used_core_microseconds: int, at: datetime
    ) -> BudgetStatus:
        status = budget_status(
            namespace, budget, gpu_hours_from_core_microseconds(used_core_microseconds), at
        )
        if status.state == EXHAUSTED and budget.when_exhausted == "throttle":
            since = at - timedelta(seconds=RUNNING_POD_SECONDS)
            pods = tuple(self.ledger.pods_reporting_since(namespace, since))
            status = dataclasses.replace(status, throttled_pods=pods)
        if status.state != EXHAUSTED or budget.period.kind != "rolling":
            return status
        # Only an exhausted rolling window needs its buckets: when its use slides out.
        buckets = self.ledger.used_by_bucket(namespace, status.period_start, status.period_end)
        hours = {start: gpu_hours_from_core_microseconds(used) for start, used in buckets.items()}
        return dataclasses.replace(status, refills_at=refill_time(budget, at, hours))
