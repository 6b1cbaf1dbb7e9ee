"""The budget policy in force, reloaded when its file changes.

The budgets file usually comes from a ConfigMap: the kubelet updates it by swapping a
symlink, so the file's own mtime says nothing. `PolicySource` therefore compares the content
(SHA-256), at most once per check interval, on the calling thread (no background thread: the
check is a read of a small file). A new file that does not parse is logged with every
reason and the last good policy stays in force; the same bad content is logged only once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from timekeeper.budgets import DEFAULT_POLICY, BudgetPolicy, BudgetsError, Problem, parse_budgets

logger = logging.getLogger(__name__)


class PolicySource:
    """Holds the current `BudgetPolicy`; `current()` is cheap and thread-safe."""

    def __init__(
        self,
        path: Path | None,
        *,
        check_interval_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """Load the file now; a missing or invalid file raises `BudgetsError`.

        Without a path the built-in `DEFAULT_POLICY` is in force and nothing is reloaded.
        """
        if check_interval_seconds < 0:
            raise ValueError(f"check_interval_seconds must be >= 0 (got {check_interval_seconds})")
        self.path = path
        self.check_interval_seconds = check_interval_seconds
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self.reloads = 0
        """Successful reloads after the first load."""
        self.reload_failures = 0
        """Distinct new contents (or read errors) rejected since start."""
        self.last_error: tuple[str, ...] | None = None
        """The problems of the latest rejected content; None once a good file loads again."""
        self.last_error_at: datetime | None = None
        self._failed_digest: str | None = None
        if path is None:
            self._policy = DEFAULT_POLICY
            self._digest: str | None = None
            self._loaded_at: datetime | None = None
            self._checked_at = clock()
            return
        content = read_content(path)
        self._policy = parse_content(content)
        self._digest = content_digest(content)
        self._loaded_at = wall_clock()
        self._checked_at = clock()

    def current(self) -> BudgetPolicy:
        """The policy in force; checks the file first when the interval has passed."""
        # One thread checks; the others carry on with the policy they have.
        if (
            self.path is not None
            and self._clock() - self._checked_at >= self.check_interval_seconds
            and self._lock.acquire(blocking=False)
        ):
            try:
                if self._clock() - self._checked_at >= self.check_interval_seconds:
                    self._check(self.path)
            finally:
                self._lock.release()
        return self._policy

    def check_now(self) -> bool:
        """Check the file at once, whatever the interval; True when a new policy loaded."""
        if self.path is None:
            return False
        with self._lock:
            return self._check(self.path)

    @property
    def loaded_at(self) -> datetime | None:
        """When the policy in force was loaded (None: the built-in default, no file)."""
        return self._loaded_at

    @property
    def content_sha256(self) -> str | None:
        """SHA-256 of the file content in force (None: no file)."""
        return self._digest

    @property
    def ready(self) -> bool:
        """A policy is in force (always true once constructed; for /readyz)."""
        return True

    def _check(self, path: Path) -> bool:
        self._checked_at = self._clock()
        try:
            content = read_content(path)
        except BudgetsError as err:
            self._reject(err, digest=f"unreadable:{err.problems}")
            return False
        digest = content_digest(content)
        if digest == self._digest:
            self._clear_error()
            return False
        if digest == self._failed_digest:
            return False
        try:
            policy = parse_content(content)
        except BudgetsError as err:
            self._reject(err, digest=digest)
            return False
        self._policy = policy
        self._digest = digest
        self._loaded_at = self._wall_clock()
        self._clear_error()
        self.reloads += 1
        logger.info(
            "budgets reloaded from %s: %d namespaces listed (sha256 %s)",
            path,
            len(policy.namespaces),
            digest[:12],
        )
        return True

    def _reject(self, err: BudgetsError, *, digest: str) -> None:
        if digest == self._failed_digest:
            return
        self._failed_digest = digest
        self.reload_failures += 1
        self.last_error = err.problems
        self.last_error_at = self._wall_clock()
        logger.error(
            "budgets file %s rejected, the last good policy stays in force: %s",
            self.path,
            "; ".join(err.problems),
        )

    def _clear_error(self) -> None:
        self._failed_digest = None
        self.last_error = None
        self.last_error_at = None


def read_content(path: Path) -> bytes:
    """The bytes of the budgets file; `BudgetsError` when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as err:
        reason = err.strerror or str(err)
        raise BudgetsError((Problem("(file)", f"cannot read {path}: {reason}"),)) from err


def parse_content(content: bytes) -> BudgetPolicy:
    """The policy in a budgets file's bytes (UTF-8 YAML); `BudgetsError` otherwise."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as err:
        problem = Problem("(file)", f"not UTF-8 text: {err.reason} at byte {err.start}")
        raise BudgetsError((problem,)) from err
    return parse_budgets(text)


def content_digest(content: bytes) -> str:
    """SHA-256 of a content, in hex."""
    return hashlib.sha256(content).hexdigest()
