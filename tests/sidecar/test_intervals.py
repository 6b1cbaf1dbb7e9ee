from __future__ import annotations

from datetime import datetime

import pytest

from sidecar.intervals import Boundary, Resume, close_at, format_time, parse_time, resume_from


def t(text: str) -> datetime:
    return parse_time(f"2026-11-21T{text}Z")


@pytest.mark.parametrize(
    ("open_start", "wall_now", "elapsed", "expected"),
    [
        pytest.param(
            t("06:00:00"),
            t("06:00:15"),
            15.0,
            Boundary(t("06:00:15"), t("06:00:15"), None),
            id="clocks-agree-contiguous",
        ),
        pytest.param(
            t("06:00:00"),
            t("06:00:16.500"),
            15.0,
            Boundary(t("06:00:16.500"), t("06:00:16.500"), None),
            id="within-tolerance-wall-wins",
        ),
        pytest.param(
            t("06:00:00"),
            t("07:00:15"),
            15.0,
            Boundary(t("06:00:15"), t("07:00:15"), 3600.0),
            id="forward-step-keeps-measured-length-gap-shows",
        ),
        pytest.param(
            t("06:00:00"),
            t("06:00:05"),
            15.0,
            Boundary(t("06:00:05"), t("06:00:05"), -10.0),
            id="backward-step-ends-at-wall-never-in-future",
        ),
        pytest.param(
            t("06:00:00"),
            t("05:59:00"),
            15.0,
            Boundary(t("06:00:00"), t("06:00:00"), -75.0),
            id="backward-past-start-nothing-to-close",
        ),
    ],
)
def test_close_at(
    open_start: datetime, wall_now: datetime, elapsed: float, expected: Boundary
) -> None:
    assert close_at(open_start, wall_now=wall_now, elapsed_seconds=elapsed) == expected


@pytest.mark.parametrize(
    ("saved", "now", "expected"),
    [
        pytest.param(None, t("06:00:00"), Resume(t("06:00:00"), False, 0.0), id="first-start"),
        pytest.param(
            t("06:00:00"),
            t("06:00:40"),
            Resume(t("06:00:00"), True, 40.0),
            id="restart-continues-lost-interval",
        ),
        pytest.param(
            t("06:00:00"),
            t("06:10:00"),
            Resume(t("06:00:00"), True, 600.0),
            id="restart-at-window-edge",
        ),
        pytest.param(
            t("06:00:00"),
            t("06:10:01"),
            Resume(t("06:10:01"), False, 601.0),
            id="beyond-window-not-charged",
        ),
        pytest.param(
            t("06:00:00"),
            t("05:59:00"),
            Resume(t("06:00:00"), True, 0.0),
            id="saved-in-future-kept-no-overlap",
        ),
    ],
)
def test_resume_from(saved: datetime | None, now: datetime, expected: Resume) -> None:
    assert resume_from(saved, wall_now=now, window_seconds=600) == expected


def test_times_are_rfc3339_utc_with_microseconds() -> None:
    moment = parse_time("2026-11-21T07:00:00.123456+01:00")
    assert format_time(moment) == "2026-11-21T06:00:00.123456Z"
    assert parse_time(format_time(moment)) == moment
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_time("2026-11-21T06:00:00")
