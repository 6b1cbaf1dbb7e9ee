"""`gpushare nodemanager` flags with garbage values: each named with the value and the rule."""

from __future__ import annotations

import pytest
from nodemanager.settings import SettingsError

from tests.nodemanager.test_cli import parse


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["--simulate-gpus", "3x0"],
            "--simulate-gpus: expected COUNTxSIZE with SIZE in MiB, GiB or TiB, e.g. 2x16GiB"
            " (got '3x0')",
            id="simulate-size-without-unit",
        ),
        pytest.param(
            ["--simulate-gpus", "3x0MiB"],
            "--simulate-gpus: GPU memory must be at least 256MiB (got '3x0MiB')",
            id="simulate-zero-memory",
        ),
        pytest.param(
            ["--simulate-gpus=-2x16GiB"],
            "--simulate-gpus: expected COUNTxSIZE with SIZE in MiB, GiB or TiB, e.g. 2x16GiB"
            " (got '-2x16GiB')",
            id="simulate-negative-count",
        ),
        pytest.param(
            ["--simulate-gpus", "65x16GiB"],
            "--simulate-gpus: GPU count must be 1..64 (got '65x16GiB')",
            id="simulate-too-many",
        ),
        pytest.param(
            ["--health-interval", "nan"],
            "--health-interval: must be a finite number of seconds (got 'nan')",
            id="health-interval-nan",
        ),
        pytest.param(
            ["--reconcile-interval", "inf"],
            "--reconcile-interval: must be a finite number of seconds (got 'inf')",
            id="reconcile-interval-infinite",
        ),
        pytest.param(
            ["--release-grace", "-1"],
            "--release-grace: must be at least 0 (got '-1')",
            id="release-grace-negative",
        ),
        pytest.param(
            ["--port=-1"], "--port: must be an integer 0..65535 (got '-1')", id="port-negative"
        ),
    ],
)
def test_garbage_flag_values_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse(["--node-name", "n", *argv])
    assert str(info.value) == f"invalid nodemanager settings:\n  {message}"
