"""Every migration goes up, down and up again on SQLite and PostgreSQL; `gpushare db`."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa
from alembic.script import ScriptDirectory

from timekeeper import database

TABLES = {"usage_reports", "usage_buckets"}


def tables(url: str) -> set[str]:
    engine = database.make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def revision(url: str) -> str | None:
    engine = database.make_engine(url)
    try:
        with engine.connect() as connection:
            return database.current_revision(connection)
    finally:
        engine.dispose()


def test_every_migration_upgrades_downgrades_and_upgrades_again(empty_database_url: str) -> None:
    url = empty_database_url
    scripts = ScriptDirectory.from_config(database.alembic_config())
    revisions = [script.revision for script in reversed(list(scripts.walk_revisions()))]
    assert revisions[-1] == database.head_revision()
    previous = "base"
    for target in revisions:
        database.upgrade(url, target)
        assert revision(url) == target
        database.downgrade(url, previous)
        assert revision(url) == (None if previous == "base" else previous)
        database.upgrade(url, target)
        assert revision(url) == target
        previous = target
    assert tables(url) == TABLES
    database.downgrade(url, "base")
    assert tables(url) == set()
    database.upgrade(url)
    assert tables(url) == TABLES


def test_schema_matches_the_models(database_url: str) -> None:
    """The migrations create what the models describe (no drift between the two)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from timekeeper.models import Base

    engine = database.make_engine(database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_db_command_upgrades_and_downgrades(empty_database_url: str) -> None:
    def gpushare(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gpushare", "db", *args, "--database-url", empty_database_url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = gpushare("upgrade")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"at revision {database.head_revision()}")
    assert tables(empty_database_url) == TABLES
    done = gpushare("downgrade", "base")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("at revision base (empty)")
    assert tables(empty_database_url) == set()


def test_db_command_reports_an_unreachable_database() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpushare",
            "db",
            "upgrade",
            "--database-url",
            "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "cannot reach the database" in done.stderr
