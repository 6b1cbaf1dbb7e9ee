"""Command line of the node manager: `gpushare nodemanager`."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subcommands: argparse._SubParsersAction[Any]) -> None:
    """Add `gpushare nodemanager` to the `gpushare` parser."""
    from nodemanager.settings import add_arguments

    parser = subcommands.add_parser(
        "nodemanager",
        help="run the node runtime: kubelet device plugin, GPU placement, limits",
        description="Serve tencent.com/vcuda-core and tencent.com/vcuda-memory to kubelet, "
        "choose the GPU of every container and hand it its limits and the hook.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from nodemanager.settings import SettingsError, parse_settings

    try:
        settings = parse_settings(args)
    except SettingsError as err:
        print(f"gpushare nodemanager: {err}", file=sys.stderr)
        return 2
    from nodemanager.daemon import run

    return run(settings)
