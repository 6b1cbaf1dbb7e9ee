from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sidecar.errors import SpoolError
from sidecar.intervals import parse_time
from sidecar.reports import Measured, PodIdentity, Report, SpoolRecord, build_report, encode_record
from sidecar.spool import Spool

UID = "0b3c8a4e-6f0d-4d9e-9b1a-2f6c1e8d7a55"
POD = PodIdentity(UID, "train-0", "team-a", 50, 15)
T0 = parse_time("2026-11-21T06:00:00Z")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def builder(start: float, end: float):  # type: ignore[no-untyped-def]
    def build(sequence: int) -> Report:
        return build_report(
            POD, sequence=sequence, start=at(start), end=at(end), measured=Measured()
        )

    return build


def fill(spool: Spool, count: int, *, seconds: float = 15.0) -> None:
    for i in range(count):
        spool.commit(builder(i * seconds, (i + 1) * seconds), open_start=at((i + 1) * seconds))


def intervals(directory: Path) -> list[tuple[int, float, float]]:
    """(sequence, start, end) of every spooled file, seconds after T0."""
    found = []
    for path in sorted(directory.glob("*.json")):
        if not path.stem.isdigit():
            continue
        report = json.loads(path.read_text())["report"]
        found.append(
            (
                report["sequence"],
                (parse_time(report["start"]) - T0).total_seconds(),
                (parse_time(report["end"]) - T0).total_seconds(),
            )
        )
    return found


def new_spool(tmp_path: Path, max_intervals: int = 100, merge_limit: float = 3600) -> Spool:
    spool = Spool(
        str(tmp_path), max_intervals=max_intervals, pod_uid=UID, merge_limit_seconds=merge_limit
    )
    spool.recover()
    return spool


@pytest.mark.parametrize(
    ("max_intervals", "merge_limit", "closed", "expected"),
    [
        pytest.param(
            4,
            3600,
            4,
            [(1, 0, 15), (2, 15, 30), (3, 30, 45), (4, 45, 60)],
            id="at-the-bound-nothing-merged",
        ),
        pytest.param(
            4,
            3600,
            5,
            [(1, 0, 15), (2, 15, 45), (4, 45, 60), (5, 60, 75)],
            id="full-compacts-pairs-keeps-oldest",
        ),
        pytest.param(
            4,
            3600,
            9,
            [(1, 0, 15), (2, 15, 105), (8, 105, 120), (9, 120, 135)],
            id="repeated-compaction-coarsens-the-older-backlog",
        ),
        pytest.param(
            3,
            20,
            5,
            [(1, 0, 15), (2, 15, 30), (3, 30, 75)],
            id="all-at-merge-limit-new-time-joins-newest",
        ),
    ],
)
def test_the_bound_merges_never_drops_time_and_never_touches_the_oldest(
    tmp_path: Path,
    max_intervals: int,
    merge_limit: float,
    closed: int,
    expected: list[tuple[int, float, float]],
) -> None:
    spool = new_spool(tmp_path, max_intervals, merge_limit)
    fill(spool, closed)
    held = intervals(tmp_path)
    assert held == expected
    assert len(held) <= max_intervals
    assert sum(end - start for _, start, end in held) == closed * 15, "no second lost or added"
    assert spool.next_sequence == expected[-1][0] + 1, "a merged sequence is never reused"


def test_a_restart_resumes_the_sequence_and_the_open_start(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    fill(spool, 3)
    spool.delivered(1)
    spool.delivered(2)
    spool.delivered(3)
    again = new_spool(tmp_path)
    assert (again.next_sequence, again.open_start, again.pending_count) == (4, at(45), 0)


def test_an_interval_stored_without_its_state_is_not_stored_again(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    fill(spool, 2)
    state = (tmp_path / "state.json").read_text()
    spool.commit(builder(30, 45), open_start=at(45))
    (tmp_path / "state.json").write_text(state)  # as if killed between the two writes
    again = new_spool(tmp_path)
    assert (again.next_sequence, again.open_start, again.pending()) == (4, at(45), [1, 2, 3])


def test_a_compaction_interrupted_after_the_merged_write_counts_nothing_twice(
    tmp_path: Path,
) -> None:
    spool = new_spool(tmp_path)
    fill(spool, 3)
    merged = json.loads((tmp_path / "000000000002.json").read_text())["report"]
    merged["end"] = "2026-11-21T06:00:45.000000Z"
    (tmp_path / "000000000002.json").write_bytes(
        encode_record(SpoolRecord(report=merged, absorbed=(3,)))
    )
    again = new_spool(tmp_path)
    assert again.pending() == [1, 2]
    assert intervals(tmp_path) == [(1, 0, 15), (2, 15, 45)]


def test_damaged_files_are_quarantined_and_leftovers_removed(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    fill(spool, 3)
    (tmp_path / "000000000002.json").write_text('{"format": 1, "rep')
    (tmp_path / ".000000000004.json.tmp").write_text("half")
    again = new_spool(tmp_path)
    assert again.pending() == [1, 3]
    assert again.next_sequence == 4
    assert not (tmp_path / ".000000000004.json.tmp").exists()
    letter = json.loads((tmp_path / "rejected" / "000000000002.json").read_text())
    assert letter["reason"].startswith("unreadable spool record: not JSON")


def test_a_spool_of_another_pod_is_refused(tmp_path: Path) -> None:
    fill(new_spool(tmp_path), 1)
    other = Spool(str(tmp_path), max_intervals=10, pod_uid="11111111-2222-3333-4444-555555555555")
    with pytest.raises(SpoolError, match="belongs to pod UID"):
        other.recover()


def test_reject_moves_the_head_aside_with_the_reason(tmp_path: Path) -> None:
    spool = new_spool(tmp_path)
    fill(spool, 2)
    spool.reject(1, "HTTP 422: overlaps sequence 9")
    head = spool.head()
    assert head is not None and head["sequence"] == 2
    letter = json.loads((tmp_path / "rejected" / "000000000001.json").read_text())
    assert letter["reason"] == "HTTP 422: overlaps sequence 9"
    assert json.loads(letter["record"])["report"]["sequence"] == 1
