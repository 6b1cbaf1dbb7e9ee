"""Who may use a GPU next, and for how long (pure logic: no threads, no sockets, no clock).

One `GpuScheduler` per physical GPU. Its accounts are the containers sharing that GPU (one per
core allocation); each account may have several sessions (one per process that loaded the
hook). GPU time is handed out as tokens, each held for at most its length. An account has an
SM partition (percent of the GPU's SMs, `Quota.sm_partition`; 100, the default, is the whole
GPU): tokens are held by several accounts at once only while their partitions add up to at
most 100 %, so an account without a partition holds the GPU alone. An account holds at most
one token at a time.

Every decision looks at each account's use over the sliding window `[now - window, now]`:
what its sessions reported using under their tokens (the hook measures it; an account is
charged its use, not its grants, at most the time held plus a longest token), plus the time
elapsed under a token still held. Among the accounts with a waiting session:

1. accounts below their guarantee go first, the most starved first (the lowest use relative
   to its guarantee);
2. then accounts below their cap, the least used first;
3. an account at its cap waits, even when the GPU would be idle (caps are held).

A token lasts until the account would reach its guarantee (first tier) or its cap (second
tier), but at least the minimum token and at most the maximum token. A session that has
nothing to do returns its token early; one that dies releases it at once. The scheduler is
work-conserving: whenever the token is free and any waiting account is below its cap, it is
granted.

The order above is the only order: the next account in it gets the next token as soon as its
partition fits beside the tokens held, and no account overtakes it meanwhile (a large
partition is never starved by a stream of small ones).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

EPSILON = 1e-9
ALL_SMS = 100
"""The SM partition of an account that may use every SM (and so holds the GPU alone)."""


@dataclass(frozen=True)
class Quota:
    """An account's share of its GPU's time, as fractions of the window (0..1)."""

    guarantee: float
    """Time the account gets whenever it wants it (0: best effort)."""
    cap: float
    """Time the account never exceeds, even on an idle GPU (>= guarantee)."""
    throttled: bool = False
    """The share was lowered to its namespace's throttle floor (budget exhausted)."""
    sm_partition: int = ALL_SMS
    """Percent of the GPU's SMs the account may use (MPS); 100: the whole GPU, held alone."""

    def __post_init__(self) -> None:
        if not 0 <= self.guarantee <= self.cap <= 1:
            raise ValueError(
                f"a quota needs 0 <= guarantee <= cap <= 1 (got guarantee {self.guarantee},"
                f" cap {self.cap})"
            )
        if not 1 <= self.sm_partition <= ALL_SMS:
            raise ValueError(
                f"a quota needs an SM partition of 1..{ALL_SMS} percent (got {self.sm_partition})"
            )


@dataclass(frozen=True)
class SchedulerConfig:
    window_seconds: float = 1.0
    """The sliding window over which use is compared with guarantees and caps."""
    min_token_seconds: float = 0.01
    """The shortest token granted (an account close to its cap still gets this much)."""
    max_token_seconds: float = 0.025
    """The longest token granted, so that waiting accounts are served within it."""
    grace_seconds: float = 0.05
    """How long past its end a token is left to its holder before it is revoked."""

    def __post_init__(self) -> None:
        if not 0 < self.min_token_seconds <= self.max_token_seconds <= self.window_seconds:
            raise ValueError(
                "the scheduler needs 0 < min token <= max token <= window (got min token"
                f" {self.min_token_seconds} s, max token {self.max_token_seconds} s, window"
                f" {self.window_seconds} s)"
            )


@dataclass(frozen=True)
class Grant:
    """A token handed to a session: it may use the GPU from `start` for `length_seconds`."""

    session: int
    account: str
    sequence: int
    start: float
    length_seconds: float
    sm_partition: int = ALL_SMS
    """The SM partition the account held the token with (percent)."""

    @property
    def end(self) -> float:
        return self.start + self.length_seconds


@dataclass
class _Account:
    quota: Quota
    records: deque[tuple[float, float, float]] = field(default_factory=deque)
    """(start, end, charged seconds) of each token returned, oldest first; never overlapping."""
    total: float = 0.0
    """Sum of the charged seconds in `records`."""
    waiting: deque[int] = field(default_factory=deque)
    """Sessions waiting for a token, first come first served within the account."""
    sessions: set[int] = field(default_factory=set)

    def used(self, now: float, window: float) -> float:
        """Charged seconds within `[now - window, now]` (tokens returned)."""
        cutoff = now - window
        records = self.records
        while records and records[0][1] <= cutoff:
            self.total -= records.popleft()[2]
        if not records:
            self.total = 0.0
            return 0.0
        start, end, charged = records[0]
        used = self.total
        if start < cutoff:
            used -= charged * (cutoff - start) / (end - start)
        return max(used, 0.0)


class GpuScheduler:
    """The token of one GPU. Not thread-safe: the server calls it under its lock."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self._accounts: dict[str, _Account] = {}
        self._session_account: dict[int, str] = {}
        self._holders: dict[str, Grant] = {}
        """The tokens held, by account (at most one each), oldest first."""
        self._partitions_held = 0
        """The sum of the SM partitions of the accounts holding a token (at most 100)."""
        self._sequence = 0

    # --- accounts and sessions ---------------------------------------------------------------
    def set_account(self, account: str, quota: Quota) -> bool:
        """Add an account or change its quota; True when something changed."""
        existing = self._accounts.get(account)
        if existing is None:
            self._accounts[account] = _Account(quota)
            return True
        if existing.quota == quota:
            return False
        existing.quota = quota
        return True

    def quota(self, account: str) -> Quota | None:
        existing = self._accounts.get(account)
        return None if existing is None else existing.quota

    def accounts(self) -> list[str]:
        return list(self._accounts)

    def remove_account(self, account: str, now: float) -> None:
        """Forget an account (its allocation was released) and its sessions."""
        existing = self._accounts.get(account)
        if existing is None:
            return
        for session in list(existing.sessions):
            self.close_session(session, now)
        del self._accounts[account]

    def open_session(self, session: int, account: str) -> None:
        self._accounts[account].sessions.add(session)
        self._session_account[session] = account

    def close_session(self, session: int, now: float) -> None:
        """A session ended (its process died or hung up): its token and its wait end now."""
        account = self._session_account.pop(session, None)
        if account is None:
            return
        state = self._accounts[account]
        state.sessions.discard(session)
        if session in state.waiting:
            state.waiting.remove(session)
        holder = self._holders.get(account)
        if holder is not None and holder.session == session:
            # Nothing says how much of the token it used: charge the time it held it.
            self._return(holder, now - holder.start, now)

    # --- tokens --------------------------------------------------------------------------------
    @property
    def holder(self) -> Grant | None:
        """The oldest token held, None when none is."""
        return next(iter(self._holders.values()), None)

    def holders(self) -> list[Grant]:
        """Every token held (several only while their accounts' SM partitions fit together)."""
        return list(self._holders.values())

    @property
    def partitions_held(self) -> int:
        """The sum of the SM partitions of the accounts holding a token (percent, <= 100)."""
        return self._partitions_held

    def request(self, session: int) -> None:
        """The session wants a token (answered by a later `decide`). Asked while it holds
        one, it wants the next: it waits and may be granted again once it has released."""
        state = self._accounts[self._session_account[session]]
        if session not in state.waiting:
            state.waiting.append(session)

    def release(self, session: int, sequence: int, used_seconds: float, now: float) -> bool:
        """The session returns its token, having used the GPU `used_seconds` under it; False
        when it holds no such token (released already, revoked, or never granted)."""
        holder = self._holders.get(self._session_account.get(session, ""))
        if holder is None or holder.session != session or holder.sequence != sequence:
            return False
        self._return(holder, used_seconds, now)
        return True

    def revoke_expired(self, now: float) -> Grant | None:
        """Take back a token kept past its end and grace (one per call; the oldest first); the
        holder is charged in full."""
        grace = self.config.grace_seconds
        for holder in self._holders.values():
            if now >= holder.end + grace:
                self._return(holder, now - holder.start, now)
                return holder
        return None

    def _return(self, grant: Grant, used_seconds: float, now: float) -> None:
        held = max(now - grant.start, 0.0)
        # Work queued under a token may still run after it is returned (a client keeps the GPU
        # busy through the hand-over); it is reported then, so up to a longest token more than
        # the time held is charged.
        charged = min(max(used_seconds, 0.0), held + self.config.max_token_seconds)
        state = self._accounts.get(grant.account)
        if state is not None and held > 0:
            state.records.append((grant.start, grant.start + held, charged))
            state.total += charged
        del self._holders[grant.account]
        self._partitions_held -= grant.sm_partition

    def used(self, account: str, now: float) -> float:
        """The account's share of the last window (0..1), a token still held counted in full."""
        state = self._accounts[account]
        window = self.config.window_seconds
        used = state.used(now, window)
        holder = self._holders.get(account)
        if holder is not None:
            used += max(now - holder.start, 0.0)
        return used / window

    def decide(self, now: float) -> Grant | None:
        """Grant a token to the first account in order (below its cap, waiting, holding none)
        when its SM partition fits beside the tokens held; None otherwise. Call again while
        it grants: several accounts may hold tokens at once."""
        if self._partitions_held >= ALL_SMS:
            return None
        window = self.config.window_seconds
        best: tuple[int, float, str, float] | None = None
        for name, state in self._accounts.items():
            if not state.waiting or name in self._holders:
                continue
            share = state.used(now, window) / window
            quota = state.quota
            if share < quota.guarantee - EPSILON:
                key = (0, share / quota.guarantee, name, share)
            elif share < quota.cap - EPSILON:
                key = (1, share, name, share)
            else:
                continue
            if best is None or key < best:
                best = key
        if best is None:
            return None
        tier, _, name, share = best
        state = self._accounts[name]
        partition = state.quota.sm_partition
        if self._partitions_held + partition > ALL_SMS:
            return None  # it goes next, once enough SMs are free; nobody overtakes it
        config = self.config
        target = state.quota.guarantee if tier == 0 else state.quota.cap
        headroom = (target - share) * window
        length = min(max(headroom, config.min_token_seconds), config.max_token_seconds)
        self._sequence += 1
        grant = Grant(state.waiting.popleft(), name, self._sequence, now, length, partition)
        self._holders[name] = grant
        self._partitions_held += partition
        return grant

    def next_event(self, now: float) -> float | None:
        """When `decide` or `revoke_expired` may have something to do without any message
        arriving: the earliest revocation time of a token held, or, when SMs are free and the
        waiting accounts are all at their caps, when the window will have slid by a minimum
        token."""
        grace = self.config.grace_seconds
        when = min((holder.end + grace for holder in self._holders.values()), default=None)
        if self._partitions_held < ALL_SMS and any(
            state.waiting and name not in self._holders for name, state in self._accounts.items()
        ):
            soon = now + self.config.min_token_seconds
            when = soon if when is None else min(when, soon)
        return when
