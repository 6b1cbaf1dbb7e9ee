"""The timekeeper's REST API (Flask): parse → call the use case → serialise.

`create_app(settings, **adapters)` builds everything; nothing is built at import. One error
handler maps the exception tree of `errors.py` to `{"error": code, "message": text}` with a
4xx (503 when the database is away); bad input never gives a 500.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from timekeeper.accounting import Accounting, utc_now
from timekeeper.auth import Authenticator, KeySource, TokenVerifier
from timekeeper.budgets import parse_timezone
from timekeeper.database import make_engine
from timekeeper.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    TimekeeperError,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from timekeeper.ledger import Ledger, UsageRow
from timekeeper.metrics import Metrics, method_label
from timekeeper.openapi import openapi_document
from timekeeper.periods import period_window
from timekeeper.pod_metrics import PodShareCollector
from timekeeper.policy_source import PolicySource
from timekeeper.policy_store import StoredPolicySource
from timekeeper.report_endpoint import ReportEndpoint, error_response
from timekeeper.reports import parse_rfc3339
from timekeeper.settings import Settings
from timekeeper.states import rfc3339, status_to_json
from timekeeper.static_tokens import TokenTable
from timekeeper.web import register_pages

logger = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 64 * 1024
MAX_USAGE_RANGE: Final = timedelta(days=400)
STATUS_CODES: Final[dict[type[TimekeeperError], int]] = {
    TooLarge: 413,
    InvalidRequest: 400,
    Unauthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    Unavailable: 503,
}
GROUPS: Final = ("pod", "day")
MAX_IDLE_WINDOW_HOURS: Final = 744.0
"""The idle-pods query reads every namespace's reports of its window: at most 31 days."""
FORMATS: Final = ("json", "csv")


def build_authenticator(settings: Settings) -> Authenticator:
    """The authenticator the settings describe (reads the tokens and JWKS files now)."""
    verifier = None
    if settings.jwt_enabled:
        keys = KeySource(
            jwks_file=settings.jwks_file,
            jwks_url=settings.jwks_url,
            issuer=settings.oidc_issuer,
            discovery_url=settings.oidc_discovery_url,
            ca_file=settings.oidc_ca_file,
            bearer_file=settings.oidc_token_file,
        )
        verifier = TokenVerifier(keys, issuer=settings.token_issuer or settings.oidc_issuer)
    return Authenticator(
        static_tokens=(
            TokenTable.from_file(
                settings.tokens_path, check_interval_seconds=settings.tokens_check_seconds
            )
            if settings.tokens_path
            else None
        ),
        verifier=verifier,
        allow_anonymous_reports=settings.allow_unauthenticated_reports,
    )


def create_app(
    settings: Settings,
    *,
    engine: sa.Engine | None = None,
    policy_source: PolicySource | None = None,
    authenticator: Authenticator | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> Flask:
    """The WSGI app for `settings`; adapters given here replace the ones settings describe."""
    engine = engine if engine is not None else make_engine(settings.database)
    ledger = Ledger(engine, max_interval_seconds=settings.max_interval_seconds)
    if policy_source is None:
        policy_source = (
            StoredPolicySource(
                settings.budgets_path,
                engine,
                check_interval_seconds=settings.budgets_check_seconds,
            )
            if settings.budgets_path is not None
            else PolicySource(None)
        )
    accounting = Accounting(
        ledger,
        policy_source,
        clock_skew_seconds=settings.clock_skew_seconds,
        max_interval_seconds=settings.max_interval_seconds,
        clock=clock,
    )
    auth = authenticator if authenticator is not None else build_authenticator(settings)
    metrics = Metrics(
        accounting.statuses,
        multiprocess_dir=settings.metrics_multiprocess_dir,
        budgets_file=policy_source,
        collectors=[PodShareCollector(ledger, clock)],
    )

    app = Flask("timekeeper")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["gpushare"] = {"accounting": accounting, "metrics": metrics, "engine": engine}

    def require_reader() -> None:
        if settings.read_requires_token:
            auth.identify(request.headers.get("Authorization"))

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def observe(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        method = method_label(request.method)
        metrics.requests.labels(route, method, str(response.status_code)).inc()
        metrics.latency.labels(route, method).observe(elapsed)
        return response

    @app.errorhandler(TimekeeperError)
    def on_error(err: TimekeeperError) -> tuple[Response, int, dict[str, str]]:
        status, body, headers = error_response(err)
        log = logger.warning if status >= 500 else logger.info
        log("%s %s -> %d %s: %s", request.method, request.path, status, err.code, err.message)
        return jsonify(body), status, headers

    @app.errorhandler(sa.exc.OperationalError)
    def on_database_error(err: sa.exc.OperationalError) -> tuple[Response, int]:
        logger.error("database error on %s %s: %s", request.method, request.path, err.orig)
        return jsonify(error="unavailable", message="the database cannot be reached"), 503

    @app.errorhandler(HTTPException)
    def on_http_error(err: HTTPException) -> tuple[Response, int, dict[str, str]]:
        code = (err.name or "error").lower().replace(" ", "-")
        # Keep the headers the error carries (`Allow` of a 405), not its HTML body's type.
        headers = {k: v for k, v in err.get_headers() if k.lower() != "content-type"}
        return jsonify(error=code, message=err.description or err.name), err.code or 500, headers

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> Response:
        ledger.check_ready()
        policy_source.current()
        loaded = policy_source.loaded_at
        return jsonify(
            status="ready",
            budgetsLoadedAt=rfc3339(loaded) if loaded is not None else None,
        )

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        return Response(metrics.render(), mimetype="text/plain; version=0.0.4")

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(openapi_document())

    @app.get("/api/v1/namespaces")
    def list_namespaces() -> Response:
        require_reader()
        return jsonify(namespaces=[status_to_json(s) for s in accounting.statuses()])

    @app.get("/api/v1/namespaces/<namespace>")
    def get_namespace(namespace: str) -> Response:
        require_reader()
        return jsonify(status_to_json(accounting.status(namespace)))

    @app.get("/api/v1/namespaces/<namespace>/usage")
    def get_usage(namespace: str) -> Response:
        require_reader()
        status = accounting.status(namespace)  # validates the name
        group_by = _choice("group_by", request.args.get("group_by", "pod"), GROUPS)
        form = _choice("format", request.args.get("format", "json"), FORMATS)
        budget = policy_source.current().budget_for(namespace)
        default_start, default_end = period_window(budget, clock())
        start = _instant("from", request.args.get("from"), default_start)
        end = _instant("to", request.args.get("to"), default_end)
        if end <= start:
            raise InvalidRequest(
                f"to: must be after from (got from {rfc3339(start)}, to {rfc3339(end)})"
            )
        if end - start > MAX_USAGE_RANGE:
            raise InvalidRequest(
                f"to: the range may span at most {MAX_USAGE_RANGE.days} days "
                f"(got {(end - start).days} days)"
            )
        zone_name = request.args.get("timezone", budget.timezone)
        try:
            zone = ZoneInfo(parse_timezone(zone_name))
        except ValueError as err:
            raise InvalidRequest(f"timezone: {err} (got {zone_name!r})") from err
        rows = ledger.usage(namespace, start, end, group_by=group_by, day_zone=zone)
        if form == "csv":
            return Response(
                _usage_csv(rows, group_by),
                mimetype="text/csv",
                headers={"Content-Disposition": f'attachment; filename="{namespace}-usage.csv"'},
            )
        return jsonify(
            namespace=namespace,
            state=status.state,
            **{"from": rfc3339(start), "to": rfc3339(end)},
            groupBy=group_by,
            timezone=zone_name,
            totalGpuHours=round(sum(row.gpu_seconds for row in rows) / 3600, 6),
            **_measured_json(rows),
            rows=[_usage_json(row, group_by) for row in rows],
        )

    @app.get("/api/v1/idle")
    def get_idle() -> Response:
        require_reader()
        window = _number(
            "window_hours",
            request.args.get("window_hours"),
            24.0,
            0.0,
            MAX_IDLE_WINDOW_HOURS,
            above_low=True,
        )
        threshold = _number("threshold", request.args.get("threshold"), 0.1, 0.0, 1.0)
        only = request.args.get("namespace")
        if only is not None:
            accounting.status(only)  # validates the name
        end = clock()
        start = end - timedelta(hours=window)
        pods = ledger.pods(start, end, namespace=only)
        measured = [row for row in pods if row.delivered_share is not None]
        idle = sorted(
            (row for row in measured if (row.delivered_share or 0.0) < threshold),
            key=lambda row: (row.delivered_share or 0.0, -row.gpu_seconds),
        )
        return jsonify(
            **{"from": rfc3339(start), "to": rfc3339(end)},
            windowHours=window,
            threshold=threshold,
            namespace=only,
            measuredPods=len(measured),
            unmeasuredPods=len(pods) - len(measured),
            pods=[_idle_json(row) for row in idle],
        )

    register_pages(
        app,
        accounting=accounting,
        ledger=ledger,
        policy_source=policy_source,
        clock=clock,
        require_reader=require_reader,
    )

    app.wsgi_app = ReportEndpoint(  # type: ignore[method-assign]
        app.wsgi_app, auth=auth, accounting=accounting, metrics=metrics
    )
    return app


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidRequest(f"{name}: must be one of {', '.join(choices)} (got {value!r})")
    return value


def _instant(name: str, value: str | None, default: datetime) -> datetime:
    if value is None:
        return default
    try:
        return parse_rfc3339(value)
    except ValueError as err:
        hint = ""
        if re.search(r"\d \d{2}:\d{2}$", value):
            # `?from=2026-11-21T00:00:00+01:00` arrives with a space for the unescaped '+'.
            hint = "; write the '+' of an offset as %2B in a URL"
        raise InvalidRequest(f"{name}: {err} (got {value!r}){hint}") from err


def _number(
    name: str,
    value: str | None,
    default: float,
    low: float,
    high: float,
    *,
    above_low: bool = False,
) -> float:
    """A numeric query parameter in low..high (above `low` when `above_low`)."""
    if value is None:
        return default
    rule = (
        f"must be a number above {low:g} and at most {high:g}"
        if above_low
        else f"must be a number in {low:g}..{high:g}"
    )
    try:
        number = float(value)
    except ValueError as err:
        raise InvalidRequest(f"{name}: {rule} (got {value!r})") from err
    if not low <= number <= high or (above_low and number == low):
        raise InvalidRequest(f"{name}: {rule} (got {value!r})")
    return number


def _share(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _measured_json(rows: list[UsageRow]) -> dict[str, Any]:
    """Used against allocated GPU-hours over `rows`, for the totals of a usage answer."""
    used = sum(row.used_gpu_seconds for row in rows)
    measured = sum(row.measured_gpu_seconds for row in rows)
    idle = None if measured <= 0 else max(0.0, 1.0 - used / measured)
    return {
        "usedGpuHours": round(used / 3600, 6) if measured > 0 else None,
        "measuredGpuHours": round(measured / 3600, 6),
        "idleShare": _share(idle),
    }


def _idle_json(row: UsageRow) -> dict[str, Any]:
    return {
        "namespace": row.namespace,
        "pod": row.key,
        "podUid": row.pod_uid,
        "vcudaCore": row.vcuda_core,
        "allocatedGpuHours": round(row.gpu_seconds / 3600, 6),
        "measuredGpuHours": round(row.measured_gpu_seconds / 3600, 6),
        "usedGpuHours": round(row.used_gpu_seconds / 3600, 6),
        "usedShare": _share(row.delivered_share),
        "idleShare": _share(row.idle_share),
        "firstStart": rfc3339(row.first_start),
        "lastEnd": rfc3339(row.last_end),
    }


def _usage_json(row: UsageRow, group_by: str) -> dict[str, Any]:
    key: dict[str, Any] = (
        {"pod": row.key, "podUid": row.pod_uid} if group_by == "pod" else {"day": row.key}
    )
    measured = row.measured_gpu_seconds > 0
    return {
        **key,
        "gpuHours": round(row.gpu_seconds / 3600, 6),
        "usedGpuHours": round(row.used_gpu_seconds / 3600, 6) if measured else None,
        "measuredGpuHours": round(row.measured_gpu_seconds / 3600, 6),
        "idleShare": _share(row.idle_share),
        "gpuSeconds": round(row.gpu_seconds, 6),
        "memoryByteSeconds": round(row.memory_byte_seconds, 3),
        "reports": row.reports,
        "firstStart": rfc3339(row.first_start),
        "lastEnd": rfc3339(row.last_end),
    }


def _usage_csv(rows: list[UsageRow], group_by: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    key_columns = ["pod", "podUid"] if group_by == "pod" else ["day"]
    columns = [
        "gpuHours",
        "gpuSeconds",
        "memoryByteSeconds",
        "reports",
        "firstStart",
        "lastEnd",
        "usedGpuHours",
        "measuredGpuHours",
        "idleShare",
    ]
    writer.writerow(key_columns + columns)
    for row in rows:
        record = _usage_json(row, group_by)
        writer.writerow(
            ["" if record[name] is None else record[name] for name in key_columns + columns]
        )
    return out.getvalue()
