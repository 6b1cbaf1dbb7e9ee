"""Fixtures of the webhook tests: settings, a fake budget source and the Flask test client."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.webhook.builders import FakeBudgets
from webhook.app import create_app
from webhook.settings import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings(timekeeper_url="http://timekeeper.gpushare-system.svc:8080")


@pytest.fixture
def budgets() -> FakeBudgets:
    return FakeBudgets()


@pytest.fixture
def client(settings: Settings, budgets: FakeBudgets) -> FlaskClient:
    return create_app(settings, budgets=budgets).test_client()
