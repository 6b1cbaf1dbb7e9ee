"""Serving the webhook under gunicorn with TLS (entry layer).

One worker process with threads by default: the budget cache and the metrics are then one
per pod, and the Deployment scales by replicas. The TLS context follows the certificate
files, so a rotated certificate is served without a restart.
"""

from __future__ import annotations

import gc
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gunicorn.app.base import BaseApplication

from gpushare.serving import WORKER_CLASS, ClientLimits
from webhook.tls import ReloadingContext


@dataclass(frozen=True)
class ServerOptions:
    """How gunicorn serves the app."""

    bind: str
    cert_file: str
    key_file: str
    workers: int = 1
    threads: int = 8
    keepalive_seconds: int = 30
    cert_check_seconds: float = 1.0
    access_log: bool = False
    handshake_timeout_seconds: float = 5.0
    read_timeout_seconds: int = 10
    max_body_bytes: int = 4 * 1024 * 1024


class _Application(BaseApplication):
    def __init__(self, factory: Callable[[], Any], options: ServerOptions) -> None:
        self._factory = factory
        self._options = options
        self._contexts: ReloadingContext | None = None
        self.client_limits = ClientLimits(
            handshake_timeout_seconds=options.handshake_timeout_seconds,
            read_timeout_seconds=options.read_timeout_seconds,
            max_body_bytes=options.max_body_bytes,
        )
        super().__init__()

    def load_config(self) -> None:
        options = self._options
        settings: dict[str, Any] = {
            "bind": [options.bind],
            "workers": options.workers,
            "threads": options.threads,
            "worker_class": WORKER_CLASS,
            "keepalive": options.keepalive_seconds,
            "timeout": 30,
            "graceful_timeout": 20,
            "certfile": options.cert_file,
            "keyfile": options.key_file,
            "ssl_context": self._ssl_context,
            "accesslog": "-" if options.access_log else None,
            "proc_name": "gpushare-webhook",
            # gunicorn's control socket sits in the home folder, shared by every server of
            # the user; nothing here uses it.
            "control_socket_disable": True,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def _ssl_context(self, _config: Any, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        if self._contexts is None:
            self._contexts = ReloadingContext(
                self._options.cert_file,
                self._options.key_file,
                check_seconds=self._options.cert_check_seconds,
            )
        return self._contexts.context()

    def load(self) -> Any:
        app = self._factory()
        # Everything built so far lives as long as the worker: keep it out of the cyclic
        # garbage collector's scans, which otherwise walk it on every full collection.
        gc.collect()
        gc.freeze()
        return app


def serve(factory: Callable[[], Any], options: ServerOptions) -> None:
    """Run gunicorn until it is told to stop; the app is built in each worker."""
    _Application(factory, options).run()
