"""`python -m tests.bench` runs every benchmark module `tests/bench/bench_*.py` in turn.

Each benchmark prints its figures as ratios against a baseline measured side by side in the
same run (the machines are shared and noisy). Pass names to run a subset.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import tests.bench as bench_package


def main(argv: list[str]) -> int:
    names = sorted(
        info.name
        for info in pkgutil.iter_modules(bench_package.__path__)
        if info.name.startswith("bench_")
    )
    wanted = [name for name in names if not argv or any(arg in name for arg in argv)]
    for name in wanted:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"tests.bench.{name}")
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
