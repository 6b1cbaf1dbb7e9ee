"""The build: the hook exports exactly the hooked symbols, and the pure policy passes its
C unit tests (limit policy, configuration parsing)."""

from __future__ import annotations

import subprocess
from pathlib import Path

HOOKED = {
    "cuGetProcAddress",
    "cuGetProcAddress_v2",
    "cuMemAlloc_v2",
    "cuMemAllocPitch_v2",
    "cuMemAllocManaged",
    "cuMemAllocAsync",
    "cuMemAllocAsync_ptsz",
    "cuMemAllocFromPoolAsync",
    "cuMemAllocFromPoolAsync_ptsz",
    "cuMemFreeAsync",
    "cuMemFreeAsync_ptsz",
    "cuMemFree_v2",
    "cuMemCreate",
    "cuMemRelease",
    "cuArrayCreate_v2",
    "cuArray3DCreate_v2",
    "cuArrayDestroy",
    "cuMipmappedArrayCreate",
    "cuMipmappedArrayDestroy",
    "cuMemGetInfo_v2",
    "cuDeviceTotalMem_v2",
    "cuLaunchKernel",
    "cuLaunchKernel_ptsz",
    "cuLaunchKernelEx",
    "cuLaunchKernelEx_ptsz",
    "cuLaunchCooperativeKernel",
    "cuLaunchCooperativeKernel_ptsz",
    "cuGraphLaunch",
    "cuGraphLaunch_ptsz",
    "cuStreamDestroy_v2",
    "cuStreamBeginCapture_v2",
    "cuStreamBeginCapture_v2_ptsz",
    "cuStreamEndCapture",
    "cuStreamEndCapture_ptsz",
    "cuCtxDestroy_v2",
    "cuCtxCreate_v2",
    "cuCtxCreate_v4",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuDevicePrimaryCtxReset_v2",
    "cuModuleLoadData",
    "cuModuleLoadDataEx",
    "cuModuleUnload",
    "cuMemMap",
    "cuMemUnmap",
    "cuMemPoolCreate",
    "cuMemPoolTrimTo",
    "cuMemPoolDestroy",
    "cuGraphAddMemAllocNode",
    "cuGraphInstantiateWithFlags",
    "cuDeviceGraphMemTrim",
    "cuGraphDestroy",
    "cuGraphExecDestroy",
    "nvmlDeviceGetMemoryInfo",
    "nvmlDeviceGetMemoryInfo_v2",
    "dlsym",
}


def exported_functions(library: Path) -> set[str]:
    listing = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], check=True, capture_output=True, text=True
    ).stdout
    return {line.split()[-1] for line in listing.splitlines() if line.strip()}


def test_hook_exports_only_hooked_symbols(hook_build: Path) -> None:
    assert exported_functions(hook_build / "libgpushare-vgpu.so") == HOOKED


def test_stub_driver_implements_every_hooked_cuda_symbol(hook_build: Path) -> None:
    stub = exported_functions(hook_build / "libcuda.so.1")
    assert {name for name in HOOKED if name.startswith("cu")} <= stub


def test_policy_unit_tests_pass(hook_build: Path) -> None:
    done = subprocess.run(
        [str(hook_build / "test_policy")], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout
    assert " 0 failures" in done.stdout


def test_real_dlsym_is_looked_up_under_every_architectures_glibc_version(hook_build: Path) -> None:
    # libc's dlsym has the version of glibc 2.34 or of the architecture's first glibc: looking
    # it up only under the x86-64 names would break every lookup on, e.g., aarch64 with glibc < 2.34
    text = (hook_build / "libgpushare-vgpu.so").read_bytes()
    for version in (b"GLIBC_2.34", b"GLIBC_2.2.5", b"GLIBC_2.17", b"GLIBC_2.27", b"GLIBC_2.0"):
        assert version + b"\0" in text
