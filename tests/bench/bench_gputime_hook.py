"""Benchmark of the hook under the GPU time scheduler, on the shared-GPU model (no GPU here).

- Shares under full contention: four hook-loaded containers (guarantees 10, 10, 20 and 40 %,
  caps 20 points above) launching 1 ms kernels without pause on one model GPU, under a real
  scheduler process (tests.hook.gputime_node, default window 1 s); each container's share of
  the model's ground truth over every 2 s span (in steps of 0.25 s) against its target (the
  max-min fair share between its guarantee and its cap: 20, 20, 20, 40 %), and how busy the
  device was. Baseline, side by side on a second model GPU: the same four containers held
  by the hook's local limiter alone, at core limits equal to those targets.
- Added cost per cuLaunchKernel with the scheduler on (a container alone, cap 100 %, so its
  launches are never held back: the token check alone), against direct calls into the stub
  driver in the same process, and beside the same measure under the local limiter alone.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from nodemanager.gputime.scheduler import Quota

from tests.bench.bench_hook import BUILD, build, run_json
from tests.hook.gputime_scenarios import START_DELAY_S, GpuTimeNode, Tenant, Truth
from tests.nodemanager.gputime_sim import expected_shares

GUARANTEES = [10, 10, 20, 40]
TARGETS = [
    round(share * 100)
    for share in expected_shares([Quota(g / 100, (g + 20) / 100) for g in GUARANTEES])
]
SECONDS = 8.0
SETTLE_S = 2.0
"""Measured from here on (the first windows start from empty histories)."""
SPAN_S = 2.0


def _spans(node: GpuTimeNode, truth: Truth) -> tuple[list[float], float, float]:
    """Worst |share - target| (points) per container over every 2 s span; the lowest busy
    share over those spans; busy over the whole measured time."""
    worst = [0.0] * len(TARGETS)
    lowest_busy = 1.0
    start = SETTLE_S
    while start + SPAN_S <= SECONDS + 1e-9:
        a, b = node.at(start), node.at(start + SPAN_S)
        for i, target in enumerate(TARGETS):
            worst[i] = max(worst[i], abs(truth.share(i, a, b) * 100 - target))
        lowest_busy = min(lowest_busy, truth.busy(a, b))
        start += 0.25
    return worst, lowest_busy, truth.busy(node.at(SETTLE_S), node.at(SECONDS))


def shares() -> None:
    folders = [Path(tempfile.mkdtemp(prefix="gs-", dir="/tmp")) for _ in range(2)]
    scheduled = GpuTimeNode(
        BUILD,
        folders[0],
        [Tenant(f"c{i}", g) for i, g in enumerate(GUARANTEES)],
        seconds=SECONDS,
        annotations={
            f"c{i}": {"tencent.com/vcuda-core-limit": str(g + 20)} for i, g in enumerate(GUARANTEES)
        },
    )
    local = GpuTimeNode(
        BUILD, folders[1], [Tenant(f"c{i}", t) for i, t in enumerate(TARGETS)], seconds=SECONDS
    )
    try:
        scheduled.start_scheduler()
        start_ns = time.monotonic_ns() + int(START_DELAY_S * 1e9)
        scheduled.start(start_ns)
        local.start(start_ns, scheduler=False)
        truths = [scheduled.finish(), local.finish()]
    finally:
        for node in (scheduled, local):
            node.close()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    print(
        f"shares under full contention, model truth, every {SPAN_S:.0f} s span of"
        f" {SETTLE_S:.0f}-{SECONDS:.0f} s (targets {TARGETS} %)"
    )
    for name, node, truth in (
        ("scheduler", scheduled, truths[0]),
        ("local limiter (baseline)", local, truths[1]),
    ):
        worst, lowest_busy, busy = _spans(node, truth)
        means = [
            round(truth.share(i, node.at(SETTLE_S), node.at(SECONDS)) * 100, 1)
            for i in range(len(TARGETS))
        ]
        print(
            f"  {name:<26} shares {means}  worst error {max(worst):4.2f} points (goal 3)"
            f"  device busy {busy * 100:5.1f} %, lowest over a span {lowest_busy * 100:5.1f} %"
            " (goal 95)"
        )


def launch_cost() -> None:
    folder = Path(tempfile.mkdtemp(prefix="gs-", dir="/tmp"))
    node = GpuTimeNode(
        BUILD,
        folder,
        [Tenant("bench", 50)],
        seconds=0,
        annotations={"bench": {"gpushare.io/quota-limit": "1"}},
    )
    try:
        node.start_scheduler()
        scheduled = run_json(
            ["bench_hook"],
            str(node.state_dir(0)),
            GPUSHARE_CORE_LIMIT="50",
            GPUSHARE_SCHEDULER_SOCKET=str(node.socket(0)),
        )
    finally:
        node.close()
        shutil.rmtree(folder, ignore_errors=True)
    with tempfile.TemporaryDirectory() as state:
        limited = run_json(["bench_hook"], state, GPUSHARE_CORE_LIMIT="50")
    print("added cost per cuLaunchKernel, median ns (hook vs direct stub call, same process)")
    for name, figures in (("scheduler on", scheduled), ("local limiter only", limited)):
        hook, direct = figures["launch_hook_ns"], figures["launch_direct_ns"]
        print(
            f"  {name:<20} hook {hook:7.1f}  direct {direct:7.1f}  added {hook - direct:6.1f}"
            f"  ratio {hook / direct:5.2f}x"
        )


def main() -> None:
    build()
    launch_cost()
    shares()


if __name__ == "__main__":
    main()
