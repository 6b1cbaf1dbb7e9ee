"""Usage files (the hook's measured use, shared through a folder): format and arithmetic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.usage import UsageSample, UsageWindow
from sidecar.usage_files import FORMAT, BadUsageFile, UsageFileReader, parse_usage_file

SECOND = 1_000_000_000


def content(stamp: int, *devices: tuple[int, int, int]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "monotonicNanoseconds": stamp,
        "devices": [
            {"index": index, "busyNanoseconds": busy, "memoryUsedBytes": memory}
            for index, busy, memory in devices
        ],
    }


def write(folder: Path, name: str, body: dict[str, Any] | str) -> None:
    temporary = folder / f".{name}.tmp"
    temporary.write_text(body if isinstance(body, str) else json.dumps(body))
    temporary.rename(folder / name)  # as the writer must: atomically


class Clock:
    def __init__(self) -> None:
        self.ns = 100 * SECOND

    def __call__(self) -> int:
        return self.ns


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"{", "not JSON", id="not-json"),
        pytest.param(b"[]", "must be a JSON object", id="not-object"),
        pytest.param(
            json.dumps({**content(1), "format": "v2"}).encode(),
            "format: must be 'gpushare.io/usage/v1' (got 'v2')",
            id="other-format",
        ),
        pytest.param(
            json.dumps(content(-1)).encode(),
            "monotonicNanoseconds: must be a whole number in 0..2^63-1 (got -1)",
            id="negative-stamp",
        ),
        pytest.param(
            json.dumps(content(1, (0, 1.5, 0))).encode(),  # type: ignore[arg-type]
            "devices[0].busyNanoseconds: must be a whole number in 0..2^63-1 (got 1.5)",
            id="fractional-counter",
        ),
        pytest.param(
            json.dumps(content(1, (0, 1, 0), (0, 2, 0))).encode(),
            "devices: an index appears twice",
            id="duplicate-device",
        ),
        pytest.param(
            json.dumps(content(1, *[(i, 0, 0) for i in range(17)])).encode(),
            "devices: must be a list of at most 16 objects",
            id="too-many-devices",
        ),
        pytest.param(b" " * 70_000, "larger than 65536 bytes", id="too-large"),
    ],
)
def test_bad_files_name_the_rule(body: bytes, reason: str) -> None:
    with pytest.raises(BadUsageFile) as caught:
        parse_usage_file(body)
    assert str(caught.value).startswith(reason)


def test_busy_time_over_elapsed_time_is_the_share_used(tmp_path: Path) -> None:
    clock = Clock()
    reader = UsageFileReader(str(tmp_path), monotonic_ns=clock)
    write(tmp_path, "a.json", content(clock.ns, (0, 10 * SECOND, 1000)))
    assert reader.sample() == UsageSample(sm_utilization=None, memory_used_bytes=1000)
    clock.ns += 4 * SECOND
    # 1 s of kernels in 4 s: a quarter of the GPU.
    write(tmp_path, "a.json", content(clock.ns, (0, 11 * SECOND, 3000)))
    assert reader.sample() == UsageSample(sm_utilization=0.25, memory_used_bytes=3000)


def test_several_containers_and_devices_average_per_gpu(tmp_path: Path) -> None:
    clock = Clock()
    reader = UsageFileReader(str(tmp_path), monotonic_ns=clock)
    write(tmp_path, "train.json", content(clock.ns, (0, 0, 100), (1, 0, 100)))
    write(tmp_path, "eval.json", content(clock.ns, (0, 0, 50)))
    reader.sample()
    clock.ns += 2 * SECOND
    write(tmp_path, "train.json", content(clock.ns, (0, 2 * SECOND, 100), (1, SECOND, 100)))
    write(tmp_path, "eval.json", content(clock.ns, (0, 0, 50)))
    # Three device-intervals of 2 s: 2 + 1 + 0 s busy → half of each GPU on average.
    assert reader.sample() == UsageSample(sm_utilization=0.5, memory_used_bytes=250)


def test_stale_and_bad_files_contribute_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    reader = UsageFileReader(str(tmp_path), stale_seconds=30, monotonic_ns=clock)
    write(tmp_path, "gone.json", content(clock.ns - 31 * SECOND, (0, SECOND, 999)))
    write(tmp_path, "broken.json", "{")
    assert reader.sample() is None
    assert reader.sample() is None
    assert caplog.text.count("usage file broken.json") == 1, "a bad file is logged once"


def test_counter_that_went_back_counts_from_zero(tmp_path: Path) -> None:
    clock = Clock()
    reader = UsageFileReader(str(tmp_path), monotonic_ns=clock)
    write(tmp_path, "a.json", content(clock.ns, (0, 50 * SECOND, 0)))
    reader.sample()
    clock.ns += 10 * SECOND
    write(tmp_path, "a.json", content(clock.ns, (0, 3 * SECOND, 0)))
    sample = reader.sample()
    assert sample is not None and sample.sm_utilization == pytest.approx(0.3)


def test_missing_folder_is_no_measurement(tmp_path: Path) -> None:
    reader = UsageFileReader(str(tmp_path / "absent"))
    assert reader.sample() is None


def test_interval_average_reaches_the_report(tmp_path: Path) -> None:
    clock = Clock()
    reader = UsageFileReader(str(tmp_path), monotonic_ns=clock)
    window = UsageWindow()
    busy = 0
    for share in (0.0, 0.2, 0.4):
        write(tmp_path, "a.json", content(clock.ns, (0, busy, 1 << 30)))
        window.add(reader.sample())
        busy += int(share * 5 * SECOND)
        clock.ns += 5 * SECOND
    write(tmp_path, "a.json", content(clock.ns, (0, busy, 1 << 30)))
    window.add(reader.sample())
    measured = window.take()
    assert measured.sm_utilization == pytest.approx((0.0 + 0.2 + 0.4) / 3)
    assert measured.memory_used_bytes == 1 << 30


def test_sidecar_process_reports_what_the_usage_files_measure(tmp_path: Path) -> None:
    """The real `gpushare sidecar` with a writer playing the hook at a 30 % share."""
    import threading
    import time

    from tests.polling import wait_until
    from tests.sidecar.fake_timekeeper import FakeTimekeeper
    from tests.sidecar.harness import Pod, SidecarProcess

    usage_dir = tmp_path / "usage"
    usage_dir.mkdir()
    stop = threading.Event()

    def hook() -> None:
        began = time.monotonic_ns()
        while not stop.is_set():
            now = time.monotonic_ns()
            busy = int((now - began) * 0.3)
            write(usage_dir, "train.json", content(now, (0, busy, 2 << 30)))
            stop.wait(0.02)

    timekeeper = FakeTimekeeper({"token-team-a": "team-a"})
    timekeeper.start()
    writer = threading.Thread(target=hook)
    writer.start()
    try:
        pod = Pod(
            tmp_path,
            timekeeper.url,
            "token-team-a",
            extra_env={"GPUSHARE_USAGE_DIR": str(usage_dir)},
        )
        with SidecarProcess(pod) as sidecar:
            wait_until(
                lambda: any("smUtilization" in r for r in timekeeper.held(pod.uid)),
                timeout=10,
                what="a report with measured use",
            )
            assert sidecar.terminate_and_wait() == 0
        measured = [r for r in timekeeper.held(pod.uid) if "smUtilization" in r]
        assert all(r["smUtilization"] == pytest.approx(0.3, abs=0.05) for r in measured)
        assert all(r["memoryUsedBytes"] == 2 << 30 for r in measured)
        assert "measured use comes from the usage files in" in sidecar.log()
    finally:
        stop.set()
        writer.join()
        timekeeper.stop()
