"""Environment a GPU pod may not set, because the node hands it in (pure logic, stdlib only).

On the node, the device plugin gives each GPU container its GPUs (`NVIDIA_VISIBLE_DEVICES`),
the enforcement hook (`LD_PRELOAD`), its limits (`GPUSHARE_*`) and its SM share
(`CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`). The kubelet puts a container's own `env` after the
device plugin's, so a value written in the pod spec would win and switch isolation off: more
GPUs, no hook, other limits. These names are therefore refused in every container of a GPU
pod, and `envFrom` sources, whose keys are not known at admission, need a prefix that none of
them starts with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from webhook.validation import ContainerRef

PROTECTED_NAMES = ("NVIDIA_VISIBLE_DEVICES", "LD_PRELOAD")
"""Variables set by the node that a GPU pod may not set itself."""
PROTECTED_PREFIXES = ("CUDA_MPS_", "GPUSHARE_")
"""Families of variables set by the node (or by gpushare) that a GPU pod may not set."""

_LISTED = ", ".join([*PROTECTED_NAMES, *(prefix + "*" for prefix in PROTECTED_PREFIXES)])


def is_protected(name: str) -> bool:
    """Whether a pod spec may not set this variable on a GPU pod."""
    return name in PROTECTED_NAMES or name.startswith(PROTECTED_PREFIXES)


def prefix_can_form_protected(prefix: str) -> bool:
    """Whether some key behind this envFrom prefix could make a protected name.

    `NVIDIA_` + `VISIBLE_DEVICES` and `GPU` + `SHARE_CORE_LIMIT` both can; `APP_` cannot.
    """
    targets = [*PROTECTED_NAMES, *PROTECTED_PREFIXES]
    return any(target.startswith(prefix) for target in targets) or prefix.startswith(
        PROTECTED_PREFIXES
    )


def container_problems(
    ref: ContainerRef, container: Mapping[str, Any], allowed: Iterable[str] = ()
) -> list[str]:
    """Every protected variable the container sets in `env`, and every `envFrom` source that
    could set one; `allowed` names the variables gpushare itself puts there (its sidecar)."""
    problems: list[str] = []
    exempt = frozenset(allowed)
    who = ref.describe()
    for entry in _list(container.get("env")):
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and is_protected(name) and name not in exempt:
            problems.append(
                f"{who} sets {name}; on GPU pods the node sets {_LISTED} (they carry the GPU"
                " isolation), so the pod spec may not"
            )
    for entry in _list(container.get("envFrom")):
        if not isinstance(entry, dict):
            continue
        source = _describe_source(entry)
        prefix = entry.get("prefix") or ""
        if not isinstance(prefix, str):
            continue  # not a Pod the API server accepts; it refuses it itself
        if prefix == "":
            problems.append(
                f"{who} takes envFrom {source} without a prefix; on a GPU pod its keys could set"
                f" {_LISTED}, which the node sets and admission cannot read: give it a prefix"
                " such as APP_"
            )
        elif prefix_can_form_protected(prefix):
            problems.append(
                f"{who} takes envFrom {source} with prefix {prefix!r}, which can form {_LISTED};"
                " the node sets those on GPU pods: choose a prefix none of them starts with"
            )
    return problems


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _describe_source(entry: Mapping[str, Any]) -> str:
    for kind in ("configMapRef", "secretRef"):
        reference = entry.get(kind)
        if isinstance(reference, dict):
            label = "configMap" if kind == "configMapRef" else "secret"
            return f'{label} "{reference.get("name", "")}"'
    return "a source"
