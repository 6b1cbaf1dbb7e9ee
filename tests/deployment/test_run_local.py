"""`make run` (scripts/run-local.sh): the platform comes up on loopback, and Ctrl-C stops it.

Ctrl-C in a terminal sends SIGINT to the foreground process group; the test starts the
script in a process group of its own and sends SIGINT to that group, as the terminal would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STOP_SECONDS = 2.0
"""Ctrl-C stops every part within this."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _default_sigint() -> None:
    # A shell that started this test in the background may have left SIGINT ignored, and an
    # ignored signal stays ignored in children: give the script the terminal's default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_it_comes_up_and_ctrl_c_stops_every_part_the_sidecar_first(tmp_path: Path) -> None:
    ports = {
        "TIMEKEEPER": _free_port(),
        "WEBHOOK": _free_port(),
        "NODEMANAGER": _free_port(),
    }
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPUSHARE_")}
    environ["GPUSHARE_RUN_DIR"] = str(tmp_path / "run")
    environ.update({f"GPUSHARE_RUN_{part}_PORT": str(port) for part, port in ports.items()})
    output = tmp_path / "make-run.out"
    with output.open("wb") as out:
        script = subprocess.Popen(
            ["bash", "scripts/run-local.sh"],
            cwd=ROOT,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_sigint,
        )
    try:
        sidecar_log = tmp_path / "run" / "logs" / "sidecar.log"

        def up() -> bool:
            assert script.poll() is None, output.read_text()
            return "Ctrl-C stops everything." in output.read_text() and (
                "started: first interval begins" in sidecar_log.read_text()
            )

        wait_until(up, timeout=120, what="make run's parts ready, the demo sidecar reporting")
        assert all(_listening(port) for port in ports.values())
        asked = time.monotonic()
        os.killpg(script.pid, signal.SIGINT)
        assert script.wait(60) == 0, output.read_text()  # the normal way out
        stopping = time.monotonic() - asked
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait(10)
    text = output.read_text()
    assert "a part exited" not in text
    assert stopping < STOP_SECONDS, f"Ctrl-C took {stopping:.1f} s to stop everything"
    assert "caBundle" not in text, "the certificate step prints only its one line"
    assert f"gpushare: stopped; state and logs are in {tmp_path / 'run'}/" in text
    logs = tmp_path / "run" / "logs"
    sidecar = (logs / "sidecar.log").read_text()
    assert "stopped: every interval delivered" in sidecar, sidecar
    assert not any(_listening(port) for port in ports.values())
    for part in ("timekeeper", "webhook"):
        assert "Shutting down: Master" in (logs / f"{part}.log").read_text(), part
        assert "SIGKILL" not in (logs / f"{part}.log").read_text(), part
