"""The charge model: what a pod's GPU time costs its namespace's budget."""

from gpushare.resources import CORE_UNITS_PER_GPU, memory_bytes


def gpu_seconds(vcuda_core: int, wall_seconds: float) -> float:
    """GPU-seconds = (vcuda-core / 100) x wall-clock seconds the pod holds the GPU."""
    return vcuda_core / CORE_UNITS_PER_GPU * wall_seconds


def memory_byte_seconds(vcuda_memory: int, wall_seconds: float) -> float:
    """Byte-seconds of GPU memory held, recorded beside the charge (not charged)."""
    return memory_bytes(vcuda_memory) * wall_seconds


def gpus_spanned(vcuda_core: int) -> int:
    """How many GPUs a pod's core total touches: one for a share, n for n whole GPUs."""
    return max(1, -(-vcuda_core // CORE_UNITS_PER_GPU))


def used_gpu_seconds(vcuda_core: int, sm_utilization: float, wall_seconds: float) -> float:
    """GPU-seconds the pod really used, from a report's measured `smUtilization`.

    `smUtilization` is the average busy share per GPU the pod holds, so the GPU time used is
    that share x the GPUs it spans x the wall-clock seconds. It is not capped at the
    allocation: a pod allowed to burst above its share can use more than it is charged.
    """
    return sm_utilization * gpus_spanned(vcuda_core) * wall_seconds
