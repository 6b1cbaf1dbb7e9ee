"""A real Kubernetes control plane on 127.0.0.1 for tests: etcd, kube-apiserver,
kube-controller-manager, and kube-schedulers on demand.

The binaries are found the envtest way: `KUBEBUILDER_ASSETS` names a folder holding
`kube-apiserver`, `etcd`, `kube-controller-manager` (and `kube-scheduler` for
`start_scheduler`). The official release archives (kubernetes-server, etcd) hold them.

Everything listens on free loopback ports, lives in one temporary folder (etcd's data on tmpfs
where there is one) and is torn down by `stop()`: process groups killed, folder removed. Users:
static bearer tokens, an admin in `system:masters`; the controller manager and schedulers act as
`system:kube-controller-manager` / `system:kube-scheduler`, so RBAC's bootstrap roles apply.
There is no kubelet: Nodes are API objects (`make_node`), Pods are bound but never run.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.polling import wait_until
from webhook import certs

ASSETS_VARIABLE = "KUBEBUILDER_ASSETS"
REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
START_TIMEOUT = 90.0
LOG_TAIL_LINES = 40
START_ATTEMPTS = 3  # free ports are picked before use: another process may take one meanwhile
PR_SET_PDEATHSIG = 1
DEFAULT_SCHEDULER_CONFIG = (
    "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
)
# What a made Node has unless the test says otherwise: the scheduler refuses a node without
# `pods` capacity ("Too many pods"), and cpu/memory keep ordinary requests schedulable.
DEFAULT_NODE_CAPACITY = {"cpu": "16", "memory": "64Gi", "pods": "110"}


class Unavailable(Exception):
    """The binaries are not there: the tier is skipped (or fails, under CI)."""


def find_assets(environ: Mapping[str, str] = os.environ) -> Path:
    """The folder named by KUBEBUILDER_ASSETS, checked to hold the control-plane binaries."""
    folder = environ.get(ASSETS_VARIABLE, "")
    if not folder:
        raise Unavailable(
            f"{ASSETS_VARIABLE} is not set: it must name a folder holding "
            f"{', '.join(REQUIRED)} (see docs/testing.md)"
        )
    path = Path(folder)
    if not path.is_dir():
        raise Unavailable(f"{ASSETS_VARIABLE}={folder} is not a folder (see docs/testing.md)")
    missing = [name for name in REQUIRED if not os.access(path / name, os.X_OK)]
    if missing:
        raise Unavailable(
            f"{ASSETS_VARIABLE}={folder} lacks executable {', '.join(missing)}"
            " (see docs/testing.md)"
        )
    return path


def find_tool(name: str) -> str:
    """`helm` or `kubectl`: the one `make build` put beside this Python, else the PATH's."""
    beside = Path(sys.executable).parent / name
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise Unavailable(f"no {name} beside {sys.executable} or on PATH (run `make build`)")
    return found


def run_tool(
    name: str,
    args: Sequence[str],
    *,
    home: Path,
    input: str | None = None,
    check: bool = True,
    timeout: float = 120,
    kubeconfig: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `helm` or `kubectl` with its own HOME (no user's config or cache leaks in).

    Without `kubeconfig` it points at no cluster (`helm template`, `helm lint`). With `check`,
    a non-zero exit fails with the command's output.
    """
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "KUBECONFIG": str(kubeconfig or home / "no-cluster.kubeconfig"),
        "HELM_CACHE_HOME": str(home / "helm-cache"),
        "HELM_CONFIG_HOME": str(home / "helm-config"),
        "HELM_DATA_HOME": str(home / "helm-data"),
    }
    result = subprocess.run(
        [find_tool(name), *args],
        input=input,
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{name} {' '.join(args)} exited {result.returncode}:\n{result.stderr}\n{result.stdout}"
        )
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"({path.name}: {err})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Process:
    """A started binary in its own process group, its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, argv: Sequence[str], log: Path) -> Process:
        with log.open("wb") as output:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return cls(name, popen, log)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with status {self.popen.returncode}; "
                f"last lines of {self.log}:\n{tail(self.log)}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Anything the binary left in its group (none expected) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the test process dies, even killed without teardown."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_kubeconfig(path: Path, server: str, ca_file: Path, user: str, token: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@dataclass
class Scheduler:
    """A running kube-scheduler; `stop()` ends it (the control plane also does at teardown)."""

    process: Process
    config_file: Path
    health_url: str

    def stop(self) -> None:
        self.process.stop()

    def log(self) -> str:
        return tail(self.process.log, 200)


@dataclass
class ControlPlane:
    """A started control plane. Use through the `control_plane` fixture."""

    assets: Path
    workdir: Path
    url: str = ""
    ca_file: Path = field(default_factory=Path)
    admin_token: str = ""
    kubeconfig: Path = field(default_factory=Path)
    service_account_issuer: str = ""
    processes: list[Process] = field(default_factory=list)
    schedulers: list[Scheduler] = field(default_factory=list)
    _tokens: dict[str, str] = field(default_factory=dict)

    # -- start and stop ---------------------------------------------------------------------

    @classmethod
    def start(cls, assets: Path) -> ControlPlane:
        """Start etcd, kube-apiserver and kube-controller-manager; return when /readyz is ok.

        On any failure everything started is stopped and the temporary folder removed; the
        error carries the tail of each log.
        """
        shm = Path("/dev/shm")
        base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        for attempt in range(1, START_ATTEMPTS + 1):
            workdir = Path(tempfile.mkdtemp(prefix="gpushare-k8s-", dir=base))
            plane = cls(assets=assets, workdir=workdir)
            try:
                plane._start()
            except BaseException as err:
                logs = "\n".join(
                    f"--- {p.name} ({p.log.name}) ---\n{tail(p.log)}" for p in plane.processes
                )
                plane.stop()
                if not isinstance(err, Exception):
                    raise  # interrupted: nothing to report
                if attempt < START_ATTEMPTS and "address already in use" in logs:
                    continue
                raise RuntimeError(f"the control plane did not start: {err}\n{logs}") from err
            return plane
        raise AssertionError("unreachable")

    def _start(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir()
        bundle = certs.generate(pki, ("localhost",), ip_addresses=("127.0.0.1",))
        self.ca_file = bundle.ca_cert
        # The front-proxy CA (aggregation-layer request headers), as kubeadm makes one: the
        # controller manager and schedulers read it for their delegated authentication.
        front_proxy = pki / "front-proxy"
        front_proxy.mkdir()
        front_proxy_ca = certs.generate(front_proxy, ("front-proxy-client",)).ca_cert
        sa_key = pki / "sa.key"
        sa_key.write_bytes(_pem_key(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        sa_key.chmod(0o600)

        self._tokens = {
            "admin": secrets.token_hex(16),
            "system:kube-controller-manager": secrets.token_hex(16),
            "system:kube-scheduler": secrets.token_hex(16),
        }
        self.admin_token = self._tokens["admin"]
        tokens_file = pki / "tokens.csv"
        tokens_file.write_text(
            f'{self._tokens["admin"]},admin,admin,"system:masters"\n'
            f"{self._tokens['system:kube-controller-manager']},"
            "system:kube-controller-manager,system:kube-controller-manager\n"
            f"{self._tokens['system:kube-scheduler']},system:kube-scheduler,system:kube-scheduler\n"
        )
        tokens_file.chmod(0o600)

        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = self._run(
            "etcd",
            [
                "--name=test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=test={peer_url}",
                "--logger=zap",
                "--log-level=warn",
            ],
        )
        self.url = f"https://127.0.0.1:{api_port}"
        self.service_account_issuer = self.url
        self.kubeconfig = write_kubeconfig(
            self.workdir / "admin.kubeconfig", self.url, self.ca_file, "admin", self.admin_token
        )
        apiserver = self._run(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                "--endpoint-reconciler-type=none",
                f"--cert-dir={self.workdir / 'apiserver'}",
                f"--tls-cert-file={bundle.cert}",
                f"--tls-private-key-file={bundle.key}",
                f"--client-ca-file={bundle.ca_cert}",
                f"--requestheader-client-ca-file={front_proxy_ca}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--token-auth-file={tokens_file}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={self.service_account_issuer}",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--disable-admission-plugins=TaintNodesByCondition",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )

        def apiserver_ready() -> bool:
            etcd.check_alive()
            apiserver.check_alive()
            return self.get("/readyz") == 200

        wait_until(
            apiserver_ready,
            timeout=START_TIMEOUT,
            what="kube-apiserver /readyz",
            ignoring=(OSError,),
        )

        manager_kubeconfig = write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig",
            self.url,
            self.ca_file,
            "system:kube-controller-manager",
            self._tokens["system:kube-controller-manager"],
        )
        manager_port = free_port()
        manager = self._run(
            "kube-controller-manager",
            [
                f"--kubeconfig={manager_kubeconfig}",
                f"--authentication-kubeconfig={manager_kubeconfig}",
                f"--authorization-kubeconfig={manager_kubeconfig}",
                "--controllers=*,-node-lifecycle-controller",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={bundle.ca_cert}",
                "--use-service-account-credentials",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={manager_port}",
                f"--cert-dir={self.workdir / 'controller-manager'}",
                "--profiling=false",
            ],
        )

        def manager_healthy() -> bool:
            manager.check_alive()
            return _insecure_get(f"https://127.0.0.1:{manager_port}/healthz") == 200

        wait_until(
            manager_healthy,
            timeout=START_TIMEOUT,
            what="kube-controller-manager /healthz",
            ignoring=(OSError,),
        )

    def _run(self, binary: str, args: Sequence[str]) -> Process:
        process = Process.start(
            binary, [str(self.assets / binary), *args], self.workdir / f"{binary}.log"
        )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """Stop every process (schedulers first, etcd last) and remove the folder."""
        for scheduler in self.schedulers:
            scheduler.stop()
        for process in reversed(self.processes):
            process.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> str:
        """The tail of every log, for a failing test's message."""
        return "\n".join(
            f"--- {p.name} ---\n{tail(p.log)}"
            for p in [*self.processes, *(s.process for s in self.schedulers)]
        )

    # -- clients ----------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def get(self, path: str, *, token: str | None = None, accept: str = "*/*") -> int:
        """The status of a GET of `path` (as the admin unless `token` is given)."""
        request = urllib.request.Request(
            self.url + path,
            headers={"Authorization": f"Bearer {token or self.admin_token}", "Accept": accept},
        )
        try:
            with urllib.request.urlopen(request, context=self.ssl_context(), timeout=5) as reply:
                status: int = reply.status
                return status
        except urllib.error.HTTPError as err:
            return err.code

    def api_client(self, token: str | None = None) -> Any:
        """A `kubernetes.client.ApiClient` for this API server (as the admin by default)."""
        import kubernetes.client

        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key = {"authorization": f"Bearer {token or self.admin_token}"}
        return kubernetes.client.ApiClient(configuration)

    def kubeconfig_for(self, user: str, token: str) -> Path:
        """A kubeconfig for another identity (a ServiceAccount token, say)."""
        safe = "".join(c if c.isalnum() else "-" for c in user)
        return write_kubeconfig(
            self.workdir / f"{safe}-{secrets.token_hex(4)}.kubeconfig",
            self.url,
            self.ca_file,
            user,
            token,
        )

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl as the admin; stdout/stderr captured as text."""
        return self._tool("kubectl", args, input, check, timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """Run the real helm against this API server as the admin."""
        return self._tool("helm", args, input, check, timeout)

    def _tool(
        self, name: str, args: Sequence[str], input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        return run_tool(
            name,
            args,
            input=input,
            check=check,
            timeout=timeout,
            home=self.workdir / "home",
            kubeconfig=self.kubeconfig,
        )

    # -- schedulers and nodes ---------------------------------------------------------------

    def start_scheduler(self, config_yaml_text: str = DEFAULT_SCHEDULER_CONFIG) -> Scheduler:
        """Start a real kube-scheduler with this KubeSchedulerConfiguration; return when healthy.

        `clientConnection.kubeconfig` is filled in (user `system:kube-scheduler`) and leader
        election is off unless the text says otherwise. Stop it when the test ends (a
        fixture's teardown): two schedulers with the same profile name would both bind pods.
        """
        binary = self.assets / "kube-scheduler"
        if not os.access(binary, os.X_OK):
            raise Unavailable(f"{ASSETS_VARIABLE}={self.assets} lacks executable kube-scheduler")
        config = yaml.safe_load(config_yaml_text) or {}
        if not isinstance(config, dict):
            raise ValueError("the scheduler configuration must be a YAML mapping")
        index = len(self.schedulers)
        kubeconfig = self.workdir / f"scheduler-{index}.kubeconfig"
        if not kubeconfig.exists():
            write_kubeconfig(
                kubeconfig,
                self.url,
                self.ca_file,
                "system:kube-scheduler",
                self._tokens["system:kube-scheduler"],
            )
        config.setdefault("apiVersion", "kubescheduler.config.k8s.io/v1")
        config.setdefault("kind", "KubeSchedulerConfiguration")
        config.setdefault("clientConnection", {})["kubeconfig"] = str(kubeconfig)
        config.setdefault("leaderElection", {}).setdefault("leaderElect", False)
        config_file = self.workdir / f"scheduler-{index}.yaml"
        config_file.write_text(yaml.safe_dump(config))
        port = free_port()
        process = Process.start(
            f"kube-scheduler-{index}",
            [
                str(binary),
                f"--config={config_file}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / f'scheduler-{index}'}",
            ],
            self.workdir / f"kube-scheduler-{index}.log",
        )
        scheduler = Scheduler(process, config_file, f"https://127.0.0.1:{port}/readyz")
        self.schedulers.append(scheduler)

        def ready() -> bool:
            process.check_alive()
            return _insecure_get(scheduler.health_url) == 200

        try:
            wait_until(ready, timeout=START_TIMEOUT, what="kube-scheduler", ignoring=(OSError,))
        except BaseException:
            log = scheduler.log()
            scheduler.stop()
            raise RuntimeError(f"kube-scheduler did not start:\n{log}") from None
        return scheduler

    def make_node(
        self,
        name: str,
        capacity: Mapping[str, str | int],
        *,
        labels: Mapping[str, str] | None = None,
    ) -> Any:
        """Create a Ready Node whose capacity and allocatable are `capacity`.

        cpu, memory and pods default to DEFAULT_NODE_CAPACITY where `capacity` leaves them out.
        Returns the created V1Node; the caller deletes it (the `make_node` fixture does).
        """
        import kubernetes.client

        resources = {**DEFAULT_NODE_CAPACITY, **{k: str(v) for k, v in capacity.items()}}
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, **(labels or {})},
            },
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "a Node object made by the tests; no kubelet runs it",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
            },
        }
        with self.api_client() as client:
            return kubernetes.client.CoreV1Api(client).create_node(body)


def _insecure_get(url: str) -> int:
    """The status of a GET of a component's self-signed /healthz (no credentials needed)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as reply:
            status: int = reply.status
            return status
    except urllib.error.HTTPError as err:
        return err.code
