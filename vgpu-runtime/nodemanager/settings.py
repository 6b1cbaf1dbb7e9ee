"""Settings of `gpushare nodemanager`: one frozen dataclass, parsed once, every error at once."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

from nodemanager.inventory import parse_simulate_gpus
from nodemanager.placement import Policy

TIMEKEEPER_URL_ENV = "GPUSHARE_NODEMANAGER_TIMEKEEPER_URL"
"""Where --timekeeper-url comes from when the flag is not given (the chart sets it)."""


class SettingsError(Exception):
    """One or more flags are invalid; the message lists them all."""


@dataclass(frozen=True)
class Settings:
    node_name: str
    """Name of this node in Kubernetes (default: $NODE_NAME, set by the DaemonSet)."""
    device_plugin_dir: Path = Path("/var/lib/kubelet/device-plugins")
    """kubelet's device plugin directory: kubelet.sock and the plugin sockets."""
    pod_resources_socket: Path = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    """kubelet's PodResources socket, used to confirm and release allocations."""
    simulate_gpus: tuple[int, int] | None = None
    """(count, bytes each) of simulated GPUs; None reads real GPUs through NVML."""
    policy: Policy = Policy.BINPACK
    """Published with the inventory: how the extender chooses among GPUs that fit."""
    host: str = "0.0.0.0"
    """Address of the metrics endpoint."""
    port: int = 9400
    """Port of the metrics endpoint (0: any free port)."""
    hook_library_dir: Path = Path("/var/lib/gpushare/lib")
    """Host directory with libgpushare-vgpu.so, mounted read-only into shared containers."""
    state_dir: Path = Path("/var/lib/gpushare/containers")
    """Host directory under which each container gets its state directory."""
    checkpoint: Path = Path("/var/lib/gpushare/nodemanager/checkpoint.json")
    """Host file where allocations are checkpointed."""
    kubernetes: bool = True
    """Talk to the Kubernetes API (pod identity, node annotation); off for a bare demo."""
    kubeconfig: str | None = None
    """kubeconfig file; in-cluster configuration when None."""
    health_interval_seconds: float = 10.0
    """How often GPU health is checked."""
    reconcile_interval_seconds: float = 30.0
    """How often allocations are reconciled with kubelet and capacity is published."""
    release_grace_seconds: float = 60.0
    """Age below which an allocation unknown to kubelet is kept (container being created)."""
    log_level: str = "info"
    """debug, info, warning or error."""
    log_format: str = "text"
    """text (terminal) or json (one object per line, for the cluster)."""
    gpu_time: bool = True
    """Run the GPU time scheduler (a socket per shared container, GPUSHARE_SCHEDULER_SOCKET)."""
    gpu_time_window_seconds: float = 1.0
    """The scheduler's sliding window: shares are held over it, quota changes act within it."""
    gpu_time_min_token_seconds: float = 0.01
    """The shortest token of GPU time granted."""
    gpu_time_max_token_seconds: float = 0.025
    """The longest token of GPU time granted."""
    timekeeper_url: str | None = None
    """Timekeeper whose namespace states throttle pods (whenExhausted: throttle); None: never."""
    timekeeper_token_file: Path | None = None
    """Bearer token file for the timekeeper (read at every poll: projected tokens rotate)."""
    budget_poll_seconds: float = 10.0
    """How often the namespace states are pulled from the timekeeper."""
    mps_control: str = "nvidia-cuda-mps-control"
    """The MPS control program run per GPU for containers with an SM partition."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags; defaults are applied by `parse_settings`."""
    add = parser.add_argument
    add("--node-name", help="this node's name in Kubernetes (default: $NODE_NAME)")
    add(
        "--device-plugin-dir",
        help="kubelet's device plugin directory (default: /var/lib/kubelet/device-plugins)",
    )
    add(
        "--pod-resources-socket",
        help="kubelet's PodResources socket (default: /var/lib/kubelet/pod-resources/kubelet.sock)",
    )
    add("--simulate-gpus", metavar="COUNTxSIZE", help="simulate GPUs, e.g. 2x16GiB (no NVML)")
    add("--policy", help="placement policy the extender applies on this node: binpack or spread")
    add("--host", help="address of the metrics endpoint (default: 0.0.0.0)")
    add("--port", help="port of the metrics endpoint (default: 9400)")
    add(
        "--hook-library-dir",
        help="host directory holding libgpushare-vgpu.so (default: /var/lib/gpushare/lib)",
    )
    add(
        "--state-dir",
        help="host directory for per-container state (default: /var/lib/gpushare/containers)",
    )
    add(
        "--checkpoint",
        help="allocation checkpoint file (default: /var/lib/gpushare/nodemanager/checkpoint.json)",
    )
    add("--no-kubernetes", action="store_true", help="run without the Kubernetes API (demo)")
    add("--kubeconfig", help="kubeconfig file (default: in-cluster configuration)")
    add("--health-interval", help="seconds between GPU health checks (default: 10)")
    add("--reconcile-interval", help="seconds between reconciliations (default: 30)")
    add("--release-grace", help="seconds an allocation unknown to kubelet is kept (default: 60)")
    add("--log-level", help="debug, info (default), warning or error")
    add("--log-format", help="text (default) or json")
    add("--no-gpu-time", action="store_true", help="do not run the GPU time scheduler")
    add("--gpu-time-window", help="seconds of the GPU time scheduler's window (default: 1)")
    add("--gpu-time-min-token", help="seconds of the shortest GPU time token (default: 0.01)")
    add("--gpu-time-max-token", help="seconds of the longest GPU time token (default: 0.025)")
    add(
        "--timekeeper-url",
        help=f"timekeeper whose budget states throttle pods (default: ${TIMEKEEPER_URL_ENV})",
    )
    add("--timekeeper-token-file", help="bearer token file for the timekeeper (default: none)")
    add("--budget-poll-interval", help="seconds between pulls of budget states (default: 10)")
    add(
        "--mps-control",
        help="the MPS control program for containers with an SM partition"
        " (default: nvidia-cuda-mps-control, found on PATH)",
    )


def parse_settings(args: argparse.Namespace) -> Settings:
    """Validate every flag; raise SettingsError listing all the bad ones."""
    errors: list[str] = []
    defaults = Settings(node_name="")

    def number(flag: str, value: str | None, default: float, minimum: float) -> float:
        if value is None:
            return default
        try:
            parsed = float(value)
        except ValueError:
            errors.append(f"{flag}: must be a number (got {value!r})")
            return default
        if not math.isfinite(parsed):
            errors.append(f"{flag}: must be a finite number of seconds (got {value!r})")
            return default
        if parsed < minimum:
            errors.append(f"{flag}: must be at least {minimum:g} (got {value!r})")
        return parsed

    node_name = args.node_name or os.environ.get("NODE_NAME", "")
    if not node_name:
        errors.append("--node-name: required (or set NODE_NAME) (got '')")
    simulate = None
    if args.simulate_gpus is not None:
        try:
            simulate = parse_simulate_gpus(args.simulate_gpus)
        except ValueError as err:
            errors.append(f"--simulate-gpus: {err}")
    policy = defaults.policy
    if args.policy is not None:
        try:
            policy = Policy(args.policy)
        except ValueError:
            errors.append(f"--policy: must be binpack or spread (got {args.policy!r})")
    port = defaults.port
    if args.port is not None:
        if not str(args.port).isdigit() or not 0 <= int(args.port) <= 65535:
            errors.append(f"--port: must be an integer 0..65535 (got {args.port!r})")
        else:
            port = int(args.port)
    health = number("--health-interval", args.health_interval, 10.0, 0.1)
    reconcile = number("--reconcile-interval", args.reconcile_interval, 30.0, 0.1)
    grace = number("--release-grace", args.release_grace, 60.0, 0.0)
    window = number("--gpu-time-window", args.gpu_time_window, 1.0, 0.01)
    min_token = number("--gpu-time-min-token", args.gpu_time_min_token, 0.01, 0.001)
    max_token = number("--gpu-time-max-token", args.gpu_time_max_token, 0.025, 0.001)
    if not min_token <= max_token <= window:
        errors.append(
            "--gpu-time-max-token: must be between --gpu-time-min-token and --gpu-time-window"
            f" (got min token {min_token:g}, max token {max_token:g}, window {window:g})"
        )
    budget_poll = number("--budget-poll-interval", args.budget_poll_interval, 10.0, 0.1)
    timekeeper_url = args.timekeeper_url or os.environ.get(TIMEKEEPER_URL_ENV) or None
    if timekeeper_url is not None and not timekeeper_url.startswith(("http://", "https://")):
        errors.append(
            f"--timekeeper-url: must be an http:// or https:// URL (got {timekeeper_url!r})"
        )
    log_level = args.log_level or defaults.log_level
    if log_level not in ("debug", "info", "warning", "error"):
        errors.append(f"--log-level: must be debug, info, warning or error (got {log_level!r})")
    log_format = args.log_format or defaults.log_format
    if log_format not in ("text", "json"):
        errors.append(f"--log-format: must be text or json (got {log_format!r})")
    if errors:
        raise SettingsError("invalid nodemanager settings:\n  " + "\n  ".join(errors))

    def path(value: str | None, default: Path) -> Path:
        return Path(value) if value else default

    return Settings(
        node_name=node_name,
        device_plugin_dir=path(args.device_plugin_dir, defaults.device_plugin_dir),
        pod_resources_socket=path(args.pod_resources_socket, defaults.pod_resources_socket),
        simulate_gpus=simulate,
        policy=policy,
        host=args.host or defaults.host,
        port=port,
        hook_library_dir=path(args.hook_library_dir, defaults.hook_library_dir),
        state_dir=path(args.state_dir, defaults.state_dir),
        checkpoint=path(args.checkpoint, defaults.checkpoint),
        kubernetes=not args.no_kubernetes,
        kubeconfig=args.kubeconfig,
        health_interval_seconds=health,
        reconcile_interval_seconds=reconcile,
        release_grace_seconds=grace,
        log_level=log_level,
        log_format=log_format,
        gpu_time=not args.no_gpu_time,
        gpu_time_window_seconds=window,
        gpu_time_min_token_seconds=min_token,
        gpu_time_max_token_seconds=max_token,
        timekeeper_url=timekeeper_url,
        timekeeper_token_file=Path(args.timekeeper_token_file)
        if args.timekeeper_token_file
        else None,
        budget_poll_seconds=budget_poll,
        mps_control=args.mps_control or defaults.mps_control,
    )
