"""Memory enforcement: sweeps, every allocation family, reporting, cross-process budget,
reclamation after SIGKILL, fork."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest

from tests.hook.conftest import ToolRunner, parse_lines, read_json_line

GIB = 1 << 30
CONTEXT = 256 << 20  # what a context takes on the model GPU (its default)
CUDA_SUCCESS = 0
CUDA_ERROR_OUT_OF_MEMORY = 2
CUDA_ERROR_INVALID_VALUE = 1


def test_allocation_sweep_returns_to_baseline(tool: ToolRunner) -> None:
    run = tool("sweep", GPUSHARE_MEMORY_LIMIT="1Gi")
    assert run.output["failures"] == []
    assert run.output["total"] == GIB
    assert run.output["steps"] > 90


@pytest.mark.parametrize(
    ("limit", "physical", "expected_total"),
    [
        pytest.param("1Gi", str(16 * GIB), GIB, id="limit-below-physical"),
        pytest.param("512Mi", str(16 * GIB), 512 << 20, id="limit-mebibytes"),
        pytest.param("64Gi", str(16 * GIB), 16 * GIB, id="limit-above-physical"),
    ],
)
def test_reporting_agrees_everywhere(
    tool: ToolRunner, limit: str, physical: str, expected_total: int
) -> None:
    run = tool("info", GPUSHARE_MEMORY_LIMIT=limit, GPUSHARE_STUB_MEMORY_BYTES=physical)
    out = run.output
    assert out["rc"] == CUDA_SUCCESS
    # the process's own context is charged: what is free is the rest
    free = expected_total - CONTEXT
    assert (out["total"], out["free"], out["device_total"]) == (
        expected_total,
        free,
        expected_total,
    )
    for nvml in ("nvml_v1", "nvml_v2"):
        assert out[nvml] == {"total": expected_total, "free": free, "used": CONTEXT}


def test_no_limit_reports_physical_memory(tool: ToolRunner) -> None:
    out = tool("info", GPUSHARE_STUB_MEMORY_BYTES=str(8 * GIB)).output
    assert (out["total"], out["free"], out["device_total"]) == (8 * GIB, 8 * GIB - CONTEXT, 8 * GIB)


def test_sweep_without_limit_matches_physical(tool: ToolRunner) -> None:
    run = tool("sweep", GPUSHARE_STUB_MEMORY_BYTES=str(GIB))
    assert run.output["failures"] == []


def test_every_allocation_family_is_charged(tool: ToolRunner) -> None:
    out = tool("kinds", str(2 * GIB), GPUSHARE_MEMORY_LIMIT="1Gi").output
    assert out["over"] == {
        name: CUDA_ERROR_OUT_OF_MEMORY
        for name in (
            "cuMemAlloc",
            "cuMemAllocManaged",
            "cuMemAllocAsync",
            "cuMemAllocFromPoolAsync",
            "cuMemAllocPitch",
            "cuMemCreate",
            "cuArrayCreate",
            "cuArray3DCreate",
            "cuMipmappedArrayCreate",
        )
    }
    under = out["under"]
    assert under.pop("pitch_charged") == under.pop("pitch_expected")
    assert under.pop("cuMemFree_unknown") == CUDA_ERROR_INVALID_VALUE  # forwarded to the driver
    assert set(under.values()) == {CUDA_SUCCESS}
    assert out["free_after"] == out["free_before"] == GIB - CONTEXT


def test_per_device_limit(tool: ToolRunner) -> None:
    variables = {
        "GPUSHARE_STUB_DEVICE_COUNT": "2",
        "GPUSHARE_MEMORY_LIMIT": "1Gi",
        "GPUSHARE_MEMORY_LIMIT_1": "3Gi",
    }
    device0 = tool("info", HOOKTOOL_DEVICE="0", **variables).output
    device1 = tool("info", HOOKTOOL_DEVICE="1", **variables).output
    assert (device0["total"], device0["nvml_v2"]["total"]) == (GIB, GIB)
    assert (device1["total"], device1["nvml_v2"]["total"]) == (3 * GIB, 3 * GIB)


def start_holder(spawn: Callable[..., Any], bytes_: int, wait: bool) -> Any:
    args = ["alloc", str(bytes_)] + (["wait"] if wait else [])
    return spawn(*args, GPUSHARE_MEMORY_LIMIT="2Gi")


def test_two_processes_at_once_exactly_one_gets_its_share(spawn: Callable[..., Any]) -> None:
    bytes_ = int(0.8 * GIB)  # two contexts (0.5 GiB) and one of these fit in 2 GiB; two do not
    first, second = (start_holder(spawn, bytes_, wait=True) for _ in range(2))
    assert read_json_line(first) == {"ready": True}
    assert read_json_line(second) == {"ready": True}
    for process in (first, second):
        process.stdin.write("go\n")
        process.stdin.flush()
    results = sorted([read_json_line(first)["rc"], read_json_line(second)["rc"]])
    assert results == [CUDA_SUCCESS, CUDA_ERROR_OUT_OF_MEMORY]


def test_memory_of_a_killed_process_is_reclaimed(
    spawn: Callable[..., Any], tool: ToolRunner
) -> None:
    holder = start_holder(spawn, GIB, wait=False)
    assert read_json_line(holder) == {"rc": CUDA_SUCCESS}
    held = tool("info", GPUSHARE_MEMORY_LIMIT="2Gi").output
    used = GIB + 2 * CONTEXT  # the holder's and this process's contexts
    assert held["free"] == 2 * GIB - used
    # NVML, asked by another process, agrees with cuMemGetInfo about the container's use
    for nvml in ("nvml_v1", "nvml_v2"):
        assert held[nvml] == {"total": 2 * GIB, "free": held["free"], "used": used}
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    after = start_holder(spawn, int(1.5 * GIB), wait=False)
    assert read_json_line(after) == {"rc": CUDA_SUCCESS}


def test_fork_neither_deadlocks_nor_double_counts(tool: ToolRunner) -> None:
    out = tool("fork", str(100 << 20), str(50 << 20), GPUSHARE_MEMORY_LIMIT="1Gi").output
    assert out["children_ok"] == out["children"] == 20
    assert out["parent_used"] == out["parent_bytes"]
    assert out["free_restored"] is True


def test_state_file_is_shared_and_versioned(tool: ToolRunner, state_dir: Any) -> None:
    tool("info", GPUSHARE_MEMORY_LIMIT="1Gi")
    state = (state_dir / "vgpu.state").read_bytes()
    assert state[:8] == (0x5441545355504733).to_bytes(8, "little")
    assert int.from_bytes(state[8:12], "little") == 2  # layout version
    assert int.from_bytes(state[12:16], "little") == len(state)


def test_foreign_state_file_fails_closed(tool: ToolRunner, state_dir: Any) -> None:
    state_dir.mkdir(parents=True)
    (state_dir / "vgpu.state").write_bytes(b"not a state file")
    run = tool("info", GPUSHARE_MEMORY_LIMIT="1Gi")
    errors = run.log_lines("shared state unusable")
    assert len(errors) == 1 and "state file of another layout version" in errors[0]
    assert run.output == {"error": "cuDevicePrimaryCtxRetain(&context, dev) failed: 2"}


MIB = 1 << 20


def pairs(out: dict[str, Any], *steps: str) -> list[tuple[int, int]]:
    """(free as cuMemGetInfo reports it, physical memory the model says the tenant holds)."""
    return [tuple(out[step]) for step in steps]  # type: ignore[misc]


def test_pool_keeps_freed_memory_charged_until_trimmed(tool: ToolRunner) -> None:
    out = tool("memcase", "pool", GPUSHARE_MEMORY_LIMIT="2Gi").output
    free0, truth0 = out["free0"], out["truth0"]
    held = (free0 - 256 * MIB, truth0 + 256 * MIB)
    # allocated, freed (the pool keeps it), reused from the pool: charged all along, as held
    assert pairs(out, "allocated", "freed", "reused") == [held] * 3
    assert pairs(out, "trimmed") == [(free0, truth0)]


def test_vmm_memory_is_charged_while_mapped_after_release(tool: ToolRunner) -> None:
    out = tool("memcase", "vmm", GPUSHARE_MEMORY_LIMIT="2Gi").output
    free0, truth0 = out["free0"], out["truth0"]
    held = (free0 - 256 * MIB, truth0 + 256 * MIB)
    assert pairs(out, "mapped", "released", "unmapped") == [held, held, (free0, truth0)]


def test_destroying_a_context_returns_its_overhead_and_allocations(tool: ToolRunner) -> None:
    out = tool("memcase", "context", GPUSHARE_MEMORY_LIMIT="2Gi").output
    free0, truth0 = out["free0"], out["truth0"]
    taken = CONTEXT + 300 * MIB
    assert pairs(out, "created", "destroyed") == [(free0 - taken, truth0 + taken), (free0, truth0)]


def test_module_images_are_charged(tool: ToolRunner) -> None:
    out = tool("memcase", "module", GPUSHARE_MEMORY_LIMIT="2Gi").output
    free0, truth0 = out["free0"], out["truth0"]
    images = 8 * MIB  # eight modules of the model's 1 MiB
    assert pairs(out, "loaded", "unloaded") == [(free0 - images, truth0 + images), (free0, truth0)]


def test_context_overhead_is_measured_when_nvml_knows_the_process_by_another_pid(
    tool: ToolRunner,
) -> None:
    run = tool("info", GPUSHARE_MEMORY_LIMIT="2Gi", GPUSHARE_STUB_PID_OFFSET="100000")
    assert run.output["free"] == 2 * GIB - CONTEXT  # measured, not the 512 MiB estimate


def test_context_overhead_is_refused_when_it_does_not_fit(tool: ToolRunner) -> None:
    out = tool("info", GPUSHARE_MEMORY_LIMIT="200Mi").output  # the estimate is 512 MiB
    assert out == {"error": "cuDevicePrimaryCtxRetain(&context, dev) failed: 2"}


def test_memory_of_an_unreaped_zombie_is_reclaimed(tool: ToolRunner) -> None:
    out = tool("memcase", "zombie", GPUSHARE_MEMORY_LIMIT="2Gi").output
    assert out["alloc_after_zombie"] == CUDA_SUCCESS


@pytest.mark.parametrize("mode", ["plain", "async", "vmm", "graph", "mixed"])
@pytest.mark.parametrize("processes", [1, 4, 8])
def test_physical_use_never_exceeds_the_limit(
    hook_build: Any,
    env_for: Callable[..., dict[str, str]],
    tmp_path: Any,
    mode: str,
    processes: int,
) -> None:
    env = env_for(GPUSHARE_MEMORY_LIMIT="2Gi", GPUSHARE_STUB_GPU=str(tmp_path / "gpu.model"))
    import subprocess

    command = [str(hook_build / "hooktool"), "stress", mode, "0.3"]
    running = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    reports = [parse_lines(p.communicate(timeout=30)[0])[-1] for p in running]
    worked = [r for r in reports if "peak" in r]  # the rest found no room for a context or module
    assert worked and all(r["granted"] > 0 for r in worked), reports
    if mode != "graph":  # a graph's memory is reused from launch to launch: it never fills up
        assert all(r["refused"] > 0 for r in worked), reports
    assert max(r["peak"] for r in worked) <= 2 * GIB, reports


def test_no_growth_after_ten_thousand_streams(tool: ToolRunner) -> None:
    out = tool("streams", "10000", GPUSHARE_CORE_LIMIT="50", timeout=60).output
    assert out["events"][1] - out["events"][0] <= 16, out  # events are pooled, not leaked
    assert out["rss_kib"][1] - out["rss_kib"][0] < 2048, out


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        pytest.param("1", [16 * GIB, GIB], id="cuda-0-is-nvml-1"),
        pytest.param("1,0", [3 * GIB, GIB], id="reordered"),
        pytest.param("0", [GIB, 16 * GIB], id="cuda-0-is-nvml-0"),
    ],
)
def test_nvml_devices_are_matched_to_cuda_devices_by_uuid(
    tool: ToolRunner, visible: str, expected: list[int]
) -> None:
    # CUDA device 0 is limited to 1 GiB, CUDA device 1 to 3 GiB; NVML numbers the machine's GPUs
    out = tool(
        "nvml",
        CUDA_VISIBLE_DEVICES=visible,
        GPUSHARE_STUB_DEVICE_COUNT="2",
        GPUSHARE_MEMORY_LIMIT_0="1Gi",
        GPUSHARE_MEMORY_LIMIT_1="3Gi",
    ).output
    assert out["totals"] == expected


def test_graph_memory_nodes_are_charged_until_trimmed(tool: ToolRunner) -> None:
    out = tool("memcase", "graphmem", GPUSHARE_MEMORY_LIMIT="2Gi").output
    free0, truth0 = out["free0"], out["truth0"]
    module = (free0 - MIB, truth0 + MIB)  # the graphs' kernel module
    held = (free0 - MIB - 512 * MIB, truth0 + MIB + 512 * MIB)
    assert pairs(out, "instantiated", "launched") == [module, held]
    assert (out["small_rc"], out["big_rc"]) == (CUDA_SUCCESS, CUDA_ERROR_OUT_OF_MEMORY)
    assert pairs(out, "refused", "trimmed") == [held, module]


def test_pool_allocations_are_charged_to_the_pools_device(tool: ToolRunner) -> None:
    out = tool(
        "memcase",
        "pooldevice",
        GPUSHARE_STUB_DEVICE_COUNT="2",
        GPUSHARE_MEMORY_LIMIT="2Gi",
    ).output
    assert (out["device0_taken"], out["device1_taken"]) == (0, 256 * MIB)
