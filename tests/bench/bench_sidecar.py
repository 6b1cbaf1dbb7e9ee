"""Footprint of `gpushare sidecar`: resident memory and CPU at the default reporting period.

Side by side in the same run:
- baseline: a bare `python -c` process that only sleeps (the interpreter's own floor);
- the sidecar at the default period (15 s) against an in-process fake timekeeper, measured
  after start-up over `STEADY_SECONDS`;
- the sidecar at a 0.05 s period, to measure the CPU cost of one interval precisely, and
  from it the CPU share at 15 s.
Targets: resident memory < 40 MiB, CPU < 0.5 % of one core at the default period.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.polling import wait_until
from tests.sidecar.fake_timekeeper import FakeTimekeeper
from tests.sidecar.harness import Pod, SidecarProcess

STEADY_SECONDS = 31.0
FAST_PERIOD_SECONDS = 0.05
FAST_SECONDS = 8.0
DEFAULT_PERIOD_SECONDS = 15.0
TICKS = os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def sidecar(fake: FakeTimekeeper, period: float, run: int) -> tuple[SidecarProcess, Pod]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-sidecar-"))
    pod = Pod(
        tmp,
        fake.url,
        "bench-token",
        period_seconds=period,
        extra_env={"GPUSHARE_NVML": "auto", "GPUSHARE_LOG_FORMAT": "json"},
    )
    return SidecarProcess(pod, run=run), pod


def main() -> None:
    fake = FakeTimekeeper({"bench-token": "team-a"})
    fake.start()
    baseline = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    steady, steady_pod = sidecar(fake, DEFAULT_PERIOD_SECONDS, 1)
    try:
        wait_until(
            lambda: steady_pod.spool_dir.joinpath("state.json").exists(),
            timeout=30,
            what="the sidecar's start",
        )
        time.sleep(1.0)  # let start-up finish before the CPU window opens
        base_cpu0, cpu0, t0 = (
            cpu_seconds(baseline.pid),
            cpu_seconds(steady.process.pid),
            time.monotonic(),
        )
        time.sleep(STEADY_SECONDS)  # a measurement window, not a wait for an event
        elapsed = time.monotonic() - t0
        steady_cpu = (cpu_seconds(steady.process.pid) - cpu0) / elapsed * 100
        base_cpu = (cpu_seconds(baseline.pid) - base_cpu0) / elapsed * 100
        sidecar_rss, sidecar_peak = rss_mib(steady.process.pid)
        base_rss, _ = rss_mib(baseline.pid)
        delivered = len(fake.held(steady_pod.uid))
        assert steady.terminate_and_wait() == 0
    finally:
        baseline.kill()
        baseline.wait()

    fast, fast_pod = sidecar(fake, FAST_PERIOD_SECONDS, 2)
    wait_until(lambda: len(fake.held(fast_pod.uid)) >= 2, timeout=30, what="fast intervals")
    count0, cpu0, t0 = len(fake.held(fast_pod.uid)), cpu_seconds(fast.process.pid), time.monotonic()
    time.sleep(FAST_SECONDS)  # a measurement window
    intervals = len(fake.held(fast_pod.uid)) - count0
    fast_cpu = cpu_seconds(fast.process.pid) - cpu0
    fast_elapsed = time.monotonic() - t0
    fast_rss, fast_peak = rss_mib(fast.process.pid)
    assert fast.terminate_and_wait() == 0
    fake.stop()
    per_interval_ms = fast_cpu / max(intervals, 1) * 1000
    projected = per_interval_ms / 1000 / DEFAULT_PERIOD_SECONDS * 100

    print(f"baseline `python -c` sleeping     : RSS {base_rss:6.1f} MiB, CPU {base_cpu:.3f} %")
    print(
        f"sidecar, period 15 s, {elapsed:.0f} s window : RSS {sidecar_rss:6.1f} MiB "
        f"(peak {sidecar_peak:.1f}, {sidecar_rss / base_rss:.2f}x baseline), "
        f"CPU {steady_cpu:.3f} % of one core, {delivered} interval(s) delivered"
    )
    print(
        f"sidecar, period {FAST_PERIOD_SECONDS} s, {fast_elapsed:.0f} s window: "
        f"{intervals} intervals, "
        f"{per_interval_ms:.2f} ms CPU per interval (spool write + fsync + POST + delete), "
        f"RSS {fast_rss:.1f} MiB (peak {fast_peak:.1f})"
    )
    print(
        f"projected CPU at 15 s from the per-interval cost: {projected:.4f} % of one core "
        f"(target < 0.5 %); RSS target < 40 MiB: "
        f"{'met' if max(sidecar_peak, fast_peak) < 40 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
