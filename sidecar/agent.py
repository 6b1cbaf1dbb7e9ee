"""The sidecar's loop: cut intervals, spool them, deliver them in order, stop on SIGTERM.

Everything it touches is injected (clock, waiter, spool, sender, usage reader, random draw),
so the loop runs the same against the real system and against fakes. It is single-threaded:
one interval is sent at a time, oldest first, and the next only after a 2xx.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sidecar.backoff import Backoff
from sidecar.client import Outcome
from sidecar.errors import SpoolError
from sidecar.intervals import close_at, format_time, resume_from
from sidecar.reports import PodIdentity, Report, build_report
from sidecar.signals import Interrupted
from sidecar.spool import Spool
from sidecar.usage import UsageReader, UsageWindow

log = logging.getLogger(__name__)

SAMPLE_PERIOD_MAX_SECONDS = 5.0
"""Usage is sampled at least this often (more often with shorter report intervals)."""


class Clock(Protocol):
    def wall(self) -> datetime:
        """Wall-clock time, UTC."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps."""


class Waiter(Protocol):
    @property
    def signals(self) -> int:
        """How many stop signals (SIGTERM, SIGINT) arrived so far."""

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`; return early when a stop signal arrives."""

    def seconds_since_stop(self) -> float:
        """Seconds since the first stop signal (0 before one)."""

    def request(self) -> AbstractContextManager[None]:
        """Around a request: raises `Interrupted` when the stop deadline passes in it."""


class Sender(Protocol):
    def send(self, report: Report, *, timeout_seconds: float) -> Outcome:
        """One delivery attempt."""


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """The parts of the settings the loop needs."""

    report_interval_seconds: float
    shutdown_deadline_seconds: float
    http_timeout_seconds: float
    backoff: Backoff
    rejected_attempts: int
    auth_grace_seconds: float
    resume_window_seconds: float


class Agent:
    """One pod's accounting loop. `run()` returns the exit code (0 on a normal stop)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        pod: PodIdentity,
        spool: Spool,
        sender: Sender,
        reader: UsageReader,
        clock: Clock,
        waiter: Waiter,
        draw: Callable[[], float],
    ) -> None:
        self.config = config
        self.pod = pod
        self.spool = spool
        self.sender = sender
        self.reader = reader
        self.clock = clock
        self.waiter = waiter
        self.draw = draw
        self.window = UsageWindow()
        self.open_start = clock.wall()
        self.open_mono = clock.monotonic()
        self.failures = 0
        self.rejections = 0
        self.unauthorized_since: float | None = None
        self.retry_at = 0.0
        self.sampling_failed = False

    # -- intervals --------------------------------------------------------------------------

    def _start(self) -> None:
        self.spool.recover()
        now_mono = self.clock.monotonic()
        resume = resume_from(
            self.spool.open_start,
            wall_now=self.clock.wall(),
            window_seconds=self.config.resume_window_seconds,
        )
        self.open_start = resume.start
        self.open_mono = now_mono - (resume.gap_seconds if resume.continued else 0.0)
        if resume.continued:
            log.info(
                "restarted: continuing the interval open since %s (%.1f s ago), "
                "next sequence %d, %d interval(s) waiting in the spool",
                format_time(resume.start),
                resume.gap_seconds,
                self.spool.next_sequence,
                self.spool.pending_count,
            )
        elif self.spool.open_start is not None:
            log.warning(
                "the spool's open interval began %.1f s ago, outside the resume window "
                "(%.0f s) or in the future: not charging that time; starting at %s",
                resume.gap_seconds,
                self.config.resume_window_seconds,
                format_time(resume.start),
            )
        else:
            log.info("started: first interval begins at %s", format_time(resume.start))
        try:
            self.spool.save_state(self.open_start)
        except SpoolError as err:
            log.error("%s", err)

    def _close(self, now_mono: float) -> None:
        boundary = close_at(
            self.open_start, wall_now=self.clock.wall(), elapsed_seconds=now_mono - self.open_mono
        )
        if boundary.clock_step_seconds is not None:
            log.warning(
                "wall clock moved %+.3f s against the monotonic clock: the interval keeps its "
                "measured length, the next one starts at %s",
                boundary.clock_step_seconds,
                format_time(boundary.next_start),
            )
        if boundary.end <= self.open_start:
            return
        measured = self.window.take()
        start, end = self.open_start, boundary.end

        def build(sequence: int) -> Report:
            return build_report(
                self.pod, sequence=sequence, start=start, end=end, measured=measured
            )

        try:
            stored = self.spool.commit(build, open_start=boundary.next_start)
        except SpoolError as err:
            log.error("%s; the open interval keeps growing until it can be stored", err)
            return
        if stored.merged:
            log.warning(
                "spool full (%d intervals): merged %s..%s into interval %d",
                self.spool.max_intervals,
                format_time(start),
                format_time(end),
                stored.sequence,
            )
        self.open_start = boundary.next_start
        self.open_mono = now_mono

    def _sample(self) -> None:
        """Measured use is a bonus: a failing reader never stops the accounting."""
        try:
            self.window.add(self.reader.sample())
        except Exception as err:
            if not self.sampling_failed:
                log.warning("reading measured use failed (%s); intervals go on without it", err)
            self.sampling_failed = True

    # -- delivery ---------------------------------------------------------------------------

    def _deliver_one(self, timeout_seconds: float) -> bool:
        """Send the oldest pending interval once; True when it was acknowledged."""
        report = self.spool.head()
        if report is None:
            return False
        sequence = report["sequence"]
        try:
            with self.waiter.request():
                outcome = self.sender.send(report, timeout_seconds=timeout_seconds)
        except Interrupted as err:
            outcome = Outcome("retry", None, str(err))
        now = self.clock.monotonic()
        if outcome.kind == "delivered":
            if self.failures:
                log.info("timekeeper answers again: interval %d delivered", sequence)
            self.failures = 0
            self.rejections = 0
            self.unauthorized_since = None
            self.retry_at = now
            try:
                self.spool.delivered(sequence)
            except SpoolError as err:
                log.error("%s", err)
            return True
        if self._gives_up(outcome.kind, now):
            log.error(
                "timekeeper refused interval %d (%s): moving it to rejected/",
                sequence,
                outcome.reason,
            )
            self.rejections = 0
            self.unauthorized_since = None
            self.failures = 0
            self.retry_at = now
            try:
                self.spool.reject(sequence, outcome.reason)
            except SpoolError as err:
                log.error("%s", err)
            return False
        self.failures += 1
        delay = self.config.backoff.delay_seconds(self.failures, self.draw())
        self.retry_at = now + delay
        log.warning(
            "interval %d not delivered (%s); retry %d in %.2f s, %d interval(s) waiting",
            sequence,
            outcome.reason,
            self.failures,
            delay,
            self.spool.pending_count,
        )
        return False

    def _gives_up(self, kind: str, now: float) -> bool:
        """Whether the head interval is to be dead-lettered after this answer: a refusal
        `rejected_attempts` times in a row, or 401/403 answers for longer than the grace
        period (a token being rotated or the timekeeper's keys being fixed cure those)."""
        if kind == "rejected":
            self.rejections += 1
            return self.rejections >= self.config.rejected_attempts
        if kind == "unauthorized":
            if self.unauthorized_since is None:
                self.unauthorized_since = now
            return now - self.unauthorized_since >= self.config.auth_grace_seconds
        return False

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        self._start()
        period = self.config.report_interval_seconds
        sample_period = min(period, SAMPLE_PERIOD_MAX_SECONDS)
        now = self.clock.monotonic()
        next_close = max(now, self.open_mono + period)
        next_sample = now
        self.retry_at = now
        while self.waiter.signals == 0:
            now = self.clock.monotonic()
            if now >= next_sample:
                self._sample()
                next_sample = now + sample_period
            if now >= next_close:
                self._close(now)
                next_close += period
                if next_close <= now:  # the process was stopped or starved: don't catch up
                    next_close = now + period
            if (
                self.spool.pending_count
                and now >= self.retry_at
                and self._deliver_one(self.config.http_timeout_seconds)
            ):
                continue
            wake = min(next_close, next_sample)
            if self.spool.pending_count:
                wake = min(wake, self.retry_at)
            self.waiter.wait(max(0.0, wake - self.clock.monotonic()))
        return self._shutdown()

    def _shutdown(self) -> int:
        """Close the open interval and deliver what the deadline allows; the rest stays spooled."""
        started = self.clock.monotonic()
        self._close(started)
        # Counted from the signal: a request under way when it came has used part of it.
        deadline = (
            started + self.config.shutdown_deadline_seconds - self.waiter.seconds_since_stop()
        )
        waiting = self.spool.pending_count
        log.info(
            "stopping: delivering %d interval(s) within %.1f s",
            waiting,
            self.config.shutdown_deadline_seconds,
        )
        self.failures = 0
        self.retry_at = started
        while self.spool.pending_count and self.waiter.signals < 2:
            now = self.clock.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                break
            if now >= self.retry_at:
                self._deliver_one(min(self.config.http_timeout_seconds, remaining))
            else:
                self.waiter.wait(min(self.retry_at - now, remaining))
        left = self.spool.pending_count
        if left:
            log.warning(
                "stopped with %d interval(s) left in the spool (%s); a restart of this sidecar "
                "delivers them",
                left,
                self.spool.directory,
            )
        else:
            log.info("stopped: every interval delivered")
        self.reader.close()
        return 0
