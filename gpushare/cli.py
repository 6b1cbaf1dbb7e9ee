"""The `gpushare` command line: one entry point, one subcommand family per part.

Each part registers its own subcommands from its `cli` module, which must stay cheap to
import (heavy imports happen inside the command functions).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gpushare import __version__

COMMAND_MODULES = (
    "timekeeper.cli",
    "webhook.cli",
    "sidecar.cli",
    "nodemanager.cli",
    "extender.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpushare",
        description="Fractional GPU sharing and GPU-time budgets for Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"gpushare {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
