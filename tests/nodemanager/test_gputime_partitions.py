"""Tokens held at once by containers with SM partitions: several holders only while their
partitions add up to at most 100 %, in the scheduler's usual order, nobody overtaking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nodemanager.gputime.scheduler import ALL_SMS, GpuScheduler, Quota, SchedulerConfig

CONFIG = SchedulerConfig()


def _scheduler(partitions: list[int]) -> GpuScheduler:
    """Accounts a, b, c, ... with equal quotas (so the order is by name), each with one
    waiting session numbered from 1."""
    scheduler = GpuScheduler(CONFIG)
    for number, partition in enumerate(partitions, start=1):
        name = chr(ord("a") + number - 1)
        scheduler.set_account(name, Quota(0.2, 1, sm_partition=partition))
        scheduler.open_session(number, name)
        scheduler.request(number)
    return scheduler


def _grant_all(scheduler: GpuScheduler, now: float) -> list[str]:
    granted = []
    while (grant := scheduler.decide(now)) is not None:
        granted.append(grant.account)
    return granted


@pytest.mark.parametrize(
    ("partitions", "holders"),
    [
        pytest.param([ALL_SMS, ALL_SMS], ["a"], id="no-partitions-one-at-a-time"),
        pytest.param([50, 50], ["a", "b"], id="two-halves-together"),
        pytest.param([60, 40, 10], ["a", "b"], id="full-gpu-the-third-waits"),
        pytest.param([50, 30, 30], ["a", "b"], id="110-percent-does-not-fit"),
        pytest.param([30, ALL_SMS, 30], ["a"], id="a-whole-gpu-next-is-not-overtaken"),
        pytest.param([ALL_SMS, 10], ["a"], id="without-partition-holds-the-gpu-alone"),
        pytest.param([25, 25, 25, 25], ["a", "b", "c", "d"], id="four-quarters"),
        pytest.param([1] * 5, ["a", "b", "c", "d", "e"], id="small-partitions"),
    ],
)
def test_concurrent_holders_fit_in_the_gpu(partitions: list[int], holders: list[str]) -> None:
    scheduler = _scheduler(partitions)
    assert _grant_all(scheduler, 0.0) == holders
    assert sorted(grant.account for grant in scheduler.holders()) == holders
    assert scheduler.partitions_held == sum(partitions[: len(holders)])


def test_the_one_that_did_not_fit_goes_next_once_enough_sms_are_free() -> None:
    scheduler = _scheduler([30, ALL_SMS, 30])
    first = scheduler.decide(0.0)
    assert first is not None and first.account == "a"
    assert scheduler.decide(0.001) is None  # b waits for the whole GPU; c does not overtake
    scheduler.release(first.session, first.sequence, 0.002, 0.002)
    assert _grant_all(scheduler, 0.002) == ["b"]
    (second,) = scheduler.holders()
    scheduler.release(second.session, second.sequence, 0.005, 0.007)
    # a has used 2 ms, b 5 ms, c nothing: c (most starved) first, then a beside it
    assert _grant_all(scheduler, 0.007) == ["c"]
    scheduler.request(1)
    assert _grant_all(scheduler, 0.007) == ["a"]
    assert scheduler.partitions_held == 60


def test_an_account_holds_one_token_at_a_time() -> None:
    scheduler = GpuScheduler(CONFIG)
    scheduler.set_account("a", Quota(0.5, 1, sm_partition=10))
    scheduler.open_session(1, "a")
    scheduler.open_session(2, "a")
    scheduler.request(1)
    scheduler.request(2)
    assert _grant_all(scheduler, 0.0) == ["a"]
    assert len(scheduler.holders()) == 1


def test_a_dead_holder_frees_its_partition_at_once() -> None:
    scheduler = _scheduler([70, 70])
    assert _grant_all(scheduler, 0.0) == ["a"]
    scheduler.close_session(1, 0.003)
    assert scheduler.partitions_held == 0
    assert _grant_all(scheduler, 0.003) == ["b"]


def test_tokens_held_together_are_revoked_one_by_one() -> None:
    scheduler = _scheduler([50, 50])
    first, second = scheduler.decide(0.0), scheduler.decide(0.0)
    assert first is not None and second is not None
    late = max(first.end, second.end) + CONFIG.grace_seconds
    assert {scheduler.revoke_expired(late), scheduler.revoke_expired(late)} == {first, second}
    assert scheduler.revoke_expired(late) is None
    assert scheduler.partitions_held == 0


def test_a_waiting_account_beside_free_sms_is_looked_at_again_soon() -> None:
    scheduler = _scheduler([50, 50])
    first = scheduler.decide(0.0)
    assert first is not None
    # b at its cap waits beside free SMs: the scheduler looks again after a minimum token (the
    # window slides), not only when a's token ends
    scheduler.set_account("b", Quota(0, 0, sm_partition=50))
    assert scheduler.decide(0.0) is None
    assert scheduler.next_event(0.0) == pytest.approx(CONFIG.min_token_seconds)


@pytest.mark.parametrize("partition", [0, 101, -5])
def test_invalid_partitions_are_refused(partition: int) -> None:
    with pytest.raises(ValueError, match=r"SM partition of 1\.\.100 percent"):
        Quota(0.1, 0.2, sm_partition=partition)


_OPERATION = st.tuples(
    st.sampled_from(["request", "release", "close", "advance", "decide"]),
    st.integers(min_value=0, max_value=5),
    st.floats(min_value=0, max_value=0.08),
)


@settings(max_examples=300, deadline=None)
@given(
    partitions=st.lists(
        st.one_of(st.just(ALL_SMS), st.integers(min_value=1, max_value=ALL_SMS)),
        min_size=1,
        max_size=6,
    ),
    guarantees=st.lists(st.floats(min_value=0, max_value=0.5), min_size=6, max_size=6),
    operations=st.lists(_OPERATION, max_size=120),
)
def test_no_instant_has_holders_whose_partitions_sum_above_100(
    partitions: list[int], guarantees: list[float], operations: list[tuple[str, int, float]]
) -> None:
    """Drive the scheduler with any interleaving of requests, releases, deaths, revocations
    and time; record from its answers alone who held a token when, and check every instant."""
    scheduler = GpuScheduler(CONFIG)
    sessions = len(partitions)
    for number, partition in enumerate(partitions):
        scheduler.set_account(f"c{number}", Quota(guarantees[number], 1, sm_partition=partition))
        scheduler.open_session(number, f"c{number}")
    held: dict[int, tuple[int, float, int]] = {}  # session -> (sequence, start, partition)
    intervals: list[tuple[float, float, int]] = []  # (start, end, partition)
    closed: set[int] = set()
    now = 0.0

    def ended(session: int) -> None:
        _, start, partition = held.pop(session)
        intervals.append((start, now, partition))

    def schedule() -> None:
        while (revoked := scheduler.revoke_expired(now)) is not None:
            ended(revoked.session)
        while (grant := scheduler.decide(now)) is not None:
            assert grant.session not in held, "a session holds two tokens"
            held[grant.session] = (grant.sequence, now, partitions[grant.session])

    for kind, index, amount in operations:
        session = index % sessions
        if kind == "request" and session not in closed:
            scheduler.request(session)
        elif kind == "release" and session in held:
            sequence = held[session][0]
            assert scheduler.release(session, sequence, amount, now)
            ended(session)
        elif kind == "close" and session not in closed:
            scheduler.close_session(session, now)
            closed.add(session)
            if session in held:
                ended(session)
        elif kind == "advance":
            now += amount
        schedule()
        assert sum(partition for _, _, partition in held.values()) <= ALL_SMS
    for session in list(held):
        ended(session)
    # the sum of partitions held at every instant a token started (the sum only rises there)
    for start, _, _ in intervals:
        at_once = sum(p for s, e, p in intervals if s <= start < e)
        assert at_once <= ALL_SMS, f"{at_once} % of the SMs held at t={start}"
