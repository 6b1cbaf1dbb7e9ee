"""The SQLite report writer: its WAL is checkpointed in the background, and concurrent
writers in one process take turns without SQLite's sleeping busy handler."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.timekeeper.test_concurrency import odd_report, run_threads
from timekeeper import database
from timekeeper.ledger import Ledger
from timekeeper.report_writer import pod_lock_key, sqlite_time
from timekeeper.reports import parse_report


def test_wal_is_checkpointed_after_writes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"sqlite:///{tmp_path / 'tk.db'}"
    database.upgrade(url)
    engine = database.make_engine(url)
    ledger = Ledger(engine)
    writer = ledger._writer
    now = datetime.now(UTC)
    for index in range(50):
        ledger.record(parse_report(odd_report(0, index)), received_at=now)
    assert (tmp_path / "tk.db-writer.lock").exists()
    assert writer.writes_since_checkpoint > 0
    # The checkpointer runs every half second; poll until it has taken the writes.
    deadline = time.monotonic() + 10
    while writer.writes_since_checkpoint and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.writes_since_checkpoint == 0
    assert "WAL checkpoint failed" not in caplog.text
    engine.dispose()


def test_threads_of_one_process_take_turns(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tk.db'}"
    database.upgrade(url)
    engine = database.make_engine(url)
    ledger = Ledger(engine)
    now = datetime.now(UTC)

    def work(pod: int) -> None:
        for index in range(30):
            ledger.record(parse_report(odd_report(pod, index)), received_at=now)

    run_threads(6, work)
    with engine.connect() as connection:
        count = connection.execute(sa.text("SELECT count(*) FROM usage_reports")).scalar()
    engine.dispose()
    assert count == 180


def test_helpers() -> None:
    assert sqlite_time(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == (
        "2026-01-02 03:04:05.000006"
    )
    assert pod_lock_key("ns", "pod-a") == pod_lock_key("ns", "pod-a") != pod_lock_key("ns", "pod-b")
    assert pod_lock_key("team-a", "pod-a") != pod_lock_key("team-b", "pod-a")
    assert -(2**63) <= pod_lock_key("ns", "pod-a") < 2**63
