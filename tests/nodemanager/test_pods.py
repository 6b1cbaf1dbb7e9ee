"""Which pod is this: the pure matching of an allocation to the pods waiting on the node."""

from __future__ import annotations

from typing import Any

import pytest
from nodemanager import pods
from nodemanager.devices import Kind

from tests.nodemanager.fake_apiserver import make_pod, simulated_uuid

LIMIT = "tencent.com/vcuda-core-limit"


def pending(items: list[dict[str, Any]]) -> list[pods.ContainerRequest]:
    return pods.pending_containers(items, "node-a")


def on(gpu: int) -> dict[str, list[str]]:
    return {"c": [simulated_uuid(gpu)]}


def deleting(pod: dict[str, Any]) -> dict[str, Any]:
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:05:00Z"
    return pod


@pytest.mark.parametrize(
    ("pod_list", "kind", "units", "served", "expected", "soft", "ambiguous"),
    [
        pytest.param(
            [make_pod("b", [("c", 30, 4)], created="2026-01-01T00:00:01Z"),
             make_pod("a", [("c", 30, 4)], created="2026-01-01T00:00:02Z")],
            Kind.CORE, 30, set(), ("a", "c"), 30, False,
            id="same-gpus-any-will-do-not-creation-order",
        ),
        pytest.param(
            [make_pod("a", [("c", 30, 4)], gpus=on(0)), make_pod("b", [("c", 30, 4)], gpus=on(1))],
            Kind.CORE, 30, set(), ("a", "c"), 30, True,
            id="different-gpus-ambiguous",
        ),
        pytest.param(
            [make_pod("a", [("c", 30, 4)], gpus=on(0)), make_pod("b", [("c", 30, 4)], gpus=on(1))],
            Kind.CORE, 30, {("uid-team-a-b", "c", Kind.MEMORY)}, ("b", "c"), 30, False,
            id="pod-in-progress-wins",
        ),
        pytest.param(
            [make_pod("a", [("c", 30, 4)], gpus=None), make_pod("b", [("c", 30, 4)])],
            Kind.CORE, 30, set(), ("b", "c"), 30, False,
            id="pod-without-assignment-skipped",
        ),
        pytest.param(
            [make_pod("a", [("c", 30, 4)], annotations={"gpushare.io/gpu-allocated": "node-a"}),
             make_pod("b", [("c", 30, 4)])],
            Kind.CORE, 30, set(), ("b", "c"), 30, False,
            id="pod-marked-allocated-skipped",
        ),
        pytest.param(
            [make_pod("a", [("x", 30, 4), ("y", 20, 4)])],
            Kind.CORE, 20, set(), None, 20, False,
            id="second-container-waits-for-the-first",
        ),
        pytest.param(
            [make_pod("a", [("c", 30, 4)]), make_pod("b", [("c", 30, 4)])],
            Kind.CORE, 30, {("uid-team-a-a", "c", Kind.CORE)}, ("b", "c"), 30, False,
            id="served-container-skipped",
        ),
        pytest.param(
            [make_pod("a", [("c", 30, 4)]), make_pod("b", [("c", 30, 4)])],
            Kind.CORE, 30, {("team-a/a", "c", Kind.CORE)}, ("b", "c"), 30, False,
            id="served-by-name-skipped",
        ),
        pytest.param(
            [make_pod("a", [("c", 30, 4)]), make_pod("b", [("c", 20, 4)])],
            Kind.CORE, 20, set(), ("b", "c"), 20, False,
            id="matched-by-core-units",
        ),
        pytest.param(
            [make_pod("a", [("c", 30, 4)]), make_pod("b", [("c", 30, 9)])],
            Kind.MEMORY, 9, set(), ("b", "c"), 0, False,
            id="matched-by-memory-units",
        ),
        pytest.param(
            [make_pod("a", [("c", 30, 4)], phase="Running"), make_pod("b", [("c", 30, 4)])],
            Kind.CORE, 30, set(), ("b", "c"), 30, False,
            id="running-pod-skipped",
        ),
        pytest.param(
            [deleting(make_pod("a", [("c", 30, 4)])), make_pod("b", [("c", 30, 4)])],
            Kind.CORE, 30, set(), ("b", "c"), 30, False,
            id="deleting-pod-skipped",
        ),
        pytest.param(
            [make_pod("a", [("main", 30, 4)], init_containers=[("init", 30, 4)])],
            Kind.CORE, 30, set(), ("a", "init"), 30, False,
            id="init-container-first",
        ),
        pytest.param(
            [make_pod("a", [("c", 30, 4)], annotations={LIMIT: "90"}),
             make_pod("b", [("c", 30, 4)], annotations={LIMIT: "60"})],
            Kind.CORE, 30, set(), ("a", "c"), 60, False,
            id="different-bursts-smallest-wins",
        ),
        pytest.param(
            [make_pod("a", [("c", 30, 4)], annotations={LIMIT: "90"}),
             make_pod("b", [("c", 30, 4)], annotations={LIMIT: "90"})],
            Kind.CORE, 30, set(), ("a", "c"), 90, False,
            id="same-bursts-not-ambiguous",
        ),
        pytest.param(
            [make_pod("a", [("c", 30, 4)], node="node-b")], Kind.CORE, 50, set(), None, 50, False,
            id="nothing-matches",
        ),
    ],
)  # fmt: skip
def test_match(
    pod_list: list[dict[str, Any]],
    kind: Kind,
    units: int,
    served: set[tuple[str, str, Kind]],
    expected: tuple[str, str] | None,
    soft: int,
    ambiguous: bool,
) -> None:
    candidates = pending(pod_list)
    core_limit = units if kind is Kind.CORE else 0
    found = pods.match(candidates, kind, units, served, core_limit)
    got = None if found.candidate is None else (found.candidate.pod, found.candidate.container)
    assert got == expected
    assert found.soft_limit == soft
    assert found.ambiguous is ambiguous


QREQ = "gpushare.io/quota-request"
QLIM = "gpushare.io/quota-limit"
SM = "gpushare.io/sm-partition"


@pytest.mark.parametrize(
    ("core", "annotations", "soft", "sm"),
    [
        pytest.param(30, {}, 30, None, id="nothing-asked"),
        pytest.param(30, {LIMIT: "80"}, 80, None, id="core-limit-only"),
        pytest.param(30, {QLIM: "0.6"}, 60, None, id="quota-limit-only"),
        pytest.param(30, {QLIM: "0.655"}, 65, None, id="quota-limit-rounded-down"),
        pytest.param(30, {QLIM: "0.999"}, 99, None, id="quota-limit-just-below-one"),
        pytest.param(30, {QLIM: "1"}, 100, None, id="quota-limit-one"),
        pytest.param(30, {QLIM: ".5"}, 50, None, id="quota-limit-leading-dot"),
        pytest.param(30, {LIMIT: "80", QLIM: "0.5"}, 50, None, id="both-quota-limit-smaller"),
        pytest.param(30, {LIMIT: "40", QLIM: "0.9"}, 40, None, id="both-core-limit-smaller"),
        pytest.param(30, {QLIM: "0.2"}, 30, None, id="quota-limit-below-core-raised-to-core"),
        pytest.param(30, {QLIM: "0.305"}, 30, None, id="quota-limit-rounds-down-to-core"),
        pytest.param(
            30, {LIMIT: "80", QLIM: "0.1"}, 30, None, id="smaller-ceiling-below-core-wins"
        ),
        pytest.param(30, {LIMIT: "20", QLIM: "0.7"}, 30, None, id="core-limit-below-core-wins"),
        pytest.param(30, {QLIM: "1.5"}, 30, None, id="quota-limit-above-one-ignored"),
        pytest.param(30, {QLIM: "0"}, 30, None, id="quota-limit-zero-ignored"),
        pytest.param(30, {QLIM: "half"}, 30, None, id="quota-limit-garbage-ignored"),
        pytest.param(30, {QLIM: "0.5\n"}, 30, None, id="quota-limit-trailing-newline-ignored"),
        pytest.param(30, {LIMIT: "80", QLIM: "x"}, 80, None, id="garbage-quota-keeps-core-limit"),
        pytest.param(30, {LIMIT: "x", QLIM: "0.7"}, 70, None, id="garbage-core-limit-keeps-quota"),
        pytest.param(30, {LIMIT: "\uff18\uff10"}, 30, None, id="non-ascii-digits-ignored"),
        pytest.param(30, {LIMIT: "150"}, 30, None, id="core-limit-above-100-ignored"),
        pytest.param(100, {QLIM: "0.5"}, 100, None, id="whole-gpu-no-ceiling"),
        pytest.param(30, {QREQ: "0.2"}, 30, None, id="quota-request-is-the-allocation"),
        pytest.param(30, {QREQ: "0.2", QLIM: "0.7"}, 70, None, id="quota-request-and-limit"),
        pytest.param(30, {SM: "40"}, 30, 40, id="sm-partition"),
        pytest.param(30, {SM: "1"}, 30, 1, id="sm-partition-smallest"),
        pytest.param(30, {SM: "100"}, 30, None, id="sm-partition-all-sets-nothing"),
        pytest.param(30, {SM: "0"}, 30, None, id="sm-partition-zero-ignored"),
        pytest.param(30, {SM: "101"}, 30, None, id="sm-partition-above-100-ignored"),
        pytest.param(30, {SM: "4O"}, 30, None, id="sm-partition-garbage-ignored"),
        pytest.param(200, {SM: "50"}, 100, 50, id="sm-partition-on-whole-gpus"),
        pytest.param(30, {QREQ: "0.3", QLIM: "0.6", SM: "50"}, 60, 50, id="all-three-annotations"),
    ],
)
def test_annotations_resolve_to_burst_and_sm_partition(
    core: int, annotations: dict[str, str], soft: int, sm: int | None
) -> None:
    candidates = pending([make_pod("a", [("c", core, 4)], annotations=annotations)])
    core_limit = min(core, 100)
    found = pods.match(candidates, Kind.CORE, core, set(), core_limit)
    assert found.candidate is not None
    assert (found.soft_limit, found.sm_partition) == (soft, sm)


@pytest.mark.parametrize(
    ("first", "second", "soft", "sm"),
    [
        pytest.param({QLIM: "0.9"}, {LIMIT: "60"}, 60, None, id="quota-vs-core-limit-smallest"),
        pytest.param({SM: "30"}, {SM: "60"}, 30, 30, id="sm-partitions-smallest"),
        pytest.param({SM: "30"}, {}, 30, 30, id="sm-partition-vs-none-smallest"),
    ],
)
def test_identical_requests_disagreeing_on_quota_get_the_smallest(
    first: dict[str, str], second: dict[str, str], soft: int, sm: int | None
) -> None:
    candidates = pending(
        [
            make_pod("a", [("c", 30, 4)], annotations=first),
            make_pod("b", [("c", 30, 4)], annotations=second),
        ]
    )
    found = pods.match(candidates, Kind.CORE, 30, set(), 30)
    assert found.candidate is not None and found.candidate.pod == "a"
    assert (found.soft_limit, found.sm_partition, found.ambiguous) == (soft, sm, False)


def test_memory_allocation_carries_no_sm_partition() -> None:
    candidates = pending([make_pod("a", [("c", 30, 4)], annotations={SM: "40"})])
    found = pods.match(candidates, Kind.MEMORY, 4, set(), 0)
    assert found.candidate is not None
    assert found.sm_partition is None
