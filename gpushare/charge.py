"""The charge model: what a pod's GPU time costs its namespace's budget."""

from gpushare.resources import CORE_UNITS_PER_GPU, memory_bytes


def gpu_seconds(vcuda_core: int, wall_seconds: float) -> float:
    """GPU-seconds = (vcuda-core / 100) x wall-clock seconds the pod holds the GPU."""
    return vcuda_core / CORE_UNITS_PER_GPU * wall_seconds


def memory_byte_seconds(vcuda_memory: int, wall_seconds: float) -> float:
    """Byte-seconds of GPU memory held, recorded beside the charge (not charged)."""
    return memory_bytes(vcuda_memory) * wall_seconds
