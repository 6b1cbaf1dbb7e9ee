"""Bearer tokens for the timekeeper: a static token, or the projected ServiceAccount token.

kubelet rotates a projected token by swapping the file (a symlink flip), so the file is
stat'ed before every request and re-read when its identity, size or mtime changed, or when
the timekeeper answered 401 (`invalidate`). The token is never logged.
"""

from __future__ import annotations

import os
from typing import Protocol


class TokenSource(Protocol):
    def token(self) -> str:
        """The token to send now ('' when none can be read)."""

    def invalidate(self) -> None:
        """Forget any cached token: the next `token()` reads it afresh."""


class StaticToken:
    """GPUSHARE_TOKEN: the same token every time."""

    def __init__(self, value: str) -> None:
        self._value = value

    def token(self) -> str:
        return self._value

    def invalidate(self) -> None:
        return None


class FileToken:
    """GPUSHARE_TOKEN_FILE: re-read whenever the file changes."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._signature: tuple[int, int, int, int] | None = None
        self._value = ""

    def token(self) -> str:
        try:
            stat = os.stat(self._path)
        except OSError:
            return self._value  # mid-rotation: keep the last token; a 401 says if it expired
        signature = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if signature != self._signature:
            try:
                with open(self._path, encoding="utf-8") as handle:
                    value = handle.read().strip()
            except (OSError, UnicodeDecodeError):
                return self._value
            if not value:
                return self._value  # caught between truncation and write: read it again
            self._value = value
            self._signature = signature
        return self._value

    def invalidate(self) -> None:
        self._signature = None
