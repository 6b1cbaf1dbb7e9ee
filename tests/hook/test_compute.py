"""Compute share on the simulated device: the container's kernels take the target share of
wall time (±3 points) for many tiny kernels without synchronisation, long kernels with
synchronisation, and CUDA graphs; the limiter sleeps instead of spinning.

The share asserted is the median of five 0.2 s windows: the test machines are shared, and a
stall of the test process (not of the limiter) would otherwise decide the outcome."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.hook.conftest import ToolRunner, parse_lines

MEASURE_SECONDS = "1.0"  # five windows of 0.2 s; the median window is asserted
WARMUP_SECONDS = "0.25"


@pytest.mark.parametrize("pattern", ["tiny", "long", "graph"])
@pytest.mark.parametrize("target", [10, 30, 50, 90])
def test_share_is_held_to_the_core_limit(tool: ToolRunner, pattern: str, target: int) -> None:
    out = tool(
        "share", pattern, MEASURE_SECONDS, WARMUP_SECONDS, GPUSHARE_CORE_LIMIT=str(target)
    ).output
    assert abs(out["median"] - target / 100) <= 0.03, out


@pytest.mark.parametrize(
    ("foreign_util", "expected"),
    [
        pytest.param("0", 0.60, id="idle-gpu-bursts-to-soft"),
        pytest.param("50", 0.30, id="busy-gpu-holds-hard"),
    ],
)
def test_burst_to_soft_limit_only_when_the_gpu_is_idle(
    tool: ToolRunner, foreign_util: str, expected: float
) -> None:
    out = tool(
        "share",
        "tiny",
        MEASURE_SECONDS,
        "0.4",
        GPUSHARE_CORE_LIMIT="30",
        GPUSHARE_CORE_SOFT_LIMIT="60",
        GPUSHARE_STUB_FOREIGN_UTIL=foreign_util,
    ).output
    assert abs(out["median"] - expected) <= 0.03, out


def test_threads_on_per_thread_default_streams_share_one_budget(tool: ToolRunner) -> None:
    out = tool("share", "threads", MEASURE_SECONDS, WARMUP_SECONDS, GPUSHARE_CORE_LIMIT="40").output
    assert abs(out["median"] - 0.40) <= 0.03, out


def test_processes_of_a_container_share_one_budget(
    hook_build: Path, env_for: Callable[..., dict[str, str]]
) -> None:
    env = env_for(GPUSHARE_CORE_LIMIT="50")
    command = [str(hook_build / "hooktool"), "share", "tiny", MEASURE_SECONDS, WARMUP_SECONDS]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    shares = [parse_lines(p.communicate(timeout=30)[0])[-1]["median"] for p in processes]
    assert abs(sum(shares) - 0.50) <= 0.03, shares


@pytest.mark.parametrize("pattern", ["tiny", "long"])
def test_throttling_never_busy_spins(
    hook_build: Path, env_for: Callable[..., dict[str, str]], pattern: str
) -> None:
    started = time.monotonic()
    process = subprocess.Popen(
        [str(hook_build / "hooktool"), "share", pattern, MEASURE_SECONDS, "0.1"],
        env=env_for(GPUSHARE_CORE_LIMIT="10"),
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = status
    wall = time.monotonic() - started
    cpu = usage.ru_utime + usage.ru_stime
    assert status == 0
    assert cpu < 0.25 * wall, f"{cpu:.3f} s of CPU in {wall:.3f} s of wall time"
