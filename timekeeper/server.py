"""Serving the timekeeper with gunicorn, started from `gpushare timekeeper`.

A programmatic gunicorn application: the master migrates the schema and checks every
setting and file before it forks; each worker builds its own app (its own database pool)
after the fork. Workers are `gthread`: a few threads each, so slow clients do not hold a
whole process.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from timekeeper import gunicorn_hooks
from timekeeper.errors import ConfigError
from timekeeper.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """How gunicorn listens and how many workers it runs."""

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 2
    threads: int = 4
    timeout_seconds: int = 30
    access_log: bool = False


class TimekeeperServer(BaseApplication):
    def __init__(self, settings: Settings, options: ServeOptions) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        config = {
            "bind": f"{self.options.host}:{self.options.port}",
            "workers": self.options.workers,
            "worker_class": "gthread",
            "threads": self.options.threads,
            "timeout": self.options.timeout_seconds,
            "graceful_timeout": 10,
            "keepalive": 5,
            "accesslog": "-" if self.options.access_log else None,
            "child_exit": gunicorn_hooks.child_exit,
            "when_ready": gunicorn_hooks.when_ready,
            "proc_name": "gpushare-timekeeper",
            # Several servers may run on one machine (tests, demos); none needs the socket.
            "control_socket_disable": True,
        }
        for key, value in config.items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from timekeeper.api import create_app

        return create_app(self.settings)


def serve(settings: Settings, options: ServeOptions) -> int:
    """Run gunicorn until it is stopped; sets up the shared metrics folder first."""
    own_metrics_dir: Path | None = None
    if settings.metrics_multiprocess_dir is None and options.workers > 1:
        own_metrics_dir = Path(tempfile.mkdtemp(prefix="gpushare-metrics-"))
        settings = _with_metrics_dir(settings, own_metrics_dir)
    if settings.metrics_multiprocess_dir is not None:
        folder = settings.metrics_multiprocess_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob("*.db"):
                stale.unlink()
        except OSError as err:
            raise ConfigError(
                [
                    f"--metrics-dir: must be a folder this process can create and write "
                    f"({err.strerror or err}) (got {str(folder)!r})"
                ]
            ) from err
        # prometheus-client decides at import time whether it runs in multi-process mode.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(settings.metrics_multiprocess_dir)
    try:
        check_files(settings)
        TimekeeperServer(settings, options).run()
    finally:
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)
    return 0


def check_files(settings: Settings) -> None:
    """Read the tokens, JWKS and budgets files once in the master, so that a bad file stops
    the start with its reasons instead of failing in every worker. A bad budgets file only
    stops it when the database holds no good policy to serve instead."""
    from timekeeper.api import build_authenticator
    from timekeeper.database import make_engine
    from timekeeper.policy_store import StoredPolicySource

    build_authenticator(settings)
    if settings.budgets_path is not None:
        engine = make_engine(settings.database)
        try:
            StoredPolicySource(settings.budgets_path, engine)
        finally:
            engine.dispose()


def _with_metrics_dir(settings: Settings, path: Path) -> Settings:
    from dataclasses import replace

    return replace(settings, metrics_multiprocess_dir=path)
