"""Which pod is this: the pure matching of an allocation to pending containers."""

from __future__ import annotations

from typing import Any

import pytest
from nodemanager import pods
from nodemanager.devices import Kind

from tests.nodemanager.fake_apiserver import make_pod

LIMIT = "tencent.com/vcuda-core-limit"


def deleting(pod: dict[str, Any]) -> dict[str, Any]:
    pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:05:00Z"
    return pod


@pytest.mark.parametrize(
    ("pod_list", "kind", "units", "served", "expected", "soft", "ambiguous"),
    [
        pytest.param(
            [make_pod("b", [("c", 30, 4)], created="2026-01-01T00:00:02Z"),
             make_pod("a", [("c", 30, 4)], created="2026-01-01T00:00:01Z")],
            Kind.CORE, 30, set(), ("a", "c"), 30, False,
            id="oldest-pod-first",
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
            Kind.CORE, 30, set(), ("a", "c"), 60, True,
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
    candidates = pods.pending_containers(pod_list)
    core_limit = units if kind is Kind.CORE else 0
    found = pods.match(candidates, kind, units, served, core_limit)
    got = None if found.candidate is None else (found.candidate.pod, found.candidate.container)
    assert got == expected
    assert found.soft_limit == soft
    assert found.ambiguous is ambiguous
