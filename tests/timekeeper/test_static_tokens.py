"""The static tokens file: every problem with its field path, and reloads like the budgets
file (a changed file loads after the check interval; an invalid one keeps the last good
tokens and is logged once with every reason)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_until
from tests.timekeeper.conftest import report_body
from tests.timekeeper.servers import ServerProcess
from timekeeper.errors import ConfigError
from timekeeper.static_tokens import TokenTable, load_tokens, parse_tokens

STATIC_A = "static-token-team-a-0123456789"
STATIC_B = "static-token-team-b-0123456789"


@pytest.mark.parametrize(
    ("document", "problems"),
    [
        pytest.param(
            [], ["f: must be a mapping with one key `tokens` (got a list)"], id="not-a-mapping"
        ),
        pytest.param(
            {"tokens": {"a": 1}}, ["f: tokens: must be a list (got a dict)"], id="tokens-not-a-list"
        ),
        pytest.param(
            {"tokens": []},
            ["f: tokens: must list at least one {token, namespace} (got an empty list)"],
            id="no-token-at-all",
        ),
        pytest.param(
            {"tokens": ["x"]},
            ["f: tokens[0]: must be a mapping {token, namespace} (got a string of 1 characters)"],
            id="entry-not-a-mapping",
        ),
        pytest.param(
            {"tokens": [{"token": "short", "namespace": "team-a"}]},
            [
                "f: tokens[0].token: must be a string of at least 16 characters (got a "
                "string of 5 characters)"
            ],
            id="token-too-short",
        ),
        pytest.param(
            {"tokens": [{"token": STATIC_A, "namespace": "Team_A", "role": "x"}]},
            [
                "f: tokens[0].role: unknown key (the keys are token, namespace)",
                "f: tokens[0].namespace: must be a namespace name (RFC 1123 label) (got 'Team_A')",
            ],
            id="bad-namespace-and-unknown-key",
        ),
        pytest.param(
            {
                "tokens": [
                    {"token": STATIC_A, "namespace": "team-a"},
                    {"token": STATIC_A, "namespace": "team-b"},
                ]
            },
            ["f: tokens[1].token: the same token is listed twice"],
            id="duplicate",
        ),
    ],
)
def test_tokens_file_problems_have_field_paths(document: Any, problems: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        parse_tokens(document, source="f")
    assert error.value.problems == problems
    assert STATIC_A not in str(error.value)


def test_tokens_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens:\n  - {{token: {STATIC_A}, namespace: team-a}}\n")
    table = load_tokens(path)
    assert list(table.values()) == ["team-a"]
    assert STATIC_A not in table  # kept as digests only


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SecretVolume:
    """A folder laid out the way the kubelet projects a Secret: the file is a symlink to
    `..data/<key>`, `..data` a symlink to a timestamped folder swapped atomically."""

    def __init__(self, root: Path, key: str = "tokens.yaml") -> None:
        self.root = root
        self.key = key
        self.version = 0
        root.mkdir()
        (root / key).symlink_to(Path("..data") / key)

    @property
    def path(self) -> Path:
        return self.root / self.key

    def publish(self, text: str) -> None:
        self.version += 1
        payload = self.root / f"..2026_12_04_06_00_{self.version:02d}.000000001"
        payload.mkdir()
        (payload / self.key).write_text(text, encoding="utf-8")
        os.utime(payload / self.key, ns=(0, 0))  # only the content tells
        staging = self.root / "..data_tmp"
        staging.symlink_to(payload.name)
        os.replace(staging, self.root / "..data")


def replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` in one step (a reader never sees it half written)."""
    staging = path.with_name(path.name + ".new")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def tokens_yaml(*pairs: tuple[str, str]) -> str:
    return "tokens:\n" + "".join(
        f"  - {{token: {token}, namespace: {namespace}}}\n" for token, namespace in pairs
    )


@pytest.fixture
def volume(tmp_path: Path) -> SecretVolume:
    volume = SecretVolume(tmp_path / "tokens")
    volume.publish(tokens_yaml((STATIC_A, "team-a")))
    return volume


def test_a_changed_file_loads_after_the_interval(volume: SecretVolume) -> None:
    clock = FakeClock()
    table = TokenTable.from_file(volume.path, check_interval_seconds=2.0, clock=clock)
    volume.publish(tokens_yaml((STATIC_B, "team-b")))
    clock.advance(1.999)
    assert table.namespace_of(STATIC_A) == "team-a", "checked before the interval passed"
    assert table.namespace_of(STATIC_B) is None
    clock.advance(0.001)
    assert table.namespace_of(STATIC_B) == "team-b"
    assert table.namespace_of(STATIC_A) is None, "a token taken out of the file is revoked"
    assert table.reloads == 1


@pytest.mark.parametrize(
    ("content", "problems"),
    [
        pytest.param(
            "tokens: [{token: short, namespace: team-b}]\n",
            [
                "tokens[0].token: must be a string of at least 16 characters "
                "(got a string of 5 characters)"
            ],
            id="short-token",
        ),
        pytest.param(
            "tokens: []\n",
            ["tokens: must list at least one {token, namespace} (got an empty list)"],
            id="emptied",
        ),
        pytest.param("tokens: [\n", ["cannot read a YAML document"], id="cut-short"),
        pytest.param(None, ["cannot read (No such file or directory)"], id="removed"),
    ],
)
def test_an_invalid_file_keeps_the_last_good_tokens_and_is_logged_once_with_its_reasons(
    volume: SecretVolume,
    content: str | None,
    problems: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="timekeeper.static_tokens")
    clock = FakeClock()
    table = TokenTable.from_file(volume.path, check_interval_seconds=2.0, clock=clock)
    if content is None:
        os.unlink(volume.root / "..data")
    else:
        volume.publish(content)
    for _ in range(3):
        clock.advance(2)
        assert table.namespace_of(STATIC_A) == "team-a"
    rejections = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejections) == 1, rejections
    assert (
        f"tokens file {volume.path} rejected, the last good tokens stay in force" in (rejections[0])
    )
    for problem in problems:
        assert problem in rejections[0]
    assert table.last_error is not None and table.reload_failures == 1
    # A good file again loads and clears the error.
    volume.publish(tokens_yaml((STATIC_A, "team-a"), (STATIC_B, "team-b")))
    clock.advance(2)
    assert table.namespace_of(STATIC_B) == "team-b"
    assert table.last_error is None
    assert STATIC_A not in caplog.text and STATIC_B not in caplog.text


def test_the_server_takes_a_new_token_without_a_restart(
    database_url: str, server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(tokens_yaml((STATIC_A, "team-a")))
    # One worker: "last good" is each worker's own (documented), and requests cannot be
    # steered to a given worker, so a second one might see no request between the two edits.
    server = server_factory(
        "--database-url",
        database_url,
        "--workers",
        "1",
        "--tokens",
        str(tokens),
        "--tokens-check-seconds",
        "0",
    )
    body = report_body(namespace="team-b")
    headers = {"Authorization": f"Bearer {STATIC_B}"}
    status, answer = server.request("POST", "/api/v1/reports", body, headers)
    assert (status, answer["message"]) == (401, "unknown token")
    replace_file(tokens, tokens_yaml((STATIC_A, "team-a"), (STATIC_B, "team-b")))
    # The worker checks the file on its next request (interval 0): every answer from now on
    # knows the new token.
    for _ in range(6):
        status, answer = server.request("POST", "/api/v1/reports", body, headers)
        assert status == 200, answer
    replace_file(tokens, "tokens: not-a-list\n")
    for _ in range(6):
        status, answer = server.request("POST", "/api/v1/reports", body, headers)
        assert status == 200, answer
    # The worker logs the refusal while or after it answers: wait for the line.
    wait_until(
        lambda: (
            "the last good tokens stay in force: " in server.log()
            and "tokens: must be a list (got a string of 10 characters)" in server.log()
        ),
        what="the refusal of the bad tokens file in the log",
    )
