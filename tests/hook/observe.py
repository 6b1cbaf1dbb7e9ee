"""The shared-GPU model's ground truth over time, sampled by a process without the hook.

    python -m tests.hook.observe MODEL TENANTS PERIOD_MS SECONDS

Prints one JSON line per sample: `{"t": CLOCK_MONOTONIC ns, "busy": ns the device was busy so
far, "sm": [SM-time ns each tenant received so far]}`. The stub driver is loaded directly, so
nothing here goes through the hook.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
from pathlib import Path

BUILD = Path(__file__).resolve().parents[2] / "vgpu-runtime" / "hook" / "build"


def main(model: str, tenants: int, period_ms: int, seconds: float) -> None:
    os.environ["GPUSHARE_STUB_GPU"] = model
    stub = ctypes.CDLL(str(BUILD / "libcuda.so.1"))
    stub.gpushareStubTenantSmNs.restype = ctypes.c_int64
    stub.gpushareStubTenantSmNs.argtypes = [ctypes.c_int, ctypes.c_int]
    stub.gpushareStubBusyNs.restype = ctypes.c_int64
    stub.gpushareStubBusyNs.argtypes = [ctypes.c_int]
    end = time.monotonic_ns() + int(seconds * 1e9)
    next_at = time.monotonic_ns()
    while next_at < end:
        sm = [stub.gpushareStubTenantSmNs(tenant, 0) for tenant in range(tenants)]
        busy = stub.gpushareStubBusyNs(0)
        print(json.dumps({"t": time.monotonic_ns(), "busy": busy, "sm": sm}), flush=True)
        next_at += period_ms * 1_000_000
        time.sleep(max(0.0, (next_at - time.monotonic_ns()) / 1e9))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
