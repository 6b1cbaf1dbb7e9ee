"""Every validation rule, as a case table: pod in, exact refusal reasons out."""

from __future__ import annotations

from typing import Any

import pytest

from tests.webhook.builders import CORE, MEMORY, container, gpu, pod
from webhook import validation
from webhook.errors import BadReview

SOFT = "tencent.com/vcuda-core-limit"
QREQ = "gpushare.io/quota-request"
QLIM = "gpushare.io/quota-limit"
SM = "gpushare.io/sm-partition"


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        pytest.param(pod(container(limits={"cpu": "2"})), [], id="no-gpu-passes"),
        pytest.param(
            pod(container(limits={"cpu": "1"}), annotations={SOFT: "junk"}),
            [],
            id="no-gpu-annotations-not-checked",
        ),
        pytest.param(pod(container(limits=gpu(50, 8))), [], id="shared-core-50-memory-8"),
        pytest.param(pod(container(limits=gpu(1, 1))), [], id="core-1-smallest-share"),
        pytest.param(pod(container(limits=gpu(99, 64))), [], id="core-99-largest-share"),
        pytest.param(pod(container(limits={CORE: "100"})), [], id="whole-gpu-without-memory"),
        pytest.param(pod(container(limits={CORE: "300"})), [], id="three-whole-gpus"),
        pytest.param(pod(container(limits={CORE: 50, MEMORY: 4})), [], id="json-numbers"),
        pytest.param(pod(container(limits={CORE: "1k", MEMORY: "4"})), [], id="core-1k-is-1000"),
        pytest.param(
            pod(container(limits=gpu(150, 8))),
            [
                'container "train" asks tencent.com/vcuda-core=150;'
                " above 100 it must be a multiple of 100"
            ],
            id="core-150-rejected",
        ),
        pytest.param(
            pod(container(limits=gpu(0, 8))),
            [
                'container "train" asks tencent.com/vcuda-core=0; it must be 1..99'
                " (a share of one GPU) or a positive multiple of 100 (whole GPUs)"
            ],
            id="core-0-rejected",
        ),
        pytest.param(
            pod(container(limits=gpu("-5", 8))),
            ['container "train" asks tencent.com/vcuda-core=-5; it must not be negative'],
            id="core-negative-rejected",
        ),
        pytest.param(
            pod(container(limits=gpu("12.5", 8))),
            ['container "train" asks tencent.com/vcuda-core=12.5; it must be a whole number'],
            id="core-fraction-rejected",
        ),
        pytest.param(
            pod(container(limits=gpu("500m", 8))),
            ['container "train" asks tencent.com/vcuda-core=500m; it must be a whole number'],
            id="core-millis-rejected",
        ),
        pytest.param(
            pod(container(limits=gpu("lots", 8))),
            ['container "train" asks tencent.com/vcuda-core=lots; it is not a valid quantity'],
            id="core-garbage-rejected",
        ),
        pytest.param(
            pod(container(limits={CORE: True, MEMORY: "2"})),
            [
                'container "train" asks tencent.com/vcuda-core=True;'
                " it must be a quantity such as 50"
            ],
            id="core-boolean-rejected",
        ),
        pytest.param(
            pod(container(limits=gpu(50, 0))),
            ['container "train" asks tencent.com/vcuda-memory=0; it must be at least 1 (256 MiB)'],
            id="memory-0-rejected",
        ),
        pytest.param(
            pod(container(limits=gpu(50, "1.5"))),
            ['container "train" asks tencent.com/vcuda-memory=1.5; it must be a whole number'],
            id="memory-fraction-rejected",
        ),
        pytest.param(
            pod(container(limits={CORE: "50"})),
            [
                'container "train" asks tencent.com/vcuda-core=50 without'
                " tencent.com/vcuda-memory; a shared GPU request (1..99) needs both"
            ],
            id="shared-core-without-memory",
        ),
        pytest.param(
            pod(container(limits={MEMORY: "8"})),
            [
                'container "train" asks tencent.com/vcuda-memory=8 without'
                " tencent.com/vcuda-core; GPU memory comes with a core request"
            ],
            id="memory-without-core",
        ),
        pytest.param(
            pod(container(limits=gpu(50, 8), requests=gpu(50, 8))),
            [],
            id="requests-equal-limits",
        ),
        pytest.param(
            pod(container(limits=gpu(50, 8), requests={CORE: "50", MEMORY: 8})),
            [],
            id="requests-equal-limits-number-vs-string",
        ),
        pytest.param(
            pod(container(limits=gpu(50, 8), requests=gpu(40, 8))),
            [
                'container "train" requests tencent.com/vcuda-core=40 but its limit is 50;'
                " requests must equal limits"
            ],
            id="request-below-limit",
        ),
        pytest.param(
            pod(container(limits={"cpu": "1"}, requests=gpu(40, 8))),
            [
                'container "train" requests tencent.com/vcuda-core=40 without a limit; GPU'
                " resources go in limits (requests, if given, must equal them)",
                'container "train" requests tencent.com/vcuda-memory=8 without a limit; GPU'
                " resources go in limits (requests, if given, must equal them)",
            ],
            id="requests-without-limits",
        ),
        pytest.param(
            pod(
                container("main", limits=gpu(50, 8)),
                init=[container("prepare", limits=gpu(250, 8))],
            ),
            [
                'initContainer "prepare" asks tencent.com/vcuda-core=250;'
                " above 100 it must be a multiple of 100"
            ],
            id="init-container-checked",
        ),
        pytest.param(
            pod(container("a", limits=gpu(50, 8)), container("b", limits=gpu(101, 0))),
            [
                'container "b" asks tencent.com/vcuda-core=101; above 100 it must be a'
                " multiple of 100",
                'container "b" asks tencent.com/vcuda-memory=0; it must be at least 1 (256 MiB)',
            ],
            id="second-container-checked-all-reasons",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={SOFT: "60"}),
            [],
            id="soft-limit-within-range",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={SOFT: "30"}),
            [],
            id="soft-limit-equal-core",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={SOFT: "20"}),
            [
                "annotation tencent.com/vcuda-core-limit=20; it must be an integer in [30, 100]"
                ' (container "train" asks tencent.com/vcuda-core=30)'
            ],
            id="soft-limit-below-core",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={SOFT: "101"}),
            [
                "annotation tencent.com/vcuda-core-limit=101; it must be an integer in [30, 100]"
                ' (container "train" asks tencent.com/vcuda-core=30)'
            ],
            id="soft-limit-above-100",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={SOFT: "45.5"}),
            ["annotation tencent.com/vcuda-core-limit=45.5; it must be an integer in [30, 100]"],
            id="soft-limit-not-integer",
        ),
        pytest.param(
            pod(container(limits={CORE: "200"}), annotations={SOFT: "100"}),
            [
                "annotation tencent.com/vcuda-core-limit=100; a burst limit applies to one GPU"
                ' at most, but container "train" asks tencent.com/vcuda-core=200'
            ],
            id="soft-limit-on-two-gpus",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={QREQ: "0.2", QLIM: "0.5", SM: "40"}),
            [],
            id="quota-and-sm-valid",
        ),
        pytest.param(
            pod(container(limits={CORE: "100"}), annotations={QREQ: "1", QLIM: "1", SM: "100"}),
            [],
            id="quota-and-sm-at-upper-bounds",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={QREQ: "0.6", QLIM: "0.5"}),
            [
                "annotation gpushare.io/quota-request=0.6 is above gpushare.io/quota-limit=0.5;"
                " it must be 0 <= quota-request <= quota-limit <= 1",
                "annotation gpushare.io/quota-request=0.6 cannot be guaranteed: container"
                ' "train" asks tencent.com/vcuda-core=30 (0.3 of a GPU), and the guaranteed'
                " share is that allocation; lower gpushare.io/quota-request to at most 0.3 or"
                " raise tencent.com/vcuda-core to at least 60",
            ],
            id="quota-request-above-limit",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={QREQ: "0.30", QLIM: "0.3"}),
            [],
            id="quota-request-and-limit-equal-core",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={QREQ: "0.05"}),
            [],
            id="quota-request-below-core-honoured-by-allocation",
        ),
        pytest.param(
            pod(container(limits=gpu(50, 8)), annotations={QREQ: "0.6", QLIM: "0.8"}),
            [
                "annotation gpushare.io/quota-request=0.6 cannot be guaranteed: container"
                ' "train" asks tencent.com/vcuda-core=50 (0.5 of a GPU), and the guaranteed'
                " share is that allocation; lower gpushare.io/quota-request to at most 0.5 or"
                " raise tencent.com/vcuda-core to at least 60"
            ],
            id="quota-request-above-core-refused",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={QREQ: "0.305"}),
            [
                "annotation gpushare.io/quota-request=0.305 cannot be guaranteed: container"
                ' "train" asks tencent.com/vcuda-core=30 (0.3 of a GPU), and the guaranteed'
                " share is that allocation; lower gpushare.io/quota-request to at most 0.3 or"
                " raise tencent.com/vcuda-core to at least 31"
            ],
            id="quota-request-a-fraction-of-a-percent-above-core",
        ),
        pytest.param(
            pod(
                container("big", limits=gpu(60, 8)),
                container("small", limits=gpu(20, 4)),
                annotations={QREQ: "0.4"},
            ),
            [
                "annotation gpushare.io/quota-request=0.4 cannot be guaranteed: container"
                ' "small" asks tencent.com/vcuda-core=20 (0.2 of a GPU), and the guaranteed'
                " share is that allocation; lower gpushare.io/quota-request to at most 0.2 or"
                " raise tencent.com/vcuda-core to at least 40"
            ],
            id="quota-request-checked-against-smallest-container",
        ),
        pytest.param(
            pod(container(limits={CORE: "200"}), annotations={QREQ: "1"}),
            [],
            id="quota-request-whole-on-two-gpus",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={QLIM: "0.2"}),
            [
                'annotation gpushare.io/quota-limit=0.2 is below what container "train" is'
                " allocated (tencent.com/vcuda-core=30, 0.3 of a GPU), which it may always use;"
                " raise gpushare.io/quota-limit to at least 0.3"
            ],
            id="quota-limit-below-core-refused",
        ),
        pytest.param(
            pod(
                container("big", limits=gpu(60, 8)),
                container("small", limits=gpu(20, 4)),
                annotations={QLIM: "0.5"},
            ),
            [
                'annotation gpushare.io/quota-limit=0.5 is below what container "big" is'
                " allocated (tencent.com/vcuda-core=60, 0.6 of a GPU), which it may always use;"
                " raise gpushare.io/quota-limit to at least 0.6"
            ],
            id="quota-limit-checked-against-largest-container",
        ),
        pytest.param(
            pod(container(limits={CORE: "100"}), annotations={QLIM: "0.5"}),
            [
                'annotation gpushare.io/quota-limit=0.5 is below what container "train" is'
                " allocated (tencent.com/vcuda-core=100, a whole GPU), which it may always use;"
                " raise gpushare.io/quota-limit to at least 1"
            ],
            id="quota-limit-on-a-whole-gpu-refused",
        ),
        pytest.param(
            pod(container(limits={CORE: "200"}), annotations={QLIM: "0.9"}),
            [
                'annotation gpushare.io/quota-limit=0.9 is below what container "train" is'
                " allocated (tencent.com/vcuda-core=200, whole GPUs), which it may always use;"
                " raise gpushare.io/quota-limit to at least 1"
            ],
            id="quota-limit-on-two-gpus-refused",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={QREQ: "0"}),
            [],
            id="quota-request-zero-best-effort",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={QREQ: "0", QLIM: "0"}),
            [
                "annotation gpushare.io/quota-limit=0; it must be above 0 (a fraction of GPU"
                " time with 0 <= quota-request <= quota-limit <= 1)"
            ],
            id="quota-limit-zero",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={QLIM: "1.5"}),
            [
                "annotation gpushare.io/quota-limit=1.5; it must be a fraction of GPU time with"
                " 0 <= quota-request <= quota-limit <= 1"
            ],
            id="quota-limit-above-one",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={QLIM: "half"}),
            [
                "annotation gpushare.io/quota-limit=half; it must be a fraction of GPU time with"
                " 0 <= quota-request <= quota-limit <= 1"
            ],
            id="quota-limit-not-a-number",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={SM: "0"}),
            [
                "annotation gpushare.io/sm-partition=0; it must be an integer percent of the GPU's"
                " SMs in 1..100"
            ],
            id="sm-partition-zero",
        ),
        pytest.param(
            pod(container(limits=gpu(30, 8)), annotations={SM: "150"}),
            [
                "annotation gpushare.io/sm-partition=150; it must be an integer percent of the"
                " GPU's SMs in 1..100"
            ],
            id="sm-partition-above-100",
        ),
    ],
)
def test_rules(subject: dict[str, Any], expected: list[str]) -> None:
    assert validation.validate_pod(subject) == expected


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        pytest.param({"metadata": {}, "spec": "x"}, "object.spec must be an object", id="spec-str"),
        pytest.param(
            {"spec": {"containers": {"a": 1}}},
            "object.spec.containers must be a list",
            id="containers-not-list",
        ),
        pytest.param(
            {"spec": {"containers": [{"name": "a", "resources": {"limits": [1]}}]}},
            'container "a": resources.limits must be an object',
            id="limits-not-object",
        ),
        pytest.param(
            {"spec": {"containers": [{"image": "x"}]}},
            "object.spec.containers[0].name must be a string",
            id="container-without-name",
        ),
        pytest.param(
            {"metadata": {"annotations": ["a"]}, "spec": {"containers": []}},
            "object.metadata.annotations must be an object",
            id="annotations-not-object",
        ),
    ],
)
def test_shapes_that_are_not_pods(subject: dict[str, Any], message: str) -> None:
    with pytest.raises(BadReview, match=message.replace("[", r"\[").replace("]", r"\]")):
        validation.validate_pod(subject)


def _totals(subject: dict[str, Any]) -> tuple[int, int]:
    totals = validation.pod_totals(validation.inspect_pod(subject).requests)
    return totals.core_units, totals.memory_units


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        pytest.param(pod(container(limits=gpu(50, 8))), (50, 8), id="one-container"),
        pytest.param(
            pod(container("a", limits=gpu(30, 4)), container("b", limits=gpu(20, 2))),
            (50, 6),
            id="containers-add-up",
        ),
        pytest.param(
            pod(container("a", limits=gpu(30, 4)), init=[container("i", limits=gpu(80, 2))]),
            (80, 4),
            id="init-larger-than-containers-wins-per-resource",
        ),
        pytest.param(
            pod(
                container("a", limits=gpu(30, 4)),
                init=[container("i1", limits=gpu(20, 2)), container("i2", limits=gpu(10, 1))],
            ),
            (30, 4),
            id="inits-run-one-at-a-time",
        ),
        pytest.param(
            pod(
                container("a", limits=gpu(30, 4)),
                init=[
                    container("side", limits=gpu(10, 1), restartPolicy="Always"),
                    container("i", limits=gpu(60, 2)),
                ],
            ),
            (70, 5),
            id="native-sidecar-adds-to-later-steps",
        ),
        pytest.param(
            pod(container("a", limits=gpu(30, 4)), container("cpu-only", limits={"cpu": "1"})),
            (30, 4),
            id="cpu-only-containers-ignored",
        ),
    ],
)
def test_pod_totals(subject: dict[str, Any], expected: tuple[int, int]) -> None:
    assert _totals(subject) == expected


TIGHT = validation.RequestBounds(max_pod_core_units=800, max_pod_memory_units=640)


@pytest.mark.parametrize(
    ("subject", "bounds", "expected"),
    [
        pytest.param(
            pod(container(limits={CORE: "1e999", MEMORY: "8"})),
            validation.DEFAULT_BOUNDS,
            [
                'container "train" asks tencent.com/vcuda-core=1e999; no node holds that much:'
                " a pod may ask at most 1600 (16 whole GPUs) in total"
            ],
            id="core-1e999",
        ),
        pytest.param(
            pod(container(limits={CORE: "100", MEMORY: "100000000000000000000"})),
            validation.DEFAULT_BOUNDS,
            [
                'container "train" asks tencent.com/vcuda-memory=100000000000000000000; no node'
                " holds that much: a pod may ask at most 16384 (4 TiB) in total"
            ],
            id="memory-10-to-the-20",
        ),
        pytest.param(
            pod(container(limits={CORE: "100", MEMORY: "100E"})),
            validation.DEFAULT_BOUNDS,
            [
                'container "train" asks tencent.com/vcuda-memory=100E; no node holds that much:'
                " a pod may ask at most 16384 (4 TiB) in total"
            ],
            id="memory-10-to-the-20-as-the-api-server-writes-it",
        ),
        pytest.param(
            pod(container(limits={CORE: "100000"})),
            validation.DEFAULT_BOUNDS,
            [
                'container "train" asks tencent.com/vcuda-core=100000; no node holds that'
                " much: a pod may ask at most 1600 (16 whole GPUs) in total"
            ],
            id="a-thousand-whole-gpus",
        ),
        pytest.param(
            pod(container(limits={CORE: "1600", MEMORY: "16384"})),
            validation.DEFAULT_BOUNDS,
            [],
            id="exactly-the-bounds",
        ),
        pytest.param(
            pod(container("a", limits={CORE: "900"}), container("b", limits={CORE: "800"})),
            validation.DEFAULT_BOUNDS,
            [
                "the pod asks tencent.com/vcuda-core=1700 in total over its containers; no node"
                " holds that much: a pod may ask at most 1600 (16 whole GPUs) in total"
            ],
            id="containers-together-beyond",
        ),
        pytest.param(
            pod(
                container("a", limits={CORE: "700"}),
                init=[container("warmup", limits={CORE: "800"})],
            ),
            validation.DEFAULT_BOUNDS,
            [],
            id="init-step-and-containers-do-not-add",
        ),
        pytest.param(
            pod(container(limits={CORE: "900", MEMORY: "641"})),
            TIGHT,
            [
                'container "train" asks tencent.com/vcuda-core=900; no node holds that much: a'
                " pod may ask at most 800 (8 whole GPUs) in total",
                'container "train" asks tencent.com/vcuda-memory=641; no node holds that much: a'
                " pod may ask at most 640 (160 GiB) in total",
            ],
            id="configured-bounds",
        ),
    ],
)
def test_bounds(
    subject: dict[str, Any], bounds: validation.RequestBounds, expected: list[str]
) -> None:
    assert validation.validate_pod(subject, bounds) == expected
