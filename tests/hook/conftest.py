"""Fixtures for the vGPU hook tests: the compiled hook, stub driver and C test programs.

Every scenario runs a C program (or Python through ctypes) in a fresh process with the hook
preloaded over the stub libcuda.so.1 / libnvidia-ml.so.1 and its own shared-state directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOOK_DIR = ROOT / "vgpu-runtime" / "hook"
BUILD = HOOK_DIR / "build"


def cuda_include() -> str:
    import nvidia  # the nvidia-cuda-runtime wheel (dev extra) ships cuda.h

    return os.path.join(next(iter(nvidia.__path__)), "cu13", "include")


@pytest.fixture(scope="session")
def hook_build() -> Path:
    """Builds (or confirms up to date) the hook, the stubs and the C test programs."""
    subprocess.run(
        ["make", "-s", "-C", str(HOOK_DIR), f"CUDA_INCLUDE={cuda_include()}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return BUILD


@dataclass(frozen=True)
class Run:
    """A finished scenario: its JSON output lines, stderr and exit status."""

    outputs: list[dict[str, Any]]
    stderr: str
    returncode: int

    @property
    def output(self) -> dict[str, Any]:
        assert self.outputs, f"no output; stderr: {self.stderr}"
        return self.outputs[-1]

    def log_lines(self, needle: str) -> list[str]:
        return [line for line in self.stderr.splitlines() if needle in line]


def hook_environment(build: Path, state_dir: Path, **variables: str) -> dict[str, str]:
    """The environment of a process under the hook: no inherited GPUSHARE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSHARE_")}
    env.update(
        LD_PRELOAD=str(build / "libgpushare-vgpu.so"),
        LD_LIBRARY_PATH=str(build),
        GPUSHARE_STATE_DIR=str(state_dir),
        GPUSHARE_LOG_LEVEL="info",
    )
    env.update(variables)
    return env


def parse_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


ToolRunner = Callable[..., Run]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def env_for(hook_build: Path, state_dir: Path) -> Callable[..., dict[str, str]]:
    def make(**variables: str) -> dict[str, str]:
        return hook_environment(hook_build, state_dir, **variables)

    return make


@pytest.fixture
def tool(hook_build: Path, env_for: Callable[..., dict[str, str]]) -> ToolRunner:
    """Runs hooktool with arguments under the hook; keyword arguments are extra env vars."""

    def run(*args: str, timeout: float = 30, **variables: str) -> Run:
        done = subprocess.run(
            [str(hook_build / "hooktool"), *args],
            env=env_for(**variables),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Run(parse_lines(done.stdout), done.stderr, done.returncode)

    return run


@pytest.fixture
def python_under_hook(env_for: Callable[..., dict[str, str]]) -> Callable[..., Run]:
    """Runs a Python snippet (ctypes) under the hook; it prints JSON lines."""

    def run(code: str, **variables: str) -> Run:
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=env_for(**variables),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return Run(parse_lines(done.stdout), done.stderr, done.returncode)

    return run


@pytest.fixture
def spawn(hook_build: Path, env_for: Callable[..., dict[str, str]]) -> Iterator[Callable[..., Any]]:
    """Starts hooktool processes that talk over stdin/stdout; all are killed at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, **variables: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [str(hook_build / "hooktool"), *args],
            env=env_for(**variables),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def read_json_line(process: subprocess.Popen[str], timeout_seconds: float = 10) -> dict[str, Any]:
    """The next JSON line of a process, within a deadline (never a fixed sleep)."""
    import selectors
    import time

    assert process.stdout is not None
    deadline = time.monotonic() + timeout_seconds
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if selector.select(timeout=deadline - time.monotonic()):
                line = process.stdout.readline()
                if line.startswith("{"):
                    return dict(json.loads(line))
                if line == "":
                    break
        raise AssertionError(f"no JSON line from pid {process.pid} within {timeout_seconds} s")
    finally:
        selector.close()
