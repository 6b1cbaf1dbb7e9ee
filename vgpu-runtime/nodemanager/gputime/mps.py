"""One MPS control daemon per GPU that has a container with an SM partition.

A container with `gpushare.io/sm-partition` runs as a client of the CUDA Multi-Process Service
(MPS), whose server confines each client to `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` % of the SMs.
The node manager runs `nvidia-cuda-mps-control -d` for each such GPU, with
`CUDA_VISIBLE_DEVICES` set to that GPU's UUID and its own pipe and log directories
(`<state dir>/mps/<GPU UUID>/{pipe,log}`), which Allocate mounts into the container and names
in `CUDA_MPS_PIPE_DIRECTORY`/`CUDA_MPS_LOG_DIRECTORY`.

A daemon is alive when it answers `get_server_list` on its control pipe. `sync()` starts the
daemons of the GPUs that need one (again, if one died), and stops (`quit`) those of GPUs whose
last partitioned container went. It runs whenever the allocations change and every few
seconds. A daemon left running by an earlier node manager is adopted, not started twice; the
daemons are left running when the node manager stops (their containers still use them).
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nodemanager.devices import Kind
from nodemanager.ledger import Allocation

log = logging.getLogger(__name__)

DEFAULT_BINARY = "nvidia-cuda-mps-control"
COMMAND_TIMEOUT_SECONDS = 10.0
"""How long one call of the control program may take (start, query or quit)."""


class MpsError(Exception):
    """A GPU's MPS control daemon cannot be run."""


@dataclass(frozen=True)
class MpsDirs:
    pipe: Path
    """`CUDA_MPS_PIPE_DIRECTORY`: where the daemon listens and its clients connect."""
    log: Path
    """`CUDA_MPS_LOG_DIRECTORY`: the daemon's and its servers' logs."""


def partitioned_gpus(allocations: list[Allocation]) -> set[str]:
    """The GPUs (UUIDs) with a container that has an SM partition (single-GPU core allocations)."""
    return {
        next(iter(item.units_by_gpu))
        for item in allocations
        if item.kind is Kind.CORE and item.sm_partition and len(item.units_by_gpu) == 1
    }


class MpsDaemons:
    """Starts, watches and stops the MPS control daemons of a node. Thread-safe."""

    def __init__(
        self,
        root: Path,
        *,
        binary: str = DEFAULT_BINARY,
        interval_seconds: float = 5.0,
    ) -> None:
        self.root = root
        self.binary = binary
        self._interval = interval_seconds
        self._lock = threading.Lock()
        self._failed: dict[str, str] = {}
        """GPU -> the last error starting its daemon (logged once)."""
        self._wanted: Callable[[], set[str]] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.starts = 0
        """How many daemons were started (restarts included)."""
        self._known: set[str] = set()
        """GPUs whose daemon was running at the last sync (a new start there is a restart)."""
        self._ensured: set[str] = set()
        """GPUs whose daemon Allocate made sure of since the last snapshot of the wanted GPUs
        (kept running: their allocation may not be in that snapshot yet)."""

    def dirs(self, gpu: str) -> MpsDirs:
        base = self.root / gpu
        return MpsDirs(pipe=base / "pipe", log=base / "log")

    def _env(self, gpu: str) -> dict[str, str]:
        dirs = self.dirs(gpu)
        env = dict(os.environ)
        env.update(
            CUDA_VISIBLE_DEVICES=gpu,
            CUDA_MPS_PIPE_DIRECTORY=str(dirs.pipe),
            CUDA_MPS_LOG_DIRECTORY=str(dirs.log),
        )
        return env

    def _call(self, gpu: str, args: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.binary, *args],
                input=stdin,
                env=self._env(gpu),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_SECONDS,
                check=False,
            )
        except FileNotFoundError as err:
            raise MpsError(
                f"the MPS control program {self.binary!r} is not installed on this node"
                " (--mps-control names it)"
            ) from err
        except (OSError, subprocess.SubprocessError) as err:
            raise MpsError(f"cannot run the MPS control program {self.binary!r}: {err}") from err

    def alive(self, gpu: str) -> bool:
        """Whether the GPU's daemon answers on its control pipe."""
        if not self.dirs(gpu).pipe.is_dir():
            return False
        try:
            result = self._call(gpu, [], "get_server_list\n")
        except MpsError:
            return False
        # without a daemon the program says so ("Cannot find MPS control daemon process");
        # the message is checked as well as the exit status
        said = f"{result.stdout}\n{result.stderr}".lower()
        return result.returncode == 0 and "cannot find mps control daemon" not in said

    def ensure(self, gpu: str) -> MpsDirs:
        """The GPU's daemon running (started when it is not); its directories."""
        with self._lock:
            self._ensured.add(gpu)
            return self._ensure(gpu)

    def _ensure(self, gpu: str) -> MpsDirs:
        dirs = self.dirs(gpu)
        if self.alive(gpu):
            return dirs
        try:
            dirs.pipe.mkdir(parents=True, exist_ok=True)
            dirs.log.mkdir(parents=True, exist_ok=True)
            # clients run as any user and connect through the pipe directory
            dirs.pipe.chmod(0o755)
        except OSError as err:
            raise MpsError(f"cannot create the MPS directories of GPU {gpu}: {err}") from err
        result = self._call(gpu, ["-d"], "")
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()[:500]
            raise MpsError(
                f"{self.binary} -d for GPU {gpu} exited with {result.returncode}: "
                f"{detail or 'no message'}"
            )
        self.starts += 1
        self._failed.pop(gpu, None)
        log.info("MPS control daemon of GPU %s started (pipe %s)", gpu, dirs.pipe)
        return dirs

    def stop_gpu(self, gpu: str) -> None:
        """Tell the GPU's daemon to quit (it stops its server once the clients are gone)."""
        with self._lock:
            self._quit(gpu)

    def _quit(self, gpu: str) -> None:
        if not self.alive(gpu):
            return
        try:
            result = self._call(gpu, [], "quit\n")
        except MpsError as err:
            log.warning("cannot stop the MPS control daemon of GPU %s: %s", gpu, err)
            return
        if result.returncode == 0:
            log.info("MPS control daemon of GPU %s stopped: no container uses it", gpu)
        else:
            log.warning(
                "MPS control daemon of GPU %s did not take quit: %s",
                gpu,
                (result.stderr or result.stdout).strip()[:500],
            )

    def running(self) -> set[str]:
        """GPUs with a daemon directory here whose daemon answers."""
        try:
            gpus = [path.name for path in self.root.iterdir() if path.is_dir()]
        except OSError:
            return set()
        return {gpu for gpu in gpus if self.alive(gpu)}

    def sync(self, wanted: set[str]) -> None:
        """Daemons for the `wanted` GPUs, started (or restarted); the others told to quit,
        except those Allocate asked for since `snapshot()`."""
        with self._lock:
            wanted = wanted | self._ensured
            for gpu in sorted(wanted):
                try:
                    was_started = self.starts
                    self._ensure(gpu)
                    if self.starts != was_started and gpu in self._known:
                        log.warning("MPS control daemon of GPU %s had stopped: restarted", gpu)
                    self._known.add(gpu)
                except MpsError as err:
                    if self._failed.get(gpu) != str(err):
                        log.error("MPS control daemon of GPU %s not running: %s", gpu, err)
                        self._failed[gpu] = str(err)
            for gpu in sorted(self.running() - wanted):
                self._quit(gpu)
            self._known &= wanted

    def snapshot(self) -> None:
        """Call just before reading the wanted GPUs from the allocations; see `_ensured`."""
        with self._lock:
            self._ensured = set()

    # --- the watching thread ---------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def start(self, wanted: Callable[[], set[str]]) -> MpsDaemons:
        self._wanted = wanted
        self._thread = threading.Thread(target=self._run, name="mps", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (the daemons go on serving their containers)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=COMMAND_TIMEOUT_SECONDS * 2)

    def _run(self) -> None:
        assert self._wanted is not None
        while not self._stop.is_set():
            try:
                # Allocate starts a daemon before recording its allocation, under the node
                # manager's lock, which reading the allocations waits for
                self.snapshot()
                self.sync(self._wanted())
            except Exception:  # the watch must go on: the next round may succeed
                log.exception("MPS daemon sync failed")
            self._wake.wait(self._interval)
            self._wake.clear()
