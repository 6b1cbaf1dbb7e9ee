"""The webhook's exception tree.

`BadReview` is the caller's fault (HTTP 400); `TimekeeperUnavailable` is raised by the budget
adapter and decided by the failure policy; `SettingsError` stops the process at start-up.
Admission refusals are not errors: they are ordinary `allowed: false` responses.
"""

from __future__ import annotations


class WebhookError(Exception):
    """Base of every error the webhook raises on purpose."""


class BadReview(WebhookError):
    """The request body is not an AdmissionReview this webhook can answer (HTTP 400)."""


class TimekeeperUnavailable(WebhookError):
    """The timekeeper did not give a usable budget state in time."""


class SettingsError(WebhookError):
    """One or more settings are invalid; the message lists every bad field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid webhook settings:\n  " + "\n  ".join(problems))
        self.problems = problems
