"""What the node manager finds at start: a checkpoint of any content, an absent kubelet;
named errors, never a traceback or a wall of text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from nodemanager.ledger import CheckpointError, Ledger


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"[]", "it must be a JSON object (got list)", id="json-list"),
        pytest.param(b"null", "it must be a JSON object (got NoneType)", id="json-null"),
        pytest.param(b"5", "it must be a JSON object (got int)", id="json-number"),
        pytest.param(b"\xff\xfe\x00garbage", "is unreadable", id="not-utf8"),
        pytest.param(b"", "is unreadable", id="empty-file"),
        pytest.param(
            b'{"version": 1, "allocations": [5]}', "is unreadable", id="allocation-number"
        ),
        pytest.param(
            b'{"version": 1, "allocations": [{"id": "a", "kind": "core", "device_ids": [],'
            b' "units_by_gpu": [], "created_at": 0}]}',
            "is unreadable",
            id="units-not-object",
        ),
    ],
)
def test_corrupt_checkpoint_is_a_named_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        Ledger.load(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_the_command_refuses_a_corrupt_checkpoint_with_the_reason(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    checkpoint.write_bytes(b"[]")
    command = [
        sys.executable, "-m", "gpushare", "nodemanager",
        "--node-name", "n1", "--simulate-gpus", "1x1GiB", "--no-kubernetes",
        "--device-plugin-dir", str(tmp_path / "dp"),
        "--pod-resources-socket", str(tmp_path / "pr.sock"),
        "--state-dir", str(tmp_path / "state"),
        "--checkpoint", str(checkpoint),
        "--host", "127.0.0.1", "--port", "0",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=os.environ)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"checkpoint {checkpoint} is unreadable: it must be a JSON object" in done.stderr
    assert "move the file away" in done.stderr


def test_an_absent_kubelet_is_one_clear_line(tmp_path: Path) -> None:
    from nodemanager.kube import KubeletPodResources, KubernetesError

    socket = tmp_path / "missing.sock"
    with pytest.raises(KubernetesError) as info:
        KubeletPodResources(str(socket), timeout_seconds=2).list_devices()
    message = str(info.value)
    assert message.startswith(f"kubelet PodResources List on unix://{socket} failed: UNAVAILABLE: ")
    assert "\n" not in message
