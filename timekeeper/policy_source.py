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
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from timekeeper.budgets import DEFAULT_POLICY, BudgetPolicy, BudgetsError, Problem, parse_budgets
from timekeeper.watched_file import WatchedFile

logger = logging.getLogger(__name__)


class PolicySource(WatchedFile[BudgetPolicy]):
    """Holds the current `BudgetPolicy`; `current()` is cheap and thread-safe."""

    error = BudgetsError
    kind = "budgets"
    kept = "the last good policy stays"
    logger = logger

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
        super().__init__(path, check_interval_seconds=check_interval_seconds, clock=clock)
        self._wall_clock = wall_clock
        self.last_error: tuple[str, ...] | None = None
        self.last_error_at: datetime | None = None
        if path is None:
            self._policy = DEFAULT_POLICY
            self._loaded_at: datetime | None = None
            return
        content = read_content(path)
        self._policy = parse_content(content)
        self._digest = content_digest(content)
        self._loaded_at = wall_clock()

    def current(self) -> BudgetPolicy:
        """The policy in force; checks the file first when the interval has passed."""
        self._checked()
        return self._policy

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

    def _read(self, path: Path) -> bytes:
        return read_content(path)

    def _parse(self, content: bytes, path: Path) -> BudgetPolicy:
        return parse_content(content)

    def _accept(self, value: BudgetPolicy, digest: str) -> None:
        self._policy = value
        self._loaded_at = self._wall_clock()

    def _describe(self, value: BudgetPolicy) -> str:
        return f"{len(value.namespaces)} namespaces listed"

    def _reject(self, problems: Sequence[str], *, digest: str) -> None:
        if digest != self._failed_digest:
            self.last_error_at = self._wall_clock()
        super()._reject(problems, digest=digest)

    def _clear_error(self) -> None:
        super()._clear_error()
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
