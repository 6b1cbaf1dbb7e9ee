"""Budget policy figures: parsing a large budgets file, and the per-request status math.

Baselines, measured side by side in the same run:
- parsing: PyYAML's own `yaml.safe_load` of the same text (what any YAML config costs);
- status: computing the calendar window afresh (time-zone arithmetic), which the remembered
  window of `period_window` avoids on nearly every request.
"""

from __future__ import annotations

import time
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import yaml

from timekeeper.budgets import Budget, Period, parse_budgets
from timekeeper.periods import calendar_window, period_window
from timekeeper.states import budget_status, status_to_json

NAMESPACES = 1000


def budgets_text(namespaces: int) -> str:
    lines = [
        "defaults:",
        "  period: month",
        "  timezone: Europe/Berlin",
        "  gpuHours: 100",
        "  warnAtPercent: 80",
        "  whenExhausted: deprioritize",
        "namespaces:",
    ]
    periods = ["month", "week", "day", "'rolling:7d'"]
    for index in range(namespaces):
        lines.append(
            f"  team-{index:04d}: {{gpuHours: {index % 500 + 1}, period: {periods[index % 4]}, "
            f"whenExhausted: {'deny' if index % 3 == 0 else 'deprioritize'}}}"
        )
    return "\n".join(lines) + "\n"


def per_call_seconds(function: Callable[[], object], *, budget_seconds: float = 1.0) -> float:
    """Best of five runs, each sized to take about a fifth of the budget."""
    number = 1
    while True:
        elapsed = timeit.timeit(function, number=number)
        if elapsed > budget_seconds / 25:
            break
        number *= 2
    runs = timeit.repeat(function, number=number, repeat=5)
    return min(runs) / number


def main() -> None:
    text = budgets_text(NAMESPACES)
    started = time.perf_counter()
    policy = parse_budgets(text)
    assert len(policy.namespaces) == NAMESPACES, time.perf_counter() - started
    parse = per_call_seconds(lambda: parse_budgets(text))
    safe_load = per_call_seconds(lambda: yaml.safe_load(text))
    print(
        f"parse_budgets, {NAMESPACES} namespaces: {parse * 1e3:.1f} ms "
        f"= {parse / safe_load:.2f}x yaml.safe_load of the same file ({safe_load * 1e3:.1f} ms)"
    )

    budget = Budget(Period("month"), "Europe/Berlin", 100.0, 80.0, "deprioritize")
    zone = ZoneInfo("Europe/Berlin")
    at = datetime.now(UTC)
    window = per_call_seconds(lambda: period_window(budget, at))
    fresh = per_call_seconds(lambda: calendar_window("month", zone, at))
    status = per_call_seconds(lambda: status_to_json(budget_status("team-a", budget, 42.0, at)))
    print(
        f"period_window (remembered): {window * 1e6:.2f} µs "
        f"= {window / fresh:.2f}x computing the window afresh ({fresh * 1e6:.2f} µs)"
    )
    print(
        f"budget_status + status_to_json: {status * 1e6:.2f} µs "
        f"= {status / fresh:.2f}x computing the window afresh"
    )


if __name__ == "__main__":
    main()
