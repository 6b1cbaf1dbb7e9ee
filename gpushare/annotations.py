"""Pod annotation keys: the webhook writes them, the node manager and the sidecar read them."""

from typing import Final

DOMAIN: Final = "gpushare.io"

CORE_SOFT_LIMIT: Final = "tencent.com/vcuda-core-limit"
"""gpu-manager's burst limit: an integer percent in [vcuda-core, 100]."""

BUDGET_STATE: Final = f"{DOMAIN}/budget-state"
"""The namespace's budget state when the pod was admitted."""

QUOTA_REQUEST: Final = f"{DOMAIN}/quota-request"
"""Guaranteed fraction of GPU time, 0 <= request <= limit <= 1, 0 = best effort (FaST-GShare
vocabulary); may be changed on a running pod."""

QUOTA_LIMIT: Final = f"{DOMAIN}/quota-limit"
"""Upper bound on the fraction of GPU time, 0 < limit <= 1; may be changed on a running pod."""

SM_PARTITION: Final = f"{DOMAIN}/sm-partition"
"""Percent of the GPU's SMs, 1..100."""

SIDECAR_INJECTED: Final = f"{DOMAIN}/sidecar-injected"
"""Set when the accounting sidecar was injected, so that re-invocation injects nothing."""

PRIORITY_CLASS_STANDARD: Final = "gpushare-standard"
PRIORITY_CLASS_OVERBUDGET: Final = "gpushare-overbudget"

BUDGET_STATES: Final = ("in-budget", "warning", "exhausted", "unlimited")
"""Every namespace is in exactly one of these states."""

TIMEKEEPER_AUDIENCE: Final = "gpushare-timekeeper"
"""Audience of the projected ServiceAccount token a sidecar presents to the timekeeper."""
