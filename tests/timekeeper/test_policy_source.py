"""PolicySource: reload on change (plain writes and ConfigMap-style symlink swaps), keep the last
good policy when a new file is invalid, and check no more often than the interval."""

from __future__ import annotations

import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from timekeeper.budgets import DEFAULT_POLICY, BudgetsError
from timekeeper.policy_source import PolicySource


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeWallClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 21, 6, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


GOOD_A = "defaults: {gpuHours: 100}\nnamespaces:\n  team-a: {gpuHours: 500}\n"
GOOD_B = "defaults: {gpuHours: 100}\nnamespaces:\n  team-a: {gpuHours: 50}\n"
BAD = "defaults: {gpuHours: ten, period: yearly}\n"


def hours(source: PolicySource, namespace: str = "team-a") -> float | None:
    return source.current().budget_for(namespace).gpu_hours


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wall_clock() -> FakeWallClock:
    return FakeWallClock()


def make_source(path: Path | None, clock: FakeClock, wall_clock: FakeWallClock) -> PolicySource:
    return PolicySource(path, check_interval_seconds=2.0, clock=clock, wall_clock=wall_clock)


def write(path: Path, text: str) -> None:
    """Replace the file atomically, as editors and config tools do."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


class ConfigMapVolume:
    """A directory laid out the way the kubelet projects a ConfigMap: the file is a symlink to
    `..data/<key>`, `..data` a symlink to a timestamped directory swapped atomically."""

    def __init__(self, root: Path, key: str = "budgets.yaml") -> None:
        self.root = root
        self.key = key
        self.version = 0
        root.mkdir()
        (root / key).symlink_to(Path("..data") / key)

    @property
    def path(self) -> Path:
        return self.root / self.key

    def publish(self, text: str) -> None:
        self.version += 1
        payload = self.root / f"..2026_11_21_06_00_{self.version:02d}.000000001"
        payload.mkdir()
        (payload / self.key).write_text(text, encoding="utf-8")
        # The same size and an mtime that may not move: only the content tells.
        os.utime(payload / self.key, ns=(0, 0))
        staging = self.root / "..data_tmp"
        staging.symlink_to(payload.name)
        os.replace(staging, self.root / "..data")


def test_loads_at_start(tmp_path: Path, clock: FakeClock, wall_clock: FakeWallClock) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(GOOD_A, encoding="utf-8")
    source = make_source(path, clock, wall_clock)
    assert hours(source) == 500.0
    assert source.loaded_at == wall_clock.now
    assert source.reloads == 0
    assert source.last_error is None
    assert source.ready


def test_no_file_means_default_policy(clock: FakeClock, wall_clock: FakeWallClock) -> None:
    source = make_source(None, clock, wall_clock)
    clock.advance(60)
    assert source.current() is DEFAULT_POLICY
    assert source.loaded_at is None
    assert source.check_now() is False


@pytest.mark.parametrize(
    ("content", "problems"),
    [
        pytest.param(
            BAD,
            (
                "defaults.gpuHours: must be a number >= 0 or 'unlimited' (got 'ten')",
                "defaults.period: must be day, week, month or rolling:<N>d (got 'yearly')",
            ),
            id="invalid",
        ),
        pytest.param(
            None, ("(file): cannot read {path}: No such file or directory",), id="missing"
        ),
        pytest.param(
            b"\xff", ("(file): not UTF-8 text: invalid start byte at byte 0",), id="not-utf8"
        ),
    ],
)
def test_bad_file_at_start_fails(
    tmp_path: Path,
    clock: FakeClock,
    wall_clock: FakeWallClock,
    content: str | bytes | None,
    problems: tuple[str, ...],
) -> None:
    path = tmp_path / "budgets.yaml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(BudgetsError) as error:
        make_source(path, clock, wall_clock)
    assert error.value.problems == tuple(p.format(path=path) for p in problems)


def test_reloads_a_changed_file_after_the_interval(
    tmp_path: Path, clock: FakeClock, wall_clock: FakeWallClock
) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(GOOD_A, encoding="utf-8")
    source = make_source(path, clock, wall_clock)
    write(path, GOOD_B)
    clock.advance(1.999)
    assert hours(source) == 500.0, "checked before the interval passed"
    clock.advance(0.001)
    wall_clock.now = datetime(2026, 11, 21, 6, 5, tzinfo=UTC)
    assert hours(source) == 50.0
    assert source.reloads == 1
    assert source.loaded_at == wall_clock.now


def test_checks_at_most_once_per_interval(
    tmp_path: Path, clock: FakeClock, wall_clock: FakeWallClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(GOOD_A, encoding="utf-8")
    source = make_source(path, clock, wall_clock)
    reads: list[Path] = []
    real_read_bytes = Path.read_bytes

    def counting_read_bytes(self: Path) -> bytes:
        reads.append(self)
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", counting_read_bytes)
    for _ in range(100):
        source.current()
        clock.advance(0.05)  # 100 calls over 5 s
    assert len(reads) == 2


def test_unchanged_content_is_not_a_reload(
    tmp_path: Path, clock: FakeClock, wall_clock: FakeWallClock
) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(GOOD_A, encoding="utf-8")
    source = make_source(path, clock, wall_clock)
    first = source.current()
    write(path, GOOD_A)
    clock.advance(5)
    assert source.current() is first
    assert source.reloads == 0


def test_configmap_symlink_swap_is_seen(
    tmp_path: Path, clock: FakeClock, wall_clock: FakeWallClock
) -> None:
    volume = ConfigMapVolume(tmp_path / "config")
    volume.publish(GOOD_A)
    source = make_source(volume.path, clock, wall_clock)
    assert hours(source) == 500.0
    volume.publish(GOOD_B)  # same length, same mtime, new content
    clock.advance(2)
    assert hours(source) == 50.0
    assert source.reloads == 1


def test_invalid_new_file_keeps_last_good_and_logs_every_reason_once(
    tmp_path: Path,
    clock: FakeClock,
    wall_clock: FakeWallClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    volume = ConfigMapVolume(tmp_path / "config")
    volume.publish(GOOD_A)
    source = make_source(volume.path, clock, wall_clock)
    caplog.set_level(logging.INFO, logger="timekeeper.policy_source")

    volume.publish(BAD)
    for _ in range(3):
        clock.advance(2)
        assert hours(source) == 500.0
    assert source.reload_failures == 1
    assert source.last_error == (
        "defaults.gpuHours: must be a number >= 0 or 'unlimited' (got 'ten')",
        "defaults.period: must be day, week, month or rolling:<N>d (got 'yearly')",
    )
    assert source.last_error_at == wall_clock.now
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        f"budgets file {volume.path} rejected, the last good policy stays in force: "
        "defaults.gpuHours: must be a number >= 0 or 'unlimited' (got 'ten'); "
        "defaults.period: must be day, week, month or rolling:<N>d (got 'yearly')"
    ]

    volume.publish(GOOD_B)
    clock.advance(2)
    assert hours(source) == 50.0
    assert source.last_error is None
    assert source.reloads == 1


def test_going_back_to_the_policy_in_force_clears_the_error(
    tmp_path: Path, clock: FakeClock, wall_clock: FakeWallClock
) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(GOOD_A, encoding="utf-8")
    source = make_source(path, clock, wall_clock)
    write(path, BAD)
    assert source.check_now() is False
    assert source.last_error is not None
    write(path, GOOD_A)
    assert source.check_now() is False
    assert source.last_error is None
    assert hours(source) == 500.0


def test_file_removed_while_running_keeps_last_good(
    tmp_path: Path, clock: FakeClock, wall_clock: FakeWallClock
) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(GOOD_A, encoding="utf-8")
    source = make_source(path, clock, wall_clock)
    path.unlink()
    clock.advance(2)
    assert hours(source) == 500.0
    assert source.last_error == (f"(file): cannot read {path}: No such file or directory",)
    path.write_text(GOOD_B, encoding="utf-8")
    clock.advance(2)
    assert hours(source) == 50.0


def test_negative_interval_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="check_interval_seconds must be >= 0"):
        PolicySource(None, check_interval_seconds=-1)


def test_many_threads_see_old_or_new_policy_and_nothing_else(
    tmp_path: Path, clock: FakeClock, wall_clock: FakeWallClock
) -> None:
    volume = ConfigMapVolume(tmp_path / "config")
    volume.publish(GOOD_A)
    source = make_source(volume.path, clock, wall_clock)
    seen: set[float | None] = set()
    failures: list[BaseException] = []
    start = threading.Barrier(9)

    def reader() -> None:
        start.wait()
        try:
            for _ in range(2000):
                seen.add(hours(source))
        except BaseException as err:  # collected for the assertion below
            failures.append(err)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    start.wait()
    for text in (GOOD_B, BAD, GOOD_A, GOOD_B):
        volume.publish(text)
        clock.advance(2)
    for thread in threads:
        thread.join(timeout=30)
    assert not failures
    assert seen <= {500.0, 50.0}
    clock.advance(2)
    assert hours(source) == 50.0
