"""Splitting a usage interval into the 15-minute UTC buckets of the running totals.

Pure logic. The split is exact: an interval is cut at bucket boundaries into whole
microseconds, and each piece is charged in integer units (vcuda-core x µs), so the pieces add
up to the whole with no rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from timekeeper.periods import BUCKET_SECONDS, bucket_floor

_BUCKET: Final = timedelta(seconds=BUCKET_SECONDS)
_MICROSECOND: Final = timedelta(microseconds=1)
MICROSECONDS_PER_SECOND: Final = 1_000_000


@dataclass(frozen=True)
class BucketShare:
    """The part of an interval that falls into one bucket."""

    bucket_start: datetime
    microseconds: int


def split_into_buckets(start: datetime, end: datetime) -> list[BucketShare]:
    """The pieces of `[start, end)` per bucket, in time order; empty if `end <= start`."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    shares: list[BucketShare] = []
    cursor = start
    while cursor < end:
        bucket = bucket_floor(cursor)
        piece_end = min(bucket + _BUCKET, end)
        shares.append(BucketShare(bucket, (piece_end - cursor) // _MICROSECOND))
        cursor = piece_end
    return shares
