"""Settings: parsed once, every bad field reported together."""

from __future__ import annotations

import pytest

from webhook.errors import SettingsError
from webhook.settings import Settings, describe


def test_environment_is_parsed() -> None:
    settings = Settings.from_env(
        {
            "GPUSHARE_WEBHOOK_TIMEKEEPER_URL": "http://tk:8080",
            "GPUSHARE_WEBHOOK_TIMEKEEPER_TIMEOUT_SECONDS": "0.25",
            "GPUSHARE_WEBHOOK_SYSTEM_NAMESPACES": "kube-system, infra",
            "GPUSHARE_WEBHOOK_SIDECAR_MODE": "classic",
            "GPUSHARE_WEBHOOK_MAX_BODY_BYTES": "65536",
            "GPUSHARE_WEBHOOK_SCHEDULER_NAME": "gpu-scheduler",
            "UNRELATED": "x",
        },
        failure_policy="fail-closed",
    )
    assert settings.timekeeper_url == "http://tk:8080"
    assert settings.timekeeper_timeout_seconds == 0.25
    assert settings.system_namespaces == ("kube-system", "infra")
    assert settings.sidecar_mode == "classic"
    assert settings.max_body_bytes == 65536
    assert settings.failure_policy == "fail-closed"
    assert settings.scheduler_name == "gpu-scheduler"
    assert settings.effective_sidecar_timekeeper_url == "http://tk:8080"


def test_every_bad_field_is_reported_together() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            {
                "GPUSHARE_WEBHOOK_TIMEKEEPER_URL": "ftp://tk",
                "GPUSHARE_WEBHOOK_TIMEKEEPER_TIMEOUT_SECONDS": "soon",
                "GPUSHARE_WEBHOOK_FAILURE_POLICY": "maybe",
                "GPUSHARE_WEBHOOK_SIDECAR_MODE": "sometimes",
                "GPUSHARE_WEBHOOK_SIDECAR_CPU_REQUEST": "lots",
                "GPUSHARE_WEBHOOK_SIDECAR_MEMORY_REQUEST": "1Gi",
                "GPUSHARE_WEBHOOK_SYSTEM_NAMESPACES": "kube-system,Bad_Name",
                "GPUSHARE_WEBHOOK_SIDECAR_TOKEN_EXPIRATION_SECONDS": "60",
            }
        )
    assert caught.value.problems == [
        "GPUSHARE_WEBHOOK_TIMEKEEPER_TIMEOUT_SECONDS: must be a number (got 'soon')",
        "GPUSHARE_WEBHOOK_TIMEKEEPER_URL: must be an http:// or https:// URL with a host"
        " (got 'ftp://tk')",
        "GPUSHARE_WEBHOOK_FAILURE_POLICY: must be one of fail-open, fail-closed (got 'maybe')",
        "GPUSHARE_WEBHOOK_SIDECAR_MODE: must be one of native, classic (got 'sometimes')",
        "GPUSHARE_WEBHOOK_SIDECAR_TOKEN_EXPIRATION_SECONDS: must be 600..86400 (got 60)",
        "GPUSHARE_WEBHOOK_SIDECAR_CPU_REQUEST: must be a Kubernetes quantity such as 100m or"
        " 64Mi (got 'lots')",
        "GPUSHARE_WEBHOOK_SIDECAR_MEMORY_REQUEST: must not exceed"
        " GPUSHARE_WEBHOOK_SIDECAR_MEMORY_LIMIT (got '1Gi')",
        "GPUSHARE_WEBHOOK_SYSTEM_NAMESPACES: 'Bad_Name' is not a namespace name"
        " (got ('kube-system', 'Bad_Name'))",
    ]


def test_timekeeper_url_is_required() -> None:
    with pytest.raises(SettingsError, match="GPUSHARE_WEBHOOK_TIMEKEEPER_URL: required"):
        Settings().validate()


def test_every_setting_is_documented() -> None:
    for name, _default, doc in describe():
        assert name.startswith("GPUSHARE_WEBHOOK_")
        assert doc.endswith(".")


def test_wsgi_module_builds_the_app_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import webhook.wsgi

    monkeypatch.setenv("GPUSHARE_WEBHOOK_TIMEKEEPER_URL", "http://tk:8080")
    monkeypatch.setenv("GPUSHARE_WEBHOOK_FAILURE_POLICY", "fail-closed")
    app = webhook.wsgi.app
    settings = app.extensions["gpushare_webhook"]["settings"]
    assert (settings.timekeeper_url, settings.failure_policy) == ("http://tk:8080", "fail-closed")
    monkeypatch.setenv("GPUSHARE_WEBHOOK_FAILURE_POLICY", "sometimes")
    with pytest.raises(SettingsError, match="GPUSHARE_WEBHOOK_FAILURE_POLICY"):
        _ = webhook.wsgi.app


def test_request_bounds_are_settings() -> None:
    settings = Settings.from_env(
        {
            "GPUSHARE_WEBHOOK_TIMEKEEPER_URL": "http://tk:8080",
            "GPUSHARE_WEBHOOK_MAX_POD_VCUDA_CORE": "800",
            "GPUSHARE_WEBHOOK_MAX_POD_VCUDA_MEMORY": "640",
        }
    )
    assert (settings.request_bounds.max_pod_core_units, settings.max_pod_vcuda_memory) == (
        800,
        640,
    )
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            {
                "GPUSHARE_WEBHOOK_TIMEKEEPER_URL": "http://tk:8080",
                "GPUSHARE_WEBHOOK_MAX_POD_VCUDA_CORE": "50",
                "GPUSHARE_WEBHOOK_MAX_POD_VCUDA_MEMORY": "0",
            }
        )
    assert caught.value.problems == [
        "GPUSHARE_WEBHOOK_MAX_POD_VCUDA_CORE: must be 100..1000000000 (one GPU or more) (got 50)",
        "GPUSHARE_WEBHOOK_MAX_POD_VCUDA_MEMORY: must be 1..1000000000 (got 0)",
    ]
