"""`gpushare nodemanager`: flags, errors reported together, and the real process end to end."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from nodemanager.placement import Policy
from nodemanager.settings import Settings, SettingsError, parse_settings

from gpushare import cli
from gpushare.assignment import NODE_GPU_INVENTORY, POD_GPU_ALLOCATED, parse_inventory
from gpushare.logs import JsonFormatter
from tests.nodemanager.conftest import simulated_daemon
from tests.nodemanager.fake_apiserver import FakeApiServer, make_pod, simulated_uuid
from tests.nodemanager.fake_kubelet import CORE, MEMORY, FakeKubelet
from tests.polling import wait_until


def parse(argv: list[str]) -> Settings:
    parser = cli.build_parser()
    return parse_settings(parser.parse_args(["nodemanager", *argv]))


def test_defaults() -> None:
    settings = parse(["--node-name", "n1"])
    assert settings == Settings(node_name="n1")
    assert settings.device_plugin_dir == Path("/var/lib/kubelet/device-plugins")
    assert settings.simulate_gpus is None
    assert settings.policy is Policy.BINPACK


def test_flags() -> None:
    settings = parse(
        ["--node-name", "n1", "--simulate-gpus", "2x16GiB", "--policy", "spread", "--port", "0"]
    )
    assert settings.simulate_gpus == (2, 16 << 30)
    assert settings.policy is Policy.SPREAD
    assert settings.port == 0


@pytest.mark.parametrize(
    ("argv", "messages"),
    [
        pytest.param(
            ["--node-name", "n", "--simulate-gpus", "2x16XB"],
            [
                "--simulate-gpus: expected COUNTxSIZE with SIZE in MiB, GiB or TiB, e.g. 2x16GiB "
                "(got '2x16XB')"
            ],
            id="simulate-unit",
        ),
        pytest.param(
            ["--node-name", "n", "--simulate-gpus", "0x16GiB"],
            ["--simulate-gpus: GPU count must be 1..64 (got '0x16GiB')"],
            id="simulate-zero-gpus",
        ),
        pytest.param(
            [
                "--simulate-gpus",
                "2x16XB",
                "--policy",
                "fill",
                "--port",
                "99999",
                "--health-interval",
                "soon",
                "--log-format",
                "xml",
            ],
            [
                "--node-name: required (or set NODE_NAME) (got '')",
                "--simulate-gpus: expected COUNTxSIZE",
                "--policy: must be binpack or spread (got 'fill')",
                "--port: must be an integer 0..65535 (got '99999')",
                "--health-interval: must be a number (got 'soon')",
                "--log-format: must be text or json (got 'xml')",
            ],
            id="all-errors-together",
        ),
    ],
)
def test_bad_flags_are_reported_together(
    argv: list[str], messages: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    with pytest.raises(SettingsError) as info:
        parse(argv)
    for message in messages:
        assert message in str(info.value)


def test_bad_flags_exit_2_with_the_reasons(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["nodemanager", "--node-name", "n", "--simulate-gpus", "2x16XB"]) == 2
    assert "--simulate-gpus: expected COUNTxSIZE" in capsys.readouterr().err


def test_the_command_serves_a_kubelet_end_to_end(short_dir: Path) -> None:
    kubelet = FakeKubelet(short_dir / "dp", short_dir / "pr.sock").start()
    command = [
        sys.executable, "-m", "gpushare", "nodemanager",
        "--node-name", "n1",
        "--simulate-gpus", "2x8GiB",
        "--device-plugin-dir", str(short_dir / "dp"),
        "--pod-resources-socket", str(short_dir / "pr.sock"),
        "--hook-library-dir", str(short_dir / "lib"),
        "--state-dir", str(short_dir / "state"),
        "--checkpoint", str(short_dir / "checkpoint.json"),
        "--host", "127.0.0.1", "--port", "0",
        "--no-kubernetes",
    ]  # fmt: skip
    log = (short_dir / "log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    try:
        wait_until(
            lambda: kubelet.registered(CORE) > 0 and kubelet.registered(MEMORY) > 0,
            timeout=30,
            what="the command to register with kubelet",
        )
        wait_until(lambda: len(kubelet.health(MEMORY)) == 64, what="32+32 memory devices")
        # without the API server no pod carries an assignment: refused, with the reason
        with pytest.raises(grpc.RpcError) as refused:
            kubelet.allocate(CORE, 25)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "gpushare.io/gpu-assignment" in str(refused.value.details())
        wait_until(lambda: "metrics on http" in (short_dir / "log").read_text(), what="log")
        port = (short_dir / "log").read_text().split("metrics on http://127.0.0.1:")[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port.split('/')[0]}/metrics") as page:
            assert b"gpushare_gpu_cores_allocated" in page.read()
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0
        kubelet.stop()


def test_daemon_publishes_its_inventory_once_and_marks_allocated_pods(
    short_dir: Path, apiserver: FakeApiServer
) -> None:
    kubelet = FakeKubelet(short_dir / "dp", short_dir / "pr.sock").start()
    daemon = simulated_daemon(short_dir, apiserver)
    daemon.start()
    try:
        wait_until(lambda: len(kubelet.health(MEMORY)) == 128, what="devices listed")

        def inventory() -> Any:
            text = apiserver.node_annotations("node-a").get(NODE_GPU_INVENTORY)
            return None if text is None else parse_inventory(text)

        wait_until(lambda: inventory() is not None, what="the inventory published")
        published = inventory()
        assert [(gpu.index, gpu.memory, gpu.healthy) for gpu in published.gpus] == [
            (0, 64, True),
            (1, 64, True),
        ]
        patches = len([r for r in apiserver.requests if r[0] == "PATCH" and "/nodes/" in r[1]])
        pod = make_pod("p", [("c", 30, 4)], gpus={"c": [simulated_uuid(1)]})
        apiserver.add_pod(pod)
        granted = kubelet.admit(pod)["c"]
        assert granted.envs["NVIDIA_VISIBLE_DEVICES"] == simulated_uuid(1)

        def marked() -> str | None:
            (found,) = [p for p in apiserver.pods if p["metadata"]["name"] == "p"]
            return found["metadata"]["annotations"].get(POD_GPU_ALLOCATED)

        wait_until(lambda: marked() == "node-a", what="the pod marked allocated")
        # an allocation writes nothing on the node
        assert patches == len(
            [r for r in apiserver.requests if r[0] == "PATCH" and "/nodes/" in r[1]]
        )
    finally:
        daemon.stop()
        kubelet.stop()


def test_json_log_lines() -> None:
    record = logging.makeLogRecord(
        {"name": "nodemanager.x", "levelname": "WARNING", "msg": "GPU %d is %s",
         "args": (1, "UNHEALTHY"), "created": 0.0}
    )  # fmt: skip
    assert json.loads(JsonFormatter().format(record)) == {
        "time": "1970-01-01T00:00:00.000Z",
        "level": "warning",
        "logger": "nodemanager.x",
        "message": "GPU 1 is UNHEALTHY",
    }
