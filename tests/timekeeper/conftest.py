"""Fixtures of the timekeeper's tests: migrated databases (SQLite and PostgreSQL), apps with a
fixed clock, report bodies, and real gunicorn servers in subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.timekeeper.servers import ServerProcess, start_server
from timekeeper import database
from timekeeper.api import create_app
from timekeeper.auth import Authenticator
from timekeeper.policy_source import PolicySource
from timekeeper.settings import Settings

NOW = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)
"""The fixed clock of in-process apps: a Saturday in November, mid-month."""


@pytest.fixture(
    params=[pytest.param("sqlite", id="sqlite"), pytest.param("postgres", id="postgres")]
)
def database_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def empty_database_url(database_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database with no schema, of each kind."""
    if database_kind == "sqlite":
        return f"sqlite:///{tmp_path / 'timekeeper.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def database_url(empty_database_url: str) -> str:
    """A fresh database migrated to the newest schema."""
    database.upgrade(empty_database_url)
    return empty_database_url


def report_body(**overrides: Any) -> dict[str, Any]:
    """A valid report of one minute ending 10 minutes before NOW; fields may be replaced."""
    body: dict[str, Any] = {
        "podUid": "7f1c1d3e-0000-4000-8000-000000000001",
        "pod": "train-0",
        "namespace": "team-a",
        "sequence": 1,
        "start": "2026-11-21T05:49:00Z",
        "end": "2026-11-21T05:50:00Z",
        "vcudaCore": 50,
        "vcudaMemory": 4,
    }
    body.update(overrides)
    return {key: value for key, value in body.items() if value is not ...}


def minute_report(
    index: int,
    *,
    pod: str = "train-0",
    uid: str | None = None,
    namespace: str = "team-a",
    core: int = 50,
    memory: int = 4,
    first: datetime = NOW - timedelta(days=5),
) -> dict[str, Any]:
    """The `index`-th (1-based) of consecutive one-minute reports of a pod from `first`."""
    start = first + timedelta(minutes=index - 1)
    return {
        "podUid": uid or f"uid-{namespace}-{pod}",
        "pod": pod,
        "namespace": namespace,
        "sequence": index,
        "start": start.isoformat().replace("+00:00", "Z"),
        "end": (start + timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
        "vcudaCore": core,
        "vcudaMemory": memory,
    }


MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app(database_url: str, tmp_path: Path) -> Iterator[MakeApp]:
    """Builds apps on the test's database with the clock at NOW."""
    engines: list[Any] = []

    def make(
        *,
        budgets: str | None = None,
        authenticator: Authenticator | None = None,
        clock: Callable[[], datetime] = lambda: NOW,
        **settings: Any,
    ) -> Flask:
        budgets_path = None
        if budgets is not None:
            budgets_path = tmp_path / f"budgets-{len(engines)}.yaml"
            budgets_path.write_text(budgets)
        engine = database.make_engine(database_url)
        engines.append(engine)
        values: dict[str, Any] = {"database_url": database_url, "budgets_path": budgets_path}
        values.update(settings)
        return create_app(
            Settings(**values),
            engine=engine,
            policy_source=PolicySource(
                budgets_path, check_interval_seconds=values.get("budgets_check_seconds", 2.0)
            ),
            authenticator=authenticator or Authenticator(allow_anonymous_reports=True),
            clock=clock,
        )

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def client(make_app: MakeApp) -> FlaskClient:
    """A test client on an app that accepts unauthenticated reports."""
    return make_app().test_client()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Starts `gpushare timekeeper` subprocesses; stops them after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, name: str = "server") -> ServerProcess:
        server = start_server(list(args), log_path=tmp_path / f"{name}-{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
