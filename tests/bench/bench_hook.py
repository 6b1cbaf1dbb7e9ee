"""Benchmark of the vGPU hook on the simulated device (stub driver; no GPU here).

Prints, for each core limit and launch pattern, the compute share reached and its error in
percentage points; and the hook's added cost per cuLaunchKernel (with and without a core
limit) and per cuMemAlloc / cuMemFree, each against direct calls into the stub driver measured
side by side in the same process (bench_hook.c interleaves both paths round by round).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HOOK_DIR = ROOT / "vgpu-runtime" / "hook"
BUILD = HOOK_DIR / "build"
TARGETS = (10, 30, 50, 90)
PATTERNS = ("tiny", "long", "graph")
MEASURE_SECONDS = "2.0"  # the whole 2 s is reported, not the median window
WARMUP_SECONDS = "0.3"


def build() -> None:
    import nvidia

    include = os.path.join(next(iter(nvidia.__path__)), "cu13", "include")
    subprocess.run(
        ["make", "-s", "-C", str(HOOK_DIR), f"CUDA_INCLUDE={include}"],
        check=True,
        capture_output=True,
    )


def run_json(args: list[str], state_dir: str, **variables: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSHARE_")}
    env.update(
        LD_PRELOAD=str(BUILD / "libgpushare-vgpu.so"),
        LD_LIBRARY_PATH=str(BUILD),
        GPUSHARE_STATE_DIR=state_dir,
        GPUSHARE_LOG_LEVEL="warn",
    )
    env.update(variables)
    done = subprocess.run(
        [str(BUILD / args[0]), *args[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def compute_share() -> None:
    print("compute share on the simulated device (target vs measured, error in points)")
    print(f"{'pattern':<8}" + "".join(f"{t:>8}%" for t in TARGETS) + "   max |error|")
    worst = 0.0
    for pattern in PATTERNS:
        cells, errors = [], []
        for target in TARGETS:
            with tempfile.TemporaryDirectory() as state:
                out = run_json(
                    ["hooktool", "share", pattern, MEASURE_SECONDS, WARMUP_SECONDS],
                    state,
                    GPUSHARE_CORE_LIMIT=str(target),
                )
            error = out["share"] * 100 - target
            errors.append(abs(error))
            cells.append(f"{out['share'] * 100:>7.2f}%")
        worst = max(worst, *errors)
        print(f"{pattern:<8}" + " ".join(cells) + f"   {max(errors):.2f}")
    print(f"worst error {worst:.2f} points (goal: within 3)")


def call_cost() -> None:
    with tempfile.TemporaryDirectory() as state:
        unlimited = run_json(["bench_hook"], state, GPUSHARE_MEMORY_LIMIT="8Gi")
    with tempfile.TemporaryDirectory() as state:
        limited = run_json(
            ["bench_hook"], state, GPUSHARE_MEMORY_LIMIT="8Gi", GPUSHARE_CORE_LIMIT="50"
        )
    rows = [
        ("cuLaunchKernel, core limit 50 %", limited, "launch", 150),
        ("cuLaunchKernel, no core limit", unlimited, "launch", 30),
        ("cuMemAlloc (memory limit)", unlimited, "alloc", 2000),
        ("cuMemFree (memory limit)", unlimited, "free", None),
    ]
    print("added cost per call, median ns (hook vs direct stub call, same run)")
    for name, figures, key, goal in rows:
        hook, direct = figures[f"{key}_hook_ns"], figures[f"{key}_direct_ns"]
        goal_text = f"   (goal < {goal} ns added)" if goal else ""
        print(
            f"  {name:<34} hook {hook:8.1f}  direct {direct:8.1f}  added {hook - direct:8.1f}"
            f"  ratio {hook / direct:5.2f}x{goal_text}"
        )


def main() -> None:
    build()
    call_cost()
    compute_share()


if __name__ == "__main__":
    main()
