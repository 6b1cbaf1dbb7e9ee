"""Concurrent caps (`maxVcudaCore`, `maxVcudaMemory`): the keys, the plan, the controller."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from timekeeper.budgets import BudgetsError, parse_budgets
from timekeeper.policy_source import PolicySource
from timekeeper.quota_sync import QuotaApiError, QuotaController, QuotaNameTaken
from timekeeper.quotas import (
    CORE_RESOURCE,
    MEMORY_RESOURCE,
    QuotaPlan,
    plan_quotas,
    same_hard,
    wanted_quotas,
)

CORE, MEMORY = CORE_RESOURCE, MEMORY_RESOURCE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "defaults: {maxVcudaCore: 400, maxVcudaMemory: 64}\n"
            "namespaces:\n  team-a: {maxVcudaCore: 1000}\n  research: {maxVcudaCore: unlimited}\n"
            "  interns: {}\n",
            {
                "defaults": (400, 64),
                "team-a": (1000, 64),
                "research": (None, 64),
                "interns": (400, 64),
            },
            id="namespaces-inherit-and-override-caps",
        ),
        pytest.param(
            "namespaces:\n  team-a: {maxVcudaMemory: 0}\n",
            {"defaults": (None, None), "team-a": (None, 0)},
            id="zero-memory-cap-allowed-and-default-is-none",
        ),
        pytest.param(
            "defaults: {maxVcudaCore: 1e3}\n",
            {"defaults": (1000, None)},
            id="whole-number-in-exponent-form",
        ),
    ],
)
def test_caps_parse(text: str, expected: dict[str, tuple[int | None, int | None]]) -> None:
    policy = parse_budgets(text)
    budgets = {"defaults": policy.defaults, **policy.namespaces}
    got = {name: (b.max_vcuda_core, b.max_vcuda_memory) for name, b in budgets.items()}
    assert got == expected


CORE_RULE = (
    "must be a whole number of tencent.com/vcuda-core units (100 = one GPU) in 0..10000000, "
    "or 'unlimited'"
)
MEMORY_RULE = (
    "must be a whole number of tencent.com/vcuda-memory units (256 MiB each) in "
    "0..1000000000, or 'unlimited'"
)


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        pytest.param(
            "defaults: {maxVcudaCore: 50.5}\n",
            [f"defaults.maxVcudaCore: {CORE_RULE} (got 50.5)"],
            id="fraction-refused",
        ),
        pytest.param(
            "namespaces:\n  team-a: {maxVcudaCore: -100}\n",
            [f"namespaces.team-a.maxVcudaCore: {CORE_RULE} (got -100)"],
            id="negative-refused",
        ),
        pytest.param(
            'namespaces:\n  team-a: {maxVcudaMemory: "64"}\n',
            [
                f"namespaces.team-a.maxVcudaMemory: {MEMORY_RULE}; write the number without "
                "quotes (got '64')"
            ],
            id="quoted-number-refused",
        ),
        pytest.param(
            "defaults: {maxVcudaMemory: 16Gi}\n",
            [f"defaults.maxVcudaMemory: {MEMORY_RULE} (got '16Gi')"],
            id="byte-quantity-refused",
        ),
        pytest.param(
            "defaults: {maxVcudaCore: Unlimited}\n",
            [
                f"defaults.maxVcudaCore: {CORE_RULE}; write 'unlimited' in lower case (got "
                "'Unlimited')"
            ],
            id="unlimited-case",
        ),
        pytest.param(
            "defaults: {maxVcudaCores: 100}\n",
            ["defaults.maxVcudaCores: unknown key; did you mean 'maxVcudaCore'?"],
            id="near-miss-key",
        ),
        pytest.param(
            "defaults: {maxVcudaCore: 20000000}\n",
            [f"defaults.maxVcudaCore: {CORE_RULE} (got 20000000)"],
            id="beyond-cap-refused",
        ),
    ],
)
def test_caps_refused(text: str, problems: list[str]) -> None:
    with pytest.raises(BudgetsError) as caught:
        parse_budgets(text)
    assert [problem.split(" (line")[0] for problem in caught.value.problems] == problems


def test_wanted_quotas_follow_defaults_listing_and_exclusions() -> None:
    policy = parse_budgets(
        "defaults: {maxVcudaCore: 200}\n"
        "namespaces:\n"
        "  big: {maxVcudaCore: 800, maxVcudaMemory: 128}\n"
        "  free: {maxVcudaCore: unlimited}\n"
        "  kube-system: {maxVcudaCore: 100}\n"
    )
    wanted = wanted_quotas(
        policy,
        ["big", "free", "other", "kube-system", "kube-public"],
        excluded=("kube-system", "kube-public"),
    )
    assert wanted == {
        "big": {CORE: "800", MEMORY: "128"},
        "other": {CORE: "200"},
        "kube-system": {CORE: "100"},  # listed by name: the exclusion covers defaults only
    }


@pytest.mark.parametrize(
    ("wanted", "owned", "foreign", "expected"),
    [
        pytest.param(
            {"a": {CORE: "200"}},
            {},
            (),
            QuotaPlan(create={"a": {CORE: "200"}}, update={}, delete=(), foreign=()),
            id="create-missing",
        ),
        pytest.param(
            {"a": {CORE: "1000"}},
            {"a": {CORE: "1k"}},
            (),
            QuotaPlan(create={}, update={}, delete=(), foreign=()),
            id="same-value-other-spelling-untouched",
        ),
        pytest.param(
            {"a": {CORE: "200"}},
            {"a": {CORE: "200", MEMORY: "64"}},
            (),
            QuotaPlan(create={}, update={"a": {CORE: "200"}}, delete=(), foreign=()),
            id="removed-key-updates",
        ),
        pytest.param(
            {},
            {"a": {CORE: "200"}},
            (),
            QuotaPlan(create={}, update={}, delete=("a",), foreign=()),
            id="no-longer-wanted-deleted",
        ),
        pytest.param(
            {"a": {CORE: "200"}},
            {},
            ("a",),
            QuotaPlan(create={}, update={}, delete=(), foreign=("a",)),
            id="foreign-name-left-alone",
        ),
    ],
)
def test_plan(
    wanted: dict[str, dict[str, str]],
    owned: dict[str, dict[str, str]],
    foreign: tuple[str, ...],
    expected: QuotaPlan,
) -> None:
    assert plan_quotas(wanted, owned, foreign=foreign) == expected


def test_same_hard_compares_values_and_keys() -> None:
    assert same_hard({CORE: "1k"}, {CORE: "1000"})
    assert not same_hard({CORE: "100"}, {CORE: "200"})
    assert not same_hard({CORE: "100"}, {CORE: "100", MEMORY: "1"})


class FakeQuotaApi:
    """The cluster as a dict: (namespace) → (owned?, hard)."""

    def __init__(self, namespaces: list[str]) -> None:
        self.namespace_names = namespaces
        self.quotas: dict[str, tuple[bool, dict[str, str]]] = {}
        self.calls: list[str] = []
        self.unreachable = False

    def namespaces(self, label_selector: str) -> list[str]:
        if self.unreachable:
            raise QuotaApiError("list namespaces: API server unreachable")
        return list(self.namespace_names)

    def owned_quotas(self) -> dict[str, dict[str, str]]:
        return {ns: dict(hard) for ns, (owned, hard) in self.quotas.items() if owned}

    def create(self, namespace: str, hard: Mapping[str, str]) -> None:
        self.calls.append(f"create {namespace}")
        if namespace in self.quotas:
            raise QuotaNameTaken(namespace)
        self.quotas[namespace] = (True, dict(hard))

    def replace(self, namespace: str, hard: Mapping[str, str]) -> None:
        self.calls.append(f"replace {namespace}")
        assert self.quotas[namespace][0], "replaced a quota gpushare does not own"
        self.quotas[namespace] = (True, dict(hard))

    def delete(self, namespace: str) -> None:
        self.calls.append(f"delete {namespace}")
        assert self.quotas[namespace][0], "deleted a quota gpushare does not own"
        del self.quotas[namespace]


def test_controller_follows_file_changes_and_spares_foreign_quotas(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("namespaces:\n  a: {maxVcudaCore: 200}\n  b: {maxVcudaMemory: 8}\n")
    api = FakeQuotaApi(["a", "b", "c"])
    api.quotas["b"] = (False, {CORE: "5"})  # someone else's quota of the same name
    controller = QuotaController(api, PolicySource(budgets, check_interval_seconds=0))

    first = controller.sync_once()
    assert api.quotas == {"a": (True, {CORE: "200"}), "b": (False, {CORE: "5"})}
    assert first.plan.foreign == ("b",)
    assert "namespace b holds a ResourceQuota named gpushare-gpu" in caplog.text

    budgets.write_text("namespaces:\n  a: {maxVcudaCore: 400, maxVcudaMemory: 32}\n")
    controller.sync_once()
    assert api.quotas == {"a": (True, {CORE: "400", MEMORY: "32"}), "b": (False, {CORE: "5"})}

    budgets.write_text("namespaces:\n  a: {}\n")
    api.calls.clear()
    controller.sync_once()
    assert api.quotas == {"b": (False, {CORE: "5"})}
    assert api.calls == ["delete a"]

    api.calls.clear()
    controller.sync_once()
    assert api.calls == [], "a round with nothing to change calls nothing"


def test_controller_keeps_last_good_policy_on_a_bad_file(tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("defaults: {maxVcudaCore: 300}\n")
    api = FakeQuotaApi(["a", "kube-system"])
    controller = QuotaController(api, PolicySource(budgets, check_interval_seconds=0))
    controller.sync_once()
    budgets.write_text("defaults: {maxVcudaCore: lots}\n")
    controller.sync_once()
    assert api.quotas == {"a": (True, {CORE: "300"})}


def test_controller_round_fails_cleanly_when_unreachable(tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("defaults: {maxVcudaCore: 300}\n")
    api = FakeQuotaApi(["a"])
    api.unreachable = True
    controller = QuotaController(api, PolicySource(budgets))
    with pytest.raises(QuotaApiError, match="unreachable"):
        controller.sync_once()
    api.unreachable = False
    controller.sync_once()
    assert api.quotas == {"a": (True, {CORE: "300"})}


def test_the_loop_acts_at_once_on_a_file_change_and_stops(tmp_path: Path) -> None:
    import threading

    from tests.polling import wait_until

    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("namespaces:\n  a: {maxVcudaCore: 100}\n")
    api = FakeQuotaApi(["a"])
    controller = QuotaController(api, PolicySource(budgets, check_interval_seconds=0.05))
    rounds: list[object] = []
    stop = threading.Event()
    loop = threading.Thread(
        target=controller.run,
        kwargs={"interval_seconds": 3600, "stop": stop, "on_round": rounds.append},
    )
    loop.start()
    try:
        wait_until(lambda: api.quotas.get("a") == (True, {CORE: "100"}), what="the first round")
        budgets.write_text("namespaces:\n  a: {maxVcudaCore: 700}\n")
        wait_until(
            lambda: api.quotas.get("a") == (True, {CORE: "700"}),
            what="a round soon after the edit, long before the hour's interval",
        )
    finally:
        stop.set()
        loop.join(timeout=5)
    assert not loop.is_alive()
    assert len(rounds) == 2
