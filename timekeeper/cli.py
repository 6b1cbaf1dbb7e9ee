"""Command line of the timekeeper: registers its subcommands on the `gpushare` parser."""

import argparse
from typing import Any


def register(subcommands: "argparse._SubParsersAction[Any]") -> None:
    """Add this part's subcommands (none yet)."""
