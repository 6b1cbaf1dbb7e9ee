"""A container's share of GPU time from its allocation, its pod's annotations and its
namespace's budget (pure logic).

- **Guarantee**: `gpushare.io/quota-request` (a fraction, 0 <= r <= 1; 0 is best effort), at
  most the container's `vcuda-core` share (the allocation is what was reserved for it);
  without the annotation, the `vcuda-core` share.
- **Cap**: the smaller of `gpushare.io/quota-limit` and `tencent.com/vcuda-core-limit`, never
  below the `vcuda-core` share (`pods.burst_limit`); without either, the `vcuda-core` share.
- **Throttled** (its namespace's budget is exhausted with `whenExhausted: throttle`): guarantee
  and cap lowered to `throttleToPercent` % of the `vcuda-core` share.

When the pod is not known (no API server, or not seen yet), the burst limit recorded at
Allocate is the cap.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal

from gpushare.annotations import QUOTA_REQUEST
from gpushare.resources import CORE_UNITS_PER_GPU
from nodemanager.gputime.scheduler import Quota
from nodemanager.pods import burst_limit

_FRACTION = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def _request_percent(text: object) -> Decimal | None:
    """`gpushare.io/quota-request` as percent (0..100), None when absent or invalid."""
    if not isinstance(text, str) or len(text) > 32 or not _FRACTION.fullmatch(text):
        return None
    value = Decimal(text)
    return value * 100 if 0 <= value <= 1 else None


def container_quota(
    *,
    core_limit: int,
    soft_limit: int,
    annotations: Mapping[str, str] | None,
    throttle_percent: float | None = None,
) -> Quota:
    """The quota of a shared container holding `core_limit` % of one GPU."""
    core = Decimal(core_limit)
    if annotations is None:
        guarantee = core
        cap = Decimal(max(soft_limit, core_limit))
    else:
        requested = _request_percent(annotations.get(QUOTA_REQUEST))
        guarantee = core if requested is None else min(requested, core)
        cap = Decimal(burst_limit(annotations, core_limit) or core_limit)
    throttled = throttle_percent is not None
    if throttle_percent is not None:
        floor = core * Decimal(str(throttle_percent)) / 100
        cap = min(cap, floor)
        guarantee = min(guarantee, floor)
    hundred = Decimal(CORE_UNITS_PER_GPU)
    return Quota(float(guarantee / hundred), float(min(cap, hundred) / hundred), throttled)
