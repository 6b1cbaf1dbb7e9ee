"""The usage file the hook writes for the pod's sidecar (format `gpushare.io/usage/v1`), read
with the sidecar's own parser and compared with the shared-GPU model's ground truth: the SM time
the container's tenant really received, never what the hook charged."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sidecar.usage_files import UsageFile, parse_usage_file
from tests.hook.conftest import ToolRunner, hook_environment, parse_lines, read_json_line
from tests.polling import wait_until

MIB = 1 << 20


def busy_tolerance_ns(elapsed_ns: int) -> float:
    """NVML gives per-process utilisation in whole percents of each reading's window, rounded:
    at most half a point of the elapsed time in all; one point, plus 5 ms for the last
    reading's edge, leaves room for the machine's own stalls."""
    return 0.01 * elapsed_ns + 5e6


def read_usage(path: Path) -> UsageFile:
    return parse_usage_file(path.read_bytes())


def usage_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    return {
        "GPUSHARE_USAGE_DIR": str(tmp_path / "usage"),
        "GPUSHARE_ALLOCATION_ID": "alloc-1",
        "GPUSHARE_STUB_GPU": str(tmp_path / "gpu.model"),
        **variables,
    }


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param({"GPUSHARE_CORE_LIMIT": "50", "GPUSHARE_MEMORY_LIMIT": "4Gi"}, id="limited"),
        pytest.param({"GPUSHARE_MEMORY_LIMIT": "4Gi"}, id="whole-gpu-time"),
        pytest.param({}, id="no-limits"),
    ],
)
def test_busy_time_is_the_gpu_time_the_container_received(
    tool: ToolRunner, tmp_path: Path, limits: dict[str, str]
) -> None:
    (tmp_path / "usage").mkdir()
    # 2 ms of kernel every 10 ms for 2 s: a fifth of the GPU
    run = tool("pace", "2000", "10000", "2000", str(64 * MIB), **usage_env(tmp_path, **limits))
    assert run.returncode == 0, run.stderr
    start, end = run.outputs
    truth = end["sm_ns"] - start["sm_ns"]
    assert abs(truth / (end["at_ns"] - start["at_ns"]) - 0.2) < 0.05, run.outputs
    usage = read_usage(tmp_path / "usage" / "alloc-1.json")
    (device,) = usage.devices
    assert device.index == 0
    assert abs(device.busy_nanoseconds - truth) <= busy_tolerance_ns(
        end["at_ns"] - start["at_ns"]
    ), (device, truth)
    assert usage.monotonic_nanoseconds >= end["at_ns"]  # written at exit
    assert [p.name for p in (tmp_path / "usage").iterdir()] == ["alloc-1.json"]  # no temp left


def test_rewritten_at_least_once_a_second_with_the_memory_held(
    hook_build: Path, tmp_path: Path
) -> None:
    (tmp_path / "usage").mkdir()
    env = hook_environment(
        hook_build,
        tmp_path / "state",
        **usage_env(tmp_path, GPUSHARE_CORE_LIMIT="50", GPUSHARE_MEMORY_LIMIT="4Gi"),
    )
    path = tmp_path / "usage" / "alloc-1.json"
    process = subprocess.Popen(
        [str(hook_build / "hooktool"), "pace", "1000", "10000", "4000", str(512 * MIB)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(path.exists, timeout=10, what="the usage file appears")
        # the held allocation (plus the context's and module's own memory) is counted from
        # the first rewrite after the program allocated it
        wait_until(
            lambda: read_usage(path).devices[0].memory_used_bytes >= 512 * MIB,
            timeout=2,
            what="the allocation in the usage file",
        )
        first = read_usage(path)
        stamp = first.monotonic_nanoseconds
        for _ in range(3):  # each rewrite comes within a second of the one before
            before = stamp
            wait_until(
                lambda before=before: read_usage(path).monotonic_nanoseconds != before,
                timeout=1.0,
                what="the usage file rewritten",
            )
            stamp = read_usage(path).monotonic_nanoseconds
            assert 0 < stamp - before <= 1_000_000_000
    finally:
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


def test_one_writer_per_container_and_a_successor_when_it_is_killed(
    hook_build: Path, tmp_path: Path
) -> None:
    # two processes of one container (one state folder, one tenant in the model): the first
    # holds the file; when it is killed (SIGKILL: no exit handler), the other takes over
    # within a period, and the file counts the GPU time of both
    (tmp_path / "usage").mkdir()
    env = hook_environment(
        hook_build,
        tmp_path / "state",
        **usage_env(tmp_path, GPUSHARE_CORE_LIMIT="60", GPUSHARE_MEMORY_LIMIT="4Gi"),
    )
    path = tmp_path / "usage" / "alloc-1.json"

    def start(ms: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(hook_build / "hooktool"), "pace", "2000", "10000", str(ms), "0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    first = start(10_000)
    second = None
    try:
        began = read_json_line(first)["at_ns"]
        wait_until(path.exists, timeout=10, what="the first process writes the file")
        second = start(2500)
        read_json_line(second)
        first.kill()
        first.wait(timeout=10)
        killed = read_usage(path).monotonic_nanoseconds
        wait_until(
            lambda: read_usage(path).monotonic_nanoseconds > killed + 100_000_000,
            timeout=1.5,
            what="the second process taking the file over",
        )
        out, err = second.communicate(timeout=30)
        assert second.returncode == 0, err
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    end = parse_lines(out)[-1]
    (device,) = read_usage(path).devices
    # the tenant's total, from zero: both processes' kernels
    assert abs(device.busy_nanoseconds - end["sm_ns"]) <= busy_tolerance_ns(end["at_ns"] - began), (
        device,
        end,
    )
    assert [p.name for p in (tmp_path / "usage").iterdir()] == ["alloc-1.json"]


def test_a_missing_folder_costs_one_log_line_not_the_application(
    tool: ToolRunner, tmp_path: Path
) -> None:
    run = tool(
        "pace", "1000", "10000", "1500", "0", **usage_env(tmp_path, GPUSHARE_CORE_LIMIT="50")
    )
    assert run.returncode == 0 and len(run.outputs) == 2, run.stderr
    lines = run.log_lines("usage file")
    assert len(lines) == 1 and "No such file or directory" in lines[0], run.stderr


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        ("GPUSHARE_ALLOCATION_ID", "../escape", "letters, digits"),
        ("GPUSHARE_ALLOCATION_ID", ".hidden", "not starting with '.'"),
        ("GPUSHARE_USAGE_DIR", "relative/usage", "absolute path"),
    ],
)
def test_a_bad_name_or_folder_means_no_usage_file(
    tool: ToolRunner, tmp_path: Path, name: str, value: str, rule: str
) -> None:
    (tmp_path / "usage").mkdir()
    env = usage_env(tmp_path, GPUSHARE_CORE_LIMIT="50")
    env[name] = value
    run = tool("pace", "1000", "10000", "300", "0", **env)
    assert run.returncode == 0, run.stderr
    (line,) = run.log_lines(f"{name}=")
    assert rule in line and "no usage file" in line, line
    assert list((tmp_path / "usage").iterdir()) == []
    # the limits are not affected by a bad usage setting
    (limits,) = run.log_lines("limits:")
    assert "core 50%" in limits
