"""Gunicorn configuration for the timekeeper (`gunicorn -c python:timekeeper.gunicorn_hooks`).

`worker_class` and `keepalive` are the ones `gpushare timekeeper` uses: requests are read on
an event loop, and a request head must arrive within 5 s (`gpushare.serving`). `child_exit`
tells prometheus-client that a worker is gone, so that its live-process values are dropped
from the multi-process collection (its counters are kept).
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

worker_class = "gpushare.serving.AsyncioWorker"
keepalive = 5


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def when_ready(server: Any) -> None:
    for listener in server.LISTENERS:
        server.log.info("timekeeper listening on %s", listener)
