"""The usage ledger and the per-namespace running totals.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from timekeeper.models import UtcDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "usage_reports",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("pod_uid", sa.String(128), nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("namespace", sa.String(63), nullable=False),
        sa.Column("pod", sa.String(253), nullable=False),
        sa.Column("start_at", UtcDateTime, nullable=False),
        sa.Column("end_at", UtcDateTime, nullable=False),
        sa.Column("vcuda_core", sa.Integer, nullable=False),
        sa.Column("vcuda_memory", sa.Integer, nullable=False),
        sa.Column("gpu_seconds", sa.Float, nullable=False),
        sa.Column("memory_byte_seconds", sa.Float, nullable=False),
        sa.Column("sm_utilization", sa.Float, nullable=True),
        sa.Column("memory_used_bytes", sa.BigInteger, nullable=True),
        sa.Column("received_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("pod_uid", "sequence", name="uq_usage_reports_pod_sequence"),
        sa.CheckConstraint("end_at > start_at", name="ck_usage_reports_positive_interval"),
        sa.CheckConstraint("sequence >= 1", name="ck_usage_reports_sequence_positive"),
    )
    op.create_index("ix_usage_reports_pod_start", "usage_reports", ["pod_uid", "start_at"])
    op.create_index("ix_usage_reports_namespace_start", "usage_reports", ["namespace", "start_at"])
    op.create_table(
        "usage_buckets",
        sa.Column("namespace", sa.String(63), primary_key=True),
        sa.Column("bucket_start", UtcDateTime, primary_key=True),
        sa.Column("core_microseconds", sa.BigInteger, nullable=False),
        sa.Column("memory_unit_microseconds", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("usage_buckets")
    op.drop_index("ix_usage_reports_namespace_start", table_name="usage_reports")
    op.drop_index("ix_usage_reports_pod_start", table_name="usage_reports")
    op.drop_table("usage_reports")
