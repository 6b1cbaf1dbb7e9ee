"""Flask application factory of the webhook (entry layer: parse → decide → serialise)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from webhook import admission
from webhook.admission import BudgetSource
from webhook.budget_client import timekeeper_budgets
from webhook.errors import BadReview
from webhook.metrics import Metrics
from webhook.review import (
    AdmissionRequest,
    Verdict,
    encode_response,
    parse_review,
)
from webhook.settings import Settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    budgets: BudgetSource | None = None,
    metrics: Metrics | None = None,
) -> Flask:
    """Build the webhook app; `budgets` defaults to the cached timekeeper client."""
    settings.validate()
    metrics = metrics or Metrics()
    if budgets is None:
        budgets = timekeeper_budgets(
            settings.timekeeper_url,
            timeout_seconds=settings.timekeeper_timeout_seconds,
            ttl_seconds=settings.budget_cache_ttl_seconds,
            stale_seconds=settings.budget_stale_seconds,
            retry_seconds=settings.budget_retry_seconds,
            token_file=settings.timekeeper_token_file,
            metrics=metrics,
        )
    source: BudgetSource = budgets
    app = Flask(__name__)
    app.extensions["gpushare_webhook"] = {"settings": settings, "budgets": source}

    def admit(endpoint: str, decide: Callable[[AdmissionRequest], Verdict]) -> Response:
        started = time.perf_counter()
        try:
            body = _read_body(settings.max_body_bytes)
            review = parse_review(body)
            verdict = decide(review)
        except BadReview as err:
            metrics.requests.labels(endpoint, "bad-request").inc()
            log.info("bad admission request on /%s: %s", endpoint, err)
            return _error(400, "bad-request", str(err))
        if verdict.decided_by_policy:
            metrics.failure_policy.labels(settings.failure_policy).inc()
        if not verdict.allowed:
            log.info("denied %s in %s: %s", review.uid, review.namespace, verdict.message)
        response = Response(
            encode_response(review.uid, verdict),
            mimetype="application/json",
        )
        metrics.requests.labels(endpoint, "allowed" if verdict.allowed else "denied").inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.post("/validate")
    def validate() -> Response:
        return admit("validate", lambda review: admission.validate(review, settings))

    @app.post("/mutate")
    def mutate() -> Response:
        return admit("mutate", lambda review: admission.mutate(review, settings, source))

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        # Readiness does not follow the timekeeper: the failure policy covers its absence,
        # and an unready webhook would turn a timekeeper outage into an admission outage.
        return jsonify({"status": "ready"})

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.errorhandler(404)
    def not_found(_err: Any) -> tuple[Response, int]:
        return _error(404, "not-found", f"no endpoint {request.method} {request.path}")

    @app.errorhandler(405)
    def wrong_method(_err: Any) -> tuple[Response, int]:
        return _error(405, "method-not-allowed", f"{request.method} is not allowed here")

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> tuple[Response, int]:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return _error(500, "internal", f"internal error: {type(err).__name__}")

    return app


_READ_CHUNK_BYTES = 64 * 1024


def _read_body(limit_bytes: int) -> bytes:
    """The request body, refused past the limit.

    Read in chunks, never with a buffer of the limit's size: a stream's `read(n)` allocates
    `n` bytes up front, and zeroing megabytes per request would cost more than the admission.
    """
    length = request.content_length
    if length is not None and length > limit_bytes:
        raise BadReview(f"the body has {length} bytes; the limit is {limit_bytes}")
    chunks: list[bytes] = []
    received = 0
    while chunk := request.stream.read(min(_READ_CHUNK_BYTES, limit_bytes + 1 - received)):
        chunks.append(chunk)
        received += len(chunk)
        if received > limit_bytes:
            raise BadReview(f"the body is over the limit of {limit_bytes} bytes")
    return b"".join(chunks)


def _error(status: int, code: str, message: str) -> Any:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    return response
