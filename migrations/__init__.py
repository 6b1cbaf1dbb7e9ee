"""Alembic migrations of the timekeeper schema (run with `gpushare db upgrade`)."""
