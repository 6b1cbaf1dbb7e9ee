"""Containers under the GPU time scheduler on the shared-GPU model: a real scheduler process
(`tests.hook.gputime_node`), one hook-loaded process per container launching on one model GPU,
and an observer recording the model's ground truth (`tests.hook.observe`). Used by the tests
(tests/hook/test_gputime.py) and the benchmark (tests/bench/bench_gputime_hook.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.hook.conftest import hook_environment

ROOT = Path(__file__).resolve().parents[2]
START_DELAY_S = 1.0
"""Every launching process is up and waiting when the scenario's clock starts."""


@dataclass(frozen=True)
class Tenant:
    """A container: its pod, namespace, vcuda-core share and local burst limit, when its
    processes launch (seconds after the scenario's start; `until_s` None: to the end), and how
    many processes it runs (they share its state directory, socket and account)."""

    pod: str
    core: int
    soft: int | None = None
    namespace: str = "team-a"
    from_s: float = 0.0
    until_s: float | None = None
    pattern: str = "one"
    processes: int = 1


@dataclass
class Truth:
    """The observer's samples: (CLOCK_MONOTONIC ns, device busy ns, SM ns of each tenant)."""

    times: list[int] = field(default_factory=list)
    busy_ns: list[int] = field(default_factory=list)
    sm_ns: list[list[int]] = field(default_factory=list)

    def _at(self, t_ns: int) -> int:
        index = bisect_left(self.times, t_ns)
        return min(index, len(self.times) - 1)

    def share(self, tenant: int, start_ns: int, end_ns: int) -> float:
        """The SM time the tenant received from start to end, as a share of the GPU's time."""
        a, b = self._at(start_ns), self._at(end_ns)
        assert b > a, "no samples in the span"
        return (self.sm_ns[b][tenant] - self.sm_ns[a][tenant]) / (self.times[b] - self.times[a])

    def busy(self, start_ns: int, end_ns: int) -> float:
        a, b = self._at(start_ns), self._at(end_ns)
        assert b > a, "no samples in the span"
        return (self.busy_ns[b] - self.busy_ns[a]) / (self.times[b] - self.times[a])


class GpuTimeNode:
    """One model GPU, its scheduler process and its containers' processes."""

    def __init__(
        self,
        build: Path,
        folder: Path,
        tenants: list[Tenant],
        *,
        seconds: float,
        window_seconds: float = 1.0,
        min_token_seconds: float = 0.01,
        timekeeper_url: str | None = None,
        budget_poll_seconds: float = 10.0,
        annotations: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.build = build
        self.folder = folder
        self.tenants = tenants
        self.seconds = seconds
        self.annotations_file = folder / "annotations.json"
        self.annotations_file.write_text(json.dumps(annotations or {}))
        self.config_file = folder / "node.json"
        self.config_file.write_text(
            json.dumps(
                {
                    "window_seconds": window_seconds,
                    "min_token_seconds": min_token_seconds,
                    "timekeeper_url": timekeeper_url,
                    "budget_poll_seconds": budget_poll_seconds,
                    "annotations_file": str(self.annotations_file),
                    "containers": [
                        {
                            "id": f"alloc-{i}",
                            "namespace": t.namespace,
                            "pod": t.pod,
                            "state_dir": str(self.state_dir(i)),
                            "core": t.core,
                            "soft": t.soft or t.core,
                        }
                        for i, t in enumerate(tenants)
                    ],
                }
            )
        )
        for i in range(len(tenants)):
            self.state_dir(i).mkdir(mode=0o700, exist_ok=True)
        self.scheduler: subprocess.Popen[str] | None = None
        self.workloads: list[subprocess.Popen[str]] = []
        self.observer: subprocess.Popen[str] | None = None
        self.start_ns = 0
        self.stderr: list[str] = []

    def state_dir(self, index: int) -> Path:
        return self.folder / f"c{index}"

    def socket(self, index: int) -> Path:
        return self.state_dir(index) / "gputime.sock"

    # --- the scheduler process -------------------------------------------------------------
    def start_scheduler(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "tests.hook.gputime_node", str(self.config_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        assert self.scheduler.stdout is not None
        line = self.scheduler.stdout.readline()
        assert line.strip() == "ready", f"the scheduler did not start: {line!r}"

    def kill_scheduler(self) -> None:
        assert self.scheduler is not None
        self.scheduler.send_signal(signal.SIGKILL)
        self.scheduler.wait(timeout=10)
        self.scheduler = None

    def set_annotations(self, pod: str, annotations: dict[str, str]) -> None:
        """What `kubectl annotate` would do: the pod's annotations as the node manager sees them."""
        current = json.loads(self.annotations_file.read_text())
        current[pod] = annotations
        staging = self.annotations_file.with_suffix(".new")
        staging.write_text(json.dumps(current))
        staging.replace(self.annotations_file)

    # --- the run -------------------------------------------------------------------------------
    def start(self, start_ns: int | None = None, *, scheduler: bool = True) -> None:
        """Starts the containers' processes and the observer; the scenario's clock starts at
        start_ns (default: in START_DELAY_S). scheduler: the containers are its clients (it
        must be up); otherwise the hook's local limiter alone holds them."""
        self.start_ns = start_ns or time.monotonic_ns() + int(START_DELAY_S * 1e9)
        end = self.at(self.seconds)
        model = str(self.folder / "gpu.model")
        for index, tenant in enumerate(self.tenants):
            variables = {
                "GPUSHARE_STUB_GPU": model,
                "GPUSHARE_STUB_TENANT": str(index),
                "GPUSHARE_STUB_JITTER_PERCENT": "25",
                "GPUSHARE_CORE_LIMIT": str(tenant.core),
                "GPUSHARE_CORE_SOFT_LIMIT": str(tenant.soft or tenant.core),
            }
            if scheduler:
                variables["GPUSHARE_SCHEDULER_SOCKET"] = str(self.socket(index))
            env = hook_environment(self.build, self.state_dir(index), **variables)
            begin = self.at(tenant.from_s)
            until = end if tenant.until_s is None else self.at(tenant.until_s)
            args = [str(self.build / "hooktool"), "share", tenant.pattern]
            args += [str(begin), str(begin), str(until), "250"]
            for _ in range(tenant.processes):
                self.workloads.append(
                    subprocess.Popen(
                        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                    )
                )
        observe_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.observer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.hook.observe",
                model,
                str(len(self.tenants)),
                "50",
                str((self.at(self.seconds) - time.monotonic_ns()) / 1e9 + 0.3),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=observe_env,
        )

    def at(self, seconds: float) -> int:
        """CLOCK_MONOTONIC ns of a moment of the scenario."""
        return self.start_ns + int(seconds * 1e9)

    def until(self, seconds: float) -> int:
        """Sleeps until that moment of the scenario's timeline (a scripted event, not a wait
        for something to happen); returns the clock then."""
        delay = self.at(seconds) - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
        return time.monotonic_ns()

    def finish(self) -> Truth:
        """Waits for the containers and the observer; the model's ground truth."""
        for process in self.workloads:
            _, err = process.communicate(timeout=self.seconds + 30)
            self.stderr.append(err)
        assert self.observer is not None
        out, _ = self.observer.communicate(timeout=self.seconds + 30)
        truth = Truth()
        for line in out.splitlines():
            sample: dict[str, Any] = json.loads(line)
            truth.times.append(sample["t"])
            truth.busy_ns.append(sample["busy"])
            truth.sm_ns.append(sample["sm"])
        return truth

    def close(self) -> None:
        for process in [*self.workloads, self.observer, self.scheduler]:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        if self.scheduler is not None and self.scheduler.stdin is not None:
            self.scheduler.stdin.close()
