"""Scheduler extender input that kube-scheduler (or anything else) may send: odd but legal
quantities, and bodies of the wrong shape. Never a 5xx; every error names the field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from nodemanager import pods
from nodemanager.devices import Kind
from nodemanager.inventory import SimulatedInventory
from nodemanager.manager import NodeManager, Paths

from gpushare.annotations import NODE_GPU_CAPACITY
from tests.nodemanager.fake_apiserver import make_pod
from tests.nodemanager.test_extender import args, capacity, node
from tests.webhook.test_endpoints import _json, _leaf, _pod
from webhook import extender, placement
from webhook.nodecapacity import StaticNodeCapacity

CORE = "tencent.com/vcuda-core"
MEMORY = "tencent.com/vcuda-memory"


@pytest.fixture
def client() -> Iterator[FlaskClient]:
    app = Flask(__name__)
    app.register_blueprint(extender.blueprint)
    extender.install_node_capacity(app, StaticNodeCapacity({"n1": capacity([(0, 0)])}))
    with app.test_client() as test_client:
        yield test_client


def gpu_pod(core: Any, memory: Any) -> dict[str, Any]:
    return {
        "spec": {
            "containers": [{"name": "c", "resources": {"limits": {CORE: core, MEMORY: memory}}}]
        }
    }


@pytest.mark.parametrize(
    ("core", "memory", "expected"),
    [
        # The API server sends quantities in canonical form: 1000 is "1k".
        pytest.param("1k", "4", ("c", 1000, 4), id="canonical-1k-cores"),
        pytest.param("50", "1e1", ("c", 50, 10), id="exponent-memory"),
        pytest.param("2e2", "8", ("c", 200, 8), id="exponent-cores"),
        pytest.param(50, 8, ("c", 50, 8), id="json-numbers"),
    ],
)
def test_quantities_in_canonical_forms_are_read(core: Any, memory: Any, expected: tuple) -> None:
    demand = placement.pod_demand(gpu_pod(core, memory))
    assert [(item.name, item.core, item.memory) for item in demand.regular] == [expected]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(
            args(gpu_pod("0.5", "4"), []),
            "pod rejected: container \"c\" asks tencent.com/vcuda-core='0.5';"
            " it must be a whole number",
            id="fraction-of-a-core",
        ),
        pytest.param(
            args(gpu_pod("-1", "4"), []),
            "pod rejected: container \"c\" asks tencent.com/vcuda-core='-1';"
            " it must not be negative",
            id="negative-core",
        ),
        pytest.param(
            args(make_pod("p", [("c", 10, 1)]), [None]),
            "ExtenderArgs.nodes.items[0] must be a Node object",
            id="node-null",
        ),
        pytest.param(
            args(make_pod("p", [("c", 10, 1)]), ["n1"]),
            "ExtenderArgs.nodes.items[0] must be a Node object",
            id="node-string",
        ),
        pytest.param(
            args(make_pod("p", [("c", 10, 1)]), [{"metadata": "n1"}]),
            "ExtenderArgs.nodes.items[0].metadata must be an object",
            id="node-metadata-string",
        ),
        pytest.param(
            args({"spec": "x"}, []),
            "pod rejected: pod.spec must be an object (got str)",
            id="spec-string",
        ),
        pytest.param(
            args({"spec": {"containers": ["c"]}}, []),
            "pod rejected: pod.spec.containers[0] must be an object (got str)",
            id="container-string",
        ),
        pytest.param(
            args({"spec": {"containers": {"name": "c"}}}, []),
            "pod rejected: pod.spec.containers must be a list",
            id="containers-object",
        ),
        pytest.param(
            args({"spec": {"containers": [{"name": "c", "resources": []}]}}, []),
            "pod rejected: pod.spec.containers[0].resources must be an object (got list)",
            id="resources-list",
        ),
        pytest.param(
            {"pod": make_pod("p", [("c", 10, 1)]), "nodenames": ["n1", 5]},
            "ExtenderArgs.nodenames[1] must be a string (got 5)",
            id="node-name-number",
        ),
    ],
)
@pytest.mark.parametrize("verb", ["filter", "prioritize"])
def test_malformed_arguments_are_named_never_a_5xx(
    client: FlaskClient, verb: str, body: dict[str, Any], message: str
) -> None:
    reply = client.post(f"/scheduler/{verb}", json=body)
    answer = reply.get_json()
    if verb == "filter":
        # ExtenderFilterResult carries the error; the scheduler reports it on the pod.
        assert (reply.status_code, answer["error"]) == (200, message)
    else:
        assert (reply.status_code, answer) == (400, {"error": "bad-request", "message": message})


@pytest.mark.parametrize(
    ("annotations", "reason"),
    [
        pytest.param(
            "x", "node metadata.annotations must be an object (got 'x')", id="annotations-string"
        ),
        pytest.param(
            {NODE_GPU_CAPACITY: 5},
            f"{NODE_GPU_CAPACITY} must be a JSON string (got 5)",
            id="capacity-number",
        ),
        pytest.param(
            {NODE_GPU_CAPACITY: "{"}, f"{NODE_GPU_CAPACITY} is not JSON", id="capacity-not-json"
        ),
    ],
)
def test_a_node_with_a_broken_annotation_is_unresolvable_not_an_error(
    client: FlaskClient, annotations: Any, reason: str
) -> None:
    broken = {"metadata": {"name": "bad", "annotations": annotations}}
    good = node("good", capacity([(0, 0)]))
    reply = client.post(
        "/scheduler/filter", json=args(make_pod("p", [("c", 10, 1)]), [broken, good])
    )
    answer = reply.get_json()
    assert reply.status_code == 200
    assert [item["metadata"]["name"] for item in answer["nodes"]["items"]] == ["good"]
    assert answer["failedAndUnresolvableNodes"]["bad"].startswith(reason)
    scores = client.post(
        "/scheduler/prioritize", json=args(make_pod("p", [("c", 10, 1)]), [broken, good])
    ).get_json()
    assert scores[0] == {"host": "bad", "score": 0}


def test_allocations_on_the_node_reach_the_extender(tmp_path: Path) -> None:
    """The node manager's real annotation, after real allocations and a failed health
    check, read by the extender's real parser: the 60 % + 60 % case of the issue."""
    inventory = SimulatedInventory(2, 16 << 30)
    manager = NodeManager(
        node_name="n",
        inventory=inventory,
        paths=Paths(tmp_path / "lib", tmp_path / "state", tmp_path / "checkpoint.json"),
    )
    for gpu in inventory.gpus():
        manager.allocate(Kind.CORE, [f"{gpu.uuid}-core-{n}" for n in range(60)])
        manager.allocate(Kind.MEMORY, [f"{gpu.uuid}-mem-{n}" for n in range(10)])
    gpus = placement.parse_capacity({NODE_GPU_CAPACITY: manager.capacity_annotation()})
    assert [(g.index, g.core_free, g.memory_free, g.healthy) for g in gpus.gpus] == [
        (0, 40, 54, True),
        (1, 40, 54, True),
    ]
    demand = placement.pod_demand(make_pod("p", [("c", 50, 4)]))
    assert placement.fit(gpus, demand).fits is False
    assert placement.fit(gpus, placement.pod_demand(make_pod("p", [("c", 40, 4)]))).fits is True
    inventory.set_healthy(0, False)
    manager.check_health()
    gpus = placement.parse_capacity({NODE_GPU_CAPACITY: manager.capacity_annotation()})
    assert [g.healthy for g in gpus.gpus] == [False, True]
    assert (
        placement.fit(gpus, placement.pod_demand(make_pod("p", [("c", 40, 54)]))).after[1].core_free
        == 0
    )


@pytest.mark.parametrize(
    ("core", "memory", "expected"),
    [
        pytest.param("1k", "2k", (1000, 2000), id="canonical-thousands"),
        pytest.param("2e2", "1e1", (200, 10), id="exponents"),
        pytest.param("30", "4", (30, 4), id="plain"),
        pytest.param("0.5", "4Ki", (0, 0), id="not-whole-units-ignored"),
    ],
)
def test_node_manager_reads_canonical_quantities_of_pending_pods(
    core: str, memory: str, expected: tuple[int, int]
) -> None:
    """The API server hands pods over with quantities in canonical form (1000 is "1k"): the
    node manager's pod matching must read them as the extender does."""
    pod = make_pod("p", [("c", 1, 1)])
    pod["spec"]["containers"][0]["resources"]["limits"] = {CORE: core, MEMORY: memory}
    found = [(item.core, item.memory) for item in pods.pending_containers([pod])]
    assert found == ([expected] if expected != (0, 0) else [])


_capacity_text = st.one_of(
    st.builds(
        lambda gpus, policy: json.dumps({"version": 1, "policy": policy, "gpus": gpus}),
        st.lists(
            st.fixed_dictionaries(
                {
                    name: st.one_of(st.integers(min_value=-5, max_value=200), _json)
                    for name in ("index", "coreTotal", "coreFree", "memoryTotal", "memoryFree")
                },
                optional={"healthy": _leaf},
            ),
            max_size=3,
        ),
        st.sampled_from(["binpack", "spread", "other"]),
    ),
    _leaf,
)
_node = st.one_of(
    st.fixed_dictionaries(
        {
            "metadata": st.one_of(
                st.fixed_dictionaries(
                    {"name": _leaf},
                    optional={
                        "annotations": st.one_of(
                            st.fixed_dictionaries({NODE_GPU_CAPACITY: _capacity_text}), _json
                        )
                    },
                ),
                _json,
            )
        }
    ),
    _json,
)
_args = st.one_of(
    st.fixed_dictionaries(
        {"pod": st.one_of(_pod, _json)},
        optional={
            "nodes": st.one_of(
                st.fixed_dictionaries({"items": st.one_of(st.lists(_node, max_size=3), _json)}),
                _json,
            ),
            "nodenames": st.one_of(st.lists(st.one_of(st.just("n1"), _leaf), max_size=3), _json),
        },
    ),
    _json,
)


@hypothesis_settings(max_examples=300, deadline=None)
@given(body=_args, verb=st.sampled_from(["filter", "prioritize"]))
def test_generated_extender_arguments_never_get_5xx(body: Any, verb: str) -> None:
    app = Flask(__name__)
    app.register_blueprint(extender.blueprint)
    extender.install_node_capacity(app, StaticNodeCapacity({"n1": capacity([(10, 2)])}))
    reply = app.test_client().post(
        f"/scheduler/{verb}", data=json.dumps(body, allow_nan=True), content_type="application/json"
    )
    assert reply.status_code in (200, 400), reply.get_data(as_text=True)
    assert reply.get_json() is not None
