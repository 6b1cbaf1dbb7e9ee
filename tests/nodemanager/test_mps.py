"""The MPS control daemon per GPU, driven against a stand-in `nvidia-cuda-mps-control` (a real
program that records what it was asked and honours `-d`, `get_server_list` and `quit`). The
real daemon, and the SM limit its server enforces, need a GPU and are not run here."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from nodemanager.daemon import Daemon
from nodemanager.devices import Kind
from nodemanager.gputime.client import GpuTimeClient
from nodemanager.gputime.mps import MpsDaemons, MpsError, partitioned_gpus
from nodemanager.inventory import SimulatedInventory
from nodemanager.kube import KubernetesApi
from nodemanager.manager import NodeError, NodeManager, Paths

from tests.nodemanager.conftest import GIB, simulated_daemon
from tests.nodemanager.fake_apiserver import FakeApiServer, make_pod
from tests.nodemanager.fake_kubelet import FakeKubelet
from tests.polling import wait_until

STAND_IN = Path(__file__).with_name("fake_mps_control.py")
GPU = "GPU-test-0"


@pytest.fixture
def mps_control(short_dir: Path) -> Iterator[Path]:
    """An executable stand-in for nvidia-cuda-mps-control; every daemon it started and that
    still answers is told to quit at teardown."""
    program = short_dir / "nvidia-cuda-mps-control"
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STAND_IN}" "$@"\n')
    program.chmod(0o755)
    yield program
    for root in short_dir.glob("**/mps"):
        daemons = MpsDaemons(root, binary=str(program))
        for gpu in daemons.running():
            daemons.stop_gpu(gpu)
        for gpu_dir in root.iterdir():
            for pid in _pids(gpu_dir / "log"):
                _wait_gone(pid)


def _log(dirs_log: Path) -> list[str]:
    path = dirs_log / "control.log"
    return path.read_text().splitlines() if path.exists() else []


def _pids(log_dir: Path) -> list[int]:
    return [
        int(line.split()[1].removeprefix("pid="))
        for line in _log(log_dir)
        if line.startswith("start ")
    ]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie is gone too (the stand-in daemon's parent, the shell, has exited)
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1].startswith("Z")


def _wait_gone(pid: int) -> None:
    wait_until(lambda: _gone(pid), what=f"daemon {pid} gone")


def test_started_once_per_gpu_with_its_own_directories_and_stopped_by_quit(
    short_dir: Path, mps_control: Path
) -> None:
    daemons = MpsDaemons(short_dir / "mps", binary=str(mps_control))
    dirs = daemons.ensure(GPU)
    assert dirs.pipe == short_dir / "mps" / GPU / "pipe"
    assert dirs.log == short_dir / "mps" / GPU / "log"
    assert daemons.alive(GPU)
    (start,) = [line for line in _log(dirs.log) if line.startswith("start ")]
    assert start.endswith(f"CUDA_VISIBLE_DEVICES={GPU}")
    assert daemons.ensure(GPU) == dirs  # answering: not started twice
    daemons.sync({GPU})
    assert daemons.starts == 1 and len(_pids(dirs.log)) == 1

    daemons.snapshot()  # the allocations are read after Allocate's ensure: none left
    daemons.sync(set())  # the last partitioned container went
    assert _log(dirs.log)[-2:] == ["command quit", "exit"]
    assert not daemons.alive(GPU)
    _wait_gone(_pids(dirs.log)[0])


def test_a_daemon_that_died_is_restarted(short_dir: Path, mps_control: Path) -> None:
    daemons = MpsDaemons(short_dir / "mps", binary=str(mps_control))
    daemons.sync({GPU})
    (first,) = _pids(daemons.dirs(GPU).log)
    os.kill(first, signal.SIGKILL)
    _wait_gone(first)
    assert not daemons.alive(GPU)
    daemons.sync({GPU})
    pids = _pids(daemons.dirs(GPU).log)
    assert len(pids) == 2 and pids[1] != first
    assert daemons.alive(GPU)


def test_a_daemon_left_by_an_earlier_node_manager_is_adopted_then_stopped(
    short_dir: Path, mps_control: Path
) -> None:
    MpsDaemons(short_dir / "mps", binary=str(mps_control)).ensure(GPU)
    again = MpsDaemons(short_dir / "mps", binary=str(mps_control))
    again.sync({GPU})
    assert again.starts == 0
    again.sync(set())  # its containers went while no node manager ran
    assert not again.alive(GPU)


def test_a_missing_program_is_one_clear_error(short_dir: Path) -> None:
    daemons = MpsDaemons(short_dir / "mps", binary=str(short_dir / "no-such-mps-control"))
    with pytest.raises(MpsError, match=r"no-such-mps-control.* is not installed on this node"):
        daemons.ensure(GPU)
    daemons.sync({GPU})  # logged, not raised: the node manager serves on


def test_a_daemon_that_will_not_start_is_an_error_with_its_message(short_dir: Path) -> None:
    program = short_dir / "failing-mps-control"
    program.write_text("#!/bin/sh\necho 'cannot open the GPU' >&2\nexit 3\n")
    program.chmod(0o755)
    daemons = MpsDaemons(short_dir / "mps", binary=str(program))
    with pytest.raises(MpsError, match="exited with 3: cannot open the GPU"):
        daemons.ensure(GPU)


def test_no_daemon_is_seen_even_when_the_program_exits_0_saying_so(short_dir: Path) -> None:
    program = short_dir / "quiet-mps-control"
    program.write_text("#!/bin/sh\necho 'Cannot find MPS control daemon process'\nexit 0\n")
    program.chmod(0o755)
    daemons = MpsDaemons(short_dir / "mps", binary=str(program))
    daemons.dirs(GPU).pipe.mkdir(parents=True)
    assert not daemons.alive(GPU)


class _Pods:
    def __init__(self, pods: Sequence[dict[str, Any]]) -> None:
        self.pods = list(pods)

    def pending_pods(self, node_name: str) -> list[dict[str, Any]]:
        return [dict(pod) for pod in self.pods]


def _manager(short_dir: Path, binary: str, pods: Sequence[dict[str, Any]]) -> NodeManager:
    return NodeManager(
        node_name="node-a",
        inventory=SimulatedInventory(2, 16 * GIB),
        paths=Paths(short_dir / "lib", short_dir / "state", short_dir / "checkpoint.json"),
        pod_source=_Pods(pods),
        mps=MpsDaemons(short_dir / "state" / "mps", binary=binary),
    )


def _allocate(manager: NodeManager, size: int) -> Any:
    available = [device for device, _healthy in manager.devices(Kind.CORE)]
    return manager.allocate(Kind.CORE, manager.preferred(Kind.CORE, available, [], size))


def test_allocate_hands_the_gpus_mps_directories_to_the_container(
    short_dir: Path, mps_control: Path
) -> None:
    pods = [
        make_pod("a", [("c", 30, 0)], annotations={"gpushare.io/sm-partition": "40"}),
        make_pod("b", [("c", 20, 0)]),
    ]
    manager = _manager(short_dir, str(mps_control), pods)
    granted = _allocate(manager, 30)
    gpu = granted.envs["NVIDIA_VISIBLE_DEVICES"]
    dirs = short_dir / "state" / "mps" / gpu
    assert granted.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "40"
    assert granted.envs["CUDA_MPS_PIPE_DIRECTORY"] == "/var/run/gpushare-mps/pipe"
    assert granted.envs["CUDA_MPS_LOG_DIRECTORY"] == "/var/run/gpushare-mps/log"
    mounts = {(m.container_path, m.host_path, m.read_only) for m in granted.mounts}
    assert ("/var/run/gpushare-mps/pipe", str(dirs / "pipe"), False) in mounts
    assert ("/var/run/gpushare-mps/log", str(dirs / "log"), True) in mounts
    assert _log(dirs / "log")[0].endswith(f"CUDA_VISIBLE_DEVICES={gpu}")
    assert partitioned_gpus(manager.allocations()) == {gpu}

    pods.pop(0)  # a is running; b has no partition: no MPS for it
    other = _allocate(manager, 20)
    assert "CUDA_MPS_PIPE_DIRECTORY" not in other.envs
    assert all("gpushare-mps" not in m.container_path for m in other.mounts)
    manager.release(granted.allocation_id)
    assert partitioned_gpus(manager.allocations()) == set()


def test_without_the_mps_program_the_container_is_refused_with_the_reason(
    short_dir: Path,
) -> None:
    pods = [make_pod("a", [("c", 30, 0)], annotations={"gpushare.io/sm-partition": "40"})]
    manager = _manager(short_dir, "no-such-mps-control", pods)
    with pytest.raises(NodeError) as info:
        _allocate(manager, 30)
    message = str(info.value)
    assert "team-a/a" in message and "gpushare.io/sm-partition=40" in message
    assert "'no-such-mps-control' is not installed on this node" in message
    assert manager.allocations() == []  # nothing recorded: kubelet retries


def test_node_manager_runs_the_daemon_while_partitioned_containers_share_the_gpu(
    short_dir: Path, apiserver: FakeApiServer, mps_control: Path
) -> None:
    """Two containers with partitions 40 and 60 on one GPU hold GPU time tokens at once; the
    GPU's daemon is restarted when it dies and told to quit when both pods are gone."""
    base = simulated_daemon(short_dir, apiserver)
    settings = replace(
        base.settings,
        mps_control=str(mps_control),
        release_grace_seconds=0,
        # tokens of at least 5 s: a second holder granted sooner holds beside the first
        gpu_time_window_seconds=10,
        gpu_time_min_token_seconds=5,
        gpu_time_max_token_seconds=10,
    )
    kubelet = FakeKubelet(short_dir / "dp", short_dir / "pr.sock").start()
    daemon = Daemon(
        settings,
        inventory=SimulatedInventory(2, 16 * GIB),
        kubernetes=KubernetesApi.for_url(apiserver.url),
    )
    daemon.start()
    clients: list[GpuTimeClient] = []
    try:
        wait_until(lambda: len(kubelet.health("tencent.com/vcuda-memory")) == 128, what="devices")
        granted = {}
        for name, partition in (("p40", "40"), ("p60", "60")):
            pod = make_pod(
                name, [("main", 30, 4)], annotations={"gpushare.io/sm-partition": partition}
            )
            apiserver.add_pod(pod)
            granted[name] = kubelet.admit(pod)["main"]
        gpu = granted["p40"].envs["NVIDIA_VISIBLE_DEVICES"]
        assert granted["p60"].envs["NVIDIA_VISIBLE_DEVICES"] == gpu
        log_dir = short_dir / "state" / "mps" / gpu / "log"
        (first,) = _pids(log_dir)  # one daemon for the GPU, shared by both containers

        for name in ("p40", "p60"):
            state = next(
                host for inside, host, _ in granted[name].mounts if inside == "/var/run/gpushare"
            )
            path = Path(state) / "gputime.sock"
            wait_until(path.exists, what=f"{name}'s scheduler socket")
            clients.append(GpuTimeClient(path).connect())
        started = time.monotonic()
        for client in clients:
            client.acquire()
        assert time.monotonic() - started < settings.gpu_time_min_token_seconds, (
            "the second container waited for the first one's token"
        )

        os.kill(first, signal.SIGKILL)
        _wait_gone(first)
        daemon.mps.wake()
        wait_until(lambda: len(_pids(log_dir)) == 2, what="the daemon restarted")

        for name in ("p40", "p60"):
            kubelet.remove_pod("team-a", name)
        daemon.manager.reconcile()
        wait_until(lambda: _log(log_dir)[-1:] == ["exit"], what="the daemon told to quit")
        assert "command quit" in _log(log_dir)
    finally:
        for client in clients:
            client.close()
        daemon.stop()
        kubelet.stop()


def test_a_pod_with_a_partition_is_refused_when_mps_cannot_run(
    short_dir: Path, apiserver: FakeApiServer
) -> None:
    base = simulated_daemon(short_dir, apiserver)
    settings = replace(base.settings, mps_control=str(short_dir / "missing-mps-control"))
    kubelet = FakeKubelet(short_dir / "dp", short_dir / "pr.sock").start()
    daemon = Daemon(
        settings,
        inventory=SimulatedInventory(2, 16 * GIB),
        kubernetes=KubernetesApi.for_url(apiserver.url),
    )
    daemon.start()
    try:
        wait_until(lambda: len(kubelet.health("tencent.com/vcuda-memory")) == 128, what="devices")
        pod = make_pod("p", [("main", 30, 4)], annotations={"gpushare.io/sm-partition": "50"})
        apiserver.add_pod(pod)
        with pytest.raises(grpc.RpcError) as info:
            kubelet.admit(pod)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "needs an MPS control daemon" in str(info.value.details())
        assert "missing-mps-control" in str(info.value.details())
        plain = make_pod("q", [("main", 20, 4)])  # without a partition: served as before
        apiserver.add_pod(plain)
        assert "CUDA_MPS_PIPE_DIRECTORY" not in kubelet.admit(plain)["main"].envs
    finally:
        daemon.stop()
        kubelet.stop()


def test_the_mps_control_flag() -> None:
    from nodemanager.settings import parse_settings

    from gpushare import cli

    def parse(*argv: str) -> Any:
        args = cli.build_parser().parse_args(["nodemanager", "--node-name", "n", *argv])
        return parse_settings(args)

    assert parse().mps_control == "nvidia-cuda-mps-control"
    assert parse("--mps-control", "/opt/cuda/bin/mps").mps_control == "/opt/cuda/bin/mps"
