"""Scenarios on the shared-GPU model: containers (processes with their own limits and state)
launching on one model GPU, and what each received by the model's own ground truth. Used by
the hook's tests and by its benchmark."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.hook.conftest import hook_environment, parse_lines

MEASURE_S = 3.0
WARMUP_S = 0.4
TOLERANCE = 0.03


@dataclass
class Container:
    """One container: its tenant number in the model, its limits, and a launch pattern."""

    pattern: str
    core: int | None = None
    soft: int | None = None
    begin_s: float = 0.0  # when it starts launching, after the scenario's start
    extra: dict[str, str] = field(default_factory=dict)


SINGLE = {
    "one-stream-30": ("one", 30, TOLERANCE),
    "one-stream-70": ("one", 70, TOLERANCE),
    "three-concurrent-streams-50": ("streams3", 50, TOLERANCE),
    "tiny-unsynchronised-10": ("tiny", 10, TOLERANCE),
    "periodic-long-short-20": ("periodic", 20, TOLERANCE),
    "captured-graphs-40": ("graph", 40, TOLERANCE),
    "long-kernel-sync-loop-30": ("long", 30, 0.05),
    "per-thread-default-streams-40": ("threads", 40, TOLERANCE),
}

SCENARIOS: dict[str, list[Container]] = {
    **{name: [Container(pattern, core=core)] for name, (pattern, core, _) in SINGLE.items()},
    "side-by-side": [Container("one", core=30), Container("streams3", core=60)],
    "busy-neighbour": [Container("one", core=30), Container("one")],
    # alone for 0.4 + 1.5 s, then a busy neighbour starts
    "burst": [Container("one", core=30, soft=60), Container("one", begin_s=WARMUP_S + 1.5)],
    "capture": [Container("capture", core=10)],
    # NVML sampled every 167 ms, as a driver does, beside a busy neighbour
    "sampled-nvml": [
        Container("streams3", core=50, extra={"GPUSHARE_STUB_NVML_PERIOD_MS": "167"}),
        Container("one", extra={"GPUSHARE_STUB_NVML_PERIOD_MS": "167"}),
    ],
    # NVML knows the container's processes by other pids (a PID namespace), with a neighbour
    "pid-namespace": [
        Container("streams3", core=40, extra={"GPUSHARE_STUB_PID_OFFSET": "100000"}),
        Container("one"),
    ],
}


def start_scenario(
    build: Path, folder: Path, containers: list[Container], start: int, extra: dict[str, str]
) -> list[Any]:
    end = start + int((WARMUP_S + MEASURE_S) * 1e9)
    processes = []
    for tenant, c in enumerate(containers):
        variables = {
            "GPUSHARE_STUB_GPU": str(folder / "gpu.model"),
            "GPUSHARE_STUB_TENANT": str(tenant),
            "GPUSHARE_STUB_JITTER_PERCENT": "25",
            "GPUSHARE_LOG_LEVEL": "warn",
            **extra,
            **c.extra,
        }
        if c.core is not None:
            variables["GPUSHARE_CORE_LIMIT"] = str(c.core)
        if c.soft is not None:
            variables["GPUSHARE_CORE_SOFT_LIMIT"] = str(c.soft)
        env = hook_environment(build, folder / f"state-{tenant}", **variables)
        begin = start + int(c.begin_s * 1e9)
        args = [str(build / "hooktool"), "share", c.pattern, str(begin)]
        args += [str(start + int(WARMUP_S * 1e9)), str(end), "250"]
        processes.append(
            subprocess.Popen(
                args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    return processes


def run_all(
    build: Path,
    folder_for: Any,
    names: list[str] | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, list[Any]]:
    """Every scenario at once, each on its own model GPU (they are independent GPUs; the
    launchers sleep most of the time, so they hardly compete for the CPU). folder_for(name)
    gives each scenario a fresh folder."""
    start = time.monotonic_ns() + 1_500_000_000  # every process is up and waiting by then
    running = {
        name: start_scenario(build, folder_for(name), SCENARIOS[name], start, extra or {})
        for name in (names or list(SCENARIOS))
    }
    results: dict[str, list[Any]] = {}
    for name, processes in running.items():
        results[name] = []
        for process in processes:
            out, err = process.communicate(timeout=60)
            lines = parse_lines(out)
            ok = process.returncode == 0 and lines and "error" not in lines[-1]
            results[name].append(lines[-1] if ok else {"failed": (process.returncode, out, err)})
    return results


def share_errors(reports: dict[str, list[Any]]) -> dict[str, float]:
    """|delivered - limit| in percentage points for every throttled container of every scenario."""
    errors: dict[str, float] = {}
    for name, (_, core, _) in SINGLE.items():
        errors[name] = abs(reports[name][0]["share"] * 100 - core)
    low, high = reports["side-by-side"]
    errors["side-by-side-30"] = abs(low["share"] * 100 - 30)
    errors["side-by-side-60"] = abs(high["share"] * 100 - 60)
    errors["busy-neighbour-30"] = abs(reports["busy-neighbour"][0]["share"] * 100 - 30)
    windows = reports["burst"][0]["windows"]
    errors["burst-alone-60"] = abs(sum(windows[:6]) / 6 * 100 - 60)
    errors["burst-backed-off-30"] = abs(sum(windows[10:]) / len(windows[10:]) * 100 - 30)
    errors["captured-graph-10"] = abs(reports["capture"][0]["share"] * 100 - 10)
    errors["pid-namespace-40"] = abs(reports["pid-namespace"][0]["share"] * 100 - 40)
    errors["sampled-nvml-50"] = abs(reports["sampled-nvml"][0]["share"] * 100 - 50)
    return errors
