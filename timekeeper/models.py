"""SQLAlchemy 2 models of the timekeeper schema.

The schema itself is created and changed only by the alembic migrations in `migrations/`;
these classes describe it for queries. Times are aware UTC datetimes in Python, `timestamptz`
on PostgreSQL and fixed-width ISO text on SQLite (always naive UTC there, so text order is
time order).

Charges are kept exactly as integers in the running totals: `core_microseconds` is
vcuda-core units x microseconds (GPU-seconds x 10^8), `memory_unit_microseconds` is
vcuda-memory units x microseconds. Integer addition is associative, so totals written by many
concurrent transactions in any order are exact.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """An aware UTC datetime; refuses naive values rather than guessing their zone."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} (an aware UTC one is needed)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite aggregates (min/max) come back as text
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        result: datetime = value.astimezone(UTC)
        return result


class Base(DeclarativeBase):
    pass


class UsageReport(Base):
    """The ledger: one row per accepted report, never updated or deleted by the service."""

    __tablename__ = "usage_reports"
    __table_args__ = (
        # A report is keyed by its namespace and pod: a caller of one namespace cannot take
        # the key of another namespace's pod first.
        sa.UniqueConstraint(
            "namespace", "pod_uid", "sequence", name="uq_usage_reports_namespace_pod_sequence"
        ),
        sa.Index("ix_usage_reports_namespace_pod_start", "namespace", "pod_uid", "start_at"),
        sa.Index("ix_usage_reports_namespace_start", "namespace", "start_at"),
    )

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True
    )
    pod_uid: Mapped[str] = mapped_column(sa.String(128))
    sequence: Mapped[int] = mapped_column(sa.BigInteger)
    namespace: Mapped[str] = mapped_column(sa.String(63))
    pod: Mapped[str] = mapped_column(sa.String(253))
    start_at: Mapped[datetime] = mapped_column(UtcDateTime)
    end_at: Mapped[datetime] = mapped_column(UtcDateTime)
    vcuda_core: Mapped[int] = mapped_column(sa.Integer)
    vcuda_memory: Mapped[int] = mapped_column(sa.Integer)
    gpu_seconds: Mapped[float] = mapped_column(sa.Float)
    memory_byte_seconds: Mapped[float] = mapped_column(sa.Float)
    sm_utilization: Mapped[float | None] = mapped_column(sa.Float)
    memory_used_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)


class UsageBucket(Base):
    """Running totals per namespace and 15-minute UTC bucket, updated with each report."""

    __tablename__ = "usage_buckets"

    namespace: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    core_microseconds: Mapped[int] = mapped_column(sa.BigInteger)
    memory_unit_microseconds: Mapped[int] = mapped_column(sa.BigInteger)


class BudgetPolicyVersion(Base):
    """Every budgets file the timekeeper accepted, in order: the newest is in force in every
    worker and replica."""

    __tablename__ = "budget_policies"
    __table_args__ = (sa.Index("ix_budget_policies_sha256", "sha256"),)

    version: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True
    )
    sha256: Mapped[str] = mapped_column(sa.String(64))
    content: Mapped[str] = mapped_column(sa.Text)
    loaded_at: Mapped[datetime] = mapped_column(UtcDateTime)


class BudgetPolicyRejection(Base):
    """A budgets file content that was refused (logged once, whichever process saw it)."""

    __tablename__ = "budget_policy_rejections"

    sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    problems: Mapped[str] = mapped_column(sa.Text)
    rejected_at: Mapped[datetime] = mapped_column(UtcDateTime)


usage_reports: sa.Table = UsageReport.__table__  # type: ignore[assignment]
usage_buckets: sa.Table = UsageBucket.__table__  # type: ignore[assignment]
budget_policies: sa.Table = BudgetPolicyVersion.__table__  # type: ignore[assignment]
budget_policy_rejections: sa.Table = BudgetPolicyRejection.__table__  # type: ignore[assignment]
