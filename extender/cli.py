"""Command line of the scheduler extender: `gpushare extender` (cheap to import)."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from typing import Any


class SettingsError(Exception):
    """One or more flags are invalid; the message lists them all."""


@dataclass(frozen=True)
class Settings:
    host: str = "0.0.0.0"
    """Address to listen on."""
    port: int = 8888
    """Port to listen on (0: any free port)."""
    kubeconfig: str | None = None
    """kubeconfig file; in-cluster configuration when None."""
    assume_seconds: float = 30.0
    """How long a filter's choice is held for a bind that has not come."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Larger requests get a 400."""
    threads: int = 8
    """Requests served at once."""
    log_level: str = "info"
    """debug, info, warning or error."""
    log_format: str = "text"
    """text or json."""


def register(subcommands: argparse._SubParsersAction[Any]) -> None:
    parser = subcommands.add_parser(
        "extender",
        help="serve the scheduler extender: GPU placement at filter/bind, GPU-aware preemption",
        description="Serve kube-scheduler's extender API (POST /filter, /prioritize, /bind, "
        "/preempt) over HTTP, with /healthz, /readyz and /metrics. Keeps every node's GPUs "
        "and every GPU pod in memory from a watch of the API server.",
    )
    add = parser.add_argument
    add("--host", help="address to listen on (default 0.0.0.0)")
    add("--port", help="port to listen on (default 8888)")
    add("--kubeconfig", help="kubeconfig file (default: in-cluster configuration)")
    add("--assume-seconds", help="seconds a filter's choice waits for its bind (default 30)")
    add("--max-body-bytes", help="larger requests get a 400 (default 16777216)")
    add("--threads", help="requests served at once (default 8)")
    add("--log-level", help="debug, info (default), warning or error")
    add("--log-format", help="text (default) or json")
    parser.set_defaults(func=run_command)


def parse_settings(args: argparse.Namespace) -> Settings:
    errors: list[str] = []
    defaults = Settings()

    def integer(flag: str, value: str | None, default: int, low: int, high: int) -> int:
        if value is None:
            return default
        if not str(value).isdigit() or not low <= int(value) <= high:
            errors.append(f"{flag}: must be an integer {low}..{high} (got {value!r})")
            return default
        return int(value)

    port = integer("--port", args.port, defaults.port, 0, 65535)
    threads = integer("--threads", args.threads, defaults.threads, 1, 256)
    max_body = integer(
        "--max-body-bytes", args.max_body_bytes, defaults.max_body_bytes, 1024, 1 << 30
    )
    assume = defaults.assume_seconds
    if args.assume_seconds is not None:
        try:
            assume = float(args.assume_seconds)
            if not math.isfinite(assume) or not 1 <= assume <= 3600:
                raise ValueError
        except ValueError:
            errors.append(
                f"--assume-seconds: must be a number 1..3600 (got {args.assume_seconds!r})"
            )
    level = args.log_level or defaults.log_level
    if level not in ("debug", "info", "warning", "error"):
        errors.append(f"--log-level: must be debug, info, warning or error (got {level!r})")
    log_format = args.log_format or defaults.log_format
    if log_format not in ("text", "json"):
        errors.append(f"--log-format: must be text or json (got {log_format!r})")
    if errors:
        raise SettingsError("invalid extender settings:\n  " + "\n  ".join(errors))
    return Settings(
        host=args.host or defaults.host,
        port=port,
        kubeconfig=args.kubeconfig,
        assume_seconds=assume,
        max_body_bytes=max_body,
        threads=threads,
        log_level=level,
        log_format=log_format,
    )


def run_command(args: argparse.Namespace) -> int:
    try:
        settings = parse_settings(args)
    except SettingsError as err:
        print(f"gpushare extender: {err}", file=sys.stderr)
        return 2
    from extender.server import run

    return run(settings)
