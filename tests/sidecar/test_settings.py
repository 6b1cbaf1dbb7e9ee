from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.errors import SettingsError
from sidecar.settings import (
    DEFAULT_SPOOL_DIR,
    DEFAULT_TOKEN_FILE,
    Settings,
    from_environ,
    preflight,
)

UID = "0b3c8a4e-6f0d-4d9e-9b1a-2f6c1e8d7a55"
REQUIRED = {
    "GPUSHARE_TIMEKEEPER_URL": "http://timekeeper.gpushare-system:8080/",
    "GPUSHARE_POD_NAME": "train-0",
    "GPUSHARE_POD_NAMESPACE": "team-a",
    "GPUSHARE_POD_UID": UID,
    "GPUSHARE_VCUDA_CORE": "50",
    "GPUSHARE_VCUDA_MEMORY": "15",
}


def test_the_webhook_environment_alone_gives_the_documented_defaults() -> None:
    assert from_environ(REQUIRED) == Settings(
        timekeeper_url="http://timekeeper.gpushare-system:8080",
        pod_name="train-0",
        pod_namespace="team-a",
        pod_uid=UID,
        vcuda_core=50,
        vcuda_memory=15,
        token_file=DEFAULT_TOKEN_FILE,
        token="",
        report_interval_seconds=15.0,
        spool_dir=DEFAULT_SPOOL_DIR,
        spool_max_intervals=2048,
        shutdown_deadline_seconds=10.0,
        http_timeout_seconds=5.0,
        backoff_initial_seconds=1.0,
        backoff_max_seconds=60.0,
        rejected_attempts=3,
        auth_grace_seconds=3600.0,
        resume_window_seconds=600.0,
        nvml="auto",
        proc_root="/proc",
        ca_file="",
        log_format="json",
        log_level="INFO",
    )


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        pytest.param(
            {"GPUSHARE_REPORT_INTERVAL_SECONDS": "0.2"},
            "report_interval_seconds",
            0.2,
            id="fractional-period",
        ),
        pytest.param({"GPUSHARE_TOKEN": " static \n"}, "token", "static", id="static-token"),
        pytest.param({"GPUSHARE_VCUDA_CORE": "150"}, "vcuda_core", 150, id="core-summed-150"),
        pytest.param({"GPUSHARE_VCUDA_MEMORY": "0"}, "vcuda_memory", 0, id="memory-0-whole-gpu"),
        pytest.param({"GPUSHARE_LOG_LEVEL": "debug"}, "log_level", "DEBUG", id="level-any-case"),
        pytest.param(
            {"GPUSHARE_SPOOL_MAX_INTERVALS": ""}, "spool_max_intervals", 2048, id="empty-is-unset"
        ),
        pytest.param({"GPUSHARE_POD_UID": UID.upper()}, "pod_uid", UID, id="uid-lowercased"),
    ],
)
def test_accepted_values(changes: dict[str, str], field: str, value: object) -> None:
    assert getattr(from_environ({**REQUIRED, **changes}), field) == value


@pytest.mark.parametrize(
    ("changes", "problems"),
    [
        pytest.param(
            {"GPUSHARE_POD_NAMESPACE": ""},
            [
                "GPUSHARE_POD_NAMESPACE: required, must be a DNS label (lowercase letters, digits, "
                "'-'; at most 63) (got nothing)"
            ],
            id="namespace-missing",
        ),
        pytest.param(
            {"GPUSHARE_TIMEKEEPER_URL": "timekeeper:8080"},
            [
                "GPUSHARE_TIMEKEEPER_URL: must be an http:// or https:// URL with a host and no "
                "query (got 'timekeeper:8080')"
            ],
            id="url-without-scheme",
        ),
        pytest.param(
            {"GPUSHARE_TIMEKEEPER_URL": "http://tk:99999"},
            [
                "GPUSHARE_TIMEKEEPER_URL: must be an http:// or https:// URL with a host and no "
                "query (got 'http://tk:99999')"
            ],
            id="url-bad-port",
        ),
        pytest.param(
            {"GPUSHARE_POD_UID": "not-a-uid", "GPUSHARE_POD_NAME": "Train_0"},
            [
                "GPUSHARE_POD_NAME: must be a DNS subdomain (lowercase letters, digits, '-', '.'; "
                "at most 253) (got 'Train_0')",
                "GPUSHARE_POD_UID: must be a UUID such as 0b3c8a4e-6f0d-4d9e-9b1a-2f6c1e8d7a55 "
                "(got 'not-a-uid')",
            ],
            id="name-and-uid-both-reported",
        ),
        pytest.param(
            {"GPUSHARE_VCUDA_CORE": "0", "GPUSHARE_VCUDA_MEMORY": "-1"},
            [
                "GPUSHARE_VCUDA_CORE: must be a whole number of vcuda-core units in 1..100000 "
                "(1 = 1 % of a GPU) (got '0')",
                "GPUSHARE_VCUDA_MEMORY: must be a whole number of vcuda-memory units in "
                "0..1000000 (1 = 256 MiB) (got '-1')",
            ],
            id="core-0-memory-negative",
        ),
        pytest.param(
            # The timekeeper refuses these in every report: every interval would be moved to
            # rejected/ and the pod's time go uncharged. Refused at start instead.
            {"GPUSHARE_VCUDA_CORE": "100001", "GPUSHARE_VCUDA_MEMORY": "1000001"},
            [
                "GPUSHARE_VCUDA_CORE: must be a whole number of vcuda-core units in 1..100000 "
                "(1 = 1 % of a GPU) (got '100001')",
                "GPUSHARE_VCUDA_MEMORY: must be a whole number of vcuda-memory units in "
                "0..1000000 (1 = 256 MiB) (got '1000001')",
            ],
            id="core-memory-beyond-what-the-timekeeper-takes",
        ),
        pytest.param(
            {"GPUSHARE_VCUDA_CORE": "1.5", "GPUSHARE_VCUDA_MEMORY": "1e3"},
            [
                "GPUSHARE_VCUDA_CORE: must be a whole number of vcuda-core units in 1..100000 "
                "(1 = 1 % of a GPU) (got '1.5')",
                "GPUSHARE_VCUDA_MEMORY: must be a whole number of vcuda-memory units in "
                "0..1000000 (1 = 256 MiB) (got '1e3')",
            ],
            id="core-memory-not-whole",
        ),
        pytest.param(
            {"GPUSHARE_REPORT_INTERVAL_SECONDS": "1e-300"},
            [
                "GPUSHARE_REPORT_INTERVAL_SECONDS: must be a number of seconds in [0.05, 3600] "
                "(got '1e-300')"
            ],
            id="period-so-short-the-loop-spins",
        ),
        pytest.param(
            {"GPUSHARE_VCUDA_CORE": "\u0665\u0660", "GPUSHARE_SPOOL_MAX_INTERVALS": "2_048"},
            [
                "GPUSHARE_VCUDA_CORE: must be a whole number of vcuda-core units in 1..100000 "
                "(1 = 1 % of a GPU) (got '\u0665\u0660')",
                "GPUSHARE_SPOOL_MAX_INTERVALS: must be a whole number >= 2 (got '2_048')",
            ],
            id="whole-numbers-in-ascii-digits-only",
        ),
        pytest.param(
            {"GPUSHARE_POD_NAME": "train..0"},
            [
                "GPUSHARE_POD_NAME: must be a DNS subdomain (lowercase letters, digits, '-', '.'; "
                "at most 253) (got 'train..0')"
            ],
            id="pod-name-empty-label",
        ),
        pytest.param(
            {"GPUSHARE_POD_NAME": "train.-0"},
            [
                "GPUSHARE_POD_NAME: must be a DNS subdomain (lowercase letters, digits, '-', '.'; "
                "at most 253) (got 'train.-0')"
            ],
            id="pod-name-label-starting-with-dash",
        ),
        pytest.param(
            {"GPUSHARE_TOKEN": "a-long-random\nstring"},
            [
                "GPUSHARE_TOKEN: must be printable ASCII without spaces or line breaks (a bearer "
                "token) (got a value of 20 characters)"
            ],
            id="token-with-a-line-break-not-printed",
        ),
        pytest.param(
            {"GPUSHARE_TOKEN": "a-long random-string"},
            [
                "GPUSHARE_TOKEN: must be printable ASCII without spaces or line breaks (a bearer "
                "token) (got a value of 20 characters)"
            ],
            id="token-with-a-space",
        ),
        pytest.param(
            {"GPUSHARE_TOKEN": "a-long-randomé-string"},
            [
                "GPUSHARE_TOKEN: must be printable ASCII without spaces or line breaks (a bearer "
                "token) (got a value of 21 characters)"
            ],
            id="token-not-ascii",
        ),
        pytest.param(
            {"GPUSHARE_REPORT_INTERVAL_SECONDS": "nan"},
            [
                "GPUSHARE_REPORT_INTERVAL_SECONDS: must be a number of seconds in [0.05, 3600] "
                "(got 'nan')"
            ],
            id="period-nan",
        ),
        pytest.param(
            {"GPUSHARE_SPOOL_MAX_INTERVALS": "1"},
            ["GPUSHARE_SPOOL_MAX_INTERVALS: must be a whole number >= 2 (got '1')"],
            id="spool-bound-1",
        ),
        pytest.param(
            {"GPUSHARE_BACKOFF_INITIAL_SECONDS": "10", "GPUSHARE_BACKOFF_MAX_SECONDS": "5"},
            [
                "GPUSHARE_BACKOFF_MAX_SECONDS: must be a number of seconds in (0, 3600], not below "
                "GPUSHARE_BACKOFF_INITIAL_SECONDS (got '5')"
            ],
            id="backoff-cap-below-initial",
        ),
        pytest.param(
            {"GPUSHARE_AUTH_GRACE_SECONDS": "-1"},
            ["GPUSHARE_AUTH_GRACE_SECONDS: must be a number of seconds in [0, 604800] (got '-1')"],
            id="auth-grace-negative",
        ),
        pytest.param(
            {"GPUSHARE_AUTH_GRACE_SECONDS": "nan"},
            ["GPUSHARE_AUTH_GRACE_SECONDS: must be a number of seconds in [0, 604800] (got 'nan')"],
            id="auth-grace-nan",
        ),
        pytest.param(
            {"GPUSHARE_SPOOL_DIR": "spool", "GPUSHARE_TOKEN_FILE": "token"},
            [
                "GPUSHARE_TOKEN_FILE: must be an absolute path (got 'token')",
                "GPUSHARE_SPOOL_DIR: must be an absolute path (got 'spool')",
            ],
            id="relative-paths",
        ),
        pytest.param(
            {"GPUSHARE_NVML": "on", "GPUSHARE_LOG_FORMAT": "xml"},
            [
                "GPUSHARE_NVML: must be one of auto, off (got 'on')",
                "GPUSHARE_LOG_FORMAT: must be one of json, text (got 'xml')",
            ],
            id="enums",
        ),
    ],
)
def test_every_bad_variable_is_reported_together(
    changes: dict[str, str], problems: list[str]
) -> None:
    with pytest.raises(SettingsError) as error:
        from_environ({**REQUIRED, **changes})
    assert error.value.problems == problems
    assert str(error.value).startswith("invalid sidecar environment:\n  ")


def test_preflight_checks_the_token_file_and_the_spool(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "blocker").write_text("a file where the spool directory should be")
    settings = from_environ(
        {
            **REQUIRED,
            "GPUSHARE_TOKEN_FILE": str(tmp_path / "empty"),
            "GPUSHARE_SPOOL_DIR": str(tmp_path / "blocker" / "spool"),
        }
    )
    assert preflight(settings) == [
        f"GPUSHARE_TOKEN_FILE: must hold a token, the file is empty (got '{tmp_path}/empty')",
        "GPUSHARE_SPOOL_DIR: must be a directory the sidecar can create, Not a directory "
        f"(got '{tmp_path}/blocker/spool')",
    ]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(
            b"header.payload\nsignature",
            "GPUSHARE_TOKEN_FILE: the token must be printable ASCII without spaces or line "
            "breaks (a bearer token) (got a token of 24 characters from '{path}')",
            id="line-break-inside",
        ),
        pytest.param(
            b"\xff\xfe-not-text",
            "GPUSHARE_TOKEN_FILE: the token must be printable ASCII without spaces or line "
            "breaks (a bearer token) (got a file that is not UTF-8 text: '{path}')",
            id="not-utf8",
        ),
        pytest.param(b"  header.payload.signature\n", None, id="surrounding-space-is-fine"),
    ],
)
def test_preflight_checks_the_token_in_the_file(
    tmp_path: Path, content: bytes, problem: str | None
) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    settings = from_environ(
        {**REQUIRED, "GPUSHARE_TOKEN_FILE": str(path), "GPUSHARE_SPOOL_DIR": str(tmp_path / "s")}
    )
    assert preflight(settings) == ([problem.format(path=path)] if problem else [])


def test_preflight_ignores_the_token_file_when_a_static_token_is_given(tmp_path: Path) -> None:
    settings = from_environ(
        {
            **REQUIRED,
            "GPUSHARE_TOKEN": "static",
            "GPUSHARE_TOKEN_FILE": str(tmp_path / "missing"),
            "GPUSHARE_SPOOL_DIR": str(tmp_path / "spool"),
        }
    )
    assert preflight(settings) == []
    assert (tmp_path / "spool").is_dir()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(
            "tokens: []\n",
            "GPUSHARE_TIMEKEEPER_CA_FILE: must be a PEM bundle of CA certificates, "
            "NO_CERTIFICATE_OR_CRL_FOUND (got '{path}')",
            id="not-pem",
        ),
        pytest.param(
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            "GPUSHARE_TIMEKEEPER_CA_FILE: must be a PEM bundle of CA certificates, "
            "{reason} (got '{path}')",
            id="damaged-pem",
        ),
    ],
)
def test_preflight_loads_the_ca_bundle(tmp_path: Path, content: str, problem: str) -> None:
    # Once found only at the first delivery, where it crashed the sidecar.
    import ssl

    path = tmp_path / "ca.crt"
    path.write_text(content)
    try:
        ssl.create_default_context(cafile=str(path))
        reason = "loaded"
    except ssl.SSLError as err:
        reason = err.reason or str(err)
    settings = from_environ(
        {
            **REQUIRED,
            "GPUSHARE_TOKEN": "static",
            "GPUSHARE_TIMEKEEPER_CA_FILE": str(path),
            "GPUSHARE_SPOOL_DIR": str(tmp_path / "spool"),
        }
    )
    assert preflight(settings) == [problem.format(path=path, reason=reason)]
