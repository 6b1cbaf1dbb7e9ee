"""The sidecar process against the real timekeeper process on loopback.

Each case checks what the timekeeper holds at the end: intervals that cover the pod's life
with no gap above one reporting period, no overlap and each sequence once (no double
charge), and a usage total equal to the sum of the intervals.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.polling import wait_until
from tests.sidecar.harness import (
    Held,
    Pod,
    SidecarProcess,
    assert_covers,
    now_utc,
    spooled,
)
from tests.sidecar.timekeeper_process import TimekeeperProcess

TOKEN = "integration-token-team-a"
PERIOD = 0.2
CORE = 50


@pytest.fixture
def timekeeper(tmp_path: Path) -> Iterator[TimekeeperProcess]:
    process = TimekeeperProcess(tmp_path, tokens={TOKEN: "team-a"})
    process.start()
    yield process
    process.kill()


def assert_charged_once(timekeeper: TimekeeperProcess, pod: Pod, held: list[Held]) -> None:
    """The usage API's total for the pod is exactly the sum of its intervals' charges."""
    start = min(h.start for h in held) - timedelta(minutes=1)
    end = max(h.end for h in held) + timedelta(minutes=1)
    usage = timekeeper.usage(pod.namespace, start, end)
    rows = [row for row in usage["rows"] if row["podUid"] == pod.uid]
    assert len(rows) == 1
    expected = sum((h.end - h.start).total_seconds() for h in held) * CORE / 100
    assert rows[0]["reports"] == len(held)
    assert rows[0]["gpuSeconds"] == pytest.approx(expected, abs=1e-5)


def test_timekeeper_killed_for_a_while_then_restarted(
    tmp_path: Path, timekeeper: TimekeeperProcess
) -> None:
    pod = Pod(tmp_path, timekeeper.url, TOKEN, period_seconds=PERIOD)
    started = now_utc()
    with SidecarProcess(pod) as sidecar:
        wait_until(lambda: len(timekeeper.held(pod.uid)) >= 2, timeout=15, what="2 intervals")
        timekeeper.kill()
        wait_until(lambda: len(spooled(pod.spool_dir)) >= 5, timeout=15, what="a backlog")
        timekeeper.start()
        wait_until(lambda: not spooled(pod.spool_dir), timeout=15, what="the backlog sent")
        stopped = now_utc()
        assert sidecar.terminate_and_wait() == 0
    held = timekeeper.held(pod.uid)
    assert_covers(held, lifetime_start=started, lifetime_end=stopped, period=PERIOD)
    assert_charged_once(timekeeper, pod, held)


def test_sidecar_killed_9_then_restarted(tmp_path: Path, timekeeper: TimekeeperProcess) -> None:
    pod = Pod(tmp_path, timekeeper.url, TOKEN, period_seconds=PERIOD)
    started = now_utc()
    with SidecarProcess(pod, run=1) as first:
        wait_until(lambda: len(timekeeper.held(pod.uid)) >= 3, timeout=15, what="3 intervals")
        first.kill()
    with SidecarProcess(pod, run=2) as second:
        count = len(timekeeper.held(pod.uid))
        wait_until(
            lambda: len(timekeeper.held(pod.uid)) >= count + 3,
            timeout=15,
            what="intervals after the restart",
        )
        stopped = now_utc()
        assert second.terminate_and_wait() == 0
        assert "restarted: continuing the interval open since" in second.log()
    held = timekeeper.held(pod.uid)
    assert_covers(held, lifetime_start=started, lifetime_end=stopped, period=PERIOD)
    assert_charged_once(timekeeper, pod, held)


def test_sigterm_during_an_outage_then_restart(
    tmp_path: Path, timekeeper: TimekeeperProcess
) -> None:
    pod = Pod(tmp_path, timekeeper.url, TOKEN, period_seconds=PERIOD)
    started = now_utc()
    with SidecarProcess(pod, run=1) as first:
        wait_until(lambda: len(timekeeper.held(pod.uid)) >= 2, timeout=15, what="2 intervals")
        timekeeper.kill()
        wait_until(lambda: len(spooled(pod.spool_dir)) >= 3, timeout=15, what="a backlog")
        first.signal(signal.SIGTERM)
        assert first.wait(timeout=10) == 0, "exits 0 even with intervals undelivered"
        assert "left in the spool" in first.log()
    left = len(spooled(pod.spool_dir))
    assert left >= 4, "the interval open at SIGTERM was closed and spooled too"
    timekeeper.start()
    with SidecarProcess(pod, run=2) as second:
        wait_until(lambda: not spooled(pod.spool_dir), timeout=15, what="the spool delivered")
        count = len(timekeeper.held(pod.uid))
        wait_until(
            lambda: len(timekeeper.held(pod.uid)) >= count + 2, timeout=15, what="new intervals"
        )
        stopped = now_utc()
        assert second.terminate_and_wait() == 0
    held = timekeeper.held(pod.uid)
    assert_covers(held, lifetime_start=started, lifetime_end=stopped, period=PERIOD)
    assert_charged_once(timekeeper, pod, held)
