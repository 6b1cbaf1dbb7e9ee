"""Command line of the sidecar: `gpushare sidecar`, configured from the environment.

Cheap to import (the `gpushare` CLI imports every part's `cli`); the sidecar's modules are
loaded only when the command runs, and none of them pulls in a web framework, an ORM or a
Kubernetes client.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_BAD_SETTINGS = 2
EXIT_SPOOL_UNUSABLE = 1


def register(subcommands: argparse._SubParsersAction[Any]) -> None:
    """Add `gpushare sidecar`."""
    parser = subcommands.add_parser(
        "sidecar",
        help="the accounting agent of a GPU pod (configured from GPUSHARE_* variables)",
        description=(
            "Report this pod's GPU usage intervals to the timekeeper every "
            "GPUSHARE_REPORT_INTERVAL_SECONDS, spooling them on disk while it is unreachable. "
            "Every setting comes from the environment; see docs/sidecar.md."
        ),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the environment, then run the loop until SIGTERM; returns the exit code."""
    import logging
    import os
    import random

    from gpushare import logs
    from sidecar import settings
    from sidecar.agent import Agent, AgentConfig
    from sidecar.backoff import Backoff
    from sidecar.client import TimekeeperClient
    from sidecar.clock import SystemClock
    from sidecar.errors import SettingsError, SpoolError
    from sidecar.nvml import open_reader
    from sidecar.reports import PodIdentity
    from sidecar.signals import SignalWaiter
    from sidecar.spool import Spool
    from sidecar.tokens import FileToken, StaticToken, TokenSource
    from sidecar.usage_files import UsageFileReader

    # Signals first: a SIGTERM during start-up must still end in an orderly stop.
    waiter = SignalWaiter()
    waiter.install()
    try:
        config = settings.from_environ()
        problems = settings.preflight(config)
        if problems:
            raise SettingsError(problems)
    except SettingsError as err:
        print(f"gpushare sidecar: {err}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    logs.configure(log_format=config.log_format, level=config.log_level)
    log = logging.getLogger("sidecar")
    tokens: TokenSource = (
        StaticToken(config.token) if config.token else FileToken(config.token_file)
    )
    pod = PodIdentity(
        pod_uid=config.pod_uid,
        pod_name=config.pod_name,
        namespace=config.pod_namespace,
        vcuda_core=config.vcuda_core,
        vcuda_memory=config.vcuda_memory,
    )
    agent = Agent(
        AgentConfig(
            report_interval_seconds=config.report_interval_seconds,
            shutdown_deadline_seconds=config.shutdown_deadline_seconds,
            http_timeout_seconds=config.http_timeout_seconds,
            backoff=Backoff(config.backoff_initial_seconds, config.backoff_max_seconds),
            rejected_attempts=config.rejected_attempts,
            auth_grace_seconds=config.auth_grace_seconds,
            resume_window_seconds=config.resume_window_seconds,
        ),
        pod=pod,
        spool=Spool(
            config.spool_dir, max_intervals=config.spool_max_intervals, pod_uid=config.pod_uid
        ),
        sender=TimekeeperClient(config.timekeeper_url, tokens=tokens, ca_file=config.ca_file),
        reader=(
            UsageFileReader(config.usage_dir)
            if os.path.isdir(config.usage_dir)
            else open_reader(mode=config.nvml, proc_root=config.proc_root, pod_uid=config.pod_uid)
        ),
        clock=SystemClock(),
        waiter=waiter,
        draw=random.random,
    )
    log.info(
        "reporting pod %s/%s (uid %s, vcuda-core %d, vcuda-memory %d) to %s every %g s",
        config.pod_namespace,
        config.pod_name,
        config.pod_uid,
        config.vcuda_core,
        config.vcuda_memory,
        config.timekeeper_url,
        config.report_interval_seconds,
    )
    try:
        return agent.run()
    except SpoolError as err:
        log.error("cannot use the spool: %s", err)
        return EXIT_SPOOL_UNUSABLE
