"""The on-disk spool: closed intervals wait here until the timekeeper acknowledges them.

Layout of the spool directory (an emptyDir of the pod):
- `<sequence>.json`: one closed interval, a checksummed record (`reports.encode_record`);
- `state.json`: the next sequence number and where the open interval started;
- `rejected/`: intervals the timekeeper refused (4xx) or records that could not be read,
  each with the reason (at most `MAX_REJECTED`; the oldest goes first, with a log line).

Every write goes to a temporary file, is fsync'ed, renamed into place and the directory is
fsync'ed, so a crash leaves either the old or the new file, never a torn one. An interval
file is written before the state that moves past it, so a sequence number, once given to an
interval, is never given to another.

Bound: at most `max_intervals` interval files. When a new interval finds the spool full, the
spool is compacted: neighbouring intervals are merged pairwise (each merge keeps the older
sequence number; the newer one is dropped, never reused), as long as a merged interval stays
within `MERGE_LIMIT_SECONDS`. The oldest interval, the only one that may already have been
sent, is never merged. If every interval is already at the limit, new time is merged into
the newest interval regardless. No GPU time is dropped; only the backlog's granularity
coarsens.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sidecar.errors import SpoolError
from sidecar.intervals import format_time, parse_time
from sidecar.reports import (
    BadRecord,
    Report,
    SpoolRecord,
    decode_record,
    duration_seconds,
    encode_record,
    merge_reports,
)

log = logging.getLogger(__name__)

STATE_FILE: Final = "state.json"
REJECTED_DIR: Final = "rejected"
MAX_REJECTED: Final = 256
MERGE_LIMIT_SECONDS: Final = 3600.0
"""Compaction never makes an interval longer than this (the timekeeper caps one report)."""
_SUFFIX: Final = ".json"


def _interval_name(sequence: int) -> str:
    return f"{sequence:012d}{_SUFFIX}"


@dataclass(frozen=True)
class Stored:
    """What `Spool.commit` did with a closed interval."""

    sequence: int
    merged: bool
    """True when the interval was merged into the newest spooled one (spool full)."""
    compacted: int = 0
    """How many spooled intervals compaction merged away to make room."""


class Spool:
    """The spool directory of one pod; single-threaded use by the agent."""

    def __init__(
        self,
        directory: str,
        *,
        max_intervals: int,
        pod_uid: str,
        merge_limit_seconds: float = MERGE_LIMIT_SECONDS,
    ) -> None:
        self.directory = directory
        self.max_intervals = max_intervals
        self.pod_uid = pod_uid
        self.merge_limit_seconds = merge_limit_seconds
        self.next_sequence = 1
        self.open_start: datetime | None = None
        self._pending: list[int] = []

    # -- files ------------------------------------------------------------------------------

    def _path(self, *names: str) -> str:
        return os.path.join(self.directory, *names)

    def _fsync_dir(self, directory: str) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_atomically(self, path: str, data: bytes) -> None:
        directory, name = os.path.split(path)
        temporary = os.path.join(directory, f".{name}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
            self._fsync_dir(directory)
        except OSError as err:
            raise SpoolError(f"cannot write {path}: {err.strerror}") from err

    def _read(self, sequence: int) -> SpoolRecord:
        with open(self._path(_interval_name(sequence)), "rb") as handle:
            return decode_record(handle.read())

    def _write(self, sequence: int, record: SpoolRecord) -> None:
        self._write_atomically(self._path(_interval_name(sequence)), encode_record(record))

    def _remove(self, sequence: int) -> None:
        try:
            os.unlink(self._path(_interval_name(sequence)))
        except FileNotFoundError:
            pass
        except OSError as err:
            raise SpoolError(f"cannot remove spooled interval {sequence}: {err}") from err

    # -- start-up ---------------------------------------------------------------------------

    def recover(self) -> None:
        """Load the state and the pending intervals a previous run left; quarantine bad files."""
        try:
            os.makedirs(self._path(REJECTED_DIR), exist_ok=True)
            names = sorted(os.listdir(self.directory))
        except OSError as err:
            raise SpoolError(f"cannot read spool {self.directory}: {err.strerror}") from err
        state = self._load_state()
        if state is not None:
            self.next_sequence, self.open_start = state
        records: dict[int, SpoolRecord] = {}
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                os.unlink(self._path(name))  # an interrupted write; the old version is intact
                continue
            stem = name.removesuffix(_SUFFIX)
            if not name.endswith(_SUFFIX) or not stem.isdigit():
                continue
            sequence = int(stem)
            self.next_sequence = max(self.next_sequence, sequence + 1)
            try:
                record = self._read(sequence)
                if record.report["sequence"] != sequence or record.report["podUid"] != self.pod_uid:
                    raise BadRecord("sequence or pod UID does not match the file")
            except (OSError, BadRecord) as err:
                self._quarantine(sequence, f"unreadable spool record: {err}")
                continue
            records[sequence] = record
        # A compaction interrupted after writing the merged record: drop what it absorbed.
        absorbed = {n for record in records.values() for n in record.absorbed}
        for sequence in sorted(absorbed & records.keys()):
            self._remove(sequence)
            del records[sequence]
        self._pending = sorted(records)
        if records:
            latest_end = max(parse_time(r.report["end"]) for r in records.values())
            if self.open_start is None or latest_end > self.open_start:
                # The newest interval was stored but the state after it was not.
                self.open_start = latest_end

    def _load_state(self) -> tuple[int, datetime | None] | None:
        try:
            with open(self._path(STATE_FILE), "rb") as handle:
                state: Any = json.loads(handle.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.error("spool state is unreadable (%s); deriving it from the intervals", err)
            return None
        if not isinstance(state, dict):
            log.error("spool state is not an object; deriving it from the intervals")
            return None
        if state.get("podUid") != self.pod_uid:
            raise SpoolError(
                f"spool {self.directory} belongs to pod UID {state.get('podUid')!r}, "
                f"not {self.pod_uid!r}; give each pod its own spool directory"
            )
        sequence = state.get("nextSequence")
        if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
            log.error("spool state has no valid nextSequence; deriving it from the intervals")
            return None
        open_start = state.get("openStart")
        try:
            start = parse_time(open_start) if isinstance(open_start, str) else None
        except ValueError:
            start = None
        return sequence, start

    # -- the agent's operations -------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def pending(self) -> list[int]:
        """Sequences waiting for delivery, oldest first."""
        return list(self._pending)

    def save_state(self, open_start: datetime) -> None:
        """Persist the next sequence number and the open interval's start."""
        state = {
            "format": 1,
            "podUid": self.pod_uid,
            "nextSequence": self.next_sequence,
            "openStart": format_time(open_start),
        }
        self._write_atomically(self._path(STATE_FILE), json.dumps(state).encode() + b"\n")
        self.open_start = open_start

    def commit(self, build: Callable[[int], Report], *, open_start: datetime) -> Stored:
        """Store a closed interval (built for the sequence it gets), then move the state on.

        Raises `SpoolError` if the interval could not be written; the caller keeps the
        interval open and tries again at the next boundary.
        """
        compacted = 0
        if len(self._pending) >= self.max_intervals:
            compacted = self._compact()
        if len(self._pending) >= self.max_intervals:
            tail = self._pending[-1]
            try:
                current = self._read(tail)
            except (OSError, BadRecord) as err:
                raise SpoolError(f"cannot read spooled interval {tail}: {err}") from err
            merged = merge_reports(current.report, build(tail))
            self._write(tail, SpoolRecord(report=merged, absorbed=current.absorbed))
            self._save_state_after_commit(open_start)
            return Stored(sequence=tail, merged=True, compacted=compacted)
        sequence = self.next_sequence
        self._write(sequence, SpoolRecord(report=build(sequence)))
        self._pending.append(sequence)
        self.next_sequence = sequence + 1
        self._save_state_after_commit(open_start)
        return Stored(sequence=sequence, merged=False, compacted=compacted)

    def _save_state_after_commit(self, open_start: datetime) -> None:
        # The interval is stored: it must not be stored again, even if the state cannot be
        # written now (recovery then derives the state from the newest interval file).
        try:
            self.save_state(open_start)
        except SpoolError as err:
            self.open_start = open_start
            log.error("%s; a restart derives the state from the interval files", err)

    def _compact(self) -> int:
        """Merge neighbouring never-sent intervals pairwise; returns how many went away."""
        removed = 0
        index = 1  # the oldest interval may have been sent: it is never changed
        while index + 1 < len(self._pending):
            older, newer = self._pending[index], self._pending[index + 1]
            try:
                first, second = self._read(older), self._read(newer)
            except (OSError, BadRecord):
                index += 1
                continue
            seconds = duration_seconds(first.report) + duration_seconds(second.report)
            if seconds <= self.merge_limit_seconds:
                merged = merge_reports(first.report, second.report)
                # The merged record names what it absorbed before the absorbed file goes, so
                # a crash in between cannot leave the newer interval counted twice.
                self._write(older, SpoolRecord(report=merged, absorbed=(newer,)))
                self._remove(newer)
                del self._pending[index + 1]
                removed += 1
            index += 1
        if removed:
            log.warning(
                "spool full (%d intervals): merged %d pairs of neighbouring intervals",
                self.max_intervals,
                removed,
            )
        return removed

    def head(self) -> Report | None:
        """The oldest pending interval (the only one ever sent), or None when all are sent.

        An unreadable head is quarantined and the next one is returned.
        """
        while self._pending:
            sequence = self._pending[0]
            try:
                return self._read(sequence).report
            except (OSError, BadRecord) as err:
                self._quarantine(sequence, f"unreadable spool record: {err}")
        return None

    def delivered(self, sequence: int) -> None:
        """The timekeeper acknowledged `sequence`: forget it.

        No directory fsync: if the removal is lost in a crash the interval is sent again,
        which the timekeeper answers as before (idempotent on pod UID and sequence).
        """
        self._remove(sequence)
        self._pending.remove(sequence)

    def reject(self, sequence: int, reason: str) -> None:
        """Move a refused interval to `rejected/` with the reason."""
        self._quarantine(sequence, reason)

    def _quarantine(self, sequence: int, reason: str) -> None:
        source = self._path(_interval_name(sequence))
        try:
            with open(source, "rb") as handle:
                content = handle.read().decode("utf-8", errors="replace")
        except OSError:
            content = ""
        entry = {"sequence": sequence, "reason": reason, "record": content}
        rejected_dir = self._path(REJECTED_DIR)
        try:
            os.makedirs(rejected_dir, exist_ok=True)
            existing = sorted(n for n in os.listdir(rejected_dir) if n.endswith(_SUFFIX))
            while len(existing) >= MAX_REJECTED:
                oldest = existing.pop(0)
                log.error("rejected/ is full (%d): removing the oldest, %s", MAX_REJECTED, oldest)
                os.unlink(os.path.join(rejected_dir, oldest))
            self._write_atomically(
                os.path.join(rejected_dir, _interval_name(sequence)),
                json.dumps(entry).encode() + b"\n",
            )
        except OSError as err:
            raise SpoolError(f"cannot move interval {sequence} to rejected/: {err}") from err
        self._remove(sequence)
        if sequence in self._pending:
            self._pending.remove(sequence)
        log.error("interval %d moved to %s/: %s", sequence, REJECTED_DIR, reason)
