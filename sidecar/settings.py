"""Sidecar settings: one frozen dataclass, read once at start-up from the environment.

The webhook injects the required variables (see docs/sidecar.md); the optional ones have
defaults that suit a cluster. An empty variable counts as unset. Every bad variable is
reported together, each as `NAME: rule (got 'value')`, and the sidecar does not start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar
from urllib.parse import urlsplit

from sidecar.errors import SettingsError

DEFAULT_TOKEN_FILE: Final = "/var/run/secrets/gpushare.io/serviceaccount/token"
DEFAULT_SPOOL_DIR: Final = "/var/lib/gpushare/spool"
NVML_MODES: Final = ("auto", "off")
LOG_FORMATS: Final = ("json", "text")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Each dot-separated part a DNS label, as the timekeeper checks it ("a..b" and "a.-b" are not).
_DNS_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_BEARER = re.compile(r"^[\x21-\x7e]+$")
"""A bearer token as an HTTP header can carry it: printable ASCII, no spaces or breaks."""
MIN_REPORT_INTERVAL_SECONDS: Final = 0.05
"""The shortest reporting period (tests and the footprint benchmark use it)."""
MAX_VCUDA_CORE: Final = 100_000
"""The timekeeper's bound on a report's vcudaCore (a thousand whole GPUs)."""
MAX_VCUDA_MEMORY: Final = 1_000_000
"""The timekeeper's bound on a report's vcudaMemory."""
BEARER_RULE: Final = "must be printable ASCII without spaces or line breaks (a bearer token)"
"""What a token must be; messages describe a bad token (its length), never print it."""
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the sidecar can be told. Field docs name the environment variable."""

    timekeeper_url: str
    """GPUSHARE_TIMEKEEPER_URL: base URL of the timekeeper, http(s)://host[:port][/prefix]."""
    pod_name: str
    """GPUSHARE_POD_NAME: the pod's name (downward API)."""
    pod_namespace: str
    """GPUSHARE_POD_NAMESPACE: the pod's namespace (downward API)."""
    pod_uid: str
    """GPUSHARE_POD_UID: the pod's UID (downward API); reports are idempotent per UID."""
    vcuda_core: int
    """GPUSHARE_VCUDA_CORE: the pod's tencent.com/vcuda-core, summed over its GPU containers."""
    vcuda_memory: int
    """GPUSHARE_VCUDA_MEMORY: the pod's tencent.com/vcuda-memory units (256 MiB), summed."""
    token_file: str = DEFAULT_TOKEN_FILE
    """GPUSHARE_TOKEN_FILE: projected ServiceAccount token, re-read whenever it changes."""
    token: str = ""
    """GPUSHARE_TOKEN: a static bearer token; when set, the token file is not read."""
    report_interval_seconds: float = 15.0
    """GPUSHARE_REPORT_INTERVAL_SECONDS: length of one usage interval."""
    spool_dir: str = DEFAULT_SPOOL_DIR
    """GPUSHARE_SPOOL_DIR: where closed intervals wait until the timekeeper acknowledges them."""
    spool_max_intervals: int = 2048
    """GPUSHARE_SPOOL_MAX_INTERVALS: spool bound; beyond it new time is merged into the last."""
    shutdown_deadline_seconds: float = 10.0
    """GPUSHARE_SHUTDOWN_DEADLINE_SECONDS: how long SIGTERM may spend delivering the spool."""
    http_timeout_seconds: float = 5.0
    """GPUSHARE_HTTP_TIMEOUT_SECONDS: longest one request to the timekeeper may take."""
    backoff_initial_seconds: float = 1.0
    """GPUSHARE_BACKOFF_INITIAL_SECONDS: first retry delay after a failed delivery."""
    backoff_max_seconds: float = 60.0
    """GPUSHARE_BACKOFF_MAX_SECONDS: cap of the (jittered, doubling) retry delay."""
    rejected_attempts: int = 3
    """GPUSHARE_REJECTED_ATTEMPTS: 4xx answers to one interval before it is dead-lettered."""
    auth_grace_seconds: float = 3600.0
    """GPUSHARE_AUTH_GRACE_SECONDS: how long 401/403 answers are retried before the interval
    is dead-lettered (a token being rotated or the timekeeper's keys being fixed)."""
    resume_window_seconds: float = 600.0
    """GPUSHARE_RESUME_WINDOW_SECONDS: a restart this soon continues the interval it lost."""
    usage_dir: str = "/var/run/gpushare-usage"
    """GPUSHARE_USAGE_DIR: folder of the hook's usage files (measured use); when it does not
    exist, NVML is tried instead."""
    nvml: str = "auto"
    """GPUSHARE_NVML: `auto` (measure through NVML when it is there) or `off`."""
    proc_root: str = "/proc"
    """GPUSHARE_PROC_ROOT: a procfs showing the GPU processes' host PIDs (for attribution)."""
    ca_file: str = ""
    """GPUSHARE_TIMEKEEPER_CA_FILE: CA bundle for an https timekeeper (default: system CAs)."""
    log_format: str = "json"
    """GPUSHARE_LOG_FORMAT: `json` (one object a line) or `text`."""
    log_level: str = "INFO"
    """GPUSHARE_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR."""


T = TypeVar("T")


class _Reader:
    """Reads variables one by one, collecting every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def _raw(self, name: str) -> str | None:
        value = self.environ.get(name, "")
        return value if value.strip() else None

    def text(
        self,
        name: str,
        *,
        default: str | None = None,
        rule: str = "",
        check: Callable[[str], bool] = lambda _: True,
    ) -> str:
        raw = self._raw(name)
        if raw is None:
            if default is None:
                self.problems.append(f"{name}: required, {rule} (got nothing)")
                return ""
            return default
        if not check(raw):
            self.problems.append(f"{name}: {rule} (got {raw!r})")
        return raw

    def number(
        self,
        name: str,
        *,
        default: T | None,
        parse: Callable[[str], T],
        rule: str,
        check: Callable[[T], bool],
    ) -> T:
        raw = self._raw(name)
        if raw is None:
            if default is None:
                self.problems.append(f"{name}: required, {rule} (got nothing)")
                return parse("0")
            return default
        try:
            value = parse(raw.strip())
        except ValueError:
            self.problems.append(f"{name}: {rule} (got {raw!r})")
            return parse("0")
        if not check(value):
            self.problems.append(f"{name}: {rule} (got {raw!r})")
        return value


def _is_url(raw: str) -> bool:
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not parts.query
        and not parts.fragment
    )


def _whole(text: str) -> int:
    """A whole number in ASCII digits (`int` alone also takes '٥٠' and '1_000')."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError(text)
    return int(text)


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def from_environ(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse the sidecar's settings; raise `SettingsError` listing every bad variable."""
    env = _Reader(os.environ if environ is None else environ)
    url = env.text(
        "GPUSHARE_TIMEKEEPER_URL",
        rule="must be an http:// or https:// URL with a host and no query",
        check=_is_url,
    )
    pod_name = env.text(
        "GPUSHARE_POD_NAME",
        rule="must be a DNS subdomain (lowercase letters, digits, '-', '.'; at most 253)",
        check=lambda v: bool(_DNS_SUBDOMAIN.match(v)),
    )
    namespace = env.text(
        "GPUSHARE_POD_NAMESPACE",
        rule="must be a DNS label (lowercase letters, digits, '-'; at most 63)",
        check=lambda v: bool(_DNS_LABEL.match(v)),
    )
    pod_uid = env.text(
        "GPUSHARE_POD_UID",
        rule="must be a UUID such as 0b3c8a4e-6f0d-4d9e-9b1a-2f6c1e8d7a55",
        check=lambda v: bool(_UUID.match(v)),
    )
    core = env.number(
        "GPUSHARE_VCUDA_CORE",
        default=None,
        parse=_whole,
        rule=f"must be a whole number of vcuda-core units in 1..{MAX_VCUDA_CORE} "
        "(1 = 1 % of a GPU)",
        check=lambda v: 1 <= v <= MAX_VCUDA_CORE,
    )
    memory = env.number(
        "GPUSHARE_VCUDA_MEMORY",
        default=None,
        parse=_whole,
        rule=f"must be a whole number of vcuda-memory units in 0..{MAX_VCUDA_MEMORY} (1 = 256 MiB)",
        check=lambda v: 0 <= v <= MAX_VCUDA_MEMORY,
    )
    token = env.text("GPUSHARE_TOKEN", default="")
    if token.strip() and not _BEARER.match(token.strip()):
        # The value is a secret: describe it, never print it.
        env.problems.append(
            f"GPUSHARE_TOKEN: {BEARER_RULE} (got a value of {len(token.strip())} characters)"
        )
    token_file = env.text(
        "GPUSHARE_TOKEN_FILE",
        default=DEFAULT_TOKEN_FILE,
        rule="must be an absolute path",
        check=os.path.isabs,
    )
    interval = env.number(
        "GPUSHARE_REPORT_INTERVAL_SECONDS",
        default=15.0,
        parse=float,
        # Below a twentieth of a second the loop would only spin writing spool files.
        rule=f"must be a number of seconds in [{MIN_REPORT_INTERVAL_SECONDS:g}, 3600]",
        check=lambda v: _finite(v) and MIN_REPORT_INTERVAL_SECONDS <= v <= 3600,
    )
    spool_dir = env.text(
        "GPUSHARE_SPOOL_DIR",
        default=DEFAULT_SPOOL_DIR,
        rule="must be an absolute path",
        check=os.path.isabs,
    )
    spool_max = env.number(
        "GPUSHARE_SPOOL_MAX_INTERVALS",
        default=2048,
        parse=_whole,
        rule="must be a whole number >= 2",
        check=lambda v: v >= 2,
    )
    shutdown = env.number(
        "GPUSHARE_SHUTDOWN_DEADLINE_SECONDS",
        default=10.0,
        parse=float,
        rule="must be a number of seconds in (0, 3600]",
        check=lambda v: _finite(v) and 0 < v <= 3600,
    )
    http_timeout = env.number(
        "GPUSHARE_HTTP_TIMEOUT_SECONDS",
        default=5.0,
        parse=float,
        rule="must be a number of seconds in (0, 300]",
        check=lambda v: _finite(v) and 0 < v <= 300,
    )
    backoff_initial = env.number(
        "GPUSHARE_BACKOFF_INITIAL_SECONDS",
        default=1.0,
        parse=float,
        rule="must be a number of seconds in (0, 3600]",
        check=lambda v: _finite(v) and 0 < v <= 3600,
    )
    backoff_max = env.number(
        "GPUSHARE_BACKOFF_MAX_SECONDS",
        default=60.0,
        parse=float,
        rule="must be a number of seconds in (0, 3600], not below GPUSHARE_BACKOFF_INITIAL_SECONDS",
        check=lambda v: _finite(v) and 0 < v <= 3600 and v >= backoff_initial,
    )
    rejected_attempts = env.number(
        "GPUSHARE_REJECTED_ATTEMPTS",
        default=3,
        parse=_whole,
        rule="must be a whole number >= 1",
        check=lambda v: v >= 1,
    )
    auth_grace = env.number(
        "GPUSHARE_AUTH_GRACE_SECONDS",
        default=3600.0,
        parse=float,
        rule="must be a number of seconds in [0, 604800]",
        check=lambda v: _finite(v) and 0 <= v <= 604800,
    )
    resume_window = env.number(
        "GPUSHARE_RESUME_WINDOW_SECONDS",
        default=600.0,
        parse=float,
        rule="must be a number of seconds >= 0",
        check=lambda v: _finite(v) and v >= 0,
    )
    usage_dir = env.text(
        "GPUSHARE_USAGE_DIR",
        default="/var/run/gpushare-usage",
        rule="must be an absolute path",
        check=os.path.isabs,
    )
    nvml = env.text(
        "GPUSHARE_NVML",
        default="auto",
        rule=f"must be one of {', '.join(NVML_MODES)}",
        check=lambda v: v in NVML_MODES,
    )
    proc_root = env.text(
        "GPUSHARE_PROC_ROOT", default="/proc", rule="must be an absolute path", check=os.path.isabs
    )
    ca_file = env.text(
        "GPUSHARE_TIMEKEEPER_CA_FILE",
        default="",
        rule="must be an absolute path",
        check=os.path.isabs,
    )
    log_format = env.text(
        "GPUSHARE_LOG_FORMAT",
        default="json",
        rule=f"must be one of {', '.join(LOG_FORMATS)}",
        check=lambda v: v in LOG_FORMATS,
    )
    log_level = env.text(
        "GPUSHARE_LOG_LEVEL",
        default="INFO",
        rule=f"must be one of {', '.join(LOG_LEVELS)}",
        check=lambda v: v.upper() in LOG_LEVELS,
    ).upper()
    if env.problems:
        raise SettingsError(env.problems)
    return Settings(
        timekeeper_url=url.rstrip("/"),
        pod_name=pod_name,
        pod_namespace=namespace,
        pod_uid=pod_uid.lower(),
        vcuda_core=core,
        vcuda_memory=memory,
        token=token.strip(),
        token_file=token_file,
        report_interval_seconds=interval,
        spool_dir=spool_dir,
        spool_max_intervals=spool_max,
        shutdown_deadline_seconds=shutdown,
        http_timeout_seconds=http_timeout,
        backoff_initial_seconds=backoff_initial,
        backoff_max_seconds=backoff_max,
        rejected_attempts=rejected_attempts,
        auth_grace_seconds=auth_grace,
        resume_window_seconds=resume_window,
        usage_dir=usage_dir,
        nvml=nvml,
        proc_root=proc_root,
        ca_file=ca_file,
        log_format=log_format,
        log_level=log_level,
    )


def preflight(settings: Settings) -> list[str]:
    """Problems with the files the settings name, found before the sidecar starts its loop."""
    problems: list[str] = []
    if not settings.token:
        try:
            with open(settings.token_file, encoding="utf-8") as token_file:
                content = token_file.read().strip()
            if not content:
                problems.append(
                    f"GPUSHARE_TOKEN_FILE: must hold a token, the file is empty "
                    f"(got {settings.token_file!r})"
                )
            elif not _BEARER.match(content):
                problems.append(
                    f"GPUSHARE_TOKEN_FILE: the token {BEARER_RULE} (got a token of "
                    f"{len(content)} characters from {settings.token_file!r})"
                )
        except UnicodeDecodeError:
            problems.append(
                f"GPUSHARE_TOKEN_FILE: the token {BEARER_RULE} (got a file that is not UTF-8 "
                f"text: {settings.token_file!r})"
            )
        except OSError as err:
            problems.append(
                f"GPUSHARE_TOKEN_FILE: must be a readable file when GPUSHARE_TOKEN is unset, "
                f"{err.strerror} (got {settings.token_file!r})"
            )
    if settings.ca_file and not os.access(settings.ca_file, os.R_OK):
        problems.append(
            f"GPUSHARE_TIMEKEEPER_CA_FILE: must be a readable file (got {settings.ca_file!r})"
        )
    elif settings.ca_file:
        import ssl  # only a sidecar given a CA bundle pays for it

        try:
            ssl.create_default_context(cafile=settings.ca_file)
        except (ssl.SSLError, OSError) as err:
            problems.append(
                f"GPUSHARE_TIMEKEEPER_CA_FILE: must be a PEM bundle of CA certificates, "
                f"{getattr(err, 'reason', None) or err} (got {settings.ca_file!r})"
            )
    try:
        os.makedirs(settings.spool_dir, exist_ok=True)
    except OSError as err:
        problems.append(
            f"GPUSHARE_SPOOL_DIR: must be a directory the sidecar can create, {err.strerror} "
            f"(got {settings.spool_dir!r})"
        )
    else:
        if not os.access(settings.spool_dir, os.W_OK | os.X_OK):
            problems.append(
                f"GPUSHARE_SPOOL_DIR: must be a writable directory (got {settings.spool_dir!r})"
            )
    return problems
