"""Flask application of the scheduler extender (entry layer: parse → decide → serialise).

`POST /filter`, `/prioritize`, `/bind` and `/preempt` speak kube-scheduler's extender API
(`extender.wire`); `GET /healthz`, `/readyz` (the view has listed Nodes and Pods) and
`/metrics`. Bad requests get a 400 `{"error", "message"}`; what the scheduler should show
the user (a node without room, a bind that failed) travels in the answer's `Error` or
`FailedNodes`, as the scheduler expects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from flask import Flask, Response, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from werkzeug.exceptions import HTTPException

from extender import wire
from extender.kube import Binder, KubernetesError
from extender.view import BindRefused, ClusterView, Waiting
from gpushare.assignment import POD_GPU_ASSIGNMENT, format_assignment

log = logging.getLogger(__name__)

VERBS = ("filter", "prioritize", "bind", "preempt")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gpushare_extender_requests_total",
            "Extender requests by verb and outcome (ok, refused, bad-request).",
            ["verb", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gpushare_extender_request_seconds",
            "Time to answer an extender request, by verb.",
            ["verb"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5),
            registry=self.registry,
        )


def create_app(
    *,
    view: ClusterView,
    binder: Binder,
    ready: Callable[[], bool] = lambda: True,
    max_body_bytes: int = 16 * 1024 * 1024,
    metrics: Metrics | None = None,
) -> Flask:
    metrics = metrics or Metrics()
    app = Flask(__name__)
    app.extensions["gpushare_extender"] = {"view": view, "metrics": metrics}

    def answer(verb: str, decide: Callable[[dict[str, Any]], tuple[Any, str]]) -> Response:
        started = time.perf_counter()
        try:
            document = wire.decode(request.get_data(cache=False), max_body_bytes)
            body, outcome = decide(document)
        except wire.WireError as err:
            metrics.requests.labels(verb, "bad-request").inc()
            log.info("bad %s request: %s", verb, err)
            return _error(400, "bad-request", str(err))
        metrics.requests.labels(verb, outcome).inc()
        metrics.latency.labels(verb).observe(time.perf_counter() - started)
        return Response(orjson.dumps(body), mimetype="application/json")

    def do_filter(document: dict[str, Any]) -> tuple[Any, str]:
        args = wire.extender_args(document)
        result = view.filter(args.pod, args.names)
        for namespace, name, uid in result.evict:
            try:
                binder.evict(namespace, name, uid)
                log.info("evicted %s/%s to free a GPU for a higher-priority pod", namespace, name)
            except KubernetesError as err:
                log.warning("cannot evict %s/%s: %s", namespace, name, err)
        passing = [result.chosen] if result.chosen is not None else []
        if not result.failed and not result.unresolvable and result.chosen is None:
            passing = args.names  # no vcuda request: nothing to say about any node
        body = wire.filter_result(args, passing, result.failed, result.unresolvable)
        if result.waiting:
            # An error, not FailedNodes: the scheduler retries the pod after its backoff,
            # whereas an unschedulable pod waits for a cluster event that may already have
            # passed by the time the extender's own watch caught up with it.
            body["Error"] = "; ".join(
                f"{node}: {reason}"
                for node, reason in result.failed.items()
                if isinstance(reason, Waiting)
            )
        return body, "ok" if passing else "refused"

    def do_prioritize(document: dict[str, Any]) -> tuple[Any, str]:
        args = wire.extender_args(document)
        scores = view.prioritize(args.pod, args.names)
        return [{"Host": name, "Score": value} for name, value in scores], "ok"

    def do_bind(document: dict[str, Any]) -> tuple[Any, str]:
        args = wire.binding_args(document)
        try:
            assignment = view.reserve(args.namespace, args.name, args.uid, args.node)
        except BindRefused as err:
            log.info("bind refused: %s", err)
            return {"Error": str(err)}, "refused"
        try:
            binder.bind(
                args.namespace,
                args.name,
                args.uid,
                args.node,
                {POD_GPU_ASSIGNMENT: format_assignment(assignment)},
            )
        except KubernetesError as err:
            view.release(args.uid)
            log.warning("bind failed: %s", err)
            return {"Error": str(err)}, "refused"
        view.bound(args.uid)
        log.info(
            "bound %s/%s to %s: %s",
            args.namespace,
            args.name,
            args.node,
            format_assignment(assignment),
        )
        return {"Error": ""}, "ok"

    def do_preempt(document: dict[str, Any]) -> tuple[Any, str]:
        args = wire.preemption_args(document)
        victims = view.preempt(args.pod, args.victims)
        return wire.preemption_result(victims), "ok" if victims else "refused"

    handlers = {
        "filter": do_filter,
        "prioritize": do_prioritize,
        "bind": do_bind,
        "preempt": do_preempt,
    }
    for verb in VERBS:
        app.add_url_rule(
            f"/{verb}",
            endpoint=verb,
            view_func=lambda verb=verb: answer(verb, handlers[verb]),
            methods=["POST"],
        )

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response | tuple[Response, int]:
        if not ready():
            return _error(503, "not-ready", "the Node and Pod lists have not been read yet")
        nodes, pods = view.counts()
        return jsonify({"status": "ready", "nodes": nodes, "pods": pods})

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.errorhandler(404)
    def not_found(_err: Any) -> Response:
        return _error(404, "not-found", f"no endpoint {request.path}")

    @app.errorhandler(405)
    def wrong_method(_err: Any) -> Response:
        response = _error(405, "method-not-allowed", "this endpoint does not take that method")
        response.headers["Allow"] = (
            "GET" if request.path in ("/healthz", "/readyz", "/metrics") else "POST"
        )
        return response

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> Response:
        if isinstance(err, HTTPException) and err.code is not None:
            return _error(err.code, "http-error", err.description or err.name)
        log.exception("unexpected error on %s", request.path)
        return _error(500, "internal", f"internal error: {type(err).__name__}")

    return app


def _error(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    return response
