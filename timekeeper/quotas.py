"""Concurrent GPU quotas: what ResourceQuota each namespace should hold (pure logic).

A budget's `maxVcudaCore` / `maxVcudaMemory` cap what a namespace's pods request at once.
The platform enforces the cap with an ordinary Kubernetes ResourceQuota named
`gpushare-gpu` on `requests.tencent.com/vcuda-core` and `requests.tencent.com/vcuda-memory`,
labelled as owned by gpushare. `plan_quotas` compares the quotas wanted (from the policy and
the namespaces that exist) with the owned quotas that exist and says what to create, change
and delete. A quota of that name without the owner label belongs to someone else: it is
reported, never changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from gpushare import quantities
from timekeeper.budgets import Budget, BudgetPolicy

QUOTA_NAME: Final = "gpushare-gpu"
OWNER_LABEL: Final = "app.kubernetes.io/managed-by"
OWNER_VALUE: Final = "gpushare-quotas"
OWNER_SELECTOR: Final = f"{OWNER_LABEL}={OWNER_VALUE}"
CORE_RESOURCE: Final = "requests.tencent.com/vcuda-core"
MEMORY_RESOURCE: Final = "requests.tencent.com/vcuda-memory"
DEFAULT_EXCLUDED_NAMESPACES: Final = ("kube-system", "kube-public", "kube-node-lease")
"""Never given a quota by the defaults (a namespace listed by name in the file still is)."""


@dataclass(frozen=True)
class QuotaPlan:
    """The changes that bring the owned quotas in line with the policy."""

    create: Mapping[str, Mapping[str, str]]
    """Namespace → `spec.hard` of a quota to create."""
    update: Mapping[str, Mapping[str, str]]
    """Namespace → the new `spec.hard` of its owned quota."""
    delete: tuple[str, ...]
    """Namespaces whose owned quota is no longer wanted."""
    foreign: tuple[str, ...]
    """Namespaces that want a quota but hold one of that name that gpushare does not own."""

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


def quota_hard(budget: Budget) -> dict[str, str] | None:
    """The `spec.hard` of `budget`'s quota; None when it caps nothing."""
    hard: dict[str, str] = {}
    if budget.max_vcuda_core is not None:
        hard[CORE_RESOURCE] = str(budget.max_vcuda_core)
    if budget.max_vcuda_memory is not None:
        hard[MEMORY_RESOURCE] = str(budget.max_vcuda_memory)
    return hard or None


def wanted_quotas(
    policy: BudgetPolicy,
    namespaces: Iterable[str],
    *,
    excluded: Iterable[str] = DEFAULT_EXCLUDED_NAMESPACES,
) -> dict[str, dict[str, str]]:
    """Namespace → `spec.hard`, for each existing namespace whose budget caps something.

    Namespaces the file lists get their own entry; the others get the defaults, except the
    `excluded` ones (system namespaces), which only a listing by name gives a quota.
    """
    skip = set(excluded)
    wanted: dict[str, dict[str, str]] = {}
    for name in namespaces:
        if name not in policy.namespaces and name in skip:
            continue
        hard = quota_hard(policy.budget_for(name))
        if hard is not None:
            wanted[name] = hard
    return wanted


def plan_quotas(
    wanted: Mapping[str, Mapping[str, str]],
    owned: Mapping[str, Mapping[str, str]],
    *,
    foreign: Iterable[str] = (),
) -> QuotaPlan:
    """What to do so that exactly the `wanted` quotas exist among the `owned` ones.

    `owned` maps a namespace to the `spec.hard` of the quota gpushare owns there, `foreign`
    names namespaces where a quota of the same name exists without the owner label.
    Quantities are compared by value (`1k` equals `1000`), as the API server rewrites them.
    """
    taken = set(foreign)
    create = {ns: dict(hard) for ns, hard in wanted.items() if ns not in owned and ns not in taken}
    update = {
        ns: dict(hard)
        for ns, hard in wanted.items()
        if ns in owned and not same_hard(owned[ns], hard)
    }
    delete = tuple(sorted(ns for ns in owned if ns not in wanted))
    blocked = tuple(sorted(ns for ns in wanted if ns in taken and ns not in owned))
    return QuotaPlan(create=create, update=update, delete=delete, foreign=blocked)


def same_hard(left: Mapping[str, str], right: Mapping[str, str]) -> bool:
    """Whether two `spec.hard` maps hold the same resources with equal quantities."""
    if set(left) != set(right):
        return False
    return all(_value(left[key]) == _value(right[key]) for key in left)


def _value(text: str) -> Decimal | str:
    try:
        return quantities.parse(text)
    except ValueError:
        return text
