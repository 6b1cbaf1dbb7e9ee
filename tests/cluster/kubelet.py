"""The kubelet's part for a pod on the real API server, played by the tests.

There is no kubelet here, so a test that wants a pod's containers to run does what the
kubelet would do, from what the API server stored, and nothing more:

- bind the pod to a Node (the `pods/binding` subresource, as the scheduler does);
- materialise the volumes its container mounts into a temporary folder: `emptyDir` and
  `persistentVolumeClaim` as empty folders, `configMap` and `secret` as one file per key,
  `projected` sources as the kubelet writes them, a `serviceAccountToken` source through
  TokenRequest with the source's audience and lifetime, bound to the pod (name and UID);
- resolve the container's environment (`value`, `$(VAR)` references, downward API fields,
  ConfigMap and Secret keys, `envFrom`);
- run the container's `command` and `args` as a process, from this virtual environment's
  `bin` folder (where the image would have `gpushare`).

What cannot be kept, and is rewritten openly by `Container.rewrite`: the paths under each
mount become the materialised folders, and the caller names its own rewrites (listening
addresses, Service DNS names that only cluster DNS would resolve). The container's user,
resource limits and security context are not applied.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes.client

from tests.cluster.controlplane import ControlPlane

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known names replaced, `$$` escapes, others kept."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return variables.get(match.group(1), match.group(0))

    return _REFERENCE.sub(one, text)


def _field(pod: Mapping[str, Any], path: str) -> str:
    """A downward API `fieldRef.fieldPath` of the stored pod."""
    metadata, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": metadata["name"],
        "metadata.namespace": metadata["namespace"],
        "metadata.uid": metadata["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
    }
    if path in simple:
        return str(simple[path])
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ValueError(f"fieldRef {path!r} is not played here")


@dataclass
class Container:
    """One container of a pod, ready to run as a process."""

    pod: dict[str, Any]
    spec: dict[str, Any]
    env: dict[str, str]
    """The resolved environment, as the kubelet would give it."""
    mounts: dict[str, Path]
    """mountPath -> the folder that stands for it."""
    rewrites: list[tuple[str, str]] = field(default_factory=list)
    """Every (was, now) rewrite applied, so a test can say what it changed."""

    def rewrite(self, old: str, new: str, *, env: Sequence[str] | None = None) -> None:
        """Replace `old` by `new` in the arguments and the environment values (only in the
        variables `env` when given); `old` must occur."""
        found = False
        for name, value in self.env.items():
            if (env is None or name in env) and old in value:
                self.env[name] = value.replace(old, new)
                found = True
        for key in ("command", "args") if env is None else ():
            items = self.spec.get(key) or []
            if any(old in item for item in items):
                self.spec[key] = [item.replace(old, new) for item in items]
                found = True
        if not found:
            raise AssertionError(f"{old!r} is in neither the environment nor the arguments")
        self.rewrites.append((old, new))

    def rewrite_mount_paths(self) -> None:
        """Paths under each mount (in the environment and the arguments) become the folder
        that stands for it: one pass, the longest mount path first."""
        if not self.mounts:
            return
        by_length = sorted(self.mounts, key=len, reverse=True)
        pattern = re.compile(
            r"(?<![\w.-])(" + "|".join(re.escape(path) for path in by_length) + r")(?=/|$)"
        )

        def one(text: str) -> str:
            def swap(match: re.Match[str]) -> str:
                new = str(self.mounts[match.group(1)])
                self.rewrites.append((match.group(1), new))
                return new

            return pattern.sub(swap, text)

        self.env = {name: one(value) for name, value in self.env.items()}
        for key in ("command", "args"):
            if key in self.spec:
                self.spec[key] = [one(item) for item in self.spec[key]]

    def argv(self) -> list[str]:
        """`command` + `args` with `$(VAR)` expanded from the environment."""
        return [
            expand(item, self.env) for item in [*self.spec["command"], *self.spec.get("args", [])]
        ]

    def start(self, log: Path, *, pass_fds: Sequence[int] = ()) -> Process:
        """Run the container's command with exactly its environment (plus PATH and HOME)."""
        bin_dir = Path(sys.executable).parent
        environment = {
            **self.env,
            "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(log.parent),
        }
        with log.open("wb") as out:
            process = subprocess.Popen(
                self.argv(),
                env=environment,
                cwd=log.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=pass_fds,
                start_new_session=True,
            )
        return Process(process, log)


@dataclass
class Process:
    """A container's process (its own process group)."""

    popen: subprocess.Popen[bytes]
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, as the kubelet stops a container; the exit code."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
            raise AssertionError(f"no exit {timeout} s after SIGTERM:\n{self.log()}") from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


class Kubelet:
    """Plays the kubelet of one Node for the pods bound to it (see the module docstring)."""

    def __init__(self, control_plane: ControlPlane, node: str, root: Path) -> None:
        self.control_plane = control_plane
        self.node = node
        self.root = root

    def _core(self, client: Any) -> Any:
        return kubernetes.client.CoreV1Api(client)

    def read(self, namespace: str, name: str) -> dict[str, Any]:
        with self.control_plane.api_client() as client:
            pod = self._core(client).read_namespaced_pod(name, namespace)
            stored: dict[str, Any] = client.sanitize_for_serialization(pod)
        return stored

    def bind(self, namespace: str, name: str) -> dict[str, Any]:
        """Bind the pod to this Node (`pods/binding`, as kube-scheduler does); the stored pod."""
        with self.control_plane.api_client() as client:
            self._core(client).create_namespaced_pod_binding(
                name,
                namespace,
                {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": name},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
                },
                _preload_content=False,  # the client cannot read the Status it answers
            )
        pod = self.read(namespace, name)
        assert pod["spec"]["nodeName"] == self.node
        return pod

    def container(self, pod: dict[str, Any], name: str) -> Container:
        """The container `name` of the (bound) pod: volumes materialised, env resolved."""
        spec = pod["spec"]
        assert spec.get("nodeName") == self.node, "the kubelet runs only pods bound to its Node"
        (found,) = [
            c
            for c in [*(spec.get("initContainers") or []), *spec["containers"]]
            if c["name"] == name
        ]
        container = dict(found)
        volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
        pod_dir = self.root / pod["metadata"]["uid"]
        mounts: dict[str, Path] = {}
        with self.control_plane.api_client() as client:
            core = self._core(client)
            for mount in container.get("volumeMounts") or []:
                folder = pod_dir / "volumes" / mount["name"]
                if not folder.exists():
                    folder.mkdir(parents=True)
                    self._materialise(core, pod, volumes[mount["name"]], folder)
                mounts[mount["mountPath"]] = folder / mount.get("subPath", "")
            env = self._environment(core, pod, container)
        return Container(pod, container, env, mounts)

    # -- volumes --------------------------------------------------------------------------------

    def _materialise(
        self, core: Any, pod: dict[str, Any], volume: dict[str, Any], folder: Path
    ) -> None:
        namespace = pod["metadata"]["namespace"]
        if "emptyDir" in volume or "persistentVolumeClaim" in volume:
            return  # an empty folder (a claim's volume starts empty too)
        if "configMap" in volume:
            source = volume["configMap"]
            data = core.read_namespaced_config_map(source["name"], namespace).data or {}
            self._write_keys(folder, data, source.get("items"))
            return
        if "secret" in volume:
            source = volume["secret"]
            data = core.read_namespaced_secret(source["secretName"], namespace).data or {}
            decoded = {key: base64.b64decode(value) for key, value in data.items()}
            self._write_keys(folder, decoded, source.get("items"))
            return
        if "projected" in volume:
            for source in volume["projected"]["sources"]:
                self._project(core, pod, source, folder)
            return
        raise ValueError(f"volume {volume['name']!r}: this kind is not played here")

    @staticmethod
    def _write_keys(
        folder: Path, data: Mapping[str, str | bytes], items: list[dict[str, str]] | None
    ) -> None:
        chosen = items or [{"key": key, "path": key} for key in data]
        for item in chosen:
            value = data[item["key"]]
            target = folder / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(value if isinstance(value, bytes) else value.encode())

    def _project(
        self, core: Any, pod: dict[str, Any], source: dict[str, Any], folder: Path
    ) -> None:
        metadata = pod["metadata"]
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            (folder / token["path"]).write_text(
                self.token(
                    pod,
                    audience=token.get("audience"),
                    expiration_seconds=token.get("expirationSeconds", 3600),
                )
            )
        elif "configMap" in source:
            data = core.read_namespaced_config_map(
                source["configMap"]["name"], metadata["namespace"]
            ).data
            self._write_keys(folder, data or {}, source["configMap"].get("items"))
        elif "secret" in source:
            data = core.read_namespaced_secret(source["secret"]["name"], metadata["namespace"]).data
            decoded = {key: base64.b64decode(value) for key, value in (data or {}).items()}
            self._write_keys(folder, decoded, source["secret"].get("items"))
        elif "downwardAPI" in source:
            for item in source["downwardAPI"]["items"]:
                (folder / item["path"]).write_text(_field(pod, item["fieldRef"]["fieldPath"]))
        else:
            raise ValueError(f"projected source {sorted(source)} is not played here")

    def token(self, pod: dict[str, Any], *, audience: str | None, expiration_seconds: int) -> str:
        """TokenRequest for the pod's ServiceAccount, bound to the pod, as the kubelet asks."""
        metadata = pod["metadata"]
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                # No audience in the source: the API server's own (kube-api-access).
                "audiences": [audience] if audience else [],
                "expirationSeconds": expiration_seconds,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                },
            },
        }
        with self.control_plane.api_client() as client:
            answer = self._core(client).create_namespaced_service_account_token(
                pod["spec"]["serviceAccountName"], metadata["namespace"], body
            )
        token: str = answer.status.token
        return token

    # -- environment ----------------------------------------------------------------------------

    def _environment(
        self, core: Any, pod: dict[str, Any], container: dict[str, Any]
    ) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                data = core.read_namespaced_config_map(
                    source["configMapRef"]["name"], namespace
                ).data
                env.update({prefix + k: v for k, v in (data or {}).items()})
            else:
                data = core.read_namespaced_secret(source["secretRef"]["name"], namespace).data
                env.update(
                    {prefix + k: base64.b64decode(v).decode() for k, v in (data or {}).items()}
                )
        for entry in container.get("env") or []:
            env[entry["name"]] = self._value(core, pod, entry, env)
        return env

    def _value(
        self, core: Any, pod: dict[str, Any], entry: dict[str, Any], env: Mapping[str, str]
    ) -> str:
        if "valueFrom" not in entry:
            return expand(entry.get("value", ""), env)
        source = entry["valueFrom"]
        namespace = pod["metadata"]["namespace"]
        if "fieldRef" in source:
            return _field(pod, source["fieldRef"]["fieldPath"])
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            value: str = core.read_namespaced_config_map(ref["name"], namespace).data[ref["key"]]
            return value
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = core.read_namespaced_secret(ref["name"], namespace).data
            return base64.b64decode(data[ref["key"]]).decode()
        raise ValueError(f"env {entry['name']}: {sorted(source)} is not played here")
