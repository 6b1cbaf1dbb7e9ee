"""WSGI entry point for running the timekeeper under any WSGI server:

    gunicorn -c python:timekeeper.gunicorn_hooks 'timekeeper.wsgi:app'

The only module that reads the environment (`GPUSHARE_*`, see `settings.ENV_NAMES`). With
several gunicorn workers set `PROMETHEUS_MULTIPROC_DIR` to an empty folder (see
`timekeeper.metrics`). The schema must already be migrated (`gpushare db upgrade`).
"""

from __future__ import annotations

import os
import sys

from gpushare import logs
from timekeeper.api import create_app
from timekeeper.budgets import BudgetsError
from timekeeper.errors import ConfigError
from timekeeper.settings import settings_from_environment

try:
    settings = settings_from_environment(os.environ)
    logs.configure(log_format=settings.log_format, level=settings.log_level)
    app = create_app(settings)  # reads the tokens, JWKS and budgets files
except (ConfigError, BudgetsError) as err:
    for problem in err.problems:
        print(f"timekeeper: {problem}", file=sys.stderr)
    raise SystemExit(2) from err
