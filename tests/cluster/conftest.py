"""Fixtures of the real-control-plane tier (see tests/cluster/controlplane.py).

- `control_plane` (session): one etcd + kube-apiserver + kube-controller-manager for the whole
  test session, found through KUBEBUILDER_ASSETS. Without the binaries the tier is skipped
  with a plain message; under CI=true it fails.
- `namespace`: a fresh namespace, labelled `gpushare-test=<name>`, with its `default`
  ServiceAccount; deleted (its pods at once) after the test.
- `make_node(name, capacity, labels=None)`: creates a Node API object; deleted after the test.
- `scheduler`: a kube-scheduler with the default configuration, stopped after the test.
- `helm` (session): runs the real helm with no cluster (`helm template`, `helm lint`); needs
  only the helm binary, not the control plane.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.controlplane import (
    ControlPlane,
    Scheduler,
    Unavailable,
    find_assets,
    find_tool,
    run_tool,
)

NAMESPACE_LABEL = "gpushare-test"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(message: str) -> None:
    if _in_ci():
        pytest.fail(f"{message} (CI=true: the real-control-plane tests must run)", pytrace=False)
    pytest.skip(f"real control plane not available: {message}")


def _ignoring_not_found(delete: Callable[..., object], *args: object) -> None:
    from kubernetes.client.rest import ApiException

    try:
        delete(*args)
    except ApiException as err:
        if err.status != 404:
            raise


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    try:
        assets = find_assets()
    except Unavailable as err:
        _unavailable(str(err))
    plane = ControlPlane.start(assets)
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    import kubernetes.client
    from kubernetes.client.rest import ApiException

    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    with control_plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespace(
            {"metadata": {"name": name, "labels": {NAMESPACE_LABEL: name}}},
        )
        # The controller manager makes `default` within a second or two; making it here
        # (a conflict if it won) saves the wait and never depends on its timing.
        try:
            core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})
        except ApiException as err:
            if err.status != 409:
                raise
        try:
            yield name
        finally:
            # Deleting the namespace first stops controllers making new pods in it; bound pods
            # have no kubelet to confirm a graceful deletion, so they go with grace 0.
            # (The test may have deleted the namespace itself: not found is fine.)
            _ignoring_not_found(core.delete_namespace, name)
            core.delete_collection_namespaced_pod(name, grace_period_seconds=0)


@pytest.fixture
def make_node(control_plane: ControlPlane) -> Iterator[Callable[..., Any]]:
    import kubernetes.client

    made: list[str] = []

    def make(name: str, capacity: dict[str, str | int], **kwargs: Any) -> Any:
        node = control_plane.make_node(name, capacity, **kwargs)
        made.append(name)
        return node

    yield make
    with control_plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        for name in made:
            _ignoring_not_found(core.delete_node, name)


@pytest.fixture
def scheduler(control_plane: ControlPlane) -> Iterator[Scheduler]:
    handle = control_plane.start_scheduler()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def helm(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., subprocess.CompletedProcess[str]]:
    try:
        find_tool("helm")
    except Unavailable as err:
        _unavailable(str(err))
    home: Path = tmp_path_factory.mktemp("helm-home")

    def run(
        *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run_tool("helm", args, home=home, input=input, check=check, timeout=timeout)

    return run


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    """A failing test on the control plane shows the end of each component's log."""
    report: pytest.TestReport = yield
    plane = getattr(item, "funcargs", {}).get("control_plane")
    if report.failed and report.when == "call" and isinstance(plane, ControlPlane):
        report.sections.append(("control plane logs (last lines)", plane.logs()))
    return report
