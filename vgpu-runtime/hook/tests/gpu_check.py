"""Checks of the hook on a real GPU with PyTorch (`make gpu-check`; not part of `make test`).

Run on a machine with an NVIDIA GPU, its driver, and PyTorch with CUDA:

    make gpu-check            # or:
    python vgpu-runtime/hook/tests/gpu_check.py --hook vgpu-runtime/hook/build/libgpushare-vgpu.so

Every probe is a fresh Python process with the hook preloaded (its own state directory, so its
own "container"); baselines run the same probe without any limit. While a probe runs, this
process (which has no hook) polls NVML for the probe's physical memory. One table is printed
at the end (and one JSON line per check before it); the exit status is non-zero if a check
fails.

memory   PyTorch's default caching allocator, expandable segments (driver VMM) and
         cudaMallocAsync (stream-ordered pools): the limit is reported as total, allocating
         up to it ends in torch.cuda.OutOfMemoryError inside the limit, and the physical use
         NVML measures never goes above the limit.
compute  a transformer training step, matmuls on three streams, torch.compile
         (mode="reduce-overhead", CUDA graphs), and two containers at 30 % and 70 % side by
         side: throughput as a share of the unthrottled baseline, within 5 points.
overhead the hook loaded without limits: throughput of small kernels against no hook.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

ALLOCATORS = {
    "default": "",
    "expandable segments": "expandable_segments:True",
    "cudaMallocAsync": "backend:cudaMallocAsync",
}

MEMORY_PROBE = """
import json, torch
free, total = torch.cuda.mem_get_info()
blocks, oom = [], False
try:
    while True:
        blocks.append(torch.empty(64 << 20, dtype=torch.uint8, device="cuda"))
except torch.cuda.OutOfMemoryError:
    oom = True
print(json.dumps({"total": total, "free": free, "oom": oom, "held": len(blocks) * (64 << 20)}))
"""

WORKLOADS = {
    "transformer step": """
layer = torch.nn.TransformerEncoderLayer(1024, 16, 4096, batch_first=True).cuda()
optimizer = torch.optim.SGD(layer.parameters(), lr=1e-3)
x = torch.randn(16, 512, 1024, device="cuda")
def step():
    optimizer.zero_grad()
    layer(x).sum().backward()
    optimizer.step()
""",
    "three streams": """
streams = [torch.cuda.Stream() for _ in range(3)]
a = [torch.randn(2048, 2048, device="cuda") for _ in range(3)]
def step():
    for s, m in zip(streams, a):
        with torch.cuda.stream(s):
            m @ m
""",
    "compiled graphs": """
model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(8)]).cuda()
compiled = torch.compile(model, mode="reduce-overhead")
x = torch.randn(256, 2048, device="cuda")
def step():
    compiled(x)
""",
    "small kernels": """
x = torch.randn(1024, device="cuda")
def step():
    for _ in range(100):
        x.add_(1.0)
""",
}

THROUGHPUT_PROBE = """
import json, time, torch
{setup}
for _ in range(20):
    step()
torch.cuda.synchronize()
start, n = time.monotonic(), 0
while time.monotonic() - start < {seconds}:
    step()
    n += 1
    if n % 10 == 0:
        torch.cuda.synchronize()
torch.cuda.synchronize()
print(json.dumps({{"steps_per_second": n / (time.monotonic() - start)}}))
"""


class Nvml:
    """NVML in this (unhooked) process: a probe's physical memory by pid."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        self.lib.nvmlInit_v2()
        self.handle = ctypes.c_void_p()
        self.lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(self.handle))

    def used_by(self, pid: int) -> int:
        class Info(ctypes.Structure):
            _fields_ = [
                ("pid", ctypes.c_uint),
                ("used", ctypes.c_ulonglong),
                ("gpu_instance", ctypes.c_uint),
                ("compute_instance", ctypes.c_uint),
            ]

        infos = (Info * 256)()
        count = ctypes.c_uint(256)
        self.lib.nvmlDeviceGetComputeRunningProcesses_v3(self.handle, ctypes.byref(count), infos)
        return sum(int(i.used) for i in infos[: count.value] if i.pid == pid)


def hook_env(hook: str | None, state_dir: str, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSHARE_")}
    env.pop("LD_PRELOAD", None)
    if hook is not None:
        env.update(LD_PRELOAD=os.path.abspath(hook), GPUSHARE_STATE_DIR=state_dir)
    env.update(variables)
    return env


def start(code: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], nvml: Nvml | None = None) -> tuple[dict[str, Any], int]:
    peak = 0
    while process.poll() is None:
        if nvml is not None:
            peak = max(peak, nvml.used_by(process.pid))
        time.sleep(0.05)  # sampling NVML while the probe runs
    out, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"probe failed:\n{err}")
    return dict(json.loads(out.strip().splitlines()[-1])), peak


def throughput(hook: str | None, workload: str, seconds: float, **variables: str) -> float:
    with tempfile.TemporaryDirectory() as state:
        code = THROUGHPUT_PROBE.format(setup=WORKLOADS[workload], seconds=seconds)
        out, _ = finish(start(code, hook_env(hook, state, **variables)))
    return float(out["steps_per_second"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hook", required=True, help="path of libgpushare-vgpu.so")
    parser.add_argument("--memory-limit-gib", type=int, default=4)
    parser.add_argument("--core-limit", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    nvml = Nvml()
    limit = args.memory_limit_gib << 30
    rows: list[tuple[str, str, str, bool]] = []

    for name, conf in ALLOCATORS.items():
        with tempfile.TemporaryDirectory() as state:
            env = hook_env(args.hook, state, GPUSHARE_MEMORY_LIMIT=f"{args.memory_limit_gib}Gi")
            if conf:
                env["PYTORCH_CUDA_ALLOC_CONF"] = conf
            out, peak = finish(start(MEMORY_PROBE, env), nvml)
        ok = out["total"] == limit and out["oom"] and out["held"] <= limit and peak <= limit
        print(json.dumps({"check": f"memory {name}", **out, "nvml_peak": peak, "ok": ok}))
        rows.append(
            (f"memory, {name}", f"peak {peak / 2**30:.2f} GiB", f"<= {limit / 2**30:.0f} GiB", ok)
        )

    for workload in ("transformer step", "three streams", "compiled graphs"):
        base = throughput(None, workload, args.seconds)
        limited = throughput(
            args.hook, workload, args.seconds, GPUSHARE_CORE_LIMIT=str(args.core_limit)
        )
        share = 100 * limited / base
        ok = abs(share - args.core_limit) <= 5
        print(json.dumps({"check": workload, "baseline": base, "limited": limited, "ok": ok}))
        rows.append((f"compute, {workload}", f"{share:.1f} %", f"{args.core_limit} ± 5 %", ok))

    base = throughput(None, "transformer step", args.seconds)
    code = THROUGHPUT_PROBE.format(setup=WORKLOADS["transformer step"], seconds=args.seconds)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        tenants = [
            start(code, hook_env(args.hook, a, GPUSHARE_CORE_LIMIT="30")),
            start(code, hook_env(args.hook, b, GPUSHARE_CORE_LIMIT="70")),
        ]
        shares = [100 * finish(p)[0]["steps_per_second"] / base for p in tenants]
    for target, share in zip((30, 70), shares, strict=True):
        ok = abs(share - target) <= 5
        print(json.dumps({"check": f"two tenants {target}", "share": share, "ok": ok}))
        rows.append((f"compute, two tenants ({target} %)", f"{share:.1f} %", f"{target} ± 5 %", ok))

    plain = throughput(None, "small kernels", args.seconds)
    hooked = throughput(args.hook, "small kernels", args.seconds)
    ratio = 100 * hooked / plain
    ok = ratio >= 95
    print(json.dumps({"check": "overhead", "plain": plain, "hooked": hooked, "ok": ok}))
    rows.append(("overhead, no limit, small kernels", f"{ratio:.1f} % of no hook", ">= 95 %", ok))

    print("\n| check | measured | goal | ok |\n|---|---|---|---|")
    for check, measured, goal, ok in rows:
        print(f"| {check} | {measured} | {goal} | {'yes' if ok else 'NO'} |")
    return 0 if all(row[3] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
