"""Budget policies kept with the ledger: every good budgets file, versioned, and the
rejected ones.

Revision ID: 0003_budget_policies
Revises: 0002_reports_by_namespace
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from timekeeper.models import UtcDateTime

revision: str = "0003_budget_policies"
down_revision: str | None = "0002_reports_by_namespace"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "budget_policies",
        sa.Column(
            "version",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("loaded_at", UtcDateTime, nullable=False),
    )
    op.create_index("ix_budget_policies_sha256", "budget_policies", ["sha256"])
    op.create_table(
        "budget_policy_rejections",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("problems", sa.Text, nullable=False),
        sa.Column("rejected_at", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("budget_policy_rejections")
    op.drop_index("ix_budget_policies_sha256", table_name="budget_policies")
    op.drop_table("budget_policies")
