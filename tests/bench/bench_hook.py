"""Benchmark of the vGPU hook on the shared-GPU model (stub driver; no GPU here).

Prints the share each throttled container received in every scenario of the hook's tests
(tests/hook/scenarios.py: one stream, three streams, tiny kernels, a periodic long/short
pattern, graphs, a long kernel in a synchronise loop, per-thread streams, two containers side
by side, a busy neighbour, burst and back-off, captured graphs), measured on the model's own
ground truth over 3 s, with the mean and worst absolute error in percentage points; and the
hook's added cost per cuLaunchKernel (with and without a core limit) and per cuMemAlloc +
cuMemFree, each against direct calls into the stub driver measured side by side in the same
process (bench_hook.c interleaves both paths round by round).
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


def compute_share(nvml_period_ms: int) -> None:
    from tests.hook.scenarios import run_all, share_errors

    with tempfile.TemporaryDirectory() as folder:
        reports = run_all(
            BUILD,
            lambda name: Path(tempfile.mkdtemp(prefix=name, dir=folder)),
            extra={"GPUSHARE_STUB_NVML_PERIOD_MS": str(nvml_period_ms)},
        )
    errors = share_errors(reports)
    sampling = f"NVML sampled every {nvml_period_ms} ms" if nvml_period_ms else "NVML exact"
    print(f"delivered share on the shared-GPU model ({sampling}), error in points over 3 s")
    for name, error in errors.items():
        print(f"  {name:<34} {error:5.2f}")
    mae = sum(errors.values()) / len(errors)
    worst = max(errors.values())
    print(f"mean absolute error {mae:.2f} points, worst {worst:.2f} (goals: 2 and 3)")


def call_cost() -> None:
    with tempfile.TemporaryDirectory() as state:
        unlimited = run_json(["bench_hook"], state, GPUSHARE_MEMORY_LIMIT="8Gi")
    with tempfile.TemporaryDirectory() as state:
        limited = run_json(
            ["bench_hook"], state, GPUSHARE_MEMORY_LIMIT="8Gi", GPUSHARE_CORE_LIMIT="50"
        )
    rows = [
        ("cuLaunchKernel, core limit 50 %", limited, ("launch",), 20),
        ("cuLaunchKernel, no core limit", unlimited, ("launch",), 5),
        ("cuMemAlloc + cuMemFree (memory limit)", unlimited, ("alloc", "free"), 100),
    ]
    print("added cost per call, median ns (hook vs direct stub call, same run)")
    for name, figures, keys, goal in rows:
        hook = sum(figures[f"{key}_hook_ns"] for key in keys)
        direct = sum(figures[f"{key}_direct_ns"] for key in keys)
        print(
            f"  {name:<38} hook {hook:8.1f}  direct {direct:8.1f}  added {hook - direct:8.1f}"
            f"  ratio {hook / direct:5.2f}x   (goal < {goal} ns added)"
        )


def main() -> None:
    build()
    call_cost()
    compute_share(0)
    compute_share(167)  # a real driver samples per-process utilisation about every 1/6 s


if __name__ == "__main__":
    main()
