"""The timekeeper's exception tree.

Logic and adapters raise these; the API maps each to an HTTP status and the JSON body
`{"error": code, "message": text}` in one handler (`api.py`). Nothing here knows HTTP.
"""

from __future__ import annotations


class TimekeeperError(Exception):
    """Base of every error the timekeeper reports to a caller."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(TimekeeperError):
    """The caller sent something malformed: a field, a value and the rule it breaks."""

    code = "invalid"


class ReportRejected(InvalidRequest):
    """A well-formed report that cannot be accepted (overlap, future, too long)."""

    code = "rejected"


class ReportTooEarly(ReportRejected):
    """A report ending beyond the clock-skew allowance: a node clock ahead of this one.

    Still a 400, but with its own code: the same report becomes acceptable once this
    server's clock has caught up, so a sidecar keeps it and retries instead of giving it up.
    """

    code = "too-early"


class Conflict(TimekeeperError):
    """The same (pod UID, sequence) was already recorded with different content."""

    code = "conflict"


class Unauthenticated(TimekeeperError):
    """No credentials, or credentials that do not verify (forged, expired, wrong audience)."""

    code = "unauthenticated"


class Forbidden(TimekeeperError):
    """Valid credentials that do not cover what was asked (another namespace or pod)."""

    code = "forbidden"


class NotFound(TimekeeperError):
    """No such resource."""

    code = "not-found"


class Unavailable(TimekeeperError):
    """A dependency (the database) cannot be reached right now; the caller may retry."""

    code = "unavailable"


class TooLarge(TimekeeperError):
    """The request body is larger than the API takes."""

    code = "request-entity-too-large"


class ConfigError(Exception):
    """Bad settings or a bad file given at start-up; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
