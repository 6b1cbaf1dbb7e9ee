"""The control-plane harness itself, with stand-in binaries: it finds, reports and cleans up."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.cluster import controlplane
from tests.cluster.controlplane import ControlPlane, Unavailable, find_assets


def _script(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_assets_unset_names_the_variable() -> None:
    with pytest.raises(Unavailable, match="KUBEBUILDER_ASSETS is not set"):
        find_assets({})


def test_assets_folder_that_is_not_there_says_so(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="is not a folder"):
        find_assets({"KUBEBUILDER_ASSETS": str(tmp_path / "nowhere")})


def test_assets_folder_without_binaries_names_the_missing_ones(tmp_path: Path) -> None:
    _script(tmp_path, "kube-apiserver", "exit 0")
    with pytest.raises(Unavailable) as caught:
        find_assets({"KUBEBUILDER_ASSETS": str(tmp_path)})
    assert "etcd" in str(caught.value)
    assert "kube-controller-manager" in str(caught.value)
    assert "kube-apiserver," not in str(caught.value)


def test_failed_start_reports_the_logs_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = tmp_path / "pids"
    # etcd "runs" (and records its pid); the API server fails at once with a message.
    _script(tmp_path, "etcd", f'echo $$ >> "{pids}"; exec sleep 600')
    _script(tmp_path, "kube-apiserver", 'echo "E0101 bad flag --etcd-servers: boom"; exit 3')
    _script(tmp_path, "kube-controller-manager", "exit 1")
    _script(tmp_path, "kube-scheduler", "exit 1")
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args: object, **kwargs: object) -> str:
        folder = real_mkdtemp(*args, **kwargs)  # type: ignore[call-overload]
        made.append(Path(folder))
        return str(folder)

    monkeypatch.setattr(controlplane.tempfile, "mkdtemp", recording_mkdtemp)

    with pytest.raises(RuntimeError) as caught:
        ControlPlane.start(find_assets({"KUBEBUILDER_ASSETS": str(tmp_path)}))

    message = str(caught.value)
    assert "kube-apiserver exited with status 3" in message
    assert "bad flag --etcd-servers: boom" in message
    assert made and not any(folder.exists() for folder in made)
    for pid in pids.read_text().split():
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)


@pytest.mark.parametrize(
    ("ci", "outcome", "message"),
    [
        pytest.param(
            "", "1 skipped", "real control plane not available: KUBEBUILDER_ASSETS", id="local"
        ),
        pytest.param(
            "true",
            "1 error",
            "(CI=true: the real-control-plane tests must run)",
            id="ci-true",
        ),
    ],
)
def test_without_binaries_the_tier_skips_locally_and_fails_under_ci(
    tmp_path: Path, ci: str, outcome: str, message: str
) -> None:
    root = Path(__file__).resolve().parents[2]
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CI", "KUBEBUILDER_ASSETS", "PYTEST_ADDOPTS")
    }
    environ.update({"CI": ci, "KUBEBUILDER_ASSETS": str(tmp_path / "nowhere")})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rse",
            f"{root / 'tests' / 'cluster' / 'test_controlplane.py'}"
            "::test_the_controller_manager_makes_default_service_accounts",
        ],
        cwd=root,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert outcome in result.stdout, result.stdout
    assert message in result.stdout, result.stdout
    assert (result.returncode == 0) == (ci == ""), result.stdout
