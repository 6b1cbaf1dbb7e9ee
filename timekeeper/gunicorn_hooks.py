"""Gunicorn server hooks for the timekeeper (`gunicorn -c python:timekeeper.gunicorn_hooks`).

`child_exit` tells prometheus-client that a worker is gone, so that its live-process
values are dropped from the multi-process collection (its counters are kept).
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def when_ready(server: Any) -> None:
    for listener in server.LISTENERS:
        server.log.info("timekeeper listening on %s", listener)
