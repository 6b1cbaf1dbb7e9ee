"""Extended resource names and units, compatible with tkestack gpu-manager."""

from typing import Final

VCUDA_CORE: Final = "tencent.com/vcuda-core"
"""1 unit = 1 % of one physical GPU: 1..99 shared, or a positive multiple of 100 (whole GPUs)."""

VCUDA_MEMORY: Final = "tencent.com/vcuda-memory"
"""1 unit = 256 MiB of GPU memory. Required together with a shared core request."""

USAGE_DIR: Final = "/var/run/gpushare-usage"
"""Where a GPU pod's usage folder appears: read-write in its GPU containers (the vGPU hook
writes its usage file there), read-only in the accounting sidecar."""

CORE_UNITS_PER_GPU: Final = 100
MEMORY_UNIT_BYTES: Final = 256 * 1024 * 1024


def is_valid_core_units(units: int) -> bool:
    """A core request is 1..99 (a share of one GPU) or a positive multiple of 100 (whole GPUs)."""
    if units <= 0:
        return False
    return units < CORE_UNITS_PER_GPU or units % CORE_UNITS_PER_GPU == 0


def memory_bytes(units: int) -> int:
    """Bytes of GPU memory held by `units` of vcuda-memory."""
    return units * MEMORY_UNIT_BYTES
