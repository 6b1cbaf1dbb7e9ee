"""Alembic environment: runs the migrations on the connection handed in by
`timekeeper.database`, or on `sqlalchemy.url` when alembic is run by hand."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from timekeeper.models import Base

target_metadata = Base.metadata
MIGRATION_LOCK_KEY = 0x67707573686172  # "gpushar": serialises replicas migrating at start


def run_migrations(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )
    if connection.dialect.name == "postgresql":
        # Several replicas may start at once; one migrates, the others wait and find nothing
        # left to do. A session lock, released when the connection closes.
        connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        connection.commit()
    try:
        context.run_migrations()
    finally:
        if connection.dialect.name == "postgresql":
            connection.execute(
                sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
            connection.commit()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or run `gpushare db upgrade --database-url URL`")
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as own_connection:
        run_migrations(own_connection)
        own_connection.commit()
    engine.dispose()
