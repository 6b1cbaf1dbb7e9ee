"""One budget policy for every worker and replica: the last good policy, kept with the ledger.

Each process still watches the budgets file (`PolicySource`'s checks: content hash, at most
once per interval), but what is *in force* is the newest version stored in the database
table `budget_policies`, so every gunicorn worker and every replica answers from the same
policy:

- a new file content that parses is stored as a new version (unless it equals the newest
  already); the process whose insert made the version logs the reload — once, not once per
  worker;
- a content that does not parse is recorded in `budget_policy_rejections` (by hash); the
  process whose insert recorded it logs the problems — once; every process reports it in
  `/metrics` while the file on disk stays bad;
- at each check every process reads the newest version's number (one indexed query) and
  loads it when it changed, so a good edit followed within seconds by a bad one leaves every
  process on the good one;
- a restart while the file is bad serves the newest stored version (the rejection is logged
  and exported); only with no stored version at all does a bad file stop the start;
- a process that starts with an older file than the one stored (a ConfigMap update not yet
  on its node) does not push it back: content already in the history is not stored again
  at start.

While the database cannot be reached, a process keeps the policy it has and tries again at
the next check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from timekeeper.budgets import BudgetPolicy, BudgetsError
from timekeeper.models import budget_policies, budget_policy_rejections
from timekeeper.policy_source import PolicySource, content_digest, parse_content, read_content

logger = logging.getLogger(__name__)


class StoredPolicySource(PolicySource):
    """A `PolicySource` whose policy in force is the newest version in the database."""

    def __init__(
        self,
        path: Path,
        engine: sa.Engine,
        *,
        check_interval_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """Load the newest stored version and check the file now.

        `BudgetsError` only when no good policy is known at all: nothing stored (or the
        database away) and the file missing or invalid.
        """
        if check_interval_seconds < 0:
            raise ValueError(f"check_interval_seconds must be >= 0 (got {check_interval_seconds})")
        self.path = path
        self.check_interval_seconds = check_interval_seconds
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._engine = engine
        self.reloads = 0
        self.reload_failures = 0
        self.last_error: tuple[str, ...] | None = None
        self.last_error_at: datetime | None = None
        self._failed_digest: str | None = None
        self._version: int | None = None
        self._file_digest: str | None = None
        self._unreachable_logged = False
        self._digest: str | None = None
        self._loaded_at: datetime | None = None
        self._policy: BudgetPolicy | None = None  # type: ignore[assignment]
        self._checked_at = clock()

        file_error: BudgetsError | None = None
        content: bytes | None = None
        try:
            content = read_content(path)
        except BudgetsError as err:
            file_error = err
        try:
            start_error = self._start(content, file_error)
        except sa.exc.DBAPIError as err:
            if file_error is not None:
                raise file_error from err
            assert content is not None
            self._policy = parse_content(content)  # a bad file: BudgetsError, nothing to serve
            logger.warning(
                "budgets: the database cannot be used (%s); serving the file until it can",
                err.orig,
            )
            self._digest = self._file_digest = content_digest(content)
            self._loaded_at = wall_clock()
        else:
            if self._policy is None:  # nothing stored, and the file is bad
                assert start_error is not None
                raise start_error

    @property
    def version(self) -> int | None:
        """The stored version in force (None: not from the database)."""
        return self._version

    # -- start and checks -------------------------------------------------------------------

    def _start(self, content: bytes | None, file_error: BudgetsError | None) -> BudgetsError | None:
        """Store the file if it is good and new, load the newest version; the file's error."""
        error = file_error
        if content is not None:
            digest = content_digest(content)
            self._file_digest = digest
            try:
                parse_content(content)
            except BudgetsError as err:
                error = err
                self._record_rejection(digest, err)
            else:
                if not self._known(digest):
                    self._store(digest, content)
        elif file_error is not None:
            self._record_rejection(f"unreadable:{file_error.problems}", file_error)
        self._load_newest()
        return error

    def _check(self, path: Path) -> bool:
        self._checked_at = self._clock()
        try:
            changed_file = self._check_file(path)
            loaded = self._load_newest()
            self._unreachable_logged = False
            return loaded or changed_file
        except sa.exc.DBAPIError as err:
            if not self._unreachable_logged:
                logger.warning(
                    "budgets: the database cannot be used (%s); the policy in force stays",
                    err.orig,
                )
                self._unreachable_logged = True
            return False

    def _check_file(self, path: Path) -> bool:
        try:
            content = read_content(path)
        except BudgetsError as err:
            digest = f"unreadable:{err.problems}"
            if digest != self._file_digest:
                self._file_digest = digest
                self._record_rejection(digest, err)
            return False
        digest = content_digest(content)
        if digest == self._file_digest:
            return False
        self._file_digest = digest
        try:
            parse_content(content)
        except BudgetsError as err:
            self._record_rejection(digest, err)
            return False
        self._clear_error()
        return self._store(digest, content)

    # -- the database ---------------------------------------------------------------------

    def _known(self, digest: str) -> bool:
        with self._engine.connect() as connection:
            found = connection.execute(
                sa.select(budget_policies.c.version)
                .where(budget_policies.c.sha256 == digest)
                .limit(1)
            ).first()
        return found is not None

    def _store(self, digest: str, content: bytes) -> bool:
        """A new version, unless the newest already holds this content; True if stored."""
        table = budget_policies
        newest = sa.select(sa.func.max(table.c.version)).scalar_subquery()
        with self._engine.begin() as connection:
            latest = connection.execute(
                sa.select(table.c.sha256).where(table.c.version == newest)
            ).scalar()
            if latest == digest:
                return False
            version = connection.execute(
                sa.insert(table)
                .values(
                    sha256=digest,
                    content=content.decode("utf-8"),
                    loaded_at=self._wall_clock(),
                )
                .returning(table.c.version)
            ).scalar_one()
        self.reloads += 1
        logger.info(
            "budgets from %s stored as version %d (sha256 %s); every worker and replica "
            "now follows it",
            self.path,
            version,
            digest[:12],
        )
        return True

    def _record_rejection(self, digest: str, err: BudgetsError) -> None:
        if digest != self._failed_digest:
            self._failed_digest = digest
            self.reload_failures += 1
        self.last_error = err.problems
        self.last_error_at = self._wall_clock()
        table = budget_policy_rejections
        problems = "; ".join(err.problems)
        with self._engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
            inserted = connection.execute(
                insert(table)
                .values(sha256=_key(digest), problems=problems, rejected_at=self.last_error_at)
                .on_conflict_do_nothing(index_elements=["sha256"])
                .returning(table.c.sha256)
            ).first()
        if inserted:
            logger.error(
                "budgets file %s rejected, the last good policy stays in force: %s",
                self.path,
                problems,
            )

    def _load_newest(self) -> bool:
        table = budget_policies
        with self._engine.connect() as connection:
            newest = connection.execute(
                sa.select(table.c.version, table.c.sha256, table.c.loaded_at)
                .order_by(table.c.version.desc())
                .limit(1)
            ).first()
            if newest is None or newest.version == self._version:
                return False
            content = connection.execute(
                sa.select(table.c.content).where(table.c.version == newest.version)
            ).scalar_one()
        try:
            policy = parse_content(content.encode("utf-8"))
        except BudgetsError as err:
            # A newer timekeeper stored keys this version does not know: keep what we have.
            if self._failed_digest != newest.sha256:
                self._failed_digest = newest.sha256
                logger.error(
                    "stored budgets version %d cannot be read by this version (%s); the "
                    "policy in force stays",
                    newest.version,
                    "; ".join(err.problems),
                )
            self._version = newest.version
            return False
        self._policy = policy
        self._version = newest.version
        self._digest = newest.sha256
        self._loaded_at = newest.loaded_at
        return True

    def _clear_error(self) -> None:
        self._failed_digest = None
        self.last_error = None
        self.last_error_at = None


def _key(digest: str) -> str:
    """A content's SHA-256, or the hash of an unreadable file's reasons (64 characters)."""
    return digest if len(digest) == 64 else content_digest(digest.encode("utf-8"))
