"""A discrete-event simulation of GPU time clients against the pure scheduler, on a virtual
clock, and the independent expectation it is checked against.

The ground truth is the time each client really held the token (the intervals between its
GRANT and its RELEASE), never the scheduler's own accounting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nodemanager.gputime.scheduler import GpuScheduler, Quota, SchedulerConfig

HANDOFF_SECONDS = 0.0002
"""Time between one token's release and the next grant (a socket round trip)."""


@dataclass
class SimClient:
    name: str
    quota: Quota
    busy: Callable[[float], bool] = lambda now: True
    """Whether the client has GPU work at `now` (it asks for tokens only then)."""
    use_fraction: float = 1.0
    """How much of each token it uses before it returns it (1: all of it)."""
    held: list[tuple[float, float]] = field(default_factory=list)


def simulate(
    clients: Sequence[SimClient],
    seconds: float,
    config: SchedulerConfig,
    changes: Sequence[tuple[float, str, Quota]] = (),
) -> GpuScheduler:
    scheduler = GpuScheduler(config)
    by_name = {client.name: client for client in clients}
    sessions = {}
    for number, client in enumerate(clients):
        scheduler.set_account(client.name, client.quota)
        scheduler.open_session(number, client.name)
        sessions[number] = client
    pending = sorted(changes, key=lambda change: change[0])
    now = 0.0
    while now < seconds:
        while pending and pending[0][0] <= now:
            _, name, quota = pending.pop(0)
            scheduler.set_account(name, quota)
            by_name[name].quota = quota
        for number, client in sessions.items():
            if client.busy(now):
                scheduler.request(number)
        grant = scheduler.decide(now)
        if grant is not None:
            client = sessions[grant.session]
            used = grant.length_seconds * client.use_fraction
            client.held.append((now, now + used))
            now += used
            scheduler.release(grant.session, grant.sequence, used, now)
            now += HANDOFF_SECONDS
            continue
        nexts = [scheduler.next_event(now) or seconds, seconds]
        if pending:
            nexts.append(pending[0][0])
        now = max(min(nexts), now + 1e-6)
    return scheduler


def share(client: SimClient, start: float, end: float) -> float:
    """The fraction of `[start, end]` the client held the token."""
    total = 0.0
    for begin, finish in client.held:
        total += max(0.0, min(finish, end) - max(begin, start))
    return total / (end - start)


def expected_shares(quotas: Sequence[Quota], capacity: float = 1.0) -> list[float]:
    """Max-min fair shares under full contention: each gets clamp(level, guarantee, cap),
    with the level that fills `capacity` (or every cap, when the caps sum to less)."""
    if sum(quota.cap for quota in quotas) <= capacity:
        return [quota.cap for quota in quotas]
    low, high = 0.0, 1.0
    for _ in range(60):
        level = (low + high) / 2
        total = sum(min(max(level, quota.guarantee), quota.cap) for quota in quotas)
        low, high = (level, high) if total < capacity else (low, level)
    return [min(max(low, quota.guarantee), quota.cap) for quota in quotas]


def worst_deviation(
    clients: Sequence[SimClient],
    targets: Sequence[float],
    start: float,
    end: float,
    span: float = 2.0,
    step: float = 0.1,
) -> tuple[float, str]:
    """The largest |share - target| over every `span`-long interval in [start, end]."""
    worst = (0.0, "")
    at = start
    while at + span <= end + 1e-9:
        for client, target in zip(clients, targets, strict=True):
            deviation = abs(share(client, at, at + span) - target)
            if deviation > worst[0]:
                worst = (deviation, f"{client.name} over [{at:.1f}, {at + span:.1f}]")
        at += step
    return worst
