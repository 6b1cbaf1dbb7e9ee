"""A file read into a value and reloaded when its content changes.

Files mounted from a ConfigMap or a Secret are updated by the kubelet swapping a symlink, so
the file's own mtime says nothing. `WatchedFile` therefore compares the content (SHA-256), at
most once per check interval, on the calling thread (no background thread: the check is a
read of a small file; while one thread checks, the others go on with the value they have).
A new content that does not parse is logged with every reason and the last good value stays
in force; the same bad content is logged only once.

A subclass says how to read and parse the file, which error means a bad file, how to keep
a new value, and the words of its log lines.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Generic, Protocol, TypeVar, cast

T = TypeVar("T")


class _Problems(Protocol):
    @property
    def problems(self) -> Sequence[str]: ...


class WatchedFile(Generic[T]):
    """The checks of a watched file; `_checked()` is cheap and thread-safe."""

    error: ClassVar[type[Exception]]
    """The error `_read` and `_parse` raise for a bad file; it has `problems`."""
    kind: ClassVar[str]
    """The file's name in log lines ("budgets", "tokens")."""
    kept: ClassVar[str]
    """What stays when a content is rejected ("the last good policy stays")."""
    logger: ClassVar[logging.Logger]

    def __init__(
        self,
        path: Path | None,
        *,
        content_digest: str | None = None,
        check_interval_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if check_interval_seconds < 0:
            raise ValueError(f"check_interval_seconds must be >= 0 (got {check_interval_seconds})")
        self.path = path
        self.check_interval_seconds = check_interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._digest = content_digest
        self._failed_digest: str | None = None
        self._checked_at = clock()
        self.reloads = 0
        """Successful reloads after the first load."""
        self.reload_failures = 0
        """Distinct new contents (or read errors) rejected since start."""
        self.last_error: Sequence[str] | None = None
        """The problems of the latest rejected content; None once a good file loads again."""

    # -- what a subclass says ---------------------------------------------------------------

    def _read(self, path: Path) -> bytes:
        raise NotImplementedError

    def _parse(self, content: bytes, path: Path) -> T:
        raise NotImplementedError

    def _accept(self, value: T, digest: str) -> None:
        """Put a newly parsed value in force."""
        raise NotImplementedError

    def _describe(self, value: T) -> str:
        """A new value in the reload log line ("3 namespaces listed")."""
        raise NotImplementedError

    # -- the checks -------------------------------------------------------------------------

    def _checked(self) -> None:
        """Check the file first when the interval has passed; one thread checks, the others
        go on with the value they have."""
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

    def check_now(self) -> bool:
        """Check the file at once, whatever the interval; True when a new value loaded."""
        if self.path is None:
            return False
        with self._lock:
            return self._check(self.path)

    def _check(self, path: Path) -> bool:
        self._checked_at = self._clock()
        try:
            content = self._read(path)
        except self.error as err:
            problems = cast(_Problems, err).problems
            self._reject(problems, digest=f"unreadable:{problems}")
            return False
        digest = hashlib.sha256(content).hexdigest()
        if digest == self._digest:
            self._clear_error()
            return False
        if digest == self._failed_digest:
            return False
        try:
            value = self._parse(content, path)
        except self.error as err:
            self._reject(cast(_Problems, err).problems, digest=digest)
            return False
        self._accept(value, digest)
        self._digest = digest
        self._clear_error()
        self.reloads += 1
        self.logger.info(
            "%s reloaded from %s: %s (sha256 %s)",
            self.kind,
            path,
            self._describe(value),
            digest[:12],
        )
        return True

    def _reject(self, problems: Sequence[str], *, digest: str) -> None:
        if digest == self._failed_digest:
            return
        self._failed_digest = digest
        self.reload_failures += 1
        self.last_error = problems
        self.logger.error(
            "%s file %s rejected, %s in force: %s",
            self.kind,
            self.path,
            self.kept,
            "; ".join(problems),
        )

    def _clear_error(self) -> None:
        self._failed_digest = None
        self.last_error = None
