"""Serving the extender: gunicorn, one worker process with threads (the view is in memory and
must be one per process), the watches started inside that worker."""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.app.base import BaseApplication

from extender.cli import Settings

log = logging.getLogger(__name__)


def build_app(settings: Settings) -> Any:
    """The app with its view, watches and binder, talking to the configured API server."""
    from kubernetes import client, config

    from extender.app import create_app
    from extender.kube import ClusterWatch, KubernetesBinder
    from extender.view import ClusterView

    if settings.kubeconfig:
        api_client = config.new_client_from_config(config_file=settings.kubeconfig)
    else:
        config.load_incluster_config()
        api_client = client.ApiClient()
    # one connection per serving thread and per watch, so binds never queue for a socket
    api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = settings.threads + 4
    view = ClusterView(assume_seconds=settings.assume_seconds)
    watch = ClusterWatch(api_client, view).start()
    return create_app(
        view=view,
        binder=KubernetesBinder(api_client),
        ready=lambda: watch.ready,
        max_body_bytes=settings.max_body_bytes,
    )


class _Application(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        super().__init__()

    def load_config(self) -> None:
        settings = self._settings
        for key, value in {
            "bind": [f"{settings.host}:{settings.port}"],
            "workers": 1,
            "threads": settings.threads,
            "worker_class": "gthread",
            "timeout": 30,
            "graceful_timeout": 10,
            "keepalive": 30,
            "proc_name": "gpushare-extender",
            "accesslog": None,
            "control_socket_disable": True,
        }.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return build_app(self._settings)


def run(settings: Settings) -> int:
    from gpushare import logs

    logs.configure(log_format=settings.log_format, level=settings.log_level)
    log.info("scheduler extender listening on %s:%d", settings.host, settings.port)
    _Application(settings).run()
    return 0
