"""The loop against fakes of its clock, waiter, sender and usage reader (no real time)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from sidecar.agent import Agent, AgentConfig
from sidecar.backoff import Backoff
from sidecar.client import Outcome
from sidecar.intervals import parse_time
from sidecar.reports import PodIdentity, Report
from sidecar.spool import Spool
from sidecar.usage import AllocationOnly, UsageReader, UsageSample
from tests.sidecar.fakes import FakeClock, FakeReader, FakeSender, FakeWaiter

UID = "0b3c8a4e-6f0d-4d9e-9b1a-2f6c1e8d7a55"
POD = PodIdentity(UID, "train-0", "team-a", 50, 15)
T0 = parse_time("2026-11-21T06:00:00Z")
CONFIG = AgentConfig(
    report_interval_seconds=15.0,
    shutdown_deadline_seconds=10.0,
    http_timeout_seconds=5.0,
    backoff=Backoff(1.0, 60.0),
    rejected_attempts=3,
    auth_grace_seconds=120.0,
    resume_window_seconds=600.0,
)


def run_agent(
    tmp_path: Path,
    *,
    stop_after: float,
    sender_answer: object = None,
    reader: UsageReader | None = None,
    seconds_per_request: float = 0.0,
) -> tuple[int, FakeSender, Spool]:
    clock = FakeClock(T0)
    sender = FakeSender(clock, seconds_per_request=seconds_per_request)
    if sender_answer is not None:
        sender.answer = sender_answer  # type: ignore[assignment]
    spool = Spool(str(tmp_path), max_intervals=100, pod_uid=UID)
    agent = Agent(
        CONFIG,
        pod=POD,
        spool=spool,
        sender=sender,
        reader=reader or AllocationOnly(),
        clock=clock,
        waiter=FakeWaiter(clock, stop_at=clock.monotonic() + stop_after),
        draw=lambda: 1.0,
    )
    return agent.run(), sender, spool


def seconds(report: Report) -> tuple[float, float]:
    return (
        (parse_time(report["start"]) - T0).total_seconds(),
        (parse_time(report["end"]) - T0).total_seconds(),
    )


def test_intervals_are_contiguous_and_the_last_is_cut_at_sigterm(tmp_path: Path) -> None:
    code, sender, spool = run_agent(tmp_path, stop_after=50.0)
    assert code == 0
    assert [(r["sequence"], seconds(r)) for r in sender.delivered] == [
        (1, (0, 15)),
        (2, (15, 30)),
        (3, (30, 45)),
        (4, (45, 50)),
    ]
    assert spool.pending_count == 0


def test_an_outage_is_retried_with_capped_doubling_then_sent_in_order(tmp_path: Path) -> None:
    def answer(now: float, report: Report) -> Outcome:
        down = 1015.0 <= now < 1100.0
        return Outcome("retry", 503, "HTTP 503") if down else Outcome("delivered", 201, "")

    _, sender, _ = run_agent(tmp_path, stop_after=130.0, sender_answer=answer)
    failures = [at - 1000 for at, _, kind in sender.attempts if kind == "retry"]
    assert failures == [15, 16, 18, 22, 30, 46, 78]  # waits 1, 2, 4, 8, 16, 32 (draw = 1.0)
    delivered = [r["sequence"] for r in sender.delivered]
    assert delivered == sorted(delivered) == list(range(1, 10))
    assert [seconds(r) for r in sender.delivered][-1] == (120, 130)


def test_shutdown_gives_up_at_the_deadline_and_keeps_the_spool(tmp_path: Path) -> None:
    def answer(now: float, report: Report) -> Outcome:
        return Outcome("retry", None, "no answer") if now >= 1020 else Outcome("delivered", 201, "")

    code, sender, spool = run_agent(
        tmp_path, stop_after=40.0, sender_answer=answer, seconds_per_request=0.5
    )
    assert code == 0
    stop_attempts = [at - 1000 for at, _, _ in sender.attempts if at >= 1040]
    assert stop_attempts == [40, 41.5, 44, 48.5]  # reset backoff, then 1, 2, 4 s; deadline 50
    assert spool.pending() == [2, 3]


def test_refused_intervals_go_to_rejected_after_the_allowed_attempts(tmp_path: Path) -> None:
    def answer(now: float, report: Report) -> Outcome:
        if report["sequence"] == 2:
            return Outcome("rejected", 422, "HTTP 422: overlaps")
        return Outcome("delivered", 201, "")

    _, sender, spool = run_agent(tmp_path, stop_after=46.0, sender_answer=answer)
    assert [s for _, s, kind in sender.attempts if kind == "rejected"] == [2, 2, 2]
    assert [r["sequence"] for r in sender.delivered] == [1, 3, 4]
    assert (tmp_path / "rejected" / "000000000002.json").exists()
    assert spool.pending_count == 0


def test_unauthorized_is_retried_for_the_grace_period_then_dead_lettered(tmp_path: Path) -> None:
    def answer(now: float, report: Report) -> Outcome:
        if report["sequence"] == 2:
            return Outcome("unauthorized", 401, "HTTP 401: unauthenticated: token expired")
        return Outcome("delivered", 201, "")

    _, sender, spool = run_agent(tmp_path, stop_after=400.0, sender_answer=answer)
    refused_at = [at - 1000 for at, s, kind in sender.attempts if kind == "unauthorized"]
    # First refusal at 30 s, then backoff 1, 2, 4, … s (capped at 60) until 120 s have passed.
    assert refused_at == [30, 31, 33, 37, 45, 61, 93, 153]
    assert (tmp_path / "rejected" / "000000000002.json").exists()
    assert 3 in [r["sequence"] for r in sender.delivered]
    assert spool.pending_count == 0


def test_unauthorized_then_accepted_loses_nothing(tmp_path: Path) -> None:
    def answer(now: float, report: Report) -> Outcome:
        if now < 1100.0:  # e.g. the token file is rotated 100 s in
            return Outcome("unauthorized", 401, "HTTP 401: unauthenticated: token expired")
        return Outcome("delivered", 201, "")

    _, sender, spool = run_agent(tmp_path, stop_after=200.0, sender_answer=answer)
    assert not (tmp_path / "rejected").exists() or not any((tmp_path / "rejected").iterdir())
    assert [r["sequence"] for r in sender.delivered][:3] == [1, 2, 3]
    assert spool.pending_count == 0


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        pytest.param(
            [UsageSample(0.2, 1000), UsageSample(0.4, 3000), UsageSample(0.6, 2000)],
            {"smUtilization": 0.4, "memoryUsedBytes": 3000},
            id="mean-sm-peak-memory",
        ),
        pytest.param(
            [UsageSample(None, 512), None, UsageSample(None, 256)],
            {"memoryUsedBytes": 512},
            id="memory-only",
        ),
        pytest.param([None], {}, id="nothing-visible-allocation-only"),
    ],
)
def test_measured_use_from_the_reader_goes_into_the_interval(
    tmp_path: Path, samples: list[UsageSample | None], expected: dict[str, object]
) -> None:
    # Period 15 s: samples at 0, 5 and 10 s fall in the first interval.
    reader = FakeReader(samples + [None] * 10)
    _, sender, _ = run_agent(tmp_path, stop_after=20.0, reader=reader)
    first = sender.delivered[0]
    measured = {k: v for k, v in first.items() if k in ("smUtilization", "memoryUsedBytes")}
    assert measured == expected
    assert reader.closed


def test_a_restart_continues_the_interval_the_killed_run_left_open(tmp_path: Path) -> None:
    run_agent(tmp_path, stop_after=20.0)  # delivered 0..15 and 15..20; open start saved: 20
    state = (tmp_path / "state.json").read_text()
    assert '"openStart": "2026-11-21T06:00:20.000000Z"' in state
    clock = FakeClock(parse_time("2026-11-21T06:01:00Z"))  # killed, restarted 40 s later
    sender = FakeSender(clock)
    agent = Agent(
        CONFIG,
        pod=POD,
        spool=Spool(str(tmp_path), max_intervals=100, pod_uid=UID),
        sender=sender,
        reader=AllocationOnly(),
        clock=clock,
        waiter=FakeWaiter(clock, stop_at=clock.monotonic() + 5),
        draw=lambda: 1.0,
    )
    assert agent.run() == 0
    assert [(r["sequence"], seconds(r)) for r in sender.delivered] == [(3, (20, 60)), (4, (60, 65))]


class BrokenReader:
    def __init__(self) -> None:
        self.closed = False

    def sample(self) -> UsageSample | None:
        raise RuntimeError("GPU is lost")

    def close(self) -> None:
        self.closed = True


def test_a_failing_usage_reader_never_stops_the_accounting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, sender, _ = run_agent(tmp_path, stop_after=31.0, reader=BrokenReader())
    assert [seconds(r) for r in sender.delivered] == [(0, 15), (15, 30), (30, 31)]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["reading measured use failed (GPU is lost); intervals go on without it"]


class _SpoolGoneWaiter(FakeWaiter):
    """Between two monotonic times the spool folder is replaced by a plain file, so every
    write fails (as on a full or broken disk); afterwards the folder is back."""

    def __init__(self, clock: FakeClock, folder: Path, *, gone: tuple[float, float]) -> None:
        super().__init__(clock, stop_at=clock.monotonic() + 70.0)
        self.folder = folder
        self.aside = folder.with_name("aside")
        self.gone = (clock.monotonic() + gone[0], clock.monotonic() + gone[1])

    def wait(self, seconds: float) -> None:
        super().wait(seconds)
        now = self.clock.monotonic()
        if self.gone[0] <= now < self.gone[1] and not self.aside.exists():
            self.folder.rename(self.aside)
            self.folder.write_text("not a folder")
        elif now >= self.gone[1] and self.aside.exists():
            self.folder.unlink()
            self.aside.rename(self.folder)


def test_an_unwritable_spool_grows_the_open_interval_and_loses_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    clock = FakeClock(T0)
    sender = FakeSender(clock)
    agent = Agent(
        CONFIG,
        pod=POD,
        spool=Spool(str(folder), max_intervals=100, pod_uid=UID),
        sender=sender,
        reader=AllocationOnly(),
        clock=clock,
        waiter=_SpoolGoneWaiter(clock, folder, gone=(20.0, 50.0)),
        draw=lambda: 1.0,
    )
    assert agent.run() == 0
    spans = [seconds(report) for report in sender.delivered]
    sequences = [report["sequence"] for report in sender.delivered]
    assert spans[0][0] == 0 and spans[-1][1] == 70, spans
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), spans
    assert len(set(sequences)) == len(sequences)
    assert any(end - start > 15 for start, end in spans), "the writes did fail meanwhile"
