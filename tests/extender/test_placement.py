"""The extender's pure placement logic: case tables with full inputs and outputs."""

from __future__ import annotations

import pytest

from extender import placement
from extender.demand import ContainerDemand, DemandError, PodDemand, pod_demand
from extender.placement import GpuFree, NoFit
from tests.extender.builders import inventory, pod


def gpus(*free: tuple[int, int]) -> list[GpuFree]:
    return [
        GpuFree(index, f"g{index}", core, memory, 64) for index, (core, memory) in enumerate(free)
    ]


def shared(name: str, core: int, memory: int, init: bool = False) -> ContainerDemand:
    return ContainerDemand(name, core, memory, init)


@pytest.mark.parametrize(
    ("free", "containers", "policy", "expected"),
    [
        pytest.param(
            [(100, 64), (40, 60)], [shared("c", 30, 8)], "binpack",
            {"c": [("g1", 30, 8)]}, id="binpack-fullest-gpu",
        ),
        pytest.param(
            [(100, 64), (40, 60)], [shared("c", 30, 8)], "spread",
            {"c": [("g0", 30, 8)]}, id="spread-emptiest-gpu",
        ),
        pytest.param(
            [(100, 10), (40, 60)], [shared("c", 50, 20)], "binpack",
            "no single GPU has room for both", id="cores-on-one-memory-on-other-refused",
        ),
        pytest.param(
            [(100, 64), (100, 64)], [ContainerDemand("c", 200, 41)], "binpack",
            {"c": [("g0", 100, 21), ("g1", 100, 20)]}, id="two-whole-gpus-memory-split",
        ),
        pytest.param(
            [(100, 64), (99, 64)], [ContainerDemand("c", 200, 0)], "binpack",
            r"needs 2 GPU\(s\) with no core in use", id="whole-gpus-need-untouched-gpus",
        ),
        pytest.param(
            [(100, 64), (100, 64)], [shared("a", 60, 24), shared("b", 60, 24)], "binpack",
            {"a": [("g0", 60, 24)], "b": [("g1", 60, 24)]}, id="two-containers-two-gpus",
        ),
        pytest.param(
            [(100, 64), (100, 64)],
            [shared("setup", 10, 4, init=True), shared("main", 50, 20)], "spread",
            {"setup": [("g0", 10, 4)], "main": [("g0", 50, 20)]},
            id="init-container-on-the-first-regular-gpu",
        ),
    ],
)  # fmt: skip
def test_place(
    free: list[tuple[int, int]],
    containers: list[ContainerDemand],
    policy: str,
    expected: dict[str, list[tuple[str, int, int]]] | str,
) -> None:
    demand = PodDemand(tuple(containers))
    if isinstance(expected, str):
        with pytest.raises(NoFit, match=expected):
            placement.place("n", gpus(*free), demand, policy)
        return
    got = placement.place("n", gpus(*free), demand, policy)
    assert got.node == "n"
    assert {
        name: [(share.uuid, share.core, share.memory) for share in shares]
        for name, shares in got.containers.items()
    } == expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        pytest.param(pod("p", ("c", "1e999", 1)), "at most 6400 can be placed", id="core-bomb"),
        pytest.param(pod("p", ("c", 50, "1e30")), "at most", id="memory-bomb"),
        pytest.param(pod("p", ("c", 150, 1)), "must be a multiple of 100", id="core-150"),
        pytest.param(pod("p", ("c", 0, 4)), "without tencent.com/vcuda-core", id="memory-only"),
        pytest.param(pod("p", ("c", "half", 4)), "not a valid quantity", id="garbage"),
    ],
)
def test_demands_no_node_could_serve_are_refused_before_any_work(
    subject: dict[str, object], expected: str
) -> None:
    with pytest.raises(DemandError, match=expected):
        pod_demand(subject)


def test_demand_is_in_kubelet_order() -> None:
    demand = pod_demand(pod("p", ("a", 30, 4), ("cpu", 0, 0), ("b", "1k", 0), init=(("i", 5, 1),)))
    assert demand.containers == (
        ContainerDemand("i", 5, 1, True),
        ContainerDemand("a", 30, 4),
        ContainerDemand("b", 1000, 0),
    )


@pytest.mark.parametrize(
    ("one", "other", "expected"),
    [
        pytest.param([(60, 24, "g0")], [(60, 24, "g1")], True, id="same-shape-other-gpu"),
        pytest.param([(60, 24, "g0")], [(60, 24, "g0")], False, id="same-shape-same-gpu"),
        pytest.param([(60, 24, "g0")], [(40, 24, "g1")], True, id="same-memory-other-gpu"),
        pytest.param([(60, 24, "g0")], [(60, 10, "g1")], True, id="same-cores-other-gpu"),
        pytest.param([(60, 24, "g0")], [(40, 40, "g1")], False, id="nothing-shared"),
        pytest.param(
            [(30, 4, "g0"), (20, 4, "g0")], [(30, 4, "g0"), (20, 4, "g1")], True,
            id="same-first-container-then-other-gpu",
        ),
        pytest.param(
            [(30, 4, "g0"), (20, 4, "g0")], [(30, 8, "g0"), (20, 4, "g1")], False,
            id="told-apart-by-the-first-container",
        ),
    ],
)  # fmt: skip
def test_ambiguous(
    one: list[tuple[int, int, str]], other: list[tuple[int, int, str]], expected: bool
) -> None:
    def shapes(items: list[tuple[int, int, str]]) -> list[placement.CallShape]:
        return [(core, memory, frozenset([gpu])) for core, memory, gpu in items]

    assert placement.ambiguous(shapes(one), shapes(other)) is expected
    assert placement.ambiguous(shapes(other), shapes(one)) is expected


@pytest.mark.parametrize(
    ("holders", "demand", "expected"),
    [
        pytest.param(
            # GPU 0: 60 in-budget + 30 over-budget; GPU 1: 60 in-budget + 30 over-budget
            [("keep0", 1000, "n-gpu0", 60), ("low0", -1000, "n-gpu0", 30),
             ("keep1", 1000, "n-gpu1", 60), ("low1", -1000, "n-gpu1", 30)],
            30, ("low0",), id="one-victim-frees-one-gpu",
        ),
        pytest.param(
            [("keep0", 1000, "n-gpu0", 80), ("low0", -1000, "n-gpu0", 10),
             ("low1a", -1000, "n-gpu1", 30), ("low1b", -1000, "n-gpu1", 30),
             ("keep1", 1000, "n-gpu1", 30)],
            50, ("low1a", "low1b"), id="victims-only-where-they-make-room",
        ),
        pytest.param(
            [("keep0", 1000, "n-gpu0", 90), ("keep1", 1000, "n-gpu1", 90)],
            30, None, id="only-higher-priority-pods",
        ),
        pytest.param(
            [("keep0", 1000, "n-gpu0", 10)], 30, (), id="fits-without-victims",
        ),
    ],
)  # fmt: skip
def test_victims_free_a_single_gpu(
    holders: list[tuple[str, int, str, int]],
    demand: int,
    expected: tuple[str, ...] | None,
) -> None:
    found = placement.victims_for(
        "n",
        inventory(node="n"),
        [placement.Holder(uid, priority, {gpu: (core, 1)}) for uid, priority, gpu, core in holders],
        PodDemand((shared("c", demand, 1),)),
        1000,
    )
    assert found == expected
