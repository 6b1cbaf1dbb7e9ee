"""A user's whole path on the real API server, from `helm install` to `gpushare usage`.

The admin installs the chart as the README and docs/deployment.md say (their own CA from
`gpushare certs generate`, the chart's default ServiceAccount auth, budgets from a file in a
ConfigMap they manage). The chart's timekeeper and webhook pods are made by the controller
manager; the test plays the kubelet for one of each (tests/cluster/kubelet.py): bound to a
made Node, volumes materialised from the API server (Secret, ConfigMap, TokenRequest),
`command`, `args` and environment taken from the stored pod and run as processes.

A user with the `edit` role in their namespace `kubectl apply`s the example GPU pod; it is
admitted with the sidecar; the kubelet's part is played for it too, and the real `gpushare
sidecar` reports until the user deletes the pod and it gets SIGTERM. `gpushare usage` then
shows the pod charged vcuda-core / 100 x the seconds it held the GPU, with nothing lost.

What is rewritten, and only that (each rewrite is asserted to have happened):
- paths under a container's mounts point at the folders that stand for the volumes (the
  spool, the token and the pod's usage folder);
- listening addresses: the timekeeper `--host=127.0.0.1 --port=0`, the webhook on an
  inherited loopback socket (`--bind-fd`);
- Service DNS names, which only cluster DNS resolves: the timekeeper's Service address in
  the webhook's lookup URL and the sidecar's report URL becomes the loopback address;
- the chart's two webhook configurations call the webhook at `clientConfig.url`
  (https://127.0.0.1, the same CA bundle the admin gave helm) instead of through the
  Service, and select only the test's namespace (added to the chart's own selector).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

from gpushare.resources import USAGE_DIR
from tests.cluster.admission import SIDECAR, env_of, sidecars
from tests.cluster.controlplane import ControlPlane, run_tool
from tests.cluster.kubelet import Container, Kubelet, Process
from tests.polling import wait_until
from tests.timekeeper.servers import LISTENING_RE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deployment" / "chart"
EXAMPLE_POD = ROOT / "deployment" / "examples" / "gpu-pod.yaml"
RELEASE, RELEASE_NAMESPACE = "gpushare", "gpushare-system"
REPORT_INTERVAL_SECONDS = 1
"""The admin's `sidecar.reportIntervalSeconds` (the chart's least): short, so the test is."""


def gpushare(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The `gpushare` command line, as an admin or a user runs it."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "gpushare"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"gpushare {' '.join(args)} exited {result.returncode}:\n{result}")
    return result


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class PodRow:
    """One pod's use, as `gpushare usage -o json NAMESPACE` prints it."""

    gpu_hours: float
    gpu_seconds: float
    reports: int
    first_start: datetime
    last_end: datetime
    namespace_status: dict[str, Any]


def usage_row(platform: Platform, namespace: str, pod: str) -> PodRow | None:
    """The pod's row in `gpushare usage --url URL -o json NAMESPACE`, if any."""
    answer = json.loads(platform.usage("-o", "json", namespace).stdout)
    for row in answer["usage"]["rows"]:
        if row["pod"] == pod:
            return PodRow(
                row["gpuHours"],
                row["gpuSeconds"],
                row["reports"],
                _utc(row["firstStart"]),
                _utc(row["lastEnd"]),
                answer["status"],
            )
    return None


@dataclass
class Platform:
    """The installed chart with its timekeeper and webhook running, as the kubelet would."""

    timekeeper_url: str
    timekeeper_service: str
    """`host:port` of the timekeeper's Service, as the chart's URLs name it."""
    kubelet: Kubelet
    reads_need_a_token: bool
    """The admin's `timekeeper.readRequiresToken`."""
    reader_token: str = ""
    """A token for reads (audience gpushare-timekeeper), when they need one."""

    def usage(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`gpushare usage --url TIMEKEEPER [--token T] ARGS…`"""
        token = ["--token", self.reader_token] if self.reader_token else []
        return gpushare("usage", "--url", self.timekeeper_url, *token, *args)


def _pods(control_plane: ControlPlane, namespace: str, component: str) -> list[dict[str, Any]]:
    text = control_plane.kubectl(
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}",
        "-o",
        "json",
    ).stdout
    items: list[dict[str, Any]] = json.loads(text)["items"]
    return items


def _one_pod(control_plane: ControlPlane, component: str) -> dict[str, Any]:
    """A pod the controller manager made for the chart's Deployment of `component`."""
    found: list[dict[str, Any]] = []

    def made() -> bool:
        found[:] = _pods(control_plane, RELEASE_NAMESPACE, component)
        return bool(found)

    wait_until(made, timeout=60, what=f"a pod of the chart's {component} Deployment")
    return found[0]


def _run_to_completion(container: Container, log: Path) -> None:
    process = container.start(log)
    code = process.popen.wait(120)
    assert code == 0, f"{container.spec['name']} exited {code}:\n{process.log()}"


def _point_webhooks_at(control_plane: ControlPlane, port: int, namespace: str) -> None:
    """The chart's configurations, calling https://127.0.0.1:`port` and selecting only
    `namespace`; rules, conditions, policies and the CA bundle stay the chart's."""
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        configuration = json.loads(
            control_plane.kubectl("get", kind, "gpushare-webhook", "-o", "json").stdout
        )
        for webhook in configuration["webhooks"]:
            client = webhook["clientConfig"]
            path = client["service"]["path"]
            webhook["clientConfig"] = {
                "url": f"https://127.0.0.1:{port}{path}",
                "caBundle": client["caBundle"],
            }
            webhook["namespaceSelector"]["matchLabels"] = {"gpushare-test": namespace}
        control_plane.kubectl("replace", "-f", "-", input=json.dumps(configuration))


@pytest.fixture(
    params=[pytest.param(False, id="reads-open"), pytest.param(True, id="reads-need-a-token")]
)
def platform(
    control_plane: ControlPlane,
    namespace: str,
    make_node: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Platform]:
    reads_need_a_token: bool = request.param
    admin = tmp_path / "admin"
    admin.mkdir()
    # -- the admin, as the README and docs/deployment.md say ------------------------------------
    # `--ip 127.0.0.1` is the one addition: here the API server calls the webhook on loopback.
    ca_bundle = gpushare(
        "certs", "generate", "--out", str(admin / "certs"), "--ip", "127.0.0.1"
    ).stdout.strip()
    assert base64.b64decode(ca_bundle) == (admin / "certs" / "ca.crt").read_bytes()
    budgets = admin / "budgets.yaml"
    budgets.write_text(
        "defaults: {period: month, gpuHours: 100, warnAtPercent: 80, whenExhausted: deny}\n"
        f"namespaces:\n  {namespace}: {{gpuHours: 2}}\n"
    )
    assert "valid, 1 namespace listed" in gpushare("budgets", "check", str(budgets)).stdout
    discovery = control_plane.kubectl("get", "--raw", "/.well-known/openid-configuration")
    issuer = json.loads(discovery.stdout)["issuer"]
    values = admin / "my-values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "timekeeper": {
                    # The chart's default learns the issuer; only where the API server is
                    # differs here (a kubelet would give the pod kubernetes.default.svc).
                    "auth": {"apiServer": control_plane.url},
                    "budgetsConfigMap": "gpushare-budgets",
                    "readRequiresToken": reads_need_a_token,
                },
                "sidecar": {"reportIntervalSeconds": REPORT_INTERVAL_SECONDS},
            }
        )
    )
    # An earlier install's namespace (the documented one) must be gone before this one.
    wait_until(
        lambda: not _exists(control_plane, "namespace", RELEASE_NAMESPACE, "default"),
        timeout=90,
        what=f"namespace {RELEASE_NAMESPACE} of an earlier install deleted",
    )
    node = f"gpu-node-{uuid.uuid4().hex[:6]}"
    make_node(node, {"tencent.com/vcuda-core": 200, "tencent.com/vcuda-memory": 128})
    kubelet = Kubelet(control_plane, node, tmp_path / "kubelet")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    with ExitStack() as cleanup:
        cleanup.callback(listener.close)
        control_plane.helm(
            "install",
            RELEASE,
            str(CHART),
            "-n",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "-f",
            str(values),
            "--set",
            f"webhook.tls.caBundle={ca_bundle}",
            "--set-file",
            f"webhook.tls.cert={admin / 'certs' / 'tls.crt'}",
            "--set-file",
            f"webhook.tls.key={admin / 'certs' / 'tls.key'}",
        )
        cleanup.callback(_remove_release, control_plane)
        # At once, so that the chart's configurations (failure policy Fail) select no other
        # test's namespace for longer than needed.
        _point_webhooks_at(control_plane, port, namespace)
        control_plane.kubectl(
            "-n",
            RELEASE_NAMESPACE,
            "create",
            "configmap",
            "gpushare-budgets",
            f"--from-file={budgets}",
        )

        # -- the timekeeper, as its pod would run it ---------------------------------------------
        wait_until(
            lambda: _exists(control_plane, "configmap", "kube-root-ca.crt", RELEASE_NAMESPACE),
            timeout=30,
            what="the cluster CA published into the release namespace",
        )
        pod = _one_pod(control_plane, "timekeeper")
        pod = kubelet.bind(RELEASE_NAMESPACE, pod["metadata"]["name"])
        migrate = kubelet.container(pod, "migrate")
        migrate.rewrite_mount_paths()
        _run_to_completion(migrate, tmp_path / "migrate.log")
        server = kubelet.container(pod, "timekeeper")
        server.rewrite_mount_paths()
        server.rewrite("--host=0.0.0.0", "--host=127.0.0.1")
        server.rewrite("--port=8080", "--port=0")
        assert f"--oidc-discovery-url={control_plane.url}/.well-known/openid-configuration" in (
            server.argv()
        )
        assert not any(arg.startswith("--oidc-issuer") for arg in server.argv()), issuer
        timekeeper = server.start(tmp_path / "timekeeper.log")
        cleanup.callback(timekeeper.terminate)
        found: list[str] = []

        def listening() -> bool:
            assert timekeeper.popen.poll() is None, timekeeper.log()
            match = LISTENING_RE.search(timekeeper.log())
            if match:
                found.append(f"http://{match.group(1)}:{match.group(2)}")
            return bool(match)

        wait_until(listening, timeout=60, what="the timekeeper listening")
        timekeeper_url = found[0]
        wait_until(
            lambda: _status(f"{timekeeper_url}/readyz") == 200,
            timeout=30,
            what="the timekeeper ready (schema at head, budgets loaded)",
        )
        service = json.loads(
            control_plane.kubectl(
                "get", "service", "gpushare-timekeeper", "-n", RELEASE_NAMESPACE, "-o", "json"
            ).stdout
        )
        timekeeper_service = (
            f"gpushare-timekeeper.{RELEASE_NAMESPACE}.svc:{service['spec']['ports'][0]['port']}"
        )

        # -- the webhook, as its pod would run it ------------------------------------------------
        pod = _one_pod(control_plane, "webhook")
        pod = kubelet.bind(RELEASE_NAMESPACE, pod["metadata"]["name"])
        webhook_container = kubelet.container(pod, "webhook")
        webhook_container.rewrite_mount_paths()
        webhook_container.rewrite("--port=8443", f"--bind-fd={listener.fileno()}")
        webhook_container.rewrite(
            timekeeper_service,
            timekeeper_url.removeprefix("http://"),
            env=["GPUSHARE_WEBHOOK_TIMEKEEPER_URL"],
        )
        webhook = webhook_container.start(tmp_path / "webhook.log", pass_fds=[listener.fileno()])
        cleanup.callback(webhook.terminate)
        _webhook_admits(control_plane, namespace, webhook)
        yield Platform(timekeeper_url, timekeeper_service, kubelet, reads_need_a_token)


def _remove_release(control_plane: ControlPlane) -> None:
    control_plane.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", check=False)
    with control_plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        core.delete_namespace(RELEASE_NAMESPACE)
        # Pods bound to a Node wait for a kubelet to confirm their deletion; none will.
        core.delete_collection_namespaced_pod(RELEASE_NAMESPACE, grace_period_seconds=0)


def _exists(control_plane: ControlPlane, kind: str, name: str, namespace: str) -> bool:
    result = control_plane.kubectl("get", kind, name, "-n", namespace, check=False)
    return result.returncode == 0


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            status: int = reply.status
            return status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def _webhook_admits(control_plane: ControlPlane, namespace: str, webhook: Process) -> None:
    """Wait until a server-side dry run of the example pod comes back with the sidecar."""
    last: list[subprocess.CompletedProcess[str]] = []

    def admits() -> bool:
        assert webhook.popen.poll() is None, webhook.log()
        probe = control_plane.kubectl(
            "apply",
            "--dry-run=server",
            "-n",
            namespace,
            "-o",
            "json",
            "-f",
            str(EXAMPLE_POD),
            check=False,
        )
        last[:] = [probe]
        return probe.returncode == 0 and len(sidecars(json.loads(probe.stdout))) == 1

    try:
        wait_until(admits, timeout=30, what="the chart's webhook configurations to take effect")
    except AssertionError as err:
        raise AssertionError(f"{err}; last answer: {last[0].stderr or last[0].stdout}") from None


def _user_kubectl(control_plane: ControlPlane, namespace: str, home: Path) -> Any:
    """`kubectl` as a user holding the `edit` ClusterRole in their namespace only."""
    control_plane.kubectl("create", "serviceaccount", "alice", "-n", namespace)
    control_plane.kubectl(
        "create",
        "rolebinding",
        "alice-edit",
        "-n",
        namespace,
        "--clusterrole=edit",
        f"--serviceaccount={namespace}:alice",
    )
    token = control_plane.kubectl("create", "token", "alice", "-n", namespace).stdout.strip()
    kubeconfig = control_plane.kubeconfig_for("alice", token)
    home.mkdir()

    def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_tool("kubectl", args, home=home, kubeconfig=kubeconfig, check=check)

    return kubectl


def test_a_users_gpu_pod_is_admitted_run_and_charged_with_nothing_lost(
    control_plane: ControlPlane, namespace: str, platform: Platform, tmp_path: Path
) -> None:
    kubectl = _user_kubectl(control_plane, namespace, tmp_path / "alice")
    if platform.reads_need_a_token:
        # Reads need a token for the timekeeper's audience: the user's own will do.
        refused = gpushare("usage", "--url", platform.timekeeper_url, namespace, check=False)
        assert refused.returncode != 0 and "HTTP 401" in refused.stderr, refused
        platform.reader_token = kubectl(
            "create", "token", "alice", "-n", namespace, "--audience", "gpushare-timekeeper"
        ).stdout.strip()
    name = yaml.safe_load(EXAMPLE_POD.read_text())["metadata"]["name"]

    # -- the user applies the example ------------------------------------------------------------
    applied = kubectl("apply", "-n", namespace, "-f", str(EXAMPLE_POD))
    assert applied.stdout.strip() == f"pod/{name} created"
    assert applied.stderr == "", "no warning: the namespace is in budget"
    stored = platform.kubelet.read(namespace, name)
    (sidecar,) = sidecars(stored)
    assert stored["metadata"]["annotations"]["gpushare.io/budget-state"] == "in-budget"
    assert stored["spec"]["priorityClassName"] == "gpushare-standard"
    assert stored["spec"]["priority"] == 1000
    core_units = int(env_of(sidecar)["GPUSHARE_VCUDA_CORE"])
    main = next(c for c in stored["spec"]["containers"] if c["name"] != SIDECAR)
    assert core_units == int(main["resources"]["limits"]["tencent.com/vcuda-core"])
    assert env_of(sidecar)["GPUSHARE_REPORT_INTERVAL_SECONDS"] == str(REPORT_INTERVAL_SECONDS)

    # -- the kubelet's part ---------------------------------------------------------------------
    pod = platform.kubelet.bind(namespace, name)
    container = platform.kubelet.container(pod, SIDECAR)
    container.rewrite_mount_paths()
    container.rewrite(
        platform.timekeeper_service,
        platform.timekeeper_url.removeprefix("http://"),
        env=["GPUSHARE_TIMEKEEPER_URL"],
    )
    # Exactly the sidecar's environment; changed only where a node and cluster DNS would be.
    assert set(container.env) == {entry["name"] for entry in sidecar["env"]}
    assert sorted(old for old, _ in container.rewrites) == sorted(
        [
            "/var/lib/gpushare/spool",
            "/var/run/secrets/gpushare.io/serviceaccount",
            USAGE_DIR,  # the pod's shared usage folder, read-only in the sidecar
            platform.timekeeper_service,
        ]
    )
    assert container.env["GPUSHARE_POD_UID"] == pod["metadata"]["uid"]
    token = Path(container.env["GPUSHARE_TOKEN_FILE"]).read_text()
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "gpushare-token"]
    audience = volume["projected"]["sources"][0]["serviceAccountToken"]["audience"]
    assert claims["aud"] == [audience]
    assert claims["kubernetes.io"]["pod"] == {"name": name, "uid": pod["metadata"]["uid"]}
    assert claims["kubernetes.io"]["node"]["name"] == platform.kubelet.node

    spawned = datetime.now(UTC)
    process = container.start(tmp_path / "sidecar.log")
    try:
        seen_started: list[datetime] = []

        def started() -> bool:
            assert process.popen.poll() is None, process.log()
            if "started: first interval begins at" in process.log():
                seen_started.append(datetime.now(UTC))
            return bool(seen_started)

        wait_until(started, timeout=30, what="the sidecar's first interval")
        # It reports every period while the pod runs: a few reports in the ledger.
        reported: list[PodRow] = []

        def reports_arrive() -> bool:
            row = usage_row(platform, namespace, name)
            if row is not None:
                reported.append(row)
            return row is not None and row.reports >= 3

        wait_until(reports_arrive, timeout=60, what="three reports of the running pod")

        # -- the user deletes the pod; the kubelet stops the sidecar and confirms -----------------
        kubectl("delete", "pod", name, "-n", namespace, "--wait=false")
        assert platform.kubelet.read(namespace, name)["metadata"]["deletionTimestamp"]
        terminated = datetime.now(UTC)
        assert process.terminate() == 0, process.log()
        exited = datetime.now(UTC)
    finally:
        process.kill()
    with control_plane.api_client() as client:
        kubernetes.client.CoreV1Api(client).delete_namespaced_pod(
            name, namespace, grace_period_seconds=0
        )
    assert "stopped: every interval delivered" in process.log()
    spool = Path(container.env["GPUSHARE_SPOOL_DIR"])
    assert sorted(p.name for p in spool.glob("0*.json")) == [], "an interval left undelivered"

    # -- what the user sees -----------------------------------------------------------------------
    row = usage_row(platform, namespace, name)
    assert row is not None
    share = core_units / 100
    # Every second the sidecar lived is charged once: from its start (after the process was
    # spawned, by the time its log said so) to SIGTERM (before it exited).
    assert spawned <= row.first_start <= seen_started[0]
    assert terminated <= row.last_end <= exited
    covered_seconds = (row.last_end - row.first_start).total_seconds()
    # The intervals are contiguous: what is charged is the whole span they cover (a lost
    # interval, a whole period of it, would show here).
    assert row.gpu_seconds == pytest.approx(share * covered_seconds, abs=1e-3), row
    # One report per period, plus the one SIGTERM closed.
    assert row.reports in (
        int(covered_seconds // REPORT_INTERVAL_SECONDS),
        int(covered_seconds // REPORT_INTERVAL_SECONDS) + 1,
    ), row
    assert row.reports > reported[-1].reports, "SIGTERM delivered the open interval"
    # The expected charge for the pod's life as the test saw it, within what the sidecar's
    # start-up and shutdown took (each well under one reporting period here).
    expected = share * (terminated - spawned).total_seconds()
    slack = share * ((seen_started[0] - spawned) + (exited - terminated)).total_seconds()
    assert expected - slack <= row.gpu_seconds <= expected + slack, (row, expected, slack)
    assert row.gpu_hours == pytest.approx(row.gpu_seconds / 3600, abs=1e-6)
    # The namespace's status shows the same use against the budget from the admin's file.
    status = row.namespace_status
    assert (status["state"], status["budgetGpuHours"]) == ("in-budget", 2.0), status
    assert status["usedGpuHours"] == pytest.approx(row.gpu_hours, abs=1e-6), status
    # And the table a user reads shows the pod's row.
    table = platform.usage(namespace).stdout
    (line,) = [line.split() for line in table.splitlines() if line.startswith(name + " ")]
    assert line[1] == f"{row.gpu_hours:,.4f}", table
