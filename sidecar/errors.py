"""The sidecar's exception tree.

`SettingsError` stops the process at start-up; `SpoolError` means the spool directory cannot
hold what it must (the sidecar then keeps the open interval growing in memory and retries).
Delivery problems are not exceptions: the client returns an outcome the agent decides on.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base of every error the sidecar raises on purpose."""


class SettingsError(SidecarError):
    """One or more environment variables are missing or invalid; the message lists them all."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid sidecar environment:\n  " + "\n  ".join(problems))
        self.problems = problems


class SpoolError(SidecarError):
    """The spool directory could not be read or written."""
