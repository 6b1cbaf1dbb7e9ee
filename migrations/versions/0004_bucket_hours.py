"""Bucket totals as whole unit-hours plus the rest below an hour, so they cannot overflow.

A single 64-bit column of unit-microseconds overflowed after some ten thousand large reports
in one bucket (PostgreSQL then refused every later report of that bucket; SQLite turned the
total into an inexact float). Each total becomes two columns: `*_hours` (whole unit-hours)
and the existing `*_microseconds`, from now on only the rest below an hour.

Revision ID: 0004_bucket_hours
Revises: 0003_budget_policies
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004_bucket_hours"
down_revision: str | None = "0003_budget_policies"
branch_labels: str | None = None
depends_on: str | None = None

MICROSECONDS_PER_HOUR = 3_600_000_000
TOTALS = ("core", "memory_unit")


def upgrade() -> None:
    with op.batch_alter_table("usage_buckets") as batch:
        for total in TOTALS:
            batch.add_column(
                sa.Column(f"{total}_hours", sa.BigInteger, nullable=False, server_default="0")
            )
    # Every right-hand side reads the row as it was; an overflowed SQLite total (a float
    # already) is cut to an integer, as exact as it still is.
    assignments = ", ".join(
        f"{total}_hours = CAST({total}_microseconds / {MICROSECONDS_PER_HOUR} AS BIGINT), "
        f"{total}_microseconds = CAST({total}_microseconds AS BIGINT) % {MICROSECONDS_PER_HOUR}"
        for total in TOTALS
    )
    op.execute(f"UPDATE usage_buckets SET {assignments}")
    with op.batch_alter_table("usage_buckets") as batch:
        for total in TOTALS:
            batch.alter_column(f"{total}_hours", server_default=None)


def downgrade() -> None:
    # Fails on PostgreSQL (bigint out of range) when a total no longer fits one column.
    assignments = ", ".join(
        f"{total}_microseconds = {total}_hours * {MICROSECONDS_PER_HOUR} + {total}_microseconds"
        for total in TOTALS
    )
    op.execute(f"UPDATE usage_buckets SET {assignments}")
    with op.batch_alter_table("usage_buckets") as batch:
        for total in TOTALS:
            batch.drop_column(f"{total}_hours")
