"""The cached timekeeper client against a fake timekeeper speaking the same wire format."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import wait_until
from tests.webhook.builders import FakeTimekeeper, fake_timekeeper, wire_status
from webhook.budget import BudgetStatus
from webhook.budget_client import TimekeeperBudgets, http_fetcher
from webhook.errors import TimekeeperUnavailable
from webhook.metrics import Metrics


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def timekeeper() -> Iterator[FakeTimekeeper]:
    with fake_timekeeper() as server:
        yield server


def make_client(
    url: str, clock: Clock, *, timeout: float = 0.3, metrics: Metrics | None = None
) -> TimekeeperBudgets:
    return TimekeeperBudgets(
        http_fetcher(url, timeout),
        timeout_seconds=timeout,
        ttl_seconds=10,
        stale_seconds=60,
        retry_seconds=5,
        clock=clock,
        metrics=metrics,
    )


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        pytest.param(
            wire_status("warning"),
            BudgetStatus("team-a", "warning", "deprioritize", 4.5, 10.0, "2026-12-01T00:00:00Z"),
            id="warning",
        ),
        pytest.param(
            wire_status("unlimited", budgetGpuHours=None),
            BudgetStatus("team-a", "unlimited", "deprioritize", 4.5, None, "2026-12-01T00:00:00Z"),
            id="unlimited-null-budget",
        ),
        pytest.param(
            wire_status("exhausted", "deny", usedGpuHours=12),
            BudgetStatus("team-a", "exhausted", "deny", 12.0, 10.0, "2026-12-01T00:00:00Z"),
            id="exhausted-deny",
        ),
    ],
)
def test_decodes_status(timekeeper: FakeTimekeeper, wire: dict, expected: BudgetStatus) -> None:
    timekeeper.statuses["team-a"] = wire
    assert make_client(timekeeper.url, Clock()).lookup("team-a").status == expected


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        pytest.param(
            wire_status("broke"),
            "timekeeper sent a bad namespace status: state='broke' is not one of in-budget,"
            " warning, exhausted, unlimited",
            id="unknown-state",
        ),
        pytest.param(
            wire_status(usedGpuHours="many"),
            "timekeeper sent a bad namespace status: usedGpuHours='many' is not a number",
            id="used-not-number",
        ),
        pytest.param(
            wire_status(whenExhausted="shrug"),
            "timekeeper sent a bad namespace status: whenExhausted='shrug' is not one of"
            " deprioritize, deny, throttle",
            id="bad-policy",
        ),
        pytest.param(None, 'timekeeper answered HTTP 404 for namespace "team-a"', id="404"),
    ],
)
def test_bad_answers(timekeeper: FakeTimekeeper, wire: dict | None, message: str) -> None:
    if wire is not None:
        timekeeper.statuses["team-a"] = wire
    with pytest.raises(TimekeeperUnavailable) as caught:
        make_client(timekeeper.url, Clock()).lookup("team-a")
    assert str(caught.value) == message


def test_fresh_entries_come_from_memory(timekeeper: FakeTimekeeper) -> None:
    timekeeper.statuses["team-a"] = wire_status()
    clock = Clock()
    client = make_client(timekeeper.url, clock)
    for _ in range(5):
        assert client.lookup("team-a").stale is False
        clock.now += 1
    assert timekeeper.requests == ["/api/v1/namespaces/team-a"]


def test_stale_entry_served_at_once_and_refreshed_in_background(
    timekeeper: FakeTimekeeper,
) -> None:
    timekeeper.statuses["team-a"] = wire_status("in-budget")
    clock = Clock()
    client = make_client(timekeeper.url, clock)
    client.lookup("team-a")
    timekeeper.statuses["team-a"] = wire_status("exhausted")
    clock.now += 11
    stale = client.lookup("team-a")
    assert (stale.status.state, stale.stale) == ("in-budget", False), "healthy: no warning"
    wait_until(lambda: len(timekeeper.requests) == 2)
    wait_until(lambda: client.lookup("team-a").status.state == "exhausted")
    assert client.lookup("team-a").stale is False


def test_dead_timekeeper_costs_one_attempt_per_retry_window() -> None:
    with fake_timekeeper() as server:
        url = server.url
    # The server is closed: connections are refused from now on.
    clock = Clock()
    metrics = Metrics()
    client = make_client(url, clock, metrics=metrics)
    with pytest.raises(TimekeeperUnavailable, match="timekeeper unreachable"):
        client.lookup("team-a")
    started = time.monotonic()
    for namespace in ("team-a", "team-b", "team-c"):
        with pytest.raises(TimekeeperUnavailable, match=r"\(asked again after 5s\)"):
            client.lookup(namespace)
    # None of them waited for an attempt (the metrics below prove no attempt was made).
    assert time.monotonic() - started < 0.3, "less than one timeout (0.3 s)"
    assert metrics.budget_cache.labels("skipped")._value.get() == 3
    assert metrics.timekeeper_errors.labels("unreachable")._value.get() == 1
    clock.now += 6
    with pytest.raises(TimekeeperUnavailable, match="timekeeper unreachable"):
        client.lookup("team-b")
    assert metrics.timekeeper_errors.labels("unreachable")._value.get() == 2


def test_stale_entry_kept_while_timekeeper_is_down(timekeeper: FakeTimekeeper) -> None:
    timekeeper.statuses["team-a"] = wire_status("warning")
    clock = Clock()
    client = make_client(timekeeper.url, clock)
    client.lookup("team-a")
    timekeeper.shutdown()
    timekeeper.server_close()
    clock.now += 11
    assert client.lookup("team-a").stale is False  # not yet known to be down
    wait_until(lambda: client.lookup("team-a").stale)  # the background refresh failed
    clock.now += 19
    assert client.lookup("team-a").status.state == "warning"
    clock.now += 45  # past TTL + stale window: no state left
    with pytest.raises(TimekeeperUnavailable):
        client.lookup("team-a")


def test_hanging_timekeeper_bounded_by_timeout(timekeeper: FakeTimekeeper) -> None:
    timekeeper.statuses["team-a"] = wire_status()
    timekeeper.hang = threading.Event()
    client = make_client(timekeeper.url, Clock(), timeout=0.2)
    started = time.monotonic()
    # Whichever comes first: the lookup's deadline or the socket's own timeout.
    with pytest.raises(TimekeeperUnavailable, match=r"did not answer within 0\.2s|timed out"):
        client.lookup("team-a")
    # Bounded by the timeout, not by the hang: the server had not answered yet. (No tight
    # wall-clock figure: a loaded machine may delay any thread by a second or more.)
    assert timekeeper.answered == 0
    assert time.monotonic() - started < 5.0, "far less than the hang (10 s)"
    timekeeper.hang.set()


def test_whole_lookup_bounded_even_when_each_socket_read_is_quick() -> None:
    release = threading.Event()

    def dribbling_fetch(namespace: str) -> BudgetStatus:
        release.wait(10)  # e.g. a server sending one byte per socket timeout
        raise TimekeeperUnavailable("too late")

    client = TimekeeperBudgets(
        dribbling_fetch, timeout_seconds=0.2, ttl_seconds=10, stale_seconds=60, retry_seconds=5
    )
    started = time.monotonic()
    # The message comes only from the lookup's own deadline; the fetch is still running.
    with pytest.raises(TimekeeperUnavailable, match=r"did not answer within 0\.2s"):
        client.lookup("team-a")
    assert not release.is_set()
    assert time.monotonic() - started < 5.0, "far less than the dribbling fetch (10 s)"
    release.set()


def test_concurrent_misses_share_one_request(timekeeper: FakeTimekeeper) -> None:
    timekeeper.statuses["team-a"] = wire_status()
    timekeeper.hang = threading.Event()
    client = make_client(timekeeper.url, Clock(), timeout=2.0)
    results: list[str] = []

    def ask() -> None:
        results.append(client.lookup("team-a").status.state)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(timekeeper.requests) == 1)
    timekeeper.hang.set()
    for thread in threads:
        thread.join(5)
    assert results == ["in-budget"] * 8
    assert timekeeper.requests == ["/api/v1/namespaces/team-a"]


def test_url_path_prefix_and_escaping(timekeeper: FakeTimekeeper) -> None:
    fetch = http_fetcher(timekeeper.url + "/", 1.0)
    timekeeper.statuses["team-a"] = wire_status()
    assert fetch("team-a").state == "in-budget"
    with pytest.raises(TimekeeperUnavailable):
        fetch("a/b")
    assert timekeeper.requests[-1] == "/api/v1/namespaces/a%2Fb"


def test_waiters_stop_waiting_once_the_timekeeper_is_found_down() -> None:
    with fake_timekeeper() as server:
        closed_url = server.url
    refused = http_fetcher(closed_url, 1.0)
    release, stuck = threading.Event(), threading.Event()

    def fetch(namespace: str) -> BudgetStatus:
        if namespace == "slow":
            stuck.set()
            release.wait(10)  # a lookup stuck in a black hole
        return refused(namespace)

    client = TimekeeperBudgets(
        fetch, timeout_seconds=30.0, ttl_seconds=10, stale_seconds=60, retry_seconds=5
    )
    outcome: list[str] = []

    def wait_for_slow() -> None:
        started = time.monotonic()
        try:
            client.lookup("slow")
        except TimekeeperUnavailable as err:
            outcome.append(f"{err} after {time.monotonic() - started:.1f}s")

    waiter = threading.Thread(target=wait_for_slow)
    waiter.start()
    # The fetch runs only once the waiter's lookup released the lock, i.e. is waiting.
    assert stuck.wait(5)
    with pytest.raises(TimekeeperUnavailable, match="timekeeper unreachable"):
        client.lookup("dead")
    waiter.join(20)
    # The waiter gave up before its own fetch was released and long before its 30 s
    # timeout, and says why: the outage found by the other lookup, not a timeout.
    stopped_before_release = not waiter.is_alive()
    release.set()
    assert stopped_before_release
    assert len(outcome) == 1
    assert outcome[0].startswith("timekeeper unreachable")
    assert float(outcome[0].rsplit("after ", 1)[1].rstrip("s")) < 20


def test_bearer_token_read_from_file_per_lookup(timekeeper: FakeTimekeeper, tmp_path: Path) -> None:
    timekeeper.statuses["team-a"] = wire_status()
    timekeeper.required_token = "first-token"
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    fetch = http_fetcher(timekeeper.url, 1.0, str(token_file))
    assert fetch("team-a").state == "in-budget"
    timekeeper.required_token = "rotated-token"
    token_file.write_text("rotated-token")
    assert fetch("team-a").state == "in-budget"
    with pytest.raises(TimekeeperUnavailable, match='HTTP 401 for namespace "team-a"'):
        http_fetcher(timekeeper.url, 1.0)("team-a")
    with pytest.raises(TimekeeperUnavailable, match="cannot read the token file"):
        http_fetcher(timekeeper.url, 1.0, str(tmp_path / "missing"))("team-a")
