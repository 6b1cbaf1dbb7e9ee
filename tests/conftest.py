"""Fixtures shared by every part's tests: real PostgreSQL databases.

PostgreSQL is expected at 127.0.0.1:5432 (override with GPUSHARE_TEST_POSTGRES_URL). Outside
CI a missing server skips the PostgreSQL tests; under CI=true it fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

POSTGRES_ADMIN_URL = os.environ.get(
    "GPUSHARE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def postgres_admin_engine() -> Iterator[sa.Engine]:
    """An AUTOCOMMIT engine on the PostgreSQL maintenance database, for CREATE DATABASE."""
    engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as err:
        engine.dispose()
        message = f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {err.orig}"
        if _in_ci():
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)
    yield engine
    engine.dispose()


@pytest.fixture
def make_postgres_url(postgres_admin_engine: sa.Engine) -> Iterator[Callable[[], str]]:
    """Creates empty PostgreSQL databases that are dropped after the test; returns their URLs."""
    created: list[str] = []

    def make() -> str:
        name = f"gpushare_test_{uuid.uuid4().hex[:12]}"
        with postgres_admin_engine.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return postgres_admin_engine.url.set(database=name).render_as_string(hide_password=False)

    yield make
    with postgres_admin_engine.connect() as connection:
        for name in created:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_url(make_postgres_url: Callable[[], str]) -> str:
    """The URL of a fresh, empty PostgreSQL database for this test."""
    return make_postgres_url()
