"""Checks of the hook on a real GPU with PyTorch (not run by `make test`: there is no GPU there).

Run on a machine with an NVIDIA GPU, its driver, and PyTorch with CUDA:

    python vgpu-runtime/hook/tests/gpu_check.py --hook vgpu-runtime/hook/build/libgpushare-vgpu.so

Each check runs in a fresh Python process with the hook preloaded (and the throughput baseline
without it) and prints one JSON line; the exit status is non-zero if any check fails.
  memory:  torch.cuda.mem_get_info() reports the limit as total; allocating above it raises
           torch.cuda.OutOfMemoryError; allocating below it works.
  compute: a matmul loop under GPUSHARE_CORE_LIMIT runs at that share of its unlimited
           throughput, within 5 points.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

MEMORY_PROBE = """
import json, torch
free, total = torch.cuda.mem_get_info()
below = torch.empty(int(total * 0.5), dtype=torch.uint8, device="cuda")
del below
torch.cuda.empty_cache()
try:
    torch.empty(int(total * 1.2), dtype=torch.uint8, device="cuda")
    oom = False
except torch.cuda.OutOfMemoryError:
    oom = True
print(json.dumps({"free": free, "total": total, "oom_above_limit": oom}))
"""

THROUGHPUT_PROBE = """
import json, time, torch
a = torch.randn(4096, 4096, device="cuda")
b = torch.randn(4096, 4096, device="cuda")
for _ in range(20):
    a @ b
torch.cuda.synchronize()
start, n = time.monotonic(), 0
while time.monotonic() - start < {seconds}:
    a @ b
    n += 1
    if n % 10 == 0:
        torch.cuda.synchronize()
torch.cuda.synchronize()
print(json.dumps({{"matmuls_per_second": n / (time.monotonic() - start)}}))
"""


def run_probe(code: str, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise SystemExit(f"probe failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def hook_env(hook: str, state_dir: str, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSHARE_")}
    env.update(LD_PRELOAD=os.path.abspath(hook), GPUSHARE_STATE_DIR=state_dir, **variables)
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hook", required=True, help="path of libgpushare-vgpu.so")
    parser.add_argument("--memory-limit-gib", type=int, default=4)
    parser.add_argument("--core-limit", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    ok = True
    limit = args.memory_limit_gib << 30
    with tempfile.TemporaryDirectory() as state:
        memory = run_probe(
            MEMORY_PROBE, hook_env(args.hook, state, GPUSHARE_MEMORY_LIMIT=f"{limit}")
        )
    memory_ok = memory["total"] == limit and bool(memory["oom_above_limit"])
    print(json.dumps({"check": "memory", "limit": limit, **memory, "ok": memory_ok}))
    ok = ok and memory_ok

    code = THROUGHPUT_PROBE.format(seconds=args.seconds)
    baseline = run_probe(code, {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})
    with tempfile.TemporaryDirectory() as state:
        limited = run_probe(
            code, hook_env(args.hook, state, GPUSHARE_CORE_LIMIT=str(args.core_limit))
        )
    ratio = limited["matmuls_per_second"] / baseline["matmuls_per_second"]
    compute_ok = abs(ratio * 100 - args.core_limit) <= 5
    print(
        json.dumps(
            {
                "check": "compute",
                "core_limit": args.core_limit,
                "unlimited": baseline["matmuls_per_second"],
                "limited": limited["matmuls_per_second"],
                "ratio": ratio,
                "ok": compute_ok,
            }
        )
    )
    return 0 if ok and compute_ok else 1


if __name__ == "__main__":
    sys.exit(main())
