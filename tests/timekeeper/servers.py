"""Real `gpushare timekeeper` servers (gunicorn) in subprocesses, on free ports, for tests
and benchmarks. Readiness is polled with a deadline, never slept for."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LISTENING_RE = re.compile(r"timekeeper listening on http://([0-9.]+):(\d+)")


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    host: str = ""
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill_hard(self) -> None:
        """kill -9 the master and its workers (the whole process group)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, Any]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            payload = None if body is None else json.dumps(body)
            all_headers = {"Content-Type": "application/json", **(headers or {})}
            connection.request(method, path, body=payload, headers=all_headers)
            response = connection.getresponse()
            data = response.read()
            content_type = response.getheader("Content-Type", "")
            return response.status, json.loads(data) if "json" in content_type else data
        finally:
            connection.close()


def start_server(
    args: list[str], *, log_path: Path, deadline_seconds: float = 30.0
) -> ServerProcess:
    """`gpushare timekeeper --port 0 ARGS…`, waited for until /readyz answers 200."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpushare",
            "timekeeper",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so kill_hard reaches the workers
    )
    server = ServerProcess(process, log_path)
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{server.log()}")
        match = LISTENING_RE.search(server.log())
        if match:
            server.host, server.port = match.group(1), int(match.group(2))
            try:
                status, _ = server.request("GET", "/readyz", timeout=2)
            except OSError:
                status = 0
            if status == 200:
                return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"the server was not ready within {deadline_seconds} s:\n{server.log()}")
