"""Splitting a usage interval into the 15-minute UTC buckets of the running totals.

Pure logic. The split is exact: an interval is cut at bucket boundaries into whole
microseconds, and each piece is charged in integer units (vcuda-core x µs), so the pieces add
up to the whole with no rounding.

A bucket's total is kept as two integers, whole unit-hours and the rest below an hour in
unit-microseconds (`hours_and_rest`), so that no count of reports can overflow a 64-bit
column: one report adds at most 25,000 unit-hours to a bucket (100,000 vcuda-core units for
900 s), so a sum of hours passes 2^63 only after some 3.7 x 10^14 reports, and a sum of rests
(each below 3.6 x 10^9) only over more than 2.5 x 10^9 buckets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from timekeeper.periods import BUCKET_SECONDS, bucket_floor

_BUCKET: Final = timedelta(seconds=BUCKET_SECONDS)
_MICROSECOND: Final = timedelta(microseconds=1)
MICROSECONDS_PER_SECOND: Final = 1_000_000
MICROSECONDS_PER_HOUR: Final = 3600 * MICROSECONDS_PER_SECOND


def hours_and_rest(unit_microseconds: int) -> tuple[int, int]:
    """A charge in units x µs as (whole unit-hours, the rest in units x µs below an hour)."""
    hours, rest = divmod(unit_microseconds, MICROSECONDS_PER_HOUR)
    return hours, rest


def from_hours_and_rest(hours: int, rest: int) -> int:
    """The charge in units x µs of (unit-hours, rest); the inverse of `hours_and_rest`."""
    return int(hours) * MICROSECONDS_PER_HOUR + int(rest)


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
