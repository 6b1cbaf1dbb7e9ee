"""The extender over HTTP as kube-scheduler speaks to it (Go field names), with a fake binder."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from flask.testing import FlaskClient

from extender.app import create_app
from extender.kube import KubernetesError
from extender.view import ClusterView
from gpushare.assignment import POD_GPU_ASSIGNMENT, parse_assignment
from tests.extender.builders import inventory, pod


class FakeBinder:
    """Records binds; `fail` makes the next one fail as the API server would."""

    def __init__(self) -> None:
        self.bound: list[tuple[str, str, str, dict[str, str]]] = []
        self.fail: str | None = None
        self.evicted: list[str] = []
        self._lock = threading.Lock()

    def bind(
        self, namespace: str, name: str, uid: str, node: str, annotations: dict[str, str]
    ) -> None:
        if self.fail is not None:
            raise KubernetesError(self.fail)
        with self._lock:
            self.bound.append((name, uid, node, annotations))

    def evict(self, namespace: str, name: str, uid: str) -> None:
        with self._lock:
            self.evicted.append(name)


@pytest.fixture
def view() -> ClusterView:
    view = ClusterView()
    view.replace_nodes({"n1": inventory(node="n1"), "n2": inventory(node="n2")})
    return view


@pytest.fixture
def binder() -> FakeBinder:
    return FakeBinder()


@pytest.fixture
def client(view: ClusterView, binder: FakeBinder) -> FlaskClient:
    return create_app(view=view, binder=binder, max_body_bytes=64 * 1024).test_client()


def filter_(client: FlaskClient, subject: dict[str, Any], names: list[str]) -> dict[str, Any]:
    response = client.post("/filter", json={"Pod": subject, "NodeNames": names})
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body


def bind(client: FlaskClient, name: str, node: str) -> dict[str, Any]:
    response = client.post(
        "/bind",
        json={"PodName": name, "PodNamespace": "team-a", "PodUID": f"uid-{name}", "Node": node},
    )
    assert response.status_code == 200
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body


def test_filter_speaks_the_go_field_names(client: FlaskClient) -> None:
    body = filter_(client, pod("p", ("c", 30, 4)), ["n1", "n2", "cpu-node"])
    assert body == {
        "NodeNames": ["n1"],
        "FailedNodes": {},
        "FailedAndUnresolvableNodes": {
            "cpu-node": "no gpushare node manager has published this node's GPUs"
        },
        "Error": "",
    }


def test_field_names_match_ignoring_case_as_go_does(client: FlaskClient) -> None:
    response = client.post("/filter", json={"pod": pod("p", ("c", 30, 4)), "nodenames": ["n2"]})
    assert response.json is not None and response.json["NodeNames"] == ["n2"]


def test_consecutive_filters_see_each_other_before_any_bind(client: FlaskClient) -> None:
    # each node has two GPUs with room for one 60-core pod each: four fit, the fifth does not
    chosen = [
        filter_(client, pod(f"p{n}", ("c", 60, 8)), ["n1", "n2"])["NodeNames"] for n in range(2)
    ]
    assert chosen == [["n1"], ["n2"]]  # same shape, other GPU: never waiting together
    third = filter_(client, pod("p2", ("c", 60, 8)), ["n1", "n2"])
    assert third["NodeNames"] == []
    assert third["Error"].startswith("n1: waiting for team-a/p0 to be allocated first")


def test_bind_records_the_assignment_then_binds(client: FlaskClient, binder: FakeBinder) -> None:
    assert filter_(client, pod("p", ("c", 30, 4)), ["n1"])["NodeNames"] == ["n1"]
    assert bind(client, "p", "n1") == {"Error": ""}
    ((name, uid, node, annotations),) = binder.bound
    assert (name, uid, node) == ("p", "uid-p", "n1")
    assignment = parse_assignment(annotations[POD_GPU_ASSIGNMENT])
    assert assignment.node == "n1"
    assert [(s.uuid, s.core, s.memory) for s in assignment.containers["c"]] == [("n1-gpu0", 30, 4)]


def test_failed_bind_frees_the_share(
    client: FlaskClient, view: ClusterView, binder: FakeBinder
) -> None:
    filter_(client, pod("p", ("c", 30, 4)), ["n1"])
    binder.fail = "HTTP 409 the pod is already bound"
    assert bind(client, "p", "n1") == {"Error": "HTTP 409 the pod is already bound"}
    assert view.used("n1") == {"n1-gpu0": (0, 0)}


def test_two_binds_never_overcommit_a_gpu(view: ClusterView, binder: FakeBinder) -> None:
    # pods the filter never saw (another scheduler instance): bind decides under one lock
    view.replace_nodes({"n1": inventory(gpus=1, node="n1")})
    for n in range(20):
        view.apply_pod(pod(f"p{n}", ("c", 30, 4)))
    app = create_app(view=view, binder=binder)
    results: list[dict[str, Any]] = []

    def run(n: int) -> None:
        results.append(bind(app.test_client(), f"p{n}", "n1"))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(1 for result in results if result["Error"] == "") == 3  # 3 x 30 <= 100
    assert len(binder.bound) == 3
    assert view.used("n1")["n1-gpu0"] == (90, 12)


def test_a_restarted_extender_rebuilds_from_the_pods() -> None:
    view = ClusterView()
    view.replace_nodes({"n1": inventory(node="n1")})
    view.replace_pods(
        [
            pod("a", ("c", 60, 8), node="n1", placed={"c": [("n1-gpu0", 60, 8)]}, allocated=True),
            pod("b", ("c", 70, 8), node="n1", placed={"c": [("n1-gpu1", 70, 8)]}, allocated=True),
            pod("stale", ("c", 90, 8), placed={"c": [("n1-gpu1", 90, 8)]}, node=""),
            pod("done", ("c", 30, 8), node="n1", placed={"c": [("n1-gpu0", 30, 8)]},
                phase="Succeeded"),
        ]
    )  # fmt: skip
    assert view.used("n1") == {"n1-gpu0": (60, 8), "n1-gpu1": (70, 8)}
    result = view.filter(pod("new", ("c", 50, 8)), ["n1"])
    assert result.chosen is None
    assert "no single GPU has room" in result.failed["n1"]


def test_finished_and_deleted_pods_release_their_share(view: ClusterView) -> None:
    running = pod("a", ("c", 60, 8), node="n1", placed={"c": [("n1-gpu0", 60, 8)]})
    view.apply_pod(running)
    assert view.used("n1")["n1-gpu0"] == (60, 8)
    running["status"]["phase"] = "Failed"
    view.apply_pod(running)
    assert view.used("n1")["n1-gpu0"] == (0, 0)
    view.apply_pod(pod("b", ("c", 60, 8), node="n1", placed={"c": [("n1-gpu0", 60, 8)]}))
    view.remove_pod("uid-b")
    assert view.used("n1")["n1-gpu0"] == (0, 0)


def test_an_assumption_lapses_when_no_bind_comes() -> None:
    now = [0.0]
    view = ClusterView(assume_seconds=30, clock=lambda: now[0])
    view.replace_nodes({"n1": inventory(gpus=1, node="n1")})
    assert view.filter(pod("a", ("c", 60, 8)), ["n1"]).chosen == "n1"
    assert view.filter(pod("b", ("c", 60, 8)), ["n1"]).chosen is None
    now[0] = 31.0
    assert view.filter(pod("b", ("c", 60, 8)), ["n1"]).chosen == "n1"


def test_preempt_answers_victims_on_one_gpu(client: FlaskClient, view: ClusterView) -> None:
    for name, gpu, core, priority in (
        ("keep0", 0, 60, 1000), ("low0", 0, 30, -1000),
        ("keep1", 1, 60, 1000), ("low1", 1, 30, -1000),
    ):  # fmt: skip
        view.apply_pod(
            pod(name, ("c", core, 4), node="n1", priority=priority,
                placed={"c": [(f"n1-gpu{gpu}", core, 4)]}, allocated=True)
        )  # fmt: skip
    args = {
        "Pod": pod("urgent", ("c", 40, 4), priority=1000),
        "NodeNameToMetaVictims": {"n1": {"Pods": [{"UID": "uid-low1"}], "NumPDBViolations": 0}},
    }
    response = client.post("/preempt", json=args)
    assert response.json == {
        "NodeNameToMetaVictims": {"n1": {"Pods": [{"UID": "uid-low0"}], "NumPDBViolations": 0}}
    }


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        pytest.param("/filter", b"[" * 5_000 + b"]" * 5_000, "not JSON", id="deep-nesting"),
        pytest.param("/filter", b"x" * 70_000, "limit is 65536", id="too-large"),
        pytest.param("/filter", b'{"NodeNames": ["n1"]}', "ExtenderArgs.Pod", id="no-pod"),
        pytest.param(
            "/filter", b'{"Pod": {}, "NodeNames": [1]}', "NodeNames[0] must be a string",
            id="name-not-string",
        ),
        pytest.param("/bind", b'{"PodName": "p"}', "PodNamespace", id="bind-incomplete"),
        pytest.param(
            "/preempt", b'{"Pod": {}, "NodeNameToMetaVictims": {"n1": {"Pods": [{}]}}}',
            "must name a pod UID", id="victim-without-uid",
        ),
    ],
)  # fmt: skip
def test_bad_requests_are_400_naming_the_field(
    client: FlaskClient, path: str, body: bytes, message: str
) -> None:
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["error"] == "bad-request"
    assert message in response.json["message"]


def test_the_memory_bomb_is_refused_with_the_rule(client: FlaskClient) -> None:
    body = filter_(client, pod("p", ("c", "1e999", 1)), ["n1"])
    assert body["NodeNames"] == []
    assert "at most 6400 can be placed" in body["FailedAndUnresolvableNodes"]["n1"]


def test_wrong_method_names_the_allowed_one(client: FlaskClient) -> None:
    response = client.get("/filter")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


def test_a_pod_that_fits_only_fragmented_room_evicts_lower_priority_pods_of_one_gpu(
    client: FlaskClient, view: ClusterView, binder: FakeBinder
) -> None:
    # each GPU of n1 has 20 cores free (40 in all): a 40-core pod fits no GPU
    view.replace_nodes({"n1": inventory(node="n1")})
    for name, gpu, core, priority in (
        ("keep0", 0, 60, 1000), ("low0", 0, 20, -1000),
        ("keep1", 1, 60, 1000), ("low1", 1, 20, -1000),
    ):  # fmt: skip
        view.apply_pod(
            pod(name, ("c", core, 4), node="n1", priority=priority,
                placed={"c": [(f"n1-gpu{gpu}", core, 4)]}, allocated=True)
        )  # fmt: skip
    urgent = pod("urgent", ("c", 40, 4), priority=1000)
    body = filter_(client, urgent, ["n1"])
    assert body["NodeNames"] == []
    assert body["FailedNodes"] == {
        "n1": "evicting 1 lower-priority pod(s) to free a GPU for this pod"
    }
    assert binder.evicted == ["low0"]
    # an error, so that the scheduler retries the pod after its backoff
    assert body["Error"] == "n1: evicting 1 lower-priority pod(s) to free a GPU for this pod"
    # asked again while the victim still runs: nothing more is evicted
    body = filter_(client, urgent, ["n1"])
    assert "waiting for 1 lower-priority pod(s)" in body["FailedNodes"]["n1"]
    assert binder.evicted == ["low0"]
    # the room being freed is held: another pod cannot take it
    other = filter_(client, pod("other", ("c", 40, 4), priority=-1000), ["n1"])
    assert other["NodeNames"] == []
    view.remove_pod("uid-low0")
    assert filter_(client, urgent, ["n1"])["NodeNames"] == ["n1"]
    assert view.placed("uid-urgent").assignment.containers["c"][0].uuid == "n1-gpu0"  # type: ignore[union-attr]


def test_a_pod_that_never_preempts_evicts_nothing(
    client: FlaskClient, view: ClusterView, binder: FakeBinder
) -> None:
    view.apply_pod(
        pod("low", ("c", 90, 4), node="n1", priority=-1000,
            placed={"c": [("n1-gpu0", 90, 4)]}, allocated=True)
    )  # fmt: skip
    view.replace_nodes({"n1": inventory(gpus=1, node="n1")})
    subject = pod("never", ("c", 40, 4), priority=1000)
    subject["spec"]["preemptionPolicy"] = "Never"
    assert filter_(client, subject, ["n1"])["NodeNames"] == []
    assert binder.evicted == []
