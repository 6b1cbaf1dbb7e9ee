"""Timekeeper settings: one frozen dataclass, parsed once at start-up.

`parse_settings` takes raw values keyed by field name (strings from the environment, typed
values from the command line) and reports every bad field together in one `ConfigError`,
each as `NAME: reason (got 'value')`, where NAME is the flag or variable the value came from.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from timekeeper.errors import ConfigError

DEFAULT_DATABASE_PATH: Final = Path("~/.local/state/gpushare/timekeeper.db")
"""The SQLite file used when no database URL is given (created with its folder)."""

LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


def default_database_url() -> str:
    """`sqlite:///<home>/.local/state/gpushare/timekeeper.db`."""
    return f"sqlite:///{DEFAULT_DATABASE_PATH.expanduser()}"


@dataclass(frozen=True)
class Settings:
    """Everything the timekeeper app needs to know, validated."""

    database_url: str = ""
    """SQLAlchemy URL: `sqlite:///PATH` or `postgresql+psycopg://…`; empty: the default file."""
    budgets_path: Path | None = None
    """Budgets YAML; none: every namespace unlimited (usage is still recorded)."""
    budgets_check_seconds: float = 2.0
    """How often the budgets file is checked for changes."""
    tokens_path: Path | None = None
    """Standalone auth: YAML `tokens: [{token, namespace}]`, reloaded when it changes."""
    tokens_check_seconds: float = 2.0
    """How often the tokens file is checked for changes."""
    jwks_file: Path | None = None
    """Cluster auth: the API server's ServiceAccount signing keys as a JWKS file."""
    jwks_url: str | None = None
    """Cluster auth: where to fetch that JWKS (e.g. `https://kubernetes.default.svc/openid/v1/jwks`)."""
    oidc_issuer: str | None = None
    """Cluster auth: the service-account issuer; its JWKS is found by OIDC discovery."""
    oidc_discovery_url: str | None = None
    """Cluster auth: where the discovery document is (default `<oidc_issuer>/.well-known/...`;
    kube-apiserver serves its own at `https://kubernetes.default.svc/.well-known/openid-configuration`
    whatever its issuer). Without `oidc_issuer`, the issuer is the one this document names."""
    oidc_ca_file: Path | None = None
    """CA bundle to trust when fetching the JWKS or discovery document over HTTPS."""
    oidc_token_file: Path | None = None
    """Bearer token presented when fetching the JWKS or discovery document."""
    token_issuer: str | None = None
    """Required `iss` of ServiceAccount tokens (default: the OIDC issuer, given or discovered)."""
    allow_unauthenticated_reports: bool = False
    """Demo only: accept reports without a token and trust the body's namespace."""
    read_requires_token: bool = False
    """Read endpoints (`GET /api/v1/...`) require a valid token too."""
    clock_skew_seconds: float = 60.0
    """How far in the future (by this server's clock) a report's end may lie."""
    max_interval_seconds: float = 86400.0
    """Longest interval one report may cover."""
    log_format: str = "text"
    """`text` for a terminal, `json` for a cluster's log pipeline."""
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING or ERROR."""
    metrics_multiprocess_dir: Path | None = None
    """Gunicorn with several workers: the folder prometheus-client shares between them."""

    @property
    def database(self) -> str:
        """The URL in force: `database_url`, or the default SQLite file."""
        return self.database_url or default_database_url()

    @property
    def jwt_enabled(self) -> bool:
        return bool(self.jwks_file or self.jwks_url or self.oidc_issuer or self.oidc_discovery_url)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be text")
    return value.strip()


def _optional_text(value: object) -> str | None:
    text = _text(value)
    return text or None


def _path(value: object) -> Path | None:
    if isinstance(value, Path):
        value = str(value)
    text = _optional_text(value)
    return None if text is None else Path(text).expanduser()


def _readable_file(value: object) -> Path | None:
    path = _path(value)
    if path is None:
        return None
    if not path.exists():
        raise ValueError("no such file")
    if not path.is_file():
        raise ValueError("must be a file, not a folder or a device")
    if not os.access(path, os.R_OK):
        raise ValueError("cannot be read by this process (permission denied)")
    return path


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _seconds(minimum: float, maximum: float = math.inf) -> Callable[[object], float]:
    rule = (
        f"must be a number of seconds >= {minimum:g}"
        if maximum == math.inf
        else f"must be a number of seconds in {minimum:g}..{maximum:g}"
    )

    def parse(value: object) -> float:
        if isinstance(value, bool):
            raise ValueError("must be a number of seconds")
        try:
            number = float(value) if isinstance(value, int | float) else float(_text(value))
        except ValueError as err:
            raise ValueError("must be a number of seconds") from err
        if not math.isfinite(number) or not minimum <= number <= maximum:
            raise ValueError(rule)
        return number

    return parse


def _url(value: object) -> str | None:
    text = _optional_text(value)
    if text is not None and not text.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return text


_DATABASE_SCHEMES: Final = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")
_DATABASE_RULE: Final = "must be a sqlite:///PATH or postgresql+psycopg://USER@HOST/DB URL"


def _database_url(value: object) -> str:
    text = _text(value)
    if not text:
        return text
    scheme, separator, rest = text.partition("://")
    if not separator or scheme not in _DATABASE_SCHEMES:
        raise ValueError(_DATABASE_RULE)
    if scheme.startswith("sqlite"):
        # `sqlite://` alone is an in-memory database (gone with each connection), and
        # `sqlite://file.db` names a host: both are mistakes for `sqlite:///file.db`.
        path = rest.removeprefix("/").partition("?")[0]
        if not rest.startswith("/") or not path or path == ":memory:":
            raise ValueError(_DATABASE_RULE + " with the path of a file")
    if scheme == "postgresql":
        # psycopg 3 is the driver we ship; SQLAlchemy's bare default would be psycopg2.
        text = "postgresql+psycopg://" + rest
    return text


def _choice(choices: tuple[str, ...], *, upper: bool = False) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = _text(value)
        text = text.upper() if upper else text.lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text

    return parse


_PARSERS: Final[dict[str, Callable[[object], Any]]] = {
    "database_url": _database_url,
    "budgets_path": _readable_file,
    "budgets_check_seconds": _seconds(0.0),
    "tokens_path": _readable_file,
    "tokens_check_seconds": _seconds(0.0),
    "jwks_file": _readable_file,
    "jwks_url": _url,
    "oidc_issuer": _url,
    "oidc_discovery_url": _url,
    "oidc_ca_file": _readable_file,
    "oidc_token_file": _readable_file,
    "token_issuer": _optional_text,
    "allow_unauthenticated_reports": _bool,
    "read_requires_token": _bool,
    # More than a day is no clock skew; far beyond, `now + skew` leaves what a datetime holds
    # and every report would fail. One report covers at most a year.
    "clock_skew_seconds": _seconds(0.0, 86400.0),
    "max_interval_seconds": _seconds(1.0, 366 * 86400.0),
    "log_format": _choice(LOG_FORMATS),
    "log_level": _choice(LOG_LEVELS, upper=True),
    "metrics_multiprocess_dir": _path,
}

FIELD_NAMES: Final = tuple(field.name for field in fields(Settings))

ENV_NAMES: Final[dict[str, str]] = {
    "database_url": "GPUSHARE_DATABASE_URL",
    "budgets_path": "GPUSHARE_BUDGETS_FILE",
    "budgets_check_seconds": "GPUSHARE_BUDGETS_CHECK_SECONDS",
    "tokens_path": "GPUSHARE_TOKENS_FILE",
    "tokens_check_seconds": "GPUSHARE_TOKENS_CHECK_SECONDS",
    "jwks_file": "GPUSHARE_JWKS_FILE",
    "jwks_url": "GPUSHARE_JWKS_URL",
    "oidc_issuer": "GPUSHARE_OIDC_ISSUER",
    "oidc_discovery_url": "GPUSHARE_OIDC_DISCOVERY_URL",
    "oidc_ca_file": "GPUSHARE_OIDC_CA_FILE",
    "oidc_token_file": "GPUSHARE_OIDC_TOKEN_FILE",
    "token_issuer": "GPUSHARE_TOKEN_ISSUER",
    "allow_unauthenticated_reports": "GPUSHARE_ALLOW_UNAUTHENTICATED_REPORTS",
    "read_requires_token": "GPUSHARE_READ_REQUIRES_TOKEN",
    "clock_skew_seconds": "GPUSHARE_CLOCK_SKEW_SECONDS",
    "max_interval_seconds": "GPUSHARE_MAX_INTERVAL_SECONDS",
    "log_format": "GPUSHARE_LOG_FORMAT",
    "log_level": "GPUSHARE_LOG_LEVEL",
    "metrics_multiprocess_dir": "PROMETHEUS_MULTIPROC_DIR",
}
"""The environment variable of each field (read by `timekeeper.wsgi`, and by the command
line for the fields no flag sets)."""

FLAGS: Final[dict[str, str]] = {
    "budgets_path": "--budgets",
    "tokens_path": "--tokens",
    "metrics_multiprocess_dir": "--metrics-dir",
}
"""Command-line flags whose name is not the field's (`--database-url` for `database_url`)."""


def flag(name: str) -> str:
    """The command-line flag of a field."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


def settings_from_environment(environ: Mapping[str, str]) -> Settings:
    """Settings from `GPUSHARE_*` variables (see `ENV_NAMES`)."""
    by_env = {env: name for name, env in ENV_NAMES.items()}
    raw = {by_env[key]: value for key, value in environ.items() if key in by_env}
    return parse_settings(raw, label=lambda name: ENV_NAMES.get(name, name))


def parse_settings(
    raw: Mapping[str, object], *, label: Callable[[str], str] = lambda name: name
) -> Settings:
    """Validate `raw` (field name → value; None or absent: the default) into `Settings`.

    `label` names a field the way the user wrote it (`--tokens`, `GPUSHARE_TOKENS_FILE`).
    """
    problems: list[str] = []
    values: dict[str, Any] = {}
    for name in sorted(set(raw) - set(FIELD_NAMES)):
        problems.append(f"{label(name)}: unknown setting")
    for name in FIELD_NAMES:
        value = raw.get(name)
        if value is None:
            continue
        try:
            values[name] = _PARSERS[name](value)
        except ValueError as err:
            problems.append(f"{label(name)}: {err} (got {str(value)!r})")
    settings = Settings(**values)
    if problems:
        raise ConfigError(problems)
    if not (settings.tokens_path or settings.jwt_enabled or settings.allow_unauthenticated_reports):
        problems.append(
            f"{label('tokens_path')}: reports must be authenticated: give a tokens file, or a "
            f"JWKS ({label('jwks_file')}, {label('jwks_url')}, {label('oidc_issuer')}, "
            f"{label('oidc_discovery_url')}), or "
            f"{label('allow_unauthenticated_reports')} for a demo (got none)"
        )
    if settings.jwks_file and settings.jwks_url:
        problems.append(
            f"{label('jwks_url')}: give either a JWKS file or a JWKS URL, not both "
            f"(got {settings.jwks_url!r} and {str(settings.jwks_file)!r})"
        )
    if settings.jwks_file and settings.oidc_discovery_url:
        problems.append(
            f"{label('oidc_discovery_url')}: a JWKS file is not fetched: give the issuer with "
            f"{label('token_issuer')} instead (got {settings.oidc_discovery_url!r})"
        )
    if problems:
        raise ConfigError(problems)
    return settings
