"""Webhook settings: one frozen dataclass, parsed once at start-up from flags and environment.

Every field has an environment variable (`GPUSHARE_WEBHOOK_<FIELD>`) and a one-line doc; bad
values are all reported together, each as `NAME: reason (got 'value')`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gpushare import __version__, quantities
from gpushare.resources import CORE_UNITS_PER_GPU
from webhook.errors import SettingsError
from webhook.validation import RequestBounds

ENV_PREFIX = "GPUSHARE_WEBHOOK_"
FAILURE_POLICIES = ("fail-open", "fail-closed")
SIDECAR_MODES = ("native", "classic")
DEFAULT_SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", "gpushare-system")


def _doc(text: str, **extra: Any) -> dict[str, Any]:
    return {"doc": text, **extra}


@dataclass(frozen=True)
class Settings:
    """Everything the webhook can be told; defaults suit a cluster install."""

    timekeeper_url: str = field(default="", metadata=_doc("Base URL of the timekeeper (required)."))
    timekeeper_timeout_seconds: float = field(
        default=0.5, metadata=_doc("Longest an admission waits on the timekeeper.")
    )
    timekeeper_token_file: str = field(
        default="",
        metadata=_doc("Bearer token sent to the timekeeper, read per lookup (optional)."),
    )
    budget_cache_ttl_seconds: float = field(
        default=15.0, metadata=_doc("A namespace's budget state is fresh this long.")
    )
    budget_stale_seconds: float = field(
        default=3600.0,
        metadata=_doc("How long an old state may still be served while the timekeeper is down."),
    )
    budget_retry_seconds: float = field(
        default=5.0,
        metadata=_doc("After a failed lookup, admissions skip the timekeeper this long."),
    )
    failure_policy: str = field(
        default="fail-open",
        metadata=_doc("fail-open (admit as in-budget) or fail-closed (deny) without a state."),
    )
    system_namespaces: tuple[str, ...] = field(
        default=DEFAULT_SYSTEM_NAMESPACES,
        metadata=_doc("Comma-separated namespaces that are never checked or mutated."),
    )
    max_body_bytes: int = field(
        default=3 * 1024 * 1024, metadata=_doc("Larger AdmissionReview bodies get a 400.")
    )
    max_pod_vcuda_core: int = field(
        default=1600,
        metadata=_doc("Most tencent.com/vcuda-core one pod may ask in total (1600: 16 GPUs)."),
    )
    max_pod_vcuda_memory: int = field(
        default=16384,
        metadata=_doc("Most tencent.com/vcuda-memory one pod may ask in total (16384: 4 TiB)."),
    )
    sidecar_image: str = field(
        default=f"ghcr.io/gpushare/gpushare:{__version__}",
        metadata=_doc("Image of the injected accounting sidecar."),
    )
    sidecar_image_pull_policy: str = field(
        default="IfNotPresent", metadata=_doc("imagePullPolicy of the sidecar.")
    )
    sidecar_mode: str = field(
        default="native",
        metadata=_doc("native (initContainer, restartPolicy Always) or classic (a container)."),
    )
    sidecar_timekeeper_url: str = field(
        default="", metadata=_doc("Timekeeper URL given to sidecars (default: timekeeper_url).")
    )
    sidecar_report_interval_seconds: int = field(
        default=15, metadata=_doc("How often the sidecar reports usage.")
    )
    sidecar_cpu_request: str = field(default="10m", metadata=_doc("Sidecar CPU request."))
    sidecar_cpu_limit: str = field(default="100m", metadata=_doc("Sidecar CPU limit."))
    sidecar_memory_request: str = field(default="32Mi", metadata=_doc("Sidecar memory request."))
    sidecar_memory_limit: str = field(default="64Mi", metadata=_doc("Sidecar memory limit."))
    sidecar_spool_size_limit: str = field(
        default="16Mi", metadata=_doc("sizeLimit of the sidecar's spool emptyDir.")
    )
    sidecar_run_as_user: int = field(
        default=65532, metadata=_doc("Non-root UID (and GID) the sidecar runs as.")
    )
    scheduler_name: str = field(
        default="gpushare-scheduler",
        metadata=_doc(
            "schedulerName given to GPU pods that name none (or the default); '' leaves it."
        ),
    )
    sidecar_token_expiration_seconds: int = field(
        default=3600, metadata=_doc("Lifetime of the projected ServiceAccount token.")
    )

    @property
    def effective_sidecar_timekeeper_url(self) -> str:
        return self.sidecar_timekeeper_url or self.timekeeper_url

    @property
    def request_bounds(self) -> RequestBounds:
        return RequestBounds(self.max_pod_vcuda_core, self.max_pod_vcuda_memory)

    @classmethod
    def from_mapping(cls, values: Mapping[str, str]) -> Settings:
        """Build from field name → text (flags or environment); SettingsError lists every fault."""
        problems: list[str] = []
        parsed: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            if item.name not in values:
                continue
            text = values[item.name]
            try:
                parsed[item.name] = _PARSERS[item.name](text)
            except ValueError as err:
                problems.append(f"{_env_name(item.name)}: {err} (got {text!r})")
        settings = cls(**parsed)
        problems.extend(settings.problems())
        if problems:
            raise SettingsError(problems)
        return settings

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: str) -> Settings:
        """Read `GPUSHARE_WEBHOOK_*` variables; `overrides` (flags) win over them."""
        values = {
            item.name: environ[_env_name(item.name)]
            for item in dataclasses.fields(cls)
            if _env_name(item.name) in environ
        }
        values.update(overrides)
        return cls.from_mapping(values)

    def validate(self) -> Settings:
        """Raise SettingsError listing every bad field; return self when all are good."""
        problems = self.problems()
        if problems:
            raise SettingsError(problems)
        return self

    def problems(self) -> list[str]:
        """Every bad field, as `NAME: reason (got 'value')`."""
        problems: list[str] = []

        def bad(name: str, reason: str) -> None:
            problems.append(f"{_env_name(name)}: {reason} (got {getattr(self, name)!r})")

        if not self.timekeeper_url:
            problems.append(f"{_env_name('timekeeper_url')}: required (the timekeeper's base URL)")
        for name in ("timekeeper_url", "sidecar_timekeeper_url"):
            url = getattr(self, name)
            if url and not _is_http_url(url):
                bad(name, "must be an http:// or https:// URL with a host")
        for name in ("timekeeper_timeout_seconds", "budget_cache_ttl_seconds"):
            if not 0 < getattr(self, name) <= 30:
                bad(name, "must be more than 0 and at most 30")
        for name in ("budget_stale_seconds", "budget_retry_seconds"):
            if getattr(self, name) < 0:
                bad(name, "must not be negative")
        if self.failure_policy not in FAILURE_POLICIES:
            bad("failure_policy", f"must be one of {', '.join(FAILURE_POLICIES)}")
        if self.sidecar_mode not in SIDECAR_MODES:
            bad("sidecar_mode", f"must be one of {', '.join(SIDECAR_MODES)}")
        if self.sidecar_image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            bad("sidecar_image_pull_policy", "must be Always, IfNotPresent or Never")
        if not self.sidecar_image or any(c.isspace() for c in self.sidecar_image):
            bad("sidecar_image", "must be an image reference without spaces")
        if not CORE_UNITS_PER_GPU <= self.max_pod_vcuda_core <= _MAX_BOUND:
            bad(
                "max_pod_vcuda_core",
                f"must be {CORE_UNITS_PER_GPU}..{_MAX_BOUND} (one GPU or more)",
            )
        if not 1 <= self.max_pod_vcuda_memory <= _MAX_BOUND:
            bad("max_pod_vcuda_memory", f"must be 1..{_MAX_BOUND}")
        if self.max_body_bytes < 1024:
            bad("max_body_bytes", "must be at least 1024")
        if not 1 <= self.sidecar_report_interval_seconds <= 3600:
            bad("sidecar_report_interval_seconds", "must be 1..3600")
        if not 600 <= self.sidecar_token_expiration_seconds <= 86400:
            # The API server refuses projected tokens shorter than 10 minutes.
            bad("sidecar_token_expiration_seconds", "must be 600..86400")
        if self.sidecar_run_as_user < 1:
            bad("sidecar_run_as_user", "must be a non-root UID (1 or more)")
        for name in (
            "sidecar_cpu_request",
            "sidecar_cpu_limit",
            "sidecar_memory_request",
            "sidecar_memory_limit",
            "sidecar_spool_size_limit",
        ):
            try:
                if quantities.parse(getattr(self, name)) <= 0:
                    bad(name, "must be a positive quantity")
            except quantities.QuantityError:
                bad(name, "must be a Kubernetes quantity such as 100m or 64Mi")
        for name in ("cpu", "memory"):
            request, limit = f"sidecar_{name}_request", f"sidecar_{name}_limit"
            try:
                if quantities.parse(getattr(self, request)) > quantities.parse(
                    getattr(self, limit)
                ):
                    bad(request, f"must not exceed {_env_name(limit)}")
            except quantities.QuantityError:
                pass  # already reported above
        for namespace in self.system_namespaces:
            if not _DNS_LABEL.match(namespace):
                bad("system_namespaces", f"{namespace!r} is not a namespace name")
        return problems


_MAX_BOUND = 10**9
"""Far beyond any node, and small enough for every integer the webhook computes with."""
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("must be a finite number")
    return value


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _parse_names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parse_text(text: str) -> str:
    return text.strip()


def _parser_for(item: dataclasses.Field[Any]) -> Callable[[str], Any]:
    kind = str(item.type)
    if kind == "float":
        return _parse_float
    if kind == "int":
        return _parse_int
    if kind == "bool":
        return _parse_bool
    if kind.startswith("tuple"):
        return _parse_names
    return _parse_text


_PARSERS = {item.name: _parser_for(item) for item in dataclasses.fields(Settings)}


def _show_default(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def describe() -> list[tuple[str, str, str]]:
    """(environment variable, default, doc) of every setting, for docs and --help."""
    return [
        (
            _env_name(item.name),
            _show_default(item.default),
            item.metadata["doc"],
        )
        for item in dataclasses.fields(Settings)
    ]
