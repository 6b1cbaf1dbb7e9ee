"""Reports keyed by namespace and pod: (namespace, pod_uid, sequence) is unique, and a pod's
intervals are looked up by (namespace, pod_uid, start_at).

A pod UID alone let a caller of one namespace take another namespace's key first (its pod
UID with a low sequence) and make that namespace's genuine reports conflict. Every existing
row keeps its key: (pod_uid, sequence) was unique, so (namespace, pod_uid, sequence) is too.
Going down needs (pod_uid, sequence) unique again across namespaces; it stops with the
duplicates' count rather than lose a report.

Revision ID: 0002_reports_by_namespace
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002_reports_by_namespace"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_reports") as batch:
        batch.drop_constraint("uq_usage_reports_pod_sequence", type_="unique")
        batch.drop_index("ix_usage_reports_pod_start")
        batch.create_unique_constraint(
            "uq_usage_reports_namespace_pod_sequence", ["namespace", "pod_uid", "sequence"]
        )
        batch.create_index(
            "ix_usage_reports_namespace_pod_start", ["namespace", "pod_uid", "start_at"]
        )


def downgrade() -> None:
    duplicates = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT count(*) FROM (SELECT pod_uid, sequence FROM usage_reports "
                "GROUP BY pod_uid, sequence HAVING count(*) > 1) AS twice"
            )
        )
        .scalar_one()
    )
    if duplicates:
        raise RuntimeError(
            f"cannot go below 0002_reports_by_namespace: {duplicates} (podUid, sequence) "
            "pairs are held by reports of more than one namespace, which the older schema "
            "cannot store"
        )
    with op.batch_alter_table("usage_reports") as batch:
        batch.drop_index("ix_usage_reports_namespace_pod_start")
        batch.drop_constraint("uq_usage_reports_namespace_pod_sequence", type_="unique")
        batch.create_unique_constraint("uq_usage_reports_pod_sequence", ["pod_uid", "sequence"])
        batch.create_index("ix_usage_reports_pod_start", ["pod_uid", "start_at"])
