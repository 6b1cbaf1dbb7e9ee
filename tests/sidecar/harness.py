"""Running `gpushare sidecar` as a real process, and checking what the timekeeper holds."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def now_utc() -> datetime:
    return datetime.now(tz=UTC)


def spooled(spool_dir: Path) -> list[Path]:
    """The interval files waiting in a spool directory."""
    return sorted(p for p in spool_dir.glob("*.json") if p.stem.isdigit())


@dataclass
class Pod:
    """The identity and environment of one simulated GPU pod."""

    tmp_path: Path
    timekeeper_url: str
    token: str
    namespace: str = "team-a"
    name: str = "train-0"
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    period_seconds: float = 0.2
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def spool_dir(self) -> Path:
        return self.tmp_path / "spool"

    def environ(self) -> dict[str, str]:
        token_file = self.tmp_path / "token"
        token_file.write_text(self.token)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSHARE_")}
        env.update(
            {
                "GPUSHARE_TIMEKEEPER_URL": self.timekeeper_url,
                "GPUSHARE_TOKEN_FILE": str(token_file),
                "GPUSHARE_POD_NAME": self.name,
                "GPUSHARE_POD_NAMESPACE": self.namespace,
                "GPUSHARE_POD_UID": self.uid,
                "GPUSHARE_VCUDA_CORE": "50",
                "GPUSHARE_VCUDA_MEMORY": "15",
                "GPUSHARE_REPORT_INTERVAL_SECONDS": str(self.period_seconds),
                "GPUSHARE_SPOOL_DIR": str(self.spool_dir),
                "GPUSHARE_BACKOFF_INITIAL_SECONDS": "0.05",
                "GPUSHARE_BACKOFF_MAX_SECONDS": "0.2",
                "GPUSHARE_HTTP_TIMEOUT_SECONDS": "2",
                "GPUSHARE_SHUTDOWN_DEADLINE_SECONDS": "1",
                "GPUSHARE_NVML": "off",
                "GPUSHARE_LOG_FORMAT": "text",
            }
        )
        env.update(self.extra_env)
        return env


class SidecarProcess:
    """One run of `python -m gpushare sidecar`, its log in a file."""

    def __init__(self, pod: Pod, *, run: int = 1) -> None:
        self.log_path = pod.tmp_path / f"sidecar-{run}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gpushare", "sidecar"],
            env=pod.environ(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def terminate_and_wait(self, timeout: float = 10.0) -> int:
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.wait(10.0)

    def wait(self, timeout: float) -> int:
        try:
            code = self.process.wait(timeout)
        finally:
            self._log.close()
        return code

    def __enter__(self) -> SidecarProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@dataclass(frozen=True)
class Held:
    """One interval as the timekeeper holds it."""

    sequence: int
    start: datetime
    end: datetime


START_SLACK_SECONDS = 5.0
"""How long a sidecar process may take from exec to its first interval (Python start-up)."""


def assert_covers(
    held: list[Held], *, lifetime_start: datetime, lifetime_end: datetime, period: float
) -> None:
    """The intervals cover the pod's life, from its sidecar's start (`lifetime_start` is
    taken just before the process is started) to `lifetime_end`, with no gap above one
    period and no overlap (no second charged twice), each sequence once."""
    assert held, "the timekeeper holds no interval"
    sequences = [h.sequence for h in held]
    assert len(set(sequences)) == len(sequences), f"a sequence is held twice: {sequences}"
    ordered = sorted(held, key=lambda h: h.start)
    assert [h.sequence for h in ordered] == sorted(sequences), "sequence order != time order"
    first, last = ordered[0], ordered[-1]
    assert 0 <= (first.start - lifetime_start).total_seconds() <= START_SLACK_SECONDS, (
        f"first interval starts {first.start}, the sidecar was started {lifetime_start}"
    )
    assert (lifetime_end - last.end).total_seconds() <= period, (
        f"last interval ends {last.end}, pod ended {lifetime_end}"
    )
    for before, after in itertools.pairwise(ordered):
        gap = (after.start - before.end).total_seconds()
        assert gap >= 0, f"sequences {before.sequence} and {after.sequence} overlap by {-gap} s"
        assert gap <= period, f"gap of {gap} s between {before.sequence} and {after.sequence}"
