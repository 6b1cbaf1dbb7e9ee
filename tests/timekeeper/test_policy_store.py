"""One budget policy for every worker and replica: the last good policy kept with the ledger."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.polling import wait_until
from tests.timekeeper.servers import ServerProcess
from timekeeper import database
from timekeeper.budgets import BudgetsError
from timekeeper.policy_store import StoredPolicySource

GOOD_2 = "namespaces:\n  team-a: {gpuHours: 2.0}\n"
GOOD_01 = "namespaces:\n  team-a: {gpuHours: 0.1}\n"
BAD = "namespaces:\n  team-a: {gpuHours: lots}\n"
CHECK_SECONDS = 0.2


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = database.make_engine(database_url)
    yield engine
    engine.dispose()


class WallClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


class MonotonicClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def worker(path: Path, engine: sa.Engine, clock: WallClock) -> StoredPolicySource:
    return StoredPolicySource(path, engine, check_interval_seconds=0, wall_clock=clock)


def budget(source: StoredPolicySource) -> float | None:
    return source.current().budget_for("team-a").gpu_hours


def test_a_good_edit_then_a_bad_one_leaves_every_worker_on_the_good_one(
    tmp_path: Path, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="timekeeper.policy_store")
    path = tmp_path / "budgets.yaml"
    path.write_text(GOOD_2)
    clock = WallClock()
    first, second = worker(path, engine, clock), worker(path, engine, clock)
    assert (budget(first), budget(second)) == (2.0, 2.0)

    caplog.clear()
    path.write_text(GOOD_01)
    assert budget(first) == 0.1  # only the first worker checked before the next edit
    path.write_text(BAD)
    assert (budget(first), budget(second)) == (0.1, 0.1)
    assert first.loaded_at == second.loaded_at
    assert first.version == second.version == 2
    assert first.last_error is not None
    assert first.last_error == second.last_error
    # Logged once between the two workers, each.
    stored = [r for r in caplog.records if "stored as version" in r.getMessage()]
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert (len(stored), len(rejected)) == (1, 1)
    assert rejected[0].levelno == logging.ERROR


def test_every_worker_follows_a_stored_version_within_one_check_interval(
    tmp_path: Path, engine: sa.Engine
) -> None:
    """The bound the real-server test relies on: a worker that checked just before another
    stored a new version keeps its policy until its own interval has passed (a request reads
    no database row before that), and its first request after that answers from the new one."""
    path = tmp_path / "budgets.yaml"
    path.write_text(GOOD_2)
    ticks, wall = MonotonicClock(), WallClock()
    first, second = (
        StoredPolicySource(path, engine, check_interval_seconds=2.0, clock=ticks, wall_clock=wall)
        for _ in range(2)
    )
    ticks.now += 1.5
    path.write_text(GOOD_01)
    assert first.check_now()  # the first worker stores version 2
    path.write_text(BAD)
    ticks.now += 0.25  # 1.75 s after the second worker's last check
    assert budget(second) == 2.0
    ticks.now += 0.25
    assert budget(second) == 0.1
    assert (first.version, second.version) == (2, 2)


def test_a_restart_with_a_broken_file_serves_the_last_good_policy(
    tmp_path: Path, engine: sa.Engine
) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(GOOD_01)
    clock = WallClock()
    worker(path, engine, clock)
    path.write_text(BAD)
    restarted = worker(path, engine, clock)
    assert budget(restarted) == 0.1
    assert restarted.last_error is not None
    path.unlink()
    again = worker(path, engine, clock)
    assert budget(again) == 0.1
    assert again.last_error is not None and "cannot read" in again.last_error[0]


def test_nothing_good_known_refuses_to_start(tmp_path: Path, engine: sa.Engine) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(BAD)
    with pytest.raises(BudgetsError, match="gpuHours"):
        worker(path, engine, WallClock())


def test_a_stale_file_at_start_does_not_push_an_old_policy_back(
    tmp_path: Path, engine: sa.Engine
) -> None:
    path = tmp_path / "budgets.yaml"
    clock = WallClock()
    path.write_text(GOOD_2)
    old = worker(path, engine, clock)
    path.write_text(GOOD_01)
    assert budget(old) == 0.1
    # A replica whose node has not got the new ConfigMap yet starts with the old content.
    stale = tmp_path / "stale.yaml"
    stale.write_text(GOOD_2)
    assert budget(worker(stale, engine, clock)) == 0.1
    # Reverting the file on purpose does make a new version.
    path.write_text(GOOD_2)
    assert budget(old) == 2.0
    assert old.version == 3


def test_workers_of_a_real_server_agree(
    tmp_path: Path,
    database_url: str,
    server_factory: Callable[..., ServerProcess],
) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(GOOD_2)
    server = server_factory(
        "--database-url",
        database_url,
        "--allow-unauthenticated-reports",
        "--workers",
        "3",
        "--budgets",
        str(path),
        "--budgets-check-seconds",
        str(CHECK_SECONDS),
    )

    def answers() -> set[float]:
        seen = set()
        for _ in range(24):
            status, body = server.request("GET", "/api/v1/namespaces/team-a")
            assert status == 200
            seen.add(body["budgetGpuHours"])
        return seen

    assert answers() == {2.0}
    path.write_text(GOOD_01)
    wait_until(
        lambda: server.request("GET", "/api/v1/namespaces/team-a")[1]["budgetGpuHours"] == 0.1,
        timeout=10,
        what="a worker to store the edit",
    )
    stored_by = time.monotonic()  # version 2 was stored before that answer
    path.write_text(BAD)
    # Until one check interval after the store, a worker whose last check came before it may
    # still answer from version 1: it reads no database row before its interval has passed,
    # and the requests of a round need not reach every worker (whichever worker accepts a
    # connection first takes it). From then on, every worker's next request checks, and a
    # check that starts after the store loads version 2.
    every_worker_checked_by = stored_by + CHECK_SECONDS

    def settled() -> bool:
        started = time.monotonic()
        seen = answers()
        if started <= every_worker_checked_by:
            return False
        assert seen == {0.1}, "a worker answered from version 1 a check interval after the store"
        return True

    wait_until(settled, timeout=10, what="a check interval after the store")
    for _ in range(3):
        assert answers() == {0.1}
    scrapes = {
        line
        for _ in range(6)
        for line in server.request("GET", "/metrics")[1].decode().splitlines()
        if line.startswith("gpushare_timekeeper_budgets_loaded_timestamp_seconds")
    }
    assert len(scrapes) == 1, scrapes
    log = server.log()
    assert log.count("stored as version 2") == 1
    assert log.count("rejected, the last good policy stays in force") == 1
