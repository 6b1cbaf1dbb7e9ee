"""What the webhook decides for one AdmissionRequest (logic; the budget source is injected).

`validate` checks GPU requests on CREATE and UPDATE, and on CREATE that the pod, as every
mutating step left it, holds gpushare's sidecar. `mutate` (CREATE only) validates too, then
sets the budget-state annotation and the PriorityClass from the namespace's budget, or
refuses the pod when the budget is exhausted and the policy says deny, and injects the
accounting sidecar exactly once. A reserved name is refused only where the pod's creator
wrote it (as the API server recorded the request), so that no other admission step that
edits the injected sidecar can trip that check.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gpushare import annotations as keys
from webhook import injection, isolation, patches, validation
from webhook.budget import BudgetStatus, PriorityDecision, decide_priority, warnings_for
from webhook.errors import BadReview, TimekeeperUnavailable
from webhook.review import AdmissionRequest, Verdict
from webhook.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetLookup:
    """A namespace's budget status and whether it came from a stale cache entry."""

    status: BudgetStatus
    stale: bool = False


class BudgetSource(Protocol):
    """Where budget states come from (the timekeeper client, or a fake in tests)."""

    def lookup(self, namespace: str) -> BudgetLookup:
        """The namespace's status; TimekeeperUnavailable when none can be had in time."""
        ...


def _denied(problems: list[str]) -> Verdict:
    return Verdict(allowed=False, message="pod rejected: " + "; ".join(problems))


def _creation_problems(pod: Mapping[str, Any]) -> list[str]:
    """What refuses a new GPU pod whatever its budget: a reserved container or volume that its
    creator wrote into it, or a protected variable in its environment (whoever set it)."""
    problems = injection.written_by_user(pod)
    for ref, item in validation.containers(pod):
        allowed = injection.SIDECAR_ENV_NAMES if ref.name == injection.SIDECAR_NAME else ()
        problems += isolation.container_problems(ref, item, allowed)
    return problems


def _sidecar_problems(
    pod: Mapping[str, Any], report: validation.PodReport, settings: Settings
) -> list[str]:
    """Why the pod, as every mutating step left it, does not hold gpushare's own sidecar."""
    found = injection.find_sidecar(pod)
    if found is None:
        return [
            f'the accounting sidecar "{injection.SIDECAR_NAME}" is missing: GPU pods are'
            " admitted only through gpushare's mutating webhook, which injects it"
        ]
    totals = validation.pod_totals(report.requests)
    return injection.sidecar_problems(
        found, pod, settings, totals
    ) + injection.missing_usage_mounts(pod, report)


def validate(request: AdmissionRequest, settings: Settings) -> Verdict:
    """The validating endpoint: GPU request rules on CREATE and UPDATE; on CREATE the pod as
    every mutating step left it must hold gpushare's own sidecar; on UPDATE the sidecar's
    image may not change."""
    pod = request.pod
    if pod is None or request.namespace in settings.system_namespaces:
        return Verdict(allowed=True)
    report = validation.inspect_pod(pod, settings.request_bounds)
    problems = list(report.problems)
    if request.operation == "CREATE" and report.has_gpu and not problems:
        problems = _creation_problems(pod) or _sidecar_problems(pod, report, settings)
    if request.old_pod is not None:
        problem = injection.update_problem(request.old_pod, pod)
        if problem is not None:
            problems.append(problem)
    return _denied(problems) if problems else Verdict(allowed=True)


def mutate(request: AdmissionRequest, settings: Settings, budgets: BudgetSource) -> Verdict:
    """The mutating endpoint (CREATE only): priority, budget state, sidecar."""
    pod = request.pod
    if (
        request.operation != "CREATE"
        or pod is None
        or request.namespace in settings.system_namespaces
    ):
        return Verdict(allowed=True)
    report = validation.inspect_pod(pod, settings.request_bounds)
    if report.problems:
        return _denied(report.problems)
    if not report.has_gpu:
        return Verdict(allowed=True)
    problems = _creation_problems(pod)
    if problems:
        return _denied(problems)

    warnings: list[str] = []
    lookup_failed = False
    try:
        lookup = budgets.lookup(request.namespace)
        state = lookup.status.state
        decision = decide_priority(lookup.status)
        warnings += warnings_for(lookup.status, decision)
        if lookup.stale:
            warnings.append("gpushare: budget state from cache; the timekeeper is not answering")
    except TimekeeperUnavailable as err:
        if settings.failure_policy == "fail-closed":
            return Verdict(
                allowed=False,
                message=(
                    f'pod rejected: the GPU budget of namespace "{request.namespace}" cannot be'
                    f" checked ({err}); the webhook's failure policy is fail-closed"
                ),
                decided_by_policy=True,
            )
        log.warning(
            "admitting GPU pod as in-budget: %s (failure policy fail-open)",
            err,
            extra={"namespace": request.namespace},
        )
        warnings.append(
            f'gpushare: the GPU budget of namespace "{request.namespace}" is unknown ({err});'
            " admitted as in-budget by the webhook's failure policy fail-open"
        )
        state = "in-budget"
        lookup_failed = True
        decision = PriorityDecision(keys.PRIORITY_CLASS_STANDARD)
    if decision.denial is not None or decision.priority_class is None:
        return Verdict(allowed=False, message=decision.denial)

    spec: Mapping[str, Any] = pod["spec"]
    wanted = {keys.BUDGET_STATE: state}
    ops: list[patches.Operation] = []
    # The usage folder in the GPU containers: its operations address containers by their
    # index in the pod as sent, so they precede the sidecar's insertion.
    mount_problems, mount_ops = injection.usage_mounts(pod, report)
    if mount_problems:
        return _denied(mount_problems)
    totals = validation.pod_totals(report.requests)
    found = injection.find_sidecar(pod)
    if found is not None:
        # Injected by an earlier invocation (the user's own was refused above), and possibly
        # edited since by other admission steps: only the fields gpushare owns must hold.
        problems = injection.sidecar_problems(found, pod, settings, totals)
        if problems:
            return _denied(problems)
    else:
        clash = _volume_clash(spec)
        if clash:
            return _denied([f'volume "{clash}" is reserved for the gpushare accounting sidecar'])
        sidecar = injection.sidecar_container(settings, totals)
        native = settings.sidecar_mode == "native"
        field = "initContainers" if native else "containers"
        ops += patches.insert_ops(spec, field, [sidecar], first=native)
        ops += patches.insert_ops(spec, "volumes", injection.sidecar_volumes(settings), first=False)
        wanted[keys.SIDECAR_INJECTED] = settings.sidecar_mode
    ops = patches.annotation_ops(pod, wanted) + mount_ops + ops
    ops += patches.priority_ops(spec, decision.priority_class)
    ops += patches.scheduler_ops(spec, settings.scheduler_name)
    chosen = spec.get("priorityClassName")
    if chosen and chosen != decision.priority_class:
        warnings.append(
            f"gpushare: priorityClassName {chosen!r} replaced by {decision.priority_class!r}"
            " (GPU pods get their priority from their namespace's budget)"
        )
    return Verdict(
        allowed=True,
        patch=ops,
        warnings=tuple(warnings),
        decided_by_policy=lookup_failed,
    )


def _volume_clash(spec: Mapping[str, Any]) -> str | None:
    volumes = spec.get("volumes") or []
    if not isinstance(volumes, list):
        raise BadReview("object.spec.volumes must be a list")
    names = {v.get("name") for v in volumes if isinstance(v, dict)}
    for name in injection.RESERVED_VOLUMES:
        if name in names:
            return name
    return None
