"""The real timekeeper (`gpushare timekeeper`) as a process on loopback, for the sidecar's
integration tests: SQLite ledger, standalone tokens, killable and restartable on one port."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sidecar.intervals import format_time
from tests.polling import wait_until
from tests.sidecar.harness import Held


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class TimekeeperProcess:
    def __init__(self, tmp_path: Path, *, tokens: dict[str, str]) -> None:
        self.directory = tmp_path / "timekeeper"
        self.directory.mkdir()
        self.database = self.directory / "ledger.db"
        self.database_url = f"sqlite:///{self.database}"
        self.tokens_file = self.directory / "tokens.yaml"
        entries = [{"token": token, "namespace": ns} for token, ns in tokens.items()]
        self.tokens_file.write_text(json.dumps({"tokens": entries}))  # JSON is YAML
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSHARE_")}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "gpushare",
                "db",
                "upgrade",
                "--database-url",
                self.database_url,
            ],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=60,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.runs += 1
        log = (self.directory / f"timekeeper-{self.runs}.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpushare",
                "timekeeper",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--no-migrate",
                "--database-url",
                self.database_url,
                "--tokens",
                str(self.tokens_file),
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: gunicorn master and worker
        )
        log.close()
        wait_until(self._healthy, timeout=30, what="the timekeeper's /healthz")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the timekeeper exited with {self.process.returncode}")
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL the whole process group: no goodbye, like a crashed node."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def held(self, pod_uid: str) -> list[Held]:
        """The pod's intervals in the ledger, by sequence."""
        with sqlite3.connect(self.database) as connection:
            rows = connection.execute(
                "SELECT sequence, start_at, end_at FROM usage_reports WHERE pod_uid = ? "
                "ORDER BY sequence",
                (pod_uid,),
            ).fetchall()
        return [Held(seq, _utc(start), _utc(end)) for seq, start, end in rows]

    def usage(self, namespace: str, start: datetime, end: datetime) -> dict[str, Any]:
        query = f"group_by=pod&from={format_time(start)}&to={format_time(end)}"
        with urllib.request.urlopen(
            f"{self.url}/api/v1/namespaces/{namespace}/usage?{query}", timeout=5
        ) as answer:
            usage: dict[str, Any] = json.load(answer)
        return usage


def _utc(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
