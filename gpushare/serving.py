"""A gunicorn worker that reads requests on an asyncio event loop (adapter of the servers).

The webhook and the timekeeper are WSGI apps served by gunicorn: its master binds the
sockets, forks and watches the workers, runs the hooks and hands each worker the app. This
worker class replaces only how a worker talks to its clients. Hypercorn's HTTP/1.1 protocol
runs on one event loop per worker: a connection is a few kilobytes of state and costs no
thread while its TLS handshake, request line, headers or body are still arriving. Only a
request that has fully arrived goes to the thread pool that runs the app (`threads` of the
gunicorn configuration). Deadlines close what does not arrive in time:

- the TLS handshake must finish within `handshake_timeout_seconds`;
- a connection must deliver a complete request head within `keepalive` seconds of opening
  or of its previous answer (one timer from the first byte to the last header, so a client
  that trickles bytes does not extend it);
- once a request's head has arrived, each read of its body may wait at most
  `read_timeout_seconds`, and the body is refused past `max_body_bytes`.

The figures behind the choice (against gunicorn's threaded worker and its gevent worker)
are in the README's Performance table.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import ssl
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from gunicorn.workers.base import Worker

WORKER_CLASS = "gpushare.serving.AsyncioWorker"
"""The gunicorn `worker_class` setting that selects this worker."""


@dataclass(frozen=True)
class ClientLimits:
    """What one client connection may cost; the gunicorn application offers it as
    `client_limits` (the `keepalive` setting is the request-head deadline)."""

    handshake_timeout_seconds: float = 5.0
    """A TLS handshake must finish within this."""
    read_timeout_seconds: int = 10
    """Once a request's head has arrived, each read of its body waits at most this."""
    max_body_bytes: int = 1024 * 1024
    """Longer bodies are refused with a JSON 413 before the app sees them."""


class AsyncioWorker(Worker):
    """Serves the worker's sockets with hypercorn on an asyncio loop (see the module)."""

    def run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        from hypercorn.asyncio.run import worker_serve
        from hypercorn.config import Sockets

        loop = asyncio.get_running_loop()
        loop.set_default_executor(
            ThreadPoolExecutor(self.cfg.threads, thread_name_prefix="gpushare-request")
        )
        limits: ClientLimits = getattr(self.app, "client_limits", ClientLimits())
        context_factory = _ssl_context_factory(self.cfg) if self.cfg.is_ssl else None
        config = _config(self.cfg, limits, context_factory)
        listeners = [listener.sock for listener in self.sockets]
        sockets = Sockets(
            secure_sockets=listeners if context_factory is not None else [],
            insecure_sockets=[] if context_factory is not None else listeners,
            quic_sockets=[],
        )
        app = _WsgiAdapter(self.wsgi, limits.max_body_bytes)
        await worker_serve(app, config, sockets=sockets, shutdown_trigger=self._stopped)

    async def _stopped(self) -> None:
        """Returns when the worker is told to stop (gunicorn's handlers clear `alive`) or
        its master is gone; meanwhile tells the master that the worker is alive."""
        while self.alive and self.ppid == os.getppid():
            self.notify()
            await asyncio.sleep(0.1)


class _WsgiAdapter:
    """Runs a WSGI app for hypercorn: the whole request is read on the event loop (at most
    `max_body_bytes`), the app runs on a thread of the pool and its answer is collected there,
    then sent from the loop in one piece. One hop to the thread and back per request: sending
    each part from the thread would cost a round trip to the loop apiece."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(
        self, scope: Any, receive: Any, send: Any, sync_spawn: Any, call_soon: Any
    ) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close"})
        if scope["type"] != "http":
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _too_large(send, self.max_body_bytes, f"{int(declared)} bytes")
            return
        body = bytearray()
        while True:
            message = await receive()
            body.extend(message.get("body", b""))
            if len(body) > self.max_body_bytes:
                await _too_large(send, self.max_body_bytes, "more")
                return
            if not message.get("more_body"):
                break
        status, headers, content = await sync_spawn(self._run, _environ(scope, bytes(body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content, "more_body": False})

    def _run(self, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        started: list[tuple[int, list[tuple[bytes, bytes]]]] = []

        def start_response(status: str, headers: list[tuple[str, str]], _exc: Any = None) -> Any:
            encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
            started[:] = [(int(status.split(" ", 1)[0]), encoded)]
            return lambda _data: None  # the legacy write() callable; Flask never uses it

        result = self.app(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started[0]
        return status, headers, content


def _environ(scope: Any, body: bytes) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) of an HTTP scope and its whole body."""
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if scope.get("client"):
        environ["REMOTE_ADDR"] = scope["client"][0]
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name not in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            name = f"HTTP_{name}"
        value = raw_value.decode("latin-1")
        environ[name] = f"{environ[name]},{value}" if name in environ else value
    return environ


async def _too_large(send: Any, limit: int, got: str) -> None:
    body = json.dumps(
        {"error": "request-entity-too-large", "message": f"body: at most {limit} bytes (got {got})"}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _config(
    cfg: Any, limits: ClientLimits, context_factory: Callable[[], ssl.SSLContext] | None
) -> Any:
    """Hypercorn's configuration from gunicorn's settings and the client limits."""
    from hypercorn.config import Config

    class _Config(Config):
        @property
        def ssl_enabled(self) -> bool:
            return context_factory is not None

        def create_ssl_context(self) -> ssl.SSLContext | None:
            return context_factory() if context_factory is not None else None

    config = _Config()
    config.keep_alive_timeout = float(cfg.keepalive)
    config.ssl_handshake_timeout = limits.handshake_timeout_seconds
    config.read_timeout = limits.read_timeout_seconds
    config.graceful_timeout = float(cfg.graceful_timeout)
    config.backlog = cfg.backlog
    config.alpn_protocols = ["http/1.1"]
    config.h11_max_incomplete_size = cfg.limit_request_line + cfg.limit_request_field_size
    # Loggers, not streams: records go through the handlers the process configured (JSON
    # lines in the cluster), like the app's own.
    config.accesslog = logging.getLogger("hypercorn.access") if cfg.accesslog else None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def _ssl_context_factory(cfg: Any) -> Callable[[], ssl.SSLContext]:
    """The context of gunicorn's `ssl_context` hook, followed on every handshake.

    The event loop takes one context for all connections; its SNI callback hands each new
    handshake the context the hook gives at that moment, so a hook that follows rotated
    certificate files works as under gunicorn's own workers.
    """
    from gunicorn import sock

    prepared: list[ssl.SSLContext] = []

    def current() -> ssl.SSLContext:
        context: ssl.SSLContext = sock.ssl_context(cfg)
        if not prepared or prepared[0] is not context:
            context.set_alpn_protocols(["http/1.1"])
            context.sni_callback = swap
            prepared[:] = [context]
        return context

    def swap(connection: Any, _server_name: str | None, initial: ssl.SSLContext) -> None:
        latest = current()
        if latest is not initial:
            connection.context = latest

    return current
