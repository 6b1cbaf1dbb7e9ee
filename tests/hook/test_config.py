"""Configuration from the environment: limits logged once, garbage rejected with one clear
line and the hook failing closed."""

from __future__ import annotations

import pytest

from tests.hook.conftest import ToolRunner


def test_effective_limits_are_logged_once(tool: ToolRunner) -> None:
    run = tool("info", GPUSHARE_MEMORY_LIMIT="2Gi", GPUSHARE_CORE_LIMIT="30")
    lines = run.log_lines("limits:")
    assert len(lines) == 1
    assert "memory 2147483648 bytes, core 30%" in lines[0]
    assert lines[0].startswith("gpushare-vgpu[")


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        pytest.param("GPUSHARE_MEMORY_LIMIT", "12XB", "positive byte count", id="memory-unit"),
        pytest.param("GPUSHARE_MEMORY_LIMIT", "1.5Gi", "positive byte count", id="memory-fraction"),
        pytest.param("GPUSHARE_MEMORY_LIMIT", "0", "positive byte count", id="memory-zero"),
        pytest.param("GPUSHARE_MEMORY_LIMIT_0", "lots", "positive byte count", id="memory-device"),
    ],
)
def test_garbage_memory_limit_fails_closed(
    tool: ToolRunner, name: str, value: str, rule: str
) -> None:
    info = tool("info", **{name: value})
    errors = info.log_lines("error:")
    assert len(errors) == 1
    assert f'{name}="{value}" rejected' in errors[0] and rule in errors[0]
    assert "fail closed" in errors[0]
    # 0 bytes: not even a context fits (CUDA_ERROR_OUT_OF_MEMORY)
    assert info.output == {"error": "cuDevicePrimaryCtxRetain(&context, dev) failed: 2"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("GPUSHARE_CORE_LIMIT", "abc", id="core-text"),
        pytest.param("GPUSHARE_CORE_LIMIT", "0", id="core-zero"),
        pytest.param("GPUSHARE_CORE_LIMIT", "150", id="core-over-100"),
        pytest.param("GPUSHARE_CORE_LIMIT_0", "50%", id="core-device-percent-sign"),
    ],
)
def test_garbage_core_limit_fails_closed_to_one_percent(
    tool: ToolRunner, name: str, value: str
) -> None:
    run = tool("info", **{name: value})
    errors = run.log_lines("error:")
    assert len(errors) == 1
    assert f'{name}="{value}" rejected' in errors[0] and "using 1 (fail closed)" in errors[0]
    assert "core 1%" in run.log_lines("limits:")[0]


def test_soft_limit_below_core_limit_is_rejected(tool: ToolRunner) -> None:
    run = tool("info", GPUSHARE_CORE_LIMIT="50", GPUSHARE_CORE_SOFT_LIMIT="40")
    errors = run.log_lines("error:")
    assert len(errors) == 1 and "must not be below the core limit" in errors[0]
    assert "core 50%, soft 50%" in run.log_lines("limits:")[0]
