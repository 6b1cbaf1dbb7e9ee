"""Command line of the timekeeper: registers its subcommands on the `gpushare` parser.

Kept cheap to import: heavy modules are imported inside the command functions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from timekeeper.budgets import Budget


def register(subcommands: argparse._SubParsersAction[Any]) -> None:
    """Add this part's subcommands."""
    budgets = subcommands.add_parser(
        "budgets", help="work with budgets files", description="Work with budgets files."
    )
    budget_commands = budgets.add_subparsers(dest="budgets_command", metavar="ACTION")
    budget_commands.required = True
    check = budget_commands.add_parser(
        "check",
        help="validate a budgets file",
        description=(
            "Validate a budgets file: print every problem with its field path and exit 1, "
            "or print the budget of every namespace it lists and exit 0."
        ),
    )
    check.add_argument(
        "file", type=Path, metavar="FILE", help="the budgets YAML file ('-': standard input)"
    )
    check.set_defaults(func=budgets_check)


def budgets_check(args: argparse.Namespace) -> int:
    """`gpushare budgets check FILE`."""
    from timekeeper.budgets import BudgetsError, load_budgets, parse_budgets

    path: Path = args.file
    try:
        policy = parse_budgets(sys.stdin.read()) if str(path) == "-" else load_budgets(path)
    except BudgetsError as err:
        for problem in err.details:
            where = f"{path}:{problem.line}" if problem.line is not None else str(path)
            print(f"{where}: {problem}", file=sys.stderr)
        count = len(err.details)
        print(f"{path}: invalid, {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
        return 1
    print(f"defaults: {describe_budget(policy.defaults)}")
    for name in sorted(policy.namespaces):
        print(f"{name}: {describe_budget(policy.namespaces[name])}")
    count = len(policy.namespaces)
    print(f"{path}: valid, {count} namespace{'s' if count != 1 else ''} listed")
    return 0


def describe_budget(budget: Budget) -> str:
    """One line: `500 GPU-hours per month (Europe/Berlin), warning at 80%, then deny`."""
    if budget.period.kind == "rolling":
        period = f"over the last {budget.period.rolling_days} days"
    else:
        period = f"per {budget.period.kind} ({budget.timezone})"
    if budget.gpu_hours is None:
        return f"unlimited GPU-hours {period}"
    warning = (
        "no warning"
        if budget.warn_at_percent >= 100
        else f"warning at {_number(budget.warn_at_percent)}%"
    )
    return (
        f"{_number(budget.gpu_hours)} GPU-hours {period}, {warning}, then {budget.when_exhausted}"
    )


def _number(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))
