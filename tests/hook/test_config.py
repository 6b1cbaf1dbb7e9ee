"""Configuration from the environment: limits logged once, garbage rejected with one clear
line and the hook failing closed."""

from __future__ import annotations

from pathlib import Path

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
        pytest.param(
            "GPUSHARE_MEMORY_LIMIT", "12XB", "positive whole number of bytes", id="memory-unit"
        ),
        pytest.param(
            "GPUSHARE_MEMORY_LIMIT", "1.5Gi", "positive whole number of bytes", id="memory-fraction"
        ),
        pytest.param(
            "GPUSHARE_MEMORY_LIMIT", "0", "positive whole number of bytes", id="memory-zero"
        ),
        pytest.param(
            "GPUSHARE_MEMORY_LIMIT_0", "lots", "positive whole number of bytes", id="memory-device"
        ),
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
        pytest.param("GPUSHARE_CORE_LIMIT_0", "5O", id="core-device-letter-o"),
        pytest.param("GPUSHARE_CORE_LIMIT", "50%%", id="core-two-percent-signs"),
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


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("4G", 4_000_000_000, id="G-is-10^9-as-in-kubernetes"),
        pytest.param("4GB", 4_000_000_000, id="GB"),
        pytest.param("4GiB", 4 << 30, id="GiB"),
        pytest.param("4Gi", 4 << 30, id="Gi"),
        pytest.param("4096Mi", 4 << 30, id="Mi"),
        pytest.param("4294967296", 4 << 30, id="bytes"),
    ],
)
def test_memory_units_mean_what_an_admin_means(tool: ToolRunner, value: str, expected: int) -> None:
    run = tool("info", GPUSHARE_MEMORY_LIMIT=value)
    assert run.log_lines("error:") == []
    assert run.output["total"] == expected
    assert f"memory {expected} bytes" in run.log_lines("limits:")[0]


def test_a_percent_sign_is_allowed(tool: ToolRunner) -> None:
    run = tool("info", GPUSHARE_CORE_LIMIT="50%", GPUSHARE_CORE_SOFT_LIMIT="80%")
    assert run.log_lines("error:") == []
    assert "core 50%, soft 80%" in run.log_lines("limits:")[0]


CONTEXT_REFUSED = {"error": "cuDevicePrimaryCtxRetain(&context, dev) failed: 2"}


@pytest.mark.parametrize(
    "problem", ["missing-parent", "world-writable", "symlink", "not-a-directory"]
)
def test_unusable_state_dir_fails_closed_with_one_line(
    tool: ToolRunner, tmp_path: Path, problem: str
) -> None:
    folder = tmp_path / "state"
    if problem == "missing-parent":
        folder = tmp_path / "missing" / "state"
    elif problem == "world-writable":
        folder.mkdir()
        folder.chmod(0o777)
    elif problem == "symlink":
        folder.mkdir()
        (folder / "vgpu.state").symlink_to(tmp_path / "elsewhere")
    else:
        folder.write_bytes(b"")
    run = tool(
        "info",
        GPUSHARE_MEMORY_LIMIT="2Gi",
        GPUSHARE_CORE_LIMIT="50",
        GPUSHARE_STATE_DIR=str(folder),
    )
    errors = run.log_lines("error:")
    assert len(errors) == 1, run.stderr
    assert "shared state unusable" in errors[0] and "failing closed" in errors[0]
    assert run.output == CONTEXT_REFUSED  # memory limit 0: not even a context
    assert "memory 0 bytes, core 1%" in run.log_lines("limits:")[0]


def test_state_file_is_not_writable_by_everyone(tool: ToolRunner, state_dir: Path) -> None:
    import os

    old = os.umask(0)
    try:
        tool("info", GPUSHARE_MEMORY_LIMIT="2Gi")
    finally:
        os.umask(old)
    assert (state_dir / "vgpu.state").stat().st_mode & 0o777 == 0o660
