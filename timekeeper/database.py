"""Database adapter: engines for SQLite and PostgreSQL, and the alembic migrations.

SQLite runs in WAL mode (readers never block the writer) with a busy timeout; SQLAlchemy
emits the BEGIN of its transactions itself (the sqlite3 module's own transaction handling is
off), and the report writer (`report_writer.py`) begins its own with `BEGIN IMMEDIATE`.
PostgreSQL uses psycopg 3.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import migrations

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS: Final = 30_000


def make_engine(url: str, **engine_options: Any) -> sa.Engine:
    """An engine for `url`; a SQLite file's folder is created if missing."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **engine_options
        )
        _set_up_sqlite(engine)
        return engine
    # No pre-ping (a round trip per request): a connection found broken is invalidated on
    # the failing request (503, the caller retries) and replaced.
    return sa.create_engine(parsed, pool_recycle=3600, **engine_options)


def _set_up_sqlite(engine: sa.Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event (below) emit BEGIN, not the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # NORMAL in WAL mode: a commit survives a crash of the process (kill -9); a power
        # loss may lose the last commits but never corrupts the file.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN")


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """Alembic configuration built in code, so migrations run from an installed package."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration shipped with this version."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


def current_revision(connection: sa.Connection) -> str | None:
    """The revision the database is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


def schema_revision(connection: sa.Connection) -> str | None:
    """`current_revision` in one plain query, without alembic's machinery (for /readyz)."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


LEDGER_REVISION: Final = "0001"
"""The migration that creates the ledger: downgrading through it deletes every report."""


def ledger_dropped_by_downgrade(url: str, revision: str) -> int | None:
    """How many reports a downgrade of `url` to `revision` would delete with the ledger;
    None when the ledger survives it or is empty. `ValueError` for a revision that is not known."""
    script = ScriptDirectory.from_config(alembic_config())
    engine = make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            current = current_revision(connection)
            if current is None:
                return None
            if revision.startswith("-") and revision[1:].isdigit():
                revision = _steps_below(script, current, int(revision[1:]))
            try:
                undone = {
                    step.revision
                    for step in script.iterate_revisions(current, revision)
                    if step is not None
                }
            except Exception as err:  # alembic's own errors for unknown or forward targets
                raise ValueError(str(err)) from err
            undone.discard(revision if revision != "base" else "")
            if LEDGER_REVISION not in undone or revision == LEDGER_REVISION:
                return None
            count = connection.execute(sa.text("SELECT count(*) FROM usage_reports")).scalar()
            return int(count) if count else None  # an empty ledger loses nothing
    finally:
        engine.dispose()


def _steps_below(script: ScriptDirectory, current: str, steps: int) -> str:
    """The revision `steps` migrations below `current` (`base` past the first)."""
    revision: str | None = current
    for _ in range(steps):
        if revision is None:
            break
        down = script.get_revision(revision).down_revision
        revision = down if isinstance(down, str) or down is None else down[0]
    return revision or "base"


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` up to `revision`."""
    _run(url, lambda config: command.upgrade(config, revision))


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at `url` down to `revision` (`base`: drop everything)."""
    _run(url, lambda config: command.downgrade(config, revision))


def _run(url: str, action: Any) -> None:
    engine = make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            action(alembic_config(connection))
            connection.commit()
    finally:
        engine.dispose()
