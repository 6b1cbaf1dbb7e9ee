"""Pod annotation keys: the webhook writes them, the node manager and the sidecar read them."""

from typing import Final, TypedDict

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

NODE_GPU_CAPACITY: Final = f"{DOMAIN}/gpu-capacity"
"""Node annotation written by the node manager, read by the scheduler extender: per-GPU free
capacity as JSON (`NodeGpuCapacity`), e.g.
`{"version": 1, "policy": "binpack", "gpus": [{"index": 0, "uuid": "GPU-…", "healthy": true,
"coreTotal": 100, "coreFree": 40, "memoryTotal": 64, "memoryFree": 24}]}`.
Cores are vcuda-core units (1 % of a GPU), memory is vcuda-memory units (256 MiB)."""

NODE_GPU_CAPACITY_VERSION: Final = 1


class GpuCapacityJson(TypedDict):
    """One GPU in the `gpushare.io/gpu-capacity` node annotation."""

    index: int
    uuid: str
    healthy: bool
    coreTotal: int
    coreFree: int
    memoryTotal: int
    memoryFree: int


class NodeGpuCapacity(TypedDict):
    """The whole `gpushare.io/gpu-capacity` node annotation; `policy` is binpack or spread."""

    version: int
    policy: str
    gpus: list[GpuCapacityJson]
