"""Settings: parsed once, every bad field reported together, named as the user wrote it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from timekeeper.errors import ConfigError
from timekeeper.settings import (
    ENV_NAMES,
    FIELD_NAMES,
    Settings,
    default_database_url,
    flag,
    parse_settings,
    settings_from_environment,
)


def test_defaults(tmp_path: Path) -> None:
    settings = parse_settings({"allow_unauthenticated_reports": "true"})
    assert settings == Settings(allow_unauthenticated_reports=True)
    assert settings.database == default_database_url()
    assert settings.database.endswith("/.local/state/gpushare/timekeeper.db")


def test_every_field_has_an_environment_variable() -> None:
    assert set(ENV_NAMES) == set(FIELD_NAMES)


def test_environment_is_parsed(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens: []\n")
    settings = settings_from_environment(
        {
            "GPUSHARE_DATABASE_URL": "postgresql://u@db/timekeeper",
            "GPUSHARE_TOKENS_FILE": str(tokens),
            "GPUSHARE_CLOCK_SKEW_SECONDS": "30",
            "GPUSHARE_READ_REQUIRES_TOKEN": "yes",
            "GPUSHARE_LOG_FORMAT": "JSON",
            "HOME": "/root",
        }
    )
    assert settings.database_url == "postgresql+psycopg://u@db/timekeeper"
    assert settings.tokens_path == tokens
    assert settings.clock_skew_seconds == 30.0
    assert settings.read_requires_token is True
    assert settings.log_format == "json"


def test_every_bad_field_is_reported_together() -> None:
    with pytest.raises(ConfigError) as error:
        settings_from_environment(
            {
                "GPUSHARE_DATABASE_URL": "mysql://x",
                "GPUSHARE_TOKENS_FILE": "/no/such/tokens.yaml",
                "GPUSHARE_CLOCK_SKEW_SECONDS": "-5",
                "GPUSHARE_MAX_INTERVAL_SECONDS": "a day",
                "GPUSHARE_READ_REQUIRES_TOKEN": "maybe",
                "GPUSHARE_JWKS_URL": "ftp://keys",
                "GPUSHARE_LOG_LEVEL": "loud",
            }
        )
    assert error.value.problems == [
        "GPUSHARE_DATABASE_URL: must be a sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
        "URL (got 'mysql://x')",
        "GPUSHARE_TOKENS_FILE: no such file (got '/no/such/tokens.yaml')",
        "GPUSHARE_JWKS_URL: must be an http:// or https:// URL (got 'ftp://keys')",
        "GPUSHARE_READ_REQUIRES_TOKEN: must be true or false (got 'maybe')",
        "GPUSHARE_CLOCK_SKEW_SECONDS: must be a number of seconds in 0..86400 (got '-5')",
        "GPUSHARE_MAX_INTERVAL_SECONDS: must be a number of seconds (got 'a day')",
        "GPUSHARE_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR (got 'loud')",
    ]


def test_reports_need_some_authentication() -> None:
    with pytest.raises(ConfigError) as error:
        parse_settings({}, label=flag)
    assert error.value.problems == [
        "--tokens: reports must be authenticated: give a tokens file, or a JWKS (--jwks-file, "
        "--jwks-url, --oidc-issuer, --oidc-discovery-url), or --allow-unauthenticated-reports for "
        "a demo (got none)"
    ]


def test_a_discovery_url_beside_a_jwks_file_is_refused(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    url = "https://kubernetes.default.svc/.well-known/openid-configuration"
    with pytest.raises(ConfigError) as error:
        parse_settings({"jwks_file": str(jwks), "oidc_discovery_url": url}, label=flag)
    assert error.value.problems == [
        "--oidc-discovery-url: a JWKS file is not fetched: give the issuer with --token-issuer "
        f"instead (got {url!r})"
    ]


def test_serve_command_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpushare",
            "timekeeper",
            "--tokens",
            str(tmp_path / "none"),
            "--clock-skew-seconds",
            "soon",
            "--port",
            "70000",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"gpushare timekeeper: --tokens: no such file (got '{tmp_path / 'none'}')",
        "gpushare timekeeper: --clock-skew-seconds: must be a number of seconds (got 'soon')",
    ]


def test_serve_command_refuses_a_bad_tokens_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens:\n  - {token: short, namespace: team-a}\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpushare",
            "timekeeper",
            "--tokens",
            str(tokens),
            "--database-url",
            f"sqlite:///{tmp_path / 'tk.db'}",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert (
        f"gpushare timekeeper: {tokens}: tokens[0].token: must be a string of at least 16 "
        "characters (got a string of 5 characters)" in done.stderr
    )


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        pytest.param(
            ["--database-url", "sqlite:///{tmp}/tokens.yaml"],
            1,
            "gpushare timekeeper: sqlite:///{tmp}/tokens.yaml is not a usable database: "
            "file is not a database",
            id="database-is-not-a-database",
        ),
        pytest.param(
            ["--database-url", "sqlite:///{tmp}/tk.db", "--metrics-dir", "/proc/no-such-dir"],
            2,
            "gpushare timekeeper: --metrics-dir: must be a folder this process can create and "
            "write (No such file or directory) (got '/proc/no-such-dir')",
            id="metrics-dir-cannot-be-created",
        ),
    ],
)
def test_serve_command_refuses_what_it_cannot_use_without_a_traceback(
    tmp_path: Path, extra: list[str], status: int, message: str
) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text('tokens:\n  - {token: "a-long-random-string", namespace: team-a}\n')
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpushare",
            "timekeeper",
            "--tokens",
            str(tokens),
            "--port",
            "0",
            *(arg.format(tmp=tmp_path) for arg in extra),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == status
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == message.format(tmp=tmp_path)


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        pytest.param(
            "clock_skew_seconds",
            "1e12",
            "--clock-skew-seconds: must be a number of seconds in 0..86400 (got '1e12')",
            id="skew-that-overflowed-every-report",
        ),
        pytest.param(
            "clock_skew_seconds",
            "nan",
            "--clock-skew-seconds: must be a number of seconds in 0..86400 (got 'nan')",
            id="skew-nan",
        ),
        pytest.param(
            "max_interval_seconds",
            "1e400",
            "--max-interval-seconds: must be a number of seconds in 1..3.16224e+07 (got '1e400')",
            id="interval-infinite",
        ),
        pytest.param(
            "max_interval_seconds",
            "0.5",
            "--max-interval-seconds: must be a number of seconds in 1..3.16224e+07 (got '0.5')",
            id="interval-below-a-second",
        ),
        pytest.param(
            "budgets_check_seconds",
            "-1",
            "--budgets-check-seconds: must be a number of seconds >= 0 (got '-1')",
            id="check-negative",
        ),
        pytest.param(
            "tokens_check_seconds",
            "soon",
            "--tokens-check-seconds: must be a number of seconds (got 'soon')",
            id="tokens-check-not-a-number",
        ),
    ],
)
def test_time_settings_are_bounded(name: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_settings({name: value, "allow_unauthenticated_reports": True}, label=flag)
    assert error.value.problems == [problem]


def test_the_largest_allowed_time_settings_still_take_reports() -> None:
    from datetime import UTC, datetime

    from tests.timekeeper.conftest import report_body
    from timekeeper.reports import check_timing, parse_report

    settings = parse_settings(
        {
            "clock_skew_seconds": "86400",
            "max_interval_seconds": str(366 * 86400),
            "allow_unauthenticated_reports": True,
        }
    )
    check_timing(
        parse_report(report_body()),
        now=datetime(8999, 12, 31, tzinfo=UTC),
        clock_skew_seconds=settings.clock_skew_seconds,
        max_interval_seconds=settings.max_interval_seconds,
    )


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        pytest.param(lambda path: None, "--tokens: no such file (got '{path}')", id="missing"),
        pytest.param(
            lambda path: path.mkdir(),
            "--tokens: must be a file, not a folder or a device (got '{path}')",
            id="a-folder",
        ),
    ],
)
def test_file_settings_say_what_is_wrong_with_the_path(
    tmp_path: Path, make: Any, problem: str
) -> None:
    path = tmp_path / "tokens.yaml"
    make(path)
    with pytest.raises(ConfigError) as error:
        parse_settings({"tokens_path": str(path)}, label=flag)
    assert error.value.problems == [problem.format(path=path)]
