"""WSGI entry: the one place that reads the environment (`gunicorn webhook.wsgi:app`)."""

from __future__ import annotations

import os

from flask import Flask

from webhook.app import create_app
from webhook.settings import Settings


def settings_from_env(**overrides: str) -> Settings:
    """Settings from `GPUSHARE_WEBHOOK_*` variables, flags (`overrides`) winning."""
    return Settings.from_env(os.environ, **overrides)


def __getattr__(name: str) -> Flask:
    # Built on first access, so importing this module builds nothing.
    if name == "app":
        return create_app(settings_from_env())
    raise AttributeError(name)
