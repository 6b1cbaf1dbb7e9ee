"""Splitting intervals into 15-minute buckets: exact, proportional, in order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timekeeper.buckets import BucketShare, split_into_buckets


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "end", "shares"),
    [
        pytest.param(
            "2026-11-21T06:01:00",
            "2026-11-21T06:02:00",
            [("2026-11-21T06:00:00", 60_000_000)],
            id="inside-one",
        ),
        pytest.param(
            "2026-11-21T06:14:30",
            "2026-11-21T06:15:30",
            [("2026-11-21T06:00:00", 30_000_000), ("2026-11-21T06:15:00", 30_000_000)],
            id="across-a-boundary",
        ),
        pytest.param(
            "2026-11-21T06:00:00",
            "2026-11-21T06:15:00",
            [("2026-11-21T06:00:00", 900_000_000)],
            id="exactly-one-bucket",
        ),
        pytest.param(
            "2026-11-21T23:50:00",
            "2026-11-22T00:20:00",
            [
                ("2026-11-21T23:45:00", 600_000_000),
                ("2026-11-22T00:00:00", 900_000_000),
                ("2026-11-22T00:15:00", 300_000_000),
            ],
            id="across-midnight",
        ),
        pytest.param(
            "2026-11-21T06:14:59.999999",
            "2026-11-21T06:15:00.000001",
            [("2026-11-21T06:00:00", 1), ("2026-11-21T06:15:00", 1)],
            id="microseconds",
        ),
        pytest.param("2026-11-21T06:02:00", "2026-11-21T06:02:00", [], id="empty"),
    ],
)
def test_split(start: str, end: str, shares: list[tuple[str, int]]) -> None:
    assert split_into_buckets(at(start), at(end)) == [
        BucketShare(at(bucket), microseconds) for bucket, microseconds in shares
    ]


@given(
    start=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    length=st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=2)),
)
def test_pieces_add_up_to_the_interval(start: datetime, length: timedelta) -> None:
    shares = split_into_buckets(start, start + length)
    assert sum(share.microseconds for share in shares) == length // timedelta(microseconds=1)
    starts = [share.bucket_start for share in shares]
    assert starts == sorted(set(starts))
    assert all(share.bucket_start.timestamp() % 900 == 0 for share in shares)
    assert all(0 < share.microseconds <= 900_000_000 for share in shares)
