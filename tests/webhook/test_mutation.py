"""/mutate: priority from the budget, annotations merged, the sidecar injected exactly once.

Every patched pod is applied with jsonpatch and checked as a V1Pod against the Kubernetes
OpenAPI schema (`apply_and_check`).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from tests.webhook.builders import (
    FakeBudgets,
    apply_and_check,
    container,
    decode_patch,
    gpu,
    pod,
    review,
    status,
)
from webhook import injection
from webhook.app import create_app
from webhook.settings import Settings

STATE = "gpushare.io/budget-state"
INJECTED = "gpushare.io/sidecar-injected"
TIMEKEEPER = "http://timekeeper.gpushare-system.svc:8080"


def mutate(
    subject: dict[str, Any] | None,
    *,
    budgets: FakeBudgets | None = None,
    operation: str = "CREATE",
    namespace: str = "team-a",
    **settings: Any,
) -> dict[str, Any]:
    app = create_app(
        Settings(timekeeper_url=TIMEKEEPER, **settings), budgets=budgets or FakeBudgets()
    )
    response = app.test_client().post(
        "/mutate", json=review(subject, operation=operation, namespace=namespace)
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    assert body["apiVersion"] == "admission.k8s.io/v1"
    assert body["kind"] == "AdmissionReview"
    assert body["response"]["uid"] == review(None)["request"]["uid"]
    return body


def summary(patched: dict[str, Any]) -> dict[str, Any]:
    """The parts of a pod the webhook may change, in a form a case table can spell out."""
    spec = patched["spec"]
    return {
        "annotations": patched["metadata"].get("annotations"),
        "priorityClassName": spec.get("priorityClassName"),
        "priority": spec.get("priority"),
        "preemptionPolicy": spec.get("preemptionPolicy"),
        "initContainers": [c["name"] for c in spec.get("initContainers") or []],
        "containers": [c["name"] for c in spec["containers"]],
        "volumes": [v["name"] for v in spec.get("volumes") or []],
    }


INJECTED_VOLUMES = ["gpushare-token", "gpushare-spool", "gpushare-usage"]
USAGE_MOUNT = {"name": "gpushare-usage", "mountPath": "/var/run/gpushare-usage"}


def without_usage_mount(container: dict[str, Any]) -> dict[str, Any]:
    """The container as its creator wrote it: the usage folder's mount taken out (and the
    list, where the webhook created it)."""
    result = dict(container)
    mounts = [m for m in result.get("volumeMounts", []) if m != USAGE_MOUNT]
    if mounts:
        result["volumeMounts"] = mounts
    else:
        result.pop("volumeMounts", None)
    return result


@pytest.mark.parametrize(
    ("subject", "budget", "options", "expected"),
    [
        pytest.param(
            pod(annotations={"team": "vision"}, priority=0, preemptionPolicy="Never"),
            status("in-budget"),
            {},
            {
                "annotations": {"team": "vision", STATE: "in-budget", INJECTED: "native"},
                "priorityClassName": "gpushare-standard",
                "priority": None,
                "preemptionPolicy": None,
                "initContainers": ["gpushare-sidecar"],
                "containers": ["train"],
                "volumes": INJECTED_VOLUMES,
            },
            id="in-budget-standard-priority-recomputed",
        ),
        pytest.param(
            pod(),
            status("warning"),
            {},
            {
                "annotations": {STATE: "warning", INJECTED: "native"},
                "priorityClassName": "gpushare-standard",
                "priority": None,
                "preemptionPolicy": None,
                "initContainers": ["gpushare-sidecar"],
                "containers": ["train"],
                "volumes": INJECTED_VOLUMES,
            },
            id="warning-standard-annotations-created",
        ),
        pytest.param(
            pod(),
            status("unlimited", budget=None),
            {},
            {
                "annotations": {STATE: "unlimited", INJECTED: "native"},
                "priorityClassName": "gpushare-standard",
                "priority": None,
                "preemptionPolicy": None,
                "initContainers": ["gpushare-sidecar"],
                "containers": ["train"],
                "volumes": INJECTED_VOLUMES,
            },
            id="unlimited-standard",
        ),
        pytest.param(
            pod(priority=1000, priorityClassName="gpushare-standard"),
            status("exhausted", "deprioritize"),
            {},
            {
                "annotations": {STATE: "exhausted", INJECTED: "native"},
                "priorityClassName": "gpushare-overbudget",
                "priority": None,
                "preemptionPolicy": None,
                "initContainers": ["gpushare-sidecar"],
                "containers": ["train"],
                "volumes": INJECTED_VOLUMES,
            },
            id="exhausted-deprioritize-overbudget",
        ),
        pytest.param(
            pod(
                container("main", limits=gpu(40, 4)),
                init=[container("prepare", limits={"cpu": "1"})],
                volumes=[{"name": "data", "emptyDir": {}}],
            ),
            status("in-budget"),
            {},
            {
                "annotations": {STATE: "in-budget", INJECTED: "native"},
                "priorityClassName": "gpushare-standard",
                "priority": None,
                "preemptionPolicy": None,
                "initContainers": ["gpushare-sidecar", "prepare"],
                "containers": ["main"],
                "volumes": ["data", *INJECTED_VOLUMES],
            },
            id="native-sidecar-first-volumes-appended",
        ),
        pytest.param(
            pod(container("a", limits=gpu(40, 4)), container("b", limits={"cpu": "1"})),
            status("in-budget"),
            {"sidecar_mode": "classic"},
            {
                "annotations": {STATE: "in-budget", INJECTED: "classic"},
                "priorityClassName": "gpushare-standard",
                "priority": None,
                "preemptionPolicy": None,
                "initContainers": [],
                "containers": ["a", "b", "gpushare-sidecar"],
                "volumes": INJECTED_VOLUMES,
            },
            id="classic-sidecar-appended",
        ),
        pytest.param(
            pod(annotations={INJECTED: "native"}, priorityClassName="gpushare-standard"),
            status("in-budget"),
            {},
            {
                "annotations": {INJECTED: "native", STATE: "in-budget"},
                "priorityClassName": "gpushare-standard",
                "priority": None,
                "preemptionPolicy": None,
                "initContainers": ["gpushare-sidecar"],
                "containers": ["train"],
                "volumes": INJECTED_VOLUMES,
            },
            id="annotation-alone-does-not-skip-injection",
        ),
        pytest.param(
            pod(annotations={STATE: "in-budget"}),
            status("exhausted", "deprioritize"),
            {},
            {
                "annotations": {STATE: "exhausted", INJECTED: "native"},
                "priorityClassName": "gpushare-overbudget",
                "priority": None,
                "preemptionPolicy": None,
                "initContainers": ["gpushare-sidecar"],
                "containers": ["train"],
                "volumes": INJECTED_VOLUMES,
            },
            id="forged-budget-state-overwritten",
        ),
    ],
)
def test_mutation(
    subject: dict[str, Any], budget: Any, options: dict[str, Any], expected: dict[str, Any]
) -> None:
    original = copy.deepcopy(subject)
    body = mutate(subject, budgets=FakeBudgets(default=budget), **options)
    assert body["response"]["allowed"] is True
    patched = apply_and_check(subject, decode_patch(body))
    assert summary(patched) == expected
    assert subject == original, "the review's pod must not be changed in place"
    user_containers = [c for c in patched["spec"]["containers"] if c["name"] != "gpushare-sidecar"]
    # the one change to a user container: a GPU container gets the pod's usage folder
    assert [without_usage_mount(c) for c in user_containers] == original["spec"]["containers"]
    for before, after in zip(original["spec"]["containers"], user_containers, strict=True):
        holds_gpu_time = "tencent.com/vcuda-core" in (before.get("resources") or {}).get(
            "limits", {}
        )
        assert (USAGE_MOUNT in after.get("volumeMounts", [])) == holds_gpu_time, after


@pytest.mark.parametrize(
    ("subject", "operation", "namespace", "options"),
    [
        pytest.param(pod(), "UPDATE", "team-a", {}, id="update-never-mutated"),
        pytest.param(None, "DELETE", "team-a", {}, id="delete-allowed"),
        pytest.param(pod(container(limits={"cpu": "1"})), "CREATE", "team-a", {}, id="no-gpu"),
        pytest.param(
            pod(container(limits=gpu(150, 1)), namespace="kube-system"),
            "CREATE",
            "kube-system",
            {},
            id="system-namespace-untouched",
        ),
        pytest.param(
            pod(namespace="ml-infra"),
            "CREATE",
            "ml-infra",
            {"system_namespaces": ("ml-infra",)},
            id="configured-system-namespace-untouched",
        ),
    ],
)
def test_allowed_untouched(
    subject: dict[str, Any] | None, operation: str, namespace: str, options: dict[str, Any]
) -> None:
    budgets = FakeBudgets()
    body = mutate(subject, budgets=budgets, operation=operation, namespace=namespace, **options)
    assert body["response"] == {"uid": review(None)["request"]["uid"], "allowed": True}
    assert budgets.calls == [], "no budget lookup for pods that are not mutated"


@pytest.mark.parametrize(
    ("subject", "budgets", "options", "message"),
    [
        pytest.param(
            pod(),
            FakeBudgets(default=status("exhausted", "deny", used=10.25, budget=10.0)),
            {},
            'pod rejected: namespace "team-a" has used 10.25 of its 10 GPU-hours budget and'
            " refuses new GPU pods when it is exhausted; the budget refills at"
            " 2026-12-01T00:00:00Z",
            id="exhausted-deny-with-figures-and-refill",
        ),
        pytest.param(
            pod(),
            FakeBudgets(
                default=status(
                    "exhausted",
                    "deny",
                    used=40.5,
                    budget=40.0,
                    period_end="2026-11-21T06:15:00Z",
                    refills_at="2026-11-23T14:30:00Z",
                )
            ),
            {},
            'pod rejected: namespace "team-a" has used 40.50 of its 40 GPU-hours budget and'
            " refuses new GPU pods when it is exhausted; the budget refills at"
            " 2026-11-23T14:30:00Z",
            id="exhausted-rolling-deny-refills-when-use-slides-out",
        ),
        pytest.param(
            pod(container(limits=gpu(150, 8))),
            FakeBudgets(),
            {},
            'pod rejected: container "train" asks tencent.com/vcuda-core=150; above 100 it must'
            " be a multiple of 100",
            id="invalid-request-refused",
        ),
        pytest.param(
            pod(),
            FakeBudgets(down=True),
            {"failure_policy": "fail-closed"},
            'pod rejected: the GPU budget of namespace "team-a" cannot be checked (timekeeper'
            " unreachable: connection refused); the webhook's failure policy is fail-closed",
            id="timekeeper-down-fail-closed",
        ),
        pytest.param(
            pod(volumes=[{"name": "gpushare-spool", "emptyDir": {}}]),
            FakeBudgets(),
            {},
            'pod rejected: volume "gpushare-spool" is reserved for the gpushare accounting sidecar',
            id="reserved-volume-name",
        ),
    ],
)
def test_refused(
    subject: dict[str, Any], budgets: FakeBudgets, options: dict[str, Any], message: str
) -> None:
    body = mutate(subject, budgets=budgets, **options)
    assert body["response"] == {
        "uid": review(None)["request"]["uid"],
        "allowed": False,
        "status": {"code": 403, "reason": "Forbidden", "message": message},
    }


@pytest.mark.parametrize(
    ("subject", "budgets", "state", "warnings"),
    [
        pytest.param(
            pod(),
            FakeBudgets(down=True),
            "in-budget",
            [
                'gpushare: the GPU budget of namespace "team-a" is unknown (timekeeper'
                " unreachable: connection refused); admitted as in-budget by the webhook's"
                " failure policy fail-open"
            ],
            id="timekeeper-down-fail-open",
        ),
        pytest.param(
            pod(),
            FakeBudgets(default=status("warning", used=8.5)),
            "warning",
            [
                'gpushare: namespace "team-a" has used 8.50 of its 10 GPU-hours budget (85%);'
                " it refills at 2026-12-01T00:00:00Z"
            ],
            id="warning-percent-and-refill",
        ),
        pytest.param(
            pod(),
            FakeBudgets(default=status("in-budget", used=2.0)),
            "in-budget",
            [],
            id="in-budget-no-warning",
        ),
        pytest.param(
            pod(),
            FakeBudgets(
                default=status(
                    "exhausted", used=10.25, refills_at="2026-11-20T09:15:00Z", budget=10.0
                )
            ),
            "exhausted",
            [
                'gpushare: namespace "team-a" has used 10.25 of its 10 GPU-hours budget (102%),'
                " so this pod runs at PriorityClass gpushare-overbudget: preemptible (in-budget"
                " GPU pods may evict it) until the budget refills at 2026-11-20T09:15:00Z"
            ],
            id="deprioritized-why-and-refill",
        ),
        pytest.param(
            pod(),
            FakeBudgets(default=status("exhausted", used=0.0, budget=0.0)),
            "exhausted",
            [
                'gpushare: namespace "team-a" has used 0.00 of its 0 GPU-hours budget, so this'
                " pod runs at PriorityClass gpushare-overbudget: preemptible (in-budget GPU pods"
                " may evict it) until the budget refills at 2026-12-01T00:00:00Z"
            ],
            id="deprioritized-zero-budget",
        ),
        pytest.param(
            pod(),
            FakeBudgets(default=status("in-budget"), stale=True),
            "in-budget",
            ["gpushare: budget state from cache; the timekeeper is not answering"],
            id="stale-state-warns",
        ),
        pytest.param(
            pod(priorityClassName="high"),
            FakeBudgets(),
            "in-budget",
            [
                "gpushare: priorityClassName 'high' replaced by 'gpushare-standard' (GPU pods"
                " get their priority from their namespace's budget)"
            ],
            id="user-priority-class-replaced-with-warning",
        ),
    ],
)
def test_admitted_with_warnings(
    subject: dict[str, Any], budgets: FakeBudgets, state: str, warnings: list[str]
) -> None:
    body = mutate(subject, budgets=budgets)
    assert body["response"]["allowed"] is True
    assert body["response"].get("warnings", []) == warnings
    patched = apply_and_check(subject, decode_patch(body))
    assert patched["metadata"]["annotations"][STATE] == state


@pytest.mark.parametrize("mode", ["native", "classic"])
def test_reinvocation_changes_nothing(mode: str) -> None:
    subject = pod(annotations={"a": "b"}, priority=0)
    first = apply_and_check(subject, decode_patch(mutate(subject, sidecar_mode=mode)))
    # The API server's Priority plugin fills the integer priority back in between invocations.
    first["spec"]["priority"] = 100000
    second = mutate(first, sidecar_mode=mode)
    assert second["response"] == {"uid": review(None)["request"]["uid"], "allowed": True}


def test_sidecar_contract() -> None:
    """The container the sidecar part reads, spelled out in full."""
    subject = pod(
        container("a", limits=gpu(30, 4)),
        container("b", limits=gpu(20, 2)),
        init=[container("warmup", limits=gpu(70, 1))],
    )
    patched = apply_and_check(
        subject,
        decode_patch(
            mutate(
                subject,
                sidecar_image="registry.example/gpushare:9",
                sidecar_timekeeper_url="http://tk.example:8080",
            )
        ),
    )
    sidecar = patched["spec"]["initContainers"][0]

    def field(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}

    assert sidecar == {
        "name": "gpushare-sidecar",
        "image": "registry.example/gpushare:9",
        "imagePullPolicy": "IfNotPresent",
        "command": ["gpushare", "sidecar"],
        "restartPolicy": "Always",
        "env": [
            {"name": "GPUSHARE_TIMEKEEPER_URL", "value": "http://tk.example:8080"},
            {
                "name": "GPUSHARE_TOKEN_FILE",
                "value": "/var/run/secrets/gpushare.io/serviceaccount/token",
            },
            field("GPUSHARE_POD_NAME", "metadata.name"),
            field("GPUSHARE_POD_NAMESPACE", "metadata.namespace"),
            field("GPUSHARE_POD_UID", "metadata.uid"),
            {"name": "GPUSHARE_VCUDA_CORE", "value": "70"},
            {"name": "GPUSHARE_VCUDA_MEMORY", "value": "6"},
            {"name": "GPUSHARE_REPORT_INTERVAL_SECONDS", "value": "15"},
            {"name": "GPUSHARE_SPOOL_DIR", "value": "/var/lib/gpushare/spool"},
            {"name": "GPUSHARE_USAGE_DIR", "value": "/var/run/gpushare-usage"},
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {
                "name": "gpushare-token",
                "mountPath": "/var/run/secrets/gpushare.io/serviceaccount",
                "readOnly": True,
            },
            {"name": "gpushare-spool", "mountPath": "/var/lib/gpushare/spool"},
            {"name": "gpushare-usage", "mountPath": "/var/run/gpushare-usage", "readOnly": True},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    assert patched["spec"]["volumes"] == [
        {
            "name": "gpushare-token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": "gpushare-timekeeper",
                            "expirationSeconds": 3600,
                            "path": "token",
                        }
                    }
                ]
            },
        },
        {"name": "gpushare-spool", "emptyDir": {"sizeLimit": "16Mi"}},
        {"name": "gpushare-usage", "emptyDir": {"sizeLimit": "1Mi"}},
    ]


def test_classic_sidecar_has_no_restart_policy() -> None:
    subject = pod()
    patched = apply_and_check(subject, decode_patch(mutate(subject, sidecar_mode="classic")))
    sidecar = patched["spec"]["containers"][-1]
    assert sidecar["name"] == "gpushare-sidecar"
    assert "restartPolicy" not in sidecar


def test_settings_are_the_only_source_of_sidecar_resources() -> None:
    settings = dataclasses.replace(
        Settings(timekeeper_url=TIMEKEEPER), sidecar_cpu_limit="250m", sidecar_memory_limit="1Gi"
    )
    app = create_app(settings, budgets=FakeBudgets())
    body = app.test_client().post("/mutate", json=review(pod())).json
    assert body is not None
    patched = apply_and_check(pod(), decode_patch(body))
    limits = patched["spec"]["initContainers"][0]["resources"]["limits"]
    assert limits == {"cpu": "250m", "memory": "1Gi"}


def test_sidecar_env_names_are_the_injected_ones() -> None:
    patched = apply_and_check(pod(), decode_patch(mutate(pod())))
    names = tuple(entry["name"] for entry in patched["spec"]["initContainers"][0]["env"])
    assert names == injection.SIDECAR_ENV_NAMES


@pytest.mark.parametrize(
    ("chosen", "setting", "expected"),
    [
        pytest.param(None, "gpushare-scheduler", "gpushare-scheduler", id="none-named-ours"),
        pytest.param(
            "default-scheduler", "gpushare-scheduler", "gpushare-scheduler", id="default-ours"
        ),
        pytest.param("team-scheduler", "gpushare-scheduler", "team-scheduler", id="own-kept"),
        pytest.param("default-scheduler", "", "default-scheduler", id="setting-off"),
    ],
)
def test_gpu_pods_go_to_the_gpushare_scheduler(
    chosen: str | None, setting: str, expected: str
) -> None:
    subject = pod()
    if chosen is not None:
        subject["spec"]["schedulerName"] = chosen
    body = mutate(subject, scheduler_name=setting)
    patched = apply_and_check(subject, decode_patch(body))
    assert patched["spec"].get("schedulerName", "default-scheduler") == expected
