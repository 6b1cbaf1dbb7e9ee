"""Every path by which a program reaches the driver ends in the hook: direct calls, dlsym,
cuGetProcAddress / _v2 (honouring version and the per-thread-default-stream flag), ctypes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.hook.conftest import Run, ToolRunner

DEFAULT, PER_THREAD = 0, 2
NOT_FOUND = 500
SUCCESS, SYMBOL_NOT_FOUND, VERSION_NOT_SUFFICIENT = 0, 1, 2


@pytest.mark.parametrize(
    ("symbol", "version", "flags", "expected_hook"),
    [
        pytest.param("cuMemAlloc", 12000, DEFAULT, "cuMemAlloc_v2", id="memalloc-v2"),
        pytest.param("cuMemAlloc", 12000, PER_THREAD, "cuMemAlloc_v2", id="memalloc-flag-no-ptsz"),
        pytest.param("cuMemFree", 12000, DEFAULT, "cuMemFree_v2", id="memfree"),
        pytest.param("cuMemGetInfo", 12000, DEFAULT, "cuMemGetInfo_v2", id="memgetinfo"),
        pytest.param("cuDeviceTotalMem", 12000, DEFAULT, "cuDeviceTotalMem_v2", id="totalmem"),
        pytest.param("cuMemAllocPitch", 12000, DEFAULT, "cuMemAllocPitch_v2", id="pitch"),
        pytest.param("cuMemAllocManaged", 12000, DEFAULT, "cuMemAllocManaged", id="managed"),
        pytest.param("cuMemCreate", 12000, DEFAULT, "cuMemCreate", id="memcreate"),
        pytest.param("cuMemRelease", 12000, DEFAULT, "cuMemRelease", id="memrelease"),
        pytest.param("cuArrayCreate", 12000, DEFAULT, "cuArrayCreate_v2", id="array"),
        pytest.param("cuArray3DCreate", 12000, DEFAULT, "cuArray3DCreate_v2", id="array3d"),
        pytest.param("cuMipmappedArrayCreate", 12000, DEFAULT, "cuMipmappedArrayCreate", id="mip"),
        pytest.param("cuMemAllocAsync", 12000, DEFAULT, "cuMemAllocAsync", id="async"),
        pytest.param("cuMemAllocAsync", 12000, PER_THREAD, "cuMemAllocAsync_ptsz", id="async-ptsz"),
        pytest.param(
            "cuMemAllocFromPoolAsync",
            12000,
            PER_THREAD,
            "cuMemAllocFromPoolAsync_ptsz",
            id="pool-ptsz",
        ),
        pytest.param(
            "cuMemFreeAsync", 12000, PER_THREAD, "cuMemFreeAsync_ptsz", id="freeasync-ptsz"
        ),
        pytest.param("cuLaunchKernel", 12000, DEFAULT, "cuLaunchKernel", id="launch"),
        pytest.param("cuLaunchKernel", 12000, PER_THREAD, "cuLaunchKernel_ptsz", id="launch-ptsz"),
        pytest.param("cuLaunchKernelEx", 12000, DEFAULT, "cuLaunchKernelEx", id="launchex"),
        pytest.param(
            "cuLaunchKernelEx", 12000, PER_THREAD, "cuLaunchKernelEx_ptsz", id="launchex-ptsz"
        ),
        pytest.param(
            "cuLaunchCooperativeKernel", 12000, DEFAULT, "cuLaunchCooperativeKernel", id="coop"
        ),
        pytest.param(
            "cuLaunchCooperativeKernel",
            12000,
            PER_THREAD,
            "cuLaunchCooperativeKernel_ptsz",
            id="coop-ptsz",
        ),
        pytest.param("cuGraphLaunch", 12000, DEFAULT, "cuGraphLaunch", id="graph"),
        pytest.param("cuGraphLaunch", 12000, PER_THREAD, "cuGraphLaunch_ptsz", id="graph-ptsz"),
        pytest.param(
            "cuGetProcAddress", 12000, DEFAULT, "cuGetProcAddress_v2", id="getproc-self-v2"
        ),
        pytest.param("cuGetProcAddress", 11030, DEFAULT, "cuGetProcAddress", id="getproc-self-v1"),
    ],
)
def test_get_proc_address_returns_the_hook(
    tool: ToolRunner, symbol: str, version: int, flags: int, expected_hook: str
) -> None:
    out = tool("proc", symbol, str(version), str(flags), GPUSHARE_MEMORY_LIMIT="1Gi").output
    assert (out["rc"], out["status"], out["hook"], out["stub"]) == (0, SUCCESS, expected_hook, None)


@pytest.mark.parametrize(
    ("symbol", "version", "flags", "expected_status", "expected_stub"),
    [
        pytest.param(
            "cuMemcpy3DPeer", 12000, DEFAULT, SYMBOL_NOT_FOUND, None, id="driver-lacks-it"
        ),
        pytest.param("cuNoSuchThing", 12000, PER_THREAD, SYMBOL_NOT_FOUND, None, id="unknown-name"),
        pytest.param(
            "cuMemAllocAsync", 11000, DEFAULT, VERSION_NOT_SUFFICIENT, None, id="version-too-old"
        ),
        pytest.param(
            "cuStreamSynchronize",
            12000,
            PER_THREAD,
            SUCCESS,
            "cuStreamSynchronize_ptsz",
            id="unhooked-ptsz",
        ),
        pytest.param("cuInit", 12000, DEFAULT, SUCCESS, "cuInit", id="unhooked-passes-through"),
    ],
)
def test_get_proc_address_passes_the_rest_through(
    tool: ToolRunner,
    symbol: str,
    version: int,
    flags: int,
    expected_status: int,
    expected_stub: str | None,
) -> None:
    out = tool("proc", symbol, str(version), str(flags)).output
    expected_rc = 0 if expected_status == SUCCESS else NOT_FOUND
    assert (out["rc"], out["status"], out["hook"], out["stub"]) == (
        expected_rc,
        expected_status,
        None,
        expected_stub,
    )
    assert out["null"] is (expected_status != SUCCESS)  # never a hook wrapped around NULL


@pytest.mark.parametrize(
    ("symbol", "expected_hook"),
    [
        pytest.param("cuMemAlloc_v2", "cuMemAlloc_v2", id="memalloc"),
        pytest.param("cuLaunchKernel_ptsz", "cuLaunchKernel_ptsz", id="launch-ptsz"),
        pytest.param("cuGetProcAddress_v2", "cuGetProcAddress_v2", id="getproc"),
        pytest.param("cuGraphLaunch", "cuGraphLaunch", id="graph"),
        pytest.param("cuMemGetInfo_v2", "cuMemGetInfo_v2", id="memgetinfo"),
    ],
)
def test_dlsym_returns_the_hook(tool: ToolRunner, symbol: str, expected_hook: str) -> None:
    out = tool("dlsym", symbol).output
    assert (out["null"], out["hook"], out["stub"]) == (False, expected_hook, None)


def test_dlsym_of_a_missing_symbol_stays_null(tool: ToolRunner) -> None:
    out = tool("dlsym", "cuMemcpy3DPeer_v9").output
    assert (out["null"], out["hook"]) == (True, None)


@pytest.mark.parametrize(
    ("via", "per_thread", "called"),
    [
        pytest.param("direct", "0", "cuLaunchKernel", id="direct"),
        pytest.param("dlsym", "0", "cuLaunchKernel", id="dlsym"),
        pytest.param("dlsym", "1", "cuLaunchKernel_ptsz", id="dlsym-ptsz"),
        pytest.param("proc", "0", "cuLaunchKernel", id="proc"),
        pytest.param("proc", "1", "cuLaunchKernel_ptsz", id="proc-per-thread-flag"),
    ],
)
@pytest.mark.parametrize("core_limit", ["50", "100"], ids=["core-limited", "core-unlimited"])
def test_each_path_launches_the_right_variant_and_enforces_memory(
    tool: ToolRunner, via: str, per_thread: str, called: str, core_limit: str
) -> None:
    out = tool(
        "call", via, per_thread, GPUSHARE_MEMORY_LIMIT="1Gi", GPUSHARE_CORE_LIMIT=core_limit
    ).output
    # Under a core limit the hook measures the (first) launch with events on the same stream,
    # recorded through the same legacy or per-thread variant as the launch itself.
    recorded = ""
    if core_limit == "50":
        recorded = "cuEventRecord_ptsz" if per_thread == "1" else "cuEventRecord"
    assert out == {"launch_rc": 0, "called": called, "last_record": recorded, "over_limit_rc": 2}


CTYPES_PROGRAM = """
import ctypes, json
cuda = ctypes.CDLL("libcuda.so.1")
nvml = ctypes.CDLL("libnvidia-ml.so.1")
dev, ctx = ctypes.c_int(), ctypes.c_void_p()
assert cuda.cuInit(0) == 0 and cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
assert cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0 and cuda.cuCtxSetCurrent(ctx) == 0
free, total = ctypes.c_size_t(), ctypes.c_size_t()
info_rc = cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total))
ptr = ctypes.c_uint64()
under = cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(total.value // 2))
over = cuda.cuMemAlloc_v2(ctypes.byref(ctypes.c_uint64()), ctypes.c_size_t(total.value // 2 + 1))
free2 = ctypes.c_size_t()
cuda.cuMemGetInfo_v2(ctypes.byref(free2), ctypes.byref(total))
freed = cuda.cuMemFree_v2(ptr)
class Memory(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in ("total", "free", "used")]
handle, memory = ctypes.c_void_p(), Memory()
assert nvml.nvmlInit_v2() == 0 and nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(handle)) == 0
nvml_rc = nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory))
print(json.dumps({"info_rc": info_rc, "total": total.value, "free": free.value, "under": under,
                  "over": over, "free_after_half": free2.value, "freed": freed,
                  "nvml_rc": nvml_rc, "nvml_total": memory.total}))
"""


def test_ctypes_program_sees_the_limit(python_under_hook: Callable[..., Run]) -> None:
    run = python_under_hook(CTYPES_PROGRAM, GPUSHARE_MEMORY_LIMIT="1Gi")
    gib, context = 1 << 30, 256 << 20
    assert run.output == {
        "info_rc": 0,
        "total": gib,
        "free": gib - context,
        "under": 0,
        "over": 2,
        "free_after_half": gib - context - gib // 2,
        "freed": 0,
        "nvml_rc": 0,
        "nvml_total": gib,
    }


def test_every_launch_entry_point_is_measured_through_its_own_variant(tool: ToolRunner) -> None:
    out = tool("variants", GPUSHARE_CORE_LIMIT="50").output
    expected = {}
    for base in (
        "cuLaunchKernel",
        "cuLaunchKernelEx",
        "cuLaunchCooperativeKernel",
        "cuGraphLaunch",
    ):
        expected[base] = {"rc": 0, "launched": base, "recorded": "cuEventRecord"}
        expected[f"{base}_ptsz"] = {
            "rc": 0,
            "launched": f"{base}_ptsz",
            "recorded": "cuEventRecord_ptsz",
        }
    assert out == expected


@pytest.mark.parametrize(
    ("symbol", "flags", "expected_hook"),
    [
        pytest.param("cuMemAlloc", DEFAULT, "cuMemAlloc_v2", id="memalloc"),
        pytest.param("cuLaunchKernel", DEFAULT, "cuLaunchKernel", id="launch"),
        pytest.param("cuLaunchKernel", PER_THREAD, "cuLaunchKernel_ptsz", id="launch-ptsz"),
    ],
)
def test_internal_driver_addresses_are_hooked_by_name(
    tool: ToolRunner, symbol: str, flags: int, expected_hook: str
) -> None:
    # A driver may hand out internal addresses that match none of its exported symbols.
    out = tool("proc", symbol, "12000", str(flags), GPUSHARE_STUB_INTERNAL_ENTRY_POINTS="1").output
    assert (out["rc"], out["hook"], out["stub"]) == (0, expected_hook, None)


def test_internal_driver_addresses_still_enforce_limits(tool: ToolRunner) -> None:
    out = tool(
        "call", "proc", "1", GPUSHARE_MEMORY_LIMIT="1Gi", GPUSHARE_STUB_INTERNAL_ENTRY_POINTS="1"
    ).output
    assert (out["called"], out["over_limit_rc"]) == ("cuLaunchKernel_ptsz", 2)


@pytest.mark.parametrize(
    ("symbol", "expected"),
    [
        # The hook is the next object after the program (it is preloaded): its function.
        pytest.param(
            "cuMemAlloc_v2", {"null": False, "hook": "cuMemAlloc_v2", "stub": None}, id="hooked"
        ),
        # The hook does not define cuInit: the driver's, found after the hook.
        pytest.param("cuInit", {"null": False, "hook": None, "stub": "cuInit"}, id="driver"),
        pytest.param("cuNoSuchThing", {"null": True, "hook": None, "stub": None}, id="missing"),
    ],
)
def test_dlsym_rtld_next_stays_relative_to_the_caller(
    tool: ToolRunner, symbol: str, expected: dict[str, object]
) -> None:
    assert tool("next", symbol).output == expected
