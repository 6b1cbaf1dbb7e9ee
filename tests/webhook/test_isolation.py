"""A GPU pod cannot switch isolation off from its own spec: the variables the node hands in
(GPUs, hook, limits, SM share) are refused in `env`, and `envFrom` needs a harmless prefix."""

from __future__ import annotations

from typing import Any

import pytest

from tests.webhook.builders import (
    FakeBudgets,
    admitted,
    as_requested,
    container,
    gpu,
    pod,
    review,
)
from tests.webhook.test_mutation import mutate
from webhook import isolation
from webhook.app import create_app
from webhook.settings import Settings

NODE_SETS = (
    "on GPU pods the node sets NVIDIA_VISIBLE_DEVICES, LD_PRELOAD, CUDA_MPS_*, GPUSHARE_* (they"
    " carry the GPU isolation), so the pod spec may not"
)


def _env(**variables: str) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in variables.items()]


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        pytest.param(
            pod(container(limits=gpu(), env=_env(NVIDIA_VISIBLE_DEVICES="all"))),
            [f'container "train" sets NVIDIA_VISIBLE_DEVICES; {NODE_SETS}'],
            id="visible-devices-all",
        ),
        pytest.param(
            pod(container(limits=gpu(), env=_env(LD_PRELOAD=""))),
            [f'container "train" sets LD_PRELOAD; {NODE_SETS}'],
            id="preload-emptied",
        ),
        pytest.param(
            pod(
                container(limits=gpu()),
                init=[container("setup", env=_env(CUDA_MPS_PIPE_DIRECTORY="/tmp/mps"))],
            ),
            [f'initContainer "setup" sets CUDA_MPS_PIPE_DIRECTORY; {NODE_SETS}'],
            id="mps-in-an-init-container-without-gpu",
        ),
        pytest.param(
            pod(
                container(
                    limits=gpu(),
                    env=[
                        {
                            "name": "GPUSHARE_MEMORY_LIMIT",
                            "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}},
                        }
                    ],
                ),
                container("helper", env=_env(GPUSHARE_CORE_LIMIT="100")),
            ),
            [
                f'container "train" sets GPUSHARE_MEMORY_LIMIT; {NODE_SETS}',
                f'container "helper" sets GPUSHARE_CORE_LIMIT; {NODE_SETS}',
            ],
            id="limits-from-value-from-and-in-a-second-container",
        ),
        pytest.param(
            pod(container(limits=gpu(), envFrom=[{"configMapRef": {"name": "settings"}}])),
            [
                'container "train" takes envFrom configMap "settings" without a prefix; on a GPU'
                " pod its keys could set NVIDIA_VISIBLE_DEVICES, LD_PRELOAD, CUDA_MPS_*,"
                " GPUSHARE_*, which the node sets and admission cannot read: give it a prefix"
                " such as APP_"
            ],
            id="env-from-without-prefix",
        ),
        pytest.param(
            pod(
                container(
                    limits=gpu(),
                    envFrom=[
                        {"secretRef": {"name": "creds"}, "prefix": "NVIDIA_"},
                        {"configMapRef": {"name": "tuning"}, "prefix": "GPU"},
                        {"configMapRef": {"name": "mps"}, "prefix": "CUDA_"},
                    ],
                )
            ),
            [
                f'container "train" takes envFrom secret "creds" with prefix {p!r}, which can'
                " form NVIDIA_VISIBLE_DEVICES, LD_PRELOAD, CUDA_MPS_*, GPUSHARE_*; the node"
                " sets those on GPU pods: choose a prefix none of them starts with"
                for p in ("NVIDIA_",)
            ]
            + [
                f'container "train" takes envFrom configMap "{name}" with prefix {p!r}, which'
                " can form NVIDIA_VISIBLE_DEVICES, LD_PRELOAD, CUDA_MPS_*, GPUSHARE_*; the node"
                " sets those on GPU pods: choose a prefix none of them starts with"
                for name, p in (("tuning", "GPU"), ("mps", "CUDA_"))
            ],
            id="env-from-prefixes-that-can-form-protected-names",
        ),
        pytest.param(
            pod(
                container(
                    limits=gpu(),
                    env=_env(CUDA_VISIBLE_DEVICES="0", NVIDIA_DRIVER_CAPABILITIES="compute"),
                    envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "APP_"}],
                )
            ),
            [],
            id="harmless-names-and-prefix-admitted",
        ),
    ],
)
def test_protected_environment_on_gpu_pods(subject: dict[str, Any], expected: list[str]) -> None:
    body = mutate(as_requested(subject))
    if not expected:
        assert body["response"]["allowed"] is True
        return
    assert body["response"]["allowed"] is False
    assert body["response"]["status"]["message"] == "pod rejected: " + "; ".join(expected)


def test_pods_without_gpu_are_not_the_webhooks_business() -> None:
    subject = pod(container(limits={"cpu": "1"}, env=_env(NVIDIA_VISIBLE_DEVICES="all")))
    assert mutate(subject)["response"] == {"uid": review(None)["request"]["uid"], "allowed": True}


def test_validation_refuses_what_a_later_step_added() -> None:
    """/validate sees the pod after every mutating step: a protected variable added after
    gpushare's last invocation is still refused."""
    stored = admitted(pod())
    stored["spec"]["containers"][0]["env"] = _env(LD_PRELOAD="/opt/other.so")
    app = create_app(Settings(timekeeper_url="http://tk:8080"), budgets=FakeBudgets())
    body = app.test_client().post("/validate", json=review(stored)).json
    assert body is not None
    answer = body["response"]
    assert answer["allowed"] is False
    assert answer["status"]["message"] == (
        f'pod rejected: container "train" sets LD_PRELOAD; {NODE_SETS}'
    )


@pytest.mark.parametrize(
    ("prefix", "dangerous"),
    [
        pytest.param("N", True, id="N"),
        pytest.param("LD_", True, id="LD_"),
        pytest.param("GPUSHARE_X_", True, id="inside-a-protected-family"),
        pytest.param("CUDA_MPS_", True, id="CUDA_MPS_"),
        pytest.param("NVIDIA_VISIBLE_DEVICES_", False, id="longer-than-the-name"),
        pytest.param("LD_LIBRARY_", False, id="LD_LIBRARY_"),
        pytest.param("APP_", False, id="APP_"),
    ],
)
def test_prefixes(prefix: str, dangerous: bool) -> None:
    assert isolation.prefix_can_form_protected(prefix) is dangerous
